"""Partitioned assets: per-partition materialisations, staleness through mappings, ranges."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

import flowcore
from flowcore.assets import (
    AssetGraph,
    DailyPartitions,
    DynamicPartitions,
    HourlyPartitions,
    PartitionKeyError,
    asset,
)
from flowcore.assets.materialize import add_partitions, materialize_async
from flowcore.assets.status import status_async
from flowcore.ranges import RangeSet

pytestmark = pytest.mark.anyio

HOURS = HourlyPartitions("2026-03-28T00:00", tz="UTC")
DAYS = DailyPartitions("2026-03-28", tz="UTC")
LATER = datetime(2026, 4, 1, tzinfo=UTC)


def hourly_daily(values: dict[str, int]) -> AssetGraph:
    @asset(partitions=HOURS)
    def hits(partition_key: str) -> int:
        return values.get(partition_key, 1)

    @asset(partitions=DAYS)
    def daily(hits: dict[str, int], partition_key: str) -> int:
        assert len(hits) == 24 and all(k.startswith(partition_key) for k in hits)
        return sum(hits.values())

    @asset
    def total(daily: dict[str, int]) -> int:
        return sum(daily.values())

    return AssetGraph([hits, daily, total])


async def stale_sets(engine: flowcore.Engine) -> dict[str, RangeSet]:
    out = {}
    for state in await engine.store.asset_states():
        out[state.key] = RangeSet.from_bytes(state.stale) & RangeSet.from_bytes(state.materialized)
    return out


async def test_a_daily_partition_reads_its_24_hourly_ones_as_a_dict() -> None:
    graph = hourly_daily({})
    async with flowcore.Engine(store="memory") as engine:
        result = await materialize_async(
            ["hits"],
            graph=graph,
            engine=engine,
            partitions=("2026-03-28T00:00", "2026-03-29T23:00"),
        )
        assert len([p for k, p in result.materialized if k == "hits"]) == 48
        # The daily keys are not between two hourly ones: materialise them by name.
        for day in ("2026-03-28", "2026-03-29"):
            done = await materialize_async(["daily"], graph=graph, engine=engine, partition=day)
            assert done.materialized == (("daily", day),)
            assert done.data_versions[("daily", day)] == flowcore.assets.data_version(24)
        [mat] = await engine.store.asset_history("daily", partition="2026-03-28")
        assert len(mat.consumed) == 24 and {up for up, *_ in mat.consumed} == {"hits"}


async def test_per_partition_staleness_through_a_daily_hourly_mapping() -> None:
    values: dict[str, Any] = {}
    graph = hourly_daily(values)
    async with flowcore.Engine(store="memory") as engine:
        await materialize_async(
            ["hits"],
            graph=graph,
            engine=engine,
            partitions=("2026-03-28T00:00", "2026-03-30T23:00"),
        )
        for day in ("2026-03-28", "2026-03-29", "2026-03-30"):
            await materialize_async(["daily"], graph=graph, engine=engine, partition=day)
        assert all(not s for s in (await stale_sets(engine)).values())
        # One hour of the 29th changes: only the 29th goes stale downstream.
        values["2026-03-29T05:00"] = 100
        await materialize_async(
            ["hits"], graph=graph, engine=engine, partition="2026-03-29T05:00", only_stale=False
        )
        stale = await stale_sets(engine)
        the_29th = DAYS.index_of("2026-03-29")
        assert stale["daily"].ranges() == ((the_29th, the_29th + 1),)
        assert not stale["hits"]
        [daily] = [
            s
            for s in await status_async(store=engine.store, graph=graph, now=LATER)
            if s.key == "daily"
        ]
        assert daily.status == "stale"
        assert daily.cause["upstream"] == "hits"
        assert daily.cause["partition"] == "2026-03-29T05:00"
        assert daily.partitions is not None and daily.partitions["stale"] == 1
        assert daily.partitions["materialized"] == 3
        # An unchanged hour re-materialised leaves its day fresh.
        await materialize_async(
            ["hits"], graph=graph, engine=engine, partition="2026-03-28T05:00", only_stale=False
        )
        assert (await stale_sets(engine))["daily"].ranges() == ((1, 2),)
        # Rebuilding the stale day only.
        again = await materialize_async(
            ["daily"], graph=graph, engine=engine, partitions=("2026-03-28", "2026-03-30")
        )
        assert again.materialized == (("daily", "2026-03-29"),)
        assert len(again.skipped) == 2
        assert not (await stale_sets(engine))["daily"]


async def test_missing_partitions_are_counted_at_query_time() -> None:
    graph = hourly_daily({})
    async with flowcore.Engine(store="memory") as engine:
        await materialize_async(["daily"], graph=graph, engine=engine, partition="2026-03-28")
        found = {s.key: s for s in await status_async(store=engine.store, graph=graph, now=LATER)}
    # hits was never materialised: daily failed to load it, nothing recorded for it.
    assert found["hits"].status == "missing"
    assert found["daily"].status == "missing"


async def test_an_unpartitioned_upstream_change_makes_every_built_partition_stale() -> None:
    def graph(version: str) -> AssetGraph:
        @asset(code_version=version)
        def config() -> dict[str, int]:
            return {"factor": 2}

        @asset(partitions=DAYS)
        def scaled(config: dict[str, int], partition_key: str) -> int:
            return config["factor"] * int(partition_key[-2:])

        @asset(partitions=HOURS)
        def hourly(scaled: int, partition_key: str) -> int:  # a day feeds its 24 hours
            return scaled

        return AssetGraph([config, scaled, hourly])

    first = graph("1")
    async with flowcore.Engine(store="memory") as engine:
        await materialize_async([first["config"]], graph=first, engine=engine)
        for day in ("2026-03-28", "2026-03-30"):
            await materialize_async(["scaled"], graph=first, engine=engine, partition=day)
        await materialize_async(
            ["hourly"], graph=first, engine=engine, partition="2026-03-30T01:00"
        )
        second = graph("2")
        await materialize_async(["config"], graph=second, engine=engine)  # rebuilt: same data
        stale = await stale_sets(engine)
        # The code change marked every built partition downstream (an open range, kept
        # as one); rebuilding config to the same data version leaves them as marked.
        assert stale["scaled"].ranges() == ((0, 1), (2, 3))
        hour = HOURS.index_of("2026-03-30T01:00")
        assert stale["hourly"].ranges() == ((hour, hour + 1),)


async def test_dynamic_partitions_are_added_at_run_time_and_numbered_by_the_store() -> None:
    customers = DynamicPartitions("customers")

    @asset(partitions=customers)
    def orders(partition_key: str) -> list[str]:
        return [partition_key] * 2

    @asset(partitions=customers)
    def invoices(orders: list[str]) -> int:
        return len(orders)

    @asset
    def everyone(orders: dict[str, list[str]]) -> list[str]:
        return sorted(orders)

    graph = AssetGraph([orders, invoices, everyone])
    async with flowcore.Engine(store="memory") as engine:
        for name in ("acme", "globex"):
            await materialize_async(["orders"], graph=graph, engine=engine, partition=name)
        assert await engine.store.dynamic_partitions("customers") == ["acme", "globex"]
        await add_partitions(customers, ["initech", "acme"], store=engine.store)
        assert await engine.store.dynamic_partitions("customers") == [
            "acme",
            "globex",
            "initech",
        ]
        done = await materialize_async(["invoices"], graph=graph, engine=engine, partition="globex")
        assert done.data_versions[("invoices", "globex")] == flowcore.assets.data_version(2)
        summary = await materialize_async(["everyone"], graph=graph, engine=engine)
        # initech was added but never materialised: everyone cannot be built yet.
        [(key, _, reason)] = summary.failed
        assert key == "everyone" and "'initech'" in reason
        with pytest.raises(PartitionKeyError, match="name the partition"):
            await materialize_async(["orders"], graph=graph, engine=engine)
        # A change of one customer's orders makes only that customer's invoices stale.
        await materialize_async(["orders"], graph=graph, engine=engine, partition="initech")
        await materialize_async(["invoices"], graph=graph, engine=engine, partition="acme")
        stale = await stale_sets(engine)
        assert not stale["invoices"]
        await materialize_async(
            ["orders"], graph=graph, engine=engine, partition="acme", only_stale=False
        )
        assert not (await stale_sets(engine))["invoices"]  # same data: still fresh
