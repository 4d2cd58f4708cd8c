"""A run's span, rebuilt from its record: a task run's, and a flow run's.

With flowcore's own spans, a run's record *is* its persisted span: no span row is
written per task run, nor per flow run. :func:`task_span` builds the full span of a
task run when an exporter or a reader needs one: attempts become ``retry`` events,
waits for limits ``waiting for limit`` / ``limit passed`` events, a failure an
``exception`` event. :func:`flow_span` builds a flow run's: its attributes, and its
status and ``exception`` event from how the run ended.

A flow run whose span holds what its record cannot say (parameters on spans, the
link of a resumed run, the events of failed hooks) still writes a span row, as
every flow run did before, and spans made through an application's tracer provider
are rows: readers take a row over the span rebuilt with the same id.
"""

from __future__ import annotations

from typing import Any, Final

from ..ids import safe_text
from ..records import FlowRunRecord, SpanRecord, TaskRunRecord
from ..states import TERMINAL, State

__all__ = ["flow_attributes", "flow_span", "task_end_attributes", "task_span"]


#: Each state's value, and whether it is a success, read by lookups: ``State.value`` and
#: ``is_success`` are enum properties costing a few µs, and the shipper builds the span
#: of every task run of a run (100,000 of them for a big one).
_VALUES: Final = {state: state.value for state in State}
_SUCCESS: Final = frozenset(state for state in State if state.is_success)
_ERRORS: Final = frozenset((State.FAILED, State.TIMED_OUT, State.UPSTREAM_FAILED, State.CRASHED))


def task_end_attributes(rec: TaskRunRecord) -> dict[str, Any]:
    return {
        "flowcore.state": _VALUES[rec.state],
        "flowcore.attempts": rec.attempts,
        "flowcore.cache_hit": rec.state is State.CACHED,
    }


def _ns(seconds: float | None) -> int:
    return int(seconds * 1e9) if seconds is not None else 0


def task_span(rec: TaskRunRecord, trace_id: str, error: BaseException | None = None) -> SpanRecord:
    """The span of a task run, rebuilt from its record (flowcore's own spans)."""
    attributes: dict[str, Any] = {
        "flowcore.task.name": rec.name,
        "flowcore.task_run.id": f"{rec.run_id}.{rec.seq}",
        "flowcore.run.id": rec.run_id,
        **task_end_attributes(rec),
    }
    if rec.cached_from:
        attributes["flowcore.cached_from"] = rec.cached_from
    events: list[tuple[str, int, dict[str, Any]]] = []
    attempt = 0
    waiting = False
    for entry in rec.history:
        if entry[0] == "Running":
            if waiting:  # the end of a wait for a limit, not a new attempt
                events.append(("limit passed", _ns(entry[1]), {}))
            else:
                attempt += 1
            waiting = False
        elif entry[0] == "Pending" and len(entry) > 2 and attempt:
            waiting = True
            note = str(entry[2])
            limit = note.removeprefix("waiting for limit ")
            events.append(("waiting for limit", _ns(entry[1]), {"flowcore.limit": limit}))
        elif entry[0] == "Retrying":
            events.append(
                (
                    "retry",
                    _ns(entry[1]),
                    {
                        "flowcore.attempt": attempt,
                        "flowcore.note": safe_text(str(entry[2])) if len(entry) > 2 else "",
                    },
                )
            )
    status = "OK" if rec.state in _SUCCESS else "UNSET"
    message = None
    if rec.state in _ERRORS:
        status = "ERROR"
        message = f"{rec.error_type}: {rec.error_message}" if rec.error_type else rec.state.value
        events.append(
            (
                "exception",
                _ns(rec.ended),
                {
                    "exception.type": rec.error_type or "",
                    "exception.message": rec.error_message or "",
                },
            )
        )
    return SpanRecord(
        trace_id=trace_id,
        span_id=rec.span_id or "",
        name=f"task {rec.name}",
        start=_ns(rec.started or rec.created),
        end=_ns(rec.ended),
        parent_id=rec.parent_span_id,
        run_id=rec.run_id,
        status=status,
        status_message=message,
        attributes=attributes,
        events=events,
    )


def flow_attributes(run: FlowRunRecord) -> dict[str, Any]:
    """The attributes a flow run's span starts with (its end adds the state and the
    number of task runs)."""
    attributes: dict[str, Any] = {
        "flowcore.flow.name": run.name,
        "flowcore.run.id": run.id,
        "flowcore.run.kind": run.kind,
    }
    if run.resumed_from is not None:
        attributes["flowcore.run.resumed_from"] = run.resumed_from
    return attributes


def flow_span(run: FlowRunRecord) -> SpanRecord | None:
    """The span of a flow run, rebuilt from its record (``None``: it ran untraced).

    Its status and events are what the span made as the run ran had: ``OK`` when it
    completed; ``ERROR``, with the error as status message (``Type: message``) and
    an ``exception`` event, when it failed, timed out or crashed; unset when it was
    cancelled. A run still going has no end (``end`` 0) and no state yet.
    """
    trace_id, span_id = run.trace_id, run.span_id
    if trace_id is None or span_id is None:
        return None
    attributes = flow_attributes(run)
    state = run.state
    ended = state in TERMINAL
    if ended:
        attributes["flowcore.state"] = _VALUES[state]
        attributes["flowcore.task_count"] = run.task_count
    events: list[tuple[str, int, dict[str, Any]]] = []
    status = "OK" if state is State.COMPLETED else "UNSET"
    message = None
    if state in _ERRORS:
        status = "ERROR"
        kind = run.error_type or state.value
        text = run.error_message or ""
        # As the span made at the end said it: the bare class name, as type(e).__name__.
        message = f"{kind.rpartition('.')[2]}: {text[:1000]}"[:1000]
        events.append(
            (
                "exception",
                _ns(run.ended),
                {"exception.type": kind, "exception.message": text, "exception.escaped": True},
            )
        )
    return SpanRecord(
        trace_id=trace_id,
        span_id=span_id,
        name=f"{run.kind} {run.name}",
        start=_ns(run.started or run.created),
        end=_ns(run.ended) if ended else 0,
        parent_id=run.parent_span_id,
        run_id=run.id,
        status=status,
        status_message=message,
        attributes=attributes,
        events=events,
    )
