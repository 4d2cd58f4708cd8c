"""Exporting spans without ever slowing or failing a flow.

Spans are handed to :class:`SpanExport` with ``submit``, which never blocks: it
appends to a bounded queue, or drops the span (and counts it) when the queue is
full. A daemon thread takes batches from the queue and calls the exporter; a
collector that is down, slow, hanging or answering errors only costs that
thread's time, and ``shutdown`` waits at most ``shutdown_timeout`` seconds, so
the process exits promptly. Spans are persisted in the store independently, so
a failed export loses nothing that ``flowcore trace`` can show.

Counters: ``exported`` spans reached the collector; ``dropped`` spans never
will — the queue was full, their export failed, or they were still queued when
``shutdown`` gave up; ``failed`` is the part of ``dropped`` whose export was
tried and failed. Every span handed to ``submit`` ends up exported, dropped,
or still ``queued``/in flight.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ..records import SpanRecord
from .sdk import to_readable

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["SpanExport", "from_environment"]

log = logging.getLogger("flowcore")


class SpanExport:
    """A bounded queue and a background thread in front of an OpenTelemetry ``SpanExporter``.

    After a failed export the thread backs off (1 s, doubling up to 30 s) before it
    tries the next batch, so a collector that is down costs one batch's encoding
    per back-off, not one per batch: spans meanwhile wait in the queue (the
    newest over ``max_queue`` are dropped) and go out once an export succeeds.

    ``max_queue``: spans waiting for export at most (more are dropped, never
    waited for). ``batch_size``: spans per ``exporter.export`` call.
    ``interval``: the longest a span waits before its batch is sent (seconds).
    ``shutdown_timeout``: the longest ``shutdown`` waits for the last batches.
    ``service_name``: the ``service.name`` resource attribute (default:
    ``$OTEL_SERVICE_NAME``, else ``"flowcore"``); ``resource_attributes``:
    more resource attributes (e.g. ``{"openinference.project.name": "etl"}``
    to choose an Arize Phoenix project). ``OTEL_RESOURCE_ATTRIBUTES`` is read
    too, as by every OpenTelemetry SDK.
    """

    #: Back-off after a failed export: the first wait, and the longest (seconds).
    first_backoff = 1.0
    max_backoff = 30.0

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        max_queue: int = 4096,
        batch_size: int = 512,
        interval: float = 1.0,
        shutdown_timeout: float = 2.0,
        service_name: str | None = None,
        resource_attributes: Mapping[str, Any] | None = None,
    ) -> None:
        from opentelemetry.sdk.resources import Resource

        problems = []
        if not hasattr(exporter, "export"):
            problems.append(f"`exporter` must be an OpenTelemetry SpanExporter, got {exporter!r}")
        for name, value in (("max_queue", max_queue), ("batch_size", batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"`{name}` must be an int >= 1, got {value!r}")
        for name, number, zero_ok in (
            ("interval", interval, False),
            ("shutdown_timeout", shutdown_timeout, True),
        ):
            if (
                not isinstance(number, int | float)
                or isinstance(number, bool)
                or not (number >= 0 if zero_ok else number > 0)
                or number == float("inf")
            ):
                bound = ">= 0" if zero_ok else "> 0"
                problems.append(f"`{name}` must be a number of seconds {bound}, got {number!r}")
        if problems:
            raise ConfigurationError("invalid span export options: " + "; ".join(problems))
        self.exporter = exporter
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.interval = interval
        self.shutdown_timeout = shutdown_timeout
        attributes: dict[str, Any] = dict(resource_attributes or {})
        if service_name is None and not os.environ.get("OTEL_SERVICE_NAME"):
            service_name = "flowcore"
        if service_name is not None:
            attributes["service.name"] = service_name
        self.resource = Resource.create(attributes)
        self._queue: deque[SpanRecord] = deque()
        self._wake = threading.Event()  # a batch is ready, or shutdown
        self._stop = threading.Event()  # shutdown only: ends a back-off wait
        self._stopping = False
        self._backoff = 0.0  # the current back-off (0: the last export succeeded)
        self._retry_at = 0.0  # monotonic time before which no batch is sent
        self._shut = False
        self._lock = threading.Lock()  # for the counters the export thread and shutdown share
        self._overflowed = 0  # bumped by submit and reject only (the event loop's thread)
        self._abandoned = 0
        self._in_flight = 0  # spans of the batch being exported now
        self._generation = 0  # bumped when shutdown gives up on the batch in flight
        self._warned = False
        self.exported = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="flowcore-span-export", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Spans that will not be exported: queue full, export failed, or abandoned at shutdown."""
        return self._overflowed + self.failed + self._abandoned

    def accepting(self) -> bool:
        """Whether ``submit`` would queue a span now (callers skip building one it would drop)."""
        return len(self._queue) < self.max_queue and not self._stopping

    def reject(self) -> None:
        """Count a span that was not built because the export was not ``accepting``."""
        self._overflowed += 1

    def submit(self, span: SpanRecord) -> None:
        """Queue a finished span for export; never blocks, drops when the queue is full."""
        queue = self._queue
        if len(queue) >= self.max_queue or self._stopping:
            self._overflowed += 1
            return
        queue.append(span)
        if len(queue) >= self.batch_size and not self._wake.is_set():
            self._wake.set()

    def _run(self) -> None:
        while True:
            wait = self._retry_at - time.monotonic()
            if wait > 0:
                self._stop.wait(wait)  # backing off: full batches do not cut it short
            else:
                self._wake.wait(self.interval)
            self._wake.clear()
            stopping = self._stopping  # read before draining: nothing is queued after it is set
            self._drain()
            if stopping:
                return

    def _take_batch(self) -> list[SpanRecord]:
        batch: list[SpanRecord] = []
        queue = self._queue
        try:
            while len(batch) < self.batch_size:
                batch.append(queue.popleft())  # submit may be appending meanwhile
        except IndexError:
            pass
        return batch

    def _drain(self) -> None:
        while True:
            with self._lock:
                batch = self._take_batch()
                if not batch:
                    return
                generation = self._generation
                self._in_flight = len(batch)
            error: object = None
            try:
                result = self.exporter.export([to_readable(s, self.resource) for s in batch])
                ok = getattr(result, "name", "") == "SUCCESS"
                error = result
            except Exception as exc:  # a broken exporter must not kill the thread
                ok = False
                error = exc
            with self._lock:
                if generation != self._generation:
                    return  # shutdown gave up on this batch and counted it dropped
                self._in_flight = 0
                if ok:
                    self.exported += len(batch)
                else:
                    self.failed += len(batch)
            if ok:
                self._backoff = self._retry_at = 0.0
                continue
            self._warn_once(error, len(batch))
            if self._stopping:
                # Shutting down with a collector that does not take spans: do not try
                # every remaining batch against it.
                self._abandon()
                return
            self._backoff = min(self.max_backoff, max(self.first_backoff, self._backoff * 2))
            self._retry_at = time.monotonic() + self._backoff
            return

    def _warn_once(self, error: object, count: int) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "flowcore: exporting %d spans with %s failed (%s); export goes on in the "
                "background and never fails a flow, and spans stay persisted (`flowcore trace "
                "RUN_ID`). engine.statistics() counts the spans not exported",
                count,
                type(self.exporter).__name__,
                error,
            )

    def _abandon(self) -> int:
        """Drop what is still queued; return how many."""
        n = 0
        queue = self._queue
        with self._lock:
            try:
                while True:
                    queue.popleft()  # one by one: submit may be appending meanwhile
                    n += 1
            except IndexError:
                pass
            self._abandoned += n
        return n

    def shutdown(self) -> None:
        """Export what is queued, waiting at most ``shutdown_timeout`` seconds; then give up.

        Returns within ``shutdown_timeout`` (plus the exporter's own ``shutdown``)
        however the collector behaves: an export still running then goes on in
        the daemon thread, and it and whatever is still queued are counted as
        dropped. The counters are final when this returns.
        """
        if self._shut:
            return
        self._shut = True
        deadline = time.monotonic() + self.shutdown_timeout
        self._stopping = True
        self._stop.set()
        self._wake.set()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        abandoned = self._abandon()
        if self._thread.is_alive():
            # The counts are final when shutdown returns: the batch still being exported
            # is given up on, whatever its late outcome.
            with self._lock:
                abandoned += self._in_flight
                self._abandoned += self._in_flight
                self._in_flight = 0
                self._generation += 1
            log.warning(
                "flowcore: the span exporter did not finish within %.1f s; %d spans not exported "
                "(they are persisted: `flowcore trace RUN_ID`)",
                self.shutdown_timeout,
                abandoned,
            )
        try:
            # Also ends the OTLP exporters' retry back-off, so a thread still waiting
            # on a collector that is down stops soon after.
            self.exporter.shutdown()
        except Exception:
            pass
        if self.dropped:
            log.warning(
                "flowcore: %d spans were not exported (%d failed to export, %d over the queue's "
                "%d); %d exported",
                self.dropped,
                self.failed,
                self._overflowed,
                self.max_queue,
                self.exported,
            )

    def statistics(self) -> dict[str, int]:
        return {
            "exported": self.exported,
            "dropped": self.dropped,
            "failed": self.failed,
            "queued": len(self._queue),
            "in_flight": self._in_flight,
        }


def from_environment(environ: Any = None, *, shutdown_timeout: float = 2.0) -> SpanExport | None:
    """An OTLP export configured by the standard ``OTEL_EXPORTER_OTLP_*`` variables, or ``None``."""
    env = os.environ if environ is None else environ
    if not (
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    ):
        return None
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return None
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )

            exporter: Any = GrpcExporter()
        elif protocol in ("http/protobuf", "http"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        else:
            raise ConfigurationError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; use "
                "'http/protobuf' (default) or 'grpc'"
            )
    except ImportError as exc:
        package = (
            "opentelemetry-exporter-otlp-proto-grpc"
            if protocol == "grpc"
            else "opentelemetry-exporter-otlp-proto-http"
        )
        raise ConfigurationError(
            f"OTEL_EXPORTER_OTLP_ENDPOINT is set but the OTLP exporter is not installed ({exc}); "
            f"install it with `pip install 'flowcore[otlp]'` (or `pip install {package}`), or "
            "unset the variable"
        ) from exc
    return SpanExport(
        exporter,
        service_name=env.get("OTEL_SERVICE_NAME") or None,
        shutdown_timeout=shutdown_timeout,
    )
