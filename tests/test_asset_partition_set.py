"""PartitionSet: sorted disjoint ranges, checked against a plain set."""

from __future__ import annotations

import itertools
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowcore.assets import DailyPartitions, PartitionSet, PartitionSetCorrupted

_range = st.tuples(st.integers(0, 200), st.integers(0, 40)).map(lambda t: (t[0], t[0] + t[1]))
_op = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 240)),
    st.tuples(st.just("discard"), st.integers(0, 240)),
    st.tuples(st.just("add_range"), _range),
    st.tuples(st.just("discard_range"), _range),
)


def _apply(ops: list[tuple[str, Any]]) -> tuple[PartitionSet, set[int]]:
    compact, plain = PartitionSet(), set()
    for name, arg in ops:
        if name == "add":
            compact.add(arg)
            plain.add(arg)
        elif name == "discard":
            compact.discard(arg)
            plain.discard(arg)
        elif name == "add_range":
            compact.add_range(*arg)
            plain.update(range(*arg))
        else:
            compact.discard_range(*arg)
            plain.difference_update(range(*arg))
    return compact, plain


def _check_shape(compact: PartitionSet) -> None:
    ranges = compact.ranges()
    for start, stop in ranges:
        assert start < stop
    for (_, stop), (start, _) in itertools.pairwise(ranges):
        assert stop < start  # disjoint and never touching: adjacent ranges are merged


@settings(max_examples=400, deadline=None)
@given(st.lists(_op, max_size=40))
def test_it_behaves_as_a_set(ops: list[tuple[str, Any]]) -> None:
    compact, plain = _apply(ops)
    _check_shape(compact)
    assert list(compact) == sorted(plain)
    assert len(compact) == len(plain)
    assert bool(compact) == bool(plain)
    for i in range(0, 250):
        assert (i in compact) == (i in plain)
    assert PartitionSet.from_bytes(compact.to_bytes()) == compact
    assert compact.first() == (min(plain) if plain else None)
    assert compact.last() == (max(plain) if plain else None)


@settings(max_examples=300, deadline=None)
@given(st.lists(_op, max_size=25), st.lists(_op, max_size=25))
def test_union_difference_and_intersection_are_the_set_operations(
    left_ops: list[tuple[str, Any]], right_ops: list[tuple[str, Any]]
) -> None:
    left, left_plain = _apply(left_ops)
    right, right_plain = _apply(right_ops)
    for compact, plain in (
        (left | right, left_plain | right_plain),
        (left - right, left_plain - right_plain),
        (left & right, left_plain & right_plain),
    ):
        _check_shape(compact)
        assert list(compact) == sorted(plain) and len(compact) == len(plain)
    merged = left.copy()
    merged.update(right)
    assert merged == left | right
    merged.difference_update(right)
    assert merged == left - right


def test_a_million_partitions_with_a_few_gaps_take_a_few_ranges() -> None:
    tracemalloc.start()
    try:
        done = PartitionSet()
        done.add_range(0, 1_000_000)
        for gap in (10, 500_000, 999_990):
            done.discard_range(gap, gap + 3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(done) == 1_000_000 - 9 and done.range_count == 4
    assert peak < 10_000
    assert len(done.to_bytes()) < 32


def test_keys_with_a_definition() -> None:
    days = DailyPartitions("2026-01-01", tz="Europe/Paris")
    done = PartitionSet(partitions=days)
    done.add_keys("2026-03-01", "2026-03-31")
    done.discard("2026-03-29")
    assert "2026-03-28" in done and "2026-03-29" not in done and len(done) == 30
    assert "not a date" not in done and "2025-12-31" not in done  # not keys: not members
    keys = done.keys()
    assert next(keys) == "2026-03-01"  # made as read
    assert list(done.keys())[-2:] == ["2026-03-30", "2026-03-31"]
    with pytest.raises(TypeError, match="partitions=DEFINITION"):
        PartitionSet().add("2026-03-01")


def test_corrupt_or_newer_bytes_are_refused() -> None:
    good = PartitionSet([1, 2, 3, 7]).to_bytes()
    assert good[0] == 1
    with pytest.raises(PartitionSetCorrupted, match="newer flowcore"):
        PartitionSet.from_bytes(b"\x02" + good[1:])
    with pytest.raises(PartitionSetCorrupted, match="corrupt"):
        PartitionSet.from_bytes(good[:-1])
    with pytest.raises(PartitionSetCorrupted, match="not sorted"):
        PartitionSet.from_bytes(b"\x01\x94\x00\x03\x00\x01")  # a zero gap: touching ranges
    with pytest.raises(PartitionSetCorrupted):
        PartitionSet.from_bytes(b"")
    with pytest.raises(TypeError, match="int in"):
        PartitionSet().add(-1)
