"""Finding the cluster: the entry point, the address (given, from the environment, or
none: a local cluster for the engine's lifetime), and clusters the executor refuses."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from pathlib import Path
from typing import Any, cast

import anyio
import psutil
import pytest
from distributed import LocalCluster

import flowcore
from flowcore.engine.executor import load_executor
from flowcore.store import resolve_store
from flowcore_dask import ClusterNotReady, DaskExecutor, SchedulerUnreachable

pytestmark = pytest.mark.anyio


def test_the_entry_point_makes_a_dask_executor() -> None:
    executor = load_executor("dask")
    assert type(executor) is DaskExecutor and isinstance(executor, flowcore.Executor)


def test_options_are_checked_and_every_problem_named_at_once() -> None:
    with pytest.raises(flowcore.ConfigurationError) as info:
        DaskExecutor("", n_workers=0, threads_per_worker=0, connect_timeout=-1)
    message = str(info.value)
    for option in ("`address`", "`n_workers`", "`threads_per_worker`", "`connect_timeout`"):
        assert option in message


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_unreachable_scheduler_is_named_with_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"
    with pytest.raises(SchedulerUnreachable) as info:
        await DaskExecutor(address, connect_timeout=0.5).open()
    message = str(info.value)
    assert f"no Dask scheduler answered at {address} (given to DaskExecutor)" in message
    assert "`dask scheduler`" in message and "FLOWCORE_DASK_ADDRESS unset" in message

    monkeypatch.setenv("FLOWCORE_DASK_ADDRESS", address)

    @flowcore.task(executor="dask")
    def nothing() -> None:
        pass

    @flowcore.flow
    async def work() -> None:
        await nothing()

    async with flowcore.Engine(
        "memory", executors={"dask": DaskExecutor(connect_timeout=0.5)}
    ) as engine:
        with pytest.raises(SchedulerUnreachable, match=r"from \$FLOWCORE_DASK_ADDRESS"):
            await work()
        assert engine.last_run is not None and engine.last_run.state == flowcore.State.FAILED


async def test_a_scheduler_that_reruns_tasks_itself_is_refused_unless_accepted() -> None:
    async with LocalCluster(
        n_workers=0,
        processes=False,
        asynchronous=True,
        dashboard_address=":0",
        scheduler_kwargs={"allowed_failures": 3},  # dask's default
    ) as cluster:
        address = cluster.scheduler_address
        with pytest.raises(ClusterNotReady) as info:
            await DaskExecutor(address).open()
        message = str(info.value)
        assert f"the Dask scheduler at {address} re-runs a task" in message
        assert "up to 3 times" in message
        assert "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=0" in message
        assert "rerun_on_worker_loss=True" in message
        accepting = DaskExecutor(address, rerun_on_worker_loss=True)
        await accepting.open()
        try:
            assert accepting.scheduler_address == address
        finally:
            await accepting.close()


@flowcore.task(executor="dask")
def worker_pid() -> int:
    return os.getpid()


@pytest.mark.slow  # worker processes
async def test_without_an_address_a_local_cluster_lives_as_long_as_the_engine() -> None:
    executor = DaskExecutor(n_workers=1)

    @flowcore.flow
    async def work() -> int:
        return await worker_pid()

    async with flowcore.Engine("memory", executors={"dask": executor}):
        pid = await work()
        worker = psutil.Process(pid)
        opened = executor.scheduler_address
        # The local cluster's own scheduler does not re-run tasks either.
        allowed = await executor.client.run_on_scheduler(
            lambda dask_scheduler: dask_scheduler.allowed_failures
        )
    closed = executor.scheduler_address
    assert pid != os.getpid() and allowed == 0
    assert opened is not None and opened.startswith("tcp://127.0.0.1:") and closed is None
    # The worker process ends with the engine (dask stops it as the cluster closes).
    _, alive = await anyio.to_thread.run_sync(lambda: psutil.wait_procs([worker], timeout=60))
    assert not alive


@flowcore.task(executor="dask")
def double(x: int) -> int:
    return 2 * x


@flowcore.flow
async def doubles(n: int) -> list[int]:
    return list(await asyncio.gather(*(double(i) for i in range(n))))


@flowcore.flow
async def doubles_locally(n: int) -> list[int]:
    local = double.with_options(executor="local")
    return list(await asyncio.gather(*(local(i) for i in range(n))))


@pytest.mark.slow  # worker processes
def test_flowcore_run_finds_the_scheduler_by_entry_point_and_records_as_locally(
    dask_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch, flowcore_home: Path
) -> None:
    monkeypatch.setenv("FLOWCORE_DASK_ADDRESS", dask_cluster.scheduler_address)
    assert flowcore.run(doubles, 4) == [0, 2, 4, 6]
    assert flowcore.run(doubles_locally, 4) == [0, 2, 4, 6]

    async def read() -> list[list[tuple[Any, ...]]]:
        store = resolve_store(None)  # the SQLite database in FLOWCORE_HOME
        await store.open()
        try:
            runs = sorted(await store.list_runs(), key=lambda r: r.created)
            shapes = []
            for run in runs:
                assert run.state == flowcore.State.COMPLETED
                tasks = await store.list_task_runs(run.id)
                shapes.append(
                    [
                        (
                            t.name,
                            t.state,
                            t.attempts,
                            [entry[0] for entry in t.history],
                            await flowcore.task_result(run.id, t.seq, store=store),
                        )
                        for t in tasks
                    ]
                )
            return shapes
        finally:
            await store.close()

    on_dask, local = asyncio.run(read())
    assert on_dask == local
    assert [row[4] for row in on_dask] == [0, 2, 4, 6]


@pytest.mark.slow  # worker processes
async def test_what_dask_logs_later_is_not_kept_as_the_run_that_opened_the_executor(
    dask_cluster: LocalCluster,
) -> None:
    executor = DaskExecutor(dask_cluster.scheduler_address)  # opened by the engine, in a run
    topic = f"later-{uuid.uuid4().hex}"
    handled = anyio.Event()

    def on_event(event: tuple[float, Any]) -> None:
        # Runs in the client's background task, as dask's own log lines do.
        logging.getLogger("flowcore_dask_tests").warning("logged by a dask background task")
        handled.set()

    @flowcore.flow
    async def opens() -> int:
        return await double(1)

    async with flowcore.Engine("memory", executors={"dask": executor}) as engine:
        assert await opens() == 2
        run = engine.last_run
        assert run is not None
        client = cast(Any, executor.client)
        client.subscribe_topic(topic, on_event)
        assert await double(2) == 4  # submitted after the subscription: handled after it
        await client.log_event(topic, "now")
        with anyio.fail_after(30):
            await handled.wait()
        client.unsubscribe_topic(topic)
        await engine.recorder.flush()
        lines = await engine.store.list_logs(run.id)
    assert not [line for line in lines if "dask background task" in line.message]
