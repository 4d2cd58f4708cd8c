"""A run's trace: its spans read from the store, in tree order, as JSON-ready data.

With flowcore's own spans, a run's record is its span: flow runs' and task runs'
spans are rebuilt here from their records. Spans made through an application's
tracer provider (user code's, instrumented libraries', and flowcore's own there),
and flow spans written by older versions, are rows of their own; a row wins over
the span rebuilt with the same id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..records import FlowRunRecord, SpanRecord
from ..store.base import Store
from ..telemetry.task_spans import flow_span, task_span
from .format import iso_ns

__all__ = ["Row", "load_trace", "read_trace", "span_to_json", "subtree", "tree_order"]


async def read_trace(store: Store, run_id: str) -> list[SpanRecord]:
    """Every persisted span of a run's trace, by start time: span rows, and the spans
    of the run, its subflow runs and their task runs, rebuilt from their records."""
    run = await store.get_run(run_id)
    if run.trace_id is None:
        return []
    spans = {s.span_id: s for s in await store.list_spans(run.trace_id)}
    pending = [run]
    while pending:
        current = pending.pop()
        own = flow_span(current)
        if own is not None and own.span_id not in spans:
            spans[own.span_id] = own
        for rec in await store.list_task_runs(current.id):
            if rec.span_id and rec.span_id not in spans:
                spans[rec.span_id] = task_span(rec, run.trace_id)
        pending.extend(r for r in await store.child_runs(current.id) if r.trace_id == run.trace_id)
    return sorted(spans.values(), key=lambda s: (s.start, s.name))


async def load_trace(store: Store, run_id: str) -> tuple[FlowRunRecord, list[SpanRecord]]:
    """The run with this id (or prefix) and the persisted spans of its trace.

    A subflow shares the trace of the run that called it: for one, only its own
    part of the trace is kept (the spans of the subflow run and of the runs it
    started in turn), so ``flowcore trace <subflow>`` shows the subflow's subtree.
    """
    run = await store.get_run(run_id)
    spans = await read_trace(store, run.id)
    if run.parent_run_id is not None and spans:
        mine = {r.id for r in await subtree(store, run)}
        spans = [s for s in spans if s.run_id in mine]
    return run, spans


async def subtree(store: Store, run: FlowRunRecord) -> list[FlowRunRecord]:
    """``run`` and the subflow runs it started, and theirs in turn, each once."""
    found, pending = {run.id: run}, [run]
    while pending:
        for child in await store.child_runs(pending.pop().id):
            if child.id not in found:
                found[child.id] = child
                pending.append(child)
    return list(found.values())


@dataclass(frozen=True)
class Row:
    """A span in tree order, with its depth (0: a root)."""

    span: SpanRecord
    depth: int


def tree_order(spans: Sequence[SpanRecord]) -> list[Row]:
    """Spans depth first, children under their parent, siblings by (start, name).

    A span whose parent is not among ``spans`` (pruned, not yet written because its
    run is still going, or outside a subflow's part of the trace) is a root.
    """
    by_id = {s.span_id: s for s in spans}
    children: dict[str | None, list[SpanRecord]] = {}
    for s in spans:
        parent = s.parent_id if s.parent_id in by_id and s.parent_id != s.span_id else None
        children.setdefault(parent, []).append(s)
    for kids in children.values():
        kids.sort(key=lambda s: (s.start, s.name))
    rows: list[Row] = []
    seen: set[str] = set()
    stack: list[tuple[SpanRecord, int]] = [(s, 0) for s in reversed(children.get(None, []))]
    while stack:
        span, depth = stack.pop()
        if span.span_id in seen:
            continue
        seen.add(span.span_id)
        rows.append(Row(span, depth))
        stack.extend((k, depth + 1) for k in reversed(children.get(span.span_id, [])))
    # Spans only reachable through a cycle of parent ids (a corrupt store): still shown.
    rows.extend(Row(s, 0) for s in sorted(spans, key=lambda s: s.start) if s.span_id not in seen)
    return rows


def span_to_json(span: SpanRecord) -> dict[str, Any]:
    """A span as JSON-ready data: times as ISO 8601 UTC and in ns; an unfinished span
    has ``end``, ``end_ns`` and ``duration_ms`` ``null``."""
    finished = bool(span.end)
    return {
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "parent_id": span.parent_id,
        "name": span.name,
        "kind": span.kind,
        "run_id": span.run_id,
        "start": iso_ns(span.start),
        "end": iso_ns(span.end) if finished else None,
        "start_ns": span.start,
        "end_ns": span.end if finished else None,
        "duration_ms": max(span.end - span.start, 0) / 1e6 if finished else None,
        "status": span.status,
        "status_message": span.status_message,
        "attributes": span.attributes,
        "events": [
            {"name": name, "time": iso_ns(at), "time_ns": at, "attributes": attributes}
            for name, at, attributes in span.events
        ],
        "links": [{"trace_id": t, "span_id": s} for t, s in span.links],
        "scope": span.scope,
    }
