"""``flowcore limits``: the limits shared by processes, their holders and waiters."""

from __future__ import annotations

import time
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from . import render
from .cli_support import Group, database, read
from .store import Store


@click.group(cls=Group)
def limits() -> None:
    """Inspect limits shared by processes (flowcore.limit(..., shared=True))."""


@limits.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def limits_ls(as_json: bool) -> None:
    """Shared limits: slots held and by whom, who waits, and how far a shared rate is booked.

    Only limits made with ``shared=True`` are in the store; the others live in
    one process each.
    """
    db = database()
    if not db.exists():
        click.echo("[]" if as_json else f"no shared limits in use in {db}")
        return

    async def fetch(
        store: Store,
    ) -> tuple[list[tuple[str, str, str, int, float, int]], list[tuple[str, float]]]:
        leases = await store.list_leases()  # type: ignore[attr-defined]
        rates = await store.list_rates()  # type: ignore[attr-defined]
        return leases, rates

    leases, rates = read(fetch)
    now = time.time()
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
    listed = [
        {**row, "holders": sorted(row["holders"]), "waiters": sorted(row["waiters"])}
        for row in sorted(rows.values(), key=lambda r: r["name"])
        if row["held"] or row["waiting"] or row["expired"] or row["rate_booked_s"]
    ]
    if as_json:
        click.echo(render.to_json(listed))
        return
    if not listed:
        click.echo(f"no shared limits in use in {db}")
        return
    table = Table(
        "limit", "slots held", "held by (host:pid)", "waiting", "waiters (host:pid)",
        "rate booked ahead", "expired leases",
    )  # fmt: skip
    for row in listed:
        table.add_row(
            row["name"],
            str(row["held"]),
            ", ".join(row["holders"]) or "-",
            str(row["waiting"]),
            ", ".join(row["waiters"]) or "-",
            f"{row['rate_booked_s']:.2f} s" if row["rate_booked_s"] else "-",
            str(row["expired"]),
        )
    Console().print(table)
