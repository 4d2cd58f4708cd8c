"""Cases with two handles on one database at once, as two processes would have.

Writes, leases and rate reservations each race here, since a store that is right
for one handle can still lose a write or hand out a slot twice when two share
the database.
"""

from __future__ import annotations

import anyio

from ...records import WriteBatch
from ...states import State
from ...store.base import Store
from .assertions import all_close, differs
from .cases import Cases, OpenStore
from .leases import lease_rows, lease_slots
from .records import flow_run, task_run

__all__ = ["CASES"]

CASES = Cases()


@CASES.handles_case("concurrency: two handles writing different runs at once lose nothing")
async def _concurrent_writes(store: Store, open_store: OpenStore) -> None:
    other = await open_store()

    async def write_runs(handle: Store, prefix: str) -> None:
        for i in range(20):
            run_id = f"{prefix}-{i:02d}"
            run = flow_run(run_id, created=float(i), state=State.RUNNING)
            tasks = [task_run(run_id, seq, state=State.RUNNING) for seq in range(5)]
            await handle.write(WriteBatch([run], tasks))
            for task in tasks:
                task.state = State.COMPLETED
            run.state = State.COMPLETED
            await handle.write(WriteBatch([run], tasks))

    async with anyio.create_task_group() as tg:
        tg.start_soon(write_runs, store, "a")
        tg.start_soon(write_runs, other, "b")
    want = sorted(f"{p}-{i:02d}" for p in "ab" for i in range(20))
    for handle, which in ((store, "the first handle"), (other, "the second handle")):
        runs = await handle.list_runs(limit=1000)
        ids = sorted(r.id for r in runs)
        assert ids == want, differs(f"run ids read by {which}", ids, want)
        states = {r.state for r in runs}
        assert states == {State.COMPLETED}, differs(
            f"run states read by {which}", states, "Completed"
        )
        for run_id in ("a-07", "b-19"):
            counts = await handle.count_task_runs(run_id)
            assert counts == {"Completed": 5}, differs(
                f"count_task_runs({run_id!r}) read by {which}", counts, {"Completed": 5}
            )


@CASES.handles_case("concurrency: two handles racing for the last slot get one lease between them")
async def _concurrent_last_slot(store: Store, open_store: OpenStore) -> None:
    other = await open_store()
    results: dict[str, list[str]] = {}

    async def take(handle: Store, holder: str, name: str, now: float) -> None:
        leases, _ = await lease_slots(handle, name, 1, holder, 1, now=now)
        results[holder] = leases

    for round_ in range(20):
        results.clear()
        async with anyio.create_task_group() as tg:
            tg.start_soon(take, store, "A", f"race-{round_}", float(round_))
            tg.start_soon(take, other, "B", f"race-{round_}", float(round_))
        granted = len(results["A"]) + len(results["B"])
        assert granted == 1, differs(
            f"leases granted in round {round_} of a capacity-1 limit", results, "one lease"
        )
    rows = [r for r in await lease_rows(store) if r[3] == 0]
    assert len(rows) == 20, differs("held leases after 20 rounds", len(rows), 20)


@CASES.handles_case("concurrency: two handles reserving a rate at once never share a start")
async def _concurrent_rates(store: Store, open_store: OpenStore) -> None:
    other = await open_store()
    starts: list[float] = []

    async def reserve(handle: Store) -> None:
        for _ in range(10):
            starts.append(await handle.reserve_rate("api", 0.5, 0.0, 100.0))

    async with anyio.create_task_group() as tg:
        tg.start_soon(reserve, store)
        tg.start_soon(reserve, other)
    want = [100.0 + 0.5 * k for k in range(20)]
    assert all_close(sorted(starts), want), differs(
        "sorted starts of 20 uses", sorted(starts), want
    )
