"""Cases on durable span export: which ended runs a shipper is offered, and claims.

A shipper (``flowcore.telemetry.shipper``) asks for ended runs whose spans were not
shipped, ships them, and says so; a process that dies holding a claim leaves the
runs to the next shipper once the lease runs out; two shippers never get one run.
"""

from __future__ import annotations

from ...records import WriteBatch
from ...states import State
from ...store.base import Store
from .assertions import differs
from .cases import Cases, OpenStore
from .records import flow_run

__all__ = ["CASES"]

CASES = Cases()


async def _ids(store: Store, holder: str, now: float, **options: float) -> list[str]:
    limit = int(options.pop("limit", 100))
    found = await store.claim_span_exports(
        holder, now=now, lease=options.pop("lease", 30.0), limit=limit, **options
    )
    return [r.id for r in found]


@CASES.case("exports: ended runs are offered oldest first, shipped ones never again")
async def _offered(store: Store) -> None:
    await store.write(
        WriteBatch(
            flow_runs=[
                flow_run("r2", created=20.0),
                flow_run("r1", created=10.0, state=State.FAILED),
                flow_run("r3", created=30.0, state=State.RUNNING),
            ]
        )
    )
    got = await _ids(store, "a", 100.0)
    assert got == ["r1", "r2"], differs("claimed (the running run left out)", got, ["r1", "r2"])
    await store.end_span_exports(["r1"], "a", shipped=True)
    await store.end_span_exports(["r2"], "a", shipped=False)
    got = await _ids(store, "b", 101.0)
    assert got == ["r2"], differs("claimed after r1 shipped and r2 given back", got, ["r2"])
    await store.write(WriteBatch(flow_runs=[flow_run("r3", created=30.0)]))
    got = await _ids(store, "c", 102.0, limit=1)
    assert got == ["r3"], differs("r2 held by b, r3 ended meanwhile, limit 1", got, ["r3"])
    await store.end_span_exports(["r2", "r3"], "b", shipped=True)
    got = await _ids(store, "d", 103.0)
    assert got == [], differs("after both shipped", got, [])


@CASES.case("exports: a claim holds until its lease runs out; older runs are skipped")
async def _leases(store: Store) -> None:
    await store.write(WriteBatch(flow_runs=[flow_run("old", created=1.0), flow_run("new", 50.0)]))
    got = await _ids(store, "a", 100.0, lease=10.0, since=10.0)
    assert got == ["new"], differs("claimed with since=10 (old skipped)", got, ["new"])
    got = await _ids(store, "b", 105.0)
    assert got == [], differs("claimed by another holder within the lease", got, [])
    got = await _ids(store, "b", 111.0, lease=1000.0)
    assert got == ["new"], differs("claimed after the lease ran out", got, ["new"])
    got = await _ids(store, "c", 200.0, lease=10.0)
    assert got == [], differs("'old' once skipped, 'new' held by b", got, [])


@CASES.handles_case("exports: two handles claiming at once never get the same run")
async def _race(store: Store, open_store: OpenStore) -> None:
    other = await open_store()
    await store.write(WriteBatch(flow_runs=[flow_run(f"r{i:02d}", float(i)) for i in range(40)]))
    first: list[str] = []
    second: list[str] = []
    for i in range(8):
        first += await _ids(store, "a", 100.0 + i, limit=3)
        second += await _ids(other, "b", 100.0 + i, limit=3)
    assert not set(first) & set(second), differs(
        "runs claimed by both", set(first) & set(second), set()
    )
    assert len(first) + len(second) == 40, differs(
        "runs claimed in all", len(first) + len(second), 40
    )
