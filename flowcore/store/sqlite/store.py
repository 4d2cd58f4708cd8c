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

import math
import os
import sqlite3
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import aiosqlite
import msgspec

from ...errors import ConfigurationError, RunNotFound
from ...ids import HOST, safe_text
from ...records import (
    AssetDefRecord,
    AssetEvaluationRecord,
    AssetEvent,
    AssetStateRecord,
    CacheEntry,
    CheckResultRecord,
    FlowRunRecord,
    LogRecord,
    MaterializationRecord,
    ScheduleState,
    ServedFlow,
    SlotClaim,
    SpanRecord,
    StaleMark,
    TaskRunRecord,
    Trigger,
    WriteBatch,
)
from ...states import TERMINAL
from ..base import (
    LOG_CHUNK,
    PRUNE_CHUNK,
    AssetWrite,
    BlobStore,
    PruneCount,
    TagPage,
    apply_asset_events,
    apply_code_change,
    claimed_source,
    late_completion,
    not_found_message,
)
from ..files import FileBlobs
from . import retention
from .connection import Connection
from .renewal import BlockingRenewal
from .rows import (
    ACTIVE_RUNS,
    CACHE_COLS,
    CLAIM_HOLDER,
    CLAIM_ONCE,
    CLAIM_SLOT,
    CLAIM_TRIGGERS,
    CRASHED_FLOW,
    CRASHED_TASKS,
    FINISHED_SQL,
    FLOW_COLS,
    INSERT_FLOW,
    INSERT_LOG,
    INSERT_NEW_FLOW,
    INSERT_SPAN,
    INSERT_TASK,
    INSERT_TASK_NO_REF,
    LOG_COLS,
    REPLACE_CRASHED_FLOW,
    REPLACE_CRASHED_TASK,
    SCHEDULE_COLS,
    SERVED_COLS,
    TASK_COLS,
    TERMINAL_SQL,
    TRIGGER_COLS,
    UPSERT_CACHE,
    UPSERT_CURSOR,
    UPSERT_FLOW,
    UPSERT_SCHEDULE,
    UPSERT_SERVED,
    UPSERT_TASK,
    asset_body,
    asset_def_record,
    asset_state_record,
    cache_record,
    cache_row,
    check_record,
    evaluation_body,
    evaluation_record,
    flow_record,
    flow_row,
    log_record,
    log_row,
    materialization_record,
    multi_row,
    replace_crashed_flow_params,
    replace_crashed_task_params,
    schedule_record,
    schedule_row,
    served_record,
    served_row,
    slot_record,
    span_record,
    span_row,
    task_record,
    task_row,
    task_row_no_ref,
    trigger_record,
    trigger_row,
    written_flow_record,
)
from .schema import (
    ADD_RUN_TAG,
    INDEXED_STATES,
    SCHEMA_VERSION,
    UNINDEXED_STATES,
    configure,
    migrate,
    run_tag_params,
    tag_text,
)

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]


def _unchanged(db: sqlite3.Connection, upserts: list[tuple[str, list[Any]]], rows: int) -> int:
    """Run the upsert statements; how many of their ``rows`` were left as they were
    (their stored row is terminal). Counted per statement, not per row: free."""
    before = db.total_changes
    for sql, params in upserts:
        db.executemany(sql, params)
    return rows - (db.total_changes - before)


def _late_flow_runs(db: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Write the finished runs among ``rows`` (``flow_row``s the upsert left as they
    were) over their stored record if it is Crashed: a late completion (see
    ``store.base.late_completion``). Only after an upsert left rows: rare."""
    for row in rows:
        if row[3] not in FINISHED_SQL:
            continue
        crashed = db.execute(CRASHED_FLOW, (row[0],)).fetchone()
        if crashed is not None:
            late = late_completion(flow_record(crashed), written_flow_record(row))
            db.execute(REPLACE_CRASHED_FLOW, replace_crashed_flow_params(flow_row(late)))


def _late_task_runs(db: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """:func:`_late_flow_runs` for task runs (``task_row``s), one read per flow run."""
    finished: dict[str, list[tuple[Any, ...]]] = {}
    for row in rows:
        if row[3] in FINISHED_SQL:
            finished.setdefault(row[0], []).append(row)
    for run_id, written in finished.items():
        crashed = {r[1]: r for r in db.execute(CRASHED_TASKS, (run_id,))}
        for row in written:
            if row[1] in crashed:
                late = late_completion(task_record(crashed[row[1]]), task_record(row))
                db.execute(REPLACE_CRASHED_TASK, replace_crashed_task_params(task_row(late)))


def _run_tags(task_runs: Sequence[TaskRunRecord]) -> list[tuple[str, str]]:
    """``ADD_RUN_TAG``'s parameters for the tags these task runs carry, once per run and
    tag: a batch holds a few runs, so a few rows. A task's records share one tags list,
    so a run of them is read once: ~15 ns a task run, tagged or not."""
    by_run: dict[str, set[str]] = {}
    last: list[str] | None = None
    last_run = ""
    for r in task_runs:
        tags = r.tags
        if tags and (tags is not last or r.run_id != last_run):
            last, last_run = tags, r.run_id
            found = by_run.get(last_run)
            if found is None:
                found = by_run[last_run] = set()
            found.update(tags)
    return [p for run_id, tags in by_run.items() for p in run_tag_params(run_id, sorted(tags))]


class _Edges(msgspec.Struct, gc=False):
    """What a task graph reads of a task run's body (the rest is skipped, not built)."""

    parent_seq: int | None = None
    upstream: list[int] | None = None


_edges_dec = msgspec.msgpack.Decoder(_Edges)
#: Below this many runs in a state, ``filter_runs`` reads them by the state index and
#: sorts them; above, it walks the created index newest first, skipping other states.
_FEW: Final = 1000


class SQLiteStore:
    """The default store, in one SQLite file (by default ``$FLOWCORE_HOME/flowcore.db``).

    ``synchronous``: ``"NORMAL"`` (default; a crash of the process loses
    nothing committed, a power cut may lose the last commits) or ``"FULL"``.
    ``lock_timeout``: seconds to keep retrying while another process holds the
    write lock, before giving up with an error. Large results are kept as files
    in ``results/`` beside the database (:class:`~flowcore.store.files.FileBlobs`).
    """

    #: aiosqlite runs on asyncio only (see Engine.__aenter__).
    asyncio_only = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "NORMAL",
        lock_timeout: float = 60.0,
    ) -> None:
        if not isinstance(synchronous, str) or synchronous.upper() not in ("NORMAL", "FULL"):
            raise ConfigurationError(
                f'`synchronous` must be "NORMAL" or "FULL", got {synchronous!r}'
            )
        self.path = Path(path)
        self.location = str(self.path)
        #: Large results are kept as files here, beside the database.
        self.results_dir = self.path.parent / "results"
        self.blobs: BlobStore | None = FileBlobs(self.results_dir)
        self.synchronous = synchronous.upper()
        self._io = Connection(self.path, synchronous=self.synchronous, lock_timeout=lock_timeout)
        #: Task runs written while not yet ended, by id (held, so no id is reused):
        #: only these need an upsert; every other task run row is new (see write()).
        self._unfinished: dict[int, TaskRunRecord] = {}
        #: Asset states as this store last wrote them (see _StateCache).
        self._states = _StateCache()

    @property
    def lock_timeout(self) -> float:
        """Seconds a locked database is waited for before a write or read fails."""
        return self._io.lock_timeout

    @lock_timeout.setter
    def lock_timeout(self, seconds: float) -> None:
        self._io.lock_timeout = seconds

    @property
    def renew_leases_blocking(self) -> BlockingRenewal:
        """Renews leases from a thread with no event loop (see ``engine.leases``): a loop
        blocked by sync code keeps its slots. A new one per caller, closed by it."""
        return BlockingRenewal(self.path, self.lock_timeout)

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        async def prepare(db: aiosqlite.Connection) -> None:
            version = await configure(db, self.path, self.synchronous, self.lock_timeout)
            await migrate(db, self.path, self.lock_timeout, version)

        await self._io.open(prepare)

    async def close(self) -> None:
        self._unfinished.clear()
        await self._io.close()

    async def __aenter__(self) -> SQLiteStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- writes ----------------------------------------------------------------------

    async def write(self, batch: WriteBatch) -> None:
        # Snapshot now, before the first await: the engine keeps mutating these records.
        flow_rows = [flow_row(r) for r in batch.flow_runs]
        task_runs = batch.task_runs
        # Most task runs are written once, already ended: a plain INSERT costs about
        # two thirds of an upsert (3.5 against 5.1 µs a row). Only a task run written
        # before (while it ran) needs the upsert, which also keeps ended rows final.
        unfinished = self._unfinished
        new_rows, new_rows_ref, again_rows = [], [], []
        started: list[TaskRunRecord] = []  # written unfinished for the first time
        ended: list[int] = []  # written before, now ended
        for r in task_runs:
            if id(r) in unfinished:
                again_rows.append(task_row(r))
                if r.state in TERMINAL:
                    ended.append(id(r))
            else:
                if r.result_ref is None:
                    new_rows.append(task_row_no_ref(r))
                else:
                    new_rows_ref.append(task_row(r))
                if r.state not in TERMINAL:
                    started.append(r)
        run_tags = _run_tags(task_runs)
        cache_rows = [cache_row(e) for e in batch.cache_entries]
        span_rows = [span_row(s) for s in batch.spans]
        log_rows = [log_row(line) for line in batch.logs]
        inserts = [
            *multi_row(INSERT_TASK_NO_REF, new_rows),
            *multi_row(INSERT_TASK, new_rows_ref),
        ]
        flow_upserts = multi_row(UPSERT_FLOW, flow_rows)
        task_upserts = multi_row(UPSERT_TASK, again_rows)
        batches = [
            *multi_row(UPSERT_CACHE, cache_rows),
            *multi_row(INSERT_SPAN, span_rows),
            *multi_row(INSERT_LOG, log_rows),  # in order: ids grow as the lines were written
        ]

        def run(db: sqlite3.Connection) -> None:
            upserted = again_rows
            try:
                for sql, params in inserts:
                    db.executemany(sql, params)
                kept = 0
            except sqlite3.IntegrityError:
                # A row taken for new exists: another process wrote it (marking a
                # run crashed), or a record changed after it ended. Upsert them all:
                # the failed statement was undone, and the upsert leaves ended rows be.
                all_new = [(*row[:4], None, row[4]) for row in new_rows] + new_rows_ref
                kept = _unchanged(db, multi_row(UPSERT_TASK, all_new), len(all_new))
                upserted = all_new + again_rows
            kept += _unchanged(db, task_upserts, len(again_rows))
            if _unchanged(db, flow_upserts, len(flow_rows)):
                _late_flow_runs(db, flow_rows)
            if run_tags:  # after the flow runs: a run's row is there for its tags
                db.executemany(ADD_RUN_TAG, run_tags)
            if kept:
                _late_task_runs(db, upserted)
            for sql, params in batches:
                db.executemany(sql, params)
            if asset_events:
                _write_assets(db, asset_events, self._states)

        asset_events = list(batch.assets)
        rows = len(flow_rows) + len(task_runs) + len(cache_rows) + len(span_rows) + len(log_rows)
        rows += len(asset_events)
        await self._io.write(run, rows)
        self._io.end_read()  # cache lookups from now on see what was just written
        for r in started:
            unfinished[id(r)] = r
        for key in ended:
            del unfinished[key]
        if ended and not unfinished:
            # A dict keeps its table at its largest: 10,000 task runs written while they
            # ran left 288 KB behind after the run. A new one gives it back.
            self._unfinished = {}

    # -- reads -----------------------------------------------------------------------

    async def list_runs(
        self, *, name: str | None = None, state: str | None = None, limit: int = 50
    ) -> list[FlowRunRecord]:
        return await self.filter_runs(name=name, state=state, limit=limit)

    async def filter_runs(
        self,
        *,
        name: str | None = None,
        state: str | None = None,
        since: float | None = None,
        until: float | None = None,
        tag: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> list[FlowRunRecord]:
        if limit < 1:
            raise ConfigurationError(f"`limit` must be >= 1, got {limit}")
        if offset < 0:
            raise ConfigurationError(f"`offset` must be >= 0, got {offset}")
        where: list[str] = []
        params: list[Any] = []
        if name is not None:
            where.append("name = ?")
            params.append(name)
        if state is not None:
            # The state index serves a rare state (its few runs sorted); a common one is
            # read walking the created index newest first (sorting tens of thousands of
            # runs to show fifty would cost more): "+state" keeps the planner off it. The
            # most common states are not in that index at all (UNINDEXED_STATES); a query
            # on the others repeats its predicate, for SQLite to use it.
            value = str(state)
            rare = False
            if value not in UNINDEXED_STATES:
                counted = await self._io.fetch(
                    f"SELECT COUNT(*) FROM flow_runs WHERE state = ? AND {INDEXED_STATES}",
                    [value],
                )
                rare = counted[0][0] <= _FEW
            where.append(f"state = ? AND {INDEXED_STATES}" if rare else "+state = ?")
            params.append(value)
        if since is not None:
            where.append("created >= ?")
            params.append(since)
        if until is not None:
            where.append("created < ?")
            params.append(until)
        if tag is not None:
            where.append("instr(tags, ?) > 0")
            params.append(tag_text(safe_text(tag)))  # looked up as it was recorded
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self._io.fetch(
            f"SELECT {FLOW_COLS} FROM flow_runs {clause} ORDER BY created DESC LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return [flow_record(r) for r in rows]

    async def get_run(self, run_id: str) -> FlowRunRecord:
        rows = await self._io.fetch(f"SELECT {FLOW_COLS} FROM flow_runs WHERE id = ?", [run_id])
        matches = len(rows)
        if not rows and run_id:
            # A prefix, as people copy it from `runs ls`: a range on the primary key,
            # case-sensitive like the ids themselves.
            bounds = [run_id, run_id + "\U0010ffff"]
            rows = await self._io.fetch(
                f"SELECT {FLOW_COLS} FROM flow_runs WHERE id >= ? AND id < ? LIMIT 2", bounds
            )
            matches = len(rows)
            if matches > 1:
                counted = await self._io.fetch(
                    "SELECT COUNT(*) FROM flow_runs WHERE id >= ? AND id < ?", bounds
                )
                matches = counted[0][0]
        if matches == 1:
            return flow_record(rows[0])
        raise RunNotFound(not_found_message(run_id, self.location, matches))

    async def list_task_runs(
        self,
        run_id: str,
        *,
        offset: int = 0,
        limit: int | None = None,
        state: str | None = None,
        tag: str | None = None,
    ) -> list[TaskRunRecord]:
        where, params = "run_id = ?", [run_id]
        if state is not None:
            where, params = "run_id = ? AND state = ?", [run_id, state]
        if tag is not None:
            return await self._tagged(where, params, tag, offset, limit)
        rows = await self._io.fetch(
            f"SELECT {TASK_COLS} FROM task_runs WHERE {where} ORDER BY seq LIMIT ? OFFSET ?",
            [*params, -1 if limit is None else limit, offset],
        )
        return [task_record(r) for r in rows]

    async def task_run_edges(
        self, run_id: str, *, after: int = -1, limit: int | None = None
    ) -> list[tuple[int, str, str, int | None, list[int] | None]]:
        rows = await self._io.fetch(
            "SELECT seq, name, state, body FROM task_runs WHERE run_id = ? AND seq > ? "
            "ORDER BY seq LIMIT ?",
            [run_id, after, -1 if limit is None else limit],
        )
        decode = _edges_dec.decode
        out = []
        for seq, name, state, body in rows:
            edges = decode(body)
            out.append((seq, name, state, edges.parent_seq, edges.upstream))
        return out

    async def count_task_runs(self, run_id: str, *, tag: str | None = None) -> dict[str, int]:
        if tag is not None:
            tagged = await self._tagged("run_id = ?", [run_id], tag, 0, None, keep=False)
            return dict(Counter(str(t.state) for t in tagged))
        rows = await self._io.fetch(
            "SELECT state, COUNT(*) FROM task_runs WHERE run_id = ? GROUP BY state", [run_id]
        )
        return dict(Counter({r[0]: r[1] for r in rows}))

    async def _tagged(
        self,
        where: str,
        params: list[Any],
        tag: str,
        offset: int,
        limit: int | None,
        *,
        keep: bool = True,
    ) -> list[TaskRunRecord]:
        """Task runs matching ``where`` whose tags hold ``tag``, paged after the filter.

        Tags live in the task run's body, so the run's rows are read in chunks and
        decoded here (memory stays bounded by a chunk and the page); a tag filter is a
        reader's query, never on the engine's path. ``keep=False`` keeps only the
        state (for counting) rather than every matching record.
        """
        page = TagPage(tag, offset, limit, keep=keep)
        after = -1
        while not page.full:
            rows = await self._io.fetch(
                f"SELECT {TASK_COLS} FROM task_runs WHERE {where} AND seq > ? "
                "ORDER BY seq LIMIT 5000",
                [*params, after],
            )
            if not rows:
                break
            after = rows[-1][1]
            page.take(task_record(row) for row in rows)
        return page.found

    async def child_runs(self, run_id: str) -> list[FlowRunRecord]:
        rows = await self._io.fetch(
            f"SELECT {FLOW_COLS} FROM flow_runs WHERE parent_run_id = ? ORDER BY created",
            [run_id],
        )
        return [flow_record(r) for r in rows]

    async def claim_resume(
        self, run: FlowRunRecord, *, force: bool = False
    ) -> FlowRunRecord | None:
        of, name = claimed_source(run), run.name
        row = flow_row(run)  # a snapshot, before the first await

        def claim(db: sqlite3.Connection) -> FlowRunRecord | None:
            holder = db.execute(CLAIM_HOLDER, (of, name, force)).fetchone()
            if holder is not None:
                return flow_record(holder)
            # The unique index of migration 6 (one Running resumption of a run) backs
            # this up; inside this write transaction the check above already holds.
            db.execute(INSERT_FLOW, row)
            return None

        # Walking the chain reads rows: on the connection's thread, not the event loop's.
        return await self._io.write(claim, rows=1 << 30)

    async def list_spans(self, trace_id: str) -> list[SpanRecord]:
        rows = await self._io.fetch(
            "SELECT body FROM spans WHERE trace_id = ? ORDER BY start", [trace_id]
        )
        return [span_record(r[0]) for r in rows]

    async def prune_spans(
        self, *, before: float | None = None, keep_runs: int | None = None
    ) -> int:
        """Delete spans that started before ``before`` (unix seconds), those of all but the
        newest ``keep_runs`` top-level runs, or with both, those matching both; returns how
        many were deleted (counted by the DELETE itself, in its transaction)."""
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
        sql = f"DELETE FROM spans WHERE {' AND '.join(where)}"

        def delete(db: sqlite3.Connection) -> int:
            return int(db.execute(sql, params).rowcount)

        # Any number of rows: on the connection's thread, never blocking the event loop.
        return await self._io.write(delete, rows=1 << 30)

    async def claim_span_exports(
        self, holder: str, *, now: float, lease: float, limit: int, since: float | None = None
    ) -> list[FlowRunRecord]:
        # Both statements read the partial index flow_runs_export: they touch only the
        # runs still to ship, however many runs the store keeps.
        pending = f"export_state IS NULL AND state IN ({TERMINAL_SQL})"

        def claim(db: sqlite3.Connection) -> list[FlowRunRecord]:
            if since is not None:
                db.execute(
                    f"UPDATE flow_runs SET export_state = 2 WHERE {pending} AND created < ?",
                    (since,),
                )
            rows = db.execute(
                f"UPDATE flow_runs SET export_holder = ?, export_until = ? WHERE id IN ("
                f"SELECT id FROM flow_runs WHERE {pending} AND (export_until IS NULL OR "
                "export_until <= ?) ORDER BY created LIMIT ?) "
                f"RETURNING {FLOW_COLS}",
                (holder, now + lease, now, limit),
            ).fetchall()
            return sorted((flow_record(r) for r in rows), key=lambda r: r.created)

        return await self._io.write(claim, rows=limit)

    async def end_span_exports(self, run_ids: Sequence[str], holder: str, *, shipped: bool) -> None:
        ids = msgspec.json.encode(list(run_ids)).decode()
        if shipped:
            sql = (
                "UPDATE flow_runs SET export_state = 1, export_holder = NULL, "
                "export_until = NULL WHERE id IN (SELECT value FROM json_each(?))"
            )
            params: tuple[Any, ...] = (ids,)
        else:
            sql = (
                "UPDATE flow_runs SET export_holder = NULL, export_until = NULL "
                "WHERE id IN (SELECT value FROM json_each(?)) AND export_holder = ?"
            )
            params = (ids, holder)

        def end(db: sqlite3.Connection) -> None:
            db.execute(sql, params)

        await self._io.write(end, rows=len(run_ids))

    async def list_logs(
        self,
        run_id: str,
        *,
        seq: int | None = None,
        task: str | None = None,
        min_level: int | None = None,
        after: int | None = None,
        limit: int | None = None,
    ) -> list[LogRecord]:
        if limit is not None and limit < 1:
            raise ConfigurationError(f"`limit` must be >= 1, got {limit}")
        where, params = ["run_id = ?"], list[int | str]([run_id])
        clauses: tuple[tuple[str, int | str | None], ...] = (
            ("seq = ?", seq),
            ("task = ?", task),
            ("level >= ?", min_level),
            ("id > ?", after),
        )
        for clause, value in clauses:
            if value is not None:
                where.append(clause)
                params.append(value)
        rows = await self._io.fetch(
            f"SELECT {LOG_COLS} FROM logs WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",
            [*params, -1 if limit is None else limit],
        )
        return [log_record(r) for r in rows]

    # -- retention (store.base.RunRetention) -----------------------------------------

    async def prune_runs(
        self,
        before: float,
        *,
        keep_runs: int | None = None,
        chunk: int = PRUNE_CHUNK,
        dry_run: bool = False,
    ) -> PruneCount:
        return await retention.prune_runs(self._io, before, keep_runs, chunk, dry_run)

    async def prune_logs(
        self, before: float, *, chunk: int = LOG_CHUNK, dry_run: bool = False
    ) -> int:
        return await retention.prune_logs(self._io, before, chunk, dry_run)

    async def get_cache_many(self, keys: Sequence[str]) -> dict[str, CacheEntry]:
        """The entries stored under any of ``keys``, by key: one trip to the connection's
        thread for each 500 keys (below SQLite's oldest limit of 999 parameters)."""
        unique = list(dict.fromkeys(keys))
        found: dict[str, CacheEntry] = {}
        for start in range(0, len(unique), 500):
            part = unique[start : start + 500]
            marks = ", ".join("?" * len(part))
            rows = await self._io.fetch(
                f"SELECT {CACHE_COLS} FROM cache_entries WHERE key IN ({marks})", part
            )
            for row in rows:
                found[row[0]] = cache_record(row)
        return found

    def get_cache_nowait(self, key: str) -> CacheEntry | None:
        """The cache entry with this key, read synchronously on the calling thread.

        A few microseconds against tens for a trip to the connection's thread; see
        :meth:`Connection.read_nowait` for the read snapshot lookups share.
        """
        row = self._io.read_nowait(f"SELECT {CACHE_COLS} FROM cache_entries WHERE key = ?", (key,))
        return cache_record(row) if row else None

    async def get_cache(self, key: str) -> CacheEntry | None:
        rows = await self._io.fetch(f"SELECT {CACHE_COLS} FROM cache_entries WHERE key = ?", [key])
        return cache_record(rows[0]) if rows else None

    async def list_cache(self, *, task_name: str | None = None) -> list[CacheEntry]:
        where, params = ("WHERE task_name = ?", [task_name]) if task_name is not None else ("", [])
        rows = await self._io.fetch(
            f"SELECT {CACHE_COLS} FROM cache_entries {where} ORDER BY created DESC", params
        )
        return [cache_record(r) for r in rows]

    async def delete_cache(self, keys: Sequence[str]) -> None:
        await self._io.transaction(
            [("DELETE FROM cache_entries WHERE key = ?", [(k,) for k in keys])]
        )

    async def result_refs(self) -> set[str]:
        rows = await self._io.fetch(
            "SELECT result_ref FROM cache_entries WHERE result_ref IS NOT NULL "
            "UNION SELECT result_ref FROM task_runs WHERE result_ref IS NOT NULL"
        )
        return {r[0] for r in rows} | await retention.asset_value_refs(self._io)

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

        return await self._io.write(take, 1)

    async def release_lease(self, lease_id: str) -> None:
        await self._io.transaction([("DELETE FROM limit_leases WHERE lease_id = ?", [(lease_id,)])])

    async def renew_leases(self, holder: str, expires: float) -> None:
        await self._io.transaction(
            [("UPDATE limit_leases SET expires = ? WHERE holder = ?", [(expires, holder)])]
        )

    async def list_leases(self) -> list[tuple[str, str, str, int, float, int]]:
        """(name, holder, host, pid, expires, waiting) of leases (waiting = 0) and waiting
        rows (waiting = how many slots), expired ones included."""
        rows = await self._io.fetch(
            "SELECT name, holder, host, pid, expires, waiting FROM limit_leases "
            "ORDER BY name, waiting, since"
        )
        return [(r[0], r[1], r[2] or "", r[3] or 0, r[4], int(r[5])) for r in rows]

    async def list_rates(self) -> list[tuple[str, float]]:
        """(name, tat) of every shared rate limit: uses are booked up to ``tat``."""
        rows = await self._io.fetch("SELECT name, tat FROM limit_rates ORDER BY name")
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

        return await self._io.write(reserve, 1)

    # -- serving (flowcore serve) ----------------------------------------------------

    async def claim_slots(self, claims: Sequence[SlotClaim], now: float) -> list[bool]:
        """Claim slots in one write transaction (see ``ServingStore.claim_slots``).

        A slot is claimed by inserting its row (``INSERT ... ON CONFLICT DO NOTHING
        RETURNING``: the rows returned are the slots claimed here, many rows per
        statement); then the claimed slots' runs are inserted the same way, and a slot
        whose run id is taken has its row deleted again, in the same transaction.
        Inside ``BEGIN IMMEDIATE``, no other handle writes in between.
        """
        # Snapshot before the first await. The first claim of a slot (and of a run id)
        # in this batch is the one tried: a repeat is refused here, as a taken one.
        slot_rows: list[tuple[Any, ...]] = []
        run_rows: dict[tuple[str, str, float], tuple[Any, ...]] = {}
        tried: list[tuple[str, str, float] | None] = []
        seen: set[tuple[str, str, float]] = set()
        seen_runs: set[str] = set()
        for c in claims:
            key = (c.flow, c.key, c.slot)
            run = c.run
            if key in seen or (run is not None and run.id in seen_runs):
                tried.append(None)
                continue
            seen.add(key)
            tried.append(key)
            slot_rows.append((*key, None if run is None else run.id, c.skipped, now))
            if run is not None:
                seen_runs.add(run.id)
                run_rows[key] = flow_row(run)

        def claim(db: sqlite3.Connection) -> set[tuple[str, str, float]]:
            won: set[tuple[str, str, float]] = set()
            for sql, params in multi_row(CLAIM_SLOT, slot_rows):
                for chunk in params:
                    won.update((r[0], r[1], r[2]) for r in db.execute(sql, chunk))
            runs = [row for key, row in run_rows.items() if key in won]
            inserted: set[str] = set()
            for sql, params in multi_row(INSERT_NEW_FLOW, runs):
                for chunk in params:
                    inserted.update(r[0] for r in db.execute(sql, chunk))
            taken = [key for key, row in run_rows.items() if key in won and row[0] not in inserted]
            if taken:  # rare: a run id already in the store
                db.executemany("DELETE FROM slots WHERE flow = ? AND key = ? AND slot = ?", taken)
                won.difference_update(taken)
            cursors: dict[tuple[str, str], float] = {}
            for flow, key, slot in won:
                if slot > cursors.get((flow, key), float("-inf")):
                    cursors[(flow, key)] = slot
            db.executemany(
                UPSERT_CURSOR, [(flow, key, slot, now) for (flow, key), slot in cursors.items()]
            )
            return won

        if not slot_rows:
            return [False] * len(tried)
        won = await self._io.write(claim, rows=len(slot_rows) + len(run_rows))
        return [key is not None and key in won for key in tried]

    async def list_slots(
        self, flow: str, key: str | None = None, *, limit: int = 100
    ) -> list[SlotClaim]:
        if limit < 1:
            raise ConfigurationError(f"`limit` must be >= 1, got {limit}")
        where, params = _flow_and_key(flow, key)
        rows = await self._io.fetch(
            f"SELECT flow, key, slot, skipped, claimed FROM slots WHERE {where} "
            "ORDER BY slot DESC, key DESC LIMIT ?",
            [*params, limit],
        )
        return [slot_record(r) for r in rows]

    async def slot_run_ids(self, flow: str, key: str, slots: Sequence[float]) -> list[str | None]:
        wanted = list(dict.fromkeys(slots))
        found: dict[float, str | None] = {}
        for i in range(0, len(wanted), 500):
            part = wanted[i : i + 500]
            rows = await self._io.fetch(
                "SELECT slot, run_id FROM slots WHERE flow = ? AND key = ? "
                f"AND slot IN ({', '.join('?' * len(part))})",
                [flow, key, *part],
            )
            found.update((r[0], r[1]) for r in rows)
        return [found.get(slot) for slot in slots]

    async def put_schedules(self, states: Sequence[ScheduleState]) -> list[ScheduleState]:
        rows = [schedule_row(state) for state in states]

        def put(db: sqlite3.Connection) -> list[ScheduleState]:
            stored = []
            for row in rows:
                stored.append(schedule_record(db.execute(UPSERT_SCHEDULE, row).fetchone()))
            return stored

        return await self._io.write(put, rows=len(rows))

    async def list_schedules(self, *, flow: str | None = None) -> list[ScheduleState]:
        where, params = ("WHERE flow = ?", [flow]) if flow is not None else ("", [])
        rows = await self._io.fetch(
            f"SELECT {SCHEDULE_COLS} FROM schedules {where} ORDER BY flow, key", params
        )
        return [schedule_record(r) for r in rows]

    async def set_paused(self, flow: str, key: str | None, paused: bool) -> int:
        where, params = _flow_and_key(flow, key)
        sql = f"UPDATE schedules SET paused = ? WHERE {where}"

        def update(db: sqlite3.Connection) -> int:
            return int(db.execute(sql, [int(paused), *params]).rowcount)

        return await self._io.write(update, rows=1)

    async def active_runs(self, name: str, launched_by: str | None = None) -> list[FlowRunRecord]:
        # On the partial index flow_runs_active: unfinished top-level runs only, few.
        # `launched_by` lives in the body, so it is matched on the (few) records read.
        runs = [flow_record(r) for r in await self._io.fetch(ACTIVE_RUNS, [name])]
        if launched_by is None:
            return runs
        return [r for r in runs if r.launched_by == launched_by]

    async def enqueue_trigger(self, trigger: Trigger) -> None:
        queued = msgspec.structs.replace(trigger, claimed_by=None, claimed=None, run_id=None)
        row = trigger_row(queued)

        def insert(db: sqlite3.Connection) -> None:
            cur = db.execute(
                f"INSERT INTO triggers ({TRIGGER_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                row,
            )
            if cur.rowcount != 1:
                raise ConfigurationError(
                    f"enqueue_trigger: a trigger with id {row[0]!r} exists already; give "
                    "each trigger a new id"
                )

        await self._io.write(insert, rows=1)

    async def claim_triggers(
        self,
        flows: Sequence[str],
        holder: str,
        now: float,
        make_run: Callable[[Trigger], FlowRunRecord],
        *,
        limit: int = 100,
    ) -> list[Trigger]:
        """Claim the oldest unclaimed triggers of ``flows``, in one write transaction.

        The candidates are read first (on the partial index ``triggers_pending``) and
        their runs made here, on the caller's thread; then the transaction claims them
        with ``UPDATE ... WHERE claimed_by IS NULL RETURNING id`` (many per statement)
        and inserts the runs of those it claimed. A candidate another handle claimed in
        between is left out, its run not inserted: this call then claims fewer than
        there were (the next call takes the rest).
        """
        if limit < 1:
            raise ConfigurationError(f"`limit` must be >= 1, got {limit}")
        names = list(dict.fromkeys(flows))
        if not names:
            return []
        rows = await self._io.fetch(
            f"SELECT {TRIGGER_COLS} FROM triggers WHERE claimed_by IS NULL "
            f"AND flow IN ({', '.join('?' * len(names))}) ORDER BY created, id LIMIT ?",
            [*names, limit],
        )
        if not rows:
            return []
        pending = [trigger_record(r) for r in rows]
        runs = [make_run(msgspec.structs.replace(t)) for t in pending]
        run_rows = [flow_row(run) for run in runs]
        if len({run.id for run in runs}) != len(runs):
            raise ConfigurationError(
                "claim_triggers: make_run gave one run id to two triggers; make_run must "
                "give each run a new id"
            )

        pairs = [(t.id, row[0]) for t, row in zip(pending, run_rows, strict=True)]

        def claim(db: sqlite3.Connection) -> set[str]:
            won: set[str] = set()
            for sql, params in multi_row(CLAIM_TRIGGERS, pairs):
                for chunk in params:
                    won.update(r[0] for r in db.execute(sql, [holder, now, *chunk]))
            runs = [row for t, row in zip(pending, run_rows, strict=True) if t.id in won]
            inserted: set[str] = set()
            for sql, params in multi_row(INSERT_NEW_FLOW, runs):
                for chunk in params:
                    inserted.update(r[0] for r in db.execute(sql, chunk))
            taken = [row[0] for row in runs if row[0] not in inserted]
            if taken:  # rolls the whole claim back
                raise ConfigurationError(
                    f"claim_triggers: make_run gave run id {taken[0]!r}, which is taken; "
                    "make_run must give each run a new id"
                )
            return won

        won = await self._io.write(claim, rows=2 * len(pending))
        return [
            msgspec.structs.replace(t, claimed_by=holder, claimed=now, run_id=row[0])
            for t, row in zip(pending, run_rows, strict=True)
            if t.id in won
        ]

    async def get_trigger(self, trigger_id: str) -> Trigger | None:
        rows = await self._io.fetch(
            f"SELECT {TRIGGER_COLS} FROM triggers WHERE id = ?", [trigger_id]
        )
        return trigger_record(rows[0]) if rows else None

    async def list_triggers(
        self, *, flow: str | None = None, pending: bool = False, limit: int = 100
    ) -> list[Trigger]:
        if limit < 1:
            raise ConfigurationError(f"`limit` must be >= 1, got {limit}")
        where, params = [], []
        if flow is not None:
            where.append("flow = ?")
            params.append(flow)
        if pending:
            where.append("claimed_by IS NULL")
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self._io.fetch(
            f"SELECT {TRIGGER_COLS} FROM triggers {clause} ORDER BY created DESC, id DESC LIMIT ?",
            [*params, limit],
        )
        return [trigger_record(r) for r in rows]

    async def put_served(self, served: Sequence[ServedFlow]) -> None:
        rows = [served_row(s) for s in served]
        if rows:
            await self._io.transaction(multi_row(UPSERT_SERVED, rows))

    async def beat_served(self, holder: str, now: float) -> None:
        await self._io.transaction(
            [("UPDATE served SET heartbeat = ? WHERE holder = ?", [(now, holder)])]
        )

    async def remove_served(self, holder: str) -> None:
        await self._io.transaction([("DELETE FROM served WHERE holder = ?", [(holder,)])])

    async def list_served(self) -> list[ServedFlow]:
        rows = await self._io.fetch(
            f"SELECT {SERVED_COLS} FROM served ORDER BY flow, started, holder"
        )
        return [served_record(r) for r in rows]

    async def claim_once(
        self, kind: str, keys: Sequence[str], holder: str, now: float
    ) -> list[str]:
        wanted = list(dict.fromkeys(keys))
        rows = [(kind, key, holder, now) for key in wanted]

        def claim(db: sqlite3.Connection) -> set[str]:
            won: set[str] = set()
            for sql, params in multi_row(CLAIM_ONCE, rows):
                for chunk in params:
                    won.update(r[0] for r in db.execute(sql, chunk))
            return won

        if not rows:
            return []
        won = await self._io.write(claim, rows=len(rows))
        return [key for key in wanted if key in won]

    async def changes(self) -> int:
        """``PRAGMA data_version`` of a connection kept for it alone: it changes when any
        other connection commits, another process's or this store's own (its writes
        go through its other connections), so a server wakes for its own process's
        triggers too. Read on the calling thread, never waiting for the writer."""
        return self._io.data_version()

    # -- assets ----------------------------------------------------------------------

    async def sync_assets(
        self, defs: Sequence[AssetDefRecord], marks: Mapping[str, Sequence[StaleMark]]
    ) -> dict[str, str]:
        rows = [(d.key, d.code_version, asset_body(d)) for d in defs]
        wanted = dict(marks)

        def sync(db: sqlite3.Connection) -> dict[str, str]:
            stored = dict(db.execute("SELECT key, code_version FROM asset_defs").fetchall())
            known = self._states.take(db)
            write = _asset_write(db, (), known)
            changed: dict[str, str] = {}
            for key, code_version, _ in rows:
                old = stored.get(key)
                if old is not None and old != code_version:
                    changed[key] = old
                    apply_code_change(write, key, old, code_version, wanted.get(key, ()))
            db.executemany(
                "INSERT INTO asset_defs (key, code_version, body) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET code_version = excluded.code_version, "
                "body = excluded.body",
                rows,
            )
            _write_states(db, write, self._states, known)
            return changed

        return await self._io.write(sync, rows=len(rows))

    async def list_asset_defs(self, keys: Sequence[str] | None = None) -> list[AssetDefRecord]:
        if keys is None:
            found = await self._io.fetch("SELECT body FROM asset_defs ORDER BY key")
        else:
            found = await self._io.fetch(
                "SELECT body FROM asset_defs WHERE key IN (SELECT value FROM json_each(?)) "
                "ORDER BY key",
                [msgspec.json.encode(list(keys)).decode()],
            )
        return [asset_def_record(r[0]) for r in found]

    async def asset_states(self, keys: Sequence[str] | None = None) -> list[AssetStateRecord]:
        if keys is None:
            found = await self._io.fetch("SELECT body FROM asset_state ORDER BY key")
        else:
            found = await self._io.fetch(
                "SELECT body FROM asset_state WHERE key IN (SELECT value FROM json_each(?)) "
                "ORDER BY key",
                [msgspec.json.encode(list(keys)).decode()],
            )
        return [asset_state_record(r[0]) for r in found]

    async def asset_history(
        self, key: str, *, partition: str | None = None, limit: int = 100
    ) -> list[MaterializationRecord]:
        # Walked back from the newest along its chain (see _write_assets): ``limit``
        # rows read by id, however long the history.
        if limit < 1:
            return []
        head = await self._head(key, partition)
        if head is None:
            return []
        link = "prev" if partition is None else "prev_partition"
        found = await self._io.fetch(
            "WITH RECURSIVE chain(id) AS (VALUES (?) UNION ALL SELECT m."
            + link
            + " FROM asset_materializations AS m JOIN chain ON m.id = chain.id WHERE m."
            + link
            + " IS NOT NULL LIMIT ?) SELECT m.body FROM chain JOIN asset_materializations "
            "AS m ON m.id = chain.id ORDER BY m.id DESC",
            [head, limit],
        )
        return [materialization_record(r[0]) for r in found]

    async def _head(self, key: str, partition: str | None) -> int | None:
        """The id of the newest materialisation of ``key`` (of its ``partition``)."""
        if partition is None:
            found = await self._io.fetch("SELECT body FROM asset_state WHERE key = ?", [key])
            if not found:
                return None  # never materialised (a materialisation writes the state too)
            head = asset_state_record(found[0][0]).last_materialization
            if head is None:  # a state that does not name its newest: not written by us
                found = await self._io.fetch(
                    "SELECT max(id) FROM asset_materializations WHERE key = ?", [key]
                )
                head = found[0][0]
            return head
        found = await self._io.fetch(
            "SELECT max(materialization) FROM asset_partitions WHERE key = ? AND partition = ?",
            [key, partition],
        )
        newest: int | None = found[0][0]
        return newest

    async def latest_materializations(
        self, key: str, partitions: Sequence[str | None]
    ) -> list[MaterializationRecord | None]:
        out: list[MaterializationRecord | None] = []
        for partition in partitions:
            head = await self._head(key, partition)
            found = (
                await self._io.fetch(
                    "SELECT body FROM asset_materializations WHERE id = ? AND partition IS ?",
                    [head, partition],
                )
                if head is not None
                else []
            )
            out.append(materialization_record(found[0][0]) if found else None)
        return out

    async def add_dynamic_partitions(self, name: str, keys: Sequence[str], now: float) -> list[int]:
        given = list(keys)

        def add(db: sqlite3.Connection) -> list[int]:
            known = dict(
                db.execute(
                    "SELECT key, idx FROM asset_dynamic_keys WHERE name = ?", (name,)
                ).fetchall()
            )
            new = []
            for key in given:
                if key not in known:
                    known[key] = len(known)
                    new.append((name, key, known[key], now))
            db.executemany(
                "INSERT INTO asset_dynamic_keys (name, key, idx, added) VALUES (?, ?, ?, ?)", new
            )
            return [int(known[key]) for key in given]

        return await self._io.write(add, rows=len(given))

    async def add_asset_evaluations(self, records: Sequence[AssetEvaluationRecord]) -> None:
        rows = [(r.key, r.at, evaluation_body(r)) for r in records]
        if not rows:
            return

        def run(db: sqlite3.Connection) -> None:
            _many(db, "INSERT INTO asset_evaluations (key, at, body) VALUES {values}", rows)

        await self._io.write(run, len(rows))

    async def asset_evaluations(
        self, key: str, *, until: float | None = None, limit: int = 100
    ) -> list[AssetEvaluationRecord]:
        if limit < 1:
            raise ConfigurationError(f"`limit` must be >= 1, got {limit}")
        found = await self._io.fetch(
            "SELECT body FROM asset_evaluations WHERE key = ? AND at <= ? "
            "ORDER BY at DESC, id DESC LIMIT ?",
            [key, math.inf if until is None else until, limit],
        )
        return [evaluation_record(r[0]) for r in found]

    async def dynamic_partitions(self, name: str) -> list[str]:
        rows = await self._io.fetch(
            "SELECT key FROM asset_dynamic_keys WHERE name = ? ORDER BY idx", [name]
        )
        return [str(r[0]) for r in rows]

    async def check_results(
        self, key: str, *, partition: str | None = None, limit: int = 100
    ) -> list[CheckResultRecord]:
        if partition is None:
            sql = "SELECT body FROM asset_checks WHERE key = ? ORDER BY id DESC LIMIT ?"
            params: list[Any] = [key, limit]
        else:
            sql = (
                "SELECT body FROM asset_checks WHERE key = ? AND partition = ? "
                "ORDER BY id DESC LIMIT ?"
            )
            params = [key, partition, limit]
        return [check_record(r[0]) for r in await self._io.fetch(sql, params)]


def _flow_and_key(flow: str, key: str | None) -> tuple[str, list[str]]:
    """A WHERE clause and its parameters for schedule ``key`` of ``flow`` (or all of them)."""
    if key is None:
        return "flow = ?", [flow]
    return "flow = ? AND key = ?", [flow, key]


# -- assets: applied inside the write transaction -------------------------------------------


class _StateCache:
    """The asset states this store's last write of them left, so that the next write
    takes them instead of reading and decoding them again: a quarter of what writing
    a materialisation costs (the 1,000 state rows of a 1,000-asset run).

    Trusted only while the states' clock (migration 14: one row that every write of
    asset states sets to a new random value) still reads what this store set it to:
    any other writer (another process, the store's other connection) moves it, and a
    write of ours that rolled back leaves the value from before it, which is not the
    one remembered. Random values, not a counter: a rolled-back write followed by
    another writer's could otherwise bring the counter back to the remembered value.
    """

    #: More states than this are not kept (10,000 assets are about 2 MB).
    LIMIT: Final = 100_000

    def __init__(self) -> None:
        self.states: dict[str, AssetStateRecord] = {}
        self._tick: int | None = None

    def take(self, db: sqlite3.Connection) -> dict[str, AssetStateRecord]:
        """The states still true in this write transaction (and none kept meanwhile:
        the write changes them in place, and may fail)."""
        (tick,) = db.execute("SELECT tick FROM asset_clock").fetchone()
        states, self.states = self.states, {}
        trusted, self._tick = self._tick, None
        return states if tick == trusted else {}

    def written(self, db: sqlite3.Connection, states: dict[str, AssetStateRecord]) -> None:
        """``states`` were written in this transaction: move the clock, and keep them."""
        import secrets  # here: it loads hmac and hashlib, 2 ms of a first flow (issue 17)

        tick = secrets.randbits(62)
        db.execute("UPDATE asset_clock SET tick = ?", (tick,))
        if len(states) <= self.LIMIT:
            self.states, self._tick = states, tick


def _asset_write(
    db: sqlite3.Connection,
    events: Sequence[AssetEvent] = (),
    known: dict[str, AssetStateRecord] | None = None,
    heads: dict[tuple[str, str], int | None] | None = None,
) -> AssetWrite:
    """An ``AssetWrite`` reading this transaction; the states and partition versions
    ``events`` touch are read up front, in two queries rather than two per event, but
    for those in ``known`` (true in this transaction: see _StateCache), and the states of
    the assets materialised that it has are in the write already (each materialisation
    touches its asset's state). ``heads`` gets the newest materialisation id of each
    partition read, by (key, partition key)."""
    if heads is None:
        heads = {}
    known = known or {}
    taken: dict[str, AssetStateRecord] = {}
    keys: set[str] = set()
    pairs: set[tuple[str, int]] = set()
    for event in events:
        if not isinstance(event, MaterializationRecord):
            keys.add(event.key)
            continue
        state = known.get(event.key)
        if state is None:
            keys.add(event.key)
        else:
            taken[event.key] = state
        if event.partition is not None or event.consumed or event.downstream:
            # An unpartitioned asset's version is its state's (no partition row).
            if event.partition is not None:
                pairs.add((event.key, event.index))
            for up, part, _, index in event.consumed:
                if part is None:
                    keys.add(up)
                else:
                    pairs.add((up, index))
            keys.update(mark.key for mark in event.downstream)
    keys = {key for key in keys if key not in known}  # (``known`` is read as asked)
    states: dict[str, AssetStateRecord | None] = {}
    if keys:
        states.update(dict.fromkeys(keys))
        found = db.execute(
            "SELECT key, body FROM asset_state WHERE key IN (SELECT value FROM json_each(?))",
            (msgspec.json.encode(sorted(keys)).decode(),),
        ).fetchall()
        states.update((key, asset_state_record(body)) for key, body in found)
    versions: dict[tuple[str, int], str | None] = dict.fromkeys(pairs)
    if pairs:
        found = db.execute(
            "SELECT p.key, p.idx, p.data_version, p.partition, p.materialization FROM "
            "json_each(?) AS j JOIN asset_partitions AS p ON p.key = json_extract(j.value, "
            "'$[0]') AND p.idx = json_extract(j.value, '$[1]')",
            (msgspec.json.encode(sorted(pairs)).decode(),),
        ).fetchall()
        for key, idx, version, partition, materialization in found:
            versions[(key, idx)] = str(version)
            heads[(key, partition)] = materialization

    def state_of(key: str) -> AssetStateRecord | None:
        found = known.get(key)
        if found is not None:
            return found
        if key in states:
            return states[key]
        row = db.execute("SELECT body FROM asset_state WHERE key = ?", (key,)).fetchone()
        return None if row is None else asset_state_record(row[0])

    def version_of(key: str, index: int) -> str | None:
        if (key, index) in versions:
            return versions[(key, index)]
        row = db.execute(
            "SELECT data_version FROM asset_partitions WHERE key = ? AND idx = ?", (key, index)
        ).fetchone()
        return None if row is None else str(row[0])

    write = AssetWrite(state_of, version_of)
    write.states.update(taken)  # (what applying would take first: the same objects)
    return write


def _partition_head(
    db: sqlite3.Connection, heads: dict[tuple[str, str], int | None], key: str, partition: str
) -> int | None:
    """The id of the newest materialisation of ``key``'s ``partition`` (read when the
    up-front read did not find it: a partition new, or renumbered)."""
    if (key, partition) not in heads:
        (heads[(key, partition)],) = db.execute(
            "SELECT max(materialization) FROM asset_partitions WHERE key = ? AND partition = ?",
            (key, partition),
        ).fetchone()
    return heads[(key, partition)]


def _write_states(
    db: sqlite3.Connection,
    write: AssetWrite,
    cache: _StateCache,
    known: dict[str, AssetStateRecord] | None = None,
) -> None:
    """Write the states ``write`` changed; ``known`` (those ``cache`` gave this
    transaction) and they are what the cache keeps."""
    _many(db, _UPSERT_STATE, [(key, asset_body(state)) for key, state in write.states.items()])
    kept = known if known is not None else {}
    kept.update(write.states)
    cache.written(db, kept)


def _many(db: sqlite3.Connection, template: str, rows: Sequence[Sequence[Any]]) -> None:
    """``rows`` written with many rows per statement (a statement per row costs more
    than the row)."""
    for sql, params in multi_row(template, rows):
        db.executemany(sql, params)


_UPSERT_STATE: Final = (
    "INSERT INTO asset_state (key, body) VALUES {values} "
    "ON CONFLICT (key) DO UPDATE SET body = excluded.body"
)
_INSERT_HISTORY: Final = (
    "INSERT INTO asset_materializations (id, key, partition, at, run_id, seq, prev, "
    "prev_partition, body) VALUES {values}"
)
#: The same for an unpartitioned asset: no partition to bind (a None parameter costs an
#: adapter lookup, ~0.5 µs, a sixth of the row).
_INSERT_HISTORY_WHOLE: Final = (
    "INSERT INTO asset_materializations (id, key, at, run_id, seq, prev, body) VALUES {values}"
)
_INSERT_CHECKS: Final = "INSERT INTO asset_checks (key, partition, at, body) VALUES {values}"
_UPSERT_PARTITIONS: Final = (
    "INSERT INTO asset_partitions (key, idx, partition, data_version, materialization) "
    "VALUES {values} ON CONFLICT (key, idx) DO UPDATE SET "
    "partition = excluded.partition, data_version = excluded.data_version, "
    "materialization = excluded.materialization"
)


def _write_assets(db: sqlite3.Connection, events: list[AssetEvent], cache: _StateCache) -> None:
    """Apply asset events in the write transaction (see ``AssetStore``): history
    appended, current partition versions and state rows read (or taken from ``cache``),
    changed, written back.

    The history is appended in id order, each materialisation chained to the previous
    one of its asset (``prev``, the head kept in the asset's state) and of its partition
    (``prev_partition``, the head kept in its ``asset_partitions`` row), and read back
    by walking the chain: an index by asset key would take a random page per
    materialisation, and a year of daily runs of a thousand assets made each write a
    dozen times slower (migration 14).
    """
    # Ids given here, after the largest (this transaction holds the write lock), so the
    # history is one executemany and the partition rows can name their materialisation.
    (top,) = db.execute("SELECT coalesce(max(id), 0) FROM asset_materializations").fetchone()
    known = cache.take(db)
    heads: dict[tuple[str, str], int | None] = {}
    write = _asset_write(db, events, known, heads)
    apply_asset_events(write, events, 0.0)
    ids: dict[int, int] = {}
    history: list[tuple[Any, ...]] = []
    whole: list[tuple[Any, ...]] = []
    checks: list[tuple[Any, ...]] = []
    states = write.states
    for item in write.history:
        if isinstance(item, MaterializationRecord):
            top += 1
            key, partition = item.key, item.partition
            state = states[key]  # (every materialisation's asset state is in the write)
            prev, state.last_materialization = state.last_materialization, top
            body = asset_body(item)
            if partition is None:
                whole.append((top, key, item.at, item.run_id, item.seq, prev, body))
            else:
                ids[id(item)] = top  # (only partition rows name their materialisation)
                previous = _partition_head(db, heads, key, partition)
                heads[(key, partition)] = top
                history.append(
                    (top, key, partition, item.at, item.run_id, item.seq, prev, previous, body)
                )
        else:
            checks.append((item.key, item.partition, item.at, asset_body(item)))
    _many(db, _INSERT_HISTORY, history)
    _many(db, _INSERT_HISTORY_WHOLE, whole)
    _many(db, _INSERT_CHECKS, checks)
    _many(
        db,
        _UPSERT_PARTITIONS,
        [  # (partitions only: an unpartitioned asset's version is its state's)
            (key, index, m.partition, m.data_version, ids[id(m)])
            for (key, index), m in write.current.items()
        ],
    )
    _write_states(db, write, cache, known)
