"""Triggers: the parameters ``flowcore trigger`` queues, and a running server picking a
trigger up as soon as the store changes (its change token), without a slot to wake it."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

import flowcore
from flowcore import State
from flowcore.cli.trigger import trigger_parameters
from flowcore.errors import ConfigurationError
from flowcore.records import Trigger
from flowcore.serve import Server
from flowcore.serve.registry import parameters_schema
from flowcore.store.memory import MemoryStore

pytestmark = pytest.mark.anyio


@flowcore.flow
async def report(name: str, days: int = 7, ids: list[int] | None = None) -> str:
    return f"{name}:{days}:{ids}"


@flowcore.flow
async def loose(first: int, **rest: Any) -> None:
    pass


def schema(flow: flowcore.Flow[Any, Any]) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(parameters_schema(flow))
    return value


def test_values_are_text_where_the_schema_takes_text_else_json_when_json() -> None:
    got = trigger_parameters(("name=123", "days=14", "ids=[1, 2]"), None, schema(report))
    assert got == {"name": "123", "days": 14, "ids": [1, 2]}
    assert trigger_parameters(("days=soon",), '{"name": "x"}', schema(report)) == {
        "name": "x",
        "days": "soon",  # not JSON: kept as text, and the flow refuses it when it runs
    }


def test_names_are_checked_against_the_schema_when_there_is_one() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown parameter 'nme'.*name, days, ids"):
        trigger_parameters(("nme=x",), None, schema(report))
    with pytest.raises(ConfigurationError, match="missing parameter 'name'"):
        trigger_parameters(("days=1",), None, schema(report))
    with pytest.raises(ConfigurationError, match="given twice"):
        trigger_parameters(("name=a",), '{"name": "b"}', schema(report))
    with pytest.raises(ConfigurationError, match="NAME=VALUE"):
        trigger_parameters(("name",), None, schema(report))
    assert trigger_parameters(("first=1", "other=x"), None, schema(loose)) == {
        "first": 1,
        "other": "x",  # **rest takes any name
    }
    assert trigger_parameters(("anything=1",), None, None) == {"anything": 1}  # not served


def test_the_schema_is_json_schema_with_types_and_defaults() -> None:
    got = schema(report)
    assert got["required"] == ["name"]
    assert got["additionalProperties"] is False
    assert got["properties"]["days"] == {"type": "integer", "default": 7, "x-flowcore-type": "int"}
    assert got["properties"]["ids"]["default"] is None
    assert schema(loose)["additionalProperties"] is True


async def test_a_serving_server_picks_a_trigger_up_when_the_store_changes() -> None:
    ran = anyio.Event()

    @flowcore.flow
    async def ping(days: int) -> int:
        ran.set()
        return days

    store = MemoryStore()
    async with (
        flowcore.Engine(store, tracing=False) as engine,
        Server([ping], engine=engine) as server,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(server.serve_forever)
        await store.enqueue_trigger(Trigger("t-1", "ping", '{"days": "3"}', created=0.0))
        with anyio.fail_after(30):  # no slot wakes it: the change token does
            await ran.wait()
        await server.wait_idle()
        server.stop()
    found = await store.get_trigger("t-1")
    assert found is not None and found.run_id is not None
    assert found.claimed_by == server.holder
    run = await store.get_run(found.run_id)
    assert run.state is State.COMPLETED
    assert run.launched_by == "trigger t-1"
