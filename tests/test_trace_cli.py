"""``flowcore trace``: a run's spans drawn as a waterfall or printed as JSON, and pruning."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner, Result
from rich.console import Console

import flowcore
from flowcore.cli import cli
from flowcore.cli.waterfall import waterfall
from flowcore.entrypoints import load_flow
from flowcore.records import SpanRecord, WriteBatch
from flowcore.telemetry import flow_span
from flowcore.views.format import format_ns, iso_ns
from flowcore.views.trace import Row, span_to_json, subtree, tree_order

# Gathered tasks, a task called inside a task, a task retried once, a submitted task
# that fails and whose failure is awaited and handled, and a subflow.
FLOWS = """
import asyncio

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
    await asyncio.sleep(0.002)
    return x + 1

@flowcore.task
async def outer(x: int) -> int:
    return await inner(x) * 2

@flowcore.task
async def boom() -> int:
    raise RuntimeError("boom went the task")

@flowcore.flow
async def child(k: int) -> int:
    return await inner(k)

@flowcore.flow
async def traced(n: int = 3) -> int:
    a = await flaky(n)
    xs = await asyncio.gather(inner(1), inner(2), inner(3))
    b = await outer(n)
    future = boom.submit()
    try:
        await future
    except RuntimeError:
        pass
    return a + sum(xs) + b + await child(5)
"""

#: The spans of one run of ``traced`` in tree order, as (depth, name).
TREE = [
    (0, "flow traced"),
    (1, "task flaky"),
    (1, "task inner"),
    (1, "task inner"),
    (1, "task inner"),
    (1, "task outer"),
    (2, "task inner"),
    (1, "task boom"),
    (1, "flow child"),
    (2, "task inner"),
]


def invoke(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False, input=input)


@pytest.fixture
def flows_file(tmp_path: Path) -> Path:
    path = tmp_path / "traced_flows.py"
    path.write_text(FLOWS)
    return path


def run_flow(flows_file: Path) -> str:
    """Run ``traced`` through the CLI; its full run id."""
    result = invoke("run", f"{flows_file}:traced", "--no-progress")
    assert result.exit_code == 0, result.output
    match = re.search(r"flowcore runs show ([0-9a-f]{8})", result.stderr)
    assert match, result.output
    listed = json.loads(invoke("runs", "ls", "--flow", "traced", "--json").stdout)
    (run,) = [r for r in listed if r["id"].startswith(match.group(1))]
    full_id: str = run["id"]
    return full_id


@pytest.fixture
def run_id(flows_file: Path) -> str:
    return run_flow(flows_file)


def trace_json(run_id: str) -> list[dict[str, Any]]:
    result = invoke("trace", run_id, "--json")
    assert result.exit_code == 0, result.output
    spans: list[dict[str, Any]] = json.loads(result.stdout)
    return spans


def drawn_rows(output: str) -> list[tuple[int, str]]:
    """(depth, name) of each span row of a drawn waterfall."""
    rows = []
    for line in output.splitlines():
        match = re.match(r"^( *)((?:task|flow) \w+)\s+\+", line)
        if match:
            rows.append((len(match.group(1)) // 2, match.group(2)))
    return rows


# -- the waterfall -------------------------------------------------------------------------


def test_trace_draws_spans_in_tree_order_with_retry_and_error(run_id: str) -> None:
    result = invoke("trace", run_id[:8], "--width", "120")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert drawn_rows(out) == TREE
    assert f"run       {run_id}" in out
    assert "flow      traced" in out
    assert "spans     10 · 1 error · 1 retried" in out
    trace_id = trace_json(run_id)[0]["trace_id"]
    assert f"trace     {trace_id}" in out
    assert "↻ retried ×1: ValueError: first attempt fails" in out
    assert "✗ RuntimeError: boom went the task" in out
    lines = out.splitlines()
    flaky = next(line for line in lines if line.startswith("  task flaky"))
    assert re.search(r"\bOK\s+×2\s", flaky) and "↻" in flaky
    boom = next(line for line in lines if line.startswith("  task boom"))
    assert " ERROR " in boom and boom.rstrip().endswith("✗")
    # Bars fit the width and are scaled to the trace: the flow's fills the timeline.
    assert all(len(line) <= 120 for line in lines)
    root = next(line for line in lines if line.startswith("flow traced"))
    assert root.rstrip().endswith("█" * 20)
    assert not any(line != line.rstrip() for line in lines)  # no padding at line ends


def test_trace_accepts_a_prefix_and_the_show_spelling(run_id: str) -> None:
    full = invoke("trace", run_id, "--width", "100")
    short = invoke("trace", run_id[:5], "--width", "100")
    spelled = invoke("trace", "show", "--width", "100", run_id[:8])
    assert full.exit_code == short.exit_code == spelled.exit_code == 0, short.output
    assert drawn_rows(full.stdout) == drawn_rows(short.stdout) == drawn_rows(spelled.stdout) == TREE


def test_trace_limit_draws_the_first_spans_and_says_how_many_more(run_id: str) -> None:
    result = invoke("trace", run_id[:8], "--limit", "4")
    assert result.exit_code == 0, result.output
    assert drawn_rows(result.stdout) == TREE[:4]
    assert "6 more spans not shown; --limit 10 shows all" in result.stdout


def test_trace_of_a_subflow_shows_its_part_of_the_trace(run_id: str) -> None:
    listed = json.loads(invoke("runs", "ls", "--flow", "child", "--json").stdout)
    (sub,) = listed
    assert sub["parent_run_id"] == run_id
    result = invoke("trace", sub["id"][:8])
    assert result.exit_code == 0, result.output
    assert drawn_rows(result.stdout) == [(0, "flow child"), (1, "task inner")]
    assert f"subflow of {run_id[:8]}" in result.stdout


def test_trace_narrow_width_still_draws_a_bar(run_id: str) -> None:
    result = invoke("trace", run_id[:8], "--width", "60")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(len(line) <= 60 for line in lines)
    root = next(line for line in lines if line.startswith("flow ") and "+" in line)
    assert "█" * 8 in root


# -- JSON ------------------------------------------------------------------------------------


def test_trace_json_is_a_tree_rooted_at_the_flow_span(run_id: str) -> None:
    spans = trace_json(run_id)
    assert [s["name"] for s in spans] == [name for _, name in TREE]
    by_id = {s["span_id"]: s for s in spans}
    assert len(by_id) == len(spans)
    (root,) = [s for s in spans if s["parent_id"] is None]
    assert root["name"] == "flow traced" and root is spans[0]
    assert root["attributes"]["flowcore.run.id"] == run_id
    assert {s["trace_id"] for s in spans} == {root["trace_id"]}
    for span in spans:
        # Every parent is in the trace, and following parents ends at the root.
        seen, current = set(), span
        while current["parent_id"] is not None:
            assert current["span_id"] not in seen
            seen.add(current["span_id"])
            current = by_id[current["parent_id"]]
        assert current is root
        assert span["duration_ms"] >= 0 and span["end_ns"] >= span["start_ns"]
        assert span["duration_ms"] == pytest.approx((span["end_ns"] - span["start_ns"]) / 1e6)
        assert span["start"].endswith("Z") and span["end"].endswith("Z")
        assert span["status"] in ("OK", "ERROR")
        assert isinstance(span["links"], list)
    parents = [(s["name"], by_id[s["parent_id"]]["name"]) for s in spans[1:]]
    assert parents == [
        ("task flaky", "flow traced"),
        *[("task inner", "flow traced")] * 3,
        ("task outer", "flow traced"),
        ("task inner", "task outer"),
        ("task boom", "flow traced"),
        ("flow child", "flow traced"),
        ("task inner", "flow child"),
    ]


def test_trace_json_has_a_span_for_every_task_run(run_id: str) -> None:
    spans = trace_json(run_id)
    expected = set()
    for rid in (run_id, *(s["id"] for s in json.loads(invoke("runs", "ls", "--json").stdout))):
        shown = json.loads(invoke("runs", "show", rid, "--json").stdout)
        expected |= {f"{shown['id']}.{t['seq']}" for t in shown["task_runs"]}
    assert len(expected) == 8
    task_spans = [s for s in spans if s["name"].startswith("task ")]
    assert {s["attributes"]["flowcore.task_run.id"] for s in task_spans} == expected
    assert len(task_spans) == len(expected)


def test_trace_json_has_retry_and_exception_events(run_id: str) -> None:
    spans = {s["name"]: s for s in trace_json(run_id)}
    flaky = spans["task flaky"]
    assert flaky["attributes"]["flowcore.attempts"] == 2
    (retry,) = flaky["events"]
    assert retry["name"] == "retry" and retry["time"].endswith("Z")
    assert flaky["start_ns"] <= retry["time_ns"] <= flaky["end_ns"]
    assert "ValueError: first attempt fails" in retry["attributes"]["flowcore.note"]
    boom = spans["task boom"]
    assert boom["status"] == "ERROR"
    assert boom["status_message"] == "RuntimeError: boom went the task"
    assert [e["name"] for e in boom["events"]] == ["exception"]
    assert boom["events"][0]["attributes"]["exception.type"] == "RuntimeError"
    assert spans["flow traced"]["status"] == "OK"  # the failure was handled


# -- errors ----------------------------------------------------------------------------------


def test_trace_of_an_unknown_run_is_an_error(run_id: str) -> None:
    result = invoke("trace", "ffffffff")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: no run with id 'ffffffff'")
    assert "Traceback" not in result.output


def test_trace_with_no_database_yet_is_an_error() -> None:
    result = invoke("trace", "abc123")
    assert result.exit_code == 1
    assert "error: no run with id 'abc123': there are no runs yet in" in result.stderr


def test_trace_of_a_run_made_with_tracing_off_says_so(flows_file: Path) -> None:
    flow = load_flow(f"{flows_file}:traced")

    async def main() -> str:
        async with flowcore.Engine(tracing=False) as engine:
            await flow()
            assert engine.last_run is not None
            return engine.last_run.id

    rid = anyio.run(main)
    for extra in ([], ["--json"]):
        result = invoke("trace", rid[:8], *extra)
        assert result.exit_code == 1
        assert result.stderr.strip() == (
            f"error: run {rid[:8]} has no trace (it ran with tracing off)"
        )


# -- prune -----------------------------------------------------------------------------------


def test_prune_needs_an_option_and_names_them() -> None:
    result = invoke("trace", "prune", "--yes")
    assert result.exit_code == 1
    assert "--older-than DAYS" in result.stderr and "--keep-runs N" in result.stderr


def write_span_rows(run_id: str) -> int:
    """Write the flow spans of a run and its subflows as span rows, as flowcore did
    before a flow run's record was its span (pruning deletes rows); how many."""

    async def write() -> int:
        home = Path(os.environ["FLOWCORE_HOME"])
        async with flowcore.SQLiteStore(home / "flowcore.db") as store:
            runs = await subtree(store, await store.get_run(run_id))
            spans = [span for run in runs if (span := flow_span(run)) is not None]
            await store.write(WriteBatch(spans=spans))
            return len(spans)

    return anyio.run(write)


def test_prune_older_than_deletes_span_rows_and_run_spans_stay(run_id: str) -> None:
    assert write_span_rows(run_id) == 2  # flow traced, flow child
    result = invoke("trace", "prune", "--older-than", "0", "--yes")
    assert result.exit_code == 0, result.output
    match = re.match(r"deleted (\d+) span rows", result.stdout)
    assert match and int(match.group(1)) == 2, result.stdout
    # A run's span is its record: flow and task spans stay with their runs.
    spans = trace_json(run_id)
    assert [s["name"] for s in spans] == [name for _, name in TREE]
    drawn = invoke("trace", run_id[:8])
    assert drawn.exit_code == 0, drawn.output
    assert drawn_rows(drawn.stdout) == TREE
    again = invoke("trace", "prune", "--older-than", "0", "--yes")
    assert again.stdout.startswith("deleted 0 span rows")


def test_prune_keep_runs_keeps_the_newest_runs_spans(flows_file: Path) -> None:
    old, new = run_flow(flows_file), run_flow(flows_file)
    assert write_span_rows(old) + write_span_rows(new) == 4
    result = invoke("trace", "prune", "--keep-runs", "1", "--yes")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("deleted 2 span rows not of the newest 1 runs")
    assert [s["name"] for s in trace_json(new)] == [name for _, name in TREE]
    assert [s["name"] for s in trace_json(old)] == [name for _, name in TREE]


def test_prune_asks_for_confirmation_without_yes(run_id: str) -> None:
    write_span_rows(run_id)
    declined = invoke("trace", "prune", "--older-than", "0", input="n\n")
    assert declined.exit_code == 1 and "Aborted" in declined.output
    assert len(trace_json(run_id)) == len(TREE)
    accepted = invoke("trace", "prune", "--older-than", "0", input="y\n")
    assert accepted.exit_code == 0 and "deleted 2 span rows" in accepted.stdout


def test_prune_with_no_database_yet_says_nothing_to_prune() -> None:
    result = invoke("trace", "prune", "--older-than", "7")
    assert result.exit_code == 0 and "nothing to prune" in result.stdout


DAYS = "--older-than: expected a number of days from 0 to 36500"
KEEP = "--keep-runs: expected a whole number from 0 to 1000000000"
WIDTH = "--width: expected a whole number from 40 to 1000"
LIMIT = "--limit: expected a whole number from 1 to 1000000000"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["prune", "--older-than", "nan"], DAYS),
        (["prune", "--older-than", "inf"], DAYS),
        (["prune", "--older-than", "1e400"], DAYS),
        (["prune", "--older-than", "1e12"], DAYS),
        (["prune", "--older-than", "-1"], DAYS),
        (["prune", "--older-than", "soon"], DAYS),
        (["prune", "--keep-runs", "-3"], KEEP),
        (["prune", "--keep-runs", "1" + "0" * 20], KEEP),
        (["show", "X", "--width", "1e9"], WIDTH),
        (["show", "X", "--width", "1000000000"], WIDTH),
        (["show", "X", "--width", "39"], WIDTH),
        (["show", "X", "--limit", "0"], LIMIT),
        (["X", "--limit", "1" + "0" * 20], LIMIT),
    ],
)
def test_bad_numbers_are_usage_errors_naming_the_option_and_the_range(
    run_id: str, args: list[str], expected: str
) -> None:
    # With spans in the store, an accepted number reaches it: nan and 1e400 used to end
    # in a ValueError or OverflowError traceback, a width of 1e9 in a drawing that never ends.
    result = invoke("trace", *args, "--yes" if args[0] == "prune" else "--json")
    assert result.exit_code == 2, result.output
    last = result.stderr.rstrip().splitlines()[-1]
    assert last.startswith(f"error: {expected}"), result.stderr
    assert last.endswith(f", got {args[-1]!r}")
    assert len(trace_json(run_id)) == len(TREE)  # nothing was pruned


def test_the_limits_of_the_numeric_options_are_accepted(run_id: str) -> None:
    assert invoke("trace", "prune", "--older-than", "36500", "--yes").exit_code == 0
    assert invoke("trace", "prune", "--keep-runs", "1000000000", "--yes").exit_code == 0
    assert len(trace_json(run_id)) == len(TREE)  # none as old, none past the newest runs
    wide = invoke("trace", run_id, "--width", "1000", "--limit", "1000000000")
    assert wide.exit_code == 0 and max(map(len, wide.stdout.splitlines())) <= 1000


def test_a_huge_terminal_width_is_drawn_at_the_widest_width(
    run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "5000")
    result = invoke("trace", run_id)
    assert result.exit_code == 0
    assert 900 < max(map(len, result.stdout.splitlines())) <= 1000


# -- the drawing, from records ---------------------------------------------------------------

MS = 1_000_000
T0 = 1_700_000_000 * 1_000_000_000


def span(name: str, sid: str, start_ms: float, end_ms: float | None, parent: str | None = None,
         **kw: Any) -> SpanRecord:  # fmt: skip
    return SpanRecord(
        trace_id="ab" * 16,
        span_id=sid,
        name=name,
        start=T0 + int(start_ms * MS),
        end=0 if end_ms is None else T0 + int(end_ms * MS),
        parent_id=parent,
        **kw,
    )


def draw(rows: list[Row], width: int = 100, **kw: Any) -> list[str]:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(waterfall(rows, width=width, **kw))
    return console.export_text().splitlines()


def test_bars_are_placed_and_sized_in_proportion_to_the_trace() -> None:
    spans = [
        span("flow f", "1", 0, 100, status="OK"),
        span("task second_half", "2", 50, 100, "1", status="OK"),
        span("task first_quarter", "3", 0, 25, "1", status="OK"),
    ]
    rows = tree_order(spans)
    assert [(r.depth, r.span.name) for r in rows] == [
        (0, "flow f"), (1, "task first_quarter"), (1, "task second_half"),
    ]  # fmt: skip
    lines = draw(rows)
    header, flow, quarter, half = lines
    bar_at = header.index("0 ")  # the timeline column starts with the trace's 0
    assert header.rstrip().endswith("100.0 ms")
    width = len(flow) - bar_at
    assert flow[bar_at:] == "█" * width
    assert abs(len(quarter[bar_at:]) - width / 4) <= 1 and quarter[bar_at] == "█"
    assert half[bar_at : bar_at + width // 2].strip() == ""
    assert abs(len(half[bar_at:].strip()) - width / 2) <= 1
    assert "+50.0 ms" in half and "50.0 ms" in half


def test_orphans_and_unfinished_spans_are_drawn() -> None:
    spans = [
        span("task done", "2", 0, 10, "gone", status="OK"),  # its parent was pruned
        span("task open", "3", 5, None, "gone"),  # its run is still going
        span("task sdk", "4", 6, 8, "3", status="ERROR", status_message="KeyError: 'x'"),
    ]
    rows = tree_order(spans)
    assert [(r.depth, r.span.name) for r in rows] == [
        (0, "task done"), (0, "task open"), (1, "task sdk"),
    ]  # fmt: skip
    lines = draw(rows, now=T0 + 20 * MS)
    assert lines[0].rstrip().endswith("20.0 ms")  # the open span lasts until now
    open_line = next(line for line in lines if line.startswith("task open"))
    assert " 15.0 ms… " in open_line and "UNSET" in open_line
    assert open_line.rstrip().endswith("█" * 10)
    assert any("✗ KeyError: 'x'" in line for line in lines)
    data = span_to_json(spans[1])
    assert data["end"] is None and data["end_ns"] is None and data["duration_ms"] is None


def test_limit_scales_to_the_whole_trace() -> None:
    spans = [span(f"task t{i}", str(i + 1), i * 10, i * 10 + 10, status="OK") for i in range(10)]
    rows = tree_order(spans)
    lines = draw(rows, limit=2, spans=spans)
    assert len(lines) == 4 and lines[0].rstrip().endswith("100.0 ms")
    assert lines[3] == "8 more spans not shown; --limit 10 shows all"


def test_formats() -> None:
    assert format_ns(840_000) == "840 µs"
    assert format_ns(12_345_678) == "12.3 ms"
    assert format_ns(2_414_000_000) == "2.41 s"
    assert format_ns(-5) == "0 µs"
    assert iso_ns(T0 + 123_456_789) == "2023-11-14T22:13:20.123456Z"
    assert iso_ns(0) is None


# -- flowcore trace export -------------------------------------------------------------------


class _Receiver:
    """A loopback OTLP/HTTP receiver answering ``status``; keeps the span ids it took."""

    def __init__(self, status: int = 200) -> None:
        import http.server
        import threading

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        ids = self.ids = []  # type: list[str]

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if status < 300:
                    request = ExportTraceServiceRequest()
                    request.ParseFromString(body)
                    for rs in request.resource_spans:
                        for ss in rs.scope_spans:
                            ids.extend(s.span_id.hex() for s in ss.spans)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Any:
    found = _Receiver()
    yield found
    found.close()


def test_trace_export_sends_a_runs_spans_and_its_subflows(
    run_id: str, receiver: _Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.base)
    stored = sorted(s["span_id"] for s in trace_json(run_id))
    result = invoke("trace", "export", run_id[:8])
    assert result.exit_code == 0, result.output
    assert sorted(receiver.ids) == stored  # the run's spans and its subflow's, each once
    assert f"sent {len(stored)} spans of 2 runs to {receiver.base}/v1/traces" in result.stdout
    again = invoke("trace", "export", "--since", "-1d")
    assert again.exit_code == 0, again.output
    assert len(receiver.ids) == 2 * len(stored)  # asked again: sent again


def test_trace_export_says_what_is_missing(run_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    none = invoke("trace", "export", run_id)
    assert none.exit_code == 1 and "set OTEL_EXPORTER_OTLP_ENDPOINT" in none.stderr
    usage = invoke("trace", "export")
    assert usage.exit_code == 2 and "RUN_ID..., --since TIME" in usage.stderr
    bad_time = invoke("trace", "export", "--since", "yesterday-ish")
    assert bad_time.exit_code == 2 and "--since: yesterday-ish is not a time" in bad_time.stderr
    down = _Receiver(status=503)
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", down.base)
        refused = invoke("trace", "export", run_id)
    finally:
        down.close()
    assert refused.exit_code == 1
    assert "did not take the spans" in refused.stderr and "HTTP 503" in refused.stderr


def test_trace_export_says_which_spans_the_collector_refused(
    run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A collector that refuses the data (HTTP 400) takes none of it, and is told so
    # per run; the command goes on to the next run and succeeds.
    picky = _Receiver(status=400)
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", picky.base)
        result = invoke("trace", "export", run_id)
    finally:
        picky.close()
    assert result.exit_code == 0, result.output
    stored = len(trace_json(run_id))
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{run_id[:8]} ") and "refused by the collector" in lines[0]
    refused = [int(line.rsplit("(", 1)[1].split()[0]) for line in lines[:2]]
    assert sum(refused) == stored
    assert lines[2] == f"sent 0 spans of 2 runs to {picky.base}/v1/traces; it refused {stored} " + (
        "(see the warnings above)"
    )
