"""Limits shared by processes: slots leased in the store hold across processes and expire."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest

import flowcore

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
            engine.limits.lease_ttl = float(sys.argv[4]) if len(sys.argv) > 4 else 30.0
            print(await f(n), flush=True)

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

    async def leases() -> list[tuple[str, str, str, int, float]]:
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
async def test_shared_limit_needs_a_concurrency() -> None:
    with pytest.raises(flowcore.ConfigurationError, match="shared=True"):
        flowcore.limit("x", rate=5, shared=True)


def test_limits_ls_shows_holders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from click.testing import CliRunner

    from flowcore.cli import cli

    home = tmp_path / "home"
    monkeypatch.setenv("FLOWCORE_HOME", str(home))
    runner = CliRunner()
    assert "no shared limits" in runner.invoke(cli, ["limits", "ls"]).output

    async def hold() -> None:
        limit = flowcore.limit("api", 2, shared=True)
        async with flowcore.Engine(limits=[limit]), limit:  # the engine first, then a slot
            shown = await anyio.to_thread.run_sync(runner.invoke, cli, ["limits", "ls", "--json"])
            assert shown.exit_code == 0, shown.output
            (row,) = json.loads(shown.output)
            assert row["name"] == "api" and row["held"] == 1
            assert row["holders"] == [f"{flowcore.context.HOST}:{os.getpid()}"]
            table = await anyio.to_thread.run_sync(runner.invoke, cli, ["limits", "ls"])
            assert "api" in table.output

    anyio.run(hold)
    # Given back when the block ended: the lease is gone from the store.
    assert json.loads(runner.invoke(cli, ["limits", "ls", "--json"]).output) == []
