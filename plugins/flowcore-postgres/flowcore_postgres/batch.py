"""The engine's write batches: one statement, one round trip, whatever the batch holds.

The engine's writer flushes every changed record every 20 ms (thousands at a time). Here
a batch is one ``INSERT`` per kind of record, each bound as column arrays
(``unnest($1::text[], ...)``), joined in one statement by data-modifying ``WITH``
clauses, and run without ``BEGIN``/``COMMIT`` (a single statement is a transaction of
its own): one round trip per batch, prepared once per connection.

The rules SQLite's store keeps are kept in SQL: runs and task runs are upserted unless
the stored row is terminal. A finished record written over a ``Crashed`` one (a late
completion: a run another process took for dead finished after all, see
``store.base.late_completion``) is left by that statement; the statement returns how
many rows it wrote, and when fewer than given were written, the records left are looked
at again in a transaction of their own that merges each late completion into the
``Crashed`` row (locked ``FOR UPDATE``). That second step is rare (a run marked crashed
by mistake), and nothing else ever replaces a ``Crashed`` row, so doing it just after
the batch rather than in it changes nothing a reader can rely on.

Log lines get their ids from an identity column, in the order given; the statement
takes a transaction-level advisory lock (one per store) before the first id and holds it
to its commit, so ids grow in commit order across every writer, which is what a follower
paging by id (``flowcore runs logs --follow``) needs. Only batches with log lines take it.

A run's tags (those of the tasks its task runs ran, which ``RunQueries.filter_runs``
filters by) are rows of ``run_tags`` (migration 3), one per run and tag, each with its
run's ``created`` so that a tag's runs are an index range in time order. A batch whose
task runs carry tags inserts them, once per run and tag (a few rows, whatever the batch
size), skipping those already there, in two more clauses of the same statement
(:data:`BATCH_TAGGED`); other batches run :data:`BATCH`, which has none. ``created`` is
the stored run's, else the run's in this batch: the clauses of a statement all read the
database as it was before it, so a run inserted by its ``flows`` clause is not seen by
the others. A tag of a run recorded nowhere yet is dropped, as SQLite's store drops it
(the engine records a flow run before any of its task runs).

Asset events need their assets' state read, changed and written back in the same
transaction (``store.base.AssetStore``), so a batch that carries some is a transaction:
a lock per asset key (advisory, taken in key order, so two writers never deadlock on
them), the states and partition versions read in two queries, the events applied by
``store.base.apply_asset_events`` (the same code as every store), then the batch
statement and one statement for the history, partitions and states.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import asyncpg

from flowcore.records import (
    AssetEvent,
    AssetStateRecord,
    FlowRunRecord,
    MaterializationRecord,
    TaskRunRecord,
    WriteBatch,
)
from flowcore.states import TERMINAL
from flowcore.store.base import AssetWrite, apply_asset_events, late_completion

from .rows import (
    FINISHED_VALUES,
    FLOW_COLS,
    TASK_COLS,
    TERMINAL_SQL,
    TERMINAL_VALUES,
    asset_body,
    asset_state_record,
    cache_columns,
    columns,
    flow_columns,
    flow_record,
    log_columns,
    run_tags,
    span_columns,
    tag_value,
    task_columns,
    task_record,
)

__all__ = [
    "BATCH",
    "BATCH_TAGGED",
    "PreparedBatch",
    "RunTags",
    "prepare",
    "write_assets",
    "write_late_completions",
]

_CLAUSES: Final = f"""
WITH flows AS (
    INSERT INTO flow_runs AS f ({FLOW_COLS})
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::float8[],
                         $6::text[], $7::int4[], $8::text[], $9::text[], $10::bytea[])
    ON CONFLICT (id) DO UPDATE SET
        state = excluded.state, trace_id = excluded.trace_id,
        resumed_from = excluded.resumed_from, body = excluded.body
    WHERE f.state NOT IN ({TERMINAL_SQL})
    RETURNING 1
), tasks AS (
    INSERT INTO task_runs AS t ({TASK_COLS})
    SELECT * FROM unnest($11::text[], $12::int4[], $13::text[], $14::text[], $15::text[],
                         $16::bytea[])
    ON CONFLICT (run_id, seq) DO UPDATE SET
        state = excluded.state, result_ref = excluded.result_ref, body = excluded.body
    WHERE t.state NOT IN ({TERMINAL_SQL})
    RETURNING 1
), cache AS (
    INSERT INTO cache_entries (key, task_name, created, expires, result, result_ref, run_id, seq)
    SELECT * FROM unnest($17::text[], $18::text[], $19::float8[], $20::float8[], $21::bytea[],
                         $22::text[], $23::text[], $24::int4[])
    ON CONFLICT (key) DO UPDATE SET
        task_name = excluded.task_name, created = excluded.created, expires = excluded.expires,
        result = excluded.result, result_ref = excluded.result_ref, run_id = excluded.run_id,
        seq = excluded.seq
    RETURNING 1
), spans AS (
    INSERT INTO spans (trace_id, span_id, run_id, start, body)
    SELECT * FROM unnest($25::text[], $26::text[], $27::text[], $28::int8[], $29::bytea[])
    ON CONFLICT (trace_id, span_id) DO UPDATE SET
        run_id = excluded.run_id, start = excluded.start, body = excluded.body
    RETURNING 1
), log_lock AS (
    SELECT pg_advisory_xact_lock(hashtextextended($37::text, 0))::text AS held
    WHERE cardinality($30::text[]) > 0
), logs AS (
    INSERT INTO logs (run_id, seq, task, time, level, logger, message)
    SELECT u.r, u.s, u.ta, u.ti, u.le, u.lo, u.m
    FROM log_lock, unnest($30::text[], $31::int4[], $32::bytea[], $33::float8[], $34::int4[],
                          $35::bytea[], $36::bytea[])
                   WITH ORDINALITY AS u(r, s, ta, ti, le, lo, m, n)
    ORDER BY u.n
    RETURNING 1
), notified AS (
    SELECT pg_notify($38::text, '')::text AS sent WHERE $39::bool
)"""
# Each run's created is looked up by primary key in a subplan (a join there is planned
# as a hash join over every stored run while flow_runs is small, and the plan is kept).
_TAG_CLAUSES: Final = """, tag_rows AS MATERIALIZED (
    SELECT p.r, p.t, coalesce((SELECT f.created FROM flow_runs AS f WHERE f.id = p.r), p.c) AS c
    FROM unnest($40::text[], $41::bytea[], $42::float8[]) AS p(r, t, c)
), tagged AS (
    INSERT INTO run_tags (run_id, tag, created)
    SELECT r, t, c FROM tag_rows WHERE c IS NOT NULL
    ON CONFLICT (run_id, tag) DO NOTHING
)"""
_COUNTS: Final = """
SELECT (SELECT count(*) FROM flows), (SELECT count(*) FROM tasks),
       (SELECT count(*) FROM notified), (SELECT count(*) FROM logs),
       (SELECT count(*) FROM cache), (SELECT count(*) FROM spans)
"""
#: The batch statement: $1-$10 flow runs, $11-$16 task runs, $17-$24 cache entries,
#: $25-$29 spans, $30-$36 log lines, $37 the logs' lock name, $38 the channel, $39 notify?
BATCH: Final = _CLAUSES + _COUNTS
#: The batch statement of a batch whose task runs carry tags: :data:`BATCH` and $40-$42,
#: the runs' tags (run id, tag, the run's ``created`` when the run is in the batch). A
#: statement of its own: a clause with nothing to insert still opens its table and
#: indexes, ~15 µs a batch that untagged work has no reason to pay.
BATCH_TAGGED: Final = _CLAUSES + _TAG_CLAUSES + _COUNTS


@dataclass(slots=True)
class PreparedBatch:
    """A batch snapshot taken before the first await: the statement and its arguments."""

    sql: str
    args: list[Any]
    flows: int
    tasks: int
    assets: list[AssetEvent]
    #: The tags the statement sends, by run (those :class:`RunTags` did not know).
    tags: dict[str, set[str]]

    @property
    def flow_columns(self) -> list[list[Any]]:
        return self.args[0:10]

    @property
    def task_columns(self) -> list[list[Any]]:
        return self.args[10:16]


class RunTags:
    """The tags this handle has committed to ``run_tags``, for the runs whose records it
    writes, so that a batch sends only the tags new to a run: a run's task runs bring the
    same tags batch after batch, and sending them costs ~35 µs a batch (the clauses of
    :data:`BATCH_TAGGED`), where skipping them costs a set difference per run.

    A run is followed from the batch that writes its record unfinished (its row is then
    there, so its tags are inserted) to the one that writes it finished, so memory holds
    the runs in progress. Tags of runs not followed (task runs written after their run
    ended, or marked crashed by a reader) are sent each time, and the statement skips
    those already there: forgetting costs a few microseconds, never a tag.
    """

    def __init__(self) -> None:
        self._runs: dict[str, set[str]] = {}

    def new(self, task_runs: Sequence[TaskRunRecord]) -> dict[str, set[str]]:
        """The tags of ``task_runs`` not committed yet, by run."""
        found = run_tags(task_runs)
        known = self._runs
        if known:
            for run_id, tags in list(found.items()):
                sent = known.get(run_id)
                if sent is not None:
                    tags -= sent
                    if not tags:
                        del found[run_id]
        return found

    def committed(self, prepared: PreparedBatch) -> None:
        """``prepared`` was committed: its runs and their tags are in the database."""
        known = self._runs
        ids, states = prepared.flow_columns[0], prepared.flow_columns[3]
        for run_id, state in zip(ids, states, strict=True):
            if state in TERMINAL_VALUES:
                known.pop(run_id, None)
            elif run_id not in known:
                known[run_id] = set()
        for run_id, tags in prepared.tags.items():
            sent = known.get(run_id)
            if sent is not None:
                sent |= tags

    def clear(self) -> None:
        self._runs.clear()


def prepare(batch: WriteBatch, log_lock: str, channel: str, tags: RunTags) -> PreparedBatch:
    """The batch statement and its arguments, taken from the records now (they keep
    changing); of the runs' tags, those ``tags`` does not know committed."""
    flows = flow_columns(batch.flow_runs)
    tasks = task_columns(batch.task_runs)
    new_tags = tags.new(batch.task_runs)
    # A batch that ends a flow run, or changes assets, is news for `flowcore serve`.
    notify = bool(batch.assets) or any(r.state in TERMINAL for r in batch.flow_runs)
    args: list[Any] = [
        *flows,
        *tasks,
        *cache_columns(batch.cache_entries),
        *span_columns(batch.spans),
        *log_columns(batch.logs),
        log_lock,
        channel,
        notify,
    ]
    sql = BATCH
    if new_tags:
        # In key order (two writers racing lock their rows in one order), each with its
        # run's created when the run is in this batch (else the stored run's is taken).
        created = dict(zip(flows[0], flows[4], strict=True))
        rows = sorted(
            (run_id, tag_value(tag), created.get(run_id))
            for run_id, names in new_tags.items()
            for tag in names
        )
        sql = BATCH_TAGGED
        args += columns(rows, 3)
    # Asset events are applied (never mutated): a copy of the list is their snapshot.
    return PreparedBatch(sql, args, len(flows[0]), len(tasks[0]), list(batch.assets), new_tags)


async def run_batch(conn: asyncpg.Connection, prepared: PreparedBatch) -> tuple[int, int]:
    """The batch statement on ``conn``; how many flow runs and task runs it wrote."""
    row = await conn.fetchrow(prepared.sql, *prepared.args)
    assert row is not None
    return int(row[0]), int(row[1])


async def write_late_completions(
    conn: asyncpg.Connection, prepared: PreparedBatch, flows_written: int, tasks_written: int
) -> None:
    """Merge the finished records the batch left over ``Crashed`` rows (module docstring)."""
    if flows_written < prepared.flows:
        flow_cols = prepared.flow_columns
        ids = [fid for fid, state in zip(flow_cols[0], flow_cols[3], strict=True)
               if state in FINISHED_VALUES]  # fmt: skip
        if ids:
            wanted_ids = set(ids)
            written = {row[0]: row for row in zip(*flow_cols, strict=True) if row[0] in wanted_ids}
            crashed = await conn.fetch(
                f"SELECT {FLOW_COLS} FROM flow_runs WHERE id = ANY($1::text[]) "
                "AND state = 'Crashed' FOR UPDATE",
                ids,
            )
            for stored in crashed:
                late = late_completion(flow_record(stored), flow_record(written[stored[0]]))
                await _replace_crashed_flow(conn, late)
    if tasks_written < prepared.tasks:
        task_cols = prepared.task_columns
        keys = [
            (run_id, seq)
            for run_id, seq, state in zip(task_cols[0], task_cols[1], task_cols[3], strict=True)
            if state in FINISHED_VALUES
        ]
        if keys:
            wanted = set(keys)
            written_tasks = {
                (row[0], row[1]): row
                for row in zip(*task_cols, strict=True)
                if (row[0], row[1]) in wanted
            }
            crashed = await conn.fetch(
                f"SELECT {TASK_COLS} FROM task_runs WHERE (run_id, seq) IN "
                "(SELECT * FROM unnest($1::text[], $2::int4[])) AND state = 'Crashed' FOR UPDATE",
                [k[0] for k in keys],
                [k[1] for k in keys],
            )
            for stored in crashed:
                key = (stored[0], stored[1])
                late_task = late_completion(task_record(stored), task_record(written_tasks[key]))
                await _replace_crashed_task(conn, late_task)


async def _replace_crashed_flow(conn: asyncpg.Connection, late: FlowRunRecord) -> None:
    row = flow_columns([late])
    values = [column[0] for column in row]
    await conn.execute(
        "UPDATE flow_runs SET name = $2, kind = $3, state = $4, created = $5, "
        "parent_run_id = $6, parent_task_seq = $7, trace_id = $8, resumed_from = $9, body = $10 "
        "WHERE id = $1 AND state = 'Crashed'",
        *values,
    )


async def _replace_crashed_task(conn: asyncpg.Connection, late: TaskRunRecord) -> None:
    row = task_columns([late])
    values = [column[0] for column in row]
    await conn.execute(
        "UPDATE task_runs SET name = $3, state = $4, result_ref = $5, body = $6 "
        "WHERE run_id = $1 AND seq = $2 AND state = 'Crashed'",
        *values,
    )


# -- assets -------------------------------------------------------------------------------

_ASSETS: Final = """
WITH history AS (
    INSERT INTO asset_materializations (id, key, partition, at, run_id, seq, body)
    SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::float8[], $5::text[],
                         $6::int4[], $7::bytea[])
    RETURNING 1
), checks AS (
    INSERT INTO asset_checks (key, partition, at, body)
    SELECT u.k, u.p, u.a, u.b
    FROM unnest($8::text[], $9::text[], $10::float8[], $11::bytea[])
         WITH ORDINALITY AS u(k, p, a, b, n)
    ORDER BY u.n
    RETURNING 1
), partitions AS (
    INSERT INTO asset_partitions (key, idx, partition, data_version, materialization)
    SELECT * FROM unnest($12::text[], $13::int8[], $14::text[], $15::text[], $16::int8[])
    ON CONFLICT (key, idx) DO UPDATE SET
        partition = excluded.partition, data_version = excluded.data_version,
        materialization = excluded.materialization
    RETURNING 1
), states AS (
    INSERT INTO asset_state (key, body)
    SELECT * FROM unnest($17::text[], $18::bytea[])
    ON CONFLICT (key) DO UPDATE SET body = excluded.body
    RETURNING 1
)
SELECT (SELECT count(*) FROM history), (SELECT count(*) FROM checks),
       (SELECT count(*) FROM partitions), (SELECT count(*) FROM states)
"""


def asset_keys(events: Sequence[AssetEvent]) -> tuple[set[str], set[tuple[str, int]]]:
    """The asset keys whose state ``events`` read or change, and the partitions whose
    current version they read (``(key, index)``)."""
    keys: set[str] = set()
    pairs: set[tuple[str, int]] = set()
    for event in events:
        keys.add(event.key)
        if isinstance(event, MaterializationRecord):
            if event.partition is not None:  # unpartitioned: the state row has its version
                pairs.add((event.key, event.index))
            for up, part, _, index in event.consumed:
                if part is None:
                    keys.add(up)
                else:
                    pairs.add((up, index))
            keys.update(mark.key for mark in event.downstream)
    return keys, pairs


async def lock_assets(conn: asyncpg.Connection, lock_prefix: str, keys: set[str]) -> None:
    """Transaction-level locks on ``keys``, taken in key order (so two writers locking
    overlapping sets never wait for each other in a cycle)."""
    if keys:
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1::text || k, 0)) "
            "FROM unnest($2::text[]) AS k",
            lock_prefix,
            sorted(keys),
        )


class _Reader:
    """The states and partition versions of a transaction, read ahead in two queries
    (``apply_asset_events`` reads through sync callbacks; a miss is read next round)."""

    def __init__(self) -> None:
        self.states: dict[str, AssetStateRecord | None] = {}
        self.versions: dict[tuple[str, int], str | None] = {}
        self.missed_keys: set[str] = set()
        self.missed_pairs: set[tuple[str, int]] = set()

    async def read(
        self, conn: asyncpg.Connection, keys: set[str], pairs: set[tuple[str, int]]
    ) -> None:
        keys = keys - self.states.keys()
        pairs = pairs - self.versions.keys()
        if keys:
            self.states.update(dict.fromkeys(keys))
            found = await conn.fetch(
                "SELECT key, body FROM asset_state WHERE key = ANY($1::text[])", sorted(keys)
            )
            self.states.update((r[0], asset_state_record(r[1])) for r in found)
        if pairs:
            self.versions.update(dict.fromkeys(pairs))
            ordered = sorted(pairs)
            found = await conn.fetch(
                "SELECT p.key, p.idx, p.data_version FROM asset_partitions AS p "
                "JOIN unnest($1::text[], $2::int8[]) AS w(k, i) ON p.key = w.k AND p.idx = w.i",
                [k for k, _ in ordered],
                [i for _, i in ordered],
            )
            self.versions.update(((r[0], int(r[1])), str(r[2])) for r in found)
        self.missed_keys.clear()
        self.missed_pairs.clear()

    def write(self) -> AssetWrite:
        def state_of(key: str) -> AssetStateRecord | None:
            if key not in self.states:
                self.missed_keys.add(key)
                return None
            found = self.states[key]
            # A copy: the write changes what it is given, and a second round starts anew.
            return None if found is None else asset_state_record(asset_body(found))

        def version_of(key: str, index: int) -> str | None:
            if (key, index) not in self.versions:
                self.missed_pairs.add((key, index))
                return None
            return self.versions[(key, index)]

        return AssetWrite(state_of, version_of)

    @property
    def missed(self) -> bool:
        return bool(self.missed_keys or self.missed_pairs)


async def applied(
    conn: asyncpg.Connection,
    keys: set[str],
    pairs: set[tuple[str, int]],
    apply: Any,
) -> AssetWrite:
    """``apply(write)`` on an :class:`AssetWrite` reading this transaction; what it read
    is read ahead (and read again for anything it asked that was not read ahead)."""
    reader = _Reader()
    await reader.read(conn, keys, pairs)
    while True:
        write = reader.write()
        apply(write)
        if not reader.missed:
            return write
        await reader.read(conn, set(reader.missed_keys), set(reader.missed_pairs))


async def write_assets(
    conn: asyncpg.Connection, lock_prefix: str, events: list[AssetEvent]
) -> None:
    """Apply ``events`` in the transaction under way on ``conn`` (module docstring)."""
    keys, pairs = asset_keys(events)
    await lock_assets(conn, lock_prefix, keys)
    write = await applied(conn, keys, pairs, lambda w: apply_asset_events(w, events, 0.0))
    materializations = [m for m in write.history if isinstance(m, MaterializationRecord)]
    ids: dict[int, int] = {}
    if materializations:
        got = await conn.fetch(
            "SELECT nextval(pg_get_serial_sequence('asset_materializations', 'id')) "
            "FROM generate_series(1, $1::int)",
            len(materializations),
        )
        for item, row in zip(materializations, got, strict=True):
            ids[id(item)] = int(row[0])
    history = [
        (ids[id(m)], m.key, m.partition, m.at, m.run_id, m.seq, asset_body(m))
        for m in materializations
    ]
    checks = [
        (c.key, c.partition, c.at, asset_body(c))
        for c in write.history
        if not isinstance(c, MaterializationRecord)
    ]
    partitions = [
        (key, index, m.partition, m.data_version, ids[id(m)])
        for (key, index), m in write.current.items()
        if m.partition is not None  # unpartitioned: the state row has its version
    ]
    states = [(key, asset_body(state)) for key, state in write.states.items()]
    await conn.fetchrow(
        _ASSETS,
        *columns(history, 7),
        *columns(checks, 4),
        *columns(partitions, 5),
        *columns(states, 2),
    )


async def write_states(conn: asyncpg.Connection, write: AssetWrite) -> None:
    """Write back the states ``write`` touched (a definition sync's code change)."""
    states = [(key, asset_body(state)) for key, state in write.states.items()]
    if states:
        await conn.execute(
            "INSERT INTO asset_state (key, body) SELECT * FROM unnest($1::text[], $2::bytea[]) "
            "ON CONFLICT (key) DO UPDATE SET body = excluded.body",
            *columns(states, 2),
        )
