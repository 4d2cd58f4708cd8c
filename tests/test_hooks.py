"""State hooks on flows and tasks (``on_completion=...``), and ``flowcore.hooks.webhook``.

What is pinned here: which hooks fire for which end (every way a flow can fail fires
``on_failure``), what the event holds, that hooks run in order, shielded (an
``on_cancellation`` hook awaits while its run is being cancelled), sync ones in a
worker thread; that a hook that raises or times out is logged, left in the run's log
and on its span, and never changes the run's state; the webhook's retries against a
real local HTTP server; and the checks made at decoration.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.lowlevel
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import flowcore
import flowcore.hooks
from flowcore.cli import cli
from flowcore.engine.hooks import fire_crashed
from flowcore.hooks import HOOKS_LOGGER, HookEvent, HookTimeout, WebhookError, webhook
from flowcore.records import FlowRunRecord, LogRecord, WriteBatch

pytestmark = pytest.mark.anyio

State = flowcore.State


class Recorder:
    """Hooks that note what they were called with: ``(label, event)``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, HookEvent]] = []
        self.threads: list[int] = []

    def sync(self, label: str) -> Callable[[HookEvent], None]:
        def hook(event: HookEvent) -> None:
            self.threads.append(threading.get_ident())
            self.calls.append((label, event))

        hook.__qualname__ = f"sync_{label}"
        return hook

    def async_(self, label: str) -> Callable[[HookEvent], Any]:
        async def hook(event: HookEvent) -> None:
            await anyio.lowlevel.checkpoint()  # on the loop (shielded when cancelled)
            self.calls.append((label, event))

        hook.__qualname__ = f"async_{label}"
        return hook

    @property
    def labels(self) -> list[str]:
        return [label for label, _ in self.calls]

    def event(self, label: str) -> HookEvent:
        (found,) = [event for name, event in self.calls if name == label]
        return found


async def hook_lines(engine: flowcore.Engine, run_id: str) -> list[LogRecord]:
    await engine.recorder.flush()
    return [line for line in await engine.store.list_logs(run_id) if line.logger == HOOKS_LOGGER]


# -- flow hooks ---------------------------------------------------------------------------------


async def test_flow_completion_hooks_sync_and_async_run_in_order_with_the_terminal_record() -> None:
    seen = Recorder()

    @flowcore.flow(on_completion=[seen.sync("first"), seen.async_("second")])
    async def etl(pages: int) -> int:
        return pages * 2

    async with flowcore.Engine("memory") as engine:
        loop_thread = threading.get_ident()
        assert await etl(pages=3) == 6
        assert engine.last_run is not None
        run = engine.last_run
    assert seen.labels == ["first", "second"]
    assert seen.threads and seen.threads[0] != loop_thread  # a sync hook: a worker thread
    event = seen.event("first")
    assert event.kind == "completion" and event.state is State.COMPLETED
    assert event.task_run is None and event.exception is None and event.retry_delay is None
    assert event.run_id == run.id and event.name == "etl"
    # The record as it ended (a copy: changing it changes nothing recorded).
    assert event.flow_run.state is State.COMPLETED and event.flow_run.ended is not None
    assert event.flow_run is not run
    data = event.to_dict()
    assert data["event"] == "completion" and data["state"] == "Completed"
    assert data["flow_run"]["parameters"] == {"pages": 3}
    assert data["flow_run"]["id"] == run.id and data["task_run"] is None
    json.dumps(data, allow_nan=False)  # JSON as it is


async def test_flow_failure_hook_gets_the_error_and_the_failed_record() -> None:
    seen = Recorder()

    @flowcore.flow(on_failure=seen.async_("failed"), on_completion=seen.sync("completed"))
    async def etl() -> None:
        raise ValueError("bad row")

    async with flowcore.Engine("memory"):
        with pytest.raises(ValueError, match="bad row"):
            await etl()
    assert seen.labels == ["failed"]
    event = seen.event("failed")
    assert event.kind == "failure" and event.state is State.FAILED
    assert isinstance(event.exception, ValueError)
    assert event.flow_run.error_type == "ValueError" and event.flow_run.state is State.FAILED
    assert event.to_dict()["exception"] == {"type": "ValueError", "message": "bad row"}


async def test_flow_on_failure_fires_for_a_timeout() -> None:
    seen = Recorder()
    never = anyio.Event()

    @flowcore.flow(timeout=0.05, on_failure=seen.sync("failed"))
    async def slow() -> None:
        await never.wait()

    async with flowcore.Engine("memory"):
        with pytest.raises(flowcore.FlowTimeout):
            await slow()
    event = seen.event("failed")
    assert event.state is State.TIMED_OUT and isinstance(event.exception, flowcore.FlowTimeout)


async def test_flow_on_failure_fires_for_invalid_parameters() -> None:
    seen = Recorder()

    @flowcore.flow(on_failure=seen.sync("failed"))
    async def ingest(pages: int) -> None:
        raise AssertionError("never runs")

    async with flowcore.Engine("memory") as engine:
        with pytest.raises(flowcore.ParameterError):
            await ingest(pages="many")  # type: ignore[arg-type]
        assert engine.last_run is not None
        assert engine.last_run.state is State.FAILED
    event = seen.event("failed")
    assert isinstance(event.exception, flowcore.ParameterError)
    assert event.flow_run.error_type == "flowcore.ParameterError"
    assert event.to_dict()["flow_run"]["parameters"] == {"pages": "many"}


async def test_a_subflow_given_a_failed_future_is_a_run_recorded_failed_and_fires_on_failure() -> (
    None
):
    # Regression: UpstreamFailed was raised "before any run is made", so the subflow's
    # failure was recorded nowhere and its on_failure hooks never fired.
    seen = Recorder()

    @flowcore.task
    async def broken() -> int:
        raise ValueError("no")

    @flowcore.flow(on_failure=seen.sync("failed"))
    async def total(values: list[int]) -> int:
        raise AssertionError("never runs")

    @flowcore.flow
    async def parent() -> None:
        bad = broken.submit()
        with pytest.raises(flowcore.UpstreamFailed, match="flow 'total' was not run"):
            await total([bad])  # type: ignore[list-item]
        assert isinstance(bad.exception(), ValueError)

    async with flowcore.Engine("memory") as engine:
        await parent()
        assert engine.last_run is not None
        (child,) = await engine.store.child_runs(engine.last_run.id)
    assert child.name == "total" and child.state is State.FAILED
    assert child.error_type == "flowcore.UpstreamFailed" and child.upstream == [0]
    assert child.task_count == 0  # its body never ran
    event = seen.event("failed")
    assert isinstance(event.exception, flowcore.UpstreamFailed)
    assert event.flow_run.id == child.id


async def test_on_cancellation_runs_while_the_run_is_being_cancelled() -> None:
    seen = Recorder()
    started = anyio.Event()

    @flowcore.task(on_cancellation=seen.async_("task"))
    async def wait_forever() -> None:
        started.set()
        await anyio.sleep_forever()

    # Async hooks await (a checkpoint) inside the cancelled run: only a shielded hook
    # gets past it.
    @flowcore.flow(on_cancellation=[seen.async_("flow"), seen.sync("flow-sync")])
    async def etl() -> None:
        await wait_forever()

    async with flowcore.Engine("memory") as engine:
        async with anyio.create_task_group() as tg:
            tg.start_soon(etl)
            await started.wait()
            tg.cancel_scope.cancel()
        assert engine.last_run is not None
        assert engine.last_run.state is State.CANCELLED
    assert seen.labels == ["task", "flow", "flow-sync"]  # the task run ends first
    assert seen.event("flow").state is State.CANCELLED
    assert seen.event("flow").exception is None  # a cancellation, not an error
    task_event = seen.event("task")
    assert task_event.task_run is not None and task_event.task_run.state is State.CANCELLED


async def test_flow_on_retry_fires_before_each_backoff_with_its_delay() -> None:
    seen = Recorder()
    attempts = 0

    @flowcore.flow(retries=2, retry_delay=0.0, on_retry=seen.sync("retry"))
    async def flaky() -> int:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionError(f"attempt {attempts}")
        return attempts

    async with flowcore.Engine("memory"):
        assert await flaky() == 3
    assert seen.labels == ["retry", "retry"]
    first = seen.calls[0][1]
    assert first.kind == "retry" and first.state is State.RETRYING and first.retry_delay == 0.0
    assert str(first.exception) == "attempt 1"
    assert first.to_dict()["retry_delay"] == 0.0


# -- task hooks ---------------------------------------------------------------------------------


async def test_task_hooks_each_kind_per_task_run() -> None:
    seen = Recorder()
    calls: dict[int, int] = {}

    @flowcore.task(
        retries=1,
        on_completion=seen.sync("completed"),
        on_failure=seen.async_("failed"),
        on_retry=seen.async_("retry"),
    )
    async def work(n: int) -> int:
        calls[n] = calls.get(n, 0) + 1
        if n == 2 and calls[n] == 1:
            raise ConnectionError("flaky")  # retried once, then completes
        if n == 3:
            raise ValueError("always")
        return n

    @flowcore.flow
    async def etl() -> list[int]:
        done = [await work(1), await work(2)]
        with pytest.raises(ValueError, match="always"):
            await work(3)
        return done

    async with flowcore.Engine("memory"):
        assert await etl() == [1, 2]
    # work(3) is retried once too (retries=1), then fails.
    assert seen.labels == ["completed", "retry", "completed", "retry", "failed"]
    retry = seen.calls[1][1]
    assert retry.task_run is not None and retry.task_run.seq == 1
    assert retry.state is State.RETRYING and retry.retry_delay == 0.0
    failed = seen.event("failed")
    assert failed.task_run is not None and failed.task_run.state is State.FAILED
    assert failed.task_run.error_message == "always" and isinstance(failed.exception, ValueError)
    assert failed.flow_run.state is State.RUNNING  # the flow run goes on
    data = failed.to_dict()
    assert data["task_run"]["seq"] == 2 and data["task_run"]["name"] == "work"
    assert data["name"] == "work"


async def test_a_cached_task_run_fires_on_completion_and_upstream_failed_fires_on_failure() -> None:
    seen = Recorder()

    @flowcore.task(cache=True, on_completion=seen.sync("completed"))
    async def lookup(key: str) -> str:
        return key.upper()

    @flowcore.task
    async def broken() -> int:
        raise ValueError("no")

    @flowcore.task(on_failure=seen.sync("failed"))
    async def downstream(value: int) -> int:
        return value

    @flowcore.flow
    async def etl() -> None:
        await lookup("a")
        await lookup("a")
        bad = broken.submit()
        later = downstream.submit(cast(int, bad))  # a future stands for its result
        with pytest.raises(flowcore.UpstreamFailed):
            await later
        assert isinstance(bad.exception(), ValueError)

    async with flowcore.Engine("memory"):
        await etl()
    completed = [event for label, event in seen.calls if label == "completed"]
    assert [event.state for event in completed] == [State.COMPLETED, State.CACHED]
    assert all(event.kind == "completion" for event in completed)
    failed = seen.event("failed")
    assert failed.state is State.UPSTREAM_FAILED and failed.kind == "failure"
    assert isinstance(failed.exception, flowcore.UpstreamFailed)


async def test_task_hooks_outside_a_flow_and_with_options() -> None:
    seen = Recorder()

    @flowcore.task(on_completion=seen.sync("first"))
    async def double(n: int) -> int:
        return n * 2

    replaced = double.with_options(on_completion=[seen.sync("second")])
    kept = double.with_options(retries=2)
    dropped = double.with_options(on_completion=None)
    assert kept.options.on_completion == double.options.on_completion
    assert dropped.hooks is None

    async with flowcore.Engine("memory"):
        assert await double(1) == 2  # a run of its own
        assert await replaced(2) == 4
        assert await kept(3) == 6
        assert await dropped(4) == 8
    assert seen.labels == ["first", "second", "first"]


async def test_a_task_without_hooks_carries_none() -> None:
    # The hot path's one check: a task with no hooks has ``hooks is None``.
    @flowcore.task
    async def plain() -> None: ...

    assert plain.hooks is None
    assert plain.options.hooks.of("failure") == ()


async def test_flow_with_options_keeps_replaces_and_drops_hooks() -> None:
    seen = Recorder()

    @flowcore.flow(on_completion=seen.sync("first"), hook_timeout=5)
    async def etl() -> None: ...

    assert etl.hooks is not None and etl.hooks.timeout == 5.0
    renamed = etl.with_options(name="etl-2")
    assert renamed.hooks == etl.hooks
    other = etl.with_options(on_completion=seen.sync("second"), hook_timeout=1)
    assert other.hooks is not None and other.hooks.timeout == 1.0
    assert etl.with_options(on_completion=None).hooks is None
    async with flowcore.Engine("memory"):
        await renamed()
        await other()
    assert seen.labels == ["first", "second"]
    with pytest.raises(flowcore.ConfigurationError, match="on_failure"):
        etl.with_options(on_failure=42)  # type: ignore[arg-type]
    # A timeout given before any hook is kept for the hooks added later.
    timed = etl.with_options(on_completion=None, hook_timeout=2).with_options(on_failure=print)
    assert timed.hooks is not None and timed.hooks.timeout == 2.0

    @flowcore.flow(hook_timeout=3)
    async def bare() -> None: ...

    assert bare.hooks is None
    later = bare.with_options(on_failure=print).hooks
    assert later is not None and later.timeout == 3.0


# -- failing hooks --------------------------------------------------------------------------------


async def test_a_failing_hook_leaves_the_state_and_is_logged_recorded_and_a_span_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen = Recorder()

    def explode(event: HookEvent) -> None:
        raise RuntimeError("pager down \x1b[31m")

    @flowcore.task(on_completion=explode)
    async def step() -> int:
        return 1

    @flowcore.flow(on_completion=[explode, seen.sync("after")])
    async def etl() -> int:
        return await step()

    caplog.set_level(logging.WARNING, logger=HOOKS_LOGGER)
    async with flowcore.Engine("memory") as engine:
        assert await etl() == 1  # nothing raised into the flow
        assert engine.last_run is not None
        run = engine.last_run
        lines = await hook_lines(engine, run.id)
        (task_run,) = await engine.store.list_task_runs(run.id)
        assert run.trace_id is not None
        spans = await engine.store.list_spans(run.trace_id)
    assert run.state is State.COMPLETED and task_run.state is State.COMPLETED
    assert seen.labels == ["after"]  # a failed hook does not stop the next one
    # The Python logger: a WARNING each, with the traceback.
    warnings = [r for r in caplog.records if r.name == HOOKS_LOGGER]
    assert [r.levelno for r in warnings] == [logging.WARNING, logging.WARNING]
    # The traceback is in the message, escaped: the line goes to a terminal as it is.
    assert all("Traceback" in r.getMessage() for r in warnings)
    assert all("pager down \\x1b[31m" in r.getMessage() for r in warnings)
    assert not any("\x1b" in r.getMessage() for r in warnings)
    # The run's log: an ERROR line each, the task run's with its seq.
    assert [(line.level, line.seq) for line in lines] == [(logging.ERROR, 0), (logging.ERROR, None)]
    assert lines[0].message.startswith("completion hook ")
    assert ".explode of task run" in lines[0].message
    assert "RuntimeError: pager down" in lines[1].message
    assert "Traceback" in lines[1].message  # the traceback follows the first line
    # Span events (flowcore's own spans: both on the flow run's span).
    (flow_span,) = [s for s in spans if s.name == "flow etl"]
    events = [attrs for name, _, attrs in flow_span.events if name == "hook failed"]
    assert [e.get("flowcore.task_run.id") for e in events] == [f"{run.id}.0", None]
    assert events[1]["exception.type"] == "RuntimeError"
    assert flow_span.status == "OK"


async def test_with_an_sdk_provider_a_task_hook_failure_is_an_event_of_the_task_span() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    def explode(event: HookEvent) -> None:
        raise RuntimeError("hook down")

    @flowcore.task(on_failure=explode)
    async def step() -> None:
        raise ValueError("step down")

    @flowcore.flow
    async def etl() -> None:
        with pytest.raises(ValueError):
            await step()

    async with flowcore.Engine("memory", tracing=flowcore.Tracing(provider=provider)):
        await etl()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    (event,) = [e for e in spans["task step"].events if e.name == "hook failed"]
    assert event.attributes is not None
    assert event.attributes["flowcore.hook.kind"] == "failure"
    assert event.attributes["exception.message"] == "hook down"
    assert not [e for e in spans["flow etl"].events if e.name == "hook failed"]


async def test_a_hook_that_times_out_is_abandoned_and_recorded() -> None:
    never = threading.Event()
    also_never = anyio.Event()
    seen = Recorder()

    def blocks(event: HookEvent) -> None:
        never.wait()  # a sync hook: its thread is abandoned at the deadline

    async def hangs(event: HookEvent) -> None:
        await also_never.wait()

    @flowcore.flow(on_failure=[blocks, hangs, seen.sync("last")], hook_timeout=0.05)
    async def etl() -> None:
        raise ValueError("failed")

    try:
        async with flowcore.Engine("memory") as engine:
            with pytest.raises(ValueError, match="failed"):
                await etl()
            assert engine.last_run is not None
            run = engine.last_run
            lines = await hook_lines(engine, run.id)
    finally:
        never.set()  # let the abandoned thread end
    assert run.state is State.FAILED and run.error_type == "ValueError"
    assert seen.labels == ["last"]
    assert len(lines) == 2
    assert all("hook_timeout of 0.05 s" in line.message for line in lines)
    assert lines[0].message.startswith("failure hook test_a_hook_that_times_out")
    assert ".blocks of flow run" in lines[0].message and ".hangs of" in lines[1].message


async def test_a_hooks_keyboard_interrupt_is_not_swallowed_and_the_run_stays_recorded() -> None:
    def interrupt(event: HookEvent) -> None:
        raise KeyboardInterrupt

    @flowcore.flow(on_completion=interrupt)
    async def etl() -> int:
        return 1

    async with flowcore.Engine("memory") as engine:
        with pytest.raises(KeyboardInterrupt):
            await etl()
        assert engine.last_run is not None
        (stored,) = await engine.store.list_runs()
    assert stored.state is State.COMPLETED  # committed before the hook ran


async def test_hook_logging_goes_to_the_run_log_of_its_task_run() -> None:
    def note(event: HookEvent) -> None:
        logging.getLogger("myapp.alerts").warning("task %s done", event.name)

    @flowcore.task(on_completion=note)
    async def step() -> None: ...

    @flowcore.flow
    async def etl() -> None:
        await step()

    async with flowcore.Engine("memory") as engine:
        await etl()
        assert engine.last_run is not None
        await engine.recorder.flush()
        lines = await engine.store.list_logs(engine.last_run.id)
    assert [(line.logger, line.seq, line.message) for line in lines] == [
        ("myapp.alerts", 0, "task step done")
    ]


# -- crashes found by serve -------------------------------------------------------------------


async def test_fire_crashed_runs_on_crashed_then_on_failure_and_records_failures() -> None:
    seen = Recorder()

    def explode(event: HookEvent) -> None:
        raise RuntimeError("no pager")

    @flowcore.flow(on_crashed=[seen.sync("crashed"), explode], on_failure=seen.async_("failed"))
    async def etl() -> None: ...

    record = FlowRunRecord("run-crashed-1", "etl", State.CRASHED, 1.0, started=1.0, ended=40.0)
    async with flowcore.Engine("memory") as engine:
        await engine.store.write(WriteBatch(flow_runs=[record]))
        await fire_crashed(etl, record, engine)
        lines = await hook_lines(engine, record.id)
        running = FlowRunRecord("run-live", "etl", State.RUNNING, 1.0)
        with pytest.raises(ValueError, match="Crashed"):
            await fire_crashed(etl, running, engine)
    assert seen.labels == ["crashed", "failed"]
    assert all(e.kind == "crashed" and e.state is State.CRASHED for _, e in seen.calls)
    assert seen.event("failed").flow_run.id == "run-crashed-1"
    (line,) = lines
    assert line.message.startswith("crashed hook ") and ".explode of flow run" in line.message
    assert "RuntimeError: no pager" in line.message


# -- flowcore runs show ---------------------------------------------------------------------


def test_runs_show_lists_the_failed_hooks_escaped(flowcore_home: Path) -> None:
    def explode(event: HookEvent) -> None:
        raise RuntimeError("bad \x1b[2J\u202e news")

    @flowcore.flow(on_completion=explode)
    async def etl() -> int:
        return 1

    @flowcore.flow
    async def quiet() -> int:
        return 2

    assert flowcore.run(etl) == 1
    assert flowcore.run(quiet) == 2
    runner = CliRunner()
    listed = json.loads(runner.invoke(cli, ["runs", "ls", "--json"]).output)
    ids = {run["name"]: run["id"] for run in listed}
    shown = runner.invoke(cli, ["runs", "show", ids["etl"]], catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    assert "failed hooks (1):" in shown.output
    assert "completion hook test_runs_show" in shown.output
    assert "bad \\x1b[2J\\u202e news" in shown.output  # escaped: it cannot act
    assert "\x1b[2J" not in shown.output and "\u202e" not in shown.output
    assert "Traceback" not in shown.output  # that is for runs logs
    data = json.loads(runner.invoke(cli, ["runs", "show", ids["etl"], "--json"]).output)
    assert data["failed_hooks_total"] == 1
    assert "bad \x1b[2J\u202e news" in data["failed_hooks"][0]["message"]
    quiet_shown = runner.invoke(cli, ["runs", "show", ids["quiet"]]).output
    assert "failed hooks" not in quiet_shown


# -- webhook -----------------------------------------------------------------------------------


class HttpServer:
    """A tiny HTTP/1.1 server on 127.0.0.1 that answers ``statuses`` in turn (then 200)
    and keeps each request's headers and body."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                request_line, *header_lines = head.split("\r\n")
                headers = {}
                for line in header_lines:
                    if line:
                        key, _, value = line.partition(":")
                        headers[key.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append((request_line, headers, body))
                status = self.statuses.pop(0) if self.statuses else 200
                writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: 4\r\n\r\nbusy".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def http_server() -> AsyncIterator[Callable[[list[int]], Any]]:
    servers: list[asyncio.Server] = []

    async def start(statuses: list[int]) -> HttpServer:
        server = HttpServer(statuses)
        listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        server.port = listening.sockets[0].getsockname()[1]
        servers.append(listening)
        return server

    yield start
    for listening in servers:
        listening.close()
        await listening.wait_closed()


async def test_webhook_retries_a_503_and_posts_the_event_as_json(
    http_server: Callable[[list[int]], Any],
) -> None:
    server: HttpServer = await http_server([503])
    hook = webhook(
        f"http://127.0.0.1:{server.port}/hooks/secret-token",
        headers={"authorization": "Bearer t"},
        backoff=0.01,
    )
    assert repr(hook) == f"webhook(http://127.0.0.1:{server.port}/…)"  # no secret path

    @flowcore.flow(on_failure=hook)
    async def etl(pages: int) -> None:
        raise ValueError("bad \udcff row")

    async with flowcore.Engine("memory") as engine:
        with pytest.raises(ValueError):
            await etl(pages=2)
        assert engine.last_run is not None
        run = engine.last_run
        lines = await hook_lines(engine, run.id)
    assert lines == []  # delivered on the second try
    assert len(server.requests) == 2  # the 503, then the 200
    request_line, headers, body = server.requests[1]
    assert request_line.startswith("POST /hooks/secret-token ")
    assert headers["content-type"] == "application/json"
    assert headers["authorization"] == "Bearer t"
    posted = json.loads(body)
    assert server.requests[0][2] == body
    assert posted["event"] == "failure" and posted["state"] == "Failed"
    assert posted["flow_run"]["id"] == run.id and posted["flow_run"]["parameters"] == {"pages": 2}
    assert posted["exception"] == {"type": "ValueError", "message": "bad \\xff row"}


async def test_webhook_to_a_closed_port_is_a_failed_hook_and_the_run_is_unaffected() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nobody listens there now: every attempt is refused.
    hook = webhook(f"http://127.0.0.1:{port}/", retries=1, backoff=0)

    @flowcore.flow(on_completion=hook)
    async def etl() -> int:
        return 7

    async with flowcore.Engine("memory") as engine:
        assert await etl() == 7
        assert engine.last_run is not None
        run = engine.last_run
        lines = await hook_lines(engine, run.id)
    assert run.state is State.COMPLETED
    (line,) = lines
    assert "WebhookError" in line.message and "after 2 attempts" in line.message
    assert f"webhook(http://127.0.0.1:{port})" in line.message


async def test_webhook_does_not_retry_a_4xx(http_server: Callable[[list[int]], Any]) -> None:
    server: HttpServer = await http_server([404])
    hook = webhook(f"http://127.0.0.1:{server.port}/x", backoff=0)
    event = HookEvent(
        "completion", FlowRunRecord("r1", "etl", State.COMPLETED, 0.0), State.COMPLETED
    )
    with pytest.raises(WebhookError, match="HTTP 404"):
        await hook(event)
    assert len(server.requests) == 1


def test_webhook_options_are_checked() -> None:
    with pytest.raises(flowcore.ConfigurationError) as caught:
        webhook("ftp://example.com", timeout=0, retries=-1, headers={"a": 1})  # type: ignore[dict-item]
    message = str(caught.value)
    for part in ("`url` must be an http", "`timeout`", "`retries`", "`headers`"):
        assert part in message


# -- the event's JSON ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF)))
def test_an_event_to_dict_is_valid_json_whatever_the_error_message_holds(text: str) -> None:
    record = FlowRunRecord(
        "r1", f"etl{text}", State.FAILED, 0.0, error_message=text, error_type="ValueError"
    )
    event = HookEvent("failure", record, State.FAILED, exception=ValueError(text), time=0.0)
    data = event.to_dict()
    encoded = json.dumps(data, ensure_ascii=False, allow_nan=False).encode("utf-8")
    decoded = json.loads(encoded)
    assert decoded == data
    assert decoded["time"] == "1970-01-01T00:00:00Z"


def test_an_event_with_surrogates_and_control_characters() -> None:
    message = "caf\udce9 \x00\x1b[31m\u202e"
    event = HookEvent(
        "failure",
        FlowRunRecord("r1", "etl", State.FAILED, 0.0, error_message=message),
        State.FAILED,
        exception=RuntimeError(message),
    )
    data = event.to_dict()
    assert data["exception"]["message"] == "caf\\xe9 \x00\x1b[31m\u202e"
    assert data["flow_run"]["error_message"] == "caf\\xe9 \x00\x1b[31m\u202e"
    text = json.dumps(data)  # control characters are \\u-escaped by JSON itself
    assert "\x1b" not in text and json.loads(text) == data


# -- checks at decoration -----------------------------------------------------------------------


async def test_hook_options_are_checked_at_decoration() -> None:
    async def notify(event: HookEvent) -> None: ...

    def two(a: int, b: int) -> None: ...

    bad: dict[str, Any] = {
        "on_failure": [notify(cast(HookEvent, None))],  # called: a coroutine object
        "on_completion": 42,
        "on_retry": two,
        "hook_timeout": 0,
    }
    with pytest.raises(flowcore.ConfigurationError) as caught:

        @flowcore.flow(**bad)
        async def etl() -> None: ...

    message = str(caught.value)
    assert "invalid options for flow" in message
    assert "got a coroutine object" in message and "on_failure=" in message
    assert "`on_completion` takes a function or a list of functions" in message
    assert "cannot be called with one argument" in message
    assert "`hook_timeout` must be a number of seconds > 0" in message

    with pytest.raises(flowcore.ConfigurationError, match="`on_crashed` is for flows"):

        @flowcore.task(on_crashed=notify)
        async def step() -> None: ...

    with pytest.raises(flowcore.ConfigurationError, match="generator function"):

        @flowcore.task(on_failure=_generator)
        async def other() -> None: ...


def _generator(event: HookEvent) -> Any:
    yield event


def test_hook_timeout_is_a_flowcore_timeout() -> None:
    assert issubclass(HookTimeout, TimeoutError) and issubclass(HookTimeout, flowcore.FlowcoreError)
    assert flowcore.hooks.event_kind(State.UPSTREAM_FAILED) == "failure"
