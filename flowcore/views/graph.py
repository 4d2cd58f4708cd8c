"""A run's task graph as the web UI draws it: task runs and their recorded edges, or, for
a big run, task names with their task runs counted by state.

Edges are what the store recorded: ``upstream`` (a future passed as an input: a data
dependency) and ``parent_seq`` (a task called from another task's body). A browser lays
out a few hundred nodes quickly and chokes on tens of thousands, so past ``max_nodes``
task runs the graph is aggregated on the server: one node per task name, one edge per
pair of names, and what the browser receives stays small however big the run is.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Final

from ..records import TaskRunRecord
from ..store.base import Store

__all__ = ["MAX_NODES", "aggregate_graph", "task_graph", "task_run_graph"]

#: Task runs drawn one node each; past this, task names aggregated.
MAX_NODES: Final = 300
#: Task runs read from the store at a time while aggregating.
_PAGE: Final = 20_000


def task_run_graph(task_runs: list[TaskRunRecord]) -> dict[str, Any]:
    """One node per task run (``id`` its seq), edges ``upstream`` and ``parent``."""
    seqs = {t.seq for t in task_runs}
    nodes = [
        {"id": str(t.seq), "label": t.run_name or f"{t.name}#{t.seq}", "state": str(t.state)}
        for t in task_runs
    ]
    edges: list[dict[str, Any]] = []
    for t in task_runs:
        for up in t.upstream or ():
            if up in seqs:
                edges.append({"source": str(up), "target": str(t.seq), "kind": "upstream"})
        if t.parent_seq is not None and t.parent_seq in seqs:
            edges.append({"source": str(t.parent_seq), "target": str(t.seq), "kind": "parent"})
    return {"mode": "task_runs", "nodes": nodes, "edges": edges, "total": len(task_runs)}


class _Aggregate:
    """Task names, their counts by state, and the edges between names, built a page at a
    time (so a run of any size is read in bounded memory)."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter[str]] = {}
        self.name_of: dict[int, str] = {}
        self.edges: Counter[tuple[str, str, str]] = Counter()
        # Edges whose source comes later in seq order than the page it was seen in
        # (rare: a parent is always created before its children, an upstream before its
        # consumer), resolved at the end.
        self.pending: list[tuple[int, str, str]] = []
        self.total = 0

    def add(self, page: list[TaskRunRecord]) -> None:
        for t in page:
            self.total += 1
            self.name_of[t.seq] = t.name
            self.counts.setdefault(t.name, Counter())[str(t.state)] += 1
            for up in t.upstream or ():
                self._edge(up, t.name, "upstream")
            if t.parent_seq is not None:
                self._edge(t.parent_seq, t.name, "parent")

    def _edge(self, source: int, target: str, kind: str) -> None:
        name = self.name_of.get(source)
        if name is None:
            self.pending.append((source, target, kind))
        else:
            self.edges[(name, target, kind)] += 1

    def result(self) -> dict[str, Any]:
        for source, target, kind in self.pending:
            name = self.name_of.get(source)
            if name is not None:
                self.edges[(name, target, kind)] += 1
        nodes = [
            {
                "id": name,
                "label": name,
                "count": sum(counts.values()),
                "states": dict(sorted(counts.items())),
                "state": _dominant(counts),
            }
            for name, counts in sorted(self.counts.items())
        ]
        edges = [
            {"source": s, "target": t, "kind": k, "count": n}
            for (s, t, k), n in sorted(self.edges.items())
            if s != t or k == "upstream"
        ]
        return {"mode": "task_names", "nodes": nodes, "edges": edges, "total": self.total}


def _dominant(counts: Counter[str]) -> str:
    """The state a name's node is coloured by: a failure if any, else running work, else
    the most common state."""
    for state in ("Failed", "Crashed", "TimedOut", "UpstreamFailed", "Running", "Retrying"):
        if counts.get(state):
            return state
    return counts.most_common(1)[0][0] if counts else "Pending"


def aggregate_graph(task_runs: list[TaskRunRecord]) -> dict[str, Any]:
    """Task names as nodes (with counts by state) and the edges between names."""
    agg = _Aggregate()
    agg.add(task_runs)
    return agg.result()


async def task_graph(store: Store, run_id: str, *, max_nodes: int = MAX_NODES) -> dict[str, Any]:
    """The graph of run ``run_id`` (an exact id): task runs when it has at most
    ``max_nodes`` of them, else aggregated by task name. JSON-ready."""
    first = await store.list_task_runs(run_id, limit=max_nodes + 1)
    if len(first) <= max_nodes:
        return task_run_graph(first)
    agg = _Aggregate()
    agg.add(first)
    offset = len(first)
    while True:
        page = await store.list_task_runs(run_id, offset=offset, limit=_PAGE)
        agg.add(page)
        offset += len(page)
        if len(page) < _PAGE:
            return agg.result()
