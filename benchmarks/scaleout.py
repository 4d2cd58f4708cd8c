"""Scaling out: PostgreSQL against SQLite, several processes on one database, and a
CPU-bound fan-out on Dask against local threads and processes. Ratios in one run.

    python benchmarks/scaleout.py [--tasks 20000] [--processes 1,2,4]
                                  [--cpu-tasks 64] [--cpu-seconds 0.5] [--quick]

- **stores**: one flow of ``--tasks`` gathered no-op tasks (each a tracked, persisted
  task run) on SQLite and on PostgreSQL, tasks per second; then P processes at once on
  one PostgreSQL database (each its own flow), tasks per second in all. The server is
  ``$FLOWCORE_TEST_POSTGRES`` when set, else one started with ``.ci/postgres.sh`` for
  the run (PostgreSQL installed), else the PostgreSQL rows are skipped, saying so.
- **CPU-bound fan-out**: ``--cpu-tasks`` tasks of ``--cpu-seconds`` of pure-Python work
  each (a fixed amount of work, calibrated on one core first), one after another, as
  flowcore sync tasks in local threads (the GIL: about serial), as plain
  ``ProcessPoolExecutor`` calls (the floor for processes), and as flowcore tasks on a
  ``dask.distributed`` LocalCluster of 2 worker processes (``executor="dask"``): the wall
  time, the speed-up over threads, and what Dask and flowcore add per task over plain
  processes. Needs ``plugins/flowcore-dask`` installed (skipped, saying so, without it).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import flowcore

ROOT = Path(__file__).resolve().parents[1]


# -- the work -----------------------------------------------------------------------------------


@flowcore.task
async def noop(i: int) -> int:
    return i


@flowcore.flow
async def fan_out(n: int) -> int:
    return len(await asyncio.gather(*(noop(i) for i in range(n))))


def burn(rounds: int) -> int:
    """A fixed amount of pure-Python work (holds the GIL throughout): ``rounds`` rounds,
    calibrated by :func:`rounds_for` to take a given time on one core."""
    n = 0
    for _ in range(rounds):
        n += sum(i * i for i in range(200))
    return n


def rounds_for(seconds: float) -> int:
    """How many rounds of :func:`burn` take about ``seconds`` on one core, here."""
    t0 = time.perf_counter()
    burn(2000)
    return max(1, int(2000 * seconds / (time.perf_counter() - t0)))


@flowcore.task
def burn_here(rounds: int) -> int:
    return burn(rounds)


@flowcore.task(executor="dask")
def burn_on_dask(rounds: int) -> int:
    return burn(rounds)


@flowcore.flow
async def cpu_fan_out(count: int, rounds: int, where: str) -> int:
    task = burn_on_dask if where == "dask" else burn_here
    return len(await asyncio.gather(*(task(rounds) for _ in range(count))))


# -- stores -------------------------------------------------------------------------------------


async def tasks_per_second(store: Any, n: int) -> float:
    async with flowcore.Engine(store=store):
        await fan_out(100)  # warm up
        t0 = time.perf_counter()
        assert await fan_out(n) == n
        return n / (time.perf_counter() - t0)


def postgres_server() -> tuple[str | None, str | None]:
    """The server's URL and, when this run started it, what stops it (None: none)."""
    given = os.environ.get("FLOWCORE_TEST_POSTGRES")
    if given:
        return given, None
    try:
        started = subprocess.run(
            ["bash", str(ROOT / ".ci" / "postgres.sh"), "start"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None, None
    url = started.stdout.strip()
    return url, url


async def new_database(server: str) -> str:
    import asyncpg

    name = f"flowcore_scaleout_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    head, sep, tail = server.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{name}{sep}{tail}"


def one_process(url: str, n: int) -> None:
    """What each of the P processes runs (``--one URL N``)."""
    rate = asyncio.run(tasks_per_second(url, n))
    print(rate)


def processes_at_once(url: str, n: int, count: int) -> float:
    """Tasks per second in all, ``count`` processes each running a flow of ``n`` tasks."""
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--one", url, str(n)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(count)
    ]
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"a benchmark process failed ({proc.returncode}): {out}")
    return count * n / (time.perf_counter() - t0)


# -- CPU-bound ----------------------------------------------------------------------------------


async def cpu_rows(count: int, seconds: float) -> list[tuple[str, float]]:
    rows: list[tuple[str, float]] = []
    rounds = rounds_for(seconds)
    t0 = time.perf_counter()
    for _ in range(count):
        burn(rounds)
    rows.append(("one after another, this process (no flowcore)", time.perf_counter() - t0))
    async with flowcore.Engine(store="memory", sync_threads=count):
        t0 = time.perf_counter()
        await cpu_fan_out(count, rounds, "threads")
        rows.append(("flowcore, sync tasks in local threads", time.perf_counter() - t0))
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        list(pool.map(burn, [0, 0]))  # the workers started
        t0 = time.perf_counter()
        list(pool.map(burn, [rounds] * count))
        rows.append(("ProcessPoolExecutor, 2 processes (no flowcore)", time.perf_counter() - t0))
    try:
        from flowcore_dask import DaskExecutor
    except ImportError:
        return rows
    executor = DaskExecutor()  # a LocalCluster of worker processes for the engine's life
    async with flowcore.Engine(store="memory", executors={"dask": executor}):
        await cpu_fan_out(2, 0, "dask")  # the cluster started
        t0 = time.perf_counter()
        await cpu_fan_out(count, rounds, "dask")
        rows.append(("flowcore tasks on Dask, LocalCluster", time.perf_counter() - t0))
    return rows


# -- main ---------------------------------------------------------------------------------------


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--one":
        one_process(sys.argv[2], int(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks per flow (stores)")
    parser.add_argument("--processes", default="1,2,4", help="process counts on one database")
    parser.add_argument("--cpu-tasks", type=int, default=64, help="CPU-bound tasks")
    parser.add_argument("--cpu-seconds", type=float, default=0.5, help="work per CPU task")
    parser.add_argument("--quick", action="store_true", help="5,000 tasks; 16 CPU tasks of 0.1 s")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.cpu_tasks, args.cpu_seconds, args.processes = 5000, 16, 0.1, "1,2"
    counts = [int(c) for c in args.processes.split(",")]
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)

    stores = Table(title=f"tracked no-op tasks, {args.tasks:,} gathered in a flow")
    for column in ("store", "processes", "tasks/s", "vs SQLite, one process"):
        stores.add_column(column, justify="left" if column == "store" else "right")
    with tempfile.TemporaryDirectory(prefix="flowcore-scaleout-") as folder:
        sqlite = asyncio.run(tasks_per_second(Path(folder) / "s.db", args.tasks))
        stores.add_row("SQLite", "1", f"{sqlite:,.0f}", "1.00x")
    server, stop = postgres_server()
    note = ""
    if server is None:
        note = "PostgreSQL rows skipped: set FLOWCORE_TEST_POSTGRES or install PostgreSQL"
    else:
        try:
            for count in counts:
                url = asyncio.run(new_database(server))
                if count == 1:
                    rate = asyncio.run(tasks_per_second(url, args.tasks))
                else:
                    rate = processes_at_once(url, args.tasks, count)
                stores.add_row("PostgreSQL", str(count), f"{rate:,.0f}", f"{rate / sqlite:.2f}x")
        finally:
            if stop is not None:
                subprocess.run(["bash", str(ROOT / ".ci" / "postgres.sh"), "stop", stop])
    console.print(stores)
    if note:
        console.print(note)

    rows = asyncio.run(cpu_rows(args.cpu_tasks, args.cpu_seconds))
    cpu = Table(title=f"{args.cpu_tasks} CPU-bound tasks of {args.cpu_seconds:g} s each")
    for column in ("how", "wall", "speed-up over threads", "added per task over processes"):
        cpu.add_column(column, justify="left" if column == "how" else "right")
    threads = rows[1][1]
    processes = rows[2][1]
    for how, wall in rows:
        added = (wall - processes) / args.cpu_tasks * 1e3
        cpu.add_row(how, f"{wall:.2f} s", f"{threads / wall:.2f}x", f"{added:+.1f} ms")
    console.print(cpu)
    if len(rows) < 4:
        console.print("Dask rows skipped: pip install -e plugins/flowcore-dask")
    return 0


if __name__ == "__main__":
    sys.exit(main())
