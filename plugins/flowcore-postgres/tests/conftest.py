"""A PostgreSQL server for the tests, and a fresh database for each test.

The server: ``$FLOWCORE_TEST_POSTGRES`` (a URL) when set, as CI sets it from
``.ci/postgres.sh`` (one server for every worker, started before the tests and stopped
after them, whatever happens to a test process). When it is not set and PostgreSQL is
installed (``initdb`` in ``/usr/lib/postgresql/*/bin`` or on PATH), the tests start one
themselves with the same script, in a temporary folder, and stop it at the end of the
session (each xdist worker its own), so ``python3 tests/run.py`` works on any machine
with PostgreSQL. Without either, every test here is skipped, saying how to get a server.

Each test gets a database of its own (``CREATE DATABASE``, dropped after it), so no test
sees another's rows, whatever the order or the worker; the contract suite's cases each
get a schema of their own inside it.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import pytest

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / ".ci" / "postgres.sh"
SKIP_REASON = (
    "no PostgreSQL server: set FLOWCORE_TEST_POSTGRES to a server's URL, e.g. "
    'export FLOWCORE_TEST_POSTGRES="$(bash .ci/postgres.sh start)", or install PostgreSQL '
    "(apt-get install postgresql) for the tests to start one"
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # asyncpg is asyncio-only


@pytest.fixture(autouse=True)
def flowcore_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own FLOWCORE_HOME, so no test touches ~/.flowcore."""
    home = tmp_path / "flowcore-home"
    monkeypatch.setenv("FLOWCORE_HOME", str(home))
    return home


def _initdb() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return found[0] if found else shutil.which("initdb")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server (its maintenance database ``flowcore``)."""
    given = os.environ.get("FLOWCORE_TEST_POSTGRES")
    if given:
        yield given
        return
    if _initdb() is None:
        pytest.skip(SKIP_REASON)
    started = subprocess.run(
        ["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=120, check=False
    )
    if started.returncode != 0:
        pytest.fail(
            f".ci/postgres.sh could not start a server (exit {started.returncode}):\n"
            f"{started.stderr}\nSet FLOWCORE_TEST_POSTGRES to a server you run instead"
        )
    url = started.stdout.strip().splitlines()[-1]
    try:
        yield url
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", url], capture_output=True, timeout=120)


def with_database(url: str, database: str) -> str:
    """``url`` naming ``database`` instead of its own."""
    return urlunsplit(urlsplit(url)._replace(path="/" + database))


def with_schema(url: str, schema: str) -> str:
    """``url`` with the store option ``schema=`` set."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "schema"] + [("schema", schema)]
    return urlunsplit(parts._replace(query=urlencode(query, safe="/")))


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url, timeout=30)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def pg_url(postgres_server: str) -> Iterator[str]:
    """The URL of a new, empty database, dropped after the test."""
    name = f"flowcore_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(postgres_server, f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(postgres_server, name)
    finally:
        asyncio.run(_admin(postgres_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
