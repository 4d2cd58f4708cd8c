"""State stores: where run records are kept.

``resolve_store`` turns what a user gives (nothing, a path, a URL, a store
object) into a store. Stores of other databases come from plugins registered
under the ``flowcore.stores`` entry-point group, keyed by URL scheme, and are
loaded only when such a URL is used. The contract a store meets is in
:mod:`flowcore.store.base`; ``flowcore.testing.check_store`` checks it.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from .base import BlobStore, CacheStore, LeaseStore, RunStore, SpanStore, Store
from .files import FileBlobs

if TYPE_CHECKING:
    from importlib.metadata import EntryPoints

    # Imported at their first use, by __getattr__ below (for type checkers, as if here).
    from .memory import MemoryStore
    from .sqlite import SCHEMA_VERSION, SQLiteStore

__all__ = [
    "SCHEMA_VERSION",
    "BlobStore",
    "CacheStore",
    "FileBlobs",
    "LeaseStore",
    "MemoryStore",
    "RunStore",
    "SQLiteStore",
    "SpanStore",
    "Store",
    "flowcore_home",
    "resolve_store",
]


#: The names imported at their first use, and their modules.
_LAZY: dict[str, str] = {
    "MemoryStore": ".memory",
    "SQLiteStore": ".sqlite",
    "SCHEMA_VERSION": ".sqlite",
}

if not TYPE_CHECKING:  # to type checkers, these names are imported above

    def __getattr__(name: str) -> object:
        """A name of :data:`_LAZY`, imported at its first use (PEP 562, as
        ``flowcore.__getattr__``): ``import flowcore`` needs neither store's module (the
        SQLite one brings sqlite3 and aiosqlite: about 5 ms), and a run on the default
        store never needs the memory store's."""
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *_LAZY})


def entry_points(*, group: str) -> EntryPoints:
    """``importlib.metadata.entry_points(group=group)``, imported at the first call: importing
    it costs some 15 ms (email, zipfile, csv), and only a plugin's name needs it."""
    from importlib.metadata import entry_points as installed

    return installed(group=group)


def flowcore_home() -> Path:
    """``$FLOWCORE_HOME``, or ``~/.flowcore`` when it is unset or empty."""
    home = os.environ.get("FLOWCORE_HOME")
    return Path(home).expanduser() if home else Path.home() / ".flowcore"


def resolve_store(spec: Store | str | os.PathLike[str] | None = None) -> Store:
    """The store for ``spec``.

    - ``None``: the URL in ``$FLOWCORE_DB_URL`` when it is set (a PostgreSQL store shared
      by several hosts, say), else SQLite at ``$FLOWCORE_HOME/flowcore.db``.
    - ``"memory"`` or ``":memory:"``: a :class:`MemoryStore`.
    - a path, or ``"sqlite:///path"``: SQLite at that path.
    - ``"scheme://..."``: the store plugin registered for that scheme.
    - a store object: itself.
    """
    if spec is None:
        url = os.environ.get("FLOWCORE_DB_URL", "").strip()
        if url:
            return resolve_store(url)
        return _sqlite(flowcore_home() / "flowcore.db")
    if isinstance(spec, os.PathLike):
        return _sqlite(spec)
    if not isinstance(spec, str):
        if isinstance(spec, Store):
            return spec
        raise ConfigurationError(
            f"`store` must be a path, a URL such as 'sqlite:///runs.db', 'memory', or a store "
            f"object, got {type(spec).__name__}"
        )
    if spec in ("memory", ":memory:"):
        memory: type[MemoryStore] = sys.modules[__name__].MemoryStore  # see __getattr__
        return memory()
    scheme, sep, rest = spec.partition("://")
    if not sep:
        return _sqlite(spec)
    if scheme == "sqlite":
        return _sqlite(rest[1:] if rest.startswith("/") else rest)
    plugins = {ep.name: ep for ep in entry_points(group="flowcore.stores")}
    if scheme in plugins:
        factory: Any = plugins[scheme].load()
        store: Store = factory(spec)
        return store
    installed = ", ".join(sorted(["sqlite", "memory", *plugins])) or "none"
    raise ConfigurationError(
        f"no flowcore store for URL scheme {scheme!r} (from {spec.split('@')[-1]!r}); "
        f"installed: {installed}. Install the plugin that provides it, e.g. "
        f"`pip install flowcore-{scheme}`"
    )


def _sqlite(path: str | os.PathLike[str]) -> SQLiteStore:
    """``SQLiteStore(path)``, its module imported at the first store made (see __getattr__)."""
    store: type[SQLiteStore] = sys.modules[__name__].SQLiteStore
    return store(path)
