"""The schema: created on a fresh database, kept on reopen, a newer one refused, a foreign
one left alone; the URL, the entry points and the errors a user meets first."""

from __future__ import annotations

import hashlib

import anyio
import asyncpg
import pytest

import flowcore
from flowcore.errors import ConfigurationError, SchemaTooNew, StoreCorrupted, StoreUnavailable
from flowcore.records import WriteBatch
from flowcore.states import State
from flowcore.store import resolve_store
from flowcore_postgres import MIGRATIONS, SCHEMA_VERSION, PostgresStore
from flowcore_postgres.url import parse_url, redact

from .conftest import with_schema

pytestmark = pytest.mark.anyio

#: The text of each released migration: a released migration is never edited (add one).
RELEASED = {1: "b168775c63a5c9a7", 2: "f80381ba7688584e"}


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
