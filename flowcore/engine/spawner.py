"""Starting a flow run's submitted task runs, and waiting for them before the run ends.

``task.submit()`` and ``task.map()`` start task runs that belong to the flow run:
the run does not end before they do, and when it fails, times out or is
cancelled, they are cancelled. An anyio task group gives exactly that, but on
asyncio it costs a cancel scope, an event and bookkeeping per child, about
three times the cost of the task run itself. The children here never raise
(their outcome goes into their future), so they need no error routing either.

So on asyncio a :class:`Spawner` starts each child with ``loop.create_task``
and keeps the set of live ones; the flow run joins them after its body, and
cancels whatever is left on any way out. On other backends (trio) it defers
to the flow run's task group.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

import anyio
from anyio import CancelScope
from anyio.abc import TaskGroup

__all__ = ["Spawner"]


class Spawner:
    """The live submitted task runs of one flow run."""

    __slots__ = ("_error", "_loop", "_scope", "_tasks", "_tg", "fatal", "loop_thread")

    def __init__(self, scope: CancelScope, tg: TaskGroup | None = None) -> None:
        """``scope``: the flow run's cancel scope (cancelled to stop the run); ``tg``:
        its task group, on the backends where children start in it (not asyncio)."""
        self._scope = scope
        self._tg = tg
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._error: BaseException | None = None
        #: A KeyboardInterrupt or SystemExit a child ran into: the flow run stops, and
        #: it is raised as itself (see :meth:`stop_with`).
        self.fatal: BaseException | None = None
        self.loop_thread = threading.get_ident()  # the event loop's: a flow run starts there
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio (trio): use the task group
            pass

    def on_loop_thread(self) -> bool:
        """Whether the caller is on the event loop's thread (not in a sync task's worker)."""
        return threading.get_ident() == self.loop_thread

    def start(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` concurrently (it must not raise an ``Exception``: keep it in a future)."""
        loop = self._loop
        if loop is None:
            assert self._tg is not None, "a flow run off asyncio has a task group"
            self._tg.start_soon(lambda: coro)
            return
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and self._error is None:
            # Only a bug in flowcore (or KeyboardInterrupt/SystemExit) gets here.
            self._error = task.exception()

    def __len__(self) -> int:
        return len(self._tasks)

    def stop_with(self, exc: BaseException) -> None:
        """A child ran into ``exc`` (KeyboardInterrupt, SystemExit): stop the flow run.

        Raised out of an asyncio task it would leave the event loop at once, past the
        flow's bookkeeping; kept here instead, the run is stopped by cancelling its task
        group and raises it as itself once its tasks are done.
        """
        if self.fatal is None:
            self.fatal = exc
            self._scope.cancel()

    async def join(self) -> None:
        """Wait until every started task run has ended (started ones may start more)."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    async def cancel(self) -> None:
        """Cancel what is still running and wait for it to end (shielded: always completes)."""
        if not self._tasks:
            return
        with anyio.CancelScope(shield=True):
            while self._tasks:
                tasks = list(self._tasks)
                for task in tasks:
                    task.cancel()
                await asyncio.wait(tasks)
