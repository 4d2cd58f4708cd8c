"""Flows called where no engine is current: a web app's request handlers.

A web app opens its engine once, in its lifespan; its request handlers run in
contexts that do not inherit the lifespan's. With one engine open on the event loop,
a flow called there runs in it (not in an engine opened and closed for the call);
``engine.run(flow, ...)`` says which engine when several are open.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

import flowcore
from flowcore import ConfigurationError

pytestmark = pytest.mark.anyio


@flowcore.task
async def double(x: int) -> int:
    return 2 * x


@flowcore.flow
async def handler(x: int) -> int:
    async with flowcore.limit("db", 2):
        return await double(x)


async def in_a_fresh_context(call: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """``call()`` in a task whose context holds nothing (as a request handler's)."""
    return await asyncio.get_running_loop().create_task(call(), context=contextvars.Context())


async def test_a_call_outside_any_engine_runs_in_the_one_open_on_the_loop(
    tmp_path: Path, flowcore_home: Path
) -> None:
    engine = flowcore.Engine(store=tmp_path / "app.db")
    async with engine:
        assert await in_a_fresh_context(lambda: handler(21)) == 42
        assert engine.last_run is not None and engine.last_run.name == "handler"
        runs = await engine.store.list_runs()
        assert [r.name for r in runs] == ["handler"]
    assert not (flowcore_home / "flowcore.db").exists()  # no engine opened for the call


async def test_with_two_engines_open_a_call_says_which_with_engine_run(
    tmp_path: Path, flowcore_home: Path
) -> None:
    first = flowcore.Engine(store=tmp_path / "a.db")
    second = flowcore.Engine(store=tmp_path / "b.db")
    async with first, second:
        assert await in_a_fresh_context(lambda: second.run(handler, 5)) == 10
        assert second.last_run is not None and first.last_run is None
        # Without saying: neither is guessed; an engine of its own runs it, as before.
        assert await in_a_fresh_context(lambda: handler(1)) == 2
        assert first.last_run is None and (flowcore_home / "flowcore.db").exists()


async def test_engine_run_needs_an_open_engine() -> None:
    with pytest.raises(ConfigurationError, match="not open"):
        await flowcore.Engine(store="memory").run(handler, 1)
