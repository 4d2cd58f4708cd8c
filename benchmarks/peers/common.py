"""The measuring harness every worker shares (standard library only: it runs in each venv).

A worker (``worker_<engine>.py``) defines the five workloads for one engine as a
subclass of :class:`Bench` and calls :func:`main`. One worker process measures one
workload at one N::

    python worker_flowcore.py --workload "gathered no-op" --n 1000 --repeat 3

and prints one line ``PEERBENCH_RESULT {json}`` on stdout (libraries may print
other lines; the runner reads only that one). The process runs:

1. ``setup()`` (open the engine, start its server: untimed);
2. a warm-up: the same workload at ``--warmup`` tasks (untimed), then ``settle()``;
3. ``prepare()`` (the cache fill for the cache-hit workload: untimed), ``settle()``;
4. ``--repeat`` timed runs, each after ``gc.collect()``, each followed by ``settle()``
   (untimed: waiting until the engine is idle, so no run pays for the one before);
5. ``teardown()``.

After each run (outside its time) the retry workload checks that every call took
exactly ``FAILURES + 1`` attempts, and the cache-hit workload that no call ran its
body: an engine that does not do what the workload says reports an error, not a
fast number.

Memory: a thread samples the resident set size (RSS) of this process and all its
child processes (Prefect's local server is one) every ``SAMPLE_INTERVAL`` seconds
from just before a timed run until ``settle()`` returns after it; the peak minus
the RSS just before the run is that run's peak RSS growth. The largest growth over
the timed runs is reported (the first run after warm-up usually; later runs reuse
memory the allocator kept). Without ``/proc`` (not Linux), the growth of
``ru_maxrss`` over the run is used instead, which only shows growth past the
process's earlier peak.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import resource
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

SEQUENTIAL = "sequential no-op"
GATHERED = "gathered no-op"
SLEEPING = "gathered sleep 10ms"
RETRY = "gathered retry (fails 2x)"
CACHE_HIT = "gathered cache hit"
WORKLOADS = (SEQUENTIAL, GATHERED, SLEEPING, RETRY, CACHE_HIT)

SLEEP = 0.01  # seconds each task of the sleep workload sleeps
FAILURES = 2  # attempts of each retry-workload task that fail before one succeeds
SAMPLE_INTERVAL = 0.005  # seconds between RSS samples
RESULT_MARKER = "PEERBENCH_RESULT "

Body = Callable[[int], Awaitable[Any]]


class Attempts:
    """Counts the attempts of each call of the retry workload: the first ``FAILURES`` fail."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}

    def reset(self) -> None:
        self.counts.clear()

    def check(self, i: int) -> int:
        count = self.counts.get(i, 0) + 1
        self.counts[i] = count
        if count <= FAILURES:
            raise RuntimeError(f"transient failure {count} of call {i}")
        return i


class CacheRuns:
    """Counts the calls of the cache-hit workload's task that ran its body (a miss)."""

    def __init__(self) -> None:
        self.count = 0

    def computed(self, i: int) -> int:
        self.count += 1
        return i


ATTEMPTS = Attempts()
CACHE_RUNS = CacheRuns()


def reset_counters() -> None:
    ATTEMPTS.reset()
    CACHE_RUNS.count = 0


def check_run(workload: str, n: int) -> None:
    """Raise if a timed run did not do what its workload says."""
    if workload == RETRY:
        wrong = sum(1 for c in ATTEMPTS.counts.values() if c != FAILURES + 1)
        if len(ATTEMPTS.counts) != n or wrong:
            raise RuntimeError(
                f"retry workload: {len(ATTEMPTS.counts)} calls seen, {wrong} "
                f"without exactly {FAILURES + 1} attempts (expected {n} calls)"
            )
    if workload == CACHE_HIT and CACHE_RUNS.count:
        raise RuntimeError(f"cache-hit workload: {CACHE_RUNS.count} of {n} calls were computed")


class Bench:
    """One engine's workloads. Subclasses fill ``bodies`` and override what they need."""

    engine = "?"
    #: The event loop this engine always runs on ("asyncio" for the peers: their default).
    fixed_loop: str | None = None
    #: How the cache-hit workload is done on this engine, if it is not a result cache.
    cache_note = ""

    def __init__(self) -> None:
        self.bodies: dict[str, Body] = {}
        self.folder = Path(".")

    def version(self) -> str:
        return ""

    def loop_factory(self, loop: str) -> tuple[Callable[[], asyncio.AbstractEventLoop], str]:
        """The event loop to run on: ``loop`` is "auto" (uvloop if importable) or "asyncio"."""
        if (self.fixed_loop or loop) == "auto":
            try:
                import uvloop
            except ImportError:
                pass
            else:
                return uvloop.new_event_loop, f"uvloop {getattr(uvloop, '__version__', '?')}"
        return asyncio.new_event_loop, "asyncio"

    async def setup(self) -> None:
        """Open the engine (its store in ``self.folder``). Untimed."""

    async def teardown(self) -> None:
        """Close the engine."""

    async def prepare(self, workload: str, n: int) -> None:
        """Untimed work before the timed runs: the cache fill of the cache-hit workload."""

    async def settle(self) -> None:
        """Return once the engine has finished the work of the runs so far (untimed)."""

    async def run(self, workload: str, n: int) -> None:
        await self.bodies[workload](n)


class RssSampler:
    """Peak RSS of this process and its descendants, sampled in a thread."""

    def __init__(self) -> None:
        self.proc = Path("/proc/self/statm").exists()
        self.page = os.sysconf("SC_PAGE_SIZE") if self.proc else 1
        self.method = (
            f"sampled RSS every {SAMPLE_INTERVAL * 1000:g} ms, this process and its children"
            if self.proc
            else "ru_maxrss growth (this process only)"
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.start_rss = 0
        self.peak = 0
        self._maxrss_before = 0

    def _rss(self, pid: int) -> int:
        try:
            with open(f"/proc/{pid}/statm") as f:
                return int(f.read().split()[1]) * self.page
        except (OSError, ValueError, IndexError):
            return 0

    def _children(self, pid: int) -> list[int]:
        out: list[int] = []
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return out
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out.extend(int(c) for c in f.read().split())
            except (OSError, ValueError):
                pass
        return out

    def tree_rss(self) -> int:
        total = 0
        todo = [os.getpid()]
        seen: set[int] = set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            total += self._rss(pid)
            todo.extend(self._children(pid))
        return total

    @staticmethod
    def _maxrss() -> int:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kb if sys.platform == "darwin" else kb * 1024

    def start(self) -> None:
        if not self.proc:
            self._maxrss_before = self._maxrss()
            return
        self.start_rss = self.peak = self.tree_rss()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            self.peak = max(self.peak, self.tree_rss())

    def stop(self) -> int:
        """The peak growth since ``start()``, bytes."""
        if not self.proc:
            return max(0, self._maxrss() - self._maxrss_before)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self.tree_rss())
        return max(0, self.peak - self.start_rss)


async def measure(bench: Bench, args: argparse.Namespace, loop_name: str) -> dict[str, Any]:
    workload: str = args.workload
    n: int = args.n
    out: dict[str, Any] = {
        "engine": bench.engine,
        "version": bench.version(),
        "workload": workload,
        "n": n,
        "loop": loop_name,
        "cache_note": bench.cache_note if workload == CACHE_HIT else "",
    }
    phase = "setup"
    try:
        t0 = time.perf_counter()
        await bench.setup()
        out["setup_s"] = time.perf_counter() - t0
        phase = "warm-up"
        warm = min(n, args.warmup)
        if warm > 0:
            await bench.prepare(workload, warm)
            reset_counters()
            await bench.run(workload, warm)
            check_run(workload, warm)
            await bench.settle()
        phase = "prepare"
        await bench.prepare(workload, n)
        await bench.settle()
        phase = "timed runs"
        sampler = RssSampler()
        out["memory_method"] = sampler.method
        times: list[float] = []
        settles: list[float] = []
        growths: list[int] = []
        for _ in range(args.repeat):
            reset_counters()
            gc.collect()
            sampler.start()
            t0 = time.perf_counter()
            await bench.run(workload, n)
            t1 = time.perf_counter()
            check_run(workload, n)
            await bench.settle()
            t2 = time.perf_counter()
            growths.append(sampler.stop())
            times.append(t1 - t0)
            settles.append(t2 - t1)
        out.update(
            times_s=times,
            best_s=min(times),
            us_per_task=min(times) / n * 1e6,
            settle_s=settles,
            rss_growth_bytes=max(growths),
            rss_growths_bytes=growths,
        )
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        out["error"] = f"{phase}: {type(exc).__name__}: {exc}".strip()
        traceback.print_exc()
    finally:
        try:
            await bench.teardown()
        except Exception:
            traceback.print_exc()
    return out


def main(bench: Bench) -> int:
    parser = argparse.ArgumentParser(description=f"one {bench.engine} workload at one N")
    parser.add_argument("--workload", required=True, choices=WORKLOADS)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=100, help="tasks in the warm-up run")
    parser.add_argument("--loop", choices=("auto", "asyncio"), default="auto")
    args = parser.parse_args()
    factory, loop_name = bench.loop_factory(args.loop)
    with tempfile.TemporaryDirectory(prefix=f"peerbench-{bench.engine}-") as folder:
        bench.folder = Path(folder)
        with asyncio.Runner(loop_factory=factory) as runner:
            result = runner.run(measure(bench, args, loop_name))
    result["python"] = platform.python_version()
    sys.stdout.flush()
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return 0
