"""Stored definitions readable without the code: the description, its rebuild, old rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

import flowcore
from flowcore.assets import (
    AllPartitionsMapping,
    AssetGraph,
    DailyPartitions,
    DynamicPartitions,
    Freshness,
    HourlyPartitions,
    StaticMapping,
    StaticPartitions,
    TimeWindowMapping,
    asset,
    on_cron,
    on_missing,
    on_upstream_change,
)
from flowcore.assets.description import describe, rebuild_definition
from flowcore.assets.materialize import materialize_async
from flowcore.assets.status import status_async
from flowcore.records import AssetDefRecord

pytestmark = pytest.mark.anyio

DAYS = DailyPartitions("2026-03-01", "2027-01-01", tz="Europe/Paris", end_offset=1)
HOURS = HourlyPartitions("2026-03-28T00:00", tz="Europe/Paris")


@pytest.mark.parametrize(
    "partitions",
    [None, DAYS, HOURS, StaticPartitions(["eu", "us"]), DynamicPartitions("regions")],
    ids=repr,
)
def test_partitions_freshness_and_automation_round_trip(partitions: object) -> None:
    freshness = Freshness(cron="0 9 * * *", tz="Europe/Paris", max_lag=timedelta(hours=2))
    policies = (on_upstream_change(debounce=3), on_cron("0 6 * * *", tz="Europe/Paris"))
    mappings = {
        "hours": TimeWindowMapping(start_offset=-1),
        "all": AllPartitionsMapping(),
        "table": StaticMapping({"eu": ["fr", "de"]}),
    }
    described = describe(partitions, mappings, freshness, (*policies, on_missing()))  # type: ignore[arg-type]
    # Stored as msgpack in the record's body, and read back as plain data.
    record = AssetDefRecord(key="a", code_version="1", description=described)
    record = msgspec.msgpack.decode(msgspec.msgpack.encode(record), type=AssetDefRecord)
    rebuilt = rebuild_definition(record)
    assert rebuilt.complete, rebuilt.problems
    assert rebuilt.partitions == partitions
    assert rebuilt.freshness == freshness
    assert dict(rebuilt.mappings) == mappings
    assert rebuilt.automation == (*policies, on_missing())


def test_an_old_row_rebuilds_what_it_can_and_says_so() -> None:
    old = AssetDefRecord(
        key="daily", code_version="1", partitions="DailyPartitions(...)", freshness="Freshness(..)"
    )
    rebuilt = rebuild_definition(old)
    assert not rebuilt.complete and rebuilt.partitions is None and rebuilt.freshness is None
    assert "older flowcore" in rebuilt.problems[0] and "DailyPartitions(...)" in rebuilt.problems[0]
    newer = rebuild_definition(AssetDefRecord(key="x", code_version="1", description={"v": 99}))
    assert not newer.complete and "upgrade flowcore" in newer.problems[0]
    unknown = {**describe(None, {}, None), "partitions": {"kind": "weekly"}}
    odd = rebuild_definition(AssetDefRecord(key="y", code_version="1", description=unknown))
    assert not odd.complete and "'weekly'" in odd.problems[0]


def graph_of(freshness: Freshness | None = None) -> AssetGraph:
    @asset(partitions=DailyPartitions("2026-03-01", tz="UTC"))
    def daily(partition_key: str) -> str:
        return partition_key

    @asset(freshness=freshness or Freshness(max_lag=timedelta(hours=1)))
    def report() -> int:
        return 1

    return AssetGraph([daily, report])


async def test_status_without_the_code_counts_missing_partitions_and_judges_freshness() -> None:
    graph = graph_of()
    async with flowcore.Engine(store="memory") as engine:
        await materialize_async(["daily"], graph=graph, engine=engine, partition="2026-03-02")
        await materialize_async(["report"], graph=graph, engine=engine)
        [built] = await engine.store.asset_history("report")
        later = datetime.fromtimestamp(built.at, UTC) + timedelta(hours=2)
        # No graph: the definitions come from the store.
        found = {s.key: s for s in await status_async(store=engine.store, now=later)}
        with_code = {
            s.key: s for s in await status_async(store=engine.store, graph=graph, now=later)
        }
    assert found["report"].status == "overdue" == with_code["report"].status
    assert found["daily"].partitions is not None
    assert found["daily"].partitions["missing"] == with_code["daily"].partitions["missing"]  # type: ignore[index]
    assert (found["daily"].partitions["missing"] or 0) > 0
    assert found["daily"].status == "missing" and not found["daily"].notes


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_status_of_an_old_row_without_the_code_says_what_it_cannot_judge(
    kind: str, tmp_path: Path
) -> None:
    graph = graph_of()
    store = "memory" if kind == "memory" else tmp_path / "flowcore.db"
    async with flowcore.Engine(store=store) as engine:
        await materialize_async(["report"], graph=graph, engine=engine)
        # The row as wave 2 wrote it: no description.
        [record] = await engine.store.list_asset_defs(["report"])
        old = msgspec.structs.replace(record, description=None)
        await engine.store.sync_assets([old], {})
        [report] = await status_async(
            ["report"], store=engine.store, now=datetime(2100, 1, 1, tzinfo=UTC)
        )
    assert report.status == "fresh"  # overdue cannot be judged without the definition
    assert report.notes and "older flowcore" in report.notes[0]
    assert report.as_dict()["notes"] == list(report.notes)
