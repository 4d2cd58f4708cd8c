"""Submitted task runs: ``task.submit()`` and ``task.map()`` start calls whose outcome
goes into a future rather than up the flow's task group."""

from __future__ import annotations

import math
from typing import Any

from ..records import TaskRunRecord
from ..states import State
from .attempt import run_task
from .core import RunContext
from .futures import TaskFuture
from .gates import Slots
from .inputs import prepare
from .spec import TaskSpec

__all__ = ["feed_map", "map_window", "run_into_future"]


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


async def feed_map(
    task: TaskSpec,
    ctx: RunContext,
    rows: list[tuple[Any, ...]],
    kwargs: dict[str, Any],
    futures: list[TaskFuture[Any]],
    window: int,
) -> None:
    """Start a limited ``map``'s calls in order, keeping at most ``window`` alive at once."""
    room = Slots(window)
    spawner = ctx.spawner
    assert spawner is not None
    for i, future in enumerate(futures):
        await room.acquire()  # no checkpoint while there is room: calls start in bulk
        args, rows[i] = rows[i], ()  # the list need not keep what a call now holds
        rec, waits = prepare(task, ctx, args, kwargs)
        future.seq = rec.seq
        spawner.start(_run_in_room(task, ctx, rec, waits, args, kwargs, future, room))


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
