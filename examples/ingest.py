"""Ingest a paginated, throttling, flaky HTTP API into SQLite with flowcore.

This is the demo flow. It shows, in a few lines:

* an async task (``fetch_page``) mapped over every page, running under a named
  limit (``flowcore.limit``: at most 16 in flight, 250 started a second) and
  retried by ``flowcore.http_retry``: ``429`` answers wait what ``Retry-After``
  asks, ``503`` answers back off exponentially with jitter;
* ``flowcore.http_client()``: one ``httpx.AsyncClient`` (one connection pool)
  shared by every fetch of the run, closed when the run ends;
* a sync task (``store_records``) that flowcore runs in a worker thread, fanned
  out with ``.submit()`` and collected with ``flowcore.wait``;
* every run, task, attempt and retry recorded, to inspect afterwards with
  ``flowcore runs show <run id>`` and ``flowcore trace <run id>``.

The API is ``examples/api_server.py``, a local stand-in started by this script,
so nothing here needs the network. Run it with ``python3 examples/ingest.py``
(``--help`` for the knobs); on a fresh machine it first sets up ``.venv``.
"""

# The bootstrap block below runs before any other import, so it stays exactly as written.
# ruff: noqa: E401, E501, I001
# fmt: off
if __name__ == "__main__":  # set-up on a fresh machine: create .venv, install flowcore, re-run inside it
    import pathlib, sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / ".ci"))
    import bootstrap
    bootstrap.ensure_venv()
# fmt: on

import argparse
import math
import os
import sqlite3
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
from api_server import FakeRecordsAPI  # a sibling module: examples/ is on sys.path

import flowcore

Record = dict[str, Any]

STORE_BATCH = 500  # records per store_records call
API_LIMIT = "records-api"  # the named limit every fetch runs under


@flowcore.task(tags=[API_LIMIT], retry=flowcore.http_retry(retries=8, base=0.05, max=2.0))
async def fetch_page(api_url: str, page: int) -> list[Record]:
    """Fetch one page; 429 (honouring Retry-After), 503 and connection errors are retried."""
    response = await flowcore.http_client().get(f"{api_url}/records", params={"page": page})
    response.raise_for_status()
    records: list[Record] = response.json()["records"]
    return records


@flowcore.task
def store_records(db_path: str, records: list[Record]) -> int:
    """Upsert records into SQLite in one transaction; returns the rows written.

    A plain sync function: flowcore runs it in a worker thread, so the blocking
    sqlite3 calls do not stall the event loop.
    """
    rows = [(r["id"], r["name"], r["value"], r["updated_at"]) for r in records]
    with closing(sqlite3.connect(db_path, timeout=30)) as db, db:  # `with db` commits
        db.execute(
            "CREATE TABLE IF NOT EXISTS records"
            " (id INTEGER PRIMARY KEY, name TEXT, value REAL, updated_at TEXT)"
        )
        db.executemany("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?)", rows)
    return len(rows)


@flowcore.flow
async def ingest(api_url: str, db_path: str, pages: int) -> dict[str, Any]:
    """Fetch every page under the API's limit, then store the records in parallel batches."""
    fetched = await fetch_page.map([api_url] * pages, range(pages))
    records = [record for page in fetched for record in page]
    batches = [records[i : i + STORE_BATCH] for i in range(0, len(records), STORE_BATCH)]
    futures = [store_records.submit(db_path, rows) for rows in batches]
    counts = await flowcore.wait(futures)
    return {"run_id": flowcore.current_run().id, "pages": pages, "records": sum(counts)}


async def run_with_progress(
    api_url: str, db_path: str, pages: int, concurrency: int, rate: float
) -> tuple[dict[str, Any], flowcore.EngineStatistics]:
    """Run the flow under the API's limits, showing progress on a terminal."""
    limits = [flowcore.limit(API_LIMIT, concurrency, rate=rate)]
    async with flowcore.Engine(limits=limits) as engine:

        async def progress() -> None:
            while True:
                s = engine.statistics()
                print(
                    f"\r  {s.tasks_completed}/{pages + math.ceil(pages / 5)} task runs done, "
                    f"{s.tasks_retried} retried",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
                await anyio.sleep(0.2)

        async with anyio.create_task_group() as tg:
            if sys.stderr.isatty():
                tg.start_soon(progress)
            result = await ingest(api_url, db_path, pages)
            tg.cancel_scope.cancel()
        if sys.stderr.isatty():
            print(file=sys.stderr)
        return result, engine.statistics()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Ingest a flaky paginated API into SQLite.")
    parser.add_argument("--records", type=int, default=10_000, help="records the API serves")
    parser.add_argument("--page-size", type=int, default=100, help="records per page")
    parser.add_argument(
        "--failure-rate", type=float, default=0.2, help="fraction of requests answered 503"
    )
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per request")
    parser.add_argument(
        "--api-rate", type=float, default=60, help="requests/s the API serves before 429s"
    )
    parser.add_argument("--concurrency", type=int, default=16, help="fetches in flight at most")
    parser.add_argument("--rate", type=float, default=250, help="fetches started per second")
    args = parser.parse_args(argv)
    if args.records < 1:
        parser.error(f"--records must be at least 1, got {args.records}")
    try:
        api = FakeRecordsAPI(
            total_records=args.records,
            page_size=args.page_size,
            latency=args.latency,
            failure_rate=args.failure_rate,
            rate_limit=args.api_rate,
        )
    except ValueError as exc:
        parser.error(str(exc))

    home = Path(os.environ.get("FLOWCORE_HOME") or Path.home() / ".flowcore")
    db_path = home / "examples" / "ingest.db"
    db_path.parent.mkdir(parents=True, exist_ok=True)
    db_path.unlink(missing_ok=True)  # start empty, so the count below checks this run alone

    with api:
        pages = math.ceil(args.records / args.page_size)
        started = time.perf_counter()
        result, engine_stats = anyio.run(
            run_with_progress, api.url, str(db_path), pages, args.concurrency, args.rate
        )
        elapsed = time.perf_counter() - started
        stats = api.stats

    with closing(sqlite3.connect(db_path)) as db:
        (rows,) = db.execute("SELECT COUNT(*) FROM records").fetchone()
    if rows != args.records or result["records"] != args.records:
        print(
            f"error: expected {args.records} records, the flow reported {result['records']}"
            f" and the table {db_path} holds {rows}",
            file=sys.stderr,
        )
        return 1

    print(
        f"ingested {rows} records from {pages} pages in {elapsed:.2f} s"
        f" ({rows / elapsed:,.0f} records/s; api answered {stats['requests']} requests,"
        f" {stats['failures_503']} transient 503s and {stats['throttled_429']} 429s;"
        f" {engine_stats.tasks_retried} retries)"
    )
    print(f"records table: {db_path}")
    print(f"inspect this run:  flowcore runs show {result['run_id'][:8]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
