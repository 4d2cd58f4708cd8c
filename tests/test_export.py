"""Spans reach the collector whole, from the store, and never slow or fail a flow.

Spans are shipped from the store once their run ended (``flowcore.telemetry.shipper``).
Collectors here are real loopback servers — down (a closed port: connection refused),
hanging (accepts, never answers), slow (answers after 0.15 s), failing (500, 503) and
working — configured by the standard environment variables or given as an SDK
exporter. What is checked: every span arrives exactly once; a collector that fails
costs the flow nothing and its spans go out when it is back; two engines on one store
never ship a run twice; one warning per outage. Bounds on time are generous on
purpose: benchmarks/overhead.py measures the ratios.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span

import flowcore
from flowcore import ConfigurationError
from flowcore.records import SpanRecord
from flowcore.store import resolve_store
from flowcore.telemetry import export_requested
from flowcore.telemetry.otlp import encode_json, encode_protobuf
from flowcore.telemetry.shipper import (
    ExportFailed,
    OtlpHttpSender,
    SdkSender,
    SpanShipper,
    from_environment,
)
from flowcore.views.trace import read_trace

pytestmark = pytest.mark.anyio

N_TASKS = 200
N_SPANS = N_TASKS + 1  # the tasks' and the flow's
FLOW_BOUND_S = 2.0  # a flow of 200 no-op tasks takes well under 0.2 s here
EXPORT_TIMEOUT = 0.5  # Tracing(export_timeout=...): the longest closing waits to ship
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
    #: The HTTP status it answers (changed by a test: a collector that comes back).
    status: int = 200
    #: A picky collector: 413 for a body larger than this many bytes (a proxy's limit).
    max_body: int | None = None
    #: A picky collector: ``refuse_status`` for a body holding these bytes (400: data it
    #: cannot take; 500: data that trips a bug of its own).
    refuses: bytes | None = None
    refuse_status: int = 400
    #: Sent with a failing status (seconds, or any text), if set.
    retry_after: int | str | None = None
    #: Statuses answered, in order.
    answers: list[int] = field(default_factory=list)
    #: The body of a 200 answer (an ExportTraceServiceResponse: a partial success).
    reply: bytes = b""

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


def _http_collector(kind: str, tls: ssl.SSLContext | None = None) -> Iterator[Collector]:
    """A collector answering over HTTP, or over HTTPS with the server context ``tls``."""
    collector = Collector(port=0, kind=kind)
    collector.status = {"ok": 200, "slow": 200, "500": 500, "503": 503}[kind]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status = collector.status
            if collector.max_body is not None and len(body) > collector.max_body:
                status = 413
            elif collector.refuses is not None and collector.refuses in body:
                status = collector.refuse_status
            collector.answers.append(status)
            if status < 300:
                collector.requests.append((self.path, body))
            if kind == "slow":
                time.sleep(0.15)
            self.send_response(status)
            if status >= 300 and collector.retry_after is not None:
                self.send_header("Retry-After", str(collector.retry_after))
            reply = collector.reply if status < 300 else b""
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    collector.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield collector
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


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


def _down_collector() -> Iterator[Collector]:
    """A loopback port nobody listens on: connection refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    collector = Collector(port=port, kind="down")
    yield collector


@pytest.fixture
def collector(request: pytest.FixtureRequest) -> Iterator[Collector]:
    kind = request.param
    if kind == "down":
        yield from _down_collector()
    elif kind == "hang":
        yield from _hanging_collector()
    else:
        yield from _http_collector(kind)


@pytest.fixture
def working() -> Iterator[Collector]:
    yield from _http_collector("ok")


BAD = ["down", "hang", "500", "503"]


# -- the flow --------------------------------------------------------------------------------


@flowcore.task
async def noop(i: int) -> int:
    return i


@flowcore.flow
async def many(n: int) -> int:
    return sum(await asyncio.gather(*(noop(i) for i in range(n))))


@dataclass
class Outcome:
    flow_s: float
    close_s: float
    run_id: str
    stats: flowcore.EngineStatistics
    spans: list[SpanRecord]


async def run_with(db: Path, exporter: Any = None, n: int = N_TASKS) -> Outcome:
    """Run the flow of ``n`` tasks on the store ``db``; time the flow and the close."""
    tracing = flowcore.Tracing(exporter=exporter, export_timeout=EXPORT_TIMEOUT)
    engine = flowcore.Engine(store=db, tracing=tracing)
    await engine.__aenter__()
    try:
        t0 = time.perf_counter()
        assert await many(n) == sum(range(n))
        flow_s = time.perf_counter() - t0
        assert engine.last_run is not None
        run_id = engine.last_run.id
        spans = await read_trace(engine.store, run_id)
    finally:
        t0 = time.perf_counter()
        await engine.__aexit__(None, None, None)
        close_s = time.perf_counter() - t0
    return Outcome(flow_s, close_s, run_id, engine.statistics(), spans)


def received_ids(collector: Collector) -> list[str]:
    return [span.span_id.hex() for _, span in collector.spans()]


async def unshipped(db: Path) -> list[str]:
    """Runs of the store still to ship (claimed and given back at once)."""
    store = resolve_store(db)
    await store.open()
    try:
        runs = await store.claim_span_exports("probe", now=time.time(), lease=1.0, limit=100)
        await store.end_span_exports([r.id for r in runs], "probe", shipped=False)
    finally:
        await store.close()
    return [r.id for r in runs]


# -- a working collector ---------------------------------------------------------------------


async def test_a_healthy_collector_receives_every_span_once(
    working: Collector, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", working.base)  # + /v1/traces
    monkeypatch.setenv("OTEL_SERVICE_NAME", "etl-service")
    outcome = await run_with(tmp_path / "s.db")
    got = received_ids(working)
    assert sorted(got) == sorted(s.span_id for s in outcome.spans)  # every span, each once
    assert len(got) == N_SPANS and outcome.stats.spans_exported == N_SPANS
    assert {path for path, _ in working.requests} == {"/v1/traces"}
    services = {
        a.value.string_value
        for resource, _ in working.spans()
        for a in resource.attributes
        if a.key == "service.name"
    }
    assert services == {"etl-service"}
    names = sorted(span.name for _, span in working.spans())
    assert names == ["flow many"] + ["task noop"] * N_TASKS
    assert await unshipped(tmp_path / "s.db") == []


async def test_an_sdk_exporter_is_shipped_to_from_the_store(
    working: Collector, tmp_path: Path
) -> None:
    outcome = await run_with(tmp_path / "s.db", OTLPSpanExporter(endpoint=working.endpoint))
    assert sorted(received_ids(working)) == sorted(s.span_id for s in outcome.spans)


async def test_without_an_exporter_nothing_is_shipped(tmp_path: Path) -> None:
    outcome = await run_with(tmp_path / "s.db")
    assert outcome.stats.spans_exported == 0 and outcome.close_s < 1.0
    assert len(outcome.spans) == N_SPANS


@pytest.mark.parametrize("collector", ["slow"], indirect=True)
async def test_closing_waits_for_a_collector_that_keeps_taking_spans(
    collector: Collector, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Closing ships a big run whole to a collector that answers each request in time,
    even when all of them together take longer than ``export_timeout``."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.base)  # 0.15 s a request
    tracing = flowcore.Tracing(export_timeout=EXPORT_TIMEOUT)
    async with flowcore.Engine(store=tmp_path / "s.db", tracing=tracing) as engine:
        assert engine.shipper is not None
        engine.shipper.batch = 20  # 11 requests: 1.65 s in all, 0.15 s each
        await many(N_TASKS)
    assert len(set(received_ids(collector))) == N_SPANS


# -- collectors that fail --------------------------------------------------------------------


@pytest.mark.parametrize("collector", BAD, indirect=True)
async def test_a_failing_collector_costs_nothing_and_gets_the_spans_when_back(
    collector: Collector,
    working: Collector,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.WARNING, logger="flowcore")
    db = tmp_path / "s.db"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", collector.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "300")  # ms: a hanging one times out
    first = await run_with(db)
    assert first.flow_s < FLOW_BOUND_S, f"the flow took {first.flow_s:.2f} s"
    assert first.close_s < EXPORT_TIMEOUT + CLOSE_SLACK_S, f"close took {first.close_s:.2f} s"
    assert len(first.spans) == N_SPANS  # persisted whatever the collector did
    assert first.stats.spans_exported == 0 and first.stats.spans_failed >= 1
    assert await unshipped(db) == [first.run_id]  # left in the store, not dropped
    warned = [r.getMessage() for r in caplog.records if "did not take spans" in r.getMessage()]
    assert len(warned) == 1, warned
    # The collector is back (another one at the same variables): the next engine on the
    # store ships the earlier run too, each span once.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", working.endpoint)
    second = await run_with(db)
    assert sorted(received_ids(working)) == sorted(
        [s.span_id for s in first.spans] + [s.span_id for s in second.spans]
    )
    assert await unshipped(db) == []


@flowcore.task
async def poisoned(i: int) -> int:
    return i


@flowcore.flow
async def poison() -> int:
    return await poisoned(1)


@flowcore.flow
async def loud(message: str) -> None:
    raise ValueError(message)


async def test_requests_too_large_for_the_collector_go_again_in_smaller_ones(
    working: Collector, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Regression: a collector behind a proxy with a body limit answered 413 to the
    # shipper's 2,000-span requests; the run was given back and sent whole again at
    # every poll, and no run after it ever reached the collector.
    working.max_body = 4_000
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", working.base)
    outcome = await run_with(tmp_path / "s.db")
    got = received_ids(working)
    assert sorted(got) == sorted(s.span_id for s in outcome.spans)  # every span, each once
    assert outcome.stats.spans_exported == N_SPANS and outcome.stats.spans_refused == 0
    assert 413 in working.answers and len(working.requests) > 1
    assert await unshipped(tmp_path / "s.db") == []


async def test_spans_refused_for_good_are_set_aside_and_hold_back_no_later_run(
    working: Collector,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    # Regression: a run the collector refused (HTTP 400: OTLP says never to send that
    # request again) was given back and sent again at every poll, first of all, so
    # every run after it stayed unshipped for ever.
    caplog.set_level(logging.WARNING, logger="flowcore")
    working.refuses = b"poisoned"  # the name of the task of flow `poison`
    working.max_body = 3_000  # and one span alone too large for it: a long error
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", working.base)
    db = tmp_path / "s.db"
    async with flowcore.Engine(store=db, tracing=flowcore.Tracing(export_timeout=5)) as engine:
        assert await poison() == 1
        assert engine.last_run is not None
        poisoned_id = engine.last_run.id
        with pytest.raises(ValueError):
            await loud("x" * 1_900)  # recorded and exported whole: above the limit
        assert engine.last_run is not None
        loud_id = engine.last_run.id
        assert await many(N_TASKS) == sum(range(N_TASKS))
        assert engine.last_run is not None
        later = await read_trace(engine.store, engine.last_run.id)
    stats = engine.statistics()
    got = set(received_ids(working))
    assert {s.span_id for s in later} <= got  # the later run reached the collector whole
    assert stats.spans_refused >= 2 and stats.spans_exported == len(got)
    assert await unshipped(db) == []  # set aside, not offered again at every poll
    warned = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(warned) == 2, warned
    for run_id, message in zip((poisoned_id, loud_id), warned, strict=True):
        assert f"run {run_id[:8]}" in message
        assert f"flowcore trace export {run_id[:8]}" in message
    assert "HTTP 400" in warned[0] and "HTTP 413" in warned[1]


async def test_spans_a_collector_rejects_in_a_partial_success_are_counted_and_said(
    working: Collector,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    # OTLP: a collector may take a request but reject some of its spans (HTTP 200 and
    # partial_success in the body), which are not to be sent again: they are counted
    # and said, not taken for delivered.
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceResponse,
    )

    caplog.set_level(logging.WARNING, logger="flowcore")
    reply = ExportTraceServiceResponse()
    reply.partial_success.rejected_spans = 2
    reply.partial_success.error_message = "spans older than the retention"
    working.reply = reply.SerializeToString()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", working.base)
    outcome = await run_with(tmp_path / "s.db")
    # Each request is said to have 2 rejected (the flow's span goes first, alone: 1).
    rejected = sum(
        min(2, len(Collector(0, "ok", [request]).spans())) for request in working.requests
    )
    assert outcome.stats.spans_refused == rejected
    assert outcome.stats.spans_exported == N_SPANS - rejected
    assert await unshipped(tmp_path / "s.db") == []  # not sent again
    (warned,) = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert f"refused {rejected} of the {N_SPANS} spans of run {outcome.run_id[:8]}" in warned
    assert "spans older than the retention" in warned


async def test_a_run_the_collector_fails_on_alone_holds_back_no_other_run(
    working: Collector, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    # Regression: a run whose data trips a bug of the collector (HTTP 500 to it alone,
    # or an SDK exporter's permanent error) was given back and sent first at every
    # pass, failing each time: no run after it was ever shipped.
    caplog.set_level(logging.WARNING, logger="flowcore")
    working.refuses, working.refuse_status = b"poisoned", 500
    db = tmp_path / "s.db"
    async with flowcore.Engine(store=db) as engine:  # no exporter: the runs wait
        assert await poison() == 1
        assert engine.last_run is not None
        failing = engine.last_run.id
        assert await many(3) == 3
        assert engine.last_run is not None
        later = await read_trace(engine.store, engine.last_run.id)
    sender = OtlpHttpSender(working.endpoint)
    store = resolve_store(db)
    await store.open()
    start = time.time()
    try:
        shipper = SpanShipper(store, sender, lease=60.0, clock=lambda: start)
        assert await shipper.ship_pending() == 1  # the later run, past the failing one
        assert {s.span_id for s in later} <= set(received_ids(working))
        assert shipper.healthy  # the collector takes spans: no outage is declared
        assert await unshipped_in(store) == []  # held: not offered again at every pass
        offered = await store.claim_span_exports("probe", now=start + 61, lease=1.0, limit=10)
        assert [r.id for r in offered] == [failing]  # tried again once its lease ran out
    finally:
        sender.close()
        await store.close()
    (warned,) = [r.getMessage() for r in caplog.records if "failed on run" in r.getMessage()]
    assert f"failed on run {failing[:8]} (HTTP 500" in warned and "in 60 s" in warned
    assert not [r for r in caplog.records if "did not take spans" in r.getMessage()]


async def test_a_collector_behind_a_proxy_of_the_environment_gets_every_span(
    working: Collector, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Regression: the check that something listens at the collector's address connected
    # to it directly, so a collector reachable only through HTTP_PROXY never got a span.
    for name in ("NO_PROXY", "ALL_PROXY", "HTTPS_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", working.base)  # the collector stands in for the proxy
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector.invalid:4318")
    outcome = await run_with(tmp_path / "s.db")
    assert sorted(received_ids(working)) == sorted(s.span_id for s in outcome.spans)
    assert {path for path, _ in working.requests} == {"http://collector.invalid:4318/v1/traces"}


async def test_a_collector_refusing_every_run_is_said_ten_times_not_for_ever(
    working: Collector, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.WARNING, logger="flowcore")
    working.status = 400
    db = tmp_path / "s.db"
    async with flowcore.Engine(store=db):  # no exporter: the runs wait
        for _ in range(12):
            assert await many(1) == 0
    sender = OtlpHttpSender(working.endpoint)
    store = resolve_store(db)
    await store.open()
    try:
        shipper = SpanShipper(store, sender)
        while await shipper.ship_pending():
            pass
        assert shipper.runs_refused == 12 and await unshipped_in(store) == []
    finally:
        sender.close()
        await store.close()
    said = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(said) == 10 and said[-1].endswith("; the ones after this are not said")
    assert not any("not said" in m for m in said[:-1])


def test_a_retry_after_that_is_no_number_of_seconds_is_not_heard(working: Collector) -> None:
    # "\xb2" (a superscript two, in a latin-1 header) passes str.isdigit but not float().
    working.status = 503
    sender = OtlpHttpSender(working.endpoint, protocol="http/json")
    try:
        cases: list[tuple[int | str, float | None]] = [
            (30, 30.0),
            ("\xb2", None),
            ("Wed, 21 Oct 2015 07:28:00 GMT", None),  # a date: the own backoff instead
        ]
        for value, heard in cases:
            working.retry_after = value
            with pytest.raises(ExportFailed) as info:
                sender.send([])
            assert info.value.retryable and info.value.retry_after == heard, value
    finally:
        sender.close()


def test_a_partial_success_is_read_from_either_protocol_and_nothing_else() -> None:
    from flowcore.telemetry.otlp import partial_success

    as_json = b'{"partialSuccess": {"rejectedSpans": "3", "errorMessage": "too old"}}'
    assert partial_success(as_json, "http/json") == (3, "too old")  # int64 as a string
    assert partial_success(b'{"partialSuccess": {"rejectedSpans": 4}}', "http/json") == (4, "")
    for body, protocol in [
        (b"", "http/protobuf"),
        (b"{}", "http/json"),
        (b"<html>ok</html>", "http/json"),  # a proxy's page: not an OTLP response
        (b"\xff\xfe\x00", "http/protobuf"),
        (b'{"partialSuccess": {"rejectedSpans": "many"}}', "http/json"),
    ]:
        assert partial_success(body, protocol) == (0, ""), body


async def test_a_collector_asking_to_wait_is_not_asked_again_sooner(
    working: Collector, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    working.status, working.retry_after = 503, 30
    async with flowcore.Engine(store=tmp_path / "s.db"):  # no exporter: nothing shipped
        assert await many(3) == 3
    sender = OtlpHttpSender(working.endpoint)
    store = resolve_store(tmp_path / "s.db")
    await store.open()
    try:
        shipper = SpanShipper(store, sender, interval=0.01)
        shipper.first_backoff = shipper.max_backoff = 0.01  # its own backoff: short
        with anyio.move_on_after(0.5):
            await shipper.run()
    finally:
        sender.close()
        await store.close()
    assert working.answers == [503]  # not again within its 30 s


@dataclass
class Authority:
    """A private certificate authority, and the PEM files a client is given."""

    ca: Any  # trustme.CA
    ca_pem: Path
    client_pem: Path  # a client certificate (and its key) it signed


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    import trustme

    ca = trustme.CA()
    ca_pem, client_pem = tmp_path / "ca.pem", tmp_path / "client.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    ca.issue_cert("flowcore-client").private_key_and_cert_chain_pem.write_to_path(str(client_pem))
    return Authority(ca, ca_pem, client_pem)


def _tls(authority: Authority, *, mutual: bool) -> ssl.SSLContext:
    """A collector's server context: its certificate signed by ``authority``; with
    ``mutual``, it asks for a client certificate signed by it too."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.ca.issue_cert("127.0.0.1").configure_cert(context)
    if mutual:
        authority.ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@pytest.mark.parametrize("mutual", [False, True], ids=["server-tls", "mutual-tls"])
async def test_a_collector_over_tls_with_a_private_authority_gets_every_span(
    authority: Authority,
    mutual: bool,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    # Until OTEL_EXPORTER_OTLP_CERTIFICATE was read, a collector whose certificate a
    # private authority signed failed every request (and mutual TLS could not work).
    caplog.set_level(logging.WARNING, logger="flowcore")
    found = _http_collector("ok", tls=_tls(authority, mutual=mutual))
    collector = next(found)
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"https://127.0.0.1:{collector.port}")
        # Without the authority (nor, for mutual TLS, a client certificate): refused, kept.
        first = await run_with(tmp_path / "s.db")
        assert first.stats.spans_exported == 0 and collector.requests == []
        warned = [r.getMessage() for r in caplog.records if "did not take spans" in r.getMessage()]
        assert len(warned) == 1 and "CERTIFICATE_VERIFY_FAILED" in warned[0], warned
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(authority.ca_pem))
        if mutual:
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", str(authority.client_pem))
        second = await run_with(tmp_path / "s.db")
    finally:
        next(found, None)
    got = sorted(received_ids(collector))
    assert got == sorted(s.span_id for s in first.spans + second.spans)  # both runs, once
    assert await unshipped(tmp_path / "s.db") == []


def test_tls_variables_that_cannot_be_used_are_refused_naming_them(
    authority: Authority, tmp_path: Path
) -> None:
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("not a certificate\n")
    base = {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:1"}
    cases: list[tuple[dict[str, str], str, str]] = [
        (
            {"OTEL_EXPORTER_OTLP_CERTIFICATE": str(tmp_path / "gone.pem")},
            "CERTIFICATE",
            "not a file",
        ),
        ({"OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE": str(not_pem)}, "CERTIFICATE", "cannot use it"),
        (
            {"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": str(not_pem)},
            "CLIENT_CERTIFICATE",
            "cannot use",
        ),
        ({"OTEL_EXPORTER_OTLP_CLIENT_KEY": str(authority.client_pem)}, "CLIENT_KEY", "set both"),
        ({"OTEL_EXPORTER_OTLP_CERTIFICATE": str(tmp_path)}, "CERTIFICATE", "not a file"),
    ]
    for variables, named, problem in cases:
        with pytest.raises(ConfigurationError, match=problem) as info:
            from_environment({**base, **variables})
        assert f"OTEL_EXPORTER_OTLP_{named}" in str(info.value), variables


async def test_a_collector_down_then_up_gets_the_runs_of_the_same_engine(
    working: Collector,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """One engine, one outage: one warning when it starts, one when it ends, and every
    run of the outage shipped once the collector takes spans again."""
    caplog.set_level(logging.WARNING, logger="flowcore")
    working.status = 503
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", working.base)
    engine = flowcore.Engine(store=tmp_path / "s.db")
    async with engine:
        shipper = engine.shipper
        assert shipper is not None
        shipper.first_backoff = shipper.max_backoff = 0.01
        for _ in range(3):
            await many(5)
            assert await shipper.ship_pending() == 0
        assert shipper.failures >= 3 and not shipper.healthy
        working.status = 200
        while await shipper.ship_pending():
            pass
        recovered: bool = shipper.healthy
        assert recovered
    assert len(received_ids(working)) == len(set(received_ids(working))) == 3 * 6
    messages = [r.getMessage() for r in caplog.records if r.name == "flowcore"]
    assert sum("did not take spans" in m for m in messages) == 1, messages
    assert sum("takes spans again" in m for m in messages) == 1, messages


# -- several processes, one store ----------------------------------------------------------


async def test_two_engines_on_one_store_never_ship_a_run_twice(
    working: Collector, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", working.base)
    db = tmp_path / "s.db"
    made: list[str] = []

    async def engine_runs(count: int) -> None:
        async with flowcore.Engine(store=db) as engine:
            for _ in range(count):
                await many(20)
                assert engine.last_run is not None
                made.extend(s.span_id for s in await read_trace(engine.store, engine.last_run.id))

    await asyncio.gather(engine_runs(5), engine_runs(5))
    got = received_ids(working)
    assert len(got) == len(set(got)) == len(made) == 10 * 21


async def test_a_process_that_died_before_shipping_leaves_its_runs_to_the_next(
    working: Collector, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A run ended and committed, then the process died (its engine never closed, its
    shipper never ran): the next engine on the store ships it."""
    db = tmp_path / "s.db"
    async with flowcore.Engine(store=db) as engine:  # no collector configured yet
        await many(10)
        assert engine.last_run is not None
        lost = engine.last_run.id
    assert await unshipped(db) == [lost]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", working.base)
    async with flowcore.Engine(store=db):
        pass
    assert len(received_ids(working)) == 11
    assert await unshipped(db) == []


async def test_runs_older_than_the_catch_up_are_skipped(working: Collector, tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    async with flowcore.Engine(store=db):
        await many(3)
    store = resolve_store(db)
    await store.open()
    try:
        sender = OtlpHttpSender(working.endpoint)
        late = SpanShipper(store, sender, catchup=60.0, clock=lambda: time.time() + 3600)
        assert await late.ship_pending() == 0
        assert await unshipped_in(store) == []
    finally:
        await store.close()
    assert working.requests == []


async def unshipped_in(store: Any) -> list[str]:
    runs = await store.claim_span_exports("probe", now=time.time(), lease=1.0, limit=10)
    return [r.id for r in runs]


# -- encoding --------------------------------------------------------------------------------


def full_span() -> SpanRecord:
    return SpanRecord(
        trace_id="0af7651916cd43dd8448eb211c80319c",
        span_id="b7ad6b7169203331",
        parent_id="00f067aa0ba902b7",
        name="task <script>ünï ✓",
        start=1_700_000_000_000_000_001,
        end=1_700_000_000_500_000_002,
        run_id="r",
        kind="CLIENT",
        status="ERROR",
        status_message="ValueError: bad",
        attributes={
            "s": "text", "b": True, "i": 2**40, "f": 1.5, "l": [1, 2], "big": 2**70,
            "o": {"x": 1},
        },
        events=[("retry", 1_700_000_000_100_000_000, {"flowcore.attempt": 1})],
        links=[("1" * 32, "2" * 16)],
        scope="my.lib",
    )  # fmt: skip


def test_protobuf_carries_every_field() -> None:
    request = ExportTraceServiceRequest()
    request.ParseFromString(encode_protobuf([full_span()], {"service.name": "svc"}))
    (rs,) = request.resource_spans
    assert [(a.key, a.value.string_value) for a in rs.resource.attributes] == [
        ("service.name", "svc")
    ]
    (ss,) = rs.scope_spans
    assert ss.scope.name == "my.lib"
    (span,) = ss.spans
    assert span.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
    assert span.span_id.hex() == "b7ad6b7169203331"
    assert span.parent_span_id.hex() == "00f067aa0ba902b7"
    assert span.name == "task <script>ünï ✓" and span.kind == 3
    assert span.start_time_unix_nano == 1_700_000_000_000_000_001
    assert span.end_time_unix_nano == 1_700_000_000_500_000_002
    assert span.status.code == 2 and span.status.message == "ValueError: bad"
    values = {a.key: a.value for a in span.attributes}
    assert values["s"].string_value == "text" and values["b"].bool_value is True
    assert values["i"].int_value == 2**40 and values["f"].double_value == 1.5
    assert [v.int_value for v in values["l"].array_value.values] == [1, 2]
    assert values["big"].string_value == str(2**70)  # beyond int64: its repr
    assert values["o"].string_value == "{'x': 1}"
    (event,) = span.events
    assert event.name == "retry" and event.attributes[0].value.int_value == 1
    (link,) = span.links
    assert link.trace_id.hex() == "1" * 32 and link.span_id.hex() == "2" * 16


def test_json_follows_the_otlp_json_mapping() -> None:
    data = json.loads(encode_json([full_span()], {"service.name": "svc"}))
    span = data["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert span["traceId"] == "0af7651916cd43dd8448eb211c80319c"
    assert span["startTimeUnixNano"] == "1700000000000000001"
    assert span["kind"] == 3 and span["status"] == {"code": 2, "message": "ValueError: bad"}
    attributes = {a["key"]: a["value"] for a in span["attributes"]}
    assert attributes["i"] == {"intValue": str(2**40)}
    assert attributes["l"] == {"arrayValue": {"values": [{"intValue": "1"}, {"intValue": "2"}]}}


async def test_http_json_is_posted_as_json(
    working: Collector, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", working.base)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    await run_with(tmp_path / "s.db", n=3)
    sent = [json.loads(body) for _, body in working.requests]
    spans = [
        s for r in sent for rs in r["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]
    ]
    assert sorted(s["name"] for s in spans) == ["flow many"] + ["task noop"] * 3


# -- configuration ---------------------------------------------------------------------------


def test_no_endpoint_no_export(monkeypatch: pytest.MonkeyPatch) -> None:
    assert from_environment() is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert from_environment() is None
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert from_environment() is None


def test_the_variables_are_read_as_the_specification_says() -> None:
    sender = from_environment(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
            "OTEL_EXPORTER_OTLP_HEADERS": "api-key=s%3Dcret,x-team=etl",
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "2500",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod",
        }
    )
    assert isinstance(sender, OtlpHttpSender)
    assert sender.target == "http://collector:4318/v1/traces"
    assert sender._headers["api-key"] == "s=cret"
    assert sender._timeout == 2.5
    assert sender.resource == {"deployment.environment": "prod", "service.name": "flowcore"}
    given = from_environment({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:1/traces"})
    assert given is not None and given.target == "http://c:1/traces"


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon", "is not supported"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon", "not a number of milliseconds"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd", "is not supported"),
        # Endpoints that are no collector's URL: refused at once, not warned of forever.
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4318", "write it as http://localhost:4318"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://c:1", "not an http:// or https:// URL"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://", "names no host"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://[::1", "is not a URL"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:99999", "is not a URL"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "c:4318/v1/traces", "http://c:4318/v1/traces"),
        # Headers that would fail or drop every request, said without their values.
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-team=etl,sk-s3cret", "entry 2 has no '='"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "api key=s3cret", "(named 'api key') is not a header"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "auth=s3cret%0d%0aX: 1", "(named 'auth') is not a header"),
    ],
)
def test_bad_variables_are_refused_naming_them(variable: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(problem)) as info:
        from_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:1", variable: value})
    assert variable in str(info.value) and "s3cret" not in str(info.value)


def test_grpc_without_its_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    with pytest.raises(ConfigurationError, match="opentelemetry-exporter-otlp-proto-grpc"):
        from_environment(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
        )


def test_an_sdk_exporter_that_raises_is_a_failed_batch() -> None:
    class Broken:
        def export(self, spans: Any) -> Any:
            raise RuntimeError("boom")

        def shutdown(self) -> None:
            pass

    with pytest.raises(ExportFailed, match="RuntimeError: boom"):
        SdkSender(Broken()).send([full_span()])


async def test_bad_tracing_options_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="export_catchup"):
        flowcore.Tracing(export_catchup=-1)


@pytest.mark.parametrize("collector", ["down"], indirect=True)
def test_a_collector_that_is_down_costs_a_refused_connect_only(collector: Collector) -> None:
    """Nothing listens: the first send fails at the connect, before the HTTP client is
    made (an import of a tenth of a second) or a batch is encoded."""
    sender = OtlpHttpSender(collector.endpoint)
    with pytest.raises(ExportFailed, match="ConnectError"):
        sender.send([full_span()])
    assert sender._client is None


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "   "},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "TRUE"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "false"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "x", "OTEL_TRACES_EXPORTER": " None "},
    ],
)
def test_the_engine_imports_the_shipper_exactly_when_the_variables_ask_to_export(
    environ: dict[str, str],
) -> None:
    """An engine checks ``export_requested`` before it imports the shipper (cold start): it
    must agree with ``from_environment`` on every environment, or spans would go unshipped."""
    assert export_requested(environ) == (from_environment(environ) is not None)
