"""Schema migrations: a version-1 database opened by this flowcore keeps every record."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import time
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
import msgspec
import pytest

import flowcore
import flowcore.store.sqlite.schema as sqlite_store
from flowcore import FlowRunRecord, SQLiteStore, State, TaskRunRecord
from flowcore.encoding import decode_inputs
from flowcore.ranges import RangeSet
from flowcore.records import (
    AssetDefRecord,
    AssetStateRecord,
    LogRecord,
    MaterializationRecord,
    ScheduleState,
    ServedFlow,
    SlotClaim,
    Trigger,
    WriteBatch,
    transition,
)
from flowcore.store.sqlite.schema import MIGRATIONS, SCHEMA_VERSION
from flowcore.testing.store_suite.records import full_flow_run, full_log_line, full_task_run

pytestmark = pytest.mark.anyio

enc = msgspec.msgpack.Encoder()
T0 = 1_700_000_000.0
TASKS_IN_BIG_RUN = 12_345  # more than one batch of the data step


def v1_database(path: Path, *, big_run: bool = False) -> None:
    """A database as flowcore 0.1 with schema version 1 left it, with a few runs."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN")
        for statement in MIGRATIONS[1]:
            conn.execute(statement)
        conn.execute("INSERT INTO flowcore_meta VALUES ('migration.1', '1600000000.5')")
        conn.execute("INSERT INTO flowcore_meta VALUES ('schema_version', '1')")
        conn.execute("PRAGMA user_version = 1")
        flow_rows = [
            # id, name, kind, state, created, parameters, parent_run_id, parent_task_seq,
            # started, ended, heartbeat, error_type, error_message, traceback, history,
            # host, pid, task_count
            (
                "a" * 32, "etl", "flow", "Completed", T0, enc.encode({"n": 3}), None, None,
                T0 + 1, T0 + 9, T0 + 8, None, None, None,
                enc.encode([("Running", T0 + 1), ("Completed", T0 + 9)]), "host-a", 4242, 3,
            ),
            (
                "b" * 32, "child", "flow", "Completed", T0 + 2, b"", "a" * 32, 1,
                T0 + 2, T0 + 3, None, None, None, None,
                enc.encode([("Running", T0 + 2), ("Completed", T0 + 3)]), "host-a", 4242, 0,
            ),
            (
                "c" * 32, "v1_flow", "flow", "Failed", T0 + 10, enc.encode({"n": 3}), None,
                None, T0 + 10, T0 + 12, None, "RuntimeError", "boom", "Traceback ...",
                enc.encode([("Running", T0 + 10), ("Failed", T0 + 12)]), "host-a", 4243, 3,
            ),
        ]  # fmt: skip
        conn.executemany(f"INSERT INTO flow_runs VALUES ({', '.join('?' * 18)})", flow_rows)
        task_rows = [
            # run_id, seq, name, state, created, parent_seq, upstream, inputs, attempts,
            # started, ended, error_type, error_message, traceback, history
            (
                "a" * 32, 0, "extract", "Completed", T0 + 1, None, None,
                enc.encode({"n": 3}), 1, T0 + 1, T0 + 2, None, None, None,
                enc.encode([("Running", T0 + 1), ("Completed", T0 + 2)]),
            ),
            (
                "a" * 32, 1, "transform", "Completed", T0 + 2, None, enc.encode([0]),
                enc.encode({"rows": {"__flowcore__": "future", "task": "extract", "seq": 0}}),
                3, T0 + 2, T0 + 5, None, None, None,
                enc.encode([
                    ("Pending", T0 + 2), ("Running", T0 + 2),
                    ("Retrying", T0 + 3, "OSError: flaky (retry in 0.5 s)"), ("Running", T0 + 3.5),
                    ("Retrying", T0 + 4, "OSError: flaky (retry in 1 s)"), ("Running", T0 + 5),
                    ("Completed", T0 + 5),
                ]),
            ),
            (
                "a" * 32, 2, "load", "Completed", T0 + 6, 1, None, b"", 1, T0 + 6, T0 + 7,
                None, None, None, enc.encode([("Running", T0 + 6), ("Completed", T0 + 7)]),
            ),
            (
                "c" * 32, 0, "v1_step", "Completed", T0 + 10, None, None,
                enc.encode({"i": 0}), 1, T0 + 10, T0 + 10.5, None, None, None,
                enc.encode([("Running", T0 + 10), ("Completed", T0 + 10.5)]),
            ),
            (
                "c" * 32, 1, "v1_step", "Completed", T0 + 10.5, None, None,
                enc.encode({"i": 1}), 1, T0 + 10.5, T0 + 11, None, None, None,
                enc.encode([("Running", T0 + 10.5), ("Completed", T0 + 11)]),
            ),
            (
                "c" * 32, 2, "v1_step", "Failed", T0 + 11, None, None,
                enc.encode({"i": 2}), 2, T0 + 11, T0 + 12, "RuntimeError", "boom",
                "Traceback (most recent call last): ...",
                enc.encode([
                    ("Running", T0 + 11), ("Retrying", T0 + 11.2, "RuntimeError: boom"),
                    ("Running", T0 + 11.5), ("Failed", T0 + 12),
                ]),
            ),
        ]  # fmt: skip
        if big_run:
            history = enc.encode([("Running", T0), ("Completed", T0 + 1)])
            task_rows += [
                ("d" * 32, i, "many", "Completed", T0 + i, None, None, enc.encode({"i": i}),
                 1, T0 + i, T0 + i + 1, None, None, None, history)
                for i in range(TASKS_IN_BIG_RUN)
            ]  # fmt: skip
            conn.execute(
                f"INSERT INTO flow_runs VALUES ({', '.join('?' * 18)})",
                ("d" * 32, "big", "flow", "Completed", T0 + 20, b"", None, None, T0 + 20,
                 T0 + 30, None, None, None, None, b"", "", 0, TASKS_IN_BIG_RUN),
            )  # fmt: skip
        conn.executemany(f"INSERT INTO task_runs VALUES ({', '.join('?' * 15)})", task_rows)
        conn.execute("COMMIT")


def snapshot(path: Path, like: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything about the schema and the rows, to compare before and after. With
    ``like`` (an earlier snapshot), the rows of its tables are read with its columns
    only, and a table's statement with columns added since (ALTER TABLE ADD COLUMN
    appends them) is read as it was: what an upgrade kept compares equal."""
    with closing(sqlite3.connect(path)) as conn:
        schema = conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' "
            "ORDER BY type, name"
        ).fetchall()
        tables = [name for kind, name, _ in schema if kind == "table"]
        known = (like or {}).get("columns", {})
        all_columns = {t: [r[1] for r in conn.execute(f"PRAGMA table_info({t})")] for t in tables}
        cols = {t: known.get(t) or all_columns[t] for t in tables}
        rows = {
            t: sorted(conn.execute(f"SELECT {', '.join(cols[t])} FROM {t}").fetchall(), key=repr)
            for t in tables
        }
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    if like is not None:
        # SQLite writes an added column into the table's statement, after the last
        # column (", name TYPE"): read without them, the statement is as it was.
        added = {t: set(all_columns[t]) - set(cols[t]) for t in tables}
        schema = [
            (kind, name, _without_columns(sql, added[name]) if kind == "table" else sql)
            for kind, name, sql in schema
        ]
    return {"schema": schema, "rows": rows, "user_version": version, "columns": cols}


def _without_columns(sql: str, names: set[str]) -> str:
    for name in names:
        sql = re.sub(rf",\s*{name}\b[^,\n)]*", "", sql, count=1)
    return sql


def meta(path: Path) -> dict[str, str]:
    with closing(sqlite3.connect(path)) as conn:
        return dict(conn.execute("SELECT key, value FROM flowcore_meta").fetchall())


def columns(path: Path, table: str) -> list[str]:
    with closing(sqlite3.connect(path)) as conn:
        return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


# -- a successful migration --------------------------------------------------------------------


async def test_v1_database_is_migrated_keeping_every_record(tmp_path: Path) -> None:
    path = tmp_path / "flowcore.db"
    v1_database(path)
    assert SCHEMA_VERSION >= 2
    before = time.time()
    async with SQLiteStore(path) as store:
        etl = await store.get_run("a" * 32)
        child = await store.get_run("b" * 32)
        failed = await store.get_run("c" * 32)
        etl_tasks = await store.list_task_runs("a" * 32)
        failed_tasks = await store.list_task_runs("c" * 32)
        children = await store.child_runs("a" * 32)
        counts = await store.count_task_runs("c" * 32)
        listed = await store.list_runs()
        failed_only = await store.list_runs(state="Failed")
        cache = await store.list_cache()

    assert snapshot(path)["user_version"] == SCHEMA_VERSION
    # Flow runs: every v1 field as written, the new ones at their defaults.
    assert etl.name == "etl" and etl.kind == "flow" and etl.state is State.COMPLETED
    assert decode_inputs(etl.parameters) == {"n": 3}
    assert (etl.created, etl.started, etl.ended, etl.heartbeat) == (T0, T0 + 1, T0 + 9, T0 + 8)
    assert etl.history == [("Running", T0 + 1), ("Completed", T0 + 9)]
    assert (etl.host, etl.pid, etl.task_count) == ("host-a", 4242, 3)
    assert etl.entrypoint is None and etl.resumed_from is None
    assert (child.parent_run_id, child.parent_task_seq) == ("a" * 32, 1)
    assert [c.id for c in children] == ["b" * 32]
    assert failed.state is State.FAILED
    assert (failed.error_type, failed.error_message, failed.traceback) == (
        "RuntimeError",
        "boom",
        "Traceback ...",
    )
    assert {r.id for r in listed} == {"a" * 32, "b" * 32, "c" * 32}
    assert [r.id for r in failed_only] == ["c" * 32]
    assert cache == []

    # Task runs: every v1 field as written, the new ones at their defaults.
    extract, transform, load = etl_tasks
    assert [t.seq for t in etl_tasks] == [0, 1, 2]
    assert [t.name for t in etl_tasks] == ["extract", "transform", "load"]
    assert decode_inputs(extract.inputs) == {"n": 3}
    assert transform.upstream == [0] and transform.attempts == 3
    assert decode_inputs(transform.inputs) == {
        "rows": {"__flowcore__": "future", "task": "extract", "seq": 0}
    }
    assert transform.history[2] == ("Retrying", T0 + 3, "OSError: flaky (retry in 0.5 s)")
    assert len(transform.history) == 7
    assert (transform.created, transform.started, transform.ended) == (T0 + 2, T0 + 2, T0 + 5)
    assert load.parent_seq == 1 and load.inputs == b"" and load.upstream is None
    for t in etl_tasks + failed_tasks:
        assert t.result is None and t.result_ref is None
        assert t.cache_key is None and t.cached_from is None
    bad = failed_tasks[2]
    assert bad.state is State.FAILED and bad.attempts == 2
    assert (bad.error_type, bad.error_message) == ("RuntimeError", "boom")
    assert bad.traceback == "Traceback (most recent call last): ..."
    assert counts == {"Completed": 2, "Failed": 1}

    # The bookkeeping: each step recorded, the first one's record untouched.
    recorded = meta(path)
    assert recorded["migration.1"] == "1600000000.5"
    for number in range(2, SCHEMA_VERSION + 1):
        assert before - 1 <= float(recorded[f"migration.{number}"]) <= time.time() + 1
    assert recorded["schema_version"] == str(SCHEMA_VERSION)
    assert {"entrypoint", "resumed_from"} <= set(columns(path, "flow_runs"))
    assert "cache_entries" in {t for _, t, _ in snapshot(path)["schema"]}


async def test_every_task_run_of_a_large_v1_database_survives(tmp_path: Path) -> None:
    path = tmp_path / "flowcore.db"
    v1_database(path, big_run=True)
    async with SQLiteStore(path) as store:
        tasks = await store.list_task_runs("d" * 32)
        counts = await store.count_task_runs("d" * 32)
        page = await store.list_task_runs("d" * 32, offset=10_000, limit=3)
    assert len(tasks) == TASKS_IN_BIG_RUN
    assert [t.seq for t in tasks] == list(range(TASKS_IN_BIG_RUN))
    assert all(decode_inputs(t.inputs) == {"i": t.seq} for t in tasks)
    assert counts == {"Completed": TASKS_IN_BIG_RUN}
    assert [t.seq for t in page] == [10_000, 10_001, 10_002]
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


async def test_reopening_a_migrated_database_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "flowcore.db"
    v1_database(path)
    async with SQLiteStore(path):
        pass
    migrated = snapshot(path)
    async with SQLiteStore(path):
        pass
    assert snapshot(path) == migrated


async def test_two_stores_opening_a_v1_database_at_once_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "flowcore.db"
    v1_database(path)
    stores = [SQLiteStore(path) for _ in range(4)]
    async with anyio.create_task_group() as tg:
        for store in stores:
            tg.start_soon(store.open)
    try:
        for store in stores:
            assert len(await store.list_task_runs("a" * 32)) == 3
    finally:
        for store in stores:
            await store.close()
    assert snapshot(path)["user_version"] == SCHEMA_VERSION


async def test_a_migrated_database_takes_new_runs_and_resumes_old_ones(tmp_path: Path) -> None:
    path = tmp_path / "flowcore.db"
    v1_database(path)
    ran: list[int] = []

    @flowcore.task
    async def v1_step(i: int) -> int:
        ran.append(i)
        return i

    @flowcore.flow
    async def v1_flow(n: int) -> int:
        return sum([await v1_step(i) for i in range(n)])

    async with flowcore.Engine(path) as engine:
        # A v1 run recorded no results and no entrypoint: with the flow given, it
        # resumes, and every call runs again (nothing to replay).
        assert await flowcore.resume_async("c" * 32, flow=v1_flow) == 3
        assert engine.last_run is not None
        resumed = engine.last_run.id
        await engine.recorder.flush()
        tasks = await engine.store.list_task_runs(resumed)
        run = await engine.store.get_run(resumed)
    assert ran == [0, 1, 2]
    assert run.resumed_from == "c" * 32
    assert [t.attempts for t in tasks] == [1, 1, 3]  # the failed call continues its count
    assert all(t.result is not None for t in tasks)


# -- a migration that fails --------------------------------------------------------------------

BROKEN_STEP = (
    "CREATE TABLE half_done (x INTEGER)",
    "ALTER TABLE flow_runs ADD COLUMN half_done_column TEXT",
    "INSERT INTO flowcore_meta (key, value) VALUES ('half_done', 'yes')",
    "THIS IS NOT SQL",
)


def break_migrations(
    monkeypatch: pytest.MonkeyPatch, migrations: dict[int, tuple[str, ...]]
) -> None:
    monkeypatch.setattr(sqlite_store, "MIGRATIONS", migrations)
    monkeypatch.setattr(sqlite_store, "SCHEMA_VERSION", max(migrations))


async def test_a_failing_step_rolls_back_every_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "flowcore.db"
    v1_database(path)
    before = snapshot(path)
    break_migrations(monkeypatch, {**MIGRATIONS, SCHEMA_VERSION + 1: BROKEN_STEP})
    store = SQLiteStore(path)
    with pytest.raises(flowcore.StoreError, match="syntax error"):
        await store.open()
    await store.close()
    # Not one change: version 1, its tables and rows, no table or column of step 2 or 3.
    assert snapshot(path) == before
    assert "half_done" not in meta(path) and "migration.2" not in meta(path)
    assert "half_done_column" not in columns(path, "flow_runs")

    monkeypatch.undo()  # this flowcore's real migrations still apply cleanly afterwards
    async with SQLiteStore(path) as store:
        assert len(await store.list_task_runs("a" * 32)) == 3
    assert snapshot(path)["user_version"] == SCHEMA_VERSION


async def test_a_failing_step_on_a_current_database_leaves_it_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "flowcore.db"

    @flowcore.task
    async def one() -> int:
        return 1

    @flowcore.flow
    async def f() -> int:
        return await one()

    async with flowcore.Engine(path):
        await f()
    before = snapshot(path)
    break_migrations(monkeypatch, {**MIGRATIONS, SCHEMA_VERSION + 1: BROKEN_STEP})
    with pytest.raises(flowcore.StoreError):
        async with flowcore.Engine(path):
            pass
    assert snapshot(path) == before


async def test_a_failure_after_the_data_is_copied_rolls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "flowcore.db"
    v1_database(path, big_run=True)
    before = snapshot(path)
    # The real version-2 step runs whole (tables rebuilt, rows copied), then fails.
    steps = {**MIGRATIONS, 2: (*MIGRATIONS[2], "INSERT INTO no_such_table VALUES (1)")}
    break_migrations(monkeypatch, steps)
    store = SQLiteStore(path)
    with pytest.raises(flowcore.StoreError, match="no_such_table"):
        await store.open()
    await store.close()
    assert snapshot(path) == before


async def test_a_new_database_is_made_in_a_few_trips_to_the_connections_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every migration a database lacks runs in one call on aiosqlite's thread, and a
    current database is checked in one: a statement each, a round trip each (100-250 µs
    on a busy machine), made a first run on a new store about 12 ms slower (issue 17).
    Every call on that thread, aiosqlite's own and flowcore's, goes through
    ``aiosqlite.Connection._execute``: counting those counts the trips."""
    trips = 0
    execute = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal trips
        trips += 1
        return await execute(self, fn, *args, **kwargs)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    path = tmp_path / "flowcore.db"
    async with SQLiteStore(path):
        made = trips  # the connection, its checks, the migrations, the settings
    trips = 0
    async with SQLiteStore(path):
        opened = trips
    assert made <= 8 and opened <= 4, (made, opened)
    assert snapshot(path)["user_version"] == SCHEMA_VERSION
    assert {f"migration.{n}" for n in MIGRATIONS} <= set(meta(path))


async def test_a_v1_row_that_cannot_be_converted_fails_the_open_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "flowcore.db"
    v1_database(path)
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(
            "UPDATE task_runs SET history = x'c1c1c1' WHERE run_id = ? AND seq = 1", ("a" * 32,)
        )
        conn.commit()
    before = snapshot(path)
    store = SQLiteStore(path)
    with pytest.raises((flowcore.StoreError, msgspec.DecodeError, ValueError)) as info:
        await store.open()
    await store.close()
    assert snapshot(path) == before  # rolled back: still a whole version-1 database
    # The Store protocol: open() raises a StoreError subclass on failure, naming the file.
    assert isinstance(info.value, flowcore.StoreError), (
        f"open() let a raw {type(info.value).__module__}.{type(info.value).__name__} escape"
    )
    assert str(path) in str(info.value)


async def test_a_database_from_a_newer_flowcore_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "flowcore.db"
    v1_database(path)
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = snapshot(path)
    with pytest.raises(flowcore.SchemaTooNew):
        await SQLiteStore(path).open()
    assert snapshot(path) == before


# -- migration 6: flow runs as (query columns, body) ---------------------------------------------

V5_FLOW_COLS = (
    "id, name, kind, state, created, parameters, parent_run_id, parent_task_seq, started, ended, "
    "heartbeat, error_type, error_message, traceback, history, host, pid, task_count, "
    "entrypoint, resumed_from, trace_id, span_id"
)


def v5_flow_row(r: FlowRunRecord) -> tuple[Any, ...]:
    """A flow run as flowcore wrote it up to schema version 5: a column per field."""
    return (
        r.id, r.name, r.kind, r.state.value, r.created, r.parameters, r.parent_run_id,
        r.parent_task_seq, r.started, r.ended, r.heartbeat, r.error_type, r.error_message,
        r.traceback, enc.encode(r.history), r.host, r.pid, r.task_count, r.entrypoint,
        r.resumed_from, r.trace_id, r.span_id,
    )  # fmt: skip


def v5_database(path: Path, runs: list[FlowRunRecord], tasks: Sequence[TaskRunRecord] = ()) -> None:
    """A database as a flowcore with schema version 5 left it, holding ``runs``."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN")
        for number in range(1, 6):
            for statement in MIGRATIONS[number]:
                if statement not in sqlite_store.DATA_STEPS:  # no rows to convert yet
                    conn.execute(statement)
            conn.execute(f"INSERT INTO flowcore_meta VALUES ('migration.{number}', '1.5')")
        conn.execute("INSERT INTO flowcore_meta VALUES ('schema_version', '5')")
        conn.execute("PRAGMA user_version = 5")
        conn.executemany(
            f"INSERT INTO flow_runs ({V5_FLOW_COLS}) VALUES ({', '.join('?' * 22)})",
            [v5_flow_row(r) for r in runs],
        )
        conn.executemany(
            "INSERT INTO task_runs (run_id, seq, name, state, result_ref, body) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(t.run_id, t.seq, t.name, t.state.value, t.result_ref, enc.encode(t)) for t in tasks],
        )
        conn.execute("COMMIT")


def v5_runs() -> list[FlowRunRecord]:
    """Flow runs as a version-5 flowcore recorded them: every field it knew, set."""
    full = full_flow_run()
    full.machine = ""  # not a field before version 6
    full.entrypoint_hash = None  # nor this
    full.upstream = None  # nor the later ones
    full.launched_by = full.scheduled_for = full.interval_start = full.interval_end = None
    full.parent_span_id = None
    return [
        full,
        FlowRunRecord(id="minimal", name="f", state=State.COMPLETED, created=T0),
        FlowRunRecord(
            id="child", name="sub", state=State.COMPLETED, created=T0 + 1, started=T0 + 1,
            ended=T0 + 2, parent_run_id="minimal", parent_task_seq=3, task_count=4,
            history=[("Running", T0 + 1), ("Completed", T0 + 2)], host="h", pid=7,
        ),
        FlowRunRecord(
            id="alive", name="f", state=State.RUNNING, created=T0 + 3, started=T0 + 3,
            heartbeat=T0 + 8, history=[("Running", T0 + 3, "resuming run minimal")],
            host="h", pid=8, resumed_from="minimal", trace_id="ab" * 16, span_id="cd" * 8,
            entrypoint="flows.py:f", parameters=enc.encode({"n": 1}), task_count=2,
        ),
        FlowRunRecord(
            id="marked", name="f", state=State.CRASHED, created=T0 + 4, started=T0 + 4,
            ended=T0 + 5, error_type="Crashed", error_message="the run's process stopped",
            history=[("Running", T0 + 4), ("Crashed", T0 + 40, "no heartbeat from h for 35 s")],
            host="h", pid=9,
        ),
    ]  # fmt: skip


async def test_a_v5_database_is_migrated_and_reads_every_flow_run_back(tmp_path: Path) -> None:
    path = tmp_path / "flowcore.db"
    v5_database(path, v5_runs())
    async with SQLiteStore(path) as store:
        read = {r.id: await store.get_run(r.id) for r in v5_runs()}
        listed = await store.list_runs(limit=100)
        running = await store.list_runs(state="Running")
        named = await store.list_runs(name="sub")
        children = await store.child_runs("minimal")
        by_prefix = await store.get_run("alive"[:3])
    assert read == {r.id: r for r in v5_runs()}  # every field as written, machine ""
    assert sorted(r.id for r in listed) == sorted(r.id for r in v5_runs())
    assert [r.id for r in listed] == [r.id for r in sorted(v5_runs(), key=lambda r: -r.created)]
    assert [r.id for r in running] == ["alive"] and [r.id for r in named] == ["child"]
    assert [r.id for r in children] == ["child"] and by_prefix.id == "alive"
    assert snapshot(path)["user_version"] == SCHEMA_VERSION
    assert "body" in columns(path, "flow_runs")
    assert "migration.6" in meta(path) and meta(path)["migration.5"] == "1.5"


async def test_new_writes_to_a_migrated_database_round_trip_every_field(tmp_path: Path) -> None:
    path = tmp_path / "flowcore.db"
    v5_database(path, v5_runs())
    every_field = full_flow_run()
    every_field.id = "new"
    assert every_field.machine  # set, like every other field
    assert every_field.entrypoint_hash  # set too
    # Fields added after version 5.
    new_fields = {"machine", "entrypoint_hash", "upstream", "launched_by", "scheduled_for"}
    new_fields |= {"interval_start", "interval_end", "parent_span_id"}
    assert set(FlowRunRecord.__struct_fields__) - new_fields <= set(V5_FLOW_COLS.split(", "))
    async with SQLiteStore(path) as store:
        await store.write(WriteBatch([every_field], []))
        # A run written before the migration, written again (its heartbeat, its end).
        alive = await store.get_run("alive")
        alive.heartbeat = T0 + 13
        alive.machine = "linux:boot:pidns:4:1"
        await store.write(WriteBatch([alive], []))
        after_heartbeat = await store.get_run("alive")
        transition(alive, State.COMPLETED, T0 + 14)
        alive.task_count = 9
        await store.write(WriteBatch([alive], []))
        # A Crashed run from before the migration, completed late.
        late = await store.get_run("marked")
        late.state, late.ended, late.error_type, late.error_message = (
            State.COMPLETED, T0 + 50, None, None,
        )  # fmt: skip
        late.history = [("Running", T0 + 4), ("Completed", T0 + 50)]
        await store.write(WriteBatch([late], []))
    async with SQLiteStore(path) as store:  # read back by another connection, reopened
        assert await store.get_run("new") == every_field
        assert after_heartbeat.heartbeat == T0 + 13
        assert after_heartbeat.machine == "linux:boot:pidns:4:1"
        assert await store.get_run("alive") == alive
        assert [r.id for r in await store.list_runs(state="Running")] == []
        marked = await store.get_run("marked")
        unchanged = {r.id: r for r in v5_runs()}
        for run_id in ("minimal", "child", full_flow_run().id):
            assert await store.get_run(run_id) == unchanged[run_id]
    assert marked.state is State.COMPLETED and marked.ended == T0 + 50
    assert [e[:2] for e in marked.history] == [
        ("Running", T0 + 4),
        ("Crashed", T0 + 40),
        ("Completed", T0 + 50),
    ]
    assert "crashed by mistake" in marked.history[1][2]
    assert "no heartbeat from h for 35 s" in marked.history[1][2]


async def test_migration_6_keeps_one_running_resumption_of_a_run(tmp_path: Path) -> None:
    # Two resumptions of one run, both still Running (resumed twice at once): the unique
    # index of migration 6 allows one. The older is taken for crashed, with its task runs.
    path = tmp_path / "flowcore.db"

    def resumption(run_id: str, created: float, of: str, state: State) -> FlowRunRecord:
        return FlowRunRecord(
            id=run_id, name="f", state=state, created=created, started=created,
            resumed_from=of, history=[("Running", created)], host="h", pid=1,
        )  # fmt: skip

    runs = [
        resumption("older", T0, "x", State.RUNNING),
        resumption("newer", T0 + 1, "x", State.RUNNING),
        resumption("done", T0 + 2, "x", State.COMPLETED),
        resumption("other", T0 + 3, "y", State.RUNNING),
    ]
    tasks = [
        TaskRunRecord(run_id="older", seq=0, name="t", state=State.COMPLETED, created=T0),
        TaskRunRecord(run_id="older", seq=1, name="t", state=State.RUNNING, created=T0),
    ]
    v5_database(path, runs, tasks)
    async with SQLiteStore(path) as store:
        states = {r.id: r.state for r in await store.list_runs()}
        older = await store.get_run("older")
        older_tasks = await store.list_task_runs("older")
    assert states == {
        "older": State.CRASHED,
        "newer": State.RUNNING,
        "done": State.COMPLETED,
        "other": State.RUNNING,
    }
    assert older.error_type == "Crashed" and "resumption of run x" in (older.error_message or "")
    assert older.history[-1][0] == "Crashed" and "schema version 6" in older.history[-1][2]
    assert [t.state for t in older_tasks] == [State.COMPLETED, State.CRASHED]
    with closing(sqlite3.connect(path)) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO flow_runs (id, name, state, created, resumed_from) "
            "VALUES ('third', 'f', 'Running', 1.0, 'x')"
        )


def v7_database(
    path: Path,
    runs: Sequence[FlowRunRecord],
    tasks: Sequence[TaskRunRecord],
    logs: Sequence[LogRecord],
    version: int = 7,
) -> None:
    """A database as a flowcore with schema version 7 (logs, before serving) left it
    (or ``version``: the migrations up to it, with these rows)."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN")
        for number in range(1, version + 1):
            for statement in MIGRATIONS[number]:
                if statement not in sqlite_store.DATA_STEPS:  # no rows to convert yet
                    conn.execute(statement)
            conn.execute(f"INSERT INTO flowcore_meta VALUES ('migration.{number}', '{version}.5')")
        conn.execute(f"INSERT INTO flowcore_meta VALUES ('schema_version', '{version}')")
        conn.execute(f"PRAGMA user_version = {version}")
        conn.executemany(
            "INSERT INTO flow_runs (id, name, kind, state, created, parent_run_id, "
            "parent_task_seq, trace_id, resumed_from, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (r.id, r.name, r.kind, r.state.value, r.created, r.parent_run_id,
                 r.parent_task_seq, r.trace_id, r.resumed_from, enc.encode(r))
                for r in runs
            ],
        )  # fmt: skip
        conn.executemany(
            "INSERT INTO task_runs (run_id, seq, name, state, result_ref, body) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(t.run_id, t.seq, t.name, t.state.value, t.result_ref, enc.encode(t)) for t in tasks],
        )
        conn.executemany(
            "INSERT INTO logs (id, run_id, seq, task, time, level, logger, message) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(x.id, x.run_id, x.seq, x.task, x.time, x.level, x.logger, x.message) for x in logs],
        )
        conn.execute("COMMIT")


async def test_a_v7_database_upgrades_to_8_keeping_everything_and_serves(tmp_path: Path) -> None:
    path = tmp_path / "flowcore.db"
    full = full_flow_run()
    running = FlowRunRecord(
        id="running", name="ingest", state=State.RUNNING, created=T0 + 5, started=T0 + 5,
        heartbeat=T0 + 6, history=[("Running", T0 + 5)], host="h", pid=7,
        launched_by="schedule every-5m", scheduled_for=T0,
    )  # fmt: skip
    runs = [full, running, FlowRunRecord(id="done", name="ingest", state=State.COMPLETED,
                                         created=T0)]  # fmt: skip
    tasks = [
        full_task_run(),
        TaskRunRecord(run_id="running", seq=0, name="t", state=State.RUNNING, created=T0 + 5),
    ]
    line = full_log_line()
    logs = [
        msgspec.structs.replace(line, id=1, run_id="running", seq=0),
        msgspec.structs.replace(line, id=2, run_id="running", seq=None, task=None),
    ]
    v7_database(path, runs, tasks, logs)
    before = snapshot(path)
    async with SQLiteStore(path) as store:
        read = [await store.get_run(r.id) for r in runs]
        read_tasks = [t for r in runs for t in await store.list_task_runs(r.id)]
        read_logs = await store.list_logs("running")
        active = [r.id for r in await store.active_runs("ingest")]
        # The new tables take what a server writes.
        claim = SlotClaim("ingest", "every-5m", T0 + 300, run=FlowRunRecord(
            id="slot-run", name="ingest", state=State.RUNNING, created=T0 + 300, host="h", pid=8,
        ))  # fmt: skip
        claimed = await store.claim_slots([claim], T0 + 300)
        await store.put_schedules([ScheduleState("ingest", "every-5m", next_fire=T0 + 600)])
        await store.enqueue_trigger(Trigger("t1", "ingest", "{}", T0))
        triggered = await store.claim_triggers(
            ["ingest"], "srv", T0 + 1, lambda t: FlowRunRecord(
                id="trigger-run", name="ingest", state=State.RUNNING, created=T0 + 1,
            ),
        )  # fmt: skip
        await store.put_served([ServedFlow("ingest", "srv", "h", 8, T0, T0)])
        once = await store.claim_once("crashed-hooks", ["running"], "srv", T0)
        schedules = await store.list_schedules()
        served = await store.list_served()
    assert read == runs, "every flow run of the v7 database reads back as it was"
    assert read_tasks == tasks
    assert read_logs == logs
    assert active == ["running"]
    assert claimed == [True] and [t.run_id for t in triggered] == ["trigger-run"]
    assert once == ["running"] and [s.flow for s in served] == ["ingest"]
    assert [(s.cursor, s.next_fire) for s in schedules] == [(T0 + 300, T0 + 600)]
    after = snapshot(path, like=before)
    assert after["user_version"] == SCHEMA_VERSION
    for table in ("flow_runs", "task_runs", "logs"):  # the v7 rows as they were, and new ones
        assert set(before["rows"][table]) <= set(after["rows"][table]), table
    kept = {item for item in before["schema"] if item[1] not in INDEXES_15}
    assert kept <= set(after["schema"]), "no v7 table or index changed but 15's and 16's"
    new = {name for kind, name, _ in set(after["schema"]) - kept}
    assert new == {
        "schedules", "slots", "triggers", "triggers_pending", "triggers_created", "served",
        "once", "flow_runs_active", *ASSET_SCHEMA, *EVALUATION_SCHEMA, *EXPORT_SCHEMA,
        *RETENTION_SCHEMA, *CHAIN_SCHEMA, *INDEXES_16,
    } - CHAIN_DROPPED - {"flow_runs_top"}  # fmt: skip
    assert meta(path)["migration.7"] == "7.5" and "migration.8" in meta(path)


#: What migration 9 adds: the asset tables and their indexes.
ASSET_SCHEMA = {
    "asset_defs", "asset_materializations", "asset_materializations_key",
    "asset_materializations_run", "asset_partitions", "asset_checks", "asset_checks_key",
    "asset_state", "asset_dynamic_keys",
}  # fmt: skip
#: What migration 10 adds: the evaluations of assets' automation.
EVALUATION_SCHEMA = {"asset_evaluations", "asset_evaluations_key"}
#: What migration 11 adds: the index of runs whose spans are still to ship.
EXPORT_SCHEMA = {"flow_runs_export"}
#: What migration 13 adds: the indexes a prune walks (flowcore runs prune).
RETENTION_SCHEMA = {"flow_runs_top", "triggers_run", "asset_materializations_value_ref"}
#: What migration 14 adds (the asset states' clock, partitions by key) and drops (the
#: asset history's indexes by asset and by run: the history is chained instead).
CHAIN_SCHEMA = {"asset_clock", "asset_partitions_key"}
CHAIN_DROPPED = {"asset_materializations_key", "asset_materializations_run"}
#: What migration 15 drops (flow runs by trace) and makes again (subflows by parent only),
#: and what 16 changes (the state index, now without completed runs; runs by creation in
#: one index, (created, id), not two).
INDEXES_15 = {
    "flow_runs_trace", "flow_runs_parent", "flow_runs_state", "flow_runs_created", "flow_runs_top",
}  # fmt: skip
#: What those migrations make.
INDEXES_16 = {"flow_runs_parent", "flow_runs_state", "flow_runs_created"}


async def test_a_v8_database_upgrades_to_9_keeping_everything_and_takes_assets(
    tmp_path: Path,
) -> None:
    path = tmp_path / "flowcore.db"
    runs = [full_flow_run(), FlowRunRecord(id="done", name="ingest", state=State.COMPLETED,
                                           created=T0)]  # fmt: skip
    tasks = [full_task_run()]
    line = full_log_line()
    logs = [msgspec.structs.replace(line, id=1, run_id=runs[0].id, seq=0)]
    v7_database(path, runs, tasks, logs, version=8)
    before = snapshot(path)
    mat = MaterializationRecord(
        key="orders", at=T0, run_id="done", seq=0, code_version="1", data_version="d1",
        metadata={"rows": 3},
    )  # fmt: skip
    async with SQLiteStore(path) as store:
        read = [await store.get_run(r.id) for r in runs]
        read_tasks = await store.list_task_runs(runs[0].id)
        read_logs = await store.list_logs(runs[0].id)
        changed = await store.sync_assets([AssetDefRecord("orders", "1")], {})
        await store.write(WriteBatch(assets=[mat]))
        history = await store.asset_history("orders")
        [state] = await store.asset_states()
    assert read == runs and read_tasks == tasks and read_logs == logs
    assert changed == {} and history == [mat]
    assert RangeSet.from_bytes(state.materialized).ranges() == ((0, 1),)
    after = snapshot(path, like=before)
    assert after["user_version"] == SCHEMA_VERSION
    for table in ("flow_runs", "task_runs", "logs", "schedules", "served"):
        assert set(before["rows"][table]) <= set(after["rows"][table]), table
    kept = {item for item in before["schema"] if item[1] not in INDEXES_15}
    assert kept <= set(after["schema"]), "no v8 table or index changed but 15's and 16's"
    new = {name for kind, name, _ in set(after["schema"]) - kept}
    assert (
        new
        == (ASSET_SCHEMA | EVALUATION_SCHEMA | EXPORT_SCHEMA | RETENTION_SCHEMA | CHAIN_SCHEMA)
        - CHAIN_DROPPED
        - {"flow_runs_top"}
        | INDEXES_16
    )
    assert meta(path)["migration.8"] == "8.5" and "migration.9" in meta(path)


async def test_a_v12_database_upgrades_to_13_keeping_asset_blobs_and_pruning_old_runs(
    tmp_path: Path,
) -> None:
    path = tmp_path / "flowcore.db"
    old = FlowRunRecord(id="old", name="etl", state=State.COMPLETED, created=T0, ended=T0 + 1)
    kept = FlowRunRecord(id="kept", name="etl", state=State.COMPLETED, created=T0 + 9e5)
    tasks = [TaskRunRecord(run_id="old", seq=0, name="t", state=State.COMPLETED, created=T0)]
    v7_database(path, [old, kept], tasks, [], version=12)
    blob, inline = "ab" * 32, b"\x01"
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.executemany(
            "INSERT INTO asset_materializations (key, partition, at, run_id, seq, body) "
            "VALUES (?, NULL, ?, 'old', 0, ?)",
            [
                (key, T0, enc.encode(MaterializationRecord(
                    key=key, at=T0, run_id="old", seq=0, code_version="1", data_version="v",
                    value_ref=ref, value=value,
                )))
                for key, ref, value in (("big", blob, None), ("small", None, inline))
            ],
        )  # fmt: skip
        conn.executemany(  # (each materialisation wrote its asset's state too)
            "INSERT INTO asset_state (key, body) VALUES (?, ?)",
            [
                (key, enc.encode(AssetStateRecord(key, data_version="v")))
                for key in ("big", "small")
            ],
        )
    async with SQLiteStore(path) as store:
        refs = await store.result_refs()
        pruned = await store.prune_runs(T0 + 5e5)
        left = [r.id for r in await store.list_runs()]
        history = await store.asset_history("big")
    assert refs == {blob}, "a blob a materialisation written before the migration holds"
    assert (pruned.runs, pruned.task_runs, left) == (1, 1, ["kept"])
    assert [m.value_ref for m in history] == [blob], "asset history stays"
    assert meta(path)["migration.12"] == "12.5" and "migration.13" in meta(path)


# Released migrations never change: a database migrated by them must mean the same to
# every later flowcore. A new change is a new numbered migration, with its checksum here.
RELEASED = {
    1: "cbf2042c5a0986d5d350af92081a26d91872ec1f9ef4fa19a411153a1c3004ff",
    2: "7daa1f2549e0ad44ea999a0a9757e839a3e4239f467b44cb52e7ca199e670d91",
    3: "dc896bbbc97812833f9f4e381d501ea5187cb254325e68ab9910056f3d10f7ca",
    4: "b7b40bce135797ef2ce7f50d5c379c302011d89c395d3256d13e6e647fee409d",
    5: "ff8b9477aed75a3a6c5b2c36a8ba85e12a62e0ae759aadd6de5ea622e4f3ba08",
    6: "10c7b6339a1acb74d8417b8c8d8090d063bfef491bca38e0dfa4f8d0d6fc3bf1",
    7: "ddcb1ecee8693ea19fce92dc5fd102d9fb28f9d2790d4cf2b439749649f5b91e",
    8: "eb5d7bc3df7446b47390a40a7c15b55389707f0a32425e032b83c3b15951b030",
    9: "6fe1feda12aa58aef2b0af26e45a5414e856f12e444680f873d5d00f9df26aec",
}


def test_released_migrations_are_never_edited() -> None:
    for number, checksum in RELEASED.items():
        text = "\0".join(MIGRATIONS[number])
        assert hashlib.sha256(text.encode()).hexdigest() == checksum, (
            f"migration {number} was edited; add a new migration instead"
        )
    assert set(MIGRATIONS) - set(RELEASED) == set(range(max(RELEASED) + 1, SCHEMA_VERSION + 1))


async def test_a_v13_database_upgrades_to_14_chaining_the_asset_history(tmp_path: Path) -> None:
    """Migration 14 chains the history kept by an index by asset key: every history
    (of an asset, of each partition) reads back as it did, newest first, and what is
    written next goes on the chains."""
    path = tmp_path / "flowcore.db"
    v7_database(path, [], [], [], version=13)

    def m(key: str, version: str, partition: str | None, index: int) -> MaterializationRecord:
        return MaterializationRecord(
            key=key, at=T0, run_id="old", seq=0, code_version="1", data_version=version,
            partition=partition, index=index,
        )  # fmt: skip

    written = [
        m("orders", "o1", None, 0), m("daily", "d1", "p1", 1), m("daily", "d2", "p2", 2),
        m("orders", "o2", None, 0), m("daily", "d3", "p1", 1), m("daily", "d4", "p1", 1),
    ]  # fmt: skip
    states = {
        "orders": AssetStateRecord("orders", data_version="o2", materializations=2),
        "daily": AssetStateRecord("daily", data_version="d4", materializations=4),
    }
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.executemany(
            "INSERT INTO asset_materializations (id, key, partition, at, run_id, seq, body) "
            "VALUES (?, ?, ?, ?, 'old', 0, ?)",
            [(i, w.key, w.partition, w.at, enc.encode(w)) for i, w in enumerate(written, 1)],
        )
        conn.executemany(
            "INSERT INTO asset_partitions (key, idx, partition, data_version, materialization) "
            "VALUES ('daily', ?, ?, ?, ?)",
            [(1, "p1", "d4", 6), (2, "p2", "d2", 3)],
        )
        conn.executemany(
            "INSERT INTO asset_state (key, body) VALUES (?, ?)",
            [(key, enc.encode(state)) for key, state in states.items()],
        )
    newest_first = written[::-1]
    async with SQLiteStore(path) as store:
        for key in ("orders", "daily"):
            assert await store.asset_history(key) == [w for w in newest_first if w.key == key]
        p1 = [w for w in newest_first if w.partition == "p1"]
        assert await store.asset_history("daily", partition="p1") == p1
        assert await store.asset_history("daily", partition="p1", limit=2) == p1[:2]
        latest = await store.latest_materializations("daily", ["p2", "p1", "p3"])
        assert latest == [written[2], written[5], None]
        assert await store.latest_materializations("orders", [None]) == [written[3]]
        [state] = await store.asset_states(["orders"])
        assert (state.data_version, state.materializations) == ("o2", 2), "states kept"
        new = m("daily", "d5", "p2", 2)
        await store.write(WriteBatch(assets=[new]))
        assert await store.asset_history("daily", partition="p2") == [new, written[2]]
        assert (await store.asset_history("daily"))[:2] == [new, written[5]]
    names = {name for _, name, _ in snapshot(path)["schema"]}
    assert "asset_materializations_key" not in names and "asset_clock" in names
    assert "migration.14" in meta(path)


async def test_migration_15_keeps_subflows_found_by_parent_and_runs_pruned_by_trace(
    tmp_path: Path,
) -> None:
    """Flow runs lose their index by trace and keep one by parent for subflows only:
    a run's subflows are still read through it."""
    path = tmp_path / "flowcore.db"
    parent = FlowRunRecord(id="p", name="etl", state=State.COMPLETED, created=T0, ended=T0 + 1)
    child = FlowRunRecord(
        id="c", name="sub", state=State.COMPLETED, created=T0, ended=T0 + 1,
        parent_run_id="p", parent_task_seq=0,
    )  # fmt: skip
    v7_database(path, [parent, child], [], [], version=14)
    async with SQLiteStore(path) as store:
        assert [r.id for r in await store.child_runs("p")] == ["c"]
    with closing(sqlite3.connect(path)) as conn:
        plan = " ".join(
            str(row[-1])
            for row in conn.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM flow_runs WHERE parent_run_id = ?", ("p",)
            )
        )
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "flow_runs_parent" in plan, plan
    assert "flow_runs_trace" not in indexes


async def test_migration_16_leaves_completed_runs_out_of_the_state_index(tmp_path: Path) -> None:
    """Completed and cached runs, most of a store's runs, leave the state index; runs are
    still listed by every state, a rare one through that index, a common one newest
    first along the created index."""
    path = tmp_path / "flowcore.db"
    runs = [
        FlowRunRecord(
            id=f"c{i:04d}", name="etl", state=State.COMPLETED, created=T0 + i, ended=T0 + i
        )
        for i in range(1_200)
    ]
    runs += [
        FlowRunRecord(id="f1", name="etl", state=State.FAILED, created=T0 + 5, ended=T0 + 6),
        FlowRunRecord(id="r1", name="etl", state=State.RUNNING, created=T0 + 7),
        FlowRunRecord(id="k1", name="etl", state=State.CACHED, created=T0 + 8, ended=T0 + 8),
    ]
    v7_database(path, runs, [], [], version=15)
    async with SQLiteStore(path) as store:
        assert [r.id for r in await store.list_runs(state="Failed")] == ["f1"]
        assert [r.id for r in await store.list_runs(state=State.RUNNING)] == ["r1"]
        assert [r.id for r in await store.list_runs(state="Cached")] == ["k1"]
        newest = await store.list_runs(state="Completed", limit=2)
        assert [r.id for r in newest] == ["c1199", "c1198"]
        assert len(await store.list_runs(state="Completed", limit=5_000)) == 1_200
    with closing(sqlite3.connect(path)) as conn:
        [[sql]] = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'flow_runs_state'")
        plan = " ".join(
            str(row[-1])
            for row in conn.execute(
                "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM flow_runs "
                f"WHERE state = ? AND {sqlite_store.INDEXED_STATES}",
                ("Failed",),
            )
        )
    assert sql.endswith(f"WHERE {sqlite_store.INDEXED_STATES}"), sql
    assert "flow_runs_state" in plan, plan


async def test_migration_16_orders_every_run_by_creation_in_one_index(tmp_path: Path) -> None:
    """Top-level runs and subflows are in one index by ``(created, id)``: a page of runs is
    one walk whatever its filter matches (failed runs that are all subflows included),
    and a prune walks the same index, passing over the subflows."""
    path = tmp_path / "flowcore.db"
    runs = []
    for i in range(1_500):
        runs.append(
            FlowRunRecord(
                id=f"t{i:04d}",
                name="etl",
                state=State.COMPLETED,
                created=T0 + 2 * i,
                ended=T0 + 2 * i,
            )
        )
        runs.append(
            FlowRunRecord(
                id=f"s{i:04d}", name="load", state=State.FAILED, created=T0 + 2 * i + 1,
                ended=T0 + 2 * i + 1, parent_run_id=f"t{i:04d}", parent_task_seq=0,
            )
        )  # fmt: skip
    v7_database(path, runs, [], [], version=15)
    async with SQLiteStore(path) as store:
        got = await store.filter_runs(state="Failed", limit=3, offset=2)
        assert [r.id for r in got] == ["s1497", "s1496", "s1495"]
        got = await store.filter_runs(limit=4)
        assert [r.id for r in got] == ["s1499", "t1499", "s1498", "t1498"]
        pruned = await store.prune_runs(T0 + 101)  # the runs ended before: t0000..t0050
        assert pruned.runs == 51 * 2
        assert (await store.filter_runs(limit=1, offset=2_999 - 102))[0].id == "t0051"
    with closing(sqlite3.connect(path)) as conn:
        indexes = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type='index'"))
    assert "flow_runs_top" not in indexes
    assert indexes["flow_runs_created"].endswith("(created, id)")
