"""Assets on the ingestion demo: records → a cleaned table → daily aggregates → a report.

The records are the ingestion demo's (``examples/api_server.py``, a local stand-in for a
flaky paginated API: latency and transient ``503``s), fetched page by page by a task
retried with ``flowcore.http_retry``. On them, four assets:

* ``raw/records`` (group ``ingest``): every record, fetched; a freshness policy says
  the raw data must be at most an hour old (``flowcore assets ls`` shows it overdue
  after that);
* ``warehouse/cleaned``: the records typed and de-duplicated, with a **blocking**
  check (``ids_unique``): if it fails, the aggregates and the report are not built
  from bad data in that run, and ``flowcore assets why`` names the check;
* ``warehouse/daily``: per-day aggregates, one partition per day
  (``DailyPartitions``), each materialised, versioned and checked on its own;
* ``report``: a summary over every day (it reads all the daily partitions).

Run it with ``python3 examples/assets/pipeline.py`` (on a fresh machine it first sets
up ``.venv``): it materialises everything, materialises again (nothing is rebuilt:
nothing changed), and prints ``flowcore assets ls`` and ``flowcore assets lineage
report``. ``--corrupt`` feeds a duplicated record to show the blocking check at work.
The same file is what the command line takes to materialise by itself::

    flowcore assets materialize -f examples/assets/pipeline.py --stale
    flowcore assets backfill -f examples/assets/pipeline.py warehouse/daily \\
        --from 2024-01-01 --to 2024-01-10
"""

# The bootstrap block below runs before any other import, so it stays exactly as written.
# ruff: noqa: E401, E501, I001
# fmt: off
if __name__ == "__main__":  # set-up on a fresh machine: create .venv, install flowcore, re-run inside it
    import pathlib, sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / ".ci"))
    import bootstrap
    bootstrap.ensure_venv()
# fmt: on

import argparse
import asyncio
import os
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/, for api_server
from api_server import FakeRecordsAPI

import flowcore
from flowcore.assets import (
    AssetGraph,
    CheckResult,
    DailyPartitions,
    Freshness,
    Output,
    asset,
    asset_check,
    materialize,
)
from flowcore.cli import cli

Record = dict[str, Any]

TOTAL_RECORDS = 2_000  # 17 minutes apart from 2024-01-01: 24 days of data
PAGE_SIZE = 100
DAYS = DailyPartitions("2024-01-01", end="2024-01-25")
#: Set by ``--corrupt`` (and read by the records asset, in this process or another).
CORRUPT = "FLOWCORE_EXAMPLE_CORRUPT"


@flowcore.task(retry=flowcore.http_retry(retries=8, base=0.02, max=1.0))
async def fetch_page(api_url: str, page: int) -> list[Record]:
    """One page of records; 503s, 429s and connection errors are retried."""
    response = await flowcore.http_client().get(f"{api_url}/records", params={"page": page})
    response.raise_for_status()
    records: list[Record] = response.json()["records"]
    return records


@asset(key="raw/records", group="ingest", freshness=Freshness(max_lag=timedelta(hours=1)))
async def records() -> list[Record]:
    """Every record of the API (started here: a stand-in that needs no network)."""
    with FakeRecordsAPI(
        total_records=TOTAL_RECORDS, page_size=PAGE_SIZE, latency=0.005, failure_rate=0.1
    ) as api:
        pages = await asyncio.gather(*(fetch_page(api.url, p) for p in range(api.pages)))
    rows = [record for page in pages for record in page]
    if os.environ.get(CORRUPT):
        rows.append(dict(rows[0]))  # a duplicate, as a buggy upstream would send
    return rows


@asset(key="warehouse/cleaned", group="warehouse", ins={"raw": "raw/records"})
def cleaned(raw: list[Record]) -> Output[list[Record]]:
    """Typed rows with the day each belongs to, in id order."""
    rows = [
        {
            "id": int(r["id"]),
            "value": float(r["value"]),
            "day": datetime.fromisoformat(r["updated_at"]).date().isoformat(),
        }
        for r in raw
    ]
    rows.sort(key=lambda r: r["id"])
    return Output(rows, metadata={"rows": len(rows)})


@asset_check(asset=cleaned)
def ids_unique(rows: list[Record]) -> CheckResult:
    """The contract the aggregates rely on: one row per id (blocking: severity error)."""
    ids = [r["id"] for r in rows]
    duplicates = len(ids) - len(set(ids))
    return CheckResult(duplicates == 0, metadata={"duplicates": duplicates})


@asset(
    key="warehouse/daily",
    group="warehouse",
    partitions=DAYS,
    ins={"rows": "warehouse/cleaned"},
)
def daily(rows: list[Record], partition_key: str) -> dict[str, Any]:
    """The day's count, total and mean of values (one partition per day)."""
    values = [r["value"] for r in rows if r["day"] == partition_key]
    total = round(sum(values), 2)
    mean = round(total / len(values), 2) if values else None
    return {"day": partition_key, "count": len(values), "total": total, "mean": mean}


@asset(ins={"days": "warehouse/daily"})
def report(days: dict[str, dict[str, Any]]) -> str:
    """A line per day, and the busiest one."""
    lines = [f"{d['day']}: {d['count']:3d} records, mean {d['mean']}" for d in days.values()]
    busiest = max(days.values(), key=lambda d: d["total"])
    return "\n".join([*lines, f"busiest day: {busiest['day']} ({busiest['total']})"])


GRAPH = AssetGraph([records, cleaned, ids_unique, daily, report])


def _cli(*args: str) -> None:
    """``flowcore ARGS`` in this process (what the command line would print)."""
    print(f"$ flowcore {' '.join(args)}")
    try:
        cli.main(list(args), prog_name="flowcore", standalone_mode=False)
    except SystemExit as exc:  # an exit code of a subcommand: the output is what matters
        if exc.code:
            print(f"(exit {exc.code})")
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Materialise the example's assets.")
    parser.add_argument(
        "--corrupt", action="store_true", help="send a duplicate record: the check blocks"
    )
    args = parser.parse_args(argv)
    if args.corrupt:
        os.environ[CORRUPT] = "1"
    started = time.perf_counter()
    first = materialize(GRAPH.order, graph=GRAPH, only_stale=not args.corrupt)
    elapsed = time.perf_counter() - started
    counts = first.counts
    print(
        f"materialized {counts['materialized']} assets and partitions in {elapsed:.2f} s"
        f" (skipped {counts['skipped']} fresh, {counts['failed_checks']} failed a check,"
        f" {counts['blocked']} blocked); run {first.run_id[:8]}"
    )
    if not first.ok:
        for key, partition, reason in (*first.failed_checks, *first.blocked, *first.failed)[:5]:
            print(f"  {key}{f'[{partition}]' if partition else ''}: {reason}")
    else:
        again = materialize(GRAPH.order, graph=GRAPH)
        print(
            f"again, only what is stale: {again.counts['materialized']} materialized, "
            f"{again.counts['skipped']} skipped as fresh"
        )
    print()
    here = str(Path(__file__).resolve())
    _cli("assets", "ls", "-f", here)
    _cli("assets", "lineage", "report", "-f", here)
    if not first.ok:
        _cli("assets", "why", "warehouse/cleaned", "-f", here)
    return 0 if first.ok or args.corrupt else 1


if __name__ == "__main__":
    sys.exit(main())
