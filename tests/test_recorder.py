"""The write-behind recorder, seen through an Engine: batching, coalescing, no lost records."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import anyio
import anyio.lowlevel
import msgspec
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


async def _assert_end_unwritten(store: MemoryStore, tasks: int) -> None:
    """The one run's end could not be written when it ended, and its caller got the
    StoreError: it is recorded Failed with that error, never Completed; its task runs,
    which did complete (and whose callers saw it), are Completed."""
    (run,) = await store.list_runs()
    assert run.state is State.FAILED
    assert run.error_type == "flowcore.StoreError"
    assert run.error_message is not None and "disk full" in run.error_message
    assert run.ended is not None
    assert [h[0] for h in run.history] == ["Running", "Failed"]
    assert "it ended Completed, but that could not be recorded" in run.history[-1][2]
    assert await store.count_task_runs(run.id) == {"Completed": tasks}


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
        assert engine.last_run is not None and engine.last_run.state is State.FAILED
    assert store.failed == 1
    # Written when the engine closes, as what its caller saw: Failed, not Completed.
    await _assert_end_unwritten(store, 5)


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
    await _assert_end_unwritten(store, 500)


# -- strict durability when the store cannot be written ------------------------------------


@flowcore.task
async def one(i: int) -> int:
    return i


@flowcore.flow
async def strict_flow(n: int = 3) -> int:
    return sum([await one(i) for i in range(n)])


@pytest.mark.anyio
async def test_strict_commit_fails_at_once_when_the_store_cannot_be_written() -> None:
    # Regression: a failed flush never woke the tasks waiting in commit(), so under
    # durability="strict" a full disk hung the flow forever.
    store = FlakyStore(failures=None)
    async with flowcore.Engine(store=store, durability="strict", flush_interval=60) as engine:
        with anyio.fail_after(30), pytest.raises(flowcore.StoreError, match="disk full"):
            await strict_flow()
        assert engine.last_run is not None
        assert engine.last_run.state is State.FAILED  # what the caller saw, not Completed
        assert engine.last_run.error_type == "flowcore.StoreError"
        store.failures_left = 0  # the disk recovers: closing the engine writes the records
    (run,) = await store.list_runs()
    assert run.state is State.FAILED and run.error_type == "flowcore.StoreError"
    # The task whose completion could not be committed did complete (its result is
    # stored; a resume replays it): the error was the store's, and the run carries it.
    assert await store.count_task_runs(run.id) == {"Completed": 1}


@pytest.mark.anyio
async def test_strict_commit_failure_reaches_the_flow_which_may_go_on() -> None:
    store = FlakyStore(failures=1)
    seen: list[str] = []

    @flowcore.flow
    async def careful() -> int:
        try:
            await one(1)
        except flowcore.StoreError as exc:
            seen.append(str(exc))
        return await one(2)  # the disk is back: committed before it returns

    async with flowcore.Engine(store=store, durability="strict", flush_interval=60):
        with anyio.fail_after(30):
            assert await careful() == 2
    assert seen == ["disk full (simulated)"]
    (run,) = await store.list_runs()
    assert run.state is State.COMPLETED
    assert await store.count_task_runs(run.id) == {"Completed": 2}


@pytest.mark.anyio
async def test_waiters_of_a_failed_commit_each_get_their_own_error() -> None:
    store = FlakyStore(failures=1)

    @flowcore.flow
    async def together() -> list[object]:
        # Both completions wait for the same flush (group commit), which fails.
        return list(await asyncio.gather(one(1), one(2), return_exceptions=True))

    async with flowcore.Engine(store=store, durability="strict", flush_interval=60):
        with anyio.fail_after(30):
            results = await together()
    assert all(isinstance(r, flowcore.StoreError) for r in results), results
    assert results[0] is not results[1]
    assert str(results[0]) == str(results[1]) == "disk full (simulated)"
    assert store.failed == 1


# -- errors the writer did not expect ---------------------------------------------------------


class BuggyStore(RecordingStore):
    """Its first ``failures`` writes raise an error that is not a StoreError (a bug in a
    store plugin, say), before writing anything."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures_left = failures
        self.failures_used_up = anyio.Event()

    async def write(self, batch: WriteBatch) -> None:
        if self.failures_left > 0:
            self.failures_left -= 1
            if self.failures_left == 0:
                self.failures_used_up.set()
            raise KeyError("a bug in the store")
        await super().write(batch)


@pytest.mark.anyio
async def test_an_unexpected_error_in_the_writer_is_logged_and_the_engine_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Regression: anything but a StoreError raised in the writer's own flushes killed
    # the writer task (and with it the engine): nothing more was recorded.
    store = BuggyStore(failures=2)

    @flowcore.flow
    async def waits_for_the_writer() -> int:
        first = sum(await flowcore.wait([noop.submit(i) for i in range(10)]))
        with anyio.fail_after(10):  # the writer's periodic flushes meet both failures
            await store.failures_used_up.wait()
        return first + len(await asyncio.gather(*(noop(i) for i in range(10))))

    async with flowcore.Engine(store=store, flush_interval=0.01):
        assert await waits_for_the_writer() == sum(range(10)) + 10
        assert await small(5) == 10  # the engine goes on
    logged = [r for r in caplog.records if "could not write run records" in r.getMessage()]
    assert len(logged) == 1  # once while it repeats, with the traceback of the bug
    assert "KeyError" in logged[0].getMessage()
    assert logged[0].exc_info is not None and logged[0].exc_info[0] is KeyError
    runs = {r.name: r for r in await store.list_runs()}
    assert runs["waits_for_the_writer"].state is State.COMPLETED
    assert await store.count_task_runs(runs["waits_for_the_writer"].id) == {"Completed": 20}
    assert await store.count_task_runs(runs["small"].id) == {"Completed": 5}


@pytest.mark.anyio
async def test_an_unexpected_error_at_a_runs_end_reaches_its_caller_as_a_store_error() -> None:
    store = BuggyStore(failures=1)
    async with flowcore.Engine(store=store, flush_interval=60):
        with pytest.raises(flowcore.StoreError, match="KeyError: 'a bug in the store'"):
            await small(3)
        assert await small(3) == 3
    runs = sorted(await store.list_runs(), key=lambda r: r.created)
    assert [r.state for r in runs] == [State.FAILED, State.COMPLETED]


class PickyStore(RecordingStore):
    """Refuses, as SQLite does, a batch holding text that is not valid Unicode."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = 0

    async def write(self, batch: WriteBatch) -> None:
        try:
            msgspec.msgpack.encode([*batch.flow_runs, *batch.task_runs, *batch.spans])
        except UnicodeEncodeError:
            self.refused += 1
            raise
        await super().write(batch)


@pytest.mark.anyio
async def test_a_batch_refused_for_a_value_is_made_recordable_and_written() -> None:
    # A task named from a file name that is not UTF-8: nothing on the way escapes a
    # task's own name, so the store refuses the batch, and the writer makes it
    # recordable and writes it again instead of dying or dropping it.
    store = PickyStore()
    name = os.fsdecode(b"caf\xe9.csv")

    @flowcore.task(name=name)
    async def opens() -> int:
        return 1

    @flowcore.flow
    async def reads() -> int:
        return await opens()

    async with flowcore.Engine(store=store, flush_interval=60):
        assert await reads() == 1
    assert store.refused == 1
    (run,) = await store.list_runs()
    assert run.state is State.COMPLETED
    (task_run,) = await store.list_task_runs(run.id)
    assert task_run.state is State.COMPLETED
    assert task_run.name == "caf\\xe9.csv"


# -- group commit of run ends ---------------------------------------------------------------


class SlowWriteStore(RecordingStore):
    """Each write takes a turn of a gate (an event the test sets), so run ends pile up
    while one is in flight, as they do behind a commit on a busy disk."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = anyio.Event()
        self.writing = anyio.Event()
        self.fail_next = False

    async def write(self, batch: WriteBatch) -> None:
        self.writing.set()
        await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise flowcore.StoreError("disk full (simulated)")
        await super().write(batch)


@flowcore.flow
async def handler(gate: int) -> int:
    return await noop(gate)


@pytest.mark.anyio
async def test_run_ends_arriving_during_a_commit_share_the_next_one() -> None:
    """The flow runs of a service: ends that arrive while a commit is in flight all go in
    the next single transaction, and each caller returns with its own run committed."""
    store = SlowWriteStore()
    async with flowcore.Engine(store=store, flush_interval=60) as engine:
        first = asyncio.ensure_future(handler(0))
        await store.writing.wait()  # the first run's end is being written
        rest = [asyncio.ensure_future(handler(i)) for i in range(1, 31)]
        for _ in range(20):
            await anyio.lowlevel.checkpoint()  # let all 30 reach their end
        writes_before = len(store.batches)
        store.gate.set()
        assert await first == 0
        assert await asyncio.gather(*rest) == list(range(1, 31))
        ends = [b for b in store.batches[writes_before:] if any(s == "Completed" for _, s in b[0])]
        # The 30 ends that waited: one transaction (the first run's end was its own).
        assert len(ends) == 2, [len(b[0]) for b in ends]
        assert sorted(len(b[0]) for b in ends) == [1, 30]
        for run in await store.list_runs(limit=100):  # each caller's run: committed
            assert run.state is State.COMPLETED
        assert engine.recorder.pending == 0


_go = anyio.Event()


@flowcore.flow
async def waiting_handler(i: int) -> int:
    await _go.wait()
    return await noop(i)


@pytest.mark.anyio
async def test_run_ends_of_one_turn_of_the_loop_share_one_commit() -> None:
    """Requests ending together (a store that writes without waiting, so nothing piles up
    behind a write in flight): one transaction for all their ends, not one each."""
    global _go
    _go = anyio.Event()
    store = RecordingStore()
    async with flowcore.Engine(store=store, flush_interval=60):
        callers = [asyncio.ensure_future(waiting_handler(i)) for i in range(30)]
        for _ in range(20):
            await anyio.lowlevel.checkpoint()  # every run started, waiting
        writes_before = len(store.batches)
        _go.set()
        assert await asyncio.gather(*callers) == list(range(30))
        ends = [b for b in store.batches[writes_before:] if b[0]]
        assert [len(b[0]) for b in ends] == [30]
        assert all(r.state is State.COMPLETED for r in await store.list_runs(limit=100))


@pytest.mark.anyio
async def test_a_failed_group_commit_fails_every_caller_and_keeps_their_records() -> None:
    store = SlowWriteStore()
    store.fail_next = True
    async with flowcore.Engine(store=store, flush_interval=60) as engine:
        callers = [asyncio.ensure_future(handler(i)) for i in range(10)]
        await store.writing.wait()
        store.gate.set()
        outcomes = await asyncio.gather(*callers, return_exceptions=True)
        assert all(isinstance(o, flowcore.StoreError) for o in outcomes), outcomes
        assert engine.recorder.pending > 0  # kept, written when the engine closes
    runs = await store.list_runs(limit=100)
    assert len(runs) == 10
    assert all(r.state is State.FAILED and "could not be recorded" in str(r.history) for r in runs)


@pytest.mark.anyio
async def test_a_cancelled_caller_does_not_hold_back_the_others() -> None:
    store = SlowWriteStore()
    async with flowcore.Engine(store=store, flush_interval=60):
        first = asyncio.ensure_future(handler(0))
        await store.writing.wait()
        others = [asyncio.ensure_future(handler(i)) for i in range(1, 6)]
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        others[0].cancel()
        store.gate.set()
        assert await first == 0
        outcomes = await asyncio.gather(*others, return_exceptions=True)
        assert outcomes[1:] == [2, 3, 4, 5]
        runs = {r.name: r for r in await store.list_runs(limit=100)}
        assert all(r.state in (State.COMPLETED, State.CANCELLED) for r in runs.values())


class NoNulStore(RecordingStore):
    """Refuses, as PostgreSQL's text does, a batch holding a NUL character (ValueError)."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = 0

    async def write(self, batch: WriteBatch) -> None:
        # JSON writes a NUL of text as \u0000 (and bytes as base64: none of theirs count).
        if b"\\u0000" in msgspec.json.encode([*batch.flow_runs, *batch.task_runs]):
            self.refused += 1
            raise ValueError("invalid byte sequence for encoding UTF8: 0x00")
        await super().write(batch)


@pytest.mark.anyio
async def test_a_nul_character_a_store_refuses_is_written_escaped() -> None:
    """A task that fails with a NUL in its message (bytes decoded as text, say): the
    store refuses the batch, and the writer escapes the NUL and writes it, rather than
    retrying the same batch for ever."""
    store = NoNulStore()

    @flowcore.task
    async def parses() -> int:
        raise ValueError("bad header: a\x00b")

    @flowcore.flow
    async def reads() -> str:
        try:
            await parses()
        except ValueError:
            return "handled"
        return "no error"

    async with flowcore.Engine(store=store, flush_interval=60):
        assert await reads() == "handled"
    assert store.refused == 1
    (run,) = await store.list_runs()
    (task_run,) = await store.list_task_runs(run.id)
    assert task_run.state is State.FAILED
    assert task_run.error_message == "bad header: a\\x00b"
