"""Pruning old runs from SQLite while a flow runs: how long the prune takes, and how much
it slows the flow down.

Run::

    python benchmarks/retention.py [--runs 100000] [--tasks 3] [--logs 3] [--flow-tasks 10000]

A database is filled once with ``--runs`` runs that ended 40 days ago, each with
``--tasks`` task runs and ``--logs`` log lines (written through the store, as the
engine writes them), and copied for each scenario:

- ``flowcore runs prune`` (another process): ``python -m flowcore runs prune
  --older-than 30 --yes --json`` on the copy, the flow running in this process;
- ``flowcore serve``'s retention (same process): ``prune_runs_and_results`` on the
  engine's own store, in the event loop the flow runs in.

In each, a flow of ``--flow-tasks`` gathered no-op tasks (each a tracked, persisted task
run) runs ``--alone`` times before the prune starts and as many after it ends ("flow
alone"), and back to back for as long as the prune lasts ("flow during prune": the runs
that ended within it). A flow's time runs from calling it until the writer has flushed
every one of its records. The slowdown is the median during over the median alone, both
measured in the same run of this script, on the same database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

import flowcore
from flowcore.records import FlowRunRecord, LogRecord, TaskRunRecord, WriteBatch
from flowcore.states import State
from flowcore.store.base import prune_runs_and_results

DAY = 86400.0
BATCH = 2000  # runs per write while filling the database


@flowcore.task
async def noop(i: int) -> int:
    return i


@flowcore.flow
async def busy(n: int) -> int:
    return len(await asyncio.gather(*(noop(i) for i in range(n))))


async def fill(path: Path, runs: int, tasks: int, logs: int) -> None:
    """``runs`` runs ended 40 days ago, with their task runs and log lines."""
    start = time.time() - 40 * DAY
    async with flowcore.SQLiteStore(path) as store:
        for first in range(0, runs, BATCH):
            flows, task_runs, lines = [], [], []
            for i in range(first, min(first + BATCH, runs)):
                run_id = f"{i:032x}"
                created = start + i * 0.01
                flows.append(
                    FlowRunRecord(
                        run_id, "etl", State.COMPLETED, created, started=created,
                        ended=created + 1.0, task_count=tasks,
                        history=[("Running", created), ("Completed", created + 1.0)],
                    )
                )  # fmt: skip
                task_runs += [
                    TaskRunRecord(
                        run_id, seq, "step", State.COMPLETED, created, started=created,
                        ended=created + 0.5, attempts=1, inputs=b"\x81\xa1i\x01",
                        history=[("Running", created), ("Completed", created + 0.5)],
                    )
                    for seq in range(tasks)
                ]  # fmt: skip
                lines += [
                    LogRecord(run_id, seq, "step", created, 20, "app", f"step {seq} of run {i}")
                    for seq in range(logs)
                ]
            await store.write(WriteBatch(flows, task_runs, logs=lines))


async def timed_flow(engine: flowcore.Engine, n: int) -> tuple[float, float, float]:
    """(start, end, seconds) of one run of ``busy(n)``, records flushed."""
    start = time.perf_counter()
    await busy(n)
    await engine.recorder.flush()
    end = time.perf_counter()
    return start, end, end - start


async def scenario(
    home: Path,
    flow_tasks: int,
    alone_runs: int,
    start_prune: Callable[[flowcore.Engine], Awaitable[dict[str, int]]],
) -> dict[str, object]:
    async with flowcore.Engine(home / "flowcore.db", tracing=False) as engine:
        await timed_flow(engine, flow_tasks)  # warm-up
        alone = [(await timed_flow(engine, flow_tasks))[2] for _ in range(alone_runs)]
        prune = asyncio.ensure_future(start_prune(engine))
        began = time.perf_counter()
        during: list[float] = []
        while not prune.done():
            _, _, seconds = await timed_flow(engine, flow_tasks)
            if not prune.done():  # ended while the prune went on
                during.append(seconds)
        counts = await prune
        took = time.perf_counter() - began
        # Alone again, after: the machine's own drift over the run shows on both sides.
        alone += [(await timed_flow(engine, flow_tasks))[2] for _ in range(alone_runs)]
    return {"alone": alone, "during": during, "prune": took, "counts": counts}


def in_process(before: float) -> Callable[[flowcore.Engine], Awaitable[dict[str, int]]]:
    async def prune(engine: flowcore.Engine) -> dict[str, int]:
        return (await prune_runs_and_results(engine.store, before)).to_dict()

    return prune


def other_process(home: Path) -> Callable[[flowcore.Engine], Awaitable[dict[str, int]]]:
    async def prune(engine: flowcore.Engine) -> dict[str, int]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "flowcore", "runs", "prune", "--older-than", "30", "--yes",
            "--json",
            env={**os.environ, "FLOWCORE_HOME": str(home)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"flowcore runs prune exited {proc.returncode}: {err.decode()}")
        found: dict[str, int] = json.loads(out)
        return {k: found[k] for k in ("runs", "task_runs", "logs", "spans", "blobs")}

    return prune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000, help="old runs to prune")
    parser.add_argument("--tasks", type=int, default=3, help="task runs per old run")
    parser.add_argument("--logs", type=int, default=3, help="log lines per old run")
    parser.add_argument("--flow-tasks", type=int, default=10_000, help="tasks of the flow")
    parser.add_argument(
        "--alone", type=int, default=5, help="flow runs before the prune, and after it"
    )
    args = parser.parse_args()
    console = Console(width=max(Console().width, 120))
    with tempfile.TemporaryDirectory() as folder:
        template = Path(folder) / "template.db"
        began = time.perf_counter()
        asyncio.run(fill(template, args.runs, args.tasks, args.logs))
        size = template.stat().st_size
        console.print(
            f"filled {args.runs:,} old runs ({args.runs * args.tasks:,} task runs, "
            f"{args.runs * args.logs:,} log lines, {size / 1e6:.0f} MB) in "
            f"{time.perf_counter() - began:.1f} s"
        )
        rows = []
        for name in ("flowcore runs prune (another process)", "serve's retention (same process)"):
            home = Path(folder) / name.split()[0].replace("'", "")
            home.mkdir()
            shutil.copy(template, home / "flowcore.db")
            pruner = (
                other_process(home) if "another" in name else in_process(time.time() - 30 * DAY)
            )
            rows.append((name, asyncio.run(scenario(home, args.flow_tasks, args.alone, pruner))))
    table = Table(
        title=(
            f"pruning {args.runs:,} old runs from SQLite while a flow of {args.flow_tasks:,} "
            f"tasks runs (Python {platform.python_version()}, {platform.machine()}, "
            f"{os.cpu_count()} CPUs, SQLite {sqlite3.sqlite_version})"
        )
    )
    columns = (
        "scenario", "prune s", "runs/s", "rows deleted", "flow alone s (median)",
        "flow during prune s (median, max, n)", "slowdown",
    )  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "scenario" else "right")
    for name, result in rows:
        counts = result["counts"]
        assert isinstance(counts, dict)
        alone, during = result["alone"], result["during"]
        assert isinstance(alone, list) and isinstance(during, list)
        prune = float(result["prune"])  # type: ignore[arg-type]
        rows_deleted = counts["runs"] + counts["task_runs"] + counts["logs"] + counts["spans"]
        alone_median = statistics.median(alone)
        during_text, slowdown = "-", "-"
        if during:
            during_median = statistics.median(during)
            during_text = f"{during_median:.3f}, {max(during):.3f}, {len(during)}"
            slowdown = f"{during_median / alone_median:.2f}x"
        table.add_row(
            name,
            f"{prune:.1f}",
            f"{counts['runs'] / prune:,.0f}",
            f"{rows_deleted:,}",
            f"{alone_median:.3f}",
            during_text,
            slowdown,
        )
    console.print(table)


if __name__ == "__main__":
    main()
