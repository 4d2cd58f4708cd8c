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
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import anyio
import click
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import render, waterfall
from .crash import mark_crashed_runs
from .engine import Engine
from .errors import FlowcoreError, StoreError
from .flow import resume_async
from .inspection import StoredResult, inspect_result
from .loader import FlowLoadError, flow_kwargs, load_flow
from .records import CacheEntry, FlowRunRecord, TaskRunRecord
from .results import ResultFiles
from .serializers import ResultUnreadable
from .states import State
from .store import Store, flowcore_home, resolve_store
from .telemetry import SpanRecord

__all__ = ["cli", "main"]

T = TypeVar("T")
_STATES = [s.value for s in State]


class CliError(click.ClickException):
    """An error the user can fix: printed as ``error: <message>``, exit code 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class _Group(click.Group):
    """A group that turns every flowcore error raised by its commands into a ``CliError``."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FlowcoreError as exc:
            raise CliError(str(exc)) from exc


# -- helpers --------------------------------------------------------------------------------


def _read(fn: Callable[[Store], Awaitable[T]]) -> T:
    """Open the store of ``$FLOWCORE_HOME``, run ``fn`` on it, and always close it."""

    async def main() -> T:
        store = resolve_store(None)
        try:
            await store.open()
            return await fn(store)
        finally:
            await store.close()

    return anyio.run(main)


def _database() -> Path:
    return flowcore_home() / "flowcore.db"


# -- the group -----------------------------------------------------------------------------


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
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
    db = _database()
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


@cli.group(cls=_Group)
def runs() -> None:
    """List and inspect recorded runs."""


def _check_state(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A state name in any case, as stored (``failed`` → ``Failed``)."""
    if value is None:
        return None
    for state in _STATES:
        if state.lower() == value.lower():
            return state
    raise click.BadParameter(f"{value!r} is not a run state; the states: {', '.join(_STATES)}")


@runs.command("ls")
@click.option("--flow", "flow_name", metavar="NAME", help="Only runs of this flow.")
@click.option(
    "--state",
    metavar="STATE",
    callback=_check_state,
    help=f"Only runs in this state: {', '.join(_STATES)} (any case).",
)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def runs_ls(flow_name: str | None, state: str | None, limit: int, as_json: bool) -> None:
    """List runs, newest first."""
    db = _database()
    if not db.exists():
        click.echo("[]" if as_json else f"no runs yet in {db}")
        return

    async def fetch(store: Store) -> list[FlowRunRecord]:
        await mark_crashed_runs(store)
        return await store.list_runs(name=flow_name, state=state, limit=limit)

    found = _read(fetch)
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
    "--state", metavar="STATE", callback=_check_state,
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
    db = _database()
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

    d = _read(fetch)
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


# -- flowcore cache --------------------------------------------------------------------------


@cli.group(cls=_Group)
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
    db = _database()
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

    entries, sizes = _read(fetch)
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
    db = _database()
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

    entries, files = _read(clear)
    plural = "" if files == 1 else "s"
    click.echo(f"removed {_entries(entries)} and {files} unreferenced result file{plural}")


def _entries(n: int) -> str:
    return f"{n} cache entr{'y' if n == 1 else 'ies'}"


# -- flowcore trace --------------------------------------------------------------------------


class _TraceGroup(_Group):
    """``flowcore trace RUN_ID ...`` is short for ``flowcore trace show RUN_ID ...``: any
    first word that is not a subcommand (run ids are hex: never one) goes to ``show``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["show", *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, "RUN_ID [--json] [--width N] [--limit N]")
        formatter.write_usage(
            ctx.command_path, "prune [--older-than DAYS] [--keep-runs N] [--yes]", prefix="   or: "
        )


@cli.group(cls=_TraceGroup)
def trace() -> None:
    """Draw a run's trace as a waterfall, or prune stored spans.

    \b
    flowcore trace 3f2a9c1b              (short for: flowcore trace show 3f2a9c1b)
    flowcore trace 3f2a9c1b --json
    flowcore trace prune --older-than 30
    """


@trace.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the spans as a JSON list (all).")
@click.option(
    "--width", type=click.IntRange(min=40), metavar="N",
    help="Width of the drawing in columns (default: the terminal's).",
)  # fmt: skip
@click.option(
    "--limit", type=click.IntRange(min=1), default=500, show_default=True, metavar="N",
    help="Spans to draw (in tree order).",
)  # fmt: skip
def trace_show(run_id: str, as_json: bool, width: int | None, limit: int) -> None:
    """Draw the trace of a run (an id prefix is enough) as a waterfall: one row per
    span, children under their parent, bars scaled to the trace's time.

    ↻ on a bar marks a failed attempt that was retried, ✗ a failure.
    """
    db = _database()
    if not db.exists():
        raise CliError(f"no run with id {run_id!r}: there are no runs yet in {db}")

    async def fetch(store: Store) -> tuple[FlowRunRecord, list[SpanRecord]]:
        await mark_crashed_runs(store)
        return await waterfall.load_trace(store, run_id)

    run, spans = _read(fetch)
    if run.trace_id is None:
        raise CliError(f"run {run.id[:8]} has no trace (it ran with tracing off)")
    if not spans:
        raise CliError(f"run {run.id[:8]} has no stored spans: its trace {run.trace_id} was pruned")
    rows = waterfall.tree_order(spans)
    if as_json:
        click.echo(render.to_json([waterfall.span_to_json(r.span) for r in rows]))
        return
    now = time.time_ns()
    console = Console(width=width) if width is not None else Console()
    console.print(waterfall.trace_header(run, spans, now=now), highlight=False)
    console.print()
    drawing = waterfall.waterfall(rows, width=console.width, limit=limit, spans=spans, now=now)
    console.print(drawing, highlight=False)


@trace.command("prune")
@click.option(
    "--older-than", type=click.FloatRange(min=0), metavar="DAYS",
    help="Delete spans that started more than DAYS days ago (0: all).",
)  # fmt: skip
@click.option(
    "--keep-runs", type=click.IntRange(min=0), metavar="N",
    help="Delete the spans of all but the newest N runs (a subflow's go with its run's).",
)  # fmt: skip
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def trace_prune(older_than: float | None, keep_runs: int | None, yes: bool) -> None:
    """Delete stored span rows: those older than DAYS, those not of the newest N runs,
    or with both options, those matching both.

    Task spans stay: a task run's span is kept as part of its task run record
    (it goes when the run is deleted), so `flowcore trace` still shows the task
    runs of a pruned trace. Prune acts on flow spans, and on spans made through an
    application's tracer provider (such as spans of user code inside tasks).

    \b
    flowcore trace prune --older-than 30
    flowcore trace prune --keep-runs 100 --yes
    """
    if older_than is None and keep_runs is None:
        raise CliError(
            "say which spans to delete: --older-than DAYS, --keep-runs N, or both "
            "(`flowcore trace prune --older-than 30`)"
        )
    parts = [] if older_than is None else [f"started more than {older_than:g} days ago"]
    parts += [] if keep_runs is None else [f"not of the newest {keep_runs} runs"]
    what = " and ".join(parts)
    db = _database()
    if not db.exists():
        click.echo(f"no spans in {db}; nothing to prune")
        return
    if not yes:
        click.confirm(f"delete the span rows {what} from {db}?", abort=True)
    before = None if older_than is None else time.time() - older_than * 86400
    deleted = _read(lambda store: store.prune_spans(before=before, keep_runs=keep_runs))
    plural = "" if deleted == 1 else "s"
    click.echo(f"deleted {deleted} span row{plural} {what} (task spans stay with their task runs)")


def main() -> NoReturn:
    """The ``flowcore`` console script."""
    cli.main(prog_name="flowcore")
    raise AssertionError("unreachable: click exits")  # pragma: no cover


@cli.group(cls=_Group)
def limits() -> None:
    """Inspect limits shared by processes (flowcore.limit(..., shared=True))."""


@limits.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def limits_ls(as_json: bool) -> None:
    """Shared limits: slots held and by whom, who waits, and how far a shared rate is booked.

    Only limits made with ``shared=True`` are in the store; the others live in
    one process each.
    """
    db = _database()
    if not db.exists():
        click.echo("[]" if as_json else f"no shared limits in use in {db}")
        return

    async def fetch(
        store: Store,
    ) -> tuple[list[tuple[str, str, str, int, float, int]], list[tuple[str, float]]]:
        leases = await store.list_leases()  # type: ignore[attr-defined]
        rates = await store.list_rates()  # type: ignore[attr-defined]
        return leases, rates

    leases, rates = _read(fetch)
    now = time.time()
    rows: dict[str, dict[str, Any]] = {}

    def row_for(name: str) -> dict[str, Any]:
        return rows.setdefault(
            name,
            {"name": name, "held": 0, "holders": set(), "waiting": 0, "waiters": set(),
             "expired": 0, "rate_booked_s": 0.0},
        )  # fmt: skip

    for name, _holder, host, pid, expires, waiting in leases:
        row = row_for(name)
        if expires <= now:
            row["expired"] += 1
        elif waiting:
            row["waiting"] += waiting  # a waiting row counts the slots it waits for
            row["waiters"].add(f"{host}:{pid}")
        else:
            row["held"] += 1
            row["holders"].add(f"{host}:{pid}")
    for name, tat in rates:
        if tat > now:
            row_for(name)["rate_booked_s"] = round(tat - now, 3)
    listed = [
        {**row, "holders": sorted(row["holders"]), "waiters": sorted(row["waiters"])}
        for row in sorted(rows.values(), key=lambda r: r["name"])
        if row["held"] or row["waiting"] or row["expired"] or row["rate_booked_s"]
    ]
    if as_json:
        click.echo(render.to_json(listed))
        return
    if not listed:
        click.echo(f"no shared limits in use in {db}")
        return
    table = Table(
        "limit", "slots held", "held by (host:pid)", "waiting", "waiters (host:pid)",
        "rate booked ahead", "expired leases",
    )  # fmt: skip
    for row in listed:
        table.add_row(
            row["name"],
            str(row["held"]),
            ", ".join(row["holders"]) or "-",
            str(row["waiting"]),
            ", ".join(row["waiters"]) or "-",
            f"{row['rate_booked_s']:.2f} s" if row["rate_booked_s"] else "-",
            str(row["expired"]),
        )
    Console().print(table)
