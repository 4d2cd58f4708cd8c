"""The README's screenshot of the web UI: an asset's page (its lineage, coloured by status,
and the heat map of its hourly partitions), from a demo store built here.

Run it with ``python3 examples/ui/screenshot.py`` (on a fresh machine it first sets up
``.venv`` with the test tools, Playwright among them). It needs Chromium (``apt-get
install chromium``, or set ``FLOWCORE_CHROMIUM`` to a browser's path). It builds the demo
in a temporary folder (nothing lands in ``~/.flowcore``):

* ``events/raw`` → ``events/clean`` (a blocking check) → ``events/hourly`` (one partition
  per hour of the last week) → ``reports/daily`` (a day reads its hours) →
  ``reports/dashboard``, and ``ml/features`` → ``ml/model`` from the clean events;
* everything materialised, then the raw events again with new data and the clean
  events from them, and the last two days of hours again: the older hours are stale
  (their upstream changed), the last twelve were never built (missing), and what reads
  them is stale;

then starts ``flowcore ui`` on a free port of 127.0.0.1, opens ``/assets/events/hourly``
in headless Chromium, waits for the lineage graph, and saves
``examples/ui/screenshot.png`` (``--out`` to write elsewhere, ``--path`` for another
page, e.g. ``--path /runs``).
"""

# The bootstrap block below runs before any other import, so it stays exactly as written.
# ruff: noqa: E401, E501, I001
# fmt: off
if __name__ == "__main__":  # set-up on a fresh machine: create .venv, install flowcore, re-run inside it
    import pathlib, sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / ".ci"))
    import bootstrap
    bootstrap.ensure_venv("dev")  # the test tools: Playwright drives the browser
# fmt: on

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import httpx

import flowcore
from flowcore.assets import (
    AssetGraph,
    CheckResult,
    DailyPartitions,
    Freshness,
    HourlyPartitions,
    Output,
    TimeWindowMapping,
    asset,
    asset_check,
    materialize_async,
)

HERE = Path(__file__).resolve().parent
#: The week of hours the demo's hourly asset covers, to the hour before now.
START = (datetime.now(UTC) - timedelta(days=7)).replace(minute=0, second=0, microsecond=0)
HOURS = HourlyPartitions(START.strftime("%Y-%m-%dT%H:00"))
DAYS = DailyPartitions(START.date().isoformat())
VERSION = "FLOWCORE_SCREENSHOT_DATA"


@asset(key="events/raw", group="ingest", freshness=Freshness(max_lag=timedelta(hours=6)))
def raw() -> list[int]:
    return list(range(int(os.environ.get(VERSION, "100"))))


@asset(key="events/clean", group="warehouse", ins={"rows": "events/raw"})
def clean(rows: list[int]) -> Output[list[int]]:
    return Output(sorted(set(rows)), metadata={"rows": len(rows)})


@asset_check(asset=clean)
def no_gaps(rows: list[int]) -> CheckResult:
    return CheckResult(rows == list(range(len(rows))), metadata={"rows": len(rows)})


@asset(key="events/hourly", group="warehouse", partitions=HOURS, ins={"rows": "events/clean"})
def hourly(rows: list[int], partition_key: str) -> int:
    return len(rows) + int(partition_key[11:13])


@asset(
    key="reports/daily",
    group="reports",
    partitions=DAYS,
    ins={"hours": "events/hourly"},
    partition_mapping={"hours": TimeWindowMapping()},
)
def daily(hours: dict[str, int], partition_key: str) -> int:
    return sum(hours.values())


@asset(key="reports/dashboard", group="reports", ins={"days": "reports/daily"})
def dashboard(days: dict[str, int]) -> str:
    return f"{len(days)} days"


@asset(key="ml/features", group="ml", ins={"rows": "events/clean"})
def features(rows: list[int]) -> list[int]:
    return rows[:10]


@asset(key="ml/model", group="ml", ins={"features": "ml/features"})
def model(features: list[int]) -> int:
    return sum(features)


GRAPH = AssetGraph([raw, clean, no_gaps, hourly, daily, dashboard, features, model])


async def build_demo() -> None:
    """The demo's store in ``$FLOWCORE_HOME`` (see the module docstring)."""
    now = datetime.now(UTC)
    last = HOURS.count(until=now) - 1
    built_until = HOURS.key_of(last - 12)
    async with flowcore.Engine():
        await materialize_async(
            ["events/raw", "events/clean", "ml/features", "ml/model"], graph=GRAPH
        )
        await materialize_async(
            ["events/hourly"], graph=GRAPH, partitions=(HOURS.key_of(0), built_until)
        )
        done_days = DAYS.count(until=now) - 1
        await materialize_async(
            ["reports/daily"], graph=GRAPH, partitions=(DAYS.key_of(0), DAYS.key_of(done_days - 1))
        )
        os.environ[VERSION] = "120"  # new raw data: what read the old is stale now
        try:
            for key in ("events/raw", "events/clean"):
                await materialize_async([key], graph=GRAPH, only_stale=False)
        finally:
            del os.environ[VERSION]
        await materialize_async(
            ["events/hourly"], graph=GRAPH, partitions=(HOURS.key_of(last - 48), built_until)
        )


def chromium() -> str:
    found = os.environ.get("FLOWCORE_CHROMIUM") or shutil.which("chromium")
    if not found:
        sys.exit("needs Chromium: apt-get install chromium, or set FLOWCORE_CHROMIUM")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def capture(home: Path, path: str, out: Path) -> None:
    try:
        from playwright.sync_api import sync_playwright  # a test tool: the dev extra
    except ImportError:
        sys.exit("needs Playwright: pip install playwright (or pip install -e '.[dev]')")

    port = free_port()
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
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit("flowcore ui did not start")
                time.sleep(0.05)
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), args=args)
            page = browser.new_page(viewport={"width": 1100, "height": 830})
            page.goto(url + path)
            for box in ("#lineage", "#graph"):
                if page.locator(box).count():
                    page.wait_for_selector(f"{box}[data-ready]", timeout=30_000)
            page.screenshot(path=str(out), type="png")
            browser.close()
    finally:
        server.terminate()
        server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Capture the web UI for the README.")
    parser.add_argument("--path", default="/assets/events/hourly", help="the page to capture")
    parser.add_argument("--out", type=Path, default=HERE / "screenshot.png", help="the PNG")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        os.environ["FLOWCORE_HOME"] = folder
        anyio.run(build_demo)
        capture(Path(folder), args.path, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
