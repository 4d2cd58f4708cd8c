"""Calls on the Dask executor: where they run, what comes back, and what stays in the engine.

Everything about a task run but the call itself (records, retries, limits, timeouts,
cancellation) is the engine's, whatever the executor; these tests check that it stays so
when the call runs in a worker process of a real cluster, and that the cluster keeps
nothing of a call once it returned.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fractions
import importlib
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from dask_helpers import Signals, held_keys, signal, task_runs
from distributed import Event

import flowcore
from flowcore_dask import (
    DaskExecutor,
    FunctionUnavailable,
    NotPicklable,
    ResultNotTransferable,
)

# Every test here runs calls in the worker processes of a real cluster.
pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@dataclasses.dataclass
class Point:
    x: int
    y: int


@flowcore.task(executor="dask")
def where_sync(x: int) -> tuple[int, int]:
    return os.getpid(), x * x


@flowcore.task(executor="dask")
async def where_async(x: int) -> tuple[int, int]:
    await asyncio.sleep(0)
    return os.getpid(), x + 1


async def test_sync_and_async_tasks_run_in_worker_processes_and_are_recorded(
    executor: DaskExecutor,
) -> None:
    @flowcore.flow
    async def work() -> list[tuple[int, int]]:
        sync_calls = [where_sync.submit(x) for x in range(3)]
        return [*await flowcore.wait(sync_calls), await where_async(5)]

    async with flowcore.Engine("memory", executors={"dask": executor}) as engine:
        results = await work()
        runs = await task_runs(engine)
    workers = set((await executor.client.run(os.getpid)).values())
    assert [value for _, value in results] == [0, 1, 4, 6]
    assert {pid for pid, _ in results} <= workers and os.getpid() not in workers
    assert [(r.name, r.state, r.attempts) for r in runs] == [
        ("where_sync", flowcore.State.COMPLETED, 1),
        ("where_sync", flowcore.State.COMPLETED, 1),
        ("where_sync", flowcore.State.COMPLETED, 1),
        ("where_async", flowcore.State.COMPLETED, 1),
    ]
    assert all(r.result is not None for r in runs)  # stored as for local tasks


@flowcore.task(executor="dask")
def point(x: int) -> Point:
    return Point(x, -x)


@flowcore.task(executor="dask")
def unannotated(x: int):  # type: ignore[no-untyped-def]
    return (x, x)


@flowcore.task(executor="dask", serializer="pickle")
def fraction(x: int) -> fractions.Fraction:
    return fractions.Fraction(x, 3)


@flowcore.task(executor="dask", retries=2)
def live_object() -> Any:
    return threading.Lock()


async def test_results_come_back_by_value_as_the_store_would_give_them(
    executor: DaskExecutor,
) -> None:
    @flowcore.flow
    async def work() -> list[Any]:
        return [await point(2), await unannotated(3), await fraction(1)]

    @flowcore.flow
    async def broken() -> Any:
        return await live_object()

    async with flowcore.Engine("memory", executors={"dask": executor}) as engine:
        # msgpack decoded with the annotation; plain data without one (a tuple comes back
        # a list, as from the store); a value msgspec cannot encode comes back pickled.
        assert await work() == [Point(2, -2), [3, 3], fractions.Fraction(1, 3)]
        with pytest.raises(ResultNotTransferable, match="task 'live_object' returned a lock"):
            await broken()
        runs = await task_runs(engine)
    assert runs[0].attempts == 1  # not retried: it would fail the same way


@flowcore.task(executor="dask", retries=2, retry_delay=0)
def flaky(marker: str) -> int:
    path = Path(marker)
    with path.open("a") as f:
        f.write("run\n")
    runs = len(path.read_text().splitlines())
    if runs < 3:
        raise ConnectionError(f"attempt {runs} failed")
    return runs


@flowcore.task(executor="dask", retries=1, retry_delay=0)
def always_fails() -> None:
    raise KeyError("missing")


async def test_errors_are_retried_by_the_engine_and_recorded_as_for_local_tasks(
    executor: DaskExecutor, tmp_path: Path
) -> None:
    marker = tmp_path / "flaky-runs"

    @flowcore.flow
    async def work() -> int:
        return await flaky(str(marker))

    @flowcore.flow
    async def failing() -> None:
        await always_fails()

    async with flowcore.Engine("memory", executors={"dask": executor}) as engine:
        assert await work() == 3
        [flaky_run] = await task_runs(engine)
        with pytest.raises(KeyError, match="missing"):
            await failing()
        [failed_run] = await task_runs(engine)
    # Three runs, all the engine's attempts: dask retried nothing itself.
    assert marker.read_text().splitlines() == ["run"] * 3
    assert flaky_run.state == flowcore.State.COMPLETED and flaky_run.attempts == 3
    notes = [entry for entry in flaky_run.history if entry[0] == "Retrying"]
    assert len(notes) == 2 and all("ConnectionError: attempt" in str(n) for n in notes)
    assert failed_run.state == flowcore.State.FAILED and failed_run.attempts == 2
    assert failed_run.error_type == "KeyError"
    assert failed_run.traceback is not None and "always_fails" in failed_run.traceback


async def test_each_call_is_released_on_the_cluster(executor: DaskExecutor) -> None:
    @flowcore.flow
    async def work() -> int:
        calls = [where_sync.submit(x) for x in range(20)] + [where_async.submit(1)]
        return len(await flowcore.wait(calls))

    async with flowcore.Engine("memory", executors={"dask": executor}):
        assert await work() == 21
        # Nothing left of the 21 calls: no key on the scheduler, no value on a worker.
        assert await held_keys(executor.client) == set()


@flowcore.task(executor="dask", tags=["one-at-a-time"])
def exclusive(topic: str, i: int) -> int:
    signal(topic, ["start", i])
    total = sum(range(10_000))  # some work between the two signals
    signal(topic, ["end", i])
    return total


async def test_a_limit_of_one_holds_across_dask_tasks(executor: DaskExecutor) -> None:
    topic = f"limit-{uuid.uuid4().hex}"

    @flowcore.flow
    async def work() -> int:
        return len(await asyncio.gather(*(exclusive(topic, i) for i in range(4))))

    async with (
        flowcore.Engine(
            "memory",
            executors={"dask": executor},
            limits=[flowcore.limit("one-at-a-time", 1)],
        ) as engine,
        Signals(executor.client, topic) as signals,
    ):
        assert await work() == 4
        await signals.wait_for(lambda messages: len(messages) == 8)
        runs = await task_runs(engine)
    # In the order they reached the scheduler (each call's signals precede its result,
    # which precedes the next call's start): never two calls at once, on two workers.
    starts = [i for kind, i in signals.messages if kind == "start"]
    assert sorted(starts) == [0, 1, 2, 3]
    pairs = [tuple(message) for message in signals.messages]
    assert pairs == [(kind, i) for i in starts for kind in ("start", "end")]
    waited = [
        r for r in runs if any("waiting for limit one-at-a-time" in str(h) for h in r.history)
    ]
    assert waited  # the engine held them back, not the cluster


@flowcore.task(executor="dask", timeout=0.5)
def blocks(name: str) -> str:
    Event(name).wait(60)  # until the test lets it go
    return "finished after all"


async def test_a_timeout_fails_the_attempt_and_releases_the_call(executor: DaskExecutor) -> None:
    name = f"release-{uuid.uuid4().hex}"

    @flowcore.flow
    async def work() -> str:
        return await blocks(name)

    async with flowcore.Engine("memory", executors={"dask": executor}) as engine:
        with pytest.raises(flowcore.TaskTimeout, match=r"'blocks' timed out after 0\.5 s"):
            await work()
        [run] = await task_runs(engine)
        # The engine stopped waiting. The call's thread cannot be interrupted: let go, it
        # finishes, and the cluster keeps nothing of it (the engine released it).
        await Event(name, client=executor.client).set()
        assert await held_keys(executor.client) == set()
    assert run.state == flowcore.State.TIMED_OUT


@flowcore.task(executor="dask")
async def waits_forever(topic: str) -> None:
    signal(topic, "started")
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        signal(topic, "cancelled")
        raise


async def test_a_cancelled_async_call_is_cancelled_on_its_worker(executor: DaskExecutor) -> None:
    topic = f"cancel-{uuid.uuid4().hex}"

    @flowcore.flow
    async def work() -> None:
        await waits_forever(topic)

    async with (
        flowcore.Engine("memory", executors={"dask": executor}) as engine,
        Signals(executor.client, topic) as signals,
    ):
        async with anyio.create_task_group() as tg:
            tg.start_soon(work)
            await signals.wait_for(lambda messages: "started" in messages)
            tg.cancel_scope.cancel()
        await signals.wait_for(lambda messages: "cancelled" in messages)
        [run] = await task_runs(engine)
        assert await held_keys(executor.client) == set()
    assert run.state == flowcore.State.CANCELLED


def make_closure_task() -> flowcore.Task[[], int]:
    lock = threading.Lock()

    @flowcore.task(executor="dask", retries=2)
    def holds_a_lock() -> int:
        with lock:
            return 1

    return holds_a_lock


@flowcore.task(executor="dask", retries=2)
def takes_anything(value: Any) -> str:
    return type(value).__name__


async def test_what_cannot_be_pickled_fails_at_once_naming_the_task_and_the_fix(
    executor: DaskExecutor,
) -> None:
    holds_a_lock = make_closure_task()

    @flowcore.flow
    async def closure() -> int:
        return await holds_a_lock()

    @flowcore.flow
    async def argument() -> str:
        return await takes_anything(threading.Lock())

    @flowcore.flow
    async def lambda_argument() -> str:
        return await takes_anything(lambda: 1)  # cloudpickle sends what pickle cannot

    async with flowcore.Engine("memory", executors={"dask": executor}) as engine:
        with pytest.raises(NotPicklable) as info:
            await closure()
        [closure_run] = await task_runs(engine)
        assert "task 'holds_a_lock' cannot be pickled" in str(info.value)
        assert "define it at module level" in str(info.value)
        with pytest.raises(NotPicklable, match="argument 1 \\(a lock\\) of task 'takes_anything'"):
            await argument()
        [argument_run] = await task_runs(engine)
        assert await lambda_argument() == "function"
    assert closure_run.attempts == 1 and argument_run.attempts == 1  # never retried
    assert closure_run.error_type == "flowcore_dask.errors.NotPicklable"


@flowcore.task(executor="dask", log_prints=True)
def prints(x: int) -> int:
    print(f"printed on a worker: {x}")  # the worker's output: no run there to keep it
    return x + 1


async def test_a_log_prints_task_runs_on_dask_and_its_prints_stay_on_the_worker(
    executor: DaskExecutor,
) -> None:
    # log_prints wraps the function in a scope that reads the engine's context; that
    # wrapper cannot be pickled, and means nothing on a worker: the plain function goes.
    @flowcore.flow
    async def work() -> int:
        return await prints(1)

    async with flowcore.Engine("memory", executors={"dask": executor}) as engine:
        assert await work() == 2
        assert engine.last_run is not None
        lines = await engine.store.list_logs(engine.last_run.id)
    assert not [line for line in lines if "printed on a worker" in line.message]


CLIENT_ONLY_MODULE = """
import flowcore


def helper(x):
    return x + 1


@flowcore.task(executor="dask", retries=2)
def uses_helper(x: int) -> int:
    return helper(x)  # pickled by reference: the workers must import this module
"""


async def test_code_the_workers_cannot_import_fails_at_once_naming_the_task(
    executor: DaskExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"client_only_{uuid.uuid4().hex}"
    (tmp_path / f"{module}.py").write_text(CLIENT_ONLY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))  # here only: the workers started before
    uses_helper = importlib.import_module(module).uses_helper

    @flowcore.flow
    async def work() -> int:
        return int(await uses_helper(1))

    async with flowcore.Engine("memory", executors={"dask": executor}) as engine:
        with pytest.raises(FunctionUnavailable) as info:
            await work()
        [run] = await task_runs(engine)
    message = str(info.value)
    assert "cannot load the function of task 'uses_helper'" in message
    assert f"No module named '{module}'" in message and "on every worker" in message
    assert run.attempts == 1  # not retried: the next attempt would fail the same way
