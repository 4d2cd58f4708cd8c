"""What the web UI's pages cost on PostgreSQL (``RunQueries``), and what keeping run tags
costs a write batch.

    python plugins/flowcore-postgres/benchmarks/queries.py [--runs 100000] [--tasks 100000]

The server is ``$FLOWCORE_TEST_POSTGRES`` when set; otherwise one is started for the run
with ``.ci/postgres.sh`` and stopped at the end. A fresh database is filled by direct
store writes, as ``benchmarks/ui.py`` fills SQLite: ``runs`` ended runs of 20 flows, one
every 30 s up to now (a tenth Failed), every 50th with a task run tagged ``api``, the 3
oldest with one tagged ``rare`` (on SQLite, the worst case: the whole list is walked);
then ``ANALYZE``, as autovacuum would have run by then. Each page is
``store.filter_runs`` (best of ``repeat``, the round trip and the records decoded
included), beside the statement's own execution time on the server (EXPLAIN ANALYZE)
and how many ``flow_runs`` rows it read. Then the edges of a run of ``tasks`` task runs
(``task_run_edges``, in pages of 50,000, as the UI reads them), and the write batches of
a run: untagged, its first tagged batch, and tagged batches after it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from flowcore.records import FlowRunRecord, TaskRunRecord, WriteBatch
from flowcore.states import State
from flowcore_postgres import PostgresStore

REPO = Path(__file__).resolve().parents[3]


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


async def fill_runs(store: PostgresStore, count: int) -> float:
    """The runs of ``benchmarks/ui.py``; returns the time of the oldest."""
    now = time.time()
    oldest = now - count * 30
    runs, tasks = [], []
    for i in range(count):
        created = oldest + i * 30
        run = FlowRunRecord(
            id=uuid.uuid4().hex, name=f"flow{i % 20}",
            state=State.FAILED if i % 10 == 3 else State.COMPLETED, created=created,
            started=created, ended=created + 5, host="bench", machine="bench", task_count=1,
        )  # fmt: skip
        runs.append(run)
        tags = ["rare"] if i < 3 else ["api"] if i % 50 == 0 else None
        if tags:
            tasks.append(TaskRunRecord(run.id, 0, "fetch", State.COMPLETED, created, tags=tags))
        if len(runs) == 20_000:
            await store.write(WriteBatch(flow_runs=runs, task_runs=tasks))
            runs, tasks = [], []
    await store.write(WriteBatch(flow_runs=runs, task_runs=tasks))
    return oldest


async def page(store: PostgresStore, repeat: int, **filters: Any) -> tuple[float, float, int]:
    """Best seconds of ``filter_runs(**filters)``; the server's execution ms and the
    ``flow_runs`` rows read, by EXPLAIN ANALYZE of the statement it sent."""
    sent: list[tuple[str, tuple[Any, ...]]] = []
    fetch = store._io.fetch

    async def capture(sql: str, *args: Any) -> list[asyncpg.Record]:
        sent.append((sql, args))
        return await fetch(sql, *args)

    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        await store.filter_runs(**filters)
        best = min(best, time.perf_counter() - start)
    store._io.fetch = capture  # type: ignore[method-assign]
    try:
        await store.filter_runs(**filters)
    finally:
        store._io.fetch = fetch  # type: ignore[method-assign]
    sql, args = sent[0]
    conn = await asyncpg.connect(store.url.dsn, server_settings=store._io.settings())
    try:
        plan = json.loads(await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args))
    finally:
        await conn.close()

    def read(node: dict[str, Any]) -> int:
        # Rows a scan of flow_runs visited: those it gave and those its filter dropped.
        own = 0
        if node.get("Relation Name") == "flow_runs":
            per_loop = node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
            own = round(per_loop * node["Actual Loops"])
        return own + sum(read(child) for child in node.get("Plans", []))

    return best, plan[0]["Execution Time"], read(plan[0]["Plan"])


async def fill_big_run(store: PostgresStore, count: int) -> str:
    run = FlowRunRecord(uuid.uuid4().hex, "big", State.COMPLETED, time.time())
    await store.write(WriteBatch(flow_runs=[run]))
    batch = []
    for seq in range(count):
        batch.append(
            TaskRunRecord(
                run.id, seq, f"task{seq % 10}", State.COMPLETED, run.created,
                upstream=[seq - 1] if seq % 3 == 0 and seq else None, inputs=b"\x91\x01",
            )
        )  # fmt: skip
        if len(batch) == 20_000:
            await store.write(WriteBatch(task_runs=batch))
            batch = []
    await store.write(WriteBatch(task_runs=batch))
    return run.id


async def edges(store: PostgresStore, run_id: str, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        found = await store.task_run_edges(run_id, limit=50_000)
        while len(found) % 50_000 == 0 and found:
            more = await store.task_run_edges(run_id, after=found[-1][0], limit=50_000)
            if not more:
                break
            found += more
        best = min(best, time.perf_counter() - start)
    return best


async def batches(store: PostgresStore, rounds: int) -> list[tuple[str, float]]:
    """Median seconds of a batch of 10 task runs: untagged, tagged in a run's first
    batch (its tags are sent), tagged in a later batch of the run (they are not)."""
    times: dict[str, list[float]] = {"untagged": [], "tagged, first": [], "tagged, later": []}
    for i in range(rounds):
        for label in times:
            run = FlowRunRecord(f"w{i}-{label}", "etl", State.RUNNING, time.time())
            tags = None if label == "untagged" else ["api", "db"]
            tasks = [
                TaskRunRecord(run.id, s, "s", State.COMPLETED, 1.0, tags=tags) for s in range(10)
            ]
            if label == "tagged, later":
                await store.write(WriteBatch([run], tasks))
                tasks = [
                    TaskRunRecord(run.id, 10 + s, "s", State.COMPLETED, 1.0, tags=tags)
                    for s in range(10)
                ]
            start = time.perf_counter()
            await store.write(WriteBatch([run], tasks))
            times[label].append(time.perf_counter() - start)
    return [(label, statistics.median(found)) for label, found in times.items()]


async def measure(server: str, runs: int, tasks: int, repeat: int) -> None:
    url = await new_database(server)
    try:
        async with PostgresStore(url) as store:
            start = time.perf_counter()
            oldest = await fill_runs(store, runs)
            run_id = await fill_big_run(store, tasks)
            filled = time.perf_counter() - start
            conn = await asyncpg.connect(store.url.dsn, server_settings=store._io.settings())
            try:
                await conn.execute("ANALYZE")
            finally:
                await conn.close()
            print(f"\n{runs:,} runs and a run of {tasks:,} task runs written in {filled:.1f} s")
            print(f"\nruns list, {runs:,} runs (filter_runs, a page of 50; best of {repeat})\n")
            print(f"{'page':<38} {'ms':>7} {'server ms':>10} {'runs read':>10}")
            deep = oldest + runs * 30 * 0.1
            for label, filters in (
                ("newest", {}),
                ("one flow", {"name": "flow7"}),
                ("Failed", {"state": "Failed"}),
                ("a time range deep in the past", {"since": deep, "until": deep + 30 * 500}),
                ("tag api (every 50th run)", {"tag": "api"}),
                ("tag rare (the 3 oldest runs)", {"tag": "rare"}),
                ("tag api, a time range", {"tag": "api", "since": deep, "until": deep + 30 * 5000}),
                ("tag api, Failed", {"tag": "api", "state": "Failed"}),
                ("5,000 runs back", {"offset": 5000}),
            ):
                seconds, server_ms, read = await page(store, repeat, **filters)
                print(f"{label:<38} {seconds * 1e3:>7.2f} {server_ms:>10.2f} {read:>10,}")
            seconds = await edges(store, run_id, repeat)
            print(f"\ntask_run_edges of a run of {tasks:,} task runs: {seconds * 1e3:.0f} ms")
            print("\na write batch of 10 task runs (median of 200)\n")
            for label, seconds in await batches(store, 200):
                print(f"{label:<16} {seconds * 1e6:>6.0f} µs")
    finally:
        await drop_database(server, url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
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
        asyncio.run(measure(server, args.runs, args.tasks, args.repeat))
    finally:
        if started:
            subprocess.run(
                ["bash", str(REPO / ".ci" / "postgres.sh"), "stop", started], check=False
            )


if __name__ == "__main__":
    main()
