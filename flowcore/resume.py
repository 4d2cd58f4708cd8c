"""Resuming a run: re-drive a crashed, failed or cancelled run without redoing finished work.

The flow is called again with the run's recorded parameters, in a new run linked
to the old one (``resumed_from``). Each task call is matched to the old run's by
its identity (see :mod:`flowcore.engine.replay`): a call whose match completed
returns the stored result without running; the others run, continuing their
attempt counts.

A run is re-driven by one resumption at a time: before it runs anything, resume
claims the run in the store (:meth:`~flowcore.store.base.RunStore.claim_resume`:
the claim is the new run's own row, so it ends as that run ends, and a claimant
whose process died holds nothing once it is marked Crashed). A second resume is
refused, naming the claimant; so is the resume of a run whose resumption already
completed (``force=True`` re-runs it anyway).

The flow is imported from where the run recorded it, and only if that file is
the one the run ran (its SHA-256 is recorded with the run): stored results are
not replayed into code that has changed since, unless ``allow_changed_code=True``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar, overload

import anyio

from ._sync import run_sync
from .encoding import decode_inputs, encode_inputs
from .engine.core import Engine, in_engine
from .engine.replay import Replay
from .engine.runs import new_flow_record, run_flow
from .entrypoints import load_entrypoint, source_to_load
from .errors import ConfigurationError, ParameterError
from .flow import Flow, file_sha256, source_file
from .ids import error_message, error_name, new_run_id
from .records import FlowRunRecord, WriteBatch, transition
from .states import State
from .store.crash import mark_crashed_runs

__all__ = ["resume", "resume_async"]

R = TypeVar("R")


@overload
async def resume_async(
    run_id: str, *, force: bool = ..., allow_changed_code: bool = ...
) -> Any: ...
@overload
async def resume_async(
    run_id: str, *, flow: Flow[Any, R], force: bool = ..., allow_changed_code: bool = ...
) -> R: ...
async def resume_async(
    run_id: str,
    *,
    flow: Flow[Any, Any] | None = None,
    force: bool = False,
    allow_changed_code: bool = False,
) -> Any:
    """Re-drive a crashed, failed or cancelled run; return the flow's result.

    Task calls that completed in that run return their stored results without
    running again; the rest run, continuing their attempt counts. The new run
    is linked to the old one (``resumed_from``).

    Refused while another resumption of the run is running (one at a time), and
    when one completed already, unless ``force=True``; refused when the flow's
    source file changed since the run, unless ``allow_changed_code=True``.
    """
    return await in_engine(lambda engine: _resume(engine, run_id, flow, force, allow_changed_code))


@overload
def resume(run_id: str, *, force: bool = ..., allow_changed_code: bool = ...) -> Any: ...
@overload
def resume(
    run_id: str, *, flow: Flow[Any, R], force: bool = ..., allow_changed_code: bool = ...
) -> R: ...
def resume(
    run_id: str,
    *,
    flow: Flow[Any, Any] | None = None,
    force: bool = False,
    allow_changed_code: bool = False,
) -> Any:
    """The sync form of :func:`resume_async`: ``flowcore.resume("3f2a9c1b")``."""
    return run_sync(
        functools.partial(_resume_async, run_id, flow, force, allow_changed_code),
        name="flowcore.resume",
        instead="await flowcore.resume_async(...)",
    )


async def _resume_async(
    run_id: str, flow: Flow[Any, Any] | None, force: bool, allow_changed_code: bool
) -> Any:
    return await in_engine(lambda engine: _resume(engine, run_id, flow, force, allow_changed_code))


async def _resume(
    engine: Engine,
    run_id: str,
    flow: Flow[Any, Any] | None,
    force: bool = False,
    allow_changed_code: bool = False,
) -> Any:
    # Crashed runs first: a resumption whose process died holds no claim once marked.
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
        if not allow_changed_code:
            # A file that loading would run is checked first: changed code never runs.
            path = source_to_load(old.entrypoint)
            _check_unchanged(old, path, file_sha256(path, fresh=True))
        flow = load_entrypoint(old.entrypoint)
    if not allow_changed_code:  # the code of the flow in hand (loaded, imported or given)
        _check_unchanged(old, source_file(flow.fn), flow.entrypoint_hash)
    if flow.name != old.name:
        raise ConfigurationError(
            f"run {old.id[:8]} is a run of flow {old.name!r}, not of {flow.name!r}"
        )
    parameters = _recorded_parameters(flow, old)
    args, kwargs = flow.arguments(parameters)
    replay = Replay(engine.recorder, old.id, await engine.store.list_task_runs(old.id))
    if old.trace_id and old.span_id:
        replay.trace = (old.trace_id, old.span_id)
    # The new run's record, claimed in the store before anything runs: the claim is
    # its row, which the engine then writes on as the run goes.
    now = time.time()
    record = new_flow_record(
        new_run_id(), flow.name, "flow", encode_inputs((), (), parameters), now
    )
    record.resumed_from = old.id
    record.history[-1] = (State.RUNNING.value, now, f"resuming run {old.id}")
    record.entrypoint, record.entrypoint_hash = flow.entrypoint, flow.entrypoint_hash
    holder = await engine.store.claim_resume(record, force=force)
    if holder is not None:
        raise ConfigurationError(_claimed_message(old, holder))
    try:
        return await run_flow(
            engine,
            flow.name,
            flow.call,
            args,
            kwargs,
            parameters,
            timeout=flow.timeout,
            concurrency=flow.concurrency,
            executor=flow.executor,
            entrypoint=flow.entrypoint,
            entrypoint_hash=flow.entrypoint_hash,
            replay=replay,
            hooks=flow.hooks,
            retry=flow.retry,
            record=record,
        )
    except BaseException as exc:
        if not record.state.is_terminal:
            # Refused before it started (an unknown executor): end the claimed run.
            await _end_unstarted(engine, record, exc)
        raise


def _check_unchanged(old: FlowRunRecord, path: Path | None, digest: str | None) -> None:
    """Refuse to resume ``old`` with code from a source file that is not the one it ran."""
    if old.entrypoint_hash is None or digest is None or digest == old.entrypoint_hash:
        return  # the run recorded no hash (an older flowcore), or nothing to compare
    raise ConfigurationError(
        f"cannot resume run {old.id[:8]} of {old.name!r}: the flow's source file {path} has "
        "changed since the run (its SHA-256 differs from the one the run recorded), and "
        "replaying the run's stored results into changed code could hand them to calls "
        "that now mean something else. Restore the file as it was, or resume with the "
        f"code as it is now: flowcore.resume({old.id[:8]!r}, allow_changed_code=True) "
        f"(`flowcore resume --allow-changed-code {old.id[:8]}`)"
    )


def _claimed_message(old: FlowRunRecord, holder: FlowRunRecord) -> str:
    """Why ``old`` cannot be resumed: ``holder`` re-drives it, or did to completion."""
    through = (
        f" (it resumed run {holder.resumed_from[:8]}, which re-drives this one too)"
        if holder.resumed_from and holder.resumed_from != old.id
        else ""
    )
    if holder.state is State.COMPLETED:
        return (
            f"run {old.id[:8]} of {old.name!r} was resumed already, to completion: by run "
            f"{holder.id}{through}; see `flowcore runs show {holder.id[:8]}`. To re-run it "
            f"anyway: flowcore.resume({old.id[:8]!r}, force=True) "
            f"(`flowcore resume --force {old.id[:8]}`)"
        )
    return (
        f"run {old.id[:8]} of {old.name!r} is being resumed already, by run {holder.id} "
        f"(process {holder.pid} on {holder.host}, {holder.state}){through}; a run is "
        "resumed by one process at a time. Wait for that run to end; if its process is "
        "gone, `flowcore runs ls` marks it Crashed (at once on its own host, after 30 s "
        "without a heartbeat elsewhere), and this run can be resumed again"
    )


async def _end_unstarted(engine: Engine, record: FlowRunRecord, exc: BaseException) -> None:
    """End a claimed run that never started (so it holds no claim), as its caller saw:
    Failed with the error, or Cancelled."""
    if isinstance(exc, Exception):
        transition(record, State.FAILED, time.time(), "the resumption could not start")
        record.error_type = error_name(exc)
        record.error_message = error_message(exc)
    else:
        transition(record, State.CANCELLED, time.time())
    with anyio.CancelScope(shield=True):
        await engine.store.write(WriteBatch(flow_runs=[record]))


def _recorded_parameters(flow: Flow[Any, Any], old: FlowRunRecord) -> dict[str, Any]:
    """The parameters ``old`` recorded, checked and converted by the flow's annotations
    as any call's are (:meth:`Flow.validate_recorded`: a dict recorded for a dataclass
    is that dataclass again), defaults applied; a ``ParameterError`` naming the run
    when they no longer fit the flow."""
    recorded = decode_inputs(old.parameters)
    for name, value in recorded.items():
        stand_in = _placeholder_in(value)
        if stand_in is not None and stand_in.get("__flowcore__") == "secret":
            raise ConfigurationError(
                f"cannot resume run {old.id[:8]}: its parameter {name!r} was a flowcore.Secret, "
                "which is never recorded; call the flow again, passing the secret"
            )
        if stand_in is not None:
            raise ConfigurationError(
                f"cannot resume run {old.id[:8]}: its parameter {name!r} holds a "
                f"{stand_in.get('type')} that was not recorded in full "
                f"({stand_in.get('__flowcore__')}); run the flow again with its arguments instead"
            )
    try:
        return flow.validate_recorded(recorded)
    except ParameterError as exc:
        raise ParameterError(
            f"cannot resume run {old.id[:8]} of {old.name!r}: its recorded parameters no "
            "longer fit the flow as it is now (its signature or annotations changed since "
            "the run); call the flow again with parameters that fit, or resume with a flow "
            f"they fit. {exc}",
            exc.problems,
        ) from None


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
