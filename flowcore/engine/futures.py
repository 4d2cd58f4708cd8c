"""Futures of submitted task runs, and waiting for them.

A :class:`TaskFuture` is what ``task.submit()`` returns: the task is already
running in the flow's task group. Await it for the result. Passing it to
another task is a dependency edge: the downstream task waits for it and gets
its result as the argument.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from typing import Any, Generic, TypeVar

import anyio

from ..errors import ConfigurationError
from ..states import State

__all__ = ["TaskFuture", "TaskFutureList", "wait"]

R = TypeVar("R")
T = TypeVar("T")


class TaskFuture(Generic[R]):
    """The eventual result of a submitted task run: ``await future``."""

    __slots__ = ("_event", "_exc", "_failed", "_finished", "_result", "seq", "state", "task_name")

    def __init__(self, task_name: str, seq: int, failed: dict[TaskFuture[Any], None]) -> None:
        self.task_name = task_name
        #: The task run's position in its flow run (``flowcore runs show`` lists it).
        self.seq = seq
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

    def _set_exception(self, exc: BaseException, state: State) -> None:
        self._exc = exc
        self.state = state
        if isinstance(exc, Exception):
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

    def result(self) -> R:
        """The result of a finished task run; raises its error. Use ``await`` to wait."""
        if not self._finished:
            raise ConfigurationError(
                f"the future of task {self.task_name!r} (seq {self.seq}) has not finished; "
                "use `await future` to wait for it"
            )
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

    async def _get(self) -> R:
        if not self._finished:
            await self.wait()
        return self.result()

    def __await__(self) -> Generator[Any, None, R]:
        return self._get().__await__()

    def __repr__(self) -> str:
        return f"<TaskFuture {self.task_name} seq={self.seq} {self.state}>"


class TaskFutureList(list[TaskFuture[R]]):
    """The futures ``task.map()`` returns: a list, and ``await``-able for all results."""

    def __await__(self) -> Generator[Any, None, list[R]]:
        return wait(self).__await__()


async def wait(futures: Iterable[TaskFuture[T]]) -> list[T]:
    """Wait for every future and return their results in order.

    If any failed, all are still waited for, every failure counts as seen, and
    the first failure is raised (with a note naming the others).
    """
    given: list[object] = list(futures)
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
    return [f._result for f in items]
