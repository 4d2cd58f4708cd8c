"""What a task run holds while it waits, and after its row is written (issue 17).

A big gather makes every call at once; when the writer falls behind, most of them
wait for it (backpressure). What they hold while they wait, and whether anything
is kept once a row is written, is the memory per task.
"""

from __future__ import annotations

import asyncio
import sys
import tracemalloc

import anyio
import pytest

import flowcore
from flowcore import MemoryStore, State
from flowcore._current import current_task_run
from flowcore.records import TaskRunRecord, WriteBatch

pytestmark = pytest.mark.anyio


class GatedStore(MemoryStore):
    """A MemoryStore whose next write, once armed, waits until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = anyio.Event()
        self.release = anyio.Event()
        #: Whether the next write waits (until ``release`` is set).
        self.armed = True

    async def write(self, batch: WriteBatch) -> None:
        if self.armed:
            self.armed = False
            self.entered.set()
            await self.release.wait()
        await super().write(batch)


@flowcore.task
async def noop(i: int) -> int:
    return i


@flowcore.flow
async def gathered(n: int) -> int:
    return len(await asyncio.gather(*(noop(i) for i in range(n))))


async def test_calls_waiting_for_the_writer_hold_no_record_yet() -> None:
    # Regression: a call made its record (history, inputs, span id) before it waited
    # for a writer that was behind, so every call of a big gather held one at once.
    store = GatedStore()
    async with flowcore.Engine(store=store, flush_interval=60) as engine:
        engine.recorder.max_backlog = 100
        async with anyio.create_task_group() as tg:
            tg.start_soon(gathered, 3000)
            await store.entered.wait()  # the first write is in flight: the rest wait
            assert engine.last_run is not None
            made = engine.last_run.task_count
            store.release.set()
        # Only the calls let in had made their records: the backlog, and those that
        # had started before the writer fell behind.
        assert made <= 2 * 100, made
    run = (await store.list_runs())[0]
    assert run.state is State.COMPLETED
    assert await store.count_task_runs(run.id) == {"Completed": 3000}
    task_runs = await store.list_task_runs(run.id, limit=5000)
    # Let in first come, first served: the seqs follow the calls' order.
    assert [t.seq for t in task_runs] == list(range(3000))
    assert all([h[0] for h in t.history] == ["Running", "Completed"] for t in task_runs)


async def test_a_call_cancelled_while_it_waits_for_the_writer_is_recorded_cancelled() -> None:
    # Regression: a call cancelled while it waited for the writer was never recorded (its
    # record was made, then dropped unwritten): a gap in the run's seqs.
    store = GatedStore()
    async with flowcore.Engine(store=store, flush_interval=60) as engine:
        engine.recorder.max_backlog = 50
        async with anyio.create_task_group() as tg:
            tg.start_soon(gathered, 500)
            await store.entered.wait()
            tg.cancel_scope.cancel()  # the flow, and the calls waiting, are cancelled
            store.release.set()  # the run's end is committed after the write in flight
    run = (await store.list_runs())[0]
    assert run.state is State.CANCELLED
    counts = await store.count_task_runs(run.id)
    # Every call is a task run: those let in completed, those still waiting Cancelled.
    assert sum(counts.values()) == 500, counts
    assert set(counts) <= {"Completed", "Cancelled"}
    assert counts.get("Cancelled", 0) >= 500 - 2 * 50, counts


async def test_a_waiting_call_costs_a_future_not_an_event() -> None:
    # Regression: each call waiting for the writer made an anyio.Event (an asyncio.Event
    # with its deque: 600 bytes) and a coroutine frame; now it awaits a bare future.
    store = GatedStore()
    n = 4000
    async with flowcore.Engine(store=store, flush_interval=60) as engine:
        engine.recorder.max_backlog = 100
        store.armed = False
        await gathered(10)  # warm up
        store.armed = True
        tracemalloc.start()
        try:
            async with anyio.create_task_group() as tg:
                before = tracemalloc.get_traced_memory()[0]
                tg.start_soon(gathered, n)
                await store.entered.wait()
                waiting = len(engine.recorder._admission)
                held = tracemalloc.get_traced_memory()[0] - before
                store.release.set()
        finally:
            tracemalloc.stop()
    assert waiting >= n - 3 * 100
    # Each call: its asyncio Task, coroutine, arguments (~1.1 KB, as raw asyncio's
    # ~0.9 KB) and the waiter; the records of the calls let in; no record per waiting call.
    assert held / n < 1600, held / n


async def test_a_record_is_not_kept_once_its_row_is_written() -> None:
    kept: list[TaskRunRecord] = []

    @flowcore.task
    async def note(i: int) -> int:
        rec = current_task_run.get()
        assert rec is not None
        kept.append(rec)
        return i

    @flowcore.flow
    async def many(n: int) -> int:
        return sum(await asyncio.gather(*(note(i) for i in range(n))))

    async with flowcore.Engine(store="memory") as engine:
        assert await many(50) == sum(range(50))
        await engine.recorder.flush()
        # Only this list (and getrefcount's argument) refers to each record: nothing in
        # the engine, the recorder or the spans keeps a written task run alive.
        assert {sys.getrefcount(kept[i]) for i in range(len(kept))} == {2}


async def test_calls_without_keyword_arguments_share_no_state() -> None:
    @flowcore.task
    async def kw(i: int, scale: int = 1) -> int:
        return i * scale

    @flowcore.flow
    async def both() -> list[int]:
        return [await kw(2), await kw(2, scale=3), await kw(2)]

    async with flowcore.Engine(store="memory"):
        assert await both() == [2, 6, 2]
