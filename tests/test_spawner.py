"""Submitted task runs belong to their flow run: joined at its end, cancelled on any way out.

On asyncio they are plain tasks (see flowcore/spawner.py), outside anyio's
cancel scopes, so every way a flow run can end is checked here to cancel or
finish them; and the FIFO slots that replaced anyio's limiter.
"""

from __future__ import annotations

import asyncio
import time

import anyio
import anyio.lowlevel
import pytest

import flowcore
from flowcore import State
from flowcore.engine.gates import Slots

pytestmark = pytest.mark.anyio


async def states(engine: flowcore.Engine) -> dict[str, int]:
    await engine.recorder.flush()
    (run,) = await engine.store.list_runs()
    return await engine.store.count_task_runs(run.id)


@flowcore.task
async def forever() -> None:
    await anyio.sleep(60)


async def test_flow_timeout_cancels_submitted_tasks_nobody_awaited() -> None:
    @flowcore.flow(timeout=0.05)
    async def f() -> None:
        for _ in range(3):
            forever.submit()

    async with flowcore.Engine("memory") as engine:
        started = time.monotonic()
        with pytest.raises(flowcore.FlowTimeout):
            await f()
        assert time.monotonic() - started < 5
        assert await states(engine) == {"Cancelled": 3}
        (run,) = await engine.store.list_runs()
        assert run.state is State.TIMED_OUT


async def test_outer_cancellation_cancels_submitted_and_mapped_tasks() -> None:
    @flowcore.task(concurrency=2)
    async def hang(i: int) -> None:
        await anyio.sleep(60)

    @flowcore.flow
    async def g() -> None:
        forever.submit()
        hang.map(range(10))
        await anyio.sleep(60)

    async with flowcore.Engine("memory") as engine:
        with anyio.move_on_after(0.1):
            await g()
        counts = await states(engine)
    # Only the calls the map had started (its window) exist; all of them were cancelled.
    assert set(counts) == {"Cancelled"}, counts
    assert 1 + 2 <= counts["Cancelled"] <= 1 + 4


async def test_unawaited_map_under_a_limit_still_runs_every_call() -> None:
    done: list[int] = []

    @flowcore.task(concurrency=3)
    async def work(i: int) -> None:
        await anyio.lowlevel.checkpoint()
        done.append(i)

    @flowcore.flow
    async def f() -> None:
        work.map(range(100))  # the feeder has not even started when the body returns

    async with flowcore.Engine("memory") as engine:
        await f()
        assert await states(engine) == {"Completed": 100}
    assert sorted(done) == list(range(100))


async def test_submitted_tasks_run_on_trio_too() -> None:
    import trio

    @flowcore.task
    async def double(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return 2 * x

    @flowcore.task(concurrency=2)
    async def limited(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return x + 1

    @flowcore.flow
    async def f() -> list[int]:
        futures = [double.submit(i) for i in range(5)]
        return [*await flowcore.wait(futures), *await limited.map(range(5))]

    async def main() -> list[int]:
        async with flowcore.Engine("memory"):
            result: list[int] = await f()
            return result

    assert await anyio.to_thread.run_sync(trio.run, main) == [0, 2, 4, 6, 8, 1, 2, 3, 4, 5]


async def test_slots_are_fifo_and_never_over_borrowed() -> None:
    slots = Slots(2)
    order: list[int] = []
    inside = 0
    peak = 0

    async def user(i: int) -> None:
        nonlocal inside, peak
        await slots.acquire()
        order.append(i)
        inside += 1
        peak = max(peak, inside)
        await anyio.sleep(0.001)
        inside -= 1
        slots.release()

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(user, i)
            await anyio.lowlevel.checkpoint()  # arrive in order
    assert order == list(range(20))
    assert peak == 2
    assert slots.borrowed == 0 and not slots.waiters


async def test_a_cancelled_waiter_passes_on_a_slot_it_was_handed() -> None:
    slots = Slots(1)
    await slots.acquire()
    first = asyncio.ensure_future(slots.acquire())
    second = asyncio.ensure_future(slots.acquire())
    await asyncio.sleep(0)
    assert len(slots.waiters) == 2
    slots.release()  # handed to `first` ...
    first.cancel()  # ... which is cancelled before it wakes up: `second` must get it
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert first.cancelled()
    assert second.done() and second.exception() is None
    assert slots.borrowed == 1 and not slots.waiters
    slots.release()
    assert slots.borrowed == 0

    # A waiter cancelled before being handed anything just leaves the queue.
    await slots.acquire()
    third = asyncio.ensure_future(slots.acquire())
    await asyncio.sleep(0)
    third.cancel()
    await asyncio.sleep(0)
    assert third.cancelled() and slots.borrowed == 1 and not slots.waiters


@flowcore.task
async def triple(x: int) -> int:
    return 3 * x


@flowcore.task
def submits_from_its_thread(n: int) -> list[int]:
    # A sync task runs in a worker thread; what it submits must start on the event
    # loop's thread (a task made from another thread would not wake the loop: this
    # would spin for ever), with a seq of its own and this task run as its parent.
    futures = [triple.submit(i) for i in range(n)]
    mapped = triple.map(i for i in range(n))  # a generator: it can be read only once
    deadline = time.monotonic() + 3
    while not all(f.done() for f in [*futures, *mapped]):
        if time.monotonic() > deadline:
            raise TimeoutError("the submitted task runs never ran")
        time.sleep(0.005)
    return [f.result() for f in futures] + [f.result() for f in mapped]


async def test_a_sync_task_can_submit_from_its_thread() -> None:
    @flowcore.flow
    async def f() -> list[int]:
        return await submits_from_its_thread(20)

    # No periodic flush to wake the loop meanwhile: only a proper hand-over does.
    async with flowcore.Engine("memory", flush_interval=60) as engine:
        with anyio.fail_after(20):
            assert await f() == [3 * i for i in range(20)] * 2
        (run,) = await engine.store.list_runs()
        tasks = await engine.store.list_task_runs(run.id, limit=None)
    assert len(tasks) == 41 and len({t.seq for t in tasks}) == 41
    parent = next(t for t in tasks if t.name == "submits_from_its_thread")
    assert all(t.parent_seq == parent.seq for t in tasks if t.name == "triple")
    assert {t.state for t in tasks} == {State.COMPLETED}


async def test_submit_from_a_thread_a_task_started_itself_is_a_clear_error() -> None:
    import contextvars
    import threading

    seen: list[str] = []

    @flowcore.task
    def starts_a_thread() -> None:
        def inner() -> None:
            try:
                triple.submit(1)
            except flowcore.ConfigurationError as exc:
                seen.append(str(exc))

        thread = threading.Thread(target=contextvars.copy_context().run, args=(inner,))
        thread.start()
        thread.join()

    @flowcore.flow
    async def f() -> None:
        await starts_a_thread()

    async with flowcore.Engine("memory"):
        await f()
    assert len(seen) == 1 and "thread flowcore did not start" in seen[0]
