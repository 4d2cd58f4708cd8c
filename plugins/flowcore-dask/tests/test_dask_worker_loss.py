"""Workers that die: a lost attempt is the engine's to record and retry, never dask's to
redo behind its back, and a finished task is never run again.

Workers are killed for real (SIGKILL, as the kernel's OOM killer does); the cluster's
nanny processes start new ones, and the ``executor`` fixture waits for them before the
next test.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest
from dask_helpers import held_keys, task_runs

import flowcore
from flowcore_dask import DaskExecutor, WorkerLost

# Every test here runs calls in the worker processes of a real cluster.
pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def _note_run(marker: Path) -> int:
    """Append this run to ``marker``; how many runs it holds now."""
    with marker.open("a") as f:
        f.write(f"{os.getpid()}\n")
    return len(marker.read_text().splitlines())


@flowcore.task(executor="dask", retries=1, retry_delay=0)
def dies_the_first_time(marker: str) -> int:
    if _note_run(Path(marker)) == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # the worker process dies mid-task
    return os.getpid()


async def test_a_worker_killed_mid_task_fails_the_attempt_naming_it_then_the_engine_retries(
    executor: DaskExecutor, tmp_path: Path
) -> None:
    marker = tmp_path / "runs"
    workers = set((await executor.client.run(os.getpid)).items())

    @flowcore.flow
    async def work() -> int:
        return await dies_the_first_time(str(marker))

    async with flowcore.Engine("memory", executors={"dask": executor}) as engine:
        survivor = await work()
        [run] = await task_runs(engine)
    first, second = (int(pid) for pid in marker.read_text().splitlines())
    [killed] = [address for address, pid in workers if pid == first]
    # Two runs, both the engine's attempts: dask did not re-run the killed one itself.
    assert survivor == second != first
    assert run.state == flowcore.State.COMPLETED and run.attempts == 2
    [retrying] = [entry for entry in run.history if entry[0] == "Retrying"]
    assert f"WorkerLost: the Dask worker {killed} died while running task" in str(retrying)


@flowcore.task(executor="dask")
def dies_always(marker: str) -> None:
    _note_run(Path(marker))
    os.kill(os.getpid(), signal.SIGKILL)


async def test_a_lost_worker_without_retries_fails_the_task_with_worker_lost(
    executor: DaskExecutor, tmp_path: Path
) -> None:
    marker = tmp_path / "runs"

    @flowcore.flow
    async def work() -> None:
        await dies_always(str(marker))

    async with flowcore.Engine("memory", executors={"dask": executor}) as engine:
        with pytest.raises(WorkerLost) as info:
            await work()
        [run] = await task_runs(engine)
    assert info.value.task == "dies_always" and info.value.worker.startswith("tcp://")
    assert len(marker.read_text().splitlines()) == 1  # once: no retry by anyone
    assert run.state == flowcore.State.FAILED
    assert run.error_type == "flowcore_dask.errors.WorkerLost"


@flowcore.task(executor="dask")
def finishes(marker: str) -> int:
    _note_run(Path(marker))
    return os.getpid()


@flowcore.task(executor="dask")
def after() -> int:
    return os.getpid()


async def test_a_completed_task_is_not_rerun_when_its_worker_dies_afterwards(
    executor: DaskExecutor, tmp_path: Path
) -> None:
    marker = tmp_path / "runs"
    removals: list[dict[str, Any]] = []
    removed = anyio.Event()

    def on_cluster_event(event: tuple[float, dict[str, Any]]) -> None:
        if event[1].get("action") == "remove-worker":
            removals.append(event[1])
            removed.set()

    @flowcore.flow
    async def work() -> int:
        return await finishes(str(marker))

    @flowcore.flow
    async def more() -> int:
        return await after()

    async with flowcore.Engine("memory", executors={"dask": executor}) as engine:
        executor.client.subscribe_topic("all", on_cluster_event)
        pid = await work()
        [run] = await task_runs(engine)
        # The worker that ran it, and would hold its result had it been kept there, dies.
        os.kill(pid, signal.SIGKILL)
        with anyio.fail_after(60):
            await removed.wait()
        executor.client.unsubscribe_topic("all")
        # The cluster still works, and it handled the loss before this call.
        assert await more() != pid
        assert await held_keys(executor.client) == set()
    [removal] = removals
    assert not removal["lost-computed-tasks"] and not removal["processing-tasks"]
    assert marker.read_text().splitlines() == [str(pid)]  # it ran once
    assert run.state == flowcore.State.COMPLETED and run.attempts == 1
