"""How runs look on the command line: rich renderables and JSON, from records.

Pure functions of the records (and of ``now``, for runs still in progress), so
the CLI only fetches and prints, and each view is testable without a store.
Colours are only styles here; rich's Console decides whether to emit them
(it does not when output is not a terminal, or when ``NO_COLOR`` is set).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from .encoding import decode_inputs, placeholder
from .records import FlowRunRecord, TaskRunRecord
from .states import State

__all__ = [
    "STATE_STYLES",
    "counts_text",
    "format_duration",
    "format_local_time",
    "iso_utc",
    "run_header",
    "run_to_json",
    "runs_table",
    "state_text",
    "task_run_to_json",
    "task_tree",
    "to_json",
]

STATE_STYLES: Mapping[State, str] = {
    State.PENDING: "dim",
    State.RUNNING: "blue",
    State.RETRYING: "yellow",
    State.COMPLETED: "green",
    State.CACHED: "cyan",
    State.FAILED: "bold red",
    State.TIMED_OUT: "red",
    State.CANCELLED: "magenta",
    State.UPSTREAM_FAILED: "dark_orange",
    State.CRASHED: "bold red",
}

#: Order of states in summaries: what needs attention first.
_SUMMARY_ORDER = (
    State.FAILED,
    State.CRASHED,
    State.TIMED_OUT,
    State.UPSTREAM_FAILED,
    State.CANCELLED,
    State.RETRYING,
    State.RUNNING,
    State.PENDING,
    State.COMPLETED,
    State.CACHED,
)


# -- small pieces ------------------------------------------------------------------------


def state_text(state: str) -> Text:
    """The state's name in its colour (an unknown state, from a newer writer, stays plain)."""
    try:
        style = STATE_STYLES[State(state)]
    except ValueError:
        style = ""
    return Text(str(state), style=style)


def format_duration(seconds: float | None) -> str:
    """A duration people read at a glance: ``0.4 ms``, ``120 ms``, ``3.21 s``, ``2 m 05 s``."""
    if seconds is None:
        return "-"
    s = max(seconds, 0.0)
    if s < 0.001:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 10:
        return f"{s:.2f} s"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        minutes, secs = divmod(int(s), 60)
        return f"{minutes} m {secs:02d} s"
    hours, rest = divmod(int(s), 3600)
    return f"{hours} h {rest // 60:02d} m"


def _live_duration(started: float | None, ended: float | None, now: float) -> str:
    """The duration, or for a run still going, how long it has run so far (with ``…``)."""
    if started is None:
        return "-"
    if ended is None:
        return format_duration(now - started) + "…"
    return format_duration(ended - started)


def format_local_time(ts: float | None) -> str:
    """A timestamp in the reader's local time, to the second."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def iso_utc(ts: float | None) -> str | None:
    """A timestamp as ISO 8601 in UTC (``2024-05-01T12:00:00.123456Z``), for JSON."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def _decode(data: bytes) -> Any:
    """Recorded inputs or parameters; a record that does not decode must not stop the view."""
    try:
        return decode_inputs(data)
    except msgspec.DecodeError as exc:
        return placeholder("undecodable", data, error=str(exc)[:200])


def _short_value(value: Any) -> str:
    """One recorded value for a one-line view: placeholders as ``<...>``, long reprs cut."""
    if isinstance(value, dict) and "__flowcore__" in value:
        kind = value["__flowcore__"]
        if kind == "future":
            return f"<result of {value.get('task')} #{value.get('seq')}>"
        return f"<{kind} {value.get('type', '')}>".replace(" >", ">")
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _parameters_text(data: bytes) -> str:
    params = _decode(data)
    if not isinstance(params, dict) or not params:
        return "-" if params == {} else _short_value(params)
    return ", ".join(f"{k}={_short_value(v)}" for k, v in params.items())


def counts_text(counts: Mapping[str, int]) -> Text:
    """``40 task runs: 2 Failed · 38 Completed``, states in colour, worst first."""
    total = sum(counts.values())
    out = Text(f"{total} task run{'' if total == 1 else 's'}")
    known = [s.value for s in _SUMMARY_ORDER]
    ordered = [s for s in known if counts.get(s)] + sorted(k for k in counts if k not in known)
    for i, state in enumerate(ordered):
        out.append(": " if i == 0 else " · ")
        out.append(f"{counts[state]} ")
        out.append_text(state_text(state))
    return out


# -- runs ----------------------------------------------------------------------------------


def _run_name(run: FlowRunRecord) -> Text:
    name = Text(run.name)
    if run.kind != "flow":
        name.append(f" ({run.kind})", style="dim")
    if run.parent_run_id:
        name.append(f" ← {run.parent_run_id[:8]}", style="dim")
    return name


def runs_table(runs: Sequence[FlowRunRecord], *, now: float | None = None) -> Table:
    """The ``runs ls`` table; a subflow shows the run it was called from (``← id``)."""
    now = time.time() if now is None else now
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("id", no_wrap=True)
    table.add_column("flow")
    table.add_column("state", no_wrap=True)
    table.add_column("started", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("tasks", justify="right")
    for run in runs:
        table.add_row(
            run.id[:8],
            _run_name(run),
            state_text(run.state),
            format_local_time(run.started or run.created),
            _live_duration(run.started, run.ended, now),
            str(run.task_count),
        )
    return table


def run_header(
    run: FlowRunRecord, counts: Mapping[str, int], *, now: float | None = None
) -> RenderableType:
    """What ``runs show`` prints above the tree: the run's facts, its error, its task counts."""
    now = time.time() if now is None else now
    rows: list[tuple[str, str | Text]] = [
        ("flow", _run_name(run)),
        ("id", run.id),
        ("state", state_text(run.state)),
        ("started", format_local_time(run.started or run.created)),
        ("duration", _live_duration(run.started, run.ended, now)),
        ("parameters", _parameters_text(run.parameters)),
    ]
    if run.parent_run_id:
        seq = "" if run.parent_task_seq is None else f" (inside task #{run.parent_task_seq})"
        rows.append(("subflow of", f"{run.parent_run_id[:8]}{seq}"))
    if run.host or run.pid:
        rows.append(("process", f"{run.host} pid {run.pid}"))
    if run.error_type:
        rows.append(("error", Text(f"{run.error_type}: {run.error_message}", style="red")))
    # Plain lines rather than a rich grid: no padding spaces at line ends in copied text.
    header = Text()
    for key, value in rows:
        header.append(f"{key:<12}", style="bold")
        header.append_text(value if isinstance(value, Text) else Text(value))
        header.append("\n")
    return Group(header, counts_text(counts))


def _task_label(tr: TaskRunRecord, now: float) -> Text:
    label = Text(tr.name, style="bold")
    label.append(f"  {tr.label}  ", style="dim")
    label.append_text(state_text(tr.state))
    if tr.attempts > 1:
        label.append(f"  {tr.attempts} attempts", style="yellow")
    label.append(f"  {_live_duration(tr.started, tr.ended, now)}", style="dim")
    if tr.upstream:
        label.append(f"  waited for: {', '.join(f'#{u}' for u in tr.upstream)}", style="dim")
    if tr.error_type and not tr.state.is_success:
        style = "red" if tr.state.is_terminal else "yellow"
        label.append(f"\n{tr.error_type}: {tr.error_message}", style=style)
    return label


def _subflow_label(run: FlowRunRecord, now: float) -> Text:
    label = Text("subflow ", style="dim")
    label.append(run.name, style="bold")
    label.append(f"  {run.id[:8]}  ", style="dim")
    label.append_text(state_text(run.state))
    label.append(f"  {_live_duration(run.started, run.ended, now)}", style="dim")
    label.append(f"  {run.task_count} task{'' if run.task_count == 1 else 's'}", style="dim")
    if run.error_type and not run.state.is_success:
        label.append(f"\n{run.error_type}: {run.error_message}", style="red")
    return label


def task_tree(
    run: FlowRunRecord,
    task_runs: Sequence[TaskRunRecord],
    subflows: Iterable[FlowRunRecord] = (),
    *,
    now: float | None = None,
) -> Tree:
    """Task runs nested by the task run each was called from, subflows among them.

    A task run whose parent is not among ``task_runs`` (it is on another page)
    hangs from the root with a note naming its parent.
    """
    now = time.time() if now is None else now
    root_label = Text(run.name, style="bold")
    root_label.append(f"  {run.id[:8]}  ", style="dim")
    root_label.append_text(state_text(run.state))
    root = Tree(root_label)
    # Children of each task run (None: the flow body), tasks and subflows in creation order.
    children: dict[int | None, list[tuple[float, int, TaskRunRecord | FlowRunRecord]]] = {}
    seqs = {tr.seq for tr in task_runs}
    for tr in task_runs:
        parent = tr.parent_seq if tr.parent_seq in seqs else None
        children.setdefault(parent, []).append((tr.created, tr.seq, tr))
    for sub in subflows:
        parent = sub.parent_task_seq if sub.parent_task_seq in seqs else None
        children.setdefault(parent, []).append((sub.created, -1, sub))

    def grow(node: Tree, key: int | None) -> None:
        for _, _, item in sorted(children.get(key, ()), key=lambda c: (c[0], c[1])):
            if isinstance(item, FlowRunRecord):
                node.add(_subflow_label(item, now))
                continue
            label = _task_label(item, now)
            if key is None and item.parent_seq is not None:
                label.append(f"  (called inside #{item.parent_seq})", style="dim")
            grow(node.add(label), item.seq)

    grow(root, None)
    return root


# -- JSON ------------------------------------------------------------------------------


def _history(history: Iterable[tuple[Any, ...]]) -> list[list[Any]]:
    return [[h[0], iso_utc(h[1]), *h[2:]] for h in history]


def run_to_json(run: FlowRunRecord, *, details: bool = False) -> dict[str, Any]:
    """A flow run as JSON-ready data; ``details`` adds the traceback and history."""
    out: dict[str, Any] = {
        "id": run.id,
        "name": run.name,
        "kind": run.kind,
        "state": str(run.state),
        "created": iso_utc(run.created),
        "started": iso_utc(run.started),
        "ended": iso_utc(run.ended),
        "duration": run.duration,
        "task_count": run.task_count,
        "parent_run_id": run.parent_run_id,
        "parent_task_seq": run.parent_task_seq,
        "parameters": _decode(run.parameters),
        "error_type": run.error_type,
        "error_message": run.error_message,
        "host": run.host,
        "pid": run.pid,
        "heartbeat": iso_utc(run.heartbeat),
    }
    if details:
        out["traceback"] = run.traceback
        out["history"] = _history(run.history)
    return out


def task_run_to_json(tr: TaskRunRecord) -> dict[str, Any]:
    """A task run as JSON-ready data, inputs decoded."""
    return {
        "name": tr.name,
        "seq": tr.seq,
        "label": tr.label,
        "state": str(tr.state),
        "attempts": tr.attempts,
        "created": iso_utc(tr.created),
        "started": iso_utc(tr.started),
        "ended": iso_utc(tr.ended),
        "duration": tr.duration,
        "parent_seq": tr.parent_seq,
        "upstream": tr.upstream,
        "inputs": _decode(tr.inputs),
        "error_type": tr.error_type,
        "error_message": tr.error_message,
        "traceback": tr.traceback,
        "history": _history(tr.history),
    }


def _json_fallback(value: Any) -> Any:
    # A flow's result may be anything: what JSON cannot hold is shown as inputs are recorded.
    return placeholder("unencodable", value, repr=repr(value)[:200])


def to_json(data: Any) -> str:
    """Indented JSON text; values JSON cannot hold become ``{"__flowcore__": ...}`` stand-ins."""
    return msgspec.json.format(
        msgspec.json.encode(data, enc_hook=_json_fallback), indent=2
    ).decode()
