"""The life of a run: a flow run owns its tasks, and ends in a terminal state.

A flow run owns the tasks it submits (on asyncio a cancel scope and the
spawner's set of tasks, elsewhere an anyio task group), so leaving the flow
waits for them, and a failure or cancellation of the flow cancels them. No
task outlives its flow. A task awaited outside any flow is a run of its own
(``kind="task"``) with the same lifecycle.

How a run ends, in order of precedence: the body's error; else its timeout
(``FlowTimeout``); else the first failure of a submitted task nobody looked at;
else it completed. A cancellation (Ctrl-C, an outer scope) ends it Cancelled.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import anyio
from anyio import CancelScope
from anyio.abc import TaskGroup

from .._current import current_task_run
from .._process import MACHINE
from ..encoding import encode_inputs
from ..errors import FlowTimeout
from ..hooks import Hooks
from ..ids import HOST, error_message, error_name, new_run_id, safe_repr, traceback_text
from ..records import FlowRunRecord, Launch, transition
from ..retry import RetryPolicy
from ..states import State
from .attempt import run_task
from .core import Engine, RunContext, _run_var, in_engine
from .gates import RunGate
from .hooks import flow_end_hooks, flow_retry_hooks
from .inputs import prepare
from .replay import Replay
from .spawner import Spawner
from .spec import TaskSpec

__all__ = ["new_flow_record", "run_flow", "run_standalone_task"]


def new_flow_record(
    run_id: str, name: str, kind: str, parameters: bytes, now: float
) -> FlowRunRecord:
    """A flow run's record, Running from ``now``, linked to the run and task run it is in."""
    parent_ctx = _run_var.get()
    parent_task = current_task_run.get()
    return FlowRunRecord(
        id=run_id,
        name=name,
        kind=kind,
        state=State.RUNNING,
        created=now,
        started=now,
        parameters=parameters,
        parent_run_id=None if parent_ctx is None else parent_ctx.record.id,
        parent_task_seq=None if parent_task is None else parent_task.seq,
        history=[(State.RUNNING.value, now)],
        host=HOST,
        pid=os.getpid(),
        machine=MACHINE,  # where that pid means this process (see store.crash)
    )


async def run_flow(
    engine: Engine,
    name: str,
    fn: Callable[..., Coroutine[Any, Any, Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    parameters: Mapping[str, Any],
    *,
    timeout: float | None = None,
    concurrency: int | None = None,
    executor: str | None = None,
    entrypoint: str | None = None,
    entrypoint_hash: str | None = None,
    replay: Replay | None = None,
    retry: RetryPolicy | None = None,
    record: FlowRunRecord | None = None,
    upstream: list[int] | None = None,
    refused: Exception | None = None,
    launch: Launch | None = None,
    hooks: Hooks | None = None,
) -> Any:
    """Run ``fn(*args, **kwargs)`` as a flow run called ``name``; return its result.

    ``parameters``: the bound arguments, as recorded. ``entrypoint`` and
    ``entrypoint_hash``: where the flow is defined, and the SHA-256 of that file (see
    :attr:`flowcore.Flow.entrypoint_hash`). ``replay``: the earlier run this one
    re-drives (resume). ``retry``: how a failed attempt is retried.
    ``record``: the run's record when the caller made it already (a resume claims
    its run in the store before it starts); by default one is made here.
    ``upstream``: the parent run's task runs whose futures were passed to this one.
    ``refused``: why the run cannot start (its parameters are invalid): the run is
    recorded, with ``parameters`` as given, and ends Failed with this error before
    its body is called (never retried), so it is never dropped; then the error is
    raised, as any failure of the run is (a parent flow sees it like a task failure).
    ``launch``: what started the run when no call did (a schedule's slot, a trigger).
    ``hooks``: the flow's state hooks (see :mod:`flowcore.engine.hooks`), fired for a
    refused run too (its ``on_failure``).
    """
    now = time.time()
    if record is None:
        run_id = launch.run_id if launch is not None and launch.run_id else new_run_id()
        record = new_flow_record(run_id, name, "flow", encode_inputs((), (), parameters), now)
    record.entrypoint = entrypoint
    if upstream:
        record.upstream = upstream
    record.entrypoint_hash = entrypoint_hash
    if launch is not None:
        record.launched_by = launch.by
        record.scheduled_for = launch.scheduled_for
        record.interval_start = launch.interval_start
        record.interval_end = launch.interval_end
    ctx = RunContext(engine, record, parameters)
    if refused is not None:
        error = refused

        async def refuse() -> Any:
            raise error

        return await _drive(engine, ctx, refuse, None, None, hooks or None)
    if concurrency is not None:
        ctx.gate = RunGate(concurrency, engine.clock)
    if executor is not None:
        ctx.executor = await engine.executor(executor)
    if replay is not None:
        record.resumed_from = replay.run_id
        record.history[-1] = (State.RUNNING.value, now, f"resuming run {replay.run_id}")
        ctx.replay = replay
    # A partial, not a coroutine function around the call: one coroutine frame fewer
    # for every step of the body.
    body = functools.partial(fn, *args, **kwargs)
    return await _drive(engine, ctx, body, timeout, retry, hooks or None)


async def run_standalone_task(task: TaskSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A task awaited outside any flow: tracked as a run of its own (``kind="task"``)."""
    return await in_engine(lambda engine: _standalone(engine, task, args, kwargs))


async def _standalone(
    engine: Engine, task: TaskSpec, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    record = new_flow_record(new_run_id(), task.name, "task", b"", time.time())
    ctx = RunContext(engine, record, {})

    async def body() -> Any:
        rec, waits = prepare(task, ctx, args, kwargs)
        record.parameters = rec.inputs
        return await run_task(task, args, kwargs, ctx, rec, waits)

    return await _drive(engine, ctx, body, None)


async def _drive(
    engine: Engine,
    ctx: RunContext,
    body: Callable[[], Coroutine[Any, Any, Any]],
    timeout: float | None,
    retry: RetryPolicy | None = None,
    hooks: Hooks | None = None,
) -> Any:
    """Run ``body`` as the flow run ``ctx``: record it, own its tasks, end it terminal.

    With a ``retry`` policy, a failed attempt (an error, a timeout) is retried in the
    same run, after its delay: the run goes Retrying, then Running again, and the
    body runs from the start with fresh tasks (the failed attempt's task runs stay
    recorded as they ended). ``timeout`` bounds each attempt.

    ``hooks`` (``None``: none, the common case, which costs one check): the end hooks
    fire once the terminal state is recorded and committed, while the run's span is
    still open and before a top-level run's final flush; ``on_retry`` hooks fire when
    the run is Retrying, before its backoff.
    """
    record = ctx.record
    recorder = engine.recorder
    engine.flows_running += 1
    run_token = _run_var.set(ctx)
    span = ctx.span = _start_span(engine, ctx)  # under the calling task run's span, if any
    task_token = current_task_run.set(None)
    recorder.flow_changed(record)
    top_level = record.parent_run_id is None
    if top_level:
        engine.last_run = record
    error: BaseException | None = None
    try:
        attempt = 0
        while True:
            result, error = await _attempt(ctx, body, timeout)
            if error is None:
                break
            if retry is None or not retry.should_retry(error, attempt):
                state = State.TIMED_OUT if isinstance(error, FlowTimeout) else State.FAILED
                _finish(record, state, error)
                recorder.flow_changed(record)
                raise error
            await _wait_for_retry(engine, ctx, retry, attempt, error, hooks)
            attempt += 1
        _finish(record, State.COMPLETED, None)
        recorder.flow_changed(record)
        return result
    except BaseException as exc:
        if not record.state.is_terminal:
            _finish(record, State.CANCELLED, exc if isinstance(exc, Exception) else None)
            recorder.flow_changed(record)
        error = exc
        raise
    finally:
        interrupted: BaseException | None = None
        if hooks is not None and record.state.is_terminal:
            # Shielded within: they run while a cancelled run is being cancelled.
            try:
                await flow_end_hooks(ctx, hooks, error)
            except BaseException as exc:  # a hook's KeyboardInterrupt or SystemExit
                interrupted = exc  # raised once the run is closed as usual
        # Run-scoped resources (the shared HTTP client) close before the span ends.
        if ctx.resources is not None:
            await ctx.close_resources()
        if span is not None:
            span.finish_run(record, error if record.state is not State.CANCELLED else None)
        engine.flows_running -= 1
        current_task_run.reset(task_token)
        _run_var.reset(run_token)
        ctx.spawner = None
        ctx.span = None
        ctx.failed.clear()
        if top_level:
            # The end of a run is a durability point: its records are committed
            # before the caller sees its result (or the caller gets the StoreError,
            # and the run is never recorded Completed: see Recorder.end_run).
            if error is None or isinstance(error, Exception):
                # Not shielded (a cancel scope costs 3.8 µs, an eighth of an empty run):
                # a caller cancelled while it waits only stops waiting; its run's records
                # stay queued, and the next commit (another caller's, the writer's) has
                # them.
                await recorder.end_run(record)
            else:
                # Cancelled, interrupted: committed before the cancellation goes on.
                with anyio.CancelScope(shield=True):
                    await recorder.end_run(record)
            if engine.shipper is not None:
                engine.shipper.wake()  # its spans (and its subflows') can go now
        if interrupted is not None:
            raise interrupted


async def _attempt(
    ctx: RunContext, body: Callable[[], Coroutine[Any, Any, Any]], timeout: float | None
) -> tuple[Any, BaseException | None]:
    """One attempt of a flow run's body, owning its tasks: ``(result, None)`` when it
    completed, ``(None, error)`` when it failed or timed out. A KeyboardInterrupt or
    SystemExit (from the body or a submitted task) is raised as itself."""
    record = ctx.record
    error: BaseException | None = None
    leaving: BaseException | None = None
    result: Any = None
    spawner: Spawner | None = None
    tg: TaskGroup | None = None
    scope: CancelScope
    if _on_asyncio():
        # No task group: the spawner starts the task runs itself (see .spawner), so all
        # the run needs is a cancel scope (its deadline, the cancellation of its body).
        owner: Any = _Entered(scope := _asyncio_scope())
    else:
        owner = tg = anyio.create_task_group()
    try:
        async with owner:
            if tg is not None:
                scope = tg.cancel_scope  # trio's is made on entering
            # The timeout is the scope's own deadline (one cancel scope fewer:
            # entering and leaving one is a tenth of an empty run's cost).
            if timeout is not None:
                scope.deadline = anyio.current_time() + timeout
                ctx.deadline = True  # sync tasks are abandoned when it passes
            ctx.spawner = spawner = Spawner(scope, tg)
            try:
                result = await body()
                await spawner.join()  # submitted tasks nobody awaited still finish
            except Exception as exc:
                # Keep the error for the flow (not an ExceptionGroup) and stop the
                # flow's other tasks: the attempt has failed.
                error = exc
                scope.cancel()
            except (KeyboardInterrupt, SystemExit) as exc:
                # Likewise kept, to be raised as itself once the tasks are stopped: out
                # of the task group it would come wrapped in a BaseExceptionGroup, which
                # `except KeyboardInterrupt` does not catch and `sys.exit(3)` turns into 1.
                leaving = exc
                scope.cancel()
    finally:
        if spawner is not None:
            await spawner.cancel()  # whatever is left when the run ends another way
    if leaving is None and spawner is not None:
        leaving = spawner.fatal  # a submitted task's KeyboardInterrupt or SystemExit
    if leaving is not None:
        raise leaving  # recorded Cancelled by _drive, as Ctrl-C is
    # The deadline passed: whether it interrupted something, or the body was in a
    # call that cannot be interrupted (a sync task's thread, a blocking call) and
    # returned after it without another checkpoint.
    if (
        error is None
        and timeout is not None
        and (scope.cancel_called or anyio.current_time() >= scope.deadline)
    ):
        error = FlowTimeout(
            f"flow {record.name!r} timed out after {timeout:g} s (its `timeout`); its "
            "unfinished tasks were cancelled. Raise the flow's `timeout` to give it longer"
        )
    if error is None and ctx.failed:
        error = _unobserved_failure(ctx)
    ctx.failed.clear()
    return (None, error) if error is not None else (result, None)


class _Entered:
    """A cancel scope entered and left by ``async with``, as a task group would be.

    On asyncio the spawner starts a run's task runs itself (``loop.create_task``, see
    :mod:`.spawner`), so a task group would never hold a task: all it would give is
    its scope (the run's deadline, the cancellation of its body), and entering and
    leaving it would cost a cancel scope more and a turn of the event loop (its
    checkpoint): 6 µs, a sixth of an empty flow run.
    """

    __slots__ = ("scope",)

    def __init__(self, scope: CancelScope) -> None:
        self.scope = scope

    async def __aenter__(self) -> None:
        self.scope.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> bool:
        return bool(self.scope.__exit__(exc_type, exc, tb))


@functools.cache
def _asyncio_scope_class() -> type[CancelScope]:
    """The class of anyio's asyncio backend's cancel scopes, found once."""
    return type(anyio.CancelScope())


def _asyncio_scope() -> CancelScope:
    """A new cancel scope of anyio's asyncio backend, made by its class directly:
    ``anyio.CancelScope()`` first asks which event loop runs (sniffio), 1.6 µs of an
    empty flow run's 28. Only called on asyncio."""
    return _asyncio_scope_class()()


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # trio
        return False
    return True


async def _wait_for_retry(
    engine: Engine,
    ctx: RunContext,
    retry: RetryPolicy,
    attempt: int,
    error: BaseException,
    hooks: Hooks | None,
) -> None:
    """Record the flow run Retrying, fire its ``on_retry`` hooks, wait out the policy's
    delay, and make it Running."""
    record = ctx.record
    delay = retry.delay_for(attempt, engine.rng, error)
    note = f"{error_name(error)}: {error_message(error, 300)} (retry in {delay:.3g} s)"
    transition(record, State.RETRYING, time.time(), note)
    engine.recorder.flow_changed(record)
    if hooks is not None:
        await flow_retry_hooks(ctx, hooks, error, delay)
    if delay > 0:
        await engine.clock.sleep(delay)
    transition(record, State.RUNNING, time.time())
    engine.recorder.flow_changed(record)


def _start_span(engine: Engine, ctx: RunContext) -> Any:
    """Start the run's span (its ids go on the record); ``None`` when not tracing."""
    tracing = engine.tracing
    if tracing is None:
        return None
    extra = None
    if tracing.record_parameters:
        extra = {
            f"flowcore.parameter.{name}": _repr(value)[:1000]
            for name, value in ctx.parameters.items()
        }
    replay = ctx.replay
    # A resumed run links to the trace of the run it re-drives.
    links = [replay.trace] if replay is not None and replay.trace is not None else None
    return tracing.start_run(ctx.record, extra, links)


def _repr(value: Any) -> str:
    return safe_repr(value)  # a broken __repr__ must not fail the run


def _unobserved_failure(ctx: RunContext) -> BaseException:
    futures = list(ctx.failed)
    first = futures[0]
    exc = first._exc
    assert exc is not None
    others = (
        f"; {len(futures) - 1} more submitted tasks failed unobserved" if len(futures) > 1 else ""
    )
    exc.add_note(
        f"flowcore: task {first.task_name!r}{_seq_text(first.seq)} was submitted but its "
        f"failure was never awaited, so the flow run fails with it{others}. Await futures (or "
        "flowcore.wait(...)) to handle their errors"
    )
    return exc


def _seq_text(seq: int) -> str:
    """`` (seq N)`` for a future that became a task run; nothing for one that never did
    (a map's call that never started)."""
    return f" (seq {seq})" if seq >= 0 else ""


def _finish(record: FlowRunRecord, state: State, error: BaseException | None) -> None:
    transition(record, state, time.time())
    if error is not None:
        record.error_type = error_name(error)
        record.error_message = error_message(error)  # never raises: the flow's error propagates
        record.traceback = traceback_text(error)
