"""Engine semantics: tracked task runs, concurrency, futures, edges, structured concurrency."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, cast

import anyio
import pytest

import flowcore
from flowcore import State
from flowcore.encoding import decode_inputs
from flowcore.records import WriteBatch, task_run_label
from flowcore.telemetry import flow_span

pytestmark = pytest.mark.anyio


async def task_runs(engine: flowcore.Engine, run_id: str) -> list[flowcore.TaskRunRecord]:
    await engine.recorder.flush()
    return await engine.store.list_task_runs(run_id)


async def only_run(engine: flowcore.Engine) -> flowcore.FlowRunRecord:
    await engine.recorder.flush()
    runs = await engine.store.list_runs()
    assert len(runs) == 1, runs
    return runs[0]


@flowcore.task
async def double(x: int) -> int:
    return 2 * x


@flowcore.task
def parse(rows: list[int]) -> int:
    return sum(rows)


async def test_awaited_tasks_are_tracked_with_inputs_and_timing() -> None:
    @flowcore.flow
    async def f(n: int) -> int:
        return await double(n) + await double(n + 1)

    async with flowcore.Engine("memory") as engine:
        assert await f(3) == 14
        run = await only_run(engine)
        tasks = await task_runs(engine, run.id)
    assert run.state is State.COMPLETED and run.name == "f"
    assert decode_inputs(run.parameters) == {"n": 3}
    assert [t.name for t in tasks] == ["double", "double"]
    assert [decode_inputs(t.inputs) for t in tasks] == [{"x": 3}, {"x": 4}]
    for t in tasks:
        assert t.state is State.COMPLETED and t.attempts == 1
        assert t.started is not None and t.ended is not None and t.ended >= t.started
        assert [h[0] for h in t.history] == ["Running", "Completed"]
    assert run.task_count == 2


async def test_gathered_tasks_run_concurrently() -> None:
    running = 0
    peak = 0

    @flowcore.task
    async def slow(i: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.01)
        running -= 1
        return i

    @flowcore.flow
    async def f() -> list[int]:
        return list(await asyncio.gather(*(slow(i) for i in range(20))))

    async with flowcore.Engine("memory") as engine:
        assert await f() == list(range(20))
        run = await only_run(engine)
        assert len(await task_runs(engine, run.id)) == 20
    assert peak == 20


async def test_sync_tasks_run_in_threads_without_blocking_the_loop() -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []

    @flowcore.task
    def blocking(i: int) -> int:
        seen.append(threading.get_ident())
        time.sleep(0.05)
        return i

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        for _ in range(10):
            await anyio.sleep(0.005)
            ticks += 1

    @flowcore.flow
    async def f() -> list[int]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            out = list(await asyncio.gather(*(blocking(i) for i in range(4))))
        return out

    async with flowcore.Engine("memory"):
        assert await f() == [0, 1, 2, 3]
    assert loop_thread not in seen
    assert ticks == 10  # the loop kept running while the threads slept


async def test_submit_map_and_wait() -> None:
    @flowcore.flow
    async def f() -> tuple[list[int], list[int], int]:
        futures = [double.submit(i) for i in range(5)]
        mapped = await double.map(range(3))
        # A list of futures is a dependency (cast: the signature can't say a future stands
        # for its result).
        total = parse.submit(cast(list[int], futures))
        return await flowcore.wait(futures), mapped, await total

    async with flowcore.Engine("memory") as engine:
        assert await f() == ([0, 2, 4, 6, 8], [0, 2, 4], 20)
        run = await only_run(engine)
        tasks = await task_runs(engine, run.id)
    total = next(t for t in tasks if t.name == "parse")
    assert total.upstream == [0, 1, 2, 3, 4]
    assert [h[0] for h in total.history][:2] == ["Pending", "Running"]
    assert decode_inputs(total.inputs)["rows"] == [
        {"__flowcore__": "future", "task": "double", "seq": i} for i in range(5)
    ]


async def test_map_with_unmapped_and_several_iterables() -> None:
    @flowcore.task
    async def add(a: int, b: int, c: int = 0) -> int:
        return a + b + c

    @flowcore.flow
    async def f() -> tuple[list[int], list[int]]:
        a = await add.map([1, 2, 3], flowcore.unmapped(10))
        b = await add.map([1, 2], [10, 20], c=100)
        return a, b

    async with flowcore.Engine("memory"):
        assert await f() == ([11, 12, 13], [111, 122])


async def test_map_rejects_unequal_lengths_and_non_iterables() -> None:
    @flowcore.flow
    async def unequal() -> None:
        double.map([1, 2], [1])

    @flowcore.flow
    async def scalar() -> None:
        double.map(5)  # type: ignore[arg-type]

    async with flowcore.Engine("memory"):
        with pytest.raises(flowcore.ConfigurationError, match="map"):
            await unequal()
        with pytest.raises(flowcore.ConfigurationError, match="unmapped"):
            await scalar()


async def test_future_passed_to_task_is_an_edge_and_downstream_waits() -> None:
    order: list[str] = []

    @flowcore.task
    async def up() -> int:
        await anyio.sleep(0.02)
        order.append("up")
        return 5

    @flowcore.task
    async def down(x: int, others: dict[str, int]) -> int:
        order.append("down")
        return x + others["k"]

    @flowcore.flow
    async def f() -> int:
        u = up.submit()
        u2 = up.submit()
        # futures stand for their results (cast: the signature can't say so)
        return await down(cast(int, u), {"k": cast(int, u2)})

    async with flowcore.Engine("memory") as engine:
        assert await f() == 10
        run = await only_run(engine)
        tasks = await task_runs(engine, run.id)
    assert order == ["up", "up", "down"]
    assert tasks[2].name == "down" and tasks[2].upstream == [0, 1]


async def test_failed_upstream_means_downstream_not_run() -> None:
    ran = False

    @flowcore.task
    async def broken() -> int:
        raise ValueError("no data")

    @flowcore.task
    async def after(x: int) -> int:
        nonlocal ran
        ran = True
        return x

    @flowcore.flow
    async def f() -> None:
        b = broken.submit()
        with pytest.raises(flowcore.UpstreamFailed, match="broken"):
            # a future stands for its result (cast: the signature can't say so)
            await after(cast(int, b))
        with pytest.raises(ValueError, match="no data"):
            await b

    async with flowcore.Engine("memory") as engine:
        await f()
        run = await only_run(engine)
        tasks = await task_runs(engine, run.id)
    assert not ran
    assert run.state is State.COMPLETED  # every failure was awaited and handled
    assert [t.state for t in tasks] == [State.FAILED, State.UPSTREAM_FAILED]
    assert tasks[0].error_type == "ValueError" and tasks[0].error_message == "no data"
    assert "ValueError: no data" in (tasks[0].traceback or "")
    assert tasks[1].upstream == [0]


async def test_unawaited_failed_submission_fails_the_flow() -> None:
    @flowcore.task
    async def boom() -> None:
        raise RuntimeError("lost")

    @flowcore.flow
    async def f() -> str:
        boom.submit()
        return "looks fine"

    async with flowcore.Engine("memory") as engine:
        with pytest.raises(RuntimeError, match="lost") as info:
            await f()
        run = await only_run(engine)
    assert any("never awaited" in note for note in info.value.__notes__)
    assert run.state is State.FAILED and run.error_type == "RuntimeError"


async def test_flow_waits_for_submitted_tasks_it_did_not_await() -> None:
    done: list[int] = []

    @flowcore.task
    async def slow(i: int) -> None:
        await anyio.sleep(0.02)
        done.append(i)

    @flowcore.flow
    async def f() -> None:
        for i in range(3):
            slow.submit(i)

    async with flowcore.Engine("memory") as engine:
        await f()
        run = await only_run(engine)
        tasks = await task_runs(engine, run.id)
    assert sorted(done) == [0, 1, 2]
    assert {t.state for t in tasks} == {State.COMPLETED}


async def test_flow_failure_cancels_its_other_tasks_and_records_them() -> None:
    @flowcore.task
    async def forever() -> None:
        await anyio.sleep(60)

    @flowcore.flow
    async def f() -> None:
        forever.submit()
        await anyio.sleep(0.01)
        raise KeyError("stop")

    async with flowcore.Engine("memory") as engine:
        with pytest.raises(KeyError):
            await f()
        run = await only_run(engine)
        tasks = await task_runs(engine, run.id)
    assert run.state is State.FAILED
    assert tasks[0].state is State.CANCELLED


async def test_nested_task_calls_record_their_parent() -> None:
    @flowcore.task
    async def inner(x: int) -> int:
        return x + 1

    @flowcore.task
    async def outer(x: int) -> int:
        return await inner(x) + await inner(x)

    @flowcore.flow
    async def f() -> int:
        return await outer(1)

    async with flowcore.Engine("memory") as engine:
        assert await f() == 4
        run = await only_run(engine)
        tasks = await task_runs(engine, run.id)
    assert [(t.name, t.parent_seq) for t in tasks] == [("outer", None), ("inner", 0), ("inner", 0)]


async def test_subflow_has_parent_link() -> None:
    @flowcore.flow
    async def child(x: int) -> int:
        return await double(x)

    @flowcore.flow
    async def parent() -> int:
        return await child(4)

    async with flowcore.Engine("memory") as engine:
        assert await parent() == 8
        await engine.recorder.flush()
        runs = await engine.store.list_runs()
        top = next(r for r in runs if r.parent_run_id is None)
        kids = await engine.store.child_runs(top.id)
    assert len(runs) == 2 and [k.name for k in kids] == [child.name]
    assert kids[0].state is State.COMPLETED


async def test_task_outside_flow_is_tracked_as_its_own_run() -> None:
    async with flowcore.Engine("memory") as engine:
        assert await double(21) == 42
        run = await only_run(engine)
        tasks = await task_runs(engine, run.id)
    assert run.kind == "task" and run.name == "double" and run.state is State.COMPLETED
    assert decode_inputs(run.parameters) == {"x": 21}
    assert len(tasks) == 1 and tasks[0].state is State.COMPLETED


async def test_task_outside_flow_and_engine_uses_default_store(flowcore_home: Any) -> None:
    assert await double(2) == 4
    assert (flowcore_home / "flowcore.db").exists()
    async with flowcore.SQLiteStore(flowcore_home / "flowcore.db") as store:
        runs = await store.list_runs()
    assert [(r.name, r.state) for r in runs] == [("double", State.COMPLETED)]


async def test_submit_outside_flow_is_a_clear_error() -> None:
    with pytest.raises(flowcore.ConfigurationError, match="needs a running flow"):
        double.submit(1)


async def test_cancellation_records_cancelled_and_reraises() -> None:
    started = anyio.Event()

    @flowcore.task
    async def hang() -> None:
        started.set()
        await anyio.sleep(60)

    @flowcore.flow
    async def f() -> None:
        await hang()

    async with flowcore.Engine("memory") as engine:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(f)
                await started.wait()
                scope.cancel()
        run = await only_run(engine)
        tasks = await task_runs(engine, run.id)
    assert run.state is State.CANCELLED
    assert tasks[0].state is State.CANCELLED


async def test_flow_timeout_is_recorded_as_timed_out() -> None:
    @flowcore.task
    async def hang() -> None:
        await anyio.sleep(60)

    @flowcore.flow(timeout=0.05)
    async def f() -> None:
        await hang()

    async with flowcore.Engine("memory") as engine:
        with pytest.raises(flowcore.FlowTimeout, match=r"timed out after 0\.05 s"):
            await f()
        run = await only_run(engine)
        tasks = await task_runs(engine, run.id)
    assert run.state is State.TIMED_OUT
    assert tasks[0].state is State.CANCELLED


async def test_current_run_is_visible_in_tasks_and_threads() -> None:
    @flowcore.task
    def where() -> str:
        return flowcore.current_run().id

    @flowcore.flow
    async def f() -> tuple[str, str]:
        return flowcore.current_run().id, await where()

    async with flowcore.Engine("memory"):
        outer, inner = await f()
    assert outer == inner
    with pytest.raises(flowcore.ConfigurationError, match="outside a flow"):
        flowcore.current_run()


def test_run_from_sync_code_returns_result(flowcore_home: Any) -> None:
    @flowcore.flow
    async def f(a: int, b: int = 2) -> int:
        return await double(a) + b

    assert flowcore.run(f, 5, b=1) == 11
    assert f.run(1) == 4
    assert (flowcore_home / "flowcore.db").exists()


def test_run_propagates_the_flow_error(flowcore_home: Any) -> None:
    @flowcore.flow
    async def f() -> None:
        raise ValueError("bad things")

    with pytest.raises(ValueError, match="bad things"):
        flowcore.run(f)


async def test_statistics_count_tasks() -> None:
    @flowcore.flow
    async def f() -> None:
        await asyncio.gather(*(double(i) for i in range(10)))

    async with flowcore.Engine("memory") as engine:
        await f()
        stats = engine.statistics()
    assert stats.tasks_started == 10 and stats.tasks_completed == 10 and stats.tasks_failed == 0
    assert stats.flows_running == 0 and stats.records_pending == 0


async def test_unencodable_and_huge_inputs_are_placeholders() -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "<opaque>"

    @flowcore.task
    async def take(a: object, b: list[int], c: str) -> int:
        return len(b)

    @flowcore.flow
    async def f() -> int:
        return await take(Opaque(), list(range(5000)), "x" * 10_000)

    async with flowcore.Engine("memory") as engine:
        assert await f() == 5000
        run = await only_run(engine)
        (t,) = await task_runs(engine, run.id)
    inputs = decode_inputs(t.inputs)
    assert inputs["a"]["__flowcore__"] == "unencodable" and inputs["a"]["repr"] == "<opaque>"
    assert inputs["b"] == {"__flowcore__": "summary", "type": "list", "length": 5000}
    assert inputs["c"]["__flowcore__"] == "truncated" and inputs["c"]["length"] == 10_000


async def test_a_value_msgspec_refuses_is_a_placeholder_and_the_others_are_kept() -> None:
    # An int beyond 64 bits used to make the whole inputs map "unencodable".
    @flowcore.task
    async def take(big: int, name: str, n: int = 0) -> int:
        return n

    @flowcore.flow
    async def f() -> int:
        return await take(2**70, "kept", n=3) + await take(-(2**80), "")

    async with flowcore.Engine("memory") as engine:
        assert await f() == 3
        run = await only_run(engine)
        first, second = await task_runs(engine, run.id)
    inputs = decode_inputs(first.inputs)
    assert inputs["name"] == "kept" and inputs["n"] == 3
    assert inputs["big"]["__flowcore__"] == "unencodable"
    assert inputs["big"]["repr"] == str(2**70) and "2**64" in inputs["big"]["error"]
    assert decode_inputs(second.inputs)["big"]["repr"] == str(-(2**80))


async def test_record_inputs_false_records_nothing() -> None:
    @flowcore.task(record_inputs=False)
    async def secret(token: str) -> int:
        return len(token)

    @flowcore.flow
    async def f() -> int:
        return await secret("hunter2")

    async with flowcore.Engine("memory") as engine:
        await f()
        run = await only_run(engine)
        (t,) = await task_runs(engine, run.id)
    assert decode_inputs(t.inputs) == {}


async def test_trio_with_memory_store_works_and_sqlite_is_refused() -> None:
    import trio

    async def main() -> int:
        async with flowcore.Engine("memory"):

            @flowcore.flow
            async def f() -> int:
                return await double(2)

            result: int = await f()
        with pytest.raises(flowcore.UnsupportedBackend, match="asyncio"):
            async with flowcore.Engine():
                pass
        return result

    assert await anyio.to_thread.run_sync(trio.run, main) == 4


async def test_old_span_rows_are_pruned_when_an_engine_opens(flowcore_home: Any) -> None:
    @flowcore.flow
    async def f() -> int:
        return await double(1)

    async with flowcore.Engine() as engine:
        await f()
        run = engine.last_run
    assert run is not None and run.trace_id is not None
    store = flowcore.SQLiteStore(flowcore_home / "flowcore.db")
    async with store:
        # The flow span's row, as versions before the record was the span wrote it.
        span = flow_span(run)
        assert span is not None
        await store.write(WriteBatch(spans=[span]))
        assert len(await store.list_spans(run.trace_id)) == 1
    # A retention shorter than the span's age removes it at the next open.
    await anyio.sleep(0.01)
    async with flowcore.Engine(tracing=flowcore.Tracing(retention_days=0.01 / 86400)):
        pass
    async with store:
        assert await store.list_spans(run.trace_id) == []


async def test_run_ids_are_uuid_hex_and_parameters_are_recorded_either_way() -> None:
    import uuid

    @flowcore.flow
    async def f(a: int, b: str = "x") -> str:
        return f"{a}{b}"

    async with flowcore.Engine("memory") as engine:
        assert await f(1, "y") == "1y"  # every parameter by position (no Signature.bind)
        assert await f(2) == "2x"  # a default filled in
        assert await f(b="z", a=3) == "3z"
        runs = sorted(await engine.store.list_runs(), key=lambda r: r.created)
    assert [decode_inputs(r.parameters) for r in runs] == [
        {"a": 1, "b": "y"},
        {"a": 2, "b": "x"},
        {"a": 3, "b": "z"},
    ]
    ids = [uuid.UUID(hex=r.id) for r in runs]
    assert all(u.version == 8 and u.variant == uuid.RFC_4122 for u in ids)  # see ids.new_run_id
    assert len({r.id[:8] for r in runs}) == 3


async def test_a_task_called_in_a_sync_task_runs_and_returns_its_result() -> None:
    # Regression: called in a sync task's worker thread, a task returned an un-awaited
    # coroutine as its value.
    @flowcore.task
    async def inner(x: int) -> int:
        return x + 1

    @flowcore.task
    def also_sync(x: int) -> int:
        return x * 2

    @flowcore.task
    async def fails() -> None:
        raise ValueError("inner failed")

    @flowcore.task
    def outer(x: int) -> int:
        # In a sync task's thread the call returns the result (its type says coroutine,
        # for async callers: hence the casts).
        return cast(int, inner(x)) + cast(int, also_sync(x))

    @flowcore.task
    def calls_a_failing_task() -> None:
        cast(None, fails())  # raises the task's error here

    @flowcore.flow
    async def f() -> int:
        with pytest.raises(ValueError, match="inner failed"):
            await calls_a_failing_task()
        return await outer(3)

    async with flowcore.Engine("memory") as engine:
        assert await f() == 10
        run = await only_run(engine)
        tasks = await task_runs(engine, run.id)
    assert run.state is State.COMPLETED
    by_name = {t.name: t for t in tasks}
    assert by_name["fails"].parent_seq == by_name["calls_a_failing_task"].seq
    assert by_name["fails"].state is State.FAILED
    assert by_name["calls_a_failing_task"].state is State.FAILED
    # The calls are task runs of their own, children of the sync task's run.
    assert by_name["inner"].parent_seq == by_name["outer"].seq
    assert by_name["also_sync"].parent_seq == by_name["outer"].seq
    assert {by_name[n].state for n in ("outer", "inner", "also_sync")} == {State.COMPLETED}


async def test_a_task_called_from_a_thread_flowcore_did_not_start_is_a_clear_error() -> None:
    import contextvars

    seen: list[str] = []

    @flowcore.task
    def starts_a_thread() -> None:
        def in_thread() -> None:
            try:
                cast(int, double(1))
            except flowcore.ConfigurationError as exc:
                seen.append(str(exc))

        thread = threading.Thread(target=contextvars.copy_context().run, args=(in_thread,))
        thread.start()
        thread.join()

    @flowcore.flow
    async def f() -> None:
        await starts_a_thread()

    async with flowcore.Engine("memory"):
        await f()
    assert len(seen) == 1 and "thread flowcore did not start" in seen[0]


async def test_a_parent_runs_future_used_in_a_subflow_is_a_cross_run_edge() -> None:
    # Regression: the edge was recorded by seq alone, so inside the subflow it named
    # the subflow's own task run with the same seq.
    # (A future passed to the subflow as an argument is resolved before it starts, and
    # is an edge of the subflow run; one it reaches otherwise, here through a closure,
    # is waited for by the task it is given to.)
    @flowcore.flow
    async def parent() -> int:
        up = double.submit(2)  # the parent's seq 0

        @flowcore.flow
        async def child() -> int:
            await double(100)  # the child's seq 0
            return await double(cast(int, up))  # the parent's future of seq 0

        return await child()

    async with flowcore.Engine("memory") as engine:
        assert await parent() == 8
        await engine.recorder.flush()
        runs = await engine.store.list_runs()
        top = next(r for r in runs if r.parent_run_id is None)
        (kid,) = await engine.store.child_runs(top.id)
        tasks = await task_runs(engine, kid.id)
    downstream = tasks[1]
    assert downstream.seq == 1 and downstream.upstream is None  # not the child's seq 0
    pending = downstream.history[0]
    assert pending[0] == "Pending"
    label = task_run_label(top.id, 0)
    assert pending[2] == f"waited for task runs of other flow runs: double ({label})"


async def test_a_sync_task_that_times_out_cancels_the_task_it_called() -> None:
    @flowcore.task
    async def inner() -> None:
        await anyio.sleep(60)

    # Time for its thread to start and call `inner`, even on a busy machine (a sync task
    # whose deadline passes before its thread picked it up is never called).
    @flowcore.task(timeout=1)
    def outer() -> None:
        cast(None, inner())

    @flowcore.flow
    async def f() -> None:
        with pytest.raises(flowcore.TaskTimeout):
            await outer()

    async with flowcore.Engine("memory") as engine:
        with anyio.fail_after(10):
            await f()
        run = await only_run(engine)
        tasks = await task_runs(engine, run.id)
    assert [(t.name, t.state) for t in tasks] == [
        ("outer", State.TIMED_OUT),
        ("inner", State.CANCELLED),
    ]
