"""The ``flowcore`` command: running flows from files, listing runs, showing a run's tree."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner, Result
from rich.console import Console

import flowcore
from flowcore._process import MACHINE
from flowcore.cli import cli
from flowcore.cli.run import _execute
from flowcore.entrypoints import load_flow
from flowcore.ids import HOST
from flowcore.records import WriteBatch
from flowcore.store.files import FileBlobs

# One file of flows shared by most tests: a retried task, a task called inside a
# task, a submitted future passed to another task, a subflow, a failure.
FLOWS = """
import flowcore

attempts = {"n": 0}

@flowcore.task(retries=2)
async def flaky(x: int) -> int:
    attempts["n"] += 1
    if attempts["n"] == 1:
        raise ValueError("first attempt fails")
    return x

@flowcore.task
async def inner(x: int) -> int:
    return x + 1

@flowcore.task
async def outer(x: int) -> int:
    return await inner(x) * 2

@flowcore.task
def add(a: int, b: int) -> int:
    return a + b

@flowcore.flow
async def child(k: int) -> int:
    return await inner(k)

@flowcore.flow
async def pipeline(n: int, ratio: float = 1.0, tags: list[str] = [], extra=None) -> dict:
    a = await flaky(n)
    b = await outer(n)
    total = await add(add.submit(a, b), 1)
    sub = await child(3)
    return {"n": n, "n_type": type(n).__name__, "ratio": ratio, "tags": tags,
            "extra": extra, "total": total, "sub": sub}

@flowcore.flow
async def many(count: int) -> int:
    return sum(await inner.map(range(count)))

@flowcore.task
async def picky(x: int) -> int:
    if x % 5 == 0:
        raise ValueError(f"no {x}")
    return x

@flowcore.flow
async def some_fail(count: int) -> int:
    futures = picky.map(range(count))
    for future in futures:
        await future.wait()
    return sum(future.exception() is None for future in futures)

@flowcore.flow
async def broken() -> None:
    await inner(1)
    raise RuntimeError("the flow broke")

not_a_flow = 42
"""


@pytest.fixture
def flows_file(tmp_path: Path) -> Path:
    path = tmp_path / "flows.py"
    path.write_text(FLOWS)
    return path


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def run_id_from(result: Result) -> str:
    match = re.search(r"flowcore runs show ([0-9a-f]{8})", result.stderr)
    assert match, result.output
    return match.group(1)


@pytest.fixture
def pipeline_run(flows_file: Path) -> str:
    """The full id of one recorded run of ``pipeline``."""
    result = invoke("run", f"{flows_file}:pipeline", "--param", "n=4")
    assert result.exit_code == 0, result.output
    listed = json.loads(invoke("runs", "ls", "--flow", "pipeline", "--json").stdout)
    assert len(listed) == 1
    full_id: str = listed[0]["id"]
    assert full_id.startswith(run_id_from(result))
    return full_id


# -- flowcore run ----------------------------------------------------------------------------


def test_run_converts_params_by_annotation(flows_file: Path) -> None:
    result = invoke(
        "run", f"{flows_file}:pipeline", "--json",
        "-p", "n=7", "-p", "ratio=0.5", "-p", 'tags=["a", "b"]', "-p", 'extra={"k": [1]}',
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["n"] == 7 and out["n_type"] == "int"
    assert out["ratio"] == 0.5 and out["tags"] == ["a", "b"]
    assert out["extra"] == {"k": [1]}  # unannotated: decoded as JSON
    assert out["total"] == 7 + 16 + 1
    assert "Completed" in result.stderr and "flowcore runs show" in result.stderr


def test_run_prints_repr_and_unannotated_text_stays_a_string(flows_file: Path) -> None:
    result = invoke("run", f"{flows_file}:pipeline", "-p", "n=1", "-p", "extra=plain words")
    assert result.exit_code == 0, result.output
    assert "'extra': 'plain words'" in result.stdout
    assert result.stdout.startswith("{'n': 1, 'n_type': 'int'")


def test_bad_param_value_names_param_and_type(flows_file: Path) -> None:
    result = invoke("run", f"{flows_file}:pipeline", "--param", "n=lots")
    assert result.exit_code == 1
    assert "error: flow 'pipeline' was given 1 invalid parameter:" in result.stderr
    assert "n: Expected `int`, got `str` - at `$.n` (given 'lots')" in result.stderr
    assert "Traceback" not in result.output
    # The refused run is recorded Failed, with the parameters as given.
    run = json.loads(invoke("runs", "show", run_id_from(result), "--json").stdout)
    assert run["state"] == "Failed" and run["error_type"] == "flowcore.ParameterError"
    assert run["parameters"]["n"] == "lots"


def test_unknown_param_lists_the_flow_parameters(flows_file: Path) -> None:
    result = invoke("run", f"{flows_file}:pipeline", "-p", "n=1", "-p", "pages=3")
    assert result.exit_code == 1
    assert "pages: unknown parameter (given 3)" in result.stderr
    assert "pipeline(n: int, ratio: float = 1.0" in result.stderr


def test_missing_required_param_says_which(flows_file: Path) -> None:
    result = invoke("run", f"{flows_file}:pipeline")
    assert result.exit_code == 1
    assert "n: missing (it has no default; expected `int`)" in result.stderr


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    result = invoke("run", f"{tmp_path}/nowhere.py:flow")
    assert result.exit_code == 1
    assert f"no such file: {tmp_path}/nowhere.py" in result.stderr


def test_missing_flow_name_lists_the_flows_in_the_file(flows_file: Path) -> None:
    result = invoke("run", f"{flows_file}:pipelin")
    assert result.exit_code == 1
    assert "has no flow named 'pipelin'" in result.stderr
    assert "child, pipeline, many, some_fail, broken" in result.stderr


def test_attribute_that_is_not_a_flow_says_to_decorate_it(flows_file: Path) -> None:
    for name, what in [("not_a_flow", "of type int"), ("inner", "a task")]:
        result = invoke("run", f"{flows_file}:{name}")
        assert result.exit_code == 1
        assert what in result.stderr and "decorate it with @flowcore.flow" in result.stderr


def test_loader_puts_the_files_folder_on_sys_path_for_sibling_imports(tmp_path: Path) -> None:
    (tmp_path / "helpers_for_cli_test.py").write_text("FACTOR = 3\n")
    (tmp_path / "uses_helper.py").write_text(
        textwrap.dedent(
            """
            import flowcore
            from helpers_for_cli_test import FACTOR

            @flowcore.flow
            async def scaled(x: int) -> int:
                return x * FACTOR
            """
        )
    )
    flow = load_flow(f"{tmp_path}/uses_helper.py")  # the only flow: the name may be left out
    assert flow.name == "scaled"
    result = invoke("run", f"{tmp_path}/uses_helper.py:scaled", "-p", "x=5")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "15"


def test_string_annotations_are_resolved_for_conversion(tmp_path: Path) -> None:
    (tmp_path / "lazy.py").write_text(
        textwrap.dedent(
            """
            from __future__ import annotations

            import datetime

            import flowcore

            @flowcore.flow
            async def report(day: datetime.date, dry_run: bool = False) -> str:
                return f"{day.isoformat()} {type(day).__name__} {dry_run!r}"
            """
        )
    )
    result = invoke("run", f"{tmp_path}/lazy.py:report", "-p", "day=2024-02-29", "-p", "dry_run=1")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "'2024-02-29 date True'"
    bad = invoke("run", f"{tmp_path}/lazy.py:report", "-p", "day=someday")
    assert bad.exit_code == 1
    assert "day: Invalid RFC3339 encoded date - at `$.day` (expected `date`; given 'someday')" in (
        bad.stderr
    )


def test_error_while_importing_the_file_is_reported_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text("import flowcore\n\nx = 1 / 0\n")
    result = invoke("run", f"{tmp_path}/bad.py:f")
    assert result.exit_code == 1
    assert "failed at line 3: ZeroDivisionError" in result.stderr
    assert "Traceback" not in result.output


def test_failing_flow_exits_1_with_error_and_inspect_hint(flows_file: Path) -> None:
    result = invoke("run", f"{flows_file}:broken")
    assert result.exit_code == 1
    assert "error: flow 'broken' failed: RuntimeError: the flow broke" in result.stderr
    assert "Traceback" not in result.output
    run_id = run_id_from(result)
    assert run_id in invoke("runs", "ls", "--state", "Failed").stdout

    with_tb = invoke("run", f"{flows_file}:broken", "--traceback")
    assert with_tb.exit_code == 1
    assert "Traceback (most recent call last)" in with_tb.stderr
    assert 'raise RuntimeError("the flow broke")' in with_tb.stderr


def test_progress_poller_draws_engine_statistics(flows_file: Path) -> None:
    # CliRunner's stderr is no terminal (so no progress there): drive it with a forced one.
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    flow = load_flow(f"{flows_file}:many")
    outcome = anyio.run(_execute, flow.name, lambda: flow(count=5), console)
    assert outcome.error is None and outcome.result == sum(range(1, 6))
    assert outcome.run is not None and outcome.run.state is flowcore.State.COMPLETED
    assert "started" in out.getvalue() and "completed" in out.getvalue()


# -- flowcore runs ls ------------------------------------------------------------------------


def test_runs_ls_before_any_run_creates_nothing(flowcore_home: Path) -> None:
    result = invoke("runs", "ls")
    assert result.exit_code == 0
    assert f"no runs yet in {flowcore_home / 'flowcore.db'}" in result.stdout
    assert not (flowcore_home / "flowcore.db").exists()
    assert invoke("runs", "ls", "--json").stdout.strip() == "[]"


def test_runs_ls_table_and_json(pipeline_run: str, flows_file: Path) -> None:
    assert invoke("run", f"{flows_file}:broken").exit_code == 1
    table = invoke("runs", "ls")
    assert table.exit_code == 0
    for text in (pipeline_run[:8], "pipeline", "Completed", "broken", "Failed", "child"):
        assert text in table.stdout
    listed = json.loads(invoke("runs", "ls", "--json").stdout)
    assert [r["name"] for r in listed] == ["broken", "child", "pipeline"]  # newest first
    run = listed[2]
    for key in (
        "id", "name", "kind", "state", "created", "started", "ended", "duration",
        "task_count", "parent_run_id", "error_type", "error_message",
    ):  # fmt: skip
        assert key in run
    assert run["id"] == pipeline_run and run["kind"] == "flow" and run["task_count"] == 5
    assert run["started"].endswith("Z") and run["duration"] > 0
    assert run["parameters"] == {"n": 4, "ratio": 1.0, "tags": [], "extra": None}
    assert listed[1]["parent_run_id"] == pipeline_run
    assert listed[0]["error_type"] == "RuntimeError"
    assert listed[0]["error_message"] == "the flow broke"


def test_runs_ls_filters_by_flow_and_state(pipeline_run: str, flows_file: Path) -> None:
    assert invoke("run", f"{flows_file}:broken").exit_code == 1
    by_flow = json.loads(invoke("runs", "ls", "--flow", "broken", "--json").stdout)
    assert [r["name"] for r in by_flow] == ["broken"]
    by_state = json.loads(invoke("runs", "ls", "--state", "completed", "--json").stdout)
    assert sorted(r["name"] for r in by_state) == ["child", "pipeline"]
    none = invoke("runs", "ls", "--flow", "broken", "--state", "Completed")
    assert "no runs with flow=broken state=Completed" in none.stdout
    limited = json.loads(invoke("runs", "ls", "--limit", "1", "--json").stdout)
    assert len(limited) == 1


def test_runs_ls_rejects_an_unknown_state_listing_the_states(pipeline_run: str) -> None:
    result = invoke("runs", "ls", "--state", "Done")
    assert result.exit_code == 2
    assert "'Done' is not a run state" in result.stderr
    assert "Completed, Cached, Failed, TimedOut" in result.stderr


# -- flowcore runs show ---------------------------------------------------------------------


def test_runs_show_tree(pipeline_run: str) -> None:
    result = invoke("runs", "show", pipeline_run)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "pipeline" in text and pipeline_run in text
    assert "n=4, ratio=1.0" in text
    assert "5 task runs: 5 Completed" in text
    for name in ("flaky", "outer", "inner", "add", "subflow child"):
        assert name in text
    assert f"{pipeline_run[:8]}.0" in text and "2 attempts" in text
    assert "waited for: #3" in text
    # inner (seq 2) was called inside outer: it is drawn one level deeper.
    outer_line = next(line for line in text.splitlines() if "outer" in line)
    inner_line = next(line for line in text.splitlines() if f"inner  {pipeline_run[:8]}" in line)
    assert inner_line.index("inner") > outer_line.index("outer")


def test_runs_show_json(pipeline_run: str) -> None:
    result = invoke("runs", "show", pipeline_run, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["id"] == pipeline_run and data["state"] == "Completed"
    assert data["counts"] == {"Completed": 5}
    tasks = {t["seq"]: t for t in data["task_runs"]}
    assert [tasks[s]["name"] for s in sorted(tasks)] == ["flaky", "outer", "inner", "add", "add"]
    for t in tasks.values():
        for key in (
            "name", "seq", "label", "state", "attempts", "created", "started", "ended",
            "duration", "parent_seq", "upstream", "inputs", "error_type", "error_message",
            "traceback", "history",
        ):  # fmt: skip
            assert key in t
    flaky = tasks[0]
    assert flaky["attempts"] == 2 and flaky["label"] == f"{pipeline_run[:8]}.0"
    assert [h[0] for h in flaky["history"]] == ["Running", "Retrying", "Running", "Completed"]
    assert "first attempt fails" in flaky["history"][1][2]
    assert tasks[2]["parent_seq"] == 1  # inner called inside outer
    assert tasks[3]["parent_seq"] is None
    assert tasks[4]["upstream"] == [3]  # add(add.submit(...), 1)
    assert tasks[4]["inputs"]["a"] == {"__flowcore__": "future", "task": "add", "seq": 3}
    assert [s["name"] for s in data["subflows"]] == ["child"]


def test_runs_show_accepts_an_id_prefix(pipeline_run: str) -> None:
    result = invoke("runs", "show", pipeline_run[:6], "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["id"] == pipeline_run


#: Numbers past what an option takes: not whole, negative, or past what a store binds.
BAD_COUNTS = [
    (["runs", "ls", "--limit", "1e20"], "--limit", "1 to 1000000000", "1e20"),
    (["runs", "ls", "--limit", "1" + "0" * 20], "--limit", "1 to 1000000000", "1" + "0" * 20),
    (["runs", "ls", "--limit", "0"], "--limit", "1 to 1000000000", "0"),
    (["runs", "show", "X", "--limit", "1e20", "--offset", "-1"], "--limit", "1 to ", "1e20"),
    (["runs", "show", "X", "--offset", "-1"], "--offset", "0 to 1000000000", "-1"),
    (["runs", "show", "X", "--offset", "1" + "0" * 20], "--offset", "0 to ", "1" + "0" * 20),
    (["runs", "show", "X", "--limit", "1" + "0" * 5000], "--limit", "1 to ", "1" + "0" * 5000),
]


@pytest.mark.parametrize(("args", "option", "accepted", "given"), BAD_COUNTS)
def test_bad_numbers_are_usage_errors_naming_the_option_and_the_range(
    pipeline_run: str, args: list[str], option: str, accepted: str, given: str
) -> None:
    # A database is there, so an accepted number would reach the store (and used to
    # end in an OverflowError traceback from SQLite).
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    last = result.stderr.rstrip().splitlines()[-1]
    assert last.startswith(f"error: {option}: expected a whole number from {accepted}")
    assert last.endswith(f", got {given!r}")
    assert "Traceback" not in result.output


def test_the_largest_accepted_numbers_work(pipeline_run: str) -> None:
    listed = invoke("runs", "ls", "--limit", "1000000000")
    assert listed.exit_code == 0 and pipeline_run[:8] in listed.stdout
    far = invoke("runs", "show", pipeline_run, "--offset", "1000000000", "--limit", "1000000000")
    assert far.exit_code == 0, far.output
    assert "no task runs from --offset 1000000000: the run has 5" in far.stdout


def test_usage_errors_end_with_an_error_line(pipeline_run: str) -> None:
    for args, last in [
        (["runs", "show"], "error: Missing argument 'RUN_ID'."),
        (["runs", "ls", "--state", "Done"], "error: --state: 'Done' is not a run state; "),
        (["--bogus"], "error: No such option '--bogus'."),
        (["runs", "bogus"], "error: No such command 'bogus'."),
    ]:
        result = invoke(*args)
        assert result.exit_code == 2
        assert result.stderr.rstrip().splitlines()[-1].startswith(last), result.stderr


def test_runs_show_unknown_id_is_a_clean_error(pipeline_run: str) -> None:
    result = invoke("runs", "show", "ffffffffff")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: no run with id 'ffffffffff'")
    assert "flowcore runs ls" in result.stderr and "Traceback" not in result.output


def test_runs_show_pages_big_runs(flows_file: Path) -> None:
    result = invoke("run", f"{flows_file}:many", "-p", "count=12")
    assert result.exit_code == 0, result.output
    run_id = run_id_from(result)
    first = invoke("runs", "show", run_id, "--limit", "5")
    assert first.exit_code == 0, first.output
    assert "12 task runs: 12 Completed" in first.stdout
    assert f"{run_id}.4" in first.stdout and f"{run_id}.5" not in first.stdout
    assert "7 more: flowcore runs show" in first.stdout and "--offset 5" in first.stdout
    middle = invoke("runs", "show", run_id, "--limit", "5", "--offset", "5")
    assert f"{run_id}.5" in middle.stdout and f"{run_id}.4  " not in middle.stdout
    assert "showing task runs 5–9 of 12; 2 more" in middle.stdout
    beyond = invoke("runs", "show", run_id, "--offset", "50")
    assert "no task runs from --offset 50: the run has 12" in beyond.stdout
    last = json.loads(
        invoke("runs", "show", run_id, "--limit", "5", "--offset", "10", "--json").stdout
    )
    assert [t["seq"] for t in last["task_runs"]] == [10, 11]
    assert last["page"] == {"offset": 10, "limit": 5, "total": 12, "state": None, "tag": None}


def test_runs_show_state_filters_and_pages_the_matching_task_runs(flows_file: Path) -> None:
    result = invoke("run", f"{flows_file}:some_fail", "-p", "count=23")
    assert result.exit_code == 0, result.output
    run_id = run_id_from(result)
    failed = invoke("runs", "show", run_id, "--state", "failed", "--limit", "3")
    assert failed.exit_code == 0, failed.output
    assert "23 task runs: 5 Failed · 18 Completed" in failed.stdout  # counts: the whole run
    for seq in (0, 5, 10):
        assert f"{run_id}.{seq} " in failed.stdout
    assert f"{run_id}.1 " not in failed.stdout and f"{run_id}.15 " not in failed.stdout
    text = " ".join(failed.stdout.split())  # the hint may wrap
    assert "showing Failed task runs 0–2 of 5; 2 more" in text
    assert "--offset 3 --limit 3 --state Failed" in text
    rest = json.loads(
        invoke("runs", "show", run_id, "--state", "Failed", "--offset", "3", "--json").stdout
    )
    assert [t["seq"] for t in rest["task_runs"]] == [15, 20]
    assert rest["page"] == {"offset": 3, "limit": 200, "total": 5, "state": "Failed", "tag": None}
    bad = invoke("runs", "show", run_id, "--state", "sad")
    assert bad.exit_code == 2 and "is not a run state" in bad.output


# -- stores and options ---------------------------------------------------------------------


def test_corrupt_database_is_a_clean_error_and_left_untouched(
    flowcore_home: Path, flows_file: Path
) -> None:
    flowcore_home.mkdir(parents=True)
    db = flowcore_home / "flowcore.db"
    garbage = bytes(range(256)) * 20
    db.write_bytes(garbage)
    for args in (["runs", "ls"], ["runs", "show", "abc"], ["run", f"{flows_file}:broken"]):
        result = invoke(*args)
        assert result.exit_code == 1, args
        assert result.stderr.startswith("error: ") and "not a readable flowcore database" in (
            result.stderr
        )
        assert "Traceback" not in result.output
    assert db.read_bytes() == garbage
    assert sorted(p.name for p in flowcore_home.iterdir()) == ["flowcore.db"]


def test_home_option_overrides_flowcore_home_for_one_invocation(
    tmp_path: Path, flows_file: Path, flowcore_home: Path
) -> None:
    other = tmp_path / "other-home"
    result = invoke("--home", str(other), "run", f"{flows_file}:many", "-p", "count=2")
    assert result.exit_code == 0, result.output
    assert (other / "flowcore.db").exists() and not flowcore_home.exists()
    assert os.environ["FLOWCORE_HOME"] == str(flowcore_home)  # restored
    assert "many" in invoke("--home", str(other), "runs", "ls").stdout
    assert "no runs yet" in invoke("runs", "ls").stdout


# -- as a program ---------------------------------------------------------------------------


def _subprocess_env(home: Path) -> dict[str, str]:
    return {**os.environ, "FLOWCORE_HOME": str(home), "NO_COLOR": "1"}


@pytest.mark.slow
def test_python_dash_m_flowcore_help(flowcore_home: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "flowcore", "--help"],
        capture_output=True, text=True, env=_subprocess_env(flowcore_home), timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Usage: flowcore" in proc.stdout
    assert "run" in proc.stdout and "runs" in proc.stdout


@pytest.mark.slow
def test_flowcore_run_in_a_subprocess(flowcore_home: Path, flows_file: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "flowcore", "run", f"{flows_file}:pipeline", "-p", "n=2", "--json"],
        capture_output=True, text=True, env=_subprocess_env(flowcore_home), timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    assert result["n"] == 2 and result["total"] == 2 + 6 + 1
    assert "\x1b[" not in proc.stdout + proc.stderr  # no colour codes off a terminal
    run_id = re.search(r"flowcore runs show ([0-9a-f]{8})", proc.stderr)
    assert run_id is not None
    show = invoke("runs", "show", run_id.group(1))
    assert show.exit_code == 0 and "Completed" in show.stdout


# -- results, caching, resume, crashes --------------------------------------------------------

# Flows for the newer commands. `gate` fails until a marker file exists beside this file,
# so a run can fail, be fixed from outside, and be resumed.
CACHE_FLOWS = """
import dataclasses
import pathlib

import flowcore

HERE = pathlib.Path(__file__).parent

@dataclasses.dataclass
class Point:
    x: int
    y: int

@flowcore.task(cache=True)
async def square(x: int) -> int:
    return x * x

@flowcore.task(cache=flowcore.CachePolicy(ttl=0.01))
async def brief(x: int) -> int:
    return x + 100

@flowcore.task(cache=True)
async def big(n: int) -> str:
    return "z" * n

@flowcore.task(serializer="pickle")
async def pickled() -> set:
    return {1, 2, 3}

@flowcore.task
async def point() -> Point:
    return Point(1, 2)

@flowcore.task
async def gate(x: int) -> str:
    if not (HERE / "marker").exists():
        raise RuntimeError("the marker file is missing")
    return f"opened {x}"

@flowcore.flow
async def cached(x: int = 3) -> int:
    return await square(x)

@flowcore.flow
async def expiring() -> int:
    return await square(5) + await brief(1)

@flowcore.flow
async def results() -> int:
    a = await square(2)
    b = await big(20_000)
    c = await pickled()
    d = await point()
    return a + len(b) + len(c) + d.x

@flowcore.flow
async def gated(x: int) -> str:
    s = await square(x)
    return await gate(s)
"""


@pytest.fixture
def cache_flows(tmp_path: Path) -> Path:
    path = tmp_path / "cache_flows.py"
    path.write_text(CACHE_FLOWS)
    return path


def run_ok(*args: str) -> str:
    """Run ``flowcore run ARGS``; returns the full id of the run it recorded."""
    result = invoke("run", *args)
    assert result.exit_code == 0, result.output
    return full_id(run_id_from(result))


def full_id(prefix: str) -> str:
    shown = json.loads(invoke("runs", "show", prefix, "--json").stdout)
    run_id: str = shown["id"]
    return run_id


def cache_json(*args: str) -> list[dict[str, Any]]:
    result = invoke("cache", "ls", "--json", *args)
    assert result.exit_code == 0, result.output
    entries: list[dict[str, Any]] = json.loads(result.stdout)
    return entries


def test_cache_ls_before_any_run(flowcore_home: Path) -> None:
    assert "no cache entries yet" in invoke("cache", "ls").stdout
    assert invoke("cache", "ls", "--json").stdout.strip() == "[]"
    assert "nothing to clear" in invoke("cache", "clear").stdout
    assert not flowcore_home.exists()


def test_cache_ls_lists_entries_and_filters_by_task(cache_flows: Path) -> None:
    first = run_ok(f"{cache_flows}:expiring")
    table = invoke("cache", "ls")
    assert table.exit_code == 0, table.output
    entries = cache_json()
    assert sorted(e["task_name"] for e in entries) == ["brief", "square"]
    for e in entries:
        assert len(e["key"]) == 64 and e["key"][:12] in table.stdout
        assert e["run_id"] == first and e["produced_by"] == f"{first[:8]}.{e['seq']}"
        assert e["stored"] == "inline" and e["size"] > 5 and e["result_ref"] is None
    by_task = {e["task_name"]: e for e in entries}
    assert by_task["square"]["expires"] is None and by_task["square"]["expired"] is False
    assert by_task["brief"]["expires"].endswith("Z")
    assert "square" in table.stdout and "never" in table.stdout
    assert f"{first[:8]}.0" in table.stdout
    only = cache_json("--task", "square")
    assert [e["task_name"] for e in only] == ["square"]
    assert "brief" not in invoke("cache", "ls", "--task", "square").stdout
    assert "no cache entries of task 'nope'" in invoke("cache", "ls", "--task", "nope").stdout


def test_a_cached_task_hits_across_cli_runs_of_the_same_file(cache_flows: Path) -> None:
    # Each `flowcore run` loads the file anew: the cache key must not change with it.
    first = run_ok(f"{cache_flows}:cached")
    second = run_ok(f"{cache_flows}:cached")
    shown = invoke("runs", "show", second)
    assert "Cached" in shown.stdout and f"from {first[:8]}.0" in shown.stdout
    data = json.loads(invoke("runs", "show", second, "--json").stdout)
    task = data["task_runs"][0]
    assert task["state"] == "Cached" and task["cached_from"] == f"{first}.0"
    assert task["cache_key"] == cache_json()[0]["key"] and task["has_result"] is True
    assert len(cache_json()) == 1


def test_cache_clear_expired_removes_only_expired_entries(cache_flows: Path) -> None:
    run_ok(f"{cache_flows}:expiring")
    time.sleep(0.05)  # brief's ttl is 0.01 s
    listed = invoke("cache", "ls")
    assert "expired" in listed.stdout
    result = invoke("cache", "clear", "--expired")
    assert result.exit_code == 0, result.output
    assert "removed 1 cache entry" in result.stdout
    assert [e["task_name"] for e in cache_json()] == ["square"]


def test_cache_clear_by_task(cache_flows: Path) -> None:
    run_ok(f"{cache_flows}:expiring")
    result = invoke("cache", "clear", "--task", "square")
    assert result.exit_code == 0, result.output
    assert "removed 1 cache entry" in result.stdout
    assert [e["task_name"] for e in cache_json()] == ["brief"]
    none = invoke("cache", "clear", "--task", "square")
    assert "removed 0 cache entries" in none.stdout


def test_cache_clear_everything_needs_yes(cache_flows: Path) -> None:
    run_ok(f"{cache_flows}:expiring")
    refused = invoke("cache", "clear")
    assert refused.exit_code == 1
    assert "error: this would remove all 2 cache entries; add --yes" in refused.stderr
    assert len(cache_json()) == 2
    done = invoke("cache", "clear", "--yes")
    assert done.exit_code == 0, done.output
    assert "removed 2 cache entries" in done.stdout
    assert cache_json() == []


def test_cache_clear_removes_unreferenced_files_and_keeps_used_ones(
    cache_flows: Path, flowcore_home: Path
) -> None:
    run_id = run_ok(f"{cache_flows}:results")
    results_dir = flowcore_home / "results"
    used = [p for p in results_dir.rglob("*") if p.is_file()]
    assert len(used) == 1  # big's 20 000 characters: over the inline limit
    entry = next(e for e in cache_json() if e["task_name"] == "big")
    assert entry["stored"] == "file" and entry["size"] == used[0].stat().st_size
    # A file no record refers to, as a crash between writing it and committing leaves.
    orphan_blob = b"FCR\x01m" + b"\x00" * 20_000
    files = FileBlobs(results_dir)
    files.write(FileBlobs.ref(orphan_blob), orphan_blob)
    orphan = files.path(FileBlobs.ref(orphan_blob))
    assert orphan.exists()
    # Files younger than the grace period may be about to be referenced: age this one.
    old = time.time() - 3600
    os.utime(orphan, (old, old))

    result = invoke("cache", "clear", "--task", "big")
    assert result.exit_code == 0, result.output
    assert "removed 1 cache entry and 1 unreferenced result file" in result.stdout
    assert not orphan.exists()
    assert used[0].exists()  # the task run still refers to it
    shown = json.loads(invoke("runs", "show", run_id, "--results", "--json").stdout)
    assert shown["task_runs"][1]["result"] == "z" * 20_000


def test_cache_ls_says_when_a_result_file_is_missing(
    cache_flows: Path, flowcore_home: Path
) -> None:
    run_ok(f"{cache_flows}:results")
    for path in (flowcore_home / "results").rglob("*"):
        if path.is_file():
            path.unlink()
    assert "file missing" in invoke("cache", "ls", "--task", "big").stdout
    assert cache_json("--task", "big")[0]["size"] is None


def test_runs_show_results(cache_flows: Path) -> None:
    run_id = run_ok(f"{cache_flows}:results")
    text = invoke("runs", "show", run_id, "--results")
    assert text.exit_code == 0, text.output
    out = text.stdout
    assert "result: 4" in out
    assert "result: 'zzzzzzzz" in out and "..." in out  # 20 000 characters, cut
    assert "result: <pickle, not loaded; pass --allow-pickle>" in out
    assert "result: {'x': 1, 'y': 2}" in out  # plain data: no annotation to decode into
    assert "result:" not in invoke("runs", "show", run_id).stdout

    data = json.loads(invoke("runs", "show", run_id, "--results", "--json").stdout)
    tasks = {t["name"]: t for t in data["task_runs"]}
    assert tasks["square"]["result"] == 4
    assert tasks["big"]["result"] == "z" * 20_000  # read from its file
    assert tasks["big"]["result_ref"] is not None and tasks["big"]["has_result"] is True
    assert tasks["square"]["result_ref"] is None and tasks["square"]["has_result"] is True
    assert tasks["pickled"]["result"] == {
        "__flowcore__": "pickle", "loaded": False, "hint": "pass --allow-pickle",
    }  # fmt: skip
    assert tasks["point"]["result"] == {"x": 1, "y": 2}
    plain = json.loads(invoke("runs", "show", run_id, "--json").stdout)
    assert all("result" not in t for t in plain["task_runs"])

    allowed = invoke("runs", "show", run_id, "--allow-pickle")  # implies --results
    assert "result: {1, 2, 3}" in allowed.stdout
    allowed_json = json.loads(invoke("runs", "show", run_id, "--allow-pickle", "--json").stdout)
    assert sorted(allowed_json["task_runs"][2]["result"]) == [1, 2, 3]


def test_runs_show_results_of_failed_and_unreadable_task_runs(
    cache_flows: Path, flowcore_home: Path
) -> None:
    failed = invoke("run", f"{cache_flows}:gated", "-p", "x=2")
    assert failed.exit_code == 1
    run_id = run_id_from(failed)
    text = invoke("runs", "show", run_id, "--results").stdout
    assert "result: 4" in text
    assert text.count("result:") == 1  # a failed task run shows its error, not "no result"
    data = json.loads(invoke("runs", "show", run_id, "--results", "--json").stdout)
    gate = data["task_runs"][1]
    assert gate["has_result"] is False
    assert gate["result"]["__flowcore__"] == "not_stored"
    assert "ended Failed (RuntimeError: the marker file is missing)" in gate["result"]["reason"]

    ok = run_ok(f"{cache_flows}:results")
    for path in (flowcore_home / "results").rglob("*"):
        if path.is_file():
            path.write_bytes(b"FCR\x01m" + b"\x00" * 10)  # no longer matches its checksum
    shown = invoke("runs", "show", ok, "--results")
    assert shown.exit_code == 0, shown.output
    assert "result: <unreadable: result file" in shown.stdout
    big = json.loads(invoke("runs", "show", ok, "--results", "--json").stdout)["task_runs"][1]
    assert big["result"]["__flowcore__"] == "unreadable"
    assert "does not match its checksum" in big["result"]["reason"]


def test_resume_a_failed_run_from_the_cli(cache_flows: Path, tmp_path: Path) -> None:
    failed = invoke("run", f"{cache_flows}:gated", "-p", "x=3")
    assert failed.exit_code == 1
    failed_id = full_id(run_id_from(failed))
    (tmp_path / "marker").touch()

    resumed = invoke("resume", failed_id[:8])
    assert resumed.exit_code == 0, resumed.output
    assert resumed.stdout.strip() == "'opened 9'"
    assert f"(resumed from {failed_id[:8]}) Completed" in resumed.stderr
    new_id = full_id(run_id_from(resumed))
    assert new_id != failed_id

    listed = json.loads(invoke("runs", "ls", "--json").stdout)
    assert [(r["id"], r["state"]) for r in listed] == [
        (new_id, "Completed"), (failed_id, "Failed"),
    ]  # fmt: skip
    assert listed[0]["resumed_from"] == failed_id and listed[1]["resumed_from"] is None
    assert listed[0]["entrypoint"] == listed[1]["entrypoint"] == f"{cache_flows}:gated"
    shown = invoke("runs", "show", new_id)
    assert f"resumed     from {failed_id[:8]}" in shown.stdout
    square_line = next(line for line in shown.stdout.splitlines() if "square" in line)
    assert "replayed" in square_line
    assert json.loads(invoke("runs", "show", new_id, "--json").stdout)["resumed_from"] == failed_id

    # A failed run resumed to completion is resumed again only when forced.
    again = invoke("resume", failed_id)
    assert again.exit_code == 1 and "was resumed already, to completion" in again.stderr
    as_json = invoke("resume", failed_id, "--force", "--json")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == "opened 9"


def write_records(
    home: Path, runs: list[flowcore.FlowRunRecord], task_runs: list[flowcore.TaskRunRecord]
) -> None:
    """Write records straight into the store, as another (maybe dead) process would have."""

    async def write() -> None:
        async with flowcore.SQLiteStore(home / "flowcore.db") as store:
            await store.write(WriteBatch(runs, task_runs))

    anyio.run(write)


def test_resume_refusals_are_clean_errors(
    cache_flows: Path, tmp_path: Path, flowcore_home: Path
) -> None:
    assert "there are no runs yet" in invoke("resume", "abc").stderr
    done = run_ok(f"{cache_flows}:cached")
    completed = invoke("resume", done)
    assert completed.exit_code == 1
    assert completed.stderr.startswith(f"error: run {done[:8]} of 'cached' completed;")
    assert "nothing to resume" in completed.stderr and "Traceback" not in completed.output
    assert len(json.loads(invoke("runs", "ls", "--json").stdout)) == 1  # no new run

    unknown = invoke("resume", "ffffffff")
    assert unknown.exit_code == 1 and unknown.stderr.startswith("error: no run with id")

    alive = flowcore.FlowRunRecord(
        id="a11ce" + "0" * 27, name="busy", state=flowcore.State.RUNNING, created=time.time(),
        host=HOST, pid=os.getpid(),  # this very process: alive
    )  # fmt: skip
    write_records(flowcore_home, [alive], [])
    running = invoke("resume", "a11ce")
    assert running.exit_code == 1
    assert "error: run a11ce000 of 'busy' is still running" in running.stderr

    failed = invoke("run", f"{cache_flows}:gated", "-p", "x=1")
    assert failed.exit_code == 1
    cache_flows.rename(tmp_path / "moved.py")
    gone = invoke("resume", run_id_from(failed))
    assert gone.exit_code == 1
    assert gone.stderr.startswith("error: no such file: ")
    assert "cache_flows.py" in gone.stderr and "Traceback" not in gone.output


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_run_whose_process_died_is_shown_as_crashed(flowcore_home: Path) -> None:
    now = time.time()
    record = flowcore.FlowRunRecord(
        id="c0ffee" + "0" * 26, name="doomed", state=flowcore.State.RUNNING, created=now,
        started=now, heartbeat=now, host=HOST, pid=_dead_pid(), machine=MACHINE,
        history=[(flowcore.State.RUNNING.value, now)], task_count=1,
    )  # fmt: skip
    task_run = flowcore.TaskRunRecord(
        run_id=record.id, seq=0, name="step", state=flowcore.State.RUNNING, created=now,
        started=now, attempts=1,
    )  # fmt: skip
    write_records(flowcore_home, [record], [task_run])
    listed = invoke("runs", "ls")
    assert listed.exit_code == 0, listed.output
    line = next(line for line in listed.stdout.splitlines() if "doomed" in line)
    assert "Crashed" in line and "Running" not in line
    assert "state       Crashed" in invoke("runs", "show", "c0ffee").stdout
    data = json.loads(invoke("runs", "show", "c0ffee", "--json").stdout)
    assert data["state"] == "Crashed" and data["task_runs"][0]["state"] == "Crashed"
    assert f"process {record.pid} on {HOST} is gone" in data["error_message"]


def test_runs_show_filters_task_runs_by_tag(tmp_path: Path) -> None:
    flows = tmp_path / "tagged.py"
    flows.write_text(
        textwrap.dedent(
            """
            import flowcore

            @flowcore.task(tags=["api"], task_run_name="get-{n}")
            async def get(n: int) -> int:
                return n

            @flowcore.task
            async def other(n: int) -> int:
                return n

            @flowcore.flow
            async def mixed() -> int:
                total = 0
                for n in range(3):
                    total += await get(n) + await other(n)
                return total
            """
        )
    )
    run_id = run_ok(f"{flows}:mixed")
    shown = json.loads(invoke("runs", "show", run_id, "--tag", "api", "--json").stdout)
    assert [(t["name"], t["run_name"], t["tags"]) for t in shown["task_runs"]] == [
        ("get", "get-0", ["api"]),
        ("get", "get-1", ["api"]),
        ("get", "get-2", ["api"]),
    ]
    assert shown["page"]["total"] == 3 and shown["page"]["tag"] == "api"
    assert shown["counts"] == {"Completed": 3}
    table = invoke("runs", "show", run_id, "--tag", "api", "--limit", "2")
    assert "get get-0" in table.stdout and "other" not in table.stdout
    assert "--tag api" in table.stdout  # the next page keeps the filter
