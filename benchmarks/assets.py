"""What assets cost: staleness queries, materialising, a backfill's memory, reaction time.

Run::

    python benchmarks/assets.py [--assets 10000] [--partitions 100000] [--repeat 5]

Every row is measured in this run, on a SQLite store in a temporary folder, against a
baseline measured in the same run:

- **staleness, N assets**: ``flowcore.assets.status_async`` over every asset of a
  store holding ``--assets`` materialised assets of which a tenth are stale (one
  read of the state rows, O(ranges) arithmetic each), with the graph (missing
  partitions and freshness need the code) and without; then what ``flowcore assets
  ls`` adds (``views.assets.asset_list``, the definitions too, and the command's
  text). Target: at most 50 ms for the query. Baseline: reading the state rows alone.
- **staleness, one asset of P partitions**: the status of one daily asset with
  ``--partitions`` partitions, every other hundred of them stale (a thousand ranges,
  the fragmented worst case of a range set). Target: at most 50 ms.
- **materialise 1,000 no-op assets**: ``materialize_async`` of 1,000 independent
  no-op assets, per asset, against a flow gathering 1,000 tracked no-op tasks, per
  task, in the same engine settings: CPU time of the process (the event loop and the
  writer's thread, which it waits for: nothing sleeps), the two timed in turn (see
  :func:`best_of_each`). Target: at most 2x. Then the same once the history holds
  ``--history`` earlier runs of them (365: a year of daily runs): writing a
  materialisation must not grow with the history.
- **backfill, peak memory**: ``tracemalloc``'s peak during a backfill of 1,000 and of
  10,000 daily partitions of a no-op asset: flat means the two peaks are close (a
  backfill keeps no node once done).
- **reaction time**: a real :class:`~flowcore.serve.Server` (its own loop,
  ``serve_forever``) on a SQLite store serves ``down`` with
  ``automation=on_upstream_change(debounce=0)``; a second engine on the same file (as
  another process would) materialises ``up`` to a new data version ``--reactions``
  times, each once the previous reaction's run has ended. Measured: from
  ``materialize_async`` of ``up`` returning (its commit done) to ``down``'s function
  starting in the server's run (so the run's start, its task run and loading ``up``'s
  value are in it); median and p95. Target (the issue's): within a second. Baseline:
  the server's poll of the store (:data:`flowcore.serve.server.POLL`), the most a
  change waits to be seen.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import sqlite3
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from _rows import Row, print_rows
from click.testing import CliRunner

import flowcore
from flowcore import ranges
from flowcore.assets import (
    AssetGraph,
    DailyPartitions,
    asset,
    materialize_async,
    on_upstream_change,
    status_async,
)
from flowcore.assets.description import describe
from flowcore.cli import cli
from flowcore.records import AssetDefRecord, MaterializationRecord, StaleMark, WriteBatch
from flowcore.serve import Server
from flowcore.serve.server import POLL
from flowcore.store import Store, resolve_store
from flowcore.views import assets as views


async def best(
    fn: Callable[[], Awaitable[Any]], repeat: int, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Best time of ``fn()`` over ``repeat`` calls, in ms, by ``clock`` (wall time)."""
    times = []
    for _ in range(repeat):
        gc.collect()
        started = clock()
        await fn()
        times.append((clock() - started) * 1000)
    return min(times)


async def best_of_each(
    first: Callable[[], Awaitable[Any]], second: Callable[[], Awaitable[Any]], repeat: int
) -> tuple[float, float]:
    """Best CPU times of ``first()`` and ``second()`` (the process's: the event loop's and
    the writer's thread), in ms, timed in turn, so that their ratio compares them under the
    same conditions: on a shared machine wall time also counts other processes' turns, and
    a slower spell during one series of timings would land on one side only."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for fn, kept in zip((first, second), times, strict=True):
            gc.collect()
            started = time.process_time()
            await fn()
            kept.append((time.process_time() - started) * 1000)
    return min(times[0]), min(times[1])


def no_op_assets(n: int, prefix: str = "a") -> list[Any]:
    """``n`` independent async no-op assets (each its own code version, as real ones have):
    async, like the tracked no-op tasks they are compared with (a sync function would be
    measured with a worker thread's hop on one side only)."""
    made = []
    for i in range(n):

        async def fn() -> int:
            return 1

        fn.__name__ = f"{prefix}{i}"
        made.append(asset(key=f"{prefix}{i}", code_version="1")(fn))
    return made


async def fill_store(store: Store, n: int) -> None:
    """``n`` materialised unpartitioned assets, a tenth of them stale (written as the
    materialiser writes them: definitions synced, then materialisation events)."""
    now = time.time()
    plain = describe(None, {}, None)  # the description an unpartitioned asset is stored with
    await store.sync_assets(
        [
            AssetDefRecord(key=f"a{i:05d}", code_version="1", synced=now, description=plain)
            for i in range(n)
        ],
        {},
    )
    events: list[Any] = [
        MaterializationRecord(
            key=f"a{i:05d}", at=now, run_id="bench", seq=i, code_version="1", data_version="d"
        )
        for i in range(n)
    ]
    events += [
        StaleMark(
            key=f"a{i:05d}", ranges=[(0, 1)], cause={"reason": "upstream-stale", "upstream": "u"}
        )
        for i in range(0, n, 10)
    ]
    await store.write(WriteBatch(assets=events))


async def staleness_rows(n: int, repeat: int, home: Path) -> list[Row]:
    """Staleness over ``n`` assets, in ``home/flowcore.db`` (which ``assets ls`` reads
    afterwards; created by the caller)."""
    store = resolve_store(home / "flowcore.db")
    await store.open()
    try:
        await fill_store(store, n)
        states = await best(lambda: store.asset_states(), repeat)
        bare = await best(lambda: status_async(store=store), repeat)
        stale = await best(lambda: status_async(store=store, stale_only=True), repeat)
        listed = await best(lambda: views.asset_list(store), repeat)
        found = await status_async(store=store, stale_only=True)
        assert len(found) == len(range(0, n, 10)), len(found)
    finally:
        await store.close()
    return [
        (f"state rows of {n:,} assets (baseline)", states, "ms", "one query"),
        (f"staleness of {n:,} assets", bare, "ms", f"{bare / states:.1f}x baseline; <= 50"),
        (f"  only the stale ({n // 10:,})", stale, "ms", f"{stale / states:.1f}x baseline"),
        ("  assets ls view (with definitions)", listed, "ms", f"{listed / states:.1f}x baseline"),
    ]


def cli_ls_ms(home: Path, repeat: int) -> float:
    """``flowcore assets ls`` in this process (store opened, read, text printed)."""
    previous = os.environ.get("FLOWCORE_HOME")
    os.environ["FLOWCORE_HOME"] = str(home)
    try:
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            result = CliRunner().invoke(cli, ["assets", "ls"], catch_exceptions=False)
            times.append((time.perf_counter() - started) * 1000)
            assert result.exit_code == 0, result.output
        return min(times)
    finally:
        if previous is None:
            os.environ.pop("FLOWCORE_HOME", None)
        else:
            os.environ["FLOWCORE_HOME"] = previous


async def partitions_rows(count: int, repeat: int, folder: Path) -> list[Row]:
    """One daily asset of ``count`` partitions, all materialised, one in a hundred stale
    in a thousand separate ranges."""
    days = DailyPartitions("1700-01-01")
    start = days.key_of(0)

    @asset(key="big", partitions=days)
    def big(partition_key: str) -> int:
        return 1

    graph = AssetGraph([big])
    store = resolve_store(folder / "partitions.db")
    await store.open()
    try:
        now = time.time()
        await store.sync_assets(
            [AssetDefRecord(key="big", code_version=big.code_version, partitions=repr(days))], {}
        )
        step = max(count // 1000, 2)
        events: list[Any] = []
        for i in range(count):
            events.append(
                MaterializationRecord(
                    key="big", at=now, run_id="bench", seq=i, code_version=big.code_version,
                    data_version="d", partition=days.key_of(i), index=i,
                )
            )  # fmt: skip
            if len(events) == 20_000:
                await store.write(WriteBatch(assets=events))
                events = []
        events.append(
            StaleMark(
                key="big",
                ranges=[(i, i + 1) for i in range(0, count, step)],
                cause={"reason": "upstream-changed", "upstream": "u"},
            )
        )
        await store.write(WriteBatch(assets=events))
        [state] = await store.asset_states(["big"])
        stale_ranges = len(ranges.decode(state.stale)) // 2
        bare = await best(lambda: status_async(["big"], store=store), repeat)
        coded = await best(lambda: status_async(store=store, graph=graph), repeat)
        one = await best(lambda: views.partition_state(store, "big", days.key_of(count // 2)), 3)
        [status] = await status_async(store=store, graph=graph)
        assert status.status == "stale", status
    finally:
        await store.close()
    label = f"one asset, {count:,} partitions from {start}"
    return [
        (label, bare, "ms", f"{stale_ranges:,} stale ranges; <= 50"),
        ("  with the graph (missing, freshness)", coded, "ms", "counts missing by now"),
        ("  one partition's status (why --partition)", one, "ms", "two queries"),
    ]


async def materialize_rows(n: int, repeat: int, folder: Path, history: int = 365) -> list[Row]:
    graph = AssetGraph(no_op_assets(n, prefix="m"))

    @flowcore.task
    async def noop() -> int:
        return 1

    @flowcore.flow
    async def tasks(count: int) -> int:
        return sum(await asyncio.gather(*(noop() for _ in range(count))))

    async with flowcore.Engine(folder / "materialize.db") as engine:

        async def run_tasks() -> None:
            await tasks(n)

        async def run_assets() -> None:
            result = await materialize_async(list(graph.order), graph=graph, only_stale=False)
            assert result.ok and result.counts["materialized"] == n, result.counts

        await run_tasks()  # warm up both
        await run_assets()
        task_ms, asset_ms = await best_of_each(run_tasks, run_assets, repeat)
        # A long history (a year of daily runs, and more): each asset's earlier
        # materialisations, written as the materialiser writes them.
        for _ in range(history):
            await engine.store.write(
                WriteBatch(
                    assets=[
                        MaterializationRecord(
                            key=key,
                            at=time.time(),
                            run_id="earlier",
                            seq=0,
                            code_version="1",
                            data_version="d",
                        )
                        for key in graph.order
                    ]
                )
            )
        long_ms = await best(run_assets, repeat, time.process_time)
    per_task = task_ms * 1000 / n
    per_asset = asset_ms * 1000 / n
    per_long = long_ms * 1000 / n
    return [
        (f"tracked no-op task, {n:,} in a flow (baseline)", per_task, "CPU µs each", ""),
        (
            f"materialise {n:,} no-op assets",
            per_asset,
            "CPU µs each",
            f"{per_asset / per_task:.2f}x a tracked task; target <= 2x",
        ),
        (
            f"  the same, {history:,} earlier runs in the history",
            per_long,
            "CPU µs each",
            f"{per_long / per_asset:.2f}x with a short history (flat: ~1x)",
        ),
    ]


async def backfill_rows(sizes: list[int], folder: Path) -> list[Row]:
    rows: list[Row] = []
    peaks = []
    for size in sizes:
        days = DailyPartitions("1900-01-01")

        @asset(key=f"daily{size}", partitions=days)
        def daily(partition_key: str) -> int:
            return 1

        first, last = days.key_of(0), days.key_of(size - 1)
        async with flowcore.Engine(folder / f"backfill{size}.db"):
            gc.collect()
            tracemalloc.start()
            started = time.perf_counter()
            result = await flowcore.assets.backfill_async(daily, first, last, concurrency=64)
            elapsed = time.perf_counter() - started
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        assert result.counts["materialized"] == size, result.counts
        peaks.append(peak)
        note = f"{elapsed:.1f} s under tracemalloc"
        if len(peaks) > 1:
            note += f"; {peak / peaks[0]:.2f}x the {sizes[0]:,}-partition peak"
        rows.append((f"backfill {size:,} partitions: peak memory", peak / 2**20, "MiB", note))
    return rows


async def measure(args: argparse.Namespace, folder: Path) -> list[Row]:
    rows = await staleness_rows(args.assets, args.repeat, folder / "ls-home")
    rows += await partitions_rows(args.partitions, args.repeat, folder)
    rows += await materialize_rows(args.materialize, args.repeat, folder, args.history)
    rows += await backfill_rows([args.backfill // 10, args.backfill], folder)
    rows += await reaction_rows(args.reactions, folder / "reactions.db")
    return rows


async def reaction_rows(count: int, path: Path) -> list[Row]:
    value = {"up": 0}
    started: dict[int, float] = {}
    ran = anyio.Event()

    @asset
    def up() -> int:
        return value["up"]

    @asset(automation=on_upstream_change(debounce=0))
    async def down(up: int) -> int:
        nonlocal ran
        started[up] = time.perf_counter()
        ran.set()
        return up

    graph = AssetGraph([up, down])
    delays = []
    async with (
        flowcore.Engine(path, tracing=False) as serving,
        flowcore.Engine(path, tracing=False) as writer,  # another process, as it were
        Server([], engine=serving, assets=graph) as server,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(server.serve_forever)
        for i in range(count + 1):  # the first is a warm-up
            value["up"] = i
            ran = anyio.Event()
            await materialize_async(["up"], graph=graph, engine=writer, only_stale=False)
            committed = time.perf_counter()
            with anyio.fail_after(30):  # a lost reaction fails the benchmark, never hangs it
                await ran.wait()
                await server.wait_idle()
            if i:
                delays.append((started[i] - committed) * 1000)
        server.stop()
        tg.cancel_scope.cancel()
    delays.sort()
    p95 = delays[min(len(delays) - 1, round(0.95 * (len(delays) - 1)))]
    return [
        ("server's store poll (baseline)", POLL * 1000, "ms", "the longest a change waits"),
        (
            f"reaction time, median of {count}",
            statistics.median(delays),
            "ms",
            "upstream committed -> downstream run started; target <= 1000 ms",
        ),
        (f"reaction time, p95 of {count}", p95, "ms", f"max {delays[-1]:.0f} ms"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assets", type=int, default=10_000, help="assets for staleness")
    parser.add_argument("--partitions", type=int, default=100_000, help="partitions of one")
    parser.add_argument("--materialize", type=int, default=1_000, help="no-op assets to run")
    parser.add_argument(
        "--history", type=int, default=365, help="earlier runs of them in the history"
    )
    parser.add_argument("--backfill", type=int, default=10_000, help="partitions to backfill")
    parser.add_argument("--reactions", type=int, default=20, help="reactions to time")
    parser.add_argument("--repeat", type=int, default=5, help="timings; the best is shown")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        os.environ["FLOWCORE_HOME"] = folder  # nothing lands in ~/.flowcore
        (Path(folder) / "ls-home").mkdir()
        rows = asyncio.run(measure(args, Path(folder)))
        ls = cli_ls_ms(Path(folder) / "ls-home", args.repeat)  # its own event loop
    rows.insert(
        4,
        (f"  flowcore assets ls ({args.assets:,} assets)", ls, "ms", "open, read, print"),
    )
    print_rows(
        (
            f"assets, best of {args.repeat} (Python {platform.python_version()}, "
            f"{platform.machine()}, SQLite {sqlite3.sqlite_version})"
        ),
        rows,
    )


if __name__ == "__main__":
    main()
