"""``flowcore flows ls``: the flows servers serve, their schedules and last runs."""

from __future__ import annotations

import time
from typing import Any

import click

from ..store import Store
from ..views.format import format_duration, to_json, visible
from ..views.serving import schedule_line, served_flows
from .support import Group, database, read

__all__ = ["flows"]


@click.group(cls=Group)
def flows() -> None:
    """Flows served by `flowcore serve` processes."""


@flows.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def flows_ls(as_json: bool) -> None:
    """List served flows: their servers (host:pid, heartbeat fresh or stale), schedules
    with next fire times and paused flags, parameters, and last run."""
    db = database()
    if not db.exists():
        click.echo("[]" if as_json else f"no served flows in {db}")
        return

    async def fetch(store: Store) -> list[dict[str, Any]]:
        return await served_flows(store)

    listed = read(fetch)
    if as_json:
        click.echo(to_json(listed))
        return
    if not listed:
        click.echo(visible(f"no served flows in {db}; start one: flowcore serve FILE.py"))
        return
    now = time.time()
    for i, flow in enumerate(listed):
        if i:
            click.echo("")
        click.echo(visible(flow["flow"]))
        servers = flow["servers"]
        if not servers:
            click.echo("  server   none (not served now)")
        for server in servers:
            age = format_duration(server["heartbeat_age_s"])
            fresh = "alive" if server["fresh"] else "STALE"
            click.echo(
                visible(
                    f"  server   {server['host']}:{server['pid']}  {fresh}, heartbeat {age} ago"
                )
            )
        schema = flow["parameters"] or {}
        props = schema.get("properties") or {}
        if props:
            parts = []
            for name, prop in props.items():
                kind = prop.get("x-flowcore-type", "any") if isinstance(prop, dict) else "any"
                parts.append(
                    f"{name}: {kind}" + ("" if name in schema.get("required", []) else "?")
                )
            click.echo(visible("  params   " + ", ".join(parts)))
        for s in flow["schedules"]:
            click.echo(visible(f"  schedule {s['label']}"))
            click.echo(f"           {schedule_line(s, now, served=flow['served'])}")
        last = flow["last_run"]
        if last is not None:
            click.echo(
                visible(
                    f"  last run {last['id'][:8]} {last['state']}"
                    + (f" ({last['launched_by']})" if last["launched_by"] else "")
                )
            )
