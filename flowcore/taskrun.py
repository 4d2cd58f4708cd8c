"""Running one task call: inputs, attempts, retries, timeouts, and its record.

This is the hot path: every tracked call of every task goes through
:func:`run_task`. It allocates one record, appends to its history, and marks it
changed for the recorder; it never awaits the store.
"""

from __future__ import annotations

import functools
import time
import traceback
from typing import TYPE_CHECKING, Any

import anyio

from .context import RunContext, _run_var, _task_var
from .encoding import encode_inputs
from .errors import ConfigurationError, TaskTimeout, UpstreamFailed
from .futures import TaskFuture
from .records import TaskRunRecord, task_run_label
from .states import State

if TYPE_CHECKING:
    from .engine import Engine
    from .task import Task

__all__ = ["prepare", "run_prepared", "run_task"]

_RUNNING = State.RUNNING
_COMPLETED = State.COMPLETED
_MAX_TRACEBACK = 20_000


def _has_futures(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
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
    task: Task[Any, Any], ctx: RunContext, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[TaskRunRecord, bool]:
    """Create the task run's record; returns it and whether it waits for futures."""
    now = time.time()
    waits = _has_futures(args, kwargs)
    rec = ctx.new_task_run(task.name, State.PENDING if waits else _RUNNING, now)
    if waits:
        rec.history.append((State.PENDING.value, now))
    if task.record_inputs:
        rec.inputs = encode_inputs(task.param_names, args, kwargs)
    return rec, waits


async def run_task(task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``await task(...)``: run it as a tracked task run of the current flow run."""
    ctx = _run_var.get()
    if ctx is None:
        from .flow import run_standalone_task  # a task outside any flow gets its own run

        return await run_standalone_task(task, args, kwargs)
    rec, waits = prepare(task, ctx, args, kwargs)
    return await run_prepared(task, ctx, rec, waits, args, kwargs)


async def run_prepared(
    task: Task[Any, Any],
    ctx: RunContext,
    rec: TaskRunRecord,
    waits: bool,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    engine = ctx.engine
    recorder = engine.recorder
    if waits:
        recorder.task_changed(rec)
        args, kwargs = await _resolve_inputs(rec, ctx, args, kwargs)
    now = time.time()
    rec.state = _RUNNING
    rec.started = now
    rec.attempts = 1
    rec.history.append(("Running", now))
    recorder.task_changed(rec)
    engine.tasks_started += 1
    token = _task_var.set(rec)
    try:
        while True:
            try:
                if task.timeout is None:
                    if task.is_async:
                        result = await task.fn(*args, **kwargs)
                    else:
                        result = await _in_thread(engine, task, args, kwargs, False)
                else:
                    result = await _with_timeout(engine, task, args, kwargs)
            except Exception as exc:
                if rec.attempts == 1 and isinstance(exc, TypeError):
                    _raise_if_bad_call(task, args, kwargs, exc)
                retries_done = rec.attempts - 1
                if task.retry.should_retry(exc, retries_done):
                    await _wait_for_retry(engine, task, rec, exc, retries_done)
                    continue
                _finish_failed(engine, rec, exc)
                raise
            now = time.time()
            rec.state = _COMPLETED
            rec.ended = now
            rec.history.append(("Completed", now))
            recorder.task_changed(rec)
            engine.tasks_completed += 1
            return result
    except BaseException as exc:
        # An error already recorded above, an error raised while handling one (a bad
        # call, a retry predicate that raised), or a cancellation (an outer scope, a
        # flow timeout, Ctrl-C): whichever, never leave the record Running.
        if not rec.state.is_terminal:
            if isinstance(exc, Exception):
                _finish_failed(engine, rec, exc)
            else:
                now = time.time()
                rec.state = State.CANCELLED
                rec.ended = now
                rec.history.append(("Cancelled", now))
                recorder.task_changed(rec)
        raise
    finally:
        _task_var.reset(token)


async def _in_thread(
    engine: Engine,
    task: Task[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    abandon: bool,
) -> Any:
    # anyio copies the context into the worker thread, so the task run stays current there.
    return await anyio.to_thread.run_sync(
        functools.partial(task.fn, *args, **kwargs),
        limiter=engine.thread_limiter,
        abandon_on_cancel=abandon,
    )


async def _with_timeout(
    engine: Engine, task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    timeout = task.timeout
    assert timeout is not None
    with anyio.move_on_after(timeout) as scope:
        if task.is_async:
            return await task.fn(*args, **kwargs)
        # A thread cannot be interrupted: on timeout the task stops waiting for it and
        # the thread finishes in the background.
        return await _in_thread(engine, task, args, kwargs, True)
    if scope.cancelled_caught:
        raise TaskTimeout(
            f"task {task.name!r} timed out after {timeout:g} s (its `timeout`); raise the "
            "`timeout` option or make the task faster"
        )
    raise AssertionError("unreachable")  # pragma: no cover


async def _wait_for_retry(
    engine: Engine, task: Task[Any, Any], rec: TaskRunRecord, exc: Exception, retries_done: int
) -> None:
    delay = task.retry.delay_for(retries_done, engine.rng)
    now = time.time()
    rec.state = State.RETRYING
    rec.history.append(
        ("Retrying", now, f"{type(exc).__name__}: {str(exc)[:300]} (retry in {delay:.3g} s)")
    )
    engine.recorder.task_changed(rec)
    engine.tasks_retried += 1
    await engine.clock.sleep(delay)
    now = time.time()
    rec.attempts += 1
    rec.state = _RUNNING
    rec.history.append(("Running", now))
    engine.recorder.task_changed(rec)


def error_name(exc: BaseException) -> str:
    """How an error's type is recorded: ``ValueError``, ``httpx.HTTPStatusError``."""
    t = type(exc)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _finish_failed(engine: Engine, rec: TaskRunRecord, exc: BaseException) -> None:
    now = time.time()
    state = State.TIMED_OUT if isinstance(exc, TaskTimeout) else State.FAILED
    if isinstance(exc, UpstreamFailed):
        state = State.UPSTREAM_FAILED
    rec.state = state
    rec.ended = now
    rec.error_type = error_name(exc)
    rec.error_message = str(exc)[:2000]
    rec.traceback = "".join(traceback.format_exception(exc))[-_MAX_TRACEBACK:]
    rec.history.append((state.value, now))
    engine.recorder.task_changed(rec)
    engine.tasks_failed += 1


def _raise_if_bad_call(
    task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any], exc: TypeError
) -> None:
    """A TypeError from a call with wrong arguments is a bug, not a flaky failure: no retry."""
    try:
        task.signature.bind(*args, **kwargs)
    except TypeError as bind_error:
        raise ConfigurationError(
            f"task {task.name!r} was called with arguments that do not fit its signature "
            f"{task.name}{task.signature}: {bind_error}"
        ) from exc


async def _resolve_inputs(
    rec: TaskRunRecord, ctx: RunContext, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    found: list[TaskFuture[Any]] = []
    for value in args:
        _collect_futures(value, found)
    for value in kwargs.values():
        _collect_futures(value, found)
    rec.upstream = sorted({f.seq for f in found})
    for fut in found:
        await fut._done.wait()
    failed = [f for f in found if f._exc is not None]
    if failed:
        names = ", ".join(
            f"{f.task_name} ({task_run_label(rec.run_id, f.seq)}: {f.state})" for f in failed
        )
        err = UpstreamFailed(
            f"task {rec.name!r} was not run because its input futures failed: {names}"
        )
        _finish_failed(ctx.engine, rec, err)
        raise err
    return tuple(_substitute(a) for a in args), {k: _substitute(v) for k, v in kwargs.items()}


async def run_into_future(
    task: Task[Any, Any],
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
        result = await run_prepared(task, ctx, rec, waits, args, kwargs)
    except Exception as exc:
        future._set_exception(exc, rec.state)
    except BaseException as exc:
        future._set_exception(exc, State.CANCELLED)
        raise
    else:
        future._set_result(result, rec.state)
