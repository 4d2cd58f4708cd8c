"""Cases on the asset role: definitions, history, and state kept incrementally.

Materialisations, check results and stale marks arrive in ``WriteBatch.assets`` and
are applied in order, in the write transaction (``AssetStore``): a materialised
partition joins the ``materialized`` range set and leaves ``stale`` and ``failed``
(unless an upstream value it consumed is no longer current); its ``downstream``
marks apply only when its data version changed; a code change syncs stale. The
races: two handles writing materialisations of one asset at once lose nothing.
"""

from __future__ import annotations

import anyio

from ...ranges import RangeSet
from ...records import (
    AssetDefRecord,
    AssetEvaluationRecord,
    CheckResultRecord,
    MaterializationRecord,
    StaleMark,
    WriteBatch,
)
from ...store.base import Store
from .assertions import differs
from .cases import Cases, OpenStore

__all__ = ["CASES"]

CASES = Cases()


def mat(
    key: str, version: str, index: int = 0, at: float = 1000.0, **fields: object
) -> MaterializationRecord:
    partition = fields.pop("partition", None if index == 0 else f"p{index}")
    return MaterializationRecord(
        key=key,
        at=at,
        run_id="run",
        seq=index,
        code_version="1",
        data_version=version,
        partition=partition,  # type: ignore[arg-type]
        index=index,
        **fields,  # type: ignore[arg-type]
    )


async def sets(store: Store, key: str) -> dict[str, tuple[tuple[int, int], ...]]:
    [state] = await store.asset_states([key])
    return {
        name: RangeSet.from_bytes(getattr(state, name)).ranges()
        for name in ("materialized", "stale", "failed")
    }


@CASES.case("assets: a materialisation is history, current, and materialised")
async def _materialisation(store: Store) -> None:
    first = mat("orders", "v1", metadata={"rows": 3})
    await store.write(WriteBatch(assets=[first]))
    history = await store.asset_history("orders")
    assert history == [first], differs("asset_history", history, [first])
    latest = await store.latest_materializations("orders", [None, "nope"])
    assert latest == [first, None], differs("latest_materializations", latest, [first, None])
    found = await sets(store, "orders")
    assert found["materialized"] == ((0, 1),), differs("materialized", found, "((0, 1),)")
    [state] = await store.asset_states(["orders"])
    assert (state.data_version, state.materializations) == ("v1", 1)
    assert await store.asset_states(["unknown"]) == []


@CASES.case("assets: downstream marks apply when the data version changed, not otherwise")
async def _marks(store: Store) -> None:
    mark = StaleMark("report", [(0, 1)], {"reason": "upstream-changed", "upstream": "orders"})
    await store.write(WriteBatch(assets=[mat("orders", "v1"), mat("report", "r1")]))
    await store.write(WriteBatch(assets=[mat("orders", "v1", downstream=[mark])]))
    assert (await sets(store, "report"))["stale"] == (), "same data version: downstream fresh"
    await store.write(WriteBatch(assets=[mat("orders", "v2", downstream=[mark])]))
    assert (await sets(store, "report"))["stale"] == ((0, 1),), "a new version marks it"
    [state] = await store.asset_states(["report"])
    assert state.cause == mark.cause, differs("cause", state.cause, mark.cause)
    consumed = [("orders", None, "v2", 0)]
    await store.write(WriteBatch(assets=[mat("report", "r2", consumed=consumed)]))
    assert (await sets(store, "report"))["stale"] == (), "rebuilt from the current version"


@CASES.case("assets: a materialisation from an upstream version since replaced stays stale")
async def _outdated(store: Store) -> None:
    await store.write(WriteBatch(assets=[mat("orders", "v1"), mat("orders", "v2")]))
    consumed = [("orders", None, "v1", 0)]
    await store.write(WriteBatch(assets=[mat("report", "r1", consumed=consumed)]))
    assert (await sets(store, "report"))["stale"] == ((0, 1),)
    [state] = await store.asset_states(["report"])
    assert state.cause.get("upstream") == "orders" and state.cause.get("current") == "v2"


@CASES.case("assets: a failing blocking check marks the partition, a rebuild clears it")
async def _checks(store: Store) -> None:
    check = CheckResultRecord("orders", "not_empty", False, 1000.0, "run", 0, index=3)
    warn = CheckResultRecord("orders", "small", False, 1000.0, "run", 0, blocking=False)
    await store.write(WriteBatch(assets=[mat("orders", "v1", 3), check, warn]))
    assert (await sets(store, "orders"))["failed"] == ((3, 4),)
    results = await store.check_results("orders")
    assert results == [warn, check], differs("check_results", results, [warn, check])
    await store.write(WriteBatch(assets=[mat("orders", "v2", 3)]))
    assert (await sets(store, "orders"))["failed"] == ()


@CASES.case("assets: a definition synced with another code version makes it stale")
async def _code_change(store: Store) -> None:
    mark = StaleMark("report", [(0, 1)], {"reason": "upstream-stale", "upstream": "orders"})
    assert await store.sync_assets([AssetDefRecord("orders", "1")], {}) == {}
    await store.write(WriteBatch(assets=[mat("orders", "v1", 0), mat("orders", "v1", 5)]))
    await store.write(WriteBatch(assets=[mat("report", "r1")]))
    changed = await store.sync_assets([AssetDefRecord("orders", "2")], {"orders": [mark]})
    assert changed == {"orders": "1"}, differs("sync_assets", changed, {"orders": "1"})
    assert (await sets(store, "orders"))["stale"] == ((0, 1), (5, 6))
    assert (await sets(store, "report"))["stale"] == ((0, 1),)
    [orders, report] = await store.asset_states(["orders", "report"])
    code = {"reason": "code-changed", "from": "1", "to": "2"}
    want = [(0, 1, code), (5, 6, code)]
    assert orders.causes == want, differs("causes of a code change", orders.causes, want)
    assert report.causes == [(0, 1, mark.cause)], "its downstream's, with the mark's cause"
    defs = await store.list_asset_defs()
    assert [(d.key, d.code_version) for d in defs] == [("orders", "2")]


@CASES.handles_case("assets: two handles materialising partitions at once lose nothing")
async def _race(store: Store, open_store: OpenStore) -> None:
    other = await open_store()

    async def write(handle: Store, start: int) -> None:
        for index in range(start, 200, 2):  # interleaved: each write splits the other's ranges
            await handle.write(WriteBatch(assets=[mat("orders", "v", index)]))

    async with anyio.create_task_group() as tg:
        tg.start_soon(write, store, 0)
        tg.start_soon(write, other, 1)
    found = await sets(store, "orders")
    assert found["materialized"] == ((0, 200),), differs("materialized", found, "((0, 200),)")
    [state] = await other.asset_states(["orders"])
    assert state.materializations == 200


@CASES.handles_case("assets: dynamic partition keys are numbered once, in the order added")
async def _dynamic(store: Store, open_store: OpenStore) -> None:
    other = await open_store()
    assert await store.add_dynamic_partitions("customers", ["acme", "globex"], 1.0) == [0, 1]
    got = await other.add_dynamic_partitions("customers", ["initech", "acme"], 2.0)
    assert got == [2, 0], differs("add_dynamic_partitions", got, [2, 0])
    keys = await store.dynamic_partitions("customers")
    assert keys == ["acme", "globex", "initech"], differs("dynamic_partitions", keys, "3 keys")
    assert await store.dynamic_partitions("nobody") == []


@CASES.case("assets: an unpartitioned asset's version is its state's, within a batch too")
async def _unpartitioned(store: Store) -> None:
    mark = StaleMark("report", [(0, 1)], {"reason": "upstream-changed", "upstream": "orders"})
    check = CheckResultRecord("report", "not_empty", False, 1000.0, "run", 0)
    await store.write(WriteBatch(assets=[mat("orders", "v1"), mat("report", "r1"), check]))
    assert (await sets(store, "report"))["failed"] == ((0, 1),)
    # In one batch: orders changes, then report is built from the version replaced.
    old = [("orders", None, "v1", 0)]
    await store.write(
        WriteBatch(
            assets=[mat("orders", "v2", downstream=[mark]), mat("report", "r2", consumed=old)]
        )
    )
    found = await sets(store, "report")
    assert found == {"materialized": ((0, 1),), "stale": ((0, 1),), "failed": ()}, found
    new = [("orders", None, "v2", 0)]
    await store.write(WriteBatch(assets=[mat("report", "r3", consumed=new)]))
    assert (await sets(store, "report"))["stale"] == ()
    [state] = await store.asset_states(["report"])
    assert state.cause == {} and state.materializations == 3
    # Re-materialised while settled: nothing changes but the counts and versions.
    await store.write(WriteBatch(assets=[mat("report", "r4", consumed=new)]))
    [state] = await store.asset_states(["report"])
    assert (state.data_version, state.materializations) == ("r4", 4)
    assert await sets(store, "report") == {"materialized": ((0, 1),), "stale": (), "failed": ()}


@CASES.case("assets: within a batch, a materialisation replaces the one made before it")
async def _replaced_in_batch(store: Store) -> None:
    # Marks apply when the version changed from the current one: made earlier in the batch
    # when it was (an unpartitioned asset, and a partition), not the one stored before it.
    for key, index in (("orders", 0), ("daily", 2)):
        mark = StaleMark("report", [(0, 1)], {"reason": "upstream-changed", "upstream": key})
        await store.write(WriteBatch(assets=[mat(key, "v1", index), mat("report", "r1")]))
        same = [mat(key, "v2", index), mat(key, "v2", index, downstream=[mark])]
        await store.write(WriteBatch(assets=list(same)))
        assert (await sets(store, "report"))["stale"] == (), f"{key}: v2 then v2 changes nothing"
        changed = [mat(key, "v3", index), mat(key, "v4", index, downstream=[mark])]
        await store.write(WriteBatch(assets=list(changed)))
        assert (await sets(store, "report"))["stale"] == ((0, 1),), f"{key}: v3 then v4 marks"
        [state] = await store.asset_states([key])
        assert (state.data_version, state.materializations) == ("v4", 5), (key, state)


@CASES.case("assets: a partition's version is its own, not the unpartitioned asset's")
async def _partition_of_unpartitioned(store: Store) -> None:
    # An asset made partitioned keeps its history; its first partition 0 replaces no
    # version (a partition row is its own), so it marks nothing downstream: every store.
    mark = StaleMark("report", [(0, 1)], {"reason": "upstream-changed", "upstream": "orders"})
    await store.write(WriteBatch(assets=[mat("orders", "v1"), mat("report", "r1")]))
    first = mat("orders", "v2", partition="2026-01-01", downstream=[mark])
    await store.write(WriteBatch(assets=[first]))
    assert (await sets(store, "report"))["stale"] == (), "no version replaced: no mark"
    again = mat("orders", "v3", partition="2026-01-01", downstream=[mark])
    await store.write(WriteBatch(assets=[again]))
    assert (await sets(store, "report"))["stale"] == ((0, 1),), "v2 replaced by v3: marked"


@CASES.case("assets: each stale partition keeps why it is stale, not only the last mark")
async def _causes(store: Store) -> None:
    changed = {"reason": "upstream-changed", "upstream": "hourly", "partition": "h7"}
    upstale = {"reason": "upstream-stale", "upstream": "raw"}
    built = [mat("daily", f"v{i}", i) for i in range(1, 6)]
    await store.write(WriteBatch(assets=list(built)))
    await store.write(WriteBatch(assets=[StaleMark("daily", [(1, 3)], changed)]))
    await store.write(WriteBatch(assets=[StaleMark("daily", [(2, 4)], upstale)]))
    [state] = await store.asset_states(["daily"])
    want = [(1, 2, changed), (2, 4, upstale)]
    assert state.causes == want, differs("causes after two marks", state.causes, want)
    assert state.cause == upstale, "the asset's cause is the last mark's"
    await store.write(WriteBatch(assets=[mat("daily", "v2b", 2)]))  # rebuilt: fresh again
    [state] = await store.asset_states(["daily"])
    want = [(1, 2, changed), (3, 4, upstale)]
    assert state.causes == want, differs("causes after a rebuild", state.causes, want)
    await store.write(WriteBatch(assets=[mat("daily", "v1b", 1), mat("daily", "v3b", 3)]))
    [state] = await store.asset_states(["daily"])
    assert (state.causes, state.cause, state.stale) == ([], {}, b""), "nothing stale"


@CASES.handles_case("assets: history is read newest first, per asset and per partition")
async def _history(store: Store, open_store: OpenStore) -> None:
    other = await open_store()
    written: list[MaterializationRecord] = []
    # Interleaved: two handles, two partitions, a batch holding one partition twice.
    for step, (handle, indexes) in enumerate(
        [(store, [1]), (other, [2, 1]), (store, [2]), (other, [1, 1, 2]), (store, [3])]
    ):
        batch = [mat("daily", f"v{step}.{n}", index) for n, index in enumerate(indexes)]
        await handle.write(WriteBatch(assets=list(batch)))
        written += batch
    newest_first = written[::-1]
    for handle in (store, other):
        found = await handle.asset_history("daily")
        assert found == newest_first, differs("asset_history", found, newest_first)
        assert await handle.asset_history("daily", limit=2) == newest_first[:2]
        for index in (1, 2, 3):
            mine = [m for m in newest_first if m.index == index]
            found = await handle.asset_history("daily", partition=f"p{index}")
            assert found == mine, differs(f"asset_history of p{index}", found, mine)
            assert await handle.asset_history("daily", partition=f"p{index}", limit=1) == mine[:1]
        latest = await handle.latest_materializations("daily", ["p2", "p9", "p1"])
        expected = [
            next(m for m in newest_first if m.index == 2),
            None,
            next(m for m in newest_first if m.index == 1),
        ]
        assert latest == expected, differs("latest_materializations", latest, expected)
        assert await handle.asset_history("daily", partition="p9") == []
        assert await handle.asset_history("unknown") == []
    # An unpartitioned asset written in between keeps a history of its own.
    await store.write(WriteBatch(assets=[mat("report", "r1"), mat("report", "r2")]))
    assert [m.data_version for m in await other.asset_history("report")] == ["r2", "r1"]
    assert [
        m and m.data_version for m in await other.latest_materializations("report", [None])
    ] == ["r2"]
    assert (await store.asset_history("daily", limit=1)) == newest_first[:1]


@CASES.case("assets: automation evaluations are kept, read newest first up to a time")
async def _evaluations(store: Store) -> None:
    def evaluation(at: float, decision: str) -> AssetEvaluationRecord:
        return AssetEvaluationRecord(
            "report", at, "on_upstream_change", decision, f"at {at}", considered={"up": "v1"}
        )

    first, second, third = (
        evaluation(1.0, "wait"),
        evaluation(2.0, "materialize"),
        evaluation(3.0, "skip"),
    )
    await store.add_asset_evaluations([first, second])
    await store.add_asset_evaluations([third])
    await store.add_asset_evaluations([])
    found = await store.asset_evaluations("report")
    assert found == [third, second, first], differs("asset_evaluations", found, "3, 2, 1")
    assert await store.asset_evaluations("report", until=2.5, limit=1) == [second]
    assert await store.asset_evaluations("orders") == []
