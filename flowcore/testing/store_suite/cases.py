"""How a case of the store contract is declared: a name, an async check, and what it needs.

Each area of the contract (writes, cache, leases, ...) keeps its cases in a
:class:`Cases` of its own, filled by decorators in the order the cases are
written; :mod:`.contract` joins the areas in one stated order. Keeping the
declarations here, below every area, lets an area module register its cases
without importing any other area.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from ...store.base import Store

__all__ = ["Cases", "OpenStore", "StoreCase", "StoreFactory", "join_cases"]

#: Makes an unopened store on the database of a folder (two calls, two handles on one database).
StoreFactory: TypeAlias = Callable[[Path], Store]
#: Opens one more handle on the database of the case under way (closed by check_store).
OpenStore: TypeAlias = Callable[[], Awaitable[Store]]

_Run: TypeAlias = Callable[[Store, OpenStore], Coroutine[Any, Any, None]]
_OneStore: TypeAlias = Callable[[Store], Coroutine[Any, Any, None]]


@dataclass(frozen=True, slots=True)
class StoreCase:
    """One behaviour of the contract: ``run(store, open_store)`` asserts it on an opened store."""

    name: str
    run: _Run
    #: Whether the case needs a store that keeps its data across close and reopen.
    persistent: bool = False


class Cases:
    """The cases of one area, by name, in the order they are written (the order they run in)."""

    def __init__(self) -> None:
        self._cases: dict[str, StoreCase] = {}

    def __iter__(self) -> Iterator[StoreCase]:
        return iter(self._cases.values())

    def case(self, name: str) -> Callable[[_OneStore], _OneStore]:
        """Register a case that needs one opened store."""

        def register(fn: _OneStore) -> _OneStore:
            async def run(store: Store, open_store: OpenStore) -> None:
                await fn(store)

            self._add(StoreCase(name, run, persistent=False))
            return fn

        return register

    def handles_case(self, name: str, *, persistent: bool = False) -> Callable[[_Run], _Run]:
        """Register a case that opens more handles on the same database."""

        def register(fn: _Run) -> _Run:
            self._add(StoreCase(name, fn, persistent))
            return fn

        return register

    def _add(self, case: StoreCase) -> None:
        _refuse_twice(case.name, self._cases)
        self._cases[case.name] = case


def join_cases(*areas: Cases) -> dict[str, StoreCase]:
    """Every case of ``areas`` by name, area after area, each area in its own order."""
    joined: dict[str, StoreCase] = {}
    for area in areas:
        for case in area:
            _refuse_twice(case.name, joined)
            joined[case.name] = case
    return joined


def _refuse_twice(name: str, cases: dict[str, StoreCase]) -> None:
    """Names are how a test suite selects a case, so two cases of one name is a bug."""
    if name in cases:
        raise RuntimeError(f"flowcore bug: two store contract cases named {name!r}")
