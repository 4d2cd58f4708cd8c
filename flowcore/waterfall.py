"""A run's trace on the command line: its spans read from the store, in tree order,
drawn as a waterfall with rich, or as JSON.

One row per span, children under their parent (indented by depth) and siblings
by start time; each row has the span's start offset from the trace's start, its
duration, status, attempts and a bar placed and sized in proportion to the
trace's whole time. Retries and exceptions show as markers on the bar (``↻``
where an attempt failed and was retried, ``✗`` where the span failed) and as a
note line under the row. Apart from :func:`load_trace`, pure functions of the
records, like :mod:`flowcore.render`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.text import Text

from .records import FlowRunRecord
from .render import format_duration, format_local_time, state_text
from .store import Store
from .telemetry import SpanRecord, read_trace

__all__ = [
    "Row",
    "format_ns",
    "iso_ns",
    "load_trace",
    "span_to_json",
    "trace_header",
    "tree_order",
    "waterfall",
]

STATUS_STYLES: Mapping[str, str] = {"OK": "green", "ERROR": "bold red", "UNSET": "dim"}
_BAR_STYLES: Mapping[str, str] = {"OK": "green", "ERROR": "red", "UNSET": "grey50"}
_RETRY_MARK = ("↻", "bold yellow")
_ERROR_MARK = ("✗", "bold red")
#: Left-aligned partial blocks by eighths of a cell (index 0: nothing).
_EIGHTHS = " ▏▎▍▌▋▊▉"
_GAP = "  "
_MIN_BAR = 12
_MAX_NAME = 48


# -- reading -------------------------------------------------------------------------------


async def load_trace(store: Store, run_id: str) -> tuple[FlowRunRecord, list[SpanRecord]]:
    """The run with this id (or prefix) and the persisted spans of its trace.

    A subflow shares the trace of the run that called it: for one, only its own
    part of the trace is kept (the spans of the subflow run and of the runs it
    started in turn), so ``flowcore trace <subflow>`` shows the subflow's subtree.
    """
    run = await store.get_run(run_id)
    spans = await read_trace(store, run.id)
    if run.parent_run_id is not None and spans:
        mine, pending = {run.id}, [run.id]
        while pending:
            for child in await store.child_runs(pending.pop()):
                if child.id not in mine:
                    mine.add(child.id)
                    pending.append(child.id)
        spans = [s for s in spans if s.run_id in mine]
    return run, spans


@dataclass(frozen=True)
class Row:
    """A span in tree order, with its depth (0: a root)."""

    span: SpanRecord
    depth: int


def tree_order(spans: Sequence[SpanRecord]) -> list[Row]:
    """Spans depth first, children under their parent, siblings by (start, name).

    A span whose parent is not among ``spans`` (pruned, not yet written because its
    run is still going, or outside a subflow's part of the trace) is a root.
    """
    by_id = {s.span_id: s for s in spans}
    children: dict[str | None, list[SpanRecord]] = {}
    for s in spans:
        parent = s.parent_id if s.parent_id in by_id and s.parent_id != s.span_id else None
        children.setdefault(parent, []).append(s)
    for kids in children.values():
        kids.sort(key=lambda s: (s.start, s.name))
    rows: list[Row] = []
    seen: set[str] = set()
    stack: list[tuple[SpanRecord, int]] = [(s, 0) for s in reversed(children.get(None, []))]
    while stack:
        span, depth = stack.pop()
        if span.span_id in seen:
            continue
        seen.add(span.span_id)
        rows.append(Row(span, depth))
        stack.extend((k, depth + 1) for k in reversed(children.get(span.span_id, [])))
    # Spans only reachable through a cycle of parent ids (a corrupt store): still shown.
    rows.extend(Row(s, 0) for s in sorted(spans, key=lambda s: s.start) if s.span_id not in seen)
    return rows


# -- small pieces ------------------------------------------------------------------------


def format_ns(ns: int) -> str:
    """A span's duration or offset, finer than a run's: ``840 µs``, ``12.3 ms``, ``2.41 s``."""
    ns = max(ns, 0)
    if ns < 1_000_000:
        return f"{ns / 1000:.0f} µs"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.1f} ms"
    if ns < 60_000_000_000:
        return f"{ns / 1e9:.2f} s"
    return format_duration(ns / 1e9)


def iso_ns(ns: int | None) -> str | None:
    """A time in ns since the epoch as ISO 8601 UTC, to the microsecond (exact, no float)."""
    if not ns:
        return None
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"


def _bounds(spans: Sequence[SpanRecord], now: int) -> tuple[int, int]:
    """The trace's start and end (ns); an unfinished span lasts until ``now``."""
    start = min(s.start for s in spans)
    end = max(max(s.end or now, s.start) for s in spans)
    return start, end


def _attempts(span: SpanRecord) -> int:
    value = span.attributes.get("flowcore.attempts")
    return value if isinstance(value, int) and not isinstance(value, bool) else 1


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _retry_reason(attributes: Mapping[str, Any]) -> str:
    note = attributes.get("flowcore.note")  # flowcore's own spans (from the task run history)
    if note:
        return str(note)
    kind, message = attributes.get("exception.type"), attributes.get("exception.message")
    return f"{kind}: {message}" if kind else ""


def _exception_text(attributes: Mapping[str, Any]) -> str:
    kind = str(attributes.get("exception.type") or "exception")
    message = attributes.get("exception.message")
    return f"{kind}: {message}" if message else kind


def _notes(span: SpanRecord) -> list[tuple[str, str]]:
    """What a row's note lines say: its retries, then its error (text, style)."""
    notes: list[tuple[str, str]] = []
    retries = [attrs for name, _, attrs in span.events if name == "retry"]
    if retries:
        reason = _retry_reason(retries[-1])
        last = (
            f" (last: {reason})" if len(retries) > 1 and reason else f": {reason}" if reason else ""
        )
        notes.append((f"↻ retried ×{len(retries)}{last}", "yellow"))
    exceptions = [attrs for name, _, attrs in span.events if name == "exception"]
    if span.status == "ERROR":
        message = span.status_message or (_exception_text(exceptions[-1]) if exceptions else "")
        notes.append((f"✗ {message or 'failed'}", "red"))
    elif exceptions:  # recorded by user code, and handled: the span did not fail
        notes.append((f"✗ exception recorded: {_exception_text(exceptions[-1])}", "dim red"))
    return notes


def _cut(text: str, width: int) -> str:
    if width <= 0:
        return ""
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


# -- the header ----------------------------------------------------------------------------


def _state(run: FlowRunRecord) -> Text:
    text = state_text(run.state)
    if not run.state.is_terminal:
        text.append("  (its flow span is stored when it ends)", style="dim")
    return text


def trace_header(
    run: FlowRunRecord, spans: Sequence[SpanRecord], *, now: int | None = None
) -> Text:
    """What ``flowcore trace`` prints above the waterfall: the run, its trace, a summary.
    ``now`` (ns; default: the clock's) is where unfinished spans end."""
    start, end = _bounds(spans, time.time_ns() if now is None else now)
    live = "…" if any(not s.end for s in spans) else ""
    errors = sum(1 for s in spans if s.status == "ERROR")
    retried = sum(1 for s in spans if any(name == "retry" for name, _, _ in s.events))
    summary = Text(str(len(spans)))
    if errors:
        summary.append(" · ")
        summary.append(f"{errors} error{'' if errors == 1 else 's'}", style="red")
    if retried:
        summary.append(" · ")
        summary.append(f"{retried} retried", style="yellow")
    flow = Text(run.name)
    if run.kind != "flow":
        flow.append(f" ({run.kind})", style="dim")
    if run.parent_run_id:
        flow.append(f" ← subflow of {run.parent_run_id[:8]}", style="dim")
    rows: list[tuple[str, Text]] = [
        ("flow", flow),
        ("run", Text(run.id)),
        ("state", _state(run)),
        ("trace", Text(run.trace_id or spans[0].trace_id)),
        ("started", Text(format_local_time(start / 1e9))),
        ("duration", Text(format_ns(end - start) + live)),
        ("spans", summary),
    ]
    # Plain lines rather than a rich grid: no padding spaces at line ends in copied text.
    header = Text()
    for i, (key, value) in enumerate(rows):
        header.append(f"{key:<10}", style="bold")
        header.append_text(value)
        if i < len(rows) - 1:
            header.append("\n")
    return header


# -- the waterfall -------------------------------------------------------------------------


def _bar(
    span: SpanRecord, origin: int, total: int, width: int, unfinished_end: int
) -> list[tuple[str, str]]:
    """The span's bar as cells (character, style), up to its last non-blank cell."""
    end = span.end if span.end else unfinished_end
    scale = width / total if total > 0 else 0.0
    x0 = (span.start - origin) * scale
    x1 = (end - origin) * scale
    first = min(max(int(x0), 0), width - 1)
    eighths = min(max(round((x1 - first) * 8), 1), (width - first) * 8)
    full, rest = divmod(eighths, 8)
    style = _BAR_STYLES.get(span.status, "grey50")
    if not span.end:
        style = "dim " + style  # still open (its run is going, or died without ending it)
    cells = [(" ", "")] * first + [("█", style)] * full
    if rest:
        cells.append((_EIGHTHS[rest], style))
    for name, at, _ in span.events:
        mark = _RETRY_MARK if name == "retry" else _ERROR_MARK if name == "exception" else None
        if mark is None or not at:
            continue
        col = min(max(int((at - origin) * scale), first), len(cells) - 1)
        cells[col] = mark
    return cells


def _cells_text(cells: Sequence[tuple[str, str]]) -> Text:
    text = Text()
    run, run_style = "", ""
    for char, style in cells:  # one span of text per run of cells in the same style
        if style != run_style and run:
            text.append(run, style=run_style or None)
            run = ""
        run += char
        run_style = style
    if run:
        text.append(run, style=run_style or None)
    return text


def _scale_cells(total: int, width: int) -> Text:
    """The timeline column's heading: ``0`` at the left, the trace's duration at the right."""
    right = format_ns(total)
    return Text("0" + " " * max(width - 1 - len(right), 1) + right, style="bold")


def waterfall(
    rows: Sequence[Row],
    *,
    width: int,
    limit: int | None = None,
    spans: Sequence[SpanRecord] | None = None,
    now: int | None = None,
) -> Text:
    """The waterfall of ``rows`` (from :func:`tree_order`) in ``width`` columns.

    The bars are scaled to the whole trace: that of ``spans`` when given (all of
    them, when ``rows`` is only a first page), else that of ``rows``. Shows the
    first ``limit`` rows. Unfinished spans (their run is still going) last until
    ``now`` (ns; default: the clock's).
    """
    now = time.time_ns() if now is None else now
    everything = [r.span for r in rows] if spans is None else list(spans)
    if not everything:
        return Text("no spans")
    origin, end = _bounds(everything, now)
    total = end - origin
    shown = list(rows if limit is None else rows[:limit])
    if not shown:
        return Text("no spans")

    names = [("  " * r.depth) + r.span.name for r in shown]
    starts = [f"+{format_ns(r.span.start - origin)}" for r in shown]
    durations = [format_ns((r.span.end or now) - r.span.start) for r in shown]
    durations = [d if r.span.end else d + "…" for r, d in zip(shown, durations, strict=True)]
    attempts = [_attempts(r.span) for r in shown]
    tries = [f"×{n}" if n > 1 else "" for n in attempts]

    w_start = max(len("start"), *map(len, starts))
    w_dur = max(len("duration"), *map(len, durations))
    w_status = len("status")
    w_tries = max(len("tries"), *map(len, tries))
    fixed = w_start + w_dur + w_status + w_tries + 5 * len(_GAP)
    w_name = min(max(len("span"), *map(len, names)), _MAX_NAME)
    # The bar gets what is left, but never so little that it says nothing: a narrow
    # terminal first takes room from long names.
    w_bar = width - fixed - w_name
    if w_bar < _MIN_BAR:
        w_name = max(len("span"), w_name - (_MIN_BAR - w_bar))
        w_bar = max(width - fixed - w_name, _MIN_BAR)

    out = Text(no_wrap=True, overflow="crop")
    out.append(
        _GAP.join(
            [
                "span".ljust(w_name),
                "start".rjust(w_start),
                "duration".rjust(w_dur),
                "status".ljust(w_status),
                "tries".rjust(w_tries),
                "",
            ]
        ),
        style="bold",
    )
    out.append_text(_scale_cells(total, w_bar))
    for row, name, start, duration, n_tries in zip(
        shown, names, starts, durations, tries, strict=True
    ):
        span = row.span
        out.append("\n")
        out.append(_cut(name, w_name).ljust(w_name), style="bold" if row.depth == 0 else None)
        out.append(_GAP + start.rjust(w_start) + _GAP + duration.rjust(w_dur) + _GAP)
        out.append(span.status.ljust(w_status), style=STATUS_STYLES.get(span.status))
        out.append(_GAP)
        out.append(n_tries.rjust(w_tries), style="yellow")
        out.append(_GAP)
        out.append_text(_cells_text(_bar(span, origin, total, w_bar, end)))
        indent = "  " * row.depth + "  "
        for note, style in _notes(span):
            out.append("\n")
            out.append(indent)
            out.append(_cut(_one_line(note), width - len(indent)), style=style)
    if len(rows) > len(shown):
        more = len(rows) - len(shown)
        out.append(f"\n{more} more spans not shown; --limit {len(rows)} shows all")
    return out


# -- JSON ------------------------------------------------------------------------------


def span_to_json(span: SpanRecord) -> dict[str, Any]:
    """A span as JSON-ready data: times as ISO 8601 UTC and in ns; an unfinished span
    has ``end``, ``end_ns`` and ``duration_ms`` ``null``."""
    finished = bool(span.end)
    return {
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "parent_id": span.parent_id,
        "name": span.name,
        "kind": span.kind,
        "run_id": span.run_id,
        "start": iso_ns(span.start),
        "end": iso_ns(span.end) if finished else None,
        "start_ns": span.start,
        "end_ns": span.end if finished else None,
        "duration_ms": max(span.end - span.start, 0) / 1e6 if finished else None,
        "status": span.status,
        "status_message": span.status_message,
        "attributes": span.attributes,
        "events": [
            {"name": name, "time": iso_ns(at), "time_ns": at, "attributes": attributes}
            for name, at, attributes in span.events
        ],
        "links": [{"trace_id": t, "span_id": s} for t, s in span.links],
        "scope": span.scope,
    }
