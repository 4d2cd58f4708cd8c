"""What runs on a Dask worker: one call of a task function, and the cancelling of one.

The executor submits :func:`run_sync` or :func:`run_async` (this module is imported on
the worker by name, so ``flowcore-dask`` must be installed on every worker, as
``distributed`` is). Dask runs a sync function in the worker's thread pool and an async
one on the worker's event loop (its own support for coroutine functions); neither gets
anything of the engine (no run, no task run, no engine: see the README on logging).

Cancelling: dask stops a released call that has not started, but lets a running one
finish (it discards the result). A sync function cannot be interrupted anyway (a
thread), as on the local executor; an async one can, so :func:`run_async` runs it as an
asyncio task of its own, registered under the call's key, and :func:`cancel` (which the
executor sends to the workers when the engine stops waiting, a timeout say) cancels it.
A cancel that arrives before its call starts is remembered (a bounded number), so the
call does not start at all.
"""

from __future__ import annotations

import asyncio
import pickle
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final

from distributed import get_worker

from .errors import FunctionUnavailable
from .transfer import pack_result, unpack_call

__all__ = ["cancel", "run_async", "run_sync"]

#: Functions loaded on this worker, by token; cleared when it grows past the bound
#: (a long-lived worker serving many flows' code), and refilled on demand.
_functions: dict[str, Callable[..., Any]] = {}
_MAX_FUNCTIONS: Final = 512
#: Async calls running on this worker, by dask key.
_running: dict[str, asyncio.Task[Any]] = {}
#: Keys cancelled before their call started here, most recent last.
_cancelled: OrderedDict[str, None] = OrderedDict()
_MAX_CANCELLED: Final = 4096


def run_sync(token: str, blob: bytes, call: bytes) -> bytes:
    """Call a sync task function here; its result packed to travel back."""
    task, _, args, kwargs = _arguments(call)
    fn = _function(token, blob, task)
    return pack_result(fn(*args, **kwargs), task)


async def run_async(token: str, blob: bytes, call: bytes) -> bytes:
    """Await an async task function here, as a task :func:`cancel` can cancel."""
    task, key, args, kwargs = _arguments(call)
    if key in _cancelled:
        del _cancelled[key]
        raise asyncio.CancelledError(f"the call of task {task!r} was cancelled before it started")
    fn = _function(token, blob, task)
    running = asyncio.ensure_future(fn(*args, **kwargs))
    _running[key] = running
    try:
        # Cancelling this coroutine (the worker closing) cancels the awaited task too.
        value = await running
    finally:
        _running.pop(key, None)
    return pack_result(value, task)


def cancel(key: str) -> bool:
    """Cancel the async call ``key`` if it runs here (``True``), else remember that it is
    cancelled, so it does not start here later. Sent by the executor to every worker."""
    running = _running.get(key)
    if running is not None:
        running.cancel()
        return True
    _cancelled[key] = None
    while len(_cancelled) > _MAX_CANCELLED:
        _cancelled.popitem(last=False)
    return False


def _arguments(call: bytes) -> tuple[str, str, tuple[Any, ...], dict[str, Any]]:
    try:
        return unpack_call(call)
    except Exception as exc:
        raise FunctionUnavailable(
            f"the Dask worker {_address()} cannot load the arguments of a call "
            f"({type(exc).__name__}: {exc}); install the modules that define their types "
            "on every worker, at the versions the flow runs with"
        ) from exc


def _function(token: str, blob: bytes, task: str) -> Callable[..., Any]:
    fn = _functions.get(token)
    if fn is not None:
        return fn
    try:
        fn = pickle.loads(blob)
    except Exception as exc:
        raise FunctionUnavailable(
            f"the Dask worker {_address()} cannot load the function of task {task!r} "
            f"({type(exc).__name__}: {exc}); install the code the task uses (its module and "
            "the packages it imports, at the versions the flow runs with) on every worker"
        ) from exc
    if len(_functions) >= _MAX_FUNCTIONS:
        _functions.clear()
    _functions[token] = fn
    return fn  # type: ignore[no-any-return]


def _address() -> str:
    try:
        return str(get_worker().address)
    except ValueError:  # not in a worker (called directly, in a test)
        return "(not a worker)"
