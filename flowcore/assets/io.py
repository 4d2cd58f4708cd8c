"""How an asset's value is stored: the I/O protocol and the files built-in.

An I/O is any object with two async methods, ``store(key, partition, value)`` and
``load(key, partition)`` (``partition`` is ``None`` for an unpartitioned asset); a
missing value raises :class:`~flowcore.assets.errors.AssetValueMissing`. The default,
:data:`RESULT_IO` (``"result"``), keeps values in the run store as task results
(msgspec msgpack, large ones as blobs); ``io="files"`` or :class:`FilesIO` keeps them
in files. Plugins add others by name: an entry point in the group ``flowcore.asset_io``
names a class or factory that, called with no arguments, gives an :class:`AssetIO`
(as executors come from ``flowcore.executors``). The name is resolved when the asset
is defined, so a misspelt or uninstalled one fails there, listing the installed names,
and not half-way through a materialisation; the plugin is loaded then, once per asset.

:class:`FilesIO` places each value at ``FOLDER/<key>/=value.<format>`` (unpartitioned)
or ``FOLDER/<key>/=partitions/<encoded partition key>.<format>``: an asset key is a
safe relative path (:mod:`flowcore.assets.keys`), and ``=`` is not allowed in keys,
so no asset's folder can be mistaken for another's files. A partition key becomes a
file name by percent-encoding every byte of its UTF-8 but letters, digits, ``-`` and
``_`` (so ``/``, ``..``, ``\\``, ``:`` and a leading dot can never reach the path),
and one longer than 120 characters keeps its first 64 encoded characters followed by
``~`` and a hash of the whole key. Control characters and lone surrogates are refused
(they are not partition keys). Values are written as the result files of the store
are: to a temporary file in the same folder, flushed to disk, then renamed over the
old one, so a reader never sees half a value; folders are created 0700 and files
0600 (the data of the runs is the owner's), and an existing folder keeps its mode.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    Literal,
    Protocol,
    TypeAlias,
    get_args,
    runtime_checkable,
)

import anyio
import msgspec

from ..errors import ConfigurationError
from ..store import flowcore_home
from .errors import AssetValueMissing
from .keys import check_asset_key, check_partition_key

if TYPE_CHECKING:
    from importlib.metadata import EntryPoints

__all__ = [
    "IO_ENTRY_POINTS",
    "RESULT_IO",
    "AssetIO",
    "FileFormat",
    "FilesIO",
    "PluginIO",
    "check_io",
    "load_io_plugin",
    "partition_file_name",
]

#: The name of the default I/O: values kept in the run store as task results.
RESULT_IO: Final = "result"
#: The name of :class:`FilesIO` with its defaults.
FILES_IO: Final = "files"
#: The entry-point group plugins register their I/Os in.
IO_ENTRY_POINTS: Final = "flowcore.asset_io"

FileFormat: TypeAlias = Literal["msgpack", "json", "bytes"]
_FORMATS: Final = get_args(FileFormat)
_SAFE: Final = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
_LONG: Final = 120


@runtime_checkable
class AssetIO(Protocol):
    """Stores and loads the values of assets (async: it may do I/O)."""

    async def store(self, key: str, partition: str | None, value: Any) -> None: ...

    async def load(self, key: str, partition: str | None) -> Any: ...


def check_io(io: object) -> AssetIO | str:
    """``io=``: a name (``"result"``, ``"files"``, a plugin's) or an :class:`AssetIO`.

    The built-in names stay names (the materialiser knows them); a plugin's name becomes
    a :class:`PluginIO` here, so an unknown one is an error at definition time."""
    if io is None:
        return RESULT_IO
    if isinstance(io, str) and io:
        if io in (RESULT_IO, FILES_IO):
            return io
        return load_io_plugin(io)
    if isinstance(io, AssetIO):
        return io
    raise ConfigurationError(
        f"`io` must be the name of an I/O ('result', 'files', or one installed in the "
        f"{IO_ENTRY_POINTS!r} entry-point group) or an object with async "
        f"store(key, partition, value) and load(key, partition) methods, got {io!r}"
    )


class PluginIO:
    """An I/O a plugin gave under ``name``: delegates to it, and shows (and compares) as
    its name, so the definition stored for the asset says which plugin keeps its values
    and not an object's address that changes per process."""

    __slots__ = ("inner", "name")

    def __init__(self, name: str, inner: AssetIO) -> None:
        self.name = name
        self.inner = inner

    def __repr__(self) -> str:
        return f"PluginIO({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PluginIO) and other.name == self.name

    def __hash__(self) -> int:
        return hash((PluginIO, self.name))

    async def store(self, key: str, partition: str | None, value: Any) -> None:
        await self.inner.store(key, partition, value)

    async def load(self, key: str, partition: str | None) -> Any:
        return await self.inner.load(key, partition)


def entry_points(*, group: str) -> EntryPoints:
    """``importlib.metadata.entry_points(group=group)``, imported at the first call: importing
    it costs some 15 ms (email, zipfile, csv), and only a plugin's name needs it."""
    from importlib.metadata import entry_points as installed

    return installed(group=group)


def load_io_plugin(name: str) -> PluginIO:
    """The I/O the plugin registered as ``name`` in :data:`IO_ENTRY_POINTS` made."""
    plugins = {ep.name: ep for ep in entry_points(group=IO_ENTRY_POINTS)}
    if name not in plugins:
        installed = ", ".join(sorted({RESULT_IO, FILES_IO, *plugins}))
        raise ConfigurationError(
            f"no asset I/O named {name!r}; installed: {installed}. Install the plugin that "
            f"provides it (one with a {IO_ENTRY_POINTS!r} entry point named {name!r}), or "
            "pass an object with async store(key, partition, value) and load(key, partition)"
        )
    entry = plugins[name]
    try:
        factory: Any = entry.load()
        made = factory()
    except Exception as exc:
        raise ConfigurationError(
            f"the asset I/O plugin {name!r} ({entry.value}) failed to load: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(made, AssetIO):
        raise ConfigurationError(
            f"the asset I/O plugin {name!r} ({entry.value}) made {made!r}, which is not an "
            "asset I/O (it needs async store(key, partition, value) and load(key, partition))"
        )
    return PluginIO(name, made)


def partition_file_name(partition: str) -> str:
    """The file name (without extension) a partition key is kept under (module docstring).

    >>> from flowcore.assets.io import partition_file_name
    >>> partition_file_name("2026-03-29"), partition_file_name("../etc/passwd")
    ('2026-03-29', '%2E%2E%2Fetc%2Fpasswd')
    """
    raw = check_partition_key(partition).encode()
    encoded = "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in raw)
    if len(encoded) <= _LONG:
        return encoded
    return f"{encoded[:64]}~{hashlib.sha256(raw).hexdigest()[:32]}"


class FilesIO:
    """Values as files under ``folder`` (default ``$FLOWCORE_HOME/assets``, read when a
    value is stored or loaded), as ``"msgpack"`` (msgspec; any value msgspec encodes,
    read back as builtins), ``"json"``, or ``"bytes"`` (the value must be bytes).

    >>> flowcore.assets.FilesIO(format="json")
    FilesIO(folder=None, format='json')
    """

    __slots__ = ("folder", "format")

    def __init__(
        self, folder: str | os.PathLike[str] | None = None, *, format: FileFormat = "msgpack"
    ) -> None:
        if format not in _FORMATS:
            raise ConfigurationError(
                f"FilesIO `format` must be one of {', '.join(map(repr, _FORMATS))}, got {format!r}"
            )
        if folder is not None and not isinstance(folder, str | os.PathLike):
            raise ConfigurationError(f"FilesIO `folder` must be a path or None, got {folder!r}")
        self.folder = None if folder is None else Path(folder)
        self.format: FileFormat = format

    def __repr__(self) -> str:
        folder = None if self.folder is None else str(self.folder)
        return f"FilesIO(folder={folder!r}, format={self.format!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FilesIO):
            return NotImplemented
        return (self.folder, self.format) == (other.folder, other.format)

    def __hash__(self) -> int:
        return hash((self.folder, self.format))

    def root(self) -> Path:
        return self.folder if self.folder is not None else flowcore_home() / "assets"

    def path(self, key: str, partition: str | None) -> Path:
        """Where the value of ``key`` (``partition``) is kept."""
        folder = self.root().joinpath(*check_asset_key(key).split("/"))
        if partition is None:
            return folder / f"=value.{self.format}"
        return folder / "=partitions" / f"{partition_file_name(partition)}.{self.format}"

    async def store(self, key: str, partition: str | None, value: Any) -> None:
        data = self._encode(key, partition, value)
        target = self.path(key, partition)
        await anyio.to_thread.run_sync(_write, self.root(), target, data)

    async def load(self, key: str, partition: str | None) -> Any:
        target = self.path(key, partition)
        data = await anyio.to_thread.run_sync(_read, target, key, partition)
        return self._decode(target, data)

    def _encode(self, key: str, partition: str | None, value: Any) -> bytes:
        where = _label(key, partition)
        if self.format == "bytes":
            if not isinstance(value, bytes | bytearray | memoryview):
                raise TypeError(
                    f"{where} is stored by FilesIO(format='bytes'), and its value is a "
                    f"{type(value).__name__}: return bytes, or use format='msgpack'"
                )
            return bytes(value)
        try:
            if self.format == "json":
                return msgspec.json.encode(value)
            return msgspec.msgpack.encode(value)
        except (TypeError, msgspec.EncodeError, ValueError, OverflowError) as exc:
            raise TypeError(
                f"the value of {where} cannot be stored as {self.format} ({exc}): return "
                "builtins, dataclasses or msgspec Structs, or bytes with format='bytes'"
            ) from None

    def _decode(self, path: Path, data: bytes) -> Any:
        if self.format == "bytes":
            return data
        try:
            if self.format == "json":
                return msgspec.json.decode(data)
            return msgspec.msgpack.decode(data)
        except msgspec.DecodeError as exc:
            raise AssetValueMissing(
                f"{path} is not valid {self.format} ({exc}): corrupt, or written with another "
                "format; materialise the asset again"
            ) from None


def _label(key: str, partition: str | None) -> str:
    return f"asset {key!r}" + ("" if partition is None else f" partition {partition!r}")


def _write(root: Path, target: Path, data: bytes) -> None:
    """Write ``data`` at ``target`` atomically (blocking: run in a worker thread)."""
    if not target.parent.is_dir():
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder = root
        for part in target.parent.relative_to(root).parts:
            folder = folder / part
            folder.mkdir(mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")  # 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _read(target: Path, key: str, partition: str | None) -> bytes:
    try:
        return target.read_bytes()
    except FileNotFoundError:
        raise AssetValueMissing(
            f"no stored value for {_label(key, partition)}: {target} does not exist; "
            f"materialise it first (flowcore assets materialize {key})"
        ) from None
