"""``flowcore runs logs``: print a run's log, or follow it while the run goes on; and
``flowcore logs prune``: delete old log lines. Also what the prune commands share (the
age they take, the store they need)."""

from __future__ import annotations

import time

import click

from ..records import FlowRunRecord, LogRecord
from ..store import Store
from ..store.base import RunRetention
from ..views import logs as views
from ..views.format import iso_utc, to_json, visible
from .support import CliError, Count, Days, Group, database, read

__all__ = ["logs", "logs_group", "need_store"]


def need_store(what: str) -> None:
    """Refuse, naming the fix, when there is no store to prune: a prune never creates one."""
    db = database()
    if not db.exists():
        raise CliError(
            f"there is no flowcore database at {db}, so no {what} to prune; point "
            "FLOWCORE_HOME (or --home) at the folder holding flowcore.db, or FLOWCORE_DB_URL "
            "at the store"
        )


def _check_level(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return views.parse_level(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("logs")
@click.argument("run_id")
@click.option("--task", "task_name", metavar="NAME", help="Only lines of runs of this task.")
@click.option(
    "--level", metavar="LEVEL", callback=_check_level,
    help="Only lines at this level or above: DEBUG, INFO, WARNING, ERROR, CRITICAL, or a number.",
)  # fmt: skip
@click.option(
    "--follow", "-f", is_flag=True,
    help="Print lines as the run writes them, until it ends.",
)  # fmt: skip
@click.option(
    "--json", "as_json", is_flag=True,
    help="Print a JSON list (with --follow: one JSON object per line, as lines come).",
)  # fmt: skip
@click.option("--limit", type=Count(1), metavar="N", help="Print at most N lines (the first).")
def logs(
    run_id: str,
    task_name: str | None,
    level: int | None,
    follow: bool,
    as_json: bool,
    limit: int | None,
) -> None:
    """Print the log of a run (an id prefix is enough): what its flow and tasks logged
    with `logging` (at the levels your logging configuration lets through), with
    flowcore.get_run_logger(), and printed with log_prints=True.

    \b
    flowcore runs logs 3f2a9c1b --level warning
    flowcore runs logs 3f2a9c1b --task fetch --follow
    """
    db = database()
    if not db.exists():
        raise CliError(f"no run with id {run_id!r}: there are no runs yet in {db}")
    if follow:
        read(lambda store: _follow(store, run_id, task_name, level, limit, as_json))
        return

    async def fetch(store: Store) -> tuple[FlowRunRecord, list[LogRecord]]:
        return await views.read_logs(store, run_id, task=task_name, min_level=level, limit=limit)

    run, lines = read(fetch)
    if as_json:
        click.echo(to_json([views.log_to_json(line) for line in lines]))
        return
    for line in lines:
        click.echo(views.log_line_text(line))
    if not lines:  # said on stderr: the output of a pipe stays the log itself
        which = " ".join(
            f"--{k} {v}" for k, v in (("task", task_name), ("level", level)) if v is not None
        )
        click.echo(
            visible(f"run {run.id[:8]} has no log lines{' with ' + which if which else ''}"),
            err=True,
        )


async def _follow(
    store: Store,
    run_id: str,
    task: str | None,
    level: int | None,
    limit: int | None,
    as_json: bool,
) -> None:
    async for page in views.follow_logs(store, run_id, task=task, min_level=level, limit=limit):
        for line in page:
            click.echo(views.log_to_json_line(line) if as_json else views.log_line_text(line))


# -- flowcore logs prune ------------------------------------------------------------------------


@click.group("logs", cls=Group)
def logs_group() -> None:
    """Delete old lines of run logs (read a run's log with `flowcore runs logs RUN_ID`)."""


@logs_group.command("prune")
@click.option(
    "--older-than", type=Days(above_zero=True), required=True, metavar="DAYS",
    help="Delete the log lines written more than DAYS days ago (0.5: 12 hours).",
)  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Delete nothing: count the lines that would go.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the count as a JSON object.")
def logs_prune(older_than: float, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Delete the log lines written more than DAYS days ago, of every run, kept or not
    (the runs themselves stay: `flowcore runs prune` deletes old runs with their logs).

    Lines go in the order they were written, a chunk per transaction, so running flows
    keep writing theirs meanwhile.

    \b
    flowcore logs prune --older-than 7
    flowcore logs prune --older-than 0.5 --dry-run
    """
    need_store("log lines")
    db = database()
    what = f"the log lines written more than {older_than:g} days ago"
    if not (yes or dry_run):
        click.confirm(f"delete {what} from {db}?", abort=True, err=True)
    before = time.time() - older_than * 86400

    async def prune(store: Store) -> int:
        if not isinstance(store, RunRetention):
            raise CliError(
                f"the store {store.location} cannot prune log lines: {type(store).__name__} "
                "has no prune_logs (the RunRetention role of flowcore.store.base); upgrade "
                "the store's plugin"
            )
        return await store.prune_logs(before, dry_run=dry_run)

    count = read(prune)
    if as_json:
        click.echo(
            to_json(
                {"dry_run": dry_run, "older_than_days": older_than, "before": iso_utc(before),
                 "logs": count}
            )
        )  # fmt: skip
        return
    lines = f"{count:,} log line{'' if count == 1 else 's'}"
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {lines} written more than {older_than:g} days ago")
