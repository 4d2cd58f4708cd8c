"""Bridging to the OpenTelemetry SDK: the application's provider, and SDK span objects.

- :func:`configured_provider`: the application's SDK tracer provider, if it set one;
- :class:`PersistProcessor`: added to that provider, it persists the spans made
  inside flowcore runs (flowcore's own and user code's) to the run's store;
- :func:`from_readable` / :func:`to_readable`: SDK spans to flowcore's stored
  records and back (exporters take SDK spans).

The SDK itself (``opentelemetry.sdk``, some 30 ms to import) is imported only where
an application's provider or an SDK exporter is there to use it: a run with
flowcore's own spans never needs it, so ``import flowcore`` does not import it.
"""

from __future__ import annotations

import functools
import os
import sys
import weakref
from collections import deque
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ClassVar

from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from ..records import SpanRecord

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

__all__ = ["PersistProcessor", "configured_provider", "from_readable", "span_route", "to_readable"]

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)

#: Where spans started in this context are persisted: the run's queue of finished
#: spans and the run id; set while a run's span is current (SDK spans only).
span_route: ContextVar[tuple[deque[SpanRecord], str] | None] = ContextVar(
    "flowcore_span_route", default=None
)


def configured_provider() -> Any:
    """The application's SDK tracer provider, if it set one globally; else ``None``.

    An SDK provider is an instance of a class of ``opentelemetry.sdk.trace``: while that
    module is not imported, and ``OTEL_PYTHON_TRACER_PROVIDER`` does not ask the API to
    make one, there is none, and the SDK is not imported to find that out."""
    if (
        "opentelemetry.sdk.trace" not in sys.modules
        and "OTEL_PYTHON_TRACER_PROVIDER" not in os.environ
    ):
        return None
    provider = trace.get_tracer_provider()
    from opentelemetry.sdk.trace import TracerProvider  # the SDK: an SDK provider may be set

    return provider if isinstance(provider, TracerProvider) else None


class PersistProcessor:
    """Added to an application's provider: persists the spans made inside flowcore runs.

    A span started inside a run (flowcore's own, or user code's within a task)
    is tagged with the run id and, when it ends, queued for the run's engine.
    Spans outside runs are left alone.

    What :meth:`install` adds is an SDK ``SpanProcessor`` (:func:`_sdk_processor`: this
    class and that one, whose defaults answer the hooks the SDK calls and this class
    does not define), made at the first install: only then is the SDK imported.
    """

    _installed: ClassVar[weakref.WeakSet[Any]] = weakref.WeakSet()

    def __init__(self) -> None:
        self._routes: dict[int, tuple[deque[SpanRecord], str]] = {}

    @classmethod
    def install(cls, provider: Any) -> None:
        if provider not in cls._installed and hasattr(provider, "add_span_processor"):
            processor = _sdk_processor()()
            provider.add_span_processor(processor)
            cls._installed.add(provider)

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        route = span_route.get()
        if route is not None:
            span.set_attribute("flowcore.run_id", route[1])
            self._routes[span.get_span_context().span_id] = route

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


@functools.cache
def _sdk_processor() -> type[PersistProcessor]:
    """:class:`PersistProcessor` as an SDK ``SpanProcessor`` (see its docstring)."""
    from opentelemetry.sdk.trace import SpanProcessor  # the SDK: only with a provider of it

    class SdkPersistProcessor(PersistProcessor, SpanProcessor):
        """:class:`PersistProcessor`, with the SDK's defaults for the rest of its hooks."""

    return SdkPersistProcessor


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
    # The SDK: imported by the exporter that calls this (a module lookup per span after).
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

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
