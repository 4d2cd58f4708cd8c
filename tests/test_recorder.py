"""The write-behind recorder, seen through an Engine: batching, coalescing, no lost records."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

import flowcore
from flowcore import MemoryStore, State
from flowcore.records import WriteBatch


@flowcore.task
async def noop(i: int) -> int:
    return i


@flowcore.flow
async def gathered(n: int) -> int:
    results = await asyncio.gather(*(noop(i) for i in range(n)))
    return len(results)


@flowcore.flow
async def small(n: int = 5) -> int:
    futures = [noop.submit(i) for i in range(n)]
    return sum(await flowcore.wait(futures))


class RecordingStore(MemoryStore):
    """A MemoryStore that remembers what every write contained."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[tuple[list[tuple[str, str]], list[tuple[int, str]]]] = []
        self.closed = False

    async def write(self, batch: WriteBatch) -> None:
        self.batches.append(
            (
                [(fr.id, str(fr.state)) for fr in batch.flow_runs],
                [(tr.seq, str(tr.state)) for tr in batch.task_runs],
            )
        )
        await super().write(batch)

    async def close(self) -> None:
        self.closed = True
        await super().close()

    def task_rows(self) -> list[tuple[int, str]]:
        return [row for _, tasks in self.batches for row in tasks]


class FlakyStore(RecordingStore):
    """Its first ``failures`` writes raise StoreError (``None``: every write does)."""

    def __init__(self, failures: int | None) -> None:
        super().__init__()
        self.failures_left = failures
        self.failed = 0
        self.failures_used_up = anyio.Event()

    async def write(self, batch: WriteBatch) -> None:
        await anyio.lowlevel.checkpoint()
        if self.failures_left is None or self.failures_left > 0:
            if self.failures_left is not None:
                self.failures_left -= 1
                if self.failures_left == 0:
                    self.failures_used_up.set()
            self.failed += 1
            raise flowcore.StoreError("disk full (simulated)")
        await super().write(batch)


async def _assert_all_completed(store: MemoryStore, tasks: int, runs: int = 1) -> None:
    flow_runs = await store.list_runs()
    assert len(flow_runs) == runs
    for run in flow_runs:
        assert run.state is State.COMPLETED
        assert run.ended is not None
        assert run.task_count == tasks
        assert await store.count_task_runs(run.id) == {"Completed": tasks}
        task_runs = await store.list_task_runs(run.id)
        assert [t.seq for t in task_runs] == list(range(tasks))
        assert all(t.attempts == 1 and t.ended is not None for t in task_runs)
        assert all([h[0] for h in t.history] == ["Running", "Completed"] for t in task_runs)


# -- batching -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_many_task_state_changes_are_batched_into_few_writes() -> None:
    store = MemoryStore()
    async with flowcore.Engine(store=store) as engine:
        assert await gathered(5000) == 5000
        stats = engine.statistics()
    assert stats.tasks_started == stats.tasks_completed == 5000
    assert stats.flushes == store.writes
    assert stats.records_pending == 0
    assert 1 <= store.writes <= 50, store.writes  # 10,000 state changes, a handful of writes
    await _assert_all_completed(store, 5000)


@pytest.mark.anyio
async def test_a_full_batch_is_written_without_waiting_for_the_flush_interval() -> None:
    store = RecordingStore()
    with anyio.fail_after(30):  # well under the 60 s interval
        async with flowcore.Engine(store=store, flush_interval=60) as engine:
            assert await gathered(5000) == 5000
            assert engine.recorder.pending == 0
    # Besides the write at the end of the run, a write was triggered by max_batch
    # (2000) records waiting while the run was still going, long before the interval.
    assert store.writes >= 2
    (first_flows, first_tasks) = store.batches[0]
    assert [state for _, state in first_flows] == ["Running"]
    assert len(first_tasks) >= 2000
    await _assert_all_completed(store, 5000)


@pytest.mark.anyio
async def test_a_task_that_starts_and_finishes_between_flushes_is_written_once() -> None:
    store = RecordingStore()
    async with flowcore.Engine(store=store, flush_interval=60) as engine:
        assert await small(5) == 10
        assert engine.statistics().rows_written == 6
    # One write, at the end of the run: the flow run once, each task run once, finished.
    assert store.writes == 1
    assert store.batches[0][0] == [(store.batches[0][0][0][0], "Completed")]
    assert sorted(store.task_rows()) == [(seq, "Completed") for seq in range(5)]
    await _assert_all_completed(store, 5)


@pytest.mark.anyio
async def test_a_task_running_across_a_flush_is_written_in_each_state() -> None:
    # The counterpart of coalescing, to show the recording above is not blind.
    store = RecordingStore()
    release = anyio.Event()

    @flowcore.task
    async def waits() -> str:
        await release.wait()
        return "done"

    @flowcore.flow
    async def across() -> str:
        future = waits.submit()
        await anyio.sleep(0.01)  # the task starts and blocks
        await flowcore.current_run().engine.recorder.flush()
        release.set()
        return await future

    async with flowcore.Engine(store=store, flush_interval=60):
        assert await across() == "done"
    assert store.task_rows() == [(0, "Running"), (0, "Completed")]
    await _assert_all_completed(store, 1)


@pytest.mark.anyio
async def test_sqlite_engine_records_every_task_run(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    async with flowcore.Engine(store=path) as engine:
        assert await gathered(3000) == 3000
        assert engine.statistics().flushes < 100
    async with flowcore.SQLiteStore(path) as store:
        (run,) = await store.list_runs()
        assert run.state is State.COMPLETED
        assert run.task_count == 3000
        assert await store.count_task_runs(run.id) == {"Completed": 3000}


# -- failed writes --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_failed_background_writes_are_retried_without_losing_records() -> None:
    store = FlakyStore(failures=2)

    @flowcore.flow
    async def patient() -> int:
        first = sum(await flowcore.wait([noop.submit(i) for i in range(20)]))
        with anyio.fail_after(10):  # let the recorder's own flushes hit both failures
            await store.failures_used_up.wait()
        second = await asyncio.gather(*(noop(i) for i in range(30)))
        return first + len(second)

    async with flowcore.Engine(store=store, flush_interval=0.02) as engine:
        assert await patient() == sum(range(20)) + 30
        assert engine.recorder.last_error is None
    assert store.failed == 2
    await _assert_all_completed(store, 50)


@pytest.mark.anyio
async def test_a_failed_write_at_the_end_of_a_run_is_written_when_the_engine_closes() -> None:
    store = FlakyStore(failures=1)
    async with flowcore.Engine(store=store, flush_interval=60) as engine:
        # The end of a top-level run is a durability point: if its records cannot be
        # committed, the caller hears about it.
        with pytest.raises(flowcore.StoreError, match="disk full"):
            await small(5)
        assert engine.recorder.pending == 6  # kept, not dropped
        assert await store.list_runs() == []
    assert store.failed == 1
    await _assert_all_completed(store, 5)


@pytest.mark.anyio
async def test_records_kept_after_failures_are_written_by_a_later_flush() -> None:
    store = FlakyStore(failures=2)
    async with flowcore.Engine(store=store, flush_interval=60) as engine:

        @flowcore.flow
        async def with_flushes() -> int:
            futures = [noop.submit(i) for i in range(10)]
            await flowcore.wait(futures)
            for _ in range(2):
                with pytest.raises(flowcore.StoreError):
                    await engine.recorder.flush()
            return len(futures)

        assert await with_flushes() == 10  # its end-of-run flush is the third write
        assert engine.recorder.pending == 0
        await _assert_all_completed(store, 10)
    assert store.failed == 2


@pytest.mark.anyio
async def test_closing_the_engine_raises_when_the_store_keeps_failing() -> None:
    store = FlakyStore(failures=None)
    body_finished = False

    async def run_then_close() -> None:
        nonlocal body_finished
        async with flowcore.Engine(store=store, flush_interval=60) as engine:
            with pytest.raises(flowcore.StoreError):
                await small(3)
            assert engine.recorder.pending == 4
            body_finished = True

    with pytest.raises(flowcore.StoreError, match="disk full"):
        await run_then_close()
    assert body_finished  # so the error came from closing the engine
    assert store.failed >= 2  # the run's end, then the engine's close
    assert store.closed  # the store is closed even though the last flush failed
    assert await store.list_runs() == []


# -- backpressure -------------------------------------------------------------------------


class SlowStore(RecordingStore):
    """Writes take a while, as a busy disk or a database another process locks."""

    async def write(self, batch: WriteBatch) -> None:
        await anyio.sleep(0.01)
        await super().write(batch)


@pytest.mark.anyio
async def test_work_waits_for_the_writer_when_it_falls_behind() -> None:
    store = SlowStore()

    @flowcore.task
    async def step(i: int) -> int:
        await anyio.lowlevel.checkpoint()
        return i

    @flowcore.flow
    async def many(n: int) -> int:
        return len(await asyncio.gather(*(step(i) for i in range(n))))

    async with flowcore.Engine(store=store, flush_interval=60) as engine:
        engine.recorder.max_backlog = 100
        assert await many(3000) == 3000
    # Without backpressure the one flush at the end would hold all 3,000; with it, no
    # batch is much bigger than the backlog allowed (plus the runs already past the gate).
    sizes = [len(tasks) for _, tasks in store.batches]
    assert max(sizes) <= 200, sizes
    assert len(sizes) >= 3000 // 200
    await _assert_all_completed(store, 3000)


@pytest.mark.anyio
async def test_backpressure_does_not_hang_a_flow_when_the_store_keeps_failing() -> None:
    store = FlakyStore(failures=None)
    async with flowcore.Engine(store=store, flush_interval=0.01) as engine:
        engine.recorder.max_backlog = 50
        with anyio.fail_after(30), pytest.raises(flowcore.StoreError, match="disk full"):
            await gathered(500)
        assert engine.recorder.pending == 501  # every record kept for a later write
        store.failures_left = 0  # the disk recovers: closing the engine writes them
    await _assert_all_completed(store, 500)
