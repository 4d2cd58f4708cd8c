"""What a task call costs through the Dask executor, against the local executor and against
dask itself (``client.submit``), measured in one run on one cluster.

    python plugins/flowcore-dask/benchmarks/overhead.py [--tasks 300] [--workers 2]
                                                        [--repeat 3] [--address tcp://host:8786]

Every call is a no-op, so the numbers are pure overhead: for dask, the round trips
client -> scheduler -> worker -> scheduler -> client and dask's batching intervals; for
flowcore, a tracked task run (record, state changes, span, SQLite writes behind). Two
shapes: one call at a time (``await`` in a loop: latency), and all at once
(``asyncio.gather``: throughput). Without ``--address`` a LocalCluster of worker
processes is started (``--workers``, one thread each) and stopped at the end.

Rows:

- ``dask: client.submit``: the floor, dask alone (submit, await, release);
- ``flowcore on dask``: ``@flowcore.task(executor="dask")``, the same calls as tracked task
  runs; the difference to the row above is what the executor and the engine add;
- ``flowcore local (thread)`` and ``flowcore local (async)``: the same task on the local
  executor, what a call costs when it need not leave the process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from distributed import Client, LocalCluster

import flowcore
from flowcore_dask import DaskExecutor
from flowcore_dask.functions import prepare
from flowcore_dask.transfer import pack_call, pack_result, unpack_result


def noop(x: int) -> int:
    return x


@flowcore.task(executor="dask")
def noop_dask(x: int) -> int:
    return x


@flowcore.task(executor="local")
def noop_thread(x: int) -> int:
    return x


@flowcore.task(executor="local")
async def noop_async(x: int) -> int:
    return x


Call = Callable[[int], Awaitable[Any]]


async def serial(call: Call, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        await call(i)
    return time.perf_counter() - start


async def concurrent(call: Call, n: int) -> float:
    start = time.perf_counter()
    await asyncio.gather(*(call(i) for i in range(n)))
    return time.perf_counter() - start


def raw_call(client: Client) -> Call:
    async def call(i: int) -> Any:
        future = client.submit(noop, i, pure=False)
        try:
            return await future
        finally:
            future.release()

    return call


async def in_flow(shape: Callable[[Call, int], Awaitable[float]], task: Call, n: int) -> float:
    """``shape`` timed inside one flow run (task calls are tracked only inside one)."""

    @flowcore.flow(name=f"overhead-{shape.__name__}")
    async def bench() -> float:
        return await shape(task, n)

    seconds: float = await bench()
    return seconds


async def measure(address: str, n: int, repeat: int) -> list[tuple[str, float, float]]:
    """The best of ``repeat`` rounds per cell, the rows taking turns in each round, so a
    busy moment of the machine (other processes) is not all one row's."""
    async with (
        Client(address, asynchronous=True, set_as_default=False) as client,
        flowcore.Engine(executors={"dask": DaskExecutor(address)}),
    ):
        raw = raw_call(client)
        rows: dict[str, tuple[Callable[[Any, Call, int], Awaitable[float]], Call]] = {
            "dask: client.submit": (_direct, raw),
            "flowcore on dask": (in_flow, noop_dask),
            "flowcore local (thread)": (in_flow, noop_thread),
            "flowcore local (async)": (in_flow, noop_async),
        }
        for run, call in rows.values():  # warm up: workers import, connections open
            await run(concurrent, call, min(n, 50))
        best: dict[str, list[float]] = {name: [float("inf")] * 2 for name in rows}
        for _ in range(repeat):
            for name, (run, call) in rows.items():
                for i, shape in enumerate((serial, concurrent)):
                    best[name][i] = min(best[name][i], await run(shape, call, n))
    return [(name, one, all_) for name, (one, all_) in best.items()]


async def _direct(shape: Callable[[Call, int], Awaitable[float]], call: Call, n: int) -> float:
    return await shape(call, n)


def own_work(n: int = 20_000) -> float:
    """Seconds per call of the executor's own work, both ends: the key, the call's pickle,
    the result's msgpack and its decoding (what it adds to ``client.submit``)."""
    prepared = prepare(noop, "noop")
    start = time.perf_counter()
    for i in range(n):
        key = f"noop-{uuid.uuid4().hex}"
        call = pack_call("noop", key, (i,), {})
        unpack_result(pack_result(i, "noop"), prepared.decoder)
    del call
    return (time.perf_counter() - start) / n


def table(rows: list[tuple[str, float, float]], n: int) -> str:
    floor_serial, floor_concurrent = rows[0][1], rows[0][2]
    lines = [
        f"{'':26} {'one at a time':>22} {'all at once (gather)':>24}   added to dask alone",
        f"{'':26} {'µs/task':>10} {'tasks/s':>11} {'µs/task':>12} {'tasks/s':>11}   "
        f"{'one':>8} {'all':>8}",
    ]
    for name, one, all_ in rows:
        added = (
            f"{(one - floor_serial) / n * 1e6:>+8.0f} {(all_ - floor_concurrent) / n * 1e6:>+8.0f}"
            if name == "flowcore on dask"
            else ""
        )
        lines.append(
            f"{name:26} {one / n * 1e6:>10,.0f} {n / one:>11,.0f} "
            f"{all_ / n * 1e6:>12,.0f} {n / all_:>11,.0f}   {added}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=300, help="calls per measurement")
    parser.add_argument("--workers", type=int, default=2, help="local cluster worker processes")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best one counts")
    parser.add_argument("--address", help="a running scheduler instead of a local cluster")
    args = parser.parse_args()
    if min(args.tasks, args.workers, args.repeat) < 1:
        parser.error("--tasks, --workers and --repeat must be at least 1")
    # A store of its own: the runs of a benchmark are not the user's.
    os.environ["FLOWCORE_HOME"] = tempfile.mkdtemp(prefix="flowcore-dask-bench-")
    cluster = None
    address = args.address
    if address is None:
        cluster = LocalCluster(
            processes=True,
            n_workers=args.workers,
            threads_per_worker=1,
            dashboard_address=":0",
            scheduler_kwargs={"allowed_failures": 0},
        )
        address = cluster.scheduler_address
    try:
        rows = asyncio.run(measure(address, args.tasks, args.repeat))
    finally:
        if cluster is not None:
            cluster.close()
    where = f"{args.workers} local worker processes" if cluster is not None else address
    print(
        f"{args.tasks} no-op calls per cell, best of {args.repeat}; dask cluster: {where}; "
        f"{os.cpu_count()} CPUs; Python {sys.version.split()[0]}; flowcore store: SQLite "
        "(batched), tracing on\n"
    )
    print(table(rows, args.tasks))
    print(
        f"\nthe executor's own work per call (key, pickle of the call, msgpack of the result "
        f"both ways): {own_work() * 1e6:.1f} µs; the rest of the difference is dask's jitter "
        "(its batching intervals, 2-10 ms, dominate a call's latency)"
    )


if __name__ == "__main__":  # worker processes are spawned: they import this module
    main()
