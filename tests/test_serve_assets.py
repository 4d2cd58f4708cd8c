"""Reactive assets in the server, on a fake clock and the memory store: each wake driven
by hand (``server.tick()``), materialisations awaited (``server.wait_idle()``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

import flowcore
from flowcore.assets import (
    AssetGraph,
    DailyPartitions,
    Freshness,
    asset,
    on_cron,
    on_missing,
    on_upstream_change,
)
from flowcore.assets.materialize import materialize_async
from flowcore.serve import Server
from flowcore.store.memory import MemoryStore
from flowcore.testing import FakeClock

pytestmark = pytest.mark.anyio

#: 2026-01-10 00:00:00 UTC.
T0 = datetime(2026, 1, 10, tzinfo=UTC).timestamp()


@asynccontextmanager
async def serving(graph: AssetGraph, clock: FakeClock, store: MemoryStore) -> AsyncIterator[Server]:
    async with (
        flowcore.Engine(store, clock=clock, tracing=False) as engine,
        Server([], engine=engine, assets=graph) as server,
    ):
        yield server


def eager(values: dict[str, Any], calls: list[str], debounce: float = 5.0) -> AssetGraph:
    @asset
    def up() -> Any:
        return values["up"]

    @asset(automation=on_upstream_change(debounce=debounce))
    def down(up: Any) -> Any:
        calls.append(repr(up))
        return [up]

    return AssetGraph([up, down])


async def test_an_upstream_change_materialises_downstream_once_after_the_debounce() -> None:
    values: dict[str, Any] = {"up": 1}
    calls: list[str] = []
    graph = eager(values, calls)
    clock, store = FakeClock(start=T0), MemoryStore()
    async with serving(graph, clock, store) as server:
        await server.tick()
        assert calls == []  # the upstream was never built: nothing to react to
        await materialize_async(["up"], graph=graph, engine=server.engine)
        clock.advance(1)
        await server.tick()
        await server.wait_idle()
        assert calls == []  # within the debounce
        [waiting] = await store.asset_evaluations("down", limit=1)
        assert waiting.decision == "wait" and waiting.until == pytest.approx(T0 + 5)
        clock.advance(5)
        await server.tick()
        await server.wait_idle()
        assert calls == ["1"]
        for _ in range(3):  # again and again: the same upstream versions, no new run
            clock.advance(10)
            await server.tick()
            await server.wait_idle()
        assert calls == ["1"]
        # The upstream re-materialised to the same data version: downstream stays fresh.
        await materialize_async(["up"], graph=graph, engine=server.engine, only_stale=False)
        clock.advance(10)
        await server.tick()
        await server.wait_idle()
        assert calls == ["1"]
        # A new upstream data version: once more.
        values["up"] = 2
        await materialize_async(["up"], graph=graph, engine=server.engine, only_stale=False)
        clock.advance(10)
        await server.tick()
        await server.wait_idle()
        clock.advance(10)
        await server.tick()
        await server.wait_idle()
        assert calls == ["1", "2"]
        found = await store.asset_evaluations("down")
        ran = [e for e in found if e.decision == "materialized"]
        assert len(ran) == 2 and all(e.run_id for e in ran)
        assert [e.decision for e in found].count("materialize") == 2


async def test_two_servers_react_once_to_the_same_upstream_versions() -> None:
    values: dict[str, Any] = {"up": 1}
    calls: list[str] = []
    graph = eager(values, calls, debounce=0)
    clock, store = FakeClock(start=T0), MemoryStore()
    async with serving(graph, clock, store) as one, serving(graph, clock, store) as two:
        await materialize_async(["up"], graph=graph, engine=one.engine)
        for _ in range(3):
            await one.tick()
            await two.tick()
            await one.wait_idle()
            await two.wait_idle()
            clock.advance(1)
        assert calls == ["1"]
        found = await store.asset_evaluations("down")
        claimed = [e.holder for e in found if e.decision == "materialize"]
        assert claimed == [one.holder]
        assert any(e.holder == two.holder and e.decision == "claimed-elsewhere" for e in found)


async def test_on_cron_materialises_at_its_ticks_when_stale_or_missing() -> None:
    built: list[float] = []

    @asset(automation=on_cron("0 6 * * *"))
    def morning() -> int:
        built.append(clock.time())
        return 1

    graph = AssetGraph([morning])
    clock, store = FakeClock(start=T0), MemoryStore()
    async with serving(graph, clock, store) as server:
        await server.tick()
        assert built == []  # 00:00: the tick is at 06:00
        clock.advance(6 * 3600 + 1)
        await server.tick()
        await server.wait_idle()
        assert built == [T0 + 6 * 3600 + 1]
        await server.tick()
        await server.wait_idle()
        assert len(built) == 1  # one tick, one materialisation
        clock.advance(24 * 3600)
        await server.tick()
        await server.wait_idle()
        assert len(built) == 1  # the next tick finds it fresh
        [skipped] = await store.asset_evaluations("morning", limit=1)
        assert skipped.decision == "skip" and "fresh" in skipped.reason


async def test_on_missing_materialises_complete_partitions_never_built() -> None:
    days: list[str] = []

    @asset(
        partitions=DailyPartitions("2026-01-07", tz="UTC"),
        automation=on_missing(),
    )
    def daily(partition_key: str) -> str:
        days.append(partition_key)
        return partition_key

    graph = AssetGraph([daily])
    clock, store = FakeClock(start=T0 + 3600), MemoryStore()
    async with serving(graph, clock, store) as server:
        await server.tick()
        await server.wait_idle()
        assert sorted(days) == ["2026-01-07", "2026-01-08", "2026-01-09"]  # not today's
        await server.tick()
        await server.wait_idle()
        assert len(days) == 3
        clock.advance(timedelta(days=1).total_seconds())
        await server.tick()
        await server.wait_idle()
        assert days[3:] == ["2026-01-10"]


async def test_on_overdue_fires_once_per_overdue_period_across_two_servers() -> None:
    events: list[flowcore.HookEvent] = []
    fired = anyio.Event()

    async def overdue(event: flowcore.HookEvent) -> None:
        nonlocal fired
        events.append(event)
        fired.set()

    @asset(freshness=Freshness(max_lag=timedelta(hours=1)), on_overdue=overdue)
    def hourly() -> int:
        return 1

    graph = AssetGraph([hourly])
    clock, store = FakeClock(start=T0), MemoryStore()
    async with serving(graph, clock, store) as one, serving(graph, clock, store) as two:
        await materialize_async(["hourly"], graph=graph, engine=one.engine)
        clock.advance(1800)
        await one.tick()
        await two.tick()
        assert events == []  # fresh for another half hour
        clock.advance(1860)
        for _ in range(3):
            await one.tick()
            await two.tick()
        with anyio.fail_after(10):
            await fired.wait()
        assert len(events) == 1
        [event] = events
        assert event.kind == "overdue" and event.asset is not None
        assert event.asset["key"] == "hourly"
        assert event.to_dict()["asset"]["due_by"] == event.asset["due_by"]
        # Materialised again: a new period, overdue an hour later, fired once more.
        fired = anyio.Event()
        await materialize_async(["hourly"], graph=graph, engine=one.engine, only_stale=False)
        clock.advance(3700)
        for _ in range(3):
            await two.tick()
            await one.tick()
        with anyio.fail_after(10):
            await fired.wait()
        assert len(events) == 2 and events[0].asset != events[1].asset
        decisions = [e for e in await store.asset_evaluations("hourly") if e.policy == "on_overdue"]
        assert [e.decision for e in decisions].count("fire-hooks") == 2


def test_on_overdue_needs_a_freshness_policy() -> None:
    with pytest.raises(flowcore.ConfigurationError, match="freshness"):

        @asset(on_overdue=print)
        def orphan() -> int:
            return 1


async def test_a_chain_reacts_in_order_each_asset_once() -> None:
    values: dict[str, Any] = {"a": 1}
    calls: list[str] = []

    @asset
    def a() -> Any:
        return values["a"]

    @asset(automation=on_upstream_change(debounce=0))
    def b(a: Any) -> Any:
        calls.append(f"b{a}")
        return a

    @asset(automation=on_upstream_change(debounce=0))
    def c(b: Any) -> Any:
        calls.append(f"c{b}")
        return b

    graph = AssetGraph([a, b, c])
    clock, store = FakeClock(start=T0), MemoryStore()
    async with serving(graph, clock, store) as server:
        await materialize_async(["a", "b", "c"], graph=graph, engine=server.engine)
        assert calls == ["b1", "c1"]
        values["a"] = 2
        await materialize_async(["a"], graph=graph, engine=server.engine, only_stale=False)
        for _ in range(4):  # c waits while b, stale, is rebuilt by its automation
            clock.advance(1)
            await server.tick()
            await server.wait_idle()
        assert calls == ["b1", "c1", "b2", "c2"]
        waited = [e for e in await store.asset_evaluations("c") if e.decision == "wait"]
        assert waited and "upstream b is stale" in waited[-1].reason
