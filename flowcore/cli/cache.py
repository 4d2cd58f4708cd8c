"""``flowcore cache``: list and clear cached task results."""

from __future__ import annotations

import time

import click
from rich.console import Console

from ..records import CacheEntry
from ..store import Store
from ..views import cache as views
from ..views.format import to_json
from . import render
from .support import CliError, Group, database, read

# -- flowcore cache --------------------------------------------------------------------------


@click.group(cls=Group)
def cache() -> None:
    """List and clear cached task results."""


@cache.command("ls")
@click.option("--task", "task_name", metavar="NAME", help="Only entries of this task.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def cache_ls(task_name: str | None, as_json: bool) -> None:
    """List cache entries, newest first."""
    db = database()
    if not db.exists():
        click.echo("[]" if as_json else f"no cache entries yet in {db}")
        return

    async def fetch(store: Store) -> tuple[list[CacheEntry], dict[str, int | None]]:
        return await views.list_cache(store, task_name=task_name)

    entries, sizes = read(fetch)
    now = time.time()
    if as_json:
        click.echo(to_json([views.cache_entry_to_json(e, sizes[e.key], now=now) for e in entries]))
    elif not entries:
        of_task = f" of task {task_name!r}" if task_name is not None else ""
        click.echo(f"no cache entries{of_task} in {db}")
    else:
        Console().print(render.cache_table(entries, sizes, now=now))


@cache.command("clear")
@click.option("--task", "task_name", metavar="NAME", help="Only entries of this task.")
@click.option("--expired", is_flag=True, help="Only entries whose ttl has passed.")
@click.option("--yes", is_flag=True, help="Confirm clearing every entry (needed with no filter).")
def cache_clear(task_name: str | None, expired: bool, yes: bool) -> None:
    """Remove cache entries (all of them, or those matching the filters), then the
    result files nothing refers to any more.

    Task runs keep their own results: clearing the cache never changes what
    `flowcore runs show --results` or resume can read.

    \b
    flowcore cache clear --expired
    flowcore cache clear --task fetch_page
    flowcore cache clear --yes
    """
    db = database()
    if not db.exists():
        click.echo(f"no cache entries in {db}; nothing to clear")
        return

    async def clear(store: Store) -> tuple[int, int]:
        try:
            return await views.clear_cache(
                store, task_name=task_name, expired=expired, everything=yes
            )
        except views.ClearRefused as exc:
            raise CliError(str(exc)) from exc

    entries, files = read(clear)
    plural = "" if files == 1 else "s"
    click.echo(f"removed {_entries(entries)} and {files} unreferenced result file{plural}")


def _entries(n: int) -> str:
    return f"{n} cache entr{'y' if n == 1 else 'ies'}"
