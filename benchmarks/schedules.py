"""How late a server starts a slot's run, and what a server with many schedules costs.

Run::

    python benchmarks/schedules.py [--slots 300] [--schedules-per-second 10]
                                   [--many 1000] [--minutes 10]

Two measures, printed as one table:

- **slot → run started** (real time, a real server): ``flowcore.aserve`` on a SQLite
  store in a temporary FLOWCORE_HOME, serving ``--schedules-per-second`` flows, each with
  a 1-second schedule whose anchor is offset by a fraction of a second, so slots come
  every 1/N s; after ``--slots`` slots, each run's recorded ``started`` minus its
  ``scheduled_for`` (both wall-clock seconds), median and p99. That is what a user sees:
  the wake, the claim (one write transaction with the run row), and the start of the run.
- **one server, ``--many`` schedules firing every minute** (a fake clock, the SQLite
  store): ``--minutes`` simulated minutes, each one wake that claims ``--many`` slots in
  one ``claim_slots`` call and runs ``--many`` no-op flow runs; the CPU seconds each
  simulated minute took (its share of a real minute) and the process's RSS after it,
  which should stay flat.

Targets (issue 13): slot → start ≤ 20 ms median and ≤ 100 ms p99 on a 2-core machine;
with 1,000 schedules, CPU share and RSS flat.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import psutil
from rich.console import Console
from rich.table import Table

import flowcore
from flowcore.serve import Server, aserve
from flowcore.testing import FakeClock


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def slot_latency(slots: int, per_second: int, home: Path) -> list[float]:
    """Seconds from each slot's time to its run's start, over ``slots`` slots."""
    base = datetime(2026, 1, 1, tzinfo=UTC)
    flows = []
    for i in range(per_second):
        anchor = base + timedelta(seconds=i / per_second)

        @flowcore.flow(
            name=f"tick{i}",
            schedule=flowcore.every(seconds=1, anchor=anchor, catchup="all", overlap="allow"),
        )
        async def tick() -> None:
            pass

        flows.append(tick)
    store = flowcore.SQLiteStore(home / "flowcore.db")
    servers: list[Server] = []
    async with flowcore.Engine(store, tracing=False) as engine, anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: aserve(*flows, engine=engine, handle_signals=False, on_ready=servers.append)
        )
        while True:
            await anyio.sleep(0.5)
            runs = await store.list_runs(limit=slots + 10 * per_second)
            if len([r for r in runs if r.state is flowcore.State.COMPLETED]) >= slots:
                break
        servers[0].stop()
    return [
        r.started - r.scheduled_for
        for r in runs
        if r.started is not None and r.scheduled_for is not None
    ][:slots]


async def many_schedules(count: int, minutes: int, home: Path) -> list[tuple[float, float]]:
    """``(cpu seconds, rss MiB)`` after each simulated minute of one server holding
    ``count`` schedules that fire every minute."""

    @flowcore.flow(
        schedule=[flowcore.every(minutes=1, name=f"s{i}") for i in range(count)],
    )
    async def minutely() -> None:
        pass

    start = datetime(2026, 1, 1, tzinfo=UTC).timestamp() + 1
    clock = FakeClock(start)
    process = psutil.Process()
    out = []
    store = flowcore.SQLiteStore(home / "many.db")
    async with (
        flowcore.Engine(store, clock=clock, tracing=False) as engine,
        Server([minutely], engine=engine, max_runs=count) as server,
    ):
        for _ in range(minutes):
            clock.advance(60)
            cpu = time.process_time()
            await server.tick()
            await server.wait_idle()
            await server.beat()  # what each heartbeat does (every 5 s in real time)
            out.append((time.process_time() - cpu, process.memory_info().rss / 2**20))
        fired = len(await store.list_runs(name="minutely", limit=count * minutes + 1))
    assert fired == count * minutes, f"{fired} runs for {count * minutes} slots"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=300)
    parser.add_argument("--schedules-per-second", type=int, default=10)
    parser.add_argument("--many", type=int, default=1000)
    parser.add_argument("--minutes", type=int, default=10)
    args = parser.parse_args()
    logging.getLogger("flowcore.serve").setLevel(logging.WARNING)  # a line per slot otherwise
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        os.environ["FLOWCORE_HOME"] = str(home)
        latencies = anyio.run(slot_latency, args.slots, args.schedules_per_second, home)
        minutes = anyio.run(many_schedules, args.many, args.minutes, home)
    ms = [x * 1000 for x in latencies]
    table = Table(title=f"flowcore serve ({platform.python_version()}, {os.cpu_count()} cores)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    table.add_row(
        f"slot → run started, median ({len(ms)} slots)",
        f"{statistics.median(ms):.1f} ms",
        "≤ 20 ms",
    )
    table.add_row("slot → run started, p99", f"{_percentile(ms, 0.99):.1f} ms", "≤ 100 ms")
    table.add_row("slot → run started, max", f"{max(ms):.1f} ms", "")
    for i, (cpu, rss) in enumerate(minutes, 1):
        table.add_row(
            f"{args.many} schedules, minute {i}: CPU, RSS",
            f"{cpu:.2f} s ({cpu / 60:.1%}), {rss:.0f} MiB",
            "flat",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
