"""Served flows, their schedules and triggers, as ``flowcore flows ls``, ``flowcore
schedules`` and ``flowcore trigger`` show them (and a web UI would).

The store's served-flows registry says which server serves what (a row per flow and
server, with a heartbeat: a row whose heartbeat is older than
:data:`~flowcore.store.crash.STALE_AFTER` belongs to a server that died without
unregistering); the stored schedule states say what each schedule is (its
description, as JSON), when it fires next, its cursor and whether it is paused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import msgspec

from ..errors import ConfigurationError
from ..records import ScheduleState, ServedFlow
from ..store.base import Store
from ..store.crash import STALE_AFTER, mark_crashed_runs
from .format import format_local_time, iso_utc

__all__ = [
    "ScheduleMatch",
    "find_schedules",
    "flow_schema",
    "list_schedules",
    "schedule_label",
    "schedule_line",
    "schedule_to_json",
    "served_flows",
]


#: How late a stored next fire time may be before ``flows ls`` calls it overdue: the
#: server stores next fire times every few seconds, not at every slot.
_OVERDUE = 15.0


def _json(text: str) -> Any:
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return {}


def _duration(seconds: float) -> str:
    """``7m``, ``2h``, ``1d``, ``90s``: the largest unit that divides it."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def schedule_label(description: Any, key: str) -> str:
    """How a schedule reads in one line: its name, if it has one, and its cron expression
    and zone, or its interval."""
    if not isinstance(description, dict):
        return key
    kind = description.get("kind")
    if kind == "cron":
        tz = description.get("tz")
        base = f"cron {description.get('cron')}" + (f" ({tz})" if tz and tz != "UTC" else "")
    elif kind == "every" and isinstance(description.get("seconds"), int | float):
        base = f"every {_duration(description['seconds'])}"
    else:
        return key
    name = description.get("name")
    return f"{name}: {base}" if name else base


def schedule_to_json(state: ScheduleState) -> dict[str, Any]:
    """A stored schedule state as JSON-ready data."""
    description = _json(state.description)
    return {
        "flow": state.flow,
        "key": state.key,
        "name": f"{state.flow}/{state.key}",
        "label": schedule_label(description, state.key),
        "description": description,
        "active": bool(description.get("active", True)) if isinstance(description, dict) else True,
        "paused": state.paused,
        "next_fire": iso_utc(state.next_fire),
        "next_fire_ts": state.next_fire,
        "cursor": iso_utc(state.cursor),
        "updated": iso_utc(state.updated),
    }


def _server_to_json(row: ServedFlow, now: float) -> dict[str, Any]:
    return {
        "holder": row.holder,
        "host": row.host,
        "pid": row.pid,
        "started": iso_utc(row.started),
        "heartbeat": iso_utc(row.heartbeat),
        "heartbeat_age_s": round(max(now - row.heartbeat, 0.0), 1),
        "fresh": now - row.heartbeat <= STALE_AFTER,
    }


async def served_flows(store: Store, *, now: float | None = None) -> list[dict[str, Any]]:
    """Every flow a server serves or served (the registry, and flows with stored
    schedules), by name: its servers (fresh or not), parameter schema, entrypoint,
    schedules with their next fire times and paused flags, and its last run."""
    now = time.time() if now is None else now
    await mark_crashed_runs(store, now=now)
    rows = await store.list_served()
    states = await store.list_schedules()
    names = sorted({r.flow for r in rows} | {s.flow for s in states})
    out = []
    for name in names:
        mine = [r for r in rows if r.flow == name]
        newest = max(mine, key=lambda r: r.heartbeat, default=None)
        runs = await store.list_runs(name=name, limit=1)
        last = runs[0] if runs else None
        out.append(
            {
                "flow": name,
                "served": any(now - r.heartbeat <= STALE_AFTER for r in mine),
                "servers": [_server_to_json(r, now) for r in mine],
                "entrypoint": newest.entrypoint if newest is not None else None,
                "parameters": _json(newest.parameters_schema) if newest is not None else None,
                "schedules": [schedule_to_json(s) for s in states if s.flow == name],
                "last_run": None
                if last is None
                else {
                    "id": last.id,
                    "state": str(last.state),
                    "started": iso_utc(last.started),
                    "launched_by": last.launched_by,
                },
            }
        )
    return out


async def flow_schema(store: Store, flow: str) -> dict[str, Any] | None:
    """The parameter schema (JSON Schema data) of ``flow`` as its newest server registered
    it, or ``None`` when no server registered the flow."""
    rows = [r for r in await store.list_served() if r.flow == flow]
    if not rows:
        return None
    schema = _json(max(rows, key=lambda r: r.heartbeat).parameters_schema)
    return schema if isinstance(schema, dict) else None


async def list_schedules(
    store: Store, name: str | None = None, *, now: float | None = None
) -> list[dict[str, Any]]:
    """The stored schedules (those ``name`` names: a flow, or ``flow/key``) as JSON-ready
    data, each with ``served``: whether a server with a fresh heartbeat serves its flow."""
    now = time.time() if now is None else now
    states = (
        await store.list_schedules() if name is None else (await find_schedules(store, name)).states
    )
    served = {r.flow for r in await store.list_served() if now - r.heartbeat <= STALE_AFTER}
    return [{**schedule_to_json(s), "served": s.flow in served} for s in states]


@dataclass(frozen=True)
class ScheduleMatch:
    """The stored schedules a ``NAME`` names: ``(flow, key or None for all of them)``."""

    flow: str
    key: str | None
    states: list[ScheduleState]


async def find_schedules(store: Store, name: str) -> ScheduleMatch:
    """The schedules ``name`` names: a flow (all its schedules) or ``flow/key``; raises
    ``ConfigurationError`` naming the known ones when it names none."""
    states = await store.list_schedules()
    by_flow = [s for s in states if s.flow == name]
    if by_flow:
        return ScheduleMatch(name, None, by_flow)
    exact = [s for s in states if f"{s.flow}/{s.key}" == name]
    if exact:
        return ScheduleMatch(exact[0].flow, exact[0].key, exact)
    known = ", ".join(f"{s.flow}/{s.key}" for s in states[:20]) or "none yet"
    raise ConfigurationError(
        f"no stored schedule named {name!r}; give a flow name (all its schedules) or "
        f"FLOW/KEY as `flowcore schedules ls` lists them (known: {known}). A schedule is "
        "stored when `flowcore serve` first serves its flow"
    )


def schedule_line(s: dict[str, Any], now: float, *, served: bool = True) -> str:
    """A schedule's state in one short line: paused, inactive, or when it fires next
    (local time; a server stores it every few seconds), and whether a server fires it."""
    if not s["active"]:
        return "inactive"
    if s["paused"]:
        return "paused"
    next_fire = s["next_fire_ts"]
    status = "next " + format_local_time(next_fire) if next_fire is not None else "next -"
    if not served:
        status += " (not served now)"
    elif next_fire is not None and next_fire < now - _OVERDUE:
        status += " (overdue)"
    return status
