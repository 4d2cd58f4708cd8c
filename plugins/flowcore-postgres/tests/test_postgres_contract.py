"""The store contract (``flowcore.testing.check_store``), unchanged, a test per case."""

from __future__ import annotations

from pathlib import Path

import pytest

import flowcore.testing
from flowcore_postgres import PostgresStore

from .conftest import with_schema

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("case", list(flowcore.testing.STORE_CASES))
async def test_contract_case(pg_url: str, case: str) -> None:
    # Each case's folder names a schema of its own: two calls with one folder give two
    # handles on one database, as the contract asks.
    def factory(folder: Path) -> PostgresStore:
        return PostgresStore(with_schema(pg_url, folder.name))

    await flowcore.testing.check_store(factory, cases=[case])


async def test_the_whole_contract_in_one_schema_per_case(pg_url: str) -> None:
    """As a plugin author runs it: every case, in its order, one call."""
    await flowcore.testing.check_store(
        lambda folder: PostgresStore(with_schema(pg_url, folder.name))
    )
