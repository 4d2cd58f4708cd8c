"""Schedules as values, and the pure arithmetic of their slots.

``@flowcore.flow(schedule=flowcore.cron("*/5 * * * *", tz="Europe/Paris"))`` or
``flowcore.every(minutes=7)``: a schedule is a frozen, validated value, checked when
the flow is decorated (a typo fails at import time, not at the first fire time).
A flow may have several, each with its own ``parameters`` and ``active`` flag.

Each fire time is a **slot**, identified by (flow, :attr:`Schedule.key`, slot time),
so a store can claim a slot once, whichever process gets there first. Everything here
is pure: aware datetimes in, UTC datetimes out, no clock and no store of its own
(``flowcore serve`` owns both), so it is tested on plain datetimes and costs a few
microseconds per call (one :meth:`Schedule.next_after` per schedule per slot).

Time zones and daylight saving
------------------------------
Cron expressions are read in their ``tz`` (an IANA name, through :mod:`zoneinfo`);
intervals (:func:`every`) are absolute durations from their ``anchor`` and never
see a time zone. A cron expression whose hour field fixes the hours (``30 2 * * *``,
``0 9-17 * * MON-FRI``, ``0 */2 * * *``) names *wall-clock* times, and:

- a local time that does not exist (clocks spring forward over it) fires **once, at
  the next valid instant** (the moment the clocks jump), however many of the
  expression's times fell in the gap;
- a local time that happens twice (clocks fall back over it) fires **once, at its
  first occurrence**.

A cron expression whose hour field takes every hour (``*``: ``0 * * * *``,
``*/5 * * * *``) follows *elapsed* time instead: it fires in every real hour, so an
hourly schedule fires 23 times on the spring-forward day and 25 times on the
fall-back day (as Debian's cron does for expressions with a wildcard), and
``*/5 * * * *`` fires every 5 minutes of real time, 288 times in any 24 hours:
skipping the repeated hour would leave an hour of data with no run of its own, and
firing for the missing hour would run twice in the same real hour. (In the rare
zones whose clocks move by 30 minutes, such as Australia/Lord_Howe, the hour around
the change is 30 minutes longer or shorter.)

In Europe/Paris, 2026 (spring forward on March 29 at 01:00 UTC, fall back on
October 25 at 01:00 UTC), as UTC instants:

- ``30 2 * * *``: March 28 01:30, **March 29 01:00** (03:00 CEST: 02:30 does not
  exist), March 30 00:30; October 24 00:30, **October 25 00:30** (the first 02:30;
  not 01:30), October 26 01:30.
- ``0 * * * *``: on March 29 (local), 23 slots: March 28 23:00, then every hour from
  March 29 00:00 to 21:00; on October 25 (local), 25 slots: every hour from October 24
  22:00 to October 25 22:00, 00:00 (02:00 CEST) and 01:00 (02:00 CET) included.

Catch-up and overlap
--------------------
After downtime, :func:`due_slots` applies the schedule's ``catchup``: ``"latest"``
(default) runs only the most recent missed slot; ``"all"`` runs every missed slot,
oldest first, at most ``max_catchup`` of them (the oldest are dropped, and
:attr:`DueSlots.capped` says so, for the caller to warn); ``"none"`` runs none of
them, only a slot that is due now: at most :data:`DUE_TOLERANCE` (60 s) past its
fire time, long enough that a server busy for a moment (a GC pause, a locked store)
still fires it, short enough that a restart after real downtime does not.
``overlap`` (``"skip" | "queue" | "cancel_previous" | "allow"``) and
``max_active_runs`` say what to do with a slot that fires while ``max_active_runs``
runs of the schedule are still active; they are validated here and applied by
``serve``.

``jitter=`` delays each slot by a deterministic fraction of at most ``jitter``
seconds, derived from the flow, the schedule key and the slot time: every server
computes the same fire time, and flows sharing an expression spread out. Slots fire
in order: a slot is never fired before an earlier one.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, get_args

import msgspec

from ._validate import count as _count
from ._validate import flag as _flag
from ._validate import is_number as _is_number
from ._validate import name as _name
from .errors import ConfigurationError

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from cronsim import CronSim

__all__ = [
    "DUE_TOLERANCE",
    "Catchup",
    "CronSchedule",
    "DueSlots",
    "IntervalSchedule",
    "Overlap",
    "Schedule",
    "Slot",
    "cron",
    "due_slots",
    "every",
]

Catchup: TypeAlias = Literal["latest", "all", "none"]
Overlap: TypeAlias = Literal["skip", "queue", "cancel_previous", "allow"]

#: Under ``catchup="none"``, how long past its fire time a slot still counts as due now.
DUE_TOLERANCE: Final = timedelta(seconds=60)
#: Where every interval's phase starts when no ``anchor`` is given (so that every
#: process agrees on the slots without sharing anything).
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
#: Each slot is a claim in the store: a shorter interval would be a write per tick.
MIN_INTERVAL: Final = timedelta(seconds=1)

_CATCHUPS: Final = get_args(Catchup)
_OVERLAPS: Final = get_args(Overlap)
_DEFAULT_MAX_CATCHUP: Final = 100
_MICROSECOND: Final = timedelta(microseconds=1)
#: How far back the search for previous slots goes before giving up (a cron expression
#: that fires at all fires within any 50 years).
_SEARCH_LIMIT: Final = timedelta(days=366 * 60)

_ALIASES: Final = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_FIELDS: Final = (
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31, L or LW"),
    ("month", "1-12 or JAN-DEC"),
    ("day-of-week", "0-7 or SUN-SAT (0 and 7 are Sunday), MON#2 or FRIL"),
)
_UTC_NAMES: Final = frozenset({"UTC", "Etc/UTC"})


# -- the shared options ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    """What every schedule has: its options (see :func:`cron` for each) and its slots.

    Subclasses (:class:`CronSchedule`, :class:`IntervalSchedule`) say where the slots
    are (:meth:`next_after`); the rest is shared.
    """

    #: Parameters each scheduled run is called with (read-only); the flow's defaults
    #: give the others.
    parameters: Mapping[str, Any] = field(default_factory=dict, hash=False)
    #: An inactive schedule is kept (its key, its history) but fires nothing.
    active: bool = True
    #: The name given, or ``None``; :attr:`key` is what the store uses.
    name: str | None = None
    catchup: Catchup = "latest"
    max_catchup: int = _DEFAULT_MAX_CATCHUP
    overlap: Overlap = "skip"
    max_active_runs: int = 1
    #: Seconds (a float, or None): the most a slot's fire time is delayed.
    jitter: float | None = None

    def _option_problems(self) -> list[str]:
        """Every problem with the shared options; normalises what it accepts."""
        problems = []
        params: object = self.parameters
        if params is None:
            params = {}
        if not isinstance(params, Mapping) or not all(isinstance(k, str) for k in params):
            problems.append(
                f"`parameters` must be a dict of parameter names to values, got {params!r}"
            )
        else:
            object.__setattr__(self, "parameters", MappingProxyType(dict(params)))
        problems.append(_flag("active", self.active))
        problems.append(_name("name", self.name))
        if self.catchup not in _CATCHUPS:
            problems.append(f"`catchup` must be one of {_choices(_CATCHUPS)}, got {self.catchup!r}")
        problems.append(_count("max_catchup", self.max_catchup, optional=False))
        if (
            self.catchup in _CATCHUPS
            and self.catchup != "all"
            and self.max_catchup != _DEFAULT_MAX_CATCHUP
        ):
            problems.append(
                f"`max_catchup` bounds catchup='all' only, and catchup={self.catchup!r} runs at "
                "most one missed slot: drop `max_catchup` or write catchup='all'"
            )
        if self.overlap not in _OVERLAPS:
            problems.append(f"`overlap` must be one of {_choices(_OVERLAPS)}, got {self.overlap!r}")
        problems.append(_count("max_active_runs", self.max_active_runs, optional=False))
        if self.overlap == "allow" and self.max_active_runs != 1:
            problems.append(
                "overlap='allow' starts every slot whatever is running, so `max_active_runs` "
                "does not apply: drop it, or choose overlap='skip', 'queue' or 'cancel_previous'"
            )
        jitter: object = self.jitter
        if isinstance(jitter, timedelta):
            jitter = jitter.total_seconds()
        if jitter is not None and (not _is_number(jitter) or jitter < 0):  # type: ignore[operator]
            problems.append(
                f"`jitter` must be a number of seconds >= 0 or a timedelta, got {self.jitter!r}"
            )
        else:
            object.__setattr__(self, "jitter", float(jitter) if jitter else None)  # type: ignore[arg-type]
        return [p for p in problems if p]

    # -- slots ---------------------------------------------------------------------------

    @property
    def key(self) -> str:
        """The schedule's name in the store: :attr:`name` when given, else one derived
        from the expression and time zone (cron) or the interval and anchor (every).

        Slots are keyed by (flow, key, slot time): a schedule whose expression or time
        zone changes gets a new key and starts afresh, unless it keeps a ``name``.
        """
        return self.name if self.name is not None else self._derived_key()

    def _derived_key(self) -> str:
        raise NotImplementedError

    def next_after(self, t: datetime) -> datetime:
        """The first slot strictly after ``t`` (an aware datetime), in UTC."""
        raise NotImplementedError

    def slots_between(self, start: datetime, end: datetime) -> Iterator[datetime]:
        """The slots in ``(start, end]``, oldest first, computed as they are read."""
        end = _utc("end", end)
        slot = self.next_after(start)
        while slot <= end:
            yield slot
            slot = self.next_after(slot)

    def prev_before(self, t: datetime) -> datetime | None:
        """The last slot strictly before ``t``, in UTC (``None`` if none in 60 years)."""
        recent = self._recent(_utc("t", t) - _MICROSECOND, 1)
        return recent[-1] if recent else None

    def _recent(self, upto: datetime, count: int) -> list[datetime]:
        """The newest ``count`` slots at or before ``upto`` (UTC), oldest first.

        Generic: the slots of a window ending at ``upto``, the window growing fourfold
        until it holds enough (so the slots read stay within a few times ``count``).
        """
        found: deque[datetime] = deque(maxlen=count)
        span = timedelta(minutes=count)  # cron slots are at least a minute apart
        while True:
            try:
                start = upto - span
            except OverflowError:
                return list(found)
            found.clear()
            found.extend(self.slots_between(start, upto))
            if len(found) >= count or span >= _SEARCH_LIMIT:
                return list(found)
            span *= 4

    def fire_at(self, slot: datetime, *, flow: str = "") -> datetime:
        """When ``slot`` fires: the slot time, plus its jitter delay when ``jitter`` is set.

        The delay is derived from ``flow``, :attr:`key` and the slot time (BLAKE2b), so
        every process computes the same one, and is less than ``jitter`` seconds.
        """
        if not self.jitter:
            return slot
        slot = _utc("slot", slot)
        seed = f"{flow}\0{self.key}\0{slot.isoformat()}".encode()
        fraction = int.from_bytes(hashlib.blake2b(seed, digest_size=8).digest()) / 2**64
        return slot + timedelta(microseconds=int(self.jitter * 1e6 * fraction))

    def _options_repr(self) -> str:
        parts = []
        if self.parameters:
            parts.append(f"parameters={dict(self.parameters)!r}")
        for option, default in (
            ("active", True),
            ("name", None),
            ("catchup", "latest"),
            ("max_catchup", _DEFAULT_MAX_CATCHUP),
            ("overlap", "skip"),
            ("max_active_runs", 1),
            ("jitter", None),
        ):
            value = getattr(self, option)
            if value != default:
                parts.append(f"{option}={value!r}")
        return "".join(f", {part}" for part in parts)


def _choices(values: Sequence[str]) -> str:
    return ", ".join(repr(v) for v in values)


def _utc(option: str, value: object) -> datetime:
    """``value`` as an aware UTC datetime; a naive one is refused (its zone is a guess)."""
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise ConfigurationError(
            f"`{option}` must be a timezone-aware datetime, got {value!r}; "
            "write datetime.now(timezone.utc) or give it a tzinfo"
        )
    return value if value.tzinfo is UTC else value.astimezone(UTC)


# -- cron ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CronSchedule(Schedule):
    """A cron expression read in a time zone: :func:`cron` makes one.

    >>> from datetime import datetime, timezone
    >>> from flowcore.schedules import cron
    >>> nightly = cron("30 2 * * *", tz="Europe/Paris")
    >>> nightly.next_after(datetime(2026, 3, 28, 12, tzinfo=timezone.utc))  # 02:30 does not exist
    datetime.datetime(2026, 3, 29, 1, 0, tzinfo=datetime.timezone.utc)
    >>> nightly.key
    '30 2 * * * Europe/Paris'
    """

    expr: str
    tz: str = "UTC"
    _zone: tzinfo = field(init=False, repr=False, compare=False)
    #: The parsed expression, iterated on copies (parsing costs more than a step).
    _template: CronSim = field(init=False, repr=False, compare=False)
    #: Fires every hour: follows elapsed time across DST changes (module docstring).
    _elapsed: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # zoneinfo and cronsim are imported by the first cron schedule made, not with
        # this module: every flow imports it, few flows have a cron schedule.
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        problems = []
        tz: object = self.tz
        if isinstance(tz, ZoneInfo):
            tz = tz.key
        zone: tzinfo | None = None
        if not isinstance(tz, str) or not tz:
            problems.append(
                f"`tz` must be an IANA time zone name such as 'Europe/Paris', got {tz!r}"
            )
        elif tz in _UTC_NAMES:
            zone = UTC
        else:
            try:
                zone = ZoneInfo(tz)
            except (ZoneInfoNotFoundError, ValueError):
                problems.append(
                    f"`tz` {tz!r} is not a known time zone: give an IANA name such as "
                    "'Europe/Paris' or 'America/New_York' (and install the tzdata package "
                    "where the system has no time zone data)"
                )
        expr: object = self.expr
        template = None
        if not isinstance(expr, str):
            problems.append(f"`expr` must be a cron expression (a str), got {expr!r}")
        else:
            expr = " ".join(expr.split())
            template, problem = _parse(expr)
            problems.append(problem)
        problems.extend(self._option_problems())
        problems = [p for p in problems if p]
        if problems:
            raise ConfigurationError(
                f"invalid schedule cron({self.expr!r}): " + "; ".join(problems)
            )
        assert template is not None and zone is not None
        object.__setattr__(self, "expr", expr)
        object.__setattr__(self, "tz", tz)
        object.__setattr__(self, "_zone", zone)
        object.__setattr__(self, "_template", template)
        object.__setattr__(self, "_elapsed", template.hours == set(range(24)))

    def _derived_key(self) -> str:
        return f"{self.expr} {self.tz}"

    def __repr__(self) -> str:
        tz = "" if self.tz == "UTC" else f", tz={self.tz!r}"
        return f"flowcore.cron({self.expr!r}{tz}{self._options_repr()})"

    def next_after(self, t: datetime) -> datetime:
        t = _utc("t", t)
        zone = self._zone
        if zone is UTC:
            return self._naive_next(t.replace(tzinfo=None, microsecond=0)).replace(tzinfo=UTC)
        local = t.astimezone(zone)
        naive = local.replace(tzinfo=None, microsecond=0, fold=0)
        if self._elapsed:
            offset = local.utcoffset()
            assert offset is not None
            slot = (self._naive_next(naive) - offset).replace(tzinfo=UTC)
            # The same offset, less than a day later: no change of offset in between
            # (no zone changes twice in a day), so the slot is the next real match.
            if slot - t < timedelta(days=1) and slot.astimezone(zone).utcoffset() == offset:
                return slot
            # Across a change: step through real time, reading the wall clock at each.
            it = self._copy()
            it.dt = local.replace(microsecond=0)
            return _next(it, self.expr).astimezone(UTC)
        # Wall-clock times: the instant of each local time (the first of a repeated one,
        # the end of the gap for a missing one) never decreases as the local time
        # grows, so the first local time whose instant is after t gives the slot. (Only
        # in a repeated hour, t's own local times map to instants before it.)
        while True:
            naive = self._naive_next(naive)
            slot = self._instant(naive)
            if slot > t:
                return slot

    def _copy(self) -> CronSim:
        # A shallow copy of the parsed template, its parsed fields shared (read-only):
        # what copy.copy does, at a fifth of its cost.
        template = self._template
        it = type(template).__new__(type(template))
        it.__dict__.update(template.__dict__)
        return it

    def _naive_next(self, naive: datetime) -> datetime:
        """The first wall-clock time after ``naive`` that the expression names."""
        it = self._copy()
        it.dt = naive
        return _next(it, self.expr)

    def _instant(self, naive: datetime) -> datetime:
        """When the wall-clock time ``naive`` first happens in the schedule's zone."""
        zone = self._zone
        instant = naive.replace(tzinfo=zone).astimezone(UTC)  # fold=0: the first occurrence
        if instant.astimezone(zone).replace(tzinfo=None) == naive:
            return instant
        return _gap_end(naive, zone)


def _next(it: CronSim, expr: str) -> datetime:
    try:
        return next(it)
    except StopIteration:  # checked at construction; a limit of cronsim's search
        raise ConfigurationError(
            f"cron expression {expr!r} has no slot within 50 years of {it.dt}"
        ) from None


def _gap_end(naive: datetime, zone: tzinfo) -> datetime:
    """The instant the clocks jump over ``naive``, a local time that does not exist."""
    early = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)  # read with the later offset
    late = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)  # read with the earlier one
    after = late.astimezone(zone).utcoffset()
    lo, hi = int(early.timestamp()), int(late.timestamp())  # the change is in (lo, hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == after:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


def _parse(expr: str) -> tuple[CronSim | None, str]:
    """The parsed expression, or a phrase naming every bad field and the fix."""
    from cronsim import CronSim, CronSimError  # see CronSchedule.__post_init__

    fields = _ALIASES.get(expr.lower(), expr).split()
    shown = f"`expr` {expr!r}"
    if len(fields) != 5:
        six = "; for seconds use flowcore.every(seconds=...)" if len(fields) == 6 else ""
        return None, (
            f"{shown} must have 5 fields (minute hour day-of-month month day-of-week), "
            f"or be one of {', '.join(_ALIASES)}; it has {len(fields)}{six}"
        )
    bad = []
    for i, (label, accepted) in enumerate(_FIELDS):
        alone = ["*"] * 5
        alone[i] = fields[i]
        try:
            CronSim(" ".join(alone), datetime(2000, 1, 1))
        except CronSimError:
            bad.append(
                f"the {label} field {fields[i]!r} is not valid ({accepted}, as `*`, `5`, "
                "`1-10`, `*/15` or `0,30`)"
            )
    if bad:
        return None, f"{shown}: " + "; ".join(bad)
    text = " ".join(fields)
    try:
        template = CronSim(text, datetime(2000, 1, 1))
        next(CronSim(text, datetime(2000, 1, 1)))
    except (CronSimError, StopIteration):
        return None, (
            f"{shown} never fires: day-of-month {fields[2]!r} never falls in month "
            f"{fields[3]!r}; fix the day or the month"
        )
    return template, ""


def cron(
    expr: str,
    tz: str | ZoneInfo = "UTC",
    *,
    parameters: Mapping[str, Any] | None = None,
    active: bool = True,
    name: str | None = None,
    catchup: Catchup = "latest",
    max_catchup: int = _DEFAULT_MAX_CATCHUP,
    overlap: Overlap = "skip",
    max_active_runs: int = 1,
    jitter: float | timedelta | None = None,
) -> CronSchedule:
    """A schedule firing at the times a cron expression names, in time zone ``tz``.

    ``expr``: 5 fields, ``minute hour day-of-month month day-of-week`` (``*/5 * * * *``,
    ``30 2 * * *``, ``0 9 * * MON-FRI``), or ``@hourly``, ``@daily``, ``@weekly``,
    ``@monthly``, ``@yearly``. ``tz``: an IANA name (``"Europe/Paris"``); daylight
    saving is handled as the module docstring says.

    Options (shared with :func:`every`): ``parameters`` for each scheduled run (names
    of the flow's parameters); ``active=False`` keeps the schedule without firing it;
    ``name``, the schedule's key in the store (default: derived from ``expr`` and
    ``tz``); ``catchup`` (``"latest"``, ``"all"``, ``"none"``) with ``max_catchup``
    for ``"all"``; ``overlap`` (``"skip"``, ``"queue"``, ``"cancel_previous"``,
    ``"allow"``) with ``max_active_runs``; ``jitter``, seconds of deterministic delay
    at most. Every problem is reported at once, in one ``ConfigurationError``.

    >>> from flowcore.schedules import cron
    >>> cron("*/5 * * * *", tz="Europe/Paris", parameters={"pages": 20})
    flowcore.cron('*/5 * * * *', tz='Europe/Paris', parameters={'pages': 20})
    """
    return CronSchedule(
        expr=expr,
        tz=tz,  # type: ignore[arg-type]  # a ZoneInfo is read as its name
        parameters=parameters,  # type: ignore[arg-type]  # None is read as {}
        active=active,
        name=name,
        catchup=catchup,
        max_catchup=max_catchup,
        overlap=overlap,
        max_active_runs=max_active_runs,
        jitter=jitter,  # type: ignore[arg-type]  # a timedelta is read as seconds
    )


# -- intervals -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class IntervalSchedule(Schedule):
    """Slots every ``interval`` of elapsed time, at ``anchor + k * interval`` for every
    integer ``k``: :func:`every` makes one. Daylight saving never moves them.

    >>> from datetime import datetime, timezone
    >>> from flowcore.schedules import every
    >>> seven = every(minutes=7, anchor=datetime(2026, 3, 29, tzinfo=timezone.utc))
    >>> seven.next_after(datetime(2026, 3, 29, 1, tzinfo=timezone.utc))
    datetime.datetime(2026, 3, 29, 1, 3, tzinfo=datetime.timezone.utc)
    >>> seven.key
    'every 7m from 2026-03-29T00:00:00+00:00'
    """

    interval: timedelta
    #: Sets the slots' phase (UTC); it does not delay the first slot.
    anchor: datetime = EPOCH

    def __post_init__(self) -> None:
        problems = []
        interval: object = self.interval
        if not isinstance(interval, timedelta) or interval < MIN_INTERVAL:
            problems.append(
                f"the interval must be at least 1 second (each slot is a claim in the "
                f"store), got {interval!r}"
            )
        anchor: object = self.anchor
        if anchor is None:
            anchor = EPOCH
        if not isinstance(anchor, datetime) or anchor.utcoffset() is None:
            problems.append(
                f"`anchor` must be a timezone-aware datetime, got {anchor!r}; "
                "write datetime(..., tzinfo=timezone.utc)"
            )
        else:
            object.__setattr__(self, "anchor", anchor.astimezone(UTC))
        problems.extend(self._option_problems())
        if problems:
            raise ConfigurationError(
                f"invalid schedule every({interval!r}): " + "; ".join(problems)
            )

    def _derived_key(self) -> str:
        key = f"every {_duration(self.interval)}"
        return key if self.anchor == EPOCH else f"{key} from {self.anchor.isoformat()}"

    def __repr__(self) -> str:
        anchor = "" if self.anchor == EPOCH else f", anchor={self.anchor!r}"
        return f"flowcore.every({self.interval!r}{anchor}{self._options_repr()})"

    def next_after(self, t: datetime) -> datetime:
        t = _utc("t", t)
        return self.anchor + self.interval * ((t - self.anchor) // self.interval + 1)

    def _recent(self, upto: datetime, count: int) -> list[datetime]:
        last = (upto - self.anchor) // self.interval
        return [self.anchor + self.interval * k for k in range(last - count + 1, last + 1)]


def _duration(interval: timedelta) -> str:
    """``7m``, ``2h``, ``1d``, ``90s``, ``1.5s``: the largest unit that divides it."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if interval % timedelta(seconds=size) == timedelta(0):
            return f"{interval // timedelta(seconds=size)}{unit}"
    return f"{interval.total_seconds():g}s"


def every(
    interval: timedelta | None = None,
    /,
    *,
    days: float = 0,
    hours: float = 0,
    minutes: float = 0,
    seconds: float = 0,
    anchor: datetime | None = None,
    parameters: Mapping[str, Any] | None = None,
    active: bool = True,
    name: str | None = None,
    catchup: Catchup = "latest",
    max_catchup: int = _DEFAULT_MAX_CATCHUP,
    overlap: Overlap = "skip",
    max_active_runs: int = 1,
    jitter: float | timedelta | None = None,
) -> IntervalSchedule:
    """A schedule firing every ``interval`` (a ``timedelta``, or ``days``, ``hours``,
    ``minutes`` and ``seconds`` added up; at least 1 second) of elapsed time.

    Slots are ``anchor + k * interval``: ``anchor`` (an aware datetime, default
    1970-01-01 UTC) sets their phase, so ``every(hours=1)`` fires on the hour (UTC)
    and every process agrees on the slots. Daylight saving never moves them: for
    "02:30 local every day", write ``cron("30 2 * * *", tz=...)``. The other options
    are :func:`cron`'s.

    >>> from flowcore.schedules import every
    >>> every(minutes=5, catchup="all")
    flowcore.every(datetime.timedelta(seconds=300), catchup='all')
    """
    problems = []
    units = {"days": days, "hours": hours, "minutes": minutes, "seconds": seconds}
    for unit, value in units.items():
        if not _is_number(value) or value < 0:
            problems.append(f"`{unit}` must be a number >= 0, got {value!r}")
    given = any(value != 0 for value in units.values())
    passed: object = interval
    if passed is not None and not isinstance(passed, timedelta):
        problems.append(
            f"the interval must be a timedelta, got {interval!r}; for a number of seconds "
            "write every(seconds=...)"
        )
    elif interval is not None and given:
        problems.append(
            "give the interval as a timedelta or as days=/hours=/minutes=/seconds=, not both"
        )
    elif interval is None and not given and not problems:
        problems.append("give the interval: every(minutes=5), or every(timedelta(...))")
    if problems:
        raise ConfigurationError("invalid schedule every(...): " + "; ".join(problems))
    if interval is None:
        interval = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    return IntervalSchedule(
        interval=interval,
        anchor=anchor,  # type: ignore[arg-type]  # None is read as the epoch
        parameters=parameters,  # type: ignore[arg-type]
        active=active,
        name=name,
        catchup=catchup,
        max_catchup=max_catchup,
        overlap=overlap,
        max_active_runs=max_active_runs,
        jitter=jitter,  # type: ignore[arg-type]
    )


# -- what is due -----------------------------------------------------------------------------


class Slot(msgspec.Struct, frozen=True):
    """A slot to fire: when it was scheduled for, when it fires, the data interval."""

    #: The slot time (UTC): what a scheduled run records as ``scheduled_for``.
    scheduled_for: datetime
    #: When it fires: ``scheduled_for`` plus its jitter delay.
    fire_at: datetime
    #: The data interval the slot covers: from the previous slot time to its own.
    interval_start: datetime
    interval_end: datetime


class DueSlots(msgspec.Struct, frozen=True):
    """What :func:`due_slots` found: the slots to fire now, and what to remember.

    The caller fires :attr:`slots` (oldest first), stores :attr:`cursor` as the
    schedule's ``last_fired``, and calls again at :attr:`wake_at`.
    """

    #: Fire these now, oldest first.
    slots: tuple[Slot, ...]
    #: Every slot at or before it was fired or skipped on purpose: pass it as
    #: ``last_fired`` next time. Never earlier than the ``last_fired`` given.
    cursor: datetime
    #: When the next slot fires (its jitter included): call again then.
    wake_at: datetime
    #: The first and last slot times the catch-up policy skipped, or ``None``.
    skipped: tuple[datetime, datetime] | None = None
    #: ``catchup="all"`` met ``max_catchup``: older missed slots were dropped (warn).
    capped: bool = False


def due_slots(
    schedule: Schedule,
    last_fired: datetime | None,
    now: datetime,
    *,
    flow: str = "",
    tolerance: timedelta = DUE_TOLERANCE,
) -> DueSlots:
    """The slots of ``schedule`` to fire at ``now``, its catch-up policy applied.

    ``last_fired``: the cursor returned by the previous call (``None`` for a schedule
    that never ran: it starts at ``now``, with nothing missed). ``flow``: the flow's
    name, which the jitter delay is derived from (pass it, so that flows sharing an
    expression do not fire together). ``tolerance``: under ``catchup="none"``, how
    long past its fire time a slot is still due (:data:`DUE_TOLERANCE`).

    Slots in ``(last_fired, now]`` whose fire time has passed are due; a slot whose
    jitter delay has not elapsed waits, and the slots after it with it. After
    downtime (more than one slot due), ``"latest"`` fires the newest, ``"all"`` every
    one (the newest ``max_catchup``), ``"none"`` only one due within ``tolerance``.
    It does not look at ``active``: the caller leaves inactive (and paused) schedules out.
    """
    now = _utc("now", now)
    start = now if last_fired is None else _utc("last_fired", last_fired)
    first = schedule.next_after(start)
    if first > now:  # nothing is due (or the clock went back): wait for the next slot
        return DueSlots((), start, schedule.fire_at(first, flow=flow))
    second = schedule.next_after(first)
    if second > now:  # one slot: on time, or missed by less than a period
        fire_at = schedule.fire_at(first, flow=flow)
        if fire_at > now:
            return DueSlots((), start, fire_at)
        wake_at = schedule.fire_at(second, flow=flow)
        if schedule.catchup == "none" and now - fire_at > tolerance:
            return DueSlots((), first, wake_at, skipped=(first, first))
        previous = start if schedule.next_after(start - _MICROSECOND) == start else None
        if previous is None:
            previous = schedule.prev_before(first) or first
        return DueSlots((Slot(first, fire_at, previous, first),), first, wake_at)
    if schedule.catchup == "all":
        return _catch_up_all(schedule, start, first, now, flow)
    # Downtime under "latest" or "none": the newest slot supersedes the others.
    recent = schedule._recent(now, 2)
    newest, before = recent[-1], recent[0]
    skipped = (first, before)
    fire_at = schedule.fire_at(newest, flow=flow)
    if fire_at > now:  # its jitter delay runs on: skip the older ones now, fire it then
        return DueSlots((), before, fire_at, skipped=skipped)
    wake_at = schedule.fire_at(schedule.next_after(now), flow=flow)
    if schedule.catchup == "none" and now - fire_at > tolerance:
        return DueSlots((), newest, wake_at, skipped=(first, newest))
    return DueSlots((Slot(newest, fire_at, before, newest),), newest, wake_at, skipped=skipped)


def _catch_up_all(
    schedule: Schedule, start: datetime, first: datetime, now: datetime, flow: str
) -> DueSlots:
    """Every missed slot (the newest ``max_catchup``), each with the slot before it."""
    limit = schedule.max_catchup
    recent = schedule._recent(now, limit + 1)  # the one before the oldest: its interval
    missed = [i for i, slot in enumerate(recent) if slot > start]
    capped = len(missed) > limit
    keep = missed[-limit:]
    skipped = (first, recent[keep[0] - 1]) if capped else None
    slots: list[Slot] = []
    cursor = recent[keep[0] - 1] if capped else start
    for i in keep:
        slot = recent[i]
        fire_at = schedule.fire_at(slot, flow=flow)
        if fire_at > now:  # its jitter delay runs on: it, and the slots after it, wait
            return DueSlots(tuple(slots), cursor, fire_at, skipped=skipped, capped=capped)
        previous = recent[i - 1] if i else (schedule.prev_before(slot) or slot)
        slots.append(Slot(slot, fire_at, previous, slot))
        cursor = slot
    wake_at = schedule.fire_at(schedule.next_after(now), flow=flow)
    return DueSlots(tuple(slots), cursor, wake_at, skipped=skipped, capped=capped)
