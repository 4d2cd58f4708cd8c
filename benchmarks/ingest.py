"""A paginated HTTP ingestion: flowcore against a hand-written asyncio + httpx script.

Run::

    python benchmarks/ingest.py                          # 10,000 pages, concurrency 50, best of 3
    python benchmarks/ingest.py --pages 2000 --repeat 1  # a quicker look
    python benchmarks/ingest.py --scenarios clean --profile --json results.json

The target (from the issue): a 10,000-page ingestion against the local API runs at
a throughput within 80% of a hand-written asyncio + httpx script with the same
concurrency, i.e. flowcore pages/s ÷ raw pages/s >= 0.80.

The API is ``examples/api_server.py`` (``FakeRecordsAPI``) on 127.0.0.1, started
once and shared by every run, with a fixed latency per request (``--latency``,
10 ms). By default it runs in a subprocess of its own (``--api process``), so its
request handling (Python's ``http.server``, building and encoding each page) does
not take the GIL from the client being measured; ``--api thread`` serves it from a
thread of this process instead, as the demo does.

Each page is one GET ``/records?page=N``, its JSON parsed and its records
collected into one list; at the end the records are written into a SQLite table
(one ``executemany`` in one transaction, in a worker thread) the same way on
both sides (``--no-write`` skips the write on both sides). The sides:

- ``raw asyncio + httpx``: one ``httpx.AsyncClient`` whose pool is sized to the
  concurrency, an ``asyncio.Semaphore(concurrency)`` around each request,
  ``asyncio.gather`` over every page; the write via ``asyncio.to_thread``.
- ``flowcore (named limit)``: a ``@flowcore.flow`` mapping a ``@flowcore.task``
  (one task run per page, ``fetch_page.map(...)``) tagged ``"api"``, under
  ``flowcore.limit("api", concurrency)`` registered with
  ``flowcore.Engine(limits=[...])``; requests through the run's shared client
  ``flowcore.http_client()``; the write in a sync ``@flowcore.task``.
- ``flowcore (max_concurrency)``: the same flow made with
  ``@flowcore.flow(concurrency=concurrency)`` instead of a named limit (which
  also sizes ``flowcore.http_client()``'s pool to the concurrency, as raw's is).

flowcore persists every run, task run, input, result and span to SQLite in a
temporary directory (``flowcore.Engine(store=path)``, a fresh database per run,
opened before the clock starts; tracing at its default, on). A flowcore time runs
from calling the flow until it returns and ``engine.recorder.flush()`` says
nothing is left to write; a raw time, from the first line of the script to its
last. Both include making the client and opening its connections. Every side
runs ``--repeat`` times, the order alternating (raw first, then flowcore first),
after an untimed warm-up of each side. The table shows the best and the median.

The ``flaky`` scenario (run after ``clean``; ``--scenarios clean`` skips it)
makes the API answer a fraction of requests ``503`` (``--failure-rate``) and
throttle with ``429`` + ``Retry-After: 1`` above a rate (``--api-rate``; by
default 75% of raw's best clean throughput, so both sides are throttled). Raw
retries in a hand-written loop (Retry-After honoured, else exponential backoff
with full jitter), flowcore with ``retry=flowcore.http_retry(...)`` with the
same numbers. The work differs
between the sides there (which requests fail is random), so its ratio says how
the retry handling compares, not what flowcore's bookkeeping costs.

``--profile`` runs one raw and one flowcore run under cProfile after the timed
runs, and prints where each spends its time (own time per package, top functions).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import importlib.util
import io
import json
import os
import pstats
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import overhead  # this folder's other benchmark: its environment and loop helpers
from rich.console import Console
from rich.table import Table

import flowcore

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
Record = dict[str, Any]

API_LIMIT = "api"  # the named limit the flowcore fetches run under
#: Attempts after the first, both sides (flaky scenario): enough that no page gives up
#: while the API throttles (every 429 asks for the same 1 s, so retries come in waves).
RETRIES = 20
RETRY_BASE = 0.05  # seconds: the first backoff, doubling, full jitter
RETRY_MAX_DELAY = 2.0  # seconds: the longest wait, Retry-After included
WARMUP_PAGES = 200
RAW = "raw asyncio + httpx"
FC_LIMIT = "flowcore (named limit)"
FC_MAXCONC = "flowcore (max_concurrency)"
TARGET = 0.80


# -- the API ----------------------------------------------------------------------------------


class API(Protocol):
    url: str

    def stats(self) -> dict[str, int]: ...

    def close(self) -> None: ...


class ThreadAPI:
    """``FakeRecordsAPI`` served from a thread of this process (sharing its GIL)."""

    def __init__(self, options: dict[str, Any]) -> None:
        spec = importlib.util.spec_from_file_location("api_server", EXAMPLES / "api_server.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self._api: Any = module.FakeRecordsAPI(**options).start()
        self.url: str = self._api.url

    def stats(self) -> dict[str, int]:
        stats: dict[str, int] = self._api.stats
        return stats

    def close(self) -> None:
        self._api.close()


#: Run by ``python -c`` in the subprocess: start the API, print its URL, then answer
#: each line read from stdin with the counters and the process's CPU time (ms) as JSON;
#: stdin closed: stop.
_SERVER_SCRIPT = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from api_server import FakeRecordsAPI
api = FakeRecordsAPI(**json.loads(sys.argv[2])).start()
print(api.url, flush=True)
for _ in sys.stdin:
    print(json.dumps({**api.stats, "cpu_ms": round(time.process_time() * 1000)}), flush=True)
api.close()
"""


class ProcessAPI:
    """``FakeRecordsAPI`` served by a Python subprocess (its own GIL, its own CPU)."""

    def __init__(self, options: dict[str, Any]) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _SERVER_SCRIPT, str(EXAMPLES), json.dumps(options)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        self.url = self._process.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.close()
            raise RuntimeError(f"the API subprocess did not start (printed {self.url!r})")

    def stats(self) -> dict[str, int]:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write("stats\n")
        self._process.stdin.flush()
        stats: dict[str, int] = json.loads(self._process.stdout.readline())
        return stats

    def close(self) -> None:
        if self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()


def start_api(where: str, options: dict[str, Any]) -> API:
    return ProcessAPI(options) if where == "process" else ThreadAPI(options)


# -- what both sides do with the records -------------------------------------------------------


def write_records(db_path: str, records: list[Record]) -> int:
    """Insert the records into a SQLite table in one transaction; returns the rows written."""
    rows = [(r["id"], r["name"], r["value"], r["updated_at"]) for r in records]
    with closing(sqlite3.connect(db_path, timeout=30)) as db, db:  # `with db` commits
        db.execute(
            "CREATE TABLE IF NOT EXISTS records"
            " (id INTEGER PRIMARY KEY, name TEXT, value REAL, updated_at TEXT)"
        )
        db.executemany("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?)", rows)
    return len(rows)


def retryable_status(status: int) -> bool:
    return status == 429 or status >= 500


def backoff_delay(attempt: int, rng: random.Random) -> float:
    """The wait before retry ``attempt + 1``: flowcore.http_retry's backoff, by hand."""
    return min(RETRY_MAX_DELAY, RETRY_BASE * 2.0**attempt) * (1 - rng.random())


@dataclass
class Outcome:
    """What one run produced, to check both sides did the same work."""

    pages: int
    records: int
    written: int
    retries: int = 0
    fetch_s: float = 0.0  # from the start until every page was fetched and collected


# -- raw asyncio + httpx ----------------------------------------------------------------------


async def raw_ingest(
    url: str, pages: int, concurrency: int, db_path: str | None, retry: bool
) -> Outcome:
    """The hand-written script: one client, a semaphore, gather, then the write."""
    started = time.perf_counter()
    room = asyncio.Semaphore(concurrency)
    rng = random.Random()
    retries = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:

        async def fetch(page: int) -> list[Record]:
            async with room:
                response = await client.get(f"{url}/records", params={"page": page})
                response.raise_for_status()
                records: list[Record] = response.json()["records"]
                return records

        async def fetch_retrying(page: int) -> list[Record]:
            nonlocal retries
            attempt = 0
            while True:
                async with room:  # a slot per attempt, not held while backing off
                    try:
                        response = await client.get(f"{url}/records", params={"page": page})
                        response.raise_for_status()
                        records: list[Record] = response.json()["records"]
                        return records
                    except httpx.HTTPStatusError as exc:
                        status = exc.response.status_code
                        if attempt >= RETRIES or not retryable_status(status):
                            raise
                        asked = exc.response.headers.get("retry-after", "")
                        delay = (
                            min(float(asked), RETRY_MAX_DELAY)
                            if asked.isdigit()
                            else backoff_delay(attempt, rng)
                        )
                    except httpx.TransportError:
                        if attempt >= RETRIES:
                            raise
                        delay = backoff_delay(attempt, rng)
                attempt += 1
                retries += 1
                await asyncio.sleep(delay)

        one = fetch_retrying if retry else fetch
        fetched = await asyncio.gather(*(one(page) for page in range(pages)))
    records = [record for page in fetched for record in page]
    fetch_s = time.perf_counter() - started
    written = await asyncio.to_thread(write_records, db_path, records) if db_path else 0
    return Outcome(len(fetched), len(records), written, retries, fetch_s)


# -- flowcore ---------------------------------------------------------------------------------


async def _get_page(api_url: str, page: int) -> list[Record]:
    response = await flowcore.http_client().get(f"{api_url}/records", params={"page": page})
    response.raise_for_status()
    records: list[Record] = response.json()["records"]
    return records


#: Under the named limit "api" (registered by the engine).
fetch_page = flowcore.task(name="fetch_page", tags=[API_LIMIT])(_get_page)
#: The same, retried by flowcore.http_retry with raw's numbers.
fetch_page_retrying = flowcore.task(
    name="fetch_page_retrying",
    tags=[API_LIMIT],
    retry=flowcore.http_retry(retries=RETRIES, base=RETRY_BASE, max=RETRY_MAX_DELAY),
)(_get_page)
#: No limit of its own: the flow's max_concurrency bounds it.
fetch_page_unlimited = flowcore.task(name="fetch_page_unlimited")(_get_page)


@flowcore.task
def store_records(db_path: str, records: list[Record]) -> int:
    """The write, as a sync task (flowcore runs it in a worker thread)."""
    return write_records(db_path, records)


async def _ingest(
    api_url: str, pages: int, db_path: str | None, task: str, marks: dict[str, float]
) -> dict[str, int]:
    fetch = {
        "limit": fetch_page,
        "retry": fetch_page_retrying,
        "unlimited": fetch_page_unlimited,
    }[task]
    fetched = await fetch.map(flowcore.unmapped(api_url), range(pages))
    records = [record for page in fetched for record in page]
    marks["fetched"] = time.perf_counter()
    written = await store_records(db_path, records) if db_path else 0
    return {"pages": len(fetched), "records": len(records), "written": written}


#: The flow under the named limit (the engine registers ``flowcore.limit("api", C)``).
ingest = flowcore.flow(name="ingest")(_ingest)


def ingest_max_concurrency(concurrency: int) -> flowcore.Flow[Any, dict[str, int]]:
    """The flow with ``@flowcore.flow(concurrency=concurrency)``."""
    made: flowcore.Flow[Any, dict[str, int]] = flowcore.flow(
        name="ingest_max_concurrency", concurrency=concurrency
    )(_ingest)
    return made


async def flowcore_ingest(
    engine: flowcore.Engine,
    flow: flowcore.Flow[Any, dict[str, int]],
    task: str,
    url: str,
    pages: int,
    db_path: str | None,
) -> Outcome:
    started = time.perf_counter()
    marks: dict[str, float] = {}
    before = engine.statistics().tasks_retried
    result = await flow(url, pages, db_path, task, marks)
    await engine.recorder.flush()  # returns once every record is written
    retries = engine.statistics().tasks_retried - before
    return Outcome(
        result["pages"], result["records"], result["written"], retries, marks["fetched"] - started
    )


# -- measuring --------------------------------------------------------------------------------


@dataclass
class Run:
    wall_s: float
    cpu_s: float  # this process's CPU time (user + system) during the run
    fetch_s: float
    records: int
    retries: int
    api: dict[str, int]  # the API's counters for this run (deltas)


@dataclass
class Side:
    scenario: str
    name: str
    pages: int
    runs: list[Run] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # runs that failed, and why

    @property
    def best(self) -> Run:
        return min(self.runs, key=lambda r: r.wall_s)

    @property
    def median_s(self) -> float:
        return statistics.median(r.wall_s for r in self.runs)

    def pages_per_s(self, wall_s: float) -> float:
        return self.pages / wall_s if wall_s > 0 else float("inf")


@dataclass
class Scenario:
    name: str
    pages: int
    api: dict[str, Any]  # FakeRecordsAPI options
    retry: bool
    sides: dict[str, Side] = field(default_factory=dict)
    api_url: str = ""

    def ratios(self, side: Side) -> tuple[float, float] | None:
        """(best, median) throughput of ``side`` over raw's; None if either has no run."""
        raw = self.sides[RAW]
        if not raw.runs or not side.runs:
            return None
        return raw.best.wall_s / side.best.wall_s, raw.median_s / side.median_s


def remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


async def timed_run(
    name: str,
    api: API,
    side: Side,
    body: Callable[[str | None], Coroutine[Any, Any, Outcome]],
    folder: Path,
    write: bool,
    expected_records: int,
) -> Run:
    db = folder / f"records-{len(side.runs)}-{name.split()[0]}.db"
    db.unlink(missing_ok=True)
    gc.collect()
    before = api.stats()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    outcome = await body(str(db) if write else None)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    counters = _delta(api.stats(), before)
    problems = []
    if outcome.records != expected_records:
        problems.append(f"collected {outcome.records} records, expected {expected_records}")
    if write:
        with closing(sqlite3.connect(db)) as conn:
            (rows,) = conn.execute("SELECT COUNT(*) FROM records").fetchone()
        if rows != expected_records or outcome.written != expected_records:
            problems.append(f"wrote {outcome.written} ({rows} in the table)")
        db.unlink()
    if counters["served_pages"] != side.pages:
        problems.append(f"the API served {counters['served_pages']} pages, not {side.pages}")
    if problems:
        raise RuntimeError(f"{name}: " + "; ".join(problems))
    return Run(wall, cpu, outcome.fetch_s, outcome.records, outcome.retries, counters)


async def measure(
    scenario: Scenario,
    api: API,
    concurrency: int,
    repeat: int,
    variants: list[str],
    write: bool,
    page_size: int,
    folder: Path,
    progress: Callable[[str], None],
) -> None:
    url = api.url
    pages = scenario.pages
    expected = pages * page_size
    retry = scenario.retry
    maxconc_flow = ingest_max_concurrency(concurrency)

    def raw_body(n: int) -> Callable[[str | None], Coroutine[Any, Any, Outcome]]:
        def body(db: str | None) -> Coroutine[Any, Any, Outcome]:
            return raw_ingest(url, n, concurrency, db, retry)

        return body

    def flowcore_body(
        variant: str, n: int, engine: flowcore.Engine
    ) -> Callable[[str | None], Coroutine[Any, Any, Outcome]]:
        def body(db: str | None) -> Coroutine[Any, Any, Outcome]:
            if variant == FC_LIMIT:
                task = "retry" if retry else "limit"
                return flowcore_ingest(engine, ingest, task, url, n, db)
            return flowcore_ingest(engine, maxconc_flow, "unlimited", url, n, db)

        return body

    names = [RAW, *variants]
    for name in names:
        scenario.sides[name] = Side(scenario.name, name, pages)

    engines_opened = 0

    async def one(name: str, n: int, timed: bool) -> None:
        nonlocal engines_opened
        side = scenario.sides[name]
        if name == RAW:
            body = raw_body(n)
            if not timed:
                await body(None)
                return
            side.runs.append(await timed_run(name, api, side, body, folder, write, expected))
            return
        engines_opened += 1
        engine_db = folder / f"flowcore-{scenario.name}-{engines_opened}.db"
        limits = [flowcore.limit(API_LIMIT, concurrency)] if name == FC_LIMIT else []
        try:
            async with flowcore.Engine(store=engine_db, limits=limits) as engine:
                body = flowcore_body(name, n, engine)
                if timed:
                    run = await timed_run(name, api, side, body, folder, write, expected)
                    side.runs.append(run)
                else:
                    await body(None)
        finally:
            remove_database(engine_db)

    async def attempt(name: str, n: int, timed: bool, label: str) -> None:
        """One run; a failure is recorded on its side and shown in the table, not raised."""
        try:
            await one(name, n, timed)
        except Exception as exc:
            scenario.sides[name].errors.append(f"{label}: {type(exc).__name__}: {exc}")

    progress(f"{scenario.name}: warming up")
    for name in names:
        await attempt(name, min(pages, WARMUP_PAGES), False, "warm-up")
    for i in range(repeat):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            progress(f"{scenario.name}: {name}, run {i + 1} of {repeat}")
            await attempt(name, pages, True, f"run {i + 1}")


# -- profiling --------------------------------------------------------------------------------


@dataclass
class Profile:
    side: str
    total_s: float  # own time of every profiled function (this thread only)
    by_package: dict[str, float]  # own time per package (see package_of)
    top: str  # pstats' top functions by own time


def package_of(filename: str) -> str:
    """Which package a profiled function belongs to, from its file name."""
    if filename == "~":
        return "C functions (builtins, uvloop, msgspec, sockets)"
    path = filename.replace(os.sep, "/")
    if "/site-packages/" in path:
        return path.split("/site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if "/flowcore/" in path:
        return "flowcore"
    if path.endswith("benchmarks/ingest.py"):
        return "this script"
    if "/lib/python3" in path:
        module = path.split("/lib/python3", 1)[1].split("/", 2)[1]
        return f"stdlib {module.removesuffix('.py')}"
    return "other"


async def profile_runs(
    api: API, pages: int, concurrency: int, write: bool, folder: Path, top: int
) -> list[Profile]:
    """One raw and one flowcore (named limit) run under cProfile, after the timed runs.

    cProfile sees the event loop's thread only: SQLite work in aiosqlite's thread
    and the records write in a worker thread are not in it.
    """
    out = []
    db = folder / "profile-records.db"
    for name in (RAW, FC_LIMIT):
        remove_database(db)
        profiler = cProfile.Profile()
        if name == RAW:
            profiler.enable()
            await raw_ingest(api.url, pages, concurrency, str(db) if write else None, False)
            profiler.disable()
        else:
            engine_db = folder / "profile-flowcore.db"
            async with flowcore.Engine(
                store=engine_db, limits=[flowcore.limit(API_LIMIT, concurrency)]
            ) as engine:
                profiler.enable()
                await flowcore_ingest(
                    engine, ingest, "limit", api.url, pages, str(db) if write else None
                )
                profiler.disable()
            remove_database(engine_db)
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        by_package: dict[str, float] = {}
        entries: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
        for (filename, _line, _function), (_cc, _nc, own, _cum, _callers) in entries.items():
            package = package_of(filename)
            by_package[package] = by_package.get(package, 0.0) + own
        stats.sort_stats("tottime").print_stats(top)
        out.append(Profile(name, sum(by_package.values()), by_package, text.getvalue()))
    return out


def profile_table(profiles: list[Profile], pages: int) -> Table:
    table = Table(title=f"where the time goes: cProfile own time, one run of {pages:,} pages")
    table.add_column("package", no_wrap=True)
    for p in profiles:
        table.add_column(f"{p.side} s", justify="right")
    if len(profiles) == 2:
        table.add_column("difference, µs/page", justify="right")
    packages = sorted(
        {k for p in profiles for k in p.by_package},
        key=lambda k: -max(p.by_package.get(k, 0.0) for p in profiles),
    )
    for package in [*packages, "total"]:
        values = [
            p.total_s if package == "total" else p.by_package.get(package, 0.0) for p in profiles
        ]
        if package != "total" and max(values) < 0.005 * max(p.total_s for p in profiles):
            continue  # under 0.5% on both sides
        row = [package, *(f"{v:.2f}" for v in values)]
        if len(values) == 2:
            row.append(f"{(values[1] - values[0]) / pages * 1e6:+,.0f}")
        table.add_row(*row)
    return table


# -- reporting --------------------------------------------------------------------------------


def environment(loop_name: str) -> dict[str, Any]:
    return {**overhead.environment(loop_name), "httpx": httpx.__version__,
            "load_average": os.getloadavg()}  # fmt: skip


def make_table(scenarios: list[Scenario], repeat: int, page_size: int) -> Table:
    table = Table(title=f"ingestion: flowcore vs raw asyncio + httpx (best of {repeat})")
    table.add_column("scenario", no_wrap=True)
    table.add_column("side", no_wrap=True)
    table.add_column("pages", justify="right")
    table.add_column("records", justify="right")
    table.add_column("wall s best", justify="right")
    table.add_column("wall s median", justify="right")
    table.add_column("pages/s", justify="right")
    table.add_column("records/s", justify="right")
    table.add_column("ratio to raw best", justify="right")
    table.add_column("ratio median", justify="right")
    table.add_column("CPU ms/page", justify="right")
    table.add_column("API CPU", justify="right")
    table.add_column("fetch s", justify="right")
    table.add_column("API requests (503/429)", justify="right")
    table.add_column("retries", justify="right")
    for scenario in scenarios:
        for side in scenario.sides.values():
            failed = f"{len(side.errors)} failed" if side.errors else ""
            if not side.runs:
                table.add_row(scenario.name, side.name, f"{side.pages:,}", "-", failed)
                continue
            best = side.best
            ratios = scenario.ratios(side)
            ratio_text = ratio_median_text = "-"
            if ratios is not None:
                mark = (
                    ""
                    if side.name == RAW or scenario.retry
                    else (" ✓" if ratios[0] >= TARGET else " ✗")
                )
                ratio_text, ratio_median_text = f"{ratios[0]:.2f}{mark}", f"{ratios[1]:.2f}"
            api = best.api
            requests = f"{api['requests']:,}"
            if scenario.retry:
                requests += f" ({api['failures_503']}/{api['throttled_429']})"
            table.add_row(
                scenario.name,
                side.name,
                f"{side.pages:,}",
                f"{side.pages * page_size:,}",
                f"{best.wall_s:.2f}" + (f" ({failed})" if failed else ""),
                f"{side.median_s:.2f}",
                f"{side.pages_per_s(best.wall_s):,.0f}",
                f"{best.records / best.wall_s:,.0f}",
                ratio_text,
                ratio_median_text,
                f"{best.cpu_s / side.pages * 1e3:.2f}",
                f"{api['cpu_ms'] / 1e3 / best.wall_s:.0%}" if "cpu_ms" in api else "-",
                f"{best.fetch_s:.2f}",
                requests,
                f"{best.retries:,}",
            )
    return table


def side_json(scenario: Scenario, side: Side) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": [asdict(r) for r in side.runs], "errors": side.errors}
    ratios = scenario.ratios(side)
    if side.runs:
        out.update(
            best_wall_s=side.best.wall_s,
            median_wall_s=side.median_s,
            pages_per_s=side.pages_per_s(side.best.wall_s),
        )
    if ratios is not None:
        out.update(ratio_to_raw=ratios[0], ratio_to_raw_median=ratios[1])
    return out


def positive(text: str) -> int:
    value = int(text.replace("_", ""))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=positive, default=10_000, help="pages (default 10,000)")
    parser.add_argument("--page-size", type=positive, default=100, help="records per page")
    parser.add_argument(
        "--concurrency", type=positive, default=50, help="requests in flight (default 50)"
    )
    parser.add_argument("--latency", type=float, default=0.01, help="API seconds per request")
    parser.add_argument("--repeat", type=positive, default=3, help="timed runs per side")
    parser.add_argument(
        "--api",
        choices=["process", "thread"],
        default="process",
        help="serve the API from a subprocess (default) or a thread of this process",
    )
    parser.add_argument(
        "--scenarios", default="clean,flaky", help="comma-separated: clean, flaky (default both)"
    )
    parser.add_argument(
        "--variants",
        default="limit,max_concurrency",
        help="flowcore variants: limit, max_concurrency (default both; flaky runs `limit`)",
    )
    parser.add_argument("--flaky-pages", type=positive, default=2_000, help="pages when flaky")
    parser.add_argument("--failure-rate", type=float, default=0.1, help="503s when flaky")
    parser.add_argument(
        "--api-rate",
        type=float,
        default=None,
        help="requests/s before 429s when flaky (default: 75%% of raw's clean pages/s, else 200)",
    )
    parser.add_argument("--no-write", action="store_true", help="skip the SQLite write, both sides")
    parser.add_argument("--profile", action="store_true", help="also profile one run of each side")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    scenario_names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if not scenario_names or set(scenario_names) - {"clean", "flaky"}:
        parser.error(f"--scenarios: clean and/or flaky, got {args.scenarios!r}")
    variant_names = {"limit": FC_LIMIT, "max_concurrency": FC_MAXCONC}
    wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not wanted or set(wanted) - set(variant_names):
        parser.error(f"--variants: limit and/or max_concurrency, got {args.variants!r}")
    variants = [variant_names[v] for v in wanted]
    if not args.latency >= 0:
        parser.error("--latency must be >= 0")

    console = Console()
    if not console.is_terminal:  # piped or redirected: do not squeeze the table
        console = Console(width=200)
    factory, loop_name = overhead.loop_factory()
    env = environment(loop_name)
    write = not args.no_write
    console.print(
        f"[bold]flowcore ingestion benchmark[/bold]  {env['date']}\n"
        f"Python {env['python']} ({env['implementation']}), flowcore {env['flowcore']}, "
        f"httpx {env['httpx']}, SQLite {env['sqlite']}, commit {env['commit'] or 'unknown'}\n"
        f"machine {env['machine']}, {env['cpus']} CPUs, {env['platform']}, "
        f"load average {env['load_average'][0]:.2f} at start\n"
        f"event loop: {env['event_loop']} (same for raw and flowcore)\n"
        f"API: examples/api_server.py in a {args.api} on 127.0.0.1, latency "
        f"{args.latency * 1e3:g} ms, {args.page_size} records/page; concurrency "
        f"{args.concurrency}; records {'written to SQLite' if write else 'not written'}; "
        f"best of {args.repeat}, order alternating"
    )

    scenarios: list[Scenario] = []
    profiles: list[Profile] = []
    with (
        console.status("measuring...") as status,
        asyncio.Runner(loop_factory=factory) as runner,
        tempfile.TemporaryDirectory(prefix="flowcore-ingest-") as tmp,
    ):
        folder = Path(tmp)

        def progress(text: str) -> None:
            status.update(f"measuring {text}...")

        for name in scenario_names:
            flaky = name == "flaky"
            pages = args.flaky_pages if flaky else args.pages
            options: dict[str, Any] = {
                "total_records": pages * args.page_size,
                "page_size": args.page_size,
                "latency": args.latency,
                "failure_rate": args.failure_rate if flaky else 0.0,
                "rate_limit": None,
            }
            if flaky:
                rate = args.api_rate
                if rate is None:
                    clean = next((s for s in scenarios if s.name == "clean"), None)
                    rate = 200.0
                    if clean is not None and clean.sides[RAW].runs:
                        raw_best = clean.sides[RAW]
                        rate = 0.75 * raw_best.pages_per_s(raw_best.best.wall_s)
                options["rate_limit"] = rate
            scenario = Scenario(name, pages, options, flaky)
            api = start_api(args.api, options)
            try:
                scenario.api_url = api.url
                runner.run(
                    measure(
                        scenario,
                        api,
                        args.concurrency,
                        args.repeat,
                        [FC_LIMIT] if flaky else variants,
                        write,
                        args.page_size,
                        folder,
                        progress,
                    )
                )
                if args.profile and not flaky:
                    progress("profiling")
                    profiles = runner.run(
                        profile_runs(api, pages, args.concurrency, write, folder, 25)
                    )
            finally:
                api.close()
            scenarios.append(scenario)

    console.print(make_table(scenarios, args.repeat, args.page_size))
    load = os.getloadavg()[0]
    env["load_average_end"] = load
    console.print(
        'ratio = flowcore pages/s ÷ raw pages/s (best runs; "ratio median": median runs); '
        f"target >= {TARGET:.2f} on the clean scenario. CPU ms/page = this process's CPU time "
        "÷ pages (the API's is not counted when it runs in a subprocess). API CPU = the API "
        "subprocess's CPU time ÷ wall (100% = one core busy: the server would be the bottleneck). "
        "fetch s = until "
        "every page was fetched and collected, before the write. API requests: what the "
        "server counted during the best run (clean: one per page, on both sides). "
        f"Load average at the end: {load:.2f}."
    )
    for scenario in scenarios:
        for side in scenario.sides.values():
            for error in side.errors:
                console.print(f"[red]{scenario.name}, {side.name}, {error}[/red]", highlight=False)
    clean = next((s for s in scenarios if s.name == "clean"), None)
    if clean is not None:
        raw = clean.sides[RAW]
        for side in clean.sides.values():
            ratios = clean.ratios(side)
            if side.name == RAW or ratios is None:
                continue
            ratio = ratios[0]
            verdict = "meets" if ratio >= TARGET else "misses"
            extra = (side.best.cpu_s - raw.best.cpu_s) / clean.pages * 1e6
            console.print(
                f"{side.name}: {ratio:.2f} of raw's throughput, {verdict} the {TARGET:.0%} "
                f"target; {extra:+,.0f} µs of client CPU per page over raw"
            )
    if profiles:
        console.print(profile_table(profiles, args.pages))
        console.print(
            "Own time of the functions of each package, in the event loop's thread (the SQLite "
            "writes in other threads are not counted); cProfile inflates Python-heavy code."
        )
        for p in profiles:
            console.print(f"\n[bold]cProfile, one run: {p.side}[/bold] (top functions by own time)")
            console.print(p.top, markup=False, highlight=False)
    if args.json:
        payload = {
            "environment": env,
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "scenarios": [
                {
                    "name": s.name,
                    "pages": s.pages,
                    "api_options": s.api,
                    "sides": {name: side_json(s, side) for name, side in s.sides.items()},
                }
                for s in scenarios
            ],
            "profiles": [asdict(p) for p in profiles],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
