"""Resuming a run: re-drive a crashed, failed or cancelled run without redoing finished work.

The flow is called again with the run's recorded parameters, in a new run linked
to the old one (``resumed_from``). Each task call is matched to the old run's by
its identity (see :mod:`flowcore.engine.replay`): a call whose match completed
returns the stored result without running; the others run, continuing their
attempt counts.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Iterable
from typing import Any, TypeVar, overload

import msgspec

from ._sync import run_sync
from .encoding import decode_inputs
from .engine.core import Engine, in_engine
from .engine.replay import Replay
from .engine.runs import run_flow
from .entrypoints import load_entrypoint
from .errors import ConfigurationError
from .flow import Flow
from .records import FlowRunRecord
from .states import State
from .store.crash import mark_crashed_runs

__all__ = ["resume", "resume_async"]

R = TypeVar("R")


@overload
async def resume_async(run_id: str) -> Any: ...
@overload
async def resume_async(run_id: str, *, flow: Flow[Any, R]) -> R: ...
async def resume_async(run_id: str, *, flow: Flow[Any, Any] | None = None) -> Any:
    """Re-drive a crashed, failed or cancelled run; return the flow's result.

    Task calls that completed in that run return their stored results without
    running again; the rest run, continuing their attempt counts. The new run
    is linked to the old one (``resumed_from``).
    """
    return await in_engine(lambda engine: _resume(engine, run_id, flow))


@overload
def resume(run_id: str) -> Any: ...
@overload
def resume(run_id: str, *, flow: Flow[Any, R]) -> R: ...
def resume(run_id: str, *, flow: Flow[Any, Any] | None = None) -> Any:
    """The sync form of :func:`resume_async`: ``flowcore.resume("3f2a9c1b")``."""
    return run_sync(
        functools.partial(_resume_async, run_id, flow),
        name="flowcore.resume",
        instead="await flowcore.resume_async(...)",
    )


async def _resume_async(run_id: str, flow: Flow[Any, Any] | None) -> Any:
    return await in_engine(lambda engine: _resume(engine, run_id, flow))


async def _resume(engine: Engine, run_id: str, flow: Flow[Any, Any] | None) -> Any:
    await mark_crashed_runs(engine.store, now=engine.clock.time())
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
    replay = Replay(engine.recorder, old.id, await engine.store.list_task_runs(old.id))
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
    return await run_flow(
        engine,
        flow.name,
        flow.fn,
        (),
        kwargs,
        bound.arguments,
        timeout=flow.timeout,
        concurrency=flow.concurrency,
        executor=flow.executor,
        entrypoint=flow.entrypoint,
        replay=replay,
        retry=flow.retry,
    )


def _recorded_parameters(flow: Flow[Any, Any], old: FlowRunRecord) -> dict[str, Any]:
    recorded = decode_inputs(old.parameters)
    hints = {}
    try:
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
