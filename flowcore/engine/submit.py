"""Submitted task runs: ``task.submit()`` and ``task.map()`` start calls whose outcome
goes into a future rather than up the flow's task group.

A ``map`` under a limit starts its calls as room frees up (:func:`feed_map`),
reading its iterables only as far as it starts calls: a generator, even an
endless one, is read a window at a time, on the event loop's thread, which the
feeder yields every ``YIELD_EVERY`` calls. A ``map`` over a future's result does
the same once the future has ended. Without a limit every call starts at once,
so an iterable is read whole at the call: a collection (with a ``len``) of any
size, an iterator of at most ``UNLIMITED_ITEMS`` items (more is refused: it may
never end).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable, Iterator, Sized
from itertools import islice
from typing import Any

import anyio.lowlevel

from ..errors import ConfigurationError, UpstreamFailed
from ..records import TaskRunRecord, task_run_label
from ..states import State
from .attempt import run_task
from .core import RunContext
from .futures import TaskFuture, TaskFutureList
from .gates import Slots
from .inputs import WAIT_FOR, prepare
from .spec import TaskSpec

__all__ = [
    "UNLIMITED_ITEMS",
    "check_mappable",
    "feed_map",
    "map_window",
    "read_rows",
    "run_into_future",
    "unmapped",
]

#: Without a limit, at most this many items are read from an iterator that has no
#: ``len`` (a generator): more is refused, since an endless one would never stop.
UNLIMITED_ITEMS = 100_000
#: A feeding map yields to the event loop at least every this many calls it starts.
YIELD_EVERY = 1024


class unmapped:
    """Wrap an argument of ``task.map`` to pass it whole to every call instead of iterating it."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


async def run_into_future(
    task: TaskSpec,
    ctx: RunContext,
    rec: TaskRunRecord,
    waits: bool,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    future: TaskFuture[Any],
) -> None:
    """Body of a submitted task: its outcome goes into the future, not up the task group.

    An error must not cancel the sibling tasks (it is the flow's to decide), so it
    is kept in the future; the flow fails at its end if nobody looked at it.
    """
    try:
        result = await run_task(task, args, kwargs, ctx, rec, waits)
    except Exception as exc:
        future._set_exception(exc, rec.state)
    except (KeyboardInterrupt, SystemExit) as exc:
        future._set_exception(exc, State.CANCELLED)
        spawner = ctx.spawner
        if spawner is None:
            raise
        spawner.stop_with(exc)  # the flow raises it, as itself, once its tasks are done
    except BaseException as exc:
        future._set_exception(exc, State.CANCELLED)
        raise
    else:
        future._set_result(result, rec.state)


def map_window(task: TaskSpec, ctx: RunContext) -> int | None:
    """How many calls of a limited ``map`` to keep alive at once (``None``: no limit applies)."""
    specs = [task.own_limit] if task.own_limit is not None else []
    if ctx.gate is not None:
        specs.append(ctx.gate.limit)
    for tag in task.tags:
        state = ctx.engine.limits.named(tag)
        if state is not None:
            specs.append(state.limit)
    bounds = []
    for spec in specs:
        if spec.concurrency is not None:
            bounds.append(spec.concurrency)
        if spec.rate is not None:  # a second's worth of starts (at least a burst)
            bounds.append(max(spec.burst or 1, math.ceil(spec.rate)))
    # Twice the tightest limit: the next calls are ready the moment a slot frees up.
    return 2 * min(bounds) if bounds else None


def check_mappable(task_name: str, i: int, value: object) -> None:
    """Refuse an argument of ``map`` that cannot be mapped over, saying what to do."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ConfigurationError(
            f"argument {i} of {task_name}.map() must be an iterable to map over, got "
            f"{type(value).__name__}; wrap it in flowcore.unmapped(...) to pass it whole"
        )


def _rows(iterables: Iterable[Any]) -> Iterator[tuple[Any, ...]]:
    """Rows of arguments: mapped iterables zipped strictly, unmapped values repeated."""
    given = list(iterables)
    mapped = [it for it in given if not isinstance(it, unmapped)]
    for row in zip(*mapped, strict=True):
        values = iter(row)
        yield tuple(arg.value if isinstance(arg, unmapped) else next(values) for arg in given)


def read_rows(task_name: str, iterables: Iterable[Any]) -> list[tuple[Any, ...]]:
    """Every row of a map that starts all its calls at once (no limit applies)."""
    given = list(iterables)
    sized = all(isinstance(it, unmapped | Sized) for it in given)
    rows = _rows(given)
    try:
        if sized:
            return list(rows)
        read = list(islice(rows, UNLIMITED_ITEMS + 1))
    except ValueError as exc:  # zip(strict=True): iterables of unequal lengths
        raise ConfigurationError(f"{task_name}.map(): {exc}") from exc
    if len(read) > UNLIMITED_ITEMS:
        raise ConfigurationError(
            f"{task_name}.map() read {UNLIMITED_ITEMS:,} items from an iterator without "
            "reaching its end, and no limit applies to the task, so every call would start "
            "at once (an endless iterator would never stop). Put the task under a limit "
            "(its `concurrency` or `rate`, a tag of a named limit, or the flow's "
            "`concurrency`): then the calls start as room frees up and the iterator is read "
            "as they do. Or pass a list"
        )
    return read


async def feed_map(
    task: TaskSpec,
    ctx: RunContext,
    iterables: tuple[Any, ...],
    kwargs: dict[str, Any],
    futures: TaskFutureList[Any],
    window: int | None,
    wait_for: tuple[Any, ...] = (),
) -> None:
    """Start a ``map``'s calls in order as its rows are read, at most ``window`` alive at once.

    ``futures`` holds a future per call already when the iterables have a length;
    otherwise the futures are added as the calls start (held by the caller only: a
    list nobody keeps is not kept here either, so an endless map stays bounded).
    The list's feed future ends when every call has started, with the error if
    reading the iterables failed (or a future among them did).
    """
    feed = futures._feed
    assert feed is not None and ctx.spawner is not None
    spawner = ctx.spawner
    made: list[TaskFuture[Any]] = list(futures)  # one per call when the length was known
    keep = None if made else weakref.ref(futures)
    del futures
    call_kwargs = {**kwargs, WAIT_FOR: wait_for} if wait_for else kwargs
    room = Slots(window) if window is not None else None
    started = 0
    try:
        resolved = await _resolve_iterables(task, iterables)
        rows = _rows(resolved) if room is not None else iter(read_rows(task.name, resolved))
        while True:
            if room is not None:
                await room.acquire()  # no checkpoint while there is room: calls start in bulk
            if started % YIELD_EVERY == YIELD_EVERY - 1:
                await anyio.lowlevel.checkpoint()  # but never a long stretch of the loop
            try:
                args = next(rows)
            except StopIteration:
                if room is not None:
                    room.release()
                break
            except ValueError as exc:  # zip(strict=True): iterables of unequal lengths
                if room is not None:
                    room.release()
                raise ConfigurationError(f"{task.name}.map(): {exc}") from exc
            except BaseException:
                if room is not None:
                    room.release()
                raise
            rec, waits = prepare(task, ctx, args, kwargs, waits=bool(wait_for) or None)
            if made:
                future = made[started]
                future.seq = rec.seq
            else:
                future = TaskFuture(task.name, rec.seq, ctx.failed, rec.run_id)
                alive = keep() if keep is not None else None
                if alive is not None:
                    alive.append(future)
            started += 1
            if room is None:
                spawner.start(run_into_future(task, ctx, rec, waits, args, call_kwargs, future))
            else:
                spawner.start(_run_in_room(task, ctx, rec, waits, args, call_kwargs, future, room))
    except Exception as exc:
        feed._set_exception(exc, State.FAILED)
        for future in made[started:]:  # never started: they end with the map's error
            future._set_exception(exc, State.FAILED, unseen=False)
    except BaseException as exc:
        feed._set_exception(exc, State.CANCELLED)
        for future in made[started:]:
            future._set_exception(exc, State.CANCELLED, unseen=False)
        raise
    else:
        feed._set_result(None, State.COMPLETED)


async def _resolve_iterables(task: TaskSpec, iterables: tuple[Any, ...]) -> list[Any]:
    """The iterables of a map, with each future among them replaced by its result
    (waited for), and each list of a map still starting its calls complete."""
    resolved: list[Any] = []
    for i, it in enumerate(iterables):
        if type(it) is TaskFuture:
            await it.wait()
            if it._exc is not None:
                raise UpstreamFailed(
                    f"{task.name}.map() was not started because the future it maps over "
                    f"failed: {it.task_name} ({task_run_label(it.run_id, it.seq)}: {it.state})"
                )
            check_mappable(task.name, i, it._result)
            resolved.append(it._result)
        elif type(it) is TaskFutureList and it._feed is not None:
            every = await it._complete()
            feed = every[0]
            if feed._exc is not None:
                raise UpstreamFailed(
                    f"{task.name}.map() was not started because the map it maps over failed "
                    f"to start its calls: {type(feed._exc).__name__}: {feed._exc}"
                )
            resolved.append(every[1:])
        else:
            resolved.append(it)
    return resolved


async def _run_in_room(
    task: TaskSpec,
    ctx: RunContext,
    rec: TaskRunRecord,
    waits: bool,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    future: TaskFuture[Any],
    room: Slots,
) -> None:
    try:
        await run_into_future(task, ctx, rec, waits, args, kwargs, future)
    finally:
        room.release()
