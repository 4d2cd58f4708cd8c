"""flowcore's per-task overhead against raw asyncio, on the same workloads and event loop.

Run::

    python benchmarks/overhead.py [--sizes 1000,10000,100000] [--repeat 3] [--quick] [--json PATH]

Workloads, each for every N in ``--sizes``:

- ``sequential``: ``for i in range(n): await noop(i)`` (no-op task awaited in turn);
- ``gathered``: ``await asyncio.gather(*(noop(i) for i in range(n)))``;
- ``sleep 10ms``: the same gather over tasks that each ``await asyncio.sleep(0.01)``.

The baseline ("raw") runs the same loop over a plain coroutine function; flowcore
runs it inside a ``@flowcore.flow`` over a ``@flowcore.task``, with run state
persisted to SQLite in a temporary directory. One ``flowcore.Engine`` (one
fresh database) is opened per workload and N, before any clock starts; the
flow is awaited inside it. A flowcore time runs from calling the flow until
``await engine.recorder.flush()`` returns after it, so it includes writing
every task run to the database. Both sides run on the same event loop (uvloop
when it is importable, else the default asyncio loop). Each time is the best
of ``--repeat`` runs, after a small warm-up run.

Memory is measured in a separate pass, never while timing: with ``tracemalloc``
tracing, the peak of traced memory during one run minus the memory before it,
divided by N, is the peak growth per task; after the run and ``gc.collect()``,
what is still allocated compared to before is the residual. The pass runs
``MEMORY_RUNS`` times; the table shows the largest peak and the smallest
residual (a residual that is not there every time is a container that grew its
capacity, e.g. asyncio's WeakSet of all tasks, not memory kept per run; the
JSON has every run). Raw asyncio's own per-task memory (its Task objects,
coroutine frames, timer handles) is counted on both sides, so compare the
flowcore column to the "raw peak B/task" column. A run counts as having
returned its memory when the residual is at most ``RESIDUAL_TOLERANCE`` (a
constant, not per task: caches that warm once).

Tracing: the flowcore columns have tracing on (spans made and persisted, the
default); "tracing off" reruns the same workload with ``Engine(tracing=False)``,
and "dead collector" with ``OTEL_EXPORTER_OTLP_ENDPOINT`` at a loopback port nobody
listens on (its time divided by the tracing-on time, no exporter).

Span export: one-shot runs (open an engine, run the gathered flow, close it) with no
collector, with a live loopback collector (spans received / made: every span once),
and with the collector down; each divided by the no-collector time.

Targets (reported by the reader, not asserted here):

- gathered no-op tasks: at most 40 µs per tracked, persisted task;
- peak memory growth at most 1 KB per task above raw asyncio's at 100,000 tasks (issue 17);
- all memory returned when the flow ends;
- tracing adds at most 20 µs per task on gathered no-op tasks;
- with a dead collector, at most 1.1x the time of the run with no exporter (one-shot
  runs included: closing never waits for a collector that failed);
- a live collector receives every span, once.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import os
import platform
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import flowcore

DEFAULT_SIZES = (1_000, 10_000, 100_000)
QUICK_SIZES = (1_000, 10_000)
SLEEP = 0.01
WARMUP_TASKS = 100
#: A residual at most this big counts as "memory returned" (bytes, independent of N).
RESIDUAL_TOLERANCE = 64 * 1024
#: Traced runs per memory measurement: a residual that is there after every run is
#: kept memory; one that shows after a single run is a container that grew its
#: capacity that time (asyncio's all-tasks WeakSet table does not shrink).
MEMORY_RUNS = 2


# -- the workloads ----------------------------------------------------------------------------


async def raw_noop(i: int) -> int:
    return i


async def raw_sleeper(i: int) -> int:
    await asyncio.sleep(SLEEP)
    return i


@flowcore.task
async def noop(i: int) -> int:
    return i


@flowcore.task
async def sleeper(i: int) -> int:
    await asyncio.sleep(SLEEP)
    return i


async def raw_sequential(n: int) -> None:
    for i in range(n):
        await raw_noop(i)


async def raw_gathered(n: int) -> None:
    await asyncio.gather(*(raw_noop(i) for i in range(n)))


async def raw_sleeping(n: int) -> None:
    await asyncio.gather(*(raw_sleeper(i) for i in range(n)))


@flowcore.flow
async def flow_sequential(n: int) -> None:
    for i in range(n):
        await noop(i)


@flowcore.flow
async def flow_gathered(n: int) -> None:
    await asyncio.gather(*(noop(i) for i in range(n)))


@flowcore.flow
async def flow_sleeping(n: int) -> None:
    await asyncio.gather(*(sleeper(i) for i in range(n)))


Body = Callable[[int], Coroutine[Any, Any, None]]

#: name -> (raw baseline, flowcore flow)
WORKLOADS: dict[str, tuple[Body, Body]] = {
    "sequential no-op": (raw_sequential, flow_sequential),
    "gathered no-op": (raw_gathered, flow_gathered),
    "gathered sleep 10ms": (raw_sleeping, flow_sleeping),
}


# -- measuring --------------------------------------------------------------------------------


@dataclass
class Memory:
    peak_per_task: float  # bytes: the largest peak growth of the traced runs, / N
    residual: int  # bytes still allocated after a run and gc.collect(): the smallest
    runs: list[tuple[int, int]]  # (peak growth, residual) of each traced run, bytes

    @property
    def returned(self) -> bool:
        return self.residual <= RESIDUAL_TOLERANCE


@dataclass
class Result:
    workload: str
    n: int
    raw_s: float
    flowcore_s: float
    raw_mem: Memory
    flowcore_mem: Memory
    rows_written: int  # by the engine since it opened (warm-up and every run included)
    untraced_s: float = 0.0  # flowcore with Engine(tracing=False)
    dead_collector_s: float = 0.0  # flowcore exporting spans to a collector that is down

    @property
    def raw_us(self) -> float:
        return self.raw_s / self.n * 1e6

    @property
    def flowcore_us(self) -> float:
        return self.flowcore_s / self.n * 1e6

    @property
    def ratio(self) -> float:
        return self.flowcore_s / self.raw_s if self.raw_s > 0 else float("inf")

    @property
    def tracing_us(self) -> float:
        """What tracing (spans made and persisted) adds per task."""
        return (self.flowcore_s - self.untraced_s) / self.n * 1e6

    @property
    def dead_ratio(self) -> float:
        return self.dead_collector_s / self.flowcore_s if self.flowcore_s > 0 else float("inf")

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["raw_mem"]["returned"] = self.raw_mem.returned
        out["flowcore_mem"]["returned"] = self.flowcore_mem.returned
        out.update(raw_us_per_task=self.raw_us, flowcore_us_per_task=self.flowcore_us)
        out["ratio"] = self.ratio
        return out


async def best_time(run: Callable[[], Awaitable[None]], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        await _settle()
        gc.collect()
        t0 = time.perf_counter()
        await run()
        best = min(best, time.perf_counter() - t0)
    return best


async def _settle() -> None:
    """Let the loop finish the step we are in: the handle that resumed us after a gather
    holds the gathering future, and through it every child task, until the loop moves on.

    Before a timed run too: otherwise the previous run's N tasks are still alive while
    the next one creates its own, and every garbage collection in that window walks
    them (both sides pay it, but only from the second repeat on).
    """
    for _ in range(3):
        await asyncio.sleep(0)


async def traced(run: Callable[[], Awaitable[None]], n: int) -> Memory:
    runs = []
    for _ in range(MEMORY_RUNS):
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            await run()
            peak = tracemalloc.get_traced_memory()[1]
            await _settle()  # without it, raw gather "keeps" ~600 B/task
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        runs.append((peak - before, after - before))
    return Memory(
        peak_per_task=max(p for p, _ in runs) / n, residual=min(r for _, r in runs), runs=runs
    )


async def measure(
    name: str, n: int, repeat: int, folder: Path, progress: Callable[[str], None]
) -> Result:
    raw_body, flow_body = WORKLOADS[name]

    async def raw() -> None:
        await raw_body(n)

    progress(f"{name}, N={n:,}: raw asyncio")
    await raw_body(min(n, WARMUP_TASKS))
    raw_s = await best_time(raw, repeat)
    raw_mem = await traced(raw, n)

    progress(f"{name}, N={n:,}: flowcore")
    db = folder / f"{name.replace(' ', '-')}-{n}.db"
    async with flowcore.Engine(store=db) as engine:
        tracked = _tracked(engine, flow_body, n)
        await flow_body(min(n, WARMUP_TASKS))
        await engine.recorder.flush()
        flowcore_s = await best_time(tracked, repeat)
        flowcore_mem = await traced(tracked, n)
        rows_written = engine.recorder.rows_written

    progress(f"{name}, N={n:,}: flowcore, tracing off")
    async with flowcore.Engine(store=folder / f"untraced-{db.name}", tracing=False) as engine:
        await flow_body(min(n, WARMUP_TASKS))
        untraced_s = await best_time(_tracked(engine, flow_body, n), repeat)

    progress(f"{name}, N={n:,}: flowcore, exporting to a collector that is down")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}"
    saved = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = down
    try:
        async with flowcore.Engine(store=folder / f"dead-{db.name}") as engine:
            await flow_body(min(n, WARMUP_TASKS))
            dead_s = await best_time(_tracked(engine, flow_body, n), repeat)
    finally:
        if saved is None:
            del os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"]
        else:
            os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = saved
    return Result(
        name, n, raw_s, flowcore_s, raw_mem, flowcore_mem, rows_written, untraced_s, dead_s
    )


def _tracked(engine: flowcore.Engine, flow_body: Body, n: int) -> Callable[[], Awaitable[None]]:
    async def tracked() -> None:
        await flow_body(n)  # a top-level flow flushes its records at its end...
        await engine.recorder.flush()  # ...and this returns once nothing is pending

    return tracked


async def measure_all(
    sizes: list[int], repeat: int, progress: Callable[[str], None]
) -> list[Result]:
    results = []
    with tempfile.TemporaryDirectory(prefix="flowcore-bench-") as folder:
        for name in WORKLOADS:
            for n in sizes:
                results.append(await measure(name, n, repeat, Path(folder), progress))
    return results


# -- export to a collector -------------------------------------------------------------------


@dataclass
class ExportResult:
    """One-shot runs (open an engine, run the flow, close it), best of ``repeat``."""

    n: int
    plain_s: float  # no collector configured
    live_s: float  # OTEL_EXPORTER_OTLP_ENDPOINT at a loopback collector answering 200
    down_s: float  # ... at a loopback port nobody listens on
    made: int  # spans made by the live runs
    received: int  # spans the live collector received (each once)
    unique: int


class _Collector:
    """A loopback OTLP/HTTP receiver that keeps the bodies (decoded after the timing)."""

    def __init__(self) -> None:
        import http.server
        import threading

        bodies = self.bodies = []  # type: list[bytes]

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                bodies.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def span_ids(self) -> list[bytes]:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        ids = []
        for body in self.bodies:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            ids += [
                s.span_id
                for rs in request.resource_spans
                for ss in rs.scope_spans
                for s in ss.spans
            ]
        return ids

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def measure_export(n: int, repeat: int, folder: Path) -> ExportResult:
    """Spans made vs received, and the wall time of a one-shot run, with no collector,
    a live one and one that is down (the standard variable, as a new user sets it)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("OTEL_")}
    for key in saved:
        del os.environ[key]
    collector = _Collector()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}"

    async def one_shot(endpoint: str | None, db: Path) -> None:
        if endpoint is None:
            os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        else:
            os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
        async with flowcore.Engine(store=db):
            await flow_gathered(n)

    try:
        times: dict[str, list[float]] = {"plain": [], "live": [], "down": []}
        for i in range(repeat):
            for kind, endpoint in (("plain", None), ("live", collector.base), ("down", down)):
                db = folder / f"export-{kind}-{n}-{i}.db"
                t0 = time.perf_counter()
                await one_shot(endpoint, db)
                times[kind].append(time.perf_counter() - t0)
        ids = collector.span_ids()
    finally:
        collector.close()
        os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        os.environ.update(saved)
    return ExportResult(
        n,
        min(times["plain"]),
        min(times["live"]),
        min(times["down"]),
        made=repeat * (n + 1),
        received=len(ids),
        unique=len(set(ids)),
    )


def make_export_table(results: list[ExportResult], repeat: int) -> Table:
    table = Table(
        title=f"span export, one-shot runs (open, gathered no-op flow, close), best of {repeat}"
    )
    table.add_column("N", justify="right")
    table.add_column("no collector", justify="right")
    table.add_column("live collector", justify="right")
    table.add_column("÷ no collector", justify="right")
    table.add_column("spans received / made", justify="right")
    table.add_column("collector down", justify="right")
    table.add_column("÷ no collector", justify="right")
    for r in results:
        table.add_row(
            f"{r.n:,}",
            fmt_time(r.plain_s),
            fmt_time(r.live_s),
            f"{r.live_s / r.plain_s:.2f}x",
            f"{r.unique:,} / {r.made:,}"
            + ("" if r.received == r.unique else f" ({r.received - r.unique:,} twice)"),
            fmt_time(r.down_s),
            f"{r.down_s / r.plain_s:.2f}x",
        )
    return table


# -- reporting --------------------------------------------------------------------------------


def loop_factory() -> tuple[Callable[[], asyncio.AbstractEventLoop], str]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop, "asyncio default loop (uvloop not importable)"
    return uvloop.new_event_loop, f"asyncio with uvloop {uvloop.__version__}"


def git_commit() -> str | None:
    """The commit of the checkout this script is in, if it is one (best effort)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + (" (modified)" if dirty.stdout.strip() else "")


def environment(loop_name: str) -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "flowcore": flowcore.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "sqlite": sqlite3.sqlite_version,
        "event_loop": loop_name,
        "commit": git_commit(),
    }


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_returned(mem: Memory) -> str:
    return f"{'yes' if mem.returned else 'no'} ({mem.residual / 1024:+.1f} KB)"


def make_table(results: list[Result], repeat: int) -> Table:
    table = Table(title=f"flowcore vs raw asyncio (best of {repeat}; memory: separate pass)")
    table.add_column("workload", no_wrap=True)
    table.add_column("N", justify="right")
    table.add_column("raw wall", justify="right")
    table.add_column("flowcore wall", justify="right")
    table.add_column("raw µs/task", justify="right")
    table.add_column("flowcore µs/task", justify="right")
    table.add_column("ratio fc/raw", justify="right")
    table.add_column("raw peak B/task", justify="right")
    table.add_column("flowcore peak B/task", justify="right")
    table.add_column("memory returned (residual)", justify="right")
    table.add_column("µs/task tracing off", justify="right")
    table.add_column("tracing adds µs/task", justify="right")
    table.add_column("dead collector ÷ no exporter", justify="right")
    for r in results:
        table.add_row(
            r.workload,
            f"{r.n:,}",
            fmt_time(r.raw_s),
            fmt_time(r.flowcore_s),
            f"{r.raw_us:.2f}",
            f"{r.flowcore_us:.2f}",
            f"{r.ratio:,.1f}×",
            f"{r.raw_mem.peak_per_task:,.0f}",
            f"{r.flowcore_mem.peak_per_task:,.0f}",
            fmt_returned(r.flowcore_mem),
            f"{r.untraced_s / r.n * 1e6:.2f}",
            f"{r.tracing_us:+.2f}",
            f"{r.dead_ratio:.2f}×",
        )
    return table


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        message = f"sizes are integers separated by commas: {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"sizes must be integers >= 1: {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=None,
        help="comma-separated task counts (default: 1000,10000,100000)",
    )
    parser.add_argument(
        "--repeat", type=int, default=None, help="timed runs per measurement, best kept (default 3)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="sizes 1000,10000 and one timed run (unless --sizes/--repeat are given)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    sizes = args.sizes or list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    if repeat < 1:
        parser.error("--repeat must be >= 1")

    console = Console()
    if not console.is_terminal:  # piped or redirected: do not squeeze the table into 80 columns
        console = Console(width=160)
    factory, loop_name = loop_factory()
    env = environment(loop_name)
    console.print(
        f"[bold]flowcore overhead benchmark[/bold]  {env['date']}\n"
        f"Python {env['python']} ({env['implementation']}), flowcore {env['flowcore']}, "
        f"SQLite {env['sqlite']}, commit {env['commit'] or 'unknown'}\n"
        f"machine {env['machine']}, {env['cpus']} CPUs, {env['platform']}\n"
        f"event loop: {env['event_loop']} (same for raw and flowcore)\n"
        f"sizes {', '.join(f'{n:,}' for n in sizes)}; best of {repeat}"
    )

    with (
        console.status("measuring...") as status,
        asyncio.Runner(loop_factory=factory) as runner,
    ):
        results = runner.run(
            measure_all(sizes, repeat, lambda text: status.update(f"measuring {text}..."))
        )
        exports = []
        with tempfile.TemporaryDirectory(prefix="flowcore-bench-") as folder:
            for n in sizes:
                status.update(f"measuring span export, N={n:,}...")
                exports.append(runner.run(measure_export(n, repeat, Path(folder))))

    console.print(make_table(results, repeat))
    console.print(make_export_table(exports, repeat))
    console.print(
        "µs/task = wall / N. Flowcore wall includes persisting every task run to SQLite "
        "(until `engine.recorder.flush()` returns). Peak B/task = tracemalloc peak growth / N; "
        f"memory returned = residual after the flow and gc.collect() <= "
        f"{RESIDUAL_TOLERANCE // 1024} KB (smallest of {MEMORY_RUNS} traced runs).\n"
        "Targets: gathered no-op <= 40 µs/task; <= 1 KB/task peak above raw at 100,000 tasks; "
        "all memory returned."
    )
    if args.json:
        payload = {
            "environment": env,
            "sizes": sizes,
            "repeat": repeat,
            "residual_tolerance_bytes": RESIDUAL_TOLERANCE,
            "results": [r.as_json() for r in results],
            "export": [asdict(r) for r in exports],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
