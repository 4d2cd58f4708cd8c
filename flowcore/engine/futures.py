"""Futures of submitted task runs, and waiting for them.

A :class:`TaskFuture` is what ``task.submit()`` returns: the task is already
running in the flow's task group. Await it for the result. Passing it to
another task is a dependency edge: the downstream task waits for it and gets
its result as the argument (or, wrapped in :class:`allow_failure`, its error
when it failed, instead of not being run).
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from typing import Any, Generic, TypeVar

import anyio
import anyio.lowlevel

from ..errors import ConfigurationError
from ..states import State

__all__ = ["TaskFuture", "TaskFutureList", "allow_failure", "wait"]

R = TypeVar("R")
T = TypeVar("T")


class TaskFuture(Generic[R]):
    """The eventual result of a submitted task run: ``await future``."""

    __slots__ = (
        "_event", "_exc", "_failed", "_finished", "_result", "run_id", "seq", "state", "task_name",
    )  # fmt: skip

    def __init__(
        self, task_name: str, seq: int, failed: dict[TaskFuture[Any], None], run_id: str
    ) -> None:
        self.task_name = task_name
        #: The task run's position in its flow run (``flowcore runs show`` lists it); -1
        #: until a ``map`` under a limit starts the call.
        self.seq = seq
        #: The flow run the task run belongs to.
        self.run_id = run_id
        self.state = State.PENDING
        # The flow run's failed futures nobody has looked at yet (RunContext.failed): a
        # flow that ends with any left fails with the first, so no failure is silent.
        self._failed = failed
        self._finished = False
        # Made only when someone waits before the end: most futures are awaited after.
        self._event: anyio.Event | None = None
        self._result: Any = None
        self._exc: BaseException | None = None

    # Set by the engine when the task run ends.
    def _set_result(self, value: Any, state: State) -> None:
        self._result = value
        self.state = state
        self._finished = True
        if self._event is not None:
            self._event.set()

    def _set_exception(self, exc: BaseException, state: State, *, unseen: bool = True) -> None:
        """End with ``exc``; ``unseen=False``: another future carries the failure to the
        flow (the calls of a ``map`` that could not be started)."""
        self._exc = exc
        self.state = state
        if unseen and isinstance(exc, Exception):
            self._failed[self] = None
        self._finished = True
        if self._event is not None:
            self._event.set()

    def __flowcore_record__(self) -> dict[str, object]:
        # How a future passed as an input is recorded: the task run it stands for.
        return {"__flowcore__": "future", "task": self.task_name, "seq": self.seq}

    def done(self) -> bool:
        """Whether the task run has ended (successfully or not)."""
        return self._finished

    def result(self, timeout: float | None = None) -> R:
        """The result of the task run; raises its error.

        On the event loop, the task run must have finished (use ``await future`` to
        wait for it). In a sync task's worker thread this waits for it, at most
        ``timeout`` seconds (then raises :class:`TimeoutError`); ``None``: no limit.
        """
        if not self._finished:
            self._wait_from_thread(timeout)
        self._failed.pop(self, None)
        if self._exc is not None:
            raise self._exc
        value: R = self._result
        return value

    def exception(self) -> BaseException | None:
        """The error of a finished task run, or ``None``; marks the failure as seen."""
        if not self._finished:
            raise ConfigurationError(
                f"the future of task {self.task_name!r} (seq {self.seq}) has not finished; "
                "use `await future.wait()` first"
            )
        self._failed.pop(self, None)
        return self._exc

    async def wait(self) -> None:
        """Wait until the task run ends, without raising its error."""
        if not self._finished:
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()

    def _wait_from_thread(self, timeout: float | None) -> None:
        """Block this worker thread until the task run ends (``result()`` off the loop)."""
        try:
            anyio.lowlevel.current_token()
        except RuntimeError:
            pass  # not on an event loop's thread: a worker thread may block
        else:
            raise ConfigurationError(
                f"the future of task {self.task_name!r} (seq {self.seq}) has not finished; "
                "use `await future` to wait for it"
            )
        from anyio import from_thread  # a worker thread's wait only (4 ms to import)

        reached = False

        async def on_loop() -> None:
            nonlocal reached
            reached = True
            with anyio.fail_after(timeout):
                await self.wait()

        try:
            from_thread.run(on_loop)
        except TimeoutError:
            raise TimeoutError(
                f"the task run of {self.task_name!r} (seq {self.seq}) did not finish within "
                f"{timeout:g} s (future.result(timeout=...))"
            ) from None
        except RuntimeError:
            if reached:
                raise
            raise ConfigurationError(
                f"future.result() of task {self.task_name!r} waited in a thread flowcore did "
                "not start: only a sync task's own thread can wait for a future; await it "
                "in async code, or call result() from the sync task's thread"
            ) from None

    async def _get(self) -> R:
        if not self._finished:
            await self.wait()
        return self.result()

    def __await__(self) -> Generator[Any, None, R]:
        return self._get().__await__()

    def __repr__(self) -> str:
        return f"<TaskFuture {self.task_name} seq={self.seq} {self.state}>"


class TaskFutureList(list[TaskFuture[R]]):
    """The futures ``task.map()`` returns: a list, and ``await``-able for all results.

    A map that reads its iterables as its calls start (an iterator under a limit,
    or the result of a future) fills the list as it goes: ``await`` it, or pass it
    to ``flowcore.wait`` or to a task, to wait for every call.
    """

    #: While the map still reads its iterables: a future that ends when it has (with
    #: the error if reading them failed). ``None``: every future is in the list.
    _feed: TaskFuture[None] | None = None

    def __await__(self) -> Generator[Any, None, list[R]]:
        return wait(self).__await__()

    async def _complete(self) -> list[TaskFuture[Any]]:
        """Wait until every future of the map is in the list; its futures (and the feed's,
        which carries an error reading the iterables, first)."""
        feed = self._feed
        if feed is None:
            return list(self)
        await feed.wait()
        return [feed, *self]


class allow_failure(Generic[R]):
    """Pass a future to a task even if it fails: the task gets its error as the value.

    ``report.submit(flowcore.allow_failure(fetched))`` runs ``report`` whatever
    happened to ``fetched``, with its result or, if it failed, the exception
    object (the failure then counts as seen); without it the task would not run
    and be ``UpstreamFailed``. Also in ``wait_for=[...]`` and around the list of
    futures ``map`` returns.
    """

    __slots__ = ("future",)

    def __init__(self, future: TaskFuture[R] | TaskFutureList[R]) -> None:
        if not isinstance(future, TaskFuture | TaskFutureList):
            raise ConfigurationError(
                "flowcore.allow_failure() takes a future from task.submit() (or the list "
                f"from task.map()), got {type(future).__name__}"
            )
        self.future = future

    def __flowcore_record__(self) -> object:
        if isinstance(self.future, TaskFuture):
            return self.future.__flowcore_record__()
        return list(self.future)

    def __repr__(self) -> str:
        return f"allow_failure({self.future!r})"


async def wait(futures: Iterable[TaskFuture[T]]) -> list[T]:
    """Wait for every future and return their results in order.

    If any failed, all are still waited for, every failure counts as seen, and
    the first failure is raised (with a note naming the others).
    """
    if isinstance(futures, TaskFutureList) and futures._feed is not None:
        given: list[object] = [*await futures._complete()]
        skip = 1  # the feed's future comes first: an error reading the iterables first
    else:
        given = list(futures)
        skip = 0
    for item in given:
        if not isinstance(item, TaskFuture):
            what = "a coroutine" if hasattr(item, "cr_frame") else type(item).__name__
            if hasattr(item, "close"):
                item.close()
            raise ConfigurationError(
                f"flowcore.wait() takes futures from task.submit() or task.map(), got {what}; "
                "to run coroutines concurrently use asyncio.gather(...) or submit the tasks"
            )
    items: list[TaskFuture[T]] = given  # type: ignore[assignment]  # checked just above
    for item in items:
        if not item._finished:
            await item.wait()
    errors = [e for e in (f.exception() for f in items) if e is not None]
    if errors:
        first = errors[0]
        if len(errors) > 1:
            others = ", ".join(f"{type(e).__name__}: {e}" for e in errors[1:4])
            more = f" (and {len(errors) - 4} more)" if len(errors) > 4 else ""
            first.add_note(
                f"flowcore.wait: {len(errors) - 1} other futures failed too: {others}{more}"
            )
        raise first
    return [f._result for f in items[skip:]]
