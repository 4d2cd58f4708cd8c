"""Reading stored task results back: ``flowcore.task_result`` and ``read_task_result``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import anyio
import pytest

import flowcore
from flowcore.errors import PickleNotAllowed, ResultNotStored, ResultUnreadable


@dataclasses.dataclass
class Point:
    x: int
    y: int


@flowcore.task
async def make_point(x: int) -> Point:
    return Point(x, x + 1)


@flowcore.task
async def big_text(n: int) -> str:
    return "q" * n


@flowcore.task(serializer="pickle")
async def a_set() -> set[int]:
    return {3, 4}


@flowcore.task(persist_result=False)
async def unkept() -> int:
    return 5


@flowcore.task
async def unstorable() -> object:
    return object()  # msgpack cannot store it; best effort: not stored, task still completes


@flowcore.task
async def explode() -> int:
    raise ValueError("boom")


@flowcore.flow
async def everything() -> int:
    p = await make_point(1)
    text = await big_text(20_000)
    s = await a_set()
    await unkept()
    await unstorable()
    return p.x + len(text) + len(s)


@flowcore.flow
async def failing() -> None:
    await explode()


async def run_flow(flow: flowcore.Flow[[], Any], store: Any = None) -> str:
    """Run ``flow`` in an engine of its own; the id of the run, failed or not."""
    async with flowcore.Engine(store) as engine:
        try:
            await flow()
        except ValueError:
            pass
        assert engine.last_run is not None
        return engine.last_run.id


@pytest.mark.anyio
async def test_round_trip_as_plain_data() -> None:
    run_id = await run_flow(everything)
    # No return annotation to decode into here: a dataclass comes back as a dict.
    assert await flowcore.task_result(run_id, 0) == {"x": 1, "y": 2}
    assert await flowcore.task_result(run_id[:8], 1) == "q" * 20_000  # from its result file
    assert await flowcore.task_result(run_id, 2, allow_pickle=True) == {3, 4}


@pytest.mark.anyio
async def test_large_results_are_read_from_their_file(flowcore_home: Path) -> None:
    run_id = await run_flow(everything)
    files = [p for p in (flowcore_home / "results").rglob("*") if p.is_file()]
    assert len(files) == 1
    files[0].write_bytes(files[0].read_bytes()[:-1])  # truncate it
    with pytest.raises(ResultUnreadable, match="does not match its checksum"):
        await flowcore.task_result(run_id, 1)


@pytest.mark.anyio
async def test_pickle_is_not_loaded_unless_allowed() -> None:
    run_id = await run_flow(everything)
    with pytest.raises(PickleNotAllowed, match="pass allow_pickle=True") as caught:
        await flowcore.task_result(run_id, 2)
    assert isinstance(caught.value, ResultUnreadable)


@pytest.mark.anyio
async def test_missing_results_say_why() -> None:
    run_id = await run_flow(everything)
    for seq in (3, 4):  # persist_result=False; a value msgpack cannot store
        with pytest.raises(ResultNotStored, match="completed, but its result was not stored"):
            await flowcore.task_result(run_id, seq)
    failed_id = await run_flow(failing)
    with pytest.raises(ResultNotStored, match=r"ended Failed \(ValueError: boom\)") as caught:
        await flowcore.task_result(failed_id, 0)
    assert isinstance(caught.value, ResultUnreadable)  # one class catches every "no value"


@pytest.mark.anyio
async def test_unknown_run_or_seq_is_run_not_found(flowcore_home: Path) -> None:
    with pytest.raises(flowcore.RunNotFound, match="there is no flowcore database"):
        await flowcore.task_result("abc", 0)
    assert not (flowcore_home / "flowcore.db").exists()  # reading creates nothing
    run_id = await run_flow(everything)
    with pytest.raises(flowcore.RunNotFound, match=r"has no task run #9; it has task runs #0–#4"):
        await flowcore.task_result(run_id, 9)
    with pytest.raises(flowcore.RunNotFound, match="has no task run #-1"):
        await flowcore.task_result(run_id, -1)
    with pytest.raises(flowcore.RunNotFound, match="no run with id 'ffffffff'"):
        await flowcore.task_result("ffffffff", 0)
    with pytest.raises(flowcore.ConfigurationError, match="`seq` must be the int"):
        await flowcore.task_result(run_id, "1")  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_explicit_store_path_and_open_store_object(tmp_path: Path) -> None:
    db = tmp_path / "elsewhere.db"
    run_id = await run_flow(everything, store=db)
    assert await flowcore.task_result(run_id, 0, store=db) == {"x": 1, "y": 2}
    assert await flowcore.task_result(run_id, 1, store=str(db)) == "q" * 20_000
    with pytest.raises(flowcore.RunNotFound):
        await flowcore.task_result(run_id, 0)  # not in $FLOWCORE_HOME's database

    memory = flowcore.MemoryStore()
    mem_id = await run_flow(everything, store=memory)
    # An open store object is used as it is, and left open for its owner.
    assert await flowcore.task_result(mem_id, 0, store=memory) == {"x": 1, "y": 2}
    assert await flowcore.task_result(mem_id, 1, store=memory) == "q" * 20_000  # inline there


def test_read_task_result_sync() -> None:
    run_id = anyio.run(run_flow, everything)
    assert flowcore.read_task_result(run_id, 0) == {"x": 1, "y": 2}
    assert flowcore.read_task_result(run_id, 2, allow_pickle=True) == {3, 4}
    with pytest.raises(flowcore.RunNotFound):
        flowcore.read_task_result(run_id, 99)


@pytest.mark.anyio
async def test_read_task_result_inside_an_event_loop_says_to_await() -> None:
    with pytest.raises(flowcore.ConfigurationError, match=r"await flowcore.task_result"):
        flowcore.read_task_result("abc", 0)
