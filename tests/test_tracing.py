"""OpenTelemetry spans of flow and task runs: structure, attributes, context, persistence.

Two modes are checked against the same flow: an application SDK ``TracerProvider``
passed to the engine (real SDK spans, recorded by an in-memory exporter; the
provider is never set globally), and flowcore's own light spans (read back from
the store with ``read_trace``, or exported with ``Engine(tracing=Tracing(exporter=...))``).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import threading
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import flowcore
from flowcore import ConfigurationError, State
from flowcore.records import SpanRecord
from flowcore.views.trace import read_trace

pytestmark = pytest.mark.anyio


# -- helpers ---------------------------------------------------------------------------------


def sdk_provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    """An application's provider, handed to the engine (never set globally)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@dataclass
class View:
    """A span of either mode, in one shape (ids in lowercase hex)."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    scope: str
    status: str
    status_message: str | None
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)
    run_id: str | None = None


def view_sdk(span: ReadableSpan) -> View:
    ctx = span.get_span_context()
    assert ctx is not None
    return View(
        trace_id=f"{ctx.trace_id:032x}",
        span_id=f"{ctx.span_id:016x}",
        parent_id=f"{span.parent.span_id:016x}" if span.parent is not None else None,
        name=span.name,
        scope=span.instrumentation_scope.name if span.instrumentation_scope else "",
        status=span.status.status_code.name,
        status_message=span.status.description,
        attributes=dict(span.attributes or {}),
        events=[(e.name, dict(e.attributes or {})) for e in span.events],
        links=[(f"{lk.context.trace_id:032x}", f"{lk.context.span_id:016x}") for lk in span.links],
    )


def view_record(span: SpanRecord) -> View:
    return View(
        trace_id=span.trace_id,
        span_id=span.span_id,
        parent_id=span.parent_id,
        name=span.name,
        scope=span.scope,
        status=span.status,
        status_message=span.status_message,
        attributes=dict(span.attributes),
        events=[(name, dict(attrs)) for name, _, attrs in span.events],
        links=[(t, s) for t, s in span.links],
        run_id=span.run_id,
    )


@dataclass
class Runs:
    """The records of one top-level run and its subflow runs, as stored."""

    top: flowcore.FlowRunRecord
    flows: dict[str, flowcore.FlowRunRecord]
    tasks: dict[tuple[str, int], flowcore.TaskRunRecord]

    def tasks_named(self, name: str) -> list[flowcore.TaskRunRecord]:
        return [t for t in self.tasks.values() if t.name == name]


async def stored_runs(engine: flowcore.Engine, run_id: str) -> Runs:
    await engine.recorder.flush()
    store = engine.store
    top = await store.get_run(run_id)
    flows: dict[str, flowcore.FlowRunRecord] = {}
    tasks: dict[tuple[str, int], flowcore.TaskRunRecord] = {}
    pending = [top]
    while pending:
        run = pending.pop()
        flows[run.id] = run
        for t in await store.list_task_runs(run.id):
            tasks[(t.run_id, t.seq)] = t
        pending.extend(await store.child_runs(run.id))
    return Runs(top, flows, tasks)


def last_run(engine: flowcore.Engine) -> str:
    assert engine.last_run is not None
    return engine.last_run.id


def check_mirrors_runs(spans: list[View], runs: Runs) -> dict[str, View]:
    """flowcore's spans are exactly the runs and task runs, linked as the runs are.

    Returns flowcore's spans by span id.
    """
    own = [s for s in spans if s.scope == "flowcore"]
    by_id = {s.span_id: s for s in own}
    assert len(by_id) == len(own), "span ids are unique"
    assert len(own) == len(runs.flows) + len(runs.tasks), "one span per flow run and task run"
    trace_id = runs.top.trace_id
    assert trace_id is not None and len(trace_id) == 32 and int(trace_id, 16) != 0
    assert {s.trace_id for s in spans} == {trace_id}, "one trace, stored on the run record"

    def task_span(run_id: str, seq: int) -> View:
        span_id = runs.tasks[(run_id, seq)].span_id
        assert span_id is not None
        return by_id[span_id]

    for run in runs.flows.values():
        assert run.trace_id == trace_id
        assert run.span_id is not None
        span = by_id[run.span_id]
        assert span.name == f"flow {run.name}"
        assert span.attributes["flowcore.flow.name"] == run.name
        assert span.attributes["flowcore.run.id"] == run.id
        assert span.attributes["flowcore.run.kind"] == "flow"
        assert span.attributes["flowcore.state"] == run.state.value
        assert span.attributes["flowcore.task_count"] == run.task_count
        if run.parent_run_id is None:
            expected_parent = None
        elif run.parent_task_seq is not None:
            expected_parent = task_span(run.parent_run_id, run.parent_task_seq).span_id
        else:
            expected_parent = runs.flows[run.parent_run_id].span_id
        assert span.parent_id == expected_parent, f"parent of {span.name}"
        assert span.status == ("OK" if run.state is State.COMPLETED else "ERROR")

    for rec in runs.tasks.values():
        assert rec.span_id is not None
        span = by_id[rec.span_id]
        assert span.name == f"task {rec.name}"
        assert span.attributes["flowcore.task.name"] == rec.name
        assert span.attributes["flowcore.task_run.id"] == f"{rec.run_id}.{rec.seq}"
        assert span.attributes["flowcore.run.id"] == rec.run_id
        assert span.attributes["flowcore.attempts"] == rec.attempts
        assert span.attributes["flowcore.state"] == rec.state.value
        assert span.attributes["flowcore.cache_hit"] is (rec.state is State.CACHED)
        if rec.parent_seq is not None:
            expected_parent = task_span(rec.run_id, rec.parent_seq).span_id
        else:
            expected_parent = runs.flows[rec.run_id].span_id
        assert span.parent_id == expected_parent, f"parent of {span.name} (seq {rec.seq})"
        if rec.state in (State.COMPLETED, State.CACHED):
            assert span.status == "OK"
        elif rec.state is State.FAILED:
            assert span.status == "ERROR"

    for span in own:
        assert not any(k.startswith("flowcore.parameter") for k in span.attributes)
    return by_id


def tree_shape(spans: list[View]) -> Counter[tuple[str, ...]]:
    """Each span as the path of names from its root: the structure, without ids."""
    by_id = {s.span_id: s for s in spans}
    shape: Counter[tuple[str, ...]] = Counter()
    for span in spans:
        path = [span.name]
        parent = span.parent_id
        while parent is not None:
            path.append(by_id[parent].name)
            parent = by_id[parent].parent_id
        shape[tuple(reversed(path))] += 1
    return shape


# -- the flow under test ---------------------------------------------------------------------


def build(tracer: trace.Tracer | None = None) -> SimpleNamespace:
    """A flow with every way of running tasks; user code makes spans with ``tracer``.

    Each task records the OpenTelemetry span that is current in it (``seen``).
    """
    ns = SimpleNamespace(flaky_calls=0, seen=[], user_threads=set())
    lock = threading.Lock()

    @contextlib.contextmanager
    def user_span(name: str) -> Iterator[None]:
        with lock:
            ns.seen.append(trace.get_current_span().get_span_context())
        if tracer is None:
            yield
        else:
            with tracer.start_as_current_span(name):
                yield

    @flowcore.task
    async def leaf(x: int) -> int:
        with user_span("user leaf"):
            await asyncio.sleep(0)
            return x + 1

    @flowcore.task
    async def outer(x: int) -> int:
        return await leaf(x) * 2  # a nested task call

    @flowcore.task
    def blocking(x: int) -> int:  # a sync task: runs in a worker thread
        ns.user_threads.add(threading.get_ident())
        with user_span("user blocking"):
            return x * 3

    @flowcore.task(retries=2, retry_delay=0)
    async def flaky() -> int:
        ns.flaky_calls += 1
        with user_span("user flaky"):
            if ns.flaky_calls < 3:
                raise ValueError(f"flake {ns.flaky_calls}")
        return 10

    @flowcore.task
    async def bad() -> None:
        raise RuntimeError("nope")

    @flowcore.task(cache=True)
    async def cached(x: int) -> int:
        return x * 100

    @flowcore.flow
    async def sub(x: int) -> int:
        return await leaf(x)

    @flowcore.task
    async def calls_sub(x: int) -> int:
        return await sub(x)  # a subflow started from inside a task

    @flowcore.flow
    async def main(n: int = 2, secret: str = "hunter2") -> int:
        gathered = await asyncio.gather(*(leaf(i) for i in range(n)))
        submitted = leaf.submit(10)
        mapped = await leaf.map([20, 21])
        nested = await outer(30)
        subflow = await sub(40)
        sub_in_task = await calls_sub(50)
        threaded = await blocking(60)
        retried = await flaky()
        first, hit = await cached(7), await cached(7)
        try:
            await bad()
        except RuntimeError:
            pass
        return (
            sum(gathered)
            + await submitted
            + sum(mapped)
            + nested
            + subflow
            + sub_in_task
            + threaded
            + retried
            + first
            + hit
        )

    ns.main, ns.sub, ns.leaf, ns.flaky = main, sub, leaf, flaky
    ns.expected = (1 + 2) + 11 + (21 + 22) + 62 + 41 + 51 + 180 + 10 + 700 + 700
    return ns


# -- an application's SDK provider -----------------------------------------------------------


async def test_sdk_spans_mirror_the_runs() -> None:
    provider, exporter = sdk_provider()
    flows = build()
    async with flowcore.Engine(
        store="memory", tracing=flowcore.Tracing(provider=provider)
    ) as engine:
        assert await flows.main() == flows.expected
        runs = await stored_runs(engine, last_run(engine))
    spans = [view_sdk(s) for s in exporter.get_finished_spans()]
    by_id = check_mirrors_runs(spans, runs)

    root = by_id[runs.top.span_id or ""]
    assert root.name == "flow main" and root.parent_id is None and root.status == "OK"
    # Every way of starting a task hangs its span where the run tree says.
    assert len(runs.tasks_named("leaf")) == 2 + 1 + 2 + 1 + 1 + 1
    (outer,) = runs.tasks_named("outer")
    nested = [t for t in runs.tasks_named("leaf") if t.parent_seq == outer.seq]
    assert len(nested) == 1
    assert by_id[nested[0].span_id or ""].parent_id == outer.span_id
    (calls_sub,) = runs.tasks_named("calls_sub")
    subflows = [r for r in runs.flows.values() if r.name == "sub"]
    assert len(subflows) == 2
    assert sorted(by_id[r.span_id or ""].parent_id or "" for r in subflows) == sorted(
        [runs.top.span_id or "", calls_sub.span_id or ""]
    )
    # The sync task's span, made on the loop, is there like any other.
    (blocking,) = runs.tasks_named("blocking")
    assert by_id[blocking.span_id or ""].attributes["code.function"].endswith("blocking")

    (flaky,) = runs.tasks_named("flaky")
    span = by_id[flaky.span_id or ""]
    assert flaky.attempts == 3 and span.attributes["flowcore.attempts"] == 3
    retries = [attrs for name, attrs in span.events if name == "retry"]
    assert [r["flowcore.attempt"] for r in retries] == [1, 2]
    assert [r["exception.type"] for r in retries] == ["ValueError", "ValueError"]
    assert [r["exception.message"] for r in retries] == ["flake 1", "flake 2"]
    assert span.status == "OK"

    (bad,) = runs.tasks_named("bad")
    span = by_id[bad.span_id or ""]
    assert span.status == "ERROR" and "RuntimeError: nope" in (span.status_message or "")
    (exc,) = [attrs for name, attrs in span.events if name == "exception"]
    assert exc["exception.type"] == "RuntimeError" and exc["exception.message"] == "nope"
    assert span.attributes["flowcore.state"] == "Failed"

    miss, hit = sorted(runs.tasks_named("cached"), key=lambda t: t.seq)
    assert by_id[miss.span_id or ""].attributes["flowcore.cache_hit"] is False
    assert by_id[hit.span_id or ""].attributes["flowcore.cache_hit"] is True
    assert by_id[hit.span_id or ""].attributes["flowcore.state"] == "Cached"
    assert by_id[hit.span_id or ""].status == "OK"

    # The spans are persisted too, with their run ids: the same spans read_trace gives.
    async with flowcore.Engine(
        store=engine.store, tracing=flowcore.Tracing(provider=provider)
    ) as engine2:
        stored = await read_trace(engine2.store, runs.top.id)
    assert {s.span_id for s in stored} == {s.span_id for s in spans}
    for s in stored:
        assert s.run_id in runs.flows
        original = by_id[s.span_id]
        assert (s.name, s.parent_id, s.status) == (
            original.name,
            original.parent_id,
            original.status,
        )


async def test_a_failed_flow_span_records_the_error() -> None:
    provider, exporter = sdk_provider()

    @flowcore.flow
    async def broken() -> None:
        raise KeyError("missing")

    async with flowcore.Engine(store="memory", tracing=flowcore.Tracing(provider=provider)):
        with pytest.raises(KeyError):
            await broken()
    (span,) = [view_sdk(s) for s in exporter.get_finished_spans()]
    assert span.name == "flow broken" and span.status == "ERROR"
    assert span.attributes["flowcore.state"] == "Failed"
    assert [name for name, _ in span.events] == ["exception"]
    assert span.events[0][1]["exception.type"] == "KeyError"


@pytest.mark.parametrize("mode", ["sdk", "own"])
async def test_parameters_are_on_flow_spans_only_when_asked(mode: str) -> None:
    for trace_parameters in (False, True):
        provider, exporter = sdk_provider()
        flows = build()
        tracing = flowcore.Tracing(
            parameters=trace_parameters, provider=provider if mode == "sdk" else None
        )
        async with flowcore.Engine(store="memory", tracing=tracing) as engine:
            await flows.main(n=3, secret="s3cr3t")
            if mode == "sdk":
                spans = [view_sdk(s) for s in exporter.get_finished_spans()]
            else:
                spans = [view_record(s) for s in await read_trace(engine.store, last_run(engine))]
        flow_span = next(s for s in spans if s.name == "flow main")
        params = {k: v for k, v in flow_span.attributes.items() if "parameter" in k}
        if trace_parameters:
            assert params == {"flowcore.parameter.n": "3", "flowcore.parameter.secret": "'s3cr3t'"}
            for span in spans:
                if span.name == "flow sub":
                    assert span.attributes["flowcore.parameter.x"] in ("40", "50")
        else:
            assert [k for s in spans for k in s.attributes if "parameter" in k] == []
            assert not any("s3cr3t" in str(v) for s in spans for v in s.attributes.values())


async def test_user_spans_nest_under_task_spans_with_an_sdk_provider() -> None:
    provider, exporter = sdk_provider()
    flows = build(provider.get_tracer("user"))
    async with flowcore.Engine(
        store="memory", tracing=flowcore.Tracing(provider=provider)
    ) as engine:
        assert await flows.main() == flows.expected
        runs = await stored_runs(engine, last_run(engine))
        stored = [view_record(s) for s in await read_trace(engine.store, runs.top.id)]
    spans = [view_sdk(s) for s in exporter.get_finished_spans()]
    check_mirrors_runs(spans, runs)
    assert flows.user_threads and threading.get_ident() not in flows.user_threads

    by_task_span = {t.span_id: t for t in runs.tasks.values()}
    user = [s for s in spans if s.scope == "user"]
    # One per leaf call (gathered, submitted, mapped, nested, in subflows), one in the
    # worker thread, one per attempt of the retried task.
    assert Counter(s.name for s in user) == {"user leaf": 8, "user blocking": 1, "user flaky": 3}
    for span in user:
        parent_task = by_task_span[span.parent_id]
        assert span.name == f"user {parent_task.name}"
        assert span.trace_id == runs.top.trace_id
    (flaky,) = runs.tasks_named("flaky")
    attempts = [s for s in user if s.name == "user flaky"]
    assert {s.parent_id for s in attempts} == {flaky.span_id}
    assert [s.status for s in attempts] == ["ERROR", "ERROR", "UNSET"]
    # The mapped and submitted calls' user spans, like all others, sit under their own task.
    leaf_spans = {t.span_id for t in runs.tasks_named("leaf")}
    assert {s.parent_id for s in user if s.name == "user leaf"} == leaf_spans

    # Persisted: the user spans are in the store, each with the run it was made in.
    stored_user = {s.span_id: s for s in stored if s.scope == "user"}
    assert set(stored_user) == {s.span_id for s in user}
    for span in stored_user.values():
        assert span.run_id == by_task_span[span.parent_id].run_id
    assert {s.run_id for s in stored_user.values()} == set(runs.flows)  # subflows' too


# -- flowcore's own spans --------------------------------------------------------------------


async def test_own_spans_read_back_as_the_same_tree() -> None:
    flows = build()
    async with flowcore.Engine(store="memory") as engine:
        assert await flows.main() == flows.expected
        run_id = last_run(engine)
        runs = await stored_runs(engine, run_id)
        spans = [view_record(s) for s in await read_trace(engine.store, run_id)]
    by_id = check_mirrors_runs(spans, runs)

    (flaky,) = runs.tasks_named("flaky")
    span = by_id[flaky.span_id or ""]
    retries = [attrs for name, attrs in span.events if name == "retry"]
    assert [r["flowcore.attempt"] for r in retries] == [1, 2]
    assert "ValueError: flake 1" in retries[0]["flowcore.note"]
    (bad,) = runs.tasks_named("bad")
    span = by_id[bad.span_id or ""]
    assert span.status == "ERROR" and "nope" in (span.status_message or "")
    (exc,) = [attrs for name, attrs in span.events if name == "exception"]
    assert exc["exception.type"] == "RuntimeError" and exc["exception.message"] == "nope"
    miss, hit = sorted(runs.tasks_named("cached"), key=lambda t: t.seq)
    assert by_id[hit.span_id or ""].attributes["flowcore.cache_hit"] is True
    assert by_id[miss.span_id or ""].attributes["flowcore.cache_hit"] is False

    # The same structure as with an SDK provider.
    provider, exporter = sdk_provider()
    flows = build()
    async with flowcore.Engine(store="memory", tracing=flowcore.Tracing(provider=provider)):
        await flows.main()
    sdk_spans = [view_sdk(s) for s in exporter.get_finished_spans()]
    assert tree_shape(spans) == tree_shape(sdk_spans)


async def test_own_spans_are_persisted_in_sqlite_and_read_by_another_engine(
    tmp_path: Path,
) -> None:
    db = tmp_path / "runs.db"
    flows = build()
    async with flowcore.Engine(db) as engine:
        await flows.main()
        run_id = last_run(engine)
        runs = await stored_runs(engine, run_id)
    async with flowcore.Engine(db) as engine:
        spans = [view_record(s) for s in await read_trace(engine.store, run_id)]
    check_mirrors_runs(spans, runs)


async def test_own_spans_are_exported_with_an_exporter() -> None:
    exporter = InMemorySpanExporter()
    flows = build()
    async with flowcore.Engine(
        store="memory", tracing=flowcore.Tracing(exporter=exporter)
    ) as engine:
        await flows.main()
        run_id = last_run(engine)
        runs = await stored_runs(engine, run_id)
        stored = [view_record(s) for s in await read_trace(engine.store, run_id)]
    # Closing the engine flushed the export.
    exported = [view_sdk(s) for s in exporter.get_finished_spans()]
    check_mirrors_runs(exported, runs)
    assert sorted((s.span_id, s.parent_id, s.name, s.status) for s in exported) == sorted(
        (s.span_id, s.parent_id, s.name, s.status) for s in stored
    )
    (flaky,) = [s for s in exported if s.name == "task flaky"]
    assert [name for name, _ in flaky.events] == ["retry", "retry"]
    resource = exporter.get_finished_spans()[0].resource
    assert resource.attributes["service.name"] == "flowcore"
    stats = engine.statistics()
    assert stats.spans_exported == len(exported) and stats.spans_dropped == 0


@pytest.mark.parametrize("mode", ["sdk", "own"])
async def test_the_current_span_in_task_code_is_the_task_span(mode: str) -> None:
    provider, exporter = sdk_provider()
    # With flowcore's own spans, a provider that is not the engine's still nests user
    # spans under the task: the context is current, whoever makes the span.
    user_provider, user_exporter = sdk_provider() if mode == "own" else (provider, exporter)
    flows = build(user_provider.get_tracer("user"))
    tracing = flowcore.Tracing(provider=provider) if mode == "sdk" else True  # True: the default
    async with flowcore.Engine(store="memory", tracing=tracing) as engine:
        await flows.main()
        runs = await stored_runs(engine, last_run(engine))
    task_spans = {t.span_id: t for t in runs.tasks.values()}
    seen = flows.seen
    assert len(seen) == 8 + 1 + 3
    for ctx in seen:
        assert ctx.is_valid
        assert f"{ctx.trace_id:032x}" == runs.top.trace_id
    assert {f"{c.span_id:016x}" for c in seen} == {
        t.span_id for t in runs.tasks.values() if t.name in ("leaf", "blocking", "flaky")
    }
    user = [view_sdk(s) for s in user_exporter.get_finished_spans() if s.name.startswith("user")]
    assert len(user) == 12
    for span in user:
        assert span.trace_id == runs.top.trace_id
        assert span.name == f"user {task_spans[span.parent_id].name}"


def _child_ids(conn: Any) -> None:
    from flowcore.telemetry.tracing import _rand

    conn.send([_rand.getrandbits(64) for _ in range(4)])
    conn.close()


def test_forked_processes_make_their_own_span_ids() -> None:
    from flowcore.telemetry.tracing import _rand

    ctx = multiprocessing.get_context("fork")
    results = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        for _ in range(2):
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=_child_ids, args=(child_end,))
            proc.start()
            results.append(parent_end.recv())
            proc.join(30)
    mine = [_rand.getrandbits(64) for _ in range(4)]
    assert results[0] != results[1] and mine not in results


# -- resumed runs ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sdk", "own"])
async def test_a_resumed_run_links_to_the_run_it_resumes(mode: str, tmp_path: Path) -> None:
    provider, exporter = sdk_provider()
    marker = tmp_path / "marker"

    @flowcore.task
    async def step(i: int) -> int:
        if i == 2 and not marker.exists():
            raise RuntimeError("not yet")
        return i

    @flowcore.flow
    async def steps(n: int) -> int:
        return sum([await step(i) for i in range(n)])

    tracing = flowcore.Tracing(provider=provider) if mode == "sdk" else True  # True: the default
    async with flowcore.Engine(tmp_path / "runs.db", tracing=tracing) as engine:
        with pytest.raises(RuntimeError):
            await steps(4)
        failed = await engine.store.get_run(last_run(engine))
        marker.touch()
        assert await flowcore.resume_async(failed.id, flow=steps) == 6
        resumed = await engine.store.get_run(last_run(engine))
        stored = [view_record(s) for s in await read_trace(engine.store, resumed.id)]
    assert resumed.resumed_from == failed.id
    assert failed.trace_id and failed.span_id and resumed.trace_id and resumed.span_id
    spans = [view_sdk(s) for s in exporter.get_finished_spans()] if mode == "sdk" else stored
    (flow_span,) = [s for s in spans if s.span_id == resumed.span_id]
    assert flow_span.links == [(failed.trace_id, failed.span_id)]
    assert flow_span.attributes["flowcore.run.resumed_from"] == failed.id
    # ... and the link is persisted.
    (stored_flow,) = [s for s in stored if s.span_id == resumed.span_id]
    assert stored_flow.links == [(failed.trace_id, failed.span_id)]


# -- off, and bad options --------------------------------------------------------------------


async def test_tracing_off_makes_no_spans() -> None:
    provider, exporter = sdk_provider()
    flows = build(provider.get_tracer("user"))
    for old_provider in (None, provider):  # None: the deprecated option not given
        # tracing=False wins over everything, the deprecated provider spelling included.
        warns = (
            pytest.warns(flowcore.FlowcoreDeprecationWarning)
            if old_provider is not None
            else contextlib.nullcontext()
        )
        with warns:
            engine = flowcore.Engine(store="memory", tracing=False, tracer_provider=old_provider)
        async with engine:
            assert await flows.main() == flows.expected
            runs = await stored_runs(engine, last_run(engine))
            assert await read_trace(engine.store, runs.top.id) == []
            assert engine.statistics().spans_written == 0
        assert all(r.trace_id is None and r.span_id is None for r in runs.flows.values())
        assert all(t.span_id is None for t in runs.tasks.values())
        flows.flaky_calls = 0
    # User code's own spans are still made (they are the application's), but no flowcore span.
    scopes = [s.instrumentation_scope for s in exporter.get_finished_spans()]
    assert {scope.name if scope is not None else None for scope in scopes} <= {"user"}
    for span in exporter.get_finished_spans():
        assert span.parent is None or span.parent.span_id in {
            s.context.span_id for s in exporter.get_finished_spans()
        }


def test_bad_tracing_options_are_refused() -> None:
    provider, _ = sdk_provider()
    with pytest.raises(ConfigurationError, match="`provider` must be a TracerProvider"):
        flowcore.Tracing(provider=42)
    with pytest.raises(ConfigurationError, match="exporter"):
        flowcore.Tracing(provider=provider, exporter=InMemorySpanExporter())
    with pytest.raises(ConfigurationError, match="`tracing` must be True, False or"):
        flowcore.Engine(store="memory", tracing="yes")  # type: ignore[arg-type]


def test_an_exporter_that_is_not_one_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="SpanExporter"):
        flowcore.Tracing(exporter=42)


def test_the_old_tracing_options_still_work_and_say_the_new_spelling() -> None:
    provider, _ = sdk_provider()
    with pytest.warns(flowcore.FlowcoreDeprecationWarning) as seen:
        engine = flowcore.Engine(store="memory", tracer_provider=provider, trace_parameters=True)
    messages = [str(w.message) for w in seen]
    assert any("Tracing(provider=...)" in m for m in messages), messages
    assert any("Tracing(parameters=...)" in m for m in messages), messages
    assert {w.filename for w in seen} == {__file__}  # the warnings point at the caller's line
    options = engine._tracing_options
    assert isinstance(options, flowcore.Tracing)
    assert options.provider is provider and options.parameters is True
    with pytest.warns(flowcore.FlowcoreDeprecationWarning, match="retention_days"):
        flowcore.Engine(store="memory", trace_retention_days=3)
    with pytest.warns(flowcore.FlowcoreDeprecationWarning, match="sync_threads"):
        assert flowcore.Engine(store="memory", thread_limit=3).sync_threads == 3


@pytest.mark.parametrize("mode", ["own", "sdk"])
async def test_waiting_for_a_limit_shows_as_span_events_and_does_not_count_as_an_attempt(
    mode: str,
) -> None:
    calls = 0

    @flowcore.task(concurrency=1, retries=1)
    async def one_at_a_time(i: int) -> int:
        nonlocal calls
        calls += 1
        await anyio.sleep(0.01)
        if calls == 2:
            raise ValueError("once")  # the second call retries: two attempts
        return i

    @flowcore.flow
    async def f() -> list[int]:
        return list(await asyncio.gather(*(one_at_a_time(i) for i in range(3))))

    provider, exporter = sdk_provider()
    options: dict[str, Any] = (
        {"tracing": flowcore.Tracing(provider=provider)} if mode == "sdk" else {}
    )
    async with flowcore.Engine(store="memory", **options) as engine:
        assert await f() == [0, 1, 2]
        run_id = last_run(engine)
        if mode == "own":
            spans = [view_record(s) for s in await read_trace(engine.store, run_id)]
    if mode == "sdk":
        spans = [view_sdk(s) for s in exporter.get_finished_spans()]
    tasks = [s for s in spans if s.name == "task one_at_a_time"]
    assert len(tasks) == 3
    waits = [
        [name for name, _ in s.events if name in ("waiting for limit", "limit passed")]
        for s in tasks
    ]
    # The first never waited; the others did, each wait followed by its pass (the
    # retried one may wait again: its slot is given back during the backoff).
    assert sorted(map(len, waits))[:2] == [0, 2]
    for names in waits:
        assert names == ["waiting for limit", "limit passed"] * (len(names) // 2)
    for s in tasks:
        for name, attrs in s.events:
            if name == "waiting for limit":
                assert attrs["flowcore.limit"] == "one_at_a_time (concurrency=1)"
    retried = [s for s in tasks if any(name == "retry" for name, _ in s.events)]
    assert len(retried) == 1
    # Waits are not attempts: the retry is attempt 1 of the task that failed once.
    (retry,) = [attrs for name, attrs in retried[0].events if name == "retry"]
    assert retry["flowcore.attempt"] == 1


async def test_own_spans_keep_the_current_span_right_around_user_spans() -> None:
    """Own spans switch no context per task run (the run's span stands in for it):
    the current span is still the task run's inside it, the run's again after it,
    and a span user code made current in the flow body is the parent inside tasks."""
    user_provider, user_exporter = sdk_provider()
    tracer = user_provider.get_tracer("user")
    seen: dict[str, Any] = {}

    def current() -> Any:
        return trace.get_current_span().get_span_context()

    @flowcore.task
    async def inner() -> str:
        seen["inner"] = current()
        return flowcore.current_run().id

    @flowcore.task
    async def outer() -> None:
        seen["outer before"] = current()
        await inner()
        seen["outer after"] = current()

    @flowcore.flow
    async def main() -> None:
        seen["flow"] = current()
        await outer()
        seen["flow after"] = current()
        with tracer.start_as_current_span("user block"):
            await inner()
            seen["in user block"] = current()

    async with flowcore.Engine(store="memory") as engine:
        await main()
        runs = await stored_runs(engine, last_run(engine))
    by_name: dict[str, list[str | None]] = {}
    for t in sorted(runs.tasks.values(), key=lambda t: t.seq):
        by_name.setdefault(t.name, []).append(t.span_id)

    def hex_id(ctx: Any) -> str:
        return f"{ctx.span_id:016x}"

    assert hex_id(seen["flow"]) == runs.top.span_id == hex_id(seen["flow after"])
    assert hex_id(seen["outer before"]) == by_name["outer"][0] == hex_id(seen["outer after"])
    (user_block,) = user_exporter.get_finished_spans()
    assert user_block.parent is not None and f"{user_block.parent.span_id:016x}" == runs.top.span_id
    # inside the user's span, the task run's span is current (made current the general way)
    assert hex_id(seen["inner"]) == by_name["inner"][1]
    assert hex_id(seen["in user block"]) == f"{user_block.context.span_id:016x}"
    for ctx in seen.values():
        assert f"{ctx.trace_id:032x}" == runs.top.trace_id
