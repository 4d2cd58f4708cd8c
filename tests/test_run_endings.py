"""How a run ends when it is interrupted: by its timeout inside a sync task, by
KeyboardInterrupt or SystemExit from user code."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import flowcore

pytestmark = pytest.mark.anyio


async def test_a_flow_timeout_passing_during_a_sync_task_times_the_flow_out() -> None:
    # Regression: the thread cannot be interrupted; the flow used to go on once it
    # returned and be recorded Completed.
    release = threading.Event()
    after: list[str] = []

    @flowcore.task
    def slow() -> int:
        release.wait(10)
        return 1

    @flowcore.flow(timeout=0.05)
    async def work() -> int:
        value = await slow()
        after.append("went on")  # never: the run stopped at its deadline
        return value

    async with flowcore.Engine("memory") as engine:
        with pytest.raises(flowcore.FlowTimeout):
            await work()
        release.set()
        assert engine.last_run is not None
        run = engine.last_run
        (task_run,) = await engine.store.list_task_runs(run.id)
    assert run.state is flowcore.State.TIMED_OUT and after == []
    assert task_run.state is flowcore.State.CANCELLED  # its thread was let go


async def test_a_flow_whose_deadline_passed_while_it_could_not_be_interrupted_times_out() -> None:
    # The body makes a blocking call (no checkpoint until it returns): the deadline
    # passes without interrupting anything, and the run still ends TimedOut.
    @flowcore.flow(timeout=0.01)
    async def work() -> str:
        time.sleep(0.05)  # noqa: ASYNC251 - blocks the loop on purpose: nothing can interrupt it
        return "late"

    async with flowcore.Engine("memory") as engine:
        with pytest.raises(flowcore.FlowTimeout):
            await work()
        assert engine.last_run is not None
        assert engine.last_run.state is flowcore.State.TIMED_OUT


@pytest.mark.parametrize("where", ["flow", "task", "sync task", "submitted task"])
@pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit])
async def test_keyboard_interrupt_and_system_exit_come_out_as_themselves(
    where: str, kind: type[BaseException]
) -> None:
    @flowcore.task
    async def atask() -> None:
        raise kind()

    @flowcore.task
    def stask() -> None:
        raise kind()

    @flowcore.flow
    async def work() -> None:
        if where == "flow":
            raise kind()
        if where == "task":
            await atask()
        if where == "sync task":
            await stask()
        if where == "submitted task":
            await atask.submit()

    async with flowcore.Engine("memory") as engine:
        with pytest.raises(kind):  # not a BaseExceptionGroup holding it
            await work()
        assert engine.last_run is not None
        assert engine.last_run.state is flowcore.State.CANCELLED


@pytest.mark.slow
def test_sys_exit_in_a_flow_sets_the_process_exit_code(tmp_path: Path) -> None:
    script = tmp_path / "exits.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            import flowcore

            @flowcore.flow
            async def work() -> None:
                sys.exit(3)

            flowcore.run(work)
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"FLOWCORE_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 3, done.stderr
