"""Time in tests: timeouts, retries and expiry checked without waiting them out.

Timeouts are anyio cancel scopes on the event loop's clock; on trio that clock is
replaceable, and ``MockClock(autojump_threshold=0)`` jumps to the next deadline as
soon as everything sleeps. The engine runs on trio with the memory store, so an
hour-long timeout is checked in microseconds, to the exact virtual second.
"""

from __future__ import annotations

import anyio
import pytest
import trio
import trio.testing

import flowcore
from flowcore.testing import FakeClock

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, object]]:
    return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})


async def test_a_task_timeout_fires_at_its_deadline_without_waiting() -> None:
    @flowcore.task(timeout=60)
    async def stuck() -> None:
        await anyio.sleep(3600)

    @flowcore.flow
    async def work() -> None:
        await stuck()

    async with flowcore.Engine("memory") as engine:
        started = trio.current_time()
        with pytest.raises(flowcore.TaskTimeout, match="timed out after 60 s"):
            await work()
        assert trio.current_time() - started == pytest.approx(60)
        assert engine.last_run is not None
        (run,) = await engine.store.list_task_runs(engine.last_run.id)
    assert run.state is flowcore.State.TIMED_OUT


async def test_a_flow_timeout_cancels_its_tasks_at_its_deadline() -> None:
    finished: list[int] = []

    @flowcore.task
    async def slow(i: int) -> None:
        await anyio.sleep(100 * i)
        finished.append(i)

    @flowcore.flow(timeout=250)
    async def work() -> None:
        await flowcore.wait([slow.submit(i) for i in range(1, 5)])

    async with flowcore.Engine("memory") as engine:
        started = trio.current_time()
        with pytest.raises(flowcore.FlowTimeout):
            await work()
        assert trio.current_time() - started == pytest.approx(250)
        assert engine.last_run is not None
        states = [t.state for t in await engine.store.list_task_runs(engine.last_run.id)]
    assert finished == [1, 2]
    assert states == [flowcore.State.COMPLETED] * 2 + [flowcore.State.CANCELLED] * 2


async def test_retry_waits_go_through_the_engine_clock() -> None:
    attempts = 0

    @flowcore.task(retries=3, retry_delay=flowcore.backoff(base=30, factor=2, max=600))
    async def flaky() -> int:
        nonlocal attempts
        attempts += 1
        if attempts < 4:
            raise ConnectionError("down")
        return attempts

    clock = FakeClock()
    async with flowcore.Engine("memory", clock=clock, seed=0):
        assert await flaky() == 4
    assert clock.sleeps == [30, 60, 120]
