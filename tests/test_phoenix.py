"""Export to a real OTLP receiver: Arize Phoenix, started for the test on loopback.

Phoenix lives in a virtual environment of its own (its dependency tree is large):
``.ci/phoenix.sh`` creates it and prints the path of its ``phoenix`` executable,
which this test reads from ``FLOWCORE_PHOENIX``; ``.ci/run`` sets that up, so the
test runs in CI. Without the variable the test is skipped.

The flow's spans are sent with OpenTelemetry's OTLP/HTTP exporter to Phoenix's
``/v1/traces``, into a project named by the standard ``OTEL_RESOURCE_ATTRIBUTES``
(Phoenix's ``openinference.project.name``), then read back with Phoenix's REST API
(``GET /v1/projects/{project}/spans``) and compared with the spans flowcore
persisted: same ids, same parents, names, statuses and attributes.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

import flowcore
from flowcore.records import SpanRecord
from flowcore.views.trace import read_trace

pytestmark = [pytest.mark.phoenix, pytest.mark.slow]

READY_TIMEOUT_S = 90.0  # Phoenix starts in ~15-20 s here (creating its schema), ~35 s under load
INGEST_TIMEOUT_S = 30.0  # Phoenix inserts received spans in the background, about every second
PROJECT = "flowcore-ci"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Phoenix:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@pytest.fixture
def phoenix(tmp_path: Path) -> Iterator[Phoenix]:
    executable = os.environ.get("FLOWCORE_PHOENIX")
    if not executable:
        pytest.skip(
            "FLOWCORE_PHOENIX is not set: it names the `phoenix` executable of a separate venv "
            "made by `bash .ci/phoenix.sh` (which prints it); .ci/run sets it up"
        )
    if not os.access(executable, os.X_OK):
        pytest.fail(f"FLOWCORE_PHOENIX={executable!r} is not an executable; run .ci/phoenix.sh")
    port, grpc_port = _free_port(), _free_port()
    workdir = tmp_path / "phoenix"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PHOENIX_"))}
    env.update(
        PHOENIX_HOST="127.0.0.1",
        PHOENIX_PORT=str(port),
        PHOENIX_GRPC_PORT=str(grpc_port),
        PHOENIX_WORKING_DIR=str(workdir),  # its SQLite database goes here
        PHOENIX_TELEMETRY_ENABLED="false",
        PHOENIX_ALLOW_EXTERNAL_RESOURCES="false",  # no requests to the internet of its own
        PHOENIX_ENABLE_MCP_SERVER="false",
        PHOENIX_DISABLE_AGENT_ASSISTANT="true",
    )
    log = tmp_path / "phoenix.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [executable, "serve"],
            env=env,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Phoenix(f"http://127.0.0.1:{port}", process, log)
    try:
        _wait_ready(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _wait_ready(server: Phoenix) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    with httpx.Client(timeout=2.0) as client:
        while True:
            if server.process.poll() is not None:
                pytest.fail(
                    f"phoenix exited with {server.process.returncode} while starting:\n"
                    + server.log_tail()
                )
            try:
                if client.get(f"{server.url}/healthz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"phoenix was not ready within {READY_TIMEOUT_S:.0f} s:\n" + server.log_tail()
                )
            time.sleep(0.25)


# -- the flow --------------------------------------------------------------------------------

ATTEMPTS: list[int] = []


@flowcore.task
async def fetch(page: int) -> list[int]:
    await asyncio.sleep(0.001)
    return list(range(page * 3, page * 3 + 3))


@flowcore.task
async def parse(page: int) -> int:
    return len(await fetch(page))  # a nested task call


@flowcore.task(retries=2, retry_delay=0)
async def flaky() -> str:
    ATTEMPTS.append(1)
    if len(ATTEMPTS) < 2:
        raise ConnectionError("collector hiccup")
    return "ok"


@flowcore.task
async def broken() -> None:
    raise ValueError("bad row")


@flowcore.task
def total(counts: list[int]) -> int:  # a sync task, in a worker thread
    return sum(counts)


@flowcore.flow
async def summarize(pages: int) -> int:
    return await total(list(await asyncio.gather(*(parse(p) for p in range(pages)))))


@flowcore.flow
async def ingest(pages: int = 4) -> int:
    counts = await asyncio.gather(*(parse(p) for p in range(pages)))
    mapped = await fetch.map(range(pages))
    await flaky()
    try:
        await broken()
    except ValueError:
        pass
    return sum(counts) + len(mapped) + await summarize(2)  # a subflow


# -- the test --------------------------------------------------------------------------------


def _phoenix_spans(server: Phoenix, trace_id: str, expected: int) -> list[dict[str, Any]]:
    """The trace's spans as Phoenix serves them, once it has ingested ``expected`` of them."""
    url = f"{server.url}/v1/projects/{PROJECT}/spans"
    deadline = time.monotonic() + INGEST_TIMEOUT_S
    spans: list[dict[str, Any]] = []
    with httpx.Client(timeout=10.0) as client:
        while True:
            spans, cursor = [], None
            status = 0
            while True:
                params: dict[str, Any] = {"trace_id": trace_id, "limit": 1000}
                if cursor:
                    params["cursor"] = cursor
                response = client.get(url, params=params)
                status = response.status_code
                if status != 200:  # 404 until the project's first span is in
                    break
                body = response.json()
                spans.extend(body["data"])
                cursor = body.get("next_cursor")
                if not cursor:
                    break
            if len(spans) >= expected:
                return spans
            if time.monotonic() > deadline:
                pytest.fail(
                    f"phoenix has {len(spans)} of {expected} spans after {INGEST_TIMEOUT_S:.0f} s "
                    f"(last status {status}):\n" + server.log_tail()
                )
            time.sleep(0.25)


async def _run_flow(
    endpoint: str,
) -> tuple[flowcore.FlowRunRecord, list[SpanRecord], flowcore.EngineStatistics]:
    exporter = OTLPSpanExporter(endpoint=endpoint, timeout=10)
    async with flowcore.Engine(
        store="memory", tracing=flowcore.Tracing(exporter=exporter)
    ) as engine:
        assert await ingest(4) == 12 + 4 + 6
        assert engine.last_run is not None
        run = engine.last_run
        await engine.recorder.flush()
        persisted = await read_trace(engine.store, run.id)
    # Closing the engine flushed the export.
    return run, persisted, engine.statistics()


@pytest.mark.timeout(300)
def test_phoenix_receives_the_flow_and_task_spans_as_a_tree(
    phoenix: Phoenix, monkeypatch: pytest.MonkeyPatch
) -> None:
    ATTEMPTS.clear()
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    # The standard way to add resource attributes; Phoenix files spans by this one.
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", f"openinference.project.name={PROJECT}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "flowcore-phoenix-test")

    run, persisted, stats = anyio.run(_run_flow, f"{phoenix.url}/v1/traces")
    assert stats.spans_dropped == 0, stats
    assert stats.spans_exported == len(persisted)

    # 4 parse + 4 nested fetch + 4 mapped fetch + flaky + broken + 2 parse + 2 fetch + total,
    # and the two flows.
    assert len(persisted) == 19 + 2
    assert run.trace_id is not None and run.span_id is not None
    received = _phoenix_spans(phoenix, run.trace_id, len(persisted))

    ours = {s.span_id: s for s in persisted}
    theirs = {s["context"]["span_id"]: s for s in received}
    assert set(theirs) == set(ours)
    for span_id, span in theirs.items():
        mine = ours[span_id]
        assert span["context"]["trace_id"] == run.trace_id
        assert span["name"] == mine.name
        assert span["parent_id"] == mine.parent_id, span["name"]
        assert span["status_code"] == mine.status
        for key in ("flowcore.run.id", "flowcore.task.name", "flowcore.flow.name"):
            if key in mine.attributes:
                assert span["attributes"][key] == mine.attributes[key]

    # The tree, as Phoenix has it: the flow at the root, tasks under it or under the
    # task that called them, the subflow under the flow.
    root = theirs[run.span_id]
    assert root["name"] == "flow ingest" and root["parent_id"] is None
    assert root["status_code"] == "OK"

    def children(span_id: str) -> list[str]:
        return sorted(s["name"] for s in received if s["parent_id"] == span_id)

    assert children(run.span_id) == sorted(
        ["task parse"] * 4 + ["task fetch"] * 4 + ["task flaky", "task broken", "flow summarize"]
    )
    for span in received:
        if span["name"] == "task parse":
            assert children(span["context"]["span_id"]) == ["task fetch"]
    (sub,) = [s for s in received if s["name"] == "flow summarize"]
    assert children(sub["context"]["span_id"]) == sorted(["task parse"] * 2 + ["task total"])

    (failed,) = [s for s in received if s["name"] == "task broken"]
    assert failed["status_code"] == "ERROR" and "bad row" in failed["status_message"]
    assert [e["name"] for e in failed["events"]] == ["exception"]
    (retried,) = [s for s in received if s["name"] == "task flaky"]
    assert [e["name"] for e in retried["events"]] == ["retry"]
    assert retried["attributes"]["flowcore.attempts"] == 2

    # Filed under the project the resource attribute names.
    with httpx.Client(timeout=10.0) as client:
        projects = client.get(f"{phoenix.url}/v1/projects").json()["data"]
    assert PROJECT in {p["name"] for p in projects}
