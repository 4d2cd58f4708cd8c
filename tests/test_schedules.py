"""Schedules as values and the arithmetic of their slots, on plain datetimes (no clock).

The daylight-saving cases are Europe/Paris in 2026: clocks spring forward on March 29
at 01:00 UTC (02:00 CET becomes 03:00 CEST) and fall back on October 25 at 01:00 UTC
(03:00 CEST becomes 02:00 CET).
"""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim
from hypothesis import given, settings
from hypothesis import strategies as st

import flowcore
from flowcore.schedules import (
    DUE_TOLERANCE,
    CronSchedule,
    DueSlots,
    IntervalSchedule,
    Schedule,
    Slot,
    cron,
    due_slots,
    every,
)

SPRING = datetime(2026, 3, 29, 1, tzinfo=UTC)  # Europe/Paris springs forward
AUTUMN = datetime(2026, 10, 25, 1, tzinfo=UTC)  # Europe/Paris falls back
US = timedelta(microseconds=1)


def utc(month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, second, tzinfo=UTC)


def hours(start: datetime, first: int, last: int) -> list[datetime]:
    return [start + timedelta(hours=h) for h in range(first, last + 1)]


# -- slot counts -----------------------------------------------------------------------------


def test_24_hours_of_a_5_minute_schedule_are_288_slots() -> None:
    start = utc(5, 3)
    slots = list(cron("*/5 * * * *").slots_between(start, start + timedelta(hours=24)))
    assert len(slots) == 288
    assert slots[0] == start + timedelta(minutes=5)
    assert slots[-1] == start + timedelta(hours=24)
    assert {b - a for a, b in itertools.pairwise(slots)} == {timedelta(minutes=5)}


@pytest.mark.parametrize("change", [SPRING, AUTUMN], ids=["spring", "autumn"])
def test_a_5_minute_schedule_follows_real_time_across_a_dst_change(change: datetime) -> None:
    # The hour field is `*`: 288 slots in any 24 real hours, even the ones with a
    # missing or a repeated local hour, 5 minutes apart.
    start = change - timedelta(hours=12)
    schedule = cron("*/5 * * * *", tz="Europe/Paris")
    slots = list(schedule.slots_between(start, start + timedelta(hours=24)))
    assert len(slots) == 288
    assert {b - a for a, b in itertools.pairwise(slots)} == {timedelta(minutes=5)}


def test_slots_between_is_lazy_and_half_open() -> None:
    schedule = cron("0 * * * *")
    slots = schedule.slots_between(utc(5, 3, 10), utc(5, 3, 12))
    assert next(slots) == utc(5, 3, 11)  # (start, end]: 10:00 itself is not in
    assert list(slots) == [utc(5, 3, 12)]
    endless = schedule.slots_between(utc(5, 3), datetime.max.replace(tzinfo=UTC) - timedelta(1))
    assert next(endless) == utc(5, 3, 1)


# -- daylight saving: the exact instants -----------------------------------------------------


def test_a_daily_time_that_does_not_exist_fires_once_when_the_clocks_jump() -> None:
    nightly = cron("30 2 * * *", tz="Europe/Paris")
    assert list(nightly.slots_between(utc(3, 27), utc(3, 31))) == [
        utc(3, 27, 1, 30),  # 02:30 CET
        utc(3, 28, 1, 30),  # 02:30 CET
        utc(3, 29, 1, 0),  # 02:30 does not exist: 03:00 CEST, when the clocks jump
        utc(3, 30, 0, 30),  # 02:30 CEST
    ]


def test_a_daily_time_that_happens_twice_fires_once_at_the_first() -> None:
    nightly = cron("30 2 * * *", tz="Europe/Paris")
    assert list(nightly.slots_between(utc(10, 23), utc(10, 27))) == [
        utc(10, 23, 0, 30),  # 02:30 CEST
        utc(10, 24, 0, 30),  # 02:30 CEST
        utc(10, 25, 0, 30),  # the first 02:30 (CEST); not 01:30 UTC, the second (CET)
        utc(10, 26, 1, 30),  # 02:30 CET
    ]


def test_an_hourly_schedule_fires_23_times_on_the_spring_forward_day() -> None:
    hourly = cron("0 * * * *", tz="Europe/Paris")
    # The local day of March 29: from 00:00 CET (23:00 UTC) to 23:59 CEST (21:59 UTC).
    day = list(hourly.slots_between(utc(3, 28, 23) - US, utc(3, 29, 22) - US))
    assert day == [utc(3, 28, 23), *hours(utc(3, 29), 0, 21)]
    assert len(day) == 23
    # 00:00 CET, 01:00 CET, then 03:00 CEST: the missing 02:00 is no real hour.
    assert [s.astimezone(ZoneInfo("Europe/Paris")).hour for s in day[:4]] == [0, 1, 3, 4]


def test_an_hourly_schedule_fires_25_times_on_the_fall_back_day() -> None:
    hourly = cron("0 * * * *", tz="Europe/Paris")
    # The local day of October 25: from 00:00 CEST (22:00 UTC) to 23:59 CET (22:59 UTC).
    day = list(hourly.slots_between(utc(10, 24, 22) - US, utc(10, 25, 23) - US))
    assert day == [utc(10, 24, 22), utc(10, 24, 23), *hours(utc(10, 25), 0, 22)]
    assert len(day) == 25
    # 02:00 CEST (00:00 UTC) and 02:00 CET (01:00 UTC): two real hours, one run each.
    paris = ZoneInfo("Europe/Paris")
    assert [s.astimezone(paris).strftime("%H%z") for s in day[1:4]] == [
        "01+0200",
        "02+0200",
        "02+0100",
    ]


@pytest.mark.parametrize(
    ("expr", "spring", "autumn"),
    [
        # Fixed hours are wall-clock times: a missing one fires once when the clocks jump
        # (however many of the expression's times fell in the gap), a repeated one once.
        ("*/30 2 * * *", [utc(3, 29, 1)], [utc(10, 25, 0), utc(10, 25, 0, 30)]),
        ("0 2,3 * * *", [utc(3, 29, 1)], [utc(10, 25, 0), utc(10, 25, 2)]),
        (
            "0 */2 * * *",
            [utc(3, 28, 21), utc(3, 28, 23), utc(3, 29, 1), utc(3, 29, 2), utc(3, 29, 4)],
            [utc(10, 24, 22), utc(10, 25, 0), utc(10, 25, 3), utc(10, 25, 5)],
        ),
        ("0 3 * * *", [utc(3, 29, 1)], [utc(10, 25, 2)]),
        ("0 1 * * *", [utc(3, 29, 0)], [utc(10, 24, 23)]),
    ],
)
def test_wall_clock_times_around_both_changes(
    expr: str, spring: list[datetime], autumn: list[datetime]
) -> None:
    schedule = cron(expr, tz="Europe/Paris")
    around = timedelta(hours=4)
    assert (
        list(schedule.slots_between(SPRING - around - timedelta(hours=1), SPRING + around))
        == spring
    )
    assert (
        list(schedule.slots_between(AUTUMN - around, AUTUMN + around + timedelta(hours=1)))
        == autumn
    )


def test_next_after_is_strictly_after_and_returns_utc() -> None:
    schedule = cron("*/5 * * * *", tz="Europe/Paris")
    assert schedule.next_after(utc(5, 3, 10)) == utc(5, 3, 10, 5)  # a slot itself: the next
    assert schedule.next_after(utc(5, 3, 10) - US) == utc(5, 3, 10)
    assert schedule.next_after(utc(5, 3, 10) + US) == utc(5, 3, 10, 5)
    paris = datetime(2026, 5, 3, 12, 1, tzinfo=ZoneInfo("Europe/Paris"))  # any zone in
    assert schedule.next_after(paris) == utc(5, 3, 10, 5)
    assert schedule.next_after(paris).tzinfo is UTC  # UTC out
    assert every(minutes=5).next_after(paris).tzinfo is UTC


def test_a_repeated_hour_seen_from_its_second_occurrence() -> None:
    # From inside the second 02:xx (CET), the first occurrences are in the past: the
    # next slot of a wall-clock schedule is after the repeated hour.
    schedule = cron("*/20 2-3 * * *", tz="Europe/Paris")
    assert schedule.next_after(utc(10, 25, 1, 10)) == utc(10, 25, 2)  # 03:00 CET
    assert schedule.next_after(utc(10, 25, 0, 10)) == utc(10, 25, 0, 20)  # first 02:20


def test_an_hourly_schedule_on_some_days_starts_them_at_local_midnight() -> None:
    # Hourly on Saturdays: after the change, Saturday starts at 00:00 CET, 23:00 UTC.
    saturdays = cron("0 * * * SAT", tz="Europe/Paris")
    assert saturdays.next_after(utc(10, 24, 21, 30)) == utc(10, 30, 23)
    assert saturdays.next_after(utc(3, 28, 22, 30)) == utc(4, 3, 22)  # 00:00 CEST


TRANSITIONS = [
    SPRING,
    AUTUMN,
    datetime(2026, 3, 8, 7, tzinfo=UTC),  # America/New_York
    datetime(2026, 11, 1, 6, tzinfo=UTC),
    datetime(2026, 4, 4, 15, tzinfo=UTC),  # Australia/Lord_Howe: 30 minutes back
    datetime(2026, 10, 3, 15, 30, tzinfo=UTC),  # and forward
    datetime(2026, 10, 31, 23, tzinfo=UTC),  # a month's first day, at a change
]
EXPRESSIONS = [
    "30 2 * * *",
    "0 * * * *",
    "*/7 * * * *",
    "0 */2 * * *",
    "*/30 2 * * *",
    "15 1-3 * * *",
    "0 9 * * MON-FRI",
    "0 0 1 * *",
    "0 * * * SAT",
    "*/10 * 1 * *",
]


@settings(max_examples=300, deadline=None)
@given(
    expr=st.sampled_from(EXPRESSIONS),
    tz=st.sampled_from(
        ["Europe/Paris", "America/New_York", "UTC", "Asia/Kolkata", "Australia/Lord_Howe"]
    ),
    near=st.sampled_from(TRANSITIONS),
    offset=st.integers(min_value=-5 * 3600, max_value=5 * 3600),
    micro=st.integers(min_value=0, max_value=999_999),
)
def test_slots_are_consistent_around_changes(
    expr: str, tz: str, near: datetime, offset: int, micro: int
) -> None:
    schedule = cron(expr, tz=tz)
    t = near + timedelta(seconds=offset, microseconds=micro)
    nxt = schedule.next_after(t)
    assert nxt > t
    previous = schedule.prev_before(nxt)
    assert previous is not None and previous <= t  # nothing in between
    assert schedule.next_after(previous) == nxt
    assert schedule.next_after(nxt) > nxt
    local = nxt.astimezone(ZoneInfo(tz)).replace(tzinfo=None)
    if expr.split()[1] == "*":  # elapsed time: every slot is a real match of the expression
        assert next(CronSim(expr, local - timedelta(seconds=1))) == local


@settings(max_examples=200, deadline=None)
@given(
    expr=st.sampled_from(EXPRESSIONS),
    start=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1)),
)
def test_iterating_a_copy_of_the_parsed_expression_is_cronsims_own_iteration(
    expr: str, start: datetime
) -> None:
    # CronSchedule steps copies of one parsed CronSim (parsing costs more than a step):
    # the same slots as a CronSim made afresh, or the cronsim version broke the trick.
    schedule = cron(expr)
    ours = schedule.next_after(start.replace(tzinfo=UTC))
    theirs = next(CronSim(expr, start.replace(microsecond=0)))
    assert ours == theirs.replace(tzinfo=UTC)


# -- intervals -------------------------------------------------------------------------------


def test_every_7_minutes_is_7_minutes_of_real_time_across_a_dst_change() -> None:
    seven = every(minutes=7, anchor=datetime(2026, 3, 29, 1, 0, tzinfo=ZoneInfo("Europe/Paris")))
    assert seven.anchor == utc(3, 29, 0)  # the anchor is kept in UTC
    for change in (SPRING, AUTUMN):
        slots = list(seven.slots_between(change - timedelta(hours=2), change + timedelta(hours=2)))
        assert len(slots) == 34  # 4 hours / 7 minutes
        assert {b - a for a, b in itertools.pairwise(slots)} == {timedelta(minutes=7)}
    # Local wall-clock times jump with the clocks; the slots do not.
    paris = ZoneInfo("Europe/Paris")
    assert seven.next_after(SPRING - timedelta(minutes=1)) == utc(3, 29, 1, 3)
    assert seven.next_after(SPRING - timedelta(minutes=1)).astimezone(paris).hour == 3


def test_every_slots_are_anchor_plus_multiples() -> None:
    anchor = utc(6, 1, 0, 0, 30)
    schedule = every(timedelta(minutes=10), anchor=anchor)
    assert schedule.next_after(anchor) == anchor + timedelta(minutes=10)
    assert schedule.next_after(anchor - US) == anchor
    # The anchor sets the phase only: slots before it exist too.
    assert schedule.next_after(utc(1, 1)) == utc(1, 1, 0, 0, 30)
    assert schedule.prev_before(anchor) == anchor - timedelta(minutes=10)
    # Without an anchor, the phase starts at the epoch: on the hour, in UTC.
    assert every(hours=1).next_after(utc(5, 3, 10, 17)) == utc(5, 3, 11)
    assert every(days=1, hours=12).interval == timedelta(hours=36)
    assert every(seconds=1.5).next_after(utc(5, 3)) == utc(5, 3) + timedelta(seconds=1.5)


# -- keys and values -------------------------------------------------------------------------


def test_keys_are_stable_and_derived_from_what_places_the_slots() -> None:
    assert cron("*/5  *  * * *").key == "*/5 * * * * UTC"
    assert cron("30 2 * * *", tz=ZoneInfo("Europe/Paris")).key == "30 2 * * * Europe/Paris"
    assert cron("@daily", tz="Europe/Paris").key == "@daily Europe/Paris"
    assert every(minutes=7).key == "every 7m"
    assert every(hours=2).key == "every 2h"
    assert every(days=1).key == "every 1d"
    assert every(seconds=90).key == "every 90s"
    assert every(seconds=1.5).key == "every 1.5s"
    assert every(minutes=7, anchor=utc(1, 1)).key == "every 7m from 2026-01-01T00:00:00+00:00"
    assert cron("0 * * * *", name="hourly-ingest").key == "hourly-ingest"
    # The parameters and options do not place slots: they do not change the key.
    assert cron("0 * * * *", parameters={"a": 1}, catchup="all").key == "0 * * * * UTC"


def test_aliases_fire_like_their_expressions() -> None:
    t = utc(5, 3, 10, 17)
    assert cron("@daily").next_after(t) == cron("0 0 * * *").next_after(t) == utc(5, 4)
    assert cron("@hourly").next_after(t) == utc(5, 3, 11)
    assert cron("@weekly").next_after(t) == utc(5, 10)  # Sunday
    assert cron("@monthly").next_after(t) == utc(6, 1)
    assert cron("@yearly").next_after(t) == datetime(2027, 1, 1, tzinfo=UTC)


def test_schedules_are_frozen_values() -> None:
    a = cron("*/5 * * * *", tz="Europe/Paris", parameters={"pages": 20}, jitter=30)
    b = cron("*/5 * * * *", tz="Europe/Paris", parameters={"pages": 20}, jitter=30.0)
    assert a == b and hash(a) == hash(b)
    assert a != cron("*/5 * * * *", tz="Europe/Paris", parameters={"pages": 21}, jitter=30)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.expr = "* * * * *"  # type: ignore[misc]
    with pytest.raises(TypeError):
        a.parameters["pages"] = 1  # type: ignore[index]
    given = {"pages": 20}
    c = cron("0 * * * *", parameters=given)
    given["pages"] = 99  # the caller's dict, changed later, does not change the schedule
    assert c.parameters == {"pages": 20}
    assert isinstance(a, Schedule) and isinstance(a, CronSchedule)
    assert isinstance(every(minutes=1), IntervalSchedule)
    assert a.jitter == 30.0
    assert cron("0 * * * *", jitter=timedelta(minutes=1)).jitter == 60.0
    assert cron("0 * * * *", jitter=0).jitter is None


def test_repr_shows_what_was_given() -> None:
    assert repr(cron("0 * * * *")) == "flowcore.cron('0 * * * *')"
    assert repr(cron("0 2 * * *", tz="Europe/Paris", active=False, overlap="queue")) == (
        "flowcore.cron('0 2 * * *', tz='Europe/Paris', active=False, overlap='queue')"
    )
    assert repr(every(minutes=7, anchor=utc(1, 1), name="x")) == (
        "flowcore.every(datetime.timedelta(seconds=420), anchor=datetime.datetime(2026, 1, 1, "
        "0, 0, tzinfo=datetime.timezone.utc), name='x')"
    )


# -- catch-up after 3 hours of downtime ------------------------------------------------------

LAST = utc(5, 3, 10)  # the last slot fired before the server went down
BACK = utc(5, 3, 13, 0, 2)  # up again: 36 slots missed, 10:05 to 13:00


def five(**options: Any) -> CronSchedule:
    return cron("*/5 * * * *", **options)


def test_catchup_latest_runs_only_the_most_recent_missed_slot() -> None:
    due = due_slots(five(), LAST, BACK)
    assert due == DueSlots(
        slots=(Slot(utc(5, 3, 13), utc(5, 3, 13), utc(5, 3, 12, 55), utc(5, 3, 13)),),
        cursor=utc(5, 3, 13),
        wake_at=utc(5, 3, 13, 5),
        skipped=(utc(5, 3, 10, 5), utc(5, 3, 12, 55)),
        capped=False,
    )


def test_catchup_all_runs_every_missed_slot_oldest_first() -> None:
    due = due_slots(five(catchup="all"), LAST, BACK)
    times = [slot.scheduled_for for slot in due.slots]
    assert times == [LAST + timedelta(minutes=5 * k) for k in range(1, 37)]
    # Each covers the interval from the slot before it, the first from the last fired.
    assert [s.interval_start for s in due.slots] == [LAST, *times[:-1]]
    assert all(s.interval_end == s.scheduled_for == s.fire_at for s in due.slots)
    assert (due.cursor, due.wake_at, due.skipped, due.capped) == (
        utc(5, 3, 13),
        utc(5, 3, 13, 5),
        None,
        False,
    )


def test_catchup_all_is_capped_by_max_catchup_dropping_the_oldest() -> None:
    due = due_slots(five(catchup="all", max_catchup=10), LAST, BACK)
    times = [slot.scheduled_for for slot in due.slots]
    assert times == [utc(5, 3, 12, 15) + timedelta(minutes=5 * k) for k in range(10)]
    assert due.slots[0].interval_start == utc(5, 3, 12, 10)
    assert due.capped  # the caller warns
    assert due.skipped == (utc(5, 3, 10, 5), utc(5, 3, 12, 10))
    assert due.cursor == utc(5, 3, 13)
    # Exactly max_catchup missed: all run, not capped.
    exact = due_slots(five(catchup="all", max_catchup=36), LAST, BACK)
    assert len(exact.slots) == 36 and not exact.capped and exact.skipped is None


def test_catchup_none_fires_only_a_slot_due_now() -> None:
    # 13:00 is 2 s old: due now; the 35 before it are skipped.
    due = due_slots(five(catchup="none"), LAST, BACK)
    assert [s.scheduled_for for s in due.slots] == [utc(5, 3, 13)]
    assert due.skipped == (utc(5, 3, 10, 5), utc(5, 3, 12, 55))
    # Back at 13:02, 13:00 is past the tolerance: nothing runs, everything is skipped,
    # and the cursor moves past it all.
    late = due_slots(five(catchup="none"), LAST, utc(5, 3, 13, 2))
    assert late == DueSlots((), utc(5, 3, 13), utc(5, 3, 13, 5), (utc(5, 3, 10, 5), utc(5, 3, 13)))
    # The edge of the tolerance, and one slot missed alone.
    edge = due_slots(five(catchup="none"), LAST, utc(5, 3, 13) + DUE_TOLERANCE)
    assert [s.scheduled_for for s in edge.slots] == [utc(5, 3, 13)]
    one = due_slots(five(catchup="none"), utc(5, 3, 12, 55), utc(5, 3, 13, 2))
    assert one == DueSlots((), utc(5, 3, 13), utc(5, 3, 13, 5), (utc(5, 3, 13), utc(5, 3, 13)))
    tight = due_slots(five(catchup="none"), LAST, BACK, tolerance=timedelta(seconds=1))
    assert tight.slots == ()


def test_catchup_after_downtime_for_an_interval_schedule() -> None:
    schedule = every(minutes=5, catchup="all", max_catchup=3)
    due = due_slots(schedule, LAST, BACK)
    assert [s.scheduled_for for s in due.slots] == [
        utc(5, 3, 12, 50),
        utc(5, 3, 12, 55),
        utc(5, 3, 13),
    ]
    assert due.slots[0].interval_start == utc(5, 3, 12, 45)
    assert due.capped
    latest = due_slots(every(minutes=5), LAST, BACK)
    assert [s.scheduled_for for s in latest.slots] == [utc(5, 3, 13)]


@pytest.mark.parametrize("catchup", ["latest", "all", "none"])
def test_on_time_every_policy_fires_the_one_due_slot(catchup: Any) -> None:
    schedule = five(catchup=catchup)
    # Before the slot: nothing, wake at it.
    assert due_slots(schedule, LAST, LAST + timedelta(minutes=4)) == DueSlots(
        (), LAST, utc(5, 3, 10, 5)
    )
    # At it (a few ms late): that slot, covering the interval since the last.
    due = due_slots(schedule, LAST, utc(5, 3, 10, 5) + timedelta(milliseconds=3))
    assert due == DueSlots(
        (Slot(utc(5, 3, 10, 5), utc(5, 3, 10, 5), LAST, utc(5, 3, 10, 5)),),
        utc(5, 3, 10, 5),
        utc(5, 3, 10, 10),
    )
    # The cursor handed back: nothing more until the next slot.
    assert due_slots(schedule, due.cursor, utc(5, 3, 10, 6)).slots == ()


def test_a_schedule_that_never_ran_starts_now() -> None:
    due = due_slots(five(catchup="all"), None, BACK)
    assert due == DueSlots((), BACK, utc(5, 3, 13, 5))


def test_a_clock_gone_back_fires_nothing_and_keeps_the_cursor() -> None:
    due = due_slots(five(), utc(5, 3, 13), utc(5, 3, 12))
    assert due == DueSlots((), utc(5, 3, 13), utc(5, 3, 13, 5))


def test_the_interval_start_when_the_cursor_is_not_a_slot() -> None:
    # A cursor that is no slot (a schedule started at 10:02, or whose expression
    # changed under a kept name): the interval still starts at the previous slot.
    due = due_slots(five(), utc(5, 3, 10, 2), utc(5, 3, 10, 5, 1))
    assert due.slots[0].interval_start == LAST


def test_catchup_across_a_dst_change_counts_real_slots() -> None:
    # Down through the spring-forward night: every real hourly slot is missed once.
    hourly = cron("0 * * * *", tz="Europe/Paris", catchup="all")
    due = due_slots(hourly, utc(3, 28, 22), utc(3, 29, 4, 0, 1))
    assert [s.scheduled_for for s in due.slots] == hours(utc(3, 28, 23), 0, 5)
    nightly = cron("30 2 * * *", tz="Europe/Paris", catchup="all")
    due = due_slots(nightly, utc(10, 24, 0, 30), utc(10, 26, 3))
    assert [s.scheduled_for for s in due.slots] == [utc(10, 25, 0, 30), utc(10, 26, 1, 30)]


# -- jitter ----------------------------------------------------------------------------------


def test_jitter_is_deterministic_and_bounded() -> None:
    schedule = five(jitter=30)
    slots = list(schedule.slots_between(utc(5, 3), utc(5, 4)))
    delays = [schedule.fire_at(s, flow="ingest") - s for s in slots]
    assert all(timedelta(0) <= d < timedelta(seconds=30) for d in delays)
    # Another process, another object, the same delays.
    again = five(jitter=30)
    assert [again.fire_at(s, flow="ingest") - s for s in slots] == delays
    # Spread out, and different for another flow on the same expression.
    assert len(set(delays)) > 250
    assert [schedule.fire_at(s, flow="report") - s for s in slots] != delays
    assert five().fire_at(slots[0], flow="ingest") == slots[0]  # no jitter, no delay


def test_a_jittered_slot_waits_for_its_fire_time() -> None:
    schedule = five(jitter=60)
    slot = utc(5, 3, 10, 5)
    fire_at = schedule.fire_at(slot, flow="f")
    assert fire_at > slot + timedelta(seconds=1)  # this slot's delay (derived, fixed)
    early = due_slots(schedule, LAST, slot + (fire_at - slot) / 2, flow="f")
    assert early == DueSlots((), LAST, fire_at)
    due = due_slots(schedule, LAST, fire_at, flow="f")
    assert due.slots == (Slot(slot, fire_at, LAST, slot),)
    assert due.wake_at == schedule.fire_at(utc(5, 3, 10, 10), flow="f")


def test_catching_up_stops_at_a_slot_whose_jitter_has_not_elapsed() -> None:
    schedule = five(catchup="all", jitter=299)
    now = utc(5, 3, 10, 15, 1)
    pending = [s for s in schedule.slots_between(LAST, now) if schedule.fire_at(s, flow="f") > now]
    assert pending, "pick a jitter or flow name that leaves the newest slot pending"
    due = due_slots(schedule, LAST, now, flow="f")
    fired = [s.scheduled_for for s in due.slots]
    assert fired == [s for s in schedule.slots_between(LAST, pending[0] - US)]  # in order
    assert due.cursor == (fired[-1] if fired else LAST)
    assert due.wake_at == schedule.fire_at(pending[0], flow="f")


def test_catchup_latest_with_the_newest_slot_pending_skips_the_older_ones() -> None:
    schedule = five(jitter=299)
    now = utc(5, 3, 13, 0, 1)
    assert schedule.fire_at(utc(5, 3, 13), flow="f") > now
    due = due_slots(schedule, LAST, now, flow="f")
    assert due == DueSlots(
        (),
        utc(5, 3, 12, 55),
        schedule.fire_at(utc(5, 3, 13), flow="f"),
        skipped=(utc(5, 3, 10, 5), utc(5, 3, 12, 55)),
    )
    then = due_slots(schedule, due.cursor, due.wake_at, flow="f")
    assert [s.scheduled_for for s in then.slots] == [utc(5, 3, 13)] and then.skipped is None


# -- validation ------------------------------------------------------------------------------


def error_of(make: Any) -> str:
    with pytest.raises(flowcore.ConfigurationError) as info:
        make()
    return str(info.value)


def test_an_invalid_expression_names_every_bad_field() -> None:
    message = error_of(lambda: cron("61 25 * * FUNDAY"))
    assert "minute field '61'" in message and "0-59" in message
    assert "hour field '25'" in message and "0-23" in message
    assert "day-of-week field 'FUNDAY'" in message
    assert "day-of-month" not in message and "month field" not in message
    assert "cron('61 25 * * FUNDAY')" in message


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("* * * * * *", "must have 5 fields"),
        ("* * * * * *", "flowcore.every(seconds=...)"),
        ("0 0 * *", "it has 4"),
        ("", "it has 0"),
        ("0 0 30 2 *", "never fires"),
        ("*/0 * * * *", "minute field '*/0'"),
        ("0 0 0 * *", "day-of-month field '0'"),
        ("0 0 * 13 *", "month field '13'"),
        ("0 0 5-1 * *", "day-of-month field '5-1'"),
        ("@fortnightly", "must have 5 fields"),
    ],
)
def test_invalid_expressions(expr: str, expected: str) -> None:
    assert expected in error_of(lambda: cron(expr))


def test_every_problem_of_a_cron_schedule_is_reported_at_once() -> None:
    message = error_of(
        lambda: cron(
            "61 * * * *",
            tz="Europe/Pariss",
            parameters=["pages"],  # type: ignore[arg-type]
            active="yes",  # type: ignore[arg-type]
            name="",
            catchup="sometimes",  # type: ignore[arg-type]
            max_catchup=0,
            overlap="never",  # type: ignore[arg-type]
            max_active_runs=0,
            jitter=-1,
        )
    )
    for part in (
        "minute field '61'",
        "`tz` 'Europe/Pariss' is not a known time zone",
        "`parameters` must be a dict",
        "`active` must be True or False",
        "`name` must be a non-empty str",
        "`catchup` must be one of 'latest', 'all', 'none', got 'sometimes'",
        "`max_catchup` must be an int >= 1",
        "`overlap` must be one of 'skip', 'queue', 'cancel_previous', 'allow', got 'never'",
        "`max_active_runs` must be an int >= 1",
        "`jitter` must be a number of seconds >= 0",
    ):
        assert part in message, part


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"tz": 5}, "`tz` must be an IANA time zone name"),
        ({"max_catchup": 5}, "`max_catchup` bounds catchup='all' only"),
        ({"catchup": "none", "max_catchup": 5}, "drop `max_catchup` or write catchup='all'"),
        ({"overlap": "allow", "max_active_runs": 3}, "`max_active_runs` does not apply"),
        ({"jitter": float("nan")}, "`jitter` must be a number of seconds"),
        ({"jitter": True}, "`jitter` must be a number of seconds"),
        ({"parameters": {1: "x"}}, "`parameters` must be a dict of parameter names"),
        ({"max_active_runs": 2.5}, "`max_active_runs` must be an int >= 1"),
    ],
)
def test_invalid_cron_options(options: dict[str, Any], expected: str) -> None:
    assert expected in error_of(lambda: cron("0 * * * *", **options))


def test_valid_option_combinations() -> None:
    cron("0 * * * *", catchup="all", max_catchup=5)
    cron("0 * * * *", overlap="allow")
    cron("0 * * * *", overlap="queue", max_active_runs=3)
    cron("0 * * * *", overlap="cancel_previous", parameters=None, jitter=None)


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: every(), "give the interval"),
        (lambda: every(minutes=-5), "`minutes` must be a number >= 0"),
        (lambda: every(seconds=float("inf")), "`seconds` must be a number >= 0"),
        (lambda: every(timedelta(minutes=5), minutes=5), "not both"),
        (
            lambda: every(300),  # type: ignore[arg-type]
            "for a number of seconds write every(seconds=...)",
        ),
        (lambda: every(seconds=0.5), "at least 1 second"),
        (lambda: every(timedelta(0)), "at least 1 second"),
        (
            lambda: every(minutes=5, anchor=datetime(2026, 1, 1)),
            "`anchor` must be a timezone-aware",
        ),
        (
            lambda: every(minutes=5, catchup="al"),  # type: ignore[arg-type]
            "`catchup` must be one of",
        ),
    ],
)
def test_invalid_intervals(make: Any, expected: str) -> None:
    assert expected in error_of(make)


def test_naive_datetimes_are_refused_with_the_fix() -> None:
    naive = datetime(2026, 5, 3, 10)
    for call in (
        lambda: cron("0 * * * *").next_after(naive),
        lambda: every(minutes=1).next_after(naive),
        lambda: due_slots(cron("0 * * * *"), None, naive),
        lambda: due_slots(cron("0 * * * *"), naive, utc(5, 3)),
        lambda: list(cron("0 * * * *").slots_between(utc(5, 3), naive)),
    ):
        assert "must be a timezone-aware datetime" in error_of(call)


# -- on a flow -------------------------------------------------------------------------------


def test_a_flow_carries_its_schedules() -> None:
    nightly = cron("30 2 * * *", tz="Europe/Paris", parameters={"pages": 100})

    @flowcore.flow(schedule=nightly)
    async def ingest(pages: int = 20) -> int:
        return pages

    assert ingest.schedules == (nightly,)

    @flowcore.flow(schedule=[nightly, every(minutes=5, parameters={"pages": 1}, active=False)])
    async def both(pages: int = 20) -> int:
        return pages

    assert [s.key for s in both.schedules] == ["30 2 * * * Europe/Paris", "every 5m"]

    @flowcore.flow
    async def unscheduled() -> None: ...

    assert unscheduled.schedules == ()


def test_a_schedule_naming_parameters_the_flow_does_not_have_is_refused() -> None:
    def decorate() -> None:
        @flowcore.flow(schedule=cron("0 * * * *", parameters={"page": 1, "sise": 2, "limit": 3}))
        async def ingest(limit: int = 5) -> None: ...

    message = error_of(decorate)
    assert "'page', 'sise'" in message and "are not parameters of" in message
    assert "ingest(limit: 'int' = 5)" in message or "ingest(limit: int = 5)" in message
    assert "'limit'" not in message.split("gives")[1].split("which")[0]


def test_a_schedule_must_give_every_parameter_without_a_default() -> None:
    def decorate() -> None:
        @flowcore.flow(schedule=[cron("0 * * * *"), cron("0 2 * * *", parameters={"day": "x"})])
        async def report(day: str, *, region: str) -> None: ...

    message = error_of(decorate)
    assert "schedule '0 * * * * UTC' does not give 'day', 'region'" in message
    assert "schedule '0 2 * * * UTC' does not give 'region'" in message


def test_a_flow_taking_any_keyword_accepts_any_parameter_name() -> None:
    @flowcore.flow(schedule=cron("0 * * * *", parameters={"anything": 1}))
    async def loose(**options: Any) -> None: ...

    assert loose.schedules[0].parameters == {"anything": 1}


def test_positional_only_parameters_cannot_be_scheduled() -> None:
    def decorate() -> None:
        @flowcore.flow(schedule=cron("0 * * * *", parameters={"x": 1}))
        async def f(x: int, /) -> None: ...

    assert "positional-only" in error_of(decorate)


def test_two_schedules_of_a_flow_need_distinct_keys() -> None:
    def decorate() -> None:
        @flowcore.flow(
            schedule=[
                cron("0 * * * *", parameters={"region": "eu"}),
                cron("0 * * * *", parameters={"region": "us"}),
            ]
        )
        async def sync(region: str) -> None: ...

    assert "two schedules have the key '0 * * * * UTC'" in error_of(decorate)

    @flowcore.flow(
        schedule=[
            cron("0 * * * *", parameters={"region": "eu"}, name="eu"),
            cron("0 * * * *", parameters={"region": "us"}, name="us"),
        ]
    )
    async def named(region: str) -> None: ...

    assert [s.key for s in named.schedules] == ["eu", "us"]


@pytest.mark.parametrize("value", ["*/5 * * * *", 300, [cron("0 * * * *"), "daily"]])
def test_schedule_must_be_schedule_values(value: Any) -> None:
    def decorate() -> None:
        @flowcore.flow(schedule=value)
        async def f() -> None: ...

    assert "`schedule` must be flowcore.cron(...), flowcore.every(...)" in error_of(decorate)
