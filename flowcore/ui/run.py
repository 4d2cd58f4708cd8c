"""A run: its header, task graph, Gantt timeline, task runs with errors and result
previews, failed hooks, logs, and its trace waterfall.

A run of 100,000 task runs stays fast because nothing here reads them all for the page:
the header and the counts by state are one query each, the timeline and the task table
are a page of task runs, the logs pane a page of lines. The graph is a separate JSON
request the page's script makes, aggregated by task name past a few hundred task runs
(:func:`flowcore.views.runs.aggregated_graph`, from the store's ``task_run_edges``: no
whole record is read) and kept for ended runs, whose task runs never change; for a big
ended run its computing starts as the page goes out, so it overlaps the page's loading.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from typing import Any, Final

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import RunNotFound
from ..records import FlowRunRecord
from ..store.base import Store
from ..views.format import decode_recorded
from ..views.graph import MAX_NODES, task_graph
from ..views.logs import LEVELS, level_name, parse_level
from ..views.runs import RunDetails, aggregated_graph, run_details
from ..views.timeline import timeline
from ..views.trace import load_trace, tree_order
from .pages import STATES, query_int, query_state, query_text, store_of
from .templating import page_json, render, show

__all__ = ["routes"]

#: Task runs per page of the timeline and table; log lines per page; trace rows shown.
TASKS_PER_PAGE: Final = 100
LOGS_PER_PAGE: Final = 500
TRACE_ROWS: Final = 2000
MAX_OFFSET: Final = 10_000_000
ERRORS_SHOWN: Final = 20
#: Graphs of ended runs kept in memory.
_GRAPHS_KEPT: Final = 32


async def _run(store: Store, run_id: str) -> FlowRunRecord:
    try:
        return await store.get_run(run_id)
    except RunNotFound as exc:
        raise HTTPException(404, str(exc)) from exc


def _level(request: Request) -> int | None:
    raw = query_text(request, "level")
    if raw is None:
        return None
    try:
        return parse_level(raw)
    except ValueError as exc:
        raise HTTPException(400, f"level: {exc}") from exc


def _launch(run: FlowRunRecord) -> dict[str, Any]:
    return {
        "by": run.launched_by,
        "scheduled_for": run.scheduled_for,
        "interval_start": run.interval_start,
        "interval_end": run.interval_end,
    }


async def run_page(request: Request) -> Response:
    store = store_of(request)
    run = await _run(store, request.path_params["run_id"])
    offset = query_int(request, "offset", 0, 0, MAX_OFFSET)
    state = query_state(request)
    tag = query_text(request, "tag")
    try:
        details: RunDetails = await run_details(
            store, run.id, offset=offset, limit=TASKS_PER_PAGE, state=state, tag=tag,
            results=True,
        )  # fmt: skip
    except RunNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    # The errors of this page's task runs (or, when it has none, the run's first failed
    # ones), at most ERRORS_SHOWN: the state filter pages through all of them.
    failed = [t for t in details.task_runs if t.error_type][:ERRORS_SHOWN] or (
        await store.list_task_runs(run.id, state="Failed", limit=ERRORS_SHOWN)
        if offset == 0
        else []
    )
    bars = await timeline(store, run, offset=offset, limit=TASKS_PER_PAGE)
    log_task = query_text(request, "task")
    level = _level(request)
    logs = await store.list_logs(run.id, task=log_task, min_level=level, limit=200)
    params = {k: v for k, v in request.query_params.items() if k != "offset"}
    if run.state.is_terminal and max(run.task_count, sum(details.counts.values())) > MAX_NODES:
        _prefetch_graph(request, run)
    return render(
        request,
        "run.html",
        run=run,
        d=details,
        parameters=decode_recorded(run.parameters),
        launch=_launch(run),
        failed=failed,
        bars=bars,
        logs=logs,
        log_task=log_task or "",
        level=level_name(level) if level is not None else "",
        levels=list(LEVELS),
        level_name=level_name,
        states=STATES,
        params=params,
        per_page=TASKS_PER_PAGE,
    )


async def _compute_graph(request: Request, run: FlowRunRecord) -> dict[str, Any]:
    """The graph of ``run``, labels made visible; kept when the run has ended (its task
    runs never change again)."""
    store = store_of(request)
    graph = await aggregated_graph(store, run.id, max_nodes=MAX_NODES)
    if graph is None:
        graph = await task_graph(store, run.id)
    for node in graph["nodes"]:
        node["label"] = show(node["label"])
    if run.state.is_terminal:
        cache: OrderedDict[str, dict[str, Any]] = request.app.state.graphs
        cache[run.id] = graph
        while len(cache) > _GRAPHS_KEPT:
            cache.popitem(last=False)
    return graph


def _prefetch_graph(request: Request, run: FlowRunRecord) -> None:
    """Start computing the graph of a big ended run while its page goes out: the page's
    script asks for it once the page is parsed, a few hundred milliseconds later, and
    finds it computed, or being computed (:func:`graph_json` waits for that job)."""
    jobs: dict[str, asyncio.Task[dict[str, Any]]] = request.app.state.graph_jobs
    if run.id in jobs or run.id in request.app.state.graphs:
        return
    job = asyncio.get_running_loop().create_task(_compute_graph(request, run))
    jobs[run.id] = job

    def done(task: asyncio.Task[dict[str, Any]]) -> None:
        jobs.pop(run.id, None)
        if not task.cancelled():
            task.exception()  # retrieved: a failure is computed again by graph_json

    job.add_done_callback(done)


async def graph_json(request: Request) -> Response:
    store = store_of(request)
    run = await _run(store, request.path_params["run_id"])
    cache: OrderedDict[str, dict[str, Any]] = request.app.state.graphs
    graph = cache.get(run.id)
    if graph is not None:
        cache.move_to_end(run.id)
    else:
        job = request.app.state.graph_jobs.get(run.id)
        if job is not None:
            with contextlib.suppress(Exception):
                graph = await asyncio.shield(job)  # this request going away leaves the job
        if graph is None:
            graph = await _compute_graph(request, run)
    return Response(page_json(graph), media_type="application/json")


async def trace_page(request: Request) -> Response:
    store = store_of(request)
    run = await _run(store, request.path_params["run_id"])
    _, spans = await load_trace(store, run.id)
    rows = tree_order(spans)
    start = min((s.start for s in spans), default=0)
    end = max((s.end or s.start for s in spans), default=0)
    width = max(end - start, 1)
    shown = [
        {
            "name": r.span.name,
            "depth": min(r.depth, 20),
            "left": (r.span.start - start) / width,
            "width": max((r.span.end or r.span.start) - r.span.start, 0) / width,
            "ms": max((r.span.end or r.span.start) - r.span.start, 0) / 1e6,
            "status": r.span.status,
            "message": r.span.status_message,
        }
        for r in rows[:TRACE_ROWS]
    ]
    return render(request, "trace.html", run=run, rows=shown, more=len(rows) - len(shown))


async def logs_page(request: Request) -> Response:
    store = store_of(request)
    run = await _run(store, request.path_params["run_id"])
    after = query_int(request, "after", 0, 0, 2**62)
    task = query_text(request, "task")
    level = _level(request)
    lines = await store.list_logs(
        run.id, task=task, min_level=level, after=after or None, limit=LOGS_PER_PAGE
    )
    params = {k: v for k, v in request.query_params.items() if k != "after"}
    return render(
        request,
        "logs.html",
        run=run,
        logs=lines,
        log_task=task or "",
        level=level_name(level) if level is not None else "",
        levels=list(LEVELS),
        level_name=level_name,
        params=params,
        next_after=lines[-1].id if len(lines) == LOGS_PER_PAGE else None,
    )


def routes() -> list[Route]:
    return [
        Route("/runs/{run_id}", run_page),
        Route("/runs/{run_id}/graph.json", graph_json),
        Route("/runs/{run_id}/trace", trace_page),
        Route("/runs/{run_id}/logs", logs_page),
    ]
