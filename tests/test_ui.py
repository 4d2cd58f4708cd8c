"""The web UI over HTTP (httpx on the ASGI app): every route, its status codes, what each
page shows of the store, escaping of hostile text, and the security rules (read-only by
default, CSRF and origin on actions, the token, hosts, headers, the bind rule)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from test_ui_support import (
    HOSTILE,
    RAW,
    ended,
    running_run,
    seed_demo,
    serve_flow,
    write_big_run,
)

import flowcore
from flowcore.cli import cli
from flowcore.errors import ConfigurationError
from flowcore.ids import HOST
from flowcore.records import WriteBatch
from flowcore.states import State
from flowcore.store import flowcore_home
from flowcore.store.base import Store
from flowcore.ui.app import create_app
from flowcore.ui.config import UIConfig, check_bind, is_loopback
from flowcore.ui.security import HEADERS, csrf_token
from flowcore.views.runs import find_runs

pytestmark = pytest.mark.anyio

TOKEN = "s3cret-token-for-tests-0123456789"


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    s = flowcore.SQLiteStore(flowcore_home() / "flowcore.db")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def _client(store: Store, **config: Any) -> httpx.AsyncClient:
    config.setdefault("allowed_hosts", ("testserver",))
    conf = UIConfig(**config)
    app = create_app(conf, store=store)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def _csrf(config_client: httpx.AsyncClient) -> str:
    transport = config_client._transport
    assert isinstance(transport, httpx.ASGITransport)
    app: Any = transport.app
    token: str = csrf_token(app.state.config)
    return token


def _no_raw(text: str) -> None:
    for raw in RAW:
        assert raw not in text, raw


@pytest.fixture
def demo_run() -> str:
    return seed_demo()


# -- runs list ---------------------------------------------------------------------------


async def test_runs_list_shows_runs_filtered_and_paged(demo_run: str, store: Store) -> None:
    others = [running_run(f"other{i}") for i in range(5)]
    await store.write(WriteBatch(flow_runs=others))
    async with _client(store) as c:
        assert (await c.get("/")).status_code == 307
        page = await c.get("/runs")
        assert page.status_code == 200
        assert demo_run in page.text and 'data-live="1"' in page.text
        only = await c.get("/runs", params={"flow": "demo"})
        assert demo_run in only.text and "other0" not in only.text
        running = await c.get("/runs", params={"state": "Running"})
        assert demo_run not in running.text and "other3" in running.text
        first = await c.get("/runs", params={"limit": 2})
        assert first.text.count("data-run=") == 2 and 'rel="next"' in first.text
        last = await c.get("/runs", params={"limit": 2, "offset": 4})
        assert last.text.count("data-run=") == 2 and 'rel="next"' not in last.text
        rows = await c.get("/runs", params={"fragment": "1"})
        assert rows.text.lstrip().startswith("<tr") and "<html" not in rows.text
        future = await c.get("/runs", params={"since": "2999-01-01T00:00"})
        assert "No runs match" in future.text
        past = await c.get("/runs", params={"until": "2000-01-01T00:00"})
        assert "No runs match" in past.text
        window = await c.get("/runs", params={"since": "2000-01-01T00:00", "flow": "demo"})
        assert demo_run in window.text


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"state": "Bogus"}, "state"),
        ({"offset": "-1"}, "offset"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1e9"}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"until": "nan"}, "until"),
    ],
)
async def test_runs_list_refuses_bad_filters_naming_them(
    store: Store, params: dict[str, str], named: str
) -> None:
    async with _client(store) as c:
        page = await c.get("/runs", params=params)
    assert page.status_code == 400
    assert f"{named}: expected" in page.text


# -- a run ----------------------------------------------------------------------------------


async def test_run_page_shows_header_errors_timeline_tasks_and_logs(
    demo_run: str, store: Store
) -> None:
    async with _client(store) as c:
        page = await c.get(f"/runs/{demo_run}")
        by_prefix = await c.get(f"/runs/{demo_run[:8]}")
    assert page.status_code == 200 and by_prefix.status_code == 200
    text = page.text
    assert "Completed" in text and "&lt;i&gt;hi&lt;/i&gt;" in text  # the parameter
    assert "ValueError" in text and "broken &lt;b&gt;" in text and "Traceback" in text
    assert text.count('class="gantt-row"') == 3
    # flaky: two attempts, the first ended Retrying, each its own bar
    flaky = re.search(r'data-seq="1">(.*?)</div>', text, re.S)
    assert flaky is not None and flaky.group(1).count('class="bar') == 2
    assert "st-Retrying" in flaky.group(1)
    assert "log says" in text and "broken is about to fail" in text
    assert 'data-src="/runs/' in text
    _no_raw(text)


async def test_run_page_filters_tasks_and_logs(demo_run: str, store: Store) -> None:
    async with _client(store) as c:
        failed = await c.get(f"/runs/{demo_run}", params={"state": "Failed"})
        errors = await c.get(f"/runs/{demo_run}", params={"level": "error"})
        of_flaky = await c.get(f"/runs/{demo_run}", params={"task": "flaky"})
        bad = await c.get(f"/runs/{demo_run}", params={"level": "LOUD"})
        logs = await c.get(f"/runs/{demo_run}/logs", params={"level": "WARNING"})
    tasks = failed.text.split('id="tasks"')[1].split("</table>")[0]
    assert "broken" in tasks and "flaky" not in tasks
    lines = errors.text.split('id="log-lines"')[1]
    assert "broken is about to fail" in lines and "log says" not in lines
    lines = of_flaky.text.split('id="log-lines"')[1]
    assert "flaky worked" in lines and "broken is about" not in lines
    assert bad.status_code == 400 and "level:" in bad.text
    assert "log says" in logs.text and "broken is about" in logs.text
    _no_raw(logs.text)


async def test_unknown_run_is_404_on_every_run_route(store: Store) -> None:
    async with _client(store) as c:
        for path in ("", "/graph.json", "/trace", "/logs"):
            page = await c.get(f"/runs/nosuchrun{path}")
            assert page.status_code == 404, path
            assert "no run with id" in page.text


async def test_graph_of_a_small_run_is_its_task_runs_and_edges(demo_run: str, store: Store) -> None:
    async with _client(store) as c:
        answer = await c.get(f"/runs/{demo_run}/graph.json")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/json")
    assert "<" not in answer.text  # inert wherever it lands
    graph = answer.json()
    assert graph["mode"] == "task_runs"
    assert [n["state"] for n in graph["nodes"]] == ["Completed", "Completed", "Failed"]
    edges = {(e["source"], e["target"], e["kind"]) for e in graph["edges"]}
    assert edges == {("0", "1", "upstream"), ("1", "2", "upstream")}
    assert "\\u202e" in graph["nodes"][0]["label"]  # shown as an escape, never acting


async def test_graph_of_a_big_run_is_aggregated_by_task_name(store: Store) -> None:
    run = await write_big_run(store, 3000, names=4)
    async with _client(store) as c:
        graph = (await c.get(f"/runs/{run.id}/graph.json")).json()
        again = (await c.get(f"/runs/{run.id}/graph.json")).json()
    assert graph == again
    assert graph["mode"] == "task_names" and graph["total"] == 3000
    assert sorted(n["id"] for n in graph["nodes"]) == ["step0", "step1", "step2", "step3"]
    assert sum(n["count"] for n in graph["nodes"]) == 3000
    assert sum(n["states"].get("Failed", 0) for n in graph["nodes"]) == 3000 // 7
    assert {(e["source"], e["target"]) for e in graph["edges"]} == {
        ("step0", "step1"),
        ("step1", "step2"),
        ("step2", "step3"),
        ("step3", "step0"),
    }


async def test_big_run_page_reads_one_page_of_task_runs(store: Store) -> None:
    run = await write_big_run(store, 2500)
    async with _client(store) as c:
        page = await c.get(f"/runs/{run.id}")
        second = await c.get(f"/runs/{run.id}", params={"offset": 100})
    assert page.status_code == 200
    assert page.text.count('class="gantt-row"') == 100
    assert page.text.count('<tr id="task-') == 100
    assert "2500 in all" in page.text and 'id="task-0"' in page.text
    assert 'id="task-100"' in second.text and 'id="task-99"' not in second.text


async def test_trace_page_draws_the_runs_spans(demo_run: str, store: Store) -> None:
    async with _client(store) as c:
        page = await c.get(f"/runs/{demo_run}/trace")
    assert page.status_code == 200
    assert page.text.count('class="span-row') >= 4  # the flow and its 3 task runs
    assert "flow demo" in page.text
    _no_raw(page.text)


async def test_logs_page_pages_after_the_last_line(store: Store) -> None:
    run = await write_big_run(store, 1000)  # one line of its own
    lines = [
        flowcore.records.LogRecord(run.id, None, None, run.created, logging.INFO, "x", f"l{i}")
        for i in range(600)
    ]
    await store.write(WriteBatch(logs=lines))
    async with _client(store) as c:
        first = await c.get(f"/runs/{run.id}/logs")
        after = re.search(r'href="\?after=(\d+)"', first.text)
        assert after is not None
        rest = await c.get(f"/runs/{run.id}/logs", params={"after": after.group(1)})
    assert first.text.count("<tr class=") == 500
    assert rest.text.count("<tr class=") == 601 - 500
    assert 'rel="next"' not in rest.text


# -- flows, schedules, limits ----------------------------------------------------------------


async def test_flows_page_shows_schema_schedules_and_recent_runs(
    demo_run: str, store: Store
) -> None:
    await serve_flow(store, "demo")
    async with _client(store) as c:
        page = await c.get("/flows")
    assert page.status_code == 200
    assert "served" in page.text and "window" in page.text and "required" in page.text
    assert "every 1h" in page.text and "active" in page.text
    assert demo_run[:8] in page.text
    assert "No shared limit is in use" in page.text
    assert "Trigger a run" not in page.text and "csrf" not in page.text  # read-only


async def test_flows_page_lists_shared_limits_with_holders_and_waiters(store: Store) -> None:
    now = time.time()
    await store.lease_slots("api", 1, "holder-a", "wa", 1, now, now, now + 600)
    await store.lease_slots("api", 1, "holder-b", "wb", 1, now, now, now + 600)
    async with _client(store) as c:
        page = await c.get("/flows")
    row = page.text.split('id="limits"')[1].split("</table>")[0]
    assert "<td>api</td><td>1</td>" in row  # one held
    assert row.count(f"{HOST}:{os.getpid()}") == 2  # the holder, and the waiter


async def test_empty_store_pages(store: Store) -> None:
    async with _client(store) as c:
        assert "No runs match" in (await c.get("/runs")).text
        assert "No flow is served" in (await c.get("/flows")).text


# -- escaping ---------------------------------------------------------------------------------


async def test_hostile_text_is_escaped_on_every_page(store: Store) -> None:
    # What the engine records is valid UTF-8 (lone surrogates escaped: ids.safe_text), so
    # a store holds none; the flow run by `seed_demo` shows the engine's escape.
    hostile = HOSTILE.replace("\ud800", "")
    run = running_run(hostile)
    run.error_type, run.error_message, run.traceback = hostile, hostile, hostile
    run.launched_by = hostile
    await store.write(WriteBatch(flow_runs=[run]))
    await serve_flow(store, hostile)
    await store.write(
        WriteBatch(
            logs=[
                flowcore.records.LogRecord(
                    run.id, None, None, run.created, logging.ERROR, hostile, hostile
                )
            ]
        )
    )
    async with _client(store) as c:
        for path in ("/runs", f"/runs/{run.id}", f"/runs/{run.id}/logs", "/flows",
                     f"/runs/{run.id}/trace", f"/runs?flow={hostile[:30]}%ED%A0%80"):  # fmt: skip
            page = await c.get(path)
            assert page.status_code == 200, path
            _no_raw(page.text)
            if path.startswith(("/runs/", "/flows")) and not path.endswith("trace"):
                assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in page.text, path


# -- security -----------------------------------------------------------------------------


async def test_every_response_carries_the_security_headers(store: Store) -> None:
    async with _client(store) as c:
        for path in ("/runs", "/flows", "/static/app.css", "/runs/nope"):
            answer = await c.get(path)
            for name, value in HEADERS.items():
                assert answer.headers[name] == value, (path, name)
    assert "script-src 'self';" in HEADERS["Content-Security-Policy"]


async def test_without_allow_actions_no_action_route_exists(demo_run: str, store: Store) -> None:
    async with _client(store) as c:
        token = _csrf(c)
        for path in ("/actions/trigger", "/actions/schedules/pause",
                     f"/actions/runs/{demo_run}/resume"):  # fmt: skip
            answer = await c.post(path, data={"csrf": token, "flow": "demo"})
            assert answer.status_code == 404, path
        assert "Resume / retry" not in (await c.get(f"/runs/{demo_run}")).text


async def test_trigger_action_queues_a_trigger_by_the_ui(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    await serve_flow(store, "report")
    caplog.set_level(logging.INFO, logger="flowcore.ui")
    async with _client(store, allow_actions=True) as c:
        page = await c.get("/flows")
        assert "Trigger a run" in page.text and _csrf(c) in page.text
        answer = await c.post(
            "/actions/trigger",
            data={"csrf": _csrf(c), "flow": "report", "p.window": "60", "p.label": "7"},
        )
    assert answer.status_code == 303 and answer.headers["location"] == "/runs?flow=report"
    [trigger] = await store.list_triggers()
    assert trigger.flow == "report" and trigger.by == "ui"
    assert trigger.parameters == '{"window":60,"label":"7"}'  # label stays text
    assert any("triggered flow report" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("form", "status", "says"),
    [
        ({"flow": "report", "p.window": "1"}, 403, "CSRF"),
        ({"flow": "report", "p.window": "1", "csrf": "forged"}, 403, "CSRF"),
        ({"flow": "report", "p.nope": "1", "p.window": "1", "csrf": None}, 400, "&#39;nope&#39;"),
        ({"flow": "report", "csrf": None}, 400, "missing parameter &#39;window&#39;"),
        ({"flow": "report", "params_json": "[1]", "csrf": None}, 400, "expected an object"),
        ({"flow": "", "csrf": None}, 400, "flow:"),
    ],
)
async def test_trigger_action_refusals(
    store: Store, form: dict[str, Any], status: int, says: str
) -> None:
    await serve_flow(store, "report")
    async with _client(store, allow_actions=True) as c:
        if "csrf" in form and form["csrf"] is None:
            form["csrf"] = _csrf(c)
        answer = await c.post("/actions/trigger", data=form)
    assert answer.status_code == status
    assert says in answer.text
    assert await store.list_triggers() == []


async def test_a_cross_site_post_is_refused(store: Store) -> None:
    await serve_flow(store, "report")
    async with _client(store, allow_actions=True) as c:
        answer = await c.post(
            "/actions/trigger",
            data={"csrf": _csrf(c), "flow": "report", "p.window": "1"},
            headers={"Origin": "http://evil.example"},
        )
    assert answer.status_code == 403 and "cross-site" in answer.text
    assert await store.list_triggers() == []


async def test_pause_and_resume_a_schedule(store: Store) -> None:
    await serve_flow(store, "report")
    async with _client(store, allow_actions=True) as c:
        paused = await c.post(
            "/actions/schedules/pause", data={"csrf": _csrf(c), "schedule": "report/hourly"}
        )
        assert paused.status_code == 303
        assert [s.paused for s in await store.list_schedules()] == [True]
        assert "paused" in (await c.get("/flows")).text
        resumed = await c.post(
            "/actions/schedules/resume", data={"csrf": _csrf(c), "schedule": "report"}
        )
        assert resumed.status_code == 303
        assert [s.paused for s in await store.list_schedules()] == [False]
        unknown = await c.post(
            "/actions/schedules/pause", data={"csrf": _csrf(c), "schedule": "nope"}
        )
        assert unknown.status_code == 404 and "no stored schedule" in unknown.text
        other = await c.post("/actions/schedules/delete", data={"csrf": _csrf(c)})
        assert other.status_code == 404


async def test_resume_action_refuses_runs_it_cannot_resume(demo_run: str, store: Store) -> None:
    live = running_run()
    await store.write(WriteBatch(flow_runs=[live]))
    async with _client(store, allow_actions=True) as c:
        done = await c.post(f"/actions/runs/{demo_run}/resume", data={"csrf": _csrf(c)})
        going = await c.post(f"/actions/runs/{live.id}/resume", data={"csrf": _csrf(c)})
        missing = await c.post("/actions/runs/nosuch/resume", data={"csrf": _csrf(c)})
        no_csrf = await c.post(f"/actions/runs/{demo_run}/resume")
    assert done.status_code == 409 and "Completed" in done.text
    assert going.status_code == 409 and "Running" in going.text
    assert missing.status_code == 404
    assert no_csrf.status_code == 403


async def test_resume_action_starts_flowcore_resume(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    failed = ended(running_run("gone"), State.FAILED)
    await store.write(WriteBatch(flow_runs=[failed]))
    started: list[list[str]] = []

    class FakeProcess:
        def __init__(self, args: list[str], **kw: Any) -> None:
            started.append(args)

        def poll(self) -> int:
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakeProcess)
    caplog.set_level(logging.INFO, logger="flowcore.ui")
    async with _client(store, allow_actions=True) as c:
        page = await c.get(f"/runs/{failed.id}")
        assert "Resume / retry" in page.text
        answer = await c.post(f"/actions/runs/{failed.id}/resume", data={"csrf": _csrf(c)})
    assert answer.status_code == 303
    assert started and started[0][-2:] == ["resume", failed.id]
    assert any(f"resuming run {failed.id}" in r.getMessage() for r in caplog.records)


async def test_token_guards_every_page_but_login_and_static(store: Store) -> None:
    async with _client(store, token=TOKEN) as c:
        assert (await c.get("/runs")).status_code == 401
        browser = await c.get("/runs", headers={"Accept": "text/html"})
        assert browser.status_code == 303 and browser.headers["location"] == "/login"
        wrong = await c.get("/runs", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = await c.get("/runs", headers={"Authorization": f"Bearer {TOKEN}"})
        assert right.status_code == 200
        assert (await c.get("/login")).status_code == 200
        assert (await c.get("/static/app.css")).status_code == 200
        failed = await c.post("/login", data={"token": "guess"})
        assert failed.status_code == 401 and "not the token" in failed.text
        assert "flowcore_ui" not in c.cookies
        logged = await c.post("/login", data={"token": TOKEN})
        assert logged.status_code == 303
        cookie = logged.headers["set-cookie"]
        assert TOKEN not in cookie and "httponly" in cookie.lower()
        assert "samesite=strict" in cookie.lower()
        assert (await c.get("/runs")).status_code == 200  # the cookie
    async with _client(store, token=TOKEN) as other:  # another process: another secret
        other.cookies.set("flowcore_ui", logged.cookies["flowcore_ui"])
        assert (await other.get("/runs")).status_code == 401


async def test_loopback_server_refuses_other_host_names(store: Store) -> None:
    async with _client(store, allowed_hosts=None) as c:
        rebinding = await c.get("/runs", headers={"Host": "evil.example:8765"})
        local = await c.get("/runs", headers={"Host": "127.0.0.1:8765"})
        named = await c.get("/runs", headers={"Host": "localhost:8765"})
    assert rebinding.status_code == 400
    assert local.status_code == 200 and named.status_code == 200


def test_bind_rule() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com")
    check_bind(UIConfig(host="127.0.0.1"))
    check_bind(UIConfig(host="0.0.0.0", token=TOKEN))
    with pytest.raises(ConfigurationError, match="without a token"):
        check_bind(UIConfig(host="0.0.0.0"))
    with pytest.raises(ConfigurationError, match="too short"):
        check_bind(UIConfig(host="0.0.0.0", token="short"))


def test_cli_refuses_a_bind_beyond_loopback_without_a_token(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["ui", "--host", "0.0.0.0", "--home", str(tmp_path)])
    assert result.exit_code == 1
    assert "refusing to serve the UI on '0.0.0.0' without a token" in result.output


def test_cli_says_what_to_install_without_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("flowcore.cli.ui.MISSING", "starlette")
    result = CliRunner().invoke(cli, ["ui"])
    assert result.exit_code == 1
    assert "pip install 'flowcore[ui]'" in result.output


async def test_runs_time_range_reads_further_back_until_the_page_is_full(store: Store) -> None:
    base = time.time()
    runs = [running_run(f"r{i}") for i in range(1500)]
    for i, r in enumerate(runs):
        r.created = base - i
    await store.write(WriteBatch(flow_runs=runs))
    page = await find_runs(store, until=base - 1200, limit=10)  # past the first read of 1,000
    assert [r.name for r in page.runs] == [f"r{i}" for i in range(1201, 1211)]
    assert page.more
    tail = await find_runs(store, since=base - 1499.5, until=base - 1495, limit=10)
    assert [r.name for r in tail.runs] == [f"r{i}" for i in range(1496, 1500)]
    assert not tail.more
