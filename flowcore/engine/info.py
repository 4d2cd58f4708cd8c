"""Read-only information about the flow run and task run in progress.

``flowcore.current_flow_run()`` and ``flowcore.current_task_run()`` give user code
what it may rely on (ids, names, the attempt number, tags, parameters) as frozen
values, built when asked: nothing on the hot path, and nothing user code can use
to reach into the engine (``flowcore.current_run()`` is the engine's own context).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from .._current import current_task_run as _task_var
from ..encoding import decode_inputs
from ..errors import ConfigurationError
from ..records import FlowRunRecord, TaskRunRecord, task_run_label
from .core import _run_var

__all__ = ["FlowRunInfo", "TaskRunInfo", "current_flow_run", "current_task_run"]


@dataclass(frozen=True, slots=True)
class FlowRunInfo:
    """The flow run in progress, as user code sees it."""

    #: The run's id (``flowcore runs show ID``).
    id: str
    #: The flow's name.
    name: str
    #: The flow's bound arguments, read-only.
    parameters: Mapping[str, Any]
    #: 1 for the first attempt of the flow run, 2 for its first retry, and so on.
    attempt: int
    #: The run that started this one as a subflow, if any.
    parent_run_id: str | None
    #: The run this one re-drives, when it was resumed.
    resumed_from: str | None
    #: When the run started (unix seconds).
    started: float | None
    #: For a run a schedule started: its slot (an aware UTC datetime), else ``None``.
    scheduled_for: datetime | None = None
    #: For a scheduled run: the data interval its slot covers, ``[start, end)`` (UTC).
    interval_start: datetime | None = None
    interval_end: datetime | None = None
    #: What started it when no call did: ``"schedule <key>"``, ``"trigger <id>"``.
    launched_by: str | None = None


@dataclass(frozen=True, slots=True)
class TaskRunInfo:
    """The task run in progress, as user code sees it."""

    #: How people name the task run: ``<run id prefix>.<seq>``.
    id: str
    #: The flow run it belongs to.
    run_id: str
    #: Its position among the run's task runs, in call order.
    seq: int
    #: The task's name.
    name: str
    #: 1 for the first attempt, 2 for the first retry, and so on.
    attempt: int
    #: The task run this one was called from, inside the same flow run, if any.
    parent_seq: int | None
    #: The task's tags.
    tags: tuple[str, ...] = ()
    #: The call's arguments as recorded (shortened values stay shortened), read-only.
    parameters: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: This call's name (``@task(task_run_name=...)``), if the task names its calls.
    run_name: str | None = None


def _flow_info(record: FlowRunRecord, parameters: Mapping[str, Any]) -> FlowRunInfo:
    attempt = max(1, sum(1 for entry in record.history if entry[0] == "Running"))
    return FlowRunInfo(
        id=record.id,
        name=record.name,
        parameters=MappingProxyType(dict(parameters)),
        attempt=attempt,
        parent_run_id=record.parent_run_id,
        resumed_from=record.resumed_from,
        started=record.started,
        scheduled_for=_utc(record.scheduled_for),
        interval_start=_utc(record.interval_start),
        interval_end=_utc(record.interval_end),
        launched_by=record.launched_by,
    )


def _utc(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, UTC)


def _task_info(rec: TaskRunRecord) -> TaskRunInfo:
    return TaskRunInfo(
        id=task_run_label(rec.run_id, rec.seq),
        run_id=rec.run_id,
        seq=rec.seq,
        name=rec.name,
        attempt=max(rec.attempts, 1),
        parent_seq=rec.parent_seq,
        tags=tuple(rec.tags or ()),
        run_name=rec.run_name,
        parameters=MappingProxyType(_recorded(rec.inputs)),
    )


def _recorded(inputs: bytes) -> dict[str, Any]:
    try:
        value = decode_inputs(inputs)
    except Exception:  # a record that does not decode must not fail the task asking
        return {}
    return value if isinstance(value, dict) else {}


def current_flow_run() -> FlowRunInfo:
    """The flow run the caller runs in (inside a flow, or any of its tasks)."""
    ctx = _run_var.get()
    if ctx is None:
        raise ConfigurationError(
            "flowcore.current_flow_run() was called outside a flow run; call it from a "
            "@flowcore.flow function or a task it calls"
        )
    return _flow_info(ctx.record, ctx.parameters)


def current_task_run() -> TaskRunInfo:
    """The task run the caller runs in (inside a task, also in a sync task's thread)."""
    rec = _task_var.get()
    if rec is None:
        raise ConfigurationError(
            "flowcore.current_task_run() was called outside a task run; call it from a "
            "@flowcore.task function (a flow itself is not a task run: use "
            "flowcore.current_flow_run())"
        )
    return _task_info(rec)
