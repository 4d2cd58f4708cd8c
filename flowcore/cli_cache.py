"""``flowcore cache``: list and clear cached task results."""

from __future__ import annotations

import time

import anyio
import click
from rich.console import Console

from . import render
from .cli_support import CliError, Group, database, read
from .errors import StoreError
from .records import CacheEntry
from .results import ResultFiles
from .serializers import ResultUnreadable
from .store import Store

# -- flowcore cache --------------------------------------------------------------------------


@click.group(cls=Group)
def cache() -> None:
    """List and clear cached task results."""


def _result_size(entry: CacheEntry, files: ResultFiles | None) -> int | None:
    """The stored result's size in bytes; ``None`` when its file is missing."""
    if entry.result is not None:
        return len(entry.result)
    if entry.result_ref is None or files is None:
        return None
    try:
        return files.path(entry.result_ref).stat().st_size
    except (OSError, ResultUnreadable):
        return None


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
        entries = await store.list_cache(task_name=task_name)
        files = ResultFiles(store.results_dir) if store.results_dir is not None else None
        sizes = await anyio.to_thread.run_sync(
            lambda: {e.key: _result_size(e, files) for e in entries}
        )
        return entries, sizes

    entries, sizes = read(fetch)
    now = time.time()
    if as_json:
        click.echo(
            render.to_json([render.cache_entry_to_json(e, sizes[e.key], now=now) for e in entries])
        )
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
        entries = await store.list_cache(task_name=task_name)
        if expired:
            now = time.time()
            entries = [e for e in entries if e.expired(now)]
        if task_name is None and not expired and not yes and entries:
            raise CliError(
                f"this would remove all {len(entries)} cache entries; add --yes to confirm "
                "(`flowcore cache clear --yes`), or choose some with --task NAME or --expired"
            )
        if entries:
            await store.delete_cache([e.key for e in entries])
        removed_files = 0
        if store.results_dir is not None:
            try:
                keep = await store.result_refs()
            except StoreError as exc:
                # Sweeping without knowing what is referenced would delete live results.
                raise CliError(
                    f"removed {_entries(len(entries))}, but could not tell which result files "
                    f"are still in use, so no file was removed: {exc}"
                ) from exc
            files = ResultFiles(store.results_dir)
            removed_files = await anyio.to_thread.run_sync(files.remove_unreferenced, keep)
        return len(entries), removed_files

    entries, files = read(clear)
    plural = "" if files == 1 else "s"
    click.echo(f"removed {_entries(entries)} and {files} unreferenced result file{plural}")


def _entries(n: int) -> str:
    return f"{n} cache entr{'y' if n == 1 else 'ies'}"
