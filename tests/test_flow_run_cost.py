"""A cheap flow run (issue 18): what a flow run writes and makes, and that it still says
what it said before.

- run ids: the first 8 characters are a clock (see ``flowcore.ids.new_run_id``), so the
  rows of runs made together are neighbours in the store's B-trees, while the short id
  people see stays distinct;
- a flow run's record is its span: no span row is written for it, and readers and the
  shipper rebuild the same span from the record;
- a young run is written whole, once: the commits of other runs' ends leave a run made
  less than ``flush_interval`` ago (and its task runs) for later, unless something
  written refers to it, or a strict commit or an explicit flush asks for everything.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import time
import uuid
import warnings
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

import flowcore
from flowcore import MemoryStore, State
from flowcore.ids import new_run_id
from flowcore.records import SpanRecord, WriteBatch
from flowcore.telemetry import SpanShipper, flow_span
from flowcore.views.trace import read_trace

pytestmark = pytest.mark.anyio


# -- run ids ---------------------------------------------------------------------------------


def _descents(ids: list[str]) -> int:
    return sum(1 for a, b in itertools.pairwise(ids) if b < a)


def test_run_ids_made_together_sort_together_and_their_short_ids_differ() -> None:
    ids = [new_run_id() for _ in range(20_000)]
    # Neighbours in a B-tree: in the order they were made (the clock turns every 71.6
    # minutes: at most once while making them).
    assert _descents(ids) <= 1
    # The 8 characters people see (`flowcore runs show 3f2a9c1b`) tell them apart.
    assert len({i[:8] for i in ids}) == len(ids)
    # Still 32 hex characters, a valid UUID (version 8, RFC 9562 variant), unique.
    assert all(len(i) == 32 and uuid.UUID(hex=i).hex == i for i in ids[:100])
    assert {uuid.UUID(hex=i).version for i in ids[:100]} == {8}
    assert {uuid.UUID(hex=i).variant for i in ids[:100]} == {uuid.RFC_4122}
    assert len({i[8:] for i in ids}) == len(ids)


def test_run_ids_never_repeat_their_clock_when_the_wall_clock_stands_still_or_goes_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [time.time_ns()]
    monkeypatch.setattr(time, "time_ns", lambda: now[0])
    standing = [new_run_id() for _ in range(100)]
    now[0] -= 3_600 * 10**9  # an hour back (a clock corrected by NTP)
    back = [new_run_id() for _ in range(100)]
    clocks = [i[:8] for i in standing + back]
    assert len(set(clocks)) == 200 and _descents(clocks) <= 1


def _child_ids(conn: Any) -> None:
    conn.send([new_run_id() for _ in range(4)])
    conn.close()


def test_a_forked_process_makes_other_run_ids() -> None:
    # The clock part may not differ (same microsecond count): the random part must.
    ctx = multiprocessing.get_context("fork")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        parent_end, child_end = ctx.Pipe()
        proc = ctx.Process(target=_child_ids, args=(child_end,))
        proc.start()
        theirs = parent_end.recv()
        proc.join(30)
    mine = [new_run_id() for _ in range(4)]
    assert not {i[8:] for i in theirs} & {i[8:] for i in mine}


@flowcore.flow
async def quick(i: int) -> int:
    return i


async def test_the_short_id_finds_each_of_many_runs_made_at_once(tmp_path: Any) -> None:
    async with flowcore.Engine(tmp_path / "runs.db") as engine:
        await asyncio.gather(*(quick(i) for i in range(300)))
        runs = await engine.store.list_runs(limit=1000)
        assert len(runs) == 300
        for run in runs[::10]:
            assert (await engine.store.get_run(run.id[:8])).id == run.id


# -- a flow run's record is its span ---------------------------------------------------------


@flowcore.task
async def add(a: int, b: int) -> int:
    return a + b


@flowcore.flow
async def adds() -> int:
    return await add(1, 2)


async def test_a_flow_run_writes_no_span_row_and_reads_back_its_span(tmp_path: Any) -> None:
    async with flowcore.Engine(tmp_path / "runs.db") as engine:
        assert await adds() == 3
        run = await engine.store.get_run(engine.last_run.id if engine.last_run else "")
        assert run.trace_id is not None and run.span_id is not None
        assert await engine.store.list_spans(run.trace_id) == []  # no row of its own
        assert engine.statistics().spans_written == 0
        spans = {s.name: s for s in await read_trace(engine.store, run.id)}
    flow, task = spans["flow adds"], spans["task add"]
    assert (flow.trace_id, flow.span_id, flow.parent_id) == (run.trace_id, run.span_id, None)
    assert flow.status == "OK" and flow.run_id == run.id and flow.kind == "INTERNAL"
    assert flow.attributes == {
        "flowcore.flow.name": "adds",
        "flowcore.run.id": run.id,
        "flowcore.run.kind": "flow",
        "flowcore.state": "Completed",
        "flowcore.task_count": 1,
    }
    assert flow.start <= task.start and task.end <= flow.end
    assert task.parent_id == flow.span_id


def _sdk() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.mark.parametrize("ending", ["completed", "failed", "timed out", "cancelled"])
async def test_a_rebuilt_flow_span_says_what_the_span_made_as_it_ran_says(ending: str) -> None:
    """flowcore's own spans against the same run's SDK span (an application provider):
    name, status, status message, attributes and events, for each way a run ends."""

    @flowcore.flow(timeout=0.05 if ending == "timed out" else None)
    async def ends() -> None:
        if ending == "failed":
            raise ValueError("bad input \u00e9")
        if ending == "timed out":
            await anyio.sleep_forever()
        if ending == "cancelled":
            raise anyio.get_cancelled_exc_class()()

    def shape(name: str, status: str, message: str | None, attrs: Any, events: Any) -> Any:
        # The run ids differ (two runs); the SDK path tags its spans with the run id
        # for its persisting processor (flowcore.run_id) as it always did.
        attributes = {k: v for k, v in attrs.items() if k != "flowcore.run_id"}
        attributes["flowcore.run.id"] = "<run>"
        shown = []
        for event, values in events:
            values = {k: v for k, v in values.items() if k != "exception.stacktrace"}
            if "exception.escaped" in values:  # the SDK sets it as text, "True"
                values["exception.escaped"] = str(values["exception.escaped"])
            if "exception.type" in values:
                # The SDK names the error by its class; flowcore's own spans (before and
                # now) by the type as recorded (module-qualified outside builtins).
                values["exception.type"] = values["exception.type"].rpartition(".")[2]
            shown.append((event, values))
        return name, status, message, attributes, shown

    provider, exporter = _sdk()
    own: SpanRecord | None = None
    for tracing in (flowcore.Tracing(provider=provider), True):
        async with flowcore.Engine("memory", tracing=tracing) as engine:
            if ending == "completed":
                await ends()
            else:
                with pytest.raises(BaseException):  # noqa: B017 - each ending raises its own
                    await ends()
            assert engine.last_run is not None
            if tracing is True:
                (own,) = await read_trace(engine.store, engine.last_run.id)
    (sdk,) = exporter.get_finished_spans()
    assert own is not None
    sdk_view = shape(
        sdk.name, sdk.status.status_code.name, sdk.status.description,
        dict(sdk.attributes or {}), [(e.name, dict(e.attributes or {})) for e in sdk.events],
    )  # fmt: skip
    own_view = shape(
        own.name, own.status, own.status_message, own.attributes,
        [(n, dict(a)) for n, _, a in own.events],
    )  # fmt: skip
    assert own_view == sdk_view
    assert (own.status == "ERROR") is (ending in ("failed", "timed out"))


async def test_span_rows_of_older_runs_still_read_back_and_are_exported_once() -> None:
    """Runs recorded before a flow run's record was its span have a row for it: the row
    is what readers and the shipper take, never both it and the rebuilt span."""
    async with flowcore.Engine("memory") as engine:
        assert await adds() == 3
        assert engine.last_run is not None
        run = await engine.store.get_run(engine.last_run.id)
        row = flow_span(run)
        assert row is not None
        row.attributes["written.by"] = "an older flowcore"
        await engine.store.write(WriteBatch(spans=[row]))
        flows = [s for s in await read_trace(engine.store, run.id) if s.name == "flow adds"]
        assert [s.attributes.get("written.by") for s in flows] == ["an older flowcore"]
        exporter = InMemorySpanExporter()
        shipper = SpanShipper(engine.store, flowcore.telemetry.SdkSender(exporter))
        assert await shipper.ship_run(run) == 2  # its flow span, its task span
    exported = [s for s in exporter.get_finished_spans() if s.name == "flow adds"]
    assert [dict(s.attributes or {}).get("written.by") for s in exported] == ["an older flowcore"]


async def test_the_exporter_gets_the_rebuilt_flow_span() -> None:
    exporter = InMemorySpanExporter()
    async with flowcore.Engine("memory", tracing=flowcore.Tracing(exporter=exporter)) as engine:
        assert await adds() == 3
        assert engine.last_run is not None
        run = engine.last_run
    (flow,) = [s for s in exporter.get_finished_spans() if s.name == "flow adds"]
    ctx = flow.get_span_context()
    assert ctx is not None and f"{ctx.span_id:016x}" == run.span_id
    assert flow.status.status_code.name == "OK" and flow.parent is None
    assert dict(flow.attributes or {})["flowcore.state"] == "Completed"


async def test_a_flow_called_under_the_callers_span_is_its_child() -> None:
    """A request handler whose trace context came with the request (propagated headers):
    the flow run's span joins that trace, as its child, and says so once rebuilt."""
    remote = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True)
    remote = SpanContext(remote.trace_id, remote.span_id, True, TraceFlags(TraceFlags.SAMPLED))
    token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(remote)))
    try:
        async with flowcore.Engine("memory") as engine:
            assert await adds() == 3
            assert engine.last_run is not None
            run = await engine.store.get_run(engine.last_run.id)
            spans = {s.name: s for s in await read_trace(engine.store, run.id)}
    finally:
        otel_context.detach(token)
    assert run.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert run.parent_span_id == "b7ad6b7169203331"
    assert spans["flow adds"].parent_id == "b7ad6b7169203331"
    assert spans["task add"].parent_id == run.span_id


async def test_a_running_runs_trace_shows_its_flow_span_unfinished() -> None:
    go = anyio.Event()
    started = anyio.Event()

    @flowcore.flow
    async def waits() -> int:
        started.set()
        await go.wait()
        return await add(1, 1)

    async with flowcore.Engine("memory") as engine, anyio.create_task_group() as tg:
        tg.start_soon(waits)
        await started.wait()
        await engine.recorder.flush()
        assert engine.last_run is not None
        (span,) = await read_trace(engine.store, engine.last_run.id)
        assert span.name == "flow waits" and span.end == 0 and span.status == "UNSET"
        assert "flowcore.state" not in span.attributes
        go.set()


# -- young runs are written whole, once ------------------------------------------------------


class RecordingStore(MemoryStore):
    """Remembers, for each write, the states of the flow runs and task runs it held."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[tuple[dict[str, str], list[tuple[str, int, str]]]] = []

    async def write(self, batch: WriteBatch) -> None:
        self.batches.append(
            (
                {r.id: r.state.value for r in batch.flow_runs},
                [(t.run_id, t.seq, t.state.value) for t in batch.task_runs],
            )
        )
        await super().write(batch)

    def flow_states(self, run_id: str) -> list[str]:
        return [flows[run_id] for flows, _ in self.batches if run_id in flows]

    def task_states(self, run_id: str) -> list[str]:
        return [s for _, tasks in self.batches for r, _, s in tasks if r == run_id]


_release = anyio.Event()


@flowcore.flow
async def request(i: int) -> int:
    a = await add(i, 1)  # ended, while its run goes on
    await _release.wait()
    return a


async def _in_flight(n: int) -> list[asyncio.Task[int]]:
    global _release
    _release = anyio.Event()
    requests = [asyncio.ensure_future(request(i)) for i in range(n)]
    for _ in range(20):
        await anyio.lowlevel.checkpoint()  # each made its task run and waits
    return requests


async def test_a_run_is_written_once_when_others_commit_while_it_is_young() -> None:
    """A service's requests: other runs' ends commit while a request runs. A request made
    less than the flush interval ago is not written Running by those commits, nor its
    ended task runs: it is written once, whole, when it ends."""
    store = RecordingStore()
    async with flowcore.Engine(store=store, flush_interval=60) as engine:
        waiting = await _in_flight(10)
        for i in range(5):
            assert await quick(i) == i  # each end is a commit
        ids = [r.id for r in await store.list_runs(limit=100)]
        assert len(ids) == 5  # only the ended ones
        _release.set()
        assert await asyncio.gather(*waiting) == [i + 1 for i in range(10)]
        runs = [r for r in await store.list_runs(limit=100) if r.name == "request"]
        assert len(runs) == 10
        for run in runs:
            assert store.flow_states(run.id) == ["Completed"]
            assert store.task_states(run.id) == ["Completed"]
        assert engine.recorder.pending == 0


async def test_a_young_runs_subflows_wait_with_it() -> None:
    """A subflow that ended in a young run is not written without the run it belongs to
    (its row would name a parent the store does not hold): both go when the run ends."""
    store = RecordingStore()
    go = anyio.Event()

    @flowcore.flow
    async def child() -> int:
        return await add(1, 2)

    @flowcore.flow
    async def parent() -> int:
        c = await child()
        await go.wait()
        return c

    engine = flowcore.Engine(store=store, flush_interval=60)
    async with engine, anyio.create_task_group() as tg:
        tg.start_soon(parent)
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        assert await quick(0) == 0  # a commit while the parent runs
        assert [r.name for r in await store.list_runs(limit=10)] == ["quick"]
        go.set()
    runs = {r.name: r for r in await store.list_runs(limit=10)}
    assert store.flow_states(runs["parent"].id) == ["Completed"]
    assert store.flow_states(runs["child"].id) == ["Completed"]
    assert store.task_states(runs["child"].id) == ["Completed"]
    assert runs["child"].parent_run_id == runs["parent"].id


async def test_a_run_older_than_the_flush_interval_is_written_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = RecordingStore()
    async with flowcore.Engine(store=store, flush_interval=60):
        waiting = await _in_flight(3)
        later = time.time() + 61  # a minute on: they are no longer young
        monkeypatch.setattr(time, "time", lambda: later)
        assert await quick(0) == 0  # a commit
        running = [r for r in await store.list_runs(limit=100) if r.name == "request"]
        assert [r.state for r in running] == [State.RUNNING] * 3
        for run in running:  # with its task run ended so far
            assert [t.state for t in await store.list_task_runs(run.id)] == [State.COMPLETED]
        _release.set()
        await asyncio.gather(*waiting)
        for run in running:
            assert store.flow_states(run.id) == ["Running", "Completed"]


async def test_a_young_run_is_written_whole_when_a_line_of_its_log_is() -> None:
    """What is stored never refers to a run that is not: a log line written by a commit
    brings its run (and the task runs it has) with it."""
    store = RecordingStore()
    go = anyio.Event()

    @flowcore.flow
    async def logs() -> int:
        a = await add(2, 2)
        flowcore.get_run_logger().warning("halfway")
        await go.wait()
        return a

    engine = flowcore.Engine(store=store, flush_interval=60)
    async with engine, anyio.create_task_group() as tg:
        tg.start_soon(logs)
        for _ in range(10):
            await anyio.lowlevel.checkpoint()
        assert engine.last_run is not None
        young = engine.last_run
        assert await quick(1) == 1  # a commit, with the log line
        run = await store.get_run(young.id)
        assert run.state is State.RUNNING
        assert [t.state for t in await store.list_task_runs(run.id)] == [State.COMPLETED]
        assert [line.message for line in await store.list_logs(run.id)] == ["halfway"]
        go.set()


async def test_a_strict_commit_writes_its_task_run_and_its_young_run() -> None:
    """Strict durability: a task run whose result the flow has seen is committed, and
    so is the run it belongs to (young as it is), so a resume finds it."""
    store = RecordingStore()
    seen = anyio.Event()
    go = anyio.Event()

    @flowcore.flow
    async def strict() -> int:
        a = await add(3, 4)
        seen.set()
        await go.wait()
        return a

    engine = flowcore.Engine(store=store, flush_interval=60, durability="strict")
    async with engine, anyio.create_task_group() as tg:
        tg.start_soon(strict)
        await seen.wait()
        (run,) = await store.list_runs()
        assert run.state is State.RUNNING
        (task_run,) = await store.list_task_runs(run.id)
        assert task_run.state is State.COMPLETED
        go.set()


# -- a cancelled caller ------------------------------------------------------------------------


class GatedStore(RecordingStore):
    """Each write waits for a gate the test opens, so run ends pile up behind one."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = anyio.Event()
        self.writing = anyio.Event()

    async def write(self, batch: WriteBatch) -> None:
        self.writing.set()
        await self.gate.wait()
        await super().write(batch)


async def test_a_caller_cancelled_while_its_commit_is_written_holds_back_nobody() -> None:
    """The caller whose commit is being written is cancelled (a client went away): the
    callers waiting behind it still commit (one of them writes the batch), without
    waiting for the writer's next round (a minute away here)."""
    store = GatedStore()
    async with flowcore.Engine(store=store, flush_interval=60):
        first = asyncio.ensure_future(quick(0))
        await store.writing.wait()  # its end is being written
        others = [asyncio.ensure_future(quick(i)) for i in range(1, 6)]
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        first.cancel()
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        store.gate.set()
        with anyio.fail_after(10):
            assert await asyncio.gather(*others) == [1, 2, 3, 4, 5]
        try:  # cancelled, or (the cancellation came too late to stop it) its result
            assert await first == 0
        except asyncio.CancelledError:
            pass
        states = {r.parameters: r.state for r in await store.list_runs(limit=10)}
        assert set(states.values()) == {State.COMPLETED} and len(states) == 6


# -- what is left of a span row ----------------------------------------------------------------


async def test_a_flow_span_with_a_failed_hook_is_written_as_a_row_with_its_event() -> None:
    def broken(event: Any) -> None:
        raise RuntimeError("pager down")

    @flowcore.flow(on_completion=broken)
    async def hooked() -> int:
        return 1

    async with flowcore.Engine("memory") as engine:
        assert await hooked() == 1
        assert engine.last_run is not None
        run = await engine.store.get_run(engine.last_run.id)
        assert run.trace_id is not None
        (row,) = await engine.store.list_spans(run.trace_id)
        (span,) = await read_trace(engine.store, run.id)
    assert isinstance(row, SpanRecord) and span == row
    assert [name for name, _, _ in span.events] == ["hook failed"]
    assert span.attributes["flowcore.state"] == "Completed" and span.status == "OK"
