"""What users moving from Prefect expect: flow retries, tasks as methods."""

from __future__ import annotations

import anyio
import pytest

import flowcore
from flowcore.testing import FakeClock

pytestmark = pytest.mark.anyio


async def test_a_flow_retries_from_the_start_in_the_same_run_and_records_each_attempt() -> None:
    attempts: list[int] = []

    @flowcore.task
    async def step(i: int) -> int:
        return i

    @flowcore.flow(retries=2, retry_delay=[5, 10])
    async def work() -> int:
        attempt = flowcore.current_flow_run().attempt
        attempts.append(attempt)
        await step(attempt)
        if attempt < 3:
            raise ConnectionError(f"attempt {attempt} failed")
        return attempt

    clock = FakeClock()
    async with flowcore.Engine("memory", clock=clock) as engine:
        assert await work() == 3
        assert engine.last_run is not None
        run = engine.last_run
        task_runs = await engine.store.list_task_runs(run.id)
    assert attempts == [1, 2, 3] and clock.sleeps == [5, 10]
    assert run.state is flowcore.State.COMPLETED
    assert [h[0] for h in run.history] == [
        "Running",
        "Retrying",
        "Running",
        "Retrying",
        "Running",
        "Completed",
    ]
    assert "attempt 1 failed" in str(run.history[1][2])
    # Every attempt's task runs stay recorded, in one run.
    assert [(t.seq, t.name, t.state) for t in task_runs] == [
        (0, "step", flowcore.State.COMPLETED),
        (1, "step", flowcore.State.COMPLETED),
        (2, "step", flowcore.State.COMPLETED),
    ]


async def test_a_flow_that_runs_out_of_retries_fails_with_its_last_error() -> None:
    @flowcore.flow(retries=1)
    async def work() -> None:
        raise ValueError(f"attempt {flowcore.current_flow_run().attempt}")

    async with flowcore.Engine("memory", clock=FakeClock()) as engine:
        with pytest.raises(ValueError, match="attempt 2"):
            await work()
        assert engine.last_run is not None
        assert engine.last_run.state is flowcore.State.FAILED
        assert [h[0] for h in engine.last_run.history].count("Retrying") == 1


async def test_a_flow_timeout_is_per_attempt_and_retried() -> None:
    tries = 0

    @flowcore.flow(timeout=0.05, retries=1)
    async def work() -> str:
        nonlocal tries
        tries += 1
        if tries == 1:
            await anyio.sleep(10)  # the first attempt times out
        return "second"

    async with flowcore.Engine("memory", clock=FakeClock()) as engine:
        assert await work() == "second"
        assert engine.last_run is not None
        assert engine.last_run.state is flowcore.State.COMPLETED


def test_flow_retry_options_are_checked_and_kept_by_with_options() -> None:
    with pytest.raises(flowcore.ConfigurationError, match="`retries` must be an int >= 0"):
        flowcore.flow(retries=-1)
    with pytest.raises(flowcore.ConfigurationError, match="`retry_delay`"):
        flowcore.flow(retries=1, retry_delay=-5)

    @flowcore.flow(retries=2, retry_delay=3)
    async def work() -> None:
        pass

    assert work.retry is not None and work.retry.retries == 2
    renamed = work.with_options(name="other")
    assert renamed.retry == work.retry
    assert work.with_options(retries=0).retry is None
    more = work.with_options(retries=5)
    assert more.retry is not None and (more.retry.retries, more.retry.delay) == (5, 3)


class Repository:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    @flowcore.task
    async def fetch(self, key: str) -> str:
        return f"{self.prefix}:{key}"

    @flowcore.task
    def size(self, key: str) -> int:
        return len(self.prefix) + len(key)


async def test_tasks_defined_as_methods_get_their_instance() -> None:
    repo = Repository("db")

    @flowcore.flow
    async def work() -> list[object]:
        one = await repo.fetch("a")
        two = await repo.fetch.submit("b")
        three = await repo.fetch.map(["c", "d"])
        four = await repo.size("xyz")
        return [one, two, three, four]

    async with flowcore.Engine("memory") as engine:
        assert await work() == ["db:a", "db:b", ["db:c", "db:d"], 5]
        assert engine.last_run is not None
        names = [t.name for t in await engine.store.list_task_runs(engine.last_run.id)]
    assert names == ["fetch", "fetch", "fetch", "fetch", "size"]
    assert Repository.fetch.name == "fetch"  # from the class: the task itself
    assert repo.fetch == repo.fetch and repo.fetch.fn is Repository.fetch.fn
