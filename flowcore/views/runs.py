"""Runs and task runs, as the CLI's ``--json`` and the web UI show them."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from ..hooks import HOOKS_LOGGER
from ..records import FlowRunRecord, LogRecord, TaskRunRecord
from ..store.base import RunQueries, Store
from ..store.crash import mark_crashed_runs
from .format import decode_recorded, iso_utc
from .results import StoredResult, inspect_result, result_to_json

__all__ = [
    "FAILED_HOOKS_SHOWN",
    "RunDetails",
    "RunsPage",
    "aggregated_graph",
    "failed_hooks",
    "find_runs",
    "list_runs",
    "run_details",
    "run_details_to_json",
    "run_to_json",
    "task_run_to_json",
]


async def list_runs(
    store: Store, *, flow: str | None = None, state: str | None = None, limit: int = 20
) -> list[FlowRunRecord]:
    """Runs, newest first; runs whose process died are marked Crashed first."""
    await mark_crashed_runs(store)
    return await store.list_runs(name=flow, state=state, limit=limit)


@dataclass
class RunDetails:
    """One run, its task runs counted by state, one page of them, and its subflows."""

    run: FlowRunRecord
    counts: dict[str, int]
    task_runs: list[TaskRunRecord]
    subflows: list[FlowRunRecord]
    results: dict[int, StoredResult] | None
    offset: int
    limit: int
    state: str | None
    tag: str | None = None
    #: The first :data:`FAILED_HOOKS_SHOWN` lines the run's failed hooks left in its log.
    failed_hooks: list[LogRecord] = field(default_factory=list)
    #: How many hooks of the run (and of its task runs) failed.
    failed_hooks_total: int = 0

    @property
    def total(self) -> int:
        """Task runs in the paged set (of ``state`` only, when given)."""
        if self.state is None:
            return sum(self.counts.values())
        return self.counts.get(self.state, 0)


async def run_details(
    store: Store,
    run_id: str,
    *,
    offset: int = 0,
    limit: int = 200,
    state: str | None = None,
    tag: str | None = None,
    results: bool = False,
    allow_pickle: bool = False,
) -> RunDetails:
    """The run with this id (or prefix) and the page ``offset``/``limit`` of its task runs
    (only those in ``state``, and of tasks tagged ``tag``, when given), with their
    results when ``results``. The counts are of the tagged task runs when ``tag``."""
    await mark_crashed_runs(store)
    run = await store.get_run(run_id)
    counts = await store.count_task_runs(run.id, tag=tag)
    task_runs = await store.list_task_runs(run.id, offset=offset, limit=limit, state=state, tag=tag)
    page = {t.seq for t in task_runs}
    subflows = [
        s
        for s in await store.child_runs(run.id)
        if s.parent_task_seq in page or (offset == 0 and s.parent_task_seq is None)
    ]
    stored = None
    if results:
        stored = {
            t.seq: await inspect_result(t, store.blobs, allow_pickle=allow_pickle)
            for t in task_runs
        }
    hooks, hooks_total = await failed_hooks(store, run.id)
    return RunDetails(
        run, counts, task_runs, subflows, stored, offset, limit, state, tag, hooks, hooks_total
    )


#: The failed hooks ``runs show`` lists (the rest are counted).
FAILED_HOOKS_SHOWN: Final = 20
#: Log lines read from the store at a time, looking for failed hooks.
_PAGE: Final = 1000


async def failed_hooks(
    store: Store, run_id: str, *, limit: int = FAILED_HOOKS_SHOWN
) -> tuple[list[LogRecord], int]:
    """The first ``limit`` lines the failed hooks of run ``run_id`` (an exact id) and of
    its task runs left in its log (ERROR lines of the ``flowcore.hooks`` logger, see
    :mod:`flowcore.hooks`), and how many there are."""
    found: list[LogRecord] = []
    total = 0
    after: int | None = None
    while True:
        page = await store.list_logs(run_id, min_level=logging.ERROR, after=after, limit=_PAGE)
        for line in page:
            if line.logger == HOOKS_LOGGER:
                total += 1
                if len(found) < limit:
                    found.append(line)
        if len(page) < _PAGE:
            return found, total
        after = page[-1].id


def run_details_to_json(d: RunDetails) -> dict[str, Any]:
    """A :class:`RunDetails` as JSON-ready data (what ``runs show --json`` prints)."""
    data = run_to_json(d.run, details=True)
    data["counts"] = d.counts
    data["task_runs"] = [task_run_to_json(t) for t in d.task_runs]
    if d.results is not None:
        for t, item in zip(d.task_runs, data["task_runs"], strict=True):
            item["result"] = result_to_json(d.results[t.seq])
    data["page"] = {
        "offset": d.offset,
        "limit": d.limit,
        "total": d.total,
        "state": d.state,
        "tag": d.tag,
    }
    data["subflows"] = [run_to_json(s) for s in d.subflows]
    data["failed_hooks"] = [
        {
            "time": iso_utc(line.time),
            "seq": line.seq,
            "task": line.task,
            "message": line.message,
        }
        for line in d.failed_hooks
    ]
    data["failed_hooks_total"] = d.failed_hooks_total
    return data


def _history(history: Iterable[tuple[Any, ...]]) -> list[list[Any]]:
    return [[h[0], iso_utc(h[1]), *h[2:]] for h in history]


def run_to_json(run: FlowRunRecord, *, details: bool = False) -> dict[str, Any]:
    """A flow run as JSON-ready data; ``details`` adds the traceback and history."""
    out: dict[str, Any] = {
        "id": run.id,
        "name": run.name,
        "kind": run.kind,
        "state": str(run.state),
        "created": iso_utc(run.created),
        "started": iso_utc(run.started),
        "ended": iso_utc(run.ended),
        "duration": run.duration,
        "task_count": run.task_count,
        "parent_run_id": run.parent_run_id,
        "parent_task_seq": run.parent_task_seq,
        "upstream": run.upstream,
        "parameters": decode_recorded(run.parameters),
        "error_type": run.error_type,
        "error_message": run.error_message,
        "host": run.host,
        "pid": run.pid,
        "heartbeat": iso_utc(run.heartbeat),
        "entrypoint": run.entrypoint,
        "resumed_from": run.resumed_from,
    }
    if details:
        out["traceback"] = run.traceback
        out["history"] = _history(run.history)
    return out


def task_run_to_json(tr: TaskRunRecord) -> dict[str, Any]:
    """A task run as JSON-ready data, inputs decoded."""
    return {
        "name": tr.name,
        "seq": tr.seq,
        "label": tr.label,
        "state": str(tr.state),
        "attempts": tr.attempts,
        "created": iso_utc(tr.created),
        "started": iso_utc(tr.started),
        "ended": iso_utc(tr.ended),
        "duration": tr.duration,
        "parent_seq": tr.parent_seq,
        "upstream": tr.upstream,
        "inputs": decode_recorded(tr.inputs),
        "error_type": tr.error_type,
        "error_message": tr.error_message,
        "traceback": tr.traceback,
        "history": _history(tr.history),
        "cache_key": tr.cache_key,
        "cached_from": tr.cached_from,
        "tags": tr.tags or [],
        "run_name": tr.run_name,
        "result_ref": tr.result_ref,
        "has_result": tr.result is not None or tr.result_ref is not None,
    }


@dataclass
class RunsPage:
    """One page of the runs list: the runs, and whether more follow."""

    runs: list[FlowRunRecord]
    offset: int
    limit: int
    more: bool


async def find_runs(
    store: Store,
    *,
    flow: str | None = None,
    state: str | None = None,
    since: float | None = None,
    until: float | None = None,
    tag: str | None = None,
    offset: int = 0,
    limit: int = 50,
) -> RunsPage:
    """Runs newest first, of ``flow`` and in ``state`` when given, created in
    ``[since, until)`` when given, with a task run of a task tagged ``tag`` when given:
    ``limit`` of them from ``offset``, paged by the store's query
    (:class:`~flowcore.store.base.RunQueries`: a page of 100,000 runs reads about what
    it skips and shows). A store without that role is read newest first and filtered
    here: right, and slower the further back the page."""
    await mark_crashed_runs(store)
    if isinstance(store, RunQueries):
        rows = await store.filter_runs(
            name=flow, state=state, since=since, until=until, tag=tag, offset=offset,
            limit=limit + 1,
        )  # fmt: skip
        return RunsPage(rows[:limit], offset, limit, len(rows) > limit)
    want = offset + limit + 1
    if since is None and until is None and tag is None:
        rows = (await store.list_runs(name=flow, state=state, limit=want))[offset:]
        return RunsPage(rows[:limit], offset, limit, len(rows) > limit)
    every = await store.list_runs(name=flow, state=state, limit=_EVERY)
    found: list[FlowRunRecord] = []
    for r in every:
        if (until is not None and r.created >= until) or (since is not None and r.created < since):
            continue
        if tag is not None and not await store.list_task_runs(r.id, tag=tag, limit=1):
            continue
        found.append(r)
        if len(found) >= want:
            break
    rows = found[offset:]
    return RunsPage(rows[:limit], offset, limit, len(rows) > limit)


#: As many runs as a store without :class:`~flowcore.store.base.RunQueries` is asked
#: for, to filter by time or tag here (every run: the answer must be right).
_EVERY: Final = 2**62


#: Task runs read at a time to aggregate a big run's graph.
_EDGES_PAGE: Final = 50_000


async def aggregated_graph(store: Store, run_id: str, *, max_nodes: int) -> dict[str, Any] | None:
    """The task graph of run ``run_id`` (an exact id) aggregated by task name, as
    :func:`flowcore.views.graph.task_graph` gives it past ``max_nodes`` task runs;
    ``None`` when the run has at most ``max_nodes`` (draw its task runs, with
    :func:`~flowcore.views.graph.task_graph`). Read with ``store.task_run_edges`` (seq,
    name, state and edges of each task run, never whole records) and aggregated from
    those tuples: a run of 100,000 task runs in about half the time of reading its
    records. ``None`` too for a store without :class:`~flowcore.store.base.RunQueries`."""
    if not isinstance(store, RunQueries):
        return None  # the caller reads the records (views.graph)
    page = await store.task_run_edges(run_id, limit=max_nodes + 1)
    if len(page) <= max_nodes:
        return None
    # Per task name: its task runs' states, the seqs its task runs read (upstream) and
    # were called from (parent); counted at the end, in C (Counter over lists), so the
    # loop over the rows only appends.
    states: dict[str, list[str]] = {}
    reads: dict[str, list[int]] = {}
    called: dict[str, list[int]] = {}
    name_of: dict[int, str] = {}
    total = 0
    while True:
        for seq, name, state, parent, upstream in page:
            name_of[seq] = name
            found = states.get(name)
            if found is None:
                found = states[name] = []
                reads[name], called[name] = [], []
            found.append(state)
            if upstream:
                reads[name].extend(upstream)
            if parent is not None:
                called[name].append(parent)
        total += len(page)
        if len(page) < (max_nodes + 1 if total == len(page) else _EDGES_PAGE):
            break
        page = await store.task_run_edges(run_id, after=page[-1][0], limit=_EDGES_PAGE)
    edges: Counter[tuple[str, str, str]] = Counter()
    source_of = name_of.get
    for kind, by_target in (("upstream", reads), ("parent", called)):
        for target, seqs in by_target.items():
            for source, n in Counter(map(source_of, seqs)).items():
                if source is not None:
                    edges[(source, target, kind)] += n
    counts = {name: Counter(found) for name, found in states.items()}
    nodes = [
        {
            "id": name,
            "label": name,
            "count": sum(by_state.values()),
            "states": dict(sorted(by_state.items())),
            "state": _dominant(by_state),
        }
        for name, by_state in sorted(counts.items())
    ]
    return {
        "mode": "task_names",
        "nodes": nodes,
        "edges": [
            {"source": s, "target": t, "kind": k, "count": n}
            for (s, t, k), n in sorted(edges.items())
            if s != t or k == "upstream"
        ],
        "total": total,
    }


def _dominant(counts: Counter[str]) -> str:
    """The state an aggregated node is coloured by, as :mod:`flowcore.views.graph` says:
    a failure if any, else running work, else the most common state."""
    for state in ("Failed", "Crashed", "TimedOut", "UpstreamFailed", "Running", "Retrying"):
        if counts.get(state):
            return state
    return counts.most_common(1)[0][0] if counts else "Pending"
