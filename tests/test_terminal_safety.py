"""What the ``flowcore`` commands print cannot drive the terminal that shows it.

Task and flow names, parameters, inputs, results, error messages, tracebacks,
span names and attributes, limit names and host names are user data: a run can
put an OSC 52 clipboard write, a screen clear, a bell, a carriage return that
overwrites the line, bidi overrides or rich markup in any of them. Each command
is run here over a hostile run, and its output checked for raw control
characters (a newline only where a multi-line field is shown as multi-line)
and for markup that took effect.
"""

from __future__ import annotations

import io
import json
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner, Result
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

import flowcore
from flowcore.cli import cli, render
from flowcore.cli.run import _execute
from flowcore.entrypoints import load_flow
from flowcore.records import CacheEntry, SpanRecord, WriteBatch
from flowcore.views.format import short_value, to_json, visible

#: Every character that acts on a terminal instead of showing: C0 controls (the newline
#: checked apart), DEL, C1 controls (0x9b is a one-byte CSI), the line and paragraph
#: separators and the bidi controls. Written out here, independently of the code.
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")

#: An OSC 52 clipboard write, a screen clear, a bell, a carriage return, a bidi
#: override, rich markup, a C1 CSI and a DEL.
EVIL = "\x1b]52;c;ZXZpbA\x07\x1b[2J\a\r\u202e[bold red]pwn[/]\x9b\x7f"
#: A newline in a one-line field (a name, a parameter) must not start a line of its own.
FAKE = "\nFAKE"

FLOWS = f"""
import flowcore

EVIL = {EVIL!r}
FAKE = {FAKE!r}
attempts = {{"n": 0}}


class Loud:
    def __repr__(self) -> str:
        return "Loud(" + EVIL + ")\\nsecond line"


@flowcore.task(name="fetch" + EVIL + FAKE, retries=1)
async def fetch(x: str) -> str:
    attempts["n"] += 1
    if attempts["n"] == 1:
        raise ValueError("first" + EVIL)
    return x


@flowcore.task(name="cached" + EVIL + FAKE, cache=True)
async def cached(x: str) -> str:
    return x + EVIL


@flowcore.task(name="boom" + EVIL + FAKE)
async def boom() -> None:
    raise RuntimeError("boom" + EVIL)


@flowcore.flow(name="child" + EVIL + FAKE)
async def child() -> str:
    return await cached("c" + EVIL + FAKE)


@flowcore.flow(name="hostile" + EVIL + FAKE)
async def hostile(**params: str) -> None:
    await fetch(EVIL + FAKE)
    await cached(EVIL + FAKE)
    await child()
    future = boom.submit()
    try:
        await future
    except RuntimeError:
        pass
    raise RuntimeError("the flow broke" + EVIL)


@flowcore.flow(name="loud" + EVIL + FAKE)
async def loud() -> Loud:
    return Loud()
"""


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def assert_safe(text: str, *, markup: bool = True) -> None:
    """No raw control character in ``text``, no injected line, and (``markup``) the
    injected rich markup printed as the text it is."""
    found = sorted(set(RAW.findall(text)))
    assert not found, f"raw control characters {found!r} in:\n{text}"
    assert re.search(r"^[\s│├└─┃┆]*FAKE", text, re.MULTILINE) is None, text
    if markup:
        assert "[bold red]pwn[/]" in text, text


def assert_result_safe(result: Result, *, markup: bool = True) -> None:
    assert_safe(result.stdout + result.stderr, markup=markup)
    assert "Traceback" not in result.stdout + result.stderr


@pytest.fixture
def hostile_file(tmp_path: Path) -> Path:
    path = tmp_path / "hostile_flows.py"
    path.write_text(FLOWS)
    return path


@pytest.fixture
def hostile_run(hostile_file: Path, flowcore_home: Path) -> str:
    """The full id of a failed run full of escapes, with a hostile host, span and limit."""
    result = invoke(
        "run", f"{hostile_file}:hostile", "--no-progress", "--param", f"k{EVIL}=v{EVIL}{FAKE}"
    )
    assert result.exit_code == 1, result.output
    listed = json.loads(invoke("runs", "ls", "--json").stdout)
    (run,) = [r for r in listed if r["name"] == "hostile" + EVIL + FAKE]  # JSON: exact data
    run_id: str = run["id"]
    _write_hostile_records(flowcore_home, run_id)
    return run_id


def _write_hostile_records(home: Path, run_id: str) -> None:
    """A run recorded on a host with a hostile name, an SDK span of hostile names and
    attributes in the run's trace, and a shared limit of a hostile name held there."""

    async def write() -> None:
        async with flowcore.SQLiteStore(home / "flowcore.db") as store:
            run = await store.get_run(run_id)
            now = time.time()
            other = flowcore.FlowRunRecord(
                id="e" * 32, name="remote" + EVIL + FAKE, state=flowcore.State.FAILED,
                created=now, started=now, ended=now + 1, host="host" + EVIL + FAKE, pid=7,
                error_type="Err" + EVIL,
                error_message="message" + EVIL + "\nstate       Completed",
                history=[(flowcore.State.FAILED.value, now)],
            )  # fmt: skip
            assert run.trace_id is not None
            sdk = SpanRecord(
                trace_id=run.trace_id, span_id="f" * 16, parent_id=run.span_id,
                name="sdk" + EVIL + FAKE, start=int(now * 1e9), end=int(now * 1e9) + 1000,
                status="ERROR", status_message="status" + EVIL + FAKE,
                attributes={"flowcore.note": "note" + EVIL, "k" + EVIL: "v" + EVIL},
                events=[
                    ("retry", int(now * 1e9) + 10, {"exception.type": "T" + EVIL,
                                                   "exception.message": "m" + EVIL + FAKE}),
                    ("exception", int(now * 1e9) + 20, {"exception.type": "E" + EVIL}),
                ],
                run_id=run.id, scope="user" + EVIL,
            )  # fmt: skip
            odd = SpanRecord(
                trace_id=run.trace_id, span_id="d" * 16, parent_id="f" * 16, name="odd",
                start=int(now * 1e9), end=int(now * 1e9) + 10, status="OK" + EVIL + FAKE,
                run_id=run.id,
            )  # fmt: skip
            await store.write(WriteBatch(flow_runs=[other], spans=[sdk, odd]))

    anyio.run(write)
    with sqlite3.connect(home / "flowcore.db") as db:
        far = time.time() + 3600
        db.executemany(
            "INSERT INTO limit_leases (lease_id, name, holder, host, pid, expires, waiting,"
            " since) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                ("l1", "limit" + EVIL + FAKE, "h", "host" + EVIL + FAKE, 1, far, 0, 0.0),
                ("l2", "limit" + EVIL + FAKE, "w", "waiter" + EVIL + FAKE, 2, far, 3, 0.0),
            ],
        )
        db.execute("INSERT INTO limit_rates (name, tat) VALUES (?, ?)", ("rate" + EVIL, far))


# -- every command over the hostile run --------------------------------------------------------


def test_runs_ls(hostile_run: str) -> None:
    result = invoke("runs", "ls")
    assert result.exit_code == 0, result.output
    assert_result_safe(result)
    assert "hostile\\x1b]52;c;ZXZpbA\\x07\\x1b[2J\\x07\\r\\u202e[bold red]pwn[/]" in result.stdout


def test_runs_show(hostile_run: str) -> None:
    for args in ([], ["--results"], ["--state", "Failed"]):
        result = invoke("runs", "show", hostile_run, *args)
        assert result.exit_code == 0, result.output
        assert_result_safe(result)
    remote = invoke("runs", "show", "e" * 8)
    assert remote.exit_code == 0, remote.output
    assert_result_safe(remote)
    assert "host\\x1b]52" in remote.stdout and "message\\x1b]52" in remote.stdout
    lines = invoke("runs", "show", "e" * 8).stdout.splitlines()
    error_at = next(i for i, line in enumerate(lines) if line.startswith("error "))
    assert lines[error_at + 1] == " " * 12 + "state       Completed"  # not a row of its own
    with_results = invoke("runs", "show", hostile_run, "--results").stdout
    assert "\\x1b]52" in with_results.split("result: ", 1)[1]


def test_trace(hostile_run: str) -> None:
    result = invoke("trace", hostile_run)
    assert result.exit_code == 0, result.output
    assert_result_safe(result)
    assert "sdk\\x1b]52" in result.stdout and "status\\x1b]52" in result.stdout
    # A status of a foreign writer is cut to its column: the row keeps its bar.
    odd = next(line for line in result.stdout.splitlines() if line.lstrip().startswith("odd"))
    assert " OK\\x1… " in odd and odd.rstrip()[-1] in "█▏▎▍▌▋▊▉"


def test_trace_of_a_long_hostile_name_is_cut_after_the_escapes_are_made_visible(
    hostile_run: str,
) -> None:
    result = invoke("trace", hostile_run, "--width", "60")
    assert result.exit_code == 0, result.output
    assert_result_safe(result, markup=False)


def test_cache_ls(hostile_run: str) -> None:
    result = invoke("cache", "ls")
    assert result.exit_code == 0, result.output
    assert_result_safe(result)


def test_limits_ls(hostile_run: str) -> None:
    result = invoke("limits", "ls")
    assert result.exit_code == 0, result.output
    assert_result_safe(result, markup=False)  # the narrow columns wrap the names
    assert "waiter\\x1b]52" in result.stdout


def test_json_outputs_stay_exact_data_and_escape_what_a_terminal_acts_on(
    hostile_run: str,
) -> None:
    for args in (
        ["runs", "ls", "--json"],
        ["runs", "show", hostile_run, "--json", "--results"],
        ["trace", hostile_run, "--json"],
        ["cache", "ls", "--json"],
        ["limits", "ls", "--json"],
    ):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        assert_safe(result.stdout, markup=False)
        json.loads(result.stdout)
    shown = json.loads(invoke("runs", "show", hostile_run, "--json").stdout)
    assert shown["name"] == "hostile" + EVIL + FAKE
    assert shown["parameters"] == {"params": {f"k{EVIL}": f"v{EVIL}{FAKE}"}}
    assert {t["name"] for t in shown["task_runs"]} >= {"fetch" + EVIL + FAKE}
    limits = json.loads(invoke("limits", "ls", "--json").stdout)
    assert {row["name"] for row in limits} == {"limit" + EVIL + FAKE, "rate" + EVIL}


def test_run_error_lines(hostile_file: Path, hostile_run: str) -> None:
    failed = invoke("run", f"{hostile_file}:hostile", "--no-progress")
    assert failed.exit_code == 1
    assert_result_safe(failed)
    assert "the flow broke\\x1b]52" in failed.stderr
    traced = invoke("run", f"{hostile_file}:hostile", "--no-progress", "--traceback")
    assert traced.exit_code == 1
    assert_safe(traced.stdout + traced.stderr)
    assert "Traceback (most recent call last):\n" in traced.stderr  # still multi-line


def test_run_result_repr(hostile_file: Path) -> None:
    result = invoke("run", f"{hostile_file}:loud", "--no-progress")
    assert result.exit_code == 0, result.output
    assert_result_safe(result, markup=True)
    assert "Loud(\\x1b]52" in result.stdout
    assert ")\nsecond line\n" in result.stdout  # a multi-line repr stays multi-line


def test_resume_error_lines(hostile_run: str) -> None:
    result = invoke("resume", hostile_run, "--no-progress")
    assert result.exit_code == 1
    assert_result_safe(result)


def test_error_raised_while_importing_the_flow_file(tmp_path: Path) -> None:
    path = tmp_path / "bad_import.py"
    path.write_text(f"raise RuntimeError({EVIL!r})\n")
    for extra in ([], ["--traceback"]):
        result = invoke("run", f"{path}:f", *extra)
        assert result.exit_code == 1
        assert_safe(result.stdout + result.stderr)


def test_usage_errors_quoting_what_was_typed(hostile_run: str) -> None:
    assert_safe(invoke("runs", "ls", "--flow", EVIL).stdout, markup=False)
    for args in (["runs", "x" + EVIL], ["runs", "ls", "--state", EVIL], ["trace", "prune", EVIL]):
        result = invoke(*args)
        assert result.exit_code == 2
        assert_safe(result.stdout + result.stderr, markup=False)
        assert result.stderr.rstrip().splitlines()[-1].startswith("error: ")


def test_progress_bar_shows_a_hostile_flow_name_as_text(hostile_file: Path) -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system=None, width=200)
    flow = load_flow(f"{hostile_file}:loud")
    outcome = anyio.run(_execute, flow.name, flow, console)
    assert outcome.error is None
    drawn = out.getvalue()
    # The terminal's own cursor controls are the progress bar's; none come from the name.
    assert "\x1b]52" not in drawn and "\u202e" not in drawn and "\x9b" not in drawn
    assert "[bold red]pwn[/]" in drawn


# -- the shared helper -------------------------------------------------------------------------


def test_visible_shows_each_control_character_as_an_escape() -> None:
    safe = "plain text, ünïcode, 漢字, emoji 👍🏽, zero\u200bwidth, joined 👩\u200d💻"
    assert visible(safe) == visible(safe, multiline=True) == safe
    assert visible("\x1b]52;c;x\x07") == "\\x1b]52;c;x\\x07"
    assert visible("a\tb\rc\nd") == "a\\tb\\rc\\nd"
    assert visible("a\tb\rc\nd", multiline=True) == "a\\tb\\rc\nd"
    assert visible("\x00\x7f\x9b\x85") == "\\x00\\x7f\\x9b\\x85"
    assert visible("\u202eabc\u2066\u2028") == "\\u202eabc\\u2066\\u2028"
    assert visible("lone \udcff surrogate") == "lone \\udcff surrogate"


@given(st.text())
def test_visible_leaves_no_raw_control_character(text: str) -> None:
    one_line = visible(text)
    assert RAW.search(one_line) is None and "\n" not in one_line
    assert RAW.search(visible(text, multiline=True)) is None
    if RAW.search(text) is None and "\n" not in text:
        assert one_line == text  # text that is safe is shown as it is


@given(st.dictionaries(st.text(), st.lists(st.text(), max_size=3), max_size=3))
def test_json_holds_no_raw_control_character_and_the_exact_data(data: dict[str, Any]) -> None:
    text = to_json(data)
    assert RAW.search(text) is None
    assert json.loads(text) == data


def test_short_value_and_json_of_hostile_values() -> None:
    assert RAW.search(short_value({"__flowcore__": "future", "task": EVIL, "seq": 1})) is None
    assert RAW.search(short_value({"__flowcore__": EVIL, "type": EVIL})) is None
    text = to_json({"k" + EVIL: ["v" + EVIL, "\u2028\x85"]})
    assert RAW.search(text) is None
    assert json.loads(text) == {"k" + EVIL: ["v" + EVIL, "\u2028\x85"]}


def test_render_never_reads_user_text_as_markup() -> None:
    now = time.time()
    run = flowcore.FlowRunRecord(
        id="[red]" + "0" * 27, name="[bold red]x[/]", state=flowcore.State.COMPLETED,
        created=now, started=now, ended=now, host="[blink]h", pid=1,
    )  # fmt: skip
    entry = CacheEntry(
        key="[red]" + "a" * 59, task_name="[bold]t[/bold]", created=now, run_id=run.id, seq=0,
    )  # fmt: skip

    def shown(renderable: Any) -> str:
        console = Console(record=True, width=200, file=io.StringIO())
        console.print(renderable)
        return console.export_text()

    assert "[red]000" in shown(render.runs_table([run]))  # a table cell, not markup
    assert "[bold red]x[/]" in shown(render.runs_table([run]))
    assert "[blink]h pid 1" in shown(render.run_header(run, {}))
    assert "[bold red]x[/]  [red]000" in shown(render.task_tree(run, []))
    table = shown(render.cache_table([entry], {entry.key: 10}))
    assert "[red]aaaaaaa" in table and "[bold]t[/bold]" in table and "[red]000.0" in table
