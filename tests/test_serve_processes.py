"""``flowcore serve`` in real time, as processes on one SQLite store: two servers fire
each slot of a 1-second schedule exactly once with no gap (also when one is killed
with SIGKILL halfway: its in-flight slot shows Crashed), SIGTERM with and without
enough grace, a trigger run by exactly one of two servers, invalid trigger parameters.

Everything is asserted on the recorded runs and slots; waits are for conditions in the
store, with generous deadlines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest

from flowcore import SQLiteStore, State
from flowcore.records import FlowRunRecord

T = TypeVar("T")

FLOWS = textwrap.dedent(
    """
    import anyio
    import flowcore


    @flowcore.flow(schedule=flowcore.every(seconds=1, catchup="all", overlap="allow"))
    async def tick(pause: float = 0.0) -> None:
        await anyio.sleep(pause)


    @flowcore.flow(schedule=flowcore.every(seconds=1, catchup="all", overlap="allow",
                                           parameters={"pause": 5.0}))
    async def slow_tick(pause: float = 0.0) -> None:
        await anyio.sleep(pause)


    @flowcore.flow
    async def adder(x: int, y: int = 2) -> int:
        return x + y


    @flowcore.flow
    async def sleeper(seconds: float) -> str:
        await anyio.sleep(seconds)
        return "done"
    """
)


class Servers:
    """``python -m flowcore serve`` processes on one FLOWCORE_HOME."""

    def __init__(self, tmp_path: Path) -> None:
        self.home = tmp_path / "home"
        self.file = tmp_path / "flows.py"
        self.file.write_text(FLOWS)
        self.tmp = tmp_path
        self.env = {**os.environ, "FLOWCORE_HOME": str(self.home), "PYTHONUNBUFFERED": "1"}
        self.procs: list[subprocess.Popen[str]] = []
        self.logs: dict[int, Path] = {}

    def start(self, *targets: str, grace: float = 30.0) -> subprocess.Popen[str]:
        args = [f"{self.file}:{t}" for t in targets]
        log = self.tmp / f"server-{len(self.procs)}.log"
        with log.open("w") as out:  # a file, not a pipe: a long log never blocks the server
            proc = subprocess.Popen(
                [sys.executable, "-m", "flowcore", "serve", *args, "--grace", str(grace)],
                env=self.env,
                cwd=self.tmp,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        self.procs.append(proc)
        self.logs[proc.pid] = log
        return proc

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "flowcore", *args],
            env=self.env,
            cwd=self.tmp,
            capture_output=True,
            text=True,
            timeout=90,
        )

    def store(self, fn: Callable[[SQLiteStore], Awaitable[T]]) -> T:
        async def main() -> T:
            async with SQLiteStore(self.home / "flowcore.db") as store:
                return await fn(store)

        return anyio.run(main)

    def runs(self, name: str) -> list[FlowRunRecord]:
        async def fetch(store: SQLiteStore) -> list[FlowRunRecord]:
            return await store.list_runs(name=name, limit=100_000)

        return sorted(self.runs_raw(fetch), key=lambda r: (r.scheduled_for or 0, r.created))

    def runs_raw(self, fn: Callable[[SQLiteStore], Awaitable[list[FlowRunRecord]]]) -> Any:
        if not (self.home / "flowcore.db").exists():
            return []
        return self.store(fn)

    def wait_for(self, what: str, condition: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.output()}")
            for proc in self.procs:
                if proc.poll() is not None and proc.returncode not in (0, -9):
                    raise AssertionError(f"a server exited {proc.returncode}\n{self.output()}")
            time.sleep(0.1)

    def stop(self, proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str]:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return proc.returncode, self.logs[proc.pid].read_text()

    def output(self) -> str:
        return "\n".join(
            f"--- server {p.pid} (exit {p.returncode}):\n{self.logs[p.pid].read_text()[-3000:]}"
            for p in self.procs
        )

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def servers(tmp_path: Path) -> Any:
    s = Servers(tmp_path)
    yield s
    s.close()


def assert_one_run_per_slot(runs: list[FlowRunRecord]) -> None:
    slots = [r.scheduled_for for r in runs if r.scheduled_for is not None]
    assert len(slots) == len(runs), "a scheduled run without its slot"
    assert len(slots) == len(set(slots)), "a slot fired twice"
    first, last = min(slots), max(slots)
    assert sorted(slots) == [first + k for k in range(int(last - first) + 1)], "a gap"


@pytest.mark.slow
def test_two_servers_fire_each_slot_once_without_a_gap(servers: Servers) -> None:
    a = servers.start("tick")
    b = servers.start("tick")
    servers.wait_for("30 slots", lambda: len(servers.runs("tick")) >= 30, timeout=120)
    results = [servers.stop(a), servers.stop(b)]
    assert [code for code, _ in results] == [0, 0], results
    runs = servers.runs("tick")
    assert_one_run_per_slot(runs)
    assert {r.state for r in runs} == {State.COMPLETED}
    skipped = servers.store(lambda s: s.list_slots("tick", limit=10_000))
    assert [c for c in skipped if c.skipped] == []
    assert "fired slot" in results[0][1] + results[1][1]


@pytest.mark.slow
def test_a_server_killed_halfway_leaves_a_crashed_run_and_no_gap(servers: Servers) -> None:
    a = servers.start("slow_tick")
    b = servers.start("slow_tick")
    servers.wait_for("10 slots", lambda: len(servers.runs("slow_tick")) >= 10, timeout=120)
    pids = {a.pid: a, b.pid: b}
    in_flight: list[FlowRunRecord] = []

    # Runs take 5 s and slots come every second: each server has runs in flight at any
    # moment, so the killed one does.
    def a_run_in_flight() -> bool:  # of either server: the one running it is killed
        in_flight[:] = [r for r in servers.runs("slow_tick") if r.state is State.RUNNING]
        return any(r.pid in pids for r in in_flight)

    servers.wait_for("a run in flight", a_run_in_flight)
    victim = pids.pop(next(r.pid for r in in_flight if r.pid in pids))
    (survivor,) = pids.values()
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    killed = [r for r in servers.runs("slow_tick") if r.pid == victim.pid]
    in_flight = [r for r in killed if r.state is State.RUNNING]
    assert in_flight
    killed_at = time.time()
    servers.wait_for(
        "15 more slots",
        lambda: (
            sum(1 for r in servers.runs("slow_tick") if (r.scheduled_for or 0) > killed_at) >= 15
        ),
        timeout=120,
    )
    code, out = servers.stop(survivor)
    assert code == 0, out
    runs = servers.runs("slow_tick")
    assert_one_run_per_slot(runs)
    by_id = {r.id: r for r in runs}
    for run in in_flight:
        assert by_id[run.id].state is State.CRASHED  # marked by the surviving server
    assert {r.state for r in runs if r.pid == survivor.pid} == {State.COMPLETED}
    assert "crash found" in out


def _trigger_runs(servers: Servers, name: str) -> list[FlowRunRecord]:
    return [r for r in servers.runs(name) if (r.launched_by or "").startswith("trigger ")]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("grace", "signals", "state"),
    [
        (60.0, [signal.SIGTERM], State.COMPLETED),  # finishes within the grace period
        (0.5, [signal.SIGTERM], State.CANCELLED),  # does not: cancelled after it
        (600.0, [signal.SIGINT, signal.SIGINT], State.CANCELLED),  # Ctrl-C twice: at once
    ],
    ids=["sigterm-grace", "sigterm-no-grace", "sigint-twice"],
)
def test_stopping_lets_the_run_finish_within_grace_else_cancels_it(
    servers: Servers, grace: float, signals: list[signal.Signals], state: State
) -> None:
    server = servers.start("sleeper", grace=grace)
    servers.wait_for("the server", lambda: "serving 1 flow" in servers.logs[server.pid].read_text())
    seconds = 3 if state is State.COMPLETED else 300
    queued = servers.cli("trigger", "sleeper", "--param", f"seconds={seconds}")
    assert queued.returncode == 0, queued.stderr
    servers.wait_for(
        "the run to start",
        lambda: any(r.state is State.RUNNING for r in _trigger_runs(servers, "sleeper")),
    )
    log = servers.logs[server.pid]
    for i, signum in enumerate(signals):
        server.send_signal(signum)
        seen = (f"{signum.name}:", f"{signum.name} again")
        servers.wait_for(
            "the signal to be seen",
            lambda seen=seen, i=i: sum(log.read_text().count(s) for s in seen) > i,  # type: ignore[misc]
        )
    try:
        code = server.wait(timeout=90)
    except subprocess.TimeoutExpired:
        server.kill()
        raise
    out = servers.logs[server.pid].read_text()
    assert code == 0, out
    (run,) = _trigger_runs(servers, "sleeper")
    assert run.state is state, out


@pytest.mark.slow
def test_a_trigger_is_run_by_exactly_one_of_two_servers(servers: Servers) -> None:
    a = servers.start("adder")
    b = servers.start("adder")
    servers.wait_for(
        "both servers registered",
        lambda: (
            (servers.home / "flowcore.db").exists()
            and len(servers.store(lambda s: s.list_served())) == 2
        ),
    )
    for x in range(5):
        done = servers.cli("trigger", "adder", "--param", f"x={x}", "--wait", "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["state"] == "Completed"
    runs = _trigger_runs(servers, "adder")
    assert len(runs) == 5
    assert len({r.launched_by for r in runs}) == 5
    bad = servers.cli("trigger", "adder", "--param", "x=abc", "--wait")
    assert bad.returncode == 1
    assert "Failed" in bad.stdout
    failed = [r for r in _trigger_runs(servers, "adder") if r.state is State.FAILED]
    assert len(failed) == 1 and failed[0].error_type == "flowcore.ParameterError"
    assert [servers.stop(a)[0], servers.stop(b)[0]] == [0, 0]
