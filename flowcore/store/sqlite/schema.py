"""The SQLite schema: numbered migrations and the runner that applies them.

An upgrade runs every migration it needs in one ``BEGIN IMMEDIATE`` transaction, so it
is all or nothing, and two processes opening an old database together migrate it once.
It is one call on aiosqlite's thread (:func:`_upgrade`): a new database's hundred-odd
statements, each a round trip to that thread, made a first run on a new store about
12 ms slower than one on an existing store.
A database from a newer flowcore, a corrupt file or another application's SQLite
file is refused with a message saying what to do; flowcore never modifies it.
Never edit a released migration: add a new one (``tests/test_migrations.py`` pins
the text of each released one).
"""

from __future__ import annotations

import functools
import random
import sqlite3
import time
from collections.abc import Callable, Iterable
from contextlib import closing
from pathlib import Path
from typing import Any, Final, TypeVar

import aiosqlite
import anyio
import msgspec

from ...errors import SchemaTooNew, StoreCorrupted
from ...records import transition
from ...states import State
from .connection import atomically, is_locked, on_thread, translate
from .rows import (
    FLOW_COLS,
    FLOW_WRITE_COLS,
    TASK_COLS,
    TERMINAL_SQL,
    V1_TASK_COLS,
    asset_body,
    asset_state_record,
    flow_record,
    flow_row,
    task_record,
    task_row,
    v1_task_record,
)

__all__ = [
    "ADD_RUN_TAG",
    "INDEXED_STATES",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "TAG_END",
    "UNINDEXED_STATES",
    "configure",
    "migrate",
    "run_tag_params",
    "tag_text",
]

_T = TypeVar("_T")

#: Numbered migrations; each runs in one transaction. Never edit a released one: add a new one.
MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    1: (
        """CREATE TABLE flowcore_meta (
               key TEXT PRIMARY KEY,
               value TEXT NOT NULL
           )""",
        """CREATE TABLE flow_runs (
               id TEXT PRIMARY KEY,
               name TEXT NOT NULL,
               kind TEXT NOT NULL DEFAULT 'flow',
               state TEXT NOT NULL,
               created REAL NOT NULL,
               parameters BLOB,
               parent_run_id TEXT,
               parent_task_seq INTEGER,
               started REAL,
               ended REAL,
               heartbeat REAL,
               error_type TEXT,
               error_message TEXT,
               traceback TEXT,
               history BLOB,
               host TEXT,
               pid INTEGER,
               task_count INTEGER NOT NULL DEFAULT 0,
               CHECK (state IN ('Cached', 'Cancelled', 'Completed', 'Crashed', 'Failed', 'TimedOut', 'UpstreamFailed', 'Pending', 'Running', 'Retrying'))
           )""",
        "CREATE INDEX flow_runs_created ON flow_runs (created)",
        "CREATE INDEX flow_runs_name_created ON flow_runs (name, created)",
        "CREATE INDEX flow_runs_parent ON flow_runs (parent_run_id)",
        """CREATE TABLE task_runs (
               run_id TEXT NOT NULL,
               seq INTEGER NOT NULL,
               name TEXT NOT NULL,
               state TEXT NOT NULL,
               created REAL NOT NULL,
               parent_seq INTEGER,
               upstream BLOB,
               inputs BLOB,
               attempts INTEGER NOT NULL DEFAULT 0,
               started REAL,
               ended REAL,
               error_type TEXT,
               error_message TEXT,
               traceback TEXT,
               history BLOB,
               PRIMARY KEY (run_id, seq)
           ) WITHOUT ROWID""",
    ),
    # 2: stored results, caching, resume links.
    2: (
        "ALTER TABLE flow_runs ADD COLUMN entrypoint TEXT",
        "ALTER TABLE flow_runs ADD COLUMN resumed_from TEXT",
        "CREATE INDEX flow_runs_state ON flow_runs (state)",
        # Task runs become (keys, state, body): the body is the whole record in
        # msgpack. Binding 19 columns cost ~11 µs a row; 5 columns and one blob ~4 µs.
        """CREATE TABLE task_runs_v2 (
               run_id TEXT NOT NULL,
               seq INTEGER NOT NULL,
               name TEXT NOT NULL,
               state TEXT NOT NULL,
               result_ref TEXT,
               body BLOB NOT NULL,
               PRIMARY KEY (run_id, seq)
           ) WITHOUT ROWID""",
        "_copy_task_runs_v1_to_v2",
        "DROP TABLE task_runs",
        "ALTER TABLE task_runs_v2 RENAME TO task_runs",
        "CREATE INDEX task_runs_result_ref ON task_runs (result_ref) WHERE result_ref IS NOT NULL",
        """CREATE TABLE cache_entries (
               key TEXT PRIMARY KEY,
               task_name TEXT NOT NULL,
               created REAL NOT NULL,
               expires REAL,
               result BLOB,
               result_ref TEXT,
               run_id TEXT,
               seq INTEGER
           )""",
        "CREATE INDEX cache_entries_task ON cache_entries (task_name)",
    ),
    # 3: OpenTelemetry spans, persisted with the runs.
    3: (
        "ALTER TABLE flow_runs ADD COLUMN trace_id TEXT",
        "ALTER TABLE flow_runs ADD COLUMN span_id TEXT",
        """CREATE TABLE spans (
               trace_id TEXT NOT NULL,
               span_id TEXT NOT NULL,
               run_id TEXT,
               start INTEGER NOT NULL,
               body BLOB NOT NULL,
               PRIMARY KEY (trace_id, span_id)
           ) WITHOUT ROWID""",
        "CREATE INDEX spans_start ON spans (start)",
        "CREATE INDEX flow_runs_trace ON flow_runs (trace_id)",
    ),
    # 4: leases of limits shared by several processes.
    4: (
        """CREATE TABLE limit_leases (
               lease_id TEXT PRIMARY KEY,
               name TEXT NOT NULL,
               holder TEXT NOT NULL,
               host TEXT,
               pid INTEGER,
               expires REAL NOT NULL
           )""",
        "CREATE INDEX limit_leases_name ON limit_leases (name, expires)",
    ),
    # 5: waiters of shared limits (served oldest first; `waiting` counts the slots a
    #    waiting row asks for, 0 for a lease), and shared rate limits.
    5: (
        "ALTER TABLE limit_leases ADD COLUMN waiting INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE limit_leases ADD COLUMN since REAL",
        """CREATE TABLE limit_rates (
               name TEXT PRIMARY KEY,
               tat REAL NOT NULL
           ) WITHOUT ROWID""",
    ),
    # 6: flow runs become (query columns, body) as task runs are: the body is the whole
    #    record in msgpack (NULL in rows written before), so a new field needs no
    #    migration. At most one Running resumption of a run (resume claims build on it).
    6: (
        "ALTER TABLE flow_runs ADD COLUMN body BLOB",
        "_crash_all_but_the_newest_running_resumption",
        "CREATE UNIQUE INDEX flow_runs_one_resumption ON flow_runs (resumed_from) "
        "WHERE resumed_from IS NOT NULL AND state = 'Running'",
    ),
    # 7: lines of run logs. `id` grows with every line written (AUTOINCREMENT: never
    #    reused, even after deletes), so a reader follows a log by it. An index keeps
    #    the rowid as its last column: (run_id) reads a run's lines in id order, and
    #    (run_id, seq) a task run's.
    7: (
        """CREATE TABLE logs (
               id INTEGER PRIMARY KEY AUTOINCREMENT,
               run_id TEXT NOT NULL,
               seq INTEGER,
               task TEXT,
               time REAL NOT NULL,
               level INTEGER NOT NULL,
               logger TEXT NOT NULL,
               message TEXT NOT NULL
           )""",
        "CREATE INDEX logs_run ON logs (run_id)",
        "CREATE INDEX logs_task_run ON logs (run_id, seq) WHERE seq IS NOT NULL",
    ),
    # 8: what `flowcore serve` shares between servers. A claim is a row keyed by what
    #    it claims (a slot, a trigger's claimed_by, a one-shot key), inserted or updated
    #    only when absent, so two servers never claim one thing. `flow_runs_active`
    #    holds only unfinished top-level runs (few), which max_active_runs counts on
    #    every slot; `triggers_pending` only unclaimed triggers, claimed oldest first.
    8: (
        """CREATE TABLE schedules (
               flow TEXT NOT NULL,
               key TEXT NOT NULL,
               description TEXT NOT NULL DEFAULT '{}',
               cursor REAL,
               next_fire REAL,
               paused INTEGER NOT NULL DEFAULT 0,
               updated REAL NOT NULL DEFAULT 0,
               PRIMARY KEY (flow, key)
           ) WITHOUT ROWID""",
        """CREATE TABLE slots (
               flow TEXT NOT NULL,
               key TEXT NOT NULL,
               slot REAL NOT NULL,
               run_id TEXT,
               skipped TEXT,
               claimed REAL NOT NULL,
               PRIMARY KEY (flow, key, slot)
           ) WITHOUT ROWID""",
        """CREATE TABLE triggers (
               id TEXT PRIMARY KEY,
               flow TEXT NOT NULL,
               parameters TEXT NOT NULL,
               created REAL NOT NULL,
               "by" TEXT NOT NULL DEFAULT '',
               claimed_by TEXT,
               claimed REAL,
               run_id TEXT
           )""",
        "CREATE INDEX triggers_pending ON triggers (flow, created, id) WHERE claimed_by IS NULL",
        "CREATE INDEX triggers_created ON triggers (created)",
        """CREATE TABLE served (
               flow TEXT NOT NULL,
               holder TEXT NOT NULL,
               host TEXT NOT NULL,
               pid INTEGER NOT NULL,
               machine TEXT NOT NULL DEFAULT '',
               entrypoint TEXT,
               parameters_schema TEXT NOT NULL DEFAULT '{}',
               schedules TEXT NOT NULL DEFAULT '[]',
               started REAL NOT NULL,
               heartbeat REAL NOT NULL,
               PRIMARY KEY (flow, holder)
           ) WITHOUT ROWID""",
        """CREATE TABLE once (
               kind TEXT NOT NULL,
               key TEXT NOT NULL,
               holder TEXT NOT NULL,
               claimed REAL NOT NULL,
               PRIMARY KEY (kind, key)
           ) WITHOUT ROWID""",
        "CREATE INDEX flow_runs_active ON flow_runs (name, created) WHERE parent_run_id IS NULL "
        "AND state IN ('Pending', 'Running', 'Retrying')",
    ),
    # 9: assets. Definitions as synced by a process that has the code; the append-only
    #    history of materialisations and check results (a msgpack body each, with the
    #    columns queries filter on); the current data version of each materialised
    #    partition (what a downstream's consumed versions are compared with, inside
    #    the write transaction); and one state row per asset whose body holds its
    #    range sets (materialised, stale, failed-check) and the cause, changed by
    #    read-modify-write in the write transaction so concurrent writers lose nothing;
    #    the keys of dynamic partitions, numbered in the order they were added.
    9: (
        """CREATE TABLE asset_defs (
               key TEXT PRIMARY KEY,
               code_version TEXT NOT NULL,
               body BLOB NOT NULL
           ) WITHOUT ROWID""",
        """CREATE TABLE asset_materializations (
               id INTEGER PRIMARY KEY,
               key TEXT NOT NULL,
               partition TEXT,
               at REAL NOT NULL,
               run_id TEXT NOT NULL,
               seq INTEGER NOT NULL,
               body BLOB NOT NULL
           )""",
        "CREATE INDEX asset_materializations_key ON asset_materializations (key, partition, id)",
        "CREATE INDEX asset_materializations_run ON asset_materializations (run_id, seq)",
        """CREATE TABLE asset_partitions (
               key TEXT NOT NULL,
               idx INTEGER NOT NULL,
               partition TEXT,
               data_version TEXT NOT NULL,
               materialization INTEGER NOT NULL,
               PRIMARY KEY (key, idx)
           ) WITHOUT ROWID""",
        """CREATE TABLE asset_checks (
               id INTEGER PRIMARY KEY,
               key TEXT NOT NULL,
               partition TEXT,
               at REAL NOT NULL,
               body BLOB NOT NULL
           )""",
        "CREATE INDEX asset_checks_key ON asset_checks (key, id)",
        """CREATE TABLE asset_state (
               key TEXT PRIMARY KEY,
               body BLOB NOT NULL
           ) WITHOUT ROWID""",
        """CREATE TABLE asset_dynamic_keys (
               name TEXT NOT NULL,
               key TEXT NOT NULL,
               idx INTEGER NOT NULL,
               added REAL NOT NULL,
               PRIMARY KEY (name, key),
               UNIQUE (name, idx)
           ) WITHOUT ROWID""",
    ),
    # 10: evaluations of assets' automation by `flowcore serve` (what was considered,
    #     decided, and why), append-only, read by key and time for `assets why`.
    10: (
        """CREATE TABLE asset_evaluations (
               id INTEGER PRIMARY KEY,
               key TEXT NOT NULL,
               at REAL NOT NULL,
               body BLOB NOT NULL
           )""",
        "CREATE INDEX asset_evaluations_key ON asset_evaluations (key, at, id)",
    ),
    # 11: durable span export (flowcore.telemetry.shipper): each ended flow run's spans are
    #     shipped to the collector from the store, and the run marked; a claim with a
    #     lease keeps two processes from shipping the same run. Runs recorded before
    #     are marked skipped (2): `flowcore trace export` sends them when asked.
    11: (
        "ALTER TABLE flow_runs ADD COLUMN export_state INTEGER",
        "ALTER TABLE flow_runs ADD COLUMN export_holder TEXT",
        "ALTER TABLE flow_runs ADD COLUMN export_until REAL",
        "UPDATE flow_runs SET export_state = 2",
        "CREATE INDEX flow_runs_export ON flow_runs (created) WHERE export_state IS NULL AND "
        "state IN ('Cached', 'Cancelled', 'Completed', 'Crashed', 'Failed', 'TimedOut', "
        "'UpstreamFailed')",
    ),
    # 12: a flow run's tags: those of the tasks its task runs ran (`flowcore ui` filters
    #     the runs list by one). Text, each tag followed by \x1f (see tag_text), searched
    #     with instr() while the created index is walked newest first: a page costs the
    #     runs it passes over, and no index is kept up to date on the write path. Runs
    #     recorded before get the tags of their task runs (only bodies holding "tags"
    #     are decoded).
    12: (
        "ALTER TABLE flow_runs ADD COLUMN tags TEXT",
        "_fill_run_tags",
    ),
    # 13: retention (`flowcore runs prune`, store/sqlite/retention.py). Top-level runs by
    #     creation time: a prune walks them oldest first, a page at a time from where the
    #     last one stopped, reading no subflow on the way (one entry per top-level run
    #     written: nothing per task run). The trigger that started a run, which goes
    #     with it. Materialisations holding a blob, whose msgpack body has the key
    #     "value_ref": blob pruning keeps their blobs, found without reading the history.
    13: (
        "CREATE INDEX flow_runs_top ON flow_runs (created, id) WHERE parent_run_id IS NULL",
        "CREATE INDEX triggers_run ON triggers (run_id) WHERE run_id IS NOT NULL",
        "CREATE INDEX asset_materializations_value_ref ON asset_materializations (id) "
        "WHERE instr(body, X'a976616c75655f726566') > 0",
    ),
    # 14: writing a materialisation costs the same however long the history. The history
    #     is chained instead of indexed by asset: each materialisation names the one
    #     before it of its asset (prev; the newest is in the asset's state) and of its
    #     partition (prev_partition; the newest is in its asset_partitions row, found by
    #     partition key through a new index that grows only with new partitions). The
    #     index by asset key took a random page per materialisation (a year of daily
    #     runs of 1,000 assets made each write ten times slower); it and the unread
    #     index by run go. And the asset states' clock: every write of asset_state rows
    #     sets it to a new random value, so a store that remembers the states it last
    #     wrote knows from one row whether anyone (another process, another connection,
    #     a rolled-back write) changed them since (store.sqlite.store._StateCache).
    14: (
        "ALTER TABLE asset_materializations ADD COLUMN prev INTEGER",
        "ALTER TABLE asset_materializations ADD COLUMN prev_partition INTEGER",
        "_chain_history",
        "DROP INDEX asset_materializations_key",
        "DROP INDEX asset_materializations_run",
        "CREATE INDEX asset_partitions_key ON asset_partitions (key, partition)",
        "CREATE TABLE asset_clock (id INTEGER PRIMARY KEY CHECK (id = 0), tick INTEGER NOT NULL)",
        "INSERT INTO asset_clock (id, tick) VALUES (0, 0)",
    ),
    # 15: a flow run's commit writes fewer index pages. Flow runs are no longer indexed
    #     by trace id (random: a page per run; nothing reads flow runs by trace but
    #     retention, which reads span rows instead), and only subflows by parent (the
    #     top-level runs, the most of them, have flow_runs_top since 13, flow_runs_created
    #     since 16).
    15: (
        "DROP INDEX flow_runs_trace",
        "DROP INDEX flow_runs_parent",
        "CREATE INDEX flow_runs_parent ON flow_runs (parent_run_id) "
        "WHERE parent_run_id IS NOT NULL",
    ),
    # 16: a run enters two B-trees fewer; each cost a commit of a service's requests about
    #     a tenth of the pages it wrote. Completed runs, most runs of every store, leave
    #     the state index: it serves the rare states (a run failed, running, crashed:
    #     counted and listed by it), and a common one is listed walking the creation
    #     order anyway (store.filter_runs). And one index orders every run by creation,
    #     (created, id), where a top-level run was in two (flow_runs_created, and 13's
    #     flow_runs_top): a prune walks it too, passing over the subflows among the
    #     top-level runs it reads (retention.py).
    16: (
        "DROP INDEX flow_runs_state",
        "CREATE INDEX flow_runs_state ON flow_runs (state) "
        "WHERE state NOT IN ('Cached', 'Completed')",
        "DROP INDEX flow_runs_top",
        "DROP INDEX flow_runs_created",
        "CREATE INDEX flow_runs_created ON flow_runs (created, id)",
    ),
}
SCHEMA_VERSION: Final = max(MIGRATIONS)
#: The states the index flow_runs_state leaves out (migration 16): the common ones.
UNINDEXED_STATES: Final = frozenset({State.CACHED.value, State.COMPLETED.value})
#: That index's predicate, which a query must repeat word for word for SQLite to use it.
INDEXED_STATES: Final = "state NOT IN ({})".format(
    ", ".join(f"'{state}'" for state in sorted(UNINDEXED_STATES))
)
OUR_TABLES: Final = frozenset(
    stmt.split()[2]
    for steps in MIGRATIONS.values()
    for stmt in steps
    if stmt.lstrip().startswith("CREATE TABLE")
)


def _copy_task_runs_v1_to_v2(db: sqlite3.Connection) -> None:
    """Data step of migration 2: re-encode every version-1 task run row, dropping nothing."""
    with closing(db.execute(f"SELECT {V1_TASK_COLS} FROM task_runs")) as cur:
        while rows := cur.fetchmany(10_000):
            records = [v1_task_record(r) for r in rows]
            db.executemany(
                f"INSERT INTO task_runs_v2 ({TASK_COLS}) VALUES (?, ?, ?, ?, ?, ?)",
                [task_row(t) for t in records],
            )


def _crash_all_but_the_newest_running_resumption(db: sqlite3.Connection) -> None:
    """Data step of migration 6, before its unique index: a run resumed twice at once
    may have two resumptions still Running. The newest stays Running; each older one is
    marked Crashed, its unfinished task runs too, with a note saying why. Had it been
    alive after all, its completion replaces the Crashed record (a late completion)."""
    now = time.time()
    with closing(
        db.execute(
            f"SELECT {FLOW_COLS} FROM flow_runs AS r WHERE state = 'Running' "
            "AND resumed_from IS NOT NULL AND EXISTS (SELECT 1 FROM flow_runs AS n "
            "WHERE n.state = 'Running' AND n.resumed_from = r.resumed_from "
            "AND (n.created > r.created OR (n.created = r.created AND n.id > r.id)))"
        )
    ) as cur:
        older = [flow_record(row) for row in cur.fetchall()]
    for run in older:
        note = (
            f"a newer resumption of run {run.resumed_from} was running too when the database "
            "was upgraded to schema version 6, which allows one at a time"
        )
        transition(run, State.CRASHED, now, note)
        run.error_type = "Crashed"
        run.error_message = f"taken for crashed: {note}"
        db.execute(
            f"UPDATE flow_runs SET {', '.join(c + ' = ?' for c in FLOW_WRITE_COLS.split(', '))} "
            "WHERE id = ?",
            (*flow_row(run), run.id),
        )
        with closing(
            db.execute(
                f"SELECT {TASK_COLS} FROM task_runs WHERE run_id = ? "
                f"AND state NOT IN ({TERMINAL_SQL})",
                (run.id,),
            )
        ) as cur:
            tasks = [task_record(row) for row in cur.fetchall()]
        for task in tasks:
            transition(task, State.CRASHED, now)
        db.executemany(
            "UPDATE task_runs SET state = ?, body = ? WHERE run_id = ? AND seq = ?",
            [(row[3], row[5], row[0], row[1]) for row in map(task_row, tasks)],
        )


#: What ends each tag in ``flow_runs.tags`` (migration 12): ``"api\x1fdb\x1f"``, read
#: from a leading separator (``"\x1fapi\x1fdb\x1f"``) so that every tag sits between two.
TAG_END: Final = "\x1f"
#: Adds tag ``?1`` (as :func:`tag_text` gives it) to run ``?2`` unless it has it already.
ADD_RUN_TAG: Final = (
    "UPDATE flow_runs SET tags = coalesce(tags, char(31)) || substr(?1, 2) "
    "WHERE id = ?2 AND instr(coalesce(tags, ''), ?1) = 0"
)


def tag_text(tag: str) -> str:
    """``tag`` as ``flow_runs.tags`` holds it, between separators (what a search looks
    for): a backslash doubled and a separator written ``\\x1f``, so no tag holds one and
    two tags never read as each other."""
    return TAG_END + tag.replace("\\", "\\\\").replace(TAG_END, "\\x1f") + TAG_END


def run_tag_params(run_id: str, tags: Iterable[str]) -> list[tuple[str, str]]:
    """:data:`ADD_RUN_TAG`'s parameters for these tags of run ``run_id``."""
    return [(tag_text(tag), run_id) for tag in tags]


def _fill_run_tags(db: sqlite3.Connection) -> None:
    """Data step of migration 12: each run gets the tags of its task runs. Only bodies
    holding the key ``tags`` (msgpack ``\\xa4tags``) are decoded."""
    with closing(
        db.execute(f"SELECT {TASK_COLS} FROM task_runs WHERE instr(body, X'a474616773') > 0")
    ) as cur:
        while rows := cur.fetchmany(10_000):
            pairs = {(t.run_id, tag) for t in map(task_record, rows) for tag in t.tags or ()}
            params = [p for run_id, tag in sorted(pairs) for p in run_tag_params(run_id, [tag])]
            db.executemany(ADD_RUN_TAG, params)


def _chain_history(db: sqlite3.Connection) -> None:
    """Data step of migration 14, while the index by asset key is still there: chain each
    materialisation to the one before it of its asset and of its partition, and give
    each asset's state the id of its newest. Read in key order, a group at a time (a
    million partitions are not held at once)."""
    with closing(
        db.execute("SELECT id, key, partition FROM asset_materializations ORDER BY key, id")
    ) as cur:
        last: tuple[str, int] | None = None
        heads: list[tuple[str, int]] = []
        while rows := cur.fetchmany(10_000):
            links = []
            for id_, key, _ in rows:
                if last is not None and last[0] == key:
                    links.append((last[1], id_))
                else:
                    if last is not None:
                        heads.append(last)
                last = (key, id_)
            db.executemany("UPDATE asset_materializations SET prev = ? WHERE id = ?", links)
        if last is not None:
            heads.append(last)
    with closing(
        db.execute(
            "SELECT id, key, partition FROM asset_materializations WHERE partition IS NOT NULL "
            "ORDER BY key, partition, id"
        )
    ) as cur:
        before: tuple[str, str, int] | None = None
        while rows := cur.fetchmany(10_000):
            links = []
            for id_, key, partition in rows:
                if before is not None and before[:2] == (key, partition):
                    links.append((before[2], id_))
                before = (key, partition, id_)
            db.executemany(
                "UPDATE asset_materializations SET prev_partition = ? WHERE id = ?", links
            )
    for key, head in heads:
        row = db.execute("SELECT body FROM asset_state WHERE key = ?", (key,)).fetchone()
        if row is not None:
            state = asset_state_record(row[0])
            state.last_materialization = head
            db.execute("UPDATE asset_state SET body = ? WHERE key = ?", (asset_body(state), key))


#: Migration steps that are Python (data conversions), by the name used in MIGRATIONS:
#: each is given the connection, on its thread, inside the upgrade's transaction.
DATA_STEPS: Final[dict[str, Callable[[sqlite3.Connection], None]]] = {
    "_copy_task_runs_v1_to_v2": _copy_task_runs_v1_to_v2,
    "_crash_all_but_the_newest_running_resumption": _crash_all_but_the_newest_running_resumption,
    "_fill_run_tags": _fill_run_tags,
    "_chain_history": _chain_history,
}


async def configure(
    db: aiosqlite.Connection, path: Path, synchronous: str, lock_timeout: float
) -> int:
    """Check the file is a flowcore database this version reads, then set WAL mode; the
    schema version it has (for :func:`migrate`). A current database takes one call on the
    connection's thread."""
    busy_timeout_ms = int(min(lock_timeout, 5.0) * 1000)
    try:
        # Read-only checks first: a corrupt, foreign or newer database is refused
        # before anything (even the journal mode) is changed in it.
        version = await _with_lock_retry(
            db, lock_timeout, _first_look, busy_timeout_ms, synchronous
        )
        if version != SCHEMA_VERSION:
            refuse_newer(path, version)
            if version == 0:
                await refuse_foreign(db, path)
            await _with_lock_retry(db, lock_timeout, _set_journal, synchronous)
    except sqlite3.DatabaseError as exc:
        raise translate(exc, path, lock_timeout) from exc
    return version


def _first_look(db: sqlite3.Connection, busy_timeout_ms: int, synchronous: str) -> int:
    """The schema version; ``PRAGMA schema_version`` reads the header first, so a file that
    is not an SQLite database fails here, unchanged. A database already at this version
    has nothing to refuse: its journal mode is set at once."""
    db.execute("PRAGMA schema_version")
    db.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
    version = _user_version(db)
    if version == SCHEMA_VERSION:
        _set_journal(db, synchronous)
    return version


def _set_journal(db: sqlite3.Connection, synchronous: str) -> None:
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(f"PRAGMA synchronous = {synchronous}")


def refuse_newer(path: Path, version: int) -> None:
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{path} has schema version {version}, but this flowcore reads up to "
            f"version {SCHEMA_VERSION}; upgrade flowcore (pip install -U flowcore), or "
            "set FLOWCORE_HOME to another folder to start a separate database"
        )


async def migrate(
    db: aiosqlite.Connection, path: Path, lock_timeout: float, version: int | None = None
) -> None:
    """Bring the schema to :data:`SCHEMA_VERSION`, all or nothing, waiting out other writers.
    ``version``: the schema version :func:`configure` read (``None``: read it now)."""
    if (await user_version(db) if version is None else version) == SCHEMA_VERSION:
        return
    deadline = time.monotonic() + lock_timeout
    while True:
        try:
            # Once handed to the thread it commits or rolls back, whatever happens to
            # the caller: no write transaction is ever left open.
            await on_thread(db, _upgrade, path)
            return
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            raise StoreCorrupted(
                f"{path} could not be upgraded to schema version {SCHEMA_VERSION}: a "
                f"record in it is unreadable ({exc}). The upgrade was rolled back and the "
                "file is unchanged; keep a copy, then try `sqlite3 flowcore.db .recover`, or "
                "set FLOWCORE_HOME to another folder"
            ) from exc
        except sqlite3.DatabaseError as exc:
            if is_locked(exc) and time.monotonic() < deadline:
                await anyio.sleep(0.01 + random.random() * 0.05)
                continue
            raise translate(exc, path, lock_timeout) from exc


def _upgrade(db: sqlite3.Connection, path: Path) -> None:
    """Every migration the database lacks, in one write transaction, on ``db``'s thread."""
    atomically(db, functools.partial(_migrations, path=path))


def _migrations(db: sqlite3.Connection, *, path: Path) -> None:
    # Re-read inside the write lock: another process may have migrated (or created
    # the schema) since we looked.
    current = _user_version(db)
    refuse_newer(path, current)
    if current == 0:
        _refuse_tables(path, _table_names(db))
    for number in sorted(MIGRATIONS):
        if number > current:
            for statement in MIGRATIONS[number]:
                step = DATA_STEPS.get(statement)
                if step is not None:
                    step(db)
                else:
                    db.execute(statement)
            db.execute(
                "INSERT OR REPLACE INTO flowcore_meta (key, value) VALUES (?, ?)",
                (f"migration.{number}", str(time.time())),
            )
    if current < SCHEMA_VERSION:
        db.execute(
            "INSERT OR REPLACE INTO flowcore_meta (key, value) VALUES (?, ?)",
            ("schema_version", str(SCHEMA_VERSION)),
        )
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


async def user_version(db: aiosqlite.Connection) -> int:
    return await on_thread(db, _user_version)


def _user_version(db: sqlite3.Connection) -> int:
    row = db.execute("PRAGMA user_version").fetchone()
    return int(row[0]) if row else 0


async def refuse_foreign(db: aiosqlite.Connection, path: Path) -> None:
    """An unversioned database may be new, or another app's: never write to the latter."""
    _refuse_tables(path, await on_thread(db, _table_names))


def _table_names(db: sqlite3.Connection) -> set[str]:
    rows = db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ).fetchall()
    return {r[0] for r in rows}


def _refuse_tables(path: Path, tables: set[str]) -> None:
    foreign = tables - OUR_TABLES
    if foreign:
        raise StoreCorrupted(
            f"{path} is an SQLite database but not a flowcore one (it has tables "
            f"{', '.join(sorted(foreign)[:5])}); flowcore will not write into it. Set "
            "FLOWCORE_HOME to another folder, or pass another path"
        )


async def _with_lock_retry(
    db: aiosqlite.Connection, lock_timeout: float, fn: Callable[..., _T], *args: Any
) -> _T:
    """``fn(connection, *args)`` on the connection's thread, again while the database is
    locked, for ``lock_timeout`` seconds at most."""
    deadline = time.monotonic() + lock_timeout
    while True:
        try:
            return await on_thread(db, fn, *args)
        except sqlite3.OperationalError as exc:
            if not is_locked(exc) or time.monotonic() >= deadline:
                raise
            await anyio.sleep(0.01 + random.random() * 0.05)
