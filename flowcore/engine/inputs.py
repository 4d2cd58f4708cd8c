"""A task call's inputs: its record made at the call, and the futures it waits for.

A :class:`~flowcore.engine.futures.TaskFuture` passed to a task, alone or at any
depth of lists, tuples, dicts (their values), sets and frozensets, is a
dependency edge: the call waits for it, is recorded with the edge
(``upstream``), and receives its result. If an upstream failed, the call is not
run and ends ``UpstreamFailed``, unless the future was wrapped in
:class:`~flowcore.engine.futures.allow_failure`: then the call gets the error
as the value. The list ``task.map()`` returns stands for the list of its
results. ``submit(..., wait_for=[...])`` adds dependencies that pass no value.

Edges name task runs of the call's own flow run (``upstream`` holds seqs). A
future of another flow run (a parent run's future used in a subflow) is waited
for like any other, but is not an edge of ``upstream``, whose seqs would name
the wrong task runs: it is noted, with its run, on the ``Pending`` entry of the
task run's history.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from .._current import current_task_run
from ..encoding import call_identity, encode_inputs, record_call
from ..errors import ConfigurationError, UpstreamFailed
from ..records import TaskRunRecord, task_run_label
from ..states import State
from .core import RunContext
from .futures import TaskFuture, TaskFutureList, allow_failure
from .outcome import finish_failed
from .spec import TaskSpec

__all__ = [
    "WAIT_FOR",
    "has_futures",
    "prepare",
    "resolve_flow_inputs",
    "resolve_inputs",
    "wait_for_list",
]

_RUNNING_NOW = State.RUNNING.value
_PLAIN = frozenset((int, float, str, bytes, bool, type(None)))
#: Types that are a dependency themselves.
_DEPENDENCIES = frozenset((TaskFuture, TaskFutureList, allow_failure))
#: Containers looked into for dependencies (exact types: no walk of user objects).
_CONTAINERS = frozenset((list, tuple, dict, set, frozenset))
_LOOKED_AT = _DEPENDENCIES | _CONTAINERS

#: The key under which ``submit(..., wait_for=...)`` hands its futures to
#: :func:`resolve_inputs` among the call's keyword arguments (never a parameter name;
#: removed before the call).
WAIT_FOR = "\x00flowcore.wait_for"


def has_futures(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether any argument is a dependency, or a container holding one at any depth."""
    # Type checks only, and the first level inline: this runs on every call with more
    # than one plain argument, and most arguments are plain values or flat containers.
    for value in (*args, *kwargs.values()) if kwargs else args:
        t = type(value)
        if t in _LOOKED_AT:
            if t in _DEPENDENCIES:
                return True
            if len(value) > 16:
                if _holds(value):
                    return True
                continue
            for item in value.values() if t is dict else value:
                i = type(item)
                if i in _LOOKED_AT and (i in _DEPENDENCIES or _holds(item)):
                    return True
    return False


def _holds(root: Any) -> bool:
    """Whether the container ``root`` holds a dependency at any depth (each container
    looked at once, so a container holding itself ends)."""
    stack: list[Any] = []
    seen: set[int] | None = None
    value = root
    while True:
        items = value.values() if type(value) is dict else value
        if len(items) <= 16:  # a few items: one look at each
            inner = None
            for item in items:
                t = type(item)
                if t in _LOOKED_AT:
                    if t in _DEPENDENCIES:
                        return True
                    inner = True
        else:  # many: their types, at C speed (most containers hold plain values)
            types = set(map(type, items))
            if not types.isdisjoint(_DEPENDENCIES):
                return True
            inner = None if types.isdisjoint(_CONTAINERS) else True
        if inner:
            if seen is None:
                seen = {id(root)}
            for item in items:
                if type(item) in _CONTAINERS and id(item) not in seen:
                    seen.add(id(item))
                    stack.append(item)
        if not stack:
            return False
        value = stack.pop()


def _dependencies(value: Any, allowed: bool, found: list[tuple[Any, bool]], seen: set[int]) -> None:
    """Append ``(dependency, failure allowed)`` for each dependency in ``value``."""
    t = type(value)
    if t is TaskFuture or t is TaskFutureList:
        found.append((value, allowed))
    elif t is allow_failure:
        found.append((value.future, True))
    elif t in _CONTAINERS and id(value) not in seen:
        seen.add(id(value))
        for item in value.values() if t is dict else value:
            if type(item) in _LOOKED_AT:
                _dependencies(item, allowed, found, seen)


def _substitute(value: Any, memo: dict[int, Any]) -> Any:
    """``value`` with each dependency replaced by its value; containers holding none are
    returned as they are (not copied)."""
    t = type(value)
    if t is TaskFuture:
        return value._result
    if t is TaskFutureList:
        return [f._result for f in value]
    if t is allow_failure:
        inner = value.future
        if type(inner) is TaskFutureList:
            return [f._result if f._exc is None else f._exc for f in inner]
        return inner._result if inner._exc is None else inner._exc
    if t not in _CONTAINERS:
        return value
    key = id(value)
    if key in memo:
        return memo[key]
    memo[key] = value  # a container inside itself keeps the original there
    changed = False
    new: Any
    if t is dict:
        new = {}
        for k, v in value.items():
            n = _substitute(v, memo) if type(v) in _LOOKED_AT else v
            changed = changed or n is not v
            new[k] = n
    else:
        items = []
        for v in value:
            n = _substitute(v, memo) if type(v) in _LOOKED_AT else v
            changed = changed or n is not v
            items.append(n)
        new = items if t is list else t(items)
    if changed:
        memo[key] = new
        return new
    return value


def wait_for_list(task_name: str, wait_for: object) -> tuple[Any, ...]:
    """The dependencies of ``submit(..., wait_for=...)``, checked: futures, lists of
    futures from ``map`` and :class:`~flowcore.engine.futures.allow_failure` of either."""
    if wait_for is None:
        return ()
    if type(wait_for) in _DEPENDENCIES:  # one future, or the list of a map (as a whole)
        wait_for = [wait_for]
    if isinstance(wait_for, str | bytes) or not isinstance(wait_for, Iterable):
        raise ConfigurationError(
            f"{task_name}.submit(wait_for=...) takes a list of futures (or one future), "
            f"got {type(wait_for).__name__}"
        )
    items = tuple(wait_for)
    for item in items:
        if type(item) not in _DEPENDENCIES:
            raise ConfigurationError(
                f"{task_name}.submit(wait_for=...) takes futures from task.submit() or "
                f"task.map() (or flowcore.allow_failure(future)), got {type(item).__name__}"
            )
    return items


def prepare(
    task: TaskSpec,
    ctx: RunContext,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    start: bool = False,
    waits: bool | None = None,
) -> tuple[TaskRunRecord, bool]:
    """Create the task run's record; returns it and whether it waits for futures.

    ``start``: the call starts now (``await task(...)``), so a record that waits
    for nothing is made Running at once, in one allocation, rather than created
    Pending and then moved. Otherwise it is Pending (a submitted call not started
    yet, or one waiting for its inputs; only the latter is written as such).
    ``waits``: already known to wait (``wait_for``); else the arguments say.
    """
    now = time.time()
    # One plain argument (the commonest call) cannot hold a future: no need to look.
    if not waits:
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
    # The inputs as recorded, and the identity resume matches the call on when they do
    # not hold it in full (None, the common case: the inputs are the identity).
    if task.record_inputs:
        inputs, identity = record_call(task.param_names, args, kwargs, task.first_input)
    else:
        inputs, identity = b"", call_identity(task.param_names, args, kwargs)
    rec = TaskRunRecord(
        run_id=record.id,
        seq=seq,
        name=task.name,
        state=State.RUNNING if running else State.PENDING,
        created=now,
        parent_seq=None if parent is None else parent.seq,
        inputs=inputs,
        history=[(_RUNNING_NOW, now)] if running else [("Pending", now)] if waits else [],
        # The span the task run's span hangs under (None when not tracing): its
        # parent task run's, else its flow run's. Kept so that the span can be
        # rebuilt from the record alone.
        parent_span_id=record.span_id if parent is None else parent.span_id,
    )
    if identity is not None:
        rec.identity = identity
    if task.tag_list is not None:
        rec.tags = task.tag_list  # one list shared by the task's records (never changed)
    if task.run_namer is not None:
        rec.run_name = task.run_namer(args, kwargs)
    if running:
        rec.started = now
        rec.attempts = 1
    return rec, waits


async def resolve_inputs(
    rec: TaskRunRecord,
    ctx: RunContext,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    task: TaskSpec | None = None,
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Wait for the futures among the arguments; the arguments with their results.

    Records the edges (once the futures have ended: a call of a ``map`` under a
    limit has its seq only when the map starts it; with ``task``, inputs recorded
    while such a seq was unknown are recorded again). If an upstream failed (and
    its failure was not allowed), ends the task run ``UpstreamFailed`` and raises
    :class:`~flowcore.UpstreamFailed` naming the failed inputs.
    """
    futures, unknown = await _wait_for_dependencies(args, kwargs)
    _record_edges(rec, [f for f, _ in futures])
    if unknown and task is not None and task.record_inputs:
        plain = {k: v for k, v in kwargs.items() if k != WAIT_FOR}
        rec.inputs = encode_inputs(task.param_names, args, plain, task.first_input)
    err = _upstream_failure(f"task {rec.name!r}", futures)
    if err is not None:
        finish_failed(ctx.engine.recorder, rec, err)
        ctx.engine.tasks_failed += 1
        raise err
    return _substituted(args, kwargs)


async def resolve_flow_inputs(
    flow_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any], list[int], UpstreamFailed | None]:
    """Futures passed to a (sub)flow: waited for and replaced by their results, as for a
    task; returns the arguments, the seqs of the calling run's task runs they stood
    for (the subflow run's edges), and ``None``. When one failed (and its failure was
    not allowed): the arguments as given, the edges, and the
    :class:`~flowcore.UpstreamFailed` error, for the caller to make a run recorded
    Failed with it (a failed run is visible, and its hooks fire)."""
    futures, _ = await _wait_for_dependencies(args, kwargs)
    seqs = sorted({f.seq for f, _ in futures if f.seq >= 0})
    err = _upstream_failure(f"flow {flow_name!r}", futures)
    if err is not None:
        return args, kwargs, seqs, err
    return (*_substituted(args, kwargs), seqs, None)


async def _wait_for_dependencies(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[list[tuple[TaskFuture[Any], bool]], bool]:
    """Every future among the arguments (and ``wait_for``), each with whether its failure
    is allowed, once all have ended; and whether a seq was unknown when they were found."""
    found: list[tuple[Any, bool]] = []
    seen: set[int] = set()
    for value in args:
        _dependencies(value, False, found, seen)
    after = kwargs.get(WAIT_FOR) if kwargs else None
    for key, value in kwargs.items():
        if key != WAIT_FOR:
            _dependencies(value, False, found, seen)
    if after is not None:
        for value in after:
            _dependencies(value, False, found, seen)
    # The lists of maps still reading their iterables are complete first.
    futures: list[tuple[TaskFuture[Any], bool]] = []
    for dep, allowed in found:
        if type(dep) is TaskFutureList:
            futures.extend((f, allowed) for f in await dep._complete())
        else:
            futures.append((dep, allowed))
    unknown = any(f.seq < 0 for f, _ in futures)
    for fut, _ in futures:
        if not fut._finished:
            await fut.wait()
    return futures, unknown


def _upstream_failure(
    what: str, futures: list[tuple[TaskFuture[Any], bool]]
) -> UpstreamFailed | None:
    """The error for the inputs that failed (and were not allowed to), or None; the
    failures that were allowed are handed over, so they count as seen."""
    failed = [f for f, allowed in futures if f._exc is not None and not allowed]
    if failed:
        names = ", ".join(
            f"{f.task_name} ({task_run_label(f.run_id, f.seq) + ': ' if f.seq >= 0 else ''}"
            f"{f.state})"
            for f in failed
        )
        return UpstreamFailed(f"{what} was not run because its input futures failed: {names}")
    for fut, allowed in futures:
        if allowed and fut._exc is not None:
            fut._failed.pop(fut, None)  # handed to the call: its failure is seen
    return None


def _substituted(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    memo: dict[int, Any] = {}
    return (
        tuple(_substitute(a, memo) for a in args),
        {k: _substitute(v, memo) for k, v in kwargs.items() if k != WAIT_FOR},
    )


def _record_edges(rec: TaskRunRecord, futures: list[TaskFuture[Any]]) -> None:
    """``upstream``: the seqs of the task runs of this run; a note for other runs'."""
    run_id = rec.run_id
    # seq -1: not a task run (the future of a map's reading of its iterables).
    rec.upstream = sorted({f.seq for f in futures if f.run_id == run_id and f.seq >= 0}) or None
    others = sorted({(f.run_id, f.seq, f.task_name) for f in futures if f.run_id != run_id})
    if others and rec.history and rec.history[-1][0] == "Pending":
        labels = ", ".join(f"{name} ({task_run_label(r, s)})" for r, s, name in others)
        state, at = rec.history[-1][:2]
        rec.history[-1] = (state, at, f"waited for task runs of other flow runs: {labels}")
