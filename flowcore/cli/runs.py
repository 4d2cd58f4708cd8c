"""``flowcore runs``: list recorded runs, show one run's tree of task runs, and delete
old runs (``prune``)."""

from __future__ import annotations

import time

import click
from rich.console import Console
from rich.text import Text

from ..records import FlowRunRecord
from ..store import Store
from ..store.base import PruneCount, prune_runs_and_results
from ..store.crash import mark_crashed_runs
from ..views import runs as views
from ..views.format import iso_utc, to_json, visible
from . import render
from .logs import logs, need_store
from .support import STATES, CliError, Count, Days, Group, check_state, database, read

__all__ = ["runs"]


@click.group(cls=Group)
def runs() -> None:
    """List and inspect recorded runs."""


runs.add_command(logs)  # flowcore runs logs RUN_ID


@runs.command("ls")
@click.option("--flow", "flow_name", metavar="NAME", help="Only runs of this flow.")
@click.option(
    "--state",
    metavar="STATE",
    callback=check_state,
    help=f"Only runs in this state: {', '.join(STATES)} (any case).",
)
@click.option(
    "--limit", type=Count(1), default=20, show_default=True, metavar="N", help="Runs to list."
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def runs_ls(flow_name: str | None, state: str | None, limit: int, as_json: bool) -> None:
    """List runs, newest first."""
    db = database()
    if not db.exists():
        click.echo("[]" if as_json else f"no runs yet in {db}")
        return

    async def fetch(store: Store) -> list[FlowRunRecord]:
        return await views.list_runs(store, flow=flow_name, state=state, limit=limit)

    found = read(fetch)
    if as_json:
        click.echo(to_json([views.run_to_json(r) for r in found]))
    elif not found:
        filters = " ".join(
            f"{k}={v}" for k, v in (("flow", flow_name), ("state", state)) if v is not None
        )
        click.echo(visible(f"no runs{' with ' + filters if filters else ''} in {db}"))
    else:
        Console().print(render.runs_table(found))


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.option(
    "--limit", type=Count(1), default=200, show_default=True, metavar="N",
    help="Task runs to show.",
)  # fmt: skip
@click.option(
    "--offset", type=Count(0), default=0, show_default=True, metavar="N",
    help="Task runs to skip (by position, in call order).",
)  # fmt: skip
@click.option(
    "--state", metavar="STATE", callback=check_state,
    help="Only task runs in this state (e.g. Failed): paging then counts those only.",
)  # fmt: skip
@click.option(
    "--tag", metavar="TAG",
    help="Only task runs of tasks with this tag: paging and counts then count those only.",
)  # fmt: skip
@click.option("--results", "show_results", is_flag=True, help="Show each task run's result.")
@click.option(
    "--allow-pickle", is_flag=True,
    help="Also load pickled results (implies --results). Loading a pickle runs code: "
    "only for stores you trust.",
)  # fmt: skip
def runs_show(
    run_id: str,
    as_json: bool,
    limit: int,
    offset: int,
    state: str | None,
    tag: str | None,
    show_results: bool,
    allow_pickle: bool,
) -> None:
    """Show one run (an id prefix is enough) and its tree of task runs."""
    db = database()
    if not db.exists():
        raise CliError(f"no run with id {run_id!r}: there are no runs yet in {db}")
    show_results = show_results or allow_pickle

    async def fetch(store: Store) -> views.RunDetails:
        return await views.run_details(
            store,
            run_id,
            offset=offset,
            limit=limit,
            state=state,
            tag=tag,
            results=show_results,
            allow_pickle=allow_pickle,
        )

    d = read(fetch)
    total = d.total
    if as_json:
        click.echo(to_json(views.run_details_to_json(d)))
        return
    console = Console()
    console.print(render.run_header(d.run, d.counts))
    if d.failed_hooks_total:
        console.print(render.failed_hooks_text(d.failed_hooks, d.failed_hooks_total, d.run.id))
    console.print(render.task_tree(d.run, d.task_runs, d.subflows, results=d.results))
    shown_end = offset + len(d.task_runs)
    which = "task runs" if state is None else f"{state} task runs"
    if tag is not None:
        which += f" tagged {tag}"
    if not d.task_runs and (offset or state is not None or tag is not None):
        console.print(Text(f"no {which} from --offset {offset}: the run has {total}"))
    elif offset or shown_end < total:
        more = total - shown_end
        next_page = f" --offset {shown_end} --limit {limit}"
        if state is not None:
            next_page += f" --state {state}"
        if tag is not None:
            next_page += f" --tag {tag}"
        console.print(
            render.plain(
                f"showing {which} {offset}–{shown_end - 1} of {total}"
                + (f"; {more} more: flowcore runs show {d.run.id[:8]}{next_page}" if more else "")
            ),
            highlight=False,
        )


@runs.command("prune")
@click.option(
    "--older-than", type=Days(above_zero=True), required=True, metavar="DAYS",
    help="Delete the runs that ended more than DAYS days ago (0.5: 12 hours).",
)  # fmt: skip
@click.option(
    "--keep-runs", type=Count(0), metavar="N",
    help="Keep the newest N top-level runs, however old.",
)  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Delete nothing: count what would go.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as a JSON object.")
def runs_prune(
    older_than: float, keep_runs: int | None, dry_run: bool, yes: bool, as_json: bool
) -> None:
    """Delete the runs that ended more than DAYS days ago, with everything that is
    theirs: subflows, task runs, log lines, spans, and the result files nothing else
    uses. A run still going is never deleted; a run whose process died is marked
    Crashed first, and goes once it is older than DAYS.

    Asset history and state, cache entries and schedules stay (a cached or asset value
    keeps its result file). Runs go in chunks, a transaction each, so flows running
    meanwhile keep writing.

    \b
    flowcore runs prune --older-than 30
    flowcore runs prune --older-than 7 --keep-runs 1000 --dry-run
    """
    need_store("runs")
    db = database()
    kept = "" if keep_runs is None else f" (but the newest {keep_runs:,} runs)"
    what = f"the runs that ended more than {older_than:g} days ago{kept}"
    if not (yes or dry_run):
        click.confirm(
            f"delete {what} from {db}, with their task runs, logs and spans?", abort=True, err=True
        )
    before = time.time() - older_than * 86400

    async def prune(store: Store) -> PruneCount:
        await mark_crashed_runs(store)  # a run whose process died goes once old enough
        return await prune_runs_and_results(store, before, keep_runs=keep_runs, dry_run=dry_run)

    count = read(prune)
    if as_json:
        click.echo(
            to_json(
                {"dry_run": dry_run, "older_than_days": older_than, "before": iso_utc(before),
                 "keep_runs": keep_runs, **count.to_dict()}
            )
        )  # fmt: skip
        return
    verb = "would delete" if dry_run else "deleted"
    ended = f"that ended more than {older_than:g} days ago{kept}"
    click.echo(f"{verb} {_many(count.runs, 'run')} {ended}, with {prune_text(count)}")


def _many(n: int, one: str) -> str:
    return f"{n:,} {one}{'' if n == 1 else 's'}"


def prune_text(count: PruneCount) -> str:
    """What went with the runs: ``12 task runs, 40 log lines, 3 spans and 1 result file``."""
    return (
        f"{_many(count.task_runs, 'task run')}, {_many(count.logs, 'log line')}, "
        f"{_many(count.spans, 'span')} and {_many(count.blobs, 'result file')}"
    )
