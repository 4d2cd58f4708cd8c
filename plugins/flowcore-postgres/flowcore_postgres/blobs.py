"""Large results in a table, so that every host using the database reads them.

The SQLite store keeps results over 16 KiB as files beside its database, which only its
own host sees. Here they are rows of ``blobs`` (``bytea``; PostgreSQL keeps large values
compressed out of line), named by the SHA-256 of their content as files are: a result
is stored once however many runs produce it, its content is checked against its name
when put (a mismatch is refused) and again when read (a row altered in the table is
refused, never returned). A URL with ``blobs=/shared/folder`` keeps them as files in a
folder every host mounts instead (:class:`~flowcore.store.files.FileBlobs`).

Times are the database server's clock, for the ``put`` that touches a row and the
``prune`` that compares with it: hosts whose clocks differ agree on a blob's age.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from flowcore.errors import ResultUnreadable

from .connection import Connection

__all__ = ["TableBlobs"]

_HEX = frozenset("0123456789abcdef")
#: The database's clock, in unix seconds.
_NOW = "extract(epoch FROM clock_timestamp())"


def _valid(ref: str) -> bool:
    return isinstance(ref, str) and len(ref) == 64 and set(ref) <= _HEX


class TableBlobs:
    """The blob store of a PostgreSQL store: the ``blobs`` table of its schema."""

    def __init__(self, io: Connection) -> None:
        self._io = io
        self.location = f"the blobs table of {io.location}"

    async def put(self, blobs: Mapping[str, bytes]) -> None:
        refs, datas = [], []
        for ref, data in blobs.items():
            if not _valid(ref) or hashlib.sha256(data).hexdigest() != ref:
                raise ValueError(
                    f"blob reference {ref!r} is not the SHA-256 of the content given; a blob's "
                    "reference is hashlib.sha256(content).hexdigest()"
                )
            refs.append(ref)
            datas.append(bytes(data))
        if not refs:
            return
        # A blob already there is only touched: a prune running elsewhere must see it as
        # new until the records that refer to it are committed.
        await self._io.execute(
            f"INSERT INTO blobs (ref, data, created) SELECT r, d, {_NOW} "
            "FROM unnest($1::text[], $2::bytea[]) AS b(r, d) "
            f"ON CONFLICT (ref) DO UPDATE SET created = {_NOW}",
            refs,
            datas,
        )

    async def get(self, ref: str) -> bytes:
        if not _valid(ref):
            raise ResultUnreadable(f"invalid result reference {ref!r}")
        rows = await self._io.fetch("SELECT data FROM blobs WHERE ref = $1", ref)
        if not rows:
            raise ResultUnreadable(f"result {ref} is missing from {self.location}")
        data = bytes(rows[0][0])
        if hashlib.sha256(data).hexdigest() != ref:
            raise ResultUnreadable(
                f"result {ref} in {self.location} does not match its checksum (altered in the "
                "table)"
            )
        return data

    async def size(self, ref: str) -> int | None:
        if not _valid(ref):
            return None
        value = await self._io.fetchval("SELECT octet_length(data) FROM blobs WHERE ref = $1", ref)
        return None if value is None else int(value)

    async def prune(self, keep: set[str], *, grace: float = 120.0) -> int:
        """Delete blobs not in ``keep`` put more than ``grace`` seconds ago (database time)."""
        status = await self._io.execute(
            f"DELETE FROM blobs WHERE created < {_NOW} - $2 AND NOT (ref = ANY($1::text[]))",
            sorted(keep),
            float(grace),
        )
        return int(status.rsplit(" ", 1)[-1])
