"""The embedded default store: one SQLite file, shared safely by several processes.

Settings and why:

- WAL journal: readers (the CLI) never block the writer, and the writer never
  blocks readers.
- ``synchronous=NORMAL`` (the default here): a commit is durable against a
  process crash; a power cut may lose the last few commits, never corrupt the
  file. ``synchronous="FULL"`` makes each commit survive power loss too, at the
  cost of an fsync per batch.
- Writes open with ``BEGIN IMMEDIATE`` so two processes queue for the write
  lock (waiting up to the busy timeout) instead of failing with "database is
  locked" when a deferred transaction tries to upgrade; on top, a locked
  database is retried with backoff for ``lock_timeout`` seconds before any
  error reaches the user.
- The schema is versioned (``PRAGMA user_version``) and migrated by numbered,
  all-or-nothing steps; a database from a newer flowcore is refused, never
  downgraded or rewritten.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import aiosqlite
import anyio
import msgspec

from ..context import HOST
from ..errors import (
    ConfigurationError,
    RunNotFound,
    SchemaTooNew,
    StoreCorrupted,
    StoreError,
    StoreUnavailable,
)
from ..records import CacheEntry, FlowRunRecord, TaskRunRecord
from ..states import TERMINAL, State
from ..telemetry import SpanRecord
from .memory import _not_found_message

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

_T = TypeVar("_T")

_TERMINAL_SQL = ", ".join(f"'{s}'" for s in sorted(TERMINAL))

#: Numbered migrations; each runs in one transaction. Never edit a released one: add a new one.
MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    1: (
        """CREATE TABLE flowcore_meta (
               key TEXT PRIMARY KEY,
               value TEXT NOT NULL
           )""",
        f"""CREATE TABLE flow_runs (
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
               CHECK (state IN ({_TERMINAL_SQL}, 'Pending', 'Running', 'Retrying'))
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
}
SCHEMA_VERSION: Final = max(MIGRATIONS)
_OUR_TABLES: Final = frozenset(
    stmt.split()[2]
    for steps in MIGRATIONS.values()
    for stmt in steps
    if stmt.lstrip().startswith("CREATE TABLE")
)

_V1_TASK_COLS = (
    "run_id, seq, name, state, created, parent_seq, upstream, inputs, attempts, started, ended, "
    "error_type, error_message, traceback, history"
)
_FLOW_COLS = (
    "id, name, kind, state, created, parameters, parent_run_id, parent_task_seq, started, ended, "
    "heartbeat, error_type, error_message, traceback, history, host, pid, task_count, "
    "entrypoint, resumed_from, trace_id, span_id"
)
_TASK_COLS = "run_id, seq, name, state, result_ref, body"
_CACHE_COLS = "key, task_name, created, expires, result, result_ref, run_id, seq"
_UPSERT_FLOW = f"""
INSERT INTO flow_runs ({_FLOW_COLS}) VALUES {{values}}
ON CONFLICT (id) DO UPDATE SET
    state = excluded.state, started = excluded.started, ended = excluded.ended,
    heartbeat = excluded.heartbeat, error_type = excluded.error_type,
    error_message = excluded.error_message, traceback = excluded.traceback,
    history = excluded.history, task_count = excluded.task_count,
    trace_id = excluded.trace_id, span_id = excluded.span_id
WHERE flow_runs.state NOT IN ({_TERMINAL_SQL})
"""
_UPSERT_TASK = f"""
INSERT INTO task_runs ({_TASK_COLS}) VALUES {{values}}
ON CONFLICT (run_id, seq) DO UPDATE SET
    state = excluded.state, result_ref = excluded.result_ref, body = excluded.body
WHERE task_runs.state NOT IN ({_TERMINAL_SQL})
"""
_INSERT_TASK = f"INSERT INTO task_runs ({_TASK_COLS}) VALUES {{values}}"
# Most task runs have no result file: leaving the column out binds no None (see _blob).
_INSERT_TASK_NO_REF = "INSERT INTO task_runs (run_id, seq, name, state, body) VALUES {values}"
_INSERT_SPAN = (
    "INSERT OR REPLACE INTO spans (trace_id, span_id, run_id, start, body) VALUES {values}"
)
_span_enc = msgspec.msgpack.Encoder()
_span_dec = msgspec.msgpack.Decoder(SpanRecord)
_UPSERT_CACHE = f"""
INSERT OR REPLACE INTO cache_entries ({_CACHE_COLS}) VALUES {{values}}
"""

#: Rows per statement when writing a batch. Python's sqlite3 releases the GIL around
#: every statement step, and a thread waiting to take it back waits for the event
#: loop's thread to yield it (up to 5 ms when the loop is busy): one row per step made
#: a 2,000-row flush take seconds under load. Many rows per step make it one wait.
_ROWS_PER_STATEMENT = 4096
#: Bound parameters per statement: 32,766 since SQLite 3.32, 999 before.
_MAX_PARAMS = 32_766 if sqlite3.sqlite_version_info >= (3, 32) else 999


@functools.lru_cache(maxsize=64)
def _statement(template: str, width: int, rows: int) -> str:
    group = "(" + ", ".join("?" * width) + ")"
    return template.format(values=", ".join([group] * rows))


def _multi_row(template: str, rows: Sequence[Sequence[Any]]) -> list[tuple[str, list[Any]]]:
    """``(sql, [params])`` batches writing ``rows`` with many rows per statement.

    Full chunks share one statement (one ``executemany``); the remainder is split
    into power-of-two chunks, so only a few statement shapes are ever prepared.
    """
    if not rows:
        return []
    width = len(rows[0])
    size = 1 << (min(_ROWS_PER_STATEMENT, _MAX_PARAMS // width).bit_length() - 1)
    full = len(rows) // size * size
    out: list[tuple[str, list[Any]]] = []
    if full:
        sql = _statement(template, width, size)
        out.append(
            (sql, [[v for row in rows[i : i + size] for v in row] for i in range(0, full, size)])
        )
    rest = len(rows) - full
    start = full
    while rest:  # the remainder as powers of two, largest first: its set bits
        chunk = 1 << (rest.bit_length() - 1)
        part = rows[start : start + chunk]
        out.append((_statement(template, width, chunk), [[v for row in part for v in row]]))
        start += chunk
        rest -= chunk
    return out


_enc = msgspec.msgpack.Encoder()
_history_dec = msgspec.msgpack.Decoder(list[tuple[Any, ...]])
_upstream_dec = msgspec.msgpack.Decoder(list[int])


async def _copy_task_runs_v1_to_v2(db: aiosqlite.Connection) -> None:
    """Data step of migration 2: re-encode every version-1 task run row, dropping nothing."""
    async with db.execute(f"SELECT {_V1_TASK_COLS} FROM task_runs") as cur:
        while rows := await cur.fetchmany(10_000):
            records = [_v1_task_record(r) for r in rows]
            await db.executemany(
                f"INSERT INTO task_runs_v2 ({_TASK_COLS}) VALUES (?, ?, ?, ?, ?, ?)",
                [_task_row(t) for t in records],
            )


def _v1_task_record(r: sqlite3.Row | tuple[Any, ...]) -> TaskRunRecord:
    return TaskRunRecord(
        run_id=r[0], seq=r[1], name=r[2], state=State(r[3]), created=r[4],
        parent_seq=r[5], upstream=_upstream_dec.decode(r[6]) if r[6] else None,
        inputs=r[7] or b"", attempts=r[8], started=r[9], ended=r[10],
        error_type=r[11], error_message=r[12], traceback=r[13],
        history=_history_dec.decode(r[14]) if r[14] else [],
    )  # fmt: skip


#: Migration steps that are Python (data conversions), by the name used in MIGRATIONS.
_DATA_STEPS: Final = {"_copy_task_runs_v1_to_v2": _copy_task_runs_v1_to_v2}


def _flow_row(r: FlowRunRecord) -> tuple[Any, ...]:
    return (
        r.id, r.name, r.kind, r.state, r.created, r.parameters, r.parent_run_id,
        r.parent_task_seq, r.started, r.ended, r.heartbeat, r.error_type, r.error_message,
        r.traceback, _blob(_enc, r.history), r.host, r.pid, r.task_count, r.entrypoint,
        r.resumed_from, r.trace_id, r.span_id,
    )  # fmt: skip


_task_enc = msgspec.msgpack.Encoder()
_task_dec = msgspec.msgpack.Decoder(TaskRunRecord)


def _task_row(r: TaskRunRecord) -> tuple[Any, ...]:
    return (r.run_id, r.seq, r.name, r.state.value, r.result_ref, _blob(_task_enc, r))


def _task_row_no_ref(r: TaskRunRecord) -> tuple[Any, ...]:
    """:func:`_task_row` without ``result_ref`` (None), for ``_INSERT_TASK_NO_REF``."""
    return (r.run_id, r.seq, r.name, r.state.value, _blob(_task_enc, r))


def _blob(encoder: msgspec.msgpack.Encoder, value: Any) -> bytearray:
    """``value`` encoded as a bytearray, which binds as a BLOB at half the cost of bytes.

    Python's sqlite3 binds int, float, str and bytearray directly, but looks up an
    adapter for anything else (bytes and None too), and that lookup builds and
    discards an AttributeError: 0.5-0.7 µs a parameter, a fifth of a task run row.
    """
    out = bytearray()
    encoder.encode_into(value, out)
    return out


def _cache_row(e: CacheEntry) -> tuple[Any, ...]:
    return (e.key, e.task_name, e.created, e.expires, e.result, e.result_ref, e.run_id, e.seq)


def _cache_record(row: tuple[Any, ...]) -> CacheEntry:
    return CacheEntry(
        key=row[0], task_name=row[1], created=row[2], expires=row[3], result=row[4],
        result_ref=row[5], run_id=row[6], seq=row[7],
    )  # fmt: skip


def _flow_record(row: sqlite3.Row | tuple[Any, ...]) -> FlowRunRecord:
    return FlowRunRecord(
        id=row[0], name=row[1], kind=row[2], state=State(row[3]), created=row[4],
        parameters=row[5] or b"", parent_run_id=row[6], parent_task_seq=row[7], started=row[8],
        ended=row[9], heartbeat=row[10], error_type=row[11], error_message=row[12],
        traceback=row[13], history=_history_dec.decode(row[14]) if row[14] else [],
        host=row[15] or "", pid=row[16] or 0, task_count=row[17], entrypoint=row[18],
        resumed_from=row[19], trace_id=row[20], span_id=row[21],
    )  # fmt: skip


def _task_record(row: sqlite3.Row | tuple[Any, ...]) -> TaskRunRecord:
    record = _task_dec.decode(row[5])
    # The key columns are the truth (the body may predate a rename of the task).
    record.run_id, record.seq, record.name, record.state = row[0], row[1], row[2], State(row[3])
    return record


def _is_locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc)
    )


def _is_corrupt(exc: BaseException) -> bool:
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    text = str(exc)
    return "not a database" in text or "malformed" in text or "corrupt" in text


class SQLiteStore:
    """The default store, in one SQLite file (by default ``$FLOWCORE_HOME/flowcore.db``).

    ``synchronous``: ``"NORMAL"`` (default; a crash of the process loses
    nothing committed, a power cut may lose the last commits) or ``"FULL"``.
    ``lock_timeout``: seconds to keep retrying while another process holds the
    write lock, before giving up with an error.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "NORMAL",
        lock_timeout: float = 60.0,
    ) -> None:
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ConfigurationError(
                f'`synchronous` must be "NORMAL" or "FULL", got {synchronous!r}'
            )
        self.path = Path(path)
        self.location = str(self.path)
        #: Large results are kept as files here, beside the database.
        self.results_dir: Path | None = self.path.parent / "results"
        self.synchronous = synchronous.upper()
        self.lock_timeout = lock_timeout
        self._db: aiosqlite.Connection | None = None
        #: Task runs written while not yet ended, by id (held, so no id is reused):
        #: only these need an upsert; every other task run row is new (see write()).
        self._unfinished: dict[int, TaskRunRecord] = {}
        self._reading = False  # the cache reader holds a read snapshot (get_cache_nowait)
        self._reader: sqlite3.Connection | None = None
        #: The connection for small writes made on the event loop's thread (see
        #: _write_here); None with synchronous=FULL, whose fsync must not block the loop.
        self._here: sqlite3.Connection | None = None
        self._thread_writes = 0  # write transactions handed to aiosqlite's thread, not ended
        self._write_order = asyncio.Lock()
        self._here_rows = 0  # rows written here since the last checkpoint was asked for
        self._checkpoint: asyncio.Task[Any] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        if self._db is not None:
            return
        _check_parent(self.path)
        try:
            db = await aiosqlite.connect(self.path, isolation_level=None, timeout=5.0)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(
                f"cannot open the flowcore database {self.path}: {exc}; check that the folder "
                "exists and is writable, or set FLOWCORE_HOME to a folder that is"
            ) from exc
        try:
            await self._configure(db)
            await self._migrate(db)
            # From now on a busy database is waited out by our own retries (short,
            # jittered sleeps), not by SQLite's busy handler, whose sleeps grow to
            # 100 ms: under contention a lock changes hands every millisecond or so.
            await db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            if self.synchronous == "NORMAL":
                self._here = self._connect_here()
        except BaseException:
            await db.close()
            raise
        self._db = db

    def _connect_here(self) -> sqlite3.Connection:
        try:
            here = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                # Never wait for a lock on the loop's thread: a busy database is
                # waited out on aiosqlite's thread instead. No automatic checkpoints
                # either (they fsync): _write_here asks for them on that thread.
                here.execute("PRAGMA busy_timeout = 0")
                here.execute("PRAGMA synchronous = NORMAL")
                here.execute("PRAGMA wal_autocheckpoint = 0")
            except BaseException:
                here.close()
                raise
        except sqlite3.DatabaseError as exc:
            raise self._translate(exc) from exc
        return here

    async def close(self) -> None:
        self._end_read()
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
        checkpoint, self._checkpoint = self._checkpoint, None
        if checkpoint is not None:
            with anyio.CancelScope(shield=True):
                await asyncio.wait([checkpoint])
        here, self._here = self._here, None
        if here is not None:
            here.close()  # before aiosqlite's: the last connection to close checkpoints
        db, self._db = self._db, None
        self._unfinished.clear()
        if db is not None:
            # Closing must finish even if the caller is being cancelled, or the
            # connection's thread stays alive and can hang the interpreter at exit.
            with anyio.CancelScope(shield=True):
                await db.close()

    async def __aenter__(self) -> SQLiteStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _configure(self, db: aiosqlite.Connection) -> None:
        try:
            # Read-only checks first: a corrupt, foreign or newer database is refused
            # before anything (even the journal mode) is changed in it.
            await db.execute("PRAGMA schema_version")
            await db.execute(f"PRAGMA busy_timeout = {int(min(self.lock_timeout, 5.0) * 1000)}")
            version = await self._user_version(db)
            self._refuse_newer(version)
            if version == 0:
                await self._refuse_foreign(db)
            await self._with_lock_retry(db, "PRAGMA journal_mode = WAL")
            await db.execute(f"PRAGMA synchronous = {self.synchronous}")
        except sqlite3.DatabaseError as exc:
            raise self._translate(exc) from exc

    def _refuse_newer(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"{self.path} has schema version {version}, but this flowcore reads up to "
                f"version {SCHEMA_VERSION}; upgrade flowcore (pip install -U flowcore), or "
                "set FLOWCORE_HOME to another folder to start a separate database"
            )

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        if await self._user_version(db) == SCHEMA_VERSION:
            return
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                await _begin(db)
                try:
                    # Re-read inside the write lock: another process may have migrated
                    # (or created the schema) since we looked.
                    current = await self._user_version(db)
                    self._refuse_newer(current)
                    if current == 0:
                        await self._refuse_foreign(db)
                    for number in sorted(MIGRATIONS):
                        if number > current:
                            for statement in MIGRATIONS[number]:
                                if statement in _DATA_STEPS:
                                    await _DATA_STEPS[statement](db)
                                else:
                                    await db.execute(statement)
                            await db.execute(
                                "INSERT OR REPLACE INTO flowcore_meta (key, value) VALUES (?, ?)",
                                (f"migration.{number}", str(time.time())),
                            )
                    if current < SCHEMA_VERSION:
                        await db.execute(
                            "INSERT OR REPLACE INTO flowcore_meta (key, value) VALUES (?, ?)",
                            ("schema_version", str(SCHEMA_VERSION)),
                        )
                        await db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    await db.execute("COMMIT")
                    return
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await db.execute("ROLLBACK")
                    raise
            except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
                raise StoreCorrupted(
                    f"{self.path} could not be upgraded to schema version {SCHEMA_VERSION}: a "
                    f"record in it is unreadable ({exc}). The upgrade was rolled back and the "
                    "file is unchanged; keep a copy, then try `sqlite3 flowcore.db .recover`, or "
                    "set FLOWCORE_HOME to another folder"
                ) from exc
            except sqlite3.DatabaseError as exc:
                if _is_locked(exc) and time.monotonic() < deadline:
                    await anyio.sleep(0.01 + random.random() * 0.05)
                    continue
                raise self._translate(exc) from exc

    async def _user_version(self, db: aiosqlite.Connection) -> int:
        async with db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def _refuse_foreign(self, db: aiosqlite.Connection) -> None:
        """An unversioned database may be new, or another app's: never write to the latter."""
        async with db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        ) as cur:
            tables = {r[0] for r in await cur.fetchall()}
        foreign = tables - _OUR_TABLES
        if foreign:
            raise StoreCorrupted(
                f"{self.path} is an SQLite database but not a flowcore one (it has tables "
                f"{', '.join(sorted(foreign)[:5])}); flowcore will not write into it. Set "
                "FLOWCORE_HOME to another folder, or pass another path"
            )

    def _translate(self, exc: sqlite3.DatabaseError) -> StoreError:
        if _is_corrupt(exc):
            return StoreCorrupted(
                f"{self.path} is not a readable flowcore database ({exc}). flowcore has not "
                "changed it. Move it aside (e.g. `mv flowcore.db flowcore.db.bad`) to start a "
                "new one, or try `sqlite3 flowcore.db .recover` to salvage its records"
            )
        if _is_locked(exc):
            return StoreUnavailable(
                f"{self.path} stayed locked by another process for more than "
                f"{self.lock_timeout:g} s; find the process holding it (`fuser {self.path}`) "
                "or raise `lock_timeout`"
            )
        if isinstance(exc, sqlite3.OperationalError) and (
            "readonly" in str(exc) or "unable to open" in str(exc) or "disk" in str(exc)
        ):
            return StoreUnavailable(
                f"cannot write the flowcore database {self.path}: {exc}; check permissions "
                "and free space, or set FLOWCORE_HOME to a writable folder"
            )
        return StoreError(f"flowcore database {self.path} failed: {exc}")

    async def _with_lock_retry(self, db: aiosqlite.Connection, sql: str) -> None:
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                await db.execute(sql)
                return
            except sqlite3.OperationalError as exc:
                if not _is_locked(exc) or time.monotonic() >= deadline:
                    raise
                await anyio.sleep(0.01 + random.random() * 0.05)

    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError(
                f"the store {self.path} is not open; use `async with store:` or open()"
            )
        return self._db

    # -- writes ----------------------------------------------------------------------

    async def write(
        self,
        flow_runs: Sequence[FlowRunRecord],
        task_runs: Sequence[TaskRunRecord],
        cache_entries: Sequence[CacheEntry] = (),
        spans: Sequence[SpanRecord] = (),
    ) -> None:
        # Snapshot now, before the first await: the engine keeps mutating these records.
        flow_rows = [_flow_row(r) for r in flow_runs]
        # Most task runs are written once, already ended: a plain INSERT costs about
        # two thirds of an upsert (3.5 against 5.1 µs a row). Only a task run written
        # before (while it ran) needs the upsert, which also keeps ended rows final.
        unfinished = self._unfinished
        new_rows, new_rows_ref, again_rows = [], [], []
        started: list[TaskRunRecord] = []  # written unfinished for the first time
        ended: list[int] = []  # written before, now ended
        for r in task_runs:
            if id(r) in unfinished:
                again_rows.append(_task_row(r))
                if r.state in TERMINAL:
                    ended.append(id(r))
            else:
                if r.result_ref is None:
                    new_rows.append(_task_row_no_ref(r))
                else:
                    new_rows_ref.append(_task_row(r))
                if r.state not in TERMINAL:
                    started.append(r)
        cache_rows = [_cache_row(e) for e in cache_entries]
        span_rows = [(s.trace_id, s.span_id, s.run_id, s.start, _blob(_span_enc, s)) for s in spans]
        inserts = [
            *_multi_row(_INSERT_TASK_NO_REF, new_rows),
            *_multi_row(_INSERT_TASK, new_rows_ref),
        ]
        batches = [
            *_multi_row(_UPSERT_FLOW, flow_rows),
            *_multi_row(_UPSERT_TASK, again_rows),
            *_multi_row(_UPSERT_CACHE, cache_rows),
            *_multi_row(_INSERT_SPAN, span_rows),
        ]

        def run(db: sqlite3.Connection) -> None:
            try:
                for sql, params in inserts:
                    db.executemany(sql, params)
            except sqlite3.IntegrityError:
                # A row taken for new exists: another process wrote it (marking a
                # run crashed), or a record changed after it ended. Upsert them all:
                # the failed statement was undone, and the upsert leaves ended rows be.
                all_new = [(*row[:4], None, row[4]) for row in new_rows] + new_rows_ref
                for sql, params in _multi_row(_UPSERT_TASK, all_new):
                    db.executemany(sql, params)
            for sql, params in batches:
                db.executemany(sql, params)

        rows = len(flow_rows) + len(task_runs) + len(cache_rows) + len(span_rows)
        await self._in_write_transaction(run, rows)
        self._end_read()  # cache lookups from now on see what was just written
        for r in started:
            unfinished[id(r)] = r
        for key in ended:
            del unfinished[key]

    # -- reads -----------------------------------------------------------------------

    async def _fetch(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        return await self._call(_fetch_all, sql, tuple(params))

    async def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(connection, *args)`` on the connection's thread, in one round trip,
        retried while another process holds the lock; errors become StoreErrors."""
        db = self._conn()
        deadline = time.monotonic() + self.lock_timeout
        tries = 0
        while True:
            try:
                return await _on_thread(db, fn, *args)
            except sqlite3.DatabaseError as exc:
                if _is_locked(exc) and time.monotonic() < deadline:
                    tries += 1
                    await anyio.sleep(_lock_backoff(tries))
                    continue
                raise self._translate(exc) from exc

    async def list_runs(
        self, *, name: str | None = None, state: str | None = None, limit: int = 50
    ) -> list[FlowRunRecord]:
        if limit < 1:
            raise ConfigurationError(f"`limit` must be >= 1, got {limit}")
        where, params = [], []
        if name is not None:
            where.append("name = ?")
            params.append(name)
        if state is not None:
            where.append("state = ?")
            params.append(state)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self._fetch(
            f"SELECT {_FLOW_COLS} FROM flow_runs {clause} ORDER BY created DESC LIMIT ?",
            [*params, limit],
        )
        return [_flow_record(r) for r in rows]

    async def get_run(self, run_id: str) -> FlowRunRecord:
        rows = await self._fetch(f"SELECT {_FLOW_COLS} FROM flow_runs WHERE id = ?", [run_id])
        matches = len(rows)
        if not rows and run_id:
            # A prefix, as people copy it from `runs ls`: a range on the primary key,
            # case-sensitive like the ids themselves.
            bounds = [run_id, run_id + "\U0010ffff"]
            rows = await self._fetch(
                f"SELECT {_FLOW_COLS} FROM flow_runs WHERE id >= ? AND id < ? LIMIT 2", bounds
            )
            matches = len(rows)
            if matches > 1:
                counted = await self._fetch(
                    "SELECT COUNT(*) FROM flow_runs WHERE id >= ? AND id < ?", bounds
                )
                matches = counted[0][0]
        if matches == 1:
            return _flow_record(rows[0])
        raise RunNotFound(_not_found_message(run_id, self.location, matches))

    async def list_task_runs(
        self, run_id: str, *, offset: int = 0, limit: int | None = None, state: str | None = None
    ) -> list[TaskRunRecord]:
        where, params = "run_id = ?", [run_id]
        if state is not None:
            where, params = "run_id = ? AND state = ?", [run_id, state]
        rows = await self._fetch(
            f"SELECT {_TASK_COLS} FROM task_runs WHERE {where} ORDER BY seq LIMIT ? OFFSET ?",
            [*params, -1 if limit is None else limit, offset],
        )
        return [_task_record(r) for r in rows]

    async def count_task_runs(self, run_id: str) -> dict[str, int]:
        rows = await self._fetch(
            "SELECT state, COUNT(*) FROM task_runs WHERE run_id = ? GROUP BY state", [run_id]
        )
        return dict(Counter({r[0]: r[1] for r in rows}))

    async def child_runs(self, run_id: str) -> list[FlowRunRecord]:
        rows = await self._fetch(
            f"SELECT {_FLOW_COLS} FROM flow_runs WHERE parent_run_id = ? ORDER BY created",
            [run_id],
        )
        return [_flow_record(r) for r in rows]

    async def list_spans(self, trace_id: str) -> list[SpanRecord]:
        rows = await self._fetch(
            "SELECT body FROM spans WHERE trace_id = ? ORDER BY start", [trace_id]
        )
        return [_span_dec.decode(r[0]) for r in rows]

    async def prune_spans(
        self, *, before: float | None = None, keep_runs: int | None = None
    ) -> int:
        """Delete spans that started before ``before`` (unix seconds), or of all but the newest
        ``keep_runs`` top-level runs; returns how many were deleted."""
        where, params = [], []
        if before is not None:
            where.append("start < ?")
            params.append(int(before * 1e9))
        if keep_runs is not None:
            where.append(
                "trace_id NOT IN (SELECT trace_id FROM flow_runs WHERE trace_id IS NOT NULL "
                "AND parent_run_id IS NULL ORDER BY created DESC LIMIT ?)"
            )
            params.append(keep_runs)
        if not where:
            return 0
        rows = await self._fetch(f"SELECT COUNT(*) FROM spans WHERE {' AND '.join(where)}", params)
        await self._transaction([(f"DELETE FROM spans WHERE {' AND '.join(where)}", [params])])
        return int(rows[0][0])

    def get_cache_nowait(self, key: str) -> CacheEntry | None:
        """The cache entry with this key, read synchronously on the calling thread.

        A primary-key read of a local WAL database takes a few microseconds and
        never waits for the writer, while a trip through aiosqlite's thread costs
        tens: for cache lookups on the hot path, blocking briefly is cheaper.
        """
        if self._db is None:
            raise StoreError(f"the store {self.path} is not open; use `async with store:`")
        reader = self._reader
        try:
            if reader is None:
                reader = self._reader = self._connect_reader()
            if not self._reading and (loop := _running_loop()) is not None:
                # One read snapshot for every lookup until the event loop's next turn:
                # starting a read transaction (file locks, the WAL index) is most of
                # the cost of a lookup made on its own. Lookups that run together
                # (a gather of cached calls) share it. It ends at the loop's next turn,
                # and whenever this store commits a write, so this process's own new
                # entries are seen; another process's, a turn later at most.
                reader.execute("BEGIN")
                self._reading = True
                loop.call_soon(self._end_read)
            row = reader.execute(
                f"SELECT {_CACHE_COLS} FROM cache_entries WHERE key = ?", (key,)
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            self._end_read()
            raise self._translate(exc) from exc
        return _cache_record(row) if row else None

    def _connect_reader(self) -> sqlite3.Connection:
        # mode=rw: a database deleted while the engine runs is an error here, not a
        # new empty file made in its place.
        uri = f"{self.path.resolve().as_uri()}?mode=rw"
        try:
            reader = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        except sqlite3.OperationalError as exc:
            if not self.path.exists():
                raise StoreUnavailable(
                    f"the flowcore database {self.path} is gone (deleted or moved while the "
                    "engine was running); the records of this engine's runs are still being "
                    "written to the open file, but nothing can read them back: restart the "
                    "engine to start a new database there"
                ) from exc
            raise
        reader.execute("PRAGMA query_only = 1")
        reader.execute("PRAGMA busy_timeout = 1000")
        return reader

    def _end_read(self) -> None:
        if self._reading:
            self._reading = False
            reader = self._reader
            if reader is not None and reader.in_transaction:
                try:
                    reader.execute("COMMIT")
                except sqlite3.Error:  # a read-only transaction: nothing to lose
                    with contextlib.suppress(sqlite3.Error):
                        reader.execute("ROLLBACK")

    async def get_cache(self, key: str) -> CacheEntry | None:
        rows = await self._fetch(f"SELECT {_CACHE_COLS} FROM cache_entries WHERE key = ?", [key])
        return _cache_record(rows[0]) if rows else None

    async def list_cache(self, *, task_name: str | None = None) -> list[CacheEntry]:
        where, params = ("WHERE task_name = ?", [task_name]) if task_name is not None else ("", [])
        rows = await self._fetch(
            f"SELECT {_CACHE_COLS} FROM cache_entries {where} ORDER BY created DESC", params
        )
        return [_cache_record(r) for r in rows]

    async def delete_cache(self, keys: Sequence[str]) -> None:
        await self._transaction([("DELETE FROM cache_entries WHERE key = ?", [(k,) for k in keys])])

    async def result_refs(self) -> set[str]:
        rows = await self._fetch(
            "SELECT result_ref FROM cache_entries WHERE result_ref IS NOT NULL "
            "UNION SELECT result_ref FROM task_runs WHERE result_ref IS NOT NULL"
        )
        return {r[0] for r in rows}

    async def lease_slots(
        self,
        name: str,
        capacity: int,
        holder: str,
        waiter_id: str,
        want: int,
        since: float,
        now: float,
        expires: float,
    ) -> tuple[list[str], int]:
        """Lease up to ``want`` of the ``capacity`` slots of limit ``name``, in one transaction.

        Expired rows go first. Slots are free when the held leases plus the waiters
        of other engines that have waited longer (``since``) leave room, so slots go
        to the oldest waiter of any process. What cannot be granted is recorded as
        this engine's waiting row (``waiter_id``: how many, since when), refreshed by
        every call. Returns the new lease ids, and how many slots other engines wait
        for (so the caller knows whether to give slots back rather than keep them).
        """

        def take(db: sqlite3.Connection) -> tuple[list[str], int]:
            db.execute("DELETE FROM limit_leases WHERE name = ? AND expires <= ?", (name, now))
            row = db.execute(
                "SELECT "
                "COALESCE(SUM(waiting = 0), 0), "
                "COALESCE(SUM(CASE WHEN waiting > 0 AND lease_id != ? AND "
                "(since < ? OR (since = ? AND lease_id < ?)) THEN waiting END), 0), "
                "COALESCE(SUM(CASE WHEN waiting > 0 AND holder != ? THEN waiting END), 0) "
                "FROM limit_leases WHERE name = ?",
                (waiter_id, since, since, waiter_id, holder, name),
            ).fetchone()
            held, ahead, others = (int(v) for v in row) if row is not None else (0, 0, 0)
            grant = max(0, min(want, capacity - held - ahead))
            leases = [uuid.uuid4().hex for _ in range(grant)]
            pid = os.getpid()
            rows = [(lease, name, holder, HOST, pid, expires, 0, since) for lease in leases]
            if want > grant:
                rows.append((waiter_id, name, holder, HOST, pid, expires, want - grant, since))
            else:
                db.execute("DELETE FROM limit_leases WHERE lease_id = ?", (waiter_id,))
            db.executemany(
                "INSERT OR REPLACE INTO limit_leases "
                "(lease_id, name, holder, host, pid, expires, waiting, since) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            return leases, others

        return await self._in_write_transaction(take, 1)

    async def release_lease(self, lease_id: str) -> None:
        await self._transaction([("DELETE FROM limit_leases WHERE lease_id = ?", [(lease_id,)])])

    async def renew_leases(self, holder: str, expires: float) -> None:
        await self._transaction(
            [("UPDATE limit_leases SET expires = ? WHERE holder = ?", [(expires, holder)])]
        )

    async def list_leases(self) -> list[tuple[str, str, str, int, float, int]]:
        """(name, holder, host, pid, expires, waiting) of leases (waiting = 0) and waiting
        rows (waiting = how many slots), expired ones included."""
        rows = await self._fetch(
            "SELECT name, holder, host, pid, expires, waiting FROM limit_leases "
            "ORDER BY name, waiting, since"
        )
        return [(r[0], r[1], r[2] or "", r[3] or 0, r[4], int(r[5])) for r in rows]

    async def list_rates(self) -> list[tuple[str, float]]:
        """(name, tat) of every shared rate limit: uses are booked up to ``tat``."""
        rows = await self._fetch("SELECT name, tat FROM limit_rates ORDER BY name")
        return [(r[0], float(r[1])) for r in rows]

    async def reserve_rate(self, name: str, interval: float, tolerance: float, now: float) -> float:
        """Reserve the next use of shared rate limit ``name``; returns when it may start.

        GCRA (the "virtual scheduling" form of a token bucket): ``tat`` is when the
        bucket would next be empty at the full rate. A use conforms at
        ``max(tat, now) - tolerance`` (``tolerance`` = ``(burst - 1) * interval``) and
        pushes ``tat`` on by one ``interval``. One row per limit, one write transaction
        per use: every process sharing the store gets its turn in commit order.
        """

        def reserve(db: sqlite3.Connection) -> float:
            row = db.execute("SELECT tat FROM limit_rates WHERE name = ?", (name,)).fetchone()
            tat = max(float(row[0]) if row is not None else now, now)
            db.execute(
                "INSERT OR REPLACE INTO limit_rates (name, tat) VALUES (?, ?)",
                (name, tat + interval),
            )
            return max(now, tat - tolerance)

        return await self._in_write_transaction(reserve, 1)

    async def _transaction(self, batches: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        """Run ``executemany`` batches in one write transaction, waiting out locks."""

        def run(db: sqlite3.Connection) -> None:
            for sql, rows in batches:
                db.executemany(sql, rows)

        await self._in_write_transaction(run, sum(len(rows) for _, rows in batches))

    async def _in_write_transaction(
        self, body: Callable[[sqlite3.Connection], _T], rows: int
    ) -> _T:
        """``body`` inside ``BEGIN IMMEDIATE ... COMMIT``, retried while another process
        holds the lock, rolled back on any error. ``rows``: about how many rows it writes.

        A small write is made at once on the event loop's thread (:meth:`_write_here`)
        when the database is free. Otherwise the whole transaction is one call on
        aiosqlite's thread (:func:`_atomically`): each aiosqlite call is a round trip
        to that thread (120-250 µs on a busy 2-core machine), and BEGIN, the
        statements and COMMIT as separate calls made an empty flow run's last write
        cost about 1 ms. Being one call also means no transaction is ever left open
        half-way: once handed to the thread it commits or rolls back, whatever
        happens to the caller.

        On the thread it runs in a task of its own, which the caller's cancellation
        does not reach, so that a cancelled caller's write (giving back a lease) is
        not dropped while it waits out a lock. anyio's shields cannot promise this:
        plain asyncio cancellation (a cancelled ``gather``) goes through them.
        """
        if rows <= _HERE_MAX_ROWS and self._here is not None and not self._thread_writes:
            try:
                return self._write_here(body, rows)
            except _Locked:
                pass  # another process is writing: wait for it on the thread
        self._thread_writes += 1
        task = asyncio.get_running_loop().create_task(self._write_on_thread(body))
        task.add_done_callback(self._thread_write_ended)
        return await asyncio.shield(task)

    async def _write_on_thread(self, body: Callable[[sqlite3.Connection], _T]) -> _T:
        # In turn (an asyncio lock is first come, first served): a write waiting out
        # a lock sleeps between tries, and a later write must not commit meanwhile.
        async with self._write_order:
            return await self._call(_atomically, body)

    def _write_here(self, body: Callable[[sqlite3.Connection], _T], rows: int) -> _T:
        """``body`` in a write transaction on this thread; raises ``_Locked`` if the
        database is locked (the caller then waits for it on aiosqlite's thread).

        Why: a flow run's last write is a durability point its caller waits for, and
        for a small run the round trip to aiosqlite's thread and back (two thread
        wake-ups, 120-250 µs) cost more than the write itself (a few µs a row). So
        writes of up to ``_HERE_MAX_ROWS`` rows are made on the event loop's thread,
        blocking it about as long as running those task runs did, on a connection
        that never waits for a lock (``busy_timeout = 0``): a database held by another
        process sends the write to the thread at once. Only while no write of ours
        is on that thread, so writes are committed in the order they were made.
        """
        here = self._here
        assert here is not None
        try:
            result = _atomically(here, body)
        except sqlite3.DatabaseError as exc:
            if _is_locked(exc):
                raise _Locked from exc
            raise self._translate(exc) from exc
        self._here_rows += rows
        if self._here_rows >= _CHECKPOINT_ROWS and self._checkpoint is None:
            # This connection does not checkpoint on its own (a checkpoint fsyncs);
            # without one the WAL would grow for as long as the writes stay small.
            self._here_rows = 0
            self._checkpoint = asyncio.get_running_loop().create_task(self._checkpoint_wal())
        return result

    async def _checkpoint_wal(self) -> None:
        try:
            await self._fetch("PRAGMA wal_checkpoint(PASSIVE)")
        except StoreError as exc:  # the next one will try again; nothing is lost
            logging.getLogger("flowcore").debug("WAL checkpoint failed: %s", exc)
        finally:
            self._checkpoint = None

    def _thread_write_ended(self, task: asyncio.Task[Any]) -> None:
        self._thread_writes -= 1
        _retrieve(task)


class _Locked(Exception):
    """The database is locked by another connection (a write on the loop's thread)."""


async def _on_thread(db: aiosqlite.Connection, fn: Callable[..., _T], *args: Any) -> _T:
    """Call ``fn(sqlite3_connection, *args)`` on the connection's thread, in one round trip.

    aiosqlite has no public way to run several statements in one call; its own
    public methods are built on ``_execute``, which queues a function for the
    connection's thread, so that is what flowcore uses (see ``_in_write_transaction``
    for why it matters).
    """
    result: _T = await db._execute(_Once(fn, (db._conn, *args)))  # type: ignore[no-untyped-call]
    return result


class _Once:
    """``fn(*args)``, letting go of both once called.

    aiosqlite's thread keeps the last function it ran until it is handed the next
    one: holding a write's rows would keep the last batch (thousands of rows, and
    their records' data) alive while the store sits idle.
    """

    __slots__ = ("args", "fn")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn: Callable[..., Any] | None = fn
        self.args: tuple[Any, ...] = args

    def __call__(self) -> Any:
        fn, args = self.fn, self.args
        self.fn, self.args = None, ()
        assert fn is not None, "called twice"
        return fn(*args)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # called from a thread: read on its own, nothing to end it
        return None


def _fetch_all(db: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> list[Any]:
    return db.execute(sql, params).fetchall()


def _atomically(db: sqlite3.Connection, body: Callable[[sqlite3.Connection], _T]) -> _T:
    """``body`` in a write transaction on ``db``, committed or rolled back (on whichever
    thread owns ``db``: aiosqlite's, or the event loop's for small writes)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = body(db)
        db.execute("COMMIT")
    except BaseException:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the failed statement may have rolled back already
        raise
    return result


def _retrieve(task: asyncio.Task[Any]) -> None:
    # A write whose caller was cancelled still ends; its error is not worth a warning
    # about an unretrieved exception (the caller has gone, the records stay queued).
    if not task.cancelled():
        task.exception()


#: SQLite's own wait for a lock once a store is open; longer waits are our retries.
_BUSY_TIMEOUT_MS = 2
#: Writes of at most this many rows are made on the event loop's thread (_write_here):
#: a few µs a row, so the loop is blocked for a millisecond or two at most.
_HERE_MAX_ROWS = 256
#: Rows written on the loop's thread after which a WAL checkpoint is asked for (on
#: aiosqlite's thread): a few MB of WAL at most between checkpoints.
_CHECKPOINT_ROWS = 5_000


def _lock_backoff(tries: int) -> float:
    """Seconds to wait before try ``tries + 1`` at a locked database: 0.5 ms doubling
    to 20 ms, jittered so waiting processes do not retry in step."""
    delay: float = min(0.0005 * 2 ** min(tries, 10), 0.02)
    return delay * (0.5 + random.random())


async def _begin(db: aiosqlite.Connection) -> None:
    """``BEGIN IMMEDIATE``, shielded: if the wait for it were cancelled, the statement
    would still run on the connection's thread and leave a write transaction open
    that nobody rolls back, locking every other process out of the database."""
    with anyio.CancelScope(shield=True):
        await db.execute("BEGIN IMMEDIATE")


def _check_parent(path: Path) -> None:
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnavailable(
            f"cannot create the folder {folder} for the flowcore database: {exc.strerror}; "
            "set FLOWCORE_HOME to a writable folder"
        ) from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StoreUnavailable(
            f"the folder {folder} is not writable, so flowcore cannot keep its database "
            "there; set FLOWCORE_HOME to a writable folder"
        )
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise StoreUnavailable(
            f"the flowcore database {path} is not readable and writable by this user; fix its "
            "permissions or set FLOWCORE_HOME to another folder"
        )
