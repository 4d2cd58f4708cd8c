"""``flowcore schedules ls|pause|resume``: the stored schedules of served flows."""

from __future__ import annotations

import time
from typing import Any

import click

from ..store import Store
from ..views.format import to_json, visible
from ..views.serving import find_schedules, list_schedules, schedule_line
from .support import CliError, Group, database, read

__all__ = ["schedules"]


@click.group(cls=Group)
def schedules() -> None:
    """List, pause and resume the schedules of served flows."""


@schedules.command("ls")
@click.argument("name", required=False, metavar="[NAME]")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def schedules_ls(name: str | None, as_json: bool) -> None:
    """List stored schedules (of NAME: a flow, or FLOW/KEY): paused or not, next fire."""
    db = database()
    if not db.exists():
        click.echo("[]" if as_json else f"no schedules in {db}")
        return

    async def fetch(store: Store) -> list[dict[str, Any]]:
        return await list_schedules(store, name)

    listed = read(fetch)
    if as_json:
        click.echo(to_json(listed))
        return
    if not listed:
        click.echo(f"no schedules in {db}; they are stored when `flowcore serve` serves a flow")
        return
    now = time.time()
    for s in listed:
        click.echo(visible(s["name"]))
        click.echo(visible(f"  {s['label']}"))
        click.echo(f"  {schedule_line(s, now, served=s['served'])}")


def _set(name: str, paused: bool) -> None:
    db = database()
    if not db.exists():
        raise CliError(f"no schedules in {db}: start `flowcore serve` first")

    async def change(store: Store) -> tuple[str, int]:
        match = await find_schedules(store, name)
        count = await store.set_paused(match.flow, match.key, paused)
        return match.flow, count

    flow, count = read(change)
    what = "paused" if paused else "resumed"
    click.echo(visible(f"{what} {count} schedule{'' if count == 1 else 's'} of flow {flow}"))


@schedules.command("pause")
@click.argument("name", metavar="NAME")
def schedules_pause(name: str) -> None:
    """Pause NAME: a flow (all its schedules) or FLOW/KEY. Servers stop firing it within
    a second; its slots until `resume` are not fired, and after, only what its catch-up
    policy runs (catchup="latest": the newest missed slot)."""
    _set(name, True)


@schedules.command("resume")
@click.argument("name", metavar="NAME")
def schedules_resume(name: str) -> None:
    """Resume NAME: a flow (all its schedules) or FLOW/KEY."""
    _set(name, False)
