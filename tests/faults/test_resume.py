"""Two ``flowcore resume`` processes started together on one crashed run.

A child runs a flow of 20 tasks under strict durability (each completion is
committed before the next task starts) and kills itself with SIGKILL at task 10:
a real crashed run. Then two ``flowcore resume RUN`` processes start at once.
Each task appends its number to a log flowcore knows nothing about, so the log
is the ground truth of which task bodies ran. The resumed task 10 waits for a
release file, so whichever resume claimed the run is still running when the
other one looks: exactly one runs, the other is refused naming it (run id, host
and pid), and no task runs twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import anyio
import pytest

import flowcore
from flowcore import State
from flowcore.ids import HOST

pytestmark = pytest.mark.slow

N = 20
KILL_AT = 10

JOB = textwrap.dedent(
    f"""
    import os
    import pathlib
    import signal
    import sys

    import anyio

    import flowcore


    @flowcore.task
    async def work(i: int, log: str, release: str) -> int:
        if i == {KILL_AT}:
            if os.environ.get("FLOWCORE_TEST_DIE"):
                os.kill(os.getpid(), signal.SIGKILL)  # the first run dies here
            while not pathlib.Path(release).exists():  # a resumption waits here
                await anyio.sleep(0.01)
        with open(log, "a") as f:
            f.write(f"{{i}}\\n")
        return i * 2


    @flowcore.flow
    async def job(log: str, release: str) -> int:
        total = 0
        for i in range({N}):
            total += await work(i, log, release)
        return total


    async def main() -> None:
        async with flowcore.Engine(durability="strict"):
            print(await job(sys.argv[1], sys.argv[2]))


    if __name__ == "__main__":
        anyio.run(main)
    """
)


def read_log(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().splitlines()] if log.exists() else []


def wait_for_one_to_end(
    procs: list[subprocess.Popen[str]], timeout: float = 60
) -> subprocess.Popen[str]:
    """The first of ``procs`` to end (polled: they are other processes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                return proc
        time.sleep(0.01)
    pytest.fail(f"neither resume ended within {timeout:g} s")


def runs_in(home: Path) -> list[flowcore.FlowRunRecord]:
    async def read() -> list[flowcore.FlowRunRecord]:
        async with flowcore.SQLiteStore(home / "flowcore.db") as store:
            return await store.list_runs()

    return anyio.run(read)


def test_two_resumes_started_together_one_runs_the_other_is_refused(
    tmp_path: Path, flowcore_home: Path
) -> None:
    script = tmp_path / "job.py"
    script.write_text(JOB)
    log, release = tmp_path / "side-effects.log", tmp_path / "release"
    first = subprocess.run(
        [sys.executable, str(script), str(log), str(release)],
        cwd=tmp_path,
        env={**os.environ, "FLOWCORE_TEST_DIE": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert first.returncode == -signal.SIGKILL, first.stderr
    assert read_log(log) == list(range(KILL_AT))
    [crashed] = runs_in(flowcore_home)

    resume = [sys.executable, "-m", "flowcore", "resume", crashed.id, "--no-progress"]
    procs = [
        subprocess.Popen(
            resume, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    try:
        loser = wait_for_one_to_end(procs)
        release.touch()  # the winner, held at task 10, goes on
        [winner] = [p for p in procs if p is not loser]
        out, err = winner.communicate(timeout=60)
        _, loser_err = loser.communicate(timeout=10)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert winner.returncode == 0, err
    assert out.strip() == str(sum(i * 2 for i in range(N)))
    assert loser.returncode == 1, loser_err

    runs = {r.id: r for r in runs_in(flowcore_home)}
    assert runs[crashed.id].state is State.CRASHED
    [resumed] = [r for r in runs.values() if r.resumed_from == crashed.id]  # one: no other
    assert resumed.state is State.COMPLETED and resumed.pid == winner.pid
    assert f"is being resumed already, by run {resumed.id}" in loser_err
    assert f"(process {winner.pid} on {HOST}, Running)" in loser_err
    runs_of = Counter(read_log(log))
    assert sorted(runs_of) == list(range(N))
    assert set(runs_of.values()) == {1}  # no task ran twice
