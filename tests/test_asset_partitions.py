"""Partitions: keys, indexes and windows, over daylight saving, without materialising keys."""

from __future__ import annotations

import tracemalloc
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowcore.assets import (
    DailyPartitions,
    DynamicPartitions,
    HourlyPartitions,
    PartitionKeyError,
    StaticPartitions,
)
from flowcore.errors import ConfigurationError

PARIS = "Europe/Paris"
TICK = timedelta(microseconds=1)


def _utc(t: datetime) -> datetime:
    return t.astimezone(UTC)


def test_daily_keys_are_local_dates_and_dst_days_are_23_and_25_hours() -> None:
    days = DailyPartitions("2026-01-01", tz=PARIS)
    assert days.index_of("2026-01-01") == 0
    assert days.key_of(87) == "2026-03-29"
    spring = days.window("2026-03-29")
    autumn = days.window("2026-10-25")
    assert _utc(spring[1]) - _utc(spring[0]) == timedelta(hours=23)
    assert _utc(autumn[1]) - _utc(autumn[0]) == timedelta(hours=25)
    assert spring[0].isoformat() == "2026-03-29T00:00:00+01:00"
    assert spring[1].isoformat() == "2026-03-30T00:00:00+02:00"
    assert days.key_for(datetime(2026, 3, 28, 23, 30, tzinfo=UTC)) == "2026-03-29"


def test_hourly_partitions_have_23_keys_on_the_spring_day_and_25_on_the_autumn_day() -> None:
    spring = HourlyPartitions("2026-03-29T00:00", end="2026-03-30T00:00", tz=PARIS)
    keys = list(spring.keys())
    assert len(keys) == 23
    assert "2026-03-29T02:00" not in keys
    assert keys[:3] == ["2026-03-29T00:00", "2026-03-29T01:00", "2026-03-29T03:00"]

    autumn = HourlyPartitions("2026-10-25T00:00", end="2026-10-26T00:00", tz=PARIS)
    keys = list(autumn.keys())
    assert len(keys) == 25
    assert keys[1:5] == [
        "2026-10-25T01:00",
        "2026-10-25T02:00+02:00",
        "2026-10-25T02:00+01:00",
        "2026-10-25T03:00",
    ]
    first, second = autumn.window("2026-10-25T02:00+02:00"), autumn.window("2026-10-25T02:00+01:00")
    assert _utc(first[0]) == datetime(2026, 10, 25, 0, tzinfo=UTC)
    assert _utc(second[0]) == datetime(2026, 10, 25, 1, tzinfo=UTC) == _utc(first[1])


def test_a_string_that_is_not_a_key_is_refused_with_the_expected_form_and_an_example() -> None:
    days = DailyPartitions("2026-01-01", tz=PARIS)
    for bad, why in [
        ("2026-02-30", "no such date"),
        ("29/03/2026", "not a date"),
        ("2025-12-31", "before the start"),
    ]:
        with pytest.raises(PartitionKeyError, match=why) as caught:
            days.index_of(bad)
        assert "expected a date 'YYYY-MM-DD' in Europe/Paris, e.g. '2026-01-01'" in str(
            caught.value
        )

    hours = HourlyPartitions("2026-10-25T00:00", tz=PARIS)
    with pytest.raises(PartitionKeyError, match=r"spelled '2026-10-25T02:00\+02:00'"):
        hours.index_of("2026-10-25T02:00")  # happens twice: the offset says which
    with pytest.raises(PartitionKeyError, match="spelled '2026-10-25T03:00'"):
        hours.index_of("2026-10-25T03:00+01:00")  # one spelling per key
    with pytest.raises(PartitionKeyError, match="not the start of one of its hours"):
        hours.index_of("2026-10-25T03:30")
    with pytest.raises(PartitionKeyError, match="does not exist"):
        HourlyPartitions("2026-03-29T00:00", tz=PARIS).index_of("2026-03-29T02:00")
    assert "2026-10-25T02:00" not in hours
    assert "2026-10-25T02:00+01:00" in hours


def test_keys_until_now_are_the_complete_windows_plus_end_offset() -> None:
    days = DailyPartitions("2026-03-01", tz=PARIS)
    noon = datetime(2026, 3, 29, 12, tzinfo=ZoneInfo(PARIS))
    assert days.keys(until=noon)[-1] == "2026-03-28"  # the 29th is not over
    assert DailyPartitions("2026-03-01", tz=PARIS, end_offset=1).keys(until=noon)[-1] == (
        "2026-03-29"
    )
    assert days.count(until=datetime(2026, 3, 1, tzinfo=ZoneInfo(PARIS))) == 0
    assert DailyPartitions("2026-03-01", "2026-03-10").count(until=noon) == 9  # capped by end
    with pytest.raises(ConfigurationError, match=r"keys\(until=now\)"):
        days.keys()


def test_a_million_daily_partitions_are_ranges_not_strings() -> None:
    start = date(2000, 1, 1)
    days = DailyPartitions(start, end=date.fromordinal(start.toordinal() + 1_000_000))
    tracemalloc.start()
    try:
        everything = days.keys()
        assert len(everything) == 1_000_000
        assert everything[0] == "2000-01-01" and everything[-1] == days.key_of(999_999)
        span = days.keys_between("2100-01-01", "4000-12-31")
        assert len(span) == date(4000, 12, 31).toordinal() - date(2100, 1, 1).toordinal() + 1
        assert "3000-06-15" in span and "4001-01-01" not in span
        done = days.subset(span)
        done.discard("3000-06-15")
        assert len(done) == len(span) - 1 and done.range_count == 2
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200_000  # a million keys would be some 60 MB


def test_key_ranges_slice_and_compare_lazily() -> None:
    days = DailyPartitions("2026-01-01", "2027-01-01")
    year = days.keys()
    assert len(year) == 365
    march = year[59:90]
    assert (march[0], march[-1], len(march)) == ("2026-03-01", "2026-03-31", 31)
    assert list(year[0:6:2]) == ["2026-01-01", "2026-01-03", "2026-01-05"]
    assert march == days.keys_between("2026-03-01", "2026-03-31")
    with pytest.raises(PartitionKeyError, match="swap them"):
        days.keys_between("2026-03-31", "2026-03-01")


ZONES = ["UTC", PARIS, "America/Santiago", "Australia/Lord_Howe", "Asia/Kathmandu"]


@settings(max_examples=300, deadline=None)
@given(zone=st.sampled_from(ZONES), index=st.integers(0, 30_000))
def test_daily_key_index_window_round_trip(zone: str, index: int) -> None:
    days = DailyPartitions("2000-01-01", tz=zone)
    key = days.key_of(index)
    assert days.index_of(key) == index
    start, end = days.window(key)
    assert _utc(start) < _utc(end)
    assert days.index_for(start) == index == days.index_for(_utc(end) - TICK)
    assert days.index_for(end) == index + 1
    assert days.window_of(index + 1)[0] == end  # windows tile time


@settings(max_examples=300, deadline=None)
@given(zone=st.sampled_from(ZONES), index=st.integers(0, 24 * 366 * 3))
def test_hourly_key_index_window_round_trip(zone: str, index: int) -> None:
    hours = HourlyPartitions("2025-01-01T00:00", tz=zone)
    key = hours.key_of(index)
    assert hours.index_of(key) == index
    start, end = hours.window(key)
    assert _utc(end) - _utc(start) == timedelta(hours=1)
    assert hours.index_for(start) == index == hours.index_for(_utc(end) - TICK)
    local = start.astimezone(ZoneInfo(zone)) if zone != "UTC" else start
    assert key.startswith(local.strftime("%Y-%m-%dT%H:%M"))


def test_santiago_days_start_when_the_clocks_jump_over_midnight() -> None:
    # Chile springs forward at 24:00 on Saturday: Sunday has no 00:00.
    days = DailyPartitions("2026-09-01", tz="America/Santiago")
    start, end = days.window("2026-09-06")
    assert start.replace(tzinfo=None) == datetime(2026, 9, 6, 1, 0)
    assert _utc(end) - _utc(start) == timedelta(hours=23)


def test_static_and_dynamic_partitions() -> None:
    regions = StaticPartitions(["eu", "us", "apac"])
    assert [regions.index_of(k) for k in ("eu", "us", "apac")] == [0, 1, 2]
    assert list(regions.keys()) == ["eu", "us", "apac"] and len(regions) == 3
    with pytest.raises(PartitionKeyError, match=r"expected one of the listed keys, e\.g\. 'eu'"):
        regions.index_of("mars")
    with pytest.raises(ConfigurationError, match="'eu' is given twice"):
        StaticPartitions(["eu", "eu"])
    with pytest.raises(ConfigurationError, match="control character"):
        StaticPartitions(["ok", "bad\x1b[31m"])
    with pytest.raises(ConfigurationError, match="lone surrogate"):
        StaticPartitions(["caf\udce9"])
    with pytest.raises(ConfigurationError, match="a list of keys"):
        StaticPartitions("eu")

    customers = DynamicPartitions("customers")
    assert customers.check_key("acme") == "acme"
    with pytest.raises(PartitionKeyError, match="must not be empty"):
        customers.check_key("")
    with pytest.raises(TypeError, match="numbered by the store"):
        customers.index_of("acme")


def test_definitions_are_checked_when_made() -> None:
    with pytest.raises(ConfigurationError, match="not a known time zone"):
        DailyPartitions("2026-01-01", tz="Europe/Pariss")
    with pytest.raises(ConfigurationError, match="must be after `start`"):
        DailyPartitions("2026-01-02", "2026-01-01")
    with pytest.raises(ConfigurationError, match="on the hour"):
        HourlyPartitions("2026-01-01T00:30")
    with pytest.raises(ConfigurationError, match="'YYYY-MM-DD'"):
        DailyPartitions("yesterday")
    assert DailyPartitions(datetime(2026, 3, 28, 23, 30, tzinfo=UTC), tz=PARIS).start == date(
        2026, 3, 29
    )
    assert DailyPartitions("2026-01-01", tz=PARIS) == DailyPartitions(date(2026, 1, 1), tz=PARIS)
