"""Concurrency and rate limits: invariants under load, failures, timeouts and cancellation."""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import anyio
import anyio.lowlevel
import pytest

import flowcore
from flowcore import State
from flowcore.testing import FakeClock

pytestmark = pytest.mark.anyio


class Gauge:
    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    def __enter__(self) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)

    def __exit__(self, *exc: object) -> None:
        self.now -= 1


async def test_10k_tasks_under_a_limit_of_50_with_failures_timeouts_and_cancellations(
    tmp_path: Path,
) -> None:
    gauge = Gauge()
    rng = random.Random(3)

    @flowcore.task(tags=["partner-api"], timeout=0.05, retries=1)
    async def call(i: int) -> int:
        with gauge:
            r = rng.random()
            if r < 0.03:
                raise ConnectionError("flaky")
            await anyio.sleep(0.2 if r < 0.05 else 0.001)  # some time out
            return i

    @flowcore.task(tags=["partner-api"])
    async def hang(i: int) -> None:
        with gauge:
            await anyio.sleep(60)

    @flowcore.flow
    async def f(n: int, doomed: int) -> int:
        futures = call.map(range(n - doomed))
        # Meanwhile, calls cancelled from outside, some holding slots, most waiting.
        with anyio.move_on_after(0.3):
            await asyncio.gather(*(hang(i) for i in range(doomed)))
        done = 0
        for fut in futures:
            await fut.wait()
            done += fut.exception() is None
        return done

    limits = [flowcore.limit("partner-api", 50)]
    async with flowcore.Engine(tmp_path / "flowcore.db", limits=limits) as engine:
        completed = await f(10_000, 1_000)
        await engine.recorder.flush()
        (run,) = await engine.store.list_runs()
        counts = await engine.store.count_task_runs(run.id)
        stats = engine.limits.statistics()["partner-api"]
    assert gauge.peak <= 50
    assert gauge.peak >= 48  # the limit is used, not just respected
    assert gauge.now == 0 and stats["holders"] == 0 and stats["waiting"] == 0  # all back
    assert sum(counts.values()) == 10_000
    assert counts["Cancelled"] == 1_000  # holding or waiting, each gave its slot back
    assert counts["Completed"] >= completed > 8_000
    assert counts.get("Failed", 0) + counts.get("TimedOut", 0) > 0


async def test_per_task_concurrency_and_cancellation_give_slots_back() -> None:
    gauge = Gauge()
    started = anyio.Event()

    @flowcore.task(concurrency=3)
    async def slow(i: int) -> None:
        with gauge:
            started.set()
            await anyio.sleep(10)

    @flowcore.task(concurrency=3)
    async def quick(i: int) -> int:
        with gauge:
            await anyio.sleep(0.001)
            return i

    @flowcore.flow
    async def f() -> list[int]:
        with anyio.move_on_after(0.05):
            await asyncio.gather(*(slow(i) for i in range(10)))
        return list(await asyncio.gather(*(quick(i) for i in range(20))))

    async with flowcore.Engine("memory"):
        assert await f() == list(range(20))
    assert gauge.peak == 3


async def test_waiting_for_a_limit_is_visible_and_not_counted_in_the_timeout() -> None:
    @flowcore.task(concurrency=1, timeout=0.1)
    async def one_at_a_time(i: int) -> int:
        await anyio.sleep(0.06)
        return i

    @flowcore.flow
    async def f() -> list[int]:
        return list(await asyncio.gather(*(one_at_a_time(i) for i in range(4))))

    async with flowcore.Engine("memory") as engine:
        # 4 x 0.06 s in turn: the last waits 0.18 s, more than its 0.1 s timeout.
        assert await f() == [0, 1, 2, 3]
        await engine.recorder.flush()
        (run,) = await engine.store.list_runs()
        tasks = await engine.store.list_task_runs(run.id)
    assert all(t.state is State.COMPLETED for t in tasks)
    waited = [t for t in tasks if any(h[0] == "Pending" for h in t.history)]
    assert len(waited) == 3
    assert "waiting for limit one_at_a_time (concurrency=1)" in waited[0].history[1][2]


async def test_flow_concurrency() -> None:
    gauge = Gauge()

    @flowcore.task
    async def work(i: int) -> int:
        with gauge:
            await anyio.sleep(0.002)
            return i

    @flowcore.flow(concurrency=7)
    async def f() -> int:
        return len(await work.map(range(200)))

    async with flowcore.Engine("memory"):
        assert await f() == 200
    assert gauge.peak == 7


async def test_rate_limit_is_held_on_a_fake_clock() -> None:
    clock = FakeClock()
    times: list[float] = []

    @flowcore.task(tags=["api"])
    async def hit(i: int) -> None:
        times.append(clock.now())

    @flowcore.flow
    async def f() -> None:
        await asyncio.gather(*(hit(i) for i in range(100)))

    limits = [flowcore.limit("api", rate=10, burst=5)]
    async with flowcore.Engine("memory", clock=clock, limits=limits):
        await f()
    assert len(times) == 100
    assert times[:5] == [0.0] * 5  # the burst
    # After the burst, 10 a second: 95 more take 9.5 s; any 1 s window holds at most 10 + burst.
    assert times[-1] == pytest.approx(9.5)
    for start in range(len(times)):
        window = [t for t in times if times[start] <= t < times[start] + 1.0]
        assert len(window) <= 15


async def test_limit_as_a_context_manager() -> None:
    gauge = Gauge()

    async def use() -> None:
        async with flowcore.limit("db", 2):
            with gauge:
                await anyio.sleep(0.005)

    async with flowcore.Engine("memory"), anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(use)
    assert gauge.peak == 2
    with pytest.raises(flowcore.ConfigurationError, match="needs an engine"):
        async with flowcore.limit("db", 2):
            pass


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"concurrency": 0}, "`concurrency` must be an int >= 1"),
        ({"rate": -1}, "`rate` must be"),
        ({}, "needs `concurrency`, `rate`, or both"),
    ],
)
def test_invalid_limits(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(flowcore.ConfigurationError, match=message.replace("(", r"\(")):
        flowcore.limit("x", **kwargs)  # type: ignore[arg-type]


def test_a_limit_name_with_lone_surrogates_is_refused_up_front() -> None:
    # A shared limit's name is a key in the store, which cannot hold it: said when the
    # limit is made, not as an encoding error at its first acquisition.
    with pytest.raises(flowcore.ConfigurationError, match="no lone surrogates"):
        flowcore.limit("caf\udce9", 2, shared=True)


def test_invalid_task_and_flow_limits() -> None:
    with pytest.raises(flowcore.ConfigurationError, match="`concurrency` must be an int >= 1"):
        flowcore.task(concurrency=0)
    with pytest.raises(flowcore.ConfigurationError, match="`concurrency`"):
        flowcore.flow(concurrency="many")  # type: ignore[call-overload]
    with pytest.raises(flowcore.ConfigurationError, match="one name, one limit"):
        flowcore.Engine("memory", limits=[flowcore.limit("a", 1), flowcore.limit("a", 2)])


async def test_map_under_a_limit_keeps_few_calls_alive() -> None:
    alive_peak = 0

    @flowcore.task(concurrency=5)
    async def work(i: int) -> int:
        await anyio.lowlevel.checkpoint()
        return i * 2

    @flowcore.flow
    async def f(n: int) -> int:
        nonlocal alive_peak
        futures = work.map(range(n))

        async def watch() -> None:
            nonlocal alive_peak
            while True:
                s = engine.statistics()
                alive_peak = max(alive_peak, s.tasks_started - s.tasks_completed)
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            results = await flowcore.wait(futures)
            tg.cancel_scope.cancel()
        assert results == [i * 2 for i in range(n)]
        assert [fut.seq for fut in futures] == list(range(n))  # started in order
        return len(results)

    async with flowcore.Engine("memory") as engine:
        assert await f(3000) == 3000
        await engine.recorder.flush()
        (run,) = await engine.store.list_runs()
        assert (await engine.store.count_task_runs(run.id)) == {"Completed": 3000}
    # Calls alive at once (started, not finished): bounded by the window (2 x 5), not N.
    assert 0 < alive_peak <= 10


async def test_map_without_a_limit_starts_everything() -> None:
    @flowcore.task
    async def work(i: int) -> int:
        return i

    @flowcore.flow
    async def f() -> list[int]:
        return await work.map(range(50))

    async with flowcore.Engine("memory"):
        assert await f() == list(range(50))


async def test_timeout_includes_wait_counts_the_wait_only_when_asked() -> None:
    @flowcore.task(concurrency=1)
    async def holder() -> None:
        await anyio.sleep(0.3)

    @flowcore.task(concurrency=1, timeout=0.1)
    async def patient() -> str:
        return "ran"

    impatient = patient.with_options(timeout_includes_wait=True)
    # Same limit for both: a task's concurrency is per task, so share a named limit.
    holder_tagged = holder.with_options(concurrency=None, tags=["db"])
    patient_tagged = patient.with_options(concurrency=None, tags=["db"])
    impatient_tagged = impatient.with_options(concurrency=None, tags=["db"])

    @flowcore.flow
    async def f() -> list[object]:
        return list(
            await asyncio.gather(
                holder_tagged(), patient_tagged(), impatient_tagged(), return_exceptions=True
            )
        )

    async with flowcore.Engine("memory", limits=[flowcore.limit("db", 1)]) as engine:
        results = await f()
        await engine.recorder.flush()
        (run,) = await engine.store.list_runs()
        counts = await engine.store.count_task_runs(run.id)
    assert results[0] is None
    assert results[1] == "ran"  # waited 0.3 s for the slot, its 0.1 s timeout untouched
    assert isinstance(results[2], flowcore.TaskTimeout)
    assert "waiting for its limits" in str(results[2])
    assert counts == {"Completed": 2, "TimedOut": 1}


def test_timeout_includes_wait_needs_a_timeout() -> None:
    with pytest.raises(flowcore.ConfigurationError, match="needs a `timeout`"):
        flowcore.task(timeout_includes_wait=True)(lambda: None)
    with pytest.raises(flowcore.ConfigurationError, match="True or False"):
        flowcore.task(timeout=1, timeout_includes_wait="yes")(lambda: None)  # type: ignore[call-overload]


async def test_a_task_rate_is_held_on_a_fake_clock_and_bounds_a_map() -> None:
    clock = FakeClock()
    times: list[float] = []
    alive_peak = 0

    @flowcore.task(rate=10, burst=5)
    async def hit(i: int) -> int:
        times.append(clock.now())
        return i

    @flowcore.flow
    async def f() -> list[int]:
        nonlocal alive_peak
        futures = hit.map(range(100))
        for fut in futures:
            s = engine.statistics()
            alive_peak = max(alive_peak, s.tasks_started - s.tasks_completed)
            await fut.wait()
        return await flowcore.wait(futures)

    async with flowcore.Engine("memory", clock=clock) as engine:
        assert await f() == list(range(100))
    assert times[:5] == [0.0] * 5  # the burst, then 10 a second
    assert times[-1] == pytest.approx(9.5)
    # A rate-only limit still bounds a map: a second's worth of calls (x2), not all 100.
    assert 0 < alive_peak <= 20


def test_bad_task_rates_are_refused() -> None:
    with pytest.raises(flowcore.ConfigurationError, match="`rate` must be"):
        flowcore.task(rate=0)(lambda: None)
    with pytest.raises(flowcore.ConfigurationError, match="`burst` needs a `rate`"):
        flowcore.task(burst=3)(lambda: None)
    for bad in ("fast", float("inf"), True):
        with pytest.raises(flowcore.ConfigurationError, match="`rate` must be"):
            flowcore.task(rate=bad)(lambda: None)  # type: ignore[arg-type]
        with pytest.raises(flowcore.ConfigurationError, match="`rate` must be"):
            flowcore.limit("api", rate=bad)  # type: ignore[arg-type]


def test_a_task_rate_changed_with_options_gets_its_own_default_burst() -> None:
    # The default burst is a second's worth of the rate in force, not of the rate the
    # task was first decorated with.
    @flowcore.task(rate=10)
    async def slow() -> None:
        pass

    def burst(task: flowcore.Task[[], None]) -> int | None:
        assert task.own_limit is not None
        return task.own_limit.burst

    assert burst(slow) == 10
    assert burst(slow.with_options(rate=100)) == 100
    assert burst(slow.with_options(rate=100, burst=3)) == 3


class Enough(Exception):
    """Ends a flow that maps over an endless iterator (the flow cancels the map)."""


async def test_a_map_over_an_endless_generator_under_a_limit_reads_it_as_calls_start() -> None:
    # Regression: map() read its iterables whole first, so an endless generator froze
    # the event loop and grew memory without end.
    read = 0

    def endless() -> Iterator[int]:
        nonlocal read
        for i in itertools.count():
            read += 1
            if read > 100_000:
                raise AssertionError("the generator was read far ahead of the calls")
            yield i

    enough = anyio.Event()

    @flowcore.task(concurrency=3)
    async def work(i: int) -> int:
        await anyio.lowlevel.checkpoint()
        if i == 200:
            enough.set()
        return i

    @flowcore.flow
    async def f() -> None:
        futures = work.map(endless())
        await enough.wait()
        done = sum(fut.done() for fut in futures)
        # Read only as far as calls were started (each has its future, with its seq),
        # and at most a window (2 x 3) ahead of the calls that have ended.
        assert len(futures) == read and read <= done + 6
        assert [fut.seq for fut in futures[:3]] == [0, 1, 2]
        raise Enough

    async with flowcore.Engine("memory"):
        with pytest.raises(Enough):
            await f()


async def test_a_map_reading_a_generator_yields_to_the_event_loop() -> None:
    ticks = 0
    seen: list[int] = []  # the ticks each item of the generator saw when it was read

    def items() -> Iterator[int]:
        for i in range(3000):
            seen.append(ticks)
            yield i

    @flowcore.task(concurrency=100_000)  # a window far wider than the generator
    async def work(i: int) -> int:
        return i

    @flowcore.flow
    async def f() -> list[int]:
        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(tick)
            await anyio.lowlevel.checkpoint()
            results = await work.map(items())
            tg.cancel_scope.cancel()
        return results

    async with flowcore.Engine("memory"):
        assert await f() == list(range(3000))
    assert seen[-1] > seen[0]  # the loop ran other tasks while the generator was read


async def test_a_map_over_an_endless_generator_without_a_limit_is_refused() -> None:
    @flowcore.task
    async def work(i: int) -> int:
        return i

    @flowcore.flow
    async def f() -> list[int]:
        with pytest.raises(flowcore.ConfigurationError, match="without reaching its end"):
            work.map(itertools.count())
        return await work.map(i for i in range(10))  # a generator that ends is fine

    async with flowcore.Engine("memory"):
        assert await f() == list(range(10))


async def test_a_generator_mapped_from_a_sync_task_is_read_on_the_loops_thread() -> None:
    threads: set[int] = set()

    def items() -> Iterator[int]:
        for i in range(20):
            threads.add(threading.get_ident())
            yield i

    @flowcore.task(concurrency=2)
    async def work(i: int) -> int:
        return i

    @flowcore.task
    def maps_from_its_thread() -> list[int]:
        futures = work.map(items())
        return anyio.from_thread.run(flowcore.wait, futures)

    @flowcore.flow
    async def f() -> tuple[int, list[int]]:
        return threading.get_ident(), await maps_from_its_thread()

    async with flowcore.Engine("memory"):
        loop_thread, results = await f()
    assert results == list(range(20)) and threads == {loop_thread}


async def test_downstream_of_a_limited_map_records_the_real_edges() -> None:
    # Regression: the futures of a map under a limit have no seq until their call
    # starts, and a downstream task recorded the edges before waiting: upstream [-1].
    @flowcore.task(concurrency=1)
    async def work(i: int) -> int:
        await anyio.lowlevel.checkpoint()
        return i

    @flowcore.task
    async def total(xs: list[int]) -> int:
        return sum(xs)

    @flowcore.flow
    async def f() -> int:
        futures = work.map(range(5))
        return await total.submit(cast(list[int], list(futures)))

    async with flowcore.Engine("memory") as engine:
        assert await f() == 10
        await engine.recorder.flush()
        (run,) = await engine.store.list_runs()
        tasks = await engine.store.list_task_runs(run.id)
    works = sorted(t.seq for t in tasks if t.name == "work")
    (downstream,) = [t for t in tasks if t.name == "total"]
    assert len(works) == 5 and downstream.upstream == works
