"""Flows as request handlers: a service whose endpoint is a flow, against the same
endpoint in plain asyncio.

Each request runs a handler that gathers two tasks sleeping 1 ms and calls a third
(in flowcore: a ``@flowcore.flow`` calling three ``@flowcore.task`` runs, each tracked
and persisted, with one long-lived ``Engine``). Three measurements, printed as tables
with requests/s, p50 and p99 latency and their ratios to plain asyncio:

- **in process**: N requests driven by coroutines at a given number in flight (no
  HTTP), for the SQLite store (the default) and the memory store, with the records
  written per request and what the process wrote per request (``/proc/self/io``:
  SQLite's WAL and its checkpoints; Linux only);
- **what a flow run costs**: an empty flow run and a three-task flow run, one at a
  time (each committed before the next), against a task run, and what the process
  wrote per empty flow run;
- **over HTTP**: a Starlette app served by uvicorn in a process of its own on
  127.0.0.1, driven by httpx clients (each with four connections: one pool serving a
  hundred measures the pool) at 1, 10, 100 and 500 requests in flight.

Run: ``python benchmarks/service.py`` (``--requests N``, ``--quick``, ``--repeat N``:
rounds in process, the three handlers in turns, each one's best kept). The HTTP part
needs the web extra (starlette, uvicorn: ``pip install 'flowcore[ui]'``). Targets (at
100 in flight): throughput at least 0.4x plain asyncio, p50 and p99 at most 3x.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import flowcore

# -- the handler, both ways -------------------------------------------------------------------


@flowcore.task
async def fetch(i: int) -> int:
    await asyncio.sleep(0.001)
    return i


@flowcore.task
async def combine(a: int, b: int) -> int:
    return a + b


@flowcore.flow
async def handle(i: int) -> int:
    a, b = await asyncio.gather(fetch(i), fetch(i + 1))
    return await combine(a, b)


async def plain_fetch(i: int) -> int:
    await asyncio.sleep(0.001)
    return i


async def plain_combine(a: int, b: int) -> int:
    return a + b


async def plain_handle(i: int) -> int:
    a, b = await asyncio.gather(plain_fetch(i), plain_fetch(i + 1))
    return await plain_combine(a, b)


# -- measuring --------------------------------------------------------------------------------


@dataclass
class Row:
    what: str
    inflight: int
    rps: float
    p50_ms: float
    p99_ms: float
    #: Records written per request, and KiB the process wrote per request (SQLite's WAL
    #: and checkpoints), for flowcore rows measured in process.
    rows: float | None = None
    kib: float | None = None


def written_bytes() -> int | None:
    """Bytes this process has written (``wchar`` of ``/proc/self/io``: Linux only)."""
    try:
        with open("/proc/self/io") as io:
            for line in io:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


async def drive(
    call: Callable[[int], Awaitable[Any]], requests: int, inflight: int
) -> tuple[float, float, float]:
    """Requests per second, p50 and p99 latency (ms) of ``requests`` calls, ``inflight``
    at a time."""
    latencies: list[float] = []
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        while next_i < requests:
            i = next_i
            next_i += 1
            t0 = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    wall = time.perf_counter() - t0
    latencies.sort()
    return (
        requests / wall,
        latencies[len(latencies) // 2] * 1e3,
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3,
    )


async def in_process(requests: int, inflight: int, folder: Path, repeat: int = 3) -> list[Row]:
    """Each handler ``repeat`` times, in turns (plain asyncio, SQLite, memory, then again),
    keeping each one's round of best throughput: other programs on the machine slow some
    rounds down, and taking turns spreads that over all three."""
    best: dict[str, Row] = {}
    for _ in range(repeat):
        rounds = [Row("plain asyncio", inflight, *await drive(plain_handle, requests, inflight))]
        for name, store in (("SQLite", folder / "service.db"), ("memory", "memory")):
            async with flowcore.Engine(store=store) as engine:
                await drive(handle, min(requests, 500), inflight)  # warm up
                written, rows_before = written_bytes(), engine.recorder.rows_written
                row = Row(
                    f"flowcore, {name} store", inflight, *await drive(handle, requests, inflight)
                )
                row.rows = (engine.recorder.rows_written - rows_before) / requests
                after = written_bytes()
                if written is not None and after is not None:
                    row.kib = (after - written) / requests / 1024
                rounds.append(row)
        for row in rounds:
            if row.what not in best or row.rps > best[row.what].rps:
                best[row.what] = row
    return list(best.values())


# -- what a flow run costs --------------------------------------------------------------------


@flowcore.task
async def noop(i: int) -> int:
    return i


@flowcore.flow
async def empty() -> None:
    return None


@flowcore.flow
async def three_tasks() -> int:
    a, b = await asyncio.gather(noop(1), noop(2))
    return await noop(a + b)


@flowcore.flow
async def gathered(n: int) -> int:
    return len(await asyncio.gather(*(noop(i) for i in range(n))))


@dataclass
class Cost:
    store: str
    empty_us: float
    three_us: float
    task_us: float
    #: KiB the process wrote per empty flow run (its commit), when known.
    empty_kib: float | None


async def run_costs(folder: Path, runs: int = 2000) -> list[Cost]:
    """µs per empty flow run, per three-task flow run (one at a time, each committed),
    and per task run (10,000 gathered in one flow), for each store."""
    out: list[Cost] = []
    stores: list[tuple[str, Path | str]] = [("SQLite", folder / "costs.db"), ("memory", "memory")]
    for name, store in stores:
        async with flowcore.Engine(store=store):
            costs = []
            kib = None
            for fn in (empty, three_tasks):
                for _ in range(100):
                    await fn()
                best = float("inf")
                for _ in range(3):
                    written = written_bytes()
                    t0 = time.perf_counter()
                    for _ in range(runs):
                        await fn()
                    best = min(best, (time.perf_counter() - t0) / runs)
                    after = written_bytes()
                    if fn is empty and written is not None and after is not None:
                        kib = (after - written) / runs / 1024
                costs.append(best * 1e6)
            await gathered(1000)
            t0 = time.perf_counter()
            await gathered(10_000)
            costs.append((time.perf_counter() - t0) / 10_000 * 1e6)
        out.append(Cost(name, costs[0], costs[1], costs[2], kib if name == "SQLite" else None))
    return out


def costs_table(rows: list[Cost]) -> Table:
    out = Table(title="what a flow run costs (state persisted, tracing on), best of 3")
    columns = ("store", "empty flow run", "3-task flow run", "task run", "empty ÷ task")
    for column in (*columns, "KiB written/empty run"):
        out.add_column(column, justify="left" if column == "store" else "right")
    for r in rows:
        out.add_row(
            r.store,
            f"{r.empty_us:.1f} µs",
            f"{r.three_us:.1f} µs",
            f"{r.task_us:.1f} µs",
            f"{r.empty_us / r.task_us:.1f}x",
            "-" if r.empty_kib is None else f"{r.empty_kib:.1f}",
        )
    return out


# -- over HTTP --------------------------------------------------------------------------------


def make_app(mode: str, db: str) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    engine = flowcore.Engine(store=db) if mode == "flowcore" else None

    async def endpoint(request: Request) -> PlainTextResponse:
        i = int(request.query_params.get("i", "0"))
        result = await (handle(i) if engine is not None else plain_handle(i))
        return PlainTextResponse(str(result))

    async def lifespan(app: Any) -> Any:
        if engine is None:
            yield
            return
        async with engine:
            yield

    from contextlib import asynccontextmanager

    return Starlette(routes=[Route("/", endpoint)], lifespan=asynccontextmanager(lifespan))


def serve(mode: str, port: int, db: str) -> None:
    import uvicorn

    # Keep-alive longer than a measurement: a connection the server closes while idle
    # would be an error of the client's next request, not a cost of the handler.
    uvicorn.run(
        make_app(mode, db),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        timeout_keep_alive=300,
        backlog=4096,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


#: Connections each client of the HTTP measurement keeps (see over_http).
_PER_CLIENT = 4


async def over_http(requests: int, levels: list[int], folder: Path) -> list[Row]:
    import httpx

    rows = []
    for mode, label in (("plain", "plain asyncio"), ("flowcore", "flowcore, SQLite store")):
        port = free_port()
        server = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--serve", mode, str(port), str(folder / "http.db"),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base) as first:
                for _ in range(200):
                    try:
                        await first.get("/", params={"i": 0})
                        break
                    except httpx.TransportError:
                        await asyncio.sleep(0.05)
            for inflight in levels:
                # One client per few requests in flight: a single httpx pool serving a
                # hundred connections at once spends most of its time choosing which
                # connection takes which request (it slowed to a third of the rate at
                # 10 in flight, for the plain handler too), which measures the client.
                clients = [
                    httpx.AsyncClient(
                        base_url=base,
                        limits=httpx.Limits(
                            max_connections=_PER_CLIENT, max_keepalive_connections=_PER_CLIENT
                        ),
                    )
                    for _ in range(-(-inflight // _PER_CLIENT))
                ]
                try:

                    async def call(i: int, clients: list[httpx.AsyncClient] = clients) -> None:
                        response = await clients[i % len(clients)].get("/", params={"i": i})
                        response.raise_for_status()

                    await drive(call, 200, min(10, inflight))  # warm up (connections open)
                    rows.append(Row(label, inflight, *await drive(call, requests, inflight)))
                finally:
                    for client in clients:
                        await client.aclose()
        finally:
            server.terminate()
            await server.wait()
    return rows


# -- reporting --------------------------------------------------------------------------------


def table(title: str, rows: list[Row]) -> Table:
    out = Table(title=title)
    written = any(r.rows is not None for r in rows)
    columns = ["handler", "in flight", "requests/s", "p50", "p99", "throughput", "p50", "p99"]
    for column in columns + (["rows/req", "KiB written/req"] if written else []):
        out.add_column(column, justify="left" if column == "handler" else "right")
    base = {r.inflight: r for r in rows if r.what == "plain asyncio"}
    for r in rows:
        b = base[r.inflight]
        cells = [
            r.what,
            str(r.inflight),
            f"{r.rps:,.0f}",
            f"{r.p50_ms:.1f} ms",
            f"{r.p99_ms:.1f} ms",
            f"{r.rps / b.rps:.2f}x",
            f"{r.p50_ms / b.p50_ms:.1f}x",
            f"{r.p99_ms / b.p99_ms:.1f}x",
        ]
        if written:
            cells.append("-" if r.rows is None else f"{r.rows:.1f}")
            cells.append("-" if r.kib is None else f"{r.kib:.1f}")
        out.add_row(*cells)
    return out


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="requests per measurement")
    parser.add_argument("--quick", action="store_true", help="1,000 requests, 100 in flight")
    parser.add_argument("--no-http", action="store_true", help="only the in-process table")
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds in process, best kept (default 3)"
    )
    args = parser.parse_args()
    requests = 1000 if args.quick else args.requests
    levels = [100] if args.quick else [1, 10, 100, 500]
    console = Console()
    if not console.is_terminal:
        console = Console(width=150)
    with tempfile.TemporaryDirectory(prefix="flowcore-service-") as name:
        folder = Path(name)
        rows: list[Row] = []
        for inflight in [100] if args.quick else [1, 100, 500]:
            place = folder / f"p{inflight}"
            place.mkdir()
            rows += asyncio.run(in_process(requests, inflight, place, args.repeat))
        title = f"in process, {requests:,} requests, best of {args.repeat} rounds taken in turns"
        console.print(table(f"{title} (ratios: to plain asyncio)", rows))
        console.print(costs_table(asyncio.run(run_costs(folder))))
        if not args.no_http:
            try:
                import httpx  # noqa: F401
                import starlette  # noqa: F401
                import uvicorn  # noqa: F401
            except ImportError as exc:
                console.print(f"over HTTP: skipped ({exc}); pip install 'flowcore[ui]'")
                return 0
            http_rows = asyncio.run(over_http(requests, levels, folder))
            console.print(table(f"over HTTP (uvicorn, httpx), {requests:,} requests", http_rows))
    console.print("Targets at 100 in flight: throughput >= 0.4x plain asyncio; p50, p99 <= 3x.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
