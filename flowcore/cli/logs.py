"""``flowcore runs logs``: print a run's log, or follow it while the run goes on."""

from __future__ import annotations

import click

from ..records import FlowRunRecord, LogRecord
from ..store import Store
from ..views import logs as views
from ..views.format import to_json, visible
from .support import CliError, Count, database, read

__all__ = ["logs"]


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
