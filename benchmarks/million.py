"""A million-task flow: time, and memory that must not grow with finished tasks.

Run::

    python benchmarks/million.py                    # 1,000,000 tasks, concurrency 1,000
    python benchmarks/million.py --tasks 200000     # a quicker look

The flow maps a no-op task over ``range(N)`` under ``@flowcore.task(concurrency=C)``,
persisted to SQLite in a temporary folder (tracing on, the default). While it
runs, a sampler records the process's resident memory (RSS, from
``/proc/self/statm``) and how many task runs are finished and not yet written,
every second. Afterwards ``flowcore runs show`` is run on the recorded run, as a
user would, and timed (its first page, and the last page by ``--offset``).

The baseline is raw asyncio doing the same work the way one would by hand:
a task per item, created as a semaphore of C lets it, results kept in a list
(no persistence). The ratio is flowcore's wall time over the baseline's.

What to look for: RSS flat once the map is under way (the futures the map
returns are allocated up front, so the level is set at the start), the
unwritten backlog bounded (the writer keeps up; past 50,000 unwritten task runs
new ones wait for it), and ``runs show`` answering in about a second.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import flowcore

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 1e6


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # KiB on Linux


async def raw(n: int, concurrency: int) -> float:
    """The hand-written equivalent: a task per item, at most ``concurrency`` alive."""
    room = asyncio.Semaphore(concurrency)
    results: list[int | None] = [None] * n

    async def noop(i: int) -> None:
        try:
            results[i] = i
        finally:
            room.release()

    started = time.perf_counter()
    alive: set[asyncio.Task[None]] = set()
    for i in range(n):
        await room.acquire()
        task = asyncio.create_task(noop(i))
        alive.add(task)
        task.add_done_callback(alive.discard)
    while alive:
        await asyncio.wait(list(alive))
    assert results[-1] == n - 1
    return time.perf_counter() - started


async def tracked(
    n: int, concurrency: int, store: Path
) -> tuple[float, str, list[tuple[float, int, float, int]]]:
    @flowcore.task(concurrency=concurrency)
    async def noop(i: int) -> int:
        return i

    @flowcore.flow
    async def million(n: int) -> int:
        futures = noop.map(range(n))
        await flowcore.wait(futures)
        return len(futures)

    samples: list[tuple[float, int, float, int]] = []
    async with flowcore.Engine(store=store) as engine:

        async def sample() -> None:
            t0 = time.perf_counter()
            while True:
                await asyncio.sleep(1.0)
                samples.append(
                    (
                        time.perf_counter() - t0,
                        engine.statistics().tasks_completed,
                        rss_mb(),
                        engine.recorder.pending,
                    )
                )

        sampler = asyncio.create_task(sample())
        started = time.perf_counter()
        assert await million(n) == n
        await engine.recorder.flush()
        wall = time.perf_counter() - started
        sampler.cancel()
        run = engine.last_run
        assert run is not None
        return wall, run.id, samples


def time_cli(home: Path, *args: str) -> tuple[float, str]:
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "flowcore", "--home", str(home), *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return time.perf_counter() - started, out


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=_positive, default=1_000_000)
    parser.add_argument("--concurrency", type=_positive, default=1_000)
    args = parser.parse_args()
    n, c = args.tasks, args.concurrency
    console = Console()
    console.print(
        f"flowcore {flowcore.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {datetime.date.today()}: {n:,} no-op tasks, concurrency {c:,}"
    )
    raw_wall = asyncio.run(raw(n, c))
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        before = rss_mb()
        wall, run_id, samples = asyncio.run(tracked(n, c, home / "flowcore.db"))
        after = rss_mb()
        peak = peak_rss_mb()
        show_first, out = time_cli(home, "runs", "show", run_id[:8])
        show_last, _ = time_cli(home, "runs", "show", run_id[:8], "--offset", str(n - 10))
        size = (home / "flowcore.db").stat().st_size

    progress = Table("s", "tasks done", "RSS MB", "unwritten records", title="while running")
    step = max(1, len(samples) // 15)
    for at, done, mb, pending in samples[::step]:
        progress.add_row(f"{at:.0f}", f"{done:,}", f"{mb:.0f}", f"{pending:,}")
    console.print(progress)

    table = Table("measure", "value", title=f"{n:,} tasks")
    table.add_row(
        "raw asyncio wall (task per item, semaphore)",
        f"{raw_wall:.2f} s ({raw_wall / n * 1e6:.1f} µs/task)",
    )
    table.add_row(
        "flowcore wall (incl. last flush)", f"{wall:.2f} s ({wall / n * 1e6:.1f} µs/task)"
    )
    table.add_row("ratio flowcore / raw", f"{wall / raw_wall:.1f}x")
    mid = [mb for at, done, mb, _ in samples if n * 0.3 <= done <= n * 0.9]
    if mid:
        table.add_row(
            "RSS from 30% to 90% done",
            f"{min(mid):.0f}–{max(mid):.0f} MB (growth {max(mid) - min(mid):.0f} MB)",
        )
    table.add_row("peak RSS / RSS before / after", f"{peak:.0f} / {before:.0f} / {after:.0f} MB")
    table.add_row(
        "largest unwritten backlog", f"{max((p for *_, p in samples), default=0):,} records"
    )
    table.add_row("database size", f"{size / 1e6:.0f} MB ({size / n:.0f} B/task)")
    table.add_row("`flowcore runs show` first page", f"{show_first:.2f} s")
    table.add_row("`flowcore runs show --offset N-10`", f"{show_last:.2f} s")
    console.print(table)
    console.print(out.splitlines()[8] if len(out.splitlines()) > 8 else out)


if __name__ == "__main__":
    main()
