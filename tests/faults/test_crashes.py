"""False crashes: runs taken for dead that were not, and deaths recorded as crashes.

- A pid means something only in its own PID namespace: a container with our host
  name runs its flows under pids that name no process here (or another one). Its
  live run must not be marked Crashed because of that; it is judged by its heartbeat.
- A run marked Crashed by another process (no heartbeat for a while: a long GC
  pause, a blocked event loop) that then finishes is recorded as it finished, its
  history keeping the mistake.
- SIGTERM (``kill``, ``docker stop``) cancels the flow, as Ctrl-C does: its records
  end Cancelled, not Crashed, and the process then ends as SIGTERM ends it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

import flowcore
import flowcore.store.crash
from flowcore import FlowRunRecord, State, TaskRunRecord
from flowcore._process import MACHINE
from flowcore.ids import HOST
from flowcore.records import WriteBatch
from flowcore.store.crash import STALE_AFTER, mark_crashed_runs

pytestmark = pytest.mark.anyio

#: The identity of a container of this kernel with a PID namespace of its own.
OTHER_NAMESPACE = "linux:same-kernel-boot-id:pidns:4:4026532999"


def dead_pid() -> int:
    """A pid no process of this namespace has now."""
    with subprocess.Popen([sys.executable, "-c", "pass"]) as child:
        child.wait()
    return child.pid


@contextmanager
def child_process(args: list[str], cwd: Path, **options: Any) -> Iterator[subprocess.Popen[bytes]]:
    """``python *args`` in ``cwd`` with this test's FLOWCORE_HOME; killed if still running."""
    with subprocess.Popen([sys.executable, *args], cwd=cwd, **options) as child:
        try:
            yield child
        finally:
            if child.poll() is None:
                child.kill()


def wait_for(condition: Callable[[], bool], what: str, child: subprocess.Popen[bytes]) -> None:
    """Wait (polling: the other side is another process) until ``condition()`` holds."""
    deadline = time.monotonic() + 60
    while not condition():
        if child.poll() is not None:
            pytest.fail(f"the child ended ({child.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"60 s passed and still not {what}")
        time.sleep(0.01)


# -- the same host name, another PID namespace ------------------------------------------------


async def test_a_run_of_another_pid_namespace_is_judged_by_its_heartbeat(
    flowcore_home: Path,
) -> None:
    now = time.time()

    def running(run_id: str, machine: str) -> FlowRunRecord:
        return FlowRunRecord(
            id=run_id, name="f", state=State.RUNNING, created=now - 5, started=now - 5,
            heartbeat=now - 1, history=[("Running", now - 5)], host=HOST, pid=dead_pid(),
            machine=machine,
        )  # fmt: skip

    async with flowcore.SQLiteStore(flowcore_home / "flowcore.db") as store:
        await store.write(
            WriteBatch(
                [running("contained", OTHER_NAMESPACE), running("here", MACHINE)],
                [
                    TaskRunRecord(
                        run_id="contained", seq=0, name="t", state=State.RUNNING, created=now
                    )
                ],
            )
        )
        # Its pid names no process here, but that says nothing: it is not ours to ask about.
        crashed = await mark_crashed_runs(store, now=now)
        assert [r.id for r in crashed] == ["here"]  # ours, and its process is gone
        assert (await store.get_run("contained")).state is State.RUNNING
        # Without a heartbeat for longer than STALE_AFTER, it is crashed wherever it ran.
        later = await mark_crashed_runs(store, now=now + STALE_AFTER + 1)
        contained = await store.get_run("contained")
        [task] = await store.list_task_runs("contained")
    assert [r.id for r in later] == ["contained"]
    assert contained.state is State.CRASHED and task.state is State.CRASHED
    assert f"no heartbeat from {HOST}" in (contained.error_message or "")


CONTAINED = textwrap.dedent(
    """
    import os
    import sys
    from pathlib import Path

    import anyio

    import flowcore
    import flowcore.engine.runs

    HERE = Path(__file__).parent


    def mark(name: str, text: str) -> None:
        # Written whole, then renamed: the test polls for the file, and must never read
        # it created but still empty.
        part = HERE / (name + ".part")
        part.write_text(text)
        part.replace(HERE / name)
    PID_HERE = int(sys.argv[1])


    class OsOfAnotherNamespace:
        # os as a process of another PID namespace sees it: its own pid is a number
        # that names another process (or none) in the namespace of the test.
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def getpid():
            return PID_HERE


    flowcore.engine.runs.os = OsOfAnotherNamespace()
    flowcore.engine.runs.MACHINE = sys.argv[2]


    @flowcore.task
    async def step(i: int) -> int:
        return i


    @flowcore.flow
    async def contained() -> int:
        first = await step(1)
        mark("started", flowcore.current_run().id)
        while not (HERE / "go").exists():
            await anyio.sleep(0.01)
        return first + await step(2)


    print(flowcore.run(contained))
    """
)


@pytest.mark.slow
async def test_a_live_run_of_a_container_with_our_host_name_is_not_taken_for_crashed(
    tmp_path: Path, flowcore_home: Path
) -> None:
    script = tmp_path / "contained.py"
    script.write_text(CONTAINED)
    db = flowcore_home / "flowcore.db"
    started = tmp_path / "started"
    args = [str(script), str(dead_pid()), OTHER_NAMESPACE]
    with child_process(args, tmp_path, stdout=subprocess.PIPE) as child:
        wait_for(started.exists, "the flow started", child)
        run_id = started.read_text()
        async with flowcore.SQLiteStore(db) as store:
            while True:  # the run's first write is at most one flush interval away
                runs = await store.list_runs()
                if runs:
                    break
                await anyio.sleep(0.01)
            assert [(r.id, r.host, r.machine) for r in runs] == [(run_id, HOST, OTHER_NAMESPACE)]
            # What `flowcore runs ls` does first, in this namespace.
            assert await mark_crashed_runs(store) == []
            assert (await store.get_run(run_id)).state is State.RUNNING
        (tmp_path / "go").touch()
        out, _ = await anyio.to_thread.run_sync(lambda: child.communicate(timeout=60))
    assert child.returncode == 0 and out.decode().strip() == "3"
    async with flowcore.SQLiteStore(db) as store:
        run = await store.get_run(run_id)
        tasks = await store.list_task_runs(run_id)
    assert run.state is State.COMPLETED  # its completion recorded, not discarded
    assert [entry[0] for entry in run.history] == ["Running", "Completed"]
    assert [t.state for t in tasks] == [State.COMPLETED, State.COMPLETED]


# -- a late completion after a false crash ----------------------------------------------------


async def test_a_run_taken_for_crashed_that_finishes_is_recorded_as_it_finished(
    flowcore_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = flowcore_home / "flowcore.db"
    stalled_started = anyio.Event()
    resume_work = anyio.Event()

    @flowcore.task
    async def quick(i: int) -> int:
        return i

    @flowcore.task
    async def stalled() -> int:
        stalled_started.set()
        await resume_work.wait()  # a long GC pause, a blocked loop: no heartbeat meanwhile
        return 10

    @flowcore.flow
    async def paused() -> int:
        return await quick(1) + await stalled()

    results: list[int] = []

    async def drive() -> None:
        results.append(await paused())

    async with flowcore.Engine() as engine, anyio.create_task_group() as tg:
        tg.start_soon(drive)
        await stalled_started.wait()
        await engine.recorder.flush()  # the run and its running task run are in the store
        assert engine.last_run is not None
        run_id = engine.last_run.id
        # Another machine reads the store 35 s on: no heartbeat since, so it marks the
        # run and its running task run Crashed.
        monkeypatch.setattr(flowcore.store.crash, "MACHINE", "linux:another-machine")
        async with flowcore.SQLiteStore(db) as other:
            crashed = await mark_crashed_runs(other, now=time.time() + STALE_AFTER + 5)
            assert [r.id for r in crashed] == [run_id]
            assert (await other.get_run(run_id)).state is State.CRASHED
        resume_work.set()
    assert results == [11]

    async with flowcore.SQLiteStore(db) as store:
        run = await store.get_run(run_id)
        tasks = await store.list_task_runs(run_id)
    assert run.state is State.COMPLETED and run.error_type is None
    assert run.task_count == 2 and run.ended is not None
    assert [entry[0] for entry in run.history] == ["Running", "Crashed", "Completed"]
    assert "crashed by mistake" in run.history[1][2] and "no heartbeat" in run.history[1][2]
    assert [t.state for t in tasks] == [State.COMPLETED, State.COMPLETED]
    assert "Crashed" not in [entry[0] for entry in tasks[0].history]  # done before the mark
    assert [entry[0] for entry in tasks[1].history][-2:] == ["Crashed", "Completed"]
    assert "crashed by mistake" in tasks[1].history[-2][2]
    assert tasks[1].result is not None  # its result is kept: a resume would replay it


# -- SIGTERM ----------------------------------------------------------------------------------

STOPPABLE = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import anyio

    import flowcore

    HERE = Path(__file__).parent


    def mark(name: str, text: str) -> None:
        # Written whole, then renamed: the test polls for the file, and must never read
        # it created but still empty.
        part = HERE / (name + ".part")
        part.write_text(text)
        part.replace(HERE / name)


    @flowcore.task
    async def quick(i: int) -> int:
        return i


    @flowcore.task
    async def forever() -> None:
        mark("started", flowcore.current_run().id)
        await anyio.sleep(3600)


    @flowcore.flow
    async def stoppable() -> int:
        total = sum([await quick(i) for i in range(3)])
        if (HERE / "fail-once").exists():
            (HERE / "fail-once").unlink()
            mark("failed", flowcore.current_run().id)
            raise RuntimeError("failing once, to be resumed")
        await forever()
        return total


    if __name__ == "__main__":
        if sys.argv[1] == "run":
            print(flowcore.run(stoppable))
        else:  # fail once, then resume the failed run
            try:
                flowcore.run(stoppable)
            except RuntimeError:
                pass
            print(flowcore.resume((HERE / "failed").read_text(), flow=stoppable))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["flowcore.run", "flowcore.resume", "cli run", "cli resume"])
async def test_sigterm_cancels_the_flow_then_ends_the_process(
    tmp_path: Path, flowcore_home: Path, how: str
) -> None:
    script = tmp_path / "stoppable.py"
    script.write_text(STOPPABLE)
    started = tmp_path / "started"
    if "resume" in how:
        (tmp_path / "fail-once").touch()
    if how == "cli resume":
        with child_process([str(script), "run"], tmp_path, stderr=subprocess.PIPE) as failing:
            _, failed_with = failing.communicate(timeout=60)
        assert failing.returncode == 1 and b"failing once" in failed_with
    if how == "flowcore.run":
        args = [str(script), "run"]
    elif how == "flowcore.resume":
        args = [str(script), "fail, then resume"]
    elif how == "cli run":
        args = ["-m", "flowcore", "run", f"{script}:stoppable", "--no-progress"]
    else:
        args = ["-m", "flowcore", "resume", (tmp_path / "failed").read_text(), "--no-progress"]
    with child_process(args, tmp_path, stderr=subprocess.PIPE) as child:
        wait_for(started.exists, "the flow started its endless task", child)
        child.send_signal(signal.SIGTERM)
        _, err = await anyio.to_thread.run_sync(lambda: child.communicate(timeout=60))
    stderr = err.decode()
    assert child.returncode == -signal.SIGTERM, stderr  # ended as SIGTERM ends a process
    run_id = started.read_text()
    async with flowcore.SQLiteStore(flowcore_home / "flowcore.db") as store:
        assert await mark_crashed_runs(store) == []  # nothing was left Running
        run = await store.get_run(run_id)
        tasks = await store.list_task_runs(run_id)
    assert run.state is State.CANCELLED, (run.history, stderr)
    assert [t.name.rsplit(".", 1)[-1] for t in tasks] == ["quick", "quick", "quick", "forever"]
    assert [t.state for t in tasks] == [State.COMPLETED] * 3 + [State.CANCELLED]
    if "resume" in how:
        assert run.resumed_from == (tmp_path / "failed").read_text()
    if how.startswith("cli"):
        assert f"terminated by SIGTERM: run {run_id[:8]}" in stderr and "Cancelled" in stderr
