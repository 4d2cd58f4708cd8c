"""Futures as users bring them from Prefect: wait_for, allow_failure, nested futures,
map over a future, and result(timeout=...) from a sync task's thread."""

from __future__ import annotations

import contextvars
import threading
from typing import Any, cast

import anyio
import pytest

import flowcore
from flowcore import State
from flowcore.encoding import decode_inputs
from flowcore.engine.futures import TaskFuture, allow_failure

pytestmark = pytest.mark.anyio


async def task_runs(engine: flowcore.Engine) -> list[flowcore.TaskRunRecord]:
    await engine.recorder.flush()
    runs = await engine.store.list_runs()
    top = next(r for r in runs if r.parent_run_id is None)
    return await engine.store.list_task_runs(top.id, limit=None)


@flowcore.task
async def value(x: int) -> int:
    return x


@flowcore.task
async def broken() -> int:
    raise ValueError("no data")


@flowcore.task
async def show(x: Any) -> str:
    return repr(x)


# -- wait_for -------------------------------------------------------------------------


async def test_wait_for_orders_without_data_and_records_the_edges() -> None:
    order: list[str] = []
    release = anyio.Event()

    @flowcore.task
    async def write() -> None:
        await release.wait()
        order.append("write")

    @flowcore.task
    async def read(table: str) -> str:
        order.append("read")
        return table

    @flowcore.flow
    async def f() -> str:
        written = [write.submit(), write.submit()]
        later = read.submit("t", wait_for=written)
        await anyio.lowlevel.checkpoint()
        assert not later.done()  # waiting for the writes, which wait for the event
        release.set()
        return await later

    async with flowcore.Engine("memory") as engine:
        assert await f() == "t"
        tasks = await task_runs(engine)
    assert order == ["write", "write", "read"]
    read_run = tasks[2]
    assert read_run.name == "read" and read_run.upstream == [0, 1]
    assert decode_inputs(read_run.inputs) == {"table": "t"}  # no marker


async def test_wait_for_a_failed_future_is_upstream_failed() -> None:
    ran = False

    @flowcore.task
    async def after() -> None:
        nonlocal ran
        ran = True

    @flowcore.flow
    async def f() -> None:
        b = broken.submit()
        with pytest.raises(flowcore.UpstreamFailed, match="broken"):
            await after.submit(wait_for=[b])
        with pytest.raises(ValueError):
            await b

    async with flowcore.Engine("memory") as engine:
        await f()
        tasks = await task_runs(engine)
    assert not ran
    assert [t.state for t in tasks] == [State.FAILED, State.UPSTREAM_FAILED]
    assert tasks[1].upstream == [0]


async def test_wait_for_takes_one_future_a_map_and_refuses_other_things() -> None:
    @flowcore.flow
    async def f() -> list[str]:
        one = await show.submit(1, wait_for=value.submit(0))
        many = await show.submit(2, wait_for=value.map(range(3)))
        with pytest.raises(flowcore.ConfigurationError, match=r"wait_for.*got int"):
            show.submit(3, wait_for=[1])
        return [one, many]

    async with flowcore.Engine("memory"):
        assert await f() == ["1", "2"]


# -- allow_failure --------------------------------------------------------------------


async def test_allow_failure_passes_the_error_and_counts_it_as_seen() -> None:
    @flowcore.task
    async def report(result: Any) -> str:
        return f"got {type(result).__name__}: {result}"

    @flowcore.flow
    async def f() -> tuple[str, str, str]:
        b = broken.submit()
        ok = value.submit(7)
        failed = await report.submit(allow_failure(b))
        fine = await report.submit(allow_failure(ok))
        ordered = await show.submit("after", wait_for=[allow_failure(broken.submit())])
        return failed, fine, ordered

    async with flowcore.Engine("memory") as engine:
        # The flow completes: the failures were handed to tasks that asked for them.
        assert await f() == ("got ValueError: no data", "got int: 7", "'after'")
        tasks = await task_runs(engine)
    reports = [t for t in tasks if t.name == "report"]
    assert [t.state for t in reports] == [State.COMPLETED, State.COMPLETED]
    assert reports[0].upstream == [0]


def test_allow_failure_takes_futures_only() -> None:
    with pytest.raises(flowcore.ConfigurationError, match="allow_failure"):
        allow_failure(3)  # type: ignore[arg-type]


# -- futures at any depth -------------------------------------------------------------


async def test_futures_are_resolved_at_any_depth() -> None:
    @flowcore.task
    async def gather(data: Any) -> Any:
        return data

    @flowcore.flow
    async def f() -> Any:
        a, b, c, d = (value.submit(i) for i in range(4))
        loop: list[Any] = [1]
        loop.append(loop)  # a list inside itself: looked at once, kept as it is
        data = {"x": [a, (b, {"y": c})], "s": frozenset({d}), "plain": [1, (2, 3)], "loop": loop}
        return await gather.submit(data), loop

    async with flowcore.Engine("memory") as engine:
        got, loop = await f()
        tasks = await task_runs(engine)
    assert got["x"] == [0, (1, {"y": 2})]
    assert got["s"] == frozenset({3})
    assert got["plain"] == [1, (2, 3)]
    assert got["loop"] is loop  # no future inside: passed as it is, not copied
    assert tasks[4].name == "gather" and tasks[4].upstream == [0, 1, 2, 3]


async def test_the_list_a_map_returns_stands_for_its_results() -> None:
    # Regression: a TaskFutureList (a list subclass) was not seen as holding futures,
    # so the task got the futures themselves.
    @flowcore.task
    async def total(xs: list[int]) -> int:
        return sum(xs)

    @flowcore.task(concurrency=2)
    async def limited(i: int) -> int:
        return i

    @flowcore.flow
    async def f() -> tuple[int, int]:
        plain = value.map(range(5))
        fed = limited.map(i for i in range(5))  # filled as its calls start
        return (
            await total.submit(cast(list[int], plain)),
            await total.submit(cast(list[int], fed)),
        )

    async with flowcore.Engine("memory"):
        assert await f() == (10, 10)


# -- map over a future ----------------------------------------------------------------


@flowcore.task
async def numbers(n: int) -> list[int]:
    await anyio.sleep(0.01)
    return list(range(n))


async def test_map_over_a_future_maps_over_its_result() -> None:
    @flowcore.task(concurrency=2)
    async def limited(i: int) -> int:
        return i * 10

    @flowcore.flow
    async def f() -> tuple[list[int], list[int]]:
        # mypy: a future stands for its (iterable) result
        free = value.map(numbers.submit(4))
        under = limited.map(numbers.submit(3))
        return await free, await under

    async with flowcore.Engine("memory") as engine:
        assert await f() == ([0, 1, 2, 3], [0, 10, 20])
        tasks = await task_runs(engine)
    assert {t.state for t in tasks} == {State.COMPLETED}


async def test_map_over_a_failed_future_is_upstream_failed() -> None:
    @flowcore.flow
    async def f() -> None:
        b = broken.submit()
        mapped = value.map(cast(list[int], b))
        with pytest.raises(flowcore.UpstreamFailed, match="maps over failed"):
            await mapped
        with pytest.raises(ValueError):
            await b

    async with flowcore.Engine("memory") as engine:
        await f()
        tasks = await task_runs(engine)
    assert [t.name for t in tasks] == ["broken"]  # no call of the map was made


async def test_map_over_a_future_of_something_not_iterable_says_so() -> None:
    @flowcore.flow
    async def f() -> None:
        with pytest.raises(flowcore.ConfigurationError, match="must be an iterable"):
            await value.map(cast(list[int], value.submit(3)))

    async with flowcore.Engine("memory"):
        await f()


# -- result(timeout=...) --------------------------------------------------------------


class _Box:
    """Hides a future from dependency resolution, so a task gets the future itself."""

    def __init__(self, future: TaskFuture[int]) -> None:
        self.future = future


async def test_result_waits_in_a_sync_tasks_thread_and_times_out() -> None:
    release = anyio.Event()

    @flowcore.task
    async def slow() -> int:
        await release.wait()
        return 5

    @flowcore.task
    def waits(box: _Box) -> tuple[str, int]:
        # In the sync task's worker thread: result() blocks until the run ends.
        with pytest.raises(TimeoutError) as info:
            box.future.result(timeout=0.01)
        anyio.from_thread.run_sync(release.set)
        return str(info.value), box.future.result(timeout=10)

    @flowcore.flow
    async def f() -> tuple[str, int]:
        return await waits(_Box(slow.submit()))

    async with flowcore.Engine("memory"):
        message, result = await f()
    assert "did not finish within 0.01 s" in message and result == 5


async def test_result_of_an_unfinished_future_on_the_loop_still_says_await() -> None:
    @flowcore.task
    async def slow() -> None:
        await anyio.sleep(60)

    @flowcore.flow
    async def f() -> None:
        s = slow.submit()
        with pytest.raises(flowcore.ConfigurationError, match="await future"):
            s.result(timeout=1)
        raise KeyError("done")  # ends the flow, cancelling `slow`

    async with flowcore.Engine("memory"):
        with pytest.raises(KeyError):
            await f()


async def test_result_from_a_thread_flowcore_did_not_start_is_a_clear_error() -> None:
    seen: list[str] = []

    @flowcore.task
    async def slow() -> None:
        await anyio.sleep(60)

    def in_thread(future: TaskFuture[None]) -> None:
        try:
            future.result(timeout=1)
        except flowcore.ConfigurationError as exc:
            seen.append(str(exc))

    @flowcore.flow
    async def f() -> None:
        s = slow.submit()
        thread = threading.Thread(target=contextvars.copy_context().run, args=(in_thread, s))
        thread.start()
        await anyio.to_thread.run_sync(thread.join)
        raise KeyError("done")

    async with flowcore.Engine("memory"):
        with pytest.raises(KeyError):
            await f()
    assert len(seen) == 1 and "thread flowcore did not start" in seen[0]
