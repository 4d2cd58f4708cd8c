"""The asset graph: order and levels, cycles and unknown upstreams named, selection."""

from __future__ import annotations

import types
from typing import Any

import pytest

from flowcore.assets import (
    Asset,
    AssetCheck,
    AssetDefinitionError,
    AssetGraph,
    CheckResult,
    asset,
    asset_check,
)


def _diamond() -> list[Asset[Any, Any]]:
    @asset(key="raw/events", group="ingest")
    def events() -> list[int]:
        return [3, 1, 2]

    @asset(group="clean")
    def low(raw__events: list[int]) -> int:
        return min(raw__events)

    @asset(group="clean", ins={"values": "raw/events"})
    def high(values: list[int]) -> int:
        return max(values)

    @asset(group="report")
    def report(low: int, high: int, title: str = "range") -> str:
        return f"{title}: {low}..{high}"

    return [report, high, low, events]


def test_a_diamond_is_ordered_in_levels() -> None:
    graph = AssetGraph(_diamond())
    assert graph.levels == (("raw/events",), ("high", "low"), ("report",))
    assert graph.order == ("raw/events", "high", "low", "report")
    assert graph.upstream["report"] == ("low", "high")  # `title` has a default: a parameter
    assert dict(graph.inputs["low"]) == {"raw__events": "raw/events"}
    assert dict(graph.inputs["high"]) == {"values": "raw/events"}
    assert graph.downstream["raw/events"] == ("high", "low")
    assert graph.upstream_of("report") == ("raw/events", "high", "low")
    assert graph.upstream_of("report", depth=1) == ("high", "low")
    assert graph.downstream_of("raw/events", depth=1) == ("high", "low")
    assert graph.downstream_of("raw/events", depth=0) == ()
    assert graph.downstream_of("report") == ()


def test_selection_by_name_pattern_and_group_with_closures() -> None:
    graph = AssetGraph(_diamond())
    assert graph.select() == graph.order
    assert graph.select("raw/*") == ("raw/events",)
    assert graph.select("h*", "l*") == ("high", "low")
    assert graph.select(groups=["clean"]) == ("high", "low")
    assert graph.select("low", upstream=True) == ("raw/events", "low")
    assert graph.select("raw/events", downstream=1) == ("raw/events", "high", "low")
    assert graph.select("raw/events", downstream=True) == graph.order
    # Keys only, in any order and repeated: the keys, in order (a key is no pattern).
    assert graph.select("report", "low", "raw/events", "low") == ("raw/events", "low", "report")
    assert graph.select("report", "h*") == ("high", "report")
    assert graph.select("report", groups=["clean"]) == ("high", "low", "report")
    assert graph.partitioned == frozenset()
    with pytest.raises(
        AssetDefinitionError, match="no asset matches 'reprot'; did you mean 'report'"
    ):
        graph.select("reprot")
    with pytest.raises(AssetDefinitionError, match="no asset is in group 'cleen'"):
        graph.select(groups=["cleen"])


def test_a_cycle_is_named_by_its_path() -> None:
    @asset
    def a(c: int) -> int:
        return c

    @asset
    def b(a: int) -> int:
        return a

    @asset
    def c(b: int) -> int:
        return b

    @asset
    def outside(c: int) -> int:
        return c

    with pytest.raises(AssetDefinitionError, match="cycle: a -> b -> c -> a;"):
        AssetGraph([a, b, c, outside])

    @asset(deps=["selfish"])
    def selfish() -> int:
        return 1

    with pytest.raises(AssetDefinitionError, match="cycle: selfish -> selfish"):
        AssetGraph([selfish])


def test_an_unknown_upstream_names_itself_the_asking_asset_and_the_closest_names() -> None:
    @asset
    def daily_orders() -> int:
        return 1

    @asset
    def report(daily_ordrs: int) -> int:
        return daily_ordrs

    @asset(deps=["raw/clicks"])
    def clicks_report() -> int:
        return 0

    with pytest.raises(AssetDefinitionError) as caught:
        AssetGraph([daily_orders, report, clicks_report])
    message = str(caught.value)
    assert "2 problems" in message
    assert (
        "asset 'report' reads 'daily_ordrs' (parameter 'daily_ordrs'), which is not an asset "
        "of this graph; did you mean 'daily_orders'?"
    ) in message
    assert "asset 'clicks_report' depends on 'raw/clicks' (deps)" in message


def test_duplicate_keys_and_checks_of_unknown_assets_are_refused() -> None:
    def make() -> Asset[Any, Any]:
        @asset(key="orders")
        def orders() -> int:
            return 1

        return orders

    with pytest.raises(AssetDefinitionError, match="two assets have the key 'orders'"):
        AssetGraph([make(), make()])

    @asset_check(asset="ordrs")
    def positive(value: int) -> bool:
        return value > 0

    with pytest.raises(AssetDefinitionError, match=r"checks 'ordrs'.*did you mean 'orders'"):
        AssetGraph([make(), positive])


def test_checks_are_attached_from_the_asset_and_from_beside_it() -> None:
    @asset_check
    def not_empty(rows: list[int]) -> CheckResult:
        return CheckResult(bool(rows), metadata={"rows": len(rows)})

    @asset(checks=[not_empty])
    def rows() -> list[int]:
        return [1]

    @asset_check(asset=rows, severity="warn")
    def small(rows: list[int]) -> bool:
        return len(rows) < 10

    graph = AssetGraph([small, rows])
    attached = graph.checks["rows"]
    assert [c.name for c in attached] == ["not_empty", "small"]
    assert [(c.blocking, c.severity) for c in attached] == [(True, "error"), (False, "warn")]
    assert all(c.asset_key == "rows" for c in attached)
    assert not_empty([]).passed is False  # calling a check calls its function

    # A module holds both the check and the asset it was given to: attached once; and
    # `small`, made with the asset object, comes with it even when not listed.
    assert [c.name for c in AssetGraph([not_empty, rows]).checks["rows"]] == ["not_empty", "small"]

    @asset_check
    def orphan(rows: list[int]) -> bool:
        return True

    with pytest.raises(AssetDefinitionError, match="check 'orphan' names no asset"):
        AssetGraph([rows, orphan])


def test_from_module_collects_assets_and_checks() -> None:
    module = types.ModuleType("defs")
    for item in _diamond():
        setattr(module, item.name, item)

    @asset_check(asset="report")
    def mentions_range(text: str) -> bool:
        return "range" in text

    module.mentions_range = mentions_range  # type: ignore[attr-defined]
    module.alias = module.report  # type: ignore[attr-defined]  # the same asset twice
    graph = AssetGraph.from_module(module)
    assert len(graph) == 4 and graph.levels[-1] == ("report",)
    assert isinstance(graph.checks["report"][0], AssetCheck)


def test_ten_thousand_assets() -> None:
    # A wide and deep graph: 100 chains of 100 assets, each reading its predecessor.
    items = []
    for chain in range(100):
        for step in range(100):
            key = f"c{chain}/s{step}"
            ins = {"previous": f"c{chain}/s{step - 1}"} if step else {}

            def fn(previous: int = 0) -> int:
                return previous + 1

            items.append(asset(key=key, ins=ins)(fn))
    graph = AssetGraph(items)
    assert len(graph.levels) == 100 and all(len(level) == 100 for level in graph.levels)
    assert graph.upstream_of("c7/s99", depth=3) == ("c7/s96", "c7/s97", "c7/s98")
    assert len({a.code_version for a in graph.assets.values()}) == 1  # one function's source


def test_the_partitioned_assets_are_known() -> None:
    from flowcore.assets import DailyPartitions

    @asset(partitions=DailyPartitions("2026-01-01"))
    def daily(partition_key: str) -> int:
        return 1

    @asset
    def total(daily: dict[str, int]) -> int:
        return sum(daily.values())

    assert AssetGraph([daily, total]).partitioned == frozenset({"daily"})
