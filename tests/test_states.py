"""Every history the engine records follows the transition table in flowcore/states.py.

Every state change goes through ``flowcore.records.transition``, which checks it
against the table at run time; this test also drives every kind of ending
through the engine and holds each recorded history to the table.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import cast

import anyio
import pytest

import flowcore
from flowcore import State
from flowcore.records import TaskRunRecord, transition
from flowcore.states import NEXT, TERMINAL, check_transition

pytestmark = pytest.mark.anyio


async def test_every_recorded_history_follows_the_transition_table() -> None:
    calls = {"flaky": 0}

    @flowcore.task(retries=2, tags=["api"])
    async def flaky(i: int) -> int:
        calls["flaky"] += 1
        if calls["flaky"] % 3 == 1:
            raise ConnectionError("flaky")
        await anyio.sleep(0.001)
        return i

    @flowcore.task(timeout=0.02, retries=1)
    async def slow() -> None:
        await anyio.sleep(1)

    @flowcore.task
    async def broken() -> int:
        raise ValueError("broken")

    @flowcore.task
    async def downstream(x: int) -> int:
        return x

    @flowcore.task(cache=True)
    async def cached(x: int) -> int:
        return x * 2

    @flowcore.task(tags=["api"])
    async def hang() -> None:
        await anyio.sleep(60)

    @flowcore.flow
    async def everything() -> None:
        await asyncio.gather(*(flaky(i) for i in range(12)))  # retries, waits for "api"
        with pytest.raises(flowcore.TaskTimeout):
            await slow()
        bad = broken.submit()
        with pytest.raises(flowcore.UpstreamFailed):
            # a future stands for its result (cast: the signature can't say so)
            await downstream(cast(int, bad))
        with pytest.raises(ValueError):
            await bad
        await cached(1)
        await cached(1)  # a hit
        with anyio.move_on_after(0.05):  # cancelled holding the limit, and waiting for it
            await asyncio.gather(hang(), hang(), hang())

    async with flowcore.Engine("memory", limits=[flowcore.limit("api", 2)]) as engine:
        await everything()
        await engine.recorder.flush()
        (run,) = await engine.store.list_runs()
        tasks = await engine.store.list_task_runs(run.id)
    seen: set[State] = set()
    for t in tasks:
        states = [State(entry[0]) for entry in t.history]
        assert states[0] in (State.PENDING, State.RUNNING), (t.name, states)
        for before, after in itertools.pairwise(states):
            check_transition(before, after)  # raises on a transition the table forbids
        assert states[-1] is t.state and t.state in TERMINAL, (t.name, states)
        seen.update(states)
    # The scenario really produced every kind of ending and the waits in between.
    assert seen >= {
        State.PENDING, State.RUNNING, State.RETRYING, State.COMPLETED, State.CACHED,
        State.FAILED, State.TIMED_OUT, State.CANCELLED, State.UPSTREAM_FAILED,
    }  # fmt: skip
    assert any(
        [State(e[0]) for e in t.history][:3] == [State.RUNNING, State.PENDING, State.RUNNING]
        for t in tasks
    )  # a wait for the limit


def test_the_table_refuses_leaving_a_terminal_state() -> None:
    for state in TERMINAL:
        with pytest.raises(RuntimeError, match="illegal state transition"):
            check_transition(state, State.RUNNING)


def test_a_move_the_table_forbids_is_refused_and_not_recorded() -> None:
    rec = TaskRunRecord(run_id="r", seq=0, name="t", state=State.PENDING, created=1.0)
    transition(rec, State.RUNNING, 2.0)
    transition(rec, State.COMPLETED, 3.0, "done")
    assert rec.history == [("Running", 2.0), ("Completed", 3.0, "done")]
    assert rec.ended == 3.0  # reaching a terminal state ends the record
    for state in State:
        with pytest.raises(RuntimeError, match="illegal state transition Completed ->"):
            transition(rec, state, 4.0)
    assert rec.state is State.COMPLETED and len(rec.history) == 2  # nothing recorded


def test_the_table_has_a_row_for_every_state_and_terminal_ones_lead_nowhere() -> None:
    assert set(NEXT) == set(State)
    assert all(not NEXT[state] for state in TERMINAL)
    assert all(NEXT[state] for state in set(State) - TERMINAL)
