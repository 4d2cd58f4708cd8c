"""Retention in the SQLite store: old runs deleted with everything that is theirs, old log
lines, and the blobs asset materialisations hold (see ``store.base.RunRetention``).

How a prune of a million old runs stays out of the way of running flows:

- Candidates are read a page of ``chunk`` top-level runs at a time, oldest first, from
  the index ``flow_runs_created`` (migration 16: every run by ``(created, id)``; the
  subflows on the way are passed over), from where the last page stopped: a run that
  ended before the cutoff was created before it, so the walk ends at the cutoff, and
  each run is read once per prune. A
  run's tree (its subflows, at any depth) comes from ``flow_runs_parent``, its rows
  from the primary keys and ``logs_run``: nothing is scanned whole.
- Reads happen outside write transactions (WAL: they block no writer). A write
  transaction deletes at most :data:`ROW_BUDGET` rows of task runs, logs and spans; a
  chunk with more (a run of a million task runs) takes several, and its flow run rows go
  in the last one, so a prune stopped half-way leaves no orphan row.
- Between two write transactions the prune waits about as long as the last one held
  the lock, so other processes' writers (which retry a locked database every few
  milliseconds) get their turn: a prune takes at most about twice its own time.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Final

import anyio
import msgspec

from ...states import TERMINAL
from ..base import PruneCount, check_prune, ended_at, freed_results, run_times, value_ref_of
from .connection import Connection
from .rows import UNFINISHED_SQL

__all__ = ["ROW_BUDGET", "asset_value_refs", "prune_logs", "prune_runs"]

#: Rows of task runs, logs and spans one write transaction deletes at most.
ROW_BUDGET: Final = 20_000
#: The longest pause between two write transactions of a prune (seconds).
_MAX_PAUSE: Final = 0.1
#: The one-shot claims keyed by a run id (``flowcore.serve.crashes.CLAIM_KIND``): they go
#: with their run.
_RUN_CLAIM_KINDS: Final = ("crashed-hooks",)
#: The msgpack key ``value_ref`` (a fixstr of 9 bytes): a materialisation holding a blob
#: has it in its body (``omit_defaults``), and only those are in the partial index
#: ``asset_materializations_value_ref`` of migration 13.
VALUE_REF_KEY: Final = "X'a976616c75655f726566'"

_JSON = "(SELECT value FROM json_each(?))"

#: Top-level runs created before ?1 after (?2, ?3) (in ``(created, id)`` order); the
#: index is named: without statistics the planner would read every top-level run by
#: ``flow_runs_parent`` and sort them.
_CANDIDATES: Final = (
    "SELECT id, created, state, ended, heartbeat, started, body "
    "FROM flow_runs INDEXED BY flow_runs_created "
    "WHERE parent_run_id IS NULL AND created < ?1 AND (created, id) > (?2, ?3) {upto}"
    "ORDER BY created, id LIMIT ?4"
)
_UPTO: Final = "AND (created, id) < (?5, ?6) "
#: The ``(created, id)`` of the ``?``-th newest top-level run (0: the newest).
_NEWEST: Final = (
    "SELECT created, id FROM flow_runs INDEXED BY flow_runs_created WHERE parent_run_id IS NULL "
    "ORDER BY created DESC, id DESC LIMIT 1 OFFSET ?"
)
#: The runs that unfinished runs are resuming (on the partial index flow_runs_active).
_RESUMED: Final = (
    "SELECT resumed_from FROM flow_runs INDEXED BY flow_runs_active WHERE parent_run_id IS NULL "
    f"AND state IN ({UNFINISHED_SQL}) AND resumed_from IS NOT NULL"
)
#: The runs given and their subflows at any depth: id, trace id, task count, body.
_TREE: Final = """
WITH RECURSIVE tree(id) AS (
    SELECT value FROM json_each(?)
    UNION
    SELECT f.id FROM flow_runs AS f JOIN tree ON f.parent_run_id = tree.id
)
SELECT f.id, f.trace_id, f.task_count, f.body FROM tree JOIN flow_runs AS f ON f.id = tree.id
"""
#: Traces among ?1 holding a span row of a run outside ?2: two flows started inside one
#: application's trace, recorded when a flow run's span was a row. Read through the
#: spans' primary key: flow runs are not indexed by trace (migration 15); a run recorded
#: since, that joined a trace it did not start, says so itself (``parent_span_id``, see
#: _read_chunk), and its trace is shared: only its own spans go.
_SHARED_TRACES: Final = (
    f"SELECT DISTINCT trace_id FROM spans WHERE trace_id IN {_JSON} "
    f"AND run_id IS NOT NULL AND run_id NOT IN {_JSON}"
)
_COUNT_LOGS: Final = f"SELECT count(*) FROM logs WHERE run_id IN {_JSON}"


_TERMINAL_VALUES: Final = frozenset(s.value for s in TERMINAL)


def _json(values: Sequence[str]) -> str:
    return msgspec.json.encode(list(values)).decode()


class _Statement:
    """A delete of one kind of row of a chunk: all at once (``direct``, when the rows
    left are known to fit the transaction's budget), or at most the budget (``limited``,
    whose last parameter is the limit)."""

    def __init__(
        self, field: str, direct: str, limited: str, params: tuple[Any, ...], left: int | None
    ) -> None:
        self.field, self.direct, self.limited, self.params = field, direct, limited, params
        #: Rows known to be left (``None``: unknown, so only limited deletes).
        self.left = left
        self.done = False


def _statements(tree: str, own: str, shared: str, tasks: int, logs: int) -> list[_Statement]:
    in_tree = f"run_id IN {_JSON}"
    return [
        _Statement(
            "task_runs",
            f"DELETE FROM task_runs WHERE {in_tree}",
            "DELETE FROM task_runs WHERE (run_id, seq) IN "
            f"(SELECT run_id, seq FROM task_runs WHERE {in_tree} LIMIT ?)",
            (tree,),
            tasks,
        ),
        _Statement(
            "logs",
            f"DELETE FROM logs WHERE {in_tree}",
            f"DELETE FROM logs WHERE id IN (SELECT id FROM logs WHERE {in_tree} LIMIT ?)",
            (tree,),
            logs,
        ),
        _Statement(
            "spans",
            f"DELETE FROM spans WHERE trace_id IN {_JSON}",
            "DELETE FROM spans WHERE (trace_id, span_id) IN (SELECT trace_id, span_id "
            f"FROM spans WHERE trace_id IN {_JSON} LIMIT ?)",
            (own,),
            None,
        ),
        _Statement(
            "spans",
            f"DELETE FROM spans WHERE trace_id IN {_JSON} AND {in_tree}",
            "DELETE FROM spans WHERE (trace_id, span_id) IN (SELECT trace_id, span_id "
            f"FROM spans WHERE trace_id IN {_JSON} AND {in_tree} LIMIT ?)",
            (shared, tree),
            None,
        ),
    ]


def _delete_step(
    statements: list[_Statement], tree: str
) -> Callable[[sqlite3.Connection], tuple[PruneCount, bool]]:
    """One write transaction of a chunk: up to :data:`ROW_BUDGET` rows, and when every
    row of the chunk's runs is gone, the runs themselves, their triggers and claims."""

    def step(db: sqlite3.Connection) -> tuple[PruneCount, bool]:
        # A transaction rolled back (an error, a lock waited out and tried again) must
        # leave the statements as they were: its deletes did not happen.
        marks = [(statement.done, statement.left) for statement in statements]
        try:
            return deletes(db)
        except BaseException:
            for statement, (done, left) in zip(statements, marks, strict=True):
                statement.done, statement.left = done, left
            raise

    def deletes(db: sqlite3.Connection) -> tuple[PruneCount, bool]:
        found = PruneCount()
        budget = ROW_BUDGET
        for statement in statements:
            if statement.done:
                continue
            if budget <= 0:
                return found, False
            if statement.left is not None and statement.left <= budget:
                deleted = db.execute(statement.direct, statement.params).rowcount
                statement.done = True
            else:
                deleted = db.execute(statement.limited, (*statement.params, budget)).rowcount
                statement.done = deleted < budget
                if statement.left is not None:
                    statement.left = max(0, statement.left - deleted)
            budget -= deleted
            setattr(found, statement.field, getattr(found, statement.field) + deleted)
        if not all(statement.done for statement in statements):
            return found, False
        found.runs = db.execute(f"DELETE FROM flow_runs WHERE id IN {_JSON}", (tree,)).rowcount
        db.execute(f"DELETE FROM triggers WHERE run_id IN {_JSON}", (tree,))
        db.executemany(
            f"DELETE FROM once WHERE kind = ? AND key IN {_JSON}",
            [(kind, tree) for kind in _RUN_CLAIM_KINDS],
        )
        return found, True

    return step


class _Chunk:
    """A page of candidates, read in one call on the connection's thread: where the next
    page starts, and the runs to delete (their trees, traces and row counts)."""

    def __init__(self) -> None:
        self.read = 0  # candidates read (a page shorter than `chunk` is the last)
        self.after: tuple[float, str] = (-1e308, "")
        self.ids: list[str] = []  # the runs to delete, subflows included
        self.own: list[str] = []  # traces only they have
        self.shared: list[str] = []  # traces other runs have too
        self.tasks = 0  # their task runs, as their records count them (dry: as stored)
        self.logs = 0
        self.spans = 0  # (dry runs only)
        self.refs: list[tuple[str, int]] = []  # result refs held, and by how many (dry)


def _read_chunk(
    db: sqlite3.Connection,
    sql: str,
    params: list[Any],
    before: float,
    protected: set[str],
    dry_run: bool,
) -> _Chunk:
    chunk = _Chunk()
    rows = db.execute(sql, params).fetchall()
    chunk.read = len(rows)
    if not rows:
        return chunk
    chunk.after = (rows[-1][1], rows[-1][0])
    tops = [row[0] for row in rows if _ended_before(row, before, protected)]
    if not tops:
        return chunk
    tree_rows = db.execute(_TREE, (_json(tops),)).fetchall()
    chunk.ids = [r[0] for r in tree_rows]
    tree = _json(chunk.ids)
    traces = sorted({r[1] for r in tree_rows if r[1]})
    if traces:
        found = db.execute(_SHARED_TRACES, (_json(traces), tree)).fetchall()
        shared = {r[0] for r in found}
        top = set(tops)
        for r in tree_rows:  # a top-level run that joined a trace shares it with its maker
            joined = r[3] is not None and run_times(r[3]).parent_span_id is not None
            if r[0] in top and r[1] and joined:
                shared.add(r[1])
        chunk.shared = sorted(shared)
        chunk.own = [t for t in traces if t not in shared]
    [(logs,)] = db.execute(_COUNT_LOGS, (tree,)).fetchall()
    chunk.logs = int(logs)
    if not dry_run:
        for r in tree_rows:
            chunk.tasks += run_times(r[3]).task_count if r[3] is not None else r[2] or 0
        return chunk
    [(tasks,)] = db.execute(
        f"SELECT count(*) FROM task_runs WHERE run_id IN {_JSON}", (tree,)
    ).fetchall()
    [(spans,)] = db.execute(
        f"SELECT (SELECT count(*) FROM spans WHERE trace_id IN {_JSON}) + (SELECT count(*) "
        f"FROM spans WHERE trace_id IN {_JSON} AND run_id IN {_JSON})",
        (_json(chunk.own), _json(chunk.shared), tree),
    ).fetchall()
    chunk.tasks, chunk.spans = int(tasks), int(spans)
    chunk.refs = db.execute(
        f"SELECT result_ref, count(*) FROM task_runs WHERE run_id IN {_JSON} "
        "AND result_ref IS NOT NULL GROUP BY result_ref",
        (tree,),
    ).fetchall()
    return chunk


async def _prune_chunk(io: Connection, chunk: _Chunk) -> PruneCount:
    tree = _json(chunk.ids)
    statements = _statements(tree, _json(chunk.own), _json(chunk.shared), chunk.tasks, chunk.logs)
    step = _delete_step(statements, tree)
    count = PruneCount()
    while True:
        began = time.monotonic()
        # Any number of rows: on the connection's thread, never blocking the event loop.
        found, complete = await io.write(step, rows=1 << 30)
        count += found
        # Let other writers in before the next transaction (see the module docstring).
        await anyio.sleep(min(time.monotonic() - began, _MAX_PAUSE))
        if complete:
            return count


def _ended_before(row: Sequence[Any], before: float, protected: set[str]) -> bool:
    """Whether candidate ``row`` (see ``_CANDIDATES``) is a run to delete."""
    run_id, created, state, ended, heartbeat, started, body = row
    if state not in _TERMINAL_VALUES or run_id in protected:
        return False
    if body is not None:  # rows from before migration 6 hold their times in columns
        times = run_times(body)
        ended, heartbeat, started = times.ended, times.heartbeat, times.started
    return ended_at(ended, heartbeat, started, created) < before


async def prune_runs(
    io: Connection, before: float, keep_runs: int | None, chunk: int, dry_run: bool
) -> PruneCount:
    """``RunRetention.prune_runs`` on the database of ``io`` (see the module docstring)."""
    check_prune(before, keep_runs, chunk)
    count = PruneCount()
    upto: tuple[Any, ...] = ()
    if keep_runs:
        newest = await io.fetch(_NEWEST, [keep_runs - 1])
        if not newest:
            return count  # no more top-level runs than those to keep
        upto = (newest[0][0], newest[0][1])
    protected = {r[0] for r in await io.fetch(_RESUMED)}
    sql = _CANDIDATES.format(upto=_UPTO if upto else "")
    refs: Counter[str] = Counter()
    after: tuple[float, str] = (-1e308, "")
    while True:
        page = await io.call(
            _read_chunk, sql, [before, *after, chunk, *upto], before, protected, dry_run
        )
        if page.ids:
            if dry_run:
                count += PruneCount(len(page.ids), page.tasks, page.logs, page.spans)
                refs.update(dict(page.refs))
            else:
                count += await _prune_chunk(io, page)
        if page.read < chunk:
            break
        after = page.after
    if dry_run and refs:
        count.blobs = await _freed(io, refs)
    return count


async def _freed(io: Connection, refs: Counter[str]) -> int:
    """How many of ``refs`` (held by the runs a dry run would delete) nothing else holds."""
    wanted = _json(sorted(refs))
    holders = {
        r[0]: int(r[1])
        for r in await io.fetch(
            f"SELECT result_ref, count(*) FROM task_runs WHERE result_ref IN {_JSON} "
            "GROUP BY result_ref",
            [wanted],
        )
    }
    kept = {
        r[0]
        for r in await io.fetch(
            f"SELECT result_ref FROM cache_entries WHERE result_ref IN {_JSON}", [wanted]
        )
    }
    kept |= await asset_value_refs(io)
    return freed_results(refs, holders, kept)


async def asset_value_refs(io: Connection) -> set[str]:
    """The blobs asset materialisations hold (their ``value_ref``), read from the partial
    index ``asset_materializations_value_ref``: only materialisations holding one."""
    rows = await io.fetch(
        f"SELECT body FROM asset_materializations WHERE instr(body, {VALUE_REF_KEY}) > 0"
    )
    refs = {value_ref_of(r[0]) for r in rows}
    return {ref for ref in refs if ref}


async def prune_logs(io: Connection, before: float, chunk: int, dry_run: bool) -> int:
    """``RunRetention.prune_logs``: lines are walked by ``id`` (the rowid: ranges of the
    table's own b-tree), ``chunk`` at a time, until a chunk holds no line older than
    ``before``."""
    check_prune(before, None, chunk)
    total = 0
    after = 0
    while True:
        [(last, old)] = await io.fetch(
            "SELECT max(id), coalesce(sum(time < ?), 0) FROM "
            "(SELECT id, time FROM logs WHERE id > ? ORDER BY id LIMIT ?)",
            [before, after, chunk],
        )
        if last is None or not old:
            return total
        if dry_run:
            total += int(old)
        else:
            began = time.monotonic()
            delete = functools.partial(_delete_logs, after=after, last=last, before=before)
            total += await io.write(delete, rows=1 << 30)
            await anyio.sleep(min(time.monotonic() - began, _MAX_PAUSE))
        after = int(last)


def _delete_logs(db: sqlite3.Connection, *, after: int, last: int, before: float) -> int:
    sql = "DELETE FROM logs WHERE id > ? AND id <= ? AND time < ?"
    return int(db.execute(sql, (after, last, before)).rowcount)
