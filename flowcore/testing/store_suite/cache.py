"""Cases on cache entries: round trips, lookups, listing, deletion and the refs they hold.

The engine reuses a task's result on the strength of ``get_cache`` alone, and
``flowcore cache clear`` and ``flowcore runs prune`` delete blobs that ``result_refs``
no longer names (it names those of task runs, cache entries and asset
materialisations), so a stale or forgotten entry here means a wrong result or a lost one.
"""

from __future__ import annotations

import anyio

from ...records import MaterializationRecord, WriteBatch
from ...store.base import CacheBatchReads, Store
from .assertions import differs
from .cases import Cases
from .records import cache_entry, flow_run, full_cache_entry, task_run

__all__ = ["CASES"]

CASES = Cases()


@CASES.case("cache: an entry keeps every field through a write and a read")
async def _cache_round_trip(store: Store) -> None:
    missing = await store.get_cache("k" * 64)
    assert missing is None, differs("get_cache of a key never written", missing, None)
    minimal = cache_entry("minimal", 2.0)
    await store.write(WriteBatch(cache_entries=[full_cache_entry(), minimal]))
    got = await store.get_cache("k" * 64)
    assert got == full_cache_entry(), differs("get_cache", got, full_cache_entry())
    got = await store.get_cache("minimal")
    want = cache_entry("minimal", 2.0)
    assert got == want, differs("get_cache of an entry with only required fields", got, want)
    assert got is not None and got.expires is None and got.result is None, (
        f"expires and result None must stay None: {got!r}"
    )


@CASES.case("cache: get_cache returns an expired entry too")
async def _cache_expired(store: Store) -> None:
    old = cache_entry("old", 1.0, expires=2.0, result=b"v")
    await store.write(WriteBatch(cache_entries=[old]))
    got = await store.get_cache("old")
    assert got == old, differs("get_cache of an entry that expired long ago", got, old)
    listed = await store.list_cache()
    assert listed == [old], differs("list_cache with an expired entry", listed, [old])


@CASES.case("cache: get_cache_nowait answers as get_cache does, or raises WouldBlock")
async def _cache_nowait(store: Store) -> None:
    entries = [cache_entry("a", 1.0, result=b"a"), cache_entry("b", 2.0, result_ref="ef" * 32)]
    await store.write(WriteBatch(cache_entries=entries))
    for key in ("a", "b", "missing"):
        want = await store.get_cache(key)
        try:
            got = store.get_cache_nowait(key)
        except anyio.WouldBlock:
            continue  # allowed: the engine then awaits get_cache
        assert got == want, differs(f"get_cache_nowait({key!r}) against get_cache", got, want)
    await store.write(WriteBatch(cache_entries=[cache_entry("c", 3.0, result=b"c")]))
    try:
        got = store.get_cache_nowait("c")
    except anyio.WouldBlock:
        return
    want_c = cache_entry("c", 3.0, result=b"c")
    assert got == want_c, differs(
        "get_cache_nowait of an entry this handle has just written", got, want_c
    )


@CASES.case("cache: list_cache is newest first and filters by task")
async def _list_cache(store: Store) -> None:
    entries = [
        cache_entry("k1", 1.0, "fetch"),
        cache_entry("k3", 3.0, "parse"),
        cache_entry("k2", 2.0, "fetch"),
        cache_entry("k5", 5.0, "fetch"),
        cache_entry("k4", 4.0, "parse"),
    ]
    await store.write(WriteBatch(cache_entries=entries[:2]))
    await store.write(WriteBatch(cache_entries=entries[2:]))
    keys = [e.key for e in await store.list_cache()]
    assert keys == ["k5", "k4", "k3", "k2", "k1"], differs(
        "list_cache() keys (created 5, 4, 3, 2, 1)", keys, ["k5", "k4", "k3", "k2", "k1"]
    )
    keys = [e.key for e in await store.list_cache(task_name="fetch")]
    assert keys == ["k5", "k2", "k1"], differs(
        "list_cache(task_name='fetch')", keys, ["k5", "k2", "k1"]
    )
    keys = [e.key for e in await store.list_cache(task_name="nope")]
    assert keys == [], differs("list_cache(task_name='nope')", keys, [])


@CASES.case("cache: delete_cache removes those entries only")
async def _delete_cache(store: Store) -> None:
    await store.write(
        WriteBatch(cache_entries=[cache_entry(k, float(n)) for n, k in enumerate("abcd")])
    )
    await store.delete_cache(["b", "d", "never-written"])
    await store.delete_cache([])
    keys = sorted(e.key for e in await store.list_cache())
    assert keys == ["a", "c"], differs(
        "keys left after deleting b, d and an unknown key", keys, ["a", "c"]
    )
    for key in ("b", "d"):
        got = await store.get_cache(key)
        assert got is None, differs(f"get_cache({key!r}) after deleting it", got, None)
    got = await store.get_cache("a")
    assert got == cache_entry("a", 0.0), differs(
        "get_cache('a'), not deleted", got, cache_entry("a", 0.0)
    )


@CASES.case("cache: writing an entry with the same key replaces it")
async def _cache_replace(store: Store) -> None:
    await store.write(
        WriteBatch(cache_entries=[cache_entry("k", 1.0, "t", expires=5.0, result=b"old")])
    )
    new = cache_entry("k", 2.0, "t", result_ref="ab" * 32, run_id="run2", seq=3)
    await store.write(WriteBatch(cache_entries=[new]))
    got = await store.get_cache("k")
    assert got == new, differs(
        "get_cache of a rewritten key (no field of the old entry stays)", got, new
    )
    listed = await store.list_cache()
    assert listed == [new], differs("list_cache after rewriting the key", listed, [new])


@CASES.case("cache: result_refs holds the refs of task runs and cache entries")
async def _result_refs(store: Store) -> None:
    refs = await store.result_refs()
    assert refs == set(), differs("result_refs of an empty store", refs, set())
    r1, r2, r3 = "a1" * 32, "b2" * 32, "c3" * 32
    await store.write(
        WriteBatch(
            [flow_run("run1")],
            [
                task_run("run1", 0, result_ref=r1),
                task_run("run1", 1, result=b"inline"),
                task_run("run1", 2, result_ref=r3),
            ],
            [
                cache_entry("k1", 1.0, result_ref=r2),
                cache_entry("k2", 2.0, result=b"inline"),
                cache_entry("k3", 3.0, result_ref=r3),
            ],
        )
    )
    refs = await store.result_refs()
    assert refs == {r1, r2, r3}, differs("result_refs", refs, {r1, r2, r3})
    await store.delete_cache(["k1", "k3"])
    refs = await store.result_refs()
    # r3 is still the result of task run 2; r2 belonged to the deleted entry only.
    assert refs == {r1, r3}, differs("result_refs after deleting entries k1 and k3", refs, {r1, r3})


@CASES.case("cache: result_refs holds the blobs of asset materialisations, history included")
async def _result_refs_of_assets(store: Store) -> None:
    # A large asset value is a blob that only its materialisation names (the asset's task
    # run returns its data version): blob pruning must keep it, or the value is lost.
    current, older = "d4" * 32, "e5" * 32

    def materialisation(version: str, at: float, ref: str | None) -> MaterializationRecord:
        return MaterializationRecord(
            key="orders", at=at, run_id="run1", seq=0, code_version="1", data_version=version,
            metadata={"value_ref": "not a ref: metadata"}, value_ref=ref,
        )  # fmt: skip

    await store.write(
        WriteBatch(
            [flow_run("run1")],
            [task_run("run1", 0, result=b"inline")],
            assets=[
                materialisation("v1", 1.0, older),
                materialisation("v2", 2.0, None),  # kept inline (or by another I/O)
                materialisation("v3", 3.0, current),
            ],
        )
    )
    refs = await store.result_refs()
    assert refs == {current, older}, differs("result_refs", refs, {current, older})


@CASES.case("cache: get_cache_many (CacheBatchReads) answers as get_cache does for each key")
async def _cache_many(store: Store) -> None:
    if not isinstance(store, CacheBatchReads):
        return  # an optional role: the engine reads each key with get_cache without it
    entries = [
        cache_entry("a", 1.0, result=b"a"),
        cache_entry("b", 2.0, result_ref="ef" * 32),
        cache_entry("old", 3.0, expires=4.0, result=b"o"),
    ]
    await store.write(WriteBatch(cache_entries=entries))
    empty = await store.get_cache_many([])
    assert dict(empty) == {}, differs("get_cache_many([])", empty, {})
    keys = ["a", "missing", "b", "old", "a"]  # a key twice, one never written
    got = dict(await store.get_cache_many(keys))
    want = {key: await store.get_cache(key) for key in ("a", "b", "old")}
    assert got == want, differs(f"get_cache_many({keys})", got, want)
    many = [f"k{i}" for i in range(1200)]  # more than one statement's worth anywhere
    await store.write(WriteBatch(cache_entries=[cache_entry(k, 5.0) for k in many[::2]]))
    got_many = await store.get_cache_many(many)
    assert sorted(got_many) == sorted(many[::2]), differs(
        "the keys get_cache_many found among 1,200 (every other one written)",
        sorted(got_many)[:5],
        sorted(many[::2])[:5],
    )
