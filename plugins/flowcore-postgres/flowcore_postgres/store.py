"""The PostgreSQL store: every role of ``flowcore.store.base`` on one database.

Several hosts can share it: runs, caches, spans, logs, shared limits, schedules and
triggers, one-shot claims and assets all live in the store's schema, and large results
in its ``blobs`` table. What one process claims, every process sees claimed:

- shared limits: the slots of a limit are granted under a transaction-level advisory
  lock named after the limit, so two engines never both take its last slot; a rate is
  one row, booked by one ``INSERT ... ON CONFLICT DO UPDATE`` (its row lock orders
  every process's uses);
- schedule slots, one-shot keys: a claim is an ``INSERT ... ON CONFLICT DO NOTHING
  RETURNING``: the rows it returns are what was claimed here; a slot's run is inserted
  in the same transaction;
- triggers: the queue is read ``FOR UPDATE SKIP LOCKED``, oldest first, so servers
  claiming at once take different triggers instead of waiting for each other;
- resume claims: checked and written under one advisory lock per store;
- assets: each key's state is read, changed and written back under a lock of its own.

Writes of the engine's batches are one statement each (:mod:`.batch`), and the
``changes()`` token of ``flowcore serve`` comes by ``LISTEN``/``NOTIFY`` (:mod:`.notify`).
The store also plays the optional roles ``RunQueries`` (the web UI's runs list, filtered
and paged by an index, and task graphs read without whole records: a run's tags are
rows of ``run_tags``, kept by the batch statement) and ``RunRetention`` (old runs and
log lines deleted in chunks, :mod:`.retention`).
"""

from __future__ import annotations

import math
import os
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
import asyncpg
import msgspec

from flowcore.errors import ConfigurationError, RunNotFound
from flowcore.ids import HOST, safe_text
from flowcore.records import (
    AssetDefRecord,
    AssetEvaluationRecord,
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
from flowcore.store.base import (
    LOG_CHUNK,
    PRUNE_CHUNK,
    BlobStore,
    PruneCount,
    TagPage,
    apply_code_change,
    claimed_source,
    not_found_message,
)
from flowcore.store.files import FileBlobs

from . import batch as batches
from . import retention
from .blobs import TableBlobs
from .connection import Connection, translate
from .notify import Listener, channel_of
from .renewal import BlockingRenewal
from .rows import (
    CACHE_COLS,
    FLOW_COLS,
    LOG_COLS,
    SCHEDULE_COLS,
    SERVED_COLS,
    TASK_COLS,
    TERMINAL_SQL,
    TRIGGER_COLS,
    UNFINISHED_SQL,
    asset_body,
    asset_def_record,
    asset_state_record,
    cache_record,
    check_record,
    columns,
    edges,
    evaluation_body,
    evaluation_record,
    flow_record,
    flow_row,
    log_filter_value,
    log_record,
    materialization_record,
    schedule_record,
    schedule_row,
    served_record,
    served_row,
    slot_record,
    span_record,
    tag_value,
    task_record,
    trigger_record,
    trigger_row,
)
from .schema import SCHEMA_VERSION, migrate
from .url import parse_url

__all__ = ["SCHEMA_VERSION", "PostgresStore"]

#: The runs re-driving run $1 (resumptions, at any depth, named $2), unfinished first,
#: then (unless $3, force) completed ones, newest first: the holder of a resume claim.
_CLAIM_HOLDER = f"""
WITH RECURSIVE chain(id) AS (
    SELECT $1::text COLLATE "C"
    UNION
    SELECT f.id FROM flow_runs AS f JOIN chain ON f.resumed_from = chain.id WHERE f.name = $2
)
SELECT {FLOW_COLS} FROM flow_runs
WHERE id IN (SELECT id FROM chain) AND id <> $1
    AND (state NOT IN ({TERMINAL_SQL}) OR (state = 'Completed' AND NOT $3::bool))
ORDER BY state = 'Completed', created DESC
LIMIT 1
"""
#: ``FLOW_COLS`` of ``flow_runs AS f`` (in a join).
_F_COLS = ", ".join("f." + c for c in FLOW_COLS.split(", "))
_INSERT_NEW_FLOWS = f"""
INSERT INTO flow_runs ({FLOW_COLS})
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::text[],
                     $7::int4[], $8::text[], $9::text[], $10::bytea[])
ON CONFLICT DO NOTHING
RETURNING id
"""


class PostgresStore:
    """A flowcore store in a PostgreSQL database: ``PostgresStore("postgresql://...")``.

    The URL is libpq's (``postgresql://USER:PASSWORD@HOST:PORT/DATABASE``, or a Unix
    socket folder as ``?host=/run/postgresql``), plus ``schema=NAME`` (the schema of
    flowcore's tables, ``flowcore`` by default, created when missing) and
    ``blobs=/folder`` (large results as files in a folder every host mounts, instead of
    the ``blobs`` table). ``pool_size``: connections for reads and claims (the engine's
    writes, and ``changes()``, have one each besides).
    """

    #: asyncpg runs on asyncio only: an engine on trio refuses this store at open.
    asyncio_only = True

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        if not isinstance(pool_size, int) or pool_size < 1:
            raise ConfigurationError(f"`pool_size` must be an int >= 1, got {pool_size!r}")
        self.url = parse_url(url)
        self.location = self.url.location
        self.schema = self.url.schema
        self._io = Connection(self.url, pool_size=pool_size)
        self._channel = channel_of(self.schema)
        self._listener = Listener(self._channel, self._io.connect)
        #: Names of this store's advisory locks (database-wide: the schema is in each).
        self._lock_prefix = f"flowcore:{self.schema}:"
        self.blobs: BlobStore | None = (
            FileBlobs(self.url.blobs) if self.url.blobs is not None else TableBlobs(self._io)
        )
        #: The tags written for the runs in progress: a batch sends only new ones.
        self._tags = batches.RunTags()

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        if self._io.is_open:
            return

        async def prepare(conn: asyncpg.Connection) -> None:
            await migrate(conn, self.schema, self.location)

        await self._io.open(prepare)
        try:
            await self._listener.open()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._io.close()
            raise

    async def close(self) -> None:
        self._tags.clear()
        await self._listener.close()
        await self._io.close()

    async def __aenter__(self) -> PostgresStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _lock(self, name: str) -> str:
        return self._lock_prefix + name

    @property
    def renew_leases_blocking(self) -> BlockingRenewal:
        """Renews leases from a thread with no event loop (see ``engine.leases``): a loop
        blocked by sync code keeps its slots. A new one per caller, closed by it."""
        return BlockingRenewal(self._io.url.dsn, self._io.settings())

    # -- writes ------------------------------------------------------------------------

    async def write(self, batch: WriteBatch) -> None:
        # Snapshot now, before the first await: the engine keeps mutating these records.
        prepared = batches.prepare(batch, self._lock("logs"), self._channel, self._tags)

        async def run(conn: asyncpg.Connection) -> tuple[int, int]:
            if prepared.assets:
                await batches.write_assets(conn, self._lock("asset:"), prepared.assets)
            return await batches.run_batch(conn, prepared)

        if prepared.assets:
            written = await self._io.write(run)
        else:
            written = await self._io.write(run, transaction=False)
        self._tags.committed(prepared)
        if written[0] < prepared.flows or written[1] < prepared.tasks:

            async def late(conn: asyncpg.Connection) -> None:
                await batches.write_late_completions(conn, prepared, *written)

            await self._io.write(late)

    # -- runs --------------------------------------------------------------------------

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
        """Flow runs newest first (``created``, then ``id``, both descending), filtered and
        paged (``RunQueries.filter_runs``), each filter an index's:

        - none, a time range: a backward walk of ``flow_runs_created`` (its bounds);
        - ``name``, ``state``: of ``flow_runs_name_created``, ``flow_runs_state``;
        - ``tag``: of ``run_tags_tag`` (the tag's runs in time order, a time range its
          bounds), each row joined to its run by primary key, where ``name`` and
          ``state`` are checked. The join also equates the two ``created``, so that the
          planner may walk a run index instead and look each run's tag up (a rare name
          or state with a common tag).

        A page reads the runs it skips and shows (and, with filters an index does not
        bound, those it passes over), however many the store holds.
        """
        if limit < 1:
            raise ConfigurationError(f"`limit` must be >= 1, got {limit}")
        if offset < 0:
            raise ConfigurationError(f"`offset` must be >= 0, got {offset}")
        where, params = [], list[Any]()

        def add(clause: str, value: Any) -> None:
            params.append(value)
            where.append(clause.replace("?", f"${len(params)}"))

        if tag is None:
            source, cols, order = "flow_runs", FLOW_COLS, "created DESC, id DESC"
            if since is not None:
                add("created >= ?", since)
            if until is not None:
                add("created < ?", until)
        else:
            source = "run_tags AS t JOIN flow_runs AS f ON f.id = t.run_id"
            cols, order = _F_COLS, "t.created DESC, t.run_id DESC"
            add("t.tag = ?", tag_value(safe_text(tag)))  # looked up as it was recorded
            if since is not None:
                add("t.created >= ?", since)
            if until is not None:
                add("t.created < ?", until)
        if name is not None:
            add("name = ?", name)
        if state is not None:
            add("state = ?", str(state))
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        n = len(params)
        rows = await self._io.fetch(
            f"SELECT {cols} FROM {source} {clause} ORDER BY {order} LIMIT ${n + 1} OFFSET ${n + 2}",
            *params,
            limit,
            offset,
        )
        return [flow_record(r) for r in rows]

    async def get_run(self, run_id: str) -> FlowRunRecord:
        rows = await self._io.fetch(f"SELECT {FLOW_COLS} FROM flow_runs WHERE id = $1", run_id)
        matches = len(rows)
        if not rows and run_id:
            # A prefix, as people copy it from `runs ls`: a range on the primary key
            # (byte order: the column is COLLATE "C"), wildcards taken literally.
            bounds = (run_id, run_id + "\U0010ffff")
            rows = await self._io.fetch(
                f"SELECT {FLOW_COLS} FROM flow_runs WHERE id >= $1 AND id < $2 ORDER BY id LIMIT 2",
                *bounds,
            )
            matches = len(rows)
            if matches > 1:
                matches = int(
                    await self._io.fetchval(
                        "SELECT count(*) FROM flow_runs WHERE id >= $1 AND id < $2", *bounds
                    )
                )
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
        where, params = "run_id = $1", [run_id]
        if state is not None:
            where, params = "run_id = $1 AND state = $2", [run_id, str(state)]
        if tag is not None:
            return await self._tagged(where, params, tag, offset, limit)
        n = len(params)
        rows = await self._io.fetch(
            f"SELECT {TASK_COLS} FROM task_runs WHERE {where} ORDER BY seq "
            f"LIMIT ${n + 1} OFFSET ${n + 2}",
            *params,
            limit,
            offset,
        )
        return [task_record(r) for r in rows]

    async def task_run_edges(
        self, run_id: str, *, after: int = -1, limit: int | None = None
    ) -> list[tuple[int, str, str, int | None, list[int] | None]]:
        """``(seq, name, state, parent_seq, upstream)`` of run ``run_id``'s task runs after
        ``after``, by ``seq`` (``RunQueries.task_run_edges``): a range of the primary key;
        of each body only the two edge fields are decoded."""
        rows = await self._io.fetch(
            "SELECT seq, name, state, body FROM task_runs WHERE run_id = $1 AND seq > $2 "
            "ORDER BY seq LIMIT $3",
            run_id,
            after,
            limit,
        )
        return [edges(r) for r in rows]

    async def count_task_runs(self, run_id: str, *, tag: str | None = None) -> dict[str, int]:
        if tag is not None:
            tagged = await self._tagged("run_id = $1", [run_id], tag, 0, None, keep=False)
            return dict(Counter(str(t.state) for t in tagged))
        rows = await self._io.fetch(
            "SELECT state, count(*) FROM task_runs WHERE run_id = $1 GROUP BY state", run_id
        )
        return {r[0]: int(r[1]) for r in rows}

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

        Tags live in the body, so the rows are read in chunks and decoded here (memory
        stays bounded by a chunk and the page): a reader's query, never the engine's.
        """
        page = TagPage(tag, offset, limit, keep=keep)
        after = -1
        n = len(params)
        while not page.full:
            rows = await self._io.fetch(
                f"SELECT {TASK_COLS} FROM task_runs WHERE {where} AND seq > ${n + 1} "
                "ORDER BY seq LIMIT 5000",
                *params,
                after,
            )
            if not rows:
                break
            after = rows[-1][1]
            page.take(task_record(row) for row in rows)
        return page.found

    async def child_runs(self, run_id: str) -> list[FlowRunRecord]:
        rows = await self._io.fetch(
            f"SELECT {FLOW_COLS} FROM flow_runs WHERE parent_run_id = $1 ORDER BY created, id",
            run_id,
        )
        return [flow_record(r) for r in rows]

    async def claim_resume(
        self, run: FlowRunRecord, *, force: bool = False
    ) -> FlowRunRecord | None:
        of, name = claimed_source(run), run.name
        new = columns([flow_row(run)], 10)  # a snapshot, before the first await

        async def claim(conn: asyncpg.Connection) -> FlowRunRecord | None:
            # One claim at a time in the store: the chain is read after the lock, so a
            # claim committed by another process meanwhile is seen.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", self._lock("resume")
            )
            holder = await conn.fetchrow(_CLAIM_HOLDER, of, name, force)
            if holder is not None:
                return flow_record(holder)
            inserted = await conn.fetch(_INSERT_NEW_FLOWS, *new)
            if not inserted:
                raise ConfigurationError(f"claim_resume: a run with id {run.id!r} exists already")
            return None

        return await self._io.transaction(claim)

    # -- spans -------------------------------------------------------------------------

    async def list_spans(self, trace_id: str) -> list[SpanRecord]:
        rows = await self._io.fetch(
            "SELECT body FROM spans WHERE trace_id = $1 ORDER BY start, span_id", trace_id
        )
        return [span_record(r[0]) for r in rows]

    async def prune_spans(
        self, *, before: float | None = None, keep_runs: int | None = None
    ) -> int:
        """Delete spans started before ``before`` (unix seconds), those not of the newest
        ``keep_runs`` top-level runs, or with both, those matching both (an indexed delete
        on ``spans.start``); returns how many were deleted."""
        where, params = [], list[Any]()
        if before is not None:
            params.append(int(before * 1e9))
            where.append(f"start < ${len(params)}")
        if keep_runs is not None:
            params.append(keep_runs)
            where.append(
                "trace_id NOT IN (SELECT trace_id FROM flow_runs WHERE trace_id IS NOT NULL "
                f"AND parent_run_id IS NULL ORDER BY created DESC LIMIT ${len(params)})"
            )
        if not where:
            return 0
        status = await self._io.execute(f"DELETE FROM spans WHERE {' AND '.join(where)}", *params)
        return _count(status)

    # -- span export (a shipper's claims) -----------------------------------------------

    async def claim_span_exports(
        self, holder: str, *, now: float, lease: float, limit: int, since: float | None = None
    ) -> list[FlowRunRecord]:
        """Ended runs whose spans were not shipped, claimed by ``holder`` until ``now +
        lease``, oldest first (see ``SpanStore.claim_span_exports``). Claims are made one
        at a time in the store (an advisory lock; a shipper claims every few seconds at
        most), so each reads every claim committed before it: two shippers never get
        one run."""

        async def claim(conn: asyncpg.Connection) -> list[FlowRunRecord]:
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", self._lock("exports")
            )
            if since is not None:
                await conn.execute(
                    f"INSERT INTO span_exports (run_id, done) SELECT f.id, TRUE "
                    f"FROM flow_runs AS f LEFT JOIN span_exports AS e ON e.run_id = f.id "
                    f"WHERE f.state IN ({TERMINAL_SQL}) AND f.created < $1 "
                    f"AND (e.run_id IS NULL OR NOT e.done) "
                    f"ON CONFLICT (run_id) DO UPDATE SET done = TRUE, holder = NULL, until = NULL",
                    since,
                )
            rows = await conn.fetch(
                f"SELECT {', '.join('f.' + c for c in FLOW_COLS.split(', '))} "
                f"FROM flow_runs AS f LEFT JOIN span_exports AS e ON e.run_id = f.id "
                f"WHERE f.state IN ({TERMINAL_SQL}) "
                f"AND (e.run_id IS NULL OR (NOT e.done AND (e.until IS NULL OR e.until <= $1))) "
                f"ORDER BY f.created, f.id LIMIT $2",
                now,
                limit,
            )
            if rows:
                await conn.execute(
                    "INSERT INTO span_exports (run_id, holder, until) "
                    "SELECT r, $2, $3 FROM unnest($1::text[]) AS r ORDER BY r "
                    "ON CONFLICT (run_id) DO UPDATE SET holder = excluded.holder, "
                    "until = excluded.until",
                    [r[0] for r in rows],
                    holder,
                    now + lease,
                )
            return [flow_record(r) for r in rows]

        return await self._io.transaction(claim)

    async def end_span_exports(self, run_ids: Sequence[str], holder: str, *, shipped: bool) -> None:
        ids = sorted(set(run_ids))
        if not ids:
            return
        if shipped:
            await self._io.execute(
                "INSERT INTO span_exports (run_id, done) SELECT r, TRUE FROM unnest($1::text[]) "
                "AS r ORDER BY r ON CONFLICT (run_id) DO UPDATE SET done = TRUE, holder = NULL, "
                "until = NULL",
                ids,
            )
        else:
            await self._io.execute(
                "DELETE FROM span_exports WHERE run_id = ANY($1::text[]) AND holder = $2 "
                "AND NOT done",
                ids,
                holder,
            )

    # -- logs --------------------------------------------------------------------------

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
        where, params = ["run_id = $1"], list[Any]([run_id])
        clauses: tuple[tuple[str, Any], ...] = (
            ("seq = ", seq),
            ("task = ", None if task is None else log_filter_value(task)),
            ("level >= ", min_level),
            ("id > ", after),
        )
        for clause, value in clauses:
            if value is not None:
                params.append(value)
                where.append(f"{clause}${len(params)}")
        params.append(limit)
        rows = await self._io.fetch(
            f"SELECT {LOG_COLS} FROM logs WHERE {' AND '.join(where)} ORDER BY id "
            f"LIMIT ${len(params)}",
            *params,
        )
        return [log_record(r) for r in rows]

    # -- cache -------------------------------------------------------------------------

    def get_cache_nowait(self, key: str) -> CacheEntry | None:
        """Never at once: every read is a round trip to the server (the engine then awaits
        :meth:`get_cache`)."""
        raise anyio.WouldBlock

    async def get_cache_many(self, keys: Sequence[str]) -> dict[str, CacheEntry]:
        """The entries stored under any of ``keys``, by key, in one round trip."""
        if not keys:
            return {}
        rows = await self._io.fetch(
            f"SELECT {CACHE_COLS} FROM cache_entries WHERE key = ANY($1::text[])", list(keys)
        )
        return {row[0]: cache_record(row) for row in rows}

    async def get_cache(self, key: str) -> CacheEntry | None:
        rows = await self._io.fetch(f"SELECT {CACHE_COLS} FROM cache_entries WHERE key = $1", key)
        return cache_record(rows[0]) if rows else None

    async def list_cache(self, *, task_name: str | None = None) -> list[CacheEntry]:
        if task_name is None:
            rows = await self._io.fetch(
                f"SELECT {CACHE_COLS} FROM cache_entries ORDER BY created DESC, key"
            )
        else:
            rows = await self._io.fetch(
                f"SELECT {CACHE_COLS} FROM cache_entries WHERE task_name = $1 "
                "ORDER BY created DESC, key",
                task_name,
            )
        return [cache_record(r) for r in rows]

    async def delete_cache(self, keys: Sequence[str]) -> None:
        if keys:
            await self._io.execute(
                "DELETE FROM cache_entries WHERE key = ANY($1::text[])", list(keys)
            )

    async def result_refs(self) -> set[str]:
        rows = await self._io.fetch(
            "SELECT result_ref FROM cache_entries WHERE result_ref IS NOT NULL "
            "UNION SELECT result_ref FROM task_runs WHERE result_ref IS NOT NULL"
        )
        return {r[0] for r in rows} | await retention.asset_value_refs(self._io)

    # -- retention (store.base.RunRetention) ---------------------------------------------

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

    # -- shared limits -----------------------------------------------------------------

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
        """Lease up to ``want`` of the ``capacity`` slots of limit ``name``, in one
        transaction under the limit's advisory lock (see ``LeaseStore.lease_slots``)."""
        lock = self._lock("limit:" + name)
        pid = os.getpid()

        async def take(conn: asyncpg.Connection) -> tuple[list[str], int]:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", lock)
            row = await conn.fetchrow(
                """
                WITH expired AS (
                    DELETE FROM limit_leases WHERE name = $1 AND expires <= $2 RETURNING 1
                )
                SELECT
                    coalesce(sum(CASE WHEN waiting = 0 THEN 1 END), 0),
                    coalesce(sum(CASE WHEN waiting > 0 AND lease_id <> $3 AND
                        (since < $4 OR (since = $4 AND lease_id < $3)) THEN waiting END), 0),
                    coalesce(sum(CASE WHEN waiting > 0 AND holder <> $5 THEN waiting END), 0),
                    (SELECT count(*) FROM expired)
                FROM limit_leases WHERE name = $1 AND expires > $2
                """,
                name,
                now,
                waiter_id,
                since,
                holder,
            )
            held, ahead, others = (int(v) for v in row[:3]) if row is not None else (0, 0, 0)
            grant = max(0, min(want, capacity - held - ahead))
            leases = [uuid.uuid4().hex for _ in range(grant)]
            rows = [(lease, 0) for lease in leases]
            if want > grant:
                rows.append((waiter_id, want - grant))
            await conn.execute(
                """
                WITH gone AS (
                    DELETE FROM limit_leases WHERE lease_id = $1 AND $2::bool
                )
                INSERT INTO limit_leases
                    (lease_id, name, holder, host, pid, expires, waiting, since)
                SELECT l, $3, $4, $5, $6, $7, w, $8 FROM unnest($9::text[], $10::int4[]) AS u(l, w)
                ON CONFLICT (lease_id) DO UPDATE SET
                    name = excluded.name, holder = excluded.holder, host = excluded.host,
                    pid = excluded.pid, expires = excluded.expires, waiting = excluded.waiting,
                    since = excluded.since
                """,
                waiter_id,
                want <= grant,
                name,
                holder,
                HOST,
                pid,
                expires,
                since,
                [r[0] for r in rows],
                [r[1] for r in rows],
            )
            return leases, others

        return await self._io.transaction(take)

    async def release_lease(self, lease_id: str) -> None:
        await self._io.execute("DELETE FROM limit_leases WHERE lease_id = $1", lease_id)

    async def renew_leases(self, holder: str, expires: float) -> None:
        await self._io.execute(
            "UPDATE limit_leases SET expires = $1 WHERE holder = $2", expires, holder
        )

    async def list_leases(self) -> list[tuple[str, str, str, int, float, int]]:
        rows = await self._io.fetch(
            "SELECT name, holder, host, pid, expires, waiting FROM limit_leases "
            "ORDER BY name, waiting, since, lease_id"
        )
        return [(r[0], r[1], r[2] or "", r[3] or 0, float(r[4]), int(r[5])) for r in rows]

    async def list_rates(self) -> list[tuple[str, float]]:
        rows = await self._io.fetch("SELECT name, tat FROM limit_rates ORDER BY name")
        return [(r[0], float(r[1])) for r in rows]

    async def reserve_rate(self, name: str, interval: float, tolerance: float, now: float) -> float:
        """Reserve the next use of shared rate limit ``name`` (GCRA, see
        ``LeaseStore.reserve_rate``) in one statement: the upsert's row lock orders the
        uses of every process, and the row returns the time the use was booked at."""
        base = await self._io.fetchval(
            """
            INSERT INTO limit_rates AS r (name, tat) VALUES ($1, $2::float8 + $3::float8)
            ON CONFLICT (name) DO UPDATE SET tat = greatest(r.tat, $2::float8) + $3::float8
            RETURNING tat - $3::float8
            """,
            name,
            now,
            interval,
        )
        return max(now, float(base) - tolerance)

    # -- serving (flowcore serve) ------------------------------------------------------

    async def _notify(self, conn: asyncpg.Connection) -> None:
        await conn.execute("SELECT pg_notify($1, '')", self._channel)

    async def claim_slots(self, claims: Sequence[SlotClaim], now: float) -> list[bool]:
        """Claim slots in one transaction (see ``ServingStore.claim_slots``): their rows are
        inserted unless there (``ON CONFLICT DO NOTHING RETURNING``: what returns was
        claimed here), then the runs of those claimed, the same way; a slot whose run id
        is taken has its row deleted again. Rows go in key order, so two servers claiming
        overlapping slots wait for each other in one order and never deadlock."""
        # Snapshot before the first await. The first claim of a slot (and of a run id)
        # in this call is the one tried: a repeat is refused here, as a taken one.
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
        if not slot_rows:
            return [False] * len(tried)
        slot_rows.sort(key=lambda r: (r[0], r[1], r[2]))

        async def claim(conn: asyncpg.Connection) -> set[tuple[str, str, float]]:
            got = await conn.fetch(
                "INSERT INTO slots (flow, key, slot, run_id, skipped, claimed) "
                "SELECT * FROM unnest($1::text[], $2::text[], $3::float8[], $4::text[], "
                "$5::text[], $6::float8[]) ON CONFLICT DO NOTHING RETURNING flow, key, slot",
                *columns(slot_rows, 6),
            )
            won = {(r[0], r[1], r[2]) for r in got}
            runs = sorted(row for key, row in run_rows.items() if key in won)
            inserted: set[str] = set()
            if runs:
                inserted = {r[0] for r in await conn.fetch(_INSERT_NEW_FLOWS, *columns(runs, 10))}
            taken = [key for key, row in run_rows.items() if key in won and row[0] not in inserted]
            if taken:  # rare: a run id already in the store
                await conn.execute(
                    "DELETE FROM slots WHERE (flow, key, slot) IN "
                    "(SELECT * FROM unnest($1::text[], $2::text[], $3::float8[]))",
                    *columns(taken, 3),
                )
                won.difference_update(taken)
            cursors: dict[tuple[str, str], float] = {}
            for flow, key, slot in won:
                if slot > cursors.get((flow, key), -math.inf):
                    cursors[(flow, key)] = slot
            if cursors:
                ordered = sorted(cursors.items())
                await conn.execute(
                    "INSERT INTO schedules AS s (flow, key, cursor, updated) "
                    "SELECT f, k, c, $4 FROM unnest($1::text[], $2::text[], $3::float8[]) "
                    "AS u(f, k, c) ON CONFLICT (flow, key) DO UPDATE SET cursor = excluded.cursor "
                    "WHERE s.cursor IS NULL OR s.cursor < excluded.cursor",
                    [fk[0] for fk, _ in ordered],
                    [fk[1] for fk, _ in ordered],
                    [slot for _, slot in ordered],
                    now,
                )
            await self._notify(conn)
            return won

        won = await self._io.transaction(claim)
        return [key is not None and key in won for key in tried]

    async def list_slots(
        self, flow: str, key: str | None = None, *, limit: int = 100
    ) -> list[SlotClaim]:
        if limit < 1:
            raise ConfigurationError(f"`limit` must be >= 1, got {limit}")
        if key is None:
            rows = await self._io.fetch(
                "SELECT flow, key, slot, skipped, claimed FROM slots WHERE flow = $1 "
                "ORDER BY slot DESC, key DESC LIMIT $2",
                flow,
                limit,
            )
        else:
            rows = await self._io.fetch(
                "SELECT flow, key, slot, skipped, claimed FROM slots WHERE flow = $1 "
                "AND key = $2 ORDER BY slot DESC, key DESC LIMIT $3",
                flow,
                key,
                limit,
            )
        return [slot_record(r) for r in rows]

    async def slot_run_ids(self, flow: str, key: str, slots: Sequence[float]) -> list[str | None]:
        wanted = list(dict.fromkeys(slots))
        rows = await self._io.fetch(
            "SELECT slot, run_id FROM slots WHERE flow = $1 AND key = $2 "
            "AND slot = ANY($3::float8[])",
            flow,
            key,
            wanted,
        )
        found = {r[0]: r[1] for r in rows}
        return [found.get(slot) for slot in slots]

    async def put_schedules(self, states: Sequence[ScheduleState]) -> list[ScheduleState]:
        rows = [schedule_row(state) for state in states]
        if not rows:
            return []
        order = sorted(range(len(rows)), key=lambda i: (rows[i][0], rows[i][1]))

        async def put(conn: asyncpg.Connection) -> list[ScheduleState]:
            got = await conn.fetch(
                f"""
                INSERT INTO schedules AS s ({SCHEDULE_COLS})
                SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[],
                                     $5::float8[], $6::bool[], $7::float8[])
                ON CONFLICT (flow, key) DO UPDATE SET
                    description = excluded.description, next_fire = excluded.next_fire,
                    updated = excluded.updated
                RETURNING {", ".join("s." + c for c in SCHEDULE_COLS.split(", "))}
                """,
                *columns([rows[i] for i in order], 7),
            )
            await self._notify(conn)
            by_key = {(r[0], r[1]): schedule_record(r) for r in got}
            return [msgspec.structs.replace(by_key[(row[0], row[1])]) for row in rows]

        return await self._io.transaction(put)

    async def list_schedules(self, *, flow: str | None = None) -> list[ScheduleState]:
        if flow is None:
            rows = await self._io.fetch(f"SELECT {SCHEDULE_COLS} FROM schedules ORDER BY flow, key")
        else:
            rows = await self._io.fetch(
                f"SELECT {SCHEDULE_COLS} FROM schedules WHERE flow = $1 ORDER BY flow, key", flow
            )
        return [schedule_record(r) for r in rows]

    async def set_paused(self, flow: str, key: str | None, paused: bool) -> int:
        async def update(conn: asyncpg.Connection) -> int:
            if key is None:
                status = await conn.execute(
                    "UPDATE schedules SET paused = $1 WHERE flow = $2", paused, flow
                )
            else:
                status = await conn.execute(
                    "UPDATE schedules SET paused = $1 WHERE flow = $2 AND key = $3",
                    paused,
                    flow,
                    key,
                )
            await self._notify(conn)
            return _count(status)

        return await self._io.transaction(update)

    async def active_runs(self, name: str, launched_by: str | None = None) -> list[FlowRunRecord]:
        # On the partial index flow_runs_active: unfinished top-level runs only, few.
        rows = await self._io.fetch(
            f"SELECT {FLOW_COLS} FROM flow_runs WHERE name = $1 AND parent_run_id IS NULL "
            f"AND state IN ({UNFINISHED_SQL}) ORDER BY created, id",
            name,
        )
        runs = [flow_record(r) for r in rows]
        if launched_by is None:
            return runs
        return [r for r in runs if r.launched_by == launched_by]

    async def enqueue_trigger(self, trigger: Trigger) -> None:
        queued = msgspec.structs.replace(trigger, claimed_by=None, claimed=None, run_id=None)
        row = trigger_row(queued)

        async def insert(conn: asyncpg.Connection) -> None:
            status = await conn.execute(
                f"INSERT INTO triggers ({TRIGGER_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
                "ON CONFLICT DO NOTHING",
                *row,
            )
            if _count(status) != 1:
                raise ConfigurationError(
                    f"enqueue_trigger: a trigger with id {row[0]!r} exists already; give "
                    "each trigger a new id"
                )
            await self._notify(conn)

        await self._io.transaction(insert)

    async def claim_triggers(
        self,
        flows: Sequence[str],
        holder: str,
        now: float,
        make_run: Callable[[Trigger], FlowRunRecord],
        *,
        limit: int = 100,
    ) -> list[Trigger]:
        """Claim the oldest unclaimed triggers of ``flows``, in one transaction: they are
        read ``FOR UPDATE SKIP LOCKED`` (servers claiming at once each take others, none
        waits), their runs made here and inserted, and the triggers marked claimed. A run
        id that is taken rolls the whole claim back, with an error."""
        if limit < 1:
            raise ConfigurationError(f"`limit` must be >= 1, got {limit}")
        names = list(dict.fromkeys(flows))
        if not names:
            return []

        async def claim(conn: asyncpg.Connection) -> list[Trigger]:
            rows = await conn.fetch(
                f"SELECT {TRIGGER_COLS} FROM triggers WHERE claimed_by IS NULL "
                "AND flow = ANY($1::text[]) ORDER BY created, id LIMIT $2 "
                "FOR UPDATE SKIP LOCKED",
                names,
                limit,
            )
            if not rows:
                return []
            pending = [trigger_record(r) for r in rows]
            runs = [make_run(msgspec.structs.replace(t)) for t in pending]
            if len({run.id for run in runs}) != len(runs):
                raise ConfigurationError(
                    "claim_triggers: make_run gave one run id to two triggers; make_run must "
                    "give each run a new id"
                )
            run_rows = [flow_row(run) for run in runs]
            inserted = {r[0] for r in await conn.fetch(_INSERT_NEW_FLOWS, *columns(run_rows, 10))}
            taken = [row[0] for row in run_rows if row[0] not in inserted]
            if taken:  # rolls the whole claim back
                raise ConfigurationError(
                    f"claim_triggers: make_run gave run id {taken[0]!r}, which is taken; "
                    "make_run must give each run a new id"
                )
            await conn.execute(
                "UPDATE triggers AS t SET claimed_by = $1, claimed = $2, run_id = u.r "
                "FROM unnest($3::text[], $4::text[]) AS u(i, r) WHERE t.id = u.i",
                holder,
                now,
                [t.id for t in pending],
                [row[0] for row in run_rows],
            )
            await self._notify(conn)
            return [
                msgspec.structs.replace(t, claimed_by=holder, claimed=now, run_id=row[0])
                for t, row in zip(pending, run_rows, strict=True)
            ]

        return await self._io.transaction(claim)

    async def get_trigger(self, trigger_id: str) -> Trigger | None:
        rows = await self._io.fetch(
            f"SELECT {TRIGGER_COLS} FROM triggers WHERE id = $1", trigger_id
        )
        return trigger_record(rows[0]) if rows else None

    async def list_triggers(
        self, *, flow: str | None = None, pending: bool = False, limit: int = 100
    ) -> list[Trigger]:
        if limit < 1:
            raise ConfigurationError(f"`limit` must be >= 1, got {limit}")
        rows = await self._io.fetch(
            f"SELECT {TRIGGER_COLS} FROM triggers WHERE ($1::text IS NULL OR flow = $1) "
            "AND (NOT $2 OR claimed_by IS NULL) ORDER BY created DESC, id DESC LIMIT $3",
            flow,
            pending,
            limit,
        )
        return [trigger_record(r) for r in rows]

    async def put_served(self, served: Sequence[ServedFlow]) -> None:
        rows = sorted({(s.flow, s.holder): served_row(s) for s in served}.values())
        if not rows:
            return

        async def put(conn: asyncpg.Connection) -> None:
            await conn.execute(
                f"""
                INSERT INTO served ({SERVED_COLS})
                SELECT f, h, ho, p, m, e, ps, string_to_array(sc, chr(31)), st, hb
                FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::text[],
                            $6::text[], $7::text[], $8::text[], $9::float8[], $10::float8[])
                     AS u(f, h, ho, p, m, e, ps, sc, st, hb)
                ON CONFLICT (flow, holder) DO UPDATE SET
                    host = excluded.host, pid = excluded.pid, machine = excluded.machine,
                    entrypoint = excluded.entrypoint,
                    parameters_schema = excluded.parameters_schema,
                    schedules = excluded.schedules, started = excluded.started,
                    heartbeat = excluded.heartbeat
                """,
                *columns([(*row[:7], _join(row[7]), *row[8:]) for row in rows], 10),
            )
            await self._notify(conn)

        await self._io.transaction(put)

    async def beat_served(self, holder: str, now: float) -> None:
        await self._io.execute("UPDATE served SET heartbeat = $1 WHERE holder = $2", now, holder)

    async def remove_served(self, holder: str) -> None:
        async def remove(conn: asyncpg.Connection) -> None:
            await conn.execute("DELETE FROM served WHERE holder = $1", holder)
            await self._notify(conn)

        await self._io.transaction(remove)

    async def list_served(self) -> list[ServedFlow]:
        rows = await self._io.fetch(
            f"SELECT {SERVED_COLS} FROM served ORDER BY flow, started, holder"
        )
        return [served_record(r) for r in rows]

    async def claim_once(
        self, kind: str, keys: Sequence[str], holder: str, now: float
    ) -> list[str]:
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return []

        async def claim(conn: asyncpg.Connection) -> set[str]:
            got = await conn.fetch(
                "INSERT INTO once (kind, key, holder, claimed) "
                "SELECT $1, k, $2, $3 FROM unnest($4::text[]) AS k ORDER BY k "
                "ON CONFLICT DO NOTHING RETURNING key",
                kind,
                holder,
                now,
                sorted(wanted),
            )
            await self._notify(conn)
            return {r[0] for r in got}

        won = await self._io.transaction(claim)
        return [key for key in wanted if key in won]

    async def changes(self) -> int:
        """A count of the notifications this store's channel carried (see :mod:`.notify`):
        it moves when any handle or process commits a trigger, a pause, a schedule, a
        claim, a served flow, a run's end, an asset change. One ``SELECT 1`` round trip,
        which no writer blocks."""
        try:
            return await self._listener.changes()
        except Exception as exc:
            raise translate(exc, self.location) from exc

    # -- assets ------------------------------------------------------------------------

    async def sync_assets(
        self, defs: Sequence[AssetDefRecord], marks: Mapping[str, Sequence[StaleMark]]
    ) -> dict[str, str]:
        rows = {d.key: (d.key, d.code_version, asset_body(d)) for d in defs}
        wanted = {key: list(found) for key, found in marks.items()}
        lock_prefix = self._lock("asset:")

        async def sync(conn: asyncpg.Connection) -> dict[str, str]:
            keys = set(rows)
            for key in rows:
                keys.update(mark.key for mark in wanted.get(key, ()))
            await batches.lock_assets(conn, lock_prefix, keys)
            stored = {
                r[0]: r[1]
                for r in await conn.fetch(
                    "SELECT key, code_version FROM asset_defs WHERE key = ANY($1::text[])",
                    sorted(rows),
                )
            }
            changed: dict[str, str] = {}

            def apply(write: Any) -> None:
                changed.clear()
                for key, code_version, _ in rows.values():
                    old = stored.get(key)
                    if old is not None and old != code_version:
                        changed[key] = old
                        apply_code_change(write, key, old, code_version, wanted.get(key, ()))

            write = await batches.applied(conn, keys, set(), apply)
            ordered = sorted(rows.values())
            if ordered:
                await conn.execute(
                    "INSERT INTO asset_defs (key, code_version, body) "
                    "SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[]) "
                    "ON CONFLICT (key) DO UPDATE SET code_version = excluded.code_version, "
                    "body = excluded.body",
                    *columns(ordered, 3),
                )
            await batches.write_states(conn, write)
            await self._notify(conn)
            return dict(changed)

        return await self._io.transaction(sync)

    async def list_asset_defs(self, keys: Sequence[str] | None = None) -> list[AssetDefRecord]:
        if keys is None:
            found = await self._io.fetch("SELECT body FROM asset_defs ORDER BY key")
        else:
            found = await self._io.fetch(
                "SELECT body FROM asset_defs WHERE key = ANY($1::text[]) ORDER BY key", list(keys)
            )
        return [asset_def_record(r[0]) for r in found]

    async def asset_states(self, keys: Sequence[str] | None = None) -> list[AssetStateRecord]:
        if keys is None:
            found = await self._io.fetch("SELECT body FROM asset_state ORDER BY key")
        else:
            found = await self._io.fetch(
                "SELECT body FROM asset_state WHERE key = ANY($1::text[]) ORDER BY key",
                list(keys),
            )
        return [asset_state_record(r[0]) for r in found]

    async def asset_history(
        self, key: str, *, partition: str | None = None, limit: int = 100
    ) -> list[MaterializationRecord]:
        if partition is None:
            rows = await self._io.fetch(
                "SELECT body FROM asset_materializations WHERE key = $1 ORDER BY id DESC LIMIT $2",
                key,
                limit,
            )
        else:
            rows = await self._io.fetch(
                "SELECT body FROM asset_materializations WHERE key = $1 AND partition = $2 "
                "ORDER BY id DESC LIMIT $3",
                key,
                partition,
                limit,
            )
        return [materialization_record(r[0]) for r in rows]

    async def latest_materializations(
        self, key: str, partitions: Sequence[str | None]
    ) -> list[MaterializationRecord | None]:
        wanted = list(partitions)
        if not wanted:
            return []
        rows = await self._io.fetch(
            """
            SELECT w.n, m.body
            FROM unnest($2::text[]) WITH ORDINALITY AS w(p, n)
            CROSS JOIN LATERAL (
                SELECT body FROM asset_materializations
                WHERE key = $1 AND partition IS NOT DISTINCT FROM w.p
                ORDER BY id DESC LIMIT 1
            ) AS m
            """,
            key,
            wanted,
        )
        found = {int(r[0]) - 1: materialization_record(r[1]) for r in rows}
        return [found.get(i) for i in range(len(wanted))]

    async def check_results(
        self, key: str, *, partition: str | None = None, limit: int = 100
    ) -> list[CheckResultRecord]:
        if partition is None:
            rows = await self._io.fetch(
                "SELECT body FROM asset_checks WHERE key = $1 ORDER BY id DESC LIMIT $2",
                key,
                limit,
            )
        else:
            rows = await self._io.fetch(
                "SELECT body FROM asset_checks WHERE key = $1 AND partition = $2 "
                "ORDER BY id DESC LIMIT $3",
                key,
                partition,
                limit,
            )
        return [check_record(r[0]) for r in rows]

    async def add_dynamic_partitions(self, name: str, keys: Sequence[str], now: float) -> list[int]:
        given = list(keys)
        lock = self._lock("dynamic:" + name)

        async def add(conn: asyncpg.Connection) -> list[int]:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", lock)
            known = {
                r[0]: int(r[1])
                for r in await conn.fetch(
                    "SELECT key, idx FROM asset_dynamic_keys WHERE name = $1", name
                )
            }
            new: list[tuple[str, int]] = []
            for key in given:
                if key not in known:
                    known[key] = len(known)
                    new.append((key, known[key]))
            if new:
                await conn.execute(
                    "INSERT INTO asset_dynamic_keys (name, key, idx, added) "
                    "SELECT $1, k, i, $2 FROM unnest($3::text[], $4::int4[]) AS u(k, i)",
                    name,
                    now,
                    [k for k, _ in new],
                    [i for _, i in new],
                )
                await self._notify(conn)
            return [known[key] for key in given]

        return await self._io.transaction(add)

    async def dynamic_partitions(self, name: str) -> list[str]:
        rows = await self._io.fetch(
            "SELECT key FROM asset_dynamic_keys WHERE name = $1 ORDER BY idx", name
        )
        return [str(r[0]) for r in rows]

    async def add_asset_evaluations(self, records: Sequence[AssetEvaluationRecord]) -> None:
        rows = [(r.key, r.at, evaluation_body(r)) for r in records]
        if not rows:
            return
        await self._io.execute(
            "INSERT INTO asset_evaluations (key, at, body) "
            "SELECT u.k, u.a, u.b FROM unnest($1::text[], $2::float8[], $3::bytea[]) "
            "WITH ORDINALITY AS u(k, a, b, n) ORDER BY u.n",
            *columns(rows, 3),
        )

    async def asset_evaluations(
        self, key: str, *, until: float | None = None, limit: int = 100
    ) -> list[AssetEvaluationRecord]:
        if limit < 1:
            raise ConfigurationError(f"`limit` must be >= 1, got {limit}")
        rows = await self._io.fetch(
            "SELECT body FROM asset_evaluations WHERE key = $1 AND at <= $2 "
            "ORDER BY at DESC, id DESC LIMIT $3",
            key,
            math.inf if until is None else until,
            limit,
        )
        return [evaluation_record(r[0]) for r in rows]


def _count(status: str) -> int:
    """The row count of a command status (``DELETE 3``, ``UPDATE 0``, ``INSERT 0 1``)."""
    return int(status.rsplit(" ", 1)[-1])


#: Schedule keys travel as one text per served flow (joined by a unit separator, which
#: no key holds) since asyncpg cannot bind an array of arrays of varying lengths.
def _join(keys: list[str]) -> str:
    return "\x1f".join(keys)
