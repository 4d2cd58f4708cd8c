"""The server on a fake clock and the memory store: slots, catch-up, restarts, pause,
overlap policies, max_runs, triggers, crashes found. Each wake is driven by hand
(``server.tick()``) with the clock moved between them, so hours pass in microseconds
and nothing depends on timing."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest

import flowcore
from flowcore import State
from flowcore.errors import ConfigurationError
from flowcore.records import FlowRunRecord, Trigger, WriteBatch
from flowcore.schedules import Overlap
from flowcore.serve import Server, crashes, serve
from flowcore.serve.api import check_options
from flowcore.store.memory import MemoryStore
from flowcore.testing import FakeClock

pytestmark = pytest.mark.anyio

#: 2026-01-01 00:00:00 UTC: every schedule below has a slot here.
T0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()


@asynccontextmanager
async def serving(
    *flows: flowcore.Flow[Any, Any],
    clock: FakeClock,
    store: MemoryStore,
    max_runs: int = 100,
    grace: float = 30.0,
) -> AsyncIterator[Server]:
    async with (
        flowcore.Engine(store, clock=clock, tracing=False) as engine,
        Server(flows, engine=engine, max_runs=max_runs, grace=grace) as server,
    ):
        yield server


async def runs_of(store: MemoryStore, name: str) -> list[FlowRunRecord]:
    """Runs of ``name``, oldest slot first."""
    found = await store.list_runs(name=name, limit=10_000)
    return sorted(found, key=lambda r: (r.scheduled_for or 0, r.created))


class Starts:
    """The ids of the runs that started, and a way to wait for the n-th."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self._event = anyio.Event()

    def add(self) -> None:
        self.ids.append(flowcore.current_flow_run().id)
        self._event.set()
        self._event = anyio.Event()

    async def reach(self, count: int) -> None:
        with anyio.fail_after(10):
            while len(self.ids) < count:
                await self._event.wait()

    def __len__(self) -> int:
        return len(self.ids)


async def test_each_slot_fires_once_with_its_slot_and_interval() -> None:
    seen: list[flowcore.FlowRunInfo] = []

    @flowcore.flow(schedule=flowcore.every(minutes=5, parameters={"x": "3"}))
    async def every5(x: int) -> int:
        seen.append(flowcore.current_flow_run())
        return x

    clock, store = FakeClock(T0 + 1), MemoryStore()
    async with serving(every5, clock=clock, store=store) as server:
        for _ in range(3):
            await server.tick()  # nothing due between slots
            clock.advance(300)
            await server.tick()
            await server.wait_idle()
    runs = await runs_of(store, "every5")
    assert [r.state for r in runs] == [State.COMPLETED] * 3
    assert [r.scheduled_for for r in runs] == [T0 + 300, T0 + 600, T0 + 900]
    assert [(r.interval_start, r.interval_end) for r in runs] == [
        (T0, T0 + 300),
        (T0 + 300, T0 + 600),
        (T0 + 600, T0 + 900),
    ]
    assert {r.launched_by for r in runs} == {"schedule every 5m"}
    assert [i.parameters["x"] for i in seen] == [3, 3, 3]  # converted by the annotation
    assert [i.scheduled_for for i in seen] == [
        datetime.fromtimestamp(T0 + k * 300, UTC) for k in (1, 2, 3)
    ]
    assert [i.id for i in seen] == [r.id for r in runs]  # the claimed row's id
    slots = await store.list_slots("every5")
    assert sorted(s.slot for s in slots) == [T0 + 300, T0 + 600, T0 + 900]
    assert (await store.list_schedules())[0].cursor == T0 + 900


@pytest.mark.parametrize("catchup", ["latest", "all", "none"])
async def test_catch_up_after_three_hours_down(
    catchup: str, caplog: pytest.LogCaptureFixture
) -> None:
    extra: dict[str, Any] = {"max_catchup": 10} if catchup == "all" else {}

    @flowcore.flow(schedule=flowcore.every(minutes=5, catchup=catchup, **extra))  # type: ignore[arg-type]
    async def etl() -> None:
        pass

    clock, store = FakeClock(T0 + 1), MemoryStore()
    async with serving(etl, clock=clock, store=store) as server:
        clock.advance(300)
        await server.tick()
        await server.wait_idle()
    assert len(await runs_of(store, "etl")) == 1  # the slot at T0 + 300
    # Down for three hours (and 150 s): 36 slots missed, the newest (T0 + 11100) 151 s ago.
    clock.advance(3 * 3600 + 150)
    caplog.set_level(logging.INFO, "flowcore.serve")
    async with serving(etl, clock=clock, store=store) as server:
        for _ in range(12):  # a backlog fires in turn, as runs end (max_active_runs=1)
            await server.tick()
            await server.wait_idle()
    runs = await runs_of(store, "etl")
    newest = T0 + 300 + 36 * 300
    fired = [r.scheduled_for for r in runs[1:]]
    skipped = sorted(s.slot for s in await store.list_slots("etl", limit=1000) if s.skipped)
    if catchup == "latest":
        assert fired == [newest]
        assert skipped == [T0 + 600, newest - 300]  # the range skipped, recorded at both ends
    elif catchup == "all":
        assert fired == [newest - 300 * k for k in range(9, -1, -1)]  # the newest 10
        assert skipped == [T0 + 600, newest - 3000]
        assert "catch-up capped at max_catchup=10" in caplog.text
    else:
        assert fired == []
        assert skipped == [T0 + 600, newest]
    assert all(r.state is State.COMPLETED for r in runs)
    assert "skipped slot" in caplog.text
    assert "overlap" not in caplog.text
    assert (await store.list_schedules())[0].cursor == newest


async def test_a_restart_resumes_from_the_stored_cursor() -> None:
    @flowcore.flow(schedule=flowcore.every(minutes=1))
    async def minutely() -> None:
        pass

    clock, store = FakeClock(T0 + 1), MemoryStore()
    async with serving(minutely, clock=clock, store=store) as server:
        clock.advance(60)
        await server.tick()
        await server.wait_idle()
    clock.advance(30)  # restarted before the next slot: nothing is due, nothing re-fired
    async with serving(minutely, clock=clock, store=store) as server:
        await server.tick()
        assert len(await runs_of(store, "minutely")) == 1
        clock.advance(30)
        await server.tick()
        await server.wait_idle()
    assert [r.scheduled_for for r in await runs_of(store, "minutely")] == [T0 + 60, T0 + 120]


async def test_a_paused_schedule_does_not_fire_and_resumes_without_a_backlog() -> None:
    @flowcore.flow(schedule=flowcore.every(minutes=1, catchup="latest"))
    async def paused() -> None:
        pass

    clock, store = FakeClock(T0 + 1), MemoryStore()
    async with serving(paused, clock=clock, store=store) as server:
        assert await store.set_paused("paused", None, True) == 1
        for _ in range(5):
            clock.advance(60)
            await server.tick()
        assert await runs_of(store, "paused") == []
        await store.set_paused("paused", None, False)
        await server.tick()
        await server.wait_idle()
    runs = await runs_of(store, "paused")
    assert [r.scheduled_for for r in runs] == [T0 + 300]  # the newest missed slot only


async def test_inactive_schedules_never_fire() -> None:
    @flowcore.flow(schedule=flowcore.every(minutes=1, active=False))
    async def inactive() -> None:
        pass

    clock, store = FakeClock(T0 + 1), MemoryStore()
    async with serving(inactive, clock=clock, store=store) as server:
        for _ in range(3):
            clock.advance(60)
            await server.tick()
    assert await runs_of(store, "inactive") == []
    assert [s.key for s in await store.list_schedules()] == ["every 1m"]  # registered all the same


def slow_flow(
    overlap: Overlap, **options: Any
) -> tuple[flowcore.Flow[Any, Any], anyio.Event, Starts]:
    """A minutely flow whose runs wait for ``release``; ``started`` lists their ids."""
    release = anyio.Event()
    started = Starts()

    @flowcore.flow(
        name=f"slow_{overlap}", schedule=flowcore.every(minutes=1, overlap=overlap, **options)
    )
    async def slow() -> None:
        started.add()
        await release.wait()

    return slow, release, started


async def test_overlap_skip_claims_the_slot_skipped() -> None:
    slow, release, started = slow_flow("skip")
    clock, store = FakeClock(T0 + 1), MemoryStore()
    async with serving(slow, clock=clock, store=store) as server:
        clock.advance(60)
        await server.tick()
        await started.reach(1)
        clock.advance(60)
        await server.tick()
        release.set()
        await server.wait_idle()
        clock.advance(60)
        await server.tick()
        await server.wait_idle()
    runs = await runs_of(store, "slow_skip")
    assert [(r.scheduled_for, r.state) for r in runs] == [
        (T0 + 60, State.COMPLETED),
        (T0 + 180, State.COMPLETED),
    ]
    skipped = [s for s in await store.list_slots("slow_skip") if s.skipped]
    assert [s.slot for s in skipped] == [T0 + 120]
    assert skipped[0].skipped is not None and "overlap='skip'" in skipped[0].skipped
    assert runs[0].id[:8] in skipped[0].skipped


async def test_overlap_queue_fires_the_slot_when_the_run_ends() -> None:
    slow, release, started = slow_flow("queue")
    clock, store = FakeClock(T0 + 1), MemoryStore()
    async with serving(slow, clock=clock, store=store) as server:
        clock.advance(60)
        await server.tick()
        await started.reach(1)
        clock.advance(60)
        await server.tick()
        assert len(await store.list_slots("slow_queue")) == 1  # the slot waits, unclaimed
        release.set()
        await server.wait_idle()
        await server.tick()  # the run's end woke the server
        await server.wait_idle()
    runs = await runs_of(store, "slow_queue")
    assert [(r.scheduled_for, r.state) for r in runs] == [
        (T0 + 60, State.COMPLETED),
        (T0 + 120, State.COMPLETED),
    ]


async def test_overlap_cancel_previous_cancels_the_running_one() -> None:
    slow, release, started = slow_flow("cancel_previous")
    clock, store = FakeClock(T0 + 1), MemoryStore()
    async with serving(slow, clock=clock, store=store) as server:
        clock.advance(60)
        await server.tick()
        await started.reach(1)
        clock.advance(60)
        await server.tick()
        await started.reach(2)
        release.set()
        await server.wait_idle()
    runs = await runs_of(store, "slow_cancel_previous")
    assert [(r.scheduled_for, r.state) for r in runs] == [
        (T0 + 60, State.CANCELLED),
        (T0 + 120, State.COMPLETED),
    ]


async def test_overlap_allow_runs_both() -> None:
    slow, release, started = slow_flow("allow")
    clock, store = FakeClock(T0 + 1), MemoryStore()
    async with serving(slow, clock=clock, store=store) as server:
        for _ in range(2):
            clock.advance(60)
            await server.tick()
        await started.reach(2)
        release.set()
        await server.wait_idle()
    runs = await runs_of(store, "slow_allow")
    assert [r.state for r in runs] == [State.COMPLETED, State.COMPLETED]


async def test_max_active_runs_counts_runs_of_other_servers() -> None:
    slow, release, started = slow_flow("skip")
    clock, store = FakeClock(T0 + 1), MemoryStore()
    async with (
        serving(slow, clock=clock, store=store) as one,
        serving(slow, clock=clock, store=store) as two,
    ):
        clock.advance(60)
        await one.tick()
        await started.reach(1)
        clock.advance(60)
        await two.tick()  # the other server's run is active: skipped
        assert not two.running
        release.set()
        await one.wait_idle()
    skipped = [s.slot for s in await store.list_slots("slow_skip") if s.skipped]
    assert skipped == [T0 + 120]


async def test_max_runs_leaves_what_it_cannot_start_unclaimed() -> None:
    release = anyio.Event()

    def make(name: str) -> flowcore.Flow[Any, Any]:
        @flowcore.flow(name=name, schedule=flowcore.every(minutes=1))
        async def waits() -> None:
            await release.wait()

        return waits

    a, b = make("a"), make("b")
    clock, store = FakeClock(T0 + 1), MemoryStore()
    async with serving(a, b, clock=clock, store=store, max_runs=1) as server:
        clock.advance(60)
        await server.tick()
        assert len(server.running) == 1
        claimed = await store.list_slots("a") + await store.list_slots("b")
        assert len(claimed) == 1  # the other slot was not claimed: another server may take it
        release.set()
        await server.wait_idle()
        await server.tick()
        await server.wait_idle()
    assert len(await runs_of(store, "a")) == 1
    assert len(await runs_of(store, "b")) == 1


async def test_a_trigger_runs_once_with_its_parameters_across_two_servers() -> None:
    got: list[int] = []

    @flowcore.flow
    async def add(x: int, y: int = 2) -> int:
        got.append(x + y)
        return x + y

    clock, store = FakeClock(T0 + 1), MemoryStore()
    await store.enqueue_trigger(Trigger("t1", "add", '{"x": "40"}', T0, by="me@here"))
    async with (
        serving(add, clock=clock, store=store) as one,
        serving(add, clock=clock, store=store) as two,
    ):
        await one.tick()
        await two.tick()
        await one.wait_idle()
        await two.wait_idle()
    assert got == [42]
    trigger = await store.get_trigger("t1")
    assert trigger is not None and trigger.run_id is not None
    run = await store.get_run(trigger.run_id)
    assert run.state is State.COMPLETED
    assert run.launched_by == "trigger t1"


async def test_invalid_trigger_parameters_make_a_failed_run() -> None:
    @flowcore.flow
    async def typed(x: int) -> int:
        return x

    clock, store = FakeClock(T0 + 1), MemoryStore()
    await store.enqueue_trigger(Trigger("bad", "typed", '{"x": "not a number"}', T0))
    await store.enqueue_trigger(Trigger("worse", "typed", "[1, 2]", T0 + 1))
    async with serving(typed, clock=clock, store=store) as server:
        await server.tick()
        await server.wait_idle()
    for trigger_id in ("bad", "worse"):
        trigger = await store.get_trigger(trigger_id)
        assert trigger is not None and trigger.run_id is not None
        run = await store.get_run(trigger.run_id)
        assert run.state is State.FAILED
        assert run.error_type == "flowcore.ParameterError"


async def test_on_crashed_found_is_called_once_across_two_servers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    @flowcore.flow
    async def fragile() -> None:
        pass

    calls: list[tuple[str, str]] = []

    async def found(flow: flowcore.Flow[Any, Any], record: FlowRunRecord, engine: Any) -> None:
        calls.append((flow.name, record.id))

    monkeypatch.setattr(crashes, "on_crashed_found", found)
    clock, store = FakeClock(T0 + 1), MemoryStore()
    dead = FlowRunRecord(
        id="d" * 32,
        name="fragile",
        kind="flow",
        state=State.RUNNING,
        created=T0 - 100,
        started=T0 - 100,
        heartbeat=T0 - 100,  # silent for longer than STALE_AFTER, on another machine
        history=[("Running", T0 - 100)],
        host="elsewhere",
        pid=1,
        machine="another-machine",
    )
    await store.write(WriteBatch(flow_runs=[dead]))
    async with (
        serving(fragile, clock=clock, store=store) as one,
        serving(fragile, clock=clock, store=store) as two,
    ):
        await one.beat()
        await two.beat()
        await one.beat()
    assert calls == [("fragile", "d" * 32)]
    assert (await store.get_run("d" * 32)).state is State.CRASHED


async def test_a_crash_found_by_serve_fires_on_crashed_then_on_failure_once() -> None:
    """Two servers find the same crashed run: its flow's on_crashed then on_failure hooks
    fire once in all, with the run as marked Crashed."""
    seen: list[tuple[str, str, str]] = []

    def hook(event: flowcore.HookEvent) -> None:
        seen.append((event.kind, event.run_id, event.state.value))

    async def failing_hook(event: flowcore.HookEvent) -> None:
        raise RuntimeError("pager down")

    @flowcore.flow(on_crashed=[hook, failing_hook], on_failure=hook)
    async def fragile() -> None:
        pass

    clock, store = FakeClock(T0 + 1), MemoryStore()
    dead = FlowRunRecord(
        id="e" * 32,
        name="fragile",
        kind="flow",
        state=State.RUNNING,
        created=T0 - 100,
        started=T0 - 100,
        heartbeat=T0 - 100,
        history=[("Running", T0 - 100)],
        host="elsewhere",
        pid=1,
        machine="another-machine",
    )
    await store.write(WriteBatch(flow_runs=[dead]))
    async with (
        serving(fragile, clock=clock, store=store) as one,
        serving(fragile, clock=clock, store=store) as two,
    ):
        await one.beat()
        await two.beat()
    assert seen == [("crashed", "e" * 32, "Crashed"), ("crashed", "e" * 32, "Crashed")]
    run = await store.get_run("e" * 32)
    assert run.state is State.CRASHED  # a failing hook changes nothing
    lines = await store.list_logs(run.id)
    assert any("pager down" in line.message for line in lines)


async def test_stopping_cancels_runs_past_the_grace_period() -> None:
    slow, _release, started = slow_flow("allow")
    clock, store = FakeClock(T0 + 1), MemoryStore()
    async with serving(slow, clock=clock, store=store, grace=0.05) as server:
        clock.advance(60)
        await server.tick()
        await started.reach(1)
        server.stop()
    runs = await runs_of(store, "slow_allow")
    assert [r.state for r in runs] == [State.CANCELLED]
    assert await store.list_served() == []  # unregistered


async def test_a_run_cancelled_before_it_started_is_recorded_cancelled() -> None:
    slow, _release, started = slow_flow("allow")
    clock, store = FakeClock(T0 + 1), MemoryStore()
    async with serving(slow, clock=clock, store=store) as server:
        clock.advance(60)
        await server.tick()  # claimed (its row inserted Running), its task not started yet
        server.stop(force=True)
    assert len(started) == 0
    runs = await runs_of(store, "slow_allow")
    assert [r.state for r in runs] == [State.CANCELLED]  # never left Running


async def test_serve_refuses_bad_options_and_a_running_loop() -> None:
    @flowcore.flow
    async def one() -> None:
        pass

    with pytest.raises(ConfigurationError, match="max_runs"):
        check_options([one], 0, 1.0)
    with pytest.raises(ConfigurationError, match="grace"):
        check_options([one], 1, -1)
    with pytest.raises(ConfigurationError, match="at least one flow"):
        check_options([], 1, 1.0)
    with pytest.raises(ConfigurationError, match="two served flows"):
        check_options([one, one.with_options()], 1, 1.0)
    # A name from a file name that is not UTF-8 cannot be a key of the store's registry.
    with pytest.raises(ConfigurationError, match="lone surrogates") as info:
        check_options([one.with_options(name="load caf\udce9")], 1, 1.0)
    assert "with_options(name=...)" in str(info.value)
    with pytest.raises(ConfigurationError, match=r"await flowcore\.aserve"):
        serve(one)


@pytest.mark.parametrize(
    ("day", "utc_midnight"),
    [
        ("spring forward", datetime(2026, 3, 28, 23, tzinfo=UTC)),  # 2026-03-29 00:00 CET
        ("fall back", datetime(2026, 10, 24, 22, tzinfo=UTC)),  # 2026-10-25 00:00 CEST
    ],
)
async def test_a_server_fires_each_slot_of_a_paris_dst_day_once(
    day: str, utc_midnight: datetime
) -> None:
    """Through the server, waking when it says it should: 24 real hours of a 5-minute
    schedule are 288 runs, and the 02:30 daily one fires once, whether 02:30 does not
    exist that day (at 03:00, when the clocks jump) or happens twice (the first)."""

    @flowcore.flow(schedule=flowcore.cron("*/5 * * * *", tz="Europe/Paris"))
    async def five() -> None:
        pass

    @flowcore.flow(schedule=flowcore.cron("30 2 * * *", tz="Europe/Paris"))
    async def nightly() -> None:
        pass

    start = utc_midnight.timestamp()
    clock, store = FakeClock(start + 1), MemoryStore()
    async with serving(five, nightly, clock=clock, store=store) as server:
        while clock.time() <= start + 24 * 3600:
            wake = await server.tick()
            await server.wait_idle()
            clock.advance(max(wake - clock.time(), 0.001))
    fired = [r.scheduled_for for r in await runs_of(store, "five")]
    assert len(fired) == 288 and len(set(fired)) == 288
    assert fired == [start + 300 * k for k in range(1, 289)]  # no gap, no duplicate
    (night,) = await runs_of(store, "nightly")
    expected = {
        "spring forward": utc_midnight.replace(day=29, hour=1),
        "fall back": utc_midnight.replace(day=25, hour=0, minute=30),
    }
    assert night.scheduled_for == expected[day].timestamp()
