"""The multi-process tests that run on SQLite, on one PostgreSQL database: two ``flowcore
serve`` processes fire each slot of a 1-second schedule exactly once with no gap (also
when one is killed with SIGKILL halfway: its in-flight run shows Crashed), a trigger is
run by exactly one of two servers, and two processes under one shared limit never exceed
it (a few calls, and 10,000 tasks through failures, timeouts and cancellations).

Modelled on ``tests/test_serve_processes.py`` and ``tests/test_shared_limits.py`` (whose
helpers this package cannot import: both test folders are a package named ``tests``).
The store is named the way users name it: ``FLOWCORE_DB_URL`` for ``flowcore serve``,
``flowcore trigger`` and the engines of the child processes. Everything is asserted on
the recorded runs, slots, leases and the children's own logs; waits are for conditions
in the store, with generous deadlines (a loaded two-core machine), never fixed sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import anyio
import pytest

from flowcore import State
from flowcore.records import FlowRunRecord
from flowcore_postgres import PostgresStore

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
    """
)


class Servers:
    """``python -m flowcore serve`` processes on one PostgreSQL database."""

    def __init__(self, tmp_path: Path, url: str) -> None:
        self.url = url
        self.file = tmp_path / "flows.py"
        self.file.write_text(FLOWS)
        self.tmp = tmp_path
        self.env = {
            **os.environ,
            "FLOWCORE_DB_URL": url,
            "FLOWCORE_HOME": str(tmp_path / "home"),  # not used: the URL wins
            "PYTHONUNBUFFERED": "1",
        }
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

    def store(self, fn: Callable[[PostgresStore], Awaitable[T]]) -> T:
        async def main() -> T:
            async with PostgresStore(self.url, pool_size=2) as store:
                return await fn(store)

        return anyio.run(main)

    def runs(self, name: str) -> list[FlowRunRecord]:
        found = self.store(lambda s: s.list_runs(name=name, limit=100_000))
        return sorted(found, key=lambda r: (r.scheduled_for or 0, r.created))

    def wait_for(self, what: str, condition: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.output()}")
            for proc in self.procs:
                if proc.poll() is not None and proc.returncode not in (0, -9):
                    raise AssertionError(f"a server exited {proc.returncode}\n{self.output()}")
            time.sleep(0.1)  # polling the store between looks, not waiting for an outcome

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
def servers(tmp_path: Path, pg_url: str) -> Iterator[Servers]:
    s = Servers(tmp_path, pg_url)
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
    slots = servers.store(lambda s: s.list_slots("tick", limit=10_000))
    assert [c for c in slots if c.skipped] == []
    assert len(slots) == len(runs)
    assert "fired slot" in results[0][1] + results[1][1]
    assert {r.pid for r in runs} <= {a.pid, b.pid}


@pytest.mark.slow
def test_a_server_killed_halfway_leaves_a_crashed_run_and_no_gap(servers: Servers) -> None:
    a = servers.start("slow_tick")
    b = servers.start("slow_tick")
    servers.wait_for("10 slots", lambda: len(servers.runs("slow_tick")) >= 10, timeout=120)
    pids = {a.pid: a, b.pid: b}
    in_flight: list[FlowRunRecord] = []

    # Runs take 5 s and slots come every second: each server has runs in flight at any
    # moment, so the killed one does.
    def a_run_in_flight() -> bool:
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


@pytest.mark.slow
def test_a_trigger_is_run_by_exactly_one_of_two_servers(servers: Servers) -> None:
    a = servers.start("adder")
    b = servers.start("adder")
    servers.wait_for(
        "both servers registered", lambda: len(servers.store(lambda s: s.list_served())) == 2
    )
    for x in range(5):
        done = servers.cli("trigger", "adder", "--param", f"x={x}", "--wait", "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["state"] == "Completed"
    runs = [r for r in servers.runs("adder") if (r.launched_by or "").startswith("trigger ")]
    assert len(runs) == 5
    assert len({r.launched_by for r in runs}) == 5
    triggers = servers.store(lambda s: s.list_triggers(flow="adder"))
    assert sorted(t.run_id or "" for t in triggers) == sorted(r.id for r in runs)
    assert {t.claimed_by for t in triggers} <= {
        s.holder for s in servers.store(lambda s: s.list_served())
    }
    assert [servers.stop(a)[0], servers.stop(b)[0]] == [0, 0]


# -- shared limits ------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys, time, anyio, flowcore

    log_path, n, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])

    @flowcore.task(tags=["shared-api"])
    async def call(i: int) -> int:
        with open(log_path, "a") as log:
            log.write(f"start {time.time()!r}\\n")
        await anyio.sleep(hold)
        with open(log_path, "a") as log:
            log.write(f"end {time.time()!r}\\n")
        return i

    @flowcore.flow
    async def f(n: int) -> int:
        return len(await call.map(range(n)))

    async def main() -> None:
        limits = [flowcore.limit("shared-api", 3, shared=True)]
        async with flowcore.Engine(limits=limits):  # the store: $FLOWCORE_DB_URL
            print(await f(n), flush=True)

    anyio.run(main)
    """
)

LOAD_CHILD = textwrap.dedent(
    """
    import asyncio, random, sys, time, anyio, flowcore

    log_path, n, doomed, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(seed)
    events = []

    @flowcore.task(tags=["partner-api"], timeout=0.05, retries=1)
    async def call(i: int) -> int:
        events.append(("start", time.time()))
        try:
            r = rng.random()
            if r < 0.03:
                raise ConnectionError("flaky")
            await anyio.sleep(0.2 if r < 0.05 else 0.001)  # some time out
            return i
        finally:
            events.append(("end", time.time()))

    @flowcore.task(tags=["partner-api"])
    async def hang(i: int) -> None:
        events.append(("start", time.time()))
        try:
            await anyio.sleep(60)
        finally:
            events.append(("end", time.time()))

    @flowcore.flow
    async def f() -> int:
        futures = call.map(range(n - doomed))
        with anyio.move_on_after(1.0):  # cancelled from outside, holding slots or waiting
            await asyncio.gather(*(hang(i) for i in range(doomed)))
        for fut in futures:
            await fut.wait()
        return sum(fut.exception() is None for fut in futures)

    async def main() -> None:
        limits = [flowcore.limit("partner-api", 50, shared=True)]
        async with flowcore.Engine(limits=limits) as engine:  # the store: $FLOWCORE_DB_URL
            completed = await f()
            await engine.recorder.flush()
            run = engine.last_run
            counts = await engine.store.count_task_runs(run.id)
        with open(log_path, "w") as log:
            log.writelines(f"{kind} {at!r}\\n" for kind, at in events)
        print(completed, counts.get("Cancelled", 0), sum(counts.values()), flush=True)

    anyio.run(main)
    """
)


def peak(log: Path) -> int:
    """The most calls in flight at once, from their start and end lines."""
    events = []
    for line in log.read_text().splitlines():
        kind, at = line.split()
        events.append((float(at), 1 if kind == "start" else -1))
    events.sort(key=lambda e: (e[0], e[1]))  # an end at the same instant goes first
    now = most = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def children(
    script: Path, url: str, argv: list[list[str]], timeout: float
) -> list[tuple[int, str, str]]:
    """Run one child per argument list at once, on the store ``url`` names; their exit
    codes and outputs (a child still running at the deadline is killed, and fails)."""
    env = {**os.environ, "FLOWCORE_DB_URL": url, "FLOWCORE_HOME": str(script.parent / "home")}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), *args],
            env=env,
            cwd=script.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in argv
    ]
    done = []
    try:
        for proc in procs:
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            done.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:  # a failed wait must not leave them running
                proc.kill()
                proc.wait()
    return done


def leases(url: str) -> list[tuple[str, str, str, int, float, int]]:
    async def read() -> list[tuple[str, str, str, int, float, int]]:
        async with PostgresStore(url, pool_size=1) as store:
            return await store.list_leases()

    return anyio.run(read)


@pytest.mark.slow
def test_two_processes_never_exceed_a_shared_limit(tmp_path: Path, pg_url: str) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    log = tmp_path / "calls.log"
    for code, out, err in children(script, pg_url, [[str(log), "12", "0.05"]] * 2, timeout=90):
        assert code == 0, err
        assert out.strip() == "12"
    assert log.read_text().count("start") == 24
    assert peak(log) == 3  # both processes together, never more
    assert leases(pg_url) == []


@pytest.mark.slow
def test_10k_tasks_in_two_processes_under_a_shared_limit_of_50(tmp_path: Path, pg_url: str) -> None:
    script = tmp_path / "child.py"
    script.write_text(LOAD_CHILD)
    logs = [tmp_path / f"calls{k}.log" for k in range(2)]
    argv = [[str(log), "5000", "300", str(k)] for k, log in enumerate(logs)]
    for code, out, err in children(script, pg_url, argv, timeout=300):
        assert code == 0, err
        completed, cancelled, total = map(int, out.split())
        assert total == 5000 and cancelled == 300
        assert completed > 4000
    both = tmp_path / "both.log"
    both.write_text("".join(log.read_text() for log in logs))
    most = peak(both)
    assert most <= 50  # both processes together, through failures, timeouts, cancellations
    assert most >= 40  # and the limit is used, not just respected
    assert leases(pg_url) == []  # every slot given back, no waiter left behind
