"""``flowcore limits``: the limits shared by processes, their holders and waiters."""

from __future__ import annotations

from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ..store import Store
from ..views.format import to_json
from ..views.limits import shared_limits
from .render import plain
from .support import Group, database, read


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

    async def fetch(store: Store) -> list[dict[str, Any]]:
        return await shared_limits(store)

    listed = read(fetch)
    if as_json:
        click.echo(to_json(listed))
        return
    if not listed:
        click.echo(f"no shared limits in use in {db}")
        return
    table = Table(
        "limit", "slots held", "held by (host:pid)", "waiting", "waiters (host:pid)",
        "rate booked ahead", "expired leases",
    )  # fmt: skip
    for row in listed:
        booked = row["rate_booked_s"]
        table.add_row(
            plain(str(row["name"])),
            str(row["held"]),
            plain(", ".join(row["holders"]) or "-"),
            str(row["waiting"]),
            plain(", ".join(row["waiters"]) or "-"),
            f"{booked:.2f} s" if booked else "-",
            str(row["expired"]),
        )
    Console().print(table)
