"""Acceptance: SIGKILL a process mid-flow, detect the crash, resume, and count what ran twice.

A child process runs a flow of 1000 tasks, gathered 50 at a time. Each task
appends ``i`` to a log file flowcore knows nothing about, so the log is the
ground truth of which task bodies ran, and how often. The parent kills the
child once the log has K lines, then resumes the run in-process and checks:

- every task recorded Completed before the kill ran exactly once in all,
- every other task ran once in the resumed run (twice in all if it had
  already run before the kill),
- the resumed flow's result is the result of an uninterrupted run,
- the database is intact.

Under ``durability="strict"`` a task's completion is committed before the flow
sees its result; a chunk starts only when the previous chunk's results are
all in, so every task of every earlier chunk must be recorded Completed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import anyio
import psutil
import pytest

import flowcore
from flowcore import FlowRunRecord, State, TaskRunRecord
from flowcore._process import MACHINE
from flowcore.encoding import decode_inputs
from flowcore.ids import HOST
from flowcore.records import WriteBatch
from flowcore.store.crash import mark_crashed_runs

pytestmark = pytest.mark.anyio

N = 1000
CHUNK = 50
EXPECTED = sum(i * 2 for i in range(N))

CHILD = textwrap.dedent(
    f"""
    import asyncio
    import os
    import sys

    import anyio

    import flowcore


    @flowcore.task
    async def work(i: int, log: str) -> int:
        await anyio.sleep(0.02 + (i % 10) * 0.005)  # spread: kills land mid-chunk too
        with open(log, "a") as f:
            f.write(f"{{i}}\\n")
            f.flush()
        return i * 2


    @flowcore.flow
    async def thousand(log: str) -> int:
        total = 0
        for start in range(0, {N}, {CHUNK}):
            chunk = range(start, min(start + {CHUNK}, {N}))
            total += sum(await asyncio.gather(*(work(i, log) for i in chunk)))
        if os.environ.get("FLOWCORE_TEST_HOLD"):
            # Only in the child that gets killed: never end on its own, so the kill
            # always finds it running however slow the machine is.
            await anyio.sleep(3600)
        return total


    async def main(durability: str) -> None:
        async with flowcore.Engine(durability=durability):
            print(await thousand(sys.argv[1]))


    if __name__ == "__main__":
        anyio.run(main, sys.argv[2], backend="asyncio")
    """
)


def read_log(log: Path) -> list[int]:
    if not log.exists():
        return []
    return [int(line) for line in log.read_text().splitlines() if line]


def run_child_until(
    script: Path, log: Path, home: Path, durability: str, lines: int, tmp_path: Path
) -> tuple[list[int], int]:
    """Start the child, SIGKILL it once the log has ``lines`` lines; returns the log then."""
    env = {**os.environ, "FLOWCORE_HOME": str(home), "FLOWCORE_TEST_HOLD": "1"}
    with (
        open(tmp_path / "child.out", "w") as out,
        open(tmp_path / "child.err", "w") as err,
    ):
        child = subprocess.Popen(
            [sys.executable, str(script), str(log), durability],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=err,
        )
        try:
            deadline = time.monotonic() + 60
            while len(read_log(log)) < lines:
                if child.poll() is not None:
                    pytest.fail(
                        f"the child ended by itself: {(tmp_path / 'child.err').read_text()}"
                    )
                if time.monotonic() > deadline:
                    pytest.fail(f"the log reached {len(read_log(log))} lines, not {lines}")
                time.sleep(0.002)
            os.kill(child.pid, signal.SIGKILL)
        finally:
            if child.poll() is None:
                child.kill()
            child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    return read_log(log), child.pid


def integrity(db: Path) -> list[tuple[str]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute("PRAGMA integrity_check").fetchall()


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["batched", "strict"])
@pytest.mark.parametrize("kill_at", [50, 425, 910])
async def test_kill_then_resume(
    tmp_path: Path,
    flowcore_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    kill_at: int,
    durability: str,
) -> None:
    script = tmp_path / "thousand.py"
    script.write_text(CHILD)
    log = tmp_path / "side-effects.log"
    db = flowcore_home / "flowcore.db"

    at_kill, pid = run_child_until(script, log, flowcore_home, durability, kill_at, tmp_path)
    assert len(at_kill) >= kill_at
    assert len(set(at_kill)) == len(at_kill)  # before the kill, each task ran at most once
    assert integrity(db) == [("ok",)]  # a kill mid-commit leaves a sound database

    # What `flowcore runs ls` would show: the run, detected as crashed.
    async with flowcore.SQLiteStore(db) as store:
        [run] = await store.list_runs()
        assert run.state is State.RUNNING  # nobody has looked yet
        assert run.name == "thousand" and run.entrypoint == f"{script.resolve()}:thousand"
        assert run.pid == pid
        crashed = await mark_crashed_runs(store)  # same host, pid gone: at once
        assert [r.id for r in crashed] == [run.id]
        run = await store.get_run(run.id)
        before = await store.list_task_runs(run.id)
    assert run.state is State.CRASHED
    assert run.error_type == "Crashed" and str(pid) in (run.error_message or "")
    states = Counter(t.state for t in before)
    assert set(states) <= {State.COMPLETED, State.CRASHED}, states
    completed = {decode_inputs(t.inputs)["i"] for t in before if t.state is State.COMPLETED}
    assert completed <= set(at_kill)  # recorded Completed means it ran
    assert all(t.result is not None for t in before if t.state is State.COMPLETED)
    if durability == "strict":
        # A chunk starts only after every task of the previous chunk has returned, and
        # in strict mode a task returns only once its completion is committed.
        current_chunk = max(at_kill) // CHUNK
        assert set(range(current_chunk * CHUNK)) <= completed

    # Resume in this process, loading the flow from the script the run recorded.
    monkeypatch.syspath_prepend(str(tmp_path))  # undo the loader's sys.path insert
    started = time.monotonic()
    async with flowcore.Engine() as engine:
        result: int = await flowcore.resume_async(run.id)
        assert engine.last_run is not None
        resumed = engine.last_run.id
        await engine.recorder.flush()
        after = await engine.store.list_task_runs(resumed)
        new_run = await engine.store.get_run(resumed)
    resume_seconds = time.monotonic() - started

    assert result == EXPECTED
    assert new_run.state is State.COMPLETED and new_run.resumed_from == run.id
    assert len(after) == N and all(t.state is State.COMPLETED for t in after)
    replayed = {decode_inputs(t.inputs)["i"] for t in after if "replayed" in str(t.history[-1])}
    assert replayed == completed

    runs_of = Counter(read_log(log))
    assert set(runs_of) == set(range(N))  # every task ran at least once
    for i in completed:
        assert runs_of[i] == 1, f"task {i} was recorded Completed, yet ran {runs_of[i]} times"
    # Exactly: the tasks the store did not know as completed ran once more on resume.
    for i in range(N):
        assert runs_of[i] == (i in at_kill) + (i not in completed), i
    ran_twice = sorted(i for i, n in runs_of.items() if n > 1)
    if durability == "strict":
        # Only tasks of the chunk running at the kill can have run twice.
        assert all(i // CHUNK == max(at_kill) // CHUNK for i in ran_twice), ran_twice
    assert integrity(db) == [("ok",)]
    print(
        f"{durability} kill at {kill_at}: {len(at_kill)} ran before the kill, "
        f"{len(completed)} recorded Completed, {len(ran_twice)} ran twice; "
        f"resume took {resume_seconds:.2f} s"
    )


# -- crash detection -------------------------------------------------------------------------


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def running_record(
    run_id: str,
    *,
    host: str,
    pid: int,
    heartbeat: float,
    started: float | None = None,
    machine: str = MACHINE,
) -> FlowRunRecord:
    started = heartbeat - 1 if started is None else started
    return FlowRunRecord(
        id=run_id,
        name="f",
        state=State.RUNNING,
        created=started,
        started=started,
        heartbeat=heartbeat,
        history=[("Running", heartbeat - 1)],
        host=host,
        pid=pid,
        machine=machine,
    )


def task_record(run_id: str, seq: int, state: State) -> TaskRunRecord:
    return TaskRunRecord(
        run_id=run_id, seq=seq, name="t", state=state, created=0.0, history=[(state.value, 0.0)]
    )


@pytest.fixture
def sleeper() -> Iterator[int]:
    """A process of this host that lives through the test; its pid."""
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]) as proc:
        try:
            yield proc.pid
        finally:
            proc.kill()


async def test_mark_crashed_runs(flowcore_home: Path, sleeper: int) -> None:
    now = time.time()
    gone = dead_pid()
    born = psutil.Process(sleeper).create_time()
    runs = {
        "dead-pid": running_record("dead-pid", host=HOST, pid=gone, heartbeat=now - 1),
        "this-process": running_record("this-process", host=HOST, pid=os.getpid(), heartbeat=1),
        # Its process was there when it started, and still is: running, however quiet.
        "alive-pid": running_record(
            "alive-pid", host=HOST, pid=sleeper, heartbeat=now - 60, started=born + 0.5
        ),
        # Its pid now belongs to a process started long after the run did: reused.
        "reused-pid": running_record(
            "reused-pid", host=HOST, pid=sleeper, heartbeat=now - 1, started=born - 900
        ),
        "remote-fresh": running_record(
            "remote-fresh", host="elsewhere", pid=1, heartbeat=now - 10, machine="elsewhere"
        ),
        "remote-stale": running_record(
            "remote-stale", host="elsewhere", pid=1, heartbeat=now - 40, machine="elsewhere"
        ),
    }
    finished = running_record("finished", host=HOST, pid=gone, heartbeat=now - 1)
    finished.state = State.FAILED
    tasks = [
        task_record("dead-pid", 0, State.COMPLETED),
        task_record("dead-pid", 1, State.RUNNING),
        task_record("dead-pid", 2, State.PENDING),
        task_record("dead-pid", 3, State.RETRYING),
        task_record("dead-pid", 4, State.FAILED),
    ]
    async with flowcore.SQLiteStore(flowcore_home / "flowcore.db") as store:
        await store.write(WriteBatch([*runs.values(), finished], tasks))
        crashed = await mark_crashed_runs(store, now=now)
        assert await mark_crashed_runs(store, now=now) == []  # marking is done once
        states = {r.id: r.state for r in await store.list_runs(limit=100)}
        dead = await store.get_run("dead-pid")
        dead_tasks = await store.list_task_runs("dead-pid")
    assert sorted(r.id for r in crashed) == ["dead-pid", "remote-stale", "reused-pid"]
    assert states == {
        "dead-pid": State.CRASHED,
        "this-process": State.RUNNING,
        "alive-pid": State.RUNNING,
        "reused-pid": State.CRASHED,
        "remote-fresh": State.RUNNING,
        "remote-stale": State.CRASHED,
        "finished": State.FAILED,
    }
    assert dead.error_type == "Crashed" and str(gone) in (dead.error_message or "")
    assert dead.ended == dead.heartbeat  # it ended, at the latest, at its last sign of life
    assert dead.task_count == 5  # the task runs the store has for it
    assert dead.history[-1][0] == "Crashed"
    assert [t.state for t in dead_tasks] == [
        State.COMPLETED,
        State.CRASHED,
        State.CRASHED,
        State.CRASHED,
        State.FAILED,
    ]


async def test_a_crashed_run_shows_how_long_it_ran_and_how_much_it_did(
    flowcore_home: Path,
) -> None:
    # Its record was last written at its first heartbeat, 26 ms in, with 100 task runs;
    # it went on for 2 s and 2,800 task runs (their records flushed), then died.
    t0 = time.time() - 60
    record = running_record("busy", host=HOST, pid=dead_pid(), heartbeat=t0 + 0.026, started=t0)
    record.task_count = 100
    tasks = [
        TaskRunRecord(
            run_id="busy", seq=i, name="t", state=State.COMPLETED, created=t0 + i / 1400,
            started=t0 + i / 1400, ended=t0 + (i + 1) / 1400, history=[("Completed", 0.0)],
        )
        for i in range(2799)
    ]  # fmt: skip
    tasks.append(
        TaskRunRecord(
            run_id="busy", seq=2799, name="t", state=State.RUNNING, created=t0 + 1.9,
            started=t0 + 1.99, history=[("Running", t0 + 1.99)],
        )
    )  # fmt: skip
    async with flowcore.SQLiteStore(flowcore_home / "flowcore.db") as store:
        await store.write(WriteBatch([record], tasks))
        [crashed] = await mark_crashed_runs(store)
        run = await store.get_run("busy")
    assert crashed.id == "busy" and run.state is State.CRASHED
    assert run.ended == pytest.approx(t0 + 2799 / 1400)  # its last task run's end: 2 s in
    assert run.duration == pytest.approx(2799 / 1400)
    assert run.task_count == 2800


async def test_an_engine_opening_marks_crashed_runs(flowcore_home: Path) -> None:
    record = running_record("gone", host=HOST, pid=dead_pid(), heartbeat=time.time())
    async with flowcore.SQLiteStore(flowcore_home / "flowcore.db") as store:
        await store.write(WriteBatch([record], [task_record("gone", 0, State.RUNNING)]))
    async with flowcore.Engine() as engine:
        run = await engine.store.get_run("gone")
        [task] = await engine.store.list_task_runs("gone")
    assert run.state is State.CRASHED and task.state is State.CRASHED


async def test_resume_of_a_running_run_is_refused(flowcore_home: Path) -> None:
    record = running_record("live", host=HOST, pid=os.getppid(), heartbeat=time.time())
    async with flowcore.SQLiteStore(flowcore_home / "flowcore.db") as store:
        await store.write(WriteBatch([record], []))
    async with flowcore.Engine():
        with pytest.raises(flowcore.ConfigurationError, match="still running"):
            await flowcore.resume_async("live")


# -- strict durability, in one process -------------------------------------------------------


async def test_strict_durability_commits_before_the_result_is_returned(
    flowcore_home: Path,
) -> None:
    @flowcore.task
    async def tick(i: int) -> int:
        await anyio.sleep(0.01)
        return i

    seen: list[tuple[int, State]] = []

    @flowcore.flow
    async def f() -> int:
        run_id = flowcore.current_run().id
        async with flowcore.SQLiteStore(flowcore_home / "flowcore.db") as reader:
            for i in range(3):
                await tick(i)
                # Another connection sees the completion as soon as the flow has the result.
                records = await reader.list_task_runs(run_id)
                seen.append((len(records), records[-1].state))
            engine = flowcore.current_run().engine
            flushes = engine.recorder.flushes
            results = await asyncio.gather(*(tick(i) for i in range(50)))
            committed = await reader.count_task_runs(run_id)
            group_flushes = engine.recorder.flushes - flushes
        assert committed == {"Completed": 53}
        assert group_flushes < 10, f"50 tasks finishing together took {group_flushes} commits"
        return sum(results)

    # A long flush interval: only the strict commits write anything during the flow.
    async with flowcore.Engine(durability="strict", flush_interval=60):
        assert await f() == sum(range(50))
    assert seen == [(1, State.COMPLETED), (2, State.COMPLETED), (3, State.COMPLETED)]


async def test_a_run_that_died_waiting_to_retry_is_marked_crashed(flowcore_home: Path) -> None:
    # A flow run between two attempts (Retrying) whose process died: crashed as well,
    # or it would hold its resume claim forever.
    record = running_record("between-attempts", host=HOST, pid=dead_pid(), heartbeat=time.time())
    record.machine = MACHINE
    record.state = State.RETRYING
    record.history.append(("Retrying", time.time(), "ValueError: once (retry in 60 s)"))
    async with flowcore.SQLiteStore(flowcore_home / "flowcore.db") as store:
        await store.write(WriteBatch([record], []))
        crashed = await mark_crashed_runs(store)
        assert [r.id for r in crashed] == ["between-attempts"]
        assert (await store.get_run("between-attempts")).state is State.CRASHED
