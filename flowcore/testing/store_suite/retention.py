"""Cases on retention (the optional role ``RunRetention``): what a prune deletes, what it
keeps, and that it counts both the same way in every store.

A team bounds its store with ``flowcore runs prune`` (or ``flowcore serve`` with
``FLOWCORE_RUN_RETENTION_DAYS``), so a prune must delete a run whole (its subflows,
task runs, logs, spans), never a run still going, never what staleness and
exactly-once firing rely on (asset history and state, schedule slots), never a blob
something still refers to; and it must be as right across its chunk boundaries as
within one. Each case runs only on a store that plays the role; the cases are named
after the area they keep (``runs:``, ``logs:``, ``triggers:``).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

from ...errors import ConfigurationError, RunNotFound
from ...records import (
    CacheEntry,
    FlowRunRecord,
    LogRecord,
    MaterializationRecord,
    SlotClaim,
    SpanRecord,
    TaskRunRecord,
    Trigger,
    WriteBatch,
)
from ...states import State
from ...store.base import PruneCount, RunRetention, Store
from .assertions import differs, raises
from .cases import Cases, OpenStore
from .records import flow_run, log_line, span_record, task_run

__all__ = ["CASES"]

CASES = Cases()

#: The cutoff of most cases: runs that ended before it go.
_CUTOFF = 500.0
_S = 1_000_000_000  # one second in nanoseconds


def _retention(store: Store) -> RunRetention | None:
    """The store's optional role :class:`RunRetention`, checked when it has it."""
    return store if isinstance(store, RunRetention) else None


def _old(run_id: str, created: float = 100.0, **fields: object) -> FlowRunRecord:
    """A run that ended before the cutoff (Completed unless told)."""
    fields.setdefault("ended", created + 50.0)
    return flow_run(run_id, created=created, **fields)


def _whole(
    run_id: str, trace: str | None = None, created: float = 100.0
) -> tuple[FlowRunRecord, list[TaskRunRecord], list[LogRecord], list[SpanRecord]]:
    """A run that ended 50 s after ``created``, with two task runs, two log lines and
    (with a trace) its flow span."""
    run = _old(run_id, created=created, trace_id=trace)
    task_runs = [task_run(run_id, seq) for seq in range(2)]
    lines = [log_line(run_id, f"{run_id} line {i}", time=created + i) for i in range(2)]
    spans = []
    if trace is not None:
        spans.append(span_record(trace, "f" * 16, int(created) * _S, run_id=run_id))
    return run, task_runs, lines, spans


async def _write_whole(store: Store, *runs: tuple[str, str | None, float]) -> None:
    """Write :func:`_whole` runs, given as ``(id, trace, created)``, in one batch."""
    flows, tasks, logs, spans = [], [], [], []
    for run_id, trace, created in runs:
        run, task_runs, lines, run_spans = _whole(run_id, trace, created)
        flows.append(run)
        tasks += task_runs
        logs += lines
        spans += run_spans
    await store.write(WriteBatch(flows, tasks, spans=spans, logs=logs))


async def _exists(store: Store, run_id: str) -> bool:
    try:
        await store.get_run(run_id)
    except RunNotFound:
        return False
    return True


async def _kept(store: Store, *run_ids: str) -> list[str]:
    return [run_id for run_id in run_ids if await _exists(store, run_id)]


@CASES.case("runs: prune_runs deletes an ended run with its task runs, logs and spans")
async def _prune_whole_run(store: Store) -> None:
    retention = _retention(store)
    if retention is None:
        return  # an optional role
    await _write_whole(store, ("old", "1" * 32, 100.0), ("new", "2" * 32, 900.0))
    got = await retention.prune_runs(_CUTOFF)
    want = PruneCount(runs=1, task_runs=2, logs=2, spans=1)
    assert got == want, differs(
        "prune_runs(500) of one old run (2 tasks, 2 lines, 1 span)", got, want
    )
    kept = await _kept(store, "old", "new")
    assert kept == ["new"], differs("runs left", kept, ["new"])
    for what, left in (
        ("task runs of the pruned run", await store.list_task_runs("old")),
        ("log lines of the pruned run", await store.list_logs("old")),
        ("spans of the pruned run's trace", await store.list_spans("1" * 32)),
    ):
        assert left == [], differs(what, left, [])
    assert len(await store.list_task_runs("new")) == 2, "the kept run's task runs"
    assert len(await store.list_logs("new")) == 2, "the kept run's log lines"
    assert len(await store.list_spans("2" * 32)) == 1, "the kept run's span"
    again = await retention.prune_runs(_CUTOFF)
    assert again == PruneCount(), differs("prune_runs(500) again", again, PruneCount())


@CASES.case("runs: prune_runs keeps runs not ended or ended after the cutoff, takes the rest")
async def _prune_only_ended(store: Store) -> None:
    retention = _retention(store)
    if retention is None:
        return
    staying = [
        flow_run("running", created=100.0, state=State.RUNNING, started=100.0, heartbeat=450.0),
        flow_run("pending", created=100.0, state=State.PENDING),
        flow_run("retrying", created=100.0, state=State.RETRYING, started=100.0),
        _old("ended-late", created=100.0, ended=_CUTOFF + 1.0),  # created before, ended after
        _old("young", created=_CUTOFF + 10.0),
    ]
    going = [
        _old(f"gone-{state.value}", created=100.0 + i, state=state)
        for i, state in enumerate(
            [
                State.COMPLETED,
                State.FAILED,
                State.CANCELLED,
                State.TIMED_OUT,
                State.CRASHED,
                State.CACHED,
                State.UPSTREAM_FAILED,
            ]
        )
    ]
    await store.write(WriteBatch([*staying, *going]))
    got = await retention.prune_runs(_CUTOFF)
    assert got.runs == len(going), differs("runs pruned (one of each terminal state)", got.runs, 7)
    kept = await _kept(store, *(r.id for r in staying + going))
    want = [r.id for r in staying]
    assert kept == want, differs("runs left", kept, want)


@CASES.case("runs: prune_runs takes subflows with their top-level run, never on their own")
async def _prune_subflows(store: Store) -> None:
    retention = _retention(store)
    if retention is None:
        return
    runs = [
        _old("top"),
        _old("child", created=110.0, parent_run_id="top", parent_task_seq=0),
        _old("grandchild", created=120.0, parent_run_id="child", parent_task_seq=0),
        flow_run("alive", created=100.0, state=State.RUNNING, started=100.0, heartbeat=450.0),
        _old("alive-child", created=110.0, parent_run_id="alive", parent_task_seq=0),
    ]
    tasks = [task_run(r.id, 0) for r in runs]
    logs = [log_line(r.id, "line", time=r.created) for r in runs]
    await store.write(WriteBatch(runs, tasks, logs=logs))
    got = await retention.prune_runs(_CUTOFF)
    want = PruneCount(runs=3, task_runs=3, logs=3)
    assert got == want, differs("prune_runs of a run with a subflow and its subflow", got, want)
    kept = await _kept(store, *(r.id for r in runs))
    assert kept == ["alive", "alive-child"], differs(
        "runs left (an old subflow of a running run stays)", kept, ["alive", "alive-child"]
    )
    children = [r.id for r in await store.child_runs("top")]
    assert children == [], differs("child_runs of the pruned run", children, [])
    assert await store.list_task_runs("grandchild") == [], "the grandchild's task runs"


@CASES.case("runs: prune_runs keeps a kept run's logs and spans, and its own in a trace it shares")
async def _prune_shared_trace(store: Store) -> None:
    retention = _retention(store)
    if retention is None:
        return
    shared, alone = "a" * 32, "b" * 32  # two flows started in one app trace; one trace alone
    runs = [
        _old("old", trace_id=shared),
        _old("kept", created=900.0, trace_id=shared),
        _old("alone", created=150.0, trace_id=alone),
    ]
    spans = [
        span_record(shared, "1" * 16, 100 * _S, run_id="old"),
        span_record(shared, "2" * 16, 900 * _S, run_id="kept"),
        span_record(shared, "3" * 16, 50 * _S),  # the app's own span: names no run
        span_record(alone, "4" * 16, 150 * _S, run_id="alone"),
        span_record(alone, "5" * 16, 151 * _S),  # a span of that trace naming no run
    ]
    logs = [log_line("kept", "old line of a kept run", time=10.0)]
    await store.write(WriteBatch(runs, spans=spans, logs=logs))
    got = await retention.prune_runs(_CUTOFF)
    want = PruneCount(runs=2, spans=3)
    assert got == want, differs("prune_runs with a shared trace", got, want)
    left = sorted(s.span_id[0] for s in await store.list_spans(shared))
    assert left == ["2", "3"], differs("spans left in the shared trace", left, ["2", "3"])
    assert await store.list_spans(alone) == [], "a trace only pruned runs had goes whole"
    lines = [line.message for line in await store.list_logs("kept")]
    want_lines = ["old line of a kept run"]
    assert lines == want_lines, differs("a kept run's old log line", lines, want_lines)


@CASES.case("runs: prune_runs keeps the other spans of a trace its run joined, not made")
async def _prune_joined_trace(store: Store) -> None:
    retention = _retention(store)
    if retention is None:
        return
    app, own = "c" * 32, "d" * 32
    # A flow called inside an application's span (its record is its span: no row), and
    # one that started its own trace, each with a span of user code in a task.
    runs = [
        _old("joined", trace_id=app, span_id="6" * 16, parent_span_id="7" * 16),
        _old("alone", created=150.0, trace_id=own, span_id="8" * 16),
    ]
    spans = [
        span_record(app, "7" * 16, 99 * _S),  # the application's span: names no run
        span_record(app, "9" * 16, 100 * _S, run_id="joined"),
        span_record(own, "a" * 16, 150 * _S, run_id="alone"),
        span_record(own, "b" * 16, 151 * _S),
    ]
    await store.write(WriteBatch(runs, spans=spans))
    got = await retention.prune_runs(_CUTOFF)
    want = PruneCount(runs=2, spans=3)
    assert got == want, differs("prune_runs of a joined trace and an own one", got, want)
    left = [s.span_id for s in await store.list_spans(app)]
    assert left == ["7" * 16], differs("spans left in the application's trace", left, ["7"])
    assert await store.list_spans(own) == [], "a trace the pruned run started goes whole"


@CASES.case("runs: prune_runs(keep_runs=) keeps the newest top-level runs, however old")
async def _prune_keep_runs(store: Store) -> None:
    retention = _retention(store)
    if retention is None:
        return
    runs = [_old(f"r{i}", created=float(i)) for i in range(1, 6)]
    runs.append(_old("sub", created=10.0, parent_run_id="r1", parent_task_seq=0))  # not counted
    await store.write(WriteBatch(runs))
    got = await retention.prune_runs(_CUTOFF, keep_runs=10)
    assert got == PruneCount(), differs("keep_runs=10 of 5 runs", got, PruneCount())
    got = await retention.prune_runs(_CUTOFF, keep_runs=2)
    assert got.runs == 4, differs(
        "runs pruned keeping 2 (r1 with its subflow, r2, r3)", got.runs, 4
    )
    kept = await _kept(store, *(r.id for r in runs))
    assert kept == ["r4", "r5"], differs("runs left keeping the newest 2", kept, ["r4", "r5"])
    got = await retention.prune_runs(_CUTOFF, keep_runs=0)
    assert got.runs == 2, differs("keep_runs=0 keeps none", got.runs, 2)


@CASES.case("runs: prune_runs in chunks: 1,234 runs 500 at a time, the living ones among them kept")
async def _prune_chunks(store: Store) -> None:
    retention = _retention(store)
    if retention is None:
        return
    runs, tasks, logs = [], [], []
    for i in range(1234 + 13):
        created = i * 0.3
        if i % 96 == 0:  # 13 runs still going, among the others and across chunk boundaries
            run = flow_run(f"run{i:05d}", created=created, state=State.RUNNING, heartbeat=450.0)
        else:
            run = _old(f"run{i:05d}", created=created, ended=created + 1.0)
        runs.append(run)
        tasks.append(task_run(run.id, 0))
        logs.append(log_line(run.id, "line", time=created))
    # Five runs created at one time, across the first chunk's end (it holds one of them):
    # a page goes on from where the last stopped by (created, id), not by created alone.
    runs += [_old(f"tie{i}", created=149.55) for i in range(5)]
    await store.write(WriteBatch(runs, tasks, logs=logs))
    going = 1234 + 5
    dry = await retention.prune_runs(_CUTOFF, chunk=500, dry_run=True)
    want = PruneCount(runs=going, task_runs=1234, logs=1234)
    assert dry == want, differs("prune_runs(dry_run=True, chunk=500)", dry, want)
    assert len(await store.list_runs(limit=10_000)) == len(runs), "a dry run deletes nothing"
    got = await retention.prune_runs(_CUTOFF, chunk=500)
    assert got == want, differs("prune_runs(chunk=500)", got, want)
    left = sorted(r.id for r in await store.list_runs(limit=10_000))
    want_left = [f"run{i:05d}" for i in range(0, 1234 + 13, 96)]
    assert left == want_left, differs("runs left (the 13 running)", left, want_left)
    got = await retention.prune_runs(_CUTOFF, chunk=7)
    assert got == PruneCount(), differs("prune_runs again, chunk=7", got, PruneCount())


@CASES.case("runs: prune_runs keeps a run an unfinished run resumes, until that run ends")
async def _prune_resumed(store: Store) -> None:
    retention = _retention(store)
    if retention is None:
        return
    source = _old("source", state=State.FAILED)
    resumption = flow_run(
        "resumption", created=900.0, state=State.RUNNING, resumed_from="source", heartbeat=950.0
    )
    await store.write(WriteBatch([source, resumption], [task_run("source", 0)]))
    got = await retention.prune_runs(_CUTOFF)
    assert got == PruneCount(), differs(
        "prune_runs while source is being resumed", got, PruneCount()
    )
    resumption.state, resumption.ended = State.COMPLETED, 960.0
    await store.write(WriteBatch([resumption]))
    got = await retention.prune_runs(_CUTOFF)
    want = PruneCount(runs=1, task_runs=1)
    assert got == want, differs("prune_runs once the resumption ended", got, want)
    assert await _kept(store, "source", "resumption") == ["resumption"], "runs left"


@CASES.case("runs: prune_runs keeps asset history and state, cache entries, slots and their blobs")
async def _prune_keeps_what_others_need(store: Store) -> None:
    retention = _retention(store)
    if retention is None:
        return
    only, shared, cached, asset = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)
    run = _old("old")
    tasks = [
        task_run("old", 0, result_ref=only),
        task_run("old", 1, result_ref=shared),
        task_run("old", 2, result_ref=cached),
        task_run("old", 3, result_ref=asset),
        task_run("old", 4, result_ref=only),
    ]
    kept = flow_run("kept", created=900.0, ended=950.0)
    entry = CacheEntry("key", "step", 120.0, result_ref=cached, run_id="old", seq=2)
    mat = MaterializationRecord(
        key="orders", at=140.0, run_id="old", seq=3, code_version="1", data_version="v1",
        value_ref=asset,
    )  # fmt: skip
    await store.write(
        WriteBatch(
            [run, kept],
            [*tasks, task_run("kept", 0, result_ref=shared)],
            cache_entries=[entry],
            assets=[mat],
        )
    )
    slot = SlotClaim("etl", "hourly", 100.0, run=flow_run("slot-run", created=100.0, ended=101.0))
    assert await store.claim_slots([slot], 100.0) == [True], "the slot claimed"
    dry = await retention.prune_runs(_CUTOFF, dry_run=True)
    want = PruneCount(runs=2, task_runs=5, blobs=1)  # blob `only`: the others are held
    assert dry == want, differs("dry run: blobs only the pruned runs hold", dry, want)
    got = await retention.prune_runs(_CUTOFF)
    want = PruneCount(runs=2, task_runs=5)  # a real prune leaves `blobs` to blob pruning
    assert got == want, differs("prune_runs", got, want)
    history = await store.asset_history("orders")
    assert history == [mat], differs(
        "asset history after the run that made it went", history, [mat]
    )
    [state] = await store.asset_states(["orders"])
    assert state.last_run_id == "old" and state.data_version == "v1", f"asset state: {state!r}"
    cache = await store.get_cache("key")
    assert cache == entry, differs("the cache entry the pruned run computed", cache, entry)
    slots = [s.slot for s in await store.list_slots("etl")]
    assert slots == [100.0], differs("the claimed slot of a pruned run", slots, [100.0])
    again = SlotClaim("etl", "hourly", 100.0, run=flow_run("again", created=1000.0))
    claimed = await store.claim_slots([again], 1000.0)
    assert claimed == [False], differs("claiming the slot of a pruned run again", claimed, [False])
    refs = await store.result_refs()
    for ref in (shared, cached, asset):
        assert ref in refs, f"result_refs lost {ref[:8]}..., still held after the prune: {refs}"
    assert only not in refs, f"result_refs still names {only[:8]}..., held by pruned runs only"


@CASES.case("triggers: a pruned run's claimed trigger goes with it, queued ones stay")
async def _prune_triggers(store: Store) -> None:
    retention = _retention(store)
    if retention is None:
        return
    await store.enqueue_trigger(Trigger("t-old", "etl", "{}", 90.0))
    [claimed] = await store.claim_triggers(
        ["etl"], "srv", 100.0, lambda t: flow_run("trig-run", created=100.0, state=State.RUNNING)
    )
    await store.enqueue_trigger(Trigger("t-queued", "etl", "{}", 95.0))
    await store.write(WriteBatch([_old("trig-run", created=100.0)]))
    got = await retention.prune_runs(_CUTOFF)
    assert got.runs == 1, differs("runs pruned", got.runs, 1)
    gone = await store.get_trigger(claimed.id)
    assert gone is None, differs("the trigger of the pruned run", gone, None)
    queued = await store.get_trigger("t-queued")
    assert queued is not None and queued.claimed_by is None, f"a queued trigger stays: {queued!r}"


@CASES.handles_case("runs: prune_runs through one handle is seen through another")
async def _prune_two_handles(store: Store, open_store: OpenStore) -> None:
    retention = _retention(store)
    if retention is None:
        return
    other = await open_store()
    await _write_whole(other, ("old", None, 100.0), ("older", None, 50.0))
    got = await retention.prune_runs(_CUTOFF)
    assert got.runs == 2, differs("runs pruned through the first handle", got.runs, 2)
    left = [r.id for r in await other.list_runs()]
    assert left == [], differs("runs the second handle lists", left, [])


@CASES.case("logs: prune_logs deletes lines older than the cutoff, of kept runs too")
async def _prune_logs(store: Store) -> None:
    retention = _retention(store)
    if retention is None:
        return
    run = flow_run("kept", created=1.0, state=State.RUNNING, heartbeat=5000.0)
    lines = [log_line("kept", f"line {i}", time=float(i)) for i in range(1234)]
    await store.write(WriteBatch([run], logs=lines[:600]))
    await store.write(WriteBatch(logs=lines[600:]))
    dry = await retention.prune_logs(1000.0, chunk=500, dry_run=True)
    assert dry == 1000, differs("prune_logs(1000, dry_run=True)", dry, 1000)
    assert len(await store.list_logs("kept")) == 1234, "a dry run deletes no line"
    got = await retention.prune_logs(1000.0, chunk=500)
    assert got == 1000, differs("prune_logs(1000, chunk=500)", got, 1000)
    left = [line.message for line in await store.list_logs("kept")]
    want = [f"line {i}" for i in range(1000, 1234)]
    assert left == want, differs("lines left", left[:3], want[:3])
    assert await retention.prune_logs(1000.0) == 0, "prune_logs again deletes nothing"
    assert await _exists(store, "kept"), "pruning log lines keeps their run"


@CASES.case("runs: bad options of prune_runs and prune_logs are a ConfigurationError naming them")
async def _prune_bad_options(store: Store) -> None:
    retention = _retention(store)
    if retention is None:
        return
    await store.write(WriteBatch([_old("old")]))
    calls: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("before", lambda: retention.prune_runs(math.nan)),
        ("before", lambda: retention.prune_runs(math.inf)),
        ("keep_runs", lambda: retention.prune_runs(_CUTOFF, keep_runs=-1)),
        ("chunk", lambda: retention.prune_runs(_CUTOFF, chunk=0)),
        ("before", lambda: retention.prune_logs(math.nan)),
        ("chunk", lambda: retention.prune_logs(_CUTOFF, chunk=0)),
    ]
    for option, call in calls:
        error = await raises(ConfigurationError, call(), f"a prune with a bad `{option}`")
        assert f"`{option}`" in str(error), f"the error should name `{option}`: {error}"
    assert await _exists(store, "old"), "a refused prune deletes nothing"
