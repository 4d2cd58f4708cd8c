"""The sync entry points' one mechanism: run an async call in an event loop of its own.

flowcore is written async once; ``flowcore.run``, ``flowcore.resume`` and
``flowcore.read_task_result`` are thin wrappers over this, so they agree on the
loop (asyncio, with uvloop when it is installed) and on the error for being
called where an event loop is already running.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from .errors import ConfigurationError

__all__ = ["run_sync"]

T = TypeVar("T")


def run_sync(call: Callable[[], Awaitable[T]], *, name: str, instead: str) -> T:
    """``call()`` to completion in a new event loop; ``instead`` is the async spelling."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise ConfigurationError(
            f"{name}() was called inside a running event loop; there, write `{instead}` instead"
        )
    options = {"use_uvloop": True} if importlib.util.find_spec("uvloop") is not None else {}
    return anyio.run(call, backend="asyncio", backend_options=options)
