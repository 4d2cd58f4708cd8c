"""Materialising assets: order, incremental re-runs, staleness and its causes, checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

import flowcore
from flowcore.assets import (
    AssetGraph,
    AssetValueMissing,
    CheckResult,
    FilesIO,
    Freshness,
    Output,
    asset,
    asset_check,
)
from flowcore.assets.materialize import MaterializeResult, materialize, materialize_async
from flowcore.assets.status import AssetStatus, status_async
from flowcore.errors import ResultNotSerializable

pytestmark = pytest.mark.anyio
MINUTE = timedelta(minutes=1)


def diamond(source: list[int], *, left_version: str = "1") -> AssetGraph:
    """raw → left, right → report, plus an unrelated asset."""

    @asset
    def raw() -> list[int]:
        return list(source)

    @asset(code_version=left_version)
    def left(raw: list[int]) -> int:
        return min(raw)

    @asset
    async def right(raw: list[int]) -> int:
        return max(raw)

    @asset
    def report(left: int, right: int) -> str:
        return f"{left}..{right}"

    @asset
    def other() -> int:
        return 7

    return AssetGraph([raw, left, right, report, other])


async def statuses(engine: flowcore.Engine, graph: AssetGraph) -> dict[str, AssetStatus]:
    return {s.key: s for s in await status_async(store=engine.store, graph=graph)}


def keys(pairs: tuple[tuple[Any, ...], ...]) -> set[str]:
    return {pair[0] for pair in pairs}


async def test_a_diamond_is_materialised_in_order_as_one_flow_run() -> None:
    graph = diamond([3, 1, 2])
    async with flowcore.Engine(store="memory") as engine:
        result = await materialize_async(["*"], graph=graph, engine=engine)
        assert keys(result.materialized) == {"raw", "left", "right", "report", "other"}
        assert result.ok
        run = await engine.store.get_run(result.run_id)
        assert run.name == "materialize" and run.state == flowcore.State.COMPLETED
        tasks = await engine.store.list_task_runs(result.run_id)
        assert len(tasks) == 5
        ended = {t.name: t.ended or 0.0 for t in tasks}
        started = {t.name: t.started or 0.0 for t in tasks}
        assert started["left"] >= ended["raw"] and started["right"] >= ended["raw"]
        assert started["report"] >= max(ended["left"], ended["right"])
        history = await engine.store.asset_history("report")
        assert len(history) == 1 and history[0].run_id == result.run_id
        consumed = {up: version for up, _, version, _ in history[0].consumed}
        assert consumed == {
            "left": result.data_versions[("left", None)],
            "right": result.data_versions[("right", None)],
        }


async def test_independent_branches_run_concurrently() -> None:
    both_running = anyio.Event()
    started: list[str] = []

    async def branch(name: str) -> int:
        started.append(name)
        if len(started) == 2:
            both_running.set()
        with anyio.fail_after(5):
            await both_running.wait()  # deadlocks unless both branches run at once
        return len(name)

    @asset
    def raw() -> int:
        return 1

    @asset
    async def left(raw: int) -> int:
        return await branch("left")

    @asset
    async def right(raw: int) -> int:
        return await branch("right")

    async with flowcore.Engine(store="memory") as engine:
        result = await materialize_async([raw, left, right], engine=engine)
    assert keys(result.materialized) == {"raw", "left", "right"}


async def test_an_incremental_rerun_skips_fresh_assets() -> None:
    graph = diamond([1, 2])
    async with flowcore.Engine(store="memory") as engine:
        await materialize_async(["*"], graph=graph, engine=engine)
        again = await materialize_async(["*"], graph=graph, engine=engine)
        assert again.materialized == ()
        assert keys(again.skipped) == {"raw", "left", "right", "report", "other"}
        forced = await materialize_async(["left"], graph=graph, engine=engine, only_stale=False)
        assert keys(forced.materialized) == {"left"}


async def test_a_code_change_makes_that_asset_and_its_downstream_stale_and_nothing_else() -> None:
    async with flowcore.Engine(store="memory") as engine:
        await materialize_async(["*"], graph=diamond([1, 2]), engine=engine)
        changed = diamond([1, 2], left_version="2")
        await flowcore.assets.materialize_async(
            ["other"], graph=changed, engine=engine
        )  # syncs the definitions, materialises nothing stale
        found = await statuses(engine, changed)
        assert {k for k, s in found.items() if s.status == "stale"} == {"left", "report"}
        assert dict(found["left"].cause) == {"reason": "code-changed", "from": "1", "to": "2"}
        assert dict(found["report"].cause) == {"reason": "upstream-stale", "upstream": "left"}
        only = await status_async(store=engine.store, graph=changed, stale_only=True)
        assert [s.key for s in only] == ["left", "report"]
        rerun = await materialize_async(["*"], graph=changed, engine=engine)
        assert keys(rerun.materialized) == {"left", "report"}
        assert keys(rerun.skipped) == {"raw", "right", "other"}
        assert {s.status for s in (await statuses(engine, changed)).values()} == {"fresh"}


async def test_an_upstream_data_change_makes_only_its_downstream_stale() -> None:
    source = [1, 2]
    graph = diamond(source)
    async with flowcore.Engine(store="memory") as engine:
        await materialize_async(["*"], graph=graph, engine=engine)
        source.append(9)
        only_raw = await materialize_async(["raw"], graph=graph, engine=engine, only_stale=False)
        assert keys(only_raw.materialized) == {"raw"}
        found = await statuses(engine, graph)
        assert {k for k, s in found.items() if s.status == "stale"} == {"left", "right", "report"}
        assert found["left"].cause["reason"] == "upstream-changed"
        assert found["left"].cause["upstream"] == "raw"
        assert found["report"].cause == {"reason": "upstream-stale", "upstream": "left"} or (
            found["report"].cause == {"reason": "upstream-stale", "upstream": "right"}
        )
        assert found["other"].status == "fresh"


async def test_an_upstream_rematerialised_to_the_same_data_version_leaves_downstream_fresh() -> (
    None
):
    graph = diamond([4, 5])
    async with flowcore.Engine(store="memory") as engine:
        await materialize_async(["*"], graph=graph, engine=engine)
        again = await materialize_async(["raw"], graph=graph, engine=engine, only_stale=False)
        assert keys(again.materialized) == {"raw"}
        assert {s.status for s in (await statuses(engine, graph)).values()} == {"fresh"}
        # ... and a downstream run in the same run as an unchanged upstream is skipped.
        chained = await materialize_async(
            ["raw"], graph=graph, engine=engine, only_stale=False, downstream=False
        )
        assert keys(chained.materialized) == {"raw"}


async def test_a_failing_blocking_check_stops_downstream_and_a_warn_check_does_not() -> None:
    @asset_check(asset="raw")
    def not_empty(rows: list[int]) -> CheckResult:
        return CheckResult(bool(rows), metadata={"rows": len(rows)})

    @asset_check(asset="left", severity="warn")
    def small(value: int) -> bool:
        return value < 0  # fails: a warning only

    graph = diamond([])
    with_checks = AssetGraph([*graph.assets.values(), not_empty])
    async with flowcore.Engine(store="memory") as engine:
        result = await materialize_async(["raw"], graph=with_checks, engine=engine, downstream=True)
        assert result.failed_checks == (("raw", None, "not_empty"),)
        assert keys(result.blocked) == {"left", "right", "report"}
        assert all("not_empty" in reason for _, _, reason in result.blocked)
        found = await statuses(engine, with_checks)
        assert found["raw"].status == "failed-check"
        assert dict(found["raw"].cause) == {"reason": "failed-check", "check": "not_empty"}
        [check] = await engine.store.check_results("raw")
        assert not check.passed and check.metadata == {"rows": 0}
        run = await engine.store.get_run(result.run_id)  # resumable: the run failed
        assert (
            run.state == flowcore.State.FAILED
            and run.error_type == "flowcore.assets.errors.MaterializationFailed"
        )
        assert run.error_message is not None and "not_empty" in run.error_message

    warn_graph = AssetGraph([*diamond([1]).assets.values(), small])
    async with flowcore.Engine(store="memory") as engine:
        result = await materialize_async(["*"], graph=warn_graph, engine=engine)
        assert result.failed_checks == () and result.blocked == ()
        assert ("report", None) in result.materialized
        [warned] = await engine.store.check_results("left")
        assert not warned.passed and warned.severity == "warn" and not warned.blocking


async def test_freshness_is_evaluated_at_query_time_on_a_given_clock() -> None:
    @asset(freshness=Freshness(max_lag=timedelta(hours=1)))
    def hourly() -> int:
        return 1

    graph = AssetGraph([hourly])
    async with flowcore.Engine(store="memory") as engine:
        await materialize_async([hourly], engine=engine)
        [state] = await engine.store.asset_states(["hourly"])
        assert state.last_at is not None
        built = datetime.fromtimestamp(state.last_at, UTC)
        [soon] = await status_async(
            store=engine.store, graph=graph, now=built + timedelta(minutes=59)
        )
        [late] = await status_async(
            store=engine.store, graph=graph, now=built + timedelta(minutes=61)
        )
    assert soon.status == "fresh"
    assert late.status == "overdue" and late.cause["reason"] == "overdue"


async def test_output_gives_the_data_version_and_metadata() -> None:
    @asset
    def table() -> Output[list[int]]:
        return Output([1, 2], data_version="v-1", metadata={"source": "api"})

    async with flowcore.Engine(store="memory") as engine:
        result = await materialize_async([table], engine=engine)
        [mat] = await engine.store.asset_history("table")
    assert result.data_versions[("table", None)] == "v-1"
    assert mat.data_version == "v-1" and mat.metadata["source"] == "api"
    assert mat.metadata["rows"] == 2 and mat.metadata["preview"] == "[1, 2]"


async def test_a_large_value_goes_to_the_blob_store_and_is_loaded_back() -> None:
    big = "x" * 100_000

    @asset
    def blob() -> str:
        return big

    @asset
    def size(blob: str) -> int:
        return len(blob)

    async with flowcore.Engine() as engine:  # SQLite, with blobs
        await materialize_async([blob], engine=engine)
        [mat] = await engine.store.asset_history("blob")
        assert mat.value is None and mat.value_ref is not None
        result = await materialize_async([blob, size], engine=engine, only_stale=False)
        assert result.ok
        graph = AssetGraph([blob, size])
        again = await materialize_async(["size"], graph=graph, engine=engine, only_stale=False)
        assert again.data_versions[("size", None)] == flowcore.assets.data_version(100_000)


async def test_selecting_an_unknown_asset_names_the_closest() -> None:
    graph = diamond([1])
    async with flowcore.Engine(store="memory") as engine:
        with pytest.raises(flowcore.assets.AssetDefinitionError, match="'report'"):
            await materialize_async(["reprot"], graph=graph, engine=engine)
        with pytest.raises(flowcore.assets.AssetDefinitionError, match="graph="):
            await materialize_async(["report"], engine=engine)


async def test_a_missing_upstream_value_names_the_asset_and_the_fix() -> None:
    graph = diamond([1])
    async with flowcore.Engine(store="memory") as engine:
        result = await materialize_async(["left"], graph=graph, engine=engine)
    [(key, partition, reason)] = result.failed
    assert key == "left" and partition is None
    assert AssetValueMissing.__name__ in reason and "'raw'" in reason
    assert "materialise it first" in reason


async def test_a_value_the_io_cannot_store_names_the_asset_and_the_fix() -> None:
    @asset
    def handle() -> Output[object]:
        return Output(object(), data_version="1")

    async with flowcore.Engine(store="memory") as engine:
        result = await materialize_async([handle], engine=engine)
        assert await engine.store.asset_states(["handle"]) == []  # nothing recorded
    [(key, _, reason)] = result.failed
    assert key == "handle" and ResultNotSerializable.__name__ in reason
    assert "io=" in reason


def test_materialize_from_sync_code() -> None:
    @asset
    def one() -> int:
        return 1

    result = materialize([one])
    assert isinstance(result, MaterializeResult) and result.materialized == (("one", None),)


async def test_files_io_stores_the_value_as_a_file_and_loads_it_for_the_downstream(
    tmp_path: Path,
) -> None:
    files = FilesIO(tmp_path / "data", format="json")

    @asset(io=files)
    def table() -> list[int]:
        return [3, 4]

    @asset
    def total(table: list[int]) -> int:
        return sum(table)

    graph = AssetGraph([table, total])
    async with flowcore.Engine(store="memory") as engine:
        await materialize_async(["table"], graph=graph, engine=engine)
        assert files.path("table", None).read_bytes() == b"[3,4]"
        [mat] = await engine.store.asset_history("table")
        assert mat.value is None and mat.io == "FilesIO"
        result = await materialize_async(["total"], graph=graph, engine=engine)
    assert result.data_versions[("total", None)] == flowcore.assets.data_version(7)


async def test_a_check_made_with_the_asset_object_runs_when_only_assets_are_selected() -> None:
    """Regression: ``@asset_check(asset=cleaned)`` was left out, silently, by a graph built
    from the assets alone (``materialize([raw, cleaned, report])``), so a failing blocking
    check blocked nothing; and listing the check in the selection was refused as a key."""

    @asset
    def raw() -> list[int]:
        return [1, 1]

    @asset
    def cleaned(raw: list[int]) -> list[int]:
        return raw

    @asset_check(asset=cleaned)
    def ids_unique(rows: list[int]) -> bool:
        return len(set(rows)) == len(rows)

    @asset
    def report(cleaned: list[int]) -> int:
        return len(cleaned)

    for selection in ([raw, cleaned, report], [raw, cleaned, ids_unique, report]):
        async with flowcore.Engine(store="memory") as engine:
            result = await materialize_async(selection, engine=engine)
        assert result.failed_checks == (("cleaned", None, "ids_unique"),)
        assert keys(result.blocked) == {"report"}
    assert AssetGraph([raw, cleaned, report]).checks["cleaned"] == (ids_unique,)
    # Listed too (a module holds both): one check, not two.
    assert AssetGraph([raw, cleaned, ids_unique, report]).checks["cleaned"] == (ids_unique,)
