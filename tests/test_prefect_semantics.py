"""What users moving from Prefect expect: flow retries, tasks as methods."""

from __future__ import annotations

from typing import cast

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


async def test_task_runs_carry_their_tags_and_names_and_filter_by_tag() -> None:
    @flowcore.task(tags=["api", "pages"], task_run_name="fetch-{page}")
    async def fetch(page: int, size: int = 10) -> int:
        info = flowcore.current_task_run()
        assert info.tags == ("api", "pages") and info.run_name == f"fetch-{page}"
        return page

    @flowcore.task(task_run_name=lambda args: f"save {args['rows']} rows")
    def save(rows: int) -> int:
        return rows

    @flowcore.task
    async def plain() -> None:
        pass

    @flowcore.flow
    async def work() -> None:
        for page in (1, 2):
            await fetch(page)
        await save(3)
        await plain()

    async with flowcore.Engine("memory") as engine:
        await work()
        assert engine.last_run is not None
        runs = await engine.store.list_task_runs(engine.last_run.id)
        tagged = await engine.store.list_task_runs(engine.last_run.id, tag="api")
        counts = await engine.store.count_task_runs(engine.last_run.id, tag="pages")
    assert [(t.name, t.run_name, t.tags) for t in runs] == [
        ("fetch", "fetch-1", ["api", "pages"]),
        ("fetch", "fetch-2", ["api", "pages"]),
        ("save", "save 3 rows", None),
        ("plain", None, None),
    ]
    assert [t.seq for t in tagged] == [0, 1] and counts == {"Completed": 2}


def test_a_run_name_template_naming_no_parameter_is_refused_at_decoration() -> None:
    with pytest.raises(flowcore.ConfigurationError, match="'pg', which is not a parameter"):

        @flowcore.task(task_run_name="fetch-{pg}")
        async def fetch(page: int) -> None: ...

    with pytest.raises(flowcore.ConfigurationError, match="`task_run_name` must be"):
        flowcore.task(task_run_name=3)  # type: ignore[call-overload]


async def test_a_run_name_function_that_fails_never_fails_the_task() -> None:
    @flowcore.task(task_run_name=lambda args: str(1 / 0))
    async def step() -> int:
        return 1

    @flowcore.flow
    async def work() -> int:
        return await step()

    async with flowcore.Engine("memory") as engine:
        assert await work() == 1
        assert engine.last_run is not None
        (run,) = await engine.store.list_task_runs(engine.last_run.id)
    assert run.state is flowcore.State.COMPLETED and run.run_name is None


async def test_futures_passed_to_a_subflow_are_waited_for_and_recorded_as_its_edges() -> None:
    @flowcore.task
    async def up(n: int) -> int:
        return n

    @flowcore.task
    async def broken() -> int:
        raise ValueError("no")

    @flowcore.flow
    async def total(values: list[int], extra: dict[str, int]) -> int:
        return sum(values) + extra["k"]

    @flowcore.flow
    async def parent() -> int:
        a, b, c = up.submit(1), up.submit(2), up.submit(3)
        # Futures stand for their results (typed as those results here).
        result = await total(cast(list[int], [a, b]), cast(dict[str, int], {"k": c}))
        bad = broken.submit()
        with pytest.raises(flowcore.UpstreamFailed, match="flow 'total' was not run"):
            await total(cast(list[int], [bad]), {"k": 0})
        assert isinstance(bad.exception(), ValueError)  # its own failure, looked at
        return result

    async with flowcore.Engine("memory") as engine:
        assert await parent() == 6
        assert engine.last_run is not None
        children = await engine.store.child_runs(engine.last_run.id)
    # The call given a failed future is a run too, recorded Failed (its hooks fire).
    (child,) = [c for c in children if c.state is flowcore.State.COMPLETED]
    assert child.name == "total" and child.upstream == [0, 1, 2]
    (refused,) = [c for c in children if c.state is flowcore.State.FAILED]
    assert refused.error_type == "flowcore.UpstreamFailed" and refused.upstream == [3]
