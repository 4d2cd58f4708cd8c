"""``flowcore runs``: list recorded runs, and show one run's tree of task runs."""

from __future__ import annotations

import click
from rich.console import Console
from rich.text import Text

from ..records import FlowRunRecord
from ..store import Store
from ..views import runs as views
from ..views.format import to_json, visible
from . import render
from .logs import logs
from .support import STATES, CliError, Count, Group, check_state, database, read

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
