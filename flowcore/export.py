"""Exporting spans without ever slowing or failing a flow.

Spans are handed to :class:`SpanExport` with ``submit``, which never blocks: it
appends to a bounded queue, or drops the span (and counts it) when the queue is
full. A daemon thread takes batches from the queue and calls the exporter; a
collector that is down, slow, hanging or answering errors only costs that
thread's time, and ``shutdown`` waits at most ``shutdown_timeout`` seconds, so
the process exits promptly. Spans are persisted in the store independently, so
a failed export loses nothing that ``flowcore trace`` can show.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from .telemetry import SpanRecord

__all__ = ["SpanExport", "from_environment"]

log = logging.getLogger("flowcore")


class SpanExport:
    """A bounded queue and a background thread in front of an OpenTelemetry ``SpanExporter``."""

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        max_queue: int = 4096,
        batch_size: int = 512,
        interval: float = 1.0,
        shutdown_timeout: float = 2.0,
        service_name: str = "flowcore",
    ) -> None:
        from opentelemetry.sdk.resources import Resource

        self.exporter = exporter
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.interval = interval
        self.shutdown_timeout = shutdown_timeout
        self.resource = Resource.create({"service.name": service_name})
        self._queue: deque[SpanRecord] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self.exported = 0
        self.dropped = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="flowcore-span-export", daemon=True)
        self._thread.start()

    def submit(self, span: SpanRecord) -> None:
        """Queue a finished span for export; never blocks, drops when the queue is full."""
        if len(self._queue) >= self.max_queue or self._stopping:
            self.dropped += 1
            return
        self._queue.append(span)
        if len(self._queue) >= self.batch_size:
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            self._drain()
            if self._stopping:
                return

    def _drain(self) -> None:
        from .telemetry import to_readable

        while self._queue:
            batch: list[SpanRecord] = []
            while self._queue and len(batch) < self.batch_size:
                batch.append(self._queue.popleft())
            try:
                result = self.exporter.export([to_readable(s, self.resource) for s in batch])
            except Exception as exc:  # a broken exporter must not kill the thread
                result = None
                log.debug("flowcore: span export raised %r", exc)
            if result is not None and getattr(result, "name", "") == "SUCCESS":
                self.exported += len(batch)
            else:
                self.failed += len(batch)
            if self._stopping and self.failed and not self.exported:
                # Shutting down with a collector that does not answer: do not retry forever.
                self.dropped += len(self._queue)
                self._queue.clear()

    def shutdown(self) -> None:
        """Export what is queued, waiting at most ``shutdown_timeout`` seconds; then give up."""
        self._stopping = True
        self._wake.set()
        self._thread.join(self.shutdown_timeout)
        if self._thread.is_alive():
            self.dropped += len(self._queue)
            log.warning(
                "flowcore: the span exporter did not finish within %.1f s; %d spans not exported "
                "(they are persisted: `flowcore trace RUN_ID`)",
                self.shutdown_timeout,
                len(self._queue),
            )
        if self.dropped or self.failed:
            log.warning(
                "flowcore: %d spans dropped and %d failed to export (%d exported)",
                self.dropped,
                self.failed,
                self.exported,
            )
        try:
            self.exporter.shutdown()
        except Exception:
            pass

    def statistics(self) -> dict[str, int]:
        return {
            "exported": self.exported,
            "dropped": self.dropped,
            "failed": self.failed,
            "queued": len(self._queue),
        }


def from_environment(environ: Any = None) -> SpanExport | None:
    """An OTLP export configured by the standard ``OTEL_EXPORTER_OTLP_*`` variables, or ``None``."""
    env = os.environ if environ is None else environ
    if not (
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    ):
        return None
    if env.get("OTEL_TRACES_EXPORTER", "otlp") == "none":
        return None
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
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
    return SpanExport(exporter, service_name=env.get("OTEL_SERVICE_NAME", "flowcore"))
