"""The executor seam: where a task's function runs, chosen by name per task, flow or engine.

Everything else about a task run (records, retries, limits, timeouts, spans) stays
the engine's, whatever the executor; these tests use a recording executor that runs
calls locally and notes each one.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Awaitable, Callable
from importlib.metadata import entry_points
from typing import Any

import anyio
import pytest

import flowcore
from flowcore.engine import executor as executor_module

pytestmark = pytest.mark.anyio


class Recording:
    """An executor that runs every call itself (sync ones in a thread) and notes it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], bool]] = []
        self.opened = 0
        self.closed = 0

    async def open(self) -> None:
        self.opened += 1

    async def close(self) -> None:
        self.closed += 1

    def call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        is_async: bool,
        abandon: bool,
        /,
    ) -> Awaitable[Any]:
        self.calls.append((fn.__name__, args, abandon))
        if is_async:
            result: Awaitable[Any] = fn(*args, **kwargs)
            return result
        return anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


@flowcore.task
async def double(x: int) -> int:
    return 2 * x


@flowcore.task(executor="recording")
def triple(x: int) -> int:
    return 3 * x


async def test_a_task_naming_an_executor_runs_there_and_is_recorded_as_usual() -> None:
    recording = Recording()

    @flowcore.flow
    async def work() -> list[int]:
        return [await double(1), await triple(2), await triple.with_options(timeout=5)(3)]

    async with flowcore.Engine("memory", executors={"recording": recording}) as engine:
        assert await work() == [2, 6, 9]
        assert engine.last_run is not None
        runs = await engine.store.list_task_runs(engine.last_run.id)
    # Only the task that names the executor went through it; a timeout means "abandon".
    assert recording.calls == [("triple", (2,), False), ("triple", (3,), True)]
    assert [(r.name, r.state) for r in runs] == [
        ("double", flowcore.State.COMPLETED),
        ("triple", flowcore.State.COMPLETED),
        ("triple", flowcore.State.COMPLETED),
    ]
    assert recording.opened == 1 and recording.closed == 1  # opened on first use, once


async def test_a_flows_executor_is_its_tasks_default_and_retries_go_through_it() -> None:
    recording = Recording()
    attempts = 0

    @flowcore.task(retries=2)
    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionError("try again")
        return "done"

    @flowcore.flow(executor="recording")
    async def work() -> str:
        return await flaky()

    async with flowcore.Engine("memory", executors={"recording": recording}):
        assert await work() == "done"
    assert [name for name, _, _ in recording.calls] == ["flaky", "flaky", "flaky"]


async def test_the_engines_default_executor_runs_every_task_that_names_none() -> None:
    recording = Recording()

    @flowcore.flow
    async def work() -> int:
        return await double(5)

    async with flowcore.Engine("memory", executor="recording", executors={"recording": recording}):
        assert await work() == 10
    assert recording.calls == [("double", (5,), False)]
    assert recording.opened == 1 and recording.closed == 1


async def test_the_local_executor_runs_sync_tasks_in_worker_threads() -> None:
    loop_thread = threading.get_ident()

    @flowcore.task
    def where() -> int:
        return threading.get_ident()

    @flowcore.flow
    async def work() -> int:
        return await where()

    async with flowcore.Engine("memory", sync_threads=2):
        assert await work() != loop_thread


async def test_an_unknown_executor_name_lists_the_installed_ones() -> None:
    @flowcore.flow(executor="nowhere")
    async def work() -> None:
        pass

    async with flowcore.Engine("memory"):
        with pytest.raises(flowcore.ConfigurationError) as info:
            await work()
    message = str(info.value)
    installed = sorted({"local", *(ep.name for ep in entry_points(group="flowcore.executors"))})
    assert "'nowhere'" in message and f"installed: {', '.join(installed)}." in message
    assert "pip install flowcore-nowhere" in message
    with pytest.raises(flowcore.ConfigurationError, match="no flowcore executor named 'gone'"):
        async with flowcore.Engine("memory", executor="gone"):
            pass


async def test_an_executor_comes_from_its_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Recording] = []

    class EntryPoint:
        name = "plugged"
        value = "somewhere:Recording"

        def load(self) -> Callable[[], Recording]:
            def factory() -> Recording:
                made.append(Recording())
                return made[-1]

            return factory

    def entry_points(*, group: str) -> list[EntryPoint]:
        return [EntryPoint()] if group == "flowcore.executors" else []

    monkeypatch.setattr(executor_module, "entry_points", entry_points)

    @flowcore.flow(executor="plugged")
    async def work() -> int:
        return await double(4)

    async with flowcore.Engine("memory"):
        assert await work() == 8
        assert await work() == 8
    assert len(made) == 1  # loaded once per engine
    assert [name for name, _, _ in made[0].calls] == ["double", "double"]
    assert made[0].closed == 1


def test_executors_must_be_executors() -> None:
    with pytest.raises(flowcore.ConfigurationError, match="`executors` maps names to executors"):
        flowcore.Engine("memory", executors={"x": object()})  # type: ignore[dict-item]
    with pytest.raises(flowcore.ConfigurationError, match="`executor` must be a non-empty str"):
        flowcore.task(executor="")
    assert isinstance(flowcore.LocalExecutor(), flowcore.Executor)


class Unreachable(Recording):
    """An executor whose cluster cannot be reached: every open fails, slowly."""

    async def open(self) -> None:
        self.opened += 1
        await anyio.sleep(0.01)
        raise ConnectionRefusedError("the scheduler at tcp://nowhere:8786 refused")


async def test_tasks_queued_behind_a_failed_open_get_its_error_without_trying_again() -> None:
    unreachable = Unreachable()

    @flowcore.task(executor="far")
    async def work(i: int) -> int:
        return i

    @flowcore.flow
    async def fan_out() -> list[Any]:
        import asyncio

        results: list[Any] = await asyncio.gather(
            *(work(i) for i in range(8)), return_exceptions=True
        )
        return results

    async with flowcore.Engine("memory", executors={"far": unreachable}):
        outcomes = await fan_out()
        assert all(isinstance(o, ConnectionRefusedError) for o in outcomes), outcomes
        assert unreachable.opened == 1  # the 7 queued behind it were told, not retried
        await fan_out()
        assert unreachable.opened == 2  # a later call tries again (a server recovers)
