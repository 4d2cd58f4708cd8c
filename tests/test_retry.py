"""Retries, backoff and timeouts, on a fake clock (no sleeping)."""

from __future__ import annotations

import random

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

import flowcore
from flowcore import State
from flowcore.testing import FakeClock

pytestmark = pytest.mark.anyio


def flaky(failures: int, exc: type[Exception] = ConnectionError) -> flowcore.Task[[], str]:
    calls = 0

    async def fn() -> str:
        nonlocal calls
        calls += 1
        if calls <= failures:
            raise exc(f"attempt {calls} failed")
        return f"ok after {calls}"

    return flowcore.task(fn)


async def run_task(
    t: flowcore.Task[[], str], clock: FakeClock | None = None, seed: int = 0
) -> tuple[str | BaseException, flowcore.TaskRunRecord]:
    @flowcore.flow
    async def f() -> str:
        return await t()

    async with flowcore.Engine("memory", clock=clock or FakeClock(), seed=seed) as engine:
        try:
            outcome: str | BaseException = await f()
        except Exception as exc:
            outcome = exc
        await engine.recorder.flush()
        (run,) = await engine.store.list_runs()
        (rec,) = await engine.store.list_task_runs(run.id)
    return outcome, rec


async def test_retries_until_success_and_records_every_attempt() -> None:
    clock = FakeClock()
    t = flaky(2).with_options(retries=3, retry_delay=[1, 5])
    outcome, rec = await run_task(t, clock)
    assert outcome == "ok after 3"
    assert rec.state is State.COMPLETED and rec.attempts == 3
    assert clock.sleeps == [1.0, 5.0]
    states = [h[0] for h in rec.history]
    assert states == ["Running", "Retrying", "Running", "Retrying", "Running", "Completed"]
    notes = [h[2] for h in rec.history if h[0] == "Retrying"]
    assert notes[0].startswith("ConnectionError: attempt 1 failed")


async def test_retries_exhausted_fails_with_last_error() -> None:
    clock = FakeClock()
    outcome, rec = await run_task(flaky(10).with_options(retries=2, retry_delay=0.5), clock)
    assert isinstance(outcome, ConnectionError) and str(outcome) == "attempt 3 failed"
    assert rec.state is State.FAILED and rec.attempts == 3
    assert rec.error_type == "ConnectionError" and rec.error_message == "attempt 3 failed"
    assert clock.sleeps == [0.5, 0.5]


async def test_backoff_schedule_is_exponential_capped_and_jittered_reproducibly() -> None:
    policy = flowcore.backoff(base=0.2, factor=2, max=1.0, jitter=0.2)
    clock = FakeClock()
    await run_task(flaky(5).with_options(retries=5, retry_delay=policy), clock, seed=42)
    rng = random.Random(42)
    expected = [min(1.0, 0.2 * 2**n) * (1 - 0.2 * rng.random()) for n in range(5)]
    assert clock.sleeps == pytest.approx(expected)
    clock2 = FakeClock()
    await run_task(flaky(5).with_options(retries=5, retry_delay=policy), clock2, seed=42)
    assert clock2.sleeps == clock.sleeps


async def test_retry_on_type_and_predicate() -> None:
    _, rec = await run_task(flaky(1, KeyError).with_options(retries=3, retry_on=ConnectionError))
    assert rec.state is State.FAILED and rec.attempts == 1
    _, rec = await run_task(
        flaky(1, ConnectionError).with_options(retries=3, retry_on=(KeyError, ConnectionError))
    )
    assert rec.state is State.COMPLETED and rec.attempts == 2
    _, rec = await run_task(
        flaky(1, ValueError).with_options(retries=3, retry_on=lambda e: "attempt 1" in str(e))
    )
    assert rec.state is State.COMPLETED and rec.attempts == 2


async def test_non_retryable_stops_retries_at_once() -> None:
    class NotFound(flowcore.NonRetryable):
        pass

    outcome, rec = await run_task(flaky(5, NotFound).with_options(retries=5))
    assert isinstance(outcome, NotFound)
    assert rec.state is State.FAILED and rec.attempts == 1


async def test_wrong_call_arguments_are_not_retried() -> None:
    @flowcore.task(retries=5)
    async def needs_two(a: int, b: int) -> int:
        return a + b

    @flowcore.flow
    async def f() -> int:
        return await needs_two(1)  # type: ignore[call-arg]

    async with flowcore.Engine("memory", clock=FakeClock()) as engine:
        with pytest.raises(flowcore.ConfigurationError, match="do not fit its signature"):
            await f()
        await engine.recorder.flush()
        (run,) = await engine.store.list_runs()
        (rec,) = await engine.store.list_task_runs(run.id)
    assert rec.attempts == 1 and rec.state is State.FAILED


async def test_task_timeout_is_recorded_and_retried() -> None:
    calls = 0

    @flowcore.task(timeout=0.02, retries=1)
    async def slow_then_fast() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await anyio.sleep(10)
        return "fast"

    outcome, rec = await run_task(slow_then_fast)
    assert outcome == "fast" and rec.attempts == 2
    assert "TaskTimeout" in rec.history[1][2]

    @flowcore.task(timeout=0.02)
    async def always_slow() -> str:
        await anyio.sleep(10)
        return "never"

    outcome, rec = await run_task(always_slow)
    assert isinstance(outcome, flowcore.TaskTimeout) and isinstance(outcome, TimeoutError)
    assert "timed out after 0.02 s" in str(outcome)
    assert rec.state is State.TIMED_OUT


async def test_sync_task_timeout() -> None:
    import time

    @flowcore.task(timeout=0.05)
    def blocking() -> str:
        time.sleep(0.3)
        return "late"

    outcome, rec = await run_task(blocking)
    assert isinstance(outcome, flowcore.TaskTimeout)
    assert rec.state is State.TIMED_OUT


async def test_backoff_waits_do_not_block_other_tasks() -> None:
    import asyncio

    progress: list[str] = []

    @flowcore.task(retries=1, retry_delay=0.05)
    async def fails_once() -> None:
        if "failed" not in progress:
            progress.append("failed")
            raise ConnectionError
        progress.append("retried")

    @flowcore.task
    async def quick(i: int) -> None:
        await anyio.sleep(0.001 * i)
        progress.append(f"quick{i}")

    @flowcore.flow
    async def f() -> None:
        await asyncio.gather(fails_once(), *(quick(i) for i in range(3)))

    async with flowcore.Engine("memory"):  # the real clock
        await f()
    assert progress.index("retried") == len(progress) - 1  # the others ran during the backoff


@given(
    base=st.floats(0, 100),
    factor=st.floats(1, 10),
    cap=st.floats(0, 1000),
    jitter=st.floats(0, 1),
    retry=st.integers(0, 10_000),
    seed=st.integers(0, 2**32),
)
def test_backoff_delay_is_always_within_bounds(
    base: float, factor: float, cap: float, jitter: float, retry: int, seed: int
) -> None:
    b = flowcore.Backoff(base=base, factor=factor, max=cap, jitter=jitter)
    delay = b.delay(retry, random.Random(seed))
    assert 0 <= delay <= cap
    try:
        full = min(cap, base * factor**retry)
    except OverflowError:
        full = cap
    assert delay >= full * (1 - jitter) - 1e-9


def test_retry_policy_object_and_validation() -> None:
    p = flowcore.RetryPolicy(retries=2, delay=[1, 2, 3])
    assert p.delay_for(0, random.Random()) == 1 and p.delay_for(5, random.Random()) == 3
    with pytest.raises(flowcore.ConfigurationError) as info:
        flowcore.RetryPolicy(retries=-1, delay="soon")  # type: ignore[arg-type]
    assert "`retries` must be an int >= 0, got -1" in str(info.value)
    assert "`retry_delay`" in str(info.value)
    with pytest.raises(flowcore.ConfigurationError, match="jitter"):
        flowcore.backoff(jitter=2)
    with pytest.raises(flowcore.ConfigurationError, match="factor"):
        flowcore.backoff(factor=0.5)


async def test_a_retried_error_whose_str_raises_reaches_the_flow_unchanged() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no text for you")

    raised = Unprintable()

    @flowcore.task(retries=1)
    async def broken() -> None:
        raise raised

    @flowcore.flow
    async def work() -> None:
        await broken()

    async with flowcore.Engine("memory", clock=FakeClock()) as engine:
        with pytest.raises(Unprintable) as caught:
            await work()
        assert engine.last_run is not None
        (rec,) = await engine.store.list_task_runs(engine.last_run.id)
    assert caught.value is raised
    assert rec.attempts == 2 and rec.state is flowcore.State.FAILED
    assert "unprintable" in str(rec.history[1][2]).lower()
