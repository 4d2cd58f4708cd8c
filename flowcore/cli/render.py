"""How runs look on the command line: rich renderables, from records.

Pure functions of the records (and of ``now``, for runs still in progress), so
the CLI only fetches and prints, and each view is testable without a store. The
JSON views and the text formats are shared with the web UI, in :mod:`flowcore.views`.
Colours are only styles here; rich's Console decides whether to emit them
(it does not when output is not a terminal, or when ``NO_COLOR`` is set).

What a run recorded is user data: every text from a record goes through
:func:`~flowcore.views.format.visible` (control characters shown as escapes) into
a rich ``Text``, never a markup string, so a name like ``[bold]x`` prints as it is
and an escape sequence in an error message cannot act on the terminal.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from ..records import CacheEntry, FlowRunRecord, LogRecord, TaskRunRecord, task_run_label
from ..states import State
from ..views.cache import produced_by
from ..views.format import (
    cut,
    decode_recorded,
    format_duration,
    format_local_time,
    format_size,
    safe_repr,
    short_value,
    visible,
)
from ..views.results import StoredResult

__all__ = [
    "STATE_STYLES",
    "cache_table",
    "counts_text",
    "failed_hooks_text",
    "plain",
    "result_text",
    "run_header",
    "runs_table",
    "state_text",
    "task_tree",
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


def plain(text: str, style: str = "", *, multiline: bool = False) -> Text:
    """Recorded text as rich shows it safely: control characters :func:`visible`, no markup."""
    return Text(visible(text, multiline=multiline), style=style)


def state_text(state: str) -> Text:
    """The state's name in its colour (an unknown state, from a newer writer, stays plain)."""
    try:
        style = STATE_STYLES[State(state)]
    except ValueError:
        style = ""
    return plain(str(state), style)


def _live_duration(started: float | None, ended: float | None, now: float) -> str:
    """The duration, or for a run still going, how long it has run so far (with ``…``)."""
    if started is None:
        return "-"
    if ended is None:
        return format_duration(now - started) + "…"
    return format_duration(ended - started)


def _source_label(cached_from: str) -> str:
    """``"<run id>.<seq>"`` as people see task runs (``3f2a9c1b.4``); odd values as given."""
    run_id, _, seq = cached_from.rpartition(".")
    label = task_run_label(run_id, int(seq)) if run_id and seq.isdecimal() else cached_from
    return visible(label)


def _replayed(tr: TaskRunRecord) -> bool:
    """Whether a resumed run took this task run's value from the run it resumed."""
    if not tr.history:
        return False
    last = tr.history[-1]
    return len(last) > 2 and isinstance(last[2], str) and last[2].startswith("replayed")


def _parameters_text(data: bytes) -> str:
    params = decode_recorded(data)
    if not isinstance(params, dict) or not params:
        return "-" if params == {} else short_value(params)
    return ", ".join(f"{visible(str(k))}={short_value(v)}" for k, v in params.items())


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
    name = plain(run.name)
    if run.kind != "flow":
        name.append(f" ({visible(run.kind)})", style="dim")
    if run.parent_run_id:
        name.append(f" ← {visible(run.parent_run_id[:8])}", style="dim")
    return name


def _error(error_type: str | None, message: str | None, style: str, indent: int = 0) -> Text:
    """``Type: message``; a multi-line message stays on its lines, each one safe, and
    indented by ``indent`` (so none of them passes for a line of the view around it)."""
    text = visible(f"{error_type}: {message}", multiline=True)
    return Text(text.replace("\n", "\n" + " " * indent) if indent else text, style=style)


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
            plain(run.id[:8]),
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
        ("id", plain(run.id)),
        ("state", state_text(run.state)),
        ("started", format_local_time(run.started or run.created)),
        ("duration", _live_duration(run.started, run.ended, now)),
        ("parameters", _parameters_text(run.parameters)),
    ]
    if run.parent_run_id:
        seq = "" if run.parent_task_seq is None else f" (inside task #{run.parent_task_seq})"
        rows.append(("subflow of", plain(f"{run.parent_run_id[:8]}{seq}")))
    if run.resumed_from:
        rows.append(("resumed", plain(f"from {run.resumed_from[:8]}")))
    if run.host or run.pid:
        rows.append(("process", plain(f"{run.host} pid {run.pid}")))
    if run.error_type:
        rows.append(("error", _error(run.error_type, run.error_message, "red", _KEY_WIDTH)))
    # Plain lines rather than a rich grid: no padding spaces at line ends in copied text.
    header = Text()
    for key, value in rows:
        header.append(f"{key:<{_KEY_WIDTH}}", style="bold")
        header.append_text(value if isinstance(value, Text) else Text(value))
        header.append("\n")
    return Group(header, counts_text(counts))


_KEY_WIDTH = 12  # of the run header's keys


def failed_hooks_text(lines: Sequence[LogRecord], total: int, run_id: str) -> Text:
    """``failed hooks (N):`` then one line per failed hook: when, where (``flow``, or the
    task run), and the first line of what the run's log says (the traceback is in
    ``flowcore runs logs``), each made :func:`visible`."""
    out = Text(f"failed hooks ({total}):", style="bold red")
    for line in lines:
        where = "flow" if line.seq is None else f"{line.task or 'task'}#{line.seq}"
        first = line.message.split("\n", 1)[0].removeprefix("flowcore: ")
        out.append("\n  ")
        out.append(format_local_time(line.time), style="dim")
        out.append(f" {visible(where)} ", style="dim")
        out.append_text(plain(first, "red"))
    if total > len(lines):
        more = f"{total - len(lines)} more: flowcore runs logs {run_id[:8]} --level ERROR"
        out.append("\n  " + visible(more), "dim")
    return out


def _task_label(tr: TaskRunRecord, now: float, result: StoredResult | None) -> Text:
    label = plain(tr.name, "bold")
    if tr.run_name:
        label.append(" ")
        label.append_text(plain(tr.run_name))
    label.append(f"  {visible(tr.label)}  ", style="dim")
    label.append_text(state_text(tr.state))
    if tr.state is State.CACHED and tr.cached_from:
        label.append(f"  from {_source_label(tr.cached_from)}", style="cyan")
    elif _replayed(tr):
        label.append("  replayed", style="cyan")
    if tr.attempts > 1:
        label.append(f"  {tr.attempts} attempts", style="yellow")
    label.append(f"  {_live_duration(tr.started, tr.ended, now)}", style="dim")
    if tr.upstream:
        label.append(f"  waited for: {', '.join(f'#{u}' for u in tr.upstream)}", style="dim")
    if tr.error_type and not tr.state.is_success:
        style = "red" if tr.state.is_terminal else "yellow"
        label.append("\n")
        label.append_text(_error(tr.error_type, tr.error_message, style))
    if result is not None and (result.status != "not_stored" or tr.state.is_success):
        # A failed task run's missing result is no news: its error is shown above.
        label.append("\nresult: ", style="dim")
        label.append_text(result_text(result))
    return label


def result_text(result: StoredResult, *, limit: int = 60) -> Text:
    """A stored result on one line: a cut repr, or ``<...>`` saying why there is none."""
    if result.status == "ok":
        return Text(cut(visible(safe_repr(result.value)), limit))
    if result.status == "pickle":
        return Text("<pickle, not loaded; pass --allow-pickle>", style="yellow")
    if result.status == "unreadable":
        return plain(f"<unreadable: {result.reason}>", "red")
    return Text("<not stored>", style="dim")


def _subflow_label(run: FlowRunRecord, now: float) -> Text:
    label = Text("subflow ", style="dim")
    label.append(visible(run.name), style="bold")
    label.append(f"  {visible(run.id[:8])}  ", style="dim")
    label.append_text(state_text(run.state))
    label.append(f"  {_live_duration(run.started, run.ended, now)}", style="dim")
    label.append(f"  {run.task_count} task{'' if run.task_count == 1 else 's'}", style="dim")
    if run.error_type and not run.state.is_success:
        label.append("\n")
        label.append_text(_error(run.error_type, run.error_message, "red"))
    return label


def task_tree(
    run: FlowRunRecord,
    task_runs: Sequence[TaskRunRecord],
    subflows: Iterable[FlowRunRecord] = (),
    *,
    now: float | None = None,
    results: Mapping[int, StoredResult] | None = None,
) -> Tree:
    """Task runs nested by the task run each was called from, subflows among them.

    A task run whose parent is not among ``task_runs`` (it is on another page)
    hangs from the root with a note naming its parent. ``results``, by ``seq``,
    adds each task run's stored result under it.
    """
    now = time.time() if now is None else now
    root_label = plain(run.name, "bold")
    root_label.append(f"  {visible(run.id[:8])}  ", style="dim")
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
            label = _task_label(item, now, None if results is None else results.get(item.seq))
            if key is None and item.parent_seq is not None:
                label.append(f"  (called inside #{item.parent_seq})", style="dim")
            grow(node.add(label), item.seq)

    grow(root, None)
    return root


# -- cache ------------------------------------------------------------------------------


def _expires_text(entry: CacheEntry, now: float) -> Text:
    if entry.expires is None:
        return Text("never", style="dim")
    if entry.expired(now):
        return Text("expired", style="yellow")
    return Text(format_local_time(entry.expires))


def cache_table(
    entries: Sequence[CacheEntry], sizes: Mapping[str, int | None], *, now: float | None = None
) -> Table:
    """The ``cache ls`` table. ``sizes``: the stored result's size by key, ``None`` when
    its file is missing (the entry then misses, and is computed again)."""
    now = time.time() if now is None else now
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("key", no_wrap=True)
    table.add_column("task")
    table.add_column("created", no_wrap=True)
    table.add_column("expires", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("produced by", no_wrap=True)
    for entry in entries:
        size = sizes.get(entry.key)
        table.add_row(
            plain(entry.key[:12]),
            plain(entry.task_name),
            format_local_time(entry.created),
            _expires_text(entry, now),
            Text("file missing", style="red") if size is None else format_size(size),
            plain(produced_by(entry)),
        )
    return table
