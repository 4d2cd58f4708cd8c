"""Running one task call: inputs, attempts, retries, timeouts, and its record.

This is the hot path: every tracked call of every task goes through
:func:`run_task`. It allocates one record, appends to its history, and marks it
changed for the recorder; it never awaits the store.
"""

from __future__ import annotations

import functools
import logging
import time
import traceback
from typing import TYPE_CHECKING, Any

import anyio

from .context import RunContext, _run_var, _task_var
from .encoding import encode_inputs
from .errors import ConfigurationError, TaskTimeout, UpstreamFailed
from .futures import TaskFuture
from .limits import Slots, enter, gates_for, leave
from .records import CacheEntry, TaskRunRecord, task_run_label
from .results import INLINE_LIMIT, ResultFiles
from .serializers import ResultNotSerializable, ResultUnreadable, decode_result, encode_result
from .states import State

if TYPE_CHECKING:
    from .engine import Engine
    from .task import Task

__all__ = ["prepare", "run_task"]

log = logging.getLogger("flowcore")

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
    task: Task[Any, Any],
    ctx: RunContext,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    start: bool = False,
) -> tuple[TaskRunRecord, bool]:
    """Create the task run's record; returns it and whether it waits for futures.

    ``start``: the call starts now (``await task(...)``), so a record that waits
    for nothing is made Running at once, in one allocation, rather than created and
    then changed.
    """
    now = time.time()
    waits = _has_futures(args, kwargs)
    record = ctx.record
    seq = record.task_count  # the run's task count doubles as the next seq
    record.task_count = seq + 1
    parent = _task_var.get()
    if waits:
        state, history = State.PENDING, [(State.PENDING.value, now)]
    else:
        state, history = _RUNNING, [("Running", now)] if start else []
    rec = TaskRunRecord(
        run_id=record.id,
        seq=seq,
        name=task.name,
        state=state,
        created=now,
        parent_seq=None if parent is None else parent.seq,
        inputs=(
            encode_inputs(task.param_names, args, kwargs, task.first_input)
            if task.record_inputs
            else b""
        ),
        history=history,
        # The span the task run's span hangs under (None when not tracing): its
        # parent task run's, else its flow run's. Kept so that the span can be
        # rebuilt from the record alone.
        parent_span_id=record.span_id if parent is None else parent.span_id,
    )
    if start and not waits:
        rec.started = now
        rec.attempts = 1
    return rec, waits


async def run_task(
    task: Task[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    ctx: RunContext | None = None,
    rec: TaskRunRecord | None = None,
    waits: bool = False,
) -> Any:
    """Run one task call as a tracked task run: ``await task(...)``, or a submitted one.

    ``await task(...)`` calls this with the arguments only, and it finds its flow
    run; ``submit`` and the standalone path pass the run context and the record
    they prepared. One coroutine per call (no inner helper coroutine) keeps the
    per-task frame count, and so memory, at its minimum.
    """
    if rec is None:
        ctx = _run_var.get()
        if ctx is None:
            from .flow import run_standalone_task  # a task outside any flow gets its own run

            return await run_standalone_task(task, args, kwargs)
        rec, waits = prepare(task, ctx, args, kwargs, start=True)
    assert ctx is not None
    engine = ctx.engine
    recorder = engine.recorder
    if len(recorder._tasks) >= recorder.max_backlog or recorder._admission:
        await recorder.admit()  # the writer is behind: let it catch up before more work
    tracing = engine.tracing
    span = None
    if tracing is not None:
        span = tracing.start_task(rec, task)
    token = _task_var.set(rec)
    claimed: InFlight | None = None
    error: BaseException | None = None
    try:
        if rec.started is None:  # made by submit or map, or waiting for its input futures
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
        if ctx.replay is not None:
            found, value = await ctx.replay.take(task, rec)
            if found:
                engine.tasks_completed += 1
                return value
        if task.cache is not None and engine.cache_enabled:
            found, value, claimed = await _cache_lookup(engine, task, rec, args, kwargs)
            if found:
                engine.tasks_completed += 1
                return value
        gates = (
            gates_for(engine, task, ctx.gate)
            if task.own_limit is not None or task.tags or ctx.gate is not None
            else None
        )
        while True:
            timeout = task.timeout
            if gates:
                if timeout is not None and task.timeout_includes_wait:
                    timeout = await _pass_gates_within(gates, rec, recorder, task, span)
                else:
                    await _pass_gates(gates, rec, recorder, span)
            try:
                try:
                    if timeout is None:
                        if task.is_async:
                            result = await task.fn(*args, **kwargs)
                        else:
                            result = await _in_thread(engine, task, args, kwargs, False)
                    else:
                        result = await _with_timeout(engine, task, args, kwargs, timeout)
                finally:
                    if gates:
                        await leave(gates)  # per attempt: not held during a backoff
            except Exception as exc:
                if rec.attempts == 1 and isinstance(exc, TypeError):
                    _raise_if_bad_call(task, args, kwargs, exc)
                retries_done = rec.attempts - 1
                if task.retry.should_retry(exc, retries_done):
                    await _wait_for_retry(engine, task, rec, exc, retries_done, span)
                    continue
                _finish_failed(engine, rec, exc)
                raise
            break
        if task.cache is not None or (task.persist_result is not False and engine.persist_results):
            _store_result(engine, task, rec, result)  # a cached task always stores its result
        now = time.time()
        rec.state = _COMPLETED
        rec.ended = now
        rec.history.append(("Completed", now))
        recorder.task_changed(rec)
        engine.tasks_completed += 1
        if claimed is not None:
            claimed.succeed(rec)
        if engine.strict:
            # Strict durability: the completion is committed before anyone sees the result.
            await recorder.commit()
        return result
    except BaseException as exc:
        # An error already recorded above, an error raised while handling one (a bad
        # call, a retry predicate that raised, a result that cannot be stored), or a
        # cancellation (an outer scope, a flow timeout, Ctrl-C): whichever, never
        # leave the record Running.
        error = exc
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
        if span is not None:
            span.finish_task(rec, error if isinstance(error, Exception) else None)
        _task_var.reset(token)
        if claimed is not None:
            claimed.release(engine)


async def _pass_gates(
    gates: list[Any], rec: TaskRunRecord, recorder: Any, span: Any = None
) -> None:
    """Wait for the task's limits, before the attempt (so never inside its timeout)."""
    blocked = [g.limit.name for g in gates if not g.free()]
    if blocked:
        # Visible while it waits: the run shows Pending, and why; the span says so too.
        now = time.time()
        names = ", ".join(blocked)
        rec.state = State.PENDING
        rec.history.append(("Pending", now, f"waiting for limit {names}"))
        recorder.task_changed(rec)
        if span is not None:
            span.event("waiting for limit", {"flowcore.limit": names})
    await enter(gates)
    if blocked:
        now = time.time()
        rec.state = _RUNNING
        rec.history.append(("Running", now))
        recorder.task_changed(rec)
        if span is not None:
            span.event("limit passed", {"flowcore.limit": names})


async def _pass_gates_within(
    gates: list[Any], rec: TaskRunRecord, recorder: Any, task: Task[Any, Any], span: Any
) -> float:
    """:func:`_pass_gates` inside the task's timeout (``timeout_includes_wait=True``);
    returns the time left for the attempt."""
    timeout = task.timeout
    assert timeout is not None
    started = time.monotonic()
    with anyio.move_on_after(timeout) as scope:
        await _pass_gates(gates, rec, recorder, span)
    if scope.cancelled_caught:
        raise TaskTimeout(
            f"task {task.name!r} timed out after {timeout:g} s waiting for its limits "
            "(`timeout_includes_wait=True` counts the wait); raise the `timeout`, or drop "
            "timeout_includes_wait to time only the attempt"
        )
    return max(timeout - (time.monotonic() - started), 1e-6)


def _store_result(engine: Engine, task: Task[Any, Any], rec: TaskRunRecord, value: Any) -> None:
    """Keep the result on the record (inline, or as a file reference when large).

    Best effort unless the task needs it (``persist_result=True`` or caching): a
    result that cannot be stored then simply is not, and resume runs that task again.
    """
    try:
        blob = encode_result(value, task.serializer, task.name)
    except ResultNotSerializable:
        if task.persist_result or task.cache is not None:
            raise
        return
    recorder = engine.recorder
    if len(blob) > INLINE_LIMIT and recorder.files is not None:
        ref = ResultFiles.ref(blob)
        recorder.add_file(ref, blob)
        rec.result_ref = ref
    else:
        rec.result = blob
    if task.cache is not None and rec.cache_key is not None:
        ttl = task.cache.ttl
        now = time.time()
        recorder.cache_changed(
            CacheEntry(
                key=rec.cache_key,
                task_name=task.name,
                created=now,
                expires=None if ttl is None else now + ttl,
                result=rec.result,
                result_ref=rec.result_ref,
                run_id=rec.run_id,
                seq=rec.seq,
            )
        )


async def load_result(
    engine: Engine, task: Task[Any, Any], blob: bytes | None, ref: str | None
) -> Any:
    """Decode a stored result; :class:`ResultUnreadable` when missing, corrupt or refused."""
    if blob is None and ref is not None:
        blob = engine.recorder.pending_file(ref)
        if blob is None:
            files = engine.recorder.files
            if files is None:
                raise ResultUnreadable("the result is in a file, but this store keeps no files")
            blob = await anyio.to_thread.run_sync(files.read, ref)
    if blob is None:
        raise ResultUnreadable("no result was stored")
    return decode_result(blob, allow_pickle=task.serializer == "pickle", type_=task.return_type)


def finish_reused(engine: Engine, rec: TaskRunRecord, state: State, note: str) -> None:
    """Record a task run whose value came from elsewhere (a cache hit or a replay)."""
    now = time.time()
    rec.state = state
    rec.ended = now
    rec.history.append((state.value, now, note))
    engine.recorder.task_changed(rec)


class InFlight:
    """A cache key being computed right now: later calls with the same key wait for it."""

    __slots__ = ("_event", "finished", "key", "source")

    def __init__(self, key: str) -> None:
        self.key = key
        self.finished = False
        self._event: anyio.Event | None = None  # made only if someone waits: most never do
        self.source: TaskRunRecord | CacheEntry | None = None  # set when a value is found

    async def wait(self) -> None:
        if not self.finished:
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()

    def succeed(self, source: TaskRunRecord | CacheEntry) -> None:
        self.source = source

    def release(self, engine: Engine) -> None:
        if engine.inflight.get(self.key) is self:
            del engine.inflight[self.key]
        self.finished = True
        if self._event is not None:
            self._event.set()


async def _cache_lookup(
    engine: Engine,
    task: Task[Any, Any],
    rec: TaskRunRecord,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> tuple[bool, Any, InFlight | None]:
    """``(hit?, value, claim)``: a claim on the key is returned for the caller to release."""
    policy = task.cache
    assert policy is not None and task.keys is not None
    key = task.keys.key(args, kwargs)  # CacheKeyError fails the task, recorded
    rec.cache_key = key
    refresh = policy.refresh or engine.refresh_cache
    if not refresh:
        while (running := engine.inflight.get(key)) is not None:
            # Same key computing in this engine: wait for it instead of computing twice.
            await running.wait()
            source = running.source
            if source is not None:
                try:
                    value = await load_result(engine, task, source.result, source.result_ref)
                except ResultUnreadable:
                    break
                _mark_cached(engine, rec, source)
                return True, value, None
    # Claim the key before the first await of the lookup, so equal calls started
    # together wait for this one rather than all missing at once.
    claim = InFlight(key)
    engine.inflight[key] = claim
    if not refresh:
        entry = engine.recorder.pending_cache(key) or await _get_cache(engine, key)
        if entry is not None and not entry.expired(time.time()):
            try:
                value = await load_result(engine, task, entry.result, entry.result_ref)
            except ResultUnreadable as exc:
                log.warning(
                    "flowcore: cache entry %s of task %r is unusable (%s); computing it again",
                    key[:12],
                    task.name,
                    exc,
                )
            else:
                _mark_cached(engine, rec, entry)
                claim.succeed(entry)
                return True, value, claim
    return False, None, claim


async def _get_cache(engine: Engine, key: str) -> CacheEntry | None:
    nowait = getattr(engine.store, "get_cache_nowait", None)
    if nowait is not None:
        entry: CacheEntry | None = nowait(key)
        return entry
    return await engine.store.get_cache(key)


def _mark_cached(engine: Engine, rec: TaskRunRecord, source: TaskRunRecord | CacheEntry) -> None:
    rec.result, rec.result_ref = source.result, source.result_ref
    run_id, seq = source.run_id, source.seq
    label = "?"
    if run_id is not None and seq is not None:
        rec.cached_from = f"{run_id}.{seq}"
        label = task_run_label(run_id, seq)
    finish_reused(engine, rec, State.CACHED, f"cache hit: value computed by {label}")


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
    engine: Engine,
    task: Task[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float,
) -> Any:
    with anyio.move_on_after(timeout) as scope:
        if task.is_async:
            return await task.fn(*args, **kwargs)
        # A thread cannot be interrupted: on timeout the task stops waiting for it and
        # the thread finishes in the background.
        return await _in_thread(engine, task, args, kwargs, True)
    if scope.cancelled_caught:
        raise TaskTimeout(
            f"task {task.name!r} timed out after {task.timeout:g} s (its `timeout`); raise the "
            "`timeout` option or make the task faster"
        )
    raise AssertionError("unreachable")  # pragma: no cover


async def _wait_for_retry(
    engine: Engine,
    task: Task[Any, Any],
    rec: TaskRunRecord,
    exc: Exception,
    retries_done: int,
    span: Any = None,
) -> None:
    delay = task.retry.delay_for(retries_done, engine.rng, exc)
    now = time.time()
    rec.state = State.RETRYING
    rec.history.append(
        ("Retrying", now, f"{type(exc).__name__}: {str(exc)[:300]} (retry in {delay:.3g} s)")
    )
    engine.recorder.task_changed(rec)
    engine.tasks_retried += 1
    if span is not None:
        span.event(
            "retry",
            {
                "flowcore.attempt": rec.attempts,
                "exception.type": error_name(exc),
                "exception.message": str(exc)[:1000],
                "flowcore.retry.delay_s": delay,
            },
        )
    if delay > 0:
        await engine.clock.sleep(delay)
    # No wait asked for: retry at once. Yielding to the loop would put the retry
    # behind every other ready task (thousands of them in a big gather).
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
        result = await run_task(task, args, kwargs, ctx, rec, waits)
    except Exception as exc:
        future._set_exception(exc, rec.state)
    except BaseException as exc:
        future._set_exception(exc, State.CANCELLED)
        raise
    else:
        future._set_result(result, rec.state)


async def feed_map(
    task: Task[Any, Any],
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
    task: Task[Any, Any],
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
