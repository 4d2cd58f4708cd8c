"""flowcore on PostgreSQL: ``flowcore.run(flow, store="postgresql://...")``.

A store plugin (the ``flowcore.stores`` entry points ``postgresql`` and ``postgres``):
every role of ``flowcore.store.base`` (the optional ``RunQueries`` too) on one database
that several hosts share. The package, a module per concept:

- :mod:`.store`: :class:`PostgresStore`, its claims and its queries;
- :mod:`.batch`: the engine's write batches, one statement each;
- :mod:`.schema`: the numbered migrations, the version table, and their runner;
- :mod:`.rows`: how records become rows and back;
- :mod:`.connection`: the pool, the writer's connection, transactions and errors;
- :mod:`.notify`: ``LISTEN``/``NOTIFY`` behind ``changes()``;
- :mod:`.blobs`: large results in a table; :mod:`.renewal`: leases renewed from a thread;
- :mod:`.url`: the URL and the store's own options (``schema=``, ``blobs=``).
"""

from .schema import MIGRATIONS, SCHEMA_VERSION
from .store import PostgresStore

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "PostgresStore"]
