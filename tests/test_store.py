"""The store contract, run against every store.

Each test takes the ``store`` fixture: an opened store, one per entry of
``STORE_FACTORIES``. A new store (a PostgreSQL plugin, say) passes this suite by
adding a factory there, or by importing this module's tests into its own
package with a ``store`` fixture of its own.
"""

from __future__ import annotations

import random
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import flowcore
from flowcore import FlowRunRecord, State, Store, TaskRunRecord
from flowcore.records import WriteBatch
from flowcore.states import TERMINAL

STORE_FACTORIES: dict[str, Callable[[Path], Store]] = {
    "memory": lambda tmp_path: flowcore.MemoryStore(),
    "sqlite": lambda tmp_path: flowcore.SQLiteStore(tmp_path / "f.db"),
}


@pytest.fixture(params=sorted(STORE_FACTORIES))
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, anyio_backend: str
) -> AsyncIterator[Store]:
    s = STORE_FACTORIES[request.param](tmp_path)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def flow_run(run_id: str, created: float = 1000.0, **fields: Any) -> FlowRunRecord:
    fields.setdefault("name", "etl")
    fields.setdefault("state", State.COMPLETED)
    return FlowRunRecord(id=run_id, created=created, **fields)


def task_run(run_id: str, seq: int, **fields: Any) -> TaskRunRecord:
    fields.setdefault("name", "step")
    fields.setdefault("state", State.COMPLETED)
    fields.setdefault("created", 1000.0 + seq)
    return TaskRunRecord(run_id=run_id, seq=seq, **fields)


def full_flow_run() -> FlowRunRecord:
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
    )


def full_task_run() -> TaskRunRecord:
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
    )


# -- round trips -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_flow_run_round_trip_keeps_every_field(store: Store) -> None:
    record = full_flow_run()
    await store.write(WriteBatch([record], []))
    assert await store.get_run(record.id) == full_flow_run()
    assert await store.list_runs() == [full_flow_run()]


@pytest.mark.anyio
async def test_flow_run_round_trip_with_defaults_and_none_values(store: Store) -> None:
    record = FlowRunRecord(id="minimal", name="f", state=State.RUNNING, created=5.0)
    await store.write(WriteBatch([record], []))
    got = await store.get_run("minimal")
    assert got == FlowRunRecord(id="minimal", name="f", state=State.RUNNING, created=5.0)
    assert got.parent_run_id is None
    assert got.parent_task_seq is None
    assert got.started is None
    assert got.ended is None
    assert got.heartbeat is None
    assert got.error_type is None
    assert got.error_message is None
    assert got.traceback is None
    assert got.history == []
    assert got.parameters == b""
    assert got.kind == "flow"
    assert got.state is State.RUNNING


@pytest.mark.anyio
async def test_task_run_round_trip_keeps_every_field(store: Store) -> None:
    await store.write(WriteBatch([full_flow_run()], [full_task_run()]))
    got = await store.list_task_runs(full_task_run().run_id)
    assert got == [full_task_run()]
    assert got[0].history[1] == (
        "Retrying",
        1_700_000_001.0,
        "TimeoutError: took too long (retry in 0.1 s)",
    )
    assert len(got[0].history[0]) == 2
    assert got[0].upstream == [1, 2, 40]
    assert got[0].inputs == b"\x81\xa4page\x2a\x00\xff\xfe"
    assert got[0].state is State.COMPLETED


@pytest.mark.anyio
async def test_task_run_round_trip_with_none_and_empty_values(store: Store) -> None:
    records = [
        TaskRunRecord(run_id="r", seq=0, name="a", state=State.PENDING, created=1.0),
        TaskRunRecord(
            run_id="r", seq=1, name="b", state=State.RUNNING, created=2.0, upstream=[], inputs=b""
        ),
    ]
    await store.write(WriteBatch([flow_run("r", state=State.RUNNING)], records))
    got = await store.list_task_runs("r")
    assert got == [
        TaskRunRecord(run_id="r", seq=0, name="a", state=State.PENDING, created=1.0),
        TaskRunRecord(
            run_id="r", seq=1, name="b", state=State.RUNNING, created=2.0, upstream=[], inputs=b""
        ),
    ]
    assert got[0].upstream is None
    assert got[0].parent_seq is None
    assert got[0].started is None
    assert got[0].error_message is None
    assert got[0].history == []
    assert got[1].upstream == []


@pytest.mark.anyio
async def test_an_empty_write_is_fine(store: Store) -> None:
    await store.write(WriteBatch([], []))
    assert await store.list_runs() == []


# -- upserts and terminal states -------------------------------------------------------


@pytest.mark.anyio
async def test_upsert_updates_a_non_terminal_flow_run(store: Store) -> None:
    record = flow_run("run1", state=State.RUNNING, started=10.0, history=[("Running", 10.0)])
    await store.write(WriteBatch([record], []))
    record.heartbeat = 15.0
    record.task_count = 7
    await store.write(WriteBatch([record], []))
    got = await store.get_run("run1")
    assert got.heartbeat == 15.0
    assert got.task_count == 7
    assert got.state is State.RUNNING

    record.state = State.FAILED
    record.ended = 20.0
    record.error_type = "ValueError"
    record.error_message = "bad"
    record.traceback = "Traceback\nValueError: bad\n"
    record.history.append(("Failed", 20.0))
    record.task_count = 9
    await store.write(WriteBatch([record], []))
    got = await store.get_run("run1")
    assert got == flow_run(
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


@pytest.mark.anyio
async def test_upsert_updates_a_non_terminal_task_run(store: Store) -> None:
    await store.write(WriteBatch([flow_run("run1", state=State.RUNNING)], []))
    pending = task_run("run1", 3, state=State.PENDING, history=[("Pending", 1.0)])
    await store.write(WriteBatch([], [pending]))
    assert (await store.list_task_runs("run1"))[0].state is State.PENDING

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
    assert got.state is State.RETRYING
    assert got.upstream == [0, 1]
    assert got.attempts == 1
    assert got.error_message == "reset"
    assert got.history == [
        ("Pending", 1.0),
        ("Running", 2.0),
        ("Retrying", 3.0, "OSError: reset (retry in 1 s)"),
    ]

    pending.state = State.COMPLETED
    pending.attempts = 2
    pending.ended = 5.0
    pending.history += [("Running", 4.0), ("Completed", 5.0)]
    await store.write(WriteBatch([], [pending]))
    got = (await store.list_task_runs("run1"))[0]
    assert got == task_run(
        "run1",
        3,
        state=State.COMPLETED,
        upstream=[0, 1],
        started=2.0,
        ended=5.0,
        attempts=2,
        error_type="OSError",
        error_message="reset",
        history=[
            ("Pending", 1.0),
            ("Running", 2.0),
            ("Retrying", 3.0, "OSError: reset (retry in 1 s)"),
            ("Running", 4.0),
            ("Completed", 5.0),
        ],
    )
    assert await store.count_task_runs("run1") == {"Completed": 1}


@pytest.mark.anyio
@pytest.mark.parametrize("terminal", sorted(TERMINAL))
async def test_a_terminal_flow_run_is_never_overwritten(store: Store, terminal: State) -> None:
    done = flow_run("run1", state=terminal, ended=9.0, history=[(terminal.value, 9.0)])
    await store.write(WriteBatch([done], []))
    stale = flow_run("run1", state=State.RUNNING, heartbeat=99.0, history=[("Running", 1.0)])
    await store.write(WriteBatch([stale], []))
    other = State.CRASHED if terminal != State.CRASHED else State.FAILED
    await store.write(WriteBatch([flow_run("run1", state=other)], []))
    assert await store.get_run("run1") == flow_run(
        "run1", state=terminal, ended=9.0, history=[(terminal.value, 9.0)]
    )


@pytest.mark.anyio
@pytest.mark.parametrize("terminal", sorted(TERMINAL))
async def test_a_terminal_task_run_is_never_overwritten(store: Store, terminal: State) -> None:
    await store.write(WriteBatch([flow_run("run1", state=State.RUNNING)], []))
    done = task_run("run1", 0, state=terminal, attempts=1, history=[(terminal.value, 9.0)])
    await store.write(WriteBatch([], [done]))
    stale = task_run("run1", 0, state=State.RUNNING, attempts=5, history=[("Running", 1.0)])
    await store.write(WriteBatch([], [stale]))
    other = State.FAILED if terminal != State.FAILED else State.COMPLETED
    await store.write(WriteBatch([], [task_run("run1", 0, state=other, attempts=6)]))
    assert await store.list_task_runs("run1") == [
        task_run("run1", 0, state=terminal, attempts=1, history=[(terminal.value, 9.0)])
    ]
    assert await store.count_task_runs("run1") == {terminal.value: 1}


@pytest.mark.anyio
async def test_terminal_protection_is_per_record_within_one_batch(store: Store) -> None:
    await store.write(WriteBatch([flow_run("a"), flow_run("b", state=State.RUNNING)], []))
    await store.write(
        WriteBatch([flow_run("a", state=State.RUNNING), flow_run("b", state=State.CANCELLED)], []),
    )
    assert (await store.get_run("a")).state is State.COMPLETED
    assert (await store.get_run("b")).state is State.CANCELLED


# -- snapshots --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_write_stores_a_snapshot_not_the_live_records(store: Store) -> None:
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

    assert await store.get_run("run1") == flow_run(
        "run1", state=State.RUNNING, history=[("Running", 1.0)], task_count=1
    )
    assert await store.list_task_runs("run1") == [
        task_run("run1", 0, state=State.RUNNING, upstream=[5], history=[("Running", 1.0)])
    ]


@pytest.mark.anyio
async def test_a_write_snapshots_list_fields_mutated_in_place(store: Store) -> None:
    # Every list in a record is copied, not only ``history``: ``upstream`` too.
    tr = task_run("run1", 0, state=State.PENDING, upstream=[5], history=[("Pending", 1.0)])
    await store.write(WriteBatch([flow_run("run1", state=State.RUNNING)], [tr]))
    assert tr.upstream is not None
    tr.upstream.append(6)
    tr.history.append(("Running", 2.0))
    (stored,) = await store.list_task_runs("run1")
    assert stored.history == [("Pending", 1.0)]
    assert stored.upstream == [5]


@pytest.mark.anyio
async def test_a_write_snapshots_its_records_before_its_first_await(store: Store) -> None:
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
    assert (await store.get_run("run1")).history == [("Running", 1.0)]
    assert (await store.get_run("run1")).state is State.RUNNING
    assert await store.list_task_runs("run1") == [
        task_run("run1", 0, state=State.RUNNING, history=[("Running", 1.0)])
    ]


# -- list_runs --------------------------------------------------------------------------


async def _write_listing_runs(store: Store) -> None:
    runs = [
        flow_run("r1", created=100.0, name="etl", state=State.COMPLETED),
        flow_run("r2", created=300.0, name="report", state=State.FAILED),
        flow_run("r3", created=200.0, name="etl", state=State.FAILED),
        flow_run("r4", created=500.0, name="etl", state=State.RUNNING),
        flow_run("r5", created=400.0, name="report", state=State.COMPLETED),
    ]
    random.Random(3).shuffle(runs)
    await store.write(WriteBatch(runs[:2], []))
    await store.write(WriteBatch(runs[2:], []))


@pytest.mark.anyio
async def test_list_runs_is_newest_first(store: Store) -> None:
    await _write_listing_runs(store)
    assert [r.id for r in await store.list_runs()] == ["r4", "r5", "r2", "r3", "r1"]


@pytest.mark.anyio
async def test_list_runs_filters_by_name_and_state(store: Store) -> None:
    await _write_listing_runs(store)
    assert [r.id for r in await store.list_runs(name="etl")] == ["r4", "r3", "r1"]
    assert [r.id for r in await store.list_runs(state="Failed")] == ["r2", "r3"]
    assert [r.id for r in await store.list_runs(state=State.COMPLETED)] == ["r5", "r1"]
    assert [r.id for r in await store.list_runs(name="report", state="Completed")] == ["r5"]
    assert await store.list_runs(name="nope") == []
    assert await store.list_runs(name="etl", state="Cancelled") == []


@pytest.mark.anyio
async def test_list_runs_limit(store: Store) -> None:
    await _write_listing_runs(store)
    assert [r.id for r in await store.list_runs(limit=2)] == ["r4", "r5"]
    assert [r.id for r in await store.list_runs(limit=1, name="etl", state="Failed")] == ["r3"]
    assert len(await store.list_runs(limit=1000)) == 5


@pytest.mark.anyio
async def test_list_runs_default_limit_is_50(store: Store) -> None:
    await store.write(
        WriteBatch([flow_run(f"run{i:03d}", created=float(i)) for i in range(60)], [])
    )
    runs = await store.list_runs()
    assert [r.id for r in runs] == [f"run{i:03d}" for i in range(59, 9, -1)]


@pytest.mark.anyio
@pytest.mark.parametrize("limit", [0, -1])
async def test_list_runs_limit_below_one_is_a_configuration_error(store: Store, limit: int) -> None:
    await _write_listing_runs(store)
    with pytest.raises(flowcore.ConfigurationError, match="limit"):
        await store.list_runs(limit=limit)


# -- get_run ----------------------------------------------------------------------------


async def _write_ids(store: Store, *ids: str) -> None:
    await store.write(
        WriteBatch([flow_run(run_id, created=float(n)) for n, run_id in enumerate(ids)], [])
    )


@pytest.mark.anyio
async def test_get_run_by_exact_id(store: Store) -> None:
    await _write_ids(store, "abc123", "abd456", "ffff00")
    run = await store.get_run("abd456")
    assert run.id == "abd456"
    assert run == flow_run("abd456", created=1.0)


@pytest.mark.anyio
async def test_get_run_by_unique_prefix(store: Store) -> None:
    await _write_ids(store, "abc123", "abd456", "ffff00")
    assert (await store.get_run("abc")).id == "abc123"
    assert (await store.get_run("f")).id == "ffff00"


@pytest.mark.anyio
async def test_get_run_exact_id_wins_over_a_longer_id_with_it_as_prefix(store: Store) -> None:
    await _write_ids(store, "abc", "abcdef")
    assert (await store.get_run("abc")).id == "abc"
    assert (await store.get_run("abcd")).id == "abcdef"


@pytest.mark.anyio
async def test_get_run_ambiguous_prefix_is_run_not_found_saying_it_matches_several(
    store: Store,
) -> None:
    await _write_ids(store, "abc123", "abd456", "ffff00")
    with pytest.raises(flowcore.RunNotFound, match="matches") as info:
        await store.get_run("ab")
    message = str(info.value)
    assert "'ab'" in message
    assert "more characters" in message


@pytest.mark.anyio
async def test_get_run_ambiguous_prefix_message_does_not_understate_the_matches(
    store: Store,
) -> None:
    await _write_ids(store, "abc123", "abd456", "abe789", "ffff00")
    with pytest.raises(flowcore.RunNotFound, match="matches") as info:
        await store.get_run("ab")
    count = re.search(r"matches (\d+) runs", str(info.value))
    # Saying "several" is fine; a number, if given, must be right (three runs match).
    assert count is None or count.group(1) == "3", str(info.value)


@pytest.mark.anyio
@pytest.mark.parametrize("run_id", ["nope", "abc1234", "", "zz"])
async def test_get_run_unknown_is_run_not_found(store: Store, run_id: str) -> None:
    await _write_ids(store, "abc123", "abd456")
    with pytest.raises(flowcore.RunNotFound, match="no run with id"):
        await store.get_run(run_id)


@pytest.mark.anyio
async def test_get_run_on_an_empty_store_is_run_not_found(store: Store) -> None:
    with pytest.raises(flowcore.RunNotFound):
        await store.get_run("abc")
    with pytest.raises(LookupError):  # RunNotFound is a LookupError
        await store.get_run("abc")


@pytest.mark.anyio
async def test_get_run_prefix_treats_wildcard_characters_literally(store: Store) -> None:
    await _write_ids(store, "a_1", "ab2", "c%3", "cd4", "e\\5", "ef6")
    assert (await store.get_run("a_")).id == "a_1"
    assert (await store.get_run("c%")).id == "c%3"
    assert (await store.get_run("e\\")).id == "e\\5"
    with pytest.raises(flowcore.RunNotFound, match="no run with id"):
        await store.get_run("_")
    with pytest.raises(flowcore.RunNotFound, match="no run with id"):
        await store.get_run("%")


# -- task runs --------------------------------------------------------------------------


async def _write_task_runs(store: Store, run_id: str, seqs: list[int]) -> None:
    shuffled = list(seqs)
    random.Random(7).shuffle(shuffled)
    await store.write(WriteBatch([flow_run(run_id, state=State.RUNNING)], []))
    # Several batches, out of seq order, as the recorder writes them.
    for start in range(0, len(shuffled), 4):
        await store.write(
            WriteBatch([], [task_run(run_id, s) for s in shuffled[start : start + 4]])
        )


@pytest.mark.anyio
async def test_list_task_runs_is_in_seq_order_and_per_run(store: Store) -> None:
    await _write_task_runs(store, "run1", list(range(10)))
    await _write_task_runs(store, "run2", list(range(3)))
    assert [t.seq for t in await store.list_task_runs("run1")] == list(range(10))
    assert [t.seq for t in await store.list_task_runs("run2")] == [0, 1, 2]
    assert {t.run_id for t in await store.list_task_runs("run1")} == {"run1"}
    assert await store.list_task_runs("unknown") == []


@pytest.mark.anyio
async def test_list_task_runs_pages_with_offset_and_limit(store: Store) -> None:
    await _write_task_runs(store, "run1", list(range(10)))
    assert [t.seq for t in await store.list_task_runs("run1", limit=3)] == [0, 1, 2]
    assert [t.seq for t in await store.list_task_runs("run1", offset=3, limit=3)] == [3, 4, 5]
    assert [t.seq for t in await store.list_task_runs("run1", offset=8)] == [8, 9]
    assert [t.seq for t in await store.list_task_runs("run1", offset=8, limit=5)] == [8, 9]
    assert await store.list_task_runs("run1", offset=10) == []
    assert await store.list_task_runs("run1", offset=50, limit=5) == []
    pages = []
    for offset in range(0, 10, 4):
        pages.append([t.seq for t in await store.list_task_runs("run1", offset=offset, limit=4)])
    assert pages == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


@pytest.mark.anyio
async def test_list_task_runs_offset_counts_rows_when_seqs_have_gaps(store: Store) -> None:
    # Gaps are normal in a stored run: a submitted task is recorded only once it
    # starts, and a crashed process leaves whatever was flushed.
    await _write_task_runs(store, "run1", [0, 1, 2, 5, 7, 9])
    pages = []
    for offset in range(0, 6, 2):
        pages.append([t.seq for t in await store.list_task_runs("run1", offset=offset, limit=2)])
    # Paging shows every task run once (not 5 twice and 9 never).
    assert pages == [[0, 1], [2, 5], [7, 9]]
    assert [t.seq for t in await store.list_task_runs("run1", offset=4)] == [7, 9]
    assert await store.list_task_runs("run1", offset=6) == []


@pytest.mark.anyio
async def test_count_task_runs_counts_by_state(store: Store) -> None:
    await store.write(WriteBatch([flow_run("run1", state=State.RUNNING), flow_run("run2")], []))
    states = [State.COMPLETED] * 3 + [State.FAILED, State.RUNNING, State.RUNNING, State.PENDING]
    await store.write(WriteBatch([], [task_run("run1", n, state=s) for n, s in enumerate(states)]))
    await store.write(WriteBatch([], [task_run("run2", 0, state=State.CANCELLED)]))
    counts = await store.count_task_runs("run1")
    assert counts == {"Completed": 3, "Failed": 1, "Running": 2, "Pending": 1}
    assert counts[State.COMPLETED] == 3  # State is a str enum: both spellings work
    assert await store.count_task_runs("run2") == {"Cancelled": 1}
    assert await store.count_task_runs("unknown") == {}


@pytest.mark.anyio
async def test_count_task_runs_follows_upserts(store: Store) -> None:
    await store.write(WriteBatch([flow_run("run1", state=State.RUNNING)], []))
    records = [task_run("run1", n, state=State.RUNNING) for n in range(4)]
    await store.write(WriteBatch([], records))
    assert await store.count_task_runs("run1") == {"Running": 4}
    for record in records[:3]:
        record.state = State.COMPLETED
    await store.write(WriteBatch([], records))
    assert await store.count_task_runs("run1") == {"Completed": 3, "Running": 1}


# -- child runs -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_child_runs(store: Store) -> None:
    await store.write(
        WriteBatch(
            [
                flow_run("parent", created=1.0),
                flow_run("late-child", created=5.0, parent_run_id="parent", parent_task_seq=2),
                flow_run("early-child", created=3.0, parent_run_id="parent", parent_task_seq=0),
                flow_run("grandchild", created=4.0, parent_run_id="early-child"),
                flow_run("unrelated", created=2.0, parent_run_id="other"),
            ],
            [],
        ),
    )
    children = await store.child_runs("parent")
    assert [r.id for r in children] == ["early-child", "late-child"]
    assert children[0] == flow_run(
        "early-child", created=3.0, parent_run_id="parent", parent_task_seq=0
    )
    assert [r.id for r in await store.child_runs("early-child")] == ["grandchild"]
    assert await store.child_runs("grandchild") == []
    assert await store.child_runs("unknown") == []
