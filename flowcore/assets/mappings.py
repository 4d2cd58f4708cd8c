"""Partition mappings: which partitions of an upstream asset a partition reads.

``@flowcore.asset(partitions=daily, partition_mapping={"events": TimeWindowMapping()})``:
for each edge from an upstream to a downstream asset, a mapping answers both ways,
:meth:`~PartitionMapping.upstream_keys` (what a downstream partition reads, to load
and to know when it is stale) and :meth:`~PartitionMapping.downstream_keys` (what an
upstream partition feeds, to mark stale and to react to). Answers are sequences of
keys; a time-window answer is a :class:`~flowcore.assets.partitions.KeyRange`, made
as it is read. ``None`` stands for the single value of an unpartitioned asset.

- :class:`IdentityMapping` (the default between the same kind of partitions): the
  partition with the same key.
- :class:`TimeWindowMapping` (the default between two different time windows): the
  partitions whose windows overlap: a daily partition reads the 24 (23, 25) hourly
  partitions of its local day, an hour feeds the day it is in.
- :class:`AllPartitionsMapping` (the default for an unpartitioned asset reading a
  partitioned one): every partition.
- :class:`StaticMapping`: an explicit table, upstream key to downstream key(s).

An impossible pairing (identity between days and a list of regions, a time window
over static keys) is an error when the graph is built, naming the edge and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Final

from ..errors import ConfigurationError
from .partitions import (
    DailyPartitions,
    DynamicPartitions,
    HourlyPartitions,
    KeyRange,
    Partitions,
    StaticPartitions,
    TimeWindowPartitions,
    describe,
)

__all__ = [
    "AllPartitionsMapping",
    "IdentityMapping",
    "PartitionMapping",
    "StaticMapping",
    "TimeWindowMapping",
    "default_mapping",
]

_TICK: Final = timedelta(microseconds=1)

#: Keys of one side of an edge: a sequence of keys, or ``None`` for an unpartitioned asset.
Keys = Sequence[str] | None


class PartitionMapping:
    """How the partitions of a downstream asset read those of one upstream asset."""

    def problem(self, downstream: Partitions | None, upstream: Partitions | None) -> str:
        """Why this mapping cannot join these partitions, or ``""``."""
        raise NotImplementedError

    def upstream_keys(
        self,
        downstream: Partitions | None,
        key: str | None,
        upstream: Partitions | None,
        *,
        until: datetime | None = None,
    ) -> Keys:
        """The upstream keys the downstream partition ``key`` reads (``None``: the
        upstream is unpartitioned). ``until``: for an open-ended upstream read whole."""
        raise NotImplementedError

    def downstream_keys(
        self,
        upstream: Partitions | None,
        key: str | None,
        downstream: Partitions | None,
        *,
        until: datetime | None = None,
    ) -> Keys:
        """The downstream keys that read the upstream partition ``key`` (``None``: the
        downstream is unpartitioned)."""
        raise NotImplementedError


def _all(partitions: Partitions | None, until: datetime | None) -> Keys:
    return None if partitions is None else partitions.keys(until)


def _same_kind(a: Partitions, b: Partitions) -> bool:
    if isinstance(a, TimeWindowPartitions) and isinstance(b, TimeWindowPartitions):
        return type(a) is type(b) and a.tz == b.tz
    if isinstance(a, DynamicPartitions) and isinstance(b, DynamicPartitions):
        return a.name == b.name
    return isinstance(a, StaticPartitions) and isinstance(b, StaticPartitions)


@dataclass(frozen=True, slots=True)
class IdentityMapping(PartitionMapping):
    """A partition reads the upstream partition with the same key (when there is one).

    Joins partitions of one kind: daily with daily in the same zone (their starts may
    differ), static with static, dynamic with the same name. An unpartitioned upstream
    is read whole by every partition.
    """

    def problem(self, downstream: Partitions | None, upstream: Partitions | None) -> str:
        if upstream is None or downstream == upstream:
            return ""
        if downstream is None:
            return (
                f"an unpartitioned asset cannot read one partition of {describe(upstream)} by "
                "identity: use flowcore.assets.AllPartitionsMapping() (the default), or "
                "partition the asset"
            )
        if _same_kind(downstream, upstream):
            return ""
        fix = (
            "TimeWindowMapping()"
            if isinstance(downstream, TimeWindowPartitions)
            and isinstance(upstream, TimeWindowPartitions)
            else "StaticMapping({upstream_key: downstream_key, ...})"
        )
        return (
            f"identity joins partitions of one kind, and {describe(downstream)} and "
            f"{describe(upstream)} are not: give partition_mapping={{...: {fix}}}"
        )

    def upstream_keys(
        self,
        downstream: Partitions | None,
        key: str | None,
        upstream: Partitions | None,
        *,
        until: datetime | None = None,
    ) -> Keys:
        if upstream is None:
            return None
        if isinstance(upstream, DynamicPartitions):
            return (key,) if key is not None else ()
        return (key,) if key is not None and key in upstream else ()

    def downstream_keys(
        self,
        upstream: Partitions | None,
        key: str | None,
        downstream: Partitions | None,
        *,
        until: datetime | None = None,
    ) -> Keys:
        if downstream is None:
            return None
        if upstream is None:
            return downstream.keys(until)
        if isinstance(downstream, DynamicPartitions):
            return (key,) if key is not None else ()
        return (key,) if key is not None and key in downstream else ()


@dataclass(frozen=True, slots=True)
class TimeWindowMapping(PartitionMapping):
    """A partition reads the upstream partitions whose windows overlap its own.

    ``start_offset``/``end_offset`` (in downstream partitions) widen or shift the window
    read: ``TimeWindowMapping(start_offset=-1, end_offset=-1)`` reads yesterday's,
    ``start_offset=-6`` the last seven days'.

    >>> from flowcore.assets import DailyPartitions, HourlyPartitions, TimeWindowMapping
    >>> days = DailyPartitions("2026-01-01", tz="Europe/Paris")
    >>> hours = HourlyPartitions("2026-01-01T00:00", tz="Europe/Paris")
    >>> len(TimeWindowMapping().upstream_keys(days, "2026-10-25", hours))  # clocks fall back
    25
    >>> TimeWindowMapping().downstream_keys(hours, "2026-10-25T02:00+01:00", days)
    KeyRange('2026-10-25' .. '2026-10-25', 1 keys)
    """

    start_offset: int = 0
    end_offset: int = 0

    def __post_init__(self) -> None:
        for option in ("start_offset", "end_offset"):
            value: object = getattr(self, option)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigurationError(
                    f"`{option}` must be an int (downstream partitions), got {value!r}"
                )
        if self.end_offset < self.start_offset:
            raise ConfigurationError(
                f"`end_offset` ({self.end_offset}) must be >= `start_offset` ({self.start_offset})"
            )

    def problem(self, downstream: Partitions | None, upstream: Partitions | None) -> str:
        if isinstance(downstream, TimeWindowPartitions) and isinstance(
            upstream, TimeWindowPartitions
        ):
            return ""
        return (
            f"a time-window mapping joins two time-window partitions (daily, hourly), got "
            f"{describe(downstream)} reading {describe(upstream)}"
        )

    def upstream_keys(
        self,
        downstream: Partitions | None,
        key: str | None,
        upstream: Partitions | None,
        *,
        until: datetime | None = None,
    ) -> Keys:
        assert isinstance(downstream, TimeWindowPartitions) and key is not None
        assert isinstance(upstream, TimeWindowPartitions)
        index = downstream.index_of(key)
        start = _window_edge(downstream, index + self.start_offset, 0)
        end = _window_edge(downstream, index + self.end_offset, 1)
        first = max(0, upstream.index_for(start))
        stop = upstream.index_for(end - _TICK) + 1
        return KeyRange(upstream, first, _clip(upstream, stop))

    def downstream_keys(
        self,
        upstream: Partitions | None,
        key: str | None,
        downstream: Partitions | None,
        *,
        until: datetime | None = None,
    ) -> Keys:
        assert isinstance(upstream, TimeWindowPartitions) and key is not None
        assert isinstance(downstream, TimeWindowPartitions)
        start, end = upstream.window(key)
        # Downstream i reads windows i + start_offset .. i + end_offset.
        first = max(0, downstream.index_for(start) - self.end_offset)
        stop = downstream.index_for(end - _TICK) - self.start_offset + 1
        return KeyRange(downstream, first, _clip(downstream, stop))


def _window_edge(partitions: TimeWindowPartitions, index: int, side: int) -> datetime:
    """The start (side 0) or end (side 1) of window ``index``, even outside the defined
    range (an offset may reach before ``start``): extrapolated from the arithmetic."""
    if isinstance(partitions, DailyPartitions):
        ordinal = partitions.start.toordinal() + index + side
        return partitions._midnight(ordinal)
    assert isinstance(partitions, HourlyPartitions)
    return partitions.start + timedelta(hours=index + side)


def _clip(partitions: TimeWindowPartitions, stop: int) -> int:
    limit = partitions._limit()
    return stop if limit is None else min(stop, limit)


@dataclass(frozen=True, slots=True)
class AllPartitionsMapping(PartitionMapping):
    """Every partition of the upstream: an unpartitioned report over all the days."""

    def problem(self, downstream: Partitions | None, upstream: Partitions | None) -> str:
        if upstream is None:
            return (
                "AllPartitionsMapping reads every partition of a partitioned asset, and the "
                "upstream is unpartitioned: drop the mapping"
            )
        return ""

    def upstream_keys(
        self,
        downstream: Partitions | None,
        key: str | None,
        upstream: Partitions | None,
        *,
        until: datetime | None = None,
    ) -> Keys:
        return _all(upstream, until)

    def downstream_keys(
        self,
        upstream: Partitions | None,
        key: str | None,
        downstream: Partitions | None,
        *,
        until: datetime | None = None,
    ) -> Keys:
        return _all(downstream, until)


@dataclass(frozen=True, slots=True, init=False)
class StaticMapping(PartitionMapping):
    """An explicit table from upstream keys to the downstream key (or keys) they feed.

    >>> from flowcore.assets import StaticMapping, StaticPartitions
    >>> cities = StaticPartitions(["paris", "lyon", "boston"])
    >>> countries = StaticPartitions(["fr", "us"])
    >>> table = StaticMapping({"paris": "fr", "lyon": "fr", "boston": "us"})
    >>> table.upstream_keys(countries, "fr", cities)
    ('paris', 'lyon')
    """

    table: Mapping[str, tuple[str, ...]]
    _reverse: Mapping[str, tuple[str, ...]] = field(repr=False, compare=False)

    def __init__(self, table: Mapping[str, str | Sequence[str]]) -> None:
        if not isinstance(table, Mapping):
            raise ConfigurationError(
                f"StaticMapping takes a dict of upstream key to downstream key(s), got {table!r}"
            )
        forward: dict[str, tuple[str, ...]] = {}
        reverse: dict[str, list[str]] = {}
        for up, down in table.items():
            downs = (down,) if isinstance(down, str) else tuple(down)
            if not isinstance(up, str) or not all(isinstance(d, str) for d in downs):
                raise ConfigurationError(
                    f"StaticMapping maps str keys to a str key or a list of them, got "
                    f"{up!r}: {down!r}"
                )
            forward[up] = downs
            for d in downs:
                reverse.setdefault(d, []).append(up)
        object.__setattr__(self, "table", MappingProxyType(forward))
        object.__setattr__(
            self, "_reverse", MappingProxyType({k: tuple(v) for k, v in reverse.items()})
        )

    def problem(self, downstream: Partitions | None, upstream: Partitions | None) -> str:
        if downstream is None or upstream is None:
            return (
                f"a static mapping joins two partitioned assets, got {describe(downstream)} "
                f"reading {describe(upstream)}"
            )
        problems = []
        for side, partitions, keys in (
            ("upstream", upstream, list(self.table)),
            ("downstream", downstream, list(self._reverse)),
        ):
            if isinstance(partitions, DynamicPartitions):
                continue
            unknown = [k for k in keys if k not in partitions]
            if unknown:
                verb = "is not a key" if len(unknown) == 1 else "are not keys"
                problems.append(
                    f"{', '.join(map(repr, unknown[:5]))} {verb} of the {side} partitions, "
                    f"{describe(partitions)}"
                )
        return "; ".join(problems)

    def upstream_keys(
        self,
        downstream: Partitions | None,
        key: str | None,
        upstream: Partitions | None,
        *,
        until: datetime | None = None,
    ) -> Keys:
        return self._reverse.get(key or "", ())

    def downstream_keys(
        self,
        upstream: Partitions | None,
        key: str | None,
        downstream: Partitions | None,
        *,
        until: datetime | None = None,
    ) -> Keys:
        return self.table.get(key or "", ())


def default_mapping(downstream: Partitions | None, upstream: Partitions | None) -> PartitionMapping:
    """The mapping of an edge that names none: all partitions for an unpartitioned asset
    reading a partitioned one, time windows between two different time windows, else
    identity (whose :meth:`~PartitionMapping.problem` then says what to give)."""
    if upstream is None:
        return _IDENTITY  # an unpartitioned upstream: its one value (the common case)
    if downstream is None:
        return _ALL
    if (
        isinstance(downstream, TimeWindowPartitions)
        and isinstance(upstream, TimeWindowPartitions)
        and not _same_kind(downstream, upstream)
    ):
        return _WINDOW
    return _IDENTITY


# Shared: mappings are frozen values, and a graph asks for one per edge.
_IDENTITY: Final = IdentityMapping()
_ALL: Final = AllPartitionsMapping()
_WINDOW: Final = TimeWindowMapping()
