"""Cases on trace spans: round trips, one trace by start time, and pruning.

``flowcore trace`` draws a run from ``list_spans`` alone, and pruning must keep
exactly the spans of the runs it was asked to keep, subflows included.
"""

from __future__ import annotations

from ...records import WriteBatch
from ...store.base import Store
from .assertions import differs
from .cases import Cases
from .records import flow_run, full_span, span_record

__all__ = ["CASES"]

CASES = Cases()


_T1, _T2, _T3, _T9 = ("1" * 32, "2" * 32, "3" * 32, "9" * 32)
_S = 1_000_000_000  # one second in nanoseconds


@CASES.case("spans: a span keeps every field through a write and a read")
async def _span_round_trip(store: Store) -> None:
    minimal = span_record(full_span().trace_id, "2" * 16, 5)
    await store.write(WriteBatch(spans=[full_span(), minimal]))
    got = await store.list_spans(full_span().trace_id)
    want = [span_record(full_span().trace_id, "2" * 16, 5), full_span()]
    assert got == want, differs("list_spans of the trace", got, want)


@CASES.case("spans: list_spans lists the spans of one trace, by start time")
async def _list_spans(store: Store) -> None:
    spans = [
        span_record(_T1, "a" * 16, 30 * _S),
        span_record(_T2, "b" * 16, 5 * _S),
        span_record(_T1, "c" * 16, 10 * _S),
        span_record(_T1, "d" * 16, 20 * _S, parent_id="c" * 16),
        span_record(_T2, "e" * 16, 1 * _S),
    ]
    await store.write(WriteBatch(spans=spans[:3]))
    await store.write(WriteBatch(spans=spans[3:]))
    got = [(s.span_id[0], s.start // _S) for s in await store.list_spans(_T1)]
    assert got == [("c", 10), ("d", 20), ("a", 30)], differs(
        "list_spans(T1) as (span, start s)", got, [("c", 10), ("d", 20), ("a", 30)]
    )
    got = [(s.span_id[0], s.start // _S) for s in await store.list_spans(_T2)]
    assert got == [("e", 1), ("b", 5)], differs("list_spans(T2)", got, [("e", 1), ("b", 5)])
    unknown = await store.list_spans(_T9)
    assert unknown == [], differs("list_spans of an unknown trace", unknown, [])


async def _span_ids(store: Store, *traces: str) -> list[str]:
    ids = []
    for trace in traces:
        ids += [s.span_id for s in await store.list_spans(trace)]
    return sorted(ids)


@CASES.case("spans: prune_spans(before=) deletes spans started earlier and says how many")
async def _prune_spans_before(store: Store) -> None:
    await store.write(
        WriteBatch(
            spans=[
                span_record(_T1, "a" * 16, 1_000 * _S),
                span_record(_T1, "b" * 16, 2_000 * _S),  # starts exactly at `before`: kept
                span_record(_T1, "c" * 16, 3_000 * _S),
                span_record(_T2, "d" * 16, 500 * _S),
                span_record(_T2, "e" * 16, 2_500 * _S),
            ]
        )
    )
    deleted = await store.prune_spans()
    assert deleted == 0, differs("prune_spans() with no criterion", deleted, 0)
    deleted = await store.prune_spans(before=2_000.0)
    assert deleted == 2, differs(
        "prune_spans(before=2000.0) count (spans at 1000 and 500 s)", deleted, 2
    )
    left = await _span_ids(store, _T1, _T2)
    want = ["b" * 16, "c" * 16, "e" * 16]
    assert left == want, differs("spans left (a span starting at `before` stays)", left, want)
    deleted = await store.prune_spans(before=2_000.0)
    assert deleted == 0, differs("prune_spans(before=2000.0) again", deleted, 0)


async def _write_traced_runs(store: Store) -> None:
    await store.write(
        WriteBatch(
            [
                flow_run("r1", created=1.0, trace_id=_T1),
                flow_run("r3", created=3.0, trace_id=_T3),
                flow_run("r2", created=2.0, trace_id=_T2),
                flow_run("child", created=4.0, trace_id=_T3, parent_run_id="r3"),
            ],
            spans=[
                span_record(_T1, "1a" * 8, 10 * _S),
                span_record(_T1, "1b" * 8, 40 * _S),
                span_record(_T2, "2a" * 8, 20 * _S),
                span_record(_T3, "3a" * 8, 30 * _S),
                span_record(_T3, "3b" * 8, 5 * _S, run_id="child"),
                span_record(_T9, "9a" * 8, 50 * _S),  # of no run
            ],
        )
    )


@CASES.case("spans: prune_spans(keep_runs=) keeps the spans of the newest top-level runs")
async def _prune_spans_keep_runs(store: Store) -> None:
    await _write_traced_runs(store)
    deleted = await store.prune_spans(keep_runs=2)
    assert deleted == 3, differs(
        "prune_spans(keep_runs=2) count (runs r3 and r2 kept: T1's 2 spans and T9's go)",
        deleted,
        3,
    )
    left = await _span_ids(store, _T1, _T2, _T3, _T9)
    want = sorted(["2a" * 8, "3a" * 8, "3b" * 8])
    assert left == want, differs(
        "spans left (a subflow's span is of its top-level run)", left, want
    )


@CASES.case("spans: prune_spans with before= and keep_runs= deletes spans matching both")
async def _prune_spans_both(store: Store) -> None:
    await _write_traced_runs(store)
    deleted = await store.prune_spans(before=25.0, keep_runs=1)
    # Not of run r3 (the newest), and started before 25 s: T1's at 10 s, T2's at 20 s.
    assert deleted == 2, differs("prune_spans(before=25.0, keep_runs=1) count", deleted, 2)
    left = await _span_ids(store, _T1, _T2, _T3, _T9)
    want = sorted(["1b" * 8, "3a" * 8, "3b" * 8, "9a" * 8])
    assert left == want, differs("spans left", left, want)
