"""Cheap cache hits: lookups that never await, keys made in fewer steps (and the same
keys as before), and the lookups that must wait for the store read together.

A store that answers at once (SQLite, memory) is read one key at a time, on the spot;
a store whose reads are round trips (a database server: ``get_cache_nowait`` raises
``WouldBlock``) gets the keys of the calls started together in one ``get_cache_many``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flowcore
from flowcore import CacheKeyError, CachePolicy, State
from flowcore.cache import KeyMaker
from flowcore.engine.cached import CacheReads
from flowcore.errors import StoreError
from flowcore.records import CacheEntry, task_run_label

pytestmark = pytest.mark.anyio

CALLS: list[Any] = []


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    CALLS.clear()


@flowcore.task(cache=True)
async def square(x: int) -> int:
    CALLS.append(x)
    return x * x


@flowcore.task(cache=True)
async def big(n: int) -> str:
    CALLS.append(n)
    return "x" * n


@flowcore.flow
async def squares(xs: list[int]) -> list[int]:
    return list(await asyncio.gather(*(square(x) for x in xs)))


async def task_runs(engine: flowcore.Engine) -> list[Any]:
    await engine.recorder.flush()
    assert engine.last_run is not None
    return await engine.store.list_task_runs(engine.last_run.id)


class ServerStore(flowcore.MemoryStore):
    """A store whose cache reads are round trips, as a database server's are: it never
    answers at once, and counts the reads it is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.single: list[str] = []  # the keys read one at a time (get_cache)

    def get_cache_nowait(self, key: str) -> CacheEntry | None:
        raise anyio.WouldBlock

    async def get_cache(self, key: str) -> CacheEntry | None:
        self.single.append(key)
        await anyio.lowlevel.checkpoint()  # the round trip
        return super().get_cache_nowait(key)


class BatchingServerStore(ServerStore):
    """A :class:`ServerStore` that reads many keys in one round trip."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []  # the keys of each get_cache_many
        self.fail_next: StoreError | None = None

    async def get_cache_many(self, keys: Sequence[str]) -> dict[str, CacheEntry]:
        self.batches.append(list(keys))
        await anyio.lowlevel.checkpoint()  # the round trip
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        found = {}
        for key in keys:
            entry = flowcore.MemoryStore.get_cache_nowait(self, key)
            if entry is not None:
                found[key] = entry
        return found


# -- lookups that wait for the store are read together ------------------------------------


async def test_gathered_lookups_that_wait_for_the_store_are_read_in_one_query() -> None:
    store = BatchingServerStore()
    xs = list(range(50))
    async with flowcore.Engine(store) as engine:
        assert await squares(xs) == [x * x for x in xs]  # all miss
        missed = await task_runs(engine)
        assert await squares(xs) == [x * x for x in xs]  # all hit
        hits = await task_runs(engine)
    keys = [t.cache_key for t in missed]
    assert store.single == [], "a lookup read its key alone"
    assert store.batches == [keys, keys]  # one read per flow: every call started together
    assert xs == CALLS
    assert {t.state for t in missed} == {State.COMPLETED}
    assert {t.state for t in hits} == {State.CACHED}
    assert [t.cached_from for t in hits] == [f"{t.run_id}.{t.seq}" for t in missed]


async def test_a_store_that_cannot_read_many_keys_reads_each_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Should the memory store read many keys at once, this one does not.
    monkeypatch.delattr(flowcore.MemoryStore, "get_cache_many", raising=False)
    store = ServerStore()
    async with flowcore.Engine(store) as engine:
        assert await squares([1, 2, 3]) == [1, 4, 9]
        assert await squares([1, 2, 3]) == [1, 4, 9]
        hits = await task_runs(engine)
    assert CALLS == [1, 2, 3]
    assert len(store.single) == 6
    assert {t.state for t in hits} == {State.CACHED}


async def test_equal_calls_waiting_for_the_store_compute_once() -> None:
    store = BatchingServerStore()
    async with flowcore.Engine(store) as engine:
        assert await squares([7] * 10 + [8, 9]) == [49] * 10 + [64, 81]
        runs = await task_runs(engine)
    assert CALLS == [7, 8, 9]
    # The first call of 7 claimed its key before it waited for the store; the other
    # nine found the claim and waited for it, instead of asking the store too.
    assert [sorted(batch) for batch in store.batches] == [sorted({t.cache_key for t in runs})]
    computed, cached = State.COMPLETED, State.CACHED
    assert [t.state for t in runs] == [computed] + [cached] * 9 + [computed] * 2
    assert {t.cached_from for t in runs[1:10]} == {f"{runs[0].run_id}.{runs[0].seq}"}


async def test_a_failed_batch_read_fails_its_lookups_and_the_next_reads_again() -> None:
    store = BatchingServerStore()
    store.fail_next = StoreError("the database server went away")

    @flowcore.flow
    async def f() -> list[Any]:
        return list(await asyncio.gather(*(square(x) for x in range(4)), return_exceptions=True))

    async with flowcore.Engine(store) as engine:
        with anyio.fail_after(10):
            outcome = await f()
        failed = await task_runs(engine)
        assert all(isinstance(o, StoreError) for o in outcome), outcome
        assert [t.state for t in failed] == [State.FAILED] * 4
        assert {t.error_type for t in failed} == {"flowcore.StoreError"}
        with anyio.fail_after(10):
            assert await squares([0, 1, 2, 3]) == [0, 1, 4, 9]
    assert CALLS == [0, 1, 2, 3]
    assert len(store.batches) == 2


def _entry(key: str) -> CacheEntry:
    return CacheEntry(key=key, task_name="t", created=1.0, result=b"v")


async def test_a_batch_whose_reader_is_cancelled_is_read_by_the_others() -> None:
    reading = anyio.Event()
    batches: list[list[str]] = []

    async def read_many(keys: Sequence[str]) -> Mapping[str, CacheEntry]:
        batches.append(list(keys))
        if len(batches) == 1:
            reading.set()
            await anyio.sleep_forever()  # its reader is cancelled while it waits
        return {key: _entry(key) for key in keys}

    reads = CacheReads(read_many)
    got: dict[str, CacheEntry | None] = {}
    reader = anyio.CancelScope()

    async def first() -> None:
        with reader:
            await reads.get("a")

    async def second() -> None:
        got["b"] = await reads.get("b")

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            tg.start_soon(second)
            await reading.wait()
            reader.cancel()
    assert batches == [["a", "b"], ["b"]]
    assert got == {"b": _entry("b")}


async def test_a_reader_that_fails_fails_every_lookup_of_its_batch() -> None:
    async def read_many(keys: Sequence[str]) -> Mapping[str, CacheEntry]:
        await anyio.lowlevel.checkpoint()
        raise StoreError("the database server went away")

    reads = CacheReads(read_many)
    errors: list[BaseException] = []

    async def lookup(key: str) -> None:
        try:
            await reads.get(key)
        except StoreError as exc:
            errors.append(exc)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for key in "abc":
                tg.start_soon(lookup, key)
    assert len(errors) == 3


# -- hits are recorded as they always were --------------------------------------------------


async def test_a_hit_is_recorded_as_before() -> None:
    async with flowcore.Engine() as engine:
        assert await squares([3]) == [9]
        (computed,) = await task_runs(engine)
        assert await squares([3]) == [9]
        (hit,) = await task_runs(engine)
    assert CALLS == [3]
    assert hit.state is State.CACHED
    assert hit.cache_key == computed.cache_key is not None
    assert hit.cached_from == f"{computed.run_id}.{computed.seq}"
    assert hit.result == computed.result is not None and hit.result_ref is None
    assert hit.attempts == 1 and hit.started is not None and hit.ended is not None
    assert [entry[0] for entry in hit.history] == ["Running", "Cached"]
    label = task_run_label(computed.run_id, computed.seq)
    assert hit.history[-1][2] == f"cache hit: value computed by {label}"


async def test_a_hit_on_a_result_in_the_blob_store_reads_it() -> None:
    @flowcore.flow
    async def f() -> str:
        return await big(40_000)

    async with flowcore.Engine() as engine:
        assert await f() == "x" * 40_000
        (computed,) = await task_runs(engine)
    async with flowcore.Engine() as engine:  # a new engine: the file is written, not pending
        assert await f() == "x" * 40_000
        (hit,) = await task_runs(engine)
    assert CALLS == [40_000]
    assert computed.result_ref is not None and computed.result is None
    assert hit.state is State.CACHED and hit.result_ref == computed.result_ref


# -- keys ----------------------------------------------------------------------------------


def _pinned(name: str) -> KeyMaker:
    """The key maker of a task ``name`` of module ``pinned``, keyed on its inputs alone."""

    def one(x: Any) -> None: ...

    def two(a: Any, b: Any) -> None: ...

    fn = one if name == "one" else two
    fn.__module__, fn.__qualname__ = "pinned", name
    return KeyMaker(fn, name, CachePolicy.from_inputs())


def _one(x: Any) -> None: ...


def _two(a: Any, b: Any) -> None: ...


@pytest.mark.parametrize(
    ("maker", "args", "key"),
    [
        ("one", (5,), "b2a43ccef5c6de848e985f12a1fc928ea038b9b1ef1cab57596c703df0865950"),
        ("one", ("text",), "560941cf8a5e197e35ca1472db6b36e9bf9cecd94ea3d121a02778eb46abfbcf"),
        ("one", (None,), "bc2af2cf0d2ab30dd7eb90f91a9e85ff06779af093cb969a4324a0b935121199"),
        ("one", (1.5,), "b6b299e551bb101c5c12bcbc35065c4a2f0645b2110aa07bd827166307955edc"),
        (
            "one",
            ({"b": 1, "a": [1, 2]},),
            "1710adfb5b1330539c89bf3723975b4964127ba0d51c3f5eef2a0f7d6645b004",
        ),
        ("two", (1, "x"), "2aa13b9fddff814c4090ccee867ed391b82bbc3a942134f117674818496b9ce2"),
        (
            "two",
            ({"z": {3, 1}}, [True, b"\x00"]),
            "fcd2ccdfaa563b611e25d361880c4bd23d606b897c1becef63a246b4937186b8",
        ),
    ],
)
def test_keys_are_the_keys_earlier_versions_made(
    maker: str, args: tuple[Any, ...], key: str
) -> None:
    """Entries stored by an earlier flowcore still hit: these keys were made by the
    version before the positional fast path."""
    assert _pinned(maker).key(args, {}) == key


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=5), inner, max_size=4)
        | st.frozensets(st.integers(), max_size=4)
    ),
    max_leaves=12,
)


def _key_or_error(keys: KeyMaker, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    try:
        return keys.key(args, kwargs)
    except CacheKeyError as exc:
        return f"CacheKeyError: {exc}"


@settings(max_examples=300, deadline=None)
@given(a=_values, b=_values)
def test_a_positional_call_has_the_key_of_the_same_call_by_keyword(a: Any, b: Any) -> None:
    one = KeyMaker(_one, "one", CachePolicy())
    two = KeyMaker(_two, "two", CachePolicy())
    assert _key_or_error(one, (a,), {}) == _key_or_error(one, (), {"x": a})
    assert _key_or_error(two, (a, b), {}) == _key_or_error(two, (), {"b": b, "a": a})
    assert _key_or_error(two, (a, b), {}) == _key_or_error(two, (a,), {"b": b})


def test_a_value_without_a_stable_encoding_is_still_refused_on_the_positional_path() -> None:
    one = KeyMaker(_one, "one", CachePolicy())
    with pytest.raises(CacheKeyError, match="argument 'x'"):
        one.key((object(),), {})
    with pytest.raises(CacheKeyError, match="argument 'x'"):
        one.key((2**70,), {})
    assert one.key((math.inf,), {}) == one.key((), {"x": math.inf})
    # Text that is not UTF-8 (a file name from os.fsdecode) is a key of its own.
    assert one.key(("caf\udce9",), {}) == one.key((), {"x": "caf\udce9"}) != one.key(("café",), {})
