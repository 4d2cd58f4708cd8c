"""Limits shared by processes: slots held and by whom, waiters, how far a rate is booked."""

from __future__ import annotations

import time
from typing import Any

from ..store.base import LeaseStore

__all__ = ["shared_limits"]


async def shared_limits(store: LeaseStore, *, now: float | None = None) -> list[dict[str, Any]]:
    """One entry per shared limit in use, by name: ``held`` slots and their ``holders``
    (``host:pid``), slots ``waiting`` and their ``waiters``, ``expired`` leases not yet
    reclaimed, and ``rate_booked_s``: how far ahead its rate is reserved."""
    leases = await store.list_leases()
    rates = await store.list_rates()
    now = time.time() if now is None else now
    rows: dict[str, dict[str, Any]] = {}

    def row_for(name: str) -> dict[str, Any]:
        return rows.setdefault(
            name,
            {"name": name, "held": 0, "holders": set(), "waiting": 0, "waiters": set(),
             "expired": 0, "rate_booked_s": 0.0},
        )  # fmt: skip

    for name, _holder, host, pid, expires, waiting in leases:
        row = row_for(name)
        if expires <= now:
            row["expired"] += 1
        elif waiting:
            row["waiting"] += waiting  # a waiting row counts the slots it waits for
            row["waiters"].add(f"{host}:{pid}")
        else:
            row["held"] += 1
            row["holders"].add(f"{host}:{pid}")
    for name, tat in rates:
        if tat > now:
            row_for(name)["rate_booked_s"] = round(tat - now, 3)
    return [
        {**row, "holders": sorted(row["holders"]), "waiters": sorted(row["waiters"])}
        for row in sorted(rows.values(), key=lambda r: r["name"])
        if row["held"] or row["waiting"] or row["expired"] or row["rate_booked_s"]
    ]
