"""The embedded default store: one SQLite file, shared safely by several processes.

- :mod:`.store`: :class:`SQLiteStore`, its writes and its queries;
- :mod:`.schema`: the numbered migrations and their runner;
- :mod:`.retention`: old runs and log lines deleted in chunks (``flowcore runs prune``);
- :mod:`.rows`: how records become rows and back;
- :mod:`.connection`: the connections, write transactions and lock waits;
- :mod:`.renewal`: shared limits' leases renewed from a thread with no event loop.
"""

from .schema import MIGRATIONS, SCHEMA_VERSION
from .store import SQLiteStore

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SQLiteStore"]
