"""A set of partitions kept as sorted, disjoint ranges of their indexes.

"Which of 1,000,000 partitions are materialised, stale, failed" is mostly a few
long runs: a backfill fills a range, a code change makes everything stale, a
failure leaves a hole. So a :class:`PartitionSet` keeps half-open index ranges
``[start, stop)``, sorted, disjoint and never touching (adjacent ranges are merged),
in one flat list of bounds: memory, encoding and most operations are proportional
to the number of ranges, not of partitions. Membership is a binary search; adding
or removing a range is a binary search plus a splice of the list.

Indexes are what the partitions definition numbers its keys with
(``DailyPartitions.index_of``); a set made with ``partitions=`` also takes and
gives keys (``add("2026-03-29")``, ``keys()``), converted one at a time as they are
read, so iterating a million keys never holds a million strings.

The bytes form, for the store: a version byte (``1``), then a msgpack array of
the gaps and lengths in turn (``start0, stop0 - start0, start1 - stop0, ...``):
small numbers for dense sets, a few bytes per range.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator
from typing import Final, Protocol

from .. import ranges
from .errors import PartitionKeyError, PartitionSetCorrupted

__all__ = ["Indexed", "PartitionSet"]

#: The version byte of the bytes form this module writes (:mod:`flowcore.ranges`').
FORMAT_VERSION: Final = ranges.FORMAT_VERSION
#: Indexes are below this (they are stored as msgpack integers).
MAX_INDEX: Final = ranges.MAX_INDEX


class Indexed(Protocol):
    """What a set needs of a partitions definition to take and give keys."""

    def index_of(self, key: str) -> int: ...

    def key_of(self, index: int) -> str: ...


_index = ranges.check_index


class PartitionSet:
    """A mutable set of partition indexes (and keys, with ``partitions=``), as ranges.

    >>> from flowcore.assets.partition_set import PartitionSet
    >>> done = PartitionSet()
    >>> done.add_range(0, 1_000_000)
    >>> done.discard_range(500, 510)
    >>> len(done), 505 in done, 510 in done
    (999990, False, True)
    >>> done.ranges()
    ((0, 500), (510, 1000000))
    >>> PartitionSet.from_bytes(done.to_bytes()) == done
    True
    """

    __slots__ = ("_bounds", "_count", "partitions")

    def __init__(self, indexes: Iterable[int] = (), *, partitions: Indexed | None = None) -> None:
        #: Starts at even positions, stops at odd ones.
        self._bounds: list[int] = []
        self._count = 0
        #: The definition keys are read with (``None``: indexes only).
        self.partitions = partitions
        for index in indexes:
            self.add(index)

    @classmethod
    def from_ranges(
        cls, ranges: Iterable[tuple[int, int]], *, partitions: Indexed | None = None
    ) -> PartitionSet:
        """A set of the half-open ranges ``[start, stop)`` given (in any order)."""
        out = cls(partitions=partitions)
        for start, stop in ranges:
            out.add_range(start, stop)
        return out

    # -- reading -------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return bool(self._bounds)

    def __contains__(self, item: object) -> bool:
        if isinstance(item, str):
            try:
                item = self._index_of(item)
            except PartitionKeyError:  # not a key of the definition: not in the set
                return False
        if not isinstance(item, int) or isinstance(item, bool):
            return False
        return bisect_right(self._bounds, item) & 1 == 1

    def __iter__(self) -> Iterator[int]:
        """The indexes, in increasing order, computed as they are read."""
        bounds = self._bounds
        for i in range(0, len(bounds), 2):
            yield from range(bounds[i], bounds[i + 1])

    def keys(self) -> Iterator[str]:
        """The keys, in index order, each made as it is read (needs ``partitions=``)."""
        key_of = self._definition().key_of
        for index in self:
            yield key_of(index)

    def ranges(self) -> tuple[tuple[int, int], ...]:
        """The half-open ranges ``(start, stop)``, in increasing order."""
        bounds = self._bounds
        return tuple((bounds[i], bounds[i + 1]) for i in range(0, len(bounds), 2))

    @property
    def range_count(self) -> int:
        """How many ranges the set holds: what its memory and bytes are proportional to."""
        return len(self._bounds) // 2

    def first(self) -> int | None:
        return self._bounds[0] if self._bounds else None

    def last(self) -> int | None:
        return self._bounds[-1] - 1 if self._bounds else None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PartitionSet):
            return NotImplemented
        return self._bounds == other._bounds

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        shown = ", ".join(f"[{a}, {b})" for a, b in self.ranges()[:8])
        more = f", ... {self.range_count - 8} more ranges" if self.range_count > 8 else ""
        return f"PartitionSet({len(self)} partitions: {shown}{more})"

    def copy(self) -> PartitionSet:
        out = PartitionSet(partitions=self.partitions)
        out._bounds = self._bounds.copy()
        out._count = self._count
        return out

    # -- changing ------------------------------------------------------------------------

    def add(self, item: int | str) -> None:
        """Add one partition, by index or (with ``partitions=``) by key."""
        index = self._index_of(item) if isinstance(item, str) else _index(item)
        self.add_range(index, index + 1)

    def discard(self, item: int | str) -> None:
        """Remove one partition if present, by index or (with ``partitions=``) by key."""
        index = self._index_of(item) if isinstance(item, str) else _index(item)
        self.discard_range(index, index + 1)

    def add_keys(self, first: str, last: str) -> None:
        """Add the partitions from key ``first`` to key ``last``, both included."""
        self.add_range(self._index_of(first), self._index_of(last) + 1)

    def discard_keys(self, first: str, last: str) -> None:
        """Remove the partitions from key ``first`` to key ``last``, both included."""
        self.discard_range(self._index_of(first), self._index_of(last) + 1)

    def add_range(self, start: int, stop: int) -> None:
        """Add the indexes ``start <= i < stop`` (nothing when ``stop <= start``)."""
        _index(start, "range start")
        _index(stop, "range stop")
        if stop <= start:
            return
        self._count += ranges.add_range(self._bounds, start, stop)

    def discard_range(self, start: int, stop: int) -> None:
        """Remove the indexes ``start <= i < stop`` (nothing when ``stop <= start``)."""
        _index(start, "range start")
        _index(stop, "range stop")
        if stop <= start:
            return
        self._count -= ranges.discard_range(self._bounds, start, stop)

    def clear(self) -> None:
        self._bounds.clear()
        self._count = 0

    # -- combining -----------------------------------------------------------------------

    def __or__(self, other: PartitionSet) -> PartitionSet:
        """The union (``partitions`` of the left one)."""
        small, big = sorted((self, other), key=lambda s: s.range_count)
        out = big.copy()
        out.partitions = self.partitions
        for start, stop in small.ranges():
            out.add_range(start, stop)
        return out

    def __sub__(self, other: PartitionSet) -> PartitionSet:
        """The difference: partitions of this set not in ``other``."""
        out = self.copy()
        for start, stop in other.ranges():
            out.discard_range(start, stop)
        return out

    def __and__(self, other: PartitionSet) -> PartitionSet:
        """The intersection, in one pass over both sets' ranges."""
        out = PartitionSet(partitions=self.partitions)
        out._bounds = ranges.intersect(self._bounds, other._bounds)
        out._count = ranges.count(out._bounds)
        return out

    def update(self, other: PartitionSet) -> None:
        """Add every partition of ``other``, in place."""
        for start, stop in other.ranges():
            self.add_range(start, stop)

    def difference_update(self, other: PartitionSet) -> None:
        """Remove every partition of ``other``, in place."""
        for start, stop in other.ranges():
            self.discard_range(start, stop)

    # -- bytes ---------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The versioned bytes form (module docstring); :meth:`from_bytes` reads it."""
        return ranges.encode(self._bounds)

    @classmethod
    def from_bytes(cls, data: bytes, *, partitions: Indexed | None = None) -> PartitionSet:
        """The set ``data`` encodes; :class:`PartitionSetCorrupted` for anything else."""
        try:
            bounds = ranges.decode(data)
        except ranges.RangeSetCorrupted as exc:
            raise PartitionSetCorrupted(str(exc)) from None
        out = cls(partitions=partitions)
        out._bounds = bounds
        out._count = ranges.count(bounds)
        return out

    # -- keys ----------------------------------------------------------------------------

    def _definition(self) -> Indexed:
        if self.partitions is None:
            raise TypeError(
                "this PartitionSet holds indexes only; make it with "
                "PartitionSet(partitions=DEFINITION) to use keys"
            )
        return self.partitions

    def _index_of(self, key: str) -> int:
        return self._definition().index_of(key)
