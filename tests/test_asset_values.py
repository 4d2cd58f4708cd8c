"""The pure values of assets: freshness on given times, automation, outputs, data versions."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from flowcore.assets import (
    CheckResult,
    DailyPartitions,
    DataVersionError,
    Freshness,
    OnCron,
    Output,
    data_version,
    on_cron,
    on_upstream_change,
)
from flowcore.errors import ConfigurationError

PARIS = ZoneInfo("Europe/Paris")


def _at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=PARIS)


def test_max_lag_freshness() -> None:
    policy = Freshness(max_lag=timedelta(hours=1))
    built = _at(10, 8)
    assert policy.due_by(built) == _at(10, 9)
    assert not policy.overdue(built, _at(10, 9))  # exactly max_lag old: still fresh
    assert policy.overdue(built, _at(10, 9, 1))
    assert policy.overdue(None, _at(10, 9))  # never materialised
    assert policy.due_by(None) is None


def test_cron_deadline_freshness_over_the_spring_forward_day() -> None:
    # Data lands at 09:00 Paris; a materialisation after it is due two hours later.
    policy = Freshness(cron="0 9 * * *", tz="Europe/Paris", max_lag=timedelta(hours=2))
    built = _at(28, 10)  # after Saturday's data
    assert policy.due_by(built) == _at(29, 11)  # Sunday 09:00 CEST + 2 h
    assert not policy.overdue(built, _at(29, 10, 59))
    assert not policy.overdue(built, _at(29, 11))
    assert policy.overdue(built, _at(29, 11, 1))
    assert not policy.overdue(_at(29, 9, 30), _at(29, 23))  # Sunday's data is in
    strict = Freshness(cron="0 9 * * *", tz="Europe/Paris")  # max_lag 0: due at the tick
    assert strict.overdue(_at(29, 8, 59), _at(29, 9, 1))
    assert not strict.overdue(_at(29, 9), _at(29, 9, 1))


def test_freshness_of_time_window_partitions() -> None:
    days = DailyPartitions("2026-03-01", tz="Europe/Paris")
    _, end = days.window("2026-03-28")  # Sunday 00:00 Paris
    assert end.astimezone(UTC) == datetime(2026, 3, 28, 23, tzinfo=UTC)
    lagged = Freshness(max_lag=timedelta(hours=3))  # elapsed hours (the night is 1 h short)
    due = datetime(2026, 3, 29, 2, tzinfo=UTC)  # 04:00 CEST
    assert lagged.due_by(None, window_end=end) == due
    assert not lagged.overdue(None, due - timedelta(minutes=1), window_end=end)  # not due yet
    assert lagged.overdue(None, due + timedelta(minutes=1), window_end=end)
    assert lagged.overdue(_at(28, 12), _at(29, 5), window_end=end)  # built before it ended
    assert not lagged.overdue(_at(29, 1), _at(30, 12), window_end=end)  # complete: fresh
    deadline = Freshness(cron="0 9 * * *", tz="Europe/Paris")
    assert deadline.due_by(None, window_end=end) == _at(29, 9)
    assert deadline.overdue(None, _at(29, 9, 1), window_end=end)


def test_freshness_is_checked_when_made() -> None:
    with pytest.raises(ConfigurationError, match="give `max_lag`"):
        Freshness()
    with pytest.raises(ConfigurationError, match="must be > 0 without a cron"):
        Freshness(max_lag=timedelta(0))
    with pytest.raises(ConfigurationError, match="must have 5 fields"):
        Freshness(cron="0 9 * *")
    with pytest.raises(ConfigurationError, match="`tz` is the zone of `cron`"):
        Freshness(max_lag=timedelta(hours=1), tz="Europe/Paris")
    with pytest.raises(ConfigurationError, match="timezone-aware"):
        Freshness(max_lag=timedelta(hours=1)).overdue(datetime(2026, 1, 1), _at(1, 1))


def test_automation_values() -> None:
    assert on_upstream_change().debounce == 1.0
    assert on_upstream_change(debounce=timedelta(seconds=30)).debounce == 30.0
    with pytest.raises(ConfigurationError, match="`debounce` must be a number of seconds"):
        on_upstream_change(debounce=-1)
    policy = on_cron("0 6 * * *", tz="Europe/Paris")
    assert isinstance(policy, OnCron)
    assert policy.schedule.next_after(datetime(2026, 3, 29, 3, tzinfo=UTC)) == datetime(
        2026, 3, 29, 4, tzinfo=UTC
    )
    with pytest.raises(ConfigurationError, match="not a known time zone"):
        on_cron("0 6 * * *", tz="Mars/Olympus")


def test_outputs_and_check_results() -> None:
    out = Output({"rows": 3}, data_version="etag-1", metadata={"rows": 3})
    assert out.metadata["rows"] == 3
    with pytest.raises(TypeError):
        out.metadata["rows"] = 4  # type: ignore[index]  # read-only
    with pytest.raises(ConfigurationError, match="`data_version` must be a non-empty str"):
        Output(1, data_version="")
    with pytest.raises(ConfigurationError, match="str keys"):
        Output(1, metadata={1: "x"})  # type: ignore[dict-item]
    assert CheckResult(True).metadata == {}
    with pytest.raises(ConfigurationError, match="`passed` must be True or False"):
        CheckResult("yes")  # type: ignore[arg-type]


@dataclasses.dataclass
class Row:
    id: int
    tags: set[str]


def test_data_versions_are_stable_and_follow_the_value() -> None:
    value = {"b": [1, 2], "a": {"x": 1.5, "y": None}}
    reordered = {"a": {"y": None, "x": 1.5}, "b": [1, 2]}
    assert data_version(value) == data_version(reordered)
    assert data_version(value) != data_version({**value, "b": [2, 1]})
    assert data_version(Row(1, {"x", "y", "z"})) == data_version(Row(1, {"z", "y", "x"}))
    assert data_version(b"abc") == data_version(bytearray(b"abc"))
    assert data_version(b"abc") != data_version("abc")
    # A known value, so that a change of encoding (which would make everything stale) shows.
    assert data_version([1, "a"]) == "b9a02fd7a53941ab7317f474332f179a"

    class Frame:
        pass

    with pytest.raises(DataVersionError, match=r"Output\(value, data_version=...\)"):
        data_version(Frame())
