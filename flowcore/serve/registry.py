"""What a server tells the store about its flows: the served-flows registry rows and
each schedule's stored description.

``flowcore flows ls`` and ``flowcore trigger`` read them from another process, which
cannot import the flows: so the parameter schema is JSON Schema text (msgspec's, from
the annotations; a type label where msgspec has no schema for a type) and a schedule
is described as JSON (expression or interval, time zone, parameters, policies).
"""

from __future__ import annotations

import inspect
import os
from datetime import timedelta
from typing import Any

import msgspec

from .._process import MACHINE
from ..flow import Flow
from ..ids import HOST
from ..records import ScheduleState, ServedFlow
from ..schedules import CronSchedule, IntervalSchedule, Schedule
from ..views.format import json_fallback

__all__ = ["describe", "parameters_schema", "schedule_state", "served_row", "type_label"]


def type_label(annotation: Any) -> str:
    """A type as people write it: ``int``, ``list[str]``, ``Color``."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return "any"
    if isinstance(annotation, type) and not getattr(annotation, "__args__", None):
        return annotation.__qualname__
    return str(annotation).replace("typing.", "")


def _schema_of(annotation: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """msgspec's JSON Schema for ``annotation`` and the definitions it refers to; for a
    type msgspec cannot describe, ``{}`` (any value) with the type's label."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return {}, {}
    try:
        (schema,), defs = msgspec.json.schema_components([annotation])
    except Exception:  # a class msgspec does not know: name it
        return {"x-flowcore-type": type_label(annotation)}, {}
    schema = dict(schema)
    schema["x-flowcore-type"] = type_label(annotation)
    return schema, dict(defs)


def parameters_schema(flow: Flow[Any, Any]) -> str:
    """The flow's parameters as a JSON Schema object (JSON text): one property per
    parameter with its type's schema, its label and its default, the required ones,
    and whether names beyond them are taken (a ``**kwargs`` parameter)."""
    try:
        types = flow.parameter_types()
    except Exception:  # an annotation that does not resolve: names only
        types = {name: Any for name in flow.signature.parameters}
    properties: dict[str, Any] = {}
    required: list[str] = []
    definitions: dict[str, Any] = {}
    extra = False
    for param in flow.signature.parameters.values():
        if param.kind is param.VAR_KEYWORD:
            extra = True
            continue
        if param.kind is param.VAR_POSITIONAL:
            continue
        schema, defs = _schema_of(types.get(param.name, Any))
        definitions.update(defs)
        if param.default is param.empty:
            required.append(param.name)
        else:
            schema["default"] = _jsonable(param.default)
        properties[param.name] = schema
    out: dict[str, Any] = {
        "title": flow.name,
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": extra,
    }
    if definitions:
        out["$defs"] = definitions
    return msgspec.json.encode(out).decode()


def _jsonable(value: Any) -> Any:
    """``value`` as JSON data, or its recorded stand-in when JSON cannot hold it."""
    try:
        return msgspec.json.decode(msgspec.json.encode(value, enc_hook=json_fallback))
    except Exception:
        return json_fallback(value)


def describe(schedule: Schedule) -> str:
    """What ``schedule`` is, as JSON text (``ScheduleState.description``)."""
    out: dict[str, Any] = {}
    if isinstance(schedule, CronSchedule):
        out.update(kind="cron", cron=schedule.expr, tz=schedule.tz)
    elif isinstance(schedule, IntervalSchedule):
        out.update(
            kind="every",
            seconds=schedule.interval / timedelta(seconds=1),
            anchor=schedule.anchor.isoformat(),
        )
    else:
        out.update(kind=type(schedule).__name__)
    out.update(
        name=schedule.name,
        parameters=_jsonable(dict(schedule.parameters)),
        active=schedule.active,
        catchup=schedule.catchup,
        max_catchup=schedule.max_catchup,
        overlap=schedule.overlap,
        max_active_runs=schedule.max_active_runs,
        jitter=schedule.jitter,
    )
    return msgspec.json.encode(out).decode()


def schedule_state(
    flow: Flow[Any, Any], schedule: Schedule, next_fire: float | None, now: float
) -> ScheduleState:
    """The schedule's row to upsert: its description and next fire time. ``cursor`` is
    ``now`` for a schedule the store does not have yet (it starts from here, nothing
    missed); a stored one keeps its cursor and paused flag (``put_schedules``)."""
    return ScheduleState(
        flow=flow.name,
        key=schedule.key,
        description=describe(schedule),
        cursor=now,
        next_fire=next_fire,
        updated=now,
    )


def served_row(flow: Flow[Any, Any], holder: str, started: float, now: float) -> ServedFlow:
    """The registry row of ``flow`` served by this process (``holder``)."""
    return ServedFlow(
        flow=flow.name,
        holder=holder,
        host=HOST,
        pid=os.getpid(),
        started=started,
        heartbeat=now,
        entrypoint=flow.entrypoint,
        parameters_schema=parameters_schema(flow),
        schedules=[s.key for s in flow.schedules],
        machine=MACHINE,
    )
