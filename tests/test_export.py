"""Span export never slows or fails a flow, whatever the collector does.

Collectors here are real loopback servers — down (a closed port: connection
refused), hanging (accepts, never answers), slow (answers after 0.15 s), failing
(500, 503) and working — spoken to by OpenTelemetry's real OTLP/HTTP exporter,
given explicitly (``Engine(tracing=Tracing(exporter=OTLPSpanExporter(...)))``) or through the
standard environment variables. Bounds on time are generous on purpose: the
benchmark (benchmarks/overhead.py) measures the ratios.
"""

from __future__ import annotations

import functools
import http.server
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

import flowcore
import flowcore.engine.core
from flowcore import ConfigurationError
from flowcore.records import SpanRecord
from flowcore.telemetry.export import SpanExport, from_environment
from flowcore.views.trace import read_trace

pytestmark = pytest.mark.anyio

N_TASKS = 200
N_SPANS = N_TASKS + 1  # the tasks' and the flow's
FLOW_BOUND_S = 2.0  # a flow of 200 no-op tasks takes well under 0.2 s here
SHUTDOWN_TIMEOUT = 0.5  # Tracing(export_timeout=...): how long closing waits for export
CLOSE_SLACK_S = 1.5


@pytest.fixture(autouse=True)
def _no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests set the OTEL_* variables they mean; none leak in from the machine."""
    import os

    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


# -- collectors ------------------------------------------------------------------------------


@dataclass
class Collector:
    """A loopback OTLP/HTTP endpoint with some behaviour; ``requests`` records what came."""

    port: int
    kind: str
    requests: list[tuple[str, bytes]] = field(default_factory=list)
    #: Span exports whose daemon threads may still be talking to this collector: joined
    #: after the collector stops (a hanging one lets go of them only then).
    exports: list[SpanExport] = field(default_factory=list)

    def join_exports(self) -> None:
        for export in self.exports:
            export._thread.join(15)
            assert not export._thread.is_alive()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spans(self) -> list[tuple[Resource, Span]]:
        found: list[tuple[Resource, Span]] = []
        for _, body in self.requests:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    found.extend((rs.resource, span) for span in ss.spans)
        return found


def _http_collector(kind: str) -> Iterator[Collector]:
    collector = Collector(port=0, kind=kind)
    status = {"ok": 200, "slow": 200, "500": 500, "503": 503}[kind]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            collector.requests.append((self.path, body))
            if kind == "slow":
                time.sleep(0.15)
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    collector.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield collector
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        collector.join_exports()


def _hanging_collector() -> Iterator[Collector]:
    """Accepts connections and never answers (nor reads)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.05)
    collector = Collector(port=listener.getsockname()[1], kind="hang")
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield collector
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()
        collector.join_exports()


def _down_collector() -> Iterator[Collector]:
    """A loopback port nobody listens on: connection refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    collector = Collector(port=port, kind="down")
    yield collector
    collector.join_exports()


@pytest.fixture
def collector(request: pytest.FixtureRequest) -> Iterator[Collector]:
    kind = request.param
    if kind == "down":
        yield from _down_collector()
    elif kind == "hang":
        yield from _hanging_collector()
    else:
        yield from _http_collector(kind)


BAD = ["down", "hang", "slow", "500", "503"]


# -- the flow --------------------------------------------------------------------------------


@flowcore.task
async def noop(i: int) -> int:
    return i


@flowcore.flow
async def many(n: int) -> int:
    import asyncio

    return sum(await asyncio.gather(*(noop(i) for i in range(n))))


@dataclass
class Outcome:
    flow_s: float
    close_s: float
    run_id: str
    stats: flowcore.EngineStatistics
    export: SpanExport | None
    spans: list[SpanRecord]


async def run_with(exporter: Any = None) -> Outcome:
    """Run the flow of N_TASKS tasks; time the flow and the engine's close."""
    tracing = flowcore.Tracing(exporter=exporter, export_timeout=SHUTDOWN_TIMEOUT)
    engine = flowcore.Engine(store="memory", tracing=tracing)
    await engine.__aenter__()
    try:
        t0 = time.perf_counter()
        assert await many(N_TASKS) == sum(range(N_TASKS))
        flow_s = time.perf_counter() - t0
        assert engine.last_run is not None
        run_id = engine.last_run.id
        spans = await read_trace(engine.store, run_id)
    finally:
        t0 = time.perf_counter()
        await engine.__aexit__(None, None, None)
        close_s = time.perf_counter() - t0
    export = engine.tracing.export if engine.tracing is not None else None
    return Outcome(flow_s, close_s, run_id, engine.statistics(), export, spans)


def check_flow_unaffected(outcome: Outcome) -> None:
    assert outcome.flow_s < FLOW_BOUND_S, f"the flow took {outcome.flow_s:.2f} s"
    assert outcome.close_s < SHUTDOWN_TIMEOUT + CLOSE_SLACK_S, f"close took {outcome.close_s:.2f} s"
    # Spans are persisted whatever export did: the flow's and every task's.
    assert len(outcome.spans) == N_SPANS
    assert sum(s.name == "task noop" for s in outcome.spans) == N_TASKS


def check_counts(outcome: Outcome, collector: Collector) -> None:
    stats = outcome.stats
    assert outcome.export is not None
    detail = outcome.export.statistics()
    assert detail["queued"] == 0 and detail["in_flight"] == 0
    assert stats.spans_exported + stats.spans_dropped == N_SPANS, (stats, detail)
    if collector.kind in ("ok", "slow"):
        assert stats.spans_exported == N_SPANS and stats.spans_dropped == 0
    else:
        assert stats.spans_exported == 0 and stats.spans_dropped == N_SPANS
    if collector.kind == "500":
        # Refused at once: the export was tried and failed, not cut short by the shutdown.
        assert detail["failed"] == N_SPANS


async def test_baseline_without_an_exporter() -> None:
    outcome = await run_with()
    check_flow_unaffected(outcome)
    assert outcome.export is None and outcome.close_s < 1.0
    assert outcome.stats.spans_exported == outcome.stats.spans_dropped == 0


@pytest.mark.parametrize("collector", [*BAD, "ok"], indirect=True)
async def test_an_explicit_otlp_exporter_never_slows_or_fails_the_flow(
    collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="flowcore")
    # The exporter's own timeout (retries with back-off included) is longer than the
    # engine waits at close: the close is capped by SpanExport, not by the exporter.
    exporter = OTLPSpanExporter(endpoint=collector.endpoint, timeout=8)
    outcome = await run_with(exporter)
    assert outcome.export is not None
    collector.exports.append(outcome.export)
    check_flow_unaffected(outcome)
    check_counts(outcome, collector)
    warned = [r.getMessage() for r in caplog.records if r.name == "flowcore"]
    if collector.kind in ("ok", "slow"):
        assert warned == []
        assert len(collector.spans()) == N_SPANS
        assert {path for path, _ in collector.requests} == {"/v1/traces"}
    else:
        assert any(f"{N_SPANS} spans were not exported" in m for m in warned), warned


@pytest.mark.parametrize("collector", [*BAD, "ok"], indirect=True)
async def test_the_environment_configures_export_that_never_slows_the_flow(
    collector: Collector, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="flowcore")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.base)  # + /v1/traces
    monkeypatch.setenv("OTEL_SERVICE_NAME", "etl-service")
    outcome = await run_with()  # the exporter's default timeout: 10 s
    assert isinstance(outcome.export, SpanExport)
    collector.exports.append(outcome.export)
    assert isinstance(outcome.export.exporter, OTLPSpanExporter)
    check_flow_unaffected(outcome)
    check_counts(outcome, collector)
    if collector.kind in ("ok", "slow"):
        received = collector.spans()
        assert len(received) == N_SPANS
        (service,) = {
            a.value.string_value
            for resource, _ in received
            for a in resource.attributes
            if a.key == "service.name"
        }
        assert service == "etl-service"
        names = sorted(span.name for _, span in received)
        assert names == ["flow many"] + ["task noop"] * N_TASKS
    else:
        warned = [r.getMessage() for r in caplog.records if r.name == "flowcore"]
        assert any(f"{N_SPANS} spans were not exported" in m for m in warned), warned


@pytest.mark.parametrize("collector", ["hang"], indirect=True)
async def test_memory_stays_bounded_with_a_hanging_collector(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    max_queue, batch_size = 16, 8
    monkeypatch.setattr(
        flowcore.engine.core,
        "SpanExport",
        functools.partial(SpanExport, max_queue=max_queue, batch_size=batch_size),
    )
    seen: list[int] = []

    @flowcore.task
    async def step(i: int) -> int:
        engine = flowcore.current_run().engine
        assert engine.tracing is not None and engine.tracing.export is not None
        seen.append(engine.tracing.export.statistics()["queued"])
        await anyio.lowlevel.checkpoint()
        return i

    @flowcore.flow
    async def steps(n: int) -> None:
        for i in range(n):
            await step(i)

    exporter = OTLPSpanExporter(endpoint=collector.endpoint, timeout=30)
    engine = flowcore.Engine(
        store="memory", tracing=flowcore.Tracing(exporter=exporter, export_timeout=SHUTDOWN_TIMEOUT)
    )
    async with engine:
        await steps(N_TASKS)
        export = engine.tracing.export if engine.tracing else None
        assert export is not None
        collector.exports.append(export)
        during = export.statistics()
    assert max(seen) <= max_queue
    assert during["queued"] <= max_queue and during["in_flight"] <= batch_size
    assert during["dropped"] >= N_SPANS - max_queue - batch_size
    stats = engine.statistics()
    assert stats.spans_exported == 0 and stats.spans_dropped == N_SPANS


class BlockingExporter(SpanExporter):
    """Hangs in ``export`` until released; records the batches it was given."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.batches: list[int] = []

    def export(self, spans: Any) -> SpanExportResult:
        self.batches.append(len(spans))
        self.entered.set()
        self.release.wait(30)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.release.set()


def record(i: int) -> SpanRecord:
    return SpanRecord(trace_id=f"{i + 1:032x}", span_id=f"{i + 1:016x}", name=f"s{i}", start=i)


def test_the_queue_never_exceeds_max_queue_and_counts_the_rest() -> None:
    exporter = BlockingExporter()
    export = SpanExport(exporter, max_queue=10, batch_size=4, interval=0.01, shutdown_timeout=0.5)
    try:
        for i in range(4):
            export.submit(record(i))
        assert exporter.entered.wait(5)  # the first batch is stuck in the exporter
        for i in range(4, 104):
            export.submit(record(i))
            assert len(export._queue) <= 10
        stats = export.statistics()
        assert stats == {"exported": 0, "dropped": 90, "failed": 0, "queued": 10, "in_flight": 4}
        # Full: flowcore does not even build the spans it would drop, and counts them.
        assert not export.accepting()
        export.reject()
        assert export.dropped == 91
        t0 = time.perf_counter()
        export.shutdown()
        assert time.perf_counter() - t0 < 0.5 + 0.5
        # Shutdown gave up on the stuck batch and the queue: all counted, and final.
        assert export.statistics() == {
            "exported": 0,
            "dropped": 105,
            "failed": 0,
            "queued": 0,
            "in_flight": 0,
        }
    finally:
        exporter.release.set()
        export._thread.join(5)
    assert export.dropped == 105 and export.exported == 0  # a late success changes nothing
    assert not export.accepting()
    export.submit(record(0))
    assert export.dropped == 106  # nothing is queued after shutdown


def test_a_working_exporter_gets_everything_in_batches() -> None:
    exporter = BlockingExporter()
    exporter.release.set()
    export = SpanExport(exporter, batch_size=4, interval=0.01)
    for i in range(10):
        export.submit(record(i))
    export.shutdown()
    assert sum(exporter.batches) == 10 and max(exporter.batches) <= 4
    assert export.statistics()["exported"] == 10 and export.dropped == 0
    export.shutdown()  # a second shutdown does nothing


def test_an_exporter_that_raises_is_counted_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(SpanExporter):
        calls = 0

        def export(self, spans: Any) -> SpanExportResult:
            Broken.calls += 1
            raise OSError("disk on fire")

        def shutdown(self) -> None:
            raise RuntimeError("and this too")

    caplog.set_level(logging.WARNING, logger="flowcore")
    export = SpanExport(Broken(), batch_size=2, interval=0.01)
    for i in range(3):
        export.submit(record(i))
    time.sleep(0.2)
    for i in range(3, 5):
        export.submit(record(i))  # the thread survived the first errors
    export.shutdown()
    assert export.statistics()["failed"] + export.statistics()["exported"] <= 5
    assert export.dropped == 5 and export.exported == 0 and Broken.calls >= 2
    messages = [r.getMessage() for r in caplog.records if r.name == "flowcore"]
    assert sum("disk on fire" in m for m in messages) == 1  # warned once, not per batch
    assert any("5 spans were not exported" in m for m in messages)


class FlakyExporter(SpanExporter):
    """Fails its first ``failures`` calls, then succeeds; counts the calls."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def export(self, spans: Any) -> SpanExportResult:
        self.calls += 1
        if self.calls <= self.failures:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def test_a_failing_collector_is_backed_off_not_hammered() -> None:
    exporter = FlakyExporter(failures=10**9)
    export = SpanExport(exporter, max_queue=100, batch_size=10, interval=0.01)
    for i in range(1000):
        export.submit(record(i))
        if i % 10 == 9:
            time.sleep(0.001)  # ~0.1 s of a busy flow: 100 batches' worth of spans
        assert len(export._queue) <= 100
    # One batch was tried and failed; then the export waits out its back-off (1 s) instead
    # of encoding and sending every batch to a collector that is down.
    assert exporter.calls == 1
    stats = export.statistics()
    assert stats["failed"] == 10 and stats["queued"] == 100
    assert stats["dropped"] == 1000 - 100
    t0 = time.perf_counter()
    export.shutdown()  # one last try, which fails: the rest is abandoned, not tried
    assert time.perf_counter() - t0 < 1.0
    assert exporter.calls == 2
    assert export.statistics() == {
        "exported": 0,
        "dropped": 1000,
        "failed": 20,
        "queued": 0,
        "in_flight": 0,
    }


def test_export_resumes_when_the_collector_comes_back() -> None:
    exporter = FlakyExporter(failures=1)
    export = SpanExport(exporter, batch_size=10, interval=0.01)
    export.first_backoff = 0.05
    for i in range(50):
        export.submit(record(i))
    deadline = time.monotonic() + 5
    while export.exported < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    export.shutdown()
    # The first batch was lost to the failure; the queue waited and went out after it.
    assert export.statistics() == {
        "exported": 40,
        "dropped": 10,
        "failed": 10,
        "queued": 0,
        "in_flight": 0,
    }
    assert export._backoff == 0.0


def test_resource_attributes_and_service_name(monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = BlockingExporter()
    export = SpanExport(
        exporter, service_name="svc", resource_attributes={"openinference.project.name": "etl"}
    )
    export.shutdown()
    attributes = export.resource.attributes
    assert attributes["service.name"] == "svc"
    assert attributes["openinference.project.name"] == "etl"
    # With no service name given, OTEL_SERVICE_NAME wins over the default.
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=ci")
    export = SpanExport(BlockingExporter())
    export.shutdown()
    assert export.resource.attributes["service.name"] == "from-env"
    assert export.resource.attributes["deployment.environment"] == "ci"
    monkeypatch.delenv("OTEL_SERVICE_NAME")
    export = SpanExport(BlockingExporter())
    export.shutdown()
    assert export.resource.attributes["service.name"] == "flowcore"


def test_bad_export_options_are_refused() -> None:
    with pytest.raises(ConfigurationError) as info:
        SpanExport(BlockingExporter(), max_queue=0, batch_size=True, interval=0)
    for name in ("max_queue", "batch_size", "interval"):
        assert name in str(info.value)
    with pytest.raises(ConfigurationError, match="SpanExporter"):
        SpanExport(object())  # type: ignore[arg-type]


# -- configuration from the environment ------------------------------------------------------


def test_no_endpoint_no_export(monkeypatch: pytest.MonkeyPatch) -> None:
    assert from_environment() is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert from_environment() is None
    monkeypatch.delenv("OTEL_TRACES_EXPORTER")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert from_environment() is None


def test_a_traces_endpoint_is_used_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9/custom/path")
    export = from_environment()
    assert export is not None
    try:
        assert export.exporter._endpoint == "http://127.0.0.1:9/custom/path"  # type: ignore[attr-defined]
    finally:
        export.shutdown()


def test_a_missing_exporter_package_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(ConfigurationError) as info:
        from_environment()
    assert "pip install 'flowcore[otlp]'" in str(info.value)
    assert "opentelemetry-exporter-otlp-proto-http" in str(info.value)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    with pytest.raises(ConfigurationError) as info:
        from_environment()
    assert "pip install 'flowcore[otlp]'" in str(info.value)
    assert "opentelemetry-exporter-otlp-proto-grpc" in str(info.value)


async def test_a_missing_exporter_package_fails_the_engine_at_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'flowcore\[otlp\]'"):
        async with flowcore.Engine(store="memory"):
            pass
    # tracing=False reads no OTEL_* variable at all.
    async with flowcore.Engine(store="memory", tracing=False) as engine:
        assert engine.tracing is None


@pytest.mark.parametrize(
    "variable", ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"]
)
def test_an_unsupported_protocol_is_refused(variable: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv(variable, "http/json")
    with pytest.raises(ConfigurationError, match="http/json"):
        from_environment()
