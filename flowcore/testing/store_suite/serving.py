"""Cases on serving: what ``flowcore serve`` shares between servers through the store.

Any number of servers may serve one flow on one store, so everything one of them
claims (a schedule's slot, a trigger, a one-shot key) is claimed once across every
handle, and a claim writes its run in the same transaction, so a server killed right
after claiming leaves a run to mark Crashed rather than a gap. The racing cases open
more handles on the database and claim from all of them at once; a store with one
handle (memory) races its callers on one object, which must hold as well.
"""

from __future__ import annotations

import random
from typing import Any

import anyio
import anyio.lowlevel

from ...errors import ConfigurationError
from ...records import FlowRunRecord, ScheduleState, ServedFlow, SlotClaim, Trigger, WriteBatch
from ...states import State
from ...store.base import Store
from .assertions import differs, is_close, raises
from .cases import Cases, OpenStore
from .records import flow_run

__all__ = ["CASES"]

CASES = Cases()


def started_run(run_id: str, created: float = 2000.0, **fields: Any) -> FlowRunRecord:
    """A run as a server's claim inserts it: Running, heartbeat, host, pid and launch set."""
    fields.setdefault("name", "ingest")
    fields.setdefault("state", State.RUNNING)
    fields.setdefault("started", created)
    fields.setdefault("heartbeat", created)
    fields.setdefault("history", [("Running", created)])
    fields.setdefault("host", "server-1")
    fields.setdefault("pid", 4242)
    fields.setdefault("machine", "linux:boot:pidns:4:1")
    return flow_run(run_id, created, **fields)


def fired(key: str, slot: float, run_id: str, flow: str = "ingest") -> SlotClaim:
    """A claim that fires ``slot`` of schedule ``key`` as run ``run_id``."""
    run = started_run(run_id, slot, name=flow, launched_by=f"schedule {key}", scheduled_for=slot)
    return SlotClaim(flow, key, slot, run=run)


async def cursor_of(store: Store, flow: str, key: str) -> float | None:
    states = [s for s in await store.list_schedules(flow=flow) if s.key == key]
    return states[0].cursor if states else None


async def run_ids(store: Store) -> list[str]:
    return sorted(r.id for r in await store.list_runs(limit=100_000))


# -- slots -----------------------------------------------------------------------------


@CASES.case("slots: a claimed slot's run is written as given, Running, and the cursor is set")
async def _claim_writes_the_run(store: Store) -> None:
    claim = fired("every-5m", 3000.0, "run-1")
    got = await store.claim_slots([claim], 3001.0)
    assert got == [True], differs("claim_slots of a new slot", got, [True])
    read = await store.get_run("run-1")
    assert claim.run is not None
    assert read == claim.run, differs("the slot's run read back", read, claim.run)
    assert read.state is State.RUNNING
    cursor = await cursor_of(store, "ingest", "every-5m")
    assert cursor is not None and is_close(cursor, 3000.0), differs(
        "the cursor of a schedule with no stored state, after a claim", cursor, 3000.0
    )
    slots = await store.list_slots("ingest")
    assert [(s.key, s.slot, s.skipped, s.run) for s in slots] == [
        ("every-5m", 3000.0, None, None)
    ], differs("list_slots after one claim", slots, "one slot, no run, not skipped")
    assert slots[0].claimed is not None and is_close(slots[0].claimed, 3001.0), differs(
        "the claim time of the slot", slots[0].claimed, 3001.0
    )
    ids = await store.slot_run_ids("ingest", "every-5m", [3000.0, 3300.0])
    assert ids == ["run-1", None], differs("slot_run_ids of a fired and a free slot", ids, "")


@CASES.case("slots: a slot claimed once is never claimed again, and the loser writes nothing")
async def _claimed_once(store: Store) -> None:
    assert await store.claim_slots([fired("k", 3000.0, "first")], 3000.0) == [True]
    got = await store.claim_slots(
        [fired("k", 3000.0, "second"), fired("k", 3060.0, "third")], 3061.0
    )
    assert got == [False, True], differs("claims of a taken and a new slot", got, [False, True])
    ids = await run_ids(store)
    assert ids == ["first", "third"], differs("runs after a refused claim", ids, "no 'second'")
    # A slot given twice in one call is claimed once, the first time.
    got = await store.claim_slots([fired("k", 4000.0, "a"), fired("k", 4000.0, "b")], 4000.0)
    assert got == [True, False], differs("one slot twice in one call", got, [True, False])
    assert "b" not in await run_ids(store)
    ids_of = await store.slot_run_ids("ingest", "k", [3000.0, 4000.0])
    assert ids_of == ["first", "a"], differs("the runs of the slots", ids_of, ["first", "a"])


@CASES.case("slots: a run id already taken fails the claim, which writes nothing")
async def _taken_run_id(store: Store) -> None:
    await store.write(WriteBatch([flow_run("taken", name="ingest")], []))
    got = await store.claim_slots(
        [fired("k", 3000.0, "taken"), fired("k", 3060.0, "fresh")], 3060.0
    )
    assert got == [False, True], differs("claims with a taken and a new run id", got, "")
    slots = [s.slot for s in await store.list_slots("ingest")]
    assert slots == [3060.0], differs("slots recorded", slots, [3060.0])
    taken = await store.get_run("taken")
    assert taken.state is State.COMPLETED, differs("the run whose id was taken", taken, "as is")
    # The slot is still free: a claim with another id takes it.
    assert await store.claim_slots([fired("k", 3000.0, "other")], 3100.0) == [True]
    cursor = await cursor_of(store, "ingest", "k")
    assert cursor == 3060.0, differs("the cursor", cursor, 3060.0)


@CASES.case("slots: a skipped slot is recorded with why, moves the cursor, and is not claimable")
async def _skipped(store: Store) -> None:
    skip = SlotClaim("ingest", "k", 3000.0, skipped="overlap=skip: run r-0 still running")
    assert await store.claim_slots([skip], 3000.5) == [True]
    slots = await store.list_slots("ingest", "k")
    assert [(s.slot, s.skipped) for s in slots] == [(3000.0, skip.skipped)], differs(
        "list_slots of a skipped slot", slots, skip
    )
    assert await store.slot_run_ids("ingest", "k", [3000.0]) == [None]
    assert await cursor_of(store, "ingest", "k") == 3000.0
    got = await store.claim_slots([fired("k", 3000.0, "late")], 3001.0)
    assert got == [False], differs("firing a slot skipped before", got, [False])
    assert await run_ids(store) == []


@CASES.case("slots: the cursor never moves backwards")
async def _cursor_forward(store: Store) -> None:
    for slot, want in ((5000.0, 5000.0), (3000.0, 5000.0), (7000.0, 7000.0), (6000.0, 7000.0)):
        assert await store.claim_slots([fired("k", slot, f"r-{slot:g}")], slot) == [True]
        cursor = await cursor_of(store, "ingest", "k")
        assert cursor == want, differs(f"the cursor after claiming slot {slot:g}", cursor, want)
    # Several schedules in one call: each cursor goes to the latest of its slots.
    claims = [fired("a", 100.0, "a1"), fired("b", 300.0, "b1"), fired("a", 200.0, "a2")]
    assert await store.claim_slots(claims, 400.0) == [True] * 3
    cursors = [await cursor_of(store, "ingest", k) for k in ("a", "b")]
    assert cursors == [200.0, 300.0], differs("cursors after one call", cursors, [200.0, 300.0])


@CASES.case("slots: a claimed slot's run takes the engine's later writes")
async def _claimed_run_is_written_on(store: Store) -> None:
    claim = fired("k", 3000.0, "run-1")
    assert await store.claim_slots([claim], 3000.0) == [True]
    run = claim.run
    assert run is not None
    run.heartbeat, run.task_count = 3005.0, 7
    await store.write(WriteBatch([run], []))
    read = await store.get_run("run-1")
    assert (read.heartbeat, read.task_count) == (3005.0, 7), differs(
        "the claimed run after the engine wrote it", read, run
    )
    run.state, run.ended = State.COMPLETED, 3010.0
    await store.write(WriteBatch([run], []))
    assert (await store.get_run("run-1")).state is State.COMPLETED


@CASES.case("slots: a thousand slots in one call are claimed, listed newest first")
async def _many_slots(store: Store) -> None:
    claims = [fired(f"s{i % 10}", 60.0 * i, f"run-{i:04d}") for i in range(1000)]
    got = await store.claim_slots(claims, 60_000.0)
    assert got == [True] * 1000, differs("claims made", sum(got), 1000)
    assert len(await run_ids(store)) == 1000
    listed = await store.list_slots("ingest", limit=5)
    want = [60.0 * i for i in range(999, 994, -1)]
    assert [s.slot for s in listed] == want, differs("list_slots(limit=5)", listed, want)
    listed = await store.list_slots("ingest", "s3", limit=2)
    want = [60.0 * 993, 60.0 * 983]
    assert [s.slot for s in listed] == want, differs("list_slots of one schedule", listed, want)
    assert await store.list_slots("other") == []
    again = await store.claim_slots(claims, 60_001.0)
    assert not any(again), differs("claims made again", sum(again), 0)


@CASES.handles_case("slots: handles racing for the same slots claim each exactly once")
async def _slot_race(store: Store, open_store: OpenStore) -> None:
    handles = [store, await open_store(), await open_store()]
    rng = random.Random(13)
    slots = [60.0 * i for i in range(600)]
    won: dict[str, list[SlotClaim]] = {}

    async def claim(n: int, handle: Store) -> None:
        mine = [fired("k", slot, f"h{n}-{slot:g}") for slot in slots]
        rng.shuffle(mine)
        for i in range(0, len(mine), 300):  # in two calls, each big enough to matter
            part = mine[i : i + 300]
            got = await handle.claim_slots(part, 100_000.0)
            won.setdefault(f"h{n}", []).extend(c for c, ok in zip(part, got, strict=True) if ok)

    async with anyio.create_task_group() as tg:
        for n, handle in enumerate(handles):
            tg.start_soon(claim, n, handle)
    claimed = sorted(c.slot for claims in won.values() for c in claims)
    assert claimed == slots, differs(
        "slots claimed by three racing handles, in total",
        f"{len(claimed)} claims of {len(set(claimed))} slots",
        f"{len(slots)} claims of {len(slots)} slots",
    )
    winners = sorted(c.run.id for claims in won.values() for c in claims if c.run is not None)
    for handle in handles:
        ids = await run_ids(handle)
        assert ids == winners, differs("runs in the store: the winners' only", len(ids), 600)
        cursor = await cursor_of(handle, "ingest", "k")
        assert cursor == max(slots), differs("the cursor after the race", cursor, max(slots))
    winner = {c.slot: (c.run.id if c.run else None) for cs in won.values() for c in cs}
    ids_of = await store.slot_run_ids("ingest", "k", slots)
    want = [winner[slot] for slot in slots]
    assert ids_of == want, differs("each slot's run is its winner's", ids_of[:3], want[:3])


# -- schedules -------------------------------------------------------------------------


@CASES.case("schedules: put_schedules keeps the stored cursor and paused, updates the rest")
async def _put_schedules(store: Store) -> None:
    new = ScheduleState("ingest", "b", description='{"cron": "*/5 * * * *"}', next_fire=300.0,
                        cursor=0.0, paused=True, updated=10.0)  # fmt: skip
    other = ScheduleState("ingest", "a", next_fire=60.0, updated=10.0)
    stored = await store.put_schedules([new, other])
    assert stored == [new, other], differs("new schedules as stored", stored, [new, other])
    assert await store.claim_slots([fired("b", 600.0, "r")], 600.0) == [True]
    changed = ScheduleState("ingest", "b", description='{"cron": "*/10 * * * *"}',
                            next_fire=1200.0, cursor=None, paused=False, updated=20.0)  # fmt: skip
    want = ScheduleState("ingest", "b", description='{"cron": "*/10 * * * *"}',
                         next_fire=1200.0, cursor=600.0, paused=True, updated=20.0)  # fmt: skip
    stored = await store.put_schedules([changed])
    assert stored == [want], differs("a schedule put again", stored, [want])
    await store.put_schedules([ScheduleState("etl", "z", updated=1.0)])
    listed = [(s.flow, s.key) for s in await store.list_schedules()]
    order = [("etl", "z"), ("ingest", "a"), ("ingest", "b")]
    assert listed == order, differs("list_schedules, by flow then key", listed, order)
    listed = [(s.flow, s.key) for s in await store.list_schedules(flow="ingest")]
    assert listed == order[1:], differs("list_schedules(flow='ingest')", listed, order[1:])
    assert (await store.list_schedules(flow="ingest"))[1] == want


@CASES.case("schedules: set_paused pauses and resumes one schedule, or every one of a flow")
async def _set_paused(store: Store) -> None:
    await store.put_schedules(
        [
            ScheduleState(f, k, updated=1.0)
            for f, k in (("ingest", "a"), ("ingest", "b"), ("etl", "a"))
        ]
    )

    async def paused() -> dict[tuple[str, str], bool]:
        return {(s.flow, s.key): s.paused for s in await store.list_schedules()}

    assert await store.set_paused("ingest", "a", True) == 1
    want = {("ingest", "a"): True, ("ingest", "b"): False, ("etl", "a"): False}
    assert await paused() == want, differs("after pausing ingest/a", await paused(), want)
    assert await store.set_paused("ingest", None, True) == 2
    want[("ingest", "b")] = True
    assert await paused() == want, differs("after pausing all of ingest", await paused(), want)
    assert await store.set_paused("ingest", None, False) == 2
    want = dict.fromkeys(want, False)
    assert await paused() == want, differs("after resuming all of ingest", await paused(), want)
    got = await store.set_paused("nope", None, True), await store.set_paused("ingest", "z", True)
    assert got == (0, 0), differs("set_paused of unknown schedules", got, (0, 0))
    # A pause outlives a server putting its schedule again (put_schedules keeps it).
    await store.set_paused("etl", "a", True)
    stored = await store.put_schedules([ScheduleState("etl", "a", next_fire=5.0, updated=2.0)])
    assert stored[0].paused, differs("a paused schedule put again", stored[0], "paused")


@CASES.case("schedules: active_runs lists the unfinished top-level runs of a flow, oldest first")
async def _active_runs(store: Store) -> None:
    runs = [
        started_run("running", 10.0, launched_by="schedule a"),
        started_run("pending", 5.0, state=State.PENDING, launched_by="schedule a"),
        started_run("retrying", 20.0, state=State.RETRYING, launched_by="schedule b"),
        started_run("by-hand", 30.0),
        started_run("done", 1.0, state=State.COMPLETED, launched_by="schedule a"),
        started_run("crashed", 2.0, state=State.CRASHED, launched_by="schedule a"),
        started_run("subflow", 3.0, parent_run_id="running", parent_task_seq=0),
        started_run("other-flow", 4.0, name="etl", launched_by="schedule a"),
    ]
    await store.write(WriteBatch(runs, []))
    ids = [r.id for r in await store.active_runs("ingest")]
    want = ["pending", "running", "retrying", "by-hand"]
    assert ids == want, differs("active_runs('ingest')", ids, want)
    ids = [r.id for r in await store.active_runs("ingest", "schedule a")]
    assert ids == ["pending", "running"], differs("active_runs of 'schedule a'", ids, "")
    read = (await store.active_runs("ingest", "schedule b"))[0]
    assert read == runs[2], differs("an active run read back", read, runs[2])
    runs[0].state = State.COMPLETED
    await store.write(WriteBatch([runs[0]], []))
    ids = [r.id for r in await store.active_runs("ingest", "schedule a")]
    assert ids == ["pending"], differs("active_runs after one completed", ids, ["pending"])
    assert await store.active_runs("nope") == []


# -- triggers --------------------------------------------------------------------------


def trigger(trigger_id: str, created: float, flow: str = "ingest") -> Trigger:
    return Trigger(trigger_id, flow, '{"pages": "20"}', created, by="ana@laptop")


def run_for(t: Trigger) -> FlowRunRecord:
    """What a server's ``make_run`` gives: the trigger's run, Running."""
    return started_run(f"run-{t.id}", 5000.0, name=t.flow, launched_by=f"trigger {t.id}")


@CASES.case("triggers: enqueued triggers are read back and listed newest first")
async def _enqueue(store: Store) -> None:
    assert await store.get_trigger("t1") is None
    for t in (trigger("t1", 10.0), trigger("t2", 20.0, "etl"), trigger("t3", 30.0)):
        await store.enqueue_trigger(t)
    read = await store.get_trigger("t2")
    assert read == trigger("t2", 20.0, "etl"), differs("a trigger read back", read, "as given")
    listed = [t.id for t in await store.list_triggers()]
    assert listed == ["t3", "t2", "t1"], differs("list_triggers, newest first", listed, "")
    listed = [t.id for t in await store.list_triggers(flow="ingest", limit=1)]
    assert listed == ["t3"], differs("list_triggers(flow='ingest', limit=1)", listed, ["t3"])
    await raises(
        ConfigurationError,
        store.enqueue_trigger(trigger("t1", 40.0)),
        "enqueue_trigger of an id queued already",
    )
    assert (await store.get_trigger("t1")) == trigger("t1", 10.0)


@CASES.case("triggers: a claim takes the oldest of the given flows, writes their runs, once")
async def _claim_triggers(store: Store) -> None:
    for t in (trigger("t3", 30.0), trigger("t1", 10.0), trigger("e", 5.0, "etl")):
        await store.enqueue_trigger(t)
    await store.enqueue_trigger(trigger("t2", 20.0))
    got = await store.claim_triggers(["ingest"], "server-a", 100.0, run_for, limit=2)
    assert [t.id for t in got] == ["t1", "t2"], differs("claimed, oldest first", got, "t1, t2")
    assert all((t.claimed_by, t.claimed) == ("server-a", 100.0) for t in got), differs(
        "the claims' holder and time", got, ("server-a", 100.0)
    )
    assert [t.run_id for t in got] == ["run-t1", "run-t2"]
    read = await store.get_trigger("t1")
    assert read is not None and (read.claimed_by, read.claimed, read.run_id) == (
        "server-a", 100.0, "run-t1",
    ), differs("get_trigger of a claimed trigger", read, "claimed by server-a")  # fmt: skip
    run = await store.get_run("run-t1")
    assert run == run_for(trigger("t1", 10.0)), differs("the trigger's run", run, "as made")
    pending = [t.id for t in await store.list_triggers(pending=True)]
    assert pending == ["t3", "e"], differs("pending triggers after the claim", pending, "")
    got = await store.claim_triggers(["ingest", "other"], "server-b", 101.0, run_for)
    assert [t.id for t in got] == ["t3"], differs("the next claim", got, ["t3"])
    assert await store.claim_triggers(["ingest"], "server-a", 102.0, run_for) == []
    assert await store.claim_triggers([], "server-a", 102.0, run_for) == []
    assert (await store.get_trigger("e")) == trigger("e", 5.0, "etl")
    ids = await run_ids(store)
    assert ids == ["run-t1", "run-t2", "run-t3"], differs("runs written by claims", ids, "")


@CASES.case("triggers: a run id already taken is refused, and nothing is claimed")
async def _trigger_run_taken(store: Store) -> None:
    await store.write(WriteBatch([flow_run("run-t1", name="ingest")], []))
    await store.enqueue_trigger(trigger("t1", 10.0))
    await raises(
        ConfigurationError,
        store.claim_triggers(["ingest"], "server-a", 100.0, run_for),
        "claim_triggers whose make_run gives a taken run id",
    )
    read = await store.get_trigger("t1")
    assert read == trigger("t1", 10.0), differs("the trigger after a refused claim", read, "")
    assert (await store.get_run("run-t1")).state is State.COMPLETED


@CASES.handles_case("triggers: handles racing for the queue claim each trigger exactly once")
async def _trigger_race(store: Store, open_store: OpenStore) -> None:
    handles = [store, await open_store(), await open_store()]
    for i in range(200):
        await store.enqueue_trigger(trigger(f"t{i:03d}", float(i)))
    won: dict[str, list[Trigger]] = {}

    async def claim(n: int, handle: Store) -> None:
        holder = f"server-{n}"

        def make(t: Trigger) -> FlowRunRecord:
            return started_run(f"{holder}-{t.id}", 5000.0, launched_by=f"trigger {t.id}")

        while got := await handle.claim_triggers(["ingest"], holder, 100.0, make, limit=7):
            won.setdefault(holder, []).extend(got)
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        for n, handle in enumerate(handles):
            tg.start_soon(claim, n, handle)
    claimed = sorted(t.id for ts in won.values() for t in ts)
    want = [f"t{i:03d}" for i in range(200)]
    assert claimed == want, differs(
        "triggers claimed by three racing handles, in total",
        f"{len(claimed)} claims of {len(set(claimed))} triggers",
        "200 claims of 200 triggers",
    )
    runs = sorted(t.run_id or "" for ts in won.values() for t in ts)
    for handle in handles:
        ids = await run_ids(handle)
        assert ids == runs, differs("runs in the store: those of the claims only", len(ids), 200)
        assert await handle.list_triggers(pending=True) == []
    for holder, ts in won.items():
        for t in ts[:5]:
            read = await store.get_trigger(t.id)
            assert read is not None and read.claimed_by == holder, differs(
                f"the holder of {t.id}", read and read.claimed_by, holder
            )


# -- served flows, one-shot claims, changes ---------------------------------------------


@CASES.case("served: the registry of served flows is upserted, beaten, listed and removed")
async def _served(store: Store) -> None:
    def row(flow: str, holder: str, started: float) -> ServedFlow:
        return ServedFlow(
            flow, holder, "host-1", 42, started, started, entrypoint="flows.py:" + flow,
            parameters_schema='{"pages": "int"}', schedules=["every-5m", "nightly"],
            machine="linux:boot:pidns:4:1",
        )  # fmt: skip

    assert await store.list_served() == []
    rows = [row("ingest", "b", 20.0), row("etl", "a", 10.0), row("ingest", "a", 10.0)]
    await store.put_served(rows)
    listed = await store.list_served()
    want = [rows[1], rows[2], rows[0]]
    assert listed == want, differs("list_served, by flow then started", listed, want)
    await store.beat_served("a", 99.0)
    beats = [(r.flow, r.holder, r.heartbeat) for r in await store.list_served()]
    want_beats = [("etl", "a", 99.0), ("ingest", "a", 99.0), ("ingest", "b", 20.0)]
    assert beats == want_beats, differs("heartbeats after beat_served('a')", beats, want_beats)
    again = row("ingest", "b", 20.0)
    again.schedules = ["hourly"]
    await store.put_served([again])
    listed = await store.list_served()
    assert len(listed) == 3 and listed[2] == again, differs("a row put again", listed, again)
    await store.remove_served("a")
    listed = await store.list_served()
    assert listed == [again], differs("list_served after remove_served('a')", listed, [again])


@CASES.handles_case("once: a one-shot key is claimed once, ever, across handles")
async def _once(store: Store, open_store: OpenStore) -> None:
    other = await open_store()
    got = await store.claim_once("crashed-hooks", ["r1", "r2", "r1"], "a", 1.0)
    assert got == ["r1", "r2"], differs("claim_once of new keys", got, ["r1", "r2"])
    got = await other.claim_once("crashed-hooks", ["r3", "r2"], "b", 2.0)
    assert got == ["r3"], differs("claim_once with a taken key", got, ["r3"])
    got = await other.claim_once("other-kind", ["r1"], "b", 2.0)
    assert got == ["r1"], differs("the same key of another kind", got, ["r1"])
    keys = [f"k{i}" for i in range(300)]
    results: list[list[str]] = []

    async def claim(handle: Store, holder: str) -> None:
        results.append(await handle.claim_once("race", keys, holder, 3.0))

    async with anyio.create_task_group() as tg:
        for n, handle in enumerate((store, other, store, other)):
            tg.start_soon(claim, handle, f"h{n}")
    claimed = sorted(k for got in results for k in got)
    assert claimed == sorted(keys), differs("keys claimed by four racing calls", len(claimed), 300)


@CASES.handles_case("changes: the token is stable while nothing happens, and changes on commits")
async def _changes(store: Store, open_store: OpenStore) -> None:
    other = await open_store()
    first = await store.changes()
    assert await store.changes() == first, differs("changes() twice, nothing written", "", "")
    await other.enqueue_trigger(trigger("t1", 1.0))
    second = await store.changes()
    assert second != first, differs("changes() after another handle enqueued", second, "")
    assert await store.changes() == second
    await other.set_paused("ingest", None, True)
    await other.put_schedules([ScheduleState("ingest", "a", updated=1.0)])
    third = await store.changes()
    assert third != second, differs("changes() after another handle put a schedule", third, "")
    await other.claim_slots([fired("a", 60.0, "r")], 60.0)
    assert await store.changes() != third, differs("changes() after a claim", "", "")
