"""Running state hooks: each one within its deadline, shielded, and never the run's problem.

A flow's or task's hooks (:class:`flowcore.hooks.Hooks`) fire when its run reaches a
state (see :mod:`flowcore.hooks` for which). How they run, and why:

- One after the other, in the order given, each with a deadline of ``hook_timeout``
  seconds on the event loop's clock, in a cancel scope shielded from the run's own
  cancellation: ``on_cancellation`` hooks run while the run is being cancelled (a
  Ctrl-C, an outer scope), and a hook is never cut short by the cancellation of the
  run it reports on. Async hooks run on the event loop; sync ones in a worker
  thread, abandoned at the deadline (a thread cannot be interrupted: it finishes in
  the background). Hooks run in the run's context: their ``logging`` lines go to the
  run's log, with the task run for a task's hooks.
- A hook that raises, or does not finish in time, is reported three ways: a WARNING
  of the ``flowcore.hooks`` logger (with its traceback), an ERROR line in the run's
  log (``flowcore runs logs``; ``flowcore runs show`` lists them), and a
  ``hook failed`` event on the run's span (on the task run's own span with an SDK
  tracer provider; flowcore's own task spans are rebuilt from the record, so there
  it goes on the flow run's span, naming the task run). It never changes the run's
  state and never raises into the flow; only ``KeyboardInterrupt`` and
  ``SystemExit`` pass, as they do everywhere.

Order against persistence (the callers, ``runs`` and ``attempt``, keep it): a flow
run's terminal state is recorded and committed to the store first (so a process that
dies in a hook leaves the run recorded as it ended), then its end hooks run, then its
span ends (so a failed hook is an event on it) and, for a top-level run, the flush that
ends the run commits the hooks' log lines. A task run's end hooks run once its end is
recorded, as durable as the engine's ``durability`` makes any task run's end (see
:func:`task_hooks`), before its span ends and before its caller gets the result or
the error. ``on_retry`` hooks run once the run is recorded Retrying, before the
backoff wait.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import anyio
import anyio.to_thread

from ..errors import StoreError
from ..hooks import (
    HOOKS_LOGGER,
    Hook,
    HookEvent,
    HookKind,
    Hooks,
    HookTimeout,
    event_kind,
    hook_name,
    snapshot,
)
from ..ids import error_message, error_name, safe_text, traceback_text, visible
from ..records import FlowRunRecord, TaskRunRecord
from ..states import State
from .core import Engine, RunContext
from .logs import RunLog

__all__ = ["HasHooks", "fire_crashed", "flow_end_hooks", "flow_retry_hooks", "task_hooks"]

log = logging.getLogger(HOOKS_LOGGER)


class HasHooks(Protocol):
    """What :func:`fire_crashed` needs of a flow (a :class:`flowcore.Flow`)."""

    @property
    def name(self) -> str: ...

    @property
    def hooks(self) -> Hooks | None: ...


# -- flow runs ---------------------------------------------------------------------------------


async def flow_end_hooks(ctx: RunContext, hooks: Hooks, error: BaseException | None) -> None:
    """Fire the hooks of the flow run ``ctx``, which has just reached a terminal state
    (``error``: what ended it, if anything). The state is committed first."""
    record = ctx.record
    kind = event_kind(record.state)
    if kind is None or not hooks.of(kind):
        return
    await _commit(ctx.engine)
    event = HookEvent(kind, snapshot(record), record.state, None, _cause(error))
    await run_hooks(hooks.of(kind), event, hooks.timeout, ctx.log, _FlowSpan(ctx.span))


async def flow_retry_hooks(
    ctx: RunContext, hooks: Hooks, error: BaseException, delay: float
) -> None:
    """Fire the ``on_retry`` hooks of the flow run ``ctx``, now Retrying after ``error``,
    before it waits ``delay`` seconds."""
    if not hooks.on_retry:
        return
    record = ctx.record
    event = HookEvent("retry", snapshot(record), record.state, None, error, delay)
    await run_hooks(hooks.on_retry, event, hooks.timeout, ctx.log, _FlowSpan(ctx.span))


async def fire_crashed(flow: HasHooks, record: FlowRunRecord, engine: Engine) -> None:
    """Fire ``flow``'s ``on_crashed`` hooks, then its ``on_failure`` hooks, for ``record``:
    a run of ``flow`` marked Crashed by another process (its own process died, so its
    hooks could not run there). What ``flowcore serve`` calls for each crashed run of a
    flow it serves, once.

    Each hook's event has ``kind="crashed"`` and ``state`` Crashed. A hook that fails
    is reported as in a live run (the ``flowcore.hooks`` logger and an ERROR line in the
    run's log, written by ``engine``'s writer; the run's span ended with its process,
    so there is no span event). Never raises because of a hook (``KeyboardInterrupt``
    and ``SystemExit`` pass); raises ``ValueError`` for a record that is not Crashed.
    """
    if record.state is not State.CRASHED:
        raise ValueError(
            f"fire_crashed() is for runs marked Crashed; run {record.id} is {record.state}"
        )
    hooks = flow.hooks
    if hooks is None or not (hooks.on_crashed or hooks.on_failure):
        return
    run_log = None if engine.logs is None else RunLog(record.id, engine.logs)
    event = HookEvent("crashed", snapshot(record), State.CRASHED)
    await run_hooks((*hooks.on_crashed, *hooks.on_failure), event, hooks.timeout, run_log, None)
    await _commit(engine)  # the failed hooks' lines, before serve goes on


# -- task runs ---------------------------------------------------------------------------------


async def task_hooks(
    ctx: RunContext,
    hooks: Hooks,
    rec: TaskRunRecord,
    span: Any,
    error: BaseException | None = None,
    delay: float | None = None,
) -> None:
    """Fire the hooks of the task run ``rec`` for the state it is in now: its end hooks
    for a terminal state, its ``on_retry`` hooks when it is Retrying (``delay``: the
    wait before its next attempt). ``span``: the task run's span handle.

    The end is recorded (marked for the writer) but not committed first: as for any
    task run, the engine's durability says when it is (``"strict"``: before the hooks,
    as before the caller sees the result). A commit per task run would cost a flush
    each (tens of µs); a process that dies in a task's hook dies in its flow run,
    which is then found Crashed, as it is."""
    state = rec.state
    kind: HookKind | None = "retry" if state is State.RETRYING else event_kind(state)
    if kind is None:
        return
    chosen = hooks.of(kind)
    if not chosen:
        return
    event = HookEvent(kind, snapshot(ctx.record), state, snapshot(rec), _cause(error), delay)
    tracing = ctx.engine.tracing
    if span is not None and tracing is not None and tracing.tracer is not None:
        where: _SpanTarget = _TaskSpan(span)  # an SDK span of its own
    else:
        where = _FlowSpan(ctx.span, rec)
    await run_hooks(chosen, event, hooks.timeout, ctx.log, where)


# -- running them ------------------------------------------------------------------------------


class _SpanTarget(Protocol):
    def event(self, attributes: dict[str, Any]) -> None: ...


class _FlowSpan:
    """Failed hooks as events of the flow run's span (naming the task run, if any)."""

    __slots__ = ("handle", "task")

    def __init__(self, handle: Any, task: TaskRunRecord | None = None) -> None:
        self.handle = handle
        self.task = task

    def event(self, attributes: dict[str, Any]) -> None:
        if self.handle is None:
            return
        if self.task is not None:
            attributes["flowcore.task_run.id"] = f"{self.task.run_id}.{self.task.seq}"
            attributes["flowcore.task.name"] = self.task.name
        self.handle.event("hook failed", attributes)


class _TaskSpan:
    """Failed hooks as events of a task run's own (SDK) span."""

    __slots__ = ("handle",)

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def event(self, attributes: dict[str, Any]) -> None:
        self.handle.event("hook failed", attributes)


async def run_hooks(
    hooks: Sequence[Hook],
    event: HookEvent,
    timeout: float,
    run_log: RunLog | None,
    span: _SpanTarget | None,
) -> None:
    """Call each of ``hooks`` with ``event``, in order, each within ``timeout`` seconds,
    shielded from cancellation; report each failure (see the module docstring)."""
    for hook in hooks:
        failure: BaseException | None = None
        with anyio.move_on_after(timeout, shield=True) as scope:
            try:
                await _call(hook, event)
            except Exception as exc:
                failure = exc
        if failure is None and scope.cancelled_caught:
            failure = HookTimeout(
                f"it did not finish within its hook_timeout of {timeout:g} s and was "
                "abandoned; give it more time (hook_timeout=...) or make it faster"
            )
        if failure is not None:
            _report(hook, event, failure, run_log, span)


async def _call(hook: Hook, event: HookEvent) -> None:
    if _is_async(hook):
        await hook(event)
        return
    # A worker thread, abandoned at the deadline; it runs in a copy of this context (the
    # run's), so its logging lines go to the run's log.
    result = await anyio.to_thread.run_sync(hook, event, abandon_on_cancel=True)
    if inspect.isawaitable(result):  # a plain function that returned a coroutine
        await result


def _is_async(hook: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(
        getattr(hook, "__call__", None)  # noqa: B004 - an instance with an async __call__
    )


def _report(
    hook: Hook,
    event: HookEvent,
    failure: BaseException,
    run_log: RunLog | None,
    span: _SpanTarget | None,
) -> None:
    """Say that ``hook`` failed: logger, run log, span. Never raises."""
    name = hook_name(hook)
    task = event.task_run
    if task is not None:
        subject = f"task run {task.label} ({safe_text(task.name)!r})"
    else:
        subject = f"flow run {event.flow_run.id} ({safe_text(event.flow_run.name)!r})"
    if isinstance(failure, HookTimeout):
        what = error_message(failure)
    else:
        what = f"it raised {error_name(failure)}: {error_message(failure, 1000)}"
    message = (
        f"{event.kind} hook {name} of {subject} failed: {what} (the run stays {event.state.value})"
    )
    try:
        # Escaped, traceback included: the message and the frames' text are user data,
        # and this line goes to a terminal (stderr) as it is.
        if isinstance(failure, HookTimeout):
            log.warning("flowcore: %s", visible(message))
        else:
            shown = visible(traceback_text(failure).rstrip("\n"), multiline=True)
            log.warning("flowcore: %s\n%s", visible(message), shown)
    except Exception:  # a handler that raises: not the run's problem either
        pass
    if run_log is not None:
        text = message
        if not isinstance(failure, HookTimeout):
            text += "\n" + traceback_text(failure).rstrip("\n")
        run_log.add(task, logging.ERROR, HOOKS_LOGGER, text, time.time())
    if span is not None:
        try:
            span.event(
                {
                    "flowcore.hook.kind": event.kind,
                    "flowcore.hook.name": name,
                    "exception.type": error_name(failure),
                    "exception.message": error_message(failure, 1000),
                }
            )
        except Exception:  # a span already ended elsewhere, an SDK that refuses
            pass


def _cause(error: BaseException | None) -> BaseException | None:
    """What an event reports as its exception: the error, or the KeyboardInterrupt or
    SystemExit behind a cancellation; not the cancellation exception itself."""
    if error is None or isinstance(error, anyio.get_cancelled_exc_class()):
        return None
    return error


async def _commit(engine: Engine) -> None:
    """Commit what is recorded so far (the run's terminal state) before hooks run,
    shielded. A store that fails is the end-of-run flush's to report, not the hooks'."""
    with anyio.CancelScope(shield=True):
        try:
            await engine.recorder.commit()
        except StoreError:
            pass
