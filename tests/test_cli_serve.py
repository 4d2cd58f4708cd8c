"""``flowcore flows ls``, ``flowcore schedules ls|pause|resume`` and ``flowcore serve``'s
choice of flows, against a server registered in the test's SQLite store.

The commands run in a worker thread (each opens the store in an event loop of its
own) while the server is open in the test's loop.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner, Result

import flowcore
from flowcore import State
from flowcore.cli import cli
from flowcore.cli.serve import served_in
from flowcore.errors import FlowLoadError
from flowcore.serve import Server
from flowcore.testing import FakeClock

pytestmark = pytest.mark.anyio

#: The next 5-minute boundary: a slot of the */5 schedule below, just ahead of the real time
#: the readers judge heartbeats by (so the fake clock's heartbeats read as fresh); moved on
#: by 5 minutes when the slot after it is on the hour, where the hourly schedule fires too
#: (whichever run ends last would be the "last run", whatever the time of day).
T0 = (time.time() // 300 + 1) * 300
if (T0 + 300) % 3600 == 0:
    T0 += 300


@flowcore.flow(
    schedule=[
        flowcore.cron("*/5 * * * *", tz="Europe/Paris"),
        flowcore.every(hours=1, name="hourly", parameters={"pages": 2}),
    ]
)
async def ingest(pages: int = 20, mode: str = "full") -> int:
    return pages


@flowcore.flow
async def add(x: int, y: int = 2) -> int:
    return x + y


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


async def run_cli(*args: str) -> Result:
    return await anyio.to_thread.run_sync(lambda: invoke(*args))


@asynccontextmanager
async def server(clock: FakeClock | None = None) -> AsyncIterator[Server]:
    async with (
        flowcore.Engine(clock=clock, tracing=False) as engine,
        Server([ingest, add], engine=engine) as served,
    ):
        yield served


async def test_flows_ls_shows_servers_schedules_parameters_and_last_run() -> None:
    clock = FakeClock(T0 + 1)
    async with server(clock) as served:
        clock.advance(300)
        await served.tick()  # the */5 slot fires
        await served.wait_idle()
        shown = await run_cli("flows", "ls")
        as_json = await run_cli("flows", "ls", "--json")
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert all(len(line) <= 80 for line in lines), shown.output
    assert "ingest" in lines and "add" in lines
    assert "alive" in shown.output
    assert "  schedule cron */5 * * * * (Europe/Paris)\n           next " in shown.output
    assert "  schedule hourly: every 1h\n           next " in shown.output
    assert "params   pages: int?, mode: str?" in shown.output
    assert "params   x: int, y: int?" in shown.output
    assert "last run" in shown.output and "Completed (schedule */5 * * * * Europe/Paris)" in (
        shown.output
    )
    data = {f["flow"]: f for f in json.loads(as_json.output)}
    assert set(data) == {"ingest", "add"}
    flow = data["ingest"]
    assert flow["served"] is True
    assert [s["key"] for s in flow["schedules"]] == ["*/5 * * * * Europe/Paris", "hourly"]
    assert flow["schedules"][1]["description"]["parameters"] == {"pages": 2}
    assert flow["parameters"]["properties"]["pages"]["type"] == "integer"
    assert flow["parameters"]["properties"]["pages"]["default"] == 20
    assert data["add"]["parameters"]["required"] == ["x"]
    assert flow["last_run"]["state"] == "Completed"
    assert flow["servers"][0]["fresh"] is True
    # The server left: its rows are gone, its schedules stay (not served now).
    after = await run_cli("flows", "ls")
    assert "none (not served now)" in after.output
    assert "(not served now)" in after.output


async def test_pause_and_resume_by_flow_or_by_key() -> None:
    clock = FakeClock(T0 + 1)
    async with server(clock) as served:
        paused = await run_cli("schedules", "pause", "ingest/hourly")
        assert paused.exit_code == 0, paused.output
        assert "paused 1 schedule of flow ingest" in paused.output
        listed = await run_cli("schedules", "ls", "ingest", "--json")
        assert {s["key"]: s["paused"] for s in json.loads(listed.output)} == {
            "*/5 * * * * Europe/Paris": False,
            "hourly": True,
        }
        clock.advance(3600)  # both schedules due: only the */5 one fires
        await served.tick()
        await served.wait_idle()
        runs = await served.store.list_runs(name="ingest")
        assert [r.launched_by for r in runs] == ["schedule */5 * * * * Europe/Paris"]
        everything = await run_cli("schedules", "pause", "ingest")
        assert "paused 2 schedules of flow ingest" in everything.output
        text = await run_cli("schedules", "ls")
        assert text.output.count("paused") == 2
        resumed = await run_cli("schedules", "resume", "ingest")
        assert "resumed 2 schedules" in resumed.output
        states = await served.store.list_schedules(flow="ingest")
        assert [s.paused for s in states] == [False, False]


async def test_pausing_an_unknown_schedule_names_the_known_ones() -> None:
    async with server():
        result = await run_cli("schedules", "pause", "nope")
    assert result.exit_code == 1
    assert "no stored schedule named 'nope'" in result.output
    assert "ingest/hourly" in result.output


async def test_trigger_checks_names_against_the_registered_schema() -> None:
    async with server() as served:
        queued = await run_cli("trigger", "add", "--param", "x=40")
        assert queued.exit_code == 0, queued.output
        trigger_id = queued.output.splitlines()[0]
        unknown = await run_cli("trigger", "add", "--param", "z=1")
        missing = await run_cli("trigger", "add", "--params-json", '{"y": 3}')
        as_json = await run_cli("trigger", "add", "--param", "x=[1]", "--json")
        pending = await served.store.list_triggers(flow="add", pending=True)
    assert unknown.exit_code == 1 and "unknown parameter 'z'" in unknown.output
    assert "the flow's parameters: x, y" in unknown.output
    assert missing.exit_code == 1 and "missing parameter 'x'" in missing.output
    data = json.loads(as_json.output)
    assert data["parameters"] == {"x": [1]}  # JSON when it is JSON: the flow decides later
    assert {t.id for t in pending} == {trigger_id, data["trigger"]}
    first = next(t for t in pending if t.id == trigger_id)
    assert json.loads(first.parameters) == {"x": 40}


async def test_trigger_of_a_flow_no_server_registered_waits_in_the_queue() -> None:
    result = await run_cli("trigger", "later", "--param", "x=1")
    assert result.exit_code == 0
    assert "no server has registered flow 'later'" in result.output


async def test_trigger_wait_exits_0_when_the_run_completed_and_1_otherwise() -> None:
    async with server() as served, anyio.create_task_group() as tg:
        tg.start_soon(served.serve_forever)
        good = await run_cli("trigger", "add", "--param", "x=40", "--wait")
        bad = await run_cli("trigger", "add", "--param", "x=forty", "--wait", "--json")
        served.stop()
    assert good.exit_code == 0, good.output
    assert "Completed" in good.output.splitlines()[-1]
    assert bad.exit_code == 1
    data = json.loads(bad.output)
    assert data["state"] == str(State.FAILED)
    assert "forty" in data["error_message"]


def test_serve_chooses_the_scheduled_flows_of_a_file(tmp_path: Path) -> None:
    path = tmp_path / "flows.py"
    path.write_text(
        textwrap.dedent(
            """
            import flowcore

            @flowcore.flow(schedule=flowcore.every(minutes=1))
            async def scheduled() -> None: ...

            @flowcore.flow
            async def manual() -> None: ...
            """
        )
    )
    plain = tmp_path / "plain.py"
    plain.write_text("import flowcore\n\n@flowcore.flow\nasync def a() -> None: ...\n")
    names = [f.name for f in served_in((str(path),))]
    assert names == ["scheduled"]
    assert [f.name for f in served_in((f"{path}:manual", str(plain)))] == ["manual", "a"]
    with pytest.raises(FlowLoadError, match="no flow named 'nope'"):
        served_in((f"{path}:nope",))
    result = invoke("serve", str(tmp_path / "missing.py"))
    assert result.exit_code == 1 and "no such file" in result.output
