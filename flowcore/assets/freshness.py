"""Freshness policies, and their pure evaluation on given times.

``Freshness(max_lag=timedelta(hours=1))``: the asset was materialised at most an hour
ago. ``Freshness(cron="0 9 * * *", tz="Europe/Paris", max_lag=timedelta(hours=2))``:
new data lands at each tick (09:00), and a materialisation made after the tick is
due by the deadline, two hours later (``max_lag`` defaults to 0 with a cron: overdue
from the tick until materialised).

One rule for both: :meth:`Freshness.due_by` is when the next materialisation is due,
and an asset is **overdue** when ``now`` is past it: ``last + max_lag``, or the first
tick after ``last`` plus ``max_lag``. For a time-window partition the data is
complete only when its window ends, so a partition is due ``max_lag`` after its
window's end (with a cron: after the first tick from then on), and once materialised
after its window ended it stays fresh (its data does not change; a change upstream
makes it *stale*, which is another question). Other partitions (static, dynamic)
are each judged like an unpartitioned asset, on their own last materialisation.

Nothing here reads a clock: the caller passes ``now`` (``flowcore serve`` its clock,
tests plain datetimes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from ..errors import ConfigurationError
from ..schedules import CronSchedule, cron

__all__ = ["Freshness"]

_TICK: Final = timedelta(microseconds=1)


def _aware(option: str, value: object) -> datetime:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise ConfigurationError(
            f"`{option}` must be a timezone-aware datetime, got {value!r}; "
            "write datetime.now(timezone.utc) or give it a tzinfo"
        )
    return value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Freshness:
    """How fresh an asset must be: at most ``max_lag`` old, or by each tick of ``cron``.

    >>> from datetime import datetime, timedelta, timezone
    >>> hourly = flowcore.assets.Freshness(max_lag=timedelta(hours=1))
    >>> built = datetime(2026, 3, 29, 8, tzinfo=timezone.utc)
    >>> hourly.overdue(built, now=built + timedelta(minutes=59))
    False
    >>> hourly.overdue(built, now=built + timedelta(minutes=61))
    True
    """

    max_lag: timedelta | None = None
    cron: str | None = None
    tz: str = "UTC"
    _schedule: CronSchedule | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems = []
        lag: object = self.max_lag
        if self.cron is None and lag is None:
            problems.append(
                "give `max_lag` (Freshness(max_lag=timedelta(hours=1))) or a deadline "
                "(Freshness(cron='0 9 * * *', tz=...))"
            )
        elif lag is not None and (not isinstance(lag, timedelta) or lag < timedelta(0)):
            problems.append(f"`max_lag` must be a timedelta >= 0, got {lag!r}")
        elif self.cron is None and lag == timedelta(0):
            problems.append("`max_lag` must be > 0 without a cron deadline (nothing is that fresh)")
        schedule = None
        if self.cron is not None:
            try:
                schedule = cron(self.cron, tz=self.tz)
            except ConfigurationError as exc:
                problems.append(str(exc).replace("invalid schedule ", ""))
        elif self.tz != "UTC":
            problems.append("`tz` is the zone of `cron`: give the cron deadline, or drop `tz`")
        if problems:
            raise ConfigurationError("invalid freshness policy: " + "; ".join(problems))
        object.__setattr__(self, "_schedule", schedule)

    @property
    def lag(self) -> timedelta:
        return self.max_lag or timedelta(0)

    def due_by(
        self, last_materialised: datetime | None, *, window_end: datetime | None = None
    ) -> datetime | None:
        """When the next materialisation is due (UTC): in the past when overdue.

        ``window_end``: the end of the partition's time window, for a time-window
        partition. ``None`` when nothing is due (a partition materialised after its
        window ended), and when never materialised (then it is always overdue).
        """
        last = None if last_materialised is None else _aware("last_materialised", last_materialised)
        if window_end is not None:
            end = _aware("window_end", window_end)
            if last is not None and last >= end:
                return None
            landed = end if self._schedule is None else self._schedule.next_after(end - _TICK)
            return landed + self.lag
        if last is None:
            return None
        if self._schedule is None:
            return last + self.lag
        return self._schedule.next_after(last) + self.lag  # data landed after `last`

    def overdue(
        self,
        last_materialised: datetime | None,
        now: datetime,
        *,
        window_end: datetime | None = None,
    ) -> bool:
        """Whether ``now`` is past :meth:`due_by` (never materialised: overdue, unless a
        partition whose window has not ended plus its lag yet)."""
        now = _aware("now", now)
        due = self.due_by(last_materialised, window_end=window_end)
        if due is None:
            return last_materialised is None and window_end is None
        return now > due
