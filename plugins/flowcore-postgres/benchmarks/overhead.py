"""Tracked no-op tasks per second on PostgreSQL, SQLite and the memory store, in one run.

    python plugins/flowcore-postgres/benchmarks/overhead.py [--tasks 20000] [--repeat 3]

The PostgreSQL server is ``$FLOWCORE_TEST_POSTGRES`` when set; otherwise one is started
for the run with ``.ci/postgres.sh`` (PostgreSQL must be installed) and stopped at the
end. Each store runs the same flow (``tasks`` async no-op tasks gathered, every one a
tracked task run with its state history persisted through the batched writer), in a
fresh database each time; the best of ``repeat`` runs is kept, timed from the flow's
call to its return (its records committed: the flow's last write is waited for).
Tracing is off in both columns of a row pair and on in the other, as in
``benchmarks/overhead.py`` of flowcore itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

import flowcore
from flowcore_postgres import PostgresStore

REPO = Path(__file__).resolve().parents[3]


@flowcore.task
async def noop(i: int) -> int:
    return i


@flowcore.flow
async def fan_out(n: int) -> int:
    return len(await asyncio.gather(*(noop(i) for i in range(n))))


async def timed(store: object, tasks: int, tracing: bool) -> float:
    async with flowcore.Engine(store=store, tracing=tracing):  # type: ignore[arg-type]
        await fan_out(10)  # warm up: imports, prepared statements, the writer
        start = time.perf_counter()
        assert await fan_out(tasks) == tasks
        return time.perf_counter() - start


async def new_database(server: str) -> str:
    name = f"flowcore_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return urlunsplit(urlsplit(server)._replace(path="/" + name))


async def drop_database(server: str, url: str) -> None:
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{urlsplit(url).path[1:]}" WITH (FORCE)')
    finally:
        await conn.close()


async def measure(server: str, tasks: int, repeat: int) -> list[tuple[str, bool, float]]:
    rows: list[tuple[str, bool, float]] = []
    for tracing in (False, True):
        for name in ("memory", "SQLite", "PostgreSQL"):
            best = float("inf")
            for _ in range(repeat):
                if name == "memory":
                    best = min(best, await timed("memory", tasks, tracing))
                elif name == "SQLite":
                    with tempfile.TemporaryDirectory() as folder:
                        best = min(best, await timed(Path(folder) / "bench.db", tasks, tracing))
                else:
                    url = await new_database(server)
                    try:
                        best = min(best, await timed(PostgresStore(url), tasks, tracing))
                    finally:
                        await drop_database(server, url)
            rows.append((name, tracing, best))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    server = os.environ.get("FLOWCORE_TEST_POSTGRES")
    started = None
    if not server:
        out = subprocess.run(
            ["bash", str(REPO / ".ci" / "postgres.sh"), "start"],
            capture_output=True,
            text=True,
            check=True,
        )
        server = started = out.stdout.strip().splitlines()[-1]
    try:
        rows = asyncio.run(measure(server, args.tasks, args.repeat))
    finally:
        if started:
            subprocess.run(
                ["bash", str(REPO / ".ci" / "postgres.sh"), "stop", started], check=False
            )
    print(f"\n{args.tasks:,} tracked no-op tasks, gathered in one flow (best of {args.repeat})\n")
    print(f"{'store':<12} {'tracing':<8} {'tasks/s':>10} {'µs/task':>9} {'vs memory':>10}")
    memory = {tracing: seconds for name, tracing, seconds in rows if name == "memory"}
    for name, tracing, seconds in rows:
        print(
            f"{name:<12} {'on' if tracing else 'off':<8} {args.tasks / seconds:>10,.0f} "
            f"{seconds / args.tasks * 1e6:>9.1f} {seconds / memory[tracing]:>9.2f}x"
        )


if __name__ == "__main__":
    main()
