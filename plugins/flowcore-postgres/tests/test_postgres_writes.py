"""The engine's batches (one round trip each), large results through the blob seam, and the
change token ``flowcore serve`` polls (LISTEN/NOTIFY)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from asyncpg.connection import LoggedQuery

import flowcore
from flowcore.errors import ResultUnreadable
from flowcore.records import (
    CacheEntry,
    FlowRunRecord,
    LogRecord,
    SpanRecord,
    TaskRunRecord,
    Trigger,
    WriteBatch,
)
from flowcore.states import State
from flowcore.store.files import FileBlobs, blob_ref
from flowcore.views.results import task_result
from flowcore_postgres import PostgresStore
from flowcore_postgres.blobs import TableBlobs
from flowcore_postgres.url import parse_url

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[PostgresStore]:
    async with PostgresStore(pg_url) as opened:
        yield opened


def _batch(run_id: str, tasks: int, state: State = State.COMPLETED) -> WriteBatch:
    return WriteBatch(
        [FlowRunRecord(run_id, "etl", State.RUNNING, 1.0)],
        [TaskRunRecord(run_id, seq, "step", state, 1.0 + seq) for seq in range(tasks)],
        [CacheEntry(f"k{run_id}", "step", 1.0, result=b"v")],
        [SpanRecord("t" * 32, f"{run_id[:8]:0>16}", "flow etl", 5, run_id=run_id)],
        [LogRecord(run_id, i, "step", 1.0, 20, "app", f"line {i}") for i in range(50)],
    )


async def test_a_batch_of_thousands_of_records_is_one_round_trip(store: PostgresStore) -> None:
    await store.write(_batch("warmup", 1))
    sent: list[str] = []

    def logged(record: LoggedQuery) -> None:
        sent.append(record.query)

    writer = await store._io._writer_connection()
    writer.add_query_logger(logged)
    try:
        await store.write(_batch("run-1", 2000))
    finally:
        writer.remove_query_logger(logged)
    assert len(sent) == 1, sent
    counts = await store.count_task_runs("run-1")
    assert counts == {"Completed": 2000}
    assert len(await store.list_logs("run-1")) == 50


async def test_a_batch_holding_a_record_twice_keeps_the_last(store: PostgresStore) -> None:
    running = TaskRunRecord("r", 0, "step", State.RUNNING, 1.0)
    done = TaskRunRecord("r", 0, "step", State.COMPLETED, 1.0, attempts=1)
    first = FlowRunRecord("r", "etl", State.RUNNING, 1.0)
    last = FlowRunRecord("r", "etl", State.COMPLETED, 1.0, task_count=1)
    await store.write(WriteBatch([first, last], [running, done]))
    assert (await store.get_run("r")).state is State.COMPLETED
    assert await store.list_task_runs("r") == [done]


async def test_large_results_go_to_the_blobs_table_for_every_host(pg_url: str) -> None:
    big = b"x" * 300_000

    @flowcore.task(persist_result=True)
    async def produce() -> bytes:
        return big

    @flowcore.flow
    async def make() -> int:
        return len(await produce())

    async with flowcore.Engine(store=pg_url) as engine:
        assert await make() == len(big)
        assert engine.last_run is not None
        run_id = engine.last_run.id
    # Another host: a new handle on the database, no shared folder.
    async with PostgresStore(pg_url) as elsewhere:
        assert isinstance(elsewhere.blobs, TableBlobs)
        [task] = await elsewhere.list_task_runs(run_id)
        assert task.result_ref is not None and task.result is None  # not inline: a blob
        size = await elsewhere.blobs.size(task.result_ref)
        assert size is not None and size > len(big)  # the serialised result
        assert await task_result(run_id, 0, store=elsewhere) == big


async def test_a_blob_altered_in_the_table_is_refused(store: PostgresStore) -> None:
    blobs = store.blobs
    assert blobs is not None
    data = b"result" * 5000
    await blobs.put({blob_ref(data): data})
    conn = await asyncpg.connect(parse_url(store.url.dsn).dsn)
    try:
        await conn.execute("UPDATE flowcore.blobs SET data = 'tampered'::bytea")
    finally:
        await conn.close()
    with pytest.raises(ResultUnreadable, match="does not match its checksum"):
        await blobs.get(blob_ref(data))
    with pytest.raises(ValueError, match="SHA-256"):
        await blobs.put({blob_ref(b"one"): b"another"})


async def test_blobs_can_live_in_a_shared_folder_instead(pg_url: str, tmp_path: Path) -> None:
    async with PostgresStore(f"{pg_url}&blobs={tmp_path / 'shared'}") as store:
        assert isinstance(store.blobs, FileBlobs)
        await store.blobs.put({blob_ref(b"abc"): b"abc"})
    assert (tmp_path / "shared" / blob_ref(b"abc")[:2] / blob_ref(b"abc")).read_bytes() == b"abc"


async def test_changes_move_on_what_a_server_acts_on_and_not_on_task_batches(
    pg_url: str,
) -> None:
    async with PostgresStore(pg_url) as server, PostgresStore(pg_url) as worker:
        token = await server.changes()
        await worker.write(_batch("busy", 100, State.RUNNING))  # a run's task batches
        assert await server.changes() == token
        await worker.enqueue_trigger(Trigger("t1", "ingest", "{}", 1.0))
        moved = await server.changes()
        assert moved != token
        await worker.write(WriteBatch([FlowRunRecord("busy", "etl", State.COMPLETED, 1.0)]))
        assert await server.changes() != moved  # a run ended: a server may start the next


async def test_a_writer_connection_left_unusable_is_replaced_and_its_error_is_a_store_error(
    pg_url: str,
) -> None:
    # What a connection the server dropped in the middle of a statement can answer every
    # later statement with: asyncpg's InternalClientError (not one of its InterfaceErrors).
    async def stuck(conn: asyncpg.Connection) -> None:
        raise asyncpg.InternalClientError(
            "cannot switch to state 11; another operation (2) is in progress"
        )

    async with PostgresStore(pg_url) as store:
        await store.write(_batch("before", 1))
        first = store._io._writer
        with pytest.raises(flowcore.StoreUnavailable, match="another operation"):
            await store._io.write(stuck)
        await store.write(_batch("after", 3))  # on a new connection
        assert store._io._writer is not first and first is not None and first.is_closed()
        assert (await store.count_task_runs("after")) == {"Completed": 3}


async def test_a_server_restart_is_a_change_not_an_error(pg_url: str) -> None:
    async with PostgresStore(pg_url) as store:
        token = await store.changes()
        conn = await asyncpg.connect(parse_url(pg_url).dsn)
        try:
            # Every other connection of this database goes, as when the server restarts.
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await conn.close()
        try:
            moved = await store.changes()
        except flowcore.StoreError:  # the lost connection, when it is found by the query
            moved = await store.changes()
        assert moved != token  # a new connection may have missed news: "something changed"
        try:  # and the writer reconnects, as the engine's next flush would find
            await store.write(_batch("after", 3))
        except flowcore.StoreError:
            await store.write(_batch("after", 3))
        assert (await store.count_task_runs("after")) == {"Completed": 3}
