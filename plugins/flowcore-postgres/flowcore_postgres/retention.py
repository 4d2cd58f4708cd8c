"""Retention on PostgreSQL: old runs deleted with everything that is theirs, old log lines,
and the blobs asset materialisations hold (``store.base.RunRetention``, as the SQLite
store does it).

- Candidates are read a page of ``chunk`` top-level runs at a time, oldest first, from
  the partial index ``flow_runs_top`` (migration 4), from where the last page stopped;
  a run's tree comes from ``flow_runs_parent``, its rows from the primary keys,
  ``logs_run`` and ``triggers_run``: nothing is scanned whole.
- A transaction deletes at most :data:`ROW_BUDGET` rows of task runs, logs and spans
  (a run of a million task runs takes several), and a chunk's flow run rows, tags,
  span-export rows, triggers and one-shot claims go in its last one, so a prune stopped
  half-way leaves no orphan row. PostgreSQL takes no lock over a table for a delete:
  short transactions keep the write-ahead log, the rows other writers wait for and the
  work vacuum must wait for small.
- Between two transactions the prune waits about as long as the last one took.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Final

import anyio
import asyncpg

from flowcore.store.base import (
    PruneCount,
    check_prune,
    ended_at,
    freed_results,
    run_times,
    value_ref_of,
)

from .connection import Connection
from .rows import TERMINAL_VALUES, UNFINISHED_SQL, Row

__all__ = ["ROW_BUDGET", "VALUE_REF_MATCH", "asset_value_refs", "prune_logs", "prune_runs"]

#: Rows of task runs, logs and spans one transaction deletes at most.
ROW_BUDGET: Final = 20_000
#: The longest pause between two transactions of a prune (seconds).
_MAX_PAUSE: Final = 0.1
#: The one-shot claims keyed by a run id (``flowcore.serve.crashes.CLAIM_KIND``).
_RUN_CLAIM_KINDS: Final = ["crashed-hooks"]
#: A materialisation holding a blob: its msgpack body has the key ``value_ref`` (a fixstr
#: of 9 bytes). The predicate of the partial index ``asset_materializations_value_ref``
#: (migration 4), which a query must repeat to be served by it.
VALUE_REF_MATCH: Final = r"position('\xa976616c75655f726566'::bytea IN body) > 0"

_CANDIDATES: Final = (
    "SELECT id, created, state, body FROM flow_runs "
    "WHERE parent_run_id IS NULL AND created < $1 AND (created, id) > ($2, $3) {upto}"
    "ORDER BY created, id LIMIT $4"
)
_UPTO: Final = "AND (created, id) < ($5, $6) "
_NEWEST: Final = (
    "SELECT created, id FROM flow_runs WHERE parent_run_id IS NULL "
    "ORDER BY created DESC, id DESC LIMIT 1 OFFSET $1"
)
_RESUMED: Final = (
    "SELECT resumed_from FROM flow_runs WHERE parent_run_id IS NULL "
    f"AND state IN ({UNFINISHED_SQL}) AND resumed_from IS NOT NULL"
)
_TREE: Final = """
WITH RECURSIVE tree(id) AS (
    SELECT unnest($1::text[]) COLLATE "C"
    UNION
    SELECT f.id FROM flow_runs AS f JOIN tree ON f.parent_run_id = tree.id
)
SELECT f.id, f.trace_id, f.body FROM tree JOIN flow_runs AS f ON f.id = tree.id
"""
_SHARED_TRACES: Final = (
    "SELECT DISTINCT trace_id FROM flow_runs WHERE trace_id = ANY($1::text[]) "
    "AND NOT (id = ANY($2::text[]))"
)
_COUNT_LOGS: Final = "SELECT count(*) FROM logs WHERE run_id = ANY($1::text[])"
_IN_TREE: Final = "run_id = ANY($1::text[])"


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


class _Statement:
    """A delete of one kind of row of a chunk: all at once (``direct``, when the rows
    left are known to fit the transaction's budget), or at most the budget (``limited``,
    whose last parameter is the limit)."""

    def __init__(
        self, field: str, direct: str, limited: str, params: tuple[Any, ...], left: int | None
    ) -> None:
        self.field, self.direct, self.limited, self.params = field, direct, limited, params
        self.left = left
        self.done = False


def _statements(
    tree: list[str], own: list[str], shared: list[str], tasks: int, logs: int
) -> list[_Statement]:
    return [
        _Statement(
            "task_runs",
            f"DELETE FROM task_runs WHERE {_IN_TREE}",
            "DELETE FROM task_runs WHERE (run_id, seq) IN "
            f"(SELECT run_id, seq FROM task_runs WHERE {_IN_TREE} LIMIT $2)",
            (tree,),
            tasks,
        ),
        _Statement(
            "logs",
            f"DELETE FROM logs WHERE {_IN_TREE}",
            f"DELETE FROM logs WHERE id IN (SELECT id FROM logs WHERE {_IN_TREE} LIMIT $2)",
            (tree,),
            logs,
        ),
        _Statement(
            "spans",
            "DELETE FROM spans WHERE trace_id = ANY($1::text[])",
            "DELETE FROM spans WHERE (trace_id, span_id) IN (SELECT trace_id, span_id "
            "FROM spans WHERE trace_id = ANY($1::text[]) LIMIT $2)",
            (own,),
            None,
        ),
        _Statement(
            "spans",
            "DELETE FROM spans WHERE trace_id = ANY($1::text[]) AND run_id = ANY($2::text[])",
            "DELETE FROM spans WHERE (trace_id, span_id) IN (SELECT trace_id, span_id "
            "FROM spans WHERE trace_id = ANY($1::text[]) AND run_id = ANY($2::text[]) LIMIT $3)",
            (shared, tree),
            None,
        ),
    ]


async def _step(
    conn: asyncpg.Connection, statements: list[_Statement], tree: list[str]
) -> tuple[PruneCount, bool]:
    """One transaction of a chunk: up to :data:`ROW_BUDGET` rows, and when every row of
    the chunk's runs is gone, the runs themselves and what goes with them."""
    found = PruneCount()
    budget = ROW_BUDGET
    for statement in statements:
        if statement.done:
            continue
        if budget <= 0:
            return found, False
        if statement.left is not None and statement.left <= budget:
            deleted = _count(await conn.execute(statement.direct, *statement.params))
            statement.done = True
        else:
            deleted = _count(await conn.execute(statement.limited, *statement.params, budget))
            statement.done = deleted < budget
            if statement.left is not None:
                statement.left = max(0, statement.left - deleted)
        budget -= deleted
        setattr(found, statement.field, getattr(found, statement.field) + deleted)
    if not all(statement.done for statement in statements):
        return found, False
    for table in ("run_tags", "span_exports", "triggers"):
        await conn.execute(f"DELETE FROM {table} WHERE run_id = ANY($1::text[])", tree)
    await conn.execute(
        "DELETE FROM once WHERE kind = ANY($1::text[]) AND key = ANY($2::text[])",
        _RUN_CLAIM_KINDS,
        tree,
    )
    status = await conn.execute("DELETE FROM flow_runs WHERE id = ANY($1::text[])", tree)
    found.runs = _count(status)
    return found, True


async def _tree(io: Connection, tops: list[str]) -> tuple[list[str], list[str], list[str], int]:
    """The ids of the runs of ``tops``' trees, their traces only they have, those they
    share with other runs, and their task runs (as their records count them)."""
    rows = await io.fetch(_TREE, tops)
    ids = [r[0] for r in rows]
    traces = sorted({r[1] for r in rows if r[1]})
    times = [run_times(r[2]) for r in rows]
    tasks = sum(t.task_count for t in times)
    shared: set[str] = set()
    if traces:
        shared = {r[0] for r in await io.fetch(_SHARED_TRACES, traces, ids)}
        top = set(tops)  # a top-level run that joined a trace shares it with its maker
        shared.update(
            r[1] for r, t in zip(rows, times, strict=True)
            if r[0] in top and r[1] and t.parent_span_id is not None
        )  # fmt: skip
    return ids, [t for t in traces if t not in shared], sorted(shared), tasks


async def _prune_chunk(io: Connection, tops: list[str]) -> PruneCount:
    ids, own, shared, tasks = await _tree(io, tops)
    logs = int(await io.fetchval(_COUNT_LOGS, ids))
    statements = _statements(ids, own, shared, tasks, logs)

    async def step(conn: asyncpg.Connection) -> tuple[PruneCount, bool]:
        # A transaction retried after a deadlock starts from what was committed before.
        marks = [(s.done, s.left) for s in statements]
        try:
            return await _step(conn, statements, ids)
        except BaseException:
            for statement, (done, left) in zip(statements, marks, strict=True):
                statement.done, statement.left = done, left
            raise

    count = PruneCount()
    while True:
        began = time.monotonic()
        found, complete = await io.transaction(step)
        count += found
        await anyio.sleep(min(time.monotonic() - began, _MAX_PAUSE))
        if complete:
            return count


async def _count_chunk(io: Connection, tops: list[str], refs: Counter[str]) -> PruneCount:
    """What :func:`_prune_chunk` would delete (a dry run), and the result refs held."""
    ids, own, shared, _ = await _tree(io, tops)
    tasks = int(await io.fetchval(f"SELECT count(*) FROM task_runs WHERE {_IN_TREE}", ids))
    logs = int(await io.fetchval(_COUNT_LOGS, ids))
    spans = int(
        await io.fetchval(
            "SELECT (SELECT count(*) FROM spans WHERE trace_id = ANY($1::text[])) + (SELECT "
            "count(*) FROM spans WHERE trace_id = ANY($2::text[]) AND run_id = ANY($3::text[]))",
            own,
            shared,
            ids,
        )
    )
    for ref, held in await io.fetch(
        f"SELECT result_ref, count(*) FROM task_runs WHERE {_IN_TREE} "
        "AND result_ref IS NOT NULL GROUP BY result_ref",
        ids,
    ):
        refs[ref] += int(held)
    return PruneCount(len(ids), tasks, logs, spans)


def _ended_before(row: Row, before: float, protected: set[str]) -> bool:
    run_id, created, state, body = row
    if state not in TERMINAL_VALUES or run_id in protected:
        return False
    times = run_times(body)
    return ended_at(times.ended, times.heartbeat, times.started, created) < before


async def prune_runs(
    io: Connection, before: float, keep_runs: int | None, chunk: int, dry_run: bool
) -> PruneCount:
    """``RunRetention.prune_runs`` on the store of ``io`` (see the module docstring)."""
    check_prune(before, keep_runs, chunk)
    count = PruneCount()
    upto: tuple[Any, ...] = ()
    if keep_runs:
        newest = await io.fetch(_NEWEST, keep_runs - 1)
        if not newest:
            return count
        upto = (newest[0][0], newest[0][1])
    protected = {r[0] for r in await io.fetch(_RESUMED)}
    sql = _CANDIDATES.format(upto=_UPTO if upto else "")
    refs: Counter[str] = Counter()
    after: tuple[float, str] = (float("-inf"), "")
    while True:
        rows = await io.fetch(sql, float(before), *after, chunk, *upto)
        if not rows:
            break
        after = (rows[-1][1], rows[-1][0])
        tops = [row[0] for row in rows if _ended_before(row, before, protected)]
        if tops:
            count += await (_count_chunk(io, tops, refs) if dry_run else _prune_chunk(io, tops))
        if len(rows) < chunk:
            break
    if dry_run and refs:
        count.blobs = await _freed(io, refs)
    return count


async def _freed(io: Connection, refs: Counter[str]) -> int:
    wanted = sorted(refs)
    holders = {
        r[0]: int(r[1])
        for r in await io.fetch(
            "SELECT result_ref, count(*) FROM task_runs WHERE result_ref = ANY($1::text[]) "
            "GROUP BY result_ref",
            wanted,
        )
    }
    kept = {
        r[0]
        for r in await io.fetch(
            "SELECT result_ref FROM cache_entries WHERE result_ref = ANY($1::text[])", wanted
        )
    }
    kept |= await asset_value_refs(io)
    return freed_results(refs, holders, kept)


async def asset_value_refs(io: Connection) -> set[str]:
    """The blobs asset materialisations hold (their ``value_ref``), read from the partial
    index ``asset_materializations_value_ref``: only materialisations holding one."""
    rows = await io.fetch(f"SELECT body FROM asset_materializations WHERE {VALUE_REF_MATCH}")
    refs = {value_ref_of(r[0]) for r in rows}
    return {ref for ref in refs if ref}


async def prune_logs(io: Connection, before: float, chunk: int, dry_run: bool) -> int:
    """``RunRetention.prune_logs``: lines are walked by ``id`` (ranges of the primary
    key), ``chunk`` at a time, until a chunk holds no line older than ``before``."""
    check_prune(before, None, chunk)
    total = 0
    after = 0
    while True:
        row = await io.fetch(
            "SELECT max(id), count(*) FILTER (WHERE time < $1) FROM "
            "(SELECT id, time FROM logs WHERE id > $2 ORDER BY id LIMIT $3) AS chunk",
            float(before),
            after,
            chunk,
        )
        last, old = row[0][0], int(row[0][1])
        if last is None or not old:
            return total
        if dry_run:
            total += old
        else:
            began = time.monotonic()
            status = await io.execute(
                "DELETE FROM logs WHERE id > $1 AND id <= $2 AND time < $3",
                after,
                last,
                float(before),
            )
            total += _count(status)
            await anyio.sleep(min(time.monotonic() - began, _MAX_PAUSE))
        after = int(last)
