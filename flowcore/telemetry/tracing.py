"""Making the spans of flow and task runs, on the hot path.

Two ways to make spans, chosen when the engine opens:

- **The application's tracer provider** (an SDK ``TracerProvider`` passed as
  ``Engine(tracing=Tracing(provider=...))``, or set globally by the application): flowcore
  creates real SDK spans through it, so they go wherever the application sends
  its spans, and adds a processor that also persists the spans made inside
  flowcore runs (flowcore's own and those of user code and instrumented
  libraries) to the store.
- **flowcore's own** (no provider configured): a run's record is its span (its
  ids are on the record, and readers and the shipper rebuild the span from it, see
  :mod:`.task_spans`), so making a span costs its ids and no row is written for it;
  if an exporter is configured (``Tracing(exporter=...)`` or the standard
  ``OTEL_EXPORTER_OTLP_*`` variables) they are shipped to it from the store
  once their run ended (see :mod:`.shipper`): nothing here pays for it. The
  trace context is still current inside task code, so spans user code makes
  with a configured provider nest under the task's span.

``Engine(tracing=False)`` makes no spans at all.
"""

from __future__ import annotations

import os
import random
import time
from collections import deque
from contextvars import ContextVar, Token
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags

from .._current import current_task_run
from ..ids import error_message, error_name, safe_text, traceback_text
from ..records import FlowRunRecord, SpanRecord, TaskRunRecord
from .sdk import PersistProcessor, span_route
from .task_spans import flow_attributes, flow_span, task_end_attributes

__all__ = ["SpanMaker"]

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_rand = random.Random()
if hasattr(os, "register_at_fork"):
    # A forked child must not make the ids its parent (or its siblings) make: unlike
    # the `random` module's own generator, a private one is not reseeded by a fork.
    os.register_at_fork(after_in_child=_rand.seed)


_IDS_PER_BLOCK = 512
_NO_SPAN = "0" * 16


def _span_lookup() -> Any:
    """The fastest way to read the current span: OpenTelemetry's own context variable.

    ``trace.get_current_span()`` costs half a microsecond (a generic context
    lookup and an ``isinstance`` against an ABC); reading the variable that its
    default runtime context keeps costs a tenth of that. Any other runtime
    context (``OTEL_PYTHON_CONTEXT``) goes through the public function.
    """
    try:
        from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
        from opentelemetry.trace.propagation import _SPAN_KEY

        runtime = otel_context._RUNTIME_CONTEXT
        var = getattr(runtime, "_current_context", None)
    except (ImportError, AttributeError):  # pragma: no cover - another OpenTelemetry
        return trace.get_current_span
    if type(runtime) is not ContextVarsRuntimeContext or not isinstance(var, ContextVar):
        return trace.get_current_span  # pragma: no cover

    def current_span() -> Any:
        return var.get().get(_SPAN_KEY)

    return current_span


_current_span = _span_lookup()


class _RunSpan(NonRecordingSpan):
    """The current span throughout a run with flowcore's own spans.

    Its span context is the run's span, or, while one of the run's task runs is
    the current task run, that task run's span. So the trace context inside task
    code is the task run's (spans that user code makes nest under it, and
    propagated headers name it), yet starting a task run switches no
    OpenTelemetry context: that switch (a context copy, an attach and a detach)
    was most of the cost of tracing a task run.
    """

    def __init__(self, trace_id: int, span_id: int, run_id: str) -> None:
        super().__init__(SpanContext(trace_id, span_id, False, _SAMPLED))
        self.trace_id = trace_id
        self.run_id = run_id

    def get_span_context(self) -> SpanContext:
        rec = current_task_run.get()
        if rec is not None and rec.run_id == self.run_id and rec.span_id is not None:
            return SpanContext(self.trace_id, int(rec.span_id, 16), False, _SAMPLED)
        return self._context


class _TaskHandle:
    """A task run's span with flowcore's own spans: just the context token."""

    __slots__ = ("token", "trace_id", "tracing")

    def __init__(self, tracing: SpanMaker, token: object | None, trace_id: int) -> None:
        self.tracing = tracing
        self.token = token
        self.trace_id = trace_id

    def event(self, name: str, attributes: dict[str, Any]) -> None:
        pass  # the task run's history holds its retries; task_span turns them into events

    def finish_task(self, rec: TaskRunRecord, error: BaseException | None) -> None:
        if self.token is not None:
            otel_context.detach(self.token)  # type: ignore[arg-type]


class _RunHandle:
    """A flow run's span with flowcore's own spans: the context token, and what the
    run's record cannot say, if anything.

    The run's record is its span (see :func:`~.task_spans.flow_span`): ids on the record,
    nothing made or written for the span itself. Only a span with parameters on it, a
    link (a resumed run) or events (failed hooks) is written as a span row at its end,
    built from the record and those.
    """

    __slots__ = ("events", "extra", "links", "record", "token", "tracing")

    def __init__(
        self,
        tracing: SpanMaker,
        record: FlowRunRecord,
        token: object,
        extra: dict[str, Any] | None,
        links: list[tuple[str, str]] | None,
    ) -> None:
        self.tracing = tracing
        self.record = record
        self.token = token
        self.extra = extra
        self.links = links
        self.events: list[tuple[str, int, dict[str, Any]]] | None = None

    def event(self, name: str, attributes: dict[str, Any]) -> None:
        if self.events is None:
            self.events = []
        self.events.append((name, time.time_ns(), _recordable(attributes)))

    def finish_run(self, record: FlowRunRecord, error: BaseException | None) -> None:
        """End the span: the record, ended, says how (``error`` is what it holds)."""
        otel_context.detach(self.token)  # type: ignore[arg-type]
        if self.extra is None and self.links is None and self.events is None:
            return  # the common case: the record is the span
        span = flow_span(self.record)
        if span is None:  # pragma: no cover - ids are set when the span starts
            return
        if self.extra:
            span.attributes = {**flow_attributes(self.record), **self.extra, **span.attributes}
        span.links = list(self.links or ())
        span.events = [*(self.events or ()), *span.events]
        self.tracing._emit(span)


class _Handle:
    """A span made through the application's tracer provider (an SDK span), current in
    its context until ``finish``."""

    __slots__ = ("route", "sdk_span", "token", "tracing")

    def __init__(
        self, tracing: SpanMaker, sdk_span: Any, token: object, route: Token[Any] | None = None
    ) -> None:
        self.tracing = tracing
        self.sdk_span = sdk_span
        self.token = token
        self.route = route  # the span_route set for a run's SDK span, to reset at its end

    def event(self, name: str, attributes: dict[str, Any]) -> None:
        self.sdk_span.add_event(name, _recordable(attributes))

    def finish_task(self, rec: TaskRunRecord, error: BaseException | None) -> None:
        self.finish(task_end_attributes(rec), error)

    def finish_run(self, record: FlowRunRecord, error: BaseException | None) -> None:
        attributes = {
            "flowcore.state": record.state.value,
            "flowcore.task_count": record.task_count,
        }
        self.finish(attributes, error)

    def finish(self, attributes: dict[str, Any], error: BaseException | None) -> None:
        otel_context.detach(self.token)  # type: ignore[arg-type]
        span = self.sdk_span
        span.set_attributes(attributes)
        if error is not None:
            _record_exception(span, error)
            span.set_status(Status(StatusCode.ERROR, _status_message(error)))
        elif attributes.get("flowcore.state") in ("Completed", "Cached"):
            span.set_status(Status(StatusCode.OK))
        span.end()
        if self.route is not None:
            try:
                span_route.reset(self.route)
            except ValueError:  # finished from another context: nothing to restore there
                pass


def _status_message(error: BaseException) -> str:
    """A failed span's status message: ``Type: message``, never raising."""
    return f"{type(error).__name__}: {error_message(error, 1000)}"[:1000]


def _record_exception(span: Any, error: BaseException) -> None:
    """``span.record_exception(error)``, for any error: the SDK's own reads ``str(error)``,
    which may raise or hold text no exporter can encode; then the event is made here."""
    message = error_message(error)
    if message == _plain_str(error):
        try:
            span.record_exception(error, escaped=True)
            return
        except Exception:
            pass
    span.add_event(
        "exception",
        {
            "exception.type": error_name(error),
            "exception.message": message,
            "exception.stacktrace": traceback_text(error),
            "exception.escaped": True,
        },
    )


def _plain_str(error: BaseException) -> str | None:
    try:
        return str(error)[:2000]
    except Exception:
        return None


def _recordable(attributes: dict[str, Any]) -> dict[str, Any]:
    """Span event attributes with every string recordable (see ``flowcore.ids.safe_text``):
    a retry's error message may hold a file name that is not UTF-8."""
    for value in attributes.values():
        if type(value) is str and not value.isascii():
            return {k: safe_text(v) if type(v) is str else v for k, v in attributes.items()}
    return attributes


class SpanMaker:
    """The span maker of one engine (see the module docstring)."""

    def __init__(
        self,
        spans: deque[SpanRecord],
        provider: Any = None,
        record_parameters: bool = False,
    ) -> None:
        self._spans = spans  # the recorder's queue of finished spans to persist
        # Task run span ids, in hex, cut from one block of random bytes: making one
        # with getrandbits and a format spec cost 0.4 µs, a slice costs 0.08.
        self._ids = ""
        self._ids_at = 0
        self.record_parameters = record_parameters
        self.tracer: Any = None
        if provider is not None:
            self.tracer = provider.get_tracer("flowcore")
            PersistProcessor.install(provider)

    def start(
        self,
        name: str,
        attributes: dict[str, Any],
        run_id: str,
        links: list[tuple[str, str]] | None = None,
        *,
        run: bool = True,
    ) -> _Handle:
        """Start an SDK span (through the application's provider) as a child of the
        current one and make it current.

        ``run``: the span of a flow run (not of one of its task runs): spans started
        under it from now on are persisted with that run.
        """
        otel_links = [
            Link(SpanContext(int(t, 16), int(s, 16), True, _SAMPLED)) for t, s in links or ()
        ]
        # Before the span starts, so that the persist processor routes it too.
        route = span_route.set((self._spans, run_id)) if run else None
        span = self.tracer.start_span(name, attributes=attributes, links=otel_links)
        token = otel_context.attach(trace.set_span_in_context(span))
        return _Handle(self, span, token, route)

    def start_task(self, rec: TaskRunRecord, function: str, namespace: str) -> Any:
        """Start a task run's span and make it current.

        With flowcore's own spans nothing but an id is made here: the task run
        record itself is the persisted span (see :func:`task_span`), built into a
        full span only when a reader or the shipper needs one, and the run's span stands in
        for it as the current span (see :class:`_RunSpan`). Returns the handle to
        finish, or ``None`` when there is nothing to finish.
        """
        if self.tracer is not None:
            attributes = {
                "flowcore.task.name": rec.name,
                "flowcore.task_run.id": f"{rec.run_id}.{rec.seq}",
                "flowcore.run.id": rec.run_id,
                "code.function": function,
                "code.namespace": namespace,
            }
            handle = self.start(f"task {rec.name}", attributes, rec.run_id, run=False)
            rec.span_id = f"{handle.sdk_span.get_span_context().span_id:016x}"
            return handle
        at = self._ids_at
        if at >= len(self._ids):
            self._ids, at = os.urandom(_IDS_PER_BLOCK * 8).hex(), 0
        self._ids_at = at + 16
        rec.span_id = span_hex = self._ids[at : at + 16]
        if span_hex == _NO_SPAN:  # the invalid id (a chance in 2**64): draw another
            return self.start_task(rec, function, namespace)
        run_span = _current_span()
        if type(run_span) is _RunSpan and run_span.run_id == rec.run_id:
            # The run's span is current and speaks for this task run (see _RunSpan):
            # nothing to switch, and nothing to finish.
            return None
        # Something else is current (a span user code made current in the flow):
        # make the task run's span current under it, the general way.
        current = trace.get_current_span().get_span_context()
        trace_id = current.trace_id if current.is_valid else _rand.getrandbits(128) or 1
        token = otel_context.attach(
            trace.set_span_in_context(
                NonRecordingSpan(SpanContext(trace_id, int(span_hex, 16), False, _SAMPLED))
            )
        )
        return _TaskHandle(self, token, trace_id)

    def start_run(
        self,
        record: FlowRunRecord,
        extra: dict[str, Any] | None = None,
        links: list[tuple[str, str]] | None = None,
    ) -> _Handle | _RunHandle:
        """Start a flow run's span as a child of the current span, and make it current.

        Its ids go on ``record`` (``trace_id``, ``span_id``, ``parent_span_id``).
        ``extra``: attributes besides those of the record (parameters); ``links``:
        spans it links to (the run a resumed run re-drives). With flowcore's own spans
        nothing else is made: the record is the span (see :class:`_RunHandle`).
        """
        if self.tracer is not None:
            attributes = flow_attributes(record)
            if extra:
                attributes.update(extra)
            handle = self.start(f"{record.kind} {record.name}", attributes, record.id, links)
            ctx = handle.sdk_span.get_span_context()
            parent = handle.sdk_span.parent
            record.trace_id, record.span_id = f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
            record.parent_span_id = None if parent is None else f"{parent.span_id:016x}"
            return handle
        current = _current_span()
        parent = None if current is None else current.get_span_context()
        if parent is not None and parent.is_valid:
            trace_id = parent.trace_id
            record.parent_span_id = f"{parent.span_id:016x}"
        else:
            trace_id = _rand.getrandbits(128) or 1
            record.parent_span_id = None
        span_id = _rand.getrandbits(64) or 1
        record.trace_id = f"{trace_id:032x}"
        record.span_id = f"{span_id:016x}"
        token = otel_context.attach(
            trace.set_span_in_context(_RunSpan(trace_id, span_id, record.id))
        )
        return _RunHandle(self, record, token, extra or None, links or None)

    def _emit(self, record: SpanRecord) -> None:
        self._spans.append(record)
