"""The web UI's asset pages and actions over HTTP (httpx on the ASGI app): the list with
statuses and why, an asset's page (definition, freshness, heat map, history and checks,
a page at a time), the lineage graph's JSON (aggregated past a few hundred assets), the
heat map's buckets (never one step per partition), escaping of what the store holds, and
the materialise and backfill actions (CSRF, read-only, what they start).

Also what the runs list and the run page read for them from the store: the runs list's
time-range and tag filters, and a big run's graph from ``task_run_edges``."""

from __future__ import annotations

import logging
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from test_ui_support import (
    SCRIPT,
    asset_defs,
    running_run,
    seed_assets_async,
    write_asset_graph,
    write_big_run,
)

import flowcore
from flowcore import ranges
from flowcore.assets import Freshness, HourlyPartitions
from flowcore.assets.description import describe
from flowcore.cli import cli
from flowcore.records import (
    AssetDefRecord,
    AssetStateRecord,
    CheckResultRecord,
    MaterializationRecord,
    StaleMark,
    TaskRunRecord,
    WriteBatch,
)
from flowcore.states import State
from flowcore.store import flowcore_home
from flowcore.store.base import RunQueries, Store
from flowcore.store.sqlite.rows import FLOW_WRITE_COLS, TASK_COLS, flow_row, task_row
from flowcore.store.sqlite.schema import MIGRATIONS
from flowcore.ui.app import create_app
from flowcore.ui.config import UIConfig
from flowcore.ui.security import csrf_token
from flowcore.views import assets as views
from flowcore.views import runs as run_views
from flowcore.views.graph import task_graph
from flowcore.views.runs import aggregated_graph, find_runs

pytestmark = pytest.mark.anyio

#: What a page may never contain raw.
RAW = ("<script>alert", "<b>bad")


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    s = flowcore.SQLiteStore(flowcore_home() / "flowcore.db")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def seeded(store: Store) -> Store:
    await seed_assets_async()
    return store


def _client(store: Store, **config: Any) -> httpx.AsyncClient:
    config.setdefault("allowed_hosts", ("testserver",))
    app = create_app(UIConfig(**config), store=store)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def _csrf(client: httpx.AsyncClient) -> str:
    transport = client._transport
    assert isinstance(transport, httpx.ASGITransport)
    app: Any = transport.app
    token: str = csrf_token(app.state.config)
    return token


def _rows(text: str) -> dict[str, str]:
    """``data-asset`` → ``data-status`` of the assets table's rows."""
    return dict(re.findall(r'data-asset="([^"]*)" data-status="([^"]*)"', text))


# -- the list ---------------------------------------------------------------------------------


async def test_assets_list_shows_statuses_and_why(seeded: Store) -> None:
    async with _client(seeded) as c:
        page = await c.get("/assets")
    assert page.status_code == 200
    assert _rows(page.text) == {
        "raw": "fresh",
        "clean": "failed-check",
        "daily": "stale",
        "report": "missing",
    }
    row = page.text.split('data-asset="clean"')[1].split("</tr>")[0]
    assert "check positive failed" in row
    row = page.text.split('data-asset="daily"')[1].split("</tr>")[0]
    assert "upstream clean changed" in row
    assert "10 built, 10 stale, 10 missing" in row  # missing by now: from the stored description
    assert '<a href="/assets/daily">' in row
    assert 'href="/assets">Assets</a>' in page.text.replace(' class="here"', "")  # the nav link


async def test_assets_list_filters_by_group_status_and_name_and_pages(seeded: Store) -> None:
    async with _client(seeded) as c:
        warehouse = await c.get("/assets", params={"group": "warehouse"})
        stale = await c.get("/assets", params={"status": "stale"})
        named = await c.get("/assets", params={"q": "REP"})
        first = await c.get("/assets", params={"limit": 3})
        rest = await c.get("/assets", params={"limit": 3, "offset": 3})
        bad = await c.get("/assets", params={"status": "rotten"})
    assert set(_rows(warehouse.text)) == {"clean", "daily"}
    assert '<option value="warehouse" selected>' in warehouse.text
    assert _rows(stale.text) == {"daily": "stale"}
    assert set(_rows(named.text)) == {"report"}
    assert list(_rows(first.text)) == ["clean", "daily", "raw"] and 'rel="next"' in first.text
    assert list(_rows(rest.text)) == ["report"] and 'rel="next"' not in rest.text
    assert "4 in all" in first.text
    assert bad.status_code == 400 and "status: expected one of" in bad.text


async def test_assets_list_of_an_empty_store(store: Store) -> None:
    async with _client(store) as c:
        page = await c.get("/assets")
    assert page.status_code == 200 and "No assets" in page.text


async def test_an_overdue_asset_says_so_with_its_freshness(store: Store) -> None:
    old = time.time() - 3 * 3600
    await store.sync_assets(
        [
            AssetDefRecord(
                key="late", code_version="1", freshness="Freshness(max_lag=1h)",
                description=describe(None, {}, Freshness(max_lag=timedelta(hours=1))),
            )
        ],
        {},
    )  # fmt: skip
    mat = MaterializationRecord(
        key="late", at=old, run_id="r", seq=0, code_version="1", data_version="d"
    )
    await store.write(WriteBatch(assets=[mat]))
    async with _client(store) as c:
        listed = await c.get("/assets")
        page = await c.get("/assets/late")
    assert _rows(listed.text) == {"late": "overdue"}
    fresh = page.text.split('id="freshness"')[1].split("</section>")[0]
    assert "Freshness(max_lag=1h)" in fresh
    assert '<dd class="overdue">yes</dd>' in fresh


# -- an asset's page -------------------------------------------------------------------------


async def test_asset_page_shows_definition_history_checks_and_heatmap(seeded: Store) -> None:
    async with _client(seeded) as c:
        daily = await c.get("/assets/daily")
        clean = await c.get("/assets/clean")
    assert daily.status_code == 200
    text = daily.text
    assert "DailyPartitions(" in text and '<a href="/assets/clean">clean</a>' in text
    heat = text.split('id="heatmap"')[1].split("</section>")[0]
    states = re.findall(r'class="hm as-([a-z-]+)"', heat)
    assert states == ["stale"] * 10 + ["missing"] * 10  # a cell per partition, in time order
    assert 'href="?partition=2026-01-01#history"' in heat
    assert "20 partitions by now: 0 fresh, 10 stale, 0 failed check, 10 missing" in text
    history = text.split('id="materializations"')[1].split("</table>")[0]
    assert history.count("<tr>") == 10 + 1  # ten partitions, and the header
    assert 'data-src="/asset-lineage/daily"' in text
    assert "No freshness policy" in text
    checks = clean.text.split('id="check-results"')[1].split("</table>")[0]
    assert checks.count('class="check-failed"') == 1 and checks.count('class="check-passed"') == 1
    assert 'id="heatmap"' not in clean.text  # unpartitioned
    assert "check positive failed" in clean.text


async def test_asset_page_pages_history_and_filters_a_partition(seeded: Store) -> None:
    async with _client(seeded) as c:
        first = await c.get("/assets/daily")
        second = await c.get("/assets/daily", params={"history": 20})
        one = await c.get("/assets/daily", params={"partition": "2026-01-03"})
    # 10 partitions: one page; the pager says nothing more
    assert 'rel="next" href="?history=20' not in first.text
    assert "Never materialised" in second.text.split('id="materializations"')[1]
    rows = one.text.split('id="materializations"')[1].split("</table>")[0]
    assert rows.count("<tr>") == 2 and "2026-01-03" in rows
    assert "of partition 2026-01-03" in one.text


async def test_unknown_asset_is_404_naming_the_closest(seeded: Store) -> None:
    async with _client(seeded) as c:
        page = await c.get("/assets/dialy")
        graph = await c.get("/asset-lineage/dialy")
        bad = await c.get("/assets/daily", params={"history": "-1"})
    assert page.status_code == 404 and "the closest: daily" in page.text
    assert graph.status_code == 404
    assert bad.status_code == 400 and "history: expected" in bad.text


# -- lineage ----------------------------------------------------------------------------------


async def test_lineage_is_the_upstream_and_downstream_with_statuses(seeded: Store) -> None:
    async with _client(seeded) as c:
        answer = await c.get("/asset-lineage/clean")
        near = await c.get("/asset-lineage/clean", params={"depth": 1})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/json")
    graph = answer.json()
    assert graph["mode"] == "assets" and graph["root"] == "clean"
    statuses = {n["id"]: n["status"] for n in graph["nodes"]}
    assert statuses == {
        "raw": "fresh",
        "clean": "failed-check",
        "daily": "stale",
        "report": "missing",
    }
    reasons = {n["id"]: n["reason"] for n in graph["nodes"]}
    assert reasons["clean"] == "check positive failed"
    assert reasons["daily"] == "upstream clean changed"
    edges = {(e["source"], e["target"], e["mapping"]) for e in graph["edges"]}
    assert edges == {
        ("raw", "clean", ""),
        ("clean", "daily", ""),
        ("daily", "report", "all partitions"),
    }
    assert (graph["upstream"], graph["downstream"]) == (1, 2)
    assert {n["id"] for n in near.json()["nodes"]} == {"raw", "clean", "daily"}


async def test_lineage_of_2000_assets_is_aggregated_for_the_browser(store: Store) -> None:
    hub = await write_asset_graph(store, 2000)
    async with _client(store) as c:
        answer = await c.get(f"/asset-lineage/{hub}")
        near = await c.get(f"/asset-lineage/{hub}", params={"depth": 1})
    graph = answer.json()
    assert graph["mode"] == "aggregated" and graph["total"] == 2000
    assert len(graph["nodes"]) <= views.LINEAGE_NODES
    assert sum(n.get("count", 1) for n in graph["nodes"]) == 2000
    assert [n["id"] for n in graph["nodes"] if n["root"]] == [hub]
    # every status counted once: the aggregated counts add up to the list's
    by_status: dict[str, int] = {}
    for n in graph["nodes"]:
        for status, count in (n.get("statuses") or {n["status"]: 1}).items():
            by_status[status] = by_status.get(status, 0) + count
    async with _client(store) as c:
        listed = _rows((await c.get("/assets", params={"limit": 1000})).text)
        listed.update(_rows((await c.get("/assets", params={"offset": 1000, "limit": 1000})).text))
    want: dict[str, int] = {}
    for status in listed.values():
        want[status] = want.get(status, 0) + 1
    assert by_status == want
    assert graph["edges"] and all(e["source"] != e["target"] for e in graph["edges"])
    near_graph = near.json()  # one edge away: what it reads, what reads it
    defs, _ = asset_defs(2000)
    readers = [d for d in defs if hub in {up for up, _ in d.upstream}]
    assert near_graph["total"] == 1 + 200 + len(readers) and len(readers) >= 199
    # levels are longest paths among them: a reader of the hub and of another reader
    # is one further right
    assert {n["level"] for n in near_graph["nodes"]} == {-1, 0, 1, 2}


def test_aggregated_lineage_groups_by_level_and_group_with_edges_forward() -> None:
    # m reads c and a; c reads b and a; b reads a: a is 1 edge from m, but 3 by the
    # longest path, which is its level (so every edge goes left to right). Below m, a
    # fan of 4 readers (group w) and 3 of theirs (group v).
    reads = {"a": [], "b": ["a"], "c": ["a", "b"], "m": ["c", "a"]}
    reads |= {f"w{i}": ["m"] for i in range(4)} | {f"v{i}": [f"w{i}"] for i in range(3)}
    defs = {
        key: AssetDefRecord(
            key=key, code_version="1", group=key[0], upstream=[(u, "") for u in ups]
        )
        for key, ups in reads.items()
    }
    overview = {
        key: views.AssetOverview(key, key[0], "stale" if key == "w2" else "fresh", {},
                                 None, None, None, None, True)
        for key in defs
    }  # fmt: skip
    graph = views.lineage_graph(defs, overview, "m", max_nodes=8)
    assert graph["mode"] == "aggregated" and graph["total"] == 11
    level = {n["id"]: n["level"] for n in graph["nodes"]}
    assert level == {"m": 0, "a": -3, "b": -2, "c": -1, "group:1:w": 1, "group:2:v": 2}
    fan = next(n for n in graph["nodes"] if n["id"] == "group:1:w")
    assert fan["count"] == 4 and fan["statuses"] == {"fresh": 3, "stale": 1}
    assert fan["status"] == "stale" and fan["href"] == "/assets?group=w"
    edges = {(e["source"], e["target"]): e.get("count") for e in graph["edges"]}
    assert edges == {
        ("a", "b"): 1, ("a", "c"): 1, ("b", "c"): 1, ("a", "m"): 1, ("c", "m"): 1,
        ("m", "group:1:w"): 4, ("group:1:w", "group:2:v"): 3,
    }  # fmt: skip
    assert all(level[s] < level[t] for s, t in edges)


# -- heat map ---------------------------------------------------------------------------------


def test_heatmap_buckets_a_million_partitions_without_enumerating_them() -> None:
    total = 1_000_000
    built = [0, 900_000]
    stale = [100, 200, 500_000, 500_001]
    failed = [899_999, 900_000]
    state = AssetStateRecord(
        key="big",
        materialized=ranges.encode(built),
        stale=ranges.encode(stale),
        failed=ranges.encode(failed),
    )
    named: list[int] = []

    def key_of(i: int) -> str:
        named.append(i)
        return f"k{i}"

    heat = views.partition_heatmap(state, total, key_of, cells=400)
    assert len(heat.cells) == 400 and heat.per_cell == 2500
    assert len(named) <= 2 * 400  # a key per cell edge, never one per partition
    assert (heat.fresh, heat.stale, heat.failed, heat.missing) == (
        900_000 - 101 - 1,
        101,
        1,
        100_000,
    )
    assert sum(c.fresh + c.stale + c.failed + c.missing for c in heat.cells) == total
    first = heat.cells[0]
    assert (first.first, first.last, first.stale, first.state) == ("k0", "k2499", 100, "stale")
    assert heat.cells[200].stale == 1  # 500,000 is the first of cell 200
    assert heat.cells[359].state == "failed-check" and heat.cells[359].failed == 1
    assert heat.cells[360].state == "missing" and heat.cells[360].missing == 2500
    assert heat.cells[100].state == "fresh" and heat.cells[100].share == 1.0


async def test_heatmap_of_an_hourly_asset_since_1900_is_a_few_hundred_cells(store: Store) -> None:
    hours = HourlyPartitions("1900-01-01T00:00")
    await store.sync_assets(
        [
            AssetDefRecord(
                key="hourly", code_version="1", partitions=repr(hours),
                description=describe(hours, {}, None),
            )
        ],
        {},
    )  # fmt: skip
    events = [
        MaterializationRecord(
            key="hourly", at=time.time(), run_id="r", seq=i, code_version="1",
            data_version="d", partition=hours.key_of(i), index=i,
        )
        for i in (0, 1, 2, 500_000)
    ]  # fmt: skip
    await store.write(WriteBatch(assets=events))
    async with _client(store) as c:
        page = await c.get("/assets/hourly")
    assert page.status_code == 200
    heat = page.text.split('id="heatmap"')[1].split("</section>")[0]
    assert len(re.findall(r'class="hm as-', heat)) <= views.HEATMAP_CELLS
    assert "1900-01-01T00:00" in heat
    total = hours.count(until=datetime.now(UTC))
    assert f'data-total="{total}"' in page.text and total > 1_000_000


# -- escaping ---------------------------------------------------------------------------------


async def test_hostile_text_in_assets_stays_text(seeded: Store) -> None:
    await seeded.sync_assets(
        [
            AssetDefRecord(
                key=f"evil/{SCRIPT}", code_version=SCRIPT, group=SCRIPT,
                upstream=[("raw", SCRIPT)], checks=[SCRIPT], freshness=SCRIPT, io=SCRIPT,
                partitions=SCRIPT,
            )
        ],
        {},
    )  # fmt: skip
    now = time.time()
    await seeded.write(
        WriteBatch(
            assets=[
                MaterializationRecord(
                    key=f"evil/{SCRIPT}", at=now, run_id=SCRIPT, seq=0, code_version=SCRIPT,
                    data_version=SCRIPT, metadata={SCRIPT: SCRIPT},
                    consumed=[("raw", SCRIPT, SCRIPT, 0)],
                ),
                CheckResultRecord(
                    key=f"evil/{SCRIPT}", check=SCRIPT, passed=False, at=now, run_id=SCRIPT,
                    seq=0, error=SCRIPT, severity=SCRIPT,
                ),
                StaleMark(f"evil/{SCRIPT}", [(0, 1)], {"reason": "upstream-changed",
                                                       "upstream": SCRIPT}),
            ]
        )
    )  # fmt: skip
    key = f"evil/{SCRIPT}".replace("<", "%3C").replace(">", "%3E")
    async with _client(seeded) as c:
        for path in ("/assets", f"/assets/{key}", "/assets/clean", f"/asset-lineage/{key}",
                     f"/assets?group={SCRIPT}", "/asset-lineage/raw"):  # fmt: skip
            page = await c.get(path)
            assert page.status_code == 200, path
            for raw in RAW:
                assert raw not in page.text, (path, raw)
            if "lineage" in path:
                assert "<" not in page.text, path
    async with _client(seeded) as c:
        page = await c.get(f"/assets/{key}")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


# -- actions ----------------------------------------------------------------------------------


class Started:
    """``subprocess.Popen`` stood in for: what the action would have started."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], dict[str, str]]] = []

    def __call__(self, args: list[str], **kw: Any) -> Started:
        self.calls.append((args, kw["env"]))
        return self

    def poll(self) -> int:
        return 0


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> Started:
    fake = Started()
    monkeypatch.setattr(subprocess, "Popen", fake)
    return fake


async def test_without_allow_actions_the_asset_actions_do_not_exist(
    seeded: Store, tmp_path: Path, started: Started
) -> None:
    async with _client(seeded, asset_files=(tmp_path / "a.py",)) as c:
        for path in ("/actions/assets/materialize", "/actions/assets/backfill"):
            answer = await c.post(path, data={"csrf": _csrf(c), "key": "daily"})
            assert answer.status_code == 404, path
        page = await c.get("/assets/daily")
    assert "Materialise" not in page.text and "csrf" not in page.text
    assert started.calls == []


async def test_materialize_action_starts_flowcore_assets_materialize(
    seeded: Store,
    tmp_path: Path,
    started: Started,
    caplog: pytest.LogCaptureFixture,
) -> None:
    files = (tmp_path / "a.py", tmp_path / "b.py")
    caplog.set_level(logging.INFO, logger="flowcore.ui")
    home = flowcore_home()
    async with _client(seeded, allow_actions=True, asset_files=files, home=home) as c:
        page = await c.get("/assets/daily")
        assert 'action="/actions/assets/materialize"' in page.text
        assert 'action="/actions/assets/backfill"' in page.text
        answer = await c.post(
            "/actions/assets/materialize",
            data={"csrf": _csrf(c), "key": "daily", "downstream": "1", "stale": "1",
                  "partition": "2026-01-05"},
        )  # fmt: skip
        plain = await c.post("/actions/assets/materialize", data={"csrf": _csrf(c), "key": "raw"})
    assert answer.status_code == 303 and answer.headers["location"] == "/runs?flow=materialize"
    assert plain.status_code == 303
    (args, env), (plain_args, _) = started.calls
    assert args[:3] == [sys.executable, "-m", "flowcore"]
    assert args[3:] == [
        "assets", "materialize", "-f", str(files[0]), "-f", str(files[1]), "--downstream",
        "--stale", "--partition=2026-01-05", "--no-progress", "--", "daily",
    ]  # fmt: skip
    assert plain_args[-4:] == ["-f", str(files[1]), "--no-progress", "--", "raw"][-4:]
    assert env["FLOWCORE_HOME"] == str(home)
    assert any("materialising asset daily" in r.getMessage() for r in caplog.records)


async def test_backfill_action_starts_flowcore_assets_backfill(
    seeded: Store, tmp_path: Path, started: Started
) -> None:
    async with _client(seeded, allow_actions=True, asset_files=(tmp_path / "a.py",)) as c:
        answer = await c.post(
            "/actions/assets/backfill",
            data={"csrf": _csrf(c), "key": "daily", "from": "2026-01-11", "to": "2026-01-20",
                  "stale_only": "1"},
        )  # fmt: skip
    assert answer.status_code == 303
    [(args, _)] = started.calls
    assert args[3:] == [
        "assets", "backfill", "-f", str(tmp_path / "a.py"), "--from=2026-01-11",
        "--to=2026-01-20", "--stale-only", "--no-progress", "--", "daily",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "form", "status", "says"),
    [
        ("materialize", {"key": "daily"}, 403, "CSRF"),
        ("materialize", {"key": "daily", "csrf": "forged"}, 403, "CSRF"),
        ("backfill", {"key": "daily", "from": "2026-01-01", "to": "2026-01-02"}, 403, "CSRF"),
        ("materialize", {"key": "dialy", "csrf": None}, 404, "the closest: daily"),
        ("materialize", {"key": "", "csrf": None}, 400, "key:"),
        ("materialize", {"key": "daily", "partition": "Jan 5", "csrf": None}, 400,
         "partition:"),
        ("materialize", {"key": "raw", "partition": "2026-01-05", "csrf": None}, 400,
         "not partitioned"),
        ("backfill", {"key": "daily", "from": "2026-01-09", "to": "2026-01-02", "csrf": None},
         400, "swap them"),
        ("backfill", {"key": "daily", "from": "2026-01-09", "csrf": None}, 400, "from, to"),
        ("backfill", {"key": "raw", "from": "a", "to": "b", "csrf": None}, 400,
         "not partitioned"),
    ],
)  # fmt: skip
async def test_asset_action_refusals(
    seeded: Store,
    tmp_path: Path,
    started: Started,
    path: str,
    form: dict[str, Any],
    status: int,
    says: str,
) -> None:
    async with _client(seeded, allow_actions=True, asset_files=(tmp_path / "a.py",)) as c:
        if form.get("csrf", "") is None:
            form["csrf"] = _csrf(c)
        answer = await c.post(f"/actions/assets/{path}", data=form)
    assert answer.status_code == status, answer.text
    assert says in answer.text
    assert started.calls == []


async def test_asset_actions_need_the_assets_files_and_same_site_posts(
    seeded: Store, tmp_path: Path, started: Started
) -> None:
    async with _client(seeded, allow_actions=True) as c:
        page = await c.get("/assets/daily")
        no_code = await c.post("/actions/assets/materialize", data={"csrf": _csrf(c), "key": "raw"})
    assert "started without the assets' code" in page.text
    assert no_code.status_code == 409 and "flowcore ui --allow-actions -f FILE.py" in no_code.text
    async with _client(seeded, allow_actions=True, asset_files=(tmp_path / "a.py",)) as c:
        cross = await c.post(
            "/actions/assets/materialize",
            data={"csrf": _csrf(c), "key": "raw"},
            headers={"Origin": "http://evil.example"},
        )
    assert cross.status_code == 403 and "cross-site" in cross.text
    assert started.calls == []


def test_cli_ui_refuses_a_missing_assets_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["ui", "-f", str(tmp_path / "nope.py")])
    assert result.exit_code == 1
    assert "nope.py: no such file" in result.output


# -- what the runs list and the run page read ------------------------------------------------


async def test_runs_list_filters_by_a_tag_of_its_tasks(store: Store) -> None:
    runs = [running_run(f"r{i}") for i in range(4)]
    for i, r in enumerate(runs):
        r.created -= i
    await store.write(WriteBatch(flow_runs=runs))
    await store.write(
        WriteBatch(
            task_runs=[
                TaskRunRecord(runs[0].id, 0, "fetch", State.COMPLETED, 1.0, tags=["api"]),
                TaskRunRecord(runs[2].id, 0, "fetch", State.COMPLETED, 1.0, tags=["api", "db"]),
                TaskRunRecord(runs[3].id, 0, "load", State.COMPLETED, 1.0, tags=["db"]),
            ]
        )
    )
    async with _client(store) as c:
        api = await c.get("/runs", params={"tag": "api"})
        db = await c.get("/runs", params={"tag": "db", "limit": 1})
        none = await c.get("/runs", params={"tag": "nope"})
    assert re.findall(r'data-run="([^"]+)"', api.text) == [runs[0].id, runs[2].id]
    assert 'name="tag" value="api"' in api.text
    assert re.findall(r'data-run="([^"]+)"', db.text) == [runs[2].id] and 'rel="next"' in db.text
    assert "No runs match" in none.text


async def test_a_time_range_reaches_runs_older_than_100000_newer_ones(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The list used to read at most SCAN_LIMIT (100,000) runs from the newest, looking
    # for the range, and said "no runs" for one further back. Made small here: the store
    # now filters by time itself, however far back.
    monkeypatch.setattr(run_views, "SCAN_LIMIT", 1000, raising=False)
    base = time.time()
    runs = [running_run(f"r{i}") for i in range(3000)]
    for i, r in enumerate(runs):
        r.created = base - i
    await store.write(WriteBatch(flow_runs=runs))
    page = await find_runs(store, until=base - 2500, limit=5)
    assert [r.name for r in page.runs] == [f"r{i}" for i in range(2501, 2506)]
    assert page.more
    deep = await find_runs(store, since=base - 2999.5, until=base - 2990, offset=2, limit=5)
    assert [r.name for r in deep.runs] == [f"r{i}" for i in range(2993, 2998)]


async def test_the_graph_of_a_big_run_read_from_its_edges_is_the_views_graph(
    store: Store,
) -> None:
    run = await write_big_run(store, 1200, names=4)
    fast = await aggregated_graph(store, run.id, max_nodes=300)
    assert fast is not None and fast == await task_graph(store, run.id, max_nodes=300)
    assert await aggregated_graph(store, run.id, max_nodes=2000) is None  # small: task runs
    async with _client(store) as c:
        served = (await c.get(f"/runs/{run.id}/graph.json")).json()
    assert served == fast


async def test_runs_recorded_before_the_tags_column_get_their_tags(tmp_path: Path) -> None:
    path = tmp_path / "flowcore.db"
    runs = [running_run(f"old{i}") for i in range(3)]
    tasks = [
        TaskRunRecord(runs[1].id, 0, "t", State.COMPLETED, 1.0, tags=["api"]),
        TaskRunRecord(runs[1].id, 1, "t", State.COMPLETED, 1.0, tags=["api", "x"]),
        TaskRunRecord(runs[2].id, 0, "t", State.COMPLETED, 1.0, inputs=b"tags"),
    ]
    with closing(sqlite3.connect(path)) as db:  # as flowcore left it at schema version 11
        for number in sorted(n for n in MIGRATIONS if n <= 11):
            for statement in MIGRATIONS[number]:
                if not statement.startswith("_"):  # data steps: nothing to convert
                    db.execute(statement)
        db.execute("PRAGMA user_version = 11")
        marks = ", ".join("?" * len(flow_row(runs[0])))
        db.executemany(
            f"INSERT INTO flow_runs ({FLOW_WRITE_COLS}) VALUES ({marks})", map(flow_row, runs)
        )
        db.executemany(
            f"INSERT INTO task_runs ({TASK_COLS}) VALUES (?, ?, ?, ?, ?, ?)", map(task_row, tasks)
        )
        db.commit()
    async with flowcore.SQLiteStore(path) as s:
        api = await s.filter_runs(tag="api")
        x = await s.filter_runs(tag="x")
        untagged = await s.filter_runs(tag="tags")
    assert [r.id for r in api] == [runs[1].id] and [r.id for r in x] == [runs[1].id]
    assert untagged == []


class WithoutRunQueries:
    """A store without the optional role RunQueries (as a plugin store may be)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        if name in ("filter_runs", "task_run_edges"):
            raise AttributeError(name)
        return getattr(self._store, name)


async def test_a_store_without_run_queries_lists_and_draws_the_same(store: Store) -> None:
    base = time.time()
    runs = [running_run(f"r{i}") for i in range(30)]
    for i, r in enumerate(runs):
        r.created = base - i
    await store.write(WriteBatch(flow_runs=runs))
    await store.write(
        WriteBatch(
            task_runs=[
                TaskRunRecord(r.id, 0, "t", State.COMPLETED, 1.0, tags=["api"]) for r in runs[::3]
            ]
        )
    )
    plain: Any = WithoutRunQueries(store)
    assert not isinstance(plain, RunQueries) and isinstance(store, RunQueries)
    for query in (
        {"until": base - 5, "limit": 4},
        {"since": base - 20, "until": base - 5, "offset": 3, "limit": 5},
        {"tag": "api", "limit": 4},
        {"tag": "api", "since": base - 20, "offset": 2, "limit": 2},
        {"offset": 28, "limit": 5},
    ):
        fast, slow = await find_runs(store, **query), await find_runs(plain, **query)
        assert [r.id for r in slow.runs] == [r.id for r in fast.runs], query
        assert slow.more == fast.more, query
    run = await write_big_run(store, 400, names=3)
    assert await aggregated_graph(plain, run.id, max_nodes=300) is None  # read as records
    async with _client(plain) as c:
        served = (await c.get(f"/runs/{run.id}/graph.json")).json()
    assert served == await aggregated_graph(store, run.id, max_nodes=300)


async def test_a_big_ended_runs_graph_is_computed_as_its_page_goes_out(store: Store) -> None:
    run = await write_big_run(store, 900, names=3)
    small = await write_big_run(store, 50, names=2)
    async with _client(store) as c:
        transport = c._transport
        assert isinstance(transport, httpx.ASGITransport)
        app: Any = transport.app
        await c.get(f"/runs/{small.id}")
        assert small.id not in app.state.graph_jobs and small.id not in app.state.graphs
        page = await c.get(f"/runs/{run.id}")
        assert page.status_code == 200
        assert run.id in app.state.graph_jobs or run.id in app.state.graphs  # started
        served = (await c.get(f"/runs/{run.id}/graph.json")).json()
        assert app.state.graph_jobs == {} and run.id in app.state.graphs
    assert served == await aggregated_graph(store, run.id, max_nodes=300)
