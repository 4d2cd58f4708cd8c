"""The runs a server claims before it starts them: built as the engine builds a run.

A slot's run (or a trigger's) is inserted in the store in the same transaction that
claims it, Running, with this process's host, pid, machine identity and a heartbeat:
a server killed between the claim and the run's start leaves a run that crash
detection marks Crashed, never a slot that looks fired but has no run. The engine then
starts the run under that id (``Launch.run_id``) and writes it as any run.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ..encoding import encode_inputs
from ..engine.runs import new_flow_record
from ..flow import Flow
from ..ids import new_run_id
from ..records import FlowRunRecord, Launch
from ..schedules import Schedule, Slot

__all__ = ["claimed_run", "launch_of", "schedule_by", "slot_launch", "trigger_by"]


def schedule_by(schedule: Schedule) -> str:
    """``launched_by`` of a schedule's runs: what ``max_active_runs`` counts."""
    return f"schedule {schedule.key}"


def trigger_by(trigger_id: str) -> str:
    return f"trigger {trigger_id}"


def _ts(t: datetime) -> float:
    return t.timestamp()


def slot_launch(schedule: Schedule, slot: Slot) -> Launch:
    """The launch of ``slot``'s run (its id is given when the run is claimed)."""
    return Launch(
        by=schedule_by(schedule),
        scheduled_for=_ts(slot.scheduled_for),
        interval_start=_ts(slot.interval_start),
        interval_end=_ts(slot.interval_end),
    )


def claimed_run(
    flow: Flow[Any, Any], parameters: Mapping[str, Any], launch: Launch, now: float
) -> FlowRunRecord:
    """The run row a claim inserts: Running from ``now``, a new id, this process's host,
    pid and machine, a heartbeat, the flow's entrypoint and ``launch``'s fields."""
    record = new_flow_record(
        new_run_id(), flow.name, "flow", encode_inputs((), (), parameters), now
    )
    record.heartbeat = now
    record.entrypoint = flow.entrypoint
    record.entrypoint_hash = flow.entrypoint_hash
    record.launched_by = launch.by
    record.scheduled_for = launch.scheduled_for
    record.interval_start = launch.interval_start
    record.interval_end = launch.interval_end
    return record


def launch_of(record: FlowRunRecord) -> Launch:
    """The launch that starts the claimed run ``record`` under its own id."""
    return Launch(
        by=record.launched_by or "",
        scheduled_for=record.scheduled_for,
        interval_start=record.interval_start,
        interval_end=record.interval_end,
        run_id=record.id,
    )
