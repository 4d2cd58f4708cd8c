"""Partition mappings: daily ← hourly over daylight saving, static tables, impossible pairs."""

from __future__ import annotations

import pytest

from flowcore.assets import (
    AllPartitionsMapping,
    AssetDefinitionError,
    AssetGraph,
    DailyPartitions,
    HourlyPartitions,
    IdentityMapping,
    StaticMapping,
    StaticPartitions,
    TimeWindowMapping,
    asset,
)
from flowcore.assets.mappings import default_mapping

PARIS = "Europe/Paris"
DAYS = DailyPartitions("2026-01-01", tz=PARIS)
HOURS = HourlyPartitions("2026-01-01T00:00", tz=PARIS)


def test_a_day_reads_the_23_24_or_25_hours_of_its_local_day() -> None:
    window = TimeWindowMapping()
    spring = window.upstream_keys(DAYS, "2026-03-29", HOURS)
    autumn = window.upstream_keys(DAYS, "2026-10-25", HOURS)
    summer = window.upstream_keys(DAYS, "2026-06-01", HOURS)
    assert spring is not None and autumn is not None and summer is not None
    assert (len(spring), len(autumn), len(summer)) == (23, 25, 24)
    assert spring[0] == "2026-03-29T00:00" and spring[-1] == "2026-03-29T23:00"
    assert "2026-10-25T02:00+02:00" in autumn and "2026-10-25T02:00+01:00" in autumn
    assert "2026-10-24T23:00" not in autumn and "2026-10-26T00:00" not in autumn


def test_an_hour_feeds_the_day_it_is_in() -> None:
    window = TimeWindowMapping()
    for hour, day in [
        ("2026-10-25T02:00+01:00", "2026-10-25"),
        ("2026-10-25T23:00", "2026-10-25"),
        ("2026-10-26T00:00", "2026-10-26"),
        ("2026-03-29T03:00", "2026-03-29"),
    ]:
        assert list(window.downstream_keys(HOURS, hour, DAYS) or ()) == [day]
    # And back: every hour of the day feeds it, each exactly once.
    for hour in window.upstream_keys(DAYS, "2026-10-25", HOURS) or ():
        assert list(window.downstream_keys(HOURS, hour, DAYS) or ()) == ["2026-10-25"]


def test_offsets_read_earlier_windows() -> None:
    yesterday = TimeWindowMapping(start_offset=-1, end_offset=-1)
    assert list(yesterday.upstream_keys(DAYS, "2026-03-29", DAYS) or ()) == ["2026-03-28"]
    assert list(yesterday.downstream_keys(DAYS, "2026-03-28", DAYS) or ()) == ["2026-03-29"]
    assert list(yesterday.upstream_keys(DAYS, "2026-01-01", DAYS) or ()) == []  # before start
    week = TimeWindowMapping(start_offset=-6)
    assert len(week.upstream_keys(DAYS, "2026-03-29", HOURS) or ()) == 7 * 24 - 1


def test_static_identity_and_all_partitions() -> None:
    cities = StaticPartitions(["paris", "lyon", "boston"])
    countries = StaticPartitions(["fr", "us"])
    table = StaticMapping({"paris": "fr", "lyon": "fr", "boston": "us"})
    assert table.upstream_keys(countries, "fr", cities) == ("paris", "lyon")
    assert table.downstream_keys(cities, "boston", countries) == ("us",)
    assert table.problem(countries, cities) == ""
    assert "'boston' is not a key of the upstream partitions" in table.problem(
        countries, StaticPartitions(["paris", "lyon"])
    )
    assert IdentityMapping().upstream_keys(cities, "lyon", cities) == ("lyon",)
    assert IdentityMapping().upstream_keys(cities, "lyon", None) is None  # one value
    everything = AllPartitionsMapping().upstream_keys(None, None, cities)
    assert list(everything or ()) == ["paris", "lyon", "boston"]
    assert isinstance(default_mapping(None, cities), AllPartitionsMapping)
    assert isinstance(default_mapping(DAYS, HOURS), TimeWindowMapping)
    assert isinstance(
        default_mapping(DAYS, DailyPartitions("2025-01-01", tz=PARIS)), IdentityMapping
    )


def test_an_impossible_pairing_is_refused_when_the_graph_is_built() -> None:
    regions = StaticPartitions(["eu", "us"])

    @asset(partitions=HOURS)
    def clicks() -> int:
        return 1

    @asset(partitions=regions)
    def by_region(clicks: int) -> int:
        return clicks

    with pytest.raises(AssetDefinitionError) as caught:
        AssetGraph([clicks, by_region])
    message = str(caught.value)
    assert "asset 'by_region' reads 'clicks' (parameter 'clicks')" in message
    assert "StaticMapping" in message

    @asset(partitions=regions, partition_mapping={"clicks": TimeWindowMapping()})
    def forced(clicks: int) -> int:
        return clicks

    with pytest.raises(AssetDefinitionError, match="time-window mapping joins two time-window"):
        AssetGraph([clicks, forced])

    @asset(partitions=DAYS)
    def daily(clicks: int) -> int:  # daily from hourly: the time-window default
        return clicks

    graph = AssetGraph([clicks, daily])
    assert isinstance(graph.mapping("daily", "clicks"), TimeWindowMapping)


def test_a_mapping_must_name_a_parameter_or_a_dep() -> None:
    with pytest.raises(AssetDefinitionError, match="names 'click', which is neither"):

        @asset(partitions=DAYS, partition_mapping={"click": TimeWindowMapping()})
        def daily(clicks: int) -> int:
            return clicks
