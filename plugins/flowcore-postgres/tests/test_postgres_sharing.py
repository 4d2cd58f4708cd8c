"""What several handles (processes, hosts) share on one database, raced harder than the
contract races it: limits and leases, rates, schedule slots, triggers, one-shot claims,
resume claims and assets, each claimed once whatever the order and the interleaving."""

from __future__ import annotations

import random
import threading
from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import pytest

import flowcore
from flowcore.ranges import RangeSet
from flowcore.records import (
    FlowRunRecord,
    MaterializationRecord,
    SlotClaim,
    StaleMark,
    Trigger,
    WriteBatch,
)
from flowcore.states import State
from flowcore.store.base import Store
from flowcore_postgres import PostgresStore

pytestmark = pytest.mark.anyio


@pytest.fixture
async def handles(pg_url: str) -> AsyncIterator[list[PostgresStore]]:
    """Four handles on one database, as four processes would have."""
    stores = [PostgresStore(pg_url, pool_size=4) for _ in range(4)]
    for store in stores:
        await store.open()
    try:
        yield stores
    finally:
        for store in stores:
            await store.close()


async def test_a_shared_limit_never_grants_more_than_its_capacity(
    handles: list[PostgresStore],
) -> None:
    capacity, held, most = 3, set[str](), 0
    lock = anyio.Lock()

    async def worker(store: Store, holder: str, rounds: int) -> None:
        nonlocal most
        for n in range(rounds):
            leases, _ = await store.lease_slots(
                "db", capacity, holder, f"{holder}/waiting", 1, float(n), float(n), 1e12
            )
            if not leases:
                await store.release_lease(f"{holder}/waiting")
                continue
            async with lock:
                held.update(leases)
                most = max(most, len(held))
            await anyio.lowlevel.checkpoint()
            async with lock:
                held.difference_update(leases)
            await store.release_lease(leases[0])

    async with anyio.create_task_group() as tg:
        for n, store in enumerate(handles * 2):
            tg.start_soon(worker, store, f"h{n}", 15)
    assert 1 <= most <= capacity
    assert [r for r in await handles[0].list_leases() if r[5] == 0] == []


async def test_rates_booked_from_four_handles_at_once_are_spaced(
    handles: list[PostgresStore],
) -> None:
    starts: list[float] = []

    async def book(store: Store) -> None:
        for _ in range(10):
            starts.append(await store.reserve_rate("api", 0.25, 0.0, 50.0))

    async with anyio.create_task_group() as tg:
        for store in handles:
            tg.start_soon(book, store)
    assert sorted(starts) == pytest.approx([50.0 + 0.25 * k for k in range(40)])


async def test_leases_are_renewed_from_a_thread_without_the_event_loop(
    handles: list[PostgresStore],
) -> None:
    store = handles[0]
    (lease,), _ = await store.lease_slots("db", 1, "me", "me/w", 1, 1.0, 1.0, 100.0)
    renewal = store.renew_leases_blocking
    done = threading.Event()

    def renew() -> None:
        try:
            renewal("me", 5000.0)
        finally:
            renewal.close()
            done.set()

    threading.Thread(target=renew).start()
    await anyio.to_thread.run_sync(done.wait)
    rows = await handles[1].list_leases()
    assert [(r[0], r[1], r[4]) for r in rows] == [("db", "me", 5000.0)]
    await store.release_lease(lease)


def _run(run_id: str, slot: float) -> FlowRunRecord:
    return FlowRunRecord(
        run_id, "ingest", State.RUNNING, slot, started=slot, history=[("Running", slot)]
    )


async def test_racing_servers_claim_each_slot_once_in_any_order(
    handles: list[PostgresStore],
) -> None:
    slots = [float(60 * i) for i in range(300)]
    won: list[tuple[int, SlotClaim]] = []

    async def serve(n: int, store: Store) -> None:
        mine = list(slots)
        random.Random(n).shuffle(mine)  # overlapping claims in clashing orders
        for start in range(0, len(mine), 25):
            part = mine[start : start + 25]
            claims = [SlotClaim("ingest", "k", s, run=_run(f"s{n}-{s:g}", s)) for s in part]
            got = await store.claim_slots(claims, 1.0)
            won.extend((n, c) for c, ok in zip(claims, got, strict=True) if ok)

    async with anyio.create_task_group() as tg:
        for n, store in enumerate(handles):
            tg.start_soon(serve, n, store)
    assert sorted(c.slot for _, c in won) == slots
    runs = await handles[1].list_runs(limit=10_000)
    assert sorted(r.id for r in runs) == sorted(c.run.id for _, c in won if c.run)
    ids = await handles[2].slot_run_ids("ingest", "k", slots)
    assert ids == [next(c.run.id for _, c in won if c.slot == s and c.run) for s in slots]


async def test_racing_servers_take_each_trigger_once(handles: list[PostgresStore]) -> None:
    for i in range(120):
        await handles[0].enqueue_trigger(Trigger(f"t{i:03d}", "ingest", "{}", float(i)))
    claimed: list[Trigger] = []

    async def serve(n: int, store: Store) -> None:
        def make(t: Trigger) -> FlowRunRecord:
            return _run(f"run-{n}-{t.id}", 5.0)

        while True:
            got = await store.claim_triggers(["ingest"], f"server-{n}", 1.0, make, limit=5)
            if not got and not await store.list_triggers(pending=True, limit=1):
                return
            claimed.extend(got)
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        for n, store in enumerate(handles):
            tg.start_soon(serve, n, store)
    assert sorted(t.id for t in claimed) == [f"t{i:03d}" for i in range(120)]
    assert len({t.run_id for t in claimed}) == 120
    assert len(await handles[3].list_runs(limit=1000)) == 120


async def test_one_shot_keys_are_claimed_once_by_racing_handles(
    handles: list[PostgresStore],
) -> None:
    keys = [f"run-{i}" for i in range(200)]
    results: list[list[str]] = []

    async def claim(n: int, store: Store) -> None:
        mine = list(keys)
        random.Random(n).shuffle(mine)
        results.append(await store.claim_once("crashed-hooks", mine, f"h{n}", 1.0))

    async with anyio.create_task_group() as tg:
        for n, store in enumerate(handles * 2):
            tg.start_soon(claim, n, store)
    assert sorted(k for got in results for k in got) == sorted(keys)


async def test_racing_resumes_of_one_run_claim_it_once(handles: list[PostgresStore]) -> None:
    await handles[0].write(WriteBatch([FlowRunRecord("dead", "etl", State.CRASHED, 1.0)]))
    results: dict[str, FlowRunRecord | None] = {}

    async def resume(n: int, store: Store) -> None:
        run = FlowRunRecord(f"again-{n}", "etl", State.RUNNING, 2.0, resumed_from="dead")
        results[run.id] = await store.claim_resume(run)

    async with anyio.create_task_group() as tg:
        for n, store in enumerate(handles):
            tg.start_soon(resume, n, store)
    winners = [run_id for run_id, holder in results.items() if holder is None]
    assert len(winners) == 1
    assert {h.id for h in results.values() if h is not None} == set(winners)


def _mat(
    key: str, version: str, index: int, downstream: list[StaleMark] | None = None
) -> MaterializationRecord:
    return MaterializationRecord(
        key,
        1.0,
        "run",
        index,
        "1",
        version,
        partition=f"p{index}",
        index=index,
        downstream=downstream or [],
    )


async def test_assets_materialised_from_four_handles_lose_nothing(
    handles: list[PostgresStore],
) -> None:
    mark = StaleMark("report", [(0, 1)], {"reason": "upstream-changed", "upstream": "orders"})

    async def materialise(n: int, store: Store) -> None:
        for index in range(n, 200, 4):
            # Each batch also marks the same downstream asset: both states change at once.
            await store.write(
                WriteBatch(assets=[_mat("orders", f"v{index}", index, downstream=[mark])])
            )

    await handles[0].write(WriteBatch(assets=[_mat("report", "r", 0)]))
    async with anyio.create_task_group() as tg:
        for n, store in enumerate(handles):
            tg.start_soon(materialise, n, store)
    [orders] = await handles[1].asset_states(["orders"])
    assert RangeSet.from_bytes(orders.materialized).ranges() == ((0, 200),)
    assert orders.materializations == 200
    assert len(await handles[2].asset_history("orders", limit=1000)) == 200
    latest = await handles[3].latest_materializations("orders", ["p7", "p199", "nope"])
    assert [m and m.data_version for m in latest] == ["v7", "v199", None]


async def test_a_flow_under_a_shared_limit_in_two_engines_respects_it(pg_url: str) -> None:
    """Two engines (two store handles) running tasks under one shared limit of 2."""
    running, most = 0, 0

    @flowcore.task(tags=["db"])
    async def query(i: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await anyio.sleep(0.01)
        running -= 1
        return i

    @flowcore.flow
    async def load(n: int) -> int:
        return sum(await flowcore.wait([query.submit(i) for i in range(n)]))

    async def one_engine() -> None:
        limit = flowcore.limit("db", 2, shared=True)
        async with flowcore.Engine(store=PostgresStore(pg_url), limits=[limit]):
            assert await load(12) == sum(range(12))

    async with anyio.create_task_group() as tg:
        tg.start_soon(one_engine)
        tg.start_soon(one_engine)
    assert most == 2
