"""The whole contract in its running order, and :func:`check_store`, which runs it.

The order of the areas is written out here, once, rather than left to the order
their modules are imported in: sorting imports must not reorder the cases (a test
suite shows them in this order), and a case module needs no knowledge of another.
"""

from __future__ import annotations

import shutil
import tempfile
import traceback
from collections.abc import Iterable
from pathlib import Path

import anyio

from ...store.base import Store
from . import (
    assets,
    blobs,
    cache,
    claims,
    concurrency,
    exports,
    leases,
    lifecycle,
    logs,
    queries,
    retention,
    serving,
    spans,
    writes,
)
from .cases import StoreCase, StoreFactory, join_cases

__all__ = ["STORE_CASES", "check_store"]

#: Every case of the contract, by name (``"area: behaviour"``), in the order they run.
STORE_CASES: dict[str, StoreCase] = join_cases(
    writes.CASES,
    queries.CASES,
    cache.CASES,
    spans.CASES,
    exports.CASES,
    leases.CASES,
    blobs.CASES,
    concurrency.CASES,
    lifecycle.CASES,
    claims.CASES,
    logs.CASES,
    serving.CASES,
    assets.CASES,
    retention.CASES,
)

#: The suite's own folder: a failure is located at the last frame of a file in it.
_HERE = Path(__file__).parent


async def check_store(
    factory: StoreFactory,
    *,
    persistent: bool = True,
    cases: Iterable[str] | None = None,
    timeout: float = 60.0,
) -> None:
    """Run the store contract against the stores ``factory`` makes; raise if any case fails.

    ``factory(folder)`` returns an unopened store whose database is tied to ``folder``
    (a fresh, empty folder per case); called again with the same folder it must return
    another handle on the same database. ``persistent=False`` is for stores that keep
    nothing once closed (the memory store): the reopen case is left out. ``cases``
    runs only the cases of those names (see :data:`STORE_CASES`). Each case gets
    ``timeout`` seconds.

    Every case runs, even after failures; then one ``AssertionError`` lists each failed
    case with its error (chained to the error itself, or to an ``ExceptionGroup`` of
    them). Stores are closed on every path, whatever a case did.
    """
    if isinstance(cases, str):
        cases = [cases]
    if cases is None:
        selected = [c for c in STORE_CASES.values() if persistent or not c.persistent]
    else:
        names = list(cases)
        unknown = [n for n in names if n not in STORE_CASES]
        if unknown:
            raise ValueError(
                f"unknown store contract cases {unknown!r}; the cases are listed in "
                "flowcore.testing.STORE_CASES"
            )
        selected = [STORE_CASES[n] for n in names]
        needs = [c.name for c in selected if c.persistent and not persistent]
        if needs:
            raise ValueError(f"cases {needs!r} need a persistent store, and persistent=False")
    failures: list[tuple[str, Exception]] = []
    for case in selected:
        error = await _run_case(factory, case, timeout)
        if error is not None:
            failures.append((case.name, error))
    if not failures:
        return
    lines = [f"{len(failures)} of {len(selected)} store contract cases failed:"]
    for name, error in failures:
        lines.append(f"- {name}: {_describe(error)}")
    message = "\n".join(lines)
    if len(failures) == 1:
        raise AssertionError(message) from failures[0][1]
    raise AssertionError(message) from ExceptionGroup(
        "store contract failures", [error for _, error in failures]
    )


async def _run_case(factory: StoreFactory, case: StoreCase, timeout: float) -> Exception | None:
    """Run one case on a fresh folder; the error it failed with, or ``None``."""
    folder = Path(await anyio.to_thread.run_sync(_make_folder))
    handles: list[Store] = []

    async def open_store() -> Store:
        store = factory(folder)
        handles.append(store)
        await store.open()
        return store

    error: Exception | None = None
    try:
        with anyio.fail_after(timeout):
            store = await open_store()
            await case.run(store, open_store)
    except TimeoutError as exc:
        error = AssertionError(
            f"did not finish within {timeout:g} s (a wait that never ends, or a lock never "
            "given back?)"
        )
        error.__cause__ = exc
    except Exception as exc:
        error = exc
    finally:
        with anyio.move_on_after(timeout, shield=True) as scope:
            for handle in reversed(handles):
                try:
                    await handle.close()
                except Exception as exc:
                    if error is None:
                        error = AssertionError(f"close() raised {type(exc).__name__}: {exc}")
                        error.__cause__ = exc
        if scope.cancelled_caught and error is None:
            error = AssertionError(f"close() did not return within {timeout:g} s")
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(folder, ignore_errors=True))
    return error


def _make_folder() -> str:
    return tempfile.mkdtemp(prefix="flowcore-store-check-")


def _describe(error: BaseException) -> str:
    """``Type: message (in case, line N of store_suite/area.py)`` for the failure list."""
    text = f"{type(error).__name__}: {error}".strip()
    tb = error.__traceback__
    if tb is None and error.__cause__ is not None:  # made, not raised: a timeout
        tb = error.__cause__.__traceback__
    here = [
        frame
        for frame in traceback.extract_tb(tb)
        if Path(frame.filename).parent == _HERE
        and not frame.name.startswith(("raises", "_run_case"))
    ]
    if here:
        where = Path(here[-1].filename).relative_to(_HERE.parent).as_posix()
        text += f" (in {here[-1].name}, line {here[-1].lineno} of {where})"
    return text
