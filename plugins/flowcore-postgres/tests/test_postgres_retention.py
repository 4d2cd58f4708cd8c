"""Retention on PostgreSQL beyond the contract's cases: migration 4 on a store that has
materialisations already, a big run deleted over several transactions (and a prune
stopped half-way), statements served by indexes, and ``flowcore runs prune`` on a store
named by ``FLOWCORE_DB_URL``."""

from __future__ import annotations

import json
from typing import Any

import anyio
import asyncpg
import msgspec
import pytest
from click.testing import CliRunner

import flowcore
from flowcore import State
from flowcore.cli import cli
from flowcore.errors import RunNotFound, StoreError
from flowcore.records import (
    FlowRunRecord,
    LogRecord,
    MaterializationRecord,
    TaskRunRecord,
    WriteBatch,
)
from flowcore.store.base import PruneCount
from flowcore_postgres import MIGRATIONS, PostgresStore, retention
from flowcore_postgres.url import parse_url

pytestmark = pytest.mark.anyio

DAY = 86400.0


async def test_migration_4_finds_the_blobs_of_materialisations_written_before(
    pg_url: str,
) -> None:
    blob = "ab" * 32
    mats = [
        MaterializationRecord(
            key=key, at=1.0, run_id="old", seq=0, code_version="1", data_version="v",
            value_ref=ref, value=None if ref else b"\x01",
        )
        for key, ref in (("big", blob), ("small", None))
    ]  # fmt: skip
    old = FlowRunRecord("old", "etl", State.COMPLETED, 100.0, ended=101.0)
    async with PostgresStore(pg_url) as store:
        await store.write(WriteBatch([old], assets=mats))
    conn = await asyncpg.connect(parse_url(pg_url).dsn)
    try:  # the database as schema version 3 had it
        await conn.execute(
            "DROP INDEX flowcore.flow_runs_top, flowcore.triggers_run, "
            "flowcore.asset_materializations_value_ref; "
            "DELETE FROM flowcore.flowcore_migrations WHERE version = 4"
        )
    finally:
        await conn.close()
    async with PostgresStore(pg_url) as store:
        refs = await store.result_refs()
        pruned = await store.prune_runs(500.0)
        history = await store.asset_history("big")
    assert refs == {blob}
    assert pruned == PruneCount(runs=1)
    assert [m.value_ref for m in history] == [blob], "asset history stays"
    assert retention.VALUE_REF_MATCH in MIGRATIONS[4][2]


def big_run(run_id: str, tasks: int = 55, lines: int = 23) -> WriteBatch:
    run = FlowRunRecord(
        id=run_id, name="etl", state=State.COMPLETED, created=100.0, ended=200.0,
        task_count=tasks, trace_id="1" * 32,
    )  # fmt: skip
    return WriteBatch(
        [run],
        [TaskRunRecord(run_id, i, "t", State.COMPLETED, 100.0 + i) for i in range(tasks)],
        logs=[LogRecord(run_id, None, None, 100.0, 20, "app", f"{i}") for i in range(lines)],
    )


async def test_a_big_run_goes_over_several_transactions_and_a_stopped_prune_leaves_no_orphan(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "ROW_BUDGET", 10)  # 78 rows: 8 transactions
    async with PostgresStore(pg_url) as store:
        await store.write(big_run("big"))
        io = store._io
        real = io.transaction
        calls = 0

        async def failing(body: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 4:
                raise StoreError("the server went away")
            return await real(body)

        monkeypatch.setattr(io, "transaction", failing)
        with pytest.raises(StoreError, match="went away"):
            await store.prune_runs(500.0)
        assert (await store.get_run("big")).id == "big"
        left = len(await store.list_task_runs("big")) + len(await store.list_logs("big"))
        assert left == 78 - 30
        monkeypatch.setattr(io, "transaction", real)
        assert await store.prune_runs(500.0) == PruneCount(runs=1, task_runs=25, logs=23)
        with pytest.raises(RunNotFound):
            await store.get_run("big")
        assert await store.list_task_runs("big") == [] and await store.list_logs("big") == []


class DeadlockOnce:
    """A connection whose ``n``-th statement fails once with a deadlock: PostgreSQL rolls
    the transaction back, and the store tries it again."""

    def __init__(self, conn: asyncpg.Connection, n: int) -> None:
        self.conn, self.n = conn, n

    async def execute(self, sql: str, *args: Any) -> str:
        self.n -= 1
        if self.n == 0:
            raise asyncpg.DeadlockDetectedError("deadlock detected")
        status: str = await self.conn.execute(sql, *args)
        return status


async def test_a_transaction_tried_again_after_a_deadlock_deletes_everything_it_had_to(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 55 task runs, 23 log lines, 40 rows a transaction: the second deletes the last 15
    # task runs and then every log line; its log statement meets a deadlock, so it is
    # rolled back and tried again, as if its task runs were not deleted (they were not).
    monkeypatch.setattr(retention, "ROW_BUDGET", 40)
    async with PostgresStore(pg_url) as store:
        await store.write(big_run("big"))
        io = store._io
        real = io.transaction
        calls = 0

        async def deadlocked(body: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls != 2:
                return await real(body)
            tried = 0

            async def once(conn: asyncpg.Connection) -> Any:
                nonlocal tried
                tried += 1
                return await body(DeadlockOnce(conn, 2) if tried == 1 else conn)

            return await real(once)

        monkeypatch.setattr(io, "transaction", deadlocked)
        assert await store.prune_runs(500.0) == PruneCount(runs=1, task_runs=55, logs=23)
    conn = await asyncpg.connect(parse_url(pg_url).dsn)
    try:
        left = await conn.fetchval("SELECT count(*) FROM flowcore.task_runs")
    finally:
        await conn.close()
    assert left == 0, "no task run of the pruned run is left behind"


#: What a prune may read by a sequential scan: the arrays it is given, its own tree.
ALLOWED = ("Function Scan on unnest", "WorkTable Scan on tree", "CTE Scan on tree")


async def test_a_prune_is_served_by_indexes(pg_url: str) -> None:
    """Each statement of a prune, planned with sequential scans discouraged: none needs
    one (on a big table the planner then walks an index rather than the whole table)."""
    async with PostgresStore(pg_url):
        pass
    statements: list[tuple[str, list[Any]]] = [
        (retention._CANDIDATES.format(upto=retention._UPTO), [1.0, 0.0, "", 5, 9.0, "z"]),
        (retention._NEWEST, [3]),
        (retention._TREE, [["a"]]),
        (retention._SHARED_TRACES, [["t"], ["a"]]),
        (retention._COUNT_LOGS, [["a"]]),
        (f"SELECT body FROM asset_materializations WHERE {retention.VALUE_REF_MATCH}", []),
        ("DELETE FROM triggers WHERE run_id = ANY($1::text[])", [["a"]]),
    ]
    for statement in retention._statements(["a"], ["t"], ["s"], 0, 0):
        limit = [5] if statement.limited.count("$") > len(statement.params) else []
        statements += [(statement.direct, list(statement.params))]
        statements += [(statement.limited, [*statement.params, *limit])]
    conn = await asyncpg.connect(parse_url(pg_url).dsn, server_settings={"search_path": "flowcore"})
    try:
        await conn.execute("SET enable_seqscan = off")
        for sql, params in statements:
            rows = await conn.fetch(f"EXPLAIN {sql}", *params)
            plan = "\n".join(r[0] for r in rows)
            scans = [
                line.strip()
                for line in plan.splitlines()
                if "Seq Scan" in line and not any(ok in line for ok in ALLOWED)
            ]
            assert not scans, f"{sql}\n{plan}"
    finally:
        await conn.close()


@flowcore.task
async def step(i: int) -> int:
    return i


@flowcore.flow
async def work(n: int) -> int:
    return sum(await step.map(range(n)))


async def test_runs_prune_on_the_store_flowcore_db_url_names(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with flowcore.Engine(store=pg_url) as engine:
        await work(3)
        assert engine.last_run is not None
        old = engine.last_run.id
        await work(2)
        new = engine.last_run.id
    async with PostgresStore(pg_url) as store:
        record = await store.get_run(old)
    assert record.ended is not None
    record.created -= 40 * DAY
    record.ended -= 40 * DAY
    conn = await asyncpg.connect(parse_url(pg_url).dsn)
    try:  # date the first run 40 days back (a store never rewrites an ended run)
        await conn.execute(
            "UPDATE flowcore.flow_runs SET created = $2, body = $3 WHERE id = $1",
            old,
            record.created,
            msgspec.msgpack.encode(record),
        )
    finally:
        await conn.close()
    monkeypatch.setenv("FLOWCORE_DB_URL", pg_url)
    args = ["runs", "prune", "--older-than", "30", "--yes", "--json"]
    # The command runs its own event loop: in a thread, as a user's shell would run it.
    result = await anyio.to_thread.run_sync(
        lambda: CliRunner().invoke(cli, args, catch_exceptions=False)
    )
    assert result.exit_code == 0, result.output
    counted = json.loads(result.stdout)
    assert (counted["runs"], counted["task_runs"]) == (1, 3)
    async with PostgresStore(pg_url) as store:
        assert [r.id for r in await store.list_runs()] == [new]
