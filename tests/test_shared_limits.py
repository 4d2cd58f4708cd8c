"""Limits shared by processes: slots leased in the store hold across processes and expire."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest

import flowcore
from flowcore.testing import FakeClock

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
        async with flowcore.Engine(limits=limits) as engine:
            engine.limits.leases.ttl = float(sys.argv[4]) if len(sys.argv) > 4 else 30.0
            print(await f(n), flush=True)

    anyio.run(main)
    """
)


RATE_CHILD = textwrap.dedent(
    """
    import sys, time, anyio, flowcore

    log_path, n = sys.argv[1], int(sys.argv[2])

    @flowcore.task(tags=["rated-api"])
    async def call(i: int) -> int:
        with open(log_path, "a") as log:
            log.write(f"start {time.time()!r}\\n")
        return i

    @flowcore.flow
    async def f(n: int) -> int:
        return len(await call.map(range(n)))

    async def main() -> None:
        limits = [flowcore.limit("rated-api", rate=20, burst=4, shared=True)]
        async with flowcore.Engine(limits=limits):
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
        async with flowcore.Engine(limits=limits) as engine:
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


def _peak(log: Path) -> int:
    events = []
    for line in log.read_text().splitlines():
        kind, at = line.split()
        events.append((float(at), 1 if kind == "start" else -1))
    events.sort(key=lambda e: (e[0], e[1]))  # an end at the same instant goes first
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


@pytest.mark.slow
def test_two_processes_never_exceed_a_shared_limit(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    log = tmp_path / "calls.log"
    env = {**os.environ, "FLOWCORE_HOME": str(tmp_path / "home")}
    children = [
        subprocess.Popen(
            [sys.executable, str(script), str(log), "12", "0.05"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for child in children:
        out, err = child.communicate(timeout=90)
        assert child.returncode == 0, err
        assert out.strip() == "12"
    assert log.read_text().count("start") == 24
    assert _peak(log) == 3  # both processes together, never more


@pytest.mark.slow
def test_10k_tasks_in_two_processes_under_a_shared_limit_of_50(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(LOAD_CHILD)
    env = {**os.environ, "FLOWCORE_HOME": str(tmp_path / "home")}
    logs = [tmp_path / f"calls{k}.log" for k in range(2)]
    children = [
        subprocess.Popen(
            [sys.executable, str(script), str(log), "5000", "300", str(k)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k, log in enumerate(logs)
    ]
    try:
        for child in children:
            out, err = child.communicate(timeout=300)
            assert child.returncode == 0, err
            completed, cancelled, total = map(int, out.split())
            assert total == 5000 and cancelled == 300
            assert completed > 4000
    finally:
        for child in children:
            if child.poll() is None:  # a failed assertion must not leave them running
                child.kill()
                child.wait()
    both = tmp_path / "both.log"
    both.write_text("".join(log.read_text() for log in logs))
    peak = _peak(both)
    assert peak <= 50  # both processes together, through failures, timeouts, cancellations
    assert peak >= 40  # and the limit is used, not just respected

    async def leases() -> list[tuple[str, str, str, int, float, int]]:
        async with flowcore.SQLiteStore(tmp_path / "home" / "flowcore.db") as store:
            return await store.list_leases()

    assert anyio.run(leases) == []  # every slot given back, no waiter left behind


@pytest.mark.slow
def test_a_killed_holders_slots_come_back_when_their_leases_expire(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    log = tmp_path / "calls.log"
    env = {**os.environ, "FLOWCORE_HOME": str(tmp_path / "home")}
    # A holder takes all 3 slots for a long time, then dies without giving them back.
    holder = subprocess.Popen(
        [sys.executable, str(script), str(log), "3", "60", "1.0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not (log.exists() and log.read_text().count("start") == 3):
        assert time.monotonic() < deadline, "the holder never took its slots"
        time.sleep(0.05)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    killed_at = time.time()

    async def leases() -> list[tuple[str, str, str, int, float, int]]:
        async with flowcore.SQLiteStore(tmp_path / "home" / "flowcore.db") as store:
            return await store.list_leases()

    assert len(anyio.run(leases)) == 3  # still held in the store
    waiter = subprocess.run(
        [sys.executable, str(script), str(log), "3", "0.01"],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert waiter.returncode == 0, waiter.stderr
    assert waiter.stdout.strip() == "3"
    # It could only start once the dead holder's leases (1 s) had expired.
    starts = [float(line.split()[1]) for line in log.read_text().splitlines() if "start" in line]
    assert min(starts[3:]) >= killed_at - 0.05


@pytest.mark.anyio
async def test_a_shared_rate_books_turns_across_connections(tmp_path: Path) -> None:
    # Two processes are two connections to one database; times are given, so the
    # schedule is exact: 10 a second with a burst of 3, whoever asks.
    path = tmp_path / "flowcore.db"
    async with flowcore.SQLiteStore(path) as a, flowcore.SQLiteStore(path) as b:
        interval, tolerance = 0.1, 2 * 0.1
        starts = []
        for i in range(10):
            store = a if i % 2 else b
            starts.append(await store.reserve_rate("api", interval, tolerance, 100.0))
        assert starts[:3] == [100.0] * 3  # the burst
        assert starts[3:] == pytest.approx([100.0 + 0.1 * k for k in range(1, 8)])
        # Later, after an idle second, the burst is back (but not more than the burst).
        later = [await a.reserve_rate("api", interval, tolerance, 102.0) for _ in range(4)]
        assert later == pytest.approx([102.0, 102.0, 102.0, 102.1])
        assert [name for name, _ in await b.list_rates()] == ["api"]


@pytest.mark.anyio
async def test_a_shared_rate_alone_holds_across_engines(tmp_path: Path) -> None:
    clock = FakeClock(start=1_000.0)
    path = tmp_path / "flowcore.db"
    times: list[float] = []

    @flowcore.task(tags=["api"])
    async def hit(i: int) -> None:
        times.append(clock.time())

    @flowcore.flow
    async def f(n: int) -> None:
        for i in range(n):  # one at a time: the fake clock's sleeps then add up exactly
            await hit(i)

    limit = flowcore.limit("api", rate=5, burst=2, shared=True)
    async with flowcore.Engine(path, clock=clock, limits=[limit]) as one:
        async with flowcore.Engine(path, clock=clock, limits=[limit]):
            await f(6)  # in the inner engine
            assert one.limits.named("api") is not None
        await f(6)  # in engine `one`: the bucket is the one `two` emptied
    assert times[:2] == [1_000.0, 1_000.0]
    assert times[2:] == pytest.approx([1_000.0 + 0.2 * k for k in range(1, 11)])


@pytest.mark.slow
def test_a_shared_rate_holds_across_two_processes(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(RATE_CHILD)
    log = tmp_path / "calls.log"
    env = {**os.environ, "FLOWCORE_HOME": str(tmp_path / "home")}
    children = [
        subprocess.Popen(
            [sys.executable, str(script), str(log), "30"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for child in children:
            out, err = child.communicate(timeout=90)
            assert child.returncode == 0, err
            assert out.strip() == "30"
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    starts = sorted(float(line.split()[1]) for line in log.read_text().splitlines())
    assert len(starts) == 60
    # 20 a second with a burst of 4, over both processes together: any 1 s window
    # holds at most 20 + 4 starts (a little slack for timestamps taken after waking).
    for i, t in enumerate(starts):
        in_window = sum(1 for u in starts[i:] if u < t + 1.0)
        assert in_window <= 24 + 1, (i, in_window)
    # And the limit really bound them: 60 uses at 20/s after a burst of 4 take >= 2.8 s.
    assert starts[-1] - starts[0] >= (60 - 4) / 20 - 0.05


@pytest.mark.anyio
async def test_a_free_slot_goes_to_the_oldest_waiter_of_any_engine(tmp_path: Path) -> None:
    path = tmp_path / "flowcore.db"
    limit = flowcore.limit("db", 1, shared=True)
    order: list[str] = []
    async with (
        flowcore.Engine(path, limits=[limit]) as one,
        flowcore.Engine(path, limits=[limit]) as two,
    ):
        first = one.limits.named("db")
        second = two.limits.named("db")
        assert first is not None and second is not None
        await first.acquire()  # `one` holds the only slot

        async def take(state: object, name: str) -> None:
            await state.acquire()  # type: ignore[attr-defined]
            order.append(name)
            await anyio.sleep(0.01)
            await state.release()  # type: ignore[attr-defined]

        async with anyio.create_task_group() as tg:
            tg.start_soon(take, second, "two")  # waits first, in the other engine
            await _until(lambda: _waiting(path) == 1)
            await first.release()  # ... while `one` takes it back at once:
            tg.start_soon(take, first, "one")
        async with flowcore.SQLiteStore(path) as store:
            assert await store.list_leases() == []  # every row gone, waiters too
    assert order == ["two", "one"]


def _waiting(path: Path) -> int:
    with closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("SELECT COALESCE(SUM(waiting), 0) FROM limit_leases").fetchone()[0])


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110 (the condition is a row in another connection)
            await anyio.sleep(0.01)


def test_limits_ls_shows_holders_and_waiters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from click.testing import CliRunner

    from flowcore.cli import cli

    home = tmp_path / "home"
    monkeypatch.setenv("FLOWCORE_HOME", str(home))
    runner = CliRunner()
    assert "no shared limits" in runner.invoke(cli, ["limits", "ls"]).output
    me = f"{flowcore.ids.HOST}:{os.getpid()}"

    async def hold() -> None:
        limit = flowcore.limit("api", 1, shared=True)
        async with (
            flowcore.Engine(limits=[limit]) as one,
            flowcore.Engine(limits=[limit]),
            limit,  # the inner engine holds the slot
            anyio.create_task_group() as tg,
        ):
            other = one.limits.named("api")
            assert other is not None
            tg.start_soon(other.acquire)  # the outer one waits for it
            await _until(lambda: _waiting(home / "flowcore.db") == 1)
            shown = await anyio.to_thread.run_sync(runner.invoke, cli, ["limits", "ls", "--json"])
            assert shown.exit_code == 0, shown.output
            (row,) = json.loads(shown.output)
            assert row["name"] == "api" and row["held"] == 1 and row["waiting"] == 1
            assert row["holders"] == [me] and row["waiters"] == [me]
            table = await anyio.to_thread.run_sync(runner.invoke, cli, ["limits", "ls"])
            assert "api" in table.output and "waiting" in table.output
            tg.cancel_scope.cancel()

    anyio.run(hold)
    # Given back when the block ended, and the cancelled waiter left: nothing in the store.
    assert json.loads(runner.invoke(cli, ["limits", "ls", "--json"]).output) == []


@pytest.mark.anyio
async def test_gathered_holders_cancelled_give_shared_slots_back_at_once(tmp_path: Path) -> None:
    # asyncio.gather cancels its children with plain asyncio cancellation, which goes
    # through anyio's shields: the slots must come back anyway, not when leases expire.
    @flowcore.task(tags=["db"])
    async def hang(i: int) -> None:
        await anyio.sleep(60)

    @flowcore.task(tags=["db"])
    async def quick(i: int) -> int:
        return i

    @flowcore.flow
    async def f() -> list[int]:
        with anyio.move_on_after(0.2):
            await asyncio.gather(*(hang(i) for i in range(20)))
        return list(await quick.map(range(10)))

    limit = flowcore.limit("db", 5, shared=True)
    async with flowcore.Engine(tmp_path / "flowcore.db", limits=[limit]) as engine:
        with anyio.fail_after(10):  # leases last 30 s: this only passes if they came back
            assert await f() == list(range(10))
        store: Any = engine.store
        leases: list[object] = []

        async def refresh() -> bool:
            leases[:] = await store.list_leases()
            return not leases

        with anyio.fail_after(5):  # the pump drops its waiting row once nobody waits
            while not await refresh():  # noqa: ASYNC110 (rows in the store, not an event)
                await anyio.sleep(0.01)
        assert engine.limits.leases.held == 0
