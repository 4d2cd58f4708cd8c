"""``flowcore trace``: draw a run's trace as a waterfall, prune stored spans, and send
runs' spans to a collector."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import click
from rich.console import Console

from ..errors import ConfigurationError, RunNotFound
from ..records import FlowRunRecord, SpanRecord
from ..store import Store
from ..store.crash import mark_crashed_runs
from ..telemetry.shipper import ExportFailed, SpanShipper, from_environment
from ..views.format import to_json, visible
from ..views.trace import load_trace, span_to_json, subtree, tree_order
from . import waterfall
from .support import CliError, CliUsageError, Count, Days, Group, database, parse_at, read

# -- flowcore trace --------------------------------------------------------------------------

#: The widest drawing ``--width`` asks for: wider than any terminal, and still quick to lay
#: out (rich lays out every column of every row).
MAX_WIDTH = 1000


class _TraceGroup(Group):
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
        formatter.write_usage(
            ctx.command_path, "export [RUN_ID]... [--since TIME]", prefix="   or: "
        )


@click.group(cls=_TraceGroup)
def trace() -> None:
    """Draw a run's trace as a waterfall, prune stored spans, or send spans to a collector.

    \b
    flowcore trace 3f2a9c1b              (short for: flowcore trace show 3f2a9c1b)
    flowcore trace 3f2a9c1b --json
    flowcore trace prune --older-than 30
    flowcore trace export 3f2a9c1b       (to OTEL_EXPORTER_OTLP_ENDPOINT)
    """


@trace.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the spans as a JSON list (all).")
@click.option(
    "--width", type=Count(40, MAX_WIDTH), metavar="N",
    help=f"Width of the drawing in columns, 40 to {MAX_WIDTH} (default: the terminal's).",
)  # fmt: skip
@click.option(
    "--limit", type=Count(1), default=500, show_default=True, metavar="N",
    help="Spans to draw (in tree order).",
)  # fmt: skip
def trace_show(run_id: str, as_json: bool, width: int | None, limit: int) -> None:
    """Draw the trace of a run (an id prefix is enough) as a waterfall: one row per
    span, children under their parent, bars scaled to the trace's time.

    ↻ on a bar marks a failed attempt that was retried, ✗ a failure.
    """
    db = database()
    if not db.exists():
        raise CliError(f"no run with id {run_id!r}: there are no runs yet in {db}")

    async def fetch(store: Store) -> tuple[FlowRunRecord, list[SpanRecord]]:
        await mark_crashed_runs(store)
        return await load_trace(store, run_id)

    run, spans = read(fetch)
    if run.trace_id is None:
        raise CliError(f"run {run.id[:8]} has no trace (it ran with tracing off)")
    if not spans:
        raise CliError(f"run {run.id[:8]} has no stored spans: its trace {run.trace_id} was pruned")
    rows = tree_order(spans)
    if as_json:
        click.echo(to_json([span_to_json(r.span) for r in rows]))
        return
    now = time.time_ns()
    console = Console(width=width) if width is not None else Console()
    if console.width > MAX_WIDTH:  # $COLUMNS says so: drawing a million columns never ends
        console = Console(width=MAX_WIDTH)
    console.print(waterfall.trace_header(run, spans, now=now), highlight=False)
    console.print()
    drawing = waterfall.waterfall(rows, width=console.width, limit=limit, spans=spans, now=now)
    console.print(drawing, highlight=False)


@trace.command("prune")
@click.option(
    "--older-than", type=Days(), metavar="DAYS",
    help="Delete spans that started more than DAYS days ago (0: all).",
)  # fmt: skip
@click.option(
    "--keep-runs", type=Count(0), metavar="N",
    help="Delete the spans of all but the newest N runs (a subflow's go with its run's).",
)  # fmt: skip
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def trace_prune(older_than: float | None, keep_runs: int | None, yes: bool) -> None:
    """Delete stored span rows: those older than DAYS, those not of the newest N runs,
    or with both options, those matching both.

    Flow and task spans stay: a run's span is its record (it goes when the run
    is deleted: `flowcore runs prune`). Prune acts on span rows: spans made through
    an application's tracer provider (such as spans of user code inside tasks),
    flow spans that carried parameters, links or hook events, and the spans of runs
    recorded by older versions.

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
    db = database()
    if not db.exists():
        click.echo(f"no spans in {db}; nothing to prune")
        return
    if not yes:
        click.confirm(f"delete the span rows {what} from {db}?", abort=True)
    before = None if older_than is None else time.time() - older_than * 86400
    deleted = read(lambda store: store.prune_spans(before=before, keep_runs=keep_runs))
    plural = "" if deleted == 1 else "s"
    stay = "(flow and task spans stay with their runs)"
    click.echo(f"deleted {deleted} span row{plural} {what} {stay}")


# -- flowcore trace export ---------------------------------------------------------------------

#: The most runs ``--since`` sends in one command (the newest); narrow the time to send more.
MAX_EXPORT_RUNS = 100_000


@trace.command("export")
@click.argument("run_ids", nargs=-1, metavar="[RUN_ID]...")
@click.option(
    "--since", "since_text", metavar="TIME",
    help="Every run created since TIME: ISO 8601 (local time without a zone) or -30m, -2h, -1d.",
)  # fmt: skip
def trace_export(run_ids: tuple[str, ...], since_text: str | None) -> None:
    """Send the spans of runs (and their subflows) to the collector the standard
    OTEL_EXPORTER_OTLP_* variables name, now, whether they were shipped before or not.

    Engines ship the spans of ended runs on their own, and a collector that was down
    gets them once it is back; this sends them when you ask (runs from before the
    store knew about export, runs skipped after a long outage, a second collector).

    \b
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 flowcore trace export 3f2a9c1b
    flowcore trace export --since -1d
    """
    if not run_ids and since_text is None:
        raise CliUsageError("say which runs: RUN_ID..., --since TIME, or both")
    since = None if since_text is None else parse_at(since_text, datetime.now(UTC), "--since")
    try:
        sender = from_environment()
    except ConfigurationError as exc:
        raise CliError(str(exc)) from None
    if sender is None:
        raise CliError(
            "no collector is configured: set OTEL_EXPORTER_OTLP_ENDPOINT (for example "
            "http://127.0.0.1:4318) or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        )
    db = database()
    if not db.exists():
        raise CliError(f"there are no runs yet in {db}")

    async def send(store: Store) -> list[tuple[FlowRunRecord, int, int]]:
        runs: dict[str, FlowRunRecord] = {}
        for run_id in run_ids:
            try:
                run = await store.get_run(run_id)
            except RunNotFound as exc:
                raise CliError(str(exc)) from None
            # The run and its subflows (a subflow is a run of its own).
            runs.update((r.id, r) for r in await subtree(store, run))
        if since is not None:
            found = await store.list_runs(limit=MAX_EXPORT_RUNS)
            runs.update((r.id, r) for r in found if r.created >= since)
        shipper = SpanShipper(store, sender)
        sent: list[tuple[FlowRunRecord, int, int]] = []
        try:
            for run in sorted(runs.values(), key=lambda r: r.created):
                refused = shipper.spans_refused
                taken = await shipper.ship_run(run)
                sent.append((run, taken, shipper.spans_refused - refused))
                await store.end_span_exports([run.id], shipper.holder, shipped=True)
        except ExportFailed as exc:
            done = f" after {len(sent)} of {len(runs)} runs" if sent else ""
            raise CliError(
                f"the collector {sender.target} did not take the spans{done} ({exc}); "
                "the runs not sent stay in the store: run this again once it is up"
            ) from None
        finally:
            sender.close()
        return sent

    sent = read(send)
    for run, count, refused in sent:
        said = f" ({refused} refused by the collector)" if refused else ""
        click.echo(
            visible(f"{run.id[:8]} {run.name}: {count} span{'' if count == 1 else 's'}{said}")
        )
    total = sum(count for _, count, _ in sent)
    refused = sum(count for _, _, count in sent)
    click.echo(
        f"sent {total} spans of {len(sent)} run{'' if len(sent) == 1 else 's'} to {sender.target}"
        + (f"; it refused {refused} (see the warnings above)" if refused else "")
    )
