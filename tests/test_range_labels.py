"""Labelled ranges (flowcore.ranges.label_range, label_at): why each stale partition of
an asset is stale, kept as ranges, against a model keeping a label per index."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from flowcore import ranges

_OPS = st.lists(
    st.tuples(st.integers(0, 40), st.integers(1, 12), st.sampled_from([None, "a", "b", "c"])),
    max_size=30,
)


@given(_OPS)
def test_labelled_ranges_say_what_a_label_per_index_says(
    ops: list[tuple[int, int, str | None]],
) -> None:
    labels: list[tuple[int, int, str]] = []
    model: dict[int, str] = {}
    for start, length, label in ops:
        labels = ranges.label_range(labels, start, start + length, label)
        for i in range(start, start + length):
            if label is None:
                model.pop(i, None)
            else:
                model[i] = label
    assert [ranges.label_at(labels, i) for i in range(60)] == [model.get(i) for i in range(60)]
    for (a, b, x), (c, d, y) in pairwise(labels):
        assert a < b <= c < d, labels  # sorted, disjoint, none empty
        assert not (b == c and x == y), labels  # touching neighbours with one label merge


def test_a_label_over_the_middle_of_another_splits_it() -> None:
    labels = ranges.label_range([], 0, 10, "a")
    labels = ranges.label_range(labels, 3, 5, "b")
    assert labels == [(0, 3, "a"), (3, 5, "b"), (5, 10, "a")]
    assert ranges.label_range(labels, 3, 5, "a") == [(0, 10, "a")]
    assert ranges.label_range(labels, 0, 10, None) == []
