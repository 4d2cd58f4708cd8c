"""A task call's inputs: its record made at the call, and the futures it waits for.

A :class:`~flowcore.engine.futures.TaskFuture` passed to a task, alone or inside
a list, tuple or dict, is a dependency edge: the call waits for it, is recorded
with the edge (``upstream``), and receives its result. If an upstream failed,
the call is not run and ends ``UpstreamFailed``.
"""

from __future__ import annotations

import time
from typing import Any

from .._current import current_task_run
from ..encoding import encode_inputs
from ..errors import UpstreamFailed
from ..records import TaskRunRecord, task_run_label
from ..states import State
from .core import RunContext
from .futures import TaskFuture
from .outcome import finish_failed
from .spec import TaskSpec

__all__ = ["has_futures", "prepare", "resolve_inputs"]

_RUNNING_NOW = State.RUNNING.value
_PLAIN = frozenset((int, float, str, bytes, bool, type(None)))


def has_futures(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether any argument is a future, or a list, tuple or dict holding one."""
    # Type checks only (no isinstance walks, no recursion): this runs on every call.
    for value in (*args, *kwargs.values()) if kwargs else args:
        t = type(value)
        if t is TaskFuture:
            return True
        if t is list or t is tuple:
            for item in value:
                if type(item) is TaskFuture:
                    return True
        elif t is dict:
            for item in value.values():
                if type(item) is TaskFuture:
                    return True
    return False


def _collect_futures(value: Any, found: list[TaskFuture[Any]]) -> None:
    t = type(value)
    if t is TaskFuture:
        found.append(value)
    elif t is list or t is tuple:
        found.extend(v for v in value if type(v) is TaskFuture)
    elif t is dict:
        found.extend(v for v in value.values() if type(v) is TaskFuture)


def _substitute(value: Any) -> Any:
    t = type(value)
    if t is TaskFuture:
        return value._result
    if t is list:
        return [v._result if type(v) is TaskFuture else v for v in value]
    if t is tuple:
        return tuple(v._result if type(v) is TaskFuture else v for v in value)
    if t is dict:
        return {k: (v._result if type(v) is TaskFuture else v) for k, v in value.items()}
    return value


def prepare(
    task: TaskSpec,
    ctx: RunContext,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    start: bool = False,
) -> tuple[TaskRunRecord, bool]:
    """Create the task run's record; returns it and whether it waits for futures.

    ``start``: the call starts now (``await task(...)``), so a record that waits
    for nothing is made Running at once, in one allocation, rather than created
    Pending and then moved. Otherwise it is Pending (a submitted call not started
    yet, or one waiting for its inputs; only the latter is written as such).
    """
    now = time.time()
    # One plain argument (the commonest call) cannot hold a future: no need to look.
    waits = (
        False
        if not kwargs and len(args) == 1 and type(args[0]) in _PLAIN
        else has_futures(args, kwargs)
    )
    record = ctx.record
    seq = record.task_count  # the run's task count doubles as the next seq
    record.task_count = seq + 1
    parent = current_task_run.get()
    running = start and not waits
    rec = TaskRunRecord(
        run_id=record.id,
        seq=seq,
        name=task.name,
        state=State.RUNNING if running else State.PENDING,
        created=now,
        parent_seq=None if parent is None else parent.seq,
        inputs=(
            encode_inputs(task.param_names, args, kwargs, task.first_input)
            if task.record_inputs
            else b""
        ),
        history=[(_RUNNING_NOW, now)] if running else [("Pending", now)] if waits else [],
        # The span the task run's span hangs under (None when not tracing): its
        # parent task run's, else its flow run's. Kept so that the span can be
        # rebuilt from the record alone.
        parent_span_id=record.span_id if parent is None else parent.span_id,
    )
    if running:
        rec.started = now
        rec.attempts = 1
    return rec, waits


async def resolve_inputs(
    rec: TaskRunRecord, ctx: RunContext, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Wait for the futures among the arguments; the arguments with their results.

    Records the edges. If an upstream failed, ends the task run ``UpstreamFailed``
    and raises :class:`~flowcore.UpstreamFailed` naming the failed inputs.
    """
    found: list[TaskFuture[Any]] = []
    for value in args:
        _collect_futures(value, found)
    for value in kwargs.values():
        _collect_futures(value, found)
    rec.upstream = sorted({f.seq for f in found})
    for fut in found:
        if not fut._finished:
            await fut.wait()
    failed = [f for f in found if f._exc is not None]
    if failed:
        names = ", ".join(
            f"{f.task_name} ({task_run_label(rec.run_id, f.seq)}: {f.state})" for f in failed
        )
        err = UpstreamFailed(
            f"task {rec.name!r} was not run because its input futures failed: {names}"
        )
        finish_failed(ctx.engine.recorder, rec, err)
        ctx.engine.tasks_failed += 1
        raise err
    return tuple(_substitute(a) for a in args), {k: _substitute(v) for k, v in kwargs.items()}
