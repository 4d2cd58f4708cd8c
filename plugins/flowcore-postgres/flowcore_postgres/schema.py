"""The PostgreSQL schema: numbered migrations, the version table, and the runner.

Every table lives in the store's schema (``flowcore`` unless the URL says
``schema=...``), so flowcore never mixes its tables with an application's. The
schema's ``flowcore_migrations`` table holds one row per migration applied (its number
and when): the schema version is the largest number there.

Each migration runs in one transaction with the others' under a transaction-level
advisory lock named after the schema, so an upgrade is all or nothing, and two
processes opening a new database together create it once (the second waits, then finds
it done). A schema from a newer flowcore-postgres is refused with a message saying what
to do, and so is a schema that holds tables but no version table (another
application's): flowcore never writes into either. Never edit a released migration:
add a new one (``tests/test_postgres_migrations.py`` pins the text of each). A step of a
migration is a statement, or the name of a Python function of :data:`DATA_STEPS` (a
data conversion SQL cannot do, such as reading msgpack bodies), run in the same
transaction.

Key columns are ``COLLATE "C"``: byte order, which is what run id prefixes need (a
range scan on the primary key) and cheaper to compare than a locale's order.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Final

import asyncpg
import msgspec

from flowcore.errors import SchemaTooNew, StoreCorrupted
from flowcore.ids import HOST

from .rows import tag_value
from .url import quote_ident

__all__ = [
    "DATA_STEPS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "VERSION_TABLE",
    "migrate",
    "schema_version",
]

VERSION_TABLE: Final = "flowcore_migrations"

_RUN_STATES = (
    "'Cached', 'Cancelled', 'Completed', 'Crashed', 'Failed', 'TimedOut', 'UpstreamFailed', "
    "'Pending', 'Running', 'Retrying'"
)

#: Numbered migrations; each runs in one transaction. Never edit a released one: add one.
MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    # 1: everything flowcore's store roles need, as of flowcore's SQLite schema 10.
    1: (
        # Runs: query columns, and the whole record in msgpack.
        f"""CREATE TABLE flow_runs (
               id TEXT COLLATE "C" PRIMARY KEY,
               name TEXT COLLATE "C" NOT NULL,
               kind TEXT NOT NULL,
               state TEXT NOT NULL CHECK (state IN ({_RUN_STATES})),
               created DOUBLE PRECISION NOT NULL,
               parent_run_id TEXT COLLATE "C",
               parent_task_seq INTEGER,
               trace_id TEXT COLLATE "C",
               resumed_from TEXT COLLATE "C",
               body BYTEA NOT NULL
           )""",
        "CREATE INDEX flow_runs_created ON flow_runs (created)",
        "CREATE INDEX flow_runs_name_created ON flow_runs (name, created)",
        "CREATE INDEX flow_runs_state ON flow_runs (state, created)",
        "CREATE INDEX flow_runs_parent ON flow_runs (parent_run_id, created)",
        "CREATE INDEX flow_runs_trace ON flow_runs (trace_id)",
        "CREATE INDEX flow_runs_resumed ON flow_runs (resumed_from) WHERE resumed_from IS NOT NULL",
        # At most one Running resumption of a run: resume claims build on it.
        "CREATE UNIQUE INDEX flow_runs_one_resumption ON flow_runs (resumed_from) "
        "WHERE resumed_from IS NOT NULL AND state = 'Running'",
        # Unfinished top-level runs only (few): what max_active_runs counts on every slot.
        "CREATE INDEX flow_runs_active ON flow_runs (name, created, id) "
        "WHERE parent_run_id IS NULL AND state IN ('Pending', 'Running', 'Retrying')",
        """CREATE TABLE task_runs (
               run_id TEXT COLLATE "C" NOT NULL,
               seq INTEGER NOT NULL,
               name TEXT COLLATE "C" NOT NULL,
               state TEXT NOT NULL,
               result_ref TEXT COLLATE "C",
               body BYTEA NOT NULL,
               PRIMARY KEY (run_id, seq)
           )""",
        "CREATE INDEX task_runs_result_ref ON task_runs (result_ref) WHERE result_ref IS NOT NULL",
        """CREATE TABLE cache_entries (
               key TEXT COLLATE "C" PRIMARY KEY,
               task_name TEXT COLLATE "C" NOT NULL,
               created DOUBLE PRECISION NOT NULL,
               expires DOUBLE PRECISION,
               result BYTEA,
               result_ref TEXT COLLATE "C",
               run_id TEXT COLLATE "C",
               seq INTEGER
           )""",
        "CREATE INDEX cache_entries_task ON cache_entries (task_name, created)",
        "CREATE INDEX cache_entries_created ON cache_entries (created)",
        # Spans: pruned by start time (an indexed delete) or by run.
        """CREATE TABLE spans (
               trace_id TEXT COLLATE "C" NOT NULL,
               span_id TEXT COLLATE "C" NOT NULL,
               run_id TEXT COLLATE "C",
               start BIGINT NOT NULL,
               body BYTEA NOT NULL,
               PRIMARY KEY (trace_id, span_id)
           )""",
        "CREATE INDEX spans_start ON spans (start)",
        # Run logs: ids grow in commit order (the writer holds a lock from its first id
        # to its commit), so a follower paging by id never skips a line.
        """CREATE TABLE logs (
               id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
               run_id TEXT COLLATE "C" NOT NULL,
               seq INTEGER,
               task BYTEA,
               time DOUBLE PRECISION NOT NULL,
               level INTEGER NOT NULL,
               logger BYTEA NOT NULL,
               message BYTEA NOT NULL
           )""",
        "CREATE INDEX logs_run ON logs (run_id, id)",
        "CREATE INDEX logs_task_run ON logs (run_id, seq, id) WHERE seq IS NOT NULL",
        # Shared limits: leases and waiting rows (waiting > 0), and rates (GCRA).
        """CREATE TABLE limit_leases (
               lease_id TEXT COLLATE "C" PRIMARY KEY,
               name TEXT COLLATE "C" NOT NULL,
               holder TEXT COLLATE "C" NOT NULL,
               host TEXT,
               pid INTEGER,
               expires DOUBLE PRECISION NOT NULL,
               waiting INTEGER NOT NULL DEFAULT 0,
               since DOUBLE PRECISION
           )""",
        "CREATE INDEX limit_leases_name ON limit_leases (name, expires)",
        "CREATE INDEX limit_leases_holder ON limit_leases (holder)",
        """CREATE TABLE limit_rates (
               name TEXT COLLATE "C" PRIMARY KEY,
               tat DOUBLE PRECISION NOT NULL
           )""",
        # What `flowcore serve` shares between servers: a claim is a row keyed by what it
        # claims, inserted only when absent.
        """CREATE TABLE schedules (
               flow TEXT COLLATE "C" NOT NULL,
               key TEXT COLLATE "C" NOT NULL,
               description TEXT NOT NULL DEFAULT '{}',
               cursor DOUBLE PRECISION,
               next_fire DOUBLE PRECISION,
               paused BOOLEAN NOT NULL DEFAULT FALSE,
               updated DOUBLE PRECISION NOT NULL DEFAULT 0,
               PRIMARY KEY (flow, key)
           )""",
        """CREATE TABLE slots (
               flow TEXT COLLATE "C" NOT NULL,
               key TEXT COLLATE "C" NOT NULL,
               slot DOUBLE PRECISION NOT NULL,
               run_id TEXT COLLATE "C",
               skipped TEXT,
               claimed DOUBLE PRECISION NOT NULL,
               PRIMARY KEY (flow, key, slot)
           )""",
        """CREATE TABLE triggers (
               id TEXT COLLATE "C" PRIMARY KEY,
               flow TEXT COLLATE "C" NOT NULL,
               parameters TEXT NOT NULL,
               created DOUBLE PRECISION NOT NULL,
               "by" TEXT NOT NULL DEFAULT '',
               claimed_by TEXT,
               claimed DOUBLE PRECISION,
               run_id TEXT COLLATE "C"
           )""",
        "CREATE INDEX triggers_pending ON triggers (flow, created, id) WHERE claimed_by IS NULL",
        "CREATE INDEX triggers_created ON triggers (created, id)",
        """CREATE TABLE served (
               flow TEXT COLLATE "C" NOT NULL,
               holder TEXT COLLATE "C" NOT NULL,
               host TEXT NOT NULL,
               pid INTEGER NOT NULL,
               machine TEXT NOT NULL DEFAULT '',
               entrypoint TEXT,
               parameters_schema TEXT NOT NULL DEFAULT '{}',
               schedules TEXT[] NOT NULL DEFAULT '{}',
               started DOUBLE PRECISION NOT NULL,
               heartbeat DOUBLE PRECISION NOT NULL,
               PRIMARY KEY (flow, holder)
           )""",
        "CREATE INDEX served_holder ON served (holder)",
        """CREATE TABLE once (
               kind TEXT COLLATE "C" NOT NULL,
               key TEXT COLLATE "C" NOT NULL,
               holder TEXT NOT NULL,
               claimed DOUBLE PRECISION NOT NULL,
               PRIMARY KEY (kind, key)
           )""",
        # Assets: definitions, append-only history, current partition versions, state rows
        # (range sets in the body, changed by read-modify-write under a lock per key).
        """CREATE TABLE asset_defs (
               key TEXT COLLATE "C" PRIMARY KEY,
               code_version TEXT NOT NULL,
               body BYTEA NOT NULL
           )""",
        """CREATE TABLE asset_materializations (
               id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
               key TEXT COLLATE "C" NOT NULL,
               partition TEXT COLLATE "C",
               at DOUBLE PRECISION NOT NULL,
               run_id TEXT COLLATE "C" NOT NULL,
               seq INTEGER NOT NULL,
               body BYTEA NOT NULL
           )""",
        "CREATE INDEX asset_materializations_key ON asset_materializations (key, partition, id)",
        "CREATE INDEX asset_materializations_key_id ON asset_materializations (key, id)",
        "CREATE INDEX asset_materializations_run ON asset_materializations (run_id, seq)",
        """CREATE TABLE asset_partitions (
               key TEXT COLLATE "C" NOT NULL,
               idx BIGINT NOT NULL,
               partition TEXT COLLATE "C",
               data_version TEXT NOT NULL,
               materialization BIGINT NOT NULL,
               PRIMARY KEY (key, idx)
           )""",
        """CREATE TABLE asset_checks (
               id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
               key TEXT COLLATE "C" NOT NULL,
               partition TEXT COLLATE "C",
               at DOUBLE PRECISION NOT NULL,
               body BYTEA NOT NULL
           )""",
        "CREATE INDEX asset_checks_key ON asset_checks (key, id)",
        """CREATE TABLE asset_state (
               key TEXT COLLATE "C" PRIMARY KEY,
               body BYTEA NOT NULL
           )""",
        """CREATE TABLE asset_dynamic_keys (
               name TEXT COLLATE "C" NOT NULL,
               key TEXT COLLATE "C" NOT NULL,
               idx INTEGER NOT NULL,
               added DOUBLE PRECISION NOT NULL,
               PRIMARY KEY (name, key),
               UNIQUE (name, idx)
           )""",
        """CREATE TABLE asset_evaluations (
               id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
               key TEXT COLLATE "C" NOT NULL,
               at DOUBLE PRECISION NOT NULL,
               body BYTEA NOT NULL
           )""",
        "CREATE INDEX asset_evaluations_key ON asset_evaluations (key, at, id)",
        # Large results (the blob seam), readable from every host using the database.
        """CREATE TABLE blobs (
               ref TEXT COLLATE "C" PRIMARY KEY,
               data BYTEA NOT NULL,
               created DOUBLE PRECISION NOT NULL
           )""",
        "CREATE INDEX blobs_created ON blobs (created)",
    ),
    # 2: durable span export. A row per ended run a shipper has claimed (``holder`` until
    #    ``until``) or is done with (shipped, or skipped as too old: ``done``); an ended
    #    run without a row is waiting to be shipped. Runs that ended before this migration
    #    are done: the catch-up after an upgrade is not a flood.
    2: (
        """CREATE TABLE span_exports (
               run_id TEXT COLLATE "C" PRIMARY KEY,
               holder TEXT,
               until DOUBLE PRECISION,
               done BOOLEAN NOT NULL DEFAULT FALSE
           )""",
        "INSERT INTO span_exports (run_id, done) SELECT id, TRUE FROM flow_runs "
        "WHERE state NOT IN ('Pending', 'Running', 'Retrying')",
    ),
    # 3: a flow run's tags: those of the tasks its task runs ran (`flowcore ui` filters the
    #    runs list by one, through RunQueries.filter_runs). A row per run and tag, written
    #    by the batch statement as tagged task runs are (batch.py), with the run's
    #    `created`: a tag's runs newest first are a backward walk of `run_tags_tag`, a time
    #    range its bounds, each row then joined to its run by primary key. The tag is its
    #    UTF-8 bytes (rows.tag_value: text cannot hold a NUL). A table rather than a
    #    column of flow_runs: there, a new tag would be an update, which in PostgreSQL
    #    writes a new version of the whole run row (its body too) with new entries in its
    #    indexes; here it is one small insert, and an index of its own orders a tag's runs.
    #    Runs recorded before get the tags of their task runs (only bodies holding the
    #    key "tags" are decoded).
    3: (
        """CREATE TABLE run_tags (
               run_id TEXT COLLATE "C" NOT NULL,
               tag BYTEA NOT NULL,
               created DOUBLE PRECISION NOT NULL,
               PRIMARY KEY (run_id, tag)
           )""",
        "CREATE INDEX run_tags_tag ON run_tags (tag, created, run_id)",
        "_fill_run_tags",
    ),
    # 4: retention (`flowcore runs prune`, retention.py). Top-level runs by creation time:
    #    a prune walks them oldest first, a page at a time from where the last one
    #    stopped, reading no subflow on the way (an entry per top-level run written:
    #    nothing per task run). The trigger that started a run, which goes with it.
    #    Materialisations holding a blob, whose msgpack body has the key "value_ref":
    #    blob pruning keeps their blobs, found without reading the history.
    4: (
        "CREATE INDEX flow_runs_top ON flow_runs (created, id) WHERE parent_run_id IS NULL",
        "CREATE INDEX triggers_run ON triggers (run_id) WHERE run_id IS NOT NULL",
        "CREATE INDEX asset_materializations_value_ref ON asset_materializations (id) "
        r"WHERE position('\xa976616c75655f726566'::bytea IN body) > 0",
    ),
}
SCHEMA_VERSION: Final = max(MIGRATIONS)


class _Tags(msgspec.Struct, gc=False):
    """What the data step of migration 3 reads of a task run's body."""

    tags: list[str] | None = None


_tags_dec = msgspec.msgpack.Decoder(_Tags)
#: Task runs read at a time by the data step of migration 3.
_FILL_CHUNK: Final = 10_000
#: The msgpack key ``tags`` (a fixstr of 4 bytes): only bodies holding it are decoded.
_TAGS_KEY: Final = b"\xa4tags"
_ADD_RUN_TAGS: Final = """
INSERT INTO run_tags (run_id, tag, created)
SELECT p.r, p.t, f.created
FROM unnest($1::text[], $2::bytea[]) AS p(r, t) JOIN flow_runs AS f ON f.id = p.r
ORDER BY 1, 2
ON CONFLICT (run_id, tag) DO NOTHING
"""


async def _fill_run_tags(conn: asyncpg.Connection) -> None:
    """Data step of migration 3: each run gets the tags of its task runs, read a chunk at
    a time in key order (memory stays bounded by a chunk). Only bodies holding the key
    ``tags`` are decoded, and only that key of them; tags of task runs whose flow run is
    not there are dropped, as the batch statement drops them."""
    select = "SELECT run_id, seq, body FROM task_runs WHERE position($1::bytea IN body) > 0"
    page = "ORDER BY run_id, seq LIMIT $2"
    rows = await conn.fetch(f"{select} {page}", _TAGS_KEY, _FILL_CHUNK)
    while rows:
        # The next chunk starts after this one on the primary key (never from the start).
        after = (rows[-1][0], rows[-1][1])
        pairs = sorted(
            {(r[0], tag_value(tag)) for r in rows for tag in _tags_dec.decode(r[2]).tags or ()}
        )
        if pairs:
            await conn.execute(_ADD_RUN_TAGS, [p[0] for p in pairs], [p[1] for p in pairs])
        rows = await conn.fetch(
            f"{select} AND (run_id, seq) > ($3::text, $4::int4) {page}",
            _TAGS_KEY,
            _FILL_CHUNK,
            *after,
        )


#: Migration steps that are Python (data conversions), by the name used in MIGRATIONS.
DATA_STEPS: Final[dict[str, Callable[[asyncpg.Connection], Awaitable[None]]]] = {
    "_fill_run_tags": _fill_run_tags,
}


async def schema_version(conn: asyncpg.Connection) -> int | None:
    """The version of the schema on ``conn``'s search path; ``None`` when it has no
    version table (a new schema, or another application's)."""
    # Looked up first (a query of a missing table would abort the transaction under way).
    if await conn.fetchval("SELECT to_regclass($1) IS NULL", VERSION_TABLE):
        return None
    value = await conn.fetchval(f"SELECT max(version) FROM {VERSION_TABLE}")
    return int(value) if value is not None else 0


def refuse_newer(location: str, schema: str, version: int) -> None:
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"schema {schema!r} of {location} has flowcore-postgres schema version {version}, "
            f"but this flowcore-postgres reads up to version {SCHEMA_VERSION}; upgrade it "
            "(pip install -U flowcore-postgres) on this host too, or point the URL at another "
            "schema (?schema=...) to start a separate store"
        )


async def migrate(conn: asyncpg.Connection, schema: str, location: str) -> None:
    """Create or upgrade the schema on ``conn`` to :data:`SCHEMA_VERSION`, all or nothing.

    ``conn``'s search path is the schema (which may not exist yet). A quick look first:
    a schema already at this version is opened without taking any lock.
    """
    current = await schema_version(conn)
    if current is not None:
        refuse_newer(location, schema, current)
        if current == SCHEMA_VERSION:
            return
    async with conn.transaction():
        # Database-wide, so it serialises processes creating the schema itself too.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"flowcore.migrate:{schema}"
        )
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
        current = await schema_version(conn)
        if current is None:
            await _refuse_foreign(conn, schema, location)
            await conn.execute(
                f"""CREATE TABLE {VERSION_TABLE} (
                       version INTEGER PRIMARY KEY,
                       applied DOUBLE PRECISION NOT NULL,
                       by_host TEXT NOT NULL DEFAULT ''
                   )"""
            )
            current = 0
        refuse_newer(location, schema, current)
        for number in sorted(MIGRATIONS):
            if number <= current:
                continue
            for statement in MIGRATIONS[number]:
                step = DATA_STEPS.get(statement)
                if step is not None:
                    await step(conn)
                else:
                    await conn.execute(statement)
            await conn.execute(
                f"INSERT INTO {VERSION_TABLE} (version, applied, by_host) VALUES ($1, $2, $3)",
                number,
                time.time(),
                HOST,
            )


async def _refuse_foreign(conn: asyncpg.Connection, schema: str, location: str) -> None:
    """A schema with tables but no version table is another application's: never write there."""
    tables = await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY tablename", schema
    )
    if tables:
        names = ", ".join(r[0] for r in tables[:5])
        raise StoreCorrupted(
            f"schema {schema!r} of {location} holds tables that are not flowcore's ({names}) "
            "and no flowcore version table; flowcore will not write into it. Give flowcore a "
            "schema of its own: add ?schema=flowcore (or another new name) to the URL"
        )
