"""What only the SQLite store does: schema, files it must not touch, locks, URLs."""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import stat
import threading
import time
from contextlib import closing
from pathlib import Path

import aiosqlite
import anyio
import anyio.lowlevel
import pytest

import flowcore
from flowcore import FlowRunRecord, State, TaskRunRecord
from flowcore.records import WriteBatch
from flowcore.store import SCHEMA_VERSION, MemoryStore, SQLiteStore, resolve_store


def _flow(run_id: str, created: float = 1.0, state: State = State.COMPLETED) -> FlowRunRecord:
    return FlowRunRecord(id=run_id, name="etl", state=state, created=created)


def _tasks(run_id: str, n: int) -> list[TaskRunRecord]:
    rng = random.Random(n)
    return [
        TaskRunRecord(
            run_id=run_id,
            seq=seq,
            name="step",
            state=State.COMPLETED,
            created=float(seq),
            inputs=rng.randbytes(200),
            history=[("Running", float(seq)), ("Completed", seq + 0.5)],
        )
        for seq in range(n)
    ]


def _pragma(path: Path, name: str) -> object:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]


async def _make_real_db(path: Path, tasks: int = 10) -> None:
    async with SQLiteStore(path) as store:
        await store.write(WriteBatch([_flow("run1")], _tasks("run1", tasks)))


# -- schema -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_new_database_gets_the_schema_version_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    store = SQLiteStore(path)
    await store.open()
    try:
        await store.write(WriteBatch([_flow("run1")], []))
    finally:
        await store.close()
    assert SCHEMA_VERSION >= 1
    assert _pragma(path, "user_version") == SCHEMA_VERSION
    assert _pragma(path, "journal_mode") == "wal"
    with closing(sqlite3.connect(path)) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        meta = dict(conn.execute("SELECT key, value FROM flowcore_meta").fetchall())
    assert {"flow_runs", "task_runs", "flowcore_meta"} <= tables
    assert meta["schema_version"] == str(SCHEMA_VERSION)


@pytest.mark.anyio
async def test_opening_creates_missing_folders(tmp_path: Path) -> None:
    path = tmp_path / "home" / "nested" / "flowcore.db"
    async with SQLiteStore(path) as store:
        await store.write(WriteBatch([_flow("run1")], []))
    assert path.is_file()


@pytest.mark.anyio
async def test_reopening_keeps_the_data(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    async with SQLiteStore(path) as store:
        await store.write(
            WriteBatch([_flow("run1", created=1.0, state=State.RUNNING)], _tasks("run1", 5))
        )
    async with SQLiteStore(path) as store:
        assert (await store.get_run("run1")).state is State.RUNNING
        assert await store.list_task_runs("run1") == _tasks("run1", 5)
        await store.write(WriteBatch([_flow("run2", created=2.0)], []))
    async with SQLiteStore(str(path)) as store:
        assert [r.id for r in await store.list_runs()] == ["run2", "run1"]
        assert await store.count_task_runs("run1") == {"Completed": 5}
    assert _pragma(path, "user_version") == SCHEMA_VERSION


@pytest.mark.anyio
async def test_a_database_from_a_newer_flowcore_is_refused_and_left_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "f.db"
    await _make_real_db(path)
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.commit()
    before = path.read_bytes()
    store = SQLiteStore(path)
    with pytest.raises(flowcore.SchemaTooNew, match="upgrade") as info:
        await store.open()
    await store.close()
    assert str(SCHEMA_VERSION + 1) in str(info.value)
    assert isinstance(info.value, flowcore.StoreError)
    assert path.read_bytes() == before
    assert _pragma(path, "user_version") == SCHEMA_VERSION + 1


# -- files that are not (usable) flowcore databases ----------------------------------------


@pytest.mark.anyio
async def test_a_file_of_random_bytes_is_store_corrupted_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    path.write_bytes(random.Random(0).randbytes(8192))
    before = path.read_bytes()
    store = SQLiteStore(path)
    with pytest.raises(flowcore.StoreCorrupted, match="not a readable flowcore database"):
        await store.open()
    await store.close()
    assert path.read_bytes() == before


@pytest.mark.anyio
async def test_a_database_with_a_corrupt_header_is_store_corrupted_and_left_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "f.db"
    await _make_real_db(path)
    data = bytearray(path.read_bytes())
    data[:16] = b"definitely nope\x00"  # the "SQLite format 3\0" magic
    path.write_bytes(bytes(data))
    store = SQLiteStore(path)
    with pytest.raises(flowcore.StoreCorrupted, match="Move it aside"):
        await store.open()
    await store.close()
    assert path.read_bytes() == bytes(data)


@pytest.mark.anyio
async def test_a_truncated_database_is_store_corrupted_and_left_alone(tmp_path: Path) -> None:
    real = tmp_path / "real.db"
    await _make_real_db(real, tasks=2000)
    path = tmp_path / "f.db"
    shutil.copyfile(real, path)
    with path.open("r+b") as f:
        f.truncate(real.stat().st_size // 2)
    before = path.read_bytes()
    # SQLite may notice at open or only when it reads a missing page; either way
    # the error is StoreCorrupted, never a raw sqlite3 error or wrong data.
    store = SQLiteStore(path)

    async def open_and_read_everything() -> None:
        await store.open()
        await store.list_runs()
        await store.list_task_runs("run1")
        await store.count_task_runs("run1")

    try:
        with pytest.raises(flowcore.StoreCorrupted):
            await open_and_read_everything()
    finally:
        await store.close()
    assert path.read_bytes() == before


@pytest.mark.anyio
async def test_another_apps_sqlite_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO users (name) VALUES ('ada')")
        conn.commit()
    before = path.read_bytes()
    store = SQLiteStore(path)
    with pytest.raises(flowcore.StoreCorrupted, match="not a flowcore") as info:
        await store.open()
    await store.close()
    assert "users" in str(info.value)
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT name FROM users").fetchall() == [("ada",)]
    # Not one byte changed: not its tables, and not its journal mode either.
    assert _pragma(path, "journal_mode") == "delete"
    assert path.read_bytes() == before


@pytest.mark.anyio
async def test_concurrent_first_opens_of_a_new_database_both_succeed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two processes start on a fresh FLOWCORE_HOME at once. This store reads
    # user_version 0; before it looks at the tables, the other process creates the
    # schema. (The hook makes that interleaving happen every time; without it the
    # race shows up in a few percent of simultaneous starts.)
    path = tmp_path / "f.db"
    interleaved: list[bool] = []

    from flowcore.store.sqlite import schema

    refuse_foreign = schema.refuse_foreign

    async def other_process_migrates_meanwhile(db: aiosqlite.Connection, at: Path) -> None:
        if not interleaved:  # once: the first look, before this store takes the write lock
            interleaved.append(True)
            async with SQLiteStore(at) as other:
                await other.write(WriteBatch([_flow("other")], []))
        await refuse_foreign(db, at)

    monkeypatch.setattr(schema, "refuse_foreign", other_process_migrates_meanwhile)
    store = SQLiteStore(path)
    try:
        await store.open()
        await store.write(WriteBatch([_flow("mine", created=2.0)], []))
        assert [r.id for r in await store.list_runs()] == ["mine", "other"]
    finally:
        await store.close()
    assert interleaved, "the hook did not run: update this test to the new open() sequence"
    assert _pragma(path, "user_version") == SCHEMA_VERSION


# -- files and folders it cannot use -------------------------------------------------------


@pytest.mark.anyio
async def test_an_unwritable_folder_is_store_unavailable_naming_flowcore_home(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)  # 0o500
    try:
        if os.access(folder, os.W_OK):
            # Running as root, where permissions do not stop writes: use a folder that
            # cannot exist instead, one whose parent is a regular file.
            blocker = tmp_path / "afile"
            blocker.write_text("not a folder")
            path = blocker / "flowcore.db"
        else:
            path = folder / "flowcore.db"
        store = SQLiteStore(path)
        with pytest.raises(flowcore.StoreUnavailable, match="FLOWCORE_HOME") as info:
            await store.open()
        await store.close()
        await store.close()
        assert str(path.parent) in str(info.value)
        assert not path.exists()
    finally:
        folder.chmod(stat.S_IRWXU)


@pytest.mark.anyio
async def test_a_folder_under_a_regular_file_is_store_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    store = SQLiteStore(blocker / "sub" / "flowcore.db")
    with pytest.raises(flowcore.StoreUnavailable, match="FLOWCORE_HOME"):
        await store.open()
    await store.close()
    assert blocker.read_text() == "not a folder"


# -- locks --------------------------------------------------------------------------------


def _hold_write_lock(path: Path, locked: threading.Event, seconds: float) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO flowcore_meta (key, value) VALUES ('test.lock', 'held')")
        locked.set()
        time.sleep(seconds)
        conn.execute("COMMIT")


@pytest.mark.anyio
async def test_a_write_waits_for_a_lock_held_by_another_connection(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    async with SQLiteStore(path) as store:
        locked = threading.Event()
        holder = threading.Thread(target=_hold_write_lock, args=(path, locked, 0.5))
        holder.start()
        try:
            assert await anyio.to_thread.run_sync(locked.wait, 5.0)
            started = time.monotonic()
            await store.write(WriteBatch([_flow("run1")], _tasks("run1", 100)))
            waited = time.monotonic() - started
        finally:
            await anyio.to_thread.run_sync(holder.join)
        assert waited > 0.2  # it did wait for the other connection's transaction
        assert (await store.get_run("run1")).state is State.COMPLETED
        assert await store.count_task_runs("run1") == {"Completed": 100}
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT value FROM flowcore_meta WHERE key = 'test.lock'").fetchone()


@pytest.mark.anyio
async def test_a_lock_held_past_lock_timeout_is_store_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    async with SQLiteStore(path, lock_timeout=0.3) as store:
        locked = threading.Event()
        holder = threading.Thread(target=_hold_write_lock, args=(path, locked, 1.0))
        holder.start()
        try:
            assert await anyio.to_thread.run_sync(locked.wait, 5.0)
            with pytest.raises(flowcore.StoreUnavailable, match="locked"):
                await store.write(WriteBatch([_flow("run1")], []))
        finally:
            await anyio.to_thread.run_sync(holder.join)
        # Once the lock is released, the store works again.
        await store.write(WriteBatch([_flow("run1")], []))
        assert (await store.get_run("run1")).id == "run1"


# -- lifecycle ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_close_twice_is_fine(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "f.db")
    await store.open()
    await store.open()  # opening an open store is a no-op
    await store.close()
    await store.close()


@pytest.mark.anyio
async def test_close_without_open_and_after_failed_open_is_fine(tmp_path: Path) -> None:
    await SQLiteStore(tmp_path / "never.db").close()
    path = tmp_path / "f.db"
    path.write_bytes(b"\x00garbage" * 1000)
    store = SQLiteStore(path)
    with pytest.raises(flowcore.StoreCorrupted):
        await store.open()
    await store.close()
    await store.close()


@pytest.mark.anyio
async def test_using_a_store_that_is_not_open_is_a_store_error(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "f.db")
    with pytest.raises(flowcore.StoreError, match="not open"):
        await store.write(WriteBatch([_flow("run1")], []))
    with pytest.raises(flowcore.StoreError, match="not open"):
        await store.list_runs()


def test_bad_synchronous_setting_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(flowcore.ConfigurationError, match="synchronous"):
        SQLiteStore(tmp_path / "f.db", synchronous="OFF")
    assert SQLiteStore(tmp_path / "f.db", synchronous="full").synchronous == "FULL"


# -- resolve_store ---------------------------------------------------------------------------


def test_resolve_store_none_uses_flowcore_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWCORE_HOME", str(tmp_path / "home"))
    store = resolve_store(None)
    assert isinstance(store, SQLiteStore)
    assert store.path == tmp_path / "home" / "flowcore.db"
    assert store.location == str(tmp_path / "home" / "flowcore.db")
    assert not (tmp_path / "home").exists()  # resolving creates nothing


def test_resolve_store_none_with_flowcore_home_unset_uses_dot_flowcore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for value in (None, ""):
        if value is None:
            monkeypatch.delenv("FLOWCORE_HOME", raising=False)
        else:
            monkeypatch.setenv("FLOWCORE_HOME", value)
        store = resolve_store()
        assert isinstance(store, SQLiteStore)
        assert store.path == tmp_path / ".flowcore" / "flowcore.db"


@pytest.mark.parametrize("spec", ["memory", ":memory:"])
def test_resolve_store_memory(spec: str) -> None:
    assert isinstance(resolve_store(spec), MemoryStore)


def test_resolve_store_paths(tmp_path: Path) -> None:
    by_str = resolve_store(str(tmp_path / "a.db"))
    assert isinstance(by_str, SQLiteStore)
    assert by_str.path == tmp_path / "a.db"
    by_path = resolve_store(tmp_path / "b.db")
    assert isinstance(by_path, SQLiteStore)
    assert by_path.path == tmp_path / "b.db"
    relative = resolve_store("runs/c.db")
    assert isinstance(relative, SQLiteStore)
    assert relative.path == Path("runs/c.db")


def test_resolve_store_sqlite_urls(tmp_path: Path) -> None:
    absolute = resolve_store(f"sqlite:///{tmp_path}/x.db")  # sqlite:////tmp/...: absolute
    assert isinstance(absolute, SQLiteStore)
    assert absolute.path == tmp_path / "x.db"
    assert absolute.path.is_absolute()
    relative = resolve_store("sqlite:///runs.db")  # as in SQLAlchemy: relative
    assert isinstance(relative, SQLiteStore)
    assert relative.path == Path("runs.db")


def test_resolve_store_passes_a_store_object_through() -> None:
    store = MemoryStore()
    assert resolve_store(store) is store


def test_resolve_store_rejects_other_types() -> None:
    with pytest.raises(flowcore.ConfigurationError, match="int"):
        resolve_store(42)  # type: ignore[arg-type]


def test_resolve_store_unknown_scheme_lists_installed_stores_without_the_password() -> None:
    # A scheme no plugin provides (a PostgreSQL plugin may be installed here).
    with pytest.raises(flowcore.ConfigurationError) as info:
        resolve_store("nosuchdb://u:secret@h/db")
    message = str(info.value)
    assert "nosuchdb" in message
    assert "installed" in message
    assert "sqlite" in message
    assert "memory" in message
    assert "secret" not in message
    assert all("secret" not in str(arg) for arg in info.value.args)
    assert info.value.__cause__ is None
    assert "secret" not in str(info.value.__context__)


@pytest.mark.anyio
async def test_resolved_sqlite_url_store_works(tmp_path: Path) -> None:
    store = resolve_store(f"sqlite:///{tmp_path}/url.db")
    await store.open()
    try:
        await store.write(WriteBatch([_flow("run1")], []))
    finally:
        await store.close()
    assert (tmp_path / "url.db").is_file()


# -- batched writes -----------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("n", [1, 255, 4096, 4096 + 4095 + 7])
async def test_a_batch_is_written_whole_whatever_its_size(tmp_path: Path, n: int) -> None:
    # Rows go many to a statement (full chunks, then power-of-two pieces of the rest):
    # every size must come out whole and in place, updates included.
    path = tmp_path / "flowcore.db"
    tasks = _tasks("run1", n)
    for t in tasks[::3]:
        t.state = State.RUNNING
    async with SQLiteStore(path) as store:
        await store.write(WriteBatch([_flow("run1")], tasks))
        for t in tasks[::3]:
            t.state = State.COMPLETED
            t.attempts = 2
        await store.write(WriteBatch([], tasks[::3]))
        await store.write(WriteBatch([], tasks[1:2]))  # a terminal row is not overwritten
        back = await store.list_task_runs("run1", limit=None)
        counts = await store.count_task_runs("run1")
    assert counts == {"Completed": n}
    assert [t.seq for t in back] == list(range(n))
    assert [t.inputs for t in back] == [t.inputs for t in tasks]
    assert [t.attempts for t in back] == [2 if i % 3 == 0 else 0 for i in range(n)]


@pytest.mark.anyio
async def test_cancelled_writes_never_leave_the_database_locked(tmp_path: Path) -> None:
    # A write cancelled at any point (even while BEGIN IMMEDIATE is on the connection's
    # thread) must not leave a transaction open: another connection must still write.
    path = tmp_path / "flowcore.db"
    rng = random.Random(7)
    async with SQLiteStore(path) as store, SQLiteStore(path, lock_timeout=2) as other:
        for i in range(300):
            with anyio.move_on_after(rng.random() * 0.002):
                await store.lease_slots("x", 5, "me", f"wait{i}", 9, 0.0, 0.0, 1e12)
            with anyio.move_on_after(rng.random() * 0.002):
                await store.write(WriteBatch([_flow(f"run{i}")], []))
        await other.write(WriteBatch([_flow("other")], []))  # StoreUnavailable if a lock was left
        assert "other" in {r.id for r in await other.list_runs(limit=1000)}


@pytest.mark.anyio
async def test_new_rows_are_inserted_and_rows_written_before_are_updated(tmp_path: Path) -> None:
    # Task runs seen for the first time are plain INSERTs; a row that exists anyway
    # (another process wrote it, or an ended record changed) falls back to the upsert,
    # which keeps ended rows as they are, and the whole batch still lands.
    path = tmp_path / "flowcore.db"
    running, ended, crashed_elsewhere = _tasks("run1", 3)
    running.state = State.RUNNING
    ended.result_ref = "ab" * 32  # rows with and without a result file take two statements
    async with SQLiteStore(path) as store, SQLiteStore(path) as other:
        marked = TaskRunRecord(
            run_id="run1", seq=crashed_elsewhere.seq, name="step", state=State.CRASHED, created=0.0
        )
        await other.write(WriteBatch([], [marked]))
        await store.write(WriteBatch([_flow("run1")], [running, ended, crashed_elsewhere]))
        assert list(store._unfinished.values()) == [running]
        running.state = State.COMPLETED
        running.attempts = 3
        ended.attempts = 9  # changed after it ended: not written over
        await store.write(WriteBatch([], [running, ended]))
        assert store._unfinished == {}
        back = {t.seq: t for t in await store.list_task_runs("run1", limit=None)}
    # The row another process marked Crashed takes the late completion, keeping the mark.
    assert [back[i].state for i in range(3)] == [State.COMPLETED] * 3
    marks = [entry[0] for entry in back[crashed_elsewhere.seq].history]
    assert marks == ["Running", "Crashed", "Completed"]
    assert back[running.seq].attempts == 3
    assert back[ended.seq].attempts == 0
    assert back[ended.seq].result_ref == "ab" * 32 and back[running.seq].result_ref is None


@pytest.mark.anyio
async def test_cache_lookups_share_a_snapshot_until_the_loops_next_turn(tmp_path: Path) -> None:
    # Synchronous cache reads share one read transaction for a turn of the event loop;
    # an entry another process commits meanwhile is seen from the next turn, and one
    # this store commits is seen at once.
    from flowcore.records import CacheEntry

    path = tmp_path / "flowcore.db"

    def entry(key: str) -> CacheEntry:
        return CacheEntry(key=key, task_name="t", created=1.0, result=b"x")

    async with SQLiteStore(path) as store, SQLiteStore(path) as other:
        assert store.get_cache_nowait("a") is None  # opens the snapshot
        await other.write(WriteBatch([], [], [entry("a")]))  # written at once (a small write)
        assert store.get_cache_nowait("a") is None  # not yet: the snapshot is older
        await anyio.lowlevel.checkpoint()  # the loop's next turn
        assert store.get_cache_nowait("a") is not None
        assert store.get_cache_nowait("b") is None  # a new snapshot, held this turn
        with closing(sqlite3.connect(path)) as elsewhere:  # committed within this turn
            elsewhere.execute(
                "INSERT INTO cache_entries (key, task_name, created) VALUES ('b', 't', 1.0)"
            )
            elsewhere.commit()
        assert store.get_cache_nowait("b") is None  # not yet: the snapshot is older
        await anyio.lowlevel.checkpoint()  # the loop's next turn
        assert store.get_cache_nowait("b") is not None
        await store.write(WriteBatch([], [], [entry("c")]))
        assert store.get_cache_nowait("c") is not None  # its own write ends the snapshot
        # From a thread (no event loop there to end a snapshot): a read of its own.
        await anyio.lowlevel.checkpoint()
        found = await anyio.to_thread.run_sync(store.get_cache_nowait, "c")
        assert found is not None and not store._io._reading
        assert store._io._reader is not None and not store._io._reader.in_transaction


@pytest.mark.anyio
async def test_a_write_keeps_nothing_alive_once_it_is_committed(tmp_path: Path) -> None:
    # The connection's thread holds the last function it ran until it gets the next
    # one: a write must not keep its rows (and so its batch's data) alive through it.
    import gc
    import tracemalloc

    path = tmp_path / "flowcore.db"
    async with SQLiteStore(path) as store:
        await store.write(WriteBatch([_flow("warm")], _tasks("warm", 10)))
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            tasks = _tasks("run1", 4000)  # about 1.5 MB of rows once encoded
            await store.write(WriteBatch([_flow("run1")], tasks))
            del tasks
            gc.collect()
            kept = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    assert kept < 256 * 1024, f"{kept} bytes still held after the write"


# -- small writes on the event loop's thread --------------------------------------------


@pytest.mark.anyio
async def test_a_small_write_is_committed_without_a_trip_to_the_connections_thread(
    tmp_path: Path,
) -> None:
    # A flow run's last write is small and its caller waits for it: it is made at once
    # on the loop's thread (no loop turn passes), and another connection sees it.
    import asyncio

    from flowcore.store.sqlite import connection as sqlite_store

    path = tmp_path / "flowcore.db"
    turns: list[str] = []
    async with SQLiteStore(path) as store:
        asyncio.get_running_loop().call_soon(turns.append, "turn")
        await store.write(WriteBatch([_flow("small")], _tasks("small", 10)))
        assert turns == []  # committed before the loop ran anything else
        with closing(sqlite3.connect(path)) as conn:
            assert conn.execute("SELECT COUNT(*) FROM task_runs").fetchone()[0] == 10
        # A big batch goes to the connection's thread (the loop is not blocked by it).
        await anyio.lowlevel.checkpoint()
        turns.clear()
        big = _tasks("big", sqlite_store._HERE_MAX_ROWS + 1)
        asyncio.get_running_loop().call_soon(turns.append, "turn")
        await store.write(WriteBatch([_flow("big")], big))
        assert turns == ["turn"]
        assert await store.count_task_runs("big") == {"Completed": len(big)}


@pytest.mark.anyio
async def test_writes_stay_in_order_while_one_waits_for_a_lock_on_the_thread(
    tmp_path: Path,
) -> None:
    # A write that found the database locked waits on the connection's thread; a
    # later write must not overtake it once the lock is free, or an older value
    # would be committed last.
    from flowcore.records import CacheEntry

    def entry(value: bytes) -> CacheEntry:
        return CacheEntry(key="k", task_name="t", created=1.0, result=value)

    path = tmp_path / "flowcore.db"
    async with SQLiteStore(path) as store:
        locked = threading.Event()
        holder = threading.Thread(target=_hold_write_lock, args=(path, locked, 0.3))
        holder.start()
        try:
            assert await anyio.to_thread.run_sync(locked.wait, 5.0)
            async with anyio.create_task_group() as tg:
                tg.start_soon(store.write, WriteBatch([], [], [entry(b"first")]))
                await anyio.sleep(0.05)  # the first write now retries on the thread
                await anyio.to_thread.run_sync(holder.join)  # the lock is free again
                await store.write(WriteBatch([], [], [entry(b"second")]))
        finally:
            await anyio.to_thread.run_sync(holder.join)
        found = await store.get_cache("k")
        assert found is not None and found.result == b"second"


@pytest.mark.anyio
async def test_small_writes_still_get_the_wal_checkpointed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The loop-thread connection does not checkpoint on its own (a checkpoint
    # fsyncs); the store asks for checkpoints on the connection's thread, so the
    # WAL does not grow for as long as the writes stay small.
    from flowcore.store.sqlite import connection as sqlite_store

    async def wal_size(checkpoint_rows: int, name: str) -> int:
        monkeypatch.setattr(sqlite_store, "_CHECKPOINT_ROWS", checkpoint_rows)
        path = tmp_path / name / "flowcore.db"
        async with SQLiteStore(path) as store:
            for i in range(60):
                await store.write(WriteBatch([_flow(f"r{i}")], _tasks(f"r{i}", 100)))
                checkpoint = store._io._checkpoint  # asked for by that write, if any
                if checkpoint is not None:
                    await checkpoint  # let it end: no timing luck in this test
            return (await anyio.Path(f"{path}-wal").stat()).st_size

    never = await wal_size(10**9, "never")
    checkpointed = await wal_size(500, "checkpointed")
    assert checkpointed < never / 3, (checkpointed, never)


def _delete_database(folder: Path) -> None:
    for leftover in folder.glob("flowcore.db*"):
        leftover.unlink()


@pytest.mark.anyio
async def test_a_cache_lookup_after_the_database_was_deleted_says_so_and_creates_nothing(
    tmp_path: Path,
) -> None:
    # The lookup opens its reading connection lazily: it must not make a new, empty
    # database where the deleted one was.
    path = tmp_path / "flowcore.db"
    async with SQLiteStore(path) as store:
        await store.write(WriteBatch([_flow("run1")], []))
        _delete_database(tmp_path)
        with pytest.raises(flowcore.StoreUnavailable, match="is gone"):
            store.get_cache_nowait("key")
        assert not path.exists()


@pytest.mark.anyio
async def test_changes_sees_every_commit_and_never_waits_for_the_writer(tmp_path: Path) -> None:
    # `flowcore serve` polls changes() to wake for triggers and pauses: it must see this
    # store's own commits (made on its other connections) and another process's, and
    # answer at once while another process holds the write lock.
    path = tmp_path / "flowcore.db"
    async with SQLiteStore(path) as store:
        first = await store.changes()
        assert await store.changes() == first
        await store.write(WriteBatch([_flow("a")], []))  # a small write: the loop's connection
        second = await store.changes()
        assert second != first
        await store.write(WriteBatch([], _tasks("a", 1_000)))  # a big one: aiosqlite's thread
        third = await store.changes()
        assert third != second
        with closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            other.execute("INSERT INTO once (kind, key, holder, claimed) VALUES ('k', 'x', 'h', 1)")
            with anyio.fail_after(5):  # the write lock is held: changes() must not wait
                assert await store.changes() == third  # not committed yet
            other.execute("COMMIT")
        assert await store.changes() != third
        assert await store.claim_once("k", ["x", "y"], "me", 2.0) == ["y"]


def test_flowcore_db_url_names_the_default_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``$FLOWCORE_DB_URL`` wins over ``$FLOWCORE_HOME``: ``flowcore.run`` and the CLI
    read and write the store it names, and its password is never shown."""
    from click.testing import CliRunner

    from flowcore.cli import cli

    db = tmp_path / "shared.db"
    monkeypatch.setenv("FLOWCORE_DB_URL", f"sqlite:///{db}")
    store = resolve_store(None)
    assert isinstance(store, SQLiteStore) and Path(store.path) == db

    @flowcore.flow
    async def hello_from_the_url() -> str:
        return "hi"

    assert flowcore.run(hello_from_the_url) == "hi"
    assert db.exists() and not (tmp_path / "flowcore-home" / "flowcore.db").exists()
    listed = CliRunner().invoke(cli, ["runs", "ls", "--json"])
    assert listed.exit_code == 0, listed.output
    assert "hello_from_the_url" in listed.output
    monkeypatch.setenv("FLOWCORE_DB_URL", "nosuchdb://u:secret@h/db")
    shown = CliRunner().invoke(cli, ["runs", "ls"])
    assert shown.exit_code != 0 and "secret" not in shown.output


@pytest.mark.anyio
async def test_an_asset_write_that_failed_leaves_no_trace_in_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store keeps the asset states it wrote, to skip decoding them again; a write
    that changed them and then failed (rolled back) must not leave its changes there."""
    from flowcore.records import MaterializationRecord
    from flowcore.store.sqlite import store as sqlite_store

    def mat(version: str) -> MaterializationRecord:
        return MaterializationRecord(
            key="orders", at=1.0, run_id="r", seq=0, code_version="1", data_version=version
        )

    async with SQLiteStore(tmp_path / "f.db") as store:
        await store.write(WriteBatch(assets=[mat("v1")]))
        real = sqlite_store._many

        def fail_on_history(db: sqlite3.Connection, template: str, rows: object) -> None:
            if "asset_materializations" in template:
                raise sqlite3.OperationalError("disk I/O error")
            real(db, template, rows)  # type: ignore[arg-type]

        monkeypatch.setattr(sqlite_store, "_many", fail_on_history)
        with pytest.raises(flowcore.StoreError):
            await store.write(WriteBatch(assets=[mat("v2")]))
        monkeypatch.setattr(sqlite_store, "_many", real)
        await store.write(WriteBatch(assets=[mat("v3")]))
        [state] = await store.asset_states(["orders"])
        assert (state.data_version, state.materializations) == ("v3", 2)
        assert [m.data_version for m in await store.asset_history("orders")] == ["v3", "v1"]


@pytest.mark.anyio
async def test_asset_states_written_by_another_handle_are_read_not_remembered(
    tmp_path: Path,
) -> None:
    from flowcore.records import MaterializationRecord

    def mat(version: str) -> MaterializationRecord:
        return MaterializationRecord(
            key="orders", at=1.0, run_id="r", seq=0, code_version="1", data_version=version
        )

    async with SQLiteStore(tmp_path / "f.db") as one, SQLiteStore(tmp_path / "f.db") as two:
        await one.write(WriteBatch(assets=[mat("v1")]))
        await two.write(WriteBatch(assets=[mat("v2")]))
        await one.write(WriteBatch(assets=[mat("v3")]))
        [state] = await two.asset_states(["orders"])
        assert (state.data_version, state.materializations) == ("v3", 3)


@pytest.mark.anyio
async def test_task_runs_written_while_running_leave_no_table_behind(tmp_path: Path) -> None:
    """The store remembers the task runs it wrote unfinished (their next write is an
    upsert); a dict keeps its table at its largest, so once all had ended 3,000 of them
    left 144 KB held for the engine's life (288 KB for 10,000): the table is given back."""
    import asyncio
    import sys

    @flowcore.task
    async def waits() -> int:
        await asyncio.sleep(0.05)  # longer than the flush interval: written Running first
        return 1

    @flowcore.flow
    async def many() -> int:
        return sum(await asyncio.gather(*(waits() for _ in range(3000))))

    async with flowcore.Engine(store=tmp_path / "f.db") as engine:
        assert await many() == 3000
        await engine.recorder.flush()
        store = engine.store
        assert isinstance(store, SQLiteStore)
        assert sys.getsizeof(store._unfinished) < 1024, sys.getsizeof(store._unfinished)
