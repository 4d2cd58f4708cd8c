"""Sets of non-negative integers kept as sorted, disjoint half-open ranges.

Why here, at the bottom of the package: the store keeps the state of partitioned
assets (which partitions are materialised, stale, failing a check) as range sets,
and does the read-modify-write of a stored set inside its write transaction, so
that processes materialising at once never lose each other's updates. The store
sits below the assets, so the arithmetic lives below both;
:class:`flowcore.assets.PartitionSet` builds on it and adds partition keys.

A set is a flat list of bounds, starts at even positions and stops at odd ones,
``[start, stop)``, sorted, disjoint and never touching (adjacent ranges are
merged): memory, encoding and every operation are proportional to the number of
ranges, not of members. The functions work on such a list in place (they are
what :class:`RangeSet` and ``PartitionSet`` share); :class:`RangeSet` wraps one.

The bytes form (versioned, stored): a version byte (``1``), then a msgpack array
of the gaps and lengths in turn (``start0, stop0 - start0, start1 - stop0, ...``):
small numbers for dense sets, a few bytes per range.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from typing import Final, TypeVar

import msgspec

_L = TypeVar("_L")

__all__ = [
    "FORMAT_VERSION",
    "MAX_INDEX",
    "RangeSet",
    "RangeSetCorrupted",
    "add_range",
    "check_index",
    "decode",
    "discard_range",
    "encode",
    "intersect",
    "label_at",
    "label_range",
]

#: The version byte of the bytes form this module writes.
FORMAT_VERSION: Final = 1
#: Members are below this (they are stored as msgpack integers).
MAX_INDEX: Final = 2**62


_decoder = msgspec.msgpack.Decoder(list[int])
_encoder = msgspec.msgpack.Encoder()


class RangeSetCorrupted(ValueError):
    """Bytes that are not a range set this flowcore reads: corrupt, truncated, or
    written by a newer flowcore (a version byte it does not know)."""


def check_index(value: object, what: str = "index") -> int:
    """``value`` when it is an int in ``[0, 2**62]``; else ``TypeError`` naming it."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_INDEX:
        raise TypeError(f"a partition {what} must be an int in [0, 2**62], got {value!r}")
    return value


def add_range(bounds: list[int], start: int, stop: int) -> int:
    """Add ``[start, stop)`` to ``bounds`` in place; returns how many members it added."""
    if stop <= start:
        return 0
    lo = bisect_left(bounds, start)  # odd: start is inside (or at the end of) a range
    hi = bisect_right(bounds, stop)  # odd: stop is inside (or at the start of) a range
    first = lo - (lo & 1)
    last = hi + (hi & 1)
    new_start = bounds[first] if lo & 1 else start
    new_stop = bounds[last - 1] if hi & 1 else stop
    removed = sum(bounds[i + 1] - bounds[i] for i in range(first, last, 2))
    bounds[first:last] = (new_start, new_stop)
    return new_stop - new_start - removed


def discard_range(bounds: list[int], start: int, stop: int) -> int:
    """Remove ``[start, stop)`` from ``bounds`` in place; returns how many it removed."""
    if stop <= start:
        return 0
    lo = bisect_right(bounds, start)  # odd: a range starts at or before start, goes past
    hi = bisect_left(bounds, stop)  # odd: a range starts before stop, ends at or after
    first = lo - (lo & 1)
    last = hi + (hi & 1)
    if first >= last:
        return 0
    kept: list[int] = []
    if lo & 1 and bounds[first] < start:
        kept += (bounds[first], start)
    if hi & 1 and stop < bounds[last - 1]:
        kept += (stop, bounds[last - 1])
    removed = sum(bounds[i + 1] - bounds[i] for i in range(first, last, 2))
    bounds[first:last] = kept
    return removed - sum(kept[i + 1] - kept[i] for i in range(0, len(kept), 2))


def intersect(a: list[int], b: list[int]) -> list[int]:
    """The bounds of the intersection, in one pass over both."""
    out: list[int] = []
    i = j = 0
    while i < len(a) and j < len(b):
        start, stop = max(a[i], b[j]), min(a[i + 1], b[j + 1])
        if start < stop:
            out += (start, stop)
        if a[i + 1] < b[j + 1]:
            i += 2
        else:
            j += 2
    return out


def label_range(
    labels: list[tuple[int, int, _L]], start: int, stop: int, label: _L | None
) -> list[tuple[int, int, _L]]:
    """``labels`` (sorted, disjoint ``(start, stop, label)`` ranges) with ``[start,
    stop)`` labelled ``label`` (``None``: unlabelled), neighbours with an equal label
    merged. A new list: proportional to the ranges, not the members."""
    out: list[tuple[int, int, _L]] = []
    new = None if label is None else (start, stop, label)
    for entry in labels:
        a, b, value = entry
        if b <= start or a >= stop:  # apart from the range
            if a >= stop and new is not None:
                _append(out, new)
                new = None
            _append(out, entry)
            continue
        if a < start:  # the part before
            _append(out, (a, start, value))
        if new is not None:
            _append(out, new)
            new = None
        if b > stop:  # the part after
            _append(out, (stop, b, value))
    if new is not None:
        _append(out, new)
    return out


def _append(out: list[tuple[int, int, _L]], entry: tuple[int, int, _L]) -> None:
    if out and out[-1][1] == entry[0] and out[-1][2] == entry[2]:
        out[-1] = (out[-1][0], entry[1], entry[2])
    else:
        out.append(entry)


def label_at(labels: list[tuple[int, int, _L]], index: int) -> _L | None:
    """The label of ``index`` in ``labels`` (``None``: unlabelled)."""
    i = bisect_right(labels, index, key=_start) - 1
    if i >= 0 and labels[i][0] <= index < labels[i][1]:
        return labels[i][2]
    return None


def _start(entry: tuple[int, int, object]) -> int:
    return entry[0]


def count(bounds: list[int]) -> int:
    return sum(bounds[i + 1] - bounds[i] for i in range(0, len(bounds), 2))


def encode(bounds: list[int]) -> bytes:
    """The versioned bytes form (module docstring)."""
    deltas = [b - a for a, b in zip([0, *bounds], bounds, strict=False)]
    return bytes((FORMAT_VERSION,)) + _encoder.encode(deltas)


def decode(data: bytes) -> list[int]:
    """The bounds ``data`` encodes; :class:`RangeSetCorrupted` for anything else."""
    if not data:
        raise RangeSetCorrupted("no bytes: an empty partition set still has a version")
    if data[0] != FORMAT_VERSION:
        raise RangeSetCorrupted(
            f"partition set format version {data[0]}, this flowcore reads version "
            f"{FORMAT_VERSION}: it was written by a newer flowcore (upgrade) or is corrupt"
        )
    try:
        deltas = _decoder.decode(data[1:])
    except msgspec.DecodeError as exc:
        raise RangeSetCorrupted(f"corrupt partition set: {exc}") from None
    if len(deltas) % 2 or any(d <= 0 for d in deltas[1:]) or (deltas and deltas[0] < 0):
        raise RangeSetCorrupted(
            "corrupt partition set: its ranges are not sorted, disjoint and non-empty"
        )
    bounds: list[int] = []
    position = 0
    for delta in deltas:
        position += delta
        bounds.append(position)
    if bounds and bounds[-1] > MAX_INDEX:
        raise RangeSetCorrupted("corrupt partition set: an index past 2**62")
    return bounds


class RangeSet:
    """A mutable set of ints as ranges: what the store reads, changes and writes back.

    >>> from flowcore.ranges import RangeSet
    >>> s = RangeSet.from_ranges([(0, 10), (20, 30)])
    >>> s.discard_range(5, 25)
    >>> s.ranges(), len(s)
    (((0, 5), (25, 30)), 10)
    """

    __slots__ = ("bounds",)

    def __init__(self, bounds: list[int] | None = None) -> None:
        #: Starts at even positions, stops at odd ones (module docstring).
        self.bounds: list[int] = [] if bounds is None else bounds

    @classmethod
    def from_ranges(cls, ranges: Iterable[tuple[int, int]]) -> RangeSet:
        out = cls()
        for start, stop in ranges:
            out.add_range(start, stop)
        return out

    @classmethod
    def from_bytes(cls, data: bytes | None) -> RangeSet:
        """The set ``data`` encodes (``None`` or ``b""``: the empty set)."""
        return cls(decode(data) if data else [])

    def to_bytes(self) -> bytes:
        return encode(self.bounds)

    def __len__(self) -> int:
        return count(self.bounds)

    def __bool__(self) -> bool:
        return bool(self.bounds)

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, int) or isinstance(item, bool):
            return False
        return bisect_right(self.bounds, item) & 1 == 1

    def __iter__(self) -> Iterator[int]:
        bounds = self.bounds
        for i in range(0, len(bounds), 2):
            yield from range(bounds[i], bounds[i + 1])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RangeSet):
            return NotImplemented
        return self.bounds == other.bounds

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"RangeSet({list(self.ranges())!r})"

    def ranges(self) -> tuple[tuple[int, int], ...]:
        bounds = self.bounds
        return tuple((bounds[i], bounds[i + 1]) for i in range(0, len(bounds), 2))

    def add_range(self, start: int, stop: int) -> None:
        add_range(self.bounds, check_index(start, "range start"), check_index(stop, "range stop"))

    def discard_range(self, start: int, stop: int) -> None:
        discard_range(
            self.bounds, check_index(start, "range start"), check_index(stop, "range stop")
        )

    def update(self, other: RangeSet) -> None:
        for start, stop in other.ranges():
            add_range(self.bounds, start, stop)

    def difference_update(self, other: RangeSet) -> None:
        for start, stop in other.ranges():
            discard_range(self.bounds, start, stop)

    def __and__(self, other: RangeSet) -> RangeSet:
        return RangeSet(intersect(self.bounds, other.bounds))

    def __sub__(self, other: RangeSet) -> RangeSet:
        out = RangeSet(self.bounds.copy())
        out.difference_update(other)
        return out
