"""The schema: created on a fresh database, kept on reopen, a newer one refused, a foreign
one left alone; the URL, the entry points and the errors a user meets first."""

from __future__ import annotations

import hashlib

import anyio
import asyncpg
import pytest

import flowcore
from flowcore.errors import ConfigurationError, SchemaTooNew, StoreCorrupted, StoreUnavailable
from flowcore.records import FlowRunRecord, TaskRunRecord, WriteBatch
from flowcore.states import State
from flowcore.store import resolve_store
from flowcore_postgres import MIGRATIONS, SCHEMA_VERSION, PostgresStore
from flowcore_postgres import schema as schema_module
from flowcore_postgres.url import parse_url, redact

from .conftest import with_schema

pytestmark = pytest.mark.anyio

#: The text of each released migration: a released migration is never edited (add one).
RELEASED = {
    1: "b168775c63a5c9a7",
    2: "f80381ba7688584e",
    3: "f100049d9ca168db",
    4: "da80ba7528d9e2c7",
}


#: The indexes migration 4 adds (retention).
MIGRATION_4_INDEXES = ("flow_runs_top", "triggers_run", "asset_materializations_value_ref")


async def versions(url: str, schema: str = "flowcore") -> list[int]:
    conn = await asyncpg.connect(parse_url(url).dsn)
    try:
        rows = await conn.fetch(f'SELECT version FROM "{schema}".flowcore_migrations ORDER BY 1')
    finally:
        await conn.close()
    return [r[0] for r in rows]


def test_released_migrations_are_frozen() -> None:
    for number, digest in RELEASED.items():
        text = "\n".join(MIGRATIONS[number])
        got = hashlib.sha256(text.encode()).hexdigest()[:16]
        assert got == digest, f"migration {number} was edited: add a new migration instead"
    assert set(MIGRATIONS) == set(range(1, SCHEMA_VERSION + 1))


async def test_a_fresh_database_gets_the_schema_and_its_version(pg_url: str) -> None:
    async with PostgresStore(pg_url) as store:
        await store.write(WriteBatch([flowcore.FlowRunRecord("r1", "etl", State.COMPLETED, 1.0)]))
    assert await versions(pg_url) == list(range(1, SCHEMA_VERSION + 1))


async def test_reopening_keeps_the_data_and_migrates_nothing(pg_url: str) -> None:
    async with PostgresStore(pg_url) as store:
        await store.write(WriteBatch([flowcore.FlowRunRecord("r1", "etl", State.COMPLETED, 1.0)]))
    before = await versions(pg_url)
    async with PostgresStore(pg_url) as store:
        assert [r.id for r in await store.list_runs()] == ["r1"]
    assert await versions(pg_url) == before


async def test_migration_3_gives_the_runs_recorded_before_it_their_tags(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def task(run_id: str, seq: int, tags: list[str] | None, inputs: bytes = b"") -> TaskRunRecord:
        return TaskRunRecord(run_id, seq, "step", State.COMPLETED, 1.0, tags=tags, inputs=inputs)

    runs = [FlowRunRecord(f"r{i}", "etl", State.COMPLETED, float(i)) for i in range(6)]
    runs.append(FlowRunRecord("sub", "child", State.COMPLETED, 2.5, parent_run_id="r2"))
    tasks = [
        task("r0", 0, ["api"]), task("r0", 1, ["api", "db"]), task("r0", 2, None),
        task("r1", 0, None, inputs=b"\x91\xa4tags"),  # "tags" in its inputs, not its tags
        task("r2", 0, ["db"]), task("sub", 0, ["ml"]),  # a subflow's tags are its own
        task("r3", 0, []), task("r4", 0, ["a\x00b"]), task("r5", 7, ["api"]),
        task("gone", 0, ["api"]),  # a task run whose flow run is not there: no run to tag
    ]  # fmt: skip
    async with PostgresStore(pg_url) as store:
        await store.write(WriteBatch(runs, tasks))
    # The database as schema version 2 had it: no run_tags.
    conn = await asyncpg.connect(parse_url(pg_url).dsn)
    try:
        await conn.execute(
            "DROP TABLE flowcore.run_tags; "
            f"DROP INDEX {', '.join('flowcore.' + name for name in MIGRATION_4_INDEXES)}; "
            "DELETE FROM flowcore.flowcore_migrations WHERE version >= 3"
        )
    finally:
        await conn.close()
    assert await versions(pg_url) == [1, 2]
    monkeypatch.setattr(schema_module, "_FILL_CHUNK", 2)  # task runs read 2 at a time: many chunks
    async with PostgresStore(pg_url) as store:
        assert await versions(pg_url) == [1, 2, 3, 4]
        got = {
            tag: [r.id for r in await store.filter_runs(tag=tag)]
            for tag in ("api", "db", "ml", "a\x00b", "tags", "a")
        }
    assert got == {
        "api": ["r5", "r0"], "db": ["r2", "r0"], "ml": ["sub"], "a\x00b": ["r4"], "tags": [],
        "a": [],
    }  # fmt: skip


async def test_processes_creating_the_schema_at_once_create_it_once(pg_url: str) -> None:
    stores = [PostgresStore(with_schema(pg_url, "racing")) for _ in range(4)]
    async with anyio.create_task_group() as tg:
        for store in stores:
            tg.start_soon(store.open)
    try:
        assert await versions(pg_url, "racing") == list(range(1, SCHEMA_VERSION + 1))
    finally:
        for store in stores:
            await store.close()


async def test_a_newer_schema_is_refused_and_left_as_it_is(pg_url: str) -> None:
    async with PostgresStore(pg_url):
        pass
    conn = await asyncpg.connect(parse_url(pg_url).dsn)
    try:
        await conn.execute(
            "INSERT INTO flowcore.flowcore_migrations (version, applied) VALUES ($1, 0)",
            SCHEMA_VERSION + 1,
        )
    finally:
        await conn.close()
    store = PostgresStore(pg_url)
    with pytest.raises(SchemaTooNew) as raised:
        await store.open()
    await store.close()
    message = str(raised.value)
    assert f"version {SCHEMA_VERSION + 1}" in message and "pip install -U flowcore-postgres" in (
        message
    )
    assert await versions(pg_url) == [*range(1, SCHEMA_VERSION + 1), SCHEMA_VERSION + 1]


async def test_another_applications_schema_is_refused(pg_url: str) -> None:
    conn = await asyncpg.connect(parse_url(pg_url).dsn)
    try:
        await conn.execute("CREATE SCHEMA shop; CREATE TABLE shop.orders (id int)")
    finally:
        await conn.close()
    store = PostgresStore(with_schema(pg_url, "shop"))
    with pytest.raises(StoreCorrupted, match=r"not flowcore's \(orders\).*\?schema="):
        await store.open()
    await store.close()
    conn = await asyncpg.connect(parse_url(pg_url).dsn)
    try:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'shop'")
    finally:
        await conn.close()
    assert [t[0] for t in tables] == ["orders"]


async def test_an_unreachable_server_names_the_url_without_its_password(tmp_path: object) -> None:
    url = f"postgresql://ana:s3cret@/flowcore?host={tmp_path}&port=5999"
    store = PostgresStore(url)
    with pytest.raises(StoreUnavailable) as raised:
        await store.open()
    await store.close()
    message = str(raised.value)
    assert "s3cret" not in message
    assert "postgresql://ana:***@/flowcore" in message and "pg_isready" in message


async def test_a_missing_database_says_to_create_it(postgres_server: str) -> None:
    from .conftest import with_database

    store = PostgresStore(with_database(postgres_server, "no_such_database"))
    with pytest.raises(StoreUnavailable, match=r"does not exist.*createdb"):
        await store.open()
    await store.close()


def test_the_url_options_are_the_stores_and_never_reach_the_server() -> None:
    parsed = parse_url("postgresql://u:pw@db:5433/runs?schema=team-a&blobs=/mnt/r&sslmode=require")
    assert parsed.schema == "team-a" and str(parsed.blobs) == "/mnt/r"
    assert parsed.dsn == "postgresql://u:pw@db:5433/runs?sslmode=require"
    assert (
        parsed.location
        == "postgresql://u:***@db:5433/runs?schema=team-a&blobs=/mnt/r&sslmode=require"
    )
    assert redact("postgres://u@h/d?password=x") == "postgres://u@h/d?password=%2A%2A%2A"
    for bad in ("pg_catalog", "", "x" * 64):
        with pytest.raises(ConfigurationError, match="schema"):
            parse_url(f"postgresql://h/d?schema={bad}")
    with pytest.raises(ConfigurationError, match="not a PostgreSQL URL"):
        PostgresStore("mysql://u:pw@h/d")


def test_store_urls_resolve_through_the_entry_points() -> None:
    for scheme in ("postgresql", "postgres"):
        store = resolve_store(f"{scheme}://u:pw@localhost/flowcore")
        assert isinstance(store, PostgresStore) and store.location.endswith("localhost/flowcore")
