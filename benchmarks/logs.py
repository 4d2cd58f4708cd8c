"""What one captured log line costs, against the same logging call outside any run.

Run::

    python benchmarks/logs.py [--lines 100000] [--repeat 5]

Each row times ``--lines`` calls in a loop and shows the best of ``--repeat`` loops,
in µs per call:

- ``logging, no engine``: ``log.info("page %d", i)`` with no engine open: the
  baseline, an uncaptured logging call (the logger lets INFO through; its one
  handler is a ``NullHandler``, so a handler's own cost stays out of every row);
- ``logging, engine open, outside runs``: the same call while an engine is open
  (the log record factory wrapped): what logging outside runs pays;
- ``logging in a task (captured)``: the same call inside a task run: the line is
  formatted and queued for the run's log;
- ``get_run_logger() in a task``: the run logger's INFO line, kept in the log (the
  ``flowcore.run`` logger itself is at WARNING, so no handler runs);
- ``print in a log_prints task``: ``print("page", i)`` sent to the run's log;
- ``disabled level in a task``: ``log.debug(...)`` with the logger at INFO (no record).

"to record" is a captured row minus the baseline: what capture adds to the call.
The loops in runs are timed with the writer idle (a long flush interval), so a
row is what the call costs the task; the last row is the writer's share, on its
own: one batch of ``--lines`` lines written to SQLite (``store.write``), per line,
which the writer does every 20 ms, on aiosqlite's thread for big batches. The
targets: a few µs to record a line, and nothing measurable outside runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

import flowcore
from flowcore.engine.core import get_run_logger
from flowcore.options import Logs
from flowcore.records import LogRecord, WriteBatch

log = logging.getLogger("bench.logs")
#: No limit: every line of every loop is kept.
UNBOUNDED = Logs(max_lines=10**12, max_bytes=10**15)


def timed(fn: Callable[[int], None], n: int, repeat: int) -> float:
    """Best µs per call of ``fn(n)`` (a loop of ``n`` calls) over ``repeat`` loops.

    In a run, the lines each loop queued are dropped before the next loop, so memory
    stays that of one loop (the writer is idle: its flush interval is longer than this).
    """
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn(n)
        best = min(best, time.perf_counter() - start)
        try:
            flowcore.current_run().engine.recorder.logs.clear()
        except flowcore.ConfigurationError:  # not in a run
            pass
    return best / n * 1e6


def logging_loop(n: int) -> None:
    for i in range(n):
        log.info("page %d", i)


def run_logger_loop(n: int) -> None:
    logger = get_run_logger()
    for i in range(n):
        logger.info("page %d", i)


def print_loop(n: int) -> None:
    for i in range(n):
        print("page", i)


def disabled_loop(n: int) -> None:
    for i in range(n):
        log.debug("page %d", i)


async def in_a_task(
    loop: Callable[[int], None], prints: bool, n: int, repeat: int, db: Path
) -> float:
    """µs per call of ``loop`` timed inside a (sync) task run, the writer idle (what a
    line costs the task; the writer's share is timed by :func:`write_cost`)."""

    @flowcore.task(log_prints=prints or None)
    def work() -> float:  # a sync task: the loop runs in the task run's context
        return timed(loop, n, repeat)

    @flowcore.flow
    async def bench() -> float:
        return await work()

    async with flowcore.Engine(db, logs=UNBOUNDED, flush_interval=60):
        return await bench()


async def write_cost(n: int, db: Path) -> float:
    """µs per line of one batch of ``n`` lines written to SQLite (as the writer does)."""
    lines = [
        LogRecord("0123456789abcdef" * 2, i % 100, "fetch", time.time(), 20, "bench", f"page {i}")
        for i in range(n)
    ]
    async with flowcore.SQLiteStore(db) as store:
        start = time.perf_counter()
        await store.write(WriteBatch(logs=lines))
        return (time.perf_counter() - start) / n * 1e6


async def measure(n: int, repeat: int, folder: Path) -> list[tuple[str, float, float | None]]:
    rows: list[tuple[str, float, float | None]] = []
    baseline = timed(logging_loop, n, repeat)
    rows.append(("logging, no engine", baseline, None))
    async with flowcore.Engine(folder / "outside.db", logs=UNBOUNDED):
        rows.append(("logging, engine open, outside runs", timed(logging_loop, n, repeat), None))

    cases: list[tuple[str, Callable[[int], None], bool]] = [
        ("logging in a task (captured)", logging_loop, False),
        ("get_run_logger() in a task", run_logger_loop, False),
        ("print in a log_prints task", print_loop, True),
        ("disabled level in a task", disabled_loop, False),
    ]
    for name, loop, prints in cases:
        rows.append((name, await in_a_task(loop, prints, n, repeat, folder / f"{name}.db"), None))
    rows.append(("the writer: lines to SQLite", 0.0, await write_cost(n, folder / "w.db")))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=100_000, help="calls per loop")
    parser.add_argument("--repeat", type=int, default=5, help="loops; the best is shown")
    args = parser.parse_args()
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(logging.NullHandler())
    with tempfile.TemporaryDirectory() as folder:
        rows = asyncio.run(measure(args.lines, args.repeat, Path(folder)))
    baseline = rows[0][1]
    table = Table(
        title=(
            f"one log line, {args.lines:,} calls, best of {args.repeat} "
            f"(Python {platform.python_version()}, {platform.machine()}, "
            f"SQLite {sqlite3.sqlite_version})"
        )
    )
    for column in ("call", "µs/call", "to record (µs)", "write (µs/line)"):
        table.add_column(column, justify="left" if column == "call" else "right", no_wrap=True)
    for name, cost, write in rows:
        # What capture adds to the same logging call (print has no such baseline).
        extra = cost - baseline if "in a task" in name and "level" not in name else None
        table.add_row(
            name,
            f"{cost:.2f}" if cost else "-",
            "-" if extra is None else f"{extra:+.2f}",
            "-" if write is None else f"{write:.2f}",
        )
    Console(width=max(Console().width, 100)).print(table)


if __name__ == "__main__":
    main()
