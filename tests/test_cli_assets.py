"""``flowcore assets``: ls, show, lineage, why, materialize and backfill, from the store
alone and with the code (``-f FILE.py``); output escaped, 80 columns, ``--json`` stable,
bad input an ``error:`` line and exit 2."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from click.testing import CliRunner, Result
from rich.console import Console
from rich.progress import Progress, TextColumn

from flowcore import ranges
from flowcore.assets import AssetGraph, asset, on_upstream_change
from flowcore.assets.materialize import materialize_async
from flowcore.cli import cli
from flowcore.cli.assets import WIDTH, _poll
from flowcore.cli.support import parse_at
from flowcore.engine import Engine
from flowcore.records import AssetDefRecord, AssetStateRecord
from flowcore.serve import Server
from flowcore.store import Store, resolve_store
from flowcore.testing import FakeClock
from flowcore.views import assets as views

ASSETS = """
import os

import flowcore
from flowcore.assets import CheckResult, DailyPartitions, Output, asset, asset_check


@asset(group="ingest")
def raw() -> list[int]:
    return [int(x) for x in os.environ.get("TEST_RAW", "1,2,3").split(",")]


@asset(code_version=os.environ.get("TEST_CLEAN_VERSION", "1"))
def clean(raw: list[int]) -> Output[list[int]]:
    return Output(sorted(raw), metadata={"note": os.environ.get("TEST_NOTE", "ok")})


@asset_check(asset=clean)
def positive(rows: list[int]) -> CheckResult:
    return CheckResult(all(r > 0 for r in rows), metadata={"min": min(rows)})


@asset(partitions=DailyPartitions("2026-01-01", end="2026-01-06"))
def daily(clean: list[int], partition_key: str) -> int:
    return sum(clean) + int(partition_key[-2:])


@asset
def report(daily: dict[str, int]) -> int:
    return sum(daily.values())
"""

KEYS = ["clean", "daily", "raw", "report"]


@pytest.fixture
def assets_file(tmp_path: Path) -> Path:
    path = tmp_path / "assets_def.py"
    path.write_text(ASSETS)
    return path


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def ok(*args: str) -> Result:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result


def as_json(*args: str) -> Any:
    return json.loads(ok(*args, "--json").stdout)


def by_key(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["key"]: row for row in rows}


def fits(text: str) -> None:
    for line in text.splitlines():
        assert len(line) <= WIDTH, line
    assert "\x1b" not in text


# -- before anything is materialised ---------------------------------------------------------


def test_ls_with_no_store_and_no_file_creates_nothing(flowcore_home: Path) -> None:
    result = ok("assets", "ls")
    assert "no assets" in result.stdout
    assert as_json("assets", "ls") == []
    assert not (flowcore_home / "flowcore.db").exists()


def test_ls_with_the_file_shows_definitions_never_materialised(assets_file: Path) -> None:
    rows = by_key(as_json("assets", "ls", "-f", str(assets_file)))
    assert sorted(rows) == KEYS
    assert {r["status"] for r in rows.values()} == {"missing"}
    assert not any(r["synced"] for r in rows.values())
    assert rows["raw"]["group"] == "ingest"
    assert rows["daily"]["partitioned"].startswith("DailyPartitions(")


def test_the_file_can_come_from_the_environment(
    assets_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWCORE_ASSETS", str(assets_file))
    assert sorted(by_key(as_json("assets", "ls"))) == KEYS


# -- materialise, then read ------------------------------------------------------------------


def test_materialize_then_ls_show_and_lineage(assets_file: Path) -> None:
    done = as_json("assets", "materialize", "-f", str(assets_file))
    assert done["ok"] is True
    assert done["counts"]["materialized"] == 3 + 5  # raw, clean, report, 5 daily partitions
    assert set(done) == {
        "run_id", "ok", "counts", "materialized", "skipped", "failed", "failed_checks", "blocked",
    }  # fmt: skip

    # From the store alone: every definition was synced by the run.
    rows = by_key(as_json("assets", "ls"))
    assert sorted(rows) == KEYS
    assert {r["status"] for r in rows.values()} == {"fresh"}
    assert all(r["synced"] for r in rows.values())
    assert rows["daily"]["partitions"] == {
        "materialized": 5, "stale": 0, "failed_check": 0, "missing": None,
    }  # fmt: skip
    assert set(rows["raw"]) == {
        "key", "status", "cause", "last_materialized", "last_run_id", "data_version",
        "code_version", "partitions", "materializations", "group", "partitioned", "synced",
    }  # fmt: skip
    # With the code, missing partitions are counted.
    coded = by_key(as_json("assets", "ls", "-f", str(assets_file)))
    assert coded["daily"]["partitions"]["missing"] == 0

    table = ok("assets", "ls").stdout
    fits(table)
    assert "4 assets: 4 fresh" in table
    assert "partitions: 5 materialized, 0 stale" in table
    assert done["run_id"][:8] in table

    shown = as_json("assets", "show", "clean")
    assert shown["definition"]["upstream"] == [{"key": "raw", "mapping": "IdentityMapping()"}]
    assert shown["definition"]["checks"] == ["positive"]
    [m] = shown["history"]
    assert m["run_id"] == done["run_id"]
    assert m["consumed"] == [
        {"upstream": "raw", "partition": None, "data_version": rows["raw"]["data_version"]}
    ]
    assert m["metadata"]["note"] == "ok"
    [check] = shown["checks"]
    assert check["check"] == "positive" and check["passed"] and check["metadata"] == {"min": 1}
    text = ok("assets", "show", "clean").stdout
    fits(text)
    assert "positive passed" in text and "consumed raw@" in text

    tree = as_json("assets", "lineage", "report")
    up = tree["upstream"]
    assert up["key"] == "report"
    assert [c["key"] for c in up["children"]] == ["daily"]
    assert up["children"][0]["mapping"] == "AllPartitionsMapping()"
    assert up["children"][0]["children"][0]["key"] == "clean"
    drawn = ok("assets", "lineage", "report").stdout
    fits(drawn)
    assert "└── daily  fresh (0/5 stale)  <- all partitions" in drawn
    down = as_json("assets", "lineage", "raw", "--downstream", "--depth", "1")["downstream"]
    assert [c["key"] for c in down["children"]] == ["clean"]
    assert down["children"][0]["truncated"] is True


def test_show_pages_the_history(assets_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for note in ("a", "b", "c"):
        monkeypatch.setenv("TEST_NOTE", note)
        ok("assets", "materialize", "-f", str(assets_file), "raw", "clean")
    first = as_json("assets", "show", "clean", "--limit", "2")
    assert [m["metadata"]["note"] for m in first["history"]] == ["c", "b"]
    assert first["more_history"] is True
    rest = as_json("assets", "show", "clean", "--limit", "2", "--offset", "2")
    assert [m["metadata"]["note"] for m in rest["history"]] == ["a"]
    assert rest["more_history"] is False
    assert "(more: --offset 2)" in ok("assets", "show", "clean", "--limit", "2").stdout


def test_an_upstream_change_is_explained_with_both_versions(
    assets_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok("assets", "materialize", "-f", str(assets_file))
    before = by_key(as_json("assets", "ls"))["raw"]["data_version"]
    monkeypatch.setenv("TEST_RAW", "4,5,6")
    ok("assets", "materialize", "-f", str(assets_file), "raw")
    after = by_key(as_json("assets", "ls"))["raw"]["data_version"]
    assert before != after

    stale = by_key(as_json("assets", "ls", "--stale"))
    assert sorted(stale) == ["clean", "daily", "report"]
    assert stale["clean"]["cause"]["reason"] == "upstream-changed"

    why = as_json("assets", "why", "clean")
    assert why["status"] == "stale"
    assert why["cause"]["upstream"] == "raw"
    assert why["upstreams"] == [
        {"upstream": "raw", "partition": None, "consumed": before, "current": after,
         "changed": True},
    ]  # fmt: skip
    text = ok("assets", "why", "clean").stdout
    fits(text)
    assert f"data version {before[:8]} when built, now {after[:8]}" in text

    part = as_json("assets", "why", "daily", "--partition", "2026-01-03")
    assert part["status"] == "stale" and part["partition"] == "2026-01-03"
    assert part["materialization"]["partition"] == "2026-01-03"

    # --stale rebuilds what is stale and nothing else; then all is fresh.
    again = as_json("assets", "materialize", "-f", str(assets_file), "--stale")
    assert again["ok"] and again["counts"]["skipped"] == 1  # raw
    assert as_json("assets", "ls", "--stale") == []


def test_a_code_change_not_yet_synced_shows_with_the_code(
    assets_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok("assets", "materialize", "-f", str(assets_file))
    monkeypatch.setenv("TEST_CLEAN_VERSION", "2")
    # The store alone cannot know: the code changed after the run.
    assert by_key(as_json("assets", "ls"))["clean"]["status"] == "fresh"
    rows = by_key(as_json("assets", "ls", "-f", str(assets_file)))
    assert rows["clean"]["status"] == "stale"
    assert rows["clean"]["cause"] == {"reason": "code-changed", "from": "1", "to": "2",
                                      "synced": False}  # fmt: skip
    assert rows["clean"]["synced"] is False
    why = ok("assets", "why", "clean", "-f", str(assets_file)).stdout
    assert "its code changed: version 1 -> 2 (not synced yet" in why


def test_a_failing_blocking_check_exits_1_and_is_explained(
    assets_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_RAW", "-1,2")
    result = invoke("assets", "materialize", "-f", str(assets_file), "--json")
    assert result.exit_code == 1
    done = json.loads(result.stdout)
    assert done["ok"] is False
    assert done["failed_checks"] == [{"key": "clean", "partition": None, "reason": "positive"}]
    assert {b["key"] for b in done["blocked"]} == {"daily", "report"}
    text = invoke("assets", "materialize", "-f", str(assets_file))
    assert text.exit_code == 1 and "failed check: clean: positive" in text.stdout

    why = as_json("assets", "why", "clean")
    assert why["status"] == "failed-check"
    assert why["failed_check"]["check"] == "positive"
    assert why["failed_check"]["metadata"] == {"min": -1}
    assert "check positive failed (blocking)" in ok("assets", "why", "clean").stdout


def test_backfill_a_range_of_partitions(assets_file: Path) -> None:
    ok("assets", "materialize", "-f", str(assets_file), "raw", "clean")
    done = as_json(
        "assets", "backfill", "-f", str(assets_file), "daily", "--from", "2026-01-02",
        "--to", "2026-01-04", "--concurrency", "2",
    )  # fmt: skip
    assert done["ok"]
    assert sorted(m["partition"] for m in done["materialized"]) == [
        "2026-01-02", "2026-01-03", "2026-01-04",
    ]  # fmt: skip
    rows = by_key(as_json("assets", "ls", "-f", str(assets_file)))
    assert rows["daily"]["partitions"]["materialized"] == 3
    assert rows["daily"]["partitions"]["missing"] == 2
    assert rows["daily"]["status"] == "missing"
    assert as_json("assets", "why", "daily", "--partition", "2026-01-05")["status"] == "missing"


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("show", "cleen"),
        ("why", "cleen"),
        ("lineage", "cleen"),
        ("materialize", "cleen"),
        ("backfill", "cleen", "--from", "2026-01-01", "--to", "2026-01-02"),
    ],
)
def test_an_unknown_asset_names_the_closest(assets_file: Path, args: tuple[str, ...]) -> None:
    ok("assets", "materialize", "-f", str(assets_file), "raw")
    result = invoke("assets", *args, "-f", str(assets_file))
    assert result.exit_code == 2, result.output
    assert "error: unknown asset 'cleen'; the closest: clean" in result.stderr


def test_a_bad_partition_key_says_the_form_expected(assets_file: Path) -> None:
    for args in (
        ("why", "daily", "--partition", "2026-13-01"),
        ("show", "daily", "--partition", "yesterday"),
        ("materialize", "daily", "--partition", "2026-1-1"),
        ("backfill", "daily", "--from", "2026-01-01", "--to", "soon"),
    ):
        result = invoke("assets", *args, "-f", str(assets_file))
        assert result.exit_code == 2, result.output
        assert "expected a date 'YYYY-MM-DD'" in result.stderr
    result = invoke("assets", "why", "raw", "--partition", "x", "-f", str(assets_file))
    assert result.exit_code == 2 and "asset 'raw' is not partitioned" in result.stderr


def test_a_bad_range_end_is_named_by_its_option(assets_file: Path) -> None:
    """A bad --from or --to is reported as that option, not as --partition."""
    cases = [
        ("backfill", "daily", "--from", "soon", "--to", "2026-01-02"),
        ("backfill", "daily", "--from", "2026-01-01", "--to", "soon"),
        ("materialize", "daily", "--from", "soon", "--to", "2026-01-02"),
    ]
    for args, option in zip(cases, ("--from", "--to", "--from"), strict=True):
        result = invoke("assets", *args, "-f", str(assets_file))
        assert result.exit_code == 2, result.output
        assert f"error: {option}: asset 'daily'" in result.stderr, result.stderr


def test_materialize_needs_the_code(assets_file: Path) -> None:
    result = invoke("assets", "materialize", "raw")
    assert result.exit_code == 2 and "-f FILE.py" in result.stderr
    both = invoke("assets", "materialize", "-f", str(assets_file), "--partition", "2026-01-01",
                  "--from", "2026-01-01", "--to", "2026-01-02")  # fmt: skip
    assert both.exit_code == 2 and "not both" in both.stderr
    half = invoke("assets", "materialize", "-f", str(assets_file), "--from", "2026-01-01")
    assert half.exit_code == 2 and "--from and --to go together" in half.stderr


# -- hostile text ------------------------------------------------------------------------


HOSTILE = "\x1b]52;c;cHduZWQ=\x07\x1b[2J\u202egnp.exe\r"


def test_hostile_text_is_escaped_and_json_exact(
    assets_file: Path, monkeypatch: pytest.MonkeyPatch, flowcore_home: Path
) -> None:
    monkeypatch.setenv("TEST_NOTE", HOSTILE)
    ok("assets", "materialize", "-f", str(assets_file))

    async def plant(store: Store) -> None:  # what another process may have stored
        await store.sync_assets(
            [
                AssetDefRecord(
                    key=f"evil{HOSTILE}",
                    code_version="1",
                    group=HOSTILE,
                    upstream=[("raw", HOSTILE)],
                )
            ],
            {},
        )

    async def main() -> None:
        store = resolve_store(None)
        await store.open()
        try:
            await plant(store)
        finally:
            await store.close()

    anyio.run(main)
    for args in (
        ("ls",),
        ("show", "clean"),
        ("lineage", "raw", "--downstream"),
        ("show", f"evil{HOSTILE}"),
    ):
        result = ok("assets", *args)
        out = result.stdout
        assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out and "\r" not in out
        fits(out)
    assert "\\x1b]52" in ok("assets", "show", "clean").stdout
    shown = as_json("assets", "show", "clean")
    assert shown["history"][0]["metadata"]["note"] == HOSTILE  # exact in JSON
    unknown = invoke("assets", "why", f"nope{HOSTILE}")
    assert unknown.exit_code == 2
    assert "\x1b" not in unknown.stderr and "\\x1b" in unknown.stderr


# -- views -------------------------------------------------------------------------------


class CountingStore:
    """A store that counts the queries a view makes."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.store, name)
        if callable(attr):
            self.calls.append(name)
        return attr


@pytest.mark.anyio
async def test_asset_list_is_two_queries_for_any_number_of_assets() -> None:
    store = resolve_store("memory")
    await store.open()
    try:
        await store.sync_assets(
            [AssetDefRecord(key=f"a{i}", code_version="1") for i in range(300)], {}
        )
        counting = CountingStore(store)
        rows = await views.asset_list(cast(Store, counting))
    finally:
        await store.close()
    assert len(rows) == 300
    assert sorted(counting.calls) == ["asset_states", "list_asset_defs"]


def test_stored_status_reads_the_range_sets() -> None:
    state = AssetStateRecord(
        key="d",
        materialized=ranges.encode([0, 10]),
        stale=ranges.encode([2, 4, 20, 30]),  # stale beyond what is built does not count
        cause={"reason": "upstream-changed", "upstream": "u"},
    )
    row = views.stored_status("d", state, partitioned=True)
    assert row["status"] == "stale"
    assert row["partitions"] == {"materialized": 10, "stale": 2, "failed_check": 0,
                                 "missing": None}  # fmt: skip
    assert views.stored_status("x", None)["status"] == "missing"


def test_progress_poller_draws_engine_statistics() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    progress = Progress(TextColumn("{task.description} {task.fields[counts]}"), console=console)

    async def main() -> None:
        async with Engine("memory") as engine, anyio.create_task_group() as tg:
            progress.start()
            tg.start_soon(_poll, engine, progress, "backfill daily", 10)
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
        progress.stop()

    anyio.run(main)
    assert "backfill daily 0 done · 0 failed · 0 retried" in out.getvalue()


# -- as a program ------------------------------------------------------------------------


@pytest.mark.slow
def test_materialize_and_ls_in_a_subprocess(flowcore_home: Path, assets_file: Path) -> None:
    env = {**os.environ, "FLOWCORE_HOME": str(flowcore_home), "NO_COLOR": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "flowcore", "assets", "materialize", "-f", str(assets_file)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "materialized 8, skipped 0 (fresh)" in proc.stdout
    assert "inspect the run: flowcore runs show" in proc.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "flowcore", "assets", "ls"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert "4 assets: 4 fresh" in listed.stdout
    fits(listed.stdout)


# -- why: the stored evaluations of flowcore serve ------------------------------------------

#: 2026-01-10 00:00:00 UTC, the fake clock's start.
T0 = datetime(2026, 1, 10, tzinfo=UTC).timestamp()


def react_once() -> str:
    """A real server on a fake clock and the SQLite store of FLOWCORE_HOME: ``up`` built at
    T0, ``down`` waits out its 5 s debounce (T0+1), then is materialised (T0+6); the tick at
    T0+7 stores that it ran. The run id."""

    @asset
    def up() -> int:
        return 1

    @asset(automation=on_upstream_change(debounce=5))
    def down(up: int) -> int:
        return up + 1

    graph = AssetGraph([up, down])

    async def main() -> str:
        clock = FakeClock(start=T0)
        async with (
            Engine(resolve_store(None), clock=clock, tracing=False) as engine,
            Server([], engine=engine, assets=graph) as server,
        ):
            await materialize_async(["up"], graph=graph, engine=engine)
            clock.advance(1)
            await server.tick()
            await server.wait_idle()
            clock.advance(5)
            await server.tick()
            await server.wait_idle()
            clock.advance(1)
            await server.tick()  # stores what the run it started did
            history = await engine.store.asset_history("down")
            return history[0].run_id

    return anyio.run(main)


def test_why_shows_the_stored_evaluation_at_a_time(flowcore_home: Path) -> None:
    run_id = react_once()
    now = as_json("assets", "why", "down")
    assert now["status"] == "fresh"
    found = now["evaluations"]  # newest first: fresh now, the run, its claim, the debounce
    assert [e["decision"] for e in found] == ["skip", "materialized", "materialize", "wait"]
    assert {e["policy"] for e in found} == {"on_upstream_change"}
    assert found[1]["run_id"] == run_id and found[1]["at"] == "2026-01-10T00:00:06.000000Z"
    assert all(e["server"] for e in found) and all(e["at"] <= now["at"] for e in found)
    assert all(e["at"] <= now["at"] for e in now["evaluations"])
    # Between the wait and the run: the debounce was what held it back.
    before = as_json("assets", "why", "down", "--at", "2026-01-10T00:00:03+00:00")
    assert before["at"] == "2026-01-10T00:00:03.000000Z"
    [waiting] = before["evaluations"]
    assert waiting["decision"] == "wait" and waiting["until"] == "2026-01-10T00:00:05.000000Z"
    assert waiting["run_id"] is None and waiting["reason"]
    assert as_json("assets", "why", "down", "--at", "-1d")["evaluations"] == now["evaluations"]
    text = ok("assets", "why", "down", "--at", "2026-01-10T00:00:03Z").stdout
    assert "automation as of" in text and ": wait (until 2026-01-10" in text
    fits(text)
    ran = ok("assets", "why", "down", "--at", "2026-01-10T00:00:06+00:00").stdout
    assert f": materialized (run {run_id[:8]}" in ran
    never = ok("assets", "why", "up").stdout  # no automation: said, not left out
    assert "no evaluation stored" in never


def test_why_at_a_naive_time_is_local_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        local = parse_at("2026-01-10T05:30", datetime.now(UTC), "--at")
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert local == T0
    now = datetime(2026, 1, 10, 2, tzinfo=UTC)
    assert parse_at("-2h", now, "--at") == T0 and parse_at(" -120m ", now, "--at") == T0


@pytest.mark.parametrize("bad", ["yesterday", "-10x", "10m", "2026-13-01"])
def test_why_at_a_bad_time_names_the_accepted_forms(flowcore_home: Path, bad: str) -> None:
    result = invoke("assets", "why", "raw", "--at", bad)
    assert result.exit_code == 2
    assert "\nerror: --at: " in result.stderr
    assert "ISO 8601" in result.stderr and "-10m" in result.stderr


def test_why_a_partition_is_stale_is_its_own_cause_not_the_last_mark(
    flowcore_home: Path,
) -> None:
    """Two upstream events marked different partitions of `daily` stale; each partition
    says its own cause (the asset as a whole says the last one)."""
    from flowcore.records import MaterializationRecord, StaleMark, WriteBatch

    changed = {"reason": "upstream-changed", "upstream": "hourly", "partition": "h7"}
    upstale = {"reason": "upstream-stale", "upstream": "raw"}

    async def seed() -> None:
        store = resolve_store(None)
        await store.open()
        try:
            built = [
                MaterializationRecord(
                    key="daily",
                    at=1.0,
                    run_id="r",
                    seq=i,
                    code_version="1",
                    data_version=f"v{i}",
                    partition=f"p{i}",
                    index=i,
                )
                for i in range(1, 4)
            ]
            await store.write(WriteBatch(assets=list(built)))
            await store.write(WriteBatch(assets=[StaleMark("daily", [(1, 2)], changed)]))
            await store.write(WriteBatch(assets=[StaleMark("daily", [(2, 3)], upstale)]))
        finally:
            await store.close()

    anyio.run(seed)
    first = as_json("assets", "why", "daily", "--partition", "p1")
    second = as_json("assets", "why", "daily", "--partition", "p2")
    assert (first["status"], first["cause"]) == ("stale", changed)
    assert (second["status"], second["cause"]) == ("stale", upstale)
    assert as_json("assets", "why", "daily", "--partition", "p3")["status"] == "fresh"
    assert "upstream raw is stale" in ok("assets", "why", "daily", "--partition", "p2").stdout
    assert "upstream hourly" in ok("assets", "why", "daily", "--partition", "p1").stdout
