"""Cases on what a write stores: every field, upserts, terminal states and snapshots.

These are the guarantees the engine's recorder leans on: it writes the same live
records again and again while a run goes on, so a store must keep every field,
update a record until it is terminal and never after, and copy what it is given
before the engine changes it again (and hand readers copies of their own).
"""

from __future__ import annotations

import anyio
import anyio.lowlevel

from ...records import FlowRunRecord, TaskRunRecord, WriteBatch
from ...states import TERMINAL, State
from ...store.base import FINISHED, Store, late_completion
from .assertions import differs
from .cases import Cases, OpenStore
from .records import (
    cache_entry,
    flow_run,
    full_flow_run,
    full_task_run,
    span_record,
    task_run,
)

__all__ = ["CASES"]

CASES = Cases()


# -- round trips ------------------------------------------------------------------------


@CASES.case("runs: a flow run keeps every field through a write and a read")
async def _flow_run_round_trip(store: Store) -> None:
    record = full_flow_run()
    await store.write(WriteBatch([record], []))
    got = await store.get_run(record.id)
    assert got == full_flow_run(), differs("get_run after writing every field", got, record)
    listed = await store.list_runs()
    assert listed == [full_flow_run()], differs("list_runs", listed, [record])


@CASES.case("runs: a flow run keeps defaults and None values")
async def _flow_run_round_trip_defaults(store: Store) -> None:
    record = FlowRunRecord(id="minimal", name="f", state=State.RUNNING, created=5.0)
    await store.write(WriteBatch([record], []))
    got = await store.get_run("minimal")
    want = FlowRunRecord(id="minimal", name="f", state=State.RUNNING, created=5.0)
    assert got == want, differs("get_run of a run with only required fields", got, want)
    for field in (
        "parent_run_id",
        "parent_task_seq",
        "started",
        "ended",
        "heartbeat",
        "error_type",
        "error_message",
        "traceback",
        "entrypoint",
        "resumed_from",
        "trace_id",
        "span_id",
    ):
        value = getattr(got, field)
        assert value is None, f"{field} should read back as None, got {value!r}"
    assert got.history == [], differs("history", got.history, [])
    assert got.parameters == b"", differs("parameters", got.parameters, b"")
    assert got.kind == "flow", differs("kind", got.kind, "flow")
    assert got.machine == "", differs("machine", got.machine, "")
    assert got.state is State.RUNNING, f"state should read back as a State, got {got.state!r}"


@CASES.case("task runs: a task run keeps every field through a write and a read")
async def _task_run_round_trip(store: Store) -> None:
    await store.write(WriteBatch([full_flow_run()], [full_task_run()]))
    got = await store.list_task_runs(full_task_run().run_id)
    assert got == [full_task_run()], differs("list_task_runs", got, [full_task_run()])
    want_retry = ("Retrying", 1_700_000_001.0, "TimeoutError: took too long (retry in 0.1 s)")
    assert got[0].history[1] == want_retry, differs(
        "a history entry with a note", got[0].history[1], want_retry
    )
    assert len(got[0].history[0]) == 2, f"a history entry without a note: {got[0].history[0]!r}"
    assert got[0].upstream == [1, 2, 40], differs("upstream", got[0].upstream, [1, 2, 40])
    inputs = b"\x81\xa4page\x2a\x00\xff\xfe"
    assert got[0].inputs == inputs, differs("inputs (bytes)", got[0].inputs, inputs)
    assert got[0].state is State.COMPLETED, f"state should be a State, got {got[0].state!r}"


@CASES.case("task runs: a task run keeps None and empty values")
async def _task_run_round_trip_empty(store: Store) -> None:
    records = [
        TaskRunRecord(run_id="r", seq=0, name="a", state=State.PENDING, created=1.0),
        TaskRunRecord(
            run_id="r", seq=1, name="b", state=State.RUNNING, created=2.0, upstream=[], inputs=b""
        ),
    ]
    await store.write(WriteBatch([flow_run("r", state=State.RUNNING)], records))
    got = await store.list_task_runs("r")
    want = [
        TaskRunRecord(run_id="r", seq=0, name="a", state=State.PENDING, created=1.0),
        TaskRunRecord(
            run_id="r", seq=1, name="b", state=State.RUNNING, created=2.0, upstream=[], inputs=b""
        ),
    ]
    assert got == want, differs("list_task_runs", got, want)
    assert got[0].upstream is None, f"upstream None must stay None, got {got[0].upstream!r}"
    assert got[0].parent_seq is None, f"parent_seq: {got[0].parent_seq!r}"
    assert got[0].started is None, f"started: {got[0].started!r}"
    assert got[0].error_message is None, f"error_message: {got[0].error_message!r}"
    assert got[0].result is None and got[0].result_ref is None, "result and result_ref: None"
    assert got[0].history == [], differs("history", got[0].history, [])
    assert got[1].upstream == [], f"an empty upstream must stay [], got {got[1].upstream!r}"


@CASES.case("writes: an empty write is fine")
async def _empty_write(store: Store) -> None:
    await store.write(WriteBatch([], []))
    await store.write(WriteBatch())
    runs = await store.list_runs()
    assert runs == [], differs("list_runs after empty writes", runs, [])


# -- upserts and terminal states --------------------------------------------------------


@CASES.case("runs: writing a non-terminal flow run again updates it")
async def _upsert_flow_run(store: Store) -> None:
    record = flow_run("run1", state=State.RUNNING, started=10.0, history=[("Running", 10.0)])
    await store.write(WriteBatch([record], []))
    record.heartbeat = 15.0
    record.task_count = 7
    await store.write(WriteBatch([record], []))
    got = await store.get_run("run1")
    assert got.heartbeat == 15.0, differs("heartbeat after the second write", got.heartbeat, 15.0)
    assert got.task_count == 7, differs("task_count after the second write", got.task_count, 7)
    assert got.state is State.RUNNING, differs("state", got.state, State.RUNNING)

    record.state = State.FAILED
    record.ended = 20.0
    record.error_type = "ValueError"
    record.error_message = "bad"
    record.traceback = "Traceback\nValueError: bad\n"
    record.history.append(("Failed", 20.0))
    record.task_count = 9
    await store.write(WriteBatch([record], []))
    got = await store.get_run("run1")
    want = flow_run(
        "run1",
        state=State.FAILED,
        started=10.0,
        ended=20.0,
        heartbeat=15.0,
        error_type="ValueError",
        error_message="bad",
        traceback="Traceback\nValueError: bad\n",
        history=[("Running", 10.0), ("Failed", 20.0)],
        task_count=9,
    )
    assert got == want, differs("the run after it failed", got, want)


@CASES.case("task runs: writing a non-terminal task run again updates it")
async def _upsert_task_run(store: Store) -> None:
    await store.write(WriteBatch([flow_run("run1", state=State.RUNNING)], []))
    pending = task_run("run1", 3, state=State.PENDING, history=[("Pending", 1.0)])
    await store.write(WriteBatch([], [pending]))
    state = (await store.list_task_runs("run1"))[0].state
    assert state is State.PENDING, differs("state after the first write", state, State.PENDING)

    pending.upstream = [0, 1]
    pending.state = State.RUNNING
    pending.started = 2.0
    pending.attempts = 1
    pending.history.append(("Running", 2.0))
    await store.write(WriteBatch([], [pending]))
    pending.state = State.RETRYING
    pending.error_type = "OSError"
    pending.error_message = "reset"
    pending.history.append(("Retrying", 3.0, "OSError: reset (retry in 1 s)"))
    await store.write(WriteBatch([], [pending]))
    got = (await store.list_task_runs("run1"))[0]
    assert got.state is State.RETRYING, differs("state", got.state, State.RETRYING)
    assert got.upstream == [0, 1], differs("upstream", got.upstream, [0, 1])
    assert got.attempts == 1, differs("attempts", got.attempts, 1)
    assert got.error_message == "reset", differs("error_message", got.error_message, "reset")
    history = [
        ("Pending", 1.0),
        ("Running", 2.0),
        ("Retrying", 3.0, "OSError: reset (retry in 1 s)"),
    ]
    assert got.history == history, differs("history", got.history, history)

    pending.state = State.COMPLETED
    pending.attempts = 2
    pending.ended = 5.0
    pending.history += [("Running", 4.0), ("Completed", 5.0)]
    await store.write(WriteBatch([], [pending]))
    got = (await store.list_task_runs("run1"))[0]
    want = task_run(
        "run1",
        3,
        state=State.COMPLETED,
        upstream=[0, 1],
        started=2.0,
        ended=5.0,
        attempts=2,
        error_type="OSError",
        error_message="reset",
        history=[*history, ("Running", 4.0), ("Completed", 5.0)],
    )
    assert got == want, differs("the task run once completed", got, want)
    counts = await store.count_task_runs("run1")
    assert counts == {"Completed": 1}, differs("count_task_runs", counts, {"Completed": 1})


@CASES.case("runs: a terminal flow run is never overwritten")
async def _terminal_flow_run_kept(store: Store) -> None:
    for terminal in sorted(TERMINAL):
        run_id = f"run-{terminal.value}"
        done = flow_run(run_id, state=terminal, ended=9.0, history=[(terminal.value, 9.0)])
        await store.write(WriteBatch([done], []))
        stale = flow_run(run_id, state=State.RUNNING, heartbeat=99.0, history=[("Running", 1.0)])
        await store.write(WriteBatch([stale], []))
        # Crashed gives way to a finished state only (a late completion, cases below).
        other = State.CRASHED if terminal != State.CRASHED else State.CACHED
        await store.write(WriteBatch([flow_run(run_id, state=other)], []))
        got = await store.get_run(run_id)
        want = flow_run(run_id, state=terminal, ended=9.0, history=[(terminal.value, 9.0)])
        assert got == want, differs(
            f"a {terminal.value} run written over as Running then {other.value}", got, want
        )


@CASES.case("task runs: a terminal task run is never overwritten")
async def _terminal_task_run_kept(store: Store) -> None:
    for terminal in sorted(TERMINAL):
        run_id = f"run-{terminal.value}"
        await store.write(WriteBatch([flow_run(run_id, state=State.RUNNING)], []))
        done = task_run(run_id, 0, state=terminal, attempts=1, history=[(terminal.value, 9.0)])
        await store.write(WriteBatch([], [done]))
        stale = task_run(run_id, 0, state=State.RUNNING, attempts=5, history=[("Running", 1.0)])
        await store.write(WriteBatch([], [stale]))
        # Crashed gives way to a finished state only (a late completion, cases below).
        other = {State.FAILED: State.COMPLETED, State.CRASHED: State.UPSTREAM_FAILED}.get(
            terminal, State.FAILED
        )
        await store.write(WriteBatch([], [task_run(run_id, 0, state=other, attempts=6)]))
        got = await store.list_task_runs(run_id)
        want = [task_run(run_id, 0, state=terminal, attempts=1, history=[(terminal.value, 9.0)])]
        assert got == want, differs(
            f"a {terminal.value} task run written over as Running then {other.value}", got, want
        )
        counts = await store.count_task_runs(run_id)
        assert counts == {terminal.value: 1}, differs(
            "count_task_runs", counts, {terminal.value: 1}
        )


@CASES.case("runs: terminal protection is per record within one batch")
async def _terminal_per_record(store: Store) -> None:
    await store.write(WriteBatch([flow_run("a"), flow_run("b", state=State.RUNNING)], []))
    await store.write(
        WriteBatch([flow_run("a", state=State.RUNNING), flow_run("b", state=State.CANCELLED)], []),
    )
    a = (await store.get_run("a")).state
    assert a is State.COMPLETED, differs("the completed run written as Running", a, "Completed")
    b = (await store.get_run("b")).state
    assert b is State.CANCELLED, differs("the running run written as Cancelled", b, "Cancelled")


@CASES.handles_case("runs: a terminal state written by another handle is kept")
async def _terminal_from_another_handle(store: Store, open_store: OpenStore) -> None:
    # Another process marks a run crashed while this one still holds the live records,
    # and goes on writing them unfinished (a heartbeat, an attempt that retries).
    other = await open_store()
    run = flow_run("run1", state=State.RUNNING)
    task = task_run("run1", 0, state=State.RUNNING)
    await store.write(WriteBatch([run], [task]))
    await other.write(
        WriteBatch(
            [flow_run("run1", state=State.CRASHED)], [task_run("run1", 0, state=State.CRASHED)]
        )
    )
    run.heartbeat = 50.0
    task.state = State.RETRYING
    task.attempts = 2
    await store.write(WriteBatch([run], [task]))
    for handle, which in ((store, "the writing handle"), (other, "the other handle")):
        state = (await handle.get_run("run1")).state
        assert state is State.CRASHED, differs(
            f"the run's state, read by {which}", state, "Crashed"
        )
        tasks = [t.state for t in await handle.list_task_runs("run1")]
        assert tasks == [State.CRASHED], differs(
            f"task run states, read by {which}", tasks, "Crashed"
        )


# -- snapshots --------------------------------------------------------------------------


@CASES.case("writes: a write stores a snapshot, not the live records")
async def _write_snapshot(store: Store) -> None:
    fr = flow_run("run1", state=State.RUNNING, history=[("Running", 1.0)], task_count=1)
    tr = task_run("run1", 0, state=State.RUNNING, upstream=[5], history=[("Running", 1.0)])
    await store.write(WriteBatch([fr], [tr]))

    fr.state = State.COMPLETED
    fr.task_count = 99
    fr.error_message = "changed"
    fr.history.append(("Completed", 2.0))
    tr.state = State.FAILED
    tr.attempts = 9
    tr.history.append(("Failed", 2.0))
    tr.upstream = [5, 6]

    got = await store.get_run("run1")
    want = flow_run("run1", state=State.RUNNING, history=[("Running", 1.0)], task_count=1)
    assert got == want, differs("the run after its record changed in memory", got, want)
    tasks = await store.list_task_runs("run1")
    want_tasks = [
        task_run("run1", 0, state=State.RUNNING, upstream=[5], history=[("Running", 1.0)])
    ]
    assert tasks == want_tasks, differs("task runs after their records changed", tasks, want_tasks)


@CASES.case("writes: lists changed in place after a write are not stored")
async def _write_snapshots_lists(store: Store) -> None:
    # Every list in a record is copied, not only ``history``: ``upstream`` too.
    tr = task_run("run1", 0, state=State.PENDING, upstream=[5], history=[("Pending", 1.0)])
    await store.write(WriteBatch([flow_run("run1", state=State.RUNNING)], [tr]))
    assert tr.upstream is not None
    tr.upstream.append(6)
    tr.history.append(("Running", 2.0))
    (stored,) = await store.list_task_runs("run1")
    assert stored.history == [("Pending", 1.0)], differs(
        "history after the live list grew", stored.history, [("Pending", 1.0)]
    )
    assert stored.upstream == [5], differs(
        "upstream after the live list grew", stored.upstream, [5]
    )


@CASES.case("writes: a write snapshots its records before its first await")
async def _write_snapshot_before_await(store: Store) -> None:
    # The engine keeps mutating records while a write is in flight.
    fr = flow_run("run1", state=State.RUNNING, history=[("Running", 1.0)])
    tr = task_run("run1", 0, state=State.RUNNING, history=[("Running", 1.0)])
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.write, WriteBatch([fr], [tr]))
        await anyio.lowlevel.checkpoint()  # the write starts and runs up to its first await
        fr.state = State.COMPLETED
        fr.history.append(("Completed", 2.0))
        tr.state = State.COMPLETED
        tr.history.append(("Completed", 2.0))
    run = await store.get_run("run1")
    assert run.history == [("Running", 1.0)], differs(
        "history changed while the write was in flight", run.history, [("Running", 1.0)]
    )
    assert run.state is State.RUNNING, differs("state", run.state, State.RUNNING)
    tasks = await store.list_task_runs("run1")
    want = [task_run("run1", 0, state=State.RUNNING, history=[("Running", 1.0)])]
    assert tasks == want, differs("task runs changed while the write was in flight", tasks, want)


@CASES.case("writes: cache entries and spans are stored as snapshots too")
async def _write_snapshots_entries_and_spans(store: Store) -> None:
    entry = cache_entry("k", 1.0, result=b"v1")
    span = span_record("t" * 32, "s" * 16, 10, attributes={"a": 1}, events=[], links=[])
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.write, WriteBatch(cache_entries=[entry], spans=[span]))
        await anyio.lowlevel.checkpoint()
        entry.result = b"changed"
        entry.task_name = "changed"
        span.name = "changed"
        span.attributes["a"] = 2
        span.attributes["b"] = 3
        span.events.append(("event", 11, {}))
        span.links.append(("x" * 32, "y" * 16))
    got = await store.get_cache("k")
    want = cache_entry("k", 1.0, result=b"v1")
    assert got == want, differs("the cache entry, changed in memory after write()", got, want)
    spans = await store.list_spans("t" * 32)
    want_spans = [span_record("t" * 32, "s" * 16, 10, attributes={"a": 1})]
    assert spans == want_spans, differs(
        "the span, its attributes, events and links changed in memory after write()",
        spans,
        want_spans,
    )


@CASES.case("reads: a record read back is the reader's own copy")
async def _reads_are_copies(store: Store) -> None:
    await store.write(
        WriteBatch(
            [flow_run("run1", history=[("Completed", 1.0)])],
            [task_run("run1", 0, upstream=[1], history=[("Completed", 1.0)])],
            [cache_entry("k", 1.0, result=b"v")],
            [span_record("t" * 32, "s" * 16, 10, attributes={"a": 1}, events=[("e", 11, {})])],
        )
    )
    run = await store.get_run("run1")
    run.history.append(("changed", 2.0))
    run.name = "changed"
    (listed,) = await store.list_runs()
    listed.history.append(("changed", 3.0))
    (task,) = await store.list_task_runs("run1")
    task.history.append(("changed", 2.0))
    assert task.upstream is not None
    task.upstream.append(2)
    entry = await store.get_cache("k")
    assert entry is not None, "get_cache('k') found nothing after writing it"
    entry.result = b"changed"
    (listed_entry,) = await store.list_cache()
    listed_entry.task_name = "changed"
    (span,) = await store.list_spans("t" * 32)
    span.attributes["a"] = 2
    span.events.clear()

    got = await store.get_run("run1")
    want = flow_run("run1", history=[("Completed", 1.0)])
    assert got == want, differs("the run after a reader changed its copy", got, want)
    tasks = await store.list_task_runs("run1")
    want_tasks = [task_run("run1", 0, upstream=[1], history=[("Completed", 1.0)])]
    assert tasks == want_tasks, differs(
        "the task run after a reader changed its copy", tasks, want_tasks
    )
    got_entry = await store.get_cache("k")
    want_entry = cache_entry("k", 1.0, result=b"v")
    assert got_entry == want_entry, differs(
        "the cache entry after a reader changed its copy", got_entry, want_entry
    )
    spans = await store.list_spans("t" * 32)
    want_spans = [span_record("t" * 32, "s" * 16, 10, attributes={"a": 1}, events=[("e", 11, {})])]
    assert spans == want_spans, differs(
        "the span after a reader changed its copy", spans, want_spans
    )


# -- late completions: a run taken for crashed that finishes after all ------------------

_MARKED = "no heartbeat from worker-3 for 35 s"


def _crashed_by_mistake(entry: tuple[object, ...], at: float, why: str | None) -> str | None:
    """Why a history entry is not the Crashed entry a late completion keeps, or None."""
    if len(entry) != 3 or entry[0] != State.CRASHED.value or entry[1] != at:
        return f"expected ('Crashed', {at!r}, <note>), got {entry!r}"
    note = str(entry[2])
    if "crashed by mistake" not in note or "finished later" not in note:
        return f"the note should say it was marked crashed by mistake, finished later: {note!r}"
    if why is not None and why not in note:
        return f"the note should keep why it was marked ({why!r}): {note!r}"
    return None


@CASES.case("runs: a late completion replaces Crashed, and its history keeps the crash")
async def _late_flow_completion(store: Store) -> None:
    for finished in sorted(FINISHED):
        run_id = f"run-{finished.value}"
        running = flow_run(run_id, state=State.RUNNING, started=1.0, history=[("Running", 1.0)])
        await store.write(WriteBatch([running], []))
        crashed = flow_run(
            run_id,
            state=State.CRASHED,
            started=1.0,
            ended=20.0,
            task_count=3,
            error_type="Crashed",
            error_message=f"the run's process stopped without ending it ({_MARKED})",
            history=[("Running", 1.0), ("Crashed", 40.0, _MARKED)],
        )
        await store.write(WriteBatch([crashed], []))
        late = flow_run(
            run_id,
            state=finished,
            started=1.0,
            ended=60.0,
            heartbeat=55.0,
            task_count=2800,
            error_type=None if finished is State.COMPLETED else "ValueError",
            history=[("Running", 1.0), (finished.value, 60.0)],
        )
        await store.write(WriteBatch([late], []))
        got = await store.get_run(run_id)
        want = late_completion(crashed, late)
        assert got == want, differs(f"a {finished.value} run written over Crashed", got, want)
        assert got.state is finished, differs("state", got.state, finished)
        assert (got.ended, got.task_count) == (60.0, 2800), differs(
            "ended and task_count: the late record's", (got.ended, got.task_count), (60.0, 2800)
        )
        assert got.error_type == late.error_type, differs(
            "error_type", got.error_type, late.error_type
        )
        assert len(got.history) == 3 and got.history[0] == ("Running", 1.0), got.history
        assert got.history[2] == (finished.value, 60.0), differs(
            "the last history entry", got.history[2], (finished.value, 60.0)
        )
        problem = _crashed_by_mistake(got.history[1], 40.0, _MARKED)
        assert problem is None, f"the kept Crashed entry of {got.history!r}: {problem}"
        listed = [r.id for r in await store.list_runs(state=finished.value, limit=10)]
        assert listed == [run_id], differs(f"list_runs(state={finished.value!r})", listed, [run_id])


@CASES.case("task runs: a late completion replaces Crashed, and its history keeps the crash")
async def _late_task_completion(store: Store) -> None:
    await store.write(WriteBatch([flow_run("run1", state=State.RUNNING)], []))
    for seq, finished in enumerate(sorted(FINISHED)):
        running = task_run("run1", seq, state=State.RUNNING, history=[("Running", 1.0)])
        await store.write(WriteBatch([], [running]))
        crashed = task_run(
            "run1", seq, state=State.CRASHED, history=[("Running", 1.0), ("Crashed", 40.0)]
        )
        await store.write(WriteBatch([], [crashed]))
        late = task_run(
            "run1",
            seq,
            state=finished,
            attempts=2,
            started=1.0,
            ended=60.0,
            result=b"\x01" if finished is State.COMPLETED else None,
            history=[("Running", 1.0), (finished.value, 60.0)],
        )
        await store.write(WriteBatch([], [late]))
        (got,) = await store.list_task_runs("run1", offset=seq, limit=1)
        want = late_completion(crashed, late)
        assert got == want, differs(f"a {finished.value} task run written over Crashed", got, want)
        assert got.history[0] == ("Running", 1.0) and got.history[2] == (finished.value, 60.0)
        problem = _crashed_by_mistake(got.history[1], 40.0, None)
        assert problem is None, f"the kept Crashed entry of {got.history!r}: {problem}"
    counts = await store.count_task_runs("run1")
    want_counts = {s.value: 1 for s in FINISHED}
    assert counts == want_counts, differs("count_task_runs", counts, want_counts)


@CASES.case("runs: only a finished state replaces Crashed")
async def _crashed_kept_otherwise(store: Store) -> None:
    crashed_history = [("Running", 1.0), ("Crashed", 40.0, _MARKED)]
    await store.write(
        WriteBatch(
            [flow_run("run1", state=State.CRASHED, history=crashed_history)],
            [task_run("run1", 0, state=State.CRASHED, history=crashed_history)],
        )
    )
    for state in (s for s in State if s not in FINISHED):
        await store.write(
            WriteBatch(
                [flow_run("run1", state=state, history=[(state.value, 50.0)])],
                [task_run("run1", 0, state=state, history=[(state.value, 50.0)])],
            )
        )
        run = await store.get_run("run1")
        want_run = flow_run("run1", state=State.CRASHED, history=crashed_history)
        assert run == want_run, differs(
            f"a Crashed run written over as {state.value}", run, want_run
        )
        tasks = await store.list_task_runs("run1")
        want_tasks = [task_run("run1", 0, state=State.CRASHED, history=crashed_history)]
        assert tasks == want_tasks, differs(
            f"a Crashed task run written over as {state.value}", tasks, want_tasks
        )
    # A late completion is taken once: the run is then finished, and final.
    await store.write(WriteBatch([flow_run("run1", state=State.COMPLETED, history=[])], []))
    await store.write(WriteBatch([flow_run("run1", state=State.FAILED, history=[])], []))
    state = (await store.get_run("run1")).state
    assert state is State.COMPLETED, differs(
        "a late Completed run written over as Failed", state, "Completed"
    )


@CASES.handles_case("runs: a late completion replaces Crashed written by another handle")
async def _late_completion_from_another_handle(store: Store, open_store: OpenStore) -> None:
    # Another process took this one for dead (no heartbeat for a while) and marked its
    # run and unfinished task runs Crashed; this one was alive, and finishes them.
    other = await open_store()
    run = flow_run("run1", state=State.RUNNING, history=[("Running", 1.0)])
    written = task_run("run1", 0, state=State.RUNNING, history=[("Running", 1.0)])
    await store.write(WriteBatch([run], [written]))
    marked_history = [("Running", 1.0), ("Crashed", 40.0, _MARKED)]
    await other.write(
        WriteBatch(
            [flow_run("run1", state=State.CRASHED, history=marked_history)],
            [
                task_run(
                    "run1", 0, state=State.CRASHED, history=[("Running", 1.0), ("Crashed", 40.0)]
                ),
                # A task run this handle has not written yet, found Crashed when it writes it.
                task_run("run1", 1, state=State.CRASHED, history=[("Crashed", 40.0)]),
            ],
        )
    )
    run.state = State.COMPLETED
    run.history.append(("Completed", 60.0))
    written.state = State.COMPLETED
    written.history.append(("Completed", 59.0))
    fresh = task_run("run1", 1, state=State.FAILED, history=[("Running", 2.0), ("Failed", 58.0)])
    await store.write(WriteBatch([run], [written, fresh]))
    for handle, which in ((store, "the writing handle"), (other, "the other handle")):
        got = await handle.get_run("run1")
        assert got.state is State.COMPLETED, differs(
            f"the run's state, read by {which}", got.state, "Completed"
        )
        history = [("Running", 1.0), ("Crashed", 40.0), ("Completed", 60.0)]
        assert [e[:2] for e in got.history] == history, differs(
            f"the run's history, read by {which}", got.history, history
        )
        tasks = await handle.list_task_runs("run1")
        states = [t.state for t in tasks]
        assert states == [State.COMPLETED, State.FAILED], differs(
            f"task run states, read by {which}", states, ["Completed", "Failed"]
        )
        for task in tasks:
            problem = _crashed_by_mistake(task.history[-2], 40.0, None)
            assert problem is None, f"task run {task.seq}'s history {task.history!r}: {problem}"
        counts = await handle.count_task_runs("run1")
        assert counts == {"Completed": 1, "Failed": 1}, differs(
            f"count_task_runs, read by {which}", counts, {"Completed": 1, "Failed": 1}
        )
