"""The materialiser's fast paths keep their guarantees: definitions synced once per
graph and store handle (again when a code version or the handle differs), an event made
only when a downstream waits, and short previews made without ``reprlib``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

import flowcore
from flowcore.assets import AssetGraph, asset
from flowcore.assets.marks import sync_definitions
from flowcore.assets.materialize import _metadata, _repr, materialize_async
from flowcore.records import AssetDefRecord
from flowcore.store import resolve_store

pytestmark = pytest.mark.anyio


class Counting:
    """Counts the store's ``list_asset_defs`` calls (what a sync reads first)."""

    def __init__(self, store: Any) -> None:
        self.calls = 0
        self._list = store.list_asset_defs
        store.list_asset_defs = self

    async def __call__(self, keys: list[str] | None = None) -> list[AssetDefRecord]:
        self.calls += 1
        result: list[AssetDefRecord] = await self._list(keys)
        return result


def graph_of(version: str) -> AssetGraph:
    @asset(code_version=version)
    def raw() -> int:
        return 1

    @asset
    def down(raw: int) -> int:
        return raw + 1

    return AssetGraph([raw, down])


async def test_definitions_are_synced_once_per_graph_and_store() -> None:
    graph = graph_of("1")
    async with flowcore.Engine(store="memory") as engine:
        counting = Counting(engine.store)
        for _ in range(3):
            result = await materialize_async(["raw", "down"], graph=graph, only_stale=False)
            assert result.ok
        assert counting.calls == 1
        assert await sync_definitions(graph, engine.store, 0.0) == {}
        assert counting.calls == 1


async def test_a_changed_code_version_is_synced_and_marks_downstream_stale() -> None:
    async with flowcore.Engine(store="memory") as engine:
        await materialize_async(["raw", "down"], graph=graph_of("1"), only_stale=False)
        changed = graph_of("2")
        assert await sync_definitions(changed, engine.store, 0.0) == {"raw": "1"}
        states = {s.key: s for s in await engine.store.asset_states()}
        assert states["raw"].stale and states["down"].stale
        result = await materialize_async(["raw", "down"], graph=changed)
        assert sorted(k for k, _ in result.materialized) == ["down", "raw"]


async def test_another_store_handle_is_synced(tmp_path: Path) -> None:
    graph = graph_of("1")
    for _ in range(2):
        store = resolve_store(tmp_path / "one.db")
        await store.open()
        try:
            counting = Counting(store)
            await sync_definitions(graph, store, 0.0)
            assert counting.calls == 1
        finally:
            await store.close()
    other = resolve_store(tmp_path / "other.db")
    await other.open()
    try:
        await sync_definitions(graph, other, 0.0)
        assert [d.key for d in await other.list_asset_defs()] == ["down", "raw"]
    finally:
        await other.close()


async def test_a_downstream_waits_for_its_upstream_outcome() -> None:
    seen: list[str] = []

    @asset
    async def first() -> int:
        seen.append("first")
        return 1

    @asset
    async def second(first: int) -> int:
        seen.append("second")
        return first + 1

    async with flowcore.Engine(store="memory"):
        result = await materialize_async(
            ["second", "first"], graph=AssetGraph([first, second]), only_stale=False
        )
    assert result.ok and seen == ["first", "second"]
    assert result.data_versions  # both materialised


def test_short_previews_are_those_reprlib_makes() -> None:
    for value in (0, -3, 10**14, 1.5, True, None, float("nan"), float("inf"), 10**300):
        assert _metadata(value) == {"preview": _repr.repr(value)}


def test_stored_definitions_read_back_whole_and_share_identical_descriptions() -> None:
    """SQLite rows decode the description once per distinct bytes: every field still reads
    back as written (none, plain, partitioned), and identical descriptions are one object."""
    from flowcore.assets import DailyPartitions
    from flowcore.assets.description import describe
    from flowcore.store.sqlite.rows import asset_body, asset_def_record

    daily = describe(DailyPartitions(start="2026-01-01"), {}, None)
    plain = describe(None, {}, None)
    records = [
        AssetDefRecord(key="old", code_version="1"),
        AssetDefRecord(
            key="a", code_version="2", group="g", partitions="daily", upstream=[("u", "id")],
            freshness="1h", io="files", checks=["c"], synced=1.5, description=daily,
        ),
        AssetDefRecord(key="b", code_version="3", description=plain),
        AssetDefRecord(key="c", code_version="3", description=plain),
    ]  # fmt: skip
    read = [asset_def_record(asset_body(r)) for r in records]
    assert read == records
    assert read[2].description is read[3].description
    assert read[1].upstream == [("u", "id")] and read[1].upstream is not read[2].upstream


async def test_a_status_reads_plain_and_rebuilt_definitions_alike(tmp_path: Path) -> None:
    """The status of many stored assets shares one judgement for plain definitions, and a
    partitioned or old-format one next to them is still judged by its own definition."""
    from flowcore.assets import DailyPartitions, status_async
    from flowcore.assets.description import describe
    from flowcore.records import MaterializationRecord, WriteBatch

    store = resolve_store(tmp_path / "s.db")
    await store.open()
    try:
        plain = describe(None, {}, None)
        daily = describe(DailyPartitions(start="2026-01-01"), {}, None)
        await store.sync_assets(
            [
                AssetDefRecord(key="p1", code_version="1", description=plain),
                AssetDefRecord(key="p2", code_version="1", description=plain),
                AssetDefRecord(key="d", code_version="1", description=daily),
                AssetDefRecord(key="old", code_version="1"),
            ],
            {},
        )
        events: list[Any] = [
            MaterializationRecord(
                key=k,
                at=1.0,
                run_id="r",
                seq=i,
                code_version="1",
                data_version="x",
                partition="2026-01-01" if k == "d" else None,
            )
            for i, k in enumerate(["p1", "d", "old"])
        ]
        await store.write(WriteBatch(assets=events))
        found = {s.key: s for s in await status_async(store=store)}
    finally:
        await store.close()
    assert found["p1"].status == "fresh" and not found["p1"].notes
    assert found["p2"].status == "missing"
    assert found["d"].status == "missing" and found["d"].partitions is not None
    assert found["old"].notes and "older flowcore" in found["old"].notes[0]


# -- what a materialisation costs: the shortcuts keep what is recorded --------------------


def test_a_constant_value_is_known_as_it_would_be_worked_out() -> None:
    """None, bools and small ints (what assets that write elsewhere return, again and
    again) are hashed, previewed and encoded once: the same as worked out each time."""
    from flowcore.assets.materialize import _CONSTANTS_KEPT, _constant, _constants
    from flowcore.assets.versions import data_version
    from flowcore.serializers import encode_result

    for value in (None, True, False, 0, 1, -7, 10**15 - 1, -(10**15) + 1):
        for _ in range(2):  # worked out, then kept
            found = _constant(value)
            expected = (
                data_version(value),
                _metadata(value)["preview"],
                encode_result(value, "msgpack", ""),
            )
            assert found == expected, value
    assert _constant(True) != _constant(1) and _constant(False) != _constant(0)
    for other in (10**15, -(10**15), 1.0, "x", b"x", [1], (1,)):
        assert _constant(other) is None, other
    for n in range(3 * _CONSTANTS_KEPT):
        _constant(n)
    assert len(_constants) <= _CONSTANTS_KEPT


async def test_a_materialisation_records_the_same_whatever_its_value() -> None:
    """A constant value (kept once worked out) and any other value are recorded alike:
    data version, preview and size, the stored bytes; consumed upstreams only when read."""
    from flowcore.assets.materialize import _NONE
    from flowcore.assets.versions import data_version
    from flowcore.serializers import encode_result

    values: dict[str, Any] = {"none": None, "flag": True, "count": 3, "rows": [1, 2]}
    made = []
    for key, value in values.items():

        def fn(value: Any = value) -> Any:
            return value

        fn.__name__ = key
        made.append(asset(key=key)(fn))

    @asset
    def total(count: int) -> int:
        return count + 1

    graph = AssetGraph([*made, total])
    async with flowcore.Engine(store="memory") as engine:
        for _ in range(2):
            result = await materialize_async(list(graph.order), graph=graph, only_stale=False)
            assert result.ok
        for key, value in {**values, "total": 4}.items():
            [record, _] = await engine.store.asset_history(key)
            blob = encode_result(value, "msgpack", key)
            assert record.data_version == data_version(value), key
            assert record.metadata == {**_metadata(value), "bytes": len(blob)}, key
            assert record.value == blob, key
            assert bool(record.downstream) == (key == "count"), key  # total reads it
            consumed = [("count", None, data_version(3), 0)] if key == "total" else []
            assert record.consumed == consumed, key
    assert _NONE == []  # shared by the records that have none: never changed in place


def test_a_run_node_is_not_walked_by_the_garbage_collector() -> None:
    import gc

    from flowcore.assets.materialize import _Node

    @asset
    def raw() -> int:
        return 1

    assert not gc.is_tracked(_Node("raw", None, raw))


def test_sqlite_writes_asset_bodies_as_asset_body_makes_them() -> None:
    """``rows.asset_body`` encodes into room made up front: the bytes are the record's
    msgpack, small and past the room made for them."""
    from flowcore.records import AssetStateRecord, MaterializationRecord
    from flowcore.store.sqlite.rows import _ASSET_BODY_ROOM, asset_body

    long = "x" * (2 * _ASSET_BODY_ROOM)
    records: list[Any] = [
        MaterializationRecord(
            key="a", at=1.5, run_id="r", seq=2, code_version="1", data_version="d",
            metadata={"preview": "1", "bytes": 6}, value=b"FCR\x01m\x01",
        ),
        MaterializationRecord(
            key="a", at=1.5, run_id="r", seq=2, code_version="1", data_version="d",
            metadata={"preview": long}, partition="p", index=4,
        ),
        AssetStateRecord(key="a", materialized=b"\x00\x01", data_version="d", cause={"x": 1}),
    ]  # fmt: skip
    for record in records:
        assert asset_body(record) == msgspec.msgpack.encode(record)
