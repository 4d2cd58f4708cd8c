"""``flowcore run`` and ``flowcore resume``: drive a flow in this process, with progress."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import click
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from .._sync import run_in_own_loop
from ..engine import Engine
from ..entrypoints import load_flow
from ..errors import FlowcoreError, FlowLoadError, ParameterError
from ..records import FlowRunRecord
from ..resume import resume_async
from ..views.format import format_duration, safe_repr, safe_str, to_json, visible
from .params import flow_kwargs
from .support import CliError, database

__all__ = ["resume_command", "run_command"]


@dataclass
class _Outcome:
    result: Any = None
    error: Exception | None = None
    run: FlowRunRecord | None = None


async def _poll_progress(engine: Engine, progress: Progress, name: str) -> None:
    """Redraw the counters every 0.1 s until cancelled."""
    bar = progress.add_task(visible(name), total=None, counts="starting")
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
    name: str,
    call: Callable[[], Awaitable[Any]],
    console: Console | None,
    outcome: _Outcome | None = None,
) -> _Outcome:
    """Await ``call()`` (a flow run, or a resume) in an engine of its own, with the
    progress bar on ``console`` when given; its error is kept in ``outcome``, not raised
    (a cancellation, on SIGTERM, is raised: ``outcome.run`` is set all the same)."""
    if outcome is None:
        outcome = _Outcome()
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", style="bold", markup=False),  # a name is no markup
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
    return visible(
        f"run {run.id[:8]}{resumed} {run.state} in {format_duration(run.duration)}; "
        f"inspect it: flowcore runs show {run.id[:8]}"
    )


def _traceback(exc: BaseException) -> str:
    """The traceback as Python prints it, its user text made visible (newlines kept)."""
    return visible("".join(traceback.format_exception(exc)).rstrip(), multiline=True)


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
    outcome = _Outcome()
    console = err_console if show_progress else None

    def terminated() -> None:  # SIGTERM cancelled the run: say so before the process ends
        click.echo(f"terminated by SIGTERM: {_run_line(outcome.run)}", err=True)

    run_in_own_loop(lambda: _execute(name, call, console, outcome), before_exit=terminated)
    error = outcome.error
    if error is not None:
        if outcome.run is None and isinstance(error, FlowcoreError):
            # Refused before any run started (bad arguments, nothing to resume, a flow
            # that cannot be imported): the message is the whole story.
            cause = getattr(error, "cause", None)
            if show_traceback and isinstance(cause, BaseException):
                click.echo(_traceback(cause), err=True)
            raise CliError(safe_str(error)) from error
        if isinstance(error, ParameterError) and not show_traceback:
            # The run was refused before its body ran: the message lists every problem.
            click.echo(f"error: {visible(safe_str(error), multiline=True)}", err=True)
            click.echo(_run_line(outcome.run), err=True)
            sys.exit(1)
        if show_traceback:
            click.echo(_traceback(error), err=True)
        flow_name = outcome.run.name if outcome.run is not None else name
        failed = f"flow {flow_name!r} failed: {type(error).__name__}: {safe_str(error)}"
        click.echo(f"error: {visible(failed, multiline=True)}", err=True)
        if not show_traceback:  # notes explain flowcore's part (an unobserved task failure)
            for note in getattr(error, "__notes__", ()):
                click.echo(f"  {visible(safe_str(note), multiline=True)}", err=True)
        click.echo(_run_line(outcome.run), err=True)
        if not show_traceback:
            click.echo("(add --traceback for the full traceback)", err=True)
        sys.exit(1)
    if as_json:
        click.echo(to_json(outcome.result))
    else:  # a multi-line repr (a table, a data frame) stays on its lines
        click.echo(visible(safe_repr(outcome.result), multiline=True))
    click.echo(_run_line(outcome.run), err=True)


@click.command("run")
@click.argument("target", metavar="FILE.py:FLOW")
@click.option(
    "--param", "-p", "params", multiple=True, metavar="NAME=VALUE",
    help="A flow parameter, converted by the flow's annotation (repeatable).",
)  # fmt: skip
@click.option(
    "--params-json", "params_json", metavar="JSON|@FILE",
    help="Flow parameters as a JSON object, or @FILE naming a file holding one.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--no-progress", is_flag=True, help="Do not show the progress bar.")
@click.option("--traceback", "show_traceback", is_flag=True, help="Show the full traceback.")
def run_command(
    target: str,
    params: tuple[str, ...],
    params_json: str | None,
    as_json: bool,
    no_progress: bool,
    show_traceback: bool,
) -> None:
    """Run the flow FLOW defined in FILE.py and print its result (:FLOW is optional
    when the file defines one flow).

    Parameters are checked and converted by the flow's annotations before the run
    starts, as a Python call's are; parameters that do not fit (every one is listed)
    make a run recorded Failed, and exit 1.

    \b
    flowcore run flows.py:ingest --param pages=20
    flowcore run flows.py:report -p ids='[1, 2, 3]' --json
    flowcore run flows.py:ingest --params-json '{"pages": 20}'
    flowcore run flows.py:ingest --params-json @params.json
    """
    try:
        flow = load_flow(target)
    except FlowLoadError as exc:
        if show_traceback and exc.cause is not None:
            click.echo(_traceback(exc.cause), err=True)
        raise
    kwargs = flow_kwargs(flow, params, params_json)
    _drive_and_report(
        flow.name,
        lambda: flow(**kwargs),
        as_json=as_json,
        no_progress=no_progress,
        show_traceback=show_traceback,
    )


# -- flowcore resume -------------------------------------------------------------------------


@click.command("resume")
@click.argument("run_id")
@click.option(
    "--force", is_flag=True,
    help="Re-drive the run even though a resumption of it completed already.",
)  # fmt: skip
@click.option(
    "--allow-changed-code", is_flag=True,
    help="Resume even though the flow's source file changed since the run.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--no-progress", is_flag=True, help="Do not show the progress bar.")
@click.option("--traceback", "show_traceback", is_flag=True, help="Show the full traceback.")
def resume_command(
    run_id: str,
    force: bool,
    allow_changed_code: bool,
    as_json: bool,
    no_progress: bool,
    show_traceback: bool,
) -> None:
    """Re-drive a failed, crashed or cancelled run (an id prefix is enough) as a new run.

    Task calls that completed in that run return their stored results without
    running again; the others run. The flow is imported from where the run
    recorded it (run from the same folder as the original run when it was a module),
    and only if that file is unchanged since the run (--allow-changed-code to resume
    with the code as it is now). One process resumes a run at a time; a run whose
    resumption completed is not resumed again unless --force.

    \b
    flowcore resume 3f2a9c1b
    """
    db = database()
    if not db.exists():
        raise CliError(f"no run with id {run_id!r}: there are no runs yet in {db}")
    _drive_and_report(
        f"resuming {run_id}",
        lambda: resume_async(run_id, force=force, allow_changed_code=allow_changed_code),
        as_json=as_json,
        no_progress=no_progress,
        show_traceback=show_traceback,
    )
