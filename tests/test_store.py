"""The store contract (``flowcore.testing.check_store``), run against every store.

Each case of ``flowcore.testing.STORE_CASES`` is a test of its own per store, and
each store also passes the whole contract in one call, as a plugin's test does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import flowcore
from flowcore import Store
from flowcore.records import WriteBatch
from flowcore.testing import STORE_CASES, check_store

StoreFactory = Callable[[Path], Store]


def memory_factory() -> StoreFactory:
    """Memory stores, one per folder: the same folder gives the same store (one database)."""
    stores: dict[Path, flowcore.MemoryStore] = {}

    def factory(folder: Path) -> Store:
        if folder not in stores:
            stores[folder] = flowcore.MemoryStore()
        return stores[folder]

    return factory


def sqlite_factory() -> StoreFactory:
    return lambda folder: flowcore.SQLiteStore(folder / "flowcore.db")


FACTORIES: dict[str, Callable[[], StoreFactory]] = {
    "memory": memory_factory,
    "sqlite": sqlite_factory,
}
PERSISTENT = {"memory": False, "sqlite": True}

#: Cases a store fails because the store is wrong, left out here until it is fixed.
KNOWN_BUGS: dict[str, dict[str, str]] = {
    "memory": {},
    "sqlite": {},
}


def cases_for(kind: str) -> list[str]:
    return [
        name
        for name, case in STORE_CASES.items()
        if (PERSISTENT[kind] or not case.persistent) and name not in KNOWN_BUGS[kind]
    ]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("kind", "case"),
    [
        pytest.param(kind, name, id=f"{kind}-{name}")
        for kind in FACTORIES
        for name in cases_for(kind)
    ],
)
async def test_store_case(kind: str, case: str) -> None:
    await check_store(FACTORIES[kind](), persistent=PERSISTENT[kind], cases=[case])


@pytest.mark.anyio
@pytest.mark.parametrize("kind", sorted(FACTORIES))
async def test_the_whole_contract(kind: str) -> None:
    await check_store(FACTORIES[kind](), persistent=PERSISTENT[kind], cases=cases_for(kind))


# -- check_store itself ------------------------------------------------------------------


def test_every_case_has_a_name_of_its_area() -> None:
    areas = {name.split(": ", 1)[0] for name in STORE_CASES}
    assert areas <= {
        "runs",
        "task runs",
        "writes",
        "reads",
        "cache",
        "spans",
        "exports",
        "leases",
        "rates",
        "blobs",
        "concurrency",
        "lifecycle",
        "resume",
        "logs",
        "slots",
        "schedules",
        "triggers",
        "served",
        "once",
        "changes",
        "assets",
    }
    assert all(name == case.name for name, case in STORE_CASES.items())
    assert [name for name, case in STORE_CASES.items() if case.persistent] == [
        "lifecycle: a persistent store keeps what was written across close and reopen"
    ]


class ForgetfulStore(flowcore.MemoryStore):
    """A broken store: writes no cache entries, and counts how often it is closed."""

    closed = 0

    async def write(self, batch: WriteBatch) -> None:
        await super().write(WriteBatch(batch.flow_runs, batch.task_runs, (), batch.spans))

    async def close(self) -> None:
        ForgetfulStore.closed += 1


@pytest.mark.anyio
async def test_check_store_names_every_failing_case_and_closes_the_stores() -> None:
    ForgetfulStore.closed = 0
    cache_cases = [name for name in STORE_CASES if name.startswith("cache: ")]
    chosen = [*cache_cases, "runs: list_runs is newest first"]
    with pytest.raises(AssertionError) as info:
        await check_store(lambda folder: ForgetfulStore(), persistent=False, cases=chosen)
    message = str(info.value)
    failed = [name for name in chosen if f"- {name}: " in message]
    assert "runs: list_runs is newest first" not in failed
    assert "cache: an entry keeps every field through a write and a read" in failed
    assert f"{len(failed)} of {len(chosen)} store contract cases failed" in message
    assert "(in _cache_round_trip, line " in message  # where the case failed
    assert isinstance(info.value.__cause__, ExceptionGroup)
    assert ForgetfulStore.closed == len(chosen)


class UnopenableStore(flowcore.MemoryStore):
    closed = 0

    async def open(self) -> None:
        raise flowcore.StoreUnavailable("no database here")

    async def close(self) -> None:
        UnopenableStore.closed += 1


@pytest.mark.anyio
async def test_check_store_reports_a_failed_open_and_still_closes() -> None:
    UnopenableStore.closed = 0
    case = "runs: list_runs is newest first"
    with pytest.raises(AssertionError, match="StoreUnavailable: no database here") as info:
        await check_store(lambda folder: UnopenableStore(), cases=[case])
    assert isinstance(info.value.__cause__, flowcore.StoreUnavailable)
    assert UnopenableStore.closed == 1


@pytest.mark.anyio
async def test_check_store_refuses_unknown_or_inapplicable_cases() -> None:
    with pytest.raises(ValueError, match="unknown store contract cases"):
        await check_store(sqlite_factory(), cases=["runs: no such case"])
    with pytest.raises(ValueError, match="persistent"):
        await check_store(
            memory_factory(),
            persistent=False,
            cases=["lifecycle: a persistent store keeps what was written across close and reopen"],
        )
