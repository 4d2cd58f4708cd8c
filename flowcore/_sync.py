"""The sync entry points' one mechanism: run an async call in an event loop of its own.

flowcore is written async once; ``flowcore.run``, ``flowcore.resume`` and
``flowcore.read_task_result`` are thin wrappers over this, so they agree on the
loop (asyncio, with uvloop when it is installed), on the error for being called
where an event loop is already running, and on what SIGTERM does.

SIGTERM (``kill``, ``docker stop``, systemd, Kubernetes) ends a process at once
by default: a run it was driving stayed Running, to be marked Crashed later. In a
loop of our own it is a cancellation instead, as Ctrl-C is: the call is
cancelled, so its runs end Cancelled and are committed, and then the process ends
as SIGTERM ends it (the default action, so its parent sees "killed by SIGTERM",
exit status 143 in a shell). A second SIGTERM during that cleanup ends the
process at once. A program that installed a SIGTERM handler of its own keeps it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import sys
import threading
import traceback
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import anyio

from .errors import ConfigurationError

__all__ = ["run_in_own_loop", "run_sync"]

T = TypeVar("T")


def run_sync(
    call: Callable[[], Awaitable[T]], *, name: str, instead: str, cancel_on_sigterm: bool = True
) -> T:
    """``call()`` to completion in a new event loop; ``instead`` is the async spelling.

    ``cancel_on_sigterm=False``: SIGTERM is left to ``call`` (``flowcore.serve`` stops
    gracefully on it, letting runs in flight finish first)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise ConfigurationError(
            f"{name}() was called inside a running event loop; there, write `{instead}` instead"
        )
    return run_in_own_loop(
        call,
        uvloop=importlib.util.find_spec("uvloop") is not None,
        cancel_on_sigterm=cancel_on_sigterm,
    )


def run_in_own_loop(
    call: Callable[[], Awaitable[T]],
    *,
    uvloop: bool = False,
    before_exit: Callable[[], None] | None = None,
    cancel_on_sigterm: bool = True,
) -> T:
    """``call()`` in a new asyncio event loop (uvloop's if ``uvloop``), where SIGTERM
    cancels it; then, if SIGTERM came, ``before_exit()`` and the process ends by it.
    With ``cancel_on_sigterm=False`` SIGTERM is not touched here (``call`` handles it)."""
    terminated: list[bool] = []

    async def cancellable() -> T:
        with anyio.CancelScope() as scope:
            loop = asyncio.get_running_loop()
            listening = cancel_on_sigterm and _cancel_on_sigterm(loop, scope, terminated)
            try:
                return await call()
            finally:
                if listening:
                    loop.remove_signal_handler(signal.SIGTERM)  # back to the default
        raise _Terminated  # only our scope's cancellation, on SIGTERM, gets here

    options = {"use_uvloop": True} if uvloop else {}
    try:
        result = anyio.run(cancellable, backend="asyncio", backend_options=options)
    except BaseException as exc:
        if not terminated:
            raise
        if isinstance(exc, Exception):  # the cleanup failed: say so before ending
            message = "".join(traceback.format_exception(exc)).rstrip()
            print(f"{message}\n(while ending on SIGTERM)", file=sys.stderr)
    else:
        if not terminated:
            return result
    if before_exit is not None:
        before_exit()
    _end_by_sigterm()


class _Terminated(BaseException):
    """The call was cancelled because the process received SIGTERM."""


def _cancel_on_sigterm(
    loop: asyncio.AbstractEventLoop, scope: anyio.CancelScope, terminated: list[bool]
) -> bool:
    """Make SIGTERM cancel ``scope`` (noted in ``terminated``); whether it now does.

    Only from the main thread (signals are delivered there), only while SIGTERM has its
    default action, and not where the loop cannot (Windows, where SIGTERM is not a signal
    a process receives).
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return False  # the program's own handler, or SIGTERM ignored: theirs to decide

    def on_sigterm() -> None:
        terminated.append(True)
        loop.remove_signal_handler(signal.SIGTERM)  # a second one ends the process at once
        scope.cancel()

    try:
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    except (NotImplementedError, RuntimeError, ValueError):
        return False
    return True


def _end_by_sigterm() -> NoReturn:
    """End the process as SIGTERM's default action does (its status says so)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()  # what was printed is not lost with the process
        except Exception:
            pass
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.raise_signal(signal.SIGTERM)
    raise SystemExit(128 + signal.SIGTERM)  # where raising it does not end the process
