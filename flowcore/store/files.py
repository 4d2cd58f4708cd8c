"""Large results as files beside the database: the blob store of the SQLite store.

Large results go to content-addressed files, ``results/<first 2 hex>/<sha256>``:
the name is the SHA-256 of the content, so a file is written once however many
runs produce the same value, and reading it back verifies it: a file whose
content does not hash to its name (truncated, corrupted, tampered with) is
refused. Files are written to a temporary name, flushed to disk, then renamed,
so a crash never leaves a half-written file under a real name. Results are
data of the runs, so folders are created 0700 and files 0600 (``mkstemp``'s
mode, kept by the rename); a folder that exists keeps its mode.

Files work for one host; a store shared by several hosts keeps its blobs where
every host can read them (a table, a shared folder) behind the same
:class:`~flowcore.store.base.BlobStore` seam.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import anyio

from ..errors import ResultUnreadable

__all__ = ["INLINE_LIMIT", "FileBlobs", "blob_ref"]

#: Results up to this many bytes are kept in the store itself.
INLINE_LIMIT: Final = 16 * 1024


def blob_ref(blob: bytes) -> str:
    """The reference of a blob: the SHA-256 of its content, in hex."""
    # Imported at the first large result: `import flowcore` does not hash, and loading
    # OpenSSL's library for hashlib is a good part of a millisecond (issue 17).
    import hashlib

    return hashlib.sha256(blob).hexdigest()


class FileBlobs:
    """The content-addressed result files of one store, in ``folder``.

    The async methods (the :class:`~flowcore.store.base.BlobStore` contract) run
    the blocking file work in a worker thread; the sync ones do it in place.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.location = str(folder)

    async def put(self, blobs: Mapping[str, bytes]) -> None:
        await anyio.to_thread.run_sync(self._write_all, dict(blobs))

    async def get(self, ref: str) -> bytes:
        return await anyio.to_thread.run_sync(self.read, ref)

    async def size(self, ref: str) -> int | None:
        try:
            return self.path(ref).stat().st_size
        except (OSError, ResultUnreadable):
            return None

    async def prune(self, keep: set[str], *, grace: float = 120.0) -> int:
        return await anyio.to_thread.run_sync(self.remove_unreferenced, keep, grace)

    def _write_all(self, blobs: dict[str, bytes]) -> None:
        for ref, blob in blobs.items():
            self.write(ref, blob)

    def path(self, ref: str) -> Path:
        if len(ref) != 64 or not all(c in "0123456789abcdef" for c in ref):
            raise ResultUnreadable(f"invalid result reference {ref!r}")
        return self.folder / ref[:2] / ref

    ref = staticmethod(blob_ref)

    def write(self, ref: str, blob: bytes) -> None:
        """Write ``blob`` under ``ref`` atomically (blocking: call from a worker thread)."""
        target = self.path(ref)
        try:
            if blob_ref(target.read_bytes()) == ref:
                # Already there, intact. Touch it: a clear running in another process
                # must see it as new until the records that use it are committed.
                os.utime(target)
                return
        except OSError:
            pass  # missing (or unreadable): write it
        if not target.parent.is_dir():
            for folder in (self.folder, target.parent):
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        import tempfile  # only a large result is a file: 3 ms to import, for most runs never

        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")  # 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def read(self, ref: str) -> bytes:
        """The verified content of ``ref`` (blocking); :class:`ResultUnreadable` if off."""
        try:
            blob = self.path(ref).read_bytes()
        except FileNotFoundError:
            raise ResultUnreadable(f"result file {self.path(ref)} is missing") from None
        except OSError as exc:
            raise ResultUnreadable(f"result file {self.path(ref)} cannot be read: {exc}") from exc
        if blob_ref(blob) != ref:
            raise ResultUnreadable(
                f"result file {self.path(ref)} does not match its checksum (truncated, "
                "corrupted or modified)"
            )
        return blob

    def remove_unreferenced(self, keep: set[str], grace: float = 120.0) -> int:
        """Delete result files no record refers to; returns how many were removed.

        Files younger than ``grace`` seconds are kept even when unreferenced: a
        writer puts a result file on disk before committing the records that
        refer to it, and may wait for the database lock in between (up to the
        store's ``lock_timeout``, 60 s by default).
        """
        removed = 0
        if not self.folder.is_dir():
            return 0
        for sub in self.folder.iterdir():
            if not sub.is_dir():
                continue
            for file in sub.iterdir():
                if file.name in keep:
                    continue
                try:
                    if time.time() - file.stat().st_mtime < grace:
                        continue  # maybe about to be referenced (or still being written)
                except OSError:
                    continue
                try:
                    file.unlink()
                    removed += 1
                except OSError:
                    pass
        return removed
