"""The store contract as executable cases: what a store must do to back flowcore.

:mod:`flowcore.store.base` says, role by role, what the engine and the readers
need from a database. This module checks it: every case writes through the
public methods of a real store and asserts what a reader must see back (runs
and task runs, cache entries, spans, shared leases and rates, blobs, two
handles on one database at once, closing and reopening). A store that passes
every case can back ``Engine(store=...)``, so a store plugin (PostgreSQL, say)
proves itself with one test::

    @pytest.mark.anyio
    async def test_the_store_contract() -> None:
        await flowcore.testing.check_store(lambda folder: PostgresStore(url_for(folder)))

``factory(folder)`` returns an *unopened* store on a fresh database for that
folder; called twice with one folder it returns two handles on the same
database (as two processes would have). :func:`check_store` opens and closes
the stores itself, runs every case in a folder of its own, and raises one
``AssertionError`` naming every case that failed and why.

:data:`STORE_CASES` names the cases, so a test suite can show each as a test
of its own (``check_store(factory, cases=[name])``). The module imports no test
framework: it ships in the wheel.
"""

from __future__ import annotations

import hashlib
import random
import re
import shutil
import tempfile
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import anyio
import anyio.lowlevel

from ..errors import ConfigurationError, FlowcoreError, ResultUnreadable, RunNotFound
from ..records import CacheEntry, FlowRunRecord, SpanRecord, TaskRunRecord, WriteBatch
from ..states import TERMINAL, State
from ..store.base import BlobStore, Store

__all__ = ["STORE_CASES", "OpenStore", "StoreCase", "StoreFactory", "check_store"]

#: Makes an unopened store on the database of a folder (two calls, two handles on one database).
StoreFactory: TypeAlias = Callable[[Path], Store]
#: Opens one more handle on the database of the case under way (closed by check_store).
OpenStore: TypeAlias = Callable[[], Awaitable[Store]]

_Run: TypeAlias = Callable[[Store, OpenStore], Coroutine[Any, Any, None]]
_OneStore: TypeAlias = Callable[[Store], Coroutine[Any, Any, None]]
_E = TypeVar("_E", bound=BaseException)


@dataclass(frozen=True, slots=True)
class StoreCase:
    """One behaviour of the contract: ``run(store, open_store)`` asserts it on an opened store."""

    name: str
    run: _Run
    #: Whether the case needs a store that keeps its data across close and reopen.
    persistent: bool = False


#: Every case of the contract, by name (``"area: behaviour"``), in the order they run.
STORE_CASES: dict[str, StoreCase] = {}


def _register(name: str, run: _Run, persistent: bool) -> None:
    if name in STORE_CASES:
        raise RuntimeError(f"flowcore bug: two store contract cases named {name!r}")
    STORE_CASES[name] = StoreCase(name, run, persistent)


def _case(name: str) -> Callable[[_OneStore], _OneStore]:
    """Register a case that needs one opened store."""

    def register(fn: _OneStore) -> _OneStore:
        async def run(store: Store, open_store: OpenStore) -> None:
            await fn(store)

        _register(name, run, persistent=False)
        return fn

    return register


def _handles_case(name: str, *, persistent: bool = False) -> Callable[[_Run], _Run]:
    """Register a case that opens more handles on the same database."""

    def register(fn: _Run) -> _Run:
        _register(name, fn, persistent)
        return fn

    return register


# -- running the cases -------------------------------------------------------------------


async def check_store(
    factory: StoreFactory,
    *,
    persistent: bool = True,
    cases: Iterable[str] | None = None,
    timeout: float = 60.0,
) -> None:
    """Run the store contract against the stores ``factory`` makes; raise if any case fails.

    ``factory(folder)`` returns an unopened store whose database is tied to ``folder``
    (a fresh, empty folder per case); called again with the same folder it must return
    another handle on the same database. ``persistent=False`` is for stores that keep
    nothing once closed (the memory store): the reopen case is left out. ``cases``
    runs only the cases of those names (see :data:`STORE_CASES`). Each case gets
    ``timeout`` seconds.

    Every case runs, even after failures; then one ``AssertionError`` lists each failed
    case with its error (chained to the error itself, or to an ``ExceptionGroup`` of
    them). Stores are closed on every path, whatever a case did.
    """
    if isinstance(cases, str):
        cases = [cases]
    if cases is None:
        selected = [c for c in STORE_CASES.values() if persistent or not c.persistent]
    else:
        names = list(cases)
        unknown = [n for n in names if n not in STORE_CASES]
        if unknown:
            raise ValueError(
                f"unknown store contract cases {unknown!r}; the cases are listed in "
                "flowcore.testing.STORE_CASES"
            )
        selected = [STORE_CASES[n] for n in names]
        needs = [c.name for c in selected if c.persistent and not persistent]
        if needs:
            raise ValueError(f"cases {needs!r} need a persistent store, and persistent=False")
    failures: list[tuple[str, Exception]] = []
    for case in selected:
        error = await _run_case(factory, case, timeout)
        if error is not None:
            failures.append((case.name, error))
    if not failures:
        return
    lines = [f"{len(failures)} of {len(selected)} store contract cases failed:"]
    for name, error in failures:
        lines.append(f"- {name}: {_describe(error)}")
    message = "\n".join(lines)
    if len(failures) == 1:
        raise AssertionError(message) from failures[0][1]
    raise AssertionError(message) from ExceptionGroup(
        "store contract failures", [error for _, error in failures]
    )


async def _run_case(factory: StoreFactory, case: StoreCase, timeout: float) -> Exception | None:
    """Run one case on a fresh folder; the error it failed with, or ``None``."""
    folder = Path(await anyio.to_thread.run_sync(_make_folder))
    handles: list[Store] = []

    async def open_store() -> Store:
        store = factory(folder)
        handles.append(store)
        await store.open()
        return store

    error: Exception | None = None
    try:
        with anyio.fail_after(timeout):
            store = await open_store()
            await case.run(store, open_store)
    except TimeoutError as exc:
        error = AssertionError(
            f"did not finish within {timeout:g} s (a wait that never ends, or a lock never "
            "given back?)"
        )
        error.__cause__ = exc
    except Exception as exc:
        error = exc
    finally:
        with anyio.move_on_after(timeout, shield=True) as scope:
            for handle in reversed(handles):
                try:
                    await handle.close()
                except Exception as exc:
                    if error is None:
                        error = AssertionError(f"close() raised {type(exc).__name__}: {exc}")
                        error.__cause__ = exc
        if scope.cancelled_caught and error is None:
            error = AssertionError(f"close() did not return within {timeout:g} s")
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(folder, ignore_errors=True))
    return error


def _make_folder() -> str:
    return tempfile.mkdtemp(prefix="flowcore-store-check-")


def _describe(error: BaseException) -> str:
    """``Type: message (at line N of the case)`` for the failure list."""
    text = f"{type(error).__name__}: {error}".strip()
    tb = error.__traceback__
    if tb is None and error.__cause__ is not None:  # made, not raised: a timeout
        tb = error.__cause__.__traceback__
    here = [
        frame
        for frame in traceback.extract_tb(tb)
        if frame.filename == __file__ and not frame.name.startswith(("_raises", "_run_case"))
    ]
    if here:
        text += f" (in {here[-1].name}, line {here[-1].lineno} of {Path(__file__).name})"
    return text


# -- helpers -----------------------------------------------------------------------------


def _differs(what: str, got: object, want: object) -> str:
    return f"{what}:\n    got  {got!r}\n    want {want!r}"


async def _raises(kind: type[_E], call: Awaitable[object], what: str) -> _E:
    """The ``kind`` error ``call`` raises; an AssertionError if it returns or raises another."""
    try:
        result = await call
    except kind as exc:
        return exc
    except Exception as exc:
        raise AssertionError(
            f"{what}: expected {kind.__name__}, got {type(exc).__name__}: {exc}"
        ) from exc
    raise AssertionError(f"{what}: expected {kind.__name__}, but it returned {result!r}")


def _close(got: float, want: float) -> bool:
    return abs(got - want) <= 1e-9 * max(1.0, abs(want))


def _all_close(got: list[float], want: list[float]) -> bool:
    return len(got) == len(want) and all(_close(g, w) for g, w in zip(got, want, strict=True))


def _flow_run(run_id: str, created: float = 1000.0, **fields: Any) -> FlowRunRecord:
    fields.setdefault("name", "etl")
    fields.setdefault("state", State.COMPLETED)
    return FlowRunRecord(id=run_id, created=created, **fields)


def _task_run(run_id: str, seq: int, **fields: Any) -> TaskRunRecord:
    fields.setdefault("name", "step")
    fields.setdefault("state", State.COMPLETED)
    fields.setdefault("created", 1000.0 + seq)
    return TaskRunRecord(run_id=run_id, seq=seq, **fields)


def _full_flow_run() -> FlowRunRecord:
    return FlowRunRecord(
        id="0123456789abcdef0123456789abcdef",
        name="ingest ünïcode ✓",
        state=State.FAILED,
        created=1_700_000_000.125,
        kind="task",
        parameters=b"\x82\xa5pages\x14\xa3raw\xc4\x02\x00\xff",
        parent_run_id="fedcba9876543210fedcba9876543210",
        parent_task_seq=7,
        started=1_700_000_000.25,
        ended=1_700_000_003.5,
        heartbeat=1_700_000_002.0,
        error_type="httpx.HTTPStatusError",
        error_message="503 Service Unavailable — 'quoted' \"double\"",
        traceback="Traceback (most recent call last):\n  ...\nValueError: boom\n" * 50,
        history=[
            ("Running", 1_700_000_000.25),
            ("Retrying", 1_700_000_001.0, "HTTPStatusError: 503 (retry in 0.2 s)"),
            ("Running", 1_700_000_001.25),
            ("Failed", 1_700_000_003.5),
        ],
        host="worker-3.example",
        pid=4242,
        task_count=123_456,
        entrypoint="pipelines/ingest.py:ingest",
        resumed_from="00112233445566778899aabbccddeeff",
        trace_id="0af7651916cd43dd8448eb211c80319c",
        span_id="b7ad6b7169203331",
    )


def _full_task_run() -> TaskRunRecord:
    return TaskRunRecord(
        run_id="0123456789abcdef0123456789abcdef",
        seq=42,
        name="fetch_page",
        state=State.COMPLETED,
        created=1_700_000_000.5,
        parent_seq=3,
        upstream=[1, 2, 40],
        inputs=b"\x81\xa4page\x2a\x00\xff\xfe",
        attempts=3,
        started=1_700_000_000.75,
        ended=1_700_000_002.0,
        error_type="TimeoutError",
        error_message="took too long",
        traceback="Traceback ...\nTimeoutError: took too long\n",
        history=[
            ("Running", 1_700_000_000.75),
            ("Retrying", 1_700_000_001.0, "TimeoutError: took too long (retry in 0.1 s)"),
            ("Running", 1_700_000_001.125),
            ("Completed", 1_700_000_002.0),
        ],
        result=b"\x93\x01\x02\x03",
        result_ref="ab" * 32,
        cache_key="c0ffee" * 10,
        cached_from="fedcba98.7",
        span_id="00f067aa0ba902b7",
        parent_span_id="b7ad6b7169203331",
    )


def _full_cache_entry(key: str = "k" * 64) -> CacheEntry:
    return CacheEntry(
        key=key,
        task_name="fetch_page",
        created=1_700_000_000.5,
        expires=1_700_086_400.5,
        result=b"\x81\xa3ok\xc3\x00\xff",
        result_ref="cd" * 32,
        run_id="0123456789abcdef0123456789abcdef",
        seq=42,
    )


def _full_span() -> SpanRecord:
    return SpanRecord(
        trace_id="0af7651916cd43dd8448eb211c80319c",
        span_id="b7ad6b7169203331",
        name="flow ingest ✓",
        start=1_700_000_000_123_456_789,
        end=1_700_000_003_500_000_001,
        parent_id="00f067aa0ba902b7",
        run_id="0123456789abcdef0123456789abcdef",
        kind="SERVER",
        status="ERROR",
        status_message="boom — 'quoted'",
        attributes={"flowcore.run": "0123", "count": 3, "ratio": 0.5, "ok": True, "tags": ["a"]},
        events=[("exception", 1_700_000_001_000_000_000, {"exception.type": "ValueError"})],
        links=[("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")],
        scope="my.library",
    )


def _span(trace_id: str, span_id: str, start: int, **fields: Any) -> SpanRecord:
    return SpanRecord(
        trace_id=trace_id, span_id=span_id, name=f"span {span_id}", start=start, **fields
    )


def _entry(key: str, created: float, task_name: str = "t", **fields: Any) -> CacheEntry:
    return CacheEntry(key=key, task_name=task_name, created=created, **fields)


# -- round trips ------------------------------------------------------------------------


@_case("runs: a flow run keeps every field through a write and a read")
async def _flow_run_round_trip(store: Store) -> None:
    record = _full_flow_run()
    await store.write(WriteBatch([record], []))
    got = await store.get_run(record.id)
    assert got == _full_flow_run(), _differs("get_run after writing every field", got, record)
    listed = await store.list_runs()
    assert listed == [_full_flow_run()], _differs("list_runs", listed, [record])


@_case("runs: a flow run keeps defaults and None values")
async def _flow_run_round_trip_defaults(store: Store) -> None:
    record = FlowRunRecord(id="minimal", name="f", state=State.RUNNING, created=5.0)
    await store.write(WriteBatch([record], []))
    got = await store.get_run("minimal")
    want = FlowRunRecord(id="minimal", name="f", state=State.RUNNING, created=5.0)
    assert got == want, _differs("get_run of a run with only required fields", got, want)
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
    assert got.history == [], _differs("history", got.history, [])
    assert got.parameters == b"", _differs("parameters", got.parameters, b"")
    assert got.kind == "flow", _differs("kind", got.kind, "flow")
    assert got.state is State.RUNNING, f"state should read back as a State, got {got.state!r}"


@_case("task runs: a task run keeps every field through a write and a read")
async def _task_run_round_trip(store: Store) -> None:
    await store.write(WriteBatch([_full_flow_run()], [_full_task_run()]))
    got = await store.list_task_runs(_full_task_run().run_id)
    assert got == [_full_task_run()], _differs("list_task_runs", got, [_full_task_run()])
    want_retry = ("Retrying", 1_700_000_001.0, "TimeoutError: took too long (retry in 0.1 s)")
    assert got[0].history[1] == want_retry, _differs(
        "a history entry with a note", got[0].history[1], want_retry
    )
    assert len(got[0].history[0]) == 2, f"a history entry without a note: {got[0].history[0]!r}"
    assert got[0].upstream == [1, 2, 40], _differs("upstream", got[0].upstream, [1, 2, 40])
    inputs = b"\x81\xa4page\x2a\x00\xff\xfe"
    assert got[0].inputs == inputs, _differs("inputs (bytes)", got[0].inputs, inputs)
    assert got[0].state is State.COMPLETED, f"state should be a State, got {got[0].state!r}"


@_case("task runs: a task run keeps None and empty values")
async def _task_run_round_trip_empty(store: Store) -> None:
    records = [
        TaskRunRecord(run_id="r", seq=0, name="a", state=State.PENDING, created=1.0),
        TaskRunRecord(
            run_id="r", seq=1, name="b", state=State.RUNNING, created=2.0, upstream=[], inputs=b""
        ),
    ]
    await store.write(WriteBatch([_flow_run("r", state=State.RUNNING)], records))
    got = await store.list_task_runs("r")
    want = [
        TaskRunRecord(run_id="r", seq=0, name="a", state=State.PENDING, created=1.0),
        TaskRunRecord(
            run_id="r", seq=1, name="b", state=State.RUNNING, created=2.0, upstream=[], inputs=b""
        ),
    ]
    assert got == want, _differs("list_task_runs", got, want)
    assert got[0].upstream is None, f"upstream None must stay None, got {got[0].upstream!r}"
    assert got[0].parent_seq is None, f"parent_seq: {got[0].parent_seq!r}"
    assert got[0].started is None, f"started: {got[0].started!r}"
    assert got[0].error_message is None, f"error_message: {got[0].error_message!r}"
    assert got[0].result is None and got[0].result_ref is None, "result and result_ref: None"
    assert got[0].history == [], _differs("history", got[0].history, [])
    assert got[1].upstream == [], f"an empty upstream must stay [], got {got[1].upstream!r}"


@_case("writes: an empty write is fine")
async def _empty_write(store: Store) -> None:
    await store.write(WriteBatch([], []))
    await store.write(WriteBatch())
    runs = await store.list_runs()
    assert runs == [], _differs("list_runs after empty writes", runs, [])


# -- upserts and terminal states --------------------------------------------------------


@_case("runs: writing a non-terminal flow run again updates it")
async def _upsert_flow_run(store: Store) -> None:
    record = _flow_run("run1", state=State.RUNNING, started=10.0, history=[("Running", 10.0)])
    await store.write(WriteBatch([record], []))
    record.heartbeat = 15.0
    record.task_count = 7
    await store.write(WriteBatch([record], []))
    got = await store.get_run("run1")
    assert got.heartbeat == 15.0, _differs("heartbeat after the second write", got.heartbeat, 15.0)
    assert got.task_count == 7, _differs("task_count after the second write", got.task_count, 7)
    assert got.state is State.RUNNING, _differs("state", got.state, State.RUNNING)

    record.state = State.FAILED
    record.ended = 20.0
    record.error_type = "ValueError"
    record.error_message = "bad"
    record.traceback = "Traceback\nValueError: bad\n"
    record.history.append(("Failed", 20.0))
    record.task_count = 9
    await store.write(WriteBatch([record], []))
    got = await store.get_run("run1")
    want = _flow_run(
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
    assert got == want, _differs("the run after it failed", got, want)


@_case("task runs: writing a non-terminal task run again updates it")
async def _upsert_task_run(store: Store) -> None:
    await store.write(WriteBatch([_flow_run("run1", state=State.RUNNING)], []))
    pending = _task_run("run1", 3, state=State.PENDING, history=[("Pending", 1.0)])
    await store.write(WriteBatch([], [pending]))
    state = (await store.list_task_runs("run1"))[0].state
    assert state is State.PENDING, _differs("state after the first write", state, State.PENDING)

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
    assert got.state is State.RETRYING, _differs("state", got.state, State.RETRYING)
    assert got.upstream == [0, 1], _differs("upstream", got.upstream, [0, 1])
    assert got.attempts == 1, _differs("attempts", got.attempts, 1)
    assert got.error_message == "reset", _differs("error_message", got.error_message, "reset")
    history = [
        ("Pending", 1.0),
        ("Running", 2.0),
        ("Retrying", 3.0, "OSError: reset (retry in 1 s)"),
    ]
    assert got.history == history, _differs("history", got.history, history)

    pending.state = State.COMPLETED
    pending.attempts = 2
    pending.ended = 5.0
    pending.history += [("Running", 4.0), ("Completed", 5.0)]
    await store.write(WriteBatch([], [pending]))
    got = (await store.list_task_runs("run1"))[0]
    want = _task_run(
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
    assert got == want, _differs("the task run once completed", got, want)
    counts = await store.count_task_runs("run1")
    assert counts == {"Completed": 1}, _differs("count_task_runs", counts, {"Completed": 1})


@_case("runs: a terminal flow run is never overwritten")
async def _terminal_flow_run_kept(store: Store) -> None:
    for terminal in sorted(TERMINAL):
        run_id = f"run-{terminal.value}"
        done = _flow_run(run_id, state=terminal, ended=9.0, history=[(terminal.value, 9.0)])
        await store.write(WriteBatch([done], []))
        stale = _flow_run(run_id, state=State.RUNNING, heartbeat=99.0, history=[("Running", 1.0)])
        await store.write(WriteBatch([stale], []))
        other = State.CRASHED if terminal != State.CRASHED else State.FAILED
        await store.write(WriteBatch([_flow_run(run_id, state=other)], []))
        got = await store.get_run(run_id)
        want = _flow_run(run_id, state=terminal, ended=9.0, history=[(terminal.value, 9.0)])
        assert got == want, _differs(
            f"a {terminal.value} run written over as Running then {other.value}", got, want
        )


@_case("task runs: a terminal task run is never overwritten")
async def _terminal_task_run_kept(store: Store) -> None:
    for terminal in sorted(TERMINAL):
        run_id = f"run-{terminal.value}"
        await store.write(WriteBatch([_flow_run(run_id, state=State.RUNNING)], []))
        done = _task_run(run_id, 0, state=terminal, attempts=1, history=[(terminal.value, 9.0)])
        await store.write(WriteBatch([], [done]))
        stale = _task_run(run_id, 0, state=State.RUNNING, attempts=5, history=[("Running", 1.0)])
        await store.write(WriteBatch([], [stale]))
        other = State.FAILED if terminal != State.FAILED else State.COMPLETED
        await store.write(WriteBatch([], [_task_run(run_id, 0, state=other, attempts=6)]))
        got = await store.list_task_runs(run_id)
        want = [_task_run(run_id, 0, state=terminal, attempts=1, history=[(terminal.value, 9.0)])]
        assert got == want, _differs(
            f"a {terminal.value} task run written over as Running then {other.value}", got, want
        )
        counts = await store.count_task_runs(run_id)
        assert counts == {terminal.value: 1}, _differs(
            "count_task_runs", counts, {terminal.value: 1}
        )


@_case("runs: terminal protection is per record within one batch")
async def _terminal_per_record(store: Store) -> None:
    await store.write(WriteBatch([_flow_run("a"), _flow_run("b", state=State.RUNNING)], []))
    await store.write(
        WriteBatch(
            [_flow_run("a", state=State.RUNNING), _flow_run("b", state=State.CANCELLED)], []
        ),
    )
    a = (await store.get_run("a")).state
    assert a is State.COMPLETED, _differs("the completed run written as Running", a, "Completed")
    b = (await store.get_run("b")).state
    assert b is State.CANCELLED, _differs("the running run written as Cancelled", b, "Cancelled")


@_handles_case("runs: a terminal state written by another handle is kept")
async def _terminal_from_another_handle(store: Store, open_store: OpenStore) -> None:
    # Another process marks a run crashed while this one still holds the live records.
    other = await open_store()
    run = _flow_run("run1", state=State.RUNNING)
    task = _task_run("run1", 0, state=State.RUNNING)
    await store.write(WriteBatch([run], [task]))
    await other.write(
        WriteBatch(
            [_flow_run("run1", state=State.CRASHED)], [_task_run("run1", 0, state=State.CRASHED)]
        )
    )
    run.state = State.COMPLETED
    task.state = State.COMPLETED
    await store.write(WriteBatch([run], [task]))
    for handle, which in ((store, "the writing handle"), (other, "the other handle")):
        state = (await handle.get_run("run1")).state
        assert state is State.CRASHED, _differs(
            f"the run's state, read by {which}", state, "Crashed"
        )
        tasks = [t.state for t in await handle.list_task_runs("run1")]
        assert tasks == [State.CRASHED], _differs(
            f"task run states, read by {which}", tasks, "Crashed"
        )


# -- snapshots --------------------------------------------------------------------------


@_case("writes: a write stores a snapshot, not the live records")
async def _write_snapshot(store: Store) -> None:
    fr = _flow_run("run1", state=State.RUNNING, history=[("Running", 1.0)], task_count=1)
    tr = _task_run("run1", 0, state=State.RUNNING, upstream=[5], history=[("Running", 1.0)])
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
    want = _flow_run("run1", state=State.RUNNING, history=[("Running", 1.0)], task_count=1)
    assert got == want, _differs("the run after its record changed in memory", got, want)
    tasks = await store.list_task_runs("run1")
    want_tasks = [
        _task_run("run1", 0, state=State.RUNNING, upstream=[5], history=[("Running", 1.0)])
    ]
    assert tasks == want_tasks, _differs("task runs after their records changed", tasks, want_tasks)


@_case("writes: lists changed in place after a write are not stored")
async def _write_snapshots_lists(store: Store) -> None:
    # Every list in a record is copied, not only ``history``: ``upstream`` too.
    tr = _task_run("run1", 0, state=State.PENDING, upstream=[5], history=[("Pending", 1.0)])
    await store.write(WriteBatch([_flow_run("run1", state=State.RUNNING)], [tr]))
    assert tr.upstream is not None
    tr.upstream.append(6)
    tr.history.append(("Running", 2.0))
    (stored,) = await store.list_task_runs("run1")
    assert stored.history == [("Pending", 1.0)], _differs(
        "history after the live list grew", stored.history, [("Pending", 1.0)]
    )
    assert stored.upstream == [5], _differs(
        "upstream after the live list grew", stored.upstream, [5]
    )


@_case("writes: a write snapshots its records before its first await")
async def _write_snapshot_before_await(store: Store) -> None:
    # The engine keeps mutating records while a write is in flight.
    fr = _flow_run("run1", state=State.RUNNING, history=[("Running", 1.0)])
    tr = _task_run("run1", 0, state=State.RUNNING, history=[("Running", 1.0)])
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.write, WriteBatch([fr], [tr]))
        await anyio.lowlevel.checkpoint()  # the write starts and runs up to its first await
        fr.state = State.COMPLETED
        fr.history.append(("Completed", 2.0))
        tr.state = State.COMPLETED
        tr.history.append(("Completed", 2.0))
    run = await store.get_run("run1")
    assert run.history == [("Running", 1.0)], _differs(
        "history changed while the write was in flight", run.history, [("Running", 1.0)]
    )
    assert run.state is State.RUNNING, _differs("state", run.state, State.RUNNING)
    tasks = await store.list_task_runs("run1")
    want = [_task_run("run1", 0, state=State.RUNNING, history=[("Running", 1.0)])]
    assert tasks == want, _differs("task runs changed while the write was in flight", tasks, want)


@_case("writes: cache entries and spans are stored as snapshots too")
async def _write_snapshots_entries_and_spans(store: Store) -> None:
    entry = _entry("k", 1.0, result=b"v1")
    span = _span("t" * 32, "s" * 16, 10, attributes={"a": 1}, events=[], links=[])
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
    want = _entry("k", 1.0, result=b"v1")
    assert got == want, _differs("the cache entry, changed in memory after write()", got, want)
    spans = await store.list_spans("t" * 32)
    want_spans = [_span("t" * 32, "s" * 16, 10, attributes={"a": 1})]
    assert spans == want_spans, _differs(
        "the span, its attributes, events and links changed in memory after write()",
        spans,
        want_spans,
    )


@_case("reads: a record read back is the reader's own copy")
async def _reads_are_copies(store: Store) -> None:
    await store.write(
        WriteBatch(
            [_flow_run("run1", history=[("Completed", 1.0)])],
            [_task_run("run1", 0, upstream=[1], history=[("Completed", 1.0)])],
            [_entry("k", 1.0, result=b"v")],
            [_span("t" * 32, "s" * 16, 10, attributes={"a": 1}, events=[("e", 11, {})])],
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
    want = _flow_run("run1", history=[("Completed", 1.0)])
    assert got == want, _differs("the run after a reader changed its copy", got, want)
    tasks = await store.list_task_runs("run1")
    want_tasks = [_task_run("run1", 0, upstream=[1], history=[("Completed", 1.0)])]
    assert tasks == want_tasks, _differs(
        "the task run after a reader changed its copy", tasks, want_tasks
    )
    got_entry = await store.get_cache("k")
    want_entry = _entry("k", 1.0, result=b"v")
    assert got_entry == want_entry, _differs(
        "the cache entry after a reader changed its copy", got_entry, want_entry
    )
    spans = await store.list_spans("t" * 32)
    want_spans = [_span("t" * 32, "s" * 16, 10, attributes={"a": 1}, events=[("e", 11, {})])]
    assert spans == want_spans, _differs(
        "the span after a reader changed its copy", spans, want_spans
    )


# -- list_runs --------------------------------------------------------------------------


async def _write_listing_runs(store: Store) -> None:
    runs = [
        _flow_run("r1", created=100.0, name="etl", state=State.COMPLETED),
        _flow_run("r2", created=300.0, name="report", state=State.FAILED),
        _flow_run("r3", created=200.0, name="etl", state=State.FAILED),
        _flow_run("r4", created=500.0, name="etl", state=State.RUNNING),
        _flow_run("r5", created=400.0, name="report", state=State.COMPLETED),
    ]
    random.Random(3).shuffle(runs)
    await store.write(WriteBatch(runs[:2], []))
    await store.write(WriteBatch(runs[2:], []))


async def _ids(runs: Awaitable[list[FlowRunRecord]]) -> list[str]:
    return [r.id for r in await runs]


@_case("runs: list_runs is newest first")
async def _list_runs_newest_first(store: Store) -> None:
    await _write_listing_runs(store)
    got = await _ids(store.list_runs())
    assert got == ["r4", "r5", "r2", "r3", "r1"], _differs(
        "list_runs() ids (created 500, 400, 300, 200, 100)", got, ["r4", "r5", "r2", "r3", "r1"]
    )


@_case("runs: list_runs filters by name and state")
async def _list_runs_filters(store: Store) -> None:
    await _write_listing_runs(store)
    checks: list[tuple[dict[str, Any], list[str]]] = [
        ({"name": "etl"}, ["r4", "r3", "r1"]),
        ({"state": "Failed"}, ["r2", "r3"]),
        ({"state": State.COMPLETED}, ["r5", "r1"]),
        ({"name": "report", "state": "Completed"}, ["r5"]),
        ({"name": "nope"}, []),
        ({"name": "etl", "state": "Cancelled"}, []),
    ]
    for kwargs, want in checks:
        got = await _ids(store.list_runs(**kwargs))
        assert got == want, _differs(f"ids of list_runs(**{kwargs})", got, want)


@_case("runs: list_runs returns at most `limit` runs")
async def _list_runs_limit(store: Store) -> None:
    await _write_listing_runs(store)
    got = await _ids(store.list_runs(limit=2))
    assert got == ["r4", "r5"], _differs("list_runs(limit=2)", got, ["r4", "r5"])
    got = await _ids(store.list_runs(limit=1, name="etl", state="Failed"))
    assert got == ["r3"], _differs("list_runs(limit=1, name='etl', state='Failed')", got, ["r3"])
    count = len(await store.list_runs(limit=1000))
    assert count == 5, _differs("len(list_runs(limit=1000)) of 5 runs", count, 5)


@_case("runs: list_runs returns 50 runs by default")
async def _list_runs_default_limit(store: Store) -> None:
    await store.write(
        WriteBatch([_flow_run(f"run{i:03d}", created=float(i)) for i in range(60)], [])
    )
    got = await _ids(store.list_runs())
    want = [f"run{i:03d}" for i in range(59, 9, -1)]
    assert got == want, _differs("list_runs() of 60 runs", got, want)


@_case("runs: list_runs with a limit below 1 is a ConfigurationError")
async def _list_runs_bad_limit(store: Store) -> None:
    await _write_listing_runs(store)
    for limit in (0, -1):
        error = await _raises(
            ConfigurationError, store.list_runs(limit=limit), f"list_runs(limit={limit})"
        )
        assert "limit" in str(error), f"the error should name `limit`: {error}"


# -- get_run ----------------------------------------------------------------------------


async def _write_ids(store: Store, *ids: str) -> None:
    await store.write(
        WriteBatch([_flow_run(run_id, created=float(n)) for n, run_id in enumerate(ids)], [])
    )


@_case("runs: get_run finds a run by its exact id")
async def _get_run_exact(store: Store) -> None:
    await _write_ids(store, "abc123", "abd456", "ffff00")
    run = await store.get_run("abd456")
    want = _flow_run("abd456", created=1.0)
    assert run == want, _differs("get_run('abd456')", run, want)


@_case("runs: get_run finds a run by a unique id prefix")
async def _get_run_prefix(store: Store) -> None:
    await _write_ids(store, "abc123", "abd456", "ffff00")
    for prefix, want in (("abc", "abc123"), ("f", "ffff00")):
        got = (await store.get_run(prefix)).id
        assert got == want, _differs(f"get_run({prefix!r}).id", got, want)


@_case("runs: get_run prefers an exact id over a longer id it prefixes")
async def _get_run_exact_wins(store: Store) -> None:
    await _write_ids(store, "abc", "abcdef")
    for asked, want in (("abc", "abc"), ("abcd", "abcdef")):
        got = (await store.get_run(asked)).id
        assert got == want, _differs(f"get_run({asked!r}).id", got, want)


@_case("runs: get_run of an ambiguous prefix is RunNotFound saying it matches several")
async def _get_run_ambiguous(store: Store) -> None:
    await _write_ids(store, "abc123", "abd456", "ffff00")
    error = await _raises(RunNotFound, store.get_run("ab"), "get_run('ab') matching 2 runs")
    message = str(error)
    assert "matches" in message, f"the message should say the prefix matches several: {message}"
    assert "'ab'" in message, f"the message should quote the prefix: {message}"
    assert "more characters" in message, f"the message should say what to do: {message}"


@_case("runs: get_run's ambiguous-prefix message does not understate the matches")
async def _get_run_ambiguous_count(store: Store) -> None:
    await _write_ids(store, "abc123", "abd456", "abe789", "ffff00")
    error = await _raises(RunNotFound, store.get_run("ab"), "get_run('ab') matching 3 runs")
    message = str(error)
    assert "matches" in message, f"the message should say the prefix matches several: {message}"
    count = re.search(r"matches (\d+) runs", message)
    # Saying "several" is fine; a number, if given, must be right (three runs match).
    assert count is None or count.group(1) == "3", f"three runs match, the message says: {message}"


@_case("runs: get_run of an unknown id is RunNotFound")
async def _get_run_unknown(store: Store) -> None:
    await _write_ids(store, "abc123", "abd456")
    for run_id in ("nope", "abc1234", "", "zz"):
        error = await _raises(RunNotFound, store.get_run(run_id), f"get_run({run_id!r})")
        assert "no run with id" in str(error), f"get_run({run_id!r}) said: {error}"


@_case("runs: get_run on an empty store is RunNotFound, a LookupError")
async def _get_run_empty(store: Store) -> None:
    await _raises(RunNotFound, store.get_run("abc"), "get_run('abc') of an empty store")
    await _raises(LookupError, store.get_run("abc"), "get_run('abc') of an empty store")


@_case("runs: get_run treats wildcard characters in a prefix literally")
async def _get_run_wildcards(store: Store) -> None:
    await _write_ids(store, "a_1", "ab2", "c%3", "cd4", "e\\5", "ef6")
    for prefix, want in (("a_", "a_1"), ("c%", "c%3"), ("e\\", "e\\5")):
        got = (await store.get_run(prefix)).id
        assert got == want, _differs(f"get_run({prefix!r}).id", got, want)
    for prefix in ("_", "%"):
        error = await _raises(RunNotFound, store.get_run(prefix), f"get_run({prefix!r})")
        assert "no run with id" in str(error), f"get_run({prefix!r}) said: {error}"


# -- task runs --------------------------------------------------------------------------


async def _write_task_runs(store: Store, run_id: str, seqs: list[int]) -> None:
    shuffled = list(seqs)
    random.Random(7).shuffle(shuffled)
    await store.write(WriteBatch([_flow_run(run_id, state=State.RUNNING)], []))
    # Several batches, out of seq order, as the recorder writes them.
    for start in range(0, len(shuffled), 4):
        await store.write(
            WriteBatch([], [_task_run(run_id, s) for s in shuffled[start : start + 4]])
        )


async def _seqs(tasks: Awaitable[list[TaskRunRecord]]) -> list[int]:
    return [t.seq for t in await tasks]


@_case("task runs: list_task_runs is in seq order and per run")
async def _list_task_runs_order(store: Store) -> None:
    await _write_task_runs(store, "run1", list(range(10)))
    await _write_task_runs(store, "run2", list(range(3)))
    got = await _seqs(store.list_task_runs("run1"))
    assert got == list(range(10)), _differs("seqs of run1", got, list(range(10)))
    got = await _seqs(store.list_task_runs("run2"))
    assert got == [0, 1, 2], _differs("seqs of run2", got, [0, 1, 2])
    owners = {t.run_id for t in await store.list_task_runs("run1")}
    assert owners == {"run1"}, _differs("run ids of run1's task runs", owners, {"run1"})
    unknown = await store.list_task_runs("unknown")
    assert unknown == [], _differs("list_task_runs of an unknown run", unknown, [])


@_case("task runs: list_task_runs pages with offset and limit")
async def _list_task_runs_pages(store: Store) -> None:
    await _write_task_runs(store, "run1", list(range(10)))
    checks: list[tuple[dict[str, Any], list[int]]] = [
        ({"limit": 3}, [0, 1, 2]),
        ({"offset": 3, "limit": 3}, [3, 4, 5]),
        ({"offset": 8}, [8, 9]),
        ({"offset": 8, "limit": 5}, [8, 9]),
        ({"offset": 10}, []),
        ({"offset": 50, "limit": 5}, []),
    ]
    for kwargs, want in checks:
        got = await _seqs(store.list_task_runs("run1", **kwargs))
        assert got == want, _differs(f"seqs of list_task_runs('run1', **{kwargs})", got, want)
    pages = [
        await _seqs(store.list_task_runs("run1", offset=offset, limit=4))
        for offset in range(0, 10, 4)
    ]
    want_pages = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert pages == want_pages, _differs("pages of 4", pages, want_pages)


@_case("task runs: offset counts rows, not seqs, when seqs have gaps")
async def _list_task_runs_gaps(store: Store) -> None:
    # Gaps are normal in a stored run: a submitted task is recorded only once it
    # starts, and a crashed process leaves whatever was flushed.
    await _write_task_runs(store, "run1", [0, 1, 2, 5, 7, 9])
    pages = [
        await _seqs(store.list_task_runs("run1", offset=offset, limit=2))
        for offset in range(0, 6, 2)
    ]
    # Paging shows every task run once (not 5 twice and 9 never).
    want = [[0, 1], [2, 5], [7, 9]]
    assert pages == want, _differs("pages of 2 over seqs 0 1 2 5 7 9", pages, want)
    got = await _seqs(store.list_task_runs("run1", offset=4))
    assert got == [7, 9], _differs("list_task_runs(offset=4)", got, [7, 9])
    got = await _seqs(store.list_task_runs("run1", offset=6))
    assert got == [], _differs("list_task_runs(offset=6)", got, [])


@_case("task runs: list_task_runs filters by state, paging within the filter")
async def _list_task_runs_state(store: Store) -> None:
    await store.write(WriteBatch([_flow_run("run1", state=State.RUNNING), _flow_run("run2")], []))
    states = [State.COMPLETED, State.FAILED, State.COMPLETED, State.RUNNING, State.COMPLETED]
    states += [State.FAILED, State.COMPLETED]
    await store.write(WriteBatch([], [_task_run("run1", n, state=s) for n, s in enumerate(states)]))
    await store.write(WriteBatch([], [_task_run("run2", 0, state=State.FAILED)]))
    checks: list[tuple[dict[str, Any], list[int]]] = [
        ({"state": "Completed"}, [0, 2, 4, 6]),
        ({"state": State.FAILED}, [1, 5]),
        ({"state": "Running"}, [3]),
        ({"state": "Cancelled"}, []),
        ({"state": "Completed", "offset": 1, "limit": 2}, [2, 4]),
        ({"state": "Completed", "offset": 3}, [6]),
    ]
    for kwargs, want in checks:
        got = await _seqs(store.list_task_runs("run1", **kwargs))
        assert got == want, _differs(f"seqs of list_task_runs('run1', **{kwargs})", got, want)


@_case("task runs: count_task_runs counts by state")
async def _count_task_runs(store: Store) -> None:
    await store.write(WriteBatch([_flow_run("run1", state=State.RUNNING), _flow_run("run2")], []))
    states = [State.COMPLETED] * 3 + [State.FAILED, State.RUNNING, State.RUNNING, State.PENDING]
    await store.write(WriteBatch([], [_task_run("run1", n, state=s) for n, s in enumerate(states)]))
    await store.write(WriteBatch([], [_task_run("run2", 0, state=State.CANCELLED)]))
    counts = await store.count_task_runs("run1")
    want = {"Completed": 3, "Failed": 1, "Running": 2, "Pending": 1}
    assert counts == want, _differs("count_task_runs('run1')", counts, want)
    assert counts[State.COMPLETED] == 3, "State is a str enum: counts[State.COMPLETED] must work"
    counts = await store.count_task_runs("run2")
    assert counts == {"Cancelled": 1}, _differs("count_task_runs('run2')", counts, {"Cancelled": 1})
    counts = await store.count_task_runs("unknown")
    assert counts == {}, _differs("count_task_runs of an unknown run", counts, {})


@_case("task runs: count_task_runs follows upserts")
async def _count_task_runs_upserts(store: Store) -> None:
    await store.write(WriteBatch([_flow_run("run1", state=State.RUNNING)], []))
    records = [_task_run("run1", n, state=State.RUNNING) for n in range(4)]
    await store.write(WriteBatch([], records))
    counts = await store.count_task_runs("run1")
    assert counts == {"Running": 4}, _differs("count_task_runs", counts, {"Running": 4})
    for record in records[:3]:
        record.state = State.COMPLETED
    await store.write(WriteBatch([], records))
    counts = await store.count_task_runs("run1")
    want = {"Completed": 3, "Running": 1}
    assert counts == want, _differs("count_task_runs after 3 completed", counts, want)


# -- child runs -------------------------------------------------------------------------


@_case("runs: child_runs lists the subflow runs of a run, oldest first")
async def _child_runs(store: Store) -> None:
    await store.write(
        WriteBatch(
            [
                _flow_run("parent", created=1.0),
                _flow_run("late-child", created=5.0, parent_run_id="parent", parent_task_seq=2),
                _flow_run("early-child", created=3.0, parent_run_id="parent", parent_task_seq=0),
                _flow_run("grandchild", created=4.0, parent_run_id="early-child"),
                _flow_run("unrelated", created=2.0, parent_run_id="other"),
            ],
            [],
        ),
    )
    children = await store.child_runs("parent")
    got = [r.id for r in children]
    assert got == ["early-child", "late-child"], _differs(
        "child_runs('parent')", got, ["early-child", "late-child"]
    )
    want = _flow_run("early-child", created=3.0, parent_run_id="parent", parent_task_seq=0)
    assert children[0] == want, _differs("the first child run", children[0], want)
    got = await _ids(store.child_runs("early-child"))
    assert got == ["grandchild"], _differs("child_runs('early-child')", got, ["grandchild"])
    for run_id in ("grandchild", "unknown"):
        got = await _ids(store.child_runs(run_id))
        assert got == [], _differs(f"child_runs({run_id!r})", got, [])


# -- cache entries ----------------------------------------------------------------------


@_case("cache: an entry keeps every field through a write and a read")
async def _cache_round_trip(store: Store) -> None:
    missing = await store.get_cache("k" * 64)
    assert missing is None, _differs("get_cache of a key never written", missing, None)
    minimal = _entry("minimal", 2.0)
    await store.write(WriteBatch(cache_entries=[_full_cache_entry(), minimal]))
    got = await store.get_cache("k" * 64)
    assert got == _full_cache_entry(), _differs("get_cache", got, _full_cache_entry())
    got = await store.get_cache("minimal")
    want = _entry("minimal", 2.0)
    assert got == want, _differs("get_cache of an entry with only required fields", got, want)
    assert got is not None and got.expires is None and got.result is None, (
        f"expires and result None must stay None: {got!r}"
    )


@_case("cache: get_cache returns an expired entry too")
async def _cache_expired(store: Store) -> None:
    old = _entry("old", 1.0, expires=2.0, result=b"v")
    await store.write(WriteBatch(cache_entries=[old]))
    got = await store.get_cache("old")
    assert got == old, _differs("get_cache of an entry that expired long ago", got, old)
    listed = await store.list_cache()
    assert listed == [old], _differs("list_cache with an expired entry", listed, [old])


@_case("cache: get_cache_nowait answers as get_cache does, or raises WouldBlock")
async def _cache_nowait(store: Store) -> None:
    entries = [_entry("a", 1.0, result=b"a"), _entry("b", 2.0, result_ref="ef" * 32)]
    await store.write(WriteBatch(cache_entries=entries))
    for key in ("a", "b", "missing"):
        want = await store.get_cache(key)
        try:
            got = store.get_cache_nowait(key)
        except anyio.WouldBlock:
            continue  # allowed: the engine then awaits get_cache
        assert got == want, _differs(f"get_cache_nowait({key!r}) against get_cache", got, want)
    await store.write(WriteBatch(cache_entries=[_entry("c", 3.0, result=b"c")]))
    try:
        got = store.get_cache_nowait("c")
    except anyio.WouldBlock:
        return
    want_c = _entry("c", 3.0, result=b"c")
    assert got == want_c, _differs(
        "get_cache_nowait of an entry this handle has just written", got, want_c
    )


@_case("cache: list_cache is newest first and filters by task")
async def _list_cache(store: Store) -> None:
    entries = [
        _entry("k1", 1.0, "fetch"),
        _entry("k3", 3.0, "parse"),
        _entry("k2", 2.0, "fetch"),
        _entry("k5", 5.0, "fetch"),
        _entry("k4", 4.0, "parse"),
    ]
    await store.write(WriteBatch(cache_entries=entries[:2]))
    await store.write(WriteBatch(cache_entries=entries[2:]))
    keys = [e.key for e in await store.list_cache()]
    assert keys == ["k5", "k4", "k3", "k2", "k1"], _differs(
        "list_cache() keys (created 5, 4, 3, 2, 1)", keys, ["k5", "k4", "k3", "k2", "k1"]
    )
    keys = [e.key for e in await store.list_cache(task_name="fetch")]
    assert keys == ["k5", "k2", "k1"], _differs(
        "list_cache(task_name='fetch')", keys, ["k5", "k2", "k1"]
    )
    keys = [e.key for e in await store.list_cache(task_name="nope")]
    assert keys == [], _differs("list_cache(task_name='nope')", keys, [])


@_case("cache: delete_cache removes those entries only")
async def _delete_cache(store: Store) -> None:
    await store.write(WriteBatch(cache_entries=[_entry(k, float(n)) for n, k in enumerate("abcd")]))
    await store.delete_cache(["b", "d", "never-written"])
    await store.delete_cache([])
    keys = sorted(e.key for e in await store.list_cache())
    assert keys == ["a", "c"], _differs(
        "keys left after deleting b, d and an unknown key", keys, ["a", "c"]
    )
    for key in ("b", "d"):
        got = await store.get_cache(key)
        assert got is None, _differs(f"get_cache({key!r}) after deleting it", got, None)
    got = await store.get_cache("a")
    assert got == _entry("a", 0.0), _differs("get_cache('a'), not deleted", got, _entry("a", 0.0))


@_case("cache: writing an entry with the same key replaces it")
async def _cache_replace(store: Store) -> None:
    await store.write(WriteBatch(cache_entries=[_entry("k", 1.0, "t", expires=5.0, result=b"old")]))
    new = _entry("k", 2.0, "t", result_ref="ab" * 32, run_id="run2", seq=3)
    await store.write(WriteBatch(cache_entries=[new]))
    got = await store.get_cache("k")
    assert got == new, _differs(
        "get_cache of a rewritten key (no field of the old entry stays)", got, new
    )
    listed = await store.list_cache()
    assert listed == [new], _differs("list_cache after rewriting the key", listed, [new])


@_case("cache: result_refs holds the refs of task runs and cache entries")
async def _result_refs(store: Store) -> None:
    refs = await store.result_refs()
    assert refs == set(), _differs("result_refs of an empty store", refs, set())
    r1, r2, r3 = "a1" * 32, "b2" * 32, "c3" * 32
    await store.write(
        WriteBatch(
            [_flow_run("run1")],
            [
                _task_run("run1", 0, result_ref=r1),
                _task_run("run1", 1, result=b"inline"),
                _task_run("run1", 2, result_ref=r3),
            ],
            [
                _entry("k1", 1.0, result_ref=r2),
                _entry("k2", 2.0, result=b"inline"),
                _entry("k3", 3.0, result_ref=r3),
            ],
        )
    )
    refs = await store.result_refs()
    assert refs == {r1, r2, r3}, _differs("result_refs", refs, {r1, r2, r3})
    await store.delete_cache(["k1", "k3"])
    refs = await store.result_refs()
    # r3 is still the result of task run 2; r2 belonged to the deleted entry only.
    assert refs == {r1, r3}, _differs(
        "result_refs after deleting entries k1 and k3", refs, {r1, r3}
    )


# -- spans ------------------------------------------------------------------------------


_T1, _T2, _T3, _T9 = ("1" * 32, "2" * 32, "3" * 32, "9" * 32)
_S = 1_000_000_000  # one second in nanoseconds


@_case("spans: a span keeps every field through a write and a read")
async def _span_round_trip(store: Store) -> None:
    minimal = _span(_full_span().trace_id, "2" * 16, 5)
    await store.write(WriteBatch(spans=[_full_span(), minimal]))
    got = await store.list_spans(_full_span().trace_id)
    want = [_span(_full_span().trace_id, "2" * 16, 5), _full_span()]
    assert got == want, _differs("list_spans of the trace", got, want)


@_case("spans: list_spans lists the spans of one trace, by start time")
async def _list_spans(store: Store) -> None:
    spans = [
        _span(_T1, "a" * 16, 30 * _S),
        _span(_T2, "b" * 16, 5 * _S),
        _span(_T1, "c" * 16, 10 * _S),
        _span(_T1, "d" * 16, 20 * _S, parent_id="c" * 16),
        _span(_T2, "e" * 16, 1 * _S),
    ]
    await store.write(WriteBatch(spans=spans[:3]))
    await store.write(WriteBatch(spans=spans[3:]))
    got = [(s.span_id[0], s.start // _S) for s in await store.list_spans(_T1)]
    assert got == [("c", 10), ("d", 20), ("a", 30)], _differs(
        "list_spans(T1) as (span, start s)", got, [("c", 10), ("d", 20), ("a", 30)]
    )
    got = [(s.span_id[0], s.start // _S) for s in await store.list_spans(_T2)]
    assert got == [("e", 1), ("b", 5)], _differs("list_spans(T2)", got, [("e", 1), ("b", 5)])
    unknown = await store.list_spans(_T9)
    assert unknown == [], _differs("list_spans of an unknown trace", unknown, [])


async def _span_ids(store: Store, *traces: str) -> list[str]:
    ids = []
    for trace in traces:
        ids += [s.span_id for s in await store.list_spans(trace)]
    return sorted(ids)


@_case("spans: prune_spans(before=) deletes spans started earlier and says how many")
async def _prune_spans_before(store: Store) -> None:
    await store.write(
        WriteBatch(
            spans=[
                _span(_T1, "a" * 16, 1_000 * _S),
                _span(_T1, "b" * 16, 2_000 * _S),  # starts exactly at `before`: kept
                _span(_T1, "c" * 16, 3_000 * _S),
                _span(_T2, "d" * 16, 500 * _S),
                _span(_T2, "e" * 16, 2_500 * _S),
            ]
        )
    )
    deleted = await store.prune_spans()
    assert deleted == 0, _differs("prune_spans() with no criterion", deleted, 0)
    deleted = await store.prune_spans(before=2_000.0)
    assert deleted == 2, _differs(
        "prune_spans(before=2000.0) count (spans at 1000 and 500 s)", deleted, 2
    )
    left = await _span_ids(store, _T1, _T2)
    want = ["b" * 16, "c" * 16, "e" * 16]
    assert left == want, _differs("spans left (a span starting at `before` stays)", left, want)
    deleted = await store.prune_spans(before=2_000.0)
    assert deleted == 0, _differs("prune_spans(before=2000.0) again", deleted, 0)


async def _write_traced_runs(store: Store) -> None:
    await store.write(
        WriteBatch(
            [
                _flow_run("r1", created=1.0, trace_id=_T1),
                _flow_run("r3", created=3.0, trace_id=_T3),
                _flow_run("r2", created=2.0, trace_id=_T2),
                _flow_run("child", created=4.0, trace_id=_T3, parent_run_id="r3"),
            ],
            spans=[
                _span(_T1, "1a" * 8, 10 * _S),
                _span(_T1, "1b" * 8, 40 * _S),
                _span(_T2, "2a" * 8, 20 * _S),
                _span(_T3, "3a" * 8, 30 * _S),
                _span(_T3, "3b" * 8, 5 * _S, run_id="child"),
                _span(_T9, "9a" * 8, 50 * _S),  # of no run
            ],
        )
    )


@_case("spans: prune_spans(keep_runs=) keeps the spans of the newest top-level runs")
async def _prune_spans_keep_runs(store: Store) -> None:
    await _write_traced_runs(store)
    deleted = await store.prune_spans(keep_runs=2)
    assert deleted == 3, _differs(
        "prune_spans(keep_runs=2) count (runs r3 and r2 kept: T1's 2 spans and T9's go)",
        deleted,
        3,
    )
    left = await _span_ids(store, _T1, _T2, _T3, _T9)
    want = sorted(["2a" * 8, "3a" * 8, "3b" * 8])
    assert left == want, _differs(
        "spans left (a subflow's span is of its top-level run)", left, want
    )


@_case("spans: prune_spans with before= and keep_runs= deletes spans matching both")
async def _prune_spans_both(store: Store) -> None:
    await _write_traced_runs(store)
    deleted = await store.prune_spans(before=25.0, keep_runs=1)
    # Not of run r3 (the newest), and started before 25 s: T1's at 10 s, T2's at 20 s.
    assert deleted == 2, _differs("prune_spans(before=25.0, keep_runs=1) count", deleted, 2)
    left = await _span_ids(store, _T1, _T2, _T3, _T9)
    want = sorted(["1b" * 8, "3a" * 8, "3b" * 8, "9a" * 8])
    assert left == want, _differs("spans left", left, want)


# -- leases of shared limits ------------------------------------------------------------

_FAR = 1e12  # an expiry that never comes


async def _lease(
    store: Store,
    name: str,
    capacity: int,
    holder: str,
    want: int,
    *,
    now: float,
    since: float | None = None,
    expires: float = _FAR,
) -> tuple[list[str], int]:
    """``lease_slots`` with the waiting row ``<name>/<holder>``, waiting since ``since``."""
    return await store.lease_slots(
        name,
        capacity,
        holder,
        f"{name}/{holder}/waiting",
        want,
        now if since is None else since,
        now,
        expires,
    )


async def _lease_rows(store: Store) -> list[tuple[str, str, float, int]]:
    """``(name, holder, expires, waiting)`` of every row of ``list_leases``, sorted."""
    rows = await store.list_leases()
    for row in rows:
        assert len(row) == 6 and isinstance(row[2], str) and isinstance(row[3], int), (
            f"list_leases rows are (name, holder, host: str, pid: int, expires, waiting): {row!r}"
        )
    return sorted(
        (name, holder, float(expires), int(waiting))
        for name, holder, _, _, expires, waiting in rows
    )


@_case("leases: a limit of capacity N grants at most N slots across holders")
async def _lease_capacity(store: Store) -> None:
    a, others = await _lease(store, "db", 3, "A", 2, now=100.0)
    assert len(a) == 2 and others == 0, _differs(
        "A asks for 2 of 3: (leases, others)", (a, others), "2 leases, 0"
    )
    b, others = await _lease(store, "db", 3, "B", 2, now=101.0)
    assert len(b) == 1 and others == 0, _differs(
        "B asks for 2 of the 1 left", (b, others), "1 lease, 0"
    )
    c, others = await _lease(store, "db", 3, "C", 1, now=102.0)
    assert c == [], _differs("C asks for 1 of a full limit", c, [])
    assert others == 1, _differs("C: how many slots other holders wait for (B: 1)", others, 1)
    again, _ = await _lease(store, "db", 3, "A", 1, now=103.0, since=103.0)
    assert again == [], _differs("A asks for one more of a full limit", again, [])
    ids = a + b
    assert all(isinstance(i, str) and i for i in ids), (
        f"lease ids must be non-empty strings: {ids!r}"
    )
    assert len(set(ids)) == 3, f"lease ids must be distinct: {ids!r}"
    other, _ = await _lease(store, "other", 1, "C", 1, now=104.0)
    assert len(other) == 1, _differs(
        "C asks for 1 of another limit (limits are apart)", other, "1 lease"
    )
    rows = await _lease_rows(store)
    want = sorted(
        [
            ("db", "A", _FAR, 0),
            ("db", "A", _FAR, 0),
            ("db", "B", _FAR, 0),
            ("db", "B", _FAR, 1),
            ("db", "C", _FAR, 1),
            ("db", "A", _FAR, 1),
            ("other", "C", _FAR, 0),
        ]
    )
    assert rows == want, _differs("list_leases as (name, holder, expires, waiting)", rows, want)


@_case("leases: what cannot be granted is recorded as waiting and granted later")
async def _lease_waiting(store: Store) -> None:
    a, _ = await _lease(store, "db", 2, "A", 2, now=10.0)
    assert len(a) == 2, _differs("A asks for both slots", a, "2 leases")
    b, others = await _lease(store, "db", 2, "B", 2, now=11.0)
    assert b == [] and others == 0, _differs("B asks for 2 of a full limit", (b, others), ([], 0))
    rows = await _lease_rows(store)
    assert ("db", "B", _FAR, 2) in rows, f"B's waiting row for 2 slots is missing: {rows!r}"
    # A asks again: B's 2 waiting slots are reported to A.
    more, others = await _lease(store, "db", 2, "A", 1, now=12.0)
    assert more == [] and others == 2, _differs(
        "A asks for 1 more: (leases, slots others wait for)", (more, others), ([], 2)
    )
    await store.release_lease("db/A/waiting")  # A stops waiting: its waiting row goes
    rows = await _lease_rows(store)
    assert ("db", "A", _FAR, 1) not in rows, f"release_lease of A's waiting row left it: {rows!r}"

    await store.release_lease(a[0])
    b1, _ = await _lease(store, "db", 2, "B", 2, now=13.0, since=11.0)
    assert len(b1) == 1, _differs("B asks again after A gave one back", b1, "1 lease")
    rows = await _lease_rows(store)
    want = [("db", "A", _FAR, 0), ("db", "B", _FAR, 0), ("db", "B", _FAR, 1)]
    assert rows == want, _differs("rows: B's waiting row now asks for 1", rows, want)

    await store.release_lease(a[1])
    b2, _ = await _lease(store, "db", 2, "B", 1, now=14.0, since=11.0)
    assert len(b2) == 1, _differs("B asks for its last slot", b2, "1 lease")
    rows = await _lease_rows(store)
    want = [("db", "B", _FAR, 0), ("db", "B", _FAR, 0)]
    assert rows == want, _differs("rows once B has all it asked for (no waiting row)", rows, want)


@_case("leases: a free slot goes to the oldest waiter of any holder")
async def _lease_oldest_first(store: Store) -> None:
    (held,), _ = await _lease(store, "db", 1, "A", 1, now=1.0)
    b, _ = await _lease(store, "db", 1, "B", 1, now=10.0)  # waits since 10
    c, _ = await _lease(store, "db", 1, "C", 1, now=20.0)  # waits since 20
    assert b == [] and c == [], _differs("B and C ask for a held slot", (b, c), ([], []))
    await store.release_lease(held)
    # The free slot is B's: C, younger, is refused even though it asks first, and so is
    # A asking anew (since 30), though it just gave the slot back.
    c, _ = await _lease(store, "db", 1, "C", 1, now=30.0, since=20.0)
    assert c == [], _differs("C (waiting since 20) asks before B (since 10)", c, [])
    a, _ = await _lease(store, "db", 1, "A", 1, now=30.0)
    assert a == [], _differs("A asks anew (since 30) while B and C wait", a, [])
    await store.release_lease("db/A/waiting")
    b, _ = await _lease(store, "db", 1, "B", 1, now=31.0, since=10.0)
    assert len(b) == 1, _differs("B, the oldest waiter, asks", b, "1 lease")
    c, _ = await _lease(store, "db", 1, "C", 1, now=32.0, since=20.0)
    assert c == [], _differs("C asks while B holds the slot", c, [])
    await store.release_lease(b[0])
    c, _ = await _lease(store, "db", 1, "C", 1, now=33.0, since=20.0)
    assert len(c) == 1, _differs("C asks once B gave the slot back", c, "1 lease")
    rows = await _lease_rows(store)
    assert rows == [("db", "C", _FAR, 0)], _differs("rows at the end", rows, [("db", "C", _FAR, 0)])


@_case("leases: release_lease frees a slot, and ignores unknown ids")
async def _lease_release(store: Store) -> None:
    (held,), _ = await _lease(store, "db", 1, "A", 1, now=1.0)
    b, _ = await _lease(store, "db", 1, "B", 1, now=2.0)
    assert b == [], _differs("B asks for the held slot", b, [])
    await store.release_lease("no-such-lease")
    b, _ = await _lease(store, "db", 1, "B", 1, now=3.0, since=2.0)
    assert b == [], _differs("B asks after an unknown id was released", b, [])
    await store.release_lease(held)
    await store.release_lease(held)  # twice: ignored
    b, _ = await _lease(store, "db", 1, "B", 1, now=4.0, since=2.0)
    assert len(b) == 1, _differs("B asks after A released its lease", b, "1 lease")
    rows = await _lease_rows(store)
    assert rows == [("db", "B", _FAR, 0)], _differs("rows", rows, [("db", "B", _FAR, 0)])


@_case("leases: expired leases and waiting rows are reclaimed by the next lease_slots")
async def _lease_expiry(store: Store) -> None:
    (_held,), _ = await _lease(store, "db", 1, "A", 1, now=100.0, expires=150.0)
    b, _ = await _lease(store, "db", 1, "B", 1, now=149.0, since=149.0)
    assert b == [], _differs("B asks at 149, before A's lease expires at 150", b, [])
    rows = await _lease_rows(store)
    assert ("db", "A", 150.0, 0) in rows, f"A's lease (expires 150) is not listed: {rows!r}"
    b, _ = await _lease(store, "db", 1, "B", 1, now=150.0, since=149.0)
    assert len(b) == 1, _differs("B asks at 150 (A's lease expires <= now)", b, "1 lease")
    rows = await _lease_rows(store)
    assert rows == [("db", "B", _FAR, 0)], _differs(
        "rows: A's expired lease is gone", rows, [("db", "B", _FAR, 0)]
    )

    # A waiting row that expired (its engine died) holds nobody back.
    (x,), _ = await _lease(store, "w", 1, "X", 1, now=1.0)
    y, _ = await _lease(store, "w", 1, "Y", 1, now=10.0, expires=50.0)
    assert y == [], _differs("Y asks for a held slot", y, [])
    await store.release_lease(x)
    z, _ = await _lease(store, "w", 1, "Z", 1, now=60.0, since=55.0)
    assert len(z) == 1, _differs(
        "Z (since 55) asks at 60; Y (since 10) waits, but its row expired at 50", z, "1 lease"
    )
    # list_leases shows rows whatever their expiry: nothing reclaims limit "z" here.
    await _lease(store, "z", 1, "Q", 1, now=1.0, expires=5.0)
    rows = await _lease_rows(store)
    assert ("z", "Q", 5.0, 0) in rows, f"an expired, unreclaimed lease should be listed: {rows!r}"
    assert not any(r[0] == "w" and r[1] == "Y" for r in rows), f"Y's expired row stayed: {rows!r}"


@_case("leases: renew_leases pushes the expiry of one holder's rows only")
async def _lease_renew(store: Store) -> None:
    a, b = "host:1", "host:12"  # one holder name is a prefix of the other
    for name, holder in (("db", a), ("db", b), ("w", b)):
        got, _ = await _lease(
            store, name, 2 if name == "db" else 1, holder, 1, now=100.0, expires=150.0
        )
        assert len(got) == 1, _differs(
            f"{holder} asks for a free slot of limit {name}", got, "1 lease"
        )
    waiting, _ = await _lease(store, "w", 1, a, 1, now=101.0, expires=150.0)
    assert waiting == [], _differs(f"{a} asks for the held slot of limit w", waiting, [])
    await store.renew_leases(a, 500.0)
    rows = await _lease_rows(store)
    want = sorted(
        [("db", a, 500.0, 0), ("db", b, 150.0, 0), ("w", b, 150.0, 0), ("w", a, 500.0, 1)]
    )
    assert rows == want, _differs(f"rows after renew_leases({a!r}, 500.0)", rows, want)
    got, _ = await _lease(store, "db", 2, "C", 2, now=200.0)
    assert len(got) == 1, _differs(
        f"C asks for 2 at 200: {b}'s lease expired, {a}'s was renewed", got, "1 lease"
    )
    got, _ = await _lease(store, "w", 1, "C", 1, now=200.0)
    assert got == [], _differs(
        f"C asks for limit w at 200: {a}'s renewed waiting row is older", got, []
    )
    got, _ = await _lease(store, "w", 1, a, 1, now=201.0, since=101.0, expires=500.0)
    assert len(got) == 1, _differs(f"{a}, the oldest waiter, asks for limit w", got, "1 lease")


@_case("leases: list_leases shows held leases and waiting rows")
async def _list_leases(store: Store) -> None:
    rows = await store.list_leases()
    assert rows == [], _differs("list_leases of an empty store", rows, [])
    await _lease(store, "api", 2, "A", 2, now=1.0, expires=31.0)
    await _lease(store, "api", 2, "B", 3, now=2.0, expires=32.0)
    await _lease(store, "db", 5, "B", 1, now=3.0, expires=33.0)
    got = await _lease_rows(store)
    want = [
        ("api", "A", 31.0, 0),
        ("api", "A", 31.0, 0),
        ("api", "B", 32.0, 3),
        ("db", "B", 33.0, 0),
    ]
    assert got == want, _differs("list_leases as (name, holder, expires, waiting)", got, want)


# -- shared rates -----------------------------------------------------------------------


async def _reserve(
    store: Store, name: str, interval: float, tolerance: float, *nows: float
) -> list[float]:
    return [await store.reserve_rate(name, interval, tolerance, now) for now in nows]


@_case("rates: with no tolerance, uses are spaced by the interval")
async def _rate_spacing(store: Store) -> None:
    got = await _reserve(store, "api", 0.25, 0.0, 100.0, 100.0, 100.0, 100.6)
    want = [100.0, 100.25, 100.5, 100.75]
    assert _all_close(got, want), _differs(
        "starts of 4 uses at 4 a second, asked at 100 (and 100.6)", got, want
    )
    got = await _reserve(store, "api", 0.25, 0.0, 200.0, 200.1)
    want = [200.0, 200.25]
    assert _all_close(got, want), _differs("starts after an idle spell", got, want)
    got = await _reserve(store, "other", 1.0, 0.0, 100.0)
    assert _all_close(got, [100.0]), _differs("another limit is apart", got, [100.0])


@_case("rates: a burst tolerance lets the first uses start at once")
async def _rate_burst(store: Store) -> None:
    # 10 a second with a burst of 3: tolerance = (3 - 1) * interval.
    got = await _reserve(store, "api", 0.1, 0.2, *[100.0] * 10)
    want = [100.0] * 3 + [100.0 + 0.1 * k for k in range(1, 8)]
    assert _all_close(got, want), _differs("starts of 10 uses asked at once", got, want)
    # After an idle second the burst is back, but not more than the burst.
    got = await _reserve(store, "api", 0.1, 0.2, *[102.0] * 4)
    want = [102.0, 102.0, 102.0, 102.1]
    assert _all_close(got, want), _differs("starts of 4 uses after an idle spell", got, want)


@_handles_case("rates: two handles on one database share the reservations")
async def _rate_shared(store: Store, open_store: OpenStore) -> None:
    other = await open_store()
    got = []
    for i in range(10):
        handle = other if i % 2 else store
        got.append(await handle.reserve_rate("api", 0.1, 0.2, 100.0))
    want = [100.0] * 3 + [100.0 + 0.1 * k for k in range(1, 8)]
    assert _all_close(got, want), _differs(
        "starts of 10 uses, asked in turn by two handles", got, want
    )
    rates = [name for name, _ in await other.list_rates()]
    assert rates == ["api"], _differs("list_rates of the other handle", rates, ["api"])


@_case("rates: list_rates shows each limit with the time it is booked up to")
async def _list_rates(store: Store) -> None:
    rates = await store.list_rates()
    assert rates == [], _differs("list_rates of an empty store", rates, [])
    await _reserve(store, "b", 0.5, 0.0, 10.0, 10.0)
    await _reserve(store, "a", 2.0, 1.0, 20.0)
    got = sorted(await store.list_rates())
    want = [("a", 22.0), ("b", 11.0)]
    assert [n for n, _ in got] == ["a", "b"] and _all_close([t for _, t in got], [22.0, 11.0]), (
        _differs("list_rates as (name, tat)", got, want)
    )


# -- blobs ------------------------------------------------------------------------------


def _ref(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def _blobs(store: Store) -> BlobStore | None:
    blobs = store.blobs
    assert blobs is None or isinstance(blobs, BlobStore), (
        f"store.blobs is not a BlobStore: {blobs!r}"
    )
    return blobs


@_case("blobs: put then get gives the content back, and size its length")
async def _blob_round_trip(store: Store) -> None:
    blobs = _blobs(store)
    if blobs is None:
        return  # results stay inline in the records
    big = bytes(range(256)) * 400
    small = "ünïcode ✓".encode()
    await blobs.put({_ref(big): big, _ref(small): small})
    await blobs.put({_ref(small): small})  # again: the content decides the name
    for blob in (big, small):
        got = await blobs.get(_ref(blob))
        assert got == blob, f"get of a {len(blob)}-byte blob gave back {len(got)} other bytes"
        size = await blobs.size(_ref(blob))
        assert size == len(blob), _differs("size", size, len(blob))
    missing = await blobs.size(_ref(b"never stored"))
    assert missing is None, _differs("size of a blob never stored", missing, None)


@_case("blobs: get of an unknown or altered blob raises ResultUnreadable")
async def _blob_unreadable(store: Store) -> None:
    blobs = _blobs(store)
    if blobs is None:
        return
    await _raises(ResultUnreadable, blobs.get(_ref(b"never stored")), "get of a blob never stored")
    for bad in ("../../etc/passwd", "not-a-ref", ""):
        await _raises(ResultUnreadable, blobs.get(bad), f"get({bad!r})")
        size = await blobs.size(bad)
        assert size is None, _differs(f"size({bad!r})", size, None)
    # A blob whose content does not match its reference (as if altered where it is kept).
    claimed = _ref(b"the original content")
    try:
        await blobs.put({claimed: b"something else"})
    except (FlowcoreError, ValueError):
        return  # refused at once: fine too
    await _raises(ResultUnreadable, blobs.get(claimed), "get of a blob that does not match its ref")


@_case("blobs: prune keeps referenced and young blobs, and says how many it deleted")
async def _blob_prune(store: Store) -> None:
    blobs = _blobs(store)
    if blobs is None:
        return
    kept, young, old = b"referenced", b"unreferenced 1", b"unreferenced 2"
    await blobs.put({_ref(b): b for b in (kept, young, old)})
    deleted = await blobs.prune(set(), grace=3600.0)
    assert deleted == 0, _differs("prune(set(), grace=3600) of blobs just put", deleted, 0)
    for blob in (kept, young, old):
        got = await blobs.get(_ref(blob))
        assert got == blob, f"a young blob went missing after prune: {blob!r}"
    deleted = await blobs.prune({_ref(kept)}, grace=0.0)
    assert deleted == 2, _differs("prune({kept}, grace=0) count", deleted, 2)
    got = await blobs.get(_ref(kept))
    assert got == kept, _differs("the referenced blob after prune", got, kept)
    for blob in (young, old):
        await _raises(ResultUnreadable, blobs.get(_ref(blob)), f"get of pruned blob {blob!r}")
        size = await blobs.size(_ref(blob))
        assert size is None, _differs(f"size of pruned blob {blob!r}", size, None)


# -- two handles at once ----------------------------------------------------------------


@_handles_case("concurrency: two handles writing different runs at once lose nothing")
async def _concurrent_writes(store: Store, open_store: OpenStore) -> None:
    other = await open_store()

    async def write_runs(handle: Store, prefix: str) -> None:
        for i in range(20):
            run_id = f"{prefix}-{i:02d}"
            run = _flow_run(run_id, created=float(i), state=State.RUNNING)
            tasks = [_task_run(run_id, seq, state=State.RUNNING) for seq in range(5)]
            await handle.write(WriteBatch([run], tasks))
            for task in tasks:
                task.state = State.COMPLETED
            run.state = State.COMPLETED
            await handle.write(WriteBatch([run], tasks))

    async with anyio.create_task_group() as tg:
        tg.start_soon(write_runs, store, "a")
        tg.start_soon(write_runs, other, "b")
    want = sorted(f"{p}-{i:02d}" for p in "ab" for i in range(20))
    for handle, which in ((store, "the first handle"), (other, "the second handle")):
        runs = await handle.list_runs(limit=1000)
        ids = sorted(r.id for r in runs)
        assert ids == want, _differs(f"run ids read by {which}", ids, want)
        states = {r.state for r in runs}
        assert states == {State.COMPLETED}, _differs(
            f"run states read by {which}", states, "Completed"
        )
        for run_id in ("a-07", "b-19"):
            counts = await handle.count_task_runs(run_id)
            assert counts == {"Completed": 5}, _differs(
                f"count_task_runs({run_id!r}) read by {which}", counts, {"Completed": 5}
            )


@_handles_case("concurrency: two handles racing for the last slot get one lease between them")
async def _concurrent_last_slot(store: Store, open_store: OpenStore) -> None:
    other = await open_store()
    results: dict[str, list[str]] = {}

    async def take(handle: Store, holder: str, name: str, now: float) -> None:
        leases, _ = await _lease(handle, name, 1, holder, 1, now=now)
        results[holder] = leases

    for round_ in range(20):
        results.clear()
        async with anyio.create_task_group() as tg:
            tg.start_soon(take, store, "A", f"race-{round_}", float(round_))
            tg.start_soon(take, other, "B", f"race-{round_}", float(round_))
        granted = len(results["A"]) + len(results["B"])
        assert granted == 1, _differs(
            f"leases granted in round {round_} of a capacity-1 limit", results, "one lease"
        )
    rows = [r for r in await _lease_rows(store) if r[3] == 0]
    assert len(rows) == 20, _differs("held leases after 20 rounds", len(rows), 20)


@_handles_case("concurrency: two handles reserving a rate at once never share a start")
async def _concurrent_rates(store: Store, open_store: OpenStore) -> None:
    other = await open_store()
    starts: list[float] = []

    async def reserve(handle: Store) -> None:
        for _ in range(10):
            starts.append(await handle.reserve_rate("api", 0.5, 0.0, 100.0))

    async with anyio.create_task_group() as tg:
        tg.start_soon(reserve, store)
        tg.start_soon(reserve, other)
    want = [100.0 + 0.5 * k for k in range(20)]
    assert _all_close(sorted(starts), want), _differs(
        "sorted starts of 20 uses", sorted(starts), want
    )


# -- lifecycle --------------------------------------------------------------------------


@_case("lifecycle: location is a string and blobs a BlobStore or None")
async def _attributes(store: Store) -> None:
    assert isinstance(store.location, str) and store.location, (
        f"store.location should say where the data lives: {store.location!r}"
    )
    _blobs(store)


@_case("lifecycle: close twice is fine")
async def _close_twice(store: Store) -> None:
    await store.write(WriteBatch([_flow_run("run1")], []))
    await store.close()
    await store.close()


@_handles_case(
    "lifecycle: a persistent store keeps what was written across close and reopen",
    persistent=True,
)
async def _reopen(store: Store, open_store: OpenStore) -> None:
    unfinished = _task_run(_full_flow_run().id, 43, state=State.RUNNING)
    await store.write(
        WriteBatch(
            [_full_flow_run(), _flow_run("running", state=State.RUNNING)],
            [_full_task_run(), unfinished],
            [_full_cache_entry()],
            [_full_span()],
        )
    )
    (lease,), _ = await _lease(store, "db", 1, "A", 1, now=1.0, expires=99.0)
    await store.reserve_rate("api", 0.5, 0.0, 10.0)
    blobs = store.blobs
    blob = b"a large result" * 1000
    if blobs is not None:
        await blobs.put({_ref(blob): blob})
    await store.close()

    again = await open_store()
    got_run = await again.get_run(_full_flow_run().id)
    assert got_run == _full_flow_run(), _differs(
        "the run after reopening", got_run, _full_flow_run()
    )
    tasks = await again.list_task_runs(_full_flow_run().id)
    assert tasks == [_full_task_run(), unfinished], _differs(
        "task runs after reopening", tasks, [_full_task_run(), unfinished]
    )
    entry = await again.get_cache(_full_cache_entry().key)
    assert entry == _full_cache_entry(), _differs(
        "the cache entry after reopening", entry, _full_cache_entry()
    )
    spans = await again.list_spans(_full_span().trace_id)
    assert spans == [_full_span()], _differs("spans after reopening", spans, [_full_span()])
    rows = await _lease_rows(again)
    assert rows == [("db", "A", 99.0, 0)], _differs(
        "leases after reopening", rows, [("db", "A", 99.0, 0)]
    )
    rates = await again.list_rates()
    assert [n for n, _ in rates] == ["api"] and _close(rates[0][1], 10.5), _differs(
        "rates after reopening", rates, [("api", 10.5)]
    )
    if again.blobs is not None:
        got_blob = await again.blobs.get(_ref(blob))
        assert got_blob == blob, "the blob put before closing reads back different after reopening"
    # Records written before closing can still be finished by the new handle.
    unfinished.state = State.COMPLETED
    unfinished.attempts = 1
    await again.write(WriteBatch([_flow_run("running", state=State.COMPLETED)], [unfinished]))
    tasks = await again.list_task_runs(_full_flow_run().id, offset=1)
    assert tasks == [unfinished], _differs(
        "the task run finished after reopening", tasks, [unfinished]
    )
    state = (await again.get_run("running")).state
    assert state is State.COMPLETED, _differs(
        "the run finished after reopening", state, "Completed"
    )
    await again.release_lease(lease)
    rows = await _lease_rows(again)
    assert rows == [], _differs("leases after the new handle released the old lease", rows, [])
