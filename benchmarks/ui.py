"""What the web UI costs at the issue's sizes: the runs list, a big run's page, a big
lineage.

Run::

    python benchmarks/ui.py [--runs 100000] [--tasks 100000] [--assets 2000] [--repeat 5]

Every row is measured in this run, on a SQLite store in a temporary folder filled by
direct store writes (batches of 20,000 records, as the engine's writer would leave them:
a minute of work, not hours of running flows), against a baseline measured in the same
run on the same file:

- **runs list, N runs** (target: at most 300 ms): ``GET /runs`` through the app
  (``httpx``'s ASGI transport, in this process: the server's time, HTML included),
  unfiltered and by flow, state, time range deep in the past, a tag only the three
  oldest runs carry (the worst case: the whole list is walked), and a page 5,000 runs
  back. Baseline: the raw SQLite query of the unfiltered page (``sqlite3``, the rows
  fetched, nothing decoded).
- **a run of N task runs** (target: at most 1 s for its header, aggregated graph and
  first page of tasks): ``GET /runs/ID`` and ``GET /runs/ID/graph.json`` (the graph
  cache emptied before each), and their sum. Baseline: reading the run's task runs'
  ``seq, name, state, body`` with ``sqlite3`` (the least a graph of every task run
  can cost).
- **lineage of N assets** (target: at most 2 s in the browser): ``GET /assets/HUB`` and
  ``GET /asset-lineage/HUB`` for an asset whose lineage is every asset of the store, and
  the assets list. Baseline: the raw reads of every definition and state. With
  ``FLOWCORE_CHROMIUM`` set (a chromium binary), the same page in headless Chromium
  against a real ``flowcore ui`` on loopback: the time from navigation to the graph
  drawn, as the page measures it (``data-rendered-ms``, fetch, dagre and SVG included),
  and dagre's share (``data-layout-ms``); the 100,000-task run's page likewise.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import platform
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from _rows import Row, print_rows

import flowcore
from flowcore.assets.description import describe
from flowcore.records import (
    AssetDefRecord,
    CheckResultRecord,
    FlowRunRecord,
    LogRecord,
    MaterializationRecord,
    StaleMark,
    TaskRunRecord,
    WriteBatch,
)
from flowcore.states import State
from flowcore.store.base import Store
from flowcore.ui.app import create_app
from flowcore.ui.config import UIConfig

BATCH = 20_000


async def best(fn: Callable[[], Awaitable[Any]], repeat: int) -> float:
    """Best wall time of ``fn()`` over ``repeat`` calls, in ms."""
    times = []
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - started) * 1000)
    return min(times)


def best_sync(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return min(times)


# -- the stores ----------------------------------------------------------------------------


async def fill_runs(store: Store, count: int) -> float:
    """``count`` ended runs of 20 flows, one every 30 s up to now (a tenth Failed); every
    50th has a task run tagged ``api``, the 3 oldest one tagged ``rare``. Returns the
    time of the oldest run."""
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
        if len(runs) == BATCH:
            await store.write(WriteBatch(flow_runs=runs, task_runs=tasks))
            runs, tasks = [], []
    await store.write(WriteBatch(flow_runs=runs, task_runs=tasks))
    return oldest


async def fill_big_run(store: Store, count: int) -> str:
    """A completed run of ``count`` task runs of 5 tasks, each depending on the one
    before (every 7th failed), and a log line per 1,000; its id."""
    now = time.time()
    run = FlowRunRecord(
        id=uuid.uuid4().hex, name="big", state=State.COMPLETED, created=now - 60,
        started=now - 60, ended=now, host="bench", machine="bench", task_count=count,
    )  # fmt: skip
    await store.write(WriteBatch(flow_runs=[run]))
    step = 60 / max(count, 1)
    batch: list[TaskRunRecord] = []
    lines: list[LogRecord] = []
    for seq in range(count):
        start = now - 60 + seq * step
        state = State.FAILED if seq % 7 == 6 else State.COMPLETED
        batch.append(
            TaskRunRecord(
                run_id=run.id, seq=seq, name=f"step{seq % 5}", state=state, created=start,
                started=start, ended=start + step, attempts=1,
                upstream=[seq - 1] if seq else None,
                history=[("Running", start, None), (state.value, start + step, None)],
                error_type="ValueError" if state is State.FAILED else None,
                error_message="bad row" if state is State.FAILED else None,
            )
        )  # fmt: skip
        if seq % 1000 == 0:
            lines.append(LogRecord(run.id, seq, f"step{seq % 5}", start, logging.INFO, "b", "row"))
        if len(batch) == BATCH:
            await store.write(WriteBatch(task_runs=batch, logs=lines))
            batch, lines = [], []
    await store.write(WriteBatch(task_runs=batch, logs=lines))
    return run.id


async def fill_assets(store: Store, count: int, layers: int = 10) -> str:
    """``count`` assets in ``layers`` layers (5 groups), each reading 2 of the layer
    before; in the middle layer a hub reading its whole layer before and read by the rest
    of its own, so the hub's lineage is every asset. All but every 10th materialised,
    every 9th of those stale, every 23rd failing a check. Returns the hub's key."""
    width = max(1, count // layers)
    keys = [[f"l{layer}/a{i:04d}" for i in range(width)] for layer in range(layers)]
    middle = layers // 2
    hub = keys[middle][0]
    plain = describe(None, {}, None)
    defs = []
    for layer, row in enumerate(keys):
        for i, key in enumerate(row):
            if key == hub:
                ups = keys[middle - 1]
            elif layer == middle:
                ups = [hub]
            else:
                ups = sorted({keys[layer - 1][(i * 7 + k * 13) % width] for k in range(2)})
                ups = ups if layer else []
            defs.append(
                AssetDefRecord(
                    key=key, code_version="1", group=f"g{(i // 7) % 5}", synced=1.0,
                    upstream=[(up, "IdentityMapping()") for up in ups], description=plain,
                )
            )  # fmt: skip
    await store.sync_assets(defs, {})
    now = time.time()
    events: list[Any] = []
    for n, d in enumerate(defs):
        if n % 10 == 9:
            continue
        events.append(
            MaterializationRecord(
                key=d.key, at=now, run_id="bench", seq=n, code_version="1", data_version="d"
            )
        )
        if n % 9 == 4:
            events.append(StaleMark(d.key, [(0, 1)], {"reason": "upstream-changed"}))
        if n % 23 == 5:
            events.append(
                CheckResultRecord(key=d.key, check="c", passed=False, at=now, run_id="b", seq=n)
            )
    await store.write(WriteBatch(assets=events))
    return hub


# -- server time ---------------------------------------------------------------------------


def client(store: Store) -> httpx.AsyncClient:
    app = create_app(UIConfig(allowed_hosts=("testserver",)), store=store)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def get(c: httpx.AsyncClient, path: str, **params: Any) -> httpx.Response:
    answer = await c.get(path, params=params)
    assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
    return answer


async def runs_rows(store: Store, db: Path, count: int, oldest: float, repeat: int) -> list[Row]:
    def raw() -> None:
        with sqlite3.connect(db) as conn:
            conn.execute("SELECT * FROM flow_runs ORDER BY created DESC LIMIT 51").fetchall()

    baseline = best_sync(raw, repeat)
    cases: list[tuple[str, dict[str, Any], int]] = [
        ("newest page", {}, 50),
        ("one flow", {"flow": "flow7"}, 50),
        ("state Failed", {"state": "Failed"}, 50),
        ("time range, a week at the far end", {"since": oldest, "until": oldest + 7 * 86400}, 50),
        ("tag of 3 runs, the oldest (walks all)", {"tag": "rare"}, 3),
        ("tag of every 50th run", {"tag": "api"}, 50),
        ("page 5,000 runs back", {"offset": 5000}, 50),
    ]
    rows: list[Row] = [(f"raw SQLite page of {count:,} runs (baseline)", baseline, "ms", "")]
    async with client(store) as c:
        for what, params, want in cases:
            shown = (await get(c, "/runs", **params)).text.count("data-run=")
            assert shown == want, (what, shown)
            ms = await best(lambda p=params: get(c, "/runs", **p), repeat)  # type: ignore[misc]
            rows.append(
                (f"  runs list: {what}", ms, "ms", f"{ms / baseline:.1f}x baseline; <= 300")
            )
    return rows


async def big_run_rows(store: Store, db: Path, run_id: str, count: int, repeat: int) -> list[Row]:
    def raw() -> None:
        with sqlite3.connect(db) as conn:
            conn.execute(
                "SELECT seq, name, state, body FROM task_runs WHERE run_id = ?", (run_id,)
            ).fetchall()

    baseline = best_sync(raw, repeat)
    async with client(store) as c:
        transport = c._transport
        assert isinstance(transport, httpx.ASGITransport)
        app: Any = transport.app

        async def graph() -> None:
            app.state.graphs.clear()
            answer = await get(c, f"/runs/{run_id}/graph.json")
            assert answer.json()["total"] == count

        page = await best(lambda: get(c, f"/runs/{run_id}"), repeat)
        graph_ms = await best(graph, repeat)
        size = len((await get(c, f"/runs/{run_id}")).content)
    total = page + graph_ms
    return [
        (f"raw SQLite read of {count:,} task runs (baseline)", baseline, "ms", ""),
        (f"  run page ({size // 1024} KB: header, counts, first 100)", page, "ms", ""),
        ("  its aggregated graph (JSON)", graph_ms, "ms", f"{graph_ms / baseline:.1f}x baseline"),
        ("  page + graph", total, "ms", "target <= 1000"),
    ]


async def lineage_rows(store: Store, db: Path, hub: str, count: int, repeat: int) -> list[Row]:
    def raw() -> None:
        with sqlite3.connect(db) as conn:
            conn.execute("SELECT body FROM asset_defs").fetchall()
            conn.execute("SELECT body FROM asset_state").fetchall()

    baseline = best_sync(raw, repeat)
    async with client(store) as c:
        graph = (await get(c, f"/asset-lineage/{hub}")).json()
        assert graph["total"] == count, graph["total"]
        page = await best(lambda: get(c, f"/assets/{hub}"), repeat)
        lineage = await best(lambda: get(c, f"/asset-lineage/{hub}"), repeat)
        listed = await best(lambda: get(c, "/assets"), repeat)
    return [
        (f"raw SQLite read of {count:,} definitions and states (baseline)", baseline, "ms", ""),
        ("  asset page (header, history, heat map)", page, "ms", ""),
        (
            f"  lineage JSON, {count:,} assets",
            lineage,
            "ms",
            f"{lineage / baseline:.1f}x baseline; {len(graph['nodes'])} nodes drawn",
        ),
        (f"  assets list ({count:,}, first page)", listed, "ms", f"{listed / baseline:.1f}x"),
    ]


# -- the browser -----------------------------------------------------------------------------


def browser_rows(home: Path, hub: str, run_id: str, repeat: int) -> list[Row]:
    chromium = os.environ.get("FLOWCORE_CHROMIUM")
    if not chromium:
        return [("in the browser", float("nan"), "", "set FLOWCORE_CHROMIUM to measure")]
    from playwright.sync_api import sync_playwright  # only when asked: an optional tool

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "flowcore", "--home", str(home), "ui", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/static/app.css", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "flowcore ui did not start"
                time.sleep(0.05)
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=args)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            rendered, layout, run_drawn = [], [], []
            for _ in range(repeat):
                page.goto(f"{url}/assets/{hub}")
                page.wait_for_selector("#lineage[data-ready]", timeout=60_000)
                rendered.append(float(page.get_attribute("#lineage", "data-rendered-ms") or 0))
                layout.append(float(page.get_attribute("#lineage", "data-layout-ms") or 0))
                page.goto(f"{url}/runs/{run_id}")
                page.wait_for_selector("#graph[data-ready]", timeout=60_000)
                run_drawn.append(float(page.get_attribute("#graph", "data-rendered-ms") or 0))
            nodes = page.locator("#graph g.node").count()
            browser.close()
    finally:
        server.terminate()
        server.wait()
    return [
        ("lineage page in Chromium: graph drawn", min(rendered), "ms", "from navigation; <= 2000"),
        ("  of which dagre's layout", min(layout), "ms", ""),
        (
            "big run's page in Chromium: graph drawn",
            run_drawn[0],
            "ms",
            f"first load; {nodes} nodes",
        ),
        ("  again (the graph of an ended run cached)", min(run_drawn[1:] or run_drawn), "ms", ""),
    ]


# -- main ----------------------------------------------------------------------------------


async def measure(args: argparse.Namespace, home: Path) -> tuple[list[Row], str, str]:
    db = home / "flowcore.db"
    store = flowcore.SQLiteStore(db)
    await store.open()
    try:
        started = time.perf_counter()
        oldest = await fill_runs(store, args.runs)
        run_id = await fill_big_run(store, args.tasks)
        hub = await fill_assets(store, args.assets)
        filled = time.perf_counter() - started
        rows = [("filling the store (direct writes)", filled, "s", "not a UI cost")]
        rows += await runs_rows(store, db, args.runs, oldest, args.repeat)
        rows += await big_run_rows(store, db, run_id, args.tasks, args.repeat)
        rows += await lineage_rows(store, db, hub, args.assets, args.repeat)
    finally:
        await store.close()
    return rows, hub, run_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000, help="runs in the runs list")
    parser.add_argument("--tasks", type=int, default=100_000, help="task runs of the big run")
    parser.add_argument("--assets", type=int, default=2_000, help="assets in the lineage")
    parser.add_argument("--repeat", type=int, default=5, help="timings; the best is shown")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        os.environ["FLOWCORE_HOME"] = folder  # nothing lands in ~/.flowcore
        home = Path(folder)
        rows, hub, run_id = asyncio.run(measure(args, home))
        rows += browser_rows(home, hub, run_id, args.repeat)
    print_rows(
        (
            f"web UI, best of {args.repeat} (Python {platform.python_version()}, "
            f"{platform.machine()}, SQLite {sqlite3.sqlite_version}; server time in-process "
            "through the ASGI app)"
        ),
        rows,
    )


if __name__ == "__main__":
    main()
