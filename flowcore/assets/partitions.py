"""Partitions: how an asset is split into separately materialised pieces, by key.

- :class:`DailyPartitions` and :class:`HourlyPartitions`: time windows in a time zone.
  A daily key is the local date (``"2026-03-29"``), its window ``[local midnight,
  next local midnight)``. An hourly key is the local time of the hour's start
  (``"2026-03-29T03:00"``).
- :class:`StaticPartitions`: a fixed list of keys (``["eu", "us"]``).
- :class:`DynamicPartitions`: keys added at run time, under a name; where they are
  kept and how they are numbered is the store's (the definition only is here).

Every definition numbers its keys: ``index_of(key)`` ↔ ``key_of(index)``, from 0,
in time order. Ranges of keys (:class:`KeyRange`, from :meth:`keys` and
:meth:`keys_between`) are index ranges that make each key as it is read, so a
million daily partitions cost two integers, not a million strings.

Time zones and daylight saving
------------------------------
Partitions follow the policy of :mod:`flowcore.schedules`: wall-clock days, and
elapsed hours.

- A **day** is a local date, 23, 24 or 25 hours long. Its window starts at local
  midnight, or, where the clocks jump over midnight (as in America/Santiago), at
  the instant they jump: the first instant of that date.
- An **hour** is an hour of real time: an hourly partition set has 23 keys on the
  spring-forward day and 25 on the fall-back day. The key is the local time the
  hour starts at; in the hour that happens twice, both keys carry their UTC offset
  (Europe/Paris, 2026-10-25: ``"2026-10-25T02:00+02:00"`` then
  ``"2026-10-25T02:00+01:00"``), and every other key has none. A key is accepted
  only in its one spelling, since keys name stored partitions. Hours are counted
  from ``start``: in the rare zones whose clocks move by half an hour
  (Australia/Lord_Howe), keys after such a change read ``HH:30``.

``keys(until=now)``: the partitions whose window has ended by ``now`` (complete
data), plus ``end_offset`` more (``end_offset=1`` includes the one in progress),
and never past ``end`` (exclusive).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from types import MappingProxyType
from typing import Any, ClassVar, Final, overload
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import ConfigurationError
from .errors import PartitionKeyError
from .keys import check_partition_key, partition_key_problem
from .partition_set import PartitionSet

__all__ = [
    "DailyPartitions",
    "DynamicPartitions",
    "HourlyPartitions",
    "KeyRange",
    "Partitions",
    "StaticPartitions",
    "TimeWindowPartitions",
]

_HOUR: Final = timedelta(hours=1)
_SECOND: Final = timedelta(seconds=1)
_UTC_NAMES: Final = frozenset({"UTC", "Etc/UTC"})
_DATE: Final = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_HOUR_KEY: Final = re.compile(r"(\d{4}-\d{2}-\d{2})T(\d{2}):(\d{2})(?:([+-])(\d{2}):(\d{2}))?")


class Partitions:
    """What every partitions definition gives: keys numbered from 0, and ranges of them."""

    def index_of(self, key: str) -> int:
        """The index of ``key``; :class:`PartitionKeyError` (naming the expected form and an
        example) for a string that is not one of its keys."""
        raise NotImplementedError

    def key_of(self, index: int) -> str:
        """The key at ``index``."""
        raise NotImplementedError

    def _total(self, until: datetime | None) -> int:
        """How many keys exist (by ``until``, for time windows)."""
        raise NotImplementedError

    def check_key(self, key: object) -> str:
        """``key`` if it is one of these partitions' keys, else :class:`PartitionKeyError`."""
        self.index_of(check_partition_key(key))
        assert isinstance(key, str)
        return key

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        try:
            self.index_of(key)
        except PartitionKeyError:
            return False
        return True

    def count(self, until: datetime | None = None) -> int:
        """How many keys :meth:`keys` gives for the same ``until``."""
        return self._total(until)

    def keys(self, until: datetime | None = None) -> KeyRange:
        """Every key, in index order (time windows: those ready by ``until``, see the
        module docstring; an open-ended set needs ``until``)."""
        return KeyRange(self, 0, self._total(until))

    def keys_between(self, first: str, last: str) -> KeyRange:
        """The keys from ``first`` to ``last``, both included (``--from A --to B``)."""
        start, stop = self.index_of(first), self.index_of(last)
        if stop < start:
            raise PartitionKeyError(
                f"the range from {first!r} to {last!r} is empty: {last!r} comes before "
                f"{first!r}; swap them"
            )
        return KeyRange(self, start, stop + 1)

    def subset(self, keys: Sequence[str] = ()) -> PartitionSet:
        """A :class:`PartitionSet` of these partitions holding ``keys``."""
        out = PartitionSet(partitions=self)
        if isinstance(keys, KeyRange):
            out.add_range(keys.start, keys.stop)
        else:
            for key in keys:
                out.add(key)
        return out


class KeyRange(Sequence[str]):
    """The keys of a definition with indexes in ``[start, stop)``, each made as it is read.

    >>> days = flowcore.assets.DailyPartitions("2026-01-01")
    >>> span = days.keys_between("2026-03-01", "2026-03-31")
    >>> len(span), span[0], span[-1], "2026-03-15" in span
    (31, '2026-03-01', '2026-03-31', True)
    """

    __slots__ = ("partitions", "start", "stop")

    def __init__(self, partitions: Partitions, start: int, stop: int) -> None:
        self.partitions = partitions
        self.start = start
        self.stop = max(start, stop)

    def __len__(self) -> int:
        return self.stop - self.start

    @overload
    def __getitem__(self, item: int) -> str: ...
    @overload
    def __getitem__(self, item: slice) -> Sequence[str]: ...
    def __getitem__(self, item: int | slice) -> str | Sequence[str]:
        indexes = range(self.start, self.stop)[item]
        if isinstance(indexes, int):
            return self.partitions.key_of(indexes)
        if indexes.step == 1:
            return KeyRange(self.partitions, indexes.start, indexes.stop)
        return [self.partitions.key_of(i) for i in indexes]

    def __iter__(self) -> Iterator[str]:
        key_of = self.partitions.key_of
        for index in range(self.start, self.stop):
            yield key_of(index)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        try:
            index = self.partitions.index_of(key)
        except PartitionKeyError:
            return False
        return self.start <= index < self.stop

    def indexes(self) -> range:
        return range(self.start, self.stop)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, KeyRange):
            return (self.partitions, self.start, self.stop) == (
                other.partitions,
                other.start,
                other.stop,
            )
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.start, self.stop))

    def __repr__(self) -> str:
        if not len(self):
            return "KeyRange(empty)"
        return f"KeyRange({self[0]!r} .. {self[-1]!r}, {len(self)} keys)"


# -- time windows ----------------------------------------------------------------------------


def _zone(tz: object) -> tuple[str, tzinfo]:
    if isinstance(tz, ZoneInfo):
        tz = tz.key
    if tz is UTC:
        tz = "UTC"
    if not isinstance(tz, str) or not tz:
        raise ConfigurationError(
            f"`tz` must be an IANA time zone name such as 'Europe/Paris', got {tz!r}"
        )
    if tz in _UTC_NAMES:
        return tz, UTC
    try:
        return tz, ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(
            f"`tz` {tz!r} is not a known time zone: give an IANA name such as 'Europe/Paris' "
            "or 'America/New_York' (and install the tzdata package where the system has no "
            "time zone data)"
        ) from None


def _instant(naive: datetime, zone: tzinfo) -> datetime:
    """When the local time ``naive`` first happens in ``zone`` (UTC): its first occurrence,
    or for a time the clocks jump over, the instant they jump."""
    instant = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) == naive:
        return instant
    early = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)
    late = instant
    after = late.astimezone(zone).utcoffset()
    lo, hi = int(early.timestamp()), int(late.timestamp())  # the change is in (lo, hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == after:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


def _aware(option: str, value: object) -> datetime:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise ConfigurationError(
            f"`{option}` must be a timezone-aware datetime, got {value!r}; "
            "write datetime.now(timezone.utc) or give it a tzinfo"
        )
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeWindowPartitions(Partitions):
    """Partitions that are consecutive windows of time (see :class:`DailyPartitions` and
    :class:`HourlyPartitions`): each key is a window ``[start, end)`` of aware datetimes."""

    tz: str = "UTC"
    end_offset: int = 0
    _zone: tzinfo = field(init=False, repr=False, compare=False)

    #: The expected spelling of a key, for messages.
    form: ClassVar[str] = ""

    def _check_common(self) -> list[str]:
        problems = []
        try:
            tz, zone = _zone(self.tz)
        except ConfigurationError as exc:
            problems.append(str(exc))
        else:
            object.__setattr__(self, "tz", tz)
            object.__setattr__(self, "_zone", zone)
        offset: object = self.end_offset
        if not isinstance(offset, int) or isinstance(offset, bool):
            problems.append(f"`end_offset` must be an int (partitions past now), got {offset!r}")
        return problems

    @property
    def zone(self) -> tzinfo:
        return self._zone

    def window_of(self, index: int) -> tuple[datetime, datetime]:
        """The window ``[start, end)`` of the partition at ``index``, in the partitions' zone."""
        raise NotImplementedError

    def window(self, key: str) -> tuple[datetime, datetime]:
        """The window ``[start, end)`` of ``key``, as aware datetimes in the partitions' zone."""
        return self.window_of(self.index_of(key))

    def index_for(self, t: datetime) -> int:
        """The index of the window holding the instant ``t`` (negative before ``start``;
        past ``end`` it is no partition either: check before using it as a key)."""
        raise NotImplementedError

    def key_for(self, t: datetime) -> str:
        """The key of the window holding the instant ``t``."""
        return self.key_of(self.index_for(t))

    def _limit(self) -> int | None:
        """The number of partitions before ``end``, or ``None`` when open-ended."""
        raise NotImplementedError

    def _total(self, until: datetime | None) -> int:
        limit = self._limit()
        if until is None:
            if limit is None:
                raise ConfigurationError(
                    f"{self!r} has no `end`: say how far to go, keys(until=now) (the partitions "
                    "complete by then)"
                )
            return limit
        ready = max(0, self.index_for(_aware("until", until)) + self.end_offset)
        return ready if limit is None else min(ready, limit)

    def _check_index(self, index: int) -> None:
        limit = self._limit()
        if (
            not isinstance(index, int)
            or isinstance(index, bool)
            or index < 0
            or (limit is not None and index >= limit)
        ):
            shown = "" if limit is None else f" and < {limit}"
            raise PartitionKeyError(f"no partition of {self!r} at index {index!r}: >= 0{shown}")

    def _not_a_key(self, key: object, why: str) -> PartitionKeyError:
        return PartitionKeyError(
            f"{key!r} is not a key of {self!r}: {why}; expected {self.form} in {self.tz}, "
            f"e.g. {self.key_of(0)!r}"
        )


def _start_date(option: str, value: object, zone: tzinfo) -> date:
    if isinstance(value, datetime):
        return value.astimezone(zone).date() if value.utcoffset() is not None else value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str) and _DATE.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise ConfigurationError(
        f"`{option}` must be a date, a datetime or a 'YYYY-MM-DD' string, got {value!r}"
    )


@dataclass(frozen=True, slots=True, init=False)
class DailyPartitions(TimeWindowPartitions):
    """One partition per local date from ``start`` (a date, ``"YYYY-MM-DD"``, or a datetime:
    its date in ``tz``) up to ``end`` (excluded; ``None``: open-ended).

    >>> days = flowcore.assets.DailyPartitions("2026-01-01", tz="Europe/Paris")
    >>> days.index_of("2026-03-29"), days.key_of(87)
    (87, '2026-03-29')
    >>> start, end = days.window("2026-03-29")  # 23 hours: the clocks spring forward
    >>> start.isoformat(), end.isoformat()
    ('2026-03-29T00:00:00+01:00', '2026-03-30T00:00:00+02:00')
    >>> from datetime import UTC
    >>> end.astimezone(UTC) - start.astimezone(UTC)  # in UTC: within one zone, Python
    datetime.timedelta(seconds=82800)

    (Within one zone, Python subtracts wall-clock times: compare or subtract windows
    in UTC, or as instants in a query, ``ts >= start AND ts < end``.)
    """

    start: date
    end: date | None

    form: ClassVar[str] = "a date 'YYYY-MM-DD'"

    def __init__(
        self,
        start: date | datetime | str,
        end: date | datetime | str | None = None,
        *,
        tz: str = "UTC",
        end_offset: int = 0,
    ) -> None:
        object.__setattr__(self, "tz", tz)
        object.__setattr__(self, "end_offset", end_offset)
        problems = self._check_common()
        zone = getattr(self, "_zone", UTC)
        for option, value in (("start", start), ("end", end)):
            if value is None and option == "end":
                object.__setattr__(self, "end", None)
                continue
            try:
                object.__setattr__(self, option, _start_date(option, value, zone))
            except ConfigurationError as exc:
                problems.append(str(exc))
        if not problems and self.end is not None and self.end <= self.start:
            problems.append(f"`end` ({self.end}) must be after `start` ({self.start})")
        if problems:
            raise ConfigurationError("invalid DailyPartitions: " + "; ".join(problems))

    def __repr__(self) -> str:
        end = "" if self.end is None else f", end='{self.end}'"
        tz = "" if self.tz == "UTC" else f", tz={self.tz!r}"
        offset = f", end_offset={self.end_offset}" if self.end_offset else ""
        return f"DailyPartitions('{self.start}'{end}{tz}{offset})"

    def _limit(self) -> int | None:
        return None if self.end is None else self.end.toordinal() - self.start.toordinal()

    def index_of(self, key: str) -> int:
        if not isinstance(key, str) or not _DATE.fullmatch(key):
            raise self._not_a_key(key, "not a date")
        try:
            day = date.fromisoformat(key)
        except ValueError:
            raise self._not_a_key(key, "no such date") from None
        index = day.toordinal() - self.start.toordinal()
        if index < 0:
            raise self._not_a_key(key, f"before the start, {self.start}")
        limit = self._limit()
        if limit is not None and index >= limit:
            raise self._not_a_key(key, f"at or after the end, {self.end}")
        return index

    def key_of(self, index: int) -> str:
        self._check_index(index)
        return date.fromordinal(self.start.toordinal() + index).isoformat()

    def _midnight(self, ordinal: int) -> datetime:
        naive = datetime.combine(date.fromordinal(ordinal), time())
        return _instant(naive, self._zone).astimezone(self._zone)

    def window_of(self, index: int) -> tuple[datetime, datetime]:
        self._check_index(index)
        ordinal = self.start.toordinal() + index
        return self._midnight(ordinal), self._midnight(ordinal + 1)

    def index_for(self, t: datetime) -> int:
        local = _aware("t", t).astimezone(self._zone)
        index = local.date().toordinal() - self.start.toordinal()
        # Where the clocks jump over midnight, the instants before the jump belong to
        # the day before (its window ends at the jump): local dates already say so.
        return index


@dataclass(frozen=True, slots=True, init=False)
class HourlyPartitions(TimeWindowPartitions):
    """One partition per hour of real time from ``start`` (an aware datetime, or a naive one
    or ``"YYYY-MM-DDTHH:00"`` read in ``tz``, or a date: its midnight) up to ``end``
    (excluded; ``None``: open-ended). ``start`` must be on the hour in ``tz``.

    >>> hours = flowcore.assets.HourlyPartitions("2026-10-25T00:00", tz="Europe/Paris")
    >>> [hours.key_of(i) for i in range(1, 5)]  # 02:00 happens twice
    ['2026-10-25T01:00', '2026-10-25T02:00+02:00', '2026-10-25T02:00+01:00', '2026-10-25T03:00']
    """

    #: The first hour's start and the end, in UTC (``window_of`` gives local times).
    start: datetime
    end: datetime | None

    form: ClassVar[str] = (
        "a local hour 'YYYY-MM-DDTHH:00' (with its UTC offset, '+02:00', in a repeated hour)"
    )

    def __init__(
        self,
        start: datetime | date | str,
        end: datetime | date | str | None = None,
        *,
        tz: str = "UTC",
        end_offset: int = 0,
    ) -> None:
        object.__setattr__(self, "tz", tz)
        object.__setattr__(self, "end_offset", end_offset)
        problems = self._check_common()
        zone = getattr(self, "_zone", UTC)
        for option, value in (("start", start), ("end", end)):
            if value is None and option == "end":
                object.__setattr__(self, "end", None)
                continue
            try:
                instant = self._read_instant(option, value, zone)
            except ConfigurationError as exc:
                problems.append(str(exc))
                continue
            # Kept in UTC: arithmetic between datetimes of one zone is wall-clock time.
            object.__setattr__(self, option, instant.astimezone(UTC))
            local = instant.astimezone(zone)
            if option == "start" and (local.minute, local.second, local.microsecond) != (0, 0, 0):
                problems.append(
                    f"`start` must be on the hour in {self.tz}, got {local.isoformat()}"
                )
        if not problems and self.end is not None and self.end <= self.start:
            problems.append(f"`end` ({self.end}) must be after `start` ({self.start})")
        if problems:
            raise ConfigurationError("invalid HourlyPartitions: " + "; ".join(problems))

    @staticmethod
    def _read_instant(option: str, value: object, zone: tzinfo) -> datetime:
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                raise ConfigurationError(
                    f"`{option}` must be a datetime or 'YYYY-MM-DDTHH:00', got {value!r}"
                ) from None
        if isinstance(value, datetime):
            if value.utcoffset() is None:
                return _instant(value, zone)
            return value.astimezone(UTC)
        if isinstance(value, date):
            return _instant(datetime.combine(value, time()), zone)
        raise ConfigurationError(
            f"`{option}` must be a datetime, a date or 'YYYY-MM-DDTHH:00', got {value!r}"
        )

    def __repr__(self) -> str:
        def shown(t: datetime) -> str:
            return t.astimezone(self._zone).isoformat(timespec="minutes")

        end = "" if self.end is None else f", end='{shown(self.end)}'"
        tz = "" if self.tz == "UTC" else f", tz={self.tz!r}"
        offset = f", end_offset={self.end_offset}" if self.end_offset else ""
        return f"HourlyPartitions('{shown(self.start)}'{end}{tz}{offset})"

    def _limit(self) -> int | None:
        if self.end is None:
            return None
        return -((self.start - self.end) // _HOUR)  # partial last hour included

    def key_of(self, index: int) -> str:
        self._check_index(index)
        local = (self.start + index * _HOUR).astimezone(self._zone)
        key = local.strftime("%Y-%m-%dT%H:%M")
        if local.replace(fold=1 - local.fold).utcoffset() != local.utcoffset():
            offset = local.strftime("%z")
            key += f"{offset[:3]}:{offset[3:]}"  # a repeated hour: say which
        return key

    def index_of(self, key: str) -> int:
        match = _HOUR_KEY.fullmatch(key) if isinstance(key, str) else None
        if match is None:
            raise self._not_a_key(key, "not a local hour")
        day, hour, minute, sign, off_h, off_m = match.groups()
        try:
            naive = datetime.fromisoformat(f"{day}T{hour}:{minute}")
        except ValueError:
            raise self._not_a_key(key, "no such date or time") from None
        zone = self._zone
        if sign is None:
            instant = naive.replace(tzinfo=zone).astimezone(UTC)
            if instant.astimezone(zone).replace(tzinfo=None) != naive:
                raise self._not_a_key(key, "that local time does not exist (the clocks jump)")
        else:
            offset = timedelta(hours=int(off_h), minutes=int(off_m))
            instant = (naive - (offset if sign == "+" else -offset)).replace(tzinfo=UTC)
            if instant.astimezone(zone).replace(tzinfo=None) != naive:
                raise self._not_a_key(key, f"that offset is not {self.tz}'s at that time")
        steps, rest = divmod(instant - self.start, _HOUR)
        if rest:
            raise self._not_a_key(key, "not the start of one of its hours")
        if steps < 0:
            raise self._not_a_key(key, f"before the start, {self.key_of(0)}")
        limit = self._limit()
        if limit is not None and steps >= limit:
            raise self._not_a_key(key, "at or after the end")
        canonical = self.key_of(steps)
        if canonical != key:
            raise PartitionKeyError(
                f"{key!r} is spelled {canonical!r} in {self!r} (an offset is written only in "
                "the hour that happens twice, and always there)"
            )
        return steps

    def window_of(self, index: int) -> tuple[datetime, datetime]:
        self._check_index(index)
        start = self.start + index * _HOUR
        end = start + _HOUR
        if self.end is not None and end > self.end:
            end = self.end
        return start.astimezone(self._zone), end.astimezone(self._zone)

    def index_for(self, t: datetime) -> int:
        return (_aware("t", t) - self.start) // _HOUR


# -- fixed and dynamic keys ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, init=False)
class StaticPartitions(Partitions):
    """A fixed list of keys, numbered in the order given.

    >>> regions = flowcore.assets.StaticPartitions(["eu", "us", "apac"])
    >>> regions.index_of("us"), list(regions.keys())
    (1, ['eu', 'us', 'apac'])
    """

    keys_: tuple[str, ...]
    _index: MappingProxyType[str, int] = field(repr=False, compare=False)

    def __init__(self, keys: Sequence[str]) -> None:
        if isinstance(keys, str) or not isinstance(keys, Sequence | set | frozenset):
            raise ConfigurationError(
                f"StaticPartitions takes a list of keys, such as ['eu', 'us'], got {keys!r}"
            )
        items = list(keys)
        problems = [p for p in map(partition_key_problem, items) if p]
        seen: dict[str, int] = {}
        for i, key in enumerate(items):
            if isinstance(key, str) and seen.setdefault(key, i) != i:
                problems.append(f"{key!r} is given twice")
        if not items:
            problems.append("give at least one key")
        if problems:
            raise ConfigurationError("invalid StaticPartitions: " + "; ".join(problems[:10]))
        object.__setattr__(self, "keys_", tuple(items))
        object.__setattr__(self, "_index", MappingProxyType(seen))

    def __repr__(self) -> str:
        shown = ", ".join(map(repr, self.keys_[:5]))
        more = f", ... {len(self.keys_) - 5} more" if len(self.keys_) > 5 else ""
        return f"StaticPartitions([{shown}{more}])"

    def __len__(self) -> int:
        return len(self.keys_)

    def _total(self, until: datetime | None) -> int:
        return len(self.keys_)

    def index_of(self, key: str) -> int:
        index = self._index.get(key) if isinstance(key, str) else None
        if index is None:
            raise PartitionKeyError(
                f"{key!r} is not a key of {self!r}: expected one of the listed keys, "
                f"e.g. {self.keys_[0]!r}"
            )
        return index

    def key_of(self, index: int) -> str:
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(self):
            raise PartitionKeyError(
                f"no partition of {self!r} at index {index!r}: >= 0 and < {len(self)}"
            )
        return self.keys_[index]


@dataclass(frozen=True, slots=True)
class DynamicPartitions(Partitions):
    """Keys added while flows run (a customer, a file that arrived), kept by the store
    under ``name``. Assets sharing a name share the keys.

    The definition checks a key's form (:meth:`check_key`); which keys exist, and their
    numbering, are read from the store.
    """

    name: str

    def __post_init__(self) -> None:
        name: object = self.name
        if not isinstance(name, str) or not name:
            raise ConfigurationError(
                f"DynamicPartitions needs a name (the store keeps its keys under it), got {name!r}"
            )

    def check_key(self, key: object) -> str:
        return check_partition_key(key)

    def _no_store(self) -> TypeError:
        return TypeError(
            f"the keys of {self!r} are added at run time and numbered by the store: read "
            "them (and their indexes) from the store"
        )

    def index_of(self, key: str) -> int:
        raise self._no_store()

    def key_of(self, index: int) -> str:
        raise self._no_store()

    def _total(self, until: datetime | None) -> int:
        raise self._no_store()

    def __contains__(self, key: object) -> bool:
        raise self._no_store()


def describe(partitions: Any) -> str:
    """How a partitions value reads in a message."""
    return "unpartitioned" if partitions is None else repr(partitions)
