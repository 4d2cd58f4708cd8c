"""Running one task call: the pipeline every tracked call of every task goes through.

:func:`run_task` reads top to bottom as the steps of a task run:

1. make the record (or take the one ``submit``/``map`` made), wait for room in
   the writer when it is behind, start the span, make the task run current;
2. wait for input futures (a dependency edge), then move to Running;
3. replay: a resumed run returns what the earlier run computed;
4. cache: a stored result with the same key returns without a call;
5. attempts: pass the limits, call the function through the executor under the
   timeout, give the limits back; on an error, retry after a backoff or fail;
6. store the result, complete, and (strict durability) commit before returning;
7. hooks (a task with any): fired once the end is recorded, before the span ends
   and before the caller gets the result or the error (see ``engine.hooks``).

It never awaits the store on the way (records are marked changed; the writer
flushes them), and it stays one coroutine frame per task run: the steps that
are not awaited are plain functions, and the ones that are only run when needed.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any

import anyio

from .._current import current_task_run
from ..errors import ConfigurationError, TaskTimeout
from ..ids import error_message, error_name
from ..records import TaskRunRecord, transition
from ..states import State
from .cached import cache_lookup, cache_lookup_waiting
from .core import Engine, RunContext
from .executor import LocalExecutor
from .gates import Gate, enter, gates_for, leave
from .hooks import task_hooks
from .inflight import InFlight
from .inputs import prepare, resolve_inputs
from .outcome import finish_failed, move
from .results import store_result
from .spec import TaskSpec

__all__ = ["run_task"]

_RUNNING = State.RUNNING
_COMPLETED = State.COMPLETED


async def run_task(
    task: TaskSpec,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    ctx: RunContext,
    rec: TaskRunRecord | None = None,
    waits: bool = False,
) -> Any:
    """Run one task call as a tracked task run of the flow run ``ctx``.

    ``await task(...)`` calls this with the arguments only, and the record is made
    here; ``submit``, ``map`` and a standalone run pass the record they prepared
    (``waits``: it waits for input futures).
    """
    engine = ctx.engine
    recorder = engine.recorder
    # Raised in the try below, once the record is made: a call cancelled while it
    # waited for the writer is recorded Cancelled, like any other.
    error: BaseException | None = None
    if recorder.behind:
        # The writer is behind: let it catch up before more work. Before the record is
        # made, so a call waiting here holds no record (in a big gather most calls may
        # wait here at once): what it will record, it records once it runs.
        try:
            await recorder.admit()
        except BaseException as exc:
            error = exc
    if rec is None:
        rec, waits = prepare(task, ctx, args, kwargs, start=True)
    tracing = engine.tracing
    span = None
    if tracing is not None:
        span = tracing.start_task(rec, task.code_function, task.code_namespace)
    token = current_task_run.set(rec)
    claimed: InFlight | None = None
    try:
        if error is not None:
            raise error
        # 2. inputs, then Running.
        if rec.started is None:  # made by submit or map, or waiting for its input futures
            if waits:
                recorder.task_changed(rec)
                args, kwargs = await resolve_inputs(rec, ctx, args, kwargs, task)
            rec.started = now = time.time()
            rec.attempts = 1
            transition(rec, _RUNNING, now)
        recorder.task_changed(rec)
        engine.tasks_started += 1
        # 3. replay, 4. cache.
        if ctx.replay is not None:
            found, value = await ctx.replay.take(task, rec)
            if found:
                engine.tasks_completed += 1
                if task.hooks is not None and task.hooks.on_completion:
                    await task_hooks(ctx, task.hooks, rec, span)
                return value
        if task.cache is not None and engine.cache_enabled:
            hit, value, claimed = cache_lookup(engine, task, rec, args, kwargs)
            if hit is None:  # an equal call computing, a store that answers later, a blob
                hit, value, claimed = await cache_lookup_waiting(engine, task, rec, value)
            if hit:
                engine.tasks_completed += 1
                if task.hooks is not None and task.hooks.on_completion:
                    await task_hooks(ctx, task.hooks, rec, span)
                return value
        # 5. attempts.
        gates = (
            gates_for(engine.limits, task, task.own_limit, task.tags, ctx.gate)
            if task.own_limit is not None or task.tags or ctx.gate is not None
            else None
        )
        executor = ctx.executor if task.executor is None else await engine.executor(task.executor)
        # The local executor's call of an async function is the function's own coroutine:
        # made here, it saves a Python call per attempt (3% of a no-op task run).
        inline = task.is_async and type(executor) is LocalExecutor
        while True:
            timeout = task.timeout
            if gates:
                timeout = await _pass_gates(gates, rec, engine, task, span)
            try:
                try:
                    if inline:
                        # Without keywords (the commonest call) no empty ``**`` is unpacked.
                        call = task.call(*args, **kwargs) if kwargs else task.call(*args)
                    else:
                        call = executor.call(
                            task.call, args, kwargs, task.is_async, bool(timeout) or ctx.deadline
                        )
                    result = await (call if timeout is None else _within(call, timeout, task))
                finally:
                    if gates:
                        await leave(gates)  # per attempt: not held during a backoff
            except Exception as exc:
                if _retries(task, rec, args, kwargs, exc):
                    await _wait_for_retry(ctx, task, rec, exc, span)
                    continue
                _fail(engine, rec, exc)
                raise
            break
        # 6. result, completion.
        if task.cache is not None or (task.persist_result is not False and engine.persist_results):
            # A cached task always stores its result.
            store_result(recorder, task, rec, result, engine.clock)
        transition(rec, _COMPLETED, time.time())
        recorder.task_changed(rec)
        engine.tasks_completed += 1
        if claimed is not None:
            claimed.succeed(rec)
        if engine.strict:
            # Strict durability: the completion is committed before anyone sees the result.
            await recorder.commit()
        if task.hooks is not None and task.hooks.on_completion:  # one check without hooks
            await task_hooks(ctx, task.hooks, rec, span)
        return result
    except BaseException as exc:
        # An error already recorded above, an error raised while handling one (a bad
        # call, a retry predicate that raised, a result that cannot be stored), or a
        # cancellation (an outer scope, a flow timeout, Ctrl-C): whichever, never
        # leave the record Running.
        error = exc
        if not rec.state.is_terminal:
            _end_unfinished(engine, rec, exc)
        # Not after a success: a completion hook's KeyboardInterrupt is no failure.
        if task.hooks is not None and not rec.state.is_success:
            await task_hooks(ctx, task.hooks, rec, span, exc)
        raise
    finally:
        if span is not None:
            span.finish_task(rec, error if isinstance(error, Exception) else None)
        current_task_run.reset(token)
        if claimed is not None:
            claimed.release(engine.inflight)


def _fail(engine: Engine, rec: TaskRunRecord, exc: BaseException) -> None:
    finish_failed(engine.recorder, rec, exc)
    engine.tasks_failed += 1


def _end_unfinished(engine: Engine, rec: TaskRunRecord, exc: BaseException) -> None:
    """End a task run that an error or a cancellation left unfinished: Failed (or
    TimedOut, UpstreamFailed) for an error, Cancelled for a cancellation."""
    if isinstance(exc, Exception):
        _fail(engine, rec, exc)
    else:
        move(engine.recorder, rec, State.CANCELLED)


async def _within(call: Awaitable[Any], timeout: float, task: TaskSpec) -> Any:
    """``await call``, cancelled after ``timeout`` seconds with :class:`TaskTimeout`."""
    with anyio.move_on_after(timeout) as scope:
        return await call
    if scope.cancelled_caught:
        raise TaskTimeout(
            f"task {task.name!r} timed out after {task.timeout:g} s (its "
            "`timeout`); raise the `timeout` option or make the task faster"
        )
    raise AssertionError("unreachable")  # pragma: no cover


def _retries(
    task: TaskSpec,
    rec: TaskRunRecord,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    exc: Exception,
) -> bool:
    """Whether the attempt that raised ``exc`` gets another try (its retry policy says).

    A call whose arguments do not fit the function is a bug, not a flaky failure:
    that raises a ConfigurationError at once.
    """
    if rec.attempts == 1 and isinstance(exc, TypeError):
        _raise_if_bad_call(task, args, kwargs, exc)
    return task.retry.should_retry(exc, rec.attempts - 1)


async def _pass_gates(
    gates: list[Gate], rec: TaskRunRecord, engine: Engine, task: TaskSpec, span: Any
) -> float | None:
    """Wait for the task's limits, before the attempt; returns the attempt's timeout.

    The wait is not timed unless ``timeout_includes_wait``: then it counts against
    the timeout, and what is left of it is returned.
    """
    timeout = task.timeout
    if timeout is None or not task.timeout_includes_wait:
        await _wait_at_gates(gates, rec, engine, span)
        return timeout
    started = time.monotonic()
    with anyio.move_on_after(timeout) as scope:
        await _wait_at_gates(gates, rec, engine, span)
    if scope.cancelled_caught:
        raise TaskTimeout(
            f"task {task.name!r} timed out after {timeout:g} s waiting for its limits "
            "(`timeout_includes_wait=True` counts the wait); raise the `timeout`, or drop "
            "timeout_includes_wait to time only the attempt"
        )
    return max(timeout - (time.monotonic() - started), 1e-6)


async def _wait_at_gates(gates: list[Gate], rec: TaskRunRecord, engine: Engine, span: Any) -> None:
    blocked = [g.limit.name for g in gates if not g.free()]
    if blocked:
        # Visible while it waits: the run shows Pending, and why; the span says so too.
        names = ", ".join(blocked)
        move(engine.recorder, rec, State.PENDING, f"waiting for limit {names}")
        if span is not None:
            span.event("waiting for limit", {"flowcore.limit": names})
    await enter(gates)
    if blocked:
        move(engine.recorder, rec, _RUNNING)
        if span is not None:
            span.event("limit passed", {"flowcore.limit": names})


async def _wait_for_retry(
    ctx: RunContext, task: TaskSpec, rec: TaskRunRecord, exc: Exception, span: Any
) -> None:
    engine = ctx.engine
    retries_done = rec.attempts - 1
    delay = task.retry.delay_for(retries_done, engine.rng, exc)
    message = error_message(exc, 1000)  # never raises, even if the error's __str__ does
    note = f"{type(exc).__name__}: {message[:300]} (retry in {delay:.3g} s)"
    move(engine.recorder, rec, State.RETRYING, note)
    engine.tasks_retried += 1
    if span is not None:
        span.event(
            "retry",
            {
                "flowcore.attempt": rec.attempts,
                "exception.type": error_name(exc),
                "exception.message": message,
                "flowcore.retry.delay_s": delay,
            },
        )
    if task.hooks is not None:  # on_retry: recorded Retrying, before the wait
        await task_hooks(ctx, task.hooks, rec, span, exc, delay)
    if delay > 0:
        await engine.clock.sleep(delay)
    # No wait asked for: retry at once. Yielding to the loop would put the retry
    # behind every other ready task (thousands of them in a big gather).
    rec.attempts += 1
    move(engine.recorder, rec, _RUNNING)


def _raise_if_bad_call(
    task: TaskSpec, args: tuple[Any, ...], kwargs: dict[str, Any], exc: TypeError
) -> None:
    """A TypeError from a call with wrong arguments is a bug, not a flaky failure: no retry."""
    try:
        task.signature.bind(*args, **kwargs)
    except TypeError as bind_error:
        raise ConfigurationError(
            f"task {task.name!r} was called with arguments that do not fit its signature "
            f"{task.name}{task.signature}: {bind_error}"
        ) from exc
