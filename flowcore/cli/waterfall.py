"""A run's trace on the command line: its spans, in tree order, drawn as a waterfall.

One row per span, children under their parent (indented by depth) and siblings
by start time; each row has the span's start offset from the trace's start, its
duration, status, attempts and a bar placed and sized in proportion to the
trace's whole time. Retries and exceptions show as markers on the bar (``↻``
where an attempt failed and was retried, ``✗`` where the span failed) and as a
note line under the row. Pure functions of the records, like :mod:`.render`; the
spans come from :mod:`flowcore.views.trace`. Span names, statuses and attributes
are user data: they are drawn :func:`~flowcore.views.format.visible`, as plain
``Text``, and measured after their control characters became escapes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich.text import Text

from ..records import FlowRunRecord, SpanRecord
from ..views.format import cut, format_local_time, format_ns, visible
from ..views.trace import Row
from .render import plain, state_text

__all__ = ["trace_header", "waterfall"]

STATUS_STYLES: Mapping[str, str] = {"OK": "green", "ERROR": "bold red", "UNSET": "dim"}
_BAR_STYLES: Mapping[str, str] = {"OK": "green", "ERROR": "red", "UNSET": "grey50"}
_RETRY_MARK = ("↻", "bold yellow")
_ERROR_MARK = ("✗", "bold red")
#: Left-aligned partial blocks by eighths of a cell (index 0: nothing).
_EIGHTHS = " ▏▎▍▌▋▊▉"
_GAP = "  "
_MIN_BAR = 12
_MAX_NAME = 48


# -- small pieces ------------------------------------------------------------------------


def _bounds(spans: Sequence[SpanRecord], now: int) -> tuple[int, int]:
    """The trace's start and end (ns); an unfinished span lasts until ``now``."""
    start = min(s.start for s in spans)
    end = max(max(s.end or now, s.start) for s in spans)
    return start, end


def _attempts(span: SpanRecord) -> int:
    value = span.attributes.get("flowcore.attempts")
    return value if isinstance(value, int) and not isinstance(value, bool) else 1


def _one_line(text: str) -> str:
    return visible(" ".join(text.split()))


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
    return cut(text, width, "…")


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
    flow = plain(run.name)
    if run.kind != "flow":
        flow.append(f" ({visible(run.kind)})", style="dim")
    if run.parent_run_id:
        flow.append(f" ← subflow of {visible(run.parent_run_id[:8])}", style="dim")
    rows: list[tuple[str, Text]] = [
        ("flow", flow),
        ("run", plain(run.id)),
        ("state", _state(run)),
        ("trace", plain(run.trace_id or spans[0].trace_id)),
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

    names = [("  " * r.depth) + visible(r.span.name) for r in shown]
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
        status = _cut(visible(span.status), w_status).ljust(w_status)  # a foreign writer's
        out.append(status, style=STATUS_STYLES.get(span.status))
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
