"""The ``flowcore`` command: run or resume a flow, list runs, show one run's tree of
task runs and their results, draw a run's trace, list and clear cache entries.

Every flowcore error ends the command with ``error: <message>`` on stderr and
exit code 1, never a traceback: its message already says what went wrong and
the fix. Read-only commands open the store, read, and close it; those that show
runs first mark runs whose process died as Crashed, so a killed run does not
show as Running forever.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import anyio
import click
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from . import render
from .cli_cache import cache
from .cli_limits import limits
from .cli_support import STATES, CliError, Group, check_state, database, read
from .cli_trace import trace
from .crash import mark_crashed_runs
from .engine import Engine
from .errors import FlowcoreError
from .flow import resume_async
from .inspection import StoredResult, inspect_result
from .loader import FlowLoadError, flow_kwargs, load_flow
from .records import FlowRunRecord, TaskRunRecord
from .store import Store

__all__ = ["cli", "main"]

# -- the group -----------------------------------------------------------------------------


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of the run database (overrides $FLOWCORE_HOME; default ~/.flowcore).",
)
@click.version_option(package_name="flowcore")
@click.pass_context
def cli(ctx: click.Context, home: Path | None) -> None:
    """flowcore: run flows and inspect their recorded runs."""
    if home is not None:
        # For this invocation only: restored on exit, which matters when embedded (tests).
        previous = os.environ.get("FLOWCORE_HOME")
        os.environ["FLOWCORE_HOME"] = str(home)

        def restore() -> None:
            if previous is None:
                os.environ.pop("FLOWCORE_HOME", None)
            else:
                os.environ["FLOWCORE_HOME"] = previous

        ctx.call_on_close(restore)


# -- flowcore run --------------------------------------------------------------------------


@dataclass
class _Outcome:
    result: Any = None
    error: Exception | None = None
    run: FlowRunRecord | None = None


async def _poll_progress(engine: Engine, progress: Progress, name: str) -> None:
    """Redraw the counters every 0.1 s until cancelled."""
    bar = progress.add_task(name, total=None, counts="starting")
    while True:
        s = engine.statistics()
        progress.update(
            bar,
            total=max(s.tasks_started, 1),
            completed=s.tasks_completed,
            counts=(
                f"{s.tasks_started} started · {s.tasks_completed} completed · "
                f"{s.tasks_failed} failed · {s.tasks_retried} retried"
            ),
        )
        progress.refresh()
        await anyio.sleep(0.1)


async def _execute(
    name: str, call: Callable[[], Awaitable[Any]], console: Console | None
) -> _Outcome:
    """Await ``call()`` (a flow run, or a resume) in an engine of its own, with the
    progress bar on ``console`` when given; its error is kept, not raised."""
    outcome = _Outcome()
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        auto_refresh=False,  # redrawn by the poller task, not by a thread of its own
        disable=console is None,
    )
    async with Engine() as engine:
        try:
            async with anyio.create_task_group() as tg:
                if console is not None:
                    progress.start()
                    tg.start_soon(_poll_progress, engine, progress, name)
                try:
                    outcome.result = await call()
                except Exception as exc:
                    outcome.error = exc
                finally:
                    tg.cancel_scope.cancel()
                    progress.stop()
        finally:
            outcome.run = engine.last_run
    return outcome


def _run_line(run: FlowRunRecord | None) -> str:
    if run is None:
        return "(no run was recorded)"
    resumed = f" (resumed from {run.resumed_from[:8]})" if run.resumed_from else ""
    return (
        f"run {run.id[:8]}{resumed} {run.state} in {render.format_duration(run.duration)}; "
        f"inspect it: flowcore runs show {run.id[:8]}"
    )


def _drive_and_report(
    name: str,
    call: Callable[[], Awaitable[Any]],
    *,
    as_json: bool,
    no_progress: bool,
    show_traceback: bool,
) -> None:
    """What ``run`` and ``resume`` share: run ``call`` with progress, print its result
    and the run line, or the error and exit 1."""
    err_console = Console(stderr=True)
    show_progress = not no_progress and err_console.is_terminal
    outcome = anyio.run(_execute, name, call, err_console if show_progress else None)
    error = outcome.error
    if error is not None:
        if outcome.run is None and isinstance(error, FlowcoreError):
            # Refused before any run started (bad arguments, nothing to resume, a flow
            # that cannot be imported): the message is the whole story.
            cause = getattr(error, "cause", None)
            if show_traceback and isinstance(cause, BaseException):
                click.echo("".join(traceback.format_exception(cause)).rstrip(), err=True)
            raise CliError(str(error)) from error
        if show_traceback:
            click.echo("".join(traceback.format_exception(error)).rstrip(), err=True)
        flow_name = outcome.run.name if outcome.run is not None else name
        click.echo(f"error: flow {flow_name!r} failed: {type(error).__name__}: {error}", err=True)
        if not show_traceback:  # notes explain flowcore's part (an unobserved task failure)
            for note in getattr(error, "__notes__", ()):
                click.echo(f"  {note}", err=True)
        click.echo(_run_line(outcome.run), err=True)
        if not show_traceback:
            click.echo("(add --traceback for the full traceback)", err=True)
        sys.exit(1)
    click.echo(render.to_json(outcome.result) if as_json else repr(outcome.result))
    click.echo(_run_line(outcome.run), err=True)


@cli.command("run")
@click.argument("target", metavar="FILE.py:FLOW")
@click.option(
    "--param", "-p", "params", multiple=True, metavar="NAME=VALUE",
    help="A flow parameter, converted by the flow's annotation (repeatable).",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--no-progress", is_flag=True, help="Do not show the progress bar.")
@click.option("--traceback", "show_traceback", is_flag=True, help="Show the full traceback.")
def run_command(
    target: str, params: tuple[str, ...], as_json: bool, no_progress: bool, show_traceback: bool
) -> None:
    """Run the flow FLOW defined in FILE.py and print its result (:FLOW is optional
    when the file defines one flow).

    \b
    flowcore run flows.py:ingest --param pages=20
    flowcore run flows.py:report -p ids='[1, 2, 3]' --json
    """
    try:
        flow = load_flow(target)
    except FlowLoadError as exc:
        if show_traceback and exc.cause is not None:
            click.echo("".join(traceback.format_exception(exc.cause)).rstrip(), err=True)
        raise
    kwargs = flow_kwargs(flow, params)
    _drive_and_report(
        flow.name,
        lambda: flow(**kwargs),
        as_json=as_json,
        no_progress=no_progress,
        show_traceback=show_traceback,
    )


# -- flowcore resume -------------------------------------------------------------------------


@cli.command("resume")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--no-progress", is_flag=True, help="Do not show the progress bar.")
@click.option("--traceback", "show_traceback", is_flag=True, help="Show the full traceback.")
def resume_command(run_id: str, as_json: bool, no_progress: bool, show_traceback: bool) -> None:
    """Re-drive a failed, crashed or cancelled run (an id prefix is enough) as a new run.

    Task calls that completed in that run return their stored results without
    running again; the others run. The flow is imported from where the run
    recorded it (run from the same folder as the original run when it was a module).

    \b
    flowcore resume 3f2a9c1b
    """
    db = database()
    if not db.exists():
        raise CliError(f"no run with id {run_id!r}: there are no runs yet in {db}")
    _drive_and_report(
        f"resuming {run_id}",
        lambda: resume_async(run_id),
        as_json=as_json,
        no_progress=no_progress,
        show_traceback=show_traceback,
    )


# -- flowcore runs ---------------------------------------------------------------------------


@cli.group(cls=Group)
def runs() -> None:
    """List and inspect recorded runs."""


@runs.command("ls")
@click.option("--flow", "flow_name", metavar="NAME", help="Only runs of this flow.")
@click.option(
    "--state",
    metavar="STATE",
    callback=check_state,
    help=f"Only runs in this state: {', '.join(STATES)} (any case).",
)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def runs_ls(flow_name: str | None, state: str | None, limit: int, as_json: bool) -> None:
    """List runs, newest first."""
    db = database()
    if not db.exists():
        click.echo("[]" if as_json else f"no runs yet in {db}")
        return

    async def fetch(store: Store) -> list[FlowRunRecord]:
        await mark_crashed_runs(store)
        return await store.list_runs(name=flow_name, state=state, limit=limit)

    found = read(fetch)
    if as_json:
        click.echo(render.to_json([render.run_to_json(r) for r in found]))
    elif not found:
        filters = " ".join(
            f"{k}={v}" for k, v in (("flow", flow_name), ("state", state)) if v is not None
        )
        click.echo(f"no runs{' with ' + filters if filters else ''} in {db}")
    else:
        Console().print(render.runs_table(found))


@dataclass
class _Details:
    run: FlowRunRecord
    counts: dict[str, int]
    task_runs: list[TaskRunRecord]
    subflows: list[FlowRunRecord]
    results: dict[int, StoredResult] | None


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=200, show_default=True,
    help="Task runs to show.",
)  # fmt: skip
@click.option(
    "--offset", type=click.IntRange(min=0), default=0, show_default=True,
    help="Task runs to skip (by position, in call order).",
)  # fmt: skip
@click.option(
    "--state", metavar="STATE", callback=check_state,
    help="Only task runs in this state (e.g. Failed): paging then counts those only.",
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
    show_results: bool,
    allow_pickle: bool,
) -> None:
    """Show one run (an id prefix is enough) and its tree of task runs."""
    db = database()
    if not db.exists():
        raise CliError(f"no run with id {run_id!r}: there are no runs yet in {db}")
    show_results = show_results or allow_pickle

    async def fetch(store: Store) -> _Details:
        await mark_crashed_runs(store)
        run = await store.get_run(run_id)
        counts = await store.count_task_runs(run.id)
        task_runs = await store.list_task_runs(run.id, offset=offset, limit=limit, state=state)
        page = {t.seq for t in task_runs}
        subflows = [
            s
            for s in await store.child_runs(run.id)
            if s.parent_task_seq in page or (offset == 0 and s.parent_task_seq is None)
        ]
        results = None
        if show_results:
            results = {
                t.seq: await inspect_result(t, store.results_dir, allow_pickle=allow_pickle)
                for t in task_runs
            }
        return _Details(run, counts, task_runs, subflows, results)

    d = read(fetch)
    total = sum(d.counts.values()) if state is None else d.counts.get(state, 0)
    if as_json:
        data = render.run_to_json(d.run, details=True)
        data["counts"] = d.counts
        data["task_runs"] = [render.task_run_to_json(t) for t in d.task_runs]
        if d.results is not None:
            for t, item in zip(d.task_runs, data["task_runs"], strict=True):
                item["result"] = render.result_to_json(d.results[t.seq])
        data["page"] = {"offset": offset, "limit": limit, "total": total, "state": state}
        data["subflows"] = [render.run_to_json(s) for s in d.subflows]
        click.echo(render.to_json(data))
        return
    console = Console()
    console.print(render.run_header(d.run, d.counts))
    console.print(render.task_tree(d.run, d.task_runs, d.subflows, results=d.results))
    shown_end = offset + len(d.task_runs)
    which = "task runs" if state is None else f"{state} task runs"
    if not d.task_runs and (offset or state is not None):
        console.print(f"no {which} from --offset {offset}: the run has {total}")
    elif offset or shown_end < total:
        more = total - shown_end
        next_page = f" --offset {shown_end} --limit {limit}"
        if state is not None:
            next_page += f" --state {state}"
        console.print(
            f"showing {which} {offset}–{shown_end - 1} of {total}"
            + (f"; {more} more: flowcore runs show {d.run.id[:8]}{next_page}" if more else ""),
            highlight=False,
        )


cli.add_command(cache)
cli.add_command(trace)
cli.add_command(limits)


def main() -> NoReturn:
    """The ``flowcore`` console script."""
    cli.main(prog_name="flowcore")
    raise AssertionError("unreachable: click exits")  # pragma: no cover
