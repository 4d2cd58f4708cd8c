"""The cost of reusing work: cache hits and resumed runs, against plain tracked tasks.

Run::

    python benchmarks/cache_resume.py [--sizes 1000,10000] [--repeat 3] [--store URL]

Measured in one process, each on a fresh SQLite database (or, with ``--store
postgresql://...``, a fresh schema of that PostgreSQL database), best of ``--repeat``:

- ``plain``: N tracked no-op tasks (no cache), the baseline;
- ``cache miss``: N calls of a cached no-op task with distinct inputs, nothing
  stored yet (each computes and stores its result);
- ``cache hit``: the same N calls again, every one served from the cache;
- ``resume``: a 10,000-task run of which 9,000 completed (tasks 9,000 and up
  failed the first time) is resumed; the 9,000 completed calls are replayed
  from their stored results and the 1,000 others run. The replay cost per task
  is ``(resume wall - 1,000 plain tasks) / 9,000``.

Each workload runs sequentially (``await t(i)`` in a loop: the latency of one
call) and gathered (``asyncio.gather``: throughput).

Targets: a cache hit costs no more than a plain tracked no-op task (issue 17);
replaying a completed task costs no more than 2x a tracked no-op task. (Prefect 3
measured a cache hit at about 16 ms on this machine.)

A SQLite store answers a lookup at once (a few microseconds on the loop's own
connection), so a hit never waits; a PostgreSQL store's lookups are round trips,
and the lookups of the calls started together are read in one query when the
store has ``get_cache_many`` (see ``flowcore.engine.cached``).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.table import Table

import flowcore

FAIL_FROM: dict[str, int] = {"value": 10**9}  # tasks with i >= this fail (first run of resume)


@flowcore.task
async def plain(i: int) -> int:
    return i


@flowcore.task(cache=True)
async def cached(i: int) -> int:
    return i


@flowcore.task
async def step(i: int) -> int:
    if i >= FAIL_FROM["value"]:
        raise RuntimeError("not yet")
    return i


def flow_of(task: flowcore.Task[[int], int], gathered: bool) -> flowcore.Flow[[int], int]:
    async def body(n: int) -> int:
        if gathered:
            return sum(await asyncio.gather(*(task(i) for i in range(n))))
        total = 0
        for i in range(n):
            total += await task(i)
        return total

    body.__name__ = f"{task.name}_{'gathered' if gathered else 'sequential'}"
    return flowcore.flow(body)


async def timed(fn: Callable[[], Awaitable[object]], engine: flowcore.Engine) -> float:
    start = time.perf_counter()
    try:
        await fn()
    except Exception:
        pass
    await engine.recorder.flush()
    return time.perf_counter() - start


@contextmanager
def fresh_store(url: str | None) -> Iterator[str | Path]:
    """A store of its own for one repeat: a new SQLite file, or a new schema at ``url``."""
    if url is None:
        with tempfile.TemporaryDirectory() as folder:
            yield Path(folder) / "bench.db"
    else:
        yield f"{url}{'&' if '?' in url else '?'}schema=bench_{uuid.uuid4().hex[:12]}"


async def measure(n: int, gathered: bool, repeat: int, url: str | None) -> dict[str, float]:
    """Best wall times (seconds) of each workload for ``n`` tasks."""
    best: dict[str, float] = {}

    def keep(name: str, seconds: float) -> None:
        best[name] = min(best.get(name, float("inf")), seconds)

    plain_flow = flow_of(plain, gathered)
    cached_flow = flow_of(cached, gathered)
    step_flow = flow_of(step, gathered)
    for _ in range(repeat):
        with fresh_store(url) as store:
            async with flowcore.Engine(store) as engine:
                keep("plain", await timed(lambda: plain_flow(n), engine))
                keep("cache miss", await timed(lambda: cached_flow(n), engine))
                keep("cache hit", await timed(lambda: cached_flow(n), engine))
                keep("plain 10%", await timed(lambda: plain_flow(n // 10), engine))
                FAIL_FROM["value"] = n - n // 10
                await timed(lambda: step_flow(n), engine)
                (failed,) = await engine.store.list_runs(name=step_flow.name, limit=1)
                FAIL_FROM["value"] = 10**9
                resume = functools.partial(flowcore.resume_async, failed.id, flow=step_flow)
                keep("resume", await timed(resume, engine))
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000", help="comma-separated N values")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--store", default=None, help="a postgresql:// URL (default: SQLite in a temporary folder)"
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    console = Console(width=max(Console().width, 110))  # the table needs ~105 columns
    title = f"reusing work: cache hits and resume (µs per task, best of {args.repeat})"
    table = Table(title=title)
    for col in ("mode", "N", "plain", "cache miss", "cache hit", "miss/plain", "hit/plain",
                "replayed", "replayed/plain"):  # fmt: skip
        table.add_column(col, justify="right")
    for n in sizes:
        for gathered in (False, True):
            r = asyncio.run(measure(n, gathered, args.repeat, args.store))
            us = {k: v / n * 1e6 for k, v in r.items()}
            replayed = (r["resume"] - r["plain 10%"]) / (n - n // 10) * 1e6
            table.add_row(
                "gathered" if gathered else "sequential",
                f"{n:,}",
                f"{us['plain']:.1f}",
                f"{us['cache miss']:.1f}",
                f"{us['cache hit']:.1f}",
                f"{us['cache miss'] / us['plain']:.2f}",
                f"{us['cache hit'] / us['plain']:.2f}",
                f"{replayed:.1f}",
                f"{replayed / us['plain']:.2f}",
            )
    store = "SQLite" if args.store is None else "PostgreSQL"
    console.print(
        f"flowcore {flowcore.__version__}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs,"
        f" {store} store"
    )
    console.print(table)
    console.print(
        "Targets: cache hit <= a plain tracked no-op task; "
        "replayed task <= 2x a plain tracked task."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
