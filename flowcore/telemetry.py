"""OpenTelemetry spans for flow and task runs, persisted with the runs.

Two ways to make spans, chosen when the engine opens:

- **The application's tracer provider** (an SDK ``TracerProvider`` passed as
  ``Engine(tracer_provider=...)``, or set globally by the application): flowcore
  creates real SDK spans through it, so they go wherever the application sends
  its spans, and adds a processor that also persists the spans made inside
  flowcore runs (flowcore's own and those of user code and instrumented
  libraries) to the store.
- **flowcore's own** (no provider configured): spans are light records that
  flowcore persists itself, several times cheaper than SDK spans; if an
  exporter is configured (``Engine(exporter=...)`` or the standard
  ``OTEL_EXPORTER_OTLP_*`` variables) they are also exported, from a
  background thread with a bounded queue (see :mod:`flowcore.export`). The
  trace context is still current inside task code, so spans user code makes
  with a configured provider nest under the task's span.

``Engine(tracing=False)`` makes no spans at all.
"""

from __future__ import annotations

import os
import random
import time
import weakref
from collections import deque
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags

from .context import _run_var, _task_var
from .records import TaskRunRecord
from .states import State

if TYPE_CHECKING:
    from .export import SpanExport
    from .store import Store
    from .task import Task

__all__ = ["SpanRecord", "Tracing"]

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_rand = random.Random()
if hasattr(os, "register_at_fork"):
    # A forked child must not make the ids its parent (or its siblings) make: unlike
    # the `random` module's own generator, a private one is not reseeded by a fork.
    os.register_at_fork(after_in_child=_rand.seed)


_IDS_PER_BLOCK = 512
_NO_SPAN = "0" * 16


class SpanRecord(msgspec.Struct, gc=False, omit_defaults=True):
    """A finished span as flowcore stores it (ids in lowercase hex, times in ns since epoch)."""

    trace_id: str
    span_id: str
    name: str
    start: int
    end: int = 0
    parent_id: str | None = None
    run_id: str | None = None
    kind: str = "INTERNAL"
    status: str = "UNSET"  # UNSET | OK | ERROR
    status_message: str | None = None
    attributes: dict[str, Any] = msgspec.field(default_factory=dict)
    events: list[tuple[str, int, dict[str, Any]]] = msgspec.field(default_factory=list)
    links: list[tuple[str, str]] = msgspec.field(default_factory=list)
    scope: str = "flowcore"


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
        rec = _task_var.get()
        if rec is not None and rec.run_id == self.run_id and rec.span_id is not None:
            return SpanContext(self.trace_id, int(rec.span_id, 16), False, _SAMPLED)
        return self._context


class _TaskHandle:
    """A task run's span with flowcore's own spans: just the context token."""

    __slots__ = ("token", "trace_id", "tracing")

    def __init__(self, tracing: Tracing, token: object | None, trace_id: int) -> None:
        self.tracing = tracing
        self.token = token
        self.trace_id = trace_id

    def event(self, name: str, attributes: dict[str, Any]) -> None:
        pass  # the task run's history holds its retries; task_span turns them into events

    def finish_task(self, rec: TaskRunRecord, error: BaseException | None) -> None:
        if self.token is not None:
            otel_context.detach(self.token)  # type: ignore[arg-type]
        export = self.tracing.export
        if export is not None:
            if export.accepting():
                export.submit(task_span(rec, f"{self.trace_id:032x}", error))
            else:  # queue full (say, a collector that is down): do not build a span to drop
                export.reject()


class _Handle:
    """A started span, current in its context until ``finish``."""

    __slots__ = ("record", "sdk_span", "token", "tracing")

    def __init__(
        self, tracing: Tracing, record: SpanRecord | None, sdk_span: Any, token: object
    ) -> None:
        self.tracing = tracing
        self.record = record
        self.sdk_span = sdk_span
        self.token = token

    def event(self, name: str, attributes: dict[str, Any]) -> None:
        if self.record is not None:
            self.record.events.append((name, time.time_ns(), attributes))
        else:
            self.sdk_span.add_event(name, attributes)

    def finish_task(self, rec: TaskRunRecord, error: BaseException | None) -> None:
        self.finish(task_end_attributes(rec), error)

    def finish(self, attributes: dict[str, Any], error: BaseException | None) -> None:
        otel_context.detach(self.token)  # type: ignore[arg-type]
        rec = self.record
        if rec is not None:
            rec.attributes.update(attributes)
            if error is not None:
                rec.status = "ERROR"
                rec.status_message = f"{type(error).__name__}: {error}"[:1000]
                rec.events.append(
                    (
                        "exception",
                        time.time_ns(),
                        {
                            "exception.type": _type_name(error),
                            "exception.message": str(error)[:2000],
                            "exception.escaped": True,
                        },
                    )
                )
            elif attributes.get("flowcore.state") in ("Completed", "Cached"):
                rec.status = "OK"
            rec.end = time.time_ns()
            self.tracing._emit(rec)
        else:
            span = self.sdk_span
            span.set_attributes(attributes)
            if error is not None:
                span.record_exception(error, escaped=True)
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:1000]))
            elif attributes.get("flowcore.state") in ("Completed", "Cached"):
                span.set_status(Status(StatusCode.OK))
            span.end()


def _type_name(exc: BaseException) -> str:
    t = type(exc)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


class Tracing:
    """The span maker of one engine (see the module docstring)."""

    def __init__(
        self,
        spans: deque[SpanRecord],
        provider: Any = None,
        export: SpanExport | None = None,
        record_parameters: bool = False,
    ) -> None:
        self._spans = spans  # the recorder's queue of finished spans to persist
        # Task run span ids, in hex, cut from one block of random bytes: making one
        # with getrandbits and a format spec cost 0.4 µs, a slice costs 0.08.
        self._ids = ""
        self._ids_at = 0
        self.export = export
        self.record_parameters = record_parameters
        self.tracer: Any = None
        if provider is not None:
            self.tracer = provider.get_tracer("flowcore")
            _PersistProcessor.install(provider)

    def start(
        self,
        name: str,
        attributes: dict[str, Any],
        run_id: str,
        links: list[tuple[str, str]] | None = None,
    ) -> _Handle:
        """Start a span as a child of the current one and make it current."""
        if self.tracer is not None:
            otel_links = [
                Link(SpanContext(int(t, 16), int(s, 16), True, _SAMPLED)) for t, s in links or ()
            ]
            span = self.tracer.start_span(name, attributes=attributes, links=otel_links)
            token = otel_context.attach(trace.set_span_in_context(span))
            return _Handle(self, None, span, token)
        parent = trace.get_current_span().get_span_context()
        if parent.is_valid:
            trace_id, parent_id = parent.trace_id, f"{parent.span_id:016x}"
        else:
            trace_id, parent_id = _rand.getrandbits(128) or 1, None
        span_id = _rand.getrandbits(64) or 1
        record = SpanRecord(
            trace_id=f"{trace_id:032x}",
            span_id=f"{span_id:016x}",
            name=name,
            start=time.time_ns(),
            parent_id=parent_id,
            run_id=run_id,
            attributes=attributes,
            links=list(links or ()),
        )
        current = _RunSpan(trace_id, span_id, run_id)
        token = otel_context.attach(trace.set_span_in_context(current))
        return _Handle(self, record, None, token)

    def start_task(self, rec: TaskRunRecord, task: Task[Any, Any]) -> Any:
        """Start a task run's span and make it current.

        With flowcore's own spans nothing but an id is made here: the task run
        record itself is the persisted span (see :func:`task_span`), built into a
        full span only when an exporter needs one, and the run's span stands in
        for it as the current span (see :class:`_RunSpan`). Returns the handle to
        finish, or ``None`` when there is nothing to finish.
        """
        if self.tracer is not None:
            attributes = {
                "flowcore.task.name": task.name,
                "flowcore.task_run.id": f"{rec.run_id}.{rec.seq}",
                "flowcore.run.id": rec.run_id,
                "code.function": task.code_function,
                "code.namespace": task.code_namespace,
            }
            handle = self.start(f"task {task.name}", attributes, rec.run_id)
            rec.span_id = f"{handle.sdk_span.get_span_context().span_id:016x}"
            return handle
        at = self._ids_at
        if at >= len(self._ids):
            self._ids, at = os.urandom(_IDS_PER_BLOCK * 8).hex(), 0
        self._ids_at = at + 16
        rec.span_id = span_hex = self._ids[at : at + 16]
        if span_hex == _NO_SPAN:  # the invalid id (a chance in 2**64): draw another
            return self.start_task(rec, task)
        run_span = _current_span()
        if type(run_span) is _RunSpan and run_span.run_id == rec.run_id:
            # The run's span is current and speaks for this task run (see _RunSpan):
            # nothing to switch, and nothing to finish unless a span is exported.
            if self.export is None:
                return None
            return _TaskHandle(self, None, run_span.trace_id)
        # Something else is current (a span user code made current in the flow):
        # make the task run's span current under it, the general way.
        current = trace.get_current_span().get_span_context()
        trace_id = current.trace_id if current.is_valid else _rand.getrandbits(128) or 1
        token = otel_context.attach(
            trace.set_span_in_context(
                NonRecordingSpan(SpanContext(trace_id, int(span_hex, 16), False, _SAMPLED))
            )
        )
        return _TaskHandle(self, token, trace_id)  # hex only if a span is exported

    def _emit(self, record: SpanRecord) -> None:
        self._spans.append(record)
        if self.export is not None:
            self.export.submit(record)

    @staticmethod
    def ids_of(handle: _Handle) -> tuple[str, str]:
        """(trace id, span id) in hex, to store on the run record."""
        if handle.record is not None:
            return handle.record.trace_id, handle.record.span_id
        ctx = handle.sdk_span.get_span_context()
        return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


def configured_provider() -> Any:
    """The application's SDK tracer provider, if it set one globally; else ``None``."""
    provider = trace.get_tracer_provider()
    return provider if isinstance(provider, SdkTracerProvider) else None


class _PersistProcessor(SpanProcessor):
    """Added to an application's provider: persists the spans made inside flowcore runs.

    A span started inside a run (flowcore's own, or user code's within a task)
    is tagged with the run id and, when it ends, queued for the run's engine.
    Spans outside runs are left alone.
    """

    _installed: ClassVar[weakref.WeakSet[Any]] = weakref.WeakSet()

    def __init__(self) -> None:
        self._routes: dict[int, tuple[deque[SpanRecord], str]] = {}

    @classmethod
    def install(cls, provider: Any) -> None:
        if provider not in cls._installed and hasattr(provider, "add_span_processor"):
            processor = cls()
            provider.add_span_processor(processor)
            cls._installed.add(provider)

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        ctx = _run_var.get()
        if ctx is not None:
            span.set_attribute("flowcore.run_id", ctx.record.id)
            self._routes[span.get_span_context().span_id] = (
                ctx.engine.recorder.spans,
                ctx.record.id,
            )

    def on_end(self, span: ReadableSpan) -> None:
        ctx = span.get_span_context()
        if ctx is None:
            return
        route = self._routes.pop(ctx.span_id, None)
        if route is None:
            return
        spans, run_id = route
        spans.append(from_readable(span, run_id))

    def shutdown(self) -> None:
        self._routes.clear()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def from_readable(span: ReadableSpan, run_id: str | None) -> SpanRecord:
    ctx = span.get_span_context()
    assert ctx is not None
    parent = span.parent
    status = span.status
    return SpanRecord(
        trace_id=f"{ctx.trace_id:032x}",
        span_id=f"{ctx.span_id:016x}",
        name=span.name,
        start=span.start_time or 0,
        end=span.end_time or 0,
        parent_id=f"{parent.span_id:016x}" if parent is not None else None,
        run_id=run_id,
        kind=span.kind.name,
        status=status.status_code.name,
        status_message=status.description,
        attributes={k: _plain(v) for k, v in (span.attributes or {}).items()},
        events=[
            (e.name, e.timestamp, {k: _plain(v) for k, v in (e.attributes or {}).items()})
            for e in span.events
        ],
        links=[
            (f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}") for link in span.links
        ],
        scope=span.instrumentation_scope.name if span.instrumentation_scope else "",
    )


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def to_readable(record: SpanRecord, resource: Any) -> ReadableSpan:
    """An SDK span for exporters, from a stored record."""
    from opentelemetry.sdk.trace import Event
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanKind

    trace_id = int(record.trace_id, 16)
    context = SpanContext(trace_id, int(record.span_id, 16), False, _SAMPLED)
    parent = (
        SpanContext(trace_id, int(record.parent_id, 16), False, _SAMPLED)
        if record.parent_id
        else None
    )
    return ReadableSpan(
        name=record.name,
        context=context,
        parent=parent,
        resource=resource,
        attributes=record.attributes,
        events=[Event(name, attrs, ts) for name, ts, attrs in record.events],
        links=[Link(SpanContext(int(t, 16), int(s, 16), True, _SAMPLED)) for t, s in record.links],
        kind=SpanKind[record.kind],
        status=Status(StatusCode[record.status], record.status_message),
        start_time=record.start,
        end_time=record.end,
        instrumentation_scope=InstrumentationScope(record.scope),
    )


def task_end_attributes(rec: TaskRunRecord) -> dict[str, Any]:
    return {
        "flowcore.state": rec.state.value,
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
                        "flowcore.note": entry[2] if len(entry) > 2 else "",
                    },
                )
            )
    status = "OK" if rec.state.is_success else "UNSET"
    message = None
    if rec.state in (State.FAILED, State.TIMED_OUT, State.UPSTREAM_FAILED, State.CRASHED):
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


async def read_trace(store: Store, run_id: str) -> list[SpanRecord]:
    """Every persisted span of a run's trace, by start time: span rows plus task run spans.

    With flowcore's own spans, task spans are stored as their task run records and
    rebuilt here; SDK spans (and flow run spans) are rows of their own.
    """
    run = await store.get_run(run_id)
    if run.trace_id is None:
        return []
    spans = {s.span_id: s for s in await store.list_spans(run.trace_id)}
    pending = [run]
    while pending:
        current = pending.pop()
        for rec in await store.list_task_runs(current.id):
            if rec.span_id and rec.span_id not in spans:
                spans[rec.span_id] = task_span(rec, run.trace_id)
        pending.extend(r for r in await store.child_runs(current.id) if r.trace_id == run.trace_id)
    return sorted(spans.values(), key=lambda s: (s.start, s.name))
