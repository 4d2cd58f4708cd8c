"""``@flowcore.flow`` and ``flowcore.run``: a flow run owns its tasks.

A flow run opens one anyio task group; every task it submits belongs to it, so
leaving the flow waits for them, and a failure or cancellation of the flow
cancels them. No task outlives its flow.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import math
import sys
import time
import traceback
from collections.abc import Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any, Generic, ParamSpec, TypeVar, overload

import anyio

from .context import RunContext, _engine_var, _run_var, _task_var, new_flow_record, new_run_id
from .encoding import encode_inputs
from .engine import Engine
from .entry import run_sync
from .errors import ConfigurationError, FlowTimeout
from .limits import RunGate
from .records import FlowRunRecord
from .replay import Replay
from .spawner import Spawner
from .states import State
from .task import Task, check_function
from .taskrun import error_name, prepare, run_task

__all__ = ["Flow", "flow", "run"]

P = ParamSpec("P")
R = TypeVar("R")
_MAX_TRACEBACK = 20_000


class Flow(Generic[P, R]):
    """A flow: ``await my_flow(...)`` in async code, ``flowcore.run(my_flow, ...)`` in sync code."""

    def __init__(
        self,
        fn: Callable[P, Coroutine[Any, Any, R]],
        *,
        name: str | None,
        timeout: float | None,
        max_concurrency: int | None = None,
    ) -> None:
        self.fn = fn
        self.max_concurrency = max_concurrency
        self.name = name or fn.__name__
        self.timeout = timeout
        self.signature = inspect.signature(fn)
        # The parameter names when every parameter can be passed by position: a call
        # passing all of them so maps them without Signature.bind (a sixth of an
        # empty run's Python).
        params = self.signature.parameters
        self._positional: tuple[str, ...] | None = (
            tuple(params)
            if all(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params.values())
            else None
        )
        self._entrypoint: str | None = None
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        return _call_flow(self, args, kwargs)

    @property
    def entrypoint(self) -> str | None:
        """Where ``resume`` imports this flow from: ``module:qualname`` or ``file.py:qualname``."""
        if self._entrypoint is None:
            self._entrypoint = _entrypoint_of(self.fn)
        return self._entrypoint

    @entrypoint.setter
    def entrypoint(self, value: str | None) -> None:
        self._entrypoint = value

    def run(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run from synchronous code: ``my_flow.run(x=1)`` is ``flowcore.run(my_flow, x=1)``."""
        return run(self, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<flowcore.Flow {self.name}>"


async def _call_flow(flow: Flow[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    names = flow._positional
    if names is not None and not kwargs and len(args) == len(names):
        parameters = dict(zip(names, args, strict=True))
    else:
        try:
            bound = flow.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ConfigurationError(
                f"flow {flow.name!r} called with bad arguments: {exc}; its signature is "
                f"{flow.name}{flow.signature}"
            ) from None
        bound.apply_defaults()
        parameters = bound.arguments
    engine = _engine_var.get()
    if engine is None:
        async with Engine() as engine:
            return await _run_flow(engine, flow, args, kwargs, parameters)
    return await _run_flow(engine, flow, args, kwargs, parameters)


async def _run_flow(
    engine: Engine,
    flow: Flow[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    parameters: Mapping[str, Any],
    replay: Replay | None = None,
) -> Any:
    now = time.time()
    record = new_flow_record(
        new_run_id(), flow.name, "flow", encode_inputs((), (), parameters), now
    )
    record.entrypoint = flow.entrypoint
    ctx = RunContext(engine, record, parameters)
    if flow.max_concurrency is not None:
        ctx.gate = RunGate(flow.max_concurrency, engine.clock)
    if replay is not None:
        record.resumed_from = replay.run_id
        record.history[-1] = (State.RUNNING.value, now, f"resuming run {replay.run_id}")
        ctx.replay = replay

    async def body() -> Any:
        return await flow.fn(*args, **kwargs)

    return await _drive(engine, ctx, body, flow.timeout)


async def _drive(
    engine: Engine,
    ctx: RunContext,
    body: Callable[[], Coroutine[Any, Any, Any]],
    timeout: float | None,
) -> Any:
    """Run ``body`` as the flow run ``ctx``: record it, own its tasks, end it terminal."""
    record = ctx.record
    recorder = engine.recorder
    engine.flows_running += 1
    run_token = _run_var.set(ctx)
    span = _start_span(engine, ctx)  # under the calling task run's span, if any
    task_token = _task_var.set(None)
    recorder.flow_changed(record)
    top_level = record.parent_run_id is None
    if top_level:
        engine.last_run = record
    error: BaseException | None = None
    result: Any = None
    try:
        spawner: Spawner | None = None
        try:
            async with anyio.create_task_group() as tg:
                # The timeout is the task group's own deadline (one cancel scope fewer:
                # entering and leaving one is a tenth of an empty run's cost).
                if timeout is not None:
                    tg.cancel_scope.deadline = anyio.current_time() + timeout
                ctx.task_group = tg
                ctx.spawner = spawner = Spawner(tg)
                try:
                    result = await body()
                    await spawner.join()  # submitted tasks nobody awaited still finish
                except Exception as exc:
                    # Keep the error for the flow (not an ExceptionGroup) and stop the
                    # flow's other tasks: the run has failed.
                    error = exc
                    tg.cancel_scope.cancel()
        finally:
            if spawner is not None:
                await spawner.cancel()  # whatever is left when the run ends another way
        if tg.cancel_scope.cancelled_caught and error is None:
            error = FlowTimeout(
                f"flow {record.name!r} timed out after {timeout:g} s (its `timeout`); its "
                "unfinished tasks were cancelled. Raise the flow's `timeout` to give it longer"
            )
        if error is None and ctx._failed:
            error = _unobserved_failure(ctx)
        if error is not None:
            _finish(
                record, State.TIMED_OUT if isinstance(error, FlowTimeout) else State.FAILED, error
            )
            recorder.flow_changed(record)
            raise error
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
        if ctx.http is not None:
            with anyio.CancelScope(shield=True):
                await ctx.http.aclose()
            ctx.http = None
        if span is not None:
            span.finish(
                {"flowcore.state": record.state.value, "flowcore.task_count": record.task_count},
                error if record.state is not State.CANCELLED else None,
            )
        engine.flows_running -= 1
        _task_var.reset(task_token)
        _run_var.reset(run_token)
        ctx.task_group = None
        ctx.spawner = None
        ctx._failed.clear()
        if top_level:
            # The end of a run is a durability point: its records are committed
            # before the caller sees its result.
            with anyio.CancelScope(shield=True):
                await recorder.flush()


def _start_span(engine: Engine, ctx: RunContext) -> Any:
    tracing = engine.tracing
    if tracing is None:
        return None
    record = ctx.record
    attributes: dict[str, Any] = {
        "flowcore.flow.name": record.name,
        "flowcore.run.id": record.id,
        "flowcore.run.kind": record.kind,
    }
    if tracing.record_parameters:
        for name, value in ctx.parameters.items():
            attributes[f"flowcore.parameter.{name}"] = repr(value)[:1000]
    links = None
    replay = ctx.replay
    if replay is not None and replay.trace is not None:
        links = [replay.trace]  # a resumed run links to the trace of the run it re-drives
        attributes["flowcore.run.resumed_from"] = replay.run_id
    span = tracing.start(f"{record.kind} {record.name}", attributes, record.id, links)
    record.trace_id, record.span_id = tracing.ids_of(span)
    return span


def _unobserved_failure(ctx: RunContext) -> BaseException:
    futures = list(ctx._failed)
    first = futures[0]
    exc = first._exc
    assert exc is not None
    others = (
        f"; {len(futures) - 1} more submitted tasks failed unobserved" if len(futures) > 1 else ""
    )
    exc.add_note(
        f"flowcore: task {first.task_name!r} (seq {first.seq}) was submitted but its failure was "
        f"never awaited, so the flow run fails with it{others}. Await futures (or "
        "flowcore.wait(...)) to handle their errors"
    )
    return exc


def _finish(record: FlowRunRecord, state: State, error: BaseException | None) -> None:
    now = time.time()
    record.state = state
    record.ended = now
    record.history.append((state.value, now))
    if error is not None:
        record.error_type = error_name(error)
        record.error_message = str(error)[:2000]
        record.traceback = "".join(traceback.format_exception(error))[-_MAX_TRACEBACK:]


async def run_standalone_task(
    task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """A task awaited outside any flow: tracked as a run of its own (``kind="task"``)."""
    engine = _engine_var.get()
    if engine is None:
        async with Engine() as engine:
            return await _standalone(engine, task, args, kwargs)
    return await _standalone(engine, task, args, kwargs)


async def _standalone(
    engine: Engine, task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    record = new_flow_record(new_run_id(), task.name, "task", b"", time.time())
    ctx = RunContext(engine, record, {})

    async def body() -> Any:
        rec, waits = prepare(task, ctx, args, kwargs)
        record.parameters = rec.inputs
        return await run_task(task, args, kwargs, ctx, rec, waits)

    return await _drive(engine, ctx, body, None)


@overload
def flow(fn: Callable[P, Coroutine[Any, Any, R]], /) -> Flow[P, R]: ...
@overload
def flow(
    *, name: str | None = ..., timeout: float | None = ..., max_concurrency: int | None = ...
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Flow[P, R]]: ...
def flow(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    timeout: float | None = None,
    max_concurrency: int | None = None,
) -> Any:
    """Make an async function a flow: ``@flowcore.flow`` or ``@flowcore.flow(timeout=600)``.

    Every task awaited inside it is a tracked task run; ``timeout`` bounds the whole run;
    ``max_concurrency``: at most this many of its task runs in flight at once.
    """
    problems = []
    if name is not None and (not isinstance(name, str) or not name):
        problems.append(f"`name` must be a non-empty str, got {name!r}")
    if timeout is not None and (
        not isinstance(timeout, int | float)
        or isinstance(timeout, bool)
        or not timeout > 0
        or not math.isfinite(timeout)
    ):
        problems.append(f"`timeout` must be a number of seconds > 0 or None, got {timeout!r}")
    given_max: object = max_concurrency
    if given_max is not None and (
        not isinstance(given_max, int) or isinstance(given_max, bool) or given_max < 1
    ):
        problems.append(f"`max_concurrency` must be an int >= 1 or None, got {given_max!r}")
    if problems:
        label = getattr(fn, "__qualname__", None) or name or "flow"
        raise ConfigurationError(f"invalid options for flow {label!r}: " + "; ".join(problems))

    def decorate(f: Callable[..., Any]) -> Flow[Any, Any]:
        check_function(f, "flow")
        if isinstance(f, Flow):
            raise ConfigurationError(f"{f.name!r} is already a flow; apply @flowcore.flow once")
        if not inspect.iscoroutinefunction(f):
            raise ConfigurationError(
                f"@flowcore.flow needs an `async def` function, got the sync function "
                f"{getattr(f, '__qualname__', f)!r}; write `async def`, and put blocking code in a "
                "@flowcore.task (sync tasks run in worker threads)"
            )
        return Flow(
            f,
            name=name,
            timeout=None if timeout is None else float(timeout),
            max_concurrency=max_concurrency,
        )

    if fn is None:
        return decorate
    return decorate(fn)


def run(flow: Flow[P, R] | Task[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """Run a flow (or a single task) from synchronous code and return its result.

    ``flowcore.run(ingest, pages=20)``. Runs on asyncio, with uvloop when it is
    installed. Inside a running event loop, ``await ingest(pages=20)`` instead.
    """
    given: object = flow
    if inspect.iscoroutine(given):
        # The unstarted coroutine of a flow or task call holds it as a local.
        local_vars = given.cr_frame.f_locals if given.cr_frame is not None else {}
        called = local_vars.get("flow") or local_vars.get("task")
        name = getattr(called, "name", given.__qualname__)
        given.close()
        raise ConfigurationError(
            f"flowcore.run() takes the flow itself, not a call of it: write "
            f"flowcore.run({name}, ...arguments...), not flowcore.run({name}(...))"
        )
    if not isinstance(given, Flow | Task):
        raise ConfigurationError(
            f"flowcore.run() takes a @flowcore.flow (or @flowcore.task), got {flow!r}; "
            "decorate the function with @flowcore.flow"
        )
    result: R = run_sync(
        functools.partial(flow, *args, **kwargs),
        name="flowcore.run",
        instead=f"await {given.name}(...)",
    )
    return result


def _entrypoint_of(fn: Callable[..., Any]) -> str | None:
    module_name = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "")
    if not module_name or "<locals>" in qualname:
        return None  # a flow defined inside a function cannot be imported again
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    if module_name == "__main__" or module_name.startswith("_flowcore_user_"):
        return f"{Path(file).resolve()}:{qualname}" if file else None
    return f"{module_name}:{qualname}"


def load_entrypoint(entrypoint: str) -> Flow[Any, Any]:
    """Import the flow an entrypoint names (see :attr:`Flow.entrypoint`)."""
    where, _, qualname = entrypoint.rpartition(":")
    if where.endswith(".py"):
        from .loader import load_flow

        flow_obj: object = load_flow(f"{where}:{qualname}")
    else:
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))
        try:
            flow_obj = importlib.import_module(where)
        except ImportError as exc:
            raise ConfigurationError(
                f"cannot import module {where!r} of flow {entrypoint!r} to resume it ({exc}); "
                "run `flowcore resume` from the folder you ran the flow from, or pass the flow: "
                "flowcore.resume(run_id, flow=my_flow)"
            ) from exc
        for part in qualname.split("."):
            flow_obj = getattr(flow_obj, part, None)
    if not isinstance(flow_obj, Flow):
        raise ConfigurationError(
            f"{entrypoint!r} is no longer a @flowcore.flow; pass the flow to resume: "
            "flowcore.resume(run_id, flow=my_flow)"
        )
    return flow_obj


async def resume_async(run_id: str, *, flow: Flow[Any, R] | None = None) -> R:
    """Re-drive a crashed, failed or cancelled run; return the flow's result.

    Task calls that completed in that run return their stored results without
    running again; the rest run, continuing their attempt counts. The new run
    is linked to the old one (``resumed_from``).
    """
    engine = _engine_var.get()
    if engine is None:
        async with Engine() as engine:
            result: R = await _resume(engine, run_id, flow)
            return result
    result = await _resume(engine, run_id, flow)
    return result


def resume(run_id: str, *, flow: Flow[Any, R] | None = None) -> R:
    """The sync form of :func:`resume_async`: ``flowcore.resume("3f2a9c1b")``."""
    result: R = run_sync(
        functools.partial(resume_async, run_id, flow=flow),
        name="flowcore.resume",
        instead="await flowcore.resume_async(...)",
    )
    return result


async def _resume(engine: Engine, run_id: str, flow: Flow[Any, Any] | None) -> Any:
    from .crash import mark_crashed_runs

    await mark_crashed_runs(engine.store)
    old = await engine.store.get_run(run_id)
    if old.state is State.COMPLETED:
        raise ConfigurationError(
            f"run {old.id[:8]} of {old.name!r} completed; there is nothing to resume"
        )
    if not old.state.is_terminal:
        raise ConfigurationError(
            f"run {old.id[:8]} of {old.name!r} is still running (process {old.pid} on "
            f"{old.host}); resume it once it has ended or been detected as crashed"
        )
    if old.kind != "flow":
        raise ConfigurationError(
            f"run {old.id[:8]} is a single task called outside any flow; call the task again"
        )
    if flow is None:
        if not old.entrypoint:
            raise ConfigurationError(
                f"run {old.id[:8]} of {old.name!r} did not record where its flow is defined (a "
                "flow defined inside a function); pass it: flowcore.resume(run_id, flow=my_flow)"
            )
        flow = load_entrypoint(old.entrypoint)
    if flow.name != old.name:
        raise ConfigurationError(
            f"run {old.id[:8]} is a run of flow {old.name!r}, not of {flow.name!r}"
        )
    kwargs = _recorded_parameters(flow, old)
    replay = Replay(engine, old.id, await engine.store.list_task_runs(old.id))
    if old.trace_id and old.span_id:
        replay.trace = (old.trace_id, old.span_id)
    try:
        bound = flow.signature.bind(**kwargs)
    except TypeError as exc:
        raise ConfigurationError(
            f"the recorded parameters of run {old.id[:8]} no longer fit {flow.name}"
            f"{flow.signature}: {exc}"
        ) from None
    bound.apply_defaults()
    return await _run_flow(engine, flow, (), kwargs, bound.arguments, replay)


def _recorded_parameters(flow: Flow[Any, Any], old: FlowRunRecord) -> dict[str, Any]:
    import msgspec

    from .encoding import decode_inputs

    recorded = decode_inputs(old.parameters)
    hints = {}
    try:
        import typing

        hints = typing.get_type_hints(flow.fn)
    except Exception:
        pass
    kwargs: dict[str, Any] = {}
    for name, value in recorded.items():
        stand_in = _placeholder_in(value)
        if stand_in is not None:
            raise ConfigurationError(
                f"cannot resume run {old.id[:8]}: its parameter {name!r} holds a "
                f"{stand_in.get('type')} that was not recorded in full "
                f"({stand_in.get('__flowcore__')}); run the flow again with its arguments instead"
            )
        hint = hints.get(name)
        if hint is not None:
            try:
                value = msgspec.convert(value, hint, strict=False)
            except (msgspec.ValidationError, TypeError):
                pass  # keep the recorded value; the flow sees what was recorded
        kwargs[name] = value
    return kwargs


def _placeholder_in(value: Any) -> dict[str, Any] | None:
    """The first recorded stand-in (see encoding.placeholder) anywhere inside ``value``."""
    if isinstance(value, dict):
        if "__flowcore__" in value:
            return value
        items: Iterable[Any] = value.values()
    elif isinstance(value, list | tuple):
        items = value
    else:
        return None
    for item in items:
        found = _placeholder_in(item)
        if found is not None:
            return found
    return None
