"""What user code may know about the runs it is in, and flows copied with other options."""

from __future__ import annotations

import threading

import pytest

import flowcore
from flowcore.engine import Engine
from flowcore.store.memory import MemoryStore

pytestmark = pytest.mark.anyio


async def test_current_flow_run_and_task_run_are_read_only_information() -> None:
    seen: dict[str, object] = {}
    attempts: list[int] = []

    @flowcore.task(retries=1)
    async def step(x: int) -> int:
        info = flowcore.current_task_run()
        attempts.append(info.attempt)
        if info.attempt == 1:
            raise ConnectionError("once")
        seen["task"] = info
        assert dict(info.parameters) == {"x": x}
        seen["flow_in_task"] = flowcore.current_flow_run()
        return x

    @flowcore.task
    def in_thread() -> tuple[str, int]:
        info = flowcore.current_task_run()
        return info.name, threading.get_ident()

    @flowcore.flow
    async def work(n: int, label: str = "x") -> int:
        flow_info = flowcore.current_flow_run()
        seen["flow"] = flow_info
        await in_thread()
        return await step(n)

    async with flowcore.Engine("memory") as engine:
        assert await work(3) == 3
        assert engine.last_run is not None
        run_id = engine.last_run.id
    flow = seen["flow"]
    task = seen["task"]
    assert isinstance(flow, flowcore.FlowRunInfo) and isinstance(task, flowcore.TaskRunInfo)
    assert (flow.id, flow.name, dict(flow.parameters), flow.attempt) == (
        run_id,
        "work",
        {"n": 3, "label": "x"},
        1,
    )
    assert (task.run_id, task.seq, task.name, task.id) == (run_id, 1, "step", f"{run_id[:8]}.1")
    assert attempts == [1, 2]
    assert seen["flow_in_task"] == flow
    with pytest.raises(TypeError):
        flow.parameters["n"] = 4  # type: ignore[index]
    with pytest.raises(AttributeError):
        task.seq = 9  # type: ignore[misc]


def test_outside_a_run_each_says_where_to_call_it() -> None:
    with pytest.raises(flowcore.ConfigurationError, match="outside a flow run"):
        flowcore.current_flow_run()
    with pytest.raises(flowcore.ConfigurationError, match="current_flow_run"):
        flowcore.current_task_run()


async def test_a_flow_itself_is_not_a_task_run() -> None:
    @flowcore.flow
    async def work() -> None:
        with pytest.raises(flowcore.ConfigurationError, match="not a task run"):
            flowcore.current_task_run()

    async with flowcore.Engine("memory"):
        await work()


async def test_flow_with_options_changes_only_what_it_names() -> None:
    @flowcore.flow(timeout=60, concurrency=4)
    async def etl(n: int) -> int:
        return n

    nightly = etl.with_options(name="etl-nightly", concurrency=None)
    assert (nightly.name, nightly.timeout, nightly.concurrency) == ("etl-nightly", 60.0, None)
    assert (etl.name, etl.timeout, etl.concurrency) == ("etl", 60.0, 4)
    with pytest.raises(flowcore.ConfigurationError, match="`timeout`"):
        etl.with_options(timeout=-1)
    async with flowcore.Engine("memory") as engine:
        assert await nightly(5) == 5
        assert engine.last_run is not None and engine.last_run.name == "etl-nightly"


def test_flow_with_options_keeps_its_schedules_and_print_capture() -> None:
    @flowcore.flow(schedule=flowcore.every(minutes=5), log_prints=True)
    async def etl() -> None:
        pass

    copy = etl.with_options(name="etl-copy")
    assert copy.schedules == etl.schedules and copy.log_prints is True
    assert copy.fn is etl.fn  # the plain function, whatever wraps it for a run


async def test_a_launched_run_records_its_slot_and_the_run_sees_it() -> None:
    from datetime import UTC, datetime

    from flowcore.records import Launch

    seen: list[flowcore.FlowRunInfo] = []

    @flowcore.flow
    async def nightly(pages: int) -> int:
        seen.append(flowcore.current_flow_run())
        return pages

    store = MemoryStore()
    async with Engine(store=store):
        result = await nightly.call_with(
            {"pages": "3"},
            launch=Launch(
                "schedule nightly", scheduled_for=7200.0, interval_start=3600.0, interval_end=7200.0
            ),
        )
        plain = await nightly(pages=1)
    assert result == 3 and plain == 1
    info = seen[0]
    assert info.scheduled_for == datetime(1970, 1, 1, 2, tzinfo=UTC)
    assert info.interval_start == datetime(1970, 1, 1, 1, tzinfo=UTC)
    assert info.interval_end == info.scheduled_for
    assert info.launched_by == "schedule nightly"
    assert seen[1].scheduled_for is None and seen[1].launched_by is None
    runs = await store.list_runs(name="nightly")
    scheduled = [r for r in runs if r.launched_by]
    assert [r.scheduled_for for r in scheduled] == [7200.0]
