"""Executors: the one step of a task run that calls the user's function.

Everything else about a task run (inputs, limits, retries, timeouts, records,
spans, caching) stays in the engine; an executor only decides *where* the
function runs. The local executor runs async functions on the event loop and
sync ones in worker threads; a plugin (Dask, say) can run them elsewhere.

Executors are named. A task or flow picks one by name (``@flowcore.task(
executor="dask")``); the engine holds the instances (``Engine(executors=
{"dask": DaskExecutor(...)})``), and a name it was not given is looked up in
the ``flowcore.executors`` entry-point group, whose entries are factories
called with no arguments. ``"local"`` is built in.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import anyio

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from importlib.metadata import EntryPoints

__all__ = ["Executor", "LocalExecutor", "load_executor"]


@runtime_checkable
class Executor(Protocol):
    """Where task functions run. Opened by the engine before first use, closed with it."""

    async def open(self) -> None:
        """Acquire what calls need (threads, a cluster connection)."""

    async def close(self) -> None:
        """Release it; calls still running are the engine's to have ended first."""

    def call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        is_async: bool,
        abandon: bool,
        /,
    ) -> Awaitable[Any]:
        """An awaitable of ``fn(*args, **kwargs)``'s result (or error).

        Called once per attempt, positionally (the hot path).

        ``is_async``: ``fn`` is a coroutine function. ``abandon``: when the await is
        cancelled (a timeout), stop waiting at once even if the call cannot be
        stopped (a thread), rather than wait for it to finish. Returning the
        awaitable rather than being a coroutine lets the local executor hand back
        the task's own coroutine: no extra frame per task run.
        """


class LocalExecutor:
    """Async functions on the event loop, sync functions in worker threads.

    ``threads``: how many sync task functions may run at once (each in a thread).
    anyio copies the context into the worker thread, so the task run stays current
    there (its children, its logs and spans know it).
    """

    def __init__(self, threads: int = 40) -> None:
        self.threads = threads
        self._limiter: anyio.CapacityLimiter | None = None

    async def open(self) -> None:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.threads)

    async def close(self) -> None:
        pass

    def call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        is_async: bool,
        abandon: bool,
        /,
    ) -> Awaitable[Any]:
        if is_async:
            result: Awaitable[Any] = fn(*args, **kwargs)
            return result
        # A thread cannot be interrupted: with `abandon` (a timeout), the task stops
        # waiting for it and the thread finishes in the background.
        return anyio.to_thread.run_sync(
            functools.partial(fn, *args, **kwargs),
            limiter=self._limiter,
            abandon_on_cancel=abandon,
        )

    def __repr__(self) -> str:
        return f"<flowcore LocalExecutor threads={self.threads}>"


def entry_points(*, group: str) -> EntryPoints:
    """``importlib.metadata.entry_points(group=group)``, imported at the first call: importing
    it costs some 15 ms (email, zipfile, csv), and only a plugin's name needs it."""
    from importlib.metadata import entry_points as installed

    return installed(group=group)


def load_executor(name: str) -> Executor:
    """A new executor for ``name``: ``"local"``, or the plugin registered under it."""
    if name == "local":
        return LocalExecutor()
    plugins = {ep.name: ep for ep in entry_points(group="flowcore.executors")}
    if name not in plugins:
        installed = ", ".join(sorted(["local", *plugins]))
        raise ConfigurationError(
            f"no flowcore executor named {name!r}; installed: {installed}. Install the plugin "
            f"that provides it (e.g. `pip install flowcore-{name}`), or give the engine an "
            f"instance: Engine(executors={{{name!r}: ...}})"
        )
    factory: Any = plugins[name].load()
    executor = factory()
    if not isinstance(executor, Executor):
        raise ConfigurationError(
            f"the executor plugin {name!r} ({plugins[name].value}) made {executor!r}, which is "
            "not a flowcore executor (it needs open, close and call)"
        )
    return executor
