"""A run's Gantt timeline: a page of task runs as bars on the run's clock, each split into
its attempts, as JSON-ready data.

Times are seconds from the run's start (or its first task run's), so a bar's place and
width are fractions of ``span``; an unfinished bar ends at ``now``. The attempts come from
a task run's history: each ``Running`` entry starts one, the next entry ends it.
"""

from __future__ import annotations

import time
from typing import Any

from ..records import FlowRunRecord, TaskRunRecord
from ..store.base import Store

__all__ = ["attempts_of", "timeline"]


def attempts_of(t: TaskRunRecord, now: float) -> list[dict[str, Any]]:
    """The attempts of a task run: ``[{start, end, state}]`` (unix seconds), the state
    being the one that ended the attempt (the task run's own for the last one)."""
    out: list[dict[str, Any]] = []
    for entry in t.history:
        state, at = str(entry[0]), float(entry[1])
        if out and out[-1]["end"] is None:
            out[-1]["end"], out[-1]["state"] = at, state
        if state == "Running":
            out.append({"start": at, "end": None, "state": "Running"})
    if out and out[-1]["end"] is None:
        out[-1]["end"] = t.ended if t.ended is not None else now
        out[-1]["state"] = str(t.state)
    return out


async def timeline(
    store: Store, run: FlowRunRecord, *, offset: int = 0, limit: int = 200
) -> dict[str, Any]:
    """The bars of task runs ``offset`` to ``offset + limit`` of ``run``, in call order."""
    now = time.time()
    task_runs = await store.list_task_runs(run.id, offset=offset, limit=limit)
    origin = run.started if run.started is not None else run.created
    end = run.ended if run.ended is not None else now
    bars: list[dict[str, Any]] = []
    for t in task_runs:
        start = t.started if t.started is not None else t.created
        stop = t.ended if t.ended is not None else (now if t.started is not None else start)
        origin = min(origin, t.created)
        end = max(end, stop)
        bars.append(
            {
                "seq": t.seq,
                "name": t.name,
                "label": t.run_name or f"{t.name}#{t.seq}",
                "state": str(t.state),
                "start": start,
                "end": stop,
                "attempts": attempts_of(t, now),
            }
        )
    span = max(end - origin, 1e-6)
    for bar in bars:
        bar["left"] = (bar["start"] - origin) / span
        bar["width"] = max((bar["end"] - bar["start"]) / span, 0.0)
        for a in bar["attempts"]:
            a["left"] = (a["start"] - origin) / span
            a["width"] = max((a["end"] - a["start"]) / span, 0.0)
    return {"origin": origin, "span": span, "offset": offset, "limit": limit, "bars": bars}
