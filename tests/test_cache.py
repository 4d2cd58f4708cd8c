"""Caching: keys, policies, hits and misses, in-flight dedupe, and refusing bad entries."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import importlib
import inspect
import logging
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

import flowcore
import flowcore.encoding
from flowcore import CacheKeyError, CachePolicy, ConfigurationError, State
from flowcore.cache import KeyMaker
from flowcore.records import CacheEntry, WriteBatch
from flowcore.serializers import MAGIC, encode_result
from flowcore.store.files import FileBlobs

pytestmark = pytest.mark.anyio

CALLS: list[Any] = []


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    CALLS.clear()


async def task_runs(engine: flowcore.Engine, run_id: str | None = None) -> list[Any]:
    await engine.recorder.flush()
    if run_id is None:
        assert engine.last_run is not None
        run_id = engine.last_run.id
    return await engine.store.list_task_runs(run_id)


def last_run_id(engine: flowcore.Engine) -> str:
    assert engine.last_run is not None
    return engine.last_run.id


# -- tasks ---------------------------------------------------------------------------------


@flowcore.task(cache=True)
async def stamp(x: int) -> list[int]:
    """Returns ``[x, how many times it has run]``: a recompute never returns the same value."""
    CALLS.append(("stamp", x))
    return [x, len(CALLS)]


@flowcore.flow
async def stamp_flow(x: int) -> list[int]:
    return await stamp(x)


@flowcore.task(cache=True)
async def payload(n: int) -> list[int]:
    CALLS.append(("payload", n))
    return list(range(n))


@flowcore.flow
async def payload_flow(n: int) -> list[int]:
    return await payload(n)


@flowcore.task(cache=True)
async def big(n: int) -> str:
    CALLS.append(("big", n))
    return "x" * n


@flowcore.flow
async def big_flow(n: int) -> str:
    return await big(n)


class Opaque:
    """Something msgspec cannot encode."""

    def __init__(self, label: str = "o") -> None:
        self.label = label


class Point:
    """A plain class: msgpack cannot store it, pickle can."""

    def __init__(self, x: int, z: complex) -> None:
        self.x = x
        self.z = z

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.z) == (other.x, other.z)

    def __hash__(self) -> int:
        return hash((self.x, self.z))


def _plant_marker(path: str, padding: str = "") -> list[int]:
    Path(path).write_text("this ran while loading a pickle")
    return [1, 2, 3]


class Planted:
    """Loading its pickle calls ``_plant_marker``: a visible side effect."""

    def __init__(self, path: str, padding: int = 0) -> None:
        self.path = path
        self.padding = padding

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (_plant_marker, (self.path, "x" * self.padding))


@dataclasses.dataclass
class Item:
    name: str
    when: datetime.datetime
    tags: list[str]


class Reading(msgspec.Struct):
    sensor: uuid.UUID
    values: list[float]
    raw: bytes


WHEN = datetime.datetime(2024, 5, 17, 12, 30, 15, 123456, tzinfo=datetime.UTC)
SENSOR = uuid.UUID("6f1c1e0a-3d2b-4c5e-9f8a-1b2c3d4e5f60")


@flowcore.task(cache=True)
async def make_item(i: int) -> Item:
    CALLS.append(("item", i))
    return Item(f"item{i}", WHEN, ["a", "b"])


@flowcore.task(cache=True)
async def make_reading(i: int) -> Reading:
    CALLS.append(("reading", i))
    return Reading(SENSOR, [1.5, -2.25], b"\x00\xffraw")


@flowcore.task(cache=True)
async def make_aware_datetime(i: int) -> datetime.datetime:
    CALLS.append(("aware", i))
    return WHEN


@flowcore.task(cache=True)
async def make_naive_datetime(i: int) -> datetime.datetime:
    CALLS.append(("naive", i))
    return datetime.datetime(2023, 1, 2, 3, 4, 5)


@flowcore.task(cache=True)
async def make_uuid(i: int) -> uuid.UUID:
    CALLS.append(("uuid", i))
    return SENSOR


@flowcore.task(cache=True)
async def make_bytes(i: int) -> bytes:
    CALLS.append(("bytes", i))
    return b"\x00\x01\x02binary\xff"


@flowcore.task(cache=True)
async def make_items(i: int) -> list[Item]:
    CALLS.append(("items", i))
    return [Item("one", WHEN, []), Item("two", WHEN, ["t"])]


@flowcore.task(cache=True)
async def make_reading_map(i: int) -> dict[str, Reading]:
    CALLS.append(("reading_map", i))
    return {"r": Reading(SENSOR, [0.0], b"")}


TYPED: dict[str, tuple[flowcore.Task[Any, Any], Any]] = {
    "dataclass": (make_item, Item("item1", WHEN, ["a", "b"])),
    "struct": (make_reading, Reading(SENSOR, [1.5, -2.25], b"\x00\xffraw")),
    "aware datetime": (make_aware_datetime, WHEN),
    "naive datetime": (make_naive_datetime, datetime.datetime(2023, 1, 2, 3, 4, 5)),
    "uuid": (make_uuid, SENSOR),
    "bytes": (make_bytes, b"\x00\x01\x02binary\xff"),
    "list of dataclasses": (make_items, [Item("one", WHEN, []), Item("two", WHEN, ["t"])]),
    "dict of structs": (make_reading_map, {"r": Reading(SENSOR, [0.0], b"")}),
}


@flowcore.flow
async def typed_flow(kind: str) -> Any:
    return await TYPED[kind][0](1)


# -- hits ----------------------------------------------------------------------------------


async def test_hit_returns_stored_value_without_calling_and_names_its_source() -> None:
    async with flowcore.Engine() as engine:
        assert await stamp_flow(3) == [3, 1]
        first = last_run_id(engine)
        assert await stamp_flow(3) == [3, 1]  # a recompute would give [3, 2]
        second = last_run_id(engine)
        [producer] = await task_runs(engine, first)
        [hit] = await task_runs(engine, second)
        entries = await engine.store.list_cache()
    assert CALLS == [("stamp", 3)]
    assert producer.state is State.COMPLETED and producer.cache_key is not None
    assert producer.cached_from is None
    assert hit.state is State.CACHED
    assert hit.cached_from == f"{first}.{producer.seq}"
    assert hit.cache_key == producer.cache_key
    assert hit.result == producer.result  # the hit's record keeps the value too
    assert [h[0] for h in hit.history] == ["Running", "Cached"]
    assert "cache hit" in hit.history[-1][2] and first[:8] in hit.history[-1][2]
    [entry] = entries
    assert entry.key == producer.cache_key and entry.task_name == "stamp"
    assert (entry.run_id, entry.seq) == (first, producer.seq)
    assert entry.expires is None


async def test_hit_across_two_engines_sharing_a_home() -> None:
    async with flowcore.Engine() as engine:
        assert await stamp_flow(5) == [5, 1]
        first = last_run_id(engine)
    async with flowcore.Engine() as engine:
        assert await stamp_flow(5) == [5, 1]
        [hit] = await task_runs(engine)
    assert CALLS == [("stamp", 5)]
    assert hit.state is State.CACHED and hit.cached_from == f"{first}.0"


async def test_hit_within_one_run_and_changed_inputs_miss() -> None:
    @flowcore.flow
    async def f() -> list[list[int]]:
        return [await stamp(1), await stamp(2), await stamp(1), await stamp(2), await stamp(3)]

    async with flowcore.Engine() as engine:
        assert await f() == [[1, 1], [2, 2], [1, 1], [2, 2], [3, 3]]
        runs = await task_runs(engine)
    assert CALLS == [("stamp", 1), ("stamp", 2), ("stamp", 3)]
    assert [t.state for t in runs] == [
        State.COMPLETED,
        State.COMPLETED,
        State.CACHED,
        State.CACHED,
        State.COMPLETED,
    ]
    run_id = runs[0].run_id
    assert [t.cached_from for t in runs] == [None, None, f"{run_id}.0", f"{run_id}.1", None]
    assert len({t.cache_key for t in runs}) == 3


async def test_keyword_and_positional_calls_share_a_key() -> None:
    @flowcore.task(cache=True)
    async def add(a: int, b: int = 10) -> int:
        CALLS.append((a, b))
        return a + b

    @flowcore.flow
    async def f() -> list[int]:
        return [await add(1), await add(1, 10), await add(a=1, b=10), await add(b=10, a=1)]

    async with flowcore.Engine() as engine:
        assert await f() == [11] * 4
        runs = await task_runs(engine)
    assert CALLS == [(1, 10)]
    assert [t.state for t in runs] == [State.COMPLETED] + [State.CACHED] * 3


CROSS_PROCESS = textwrap.dedent(
    """
    import sys

    import anyio

    import flowcore

    TAGS = frozenset(f"tag{i}" for i in range(20))


    @flowcore.task(cache=True)
    async def expensive(x: int, tags: frozenset[str], options: dict) -> dict:
        with open(sys.argv[1], "a") as log:
            log.write(f"{x}\\n")
        return {"x": x, "padding": "p" * 20_000}  # large: kept in a result file


    @flowcore.flow
    async def job(x: int) -> int:
        value = await expensive(x, TAGS, {"b": 2, "a": [1, {"z": None, "y": 1.5}]})
        return value["x"] + len(value["padding"])


    async def main() -> None:
        async with flowcore.Engine() as engine:
            result = await job(int(sys.argv[2]))
            key = expensive.keys.key((7, TAGS, {"a": [1, {"y": 1.5, "z": None}], "b": 2}), {})
            print(engine.last_run.id, result, key)


    anyio.run(main)
    """
)


def _run_child(script: Path, *args: str, hashseed: str) -> list[str]:
    env = {**os.environ, "PYTHONHASHSEED": hashseed}
    done = subprocess.run(
        [sys.executable, str(script), *args],
        env=env,
        cwd=script.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.slow
async def test_hit_across_processes_sharing_a_home(tmp_path: Path) -> None:
    script = tmp_path / "cache_child.py"
    script.write_text(CROSS_PROCESS)
    log = tmp_path / "calls.log"
    run_a, result_a, key_a = _run_child(script, str(log), "7", hashseed="1")
    run_b, result_b, key_b = _run_child(script, str(log), "7", hashseed="2")
    assert result_a == result_b == str(7 + 20_000)
    assert key_a == key_b  # different hash seeds, same key
    assert log.read_text() == "7\n"  # process B did not call the function
    async with flowcore.Engine() as engine:
        [computed] = await engine.store.list_task_runs(run_a)
        [hit] = await engine.store.list_task_runs(run_b)
    assert computed.state is State.COMPLETED and computed.result_ref is not None
    assert hit.state is State.CACHED
    assert hit.cached_from == f"{run_a}.{computed.seq}"
    assert hit.cache_key == computed.cache_key == key_a
    assert hit.result_ref == computed.result_ref


KEY_MODULE = textwrap.dedent(
    """
    import dataclasses
    import datetime
    import uuid

    import flowcore


    @dataclasses.dataclass
    class Options:
        depth: int
        labels: frozenset


    @flowcore.task(cache=True)
    def keyed(text, number, blob=b"", *, options=None, extra=None):
        return None


    def sample():
        args = ("text", 1.5, b"\\x00\\x01")
        kwargs = {
            "options": Options(3, frozenset({"w", "x", "y", "z", "alpha", "beta"})),
            "extra": {
                "when": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
                "id": uuid.UUID(int=7),
                "set": {"q", "r", "s", "t", "u"},
                "nested": {"z": 1, "a": [1, 2, {"m": None, "b": True}]},
            },
        }
        return args, kwargs
    """
)


@pytest.mark.slow
def test_keys_are_identical_across_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "flowcore_test_keystability_mod"
    (tmp_path / f"{name}.py").write_text(KEY_MODULE)
    code = f"import {name} as m; args, kwargs = m.sample(); print(m.keyed.keys.key(args, kwargs))"
    child_keys = set()
    for seed in ("0", "4242"):
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        child_keys.add(done.stdout.strip())
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        mod = importlib.import_module(name)
        args, kwargs = mod.sample()
        here = mod.keyed.keys.key(args, kwargs)
        # The same call built differently: dict insertion order, defaults spelled out.
        extra = dict(reversed(list(kwargs["extra"].items())))
        extra["nested"] = {"a": [1, 2, {"b": True, "m": None}], "z": 1}
        same = mod.keyed.keys.key((*args,), {"extra": extra, "options": kwargs["options"]})
        other = mod.keyed.keys.key(("text", 1.5, b"\x00\x02"), kwargs)
    finally:
        sys.modules.pop(name, None)
    assert len(here) == 64 and all(c in "0123456789abcdef" for c in here)
    assert child_keys == {here}
    assert same == here
    assert other != here


# -- identity ------------------------------------------------------------------------------

TWIN = textwrap.dedent(
    """
    import flowcore

    CALLS = []


    @flowcore.task(cache=True)
    async def twin(x: int) -> int:
        CALLS.append(x)
        return x * 2
    """
)


async def test_identical_source_in_two_modules_does_not_share_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = ["flowcore_test_twin_one", "flowcore_test_twin_two"]
    for name in names:
        (tmp_path / f"{name}.py").write_text(TWIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        one, two = (importlib.import_module(n) for n in names)
        assert one.twin.name == two.twin.name == "twin"
        assert one.twin.keys.key((4,), {}) != two.twin.keys.key((4,), {})

        @flowcore.flow
        async def f() -> list[int]:
            return [await one.twin(4), await two.twin(4), await one.twin(4), await two.twin(4)]

        async with flowcore.Engine() as engine:
            assert await f() == [8, 8, 8, 8]
            runs = await task_runs(engine)
        assert one.CALLS == [4] and two.CALLS == [4]
        assert [t.state for t in runs] == [
            State.COMPLETED,
            State.COMPLETED,
            State.CACHED,
            State.CACHED,
        ]
        run_id = runs[0].run_id
        assert [t.cached_from for t in runs[2:]] == [f"{run_id}.0", f"{run_id}.1"]
    finally:
        for name in names:
            sys.modules.pop(name, None)


@flowcore.task(cache=True)
async def twin_left(x: int) -> int:
    CALLS.append(("twin", x))
    return x


@flowcore.task(cache=True)
async def twin_right(x: int) -> int:
    CALLS.append(("twin", x))
    return x


async def test_tasks_with_the_same_body_but_different_names_do_not_share_entries() -> None:
    @flowcore.flow
    async def f() -> list[int]:
        return [await twin_left(1), await twin_right(1)]

    async with flowcore.Engine() as engine:
        assert await f() == [1, 1]
        runs = await task_runs(engine)
    assert CALLS == [("twin", 1), ("twin", 1)]
    assert [t.state for t in runs] == [State.COMPLETED, State.COMPLETED]


async def test_one_function_under_two_task_names_does_not_share_entries() -> None:
    # README: "two tasks never share entries even with identical source".
    async def shared(x: int) -> int:
        CALLS.append(x)
        return x

    first = flowcore.task(cache=True, name="first")(shared)
    second = flowcore.task(cache=True, name="second")(shared)

    @flowcore.flow
    async def f() -> list[int]:
        return [await first(1), await second(1)]

    async with flowcore.Engine() as engine:
        assert await f() == [1, 1]
        runs = await task_runs(engine)
    assert [(t.name, t.state) for t in runs] == [
        ("first", State.COMPLETED),
        ("second", State.COMPLETED),
    ], "a task named 'second' was served the entry of the task named 'first'"


SOURCE_V1 = textwrap.dedent(
    """
    import flowcore

    CALLS = []


    @flowcore.task(cache=True)
    async def edited(x: int) -> int:
        CALLS.append(x)
        return x + 1
    """
)


async def test_editing_the_source_invalidates_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "flowcore_test_edited_mod"
    path = tmp_path / f"{name}.py"
    path.write_text(SOURCE_V1)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    try:
        mod = importlib.import_module(name)

        @flowcore.flow
        async def f() -> int:
            result: int = await mod.edited(1)  # mod is imported by name: its types are unknown
            return result

        async with flowcore.Engine() as engine:
            assert await f() == 2
            assert await f() == 2
            path.write_text(SOURCE_V1.replace("x + 1", "x + 100"))
            mod = importlib.reload(mod)
            assert await f() == 101
            new = await task_runs(engine)
        assert mod.CALLS == [1]  # the reloaded module's list: it ran once after the edit
        assert [t.state for t in new] == [State.COMPLETED]
    finally:
        sys.modules.pop(name, None)


# -- policies ------------------------------------------------------------------------------


class Client:
    def __init__(self, name: str) -> None:
        self.name = name


@flowcore.task(cache=CachePolicy.from_inputs(exclude=["client"]) + CachePolicy.from_source())
async def fetch(client: Client, url: str) -> list[str]:
    CALLS.append(("fetch", client.name, url))
    return [url, client.name]


async def test_excluded_argument_is_ignored_by_the_key() -> None:
    @flowcore.flow
    async def f() -> list[list[str]]:
        return [
            await fetch(Client("a"), "/x"),
            await fetch(Client("b"), "/x"),  # other client, same url: hit
            await fetch(Client("a"), "/y"),  # other url: miss
        ]

    async with flowcore.Engine() as engine:
        assert await f() == [["/x", "a"], ["/x", "a"], ["/y", "a"]]
        runs = await task_runs(engine)
    assert CALLS == [("fetch", "a", "/x"), ("fetch", "a", "/y")]
    assert [t.state for t in runs] == [State.COMPLETED, State.CACHED, State.COMPLETED]


async def test_source_only_policy_ignores_inputs() -> None:
    @flowcore.task(cache=CachePolicy.from_source())
    async def constant(x: int) -> int:
        CALLS.append(x)
        return x

    @flowcore.flow
    async def f() -> list[int]:
        return [await constant(1), await constant(2), await constant(x=3)]

    async with flowcore.Engine() as engine:
        assert await f() == [1, 1, 1]
        runs = await task_runs(engine)
    assert CALLS == [1]
    assert [t.state for t in runs] == [State.COMPLETED, State.CACHED, State.CACHED]


async def test_key_function_policy() -> None:
    seen: list[dict[str, Any]] = []

    def by_last_digit(args: Any) -> str:
        seen.append(dict(args))
        return str(args["x"] % 10)

    @flowcore.task(cache=CachePolicy.from_key(by_last_digit))
    async def digit(x: int, scale: int = 1) -> int:
        CALLS.append(x)
        return x * scale

    @flowcore.flow
    async def f() -> list[int]:
        return [await digit(1), await digit(11), await digit(2, scale=5), await digit(21)]

    async with flowcore.Engine() as engine:
        assert await f() == [1, 1, 10, 1]
        runs = await task_runs(engine)
    assert CALLS == [1, 2]
    assert [t.state for t in runs] == [
        State.COMPLETED,
        State.CACHED,
        State.COMPLETED,
        State.CACHED,
    ]
    # The key function sees the bound arguments, defaults applied.
    assert seen[0] == {"x": 1, "scale": 1} and seen[2] == {"x": 2, "scale": 5}


async def test_key_function_must_return_str() -> None:
    @flowcore.task(cache=CachePolicy.from_key(lambda args: args["x"]))
    async def bad_key(x: int) -> int:
        CALLS.append(x)
        return x

    @flowcore.flow
    async def f() -> int:
        return await bad_key(3)

    async with flowcore.Engine() as engine:
        with pytest.raises(CacheKeyError, match="must return a str"):
            await f()
        [tr] = await task_runs(engine)
    assert CALLS == []
    assert tr.state is State.FAILED


def test_policies_compose_with_plus() -> None:
    def fn(args: Any) -> str:
        return "k"

    combined = CachePolicy.from_inputs(exclude=["client"]) + CachePolicy.from_source()
    assert combined.inputs and combined.source
    assert combined.exclude == frozenset({"client"}) and combined.key is None
    # An argument stays out only if every input part leaves it out.
    both = CachePolicy.from_inputs(exclude=["a", "b"]) + CachePolicy.from_inputs(exclude=["b"])
    assert both.exclude == frozenset({"b"})
    keyed = CachePolicy.from_key(fn) + CachePolicy.from_source()
    assert keyed.key is fn and keyed.source and not keyed.inputs
    ttl = CachePolicy(ttl=10) + CachePolicy.from_source().with_ttl(5)
    assert ttl.ttl == 5
    assert (CachePolicy() + CachePolicy(refresh=True)).refresh
    assert CachePolicy.from_source() + CachePolicy.from_source() == CachePolicy.from_source()
    with pytest.raises(ConfigurationError, match="different `key` functions"):
        CachePolicy.from_key(fn) + CachePolicy.from_key(lambda a: "other")


async def test_composed_policy_keys_on_every_part() -> None:
    @flowcore.task(cache=CachePolicy.from_key(lambda a: a["region"]) + CachePolicy.from_inputs())
    async def regional(region: str, day: int) -> str:
        CALLS.append((region, day))
        return f"{region}{day}"

    @flowcore.flow
    async def f() -> list[str]:
        return [
            await regional("eu", 1),
            await regional("eu", 2),
            await regional("us", 1),
            await regional("eu", 1),
        ]

    async with flowcore.Engine():
        assert await f() == ["eu1", "eu2", "us1", "eu1"]
    assert CALLS == [("eu", 1), ("eu", 2), ("us", 1)]


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"cache": "yes"}, "`cache` must be"),
        ({"cache": 1.5}, "`cache` must be"),
        ({"cache": True, "cache_ttl": -1}, "ttl"),
        ({"cache": True, "cache_ttl": 0}, "ttl"),
        ({"cache": True, "cache_ttl": float("inf")}, "ttl"),
        ({"cache": True, "cache_ttl": "60"}, "ttl"),
        ({"cache_ttl": 60}, "cache_ttl"),
        ({"cache": False, "cache_ttl": 60}, "cache_ttl"),
        ({"serializer": "json"}, "serializer"),
        ({"serializer": None}, "serializer"),
        ({"persist_result": "x"}, "persist_result"),
        ({"persist_result": 1.0}, "persist_result"),
        ({"persist_result": 0}, "persist_result"),
        ({"cache": True, "persist_result": False}, "persist_result=False"),
        ({"cache": CachePolicy.from_inputs(exclude=["nope"])}, "nope"),
        ({"cache": CachePolicy(exclude=frozenset({"a", "missing"}))}, "missing"),
    ],
    ids=lambda v: repr(v)[:40] if isinstance(v, dict) else None,
)
def test_invalid_options_are_refused_at_decoration(options: dict[str, Any], fragment: str) -> None:
    async def fn(a: int, client: object = None) -> int:
        return a

    # cache_ttl still works for one release, saying its new spelling.
    deprecated = (
        pytest.warns(flowcore.FlowcoreDeprecationWarning, match=r"CachePolicy\(ttl=")
        if "cache_ttl" in options and options["cache_ttl"] is not None
        else contextlib.nullcontext()
    )
    with deprecated, pytest.raises(ConfigurationError, match=r"invalid|exclude") as info:
        flowcore.task(**options)(fn)
    assert fragment in str(info.value)


def test_invalid_options_are_refused_by_with_options() -> None:
    with pytest.raises(ConfigurationError, match="serializer"):
        stamp.with_options(serializer="json")
    with pytest.raises(ConfigurationError, match="persist_result"):
        stamp.with_options(persist_result=False)
    with pytest.raises(ConfigurationError, match="ttl"):
        stamp.with_options(cache=flowcore.CachePolicy(ttl=-5))


@pytest.mark.parametrize(
    "build",
    [
        lambda: CachePolicy(exclude="client"),  # type: ignore[arg-type]
        lambda: CachePolicy(key="not callable"),  # type: ignore[arg-type]
        lambda: CachePolicy(ttl=-1),
        lambda: CachePolicy(ttl=float("nan")),
        lambda: CachePolicy(ttl=True),
        lambda: CachePolicy(inputs=False, source=False),
    ],
)
def test_invalid_policies_are_refused(build: Any) -> None:
    with pytest.raises(ConfigurationError, match="invalid cache policy"):
        build()


# -- expiry, refresh, switching off --------------------------------------------------------


async def test_ttl_expiry() -> None:
    short = stamp.with_options(cache=flowcore.CachePolicy(ttl=0.05))

    @flowcore.flow
    async def f() -> list[int]:
        return await short(9)

    async with flowcore.Engine() as engine:
        assert await f() == [9, 1]
        [entry] = await engine.store.list_cache()
        assert entry.expires is not None
        assert entry.expires - entry.created == pytest.approx(0.05)
        await anyio.sleep(0.1)
        assert await f() == [9, 2]  # expired: computed again
        missed = await task_runs(engine)
        [entry] = await engine.store.list_cache()  # replaced, with a new expiry
        assert entry.run_id == missed[0].run_id
    assert missed[0].state is State.COMPLETED


async def test_entries_within_ttl_hit() -> None:
    lasting = stamp.with_options(cache=flowcore.CachePolicy(ttl=60))

    @flowcore.flow
    async def f() -> list[int]:
        return await lasting(9)

    async with flowcore.Engine() as engine:
        assert await f() == [9, 1]
        assert await f() == [9, 1]
        [tr] = await task_runs(engine)
    assert tr.state is State.CACHED


async def test_refresh_policy_recomputes_and_overwrites() -> None:
    refreshing = stamp.with_options(cache=CachePolicy(refresh=True))

    @flowcore.flow
    async def normal() -> list[int]:
        return await stamp(4)

    @flowcore.flow
    async def refresh() -> list[int]:
        return await refreshing(4)

    async with flowcore.Engine() as engine:
        assert await normal() == [4, 1]
        assert await refresh() == [4, 2]
        [refreshed] = await task_runs(engine)
        assert await refresh() == [4, 3]  # refresh always recomputes
        assert await normal() == [4, 3]  # and the next normal call hits the newest value
        [hit] = await task_runs(engine)
        entries = await engine.store.list_cache()
    assert refreshed.state is State.COMPLETED
    assert hit.state is State.CACHED
    [entry] = entries
    assert hit.cached_from == f"{entry.run_id}.{entry.seq}"


async def test_engine_refresh_cache_recomputes_and_overwrites() -> None:
    async with flowcore.Engine():
        assert await stamp_flow(6) == [6, 1]
    async with flowcore.Engine(refresh_cache=True) as engine:
        assert await stamp_flow(6) == [6, 2]
        assert await stamp_flow(6) == [6, 3]
        [tr] = await task_runs(engine)
        refreshed_run = last_run_id(engine)
    assert tr.state is State.COMPLETED
    async with flowcore.Engine() as engine:
        assert await stamp_flow(6) == [6, 3]
        [hit] = await task_runs(engine)
    assert hit.state is State.CACHED and hit.cached_from == f"{refreshed_run}.0"


async def test_engine_cache_false_disables_caching() -> None:
    async with flowcore.Engine():
        assert await stamp_flow(2) == [2, 1]  # an entry exists...
    async with flowcore.Engine(cache=False) as engine:
        assert await stamp_flow(2) == [2, 2]  # ...but is not used
        assert await stamp_flow(2) == [2, 3]
        [tr] = await task_runs(engine)
    assert tr.state is State.COMPLETED and tr.cached_from is None


# -- in-flight dedupe ----------------------------------------------------------------------


@flowcore.task(cache=True)
async def slow_square(x: int) -> int:
    CALLS.append(x)
    await anyio.sleep(0.05)
    return x * x


async def test_concurrent_equal_calls_compute_once() -> None:
    @flowcore.flow
    async def f() -> list[int]:
        return list(await asyncio.gather(*(slow_square(4) for _ in range(10))))

    async with flowcore.Engine() as engine:
        assert await f() == [16] * 10
        runs = await task_runs(engine)
    assert CALLS == [4]
    completed = [t for t in runs if t.state is State.COMPLETED]
    cached = [t for t in runs if t.state is State.CACHED]
    assert len(completed) == 1 and len(cached) == 9
    assert {t.cached_from for t in cached} == {f"{completed[0].run_id}.{completed[0].seq}"}


async def test_concurrent_submitted_calls_compute_once_per_key() -> None:
    @flowcore.flow
    async def f() -> list[int]:
        return await slow_square.map([1, 2, 3, 1, 2, 3, 1, 2, 3])

    async with flowcore.Engine() as engine:
        assert await f() == [1, 4, 9] * 3
        runs = await task_runs(engine)
    assert sorted(CALLS) == [1, 2, 3]
    assert [t.state for t in runs].count(State.COMPLETED) == 3


async def test_concurrent_flows_in_one_engine_compute_once() -> None:
    @flowcore.flow
    async def f() -> int:
        return await slow_square(7)

    async with flowcore.Engine():
        results = await asyncio.gather(*(f() for _ in range(5)))
    assert results == [49] * 5
    assert CALLS == [7]


async def test_concurrent_equal_calls_with_a_large_result_compute_once(
    flowcore_home: Path,
) -> None:
    @flowcore.task(cache=True)
    async def slow_big(n: int) -> str:
        CALLS.append(n)
        await anyio.sleep(0.05)
        return "y" * n

    @flowcore.flow
    async def f() -> list[str]:
        return list(await asyncio.gather(*(slow_big(30_000) for _ in range(5))))

    async with flowcore.Engine() as engine:
        assert await f() == ["y" * 30_000] * 5
        runs = await task_runs(engine)
    assert CALLS == [30_000]
    assert [t.state for t in runs].count(State.CACHED) == 4
    refs = {t.result_ref for t in runs}
    assert len(refs) == 1 and None not in refs
    assert len(list((flowcore_home / "results").rglob("*"))) == 2  # one folder, one file


async def test_sync_task_hits() -> None:
    @flowcore.task(cache=True)
    def blocking(x: int) -> int:
        CALLS.append(x)
        return -x

    @flowcore.flow
    async def f() -> list[int]:
        return [await blocking(1), await blocking(1)]

    async with flowcore.Engine() as engine:
        assert await f() == [-1, -1]
        runs = await task_runs(engine)
    assert CALLS == [1]
    assert [t.state for t in runs] == [State.COMPLETED, State.CACHED]


class SlowCacheWrites(flowcore.MemoryStore):
    """A store whose writes of cache entries take a while, as a remote database's may."""

    def __init__(self) -> None:
        super().__init__()
        self.writing = anyio.Event()

    async def write(self, batch: WriteBatch) -> None:
        if batch.cache_entries:
            self.writing.set()
            await anyio.sleep(0.3)
        await super().write(batch)


async def test_an_entry_is_seen_while_it_is_being_written() -> None:
    store = SlowCacheWrites()

    @flowcore.flow
    async def f() -> list[list[int]]:
        first = await stamp(8)
        with anyio.fail_after(5):
            await store.writing.wait()  # the recorder is now writing the new entry
        return [first, await stamp(8)]

    async with flowcore.Engine(store, flush_interval=0.005):
        result = await f()
    assert CALLS == [("stamp", 8)], "the entry was invisible while it was being written"
    assert result == [[8, 1], [8, 1]]


async def test_a_large_value_is_seen_while_its_file_is_being_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writing = threading.Event()
    real_write = FileBlobs.write

    def slow_write(self: FileBlobs, ref: str, blob: bytes) -> None:
        writing.set()
        time.sleep(0.3)  # a slow disk
        real_write(self, ref, blob)

    monkeypatch.setattr(FileBlobs, "write", slow_write)

    @flowcore.flow
    async def f() -> list[str]:
        first = await big(40_000)
        assert await anyio.to_thread.run_sync(writing.wait, 5)  # its file is being written
        return [first, await big(40_000)]

    async with flowcore.Engine(flush_interval=0.005):
        assert await f() == ["x" * 40_000] * 2
    assert CALLS == [("big", 40_000)], "the value was invisible while its file was written"


async def test_a_failed_computation_lets_the_waiters_compute() -> None:
    @flowcore.task(cache=True)
    async def flaky(x: int) -> int:
        CALLS.append(x)
        await anyio.sleep(0.02)
        if len(CALLS) == 1:
            raise RuntimeError("first attempt fails")
        return x + 1

    @flowcore.flow
    async def f() -> list[Any]:
        return list(await asyncio.gather(*(flaky(1) for _ in range(3)), return_exceptions=True))

    async with flowcore.Engine() as engine:
        with anyio.fail_after(10):
            first, second, third = await f()
        runs = await task_runs(engine)
    assert isinstance(first, RuntimeError)
    assert second == third == 2
    assert CALLS == [1, 1]
    assert [t.state for t in runs] == [State.FAILED, State.COMPLETED, State.CACHED]
    assert runs[2].cached_from == f"{runs[1].run_id}.{runs[1].seq}"


# -- errors --------------------------------------------------------------------------------


async def test_unencodable_argument_raises_cache_key_error() -> None:
    @flowcore.task(cache=True)
    async def uses_client(client: object, url: str) -> str:
        CALLS.append(url)
        return url

    @flowcore.flow
    async def f() -> str:
        return await uses_client(Opaque(), "/a")

    async with flowcore.Engine() as engine:
        with pytest.raises(CacheKeyError) as info:
            await f()
        [tr] = await task_runs(engine)
        run = await engine.store.get_run(last_run_id(engine))
    message = str(info.value)
    assert "'client'" in message and "Opaque" in message
    assert "exclude=['client']" in message and "CachePolicy.from_key" in message
    assert isinstance(info.value, TypeError)  # also a TypeError, as the docs promise
    assert CALLS == []
    assert tr.state is State.FAILED
    assert tr.error_type == "flowcore.CacheKeyError"
    assert "'client'" in (tr.error_message or "")
    assert run.state is State.FAILED


async def test_unserializable_result_of_a_cached_task_fails_it() -> None:
    @flowcore.task(cache=True)
    async def make_opaque(x: int) -> Opaque:
        CALLS.append(x)
        return Opaque()

    @flowcore.flow
    async def f() -> Opaque:
        return await make_opaque(1)

    async with flowcore.Engine() as engine:
        with pytest.raises(flowcore.ResultNotSerializable) as info:
            await f()
        [tr] = await task_runs(engine)
        entries = await engine.store.list_cache()
    message = str(info.value)
    assert "Opaque" in message
    assert 'serializer="pickle"' in message and "persist_result=False" in message
    assert isinstance(info.value, TypeError)
    assert CALLS == [1]
    assert tr.state is State.FAILED
    assert tr.error_type == "flowcore.ResultNotSerializable"
    assert entries == []


async def test_pickle_serializer_round_trips_what_msgpack_cannot() -> None:
    @flowcore.task(cache=True, serializer="pickle")
    async def make_point(x: int) -> Point:
        CALLS.append(x)
        return Point(x, complex(x, -x))

    @flowcore.flow
    async def f() -> Point:
        return await make_point(3)

    async with flowcore.Engine() as engine:
        first = await f()
        second = await f()
        [hit] = await task_runs(engine)
    assert CALLS == [3]
    assert hit.state is State.CACHED
    assert type(second) is Point and second == first == Point(3, complex(3, -3))
    assert second is not first  # decoded from the store
    assert hit.result is not None and hit.result[:5] == MAGIC + b"\x01p"


@pytest.mark.parametrize("kind", list(TYPED))
async def test_results_round_trip_to_the_annotated_type(kind: str) -> None:
    expected = TYPED[kind][1]
    async with flowcore.Engine() as engine:
        computed = await typed_flow(kind)
        hit = await typed_flow(kind)
        [tr] = await task_runs(engine)
    assert len(CALLS) == 1
    assert tr.state is State.CACHED
    assert computed == expected
    assert hit == expected
    assert type(hit) is type(expected)
    if isinstance(expected, list):
        assert [type(v) for v in hit] == [type(v) for v in expected]
    if isinstance(expected, dict):
        assert [type(v) for v in hit.values()] == [type(v) for v in expected.values()]
    if isinstance(expected, datetime.datetime):
        assert hit.tzinfo == expected.tzinfo


# -- bad entries ---------------------------------------------------------------------------


def _plant(key: str, **fields: Any) -> CacheEntry:
    return CacheEntry(
        key=key,
        task_name="payload",
        created=time.time(),
        run_id="f" * 32,
        seq=0,
        **fields,
    )


def _unusable_warnings(caplog: pytest.LogCaptureFixture, key: str) -> list[str]:
    """flowcore's warnings about the entry ``key`` (named by its task or its key)."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("flowcore")
        and r.levelno == logging.WARNING
        and (key[:12] in r.getMessage() or "'payload'" in r.getMessage() or "big" in r.getMessage())
    ]


GOOD = encode_result(list(range(50)), "msgpack", "payload")
BAD_BLOBS: dict[str, bytes] = {
    "garbage": b"\x00\xffnot a flowcore result",
    "empty": b"",
    "header only": GOOD[:5],
    "truncated header": GOOD[:4],
    "truncated": GOOD[: len(GOOD) // 2],
    "corrupt payload": GOOD[:5] + b"\xc1\xc1\xc1\xc1",
    "trailing garbage": GOOD + b"\x00\x01",
    "unknown format version": GOOD[:3] + bytes([99]) + GOOD[4:],
    "unknown serializer code": GOOD[:4] + b"z" + GOOD[5:],
    "other magic": b"XYZ" + GOOD[3:],
}


@pytest.mark.parametrize("kind", list(BAD_BLOBS))
async def test_bad_inline_entry_is_a_miss_with_a_warning(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    key = payload.keys.key((50,), {})  # type: ignore[union-attr]
    async with flowcore.Engine() as engine:
        await engine.store.write(WriteBatch([], [], [_plant(key, result=BAD_BLOBS[kind])]))
        with caplog.at_level(logging.WARNING, logger="flowcore"):
            assert await payload_flow(50) == list(range(50))
        [tr] = await task_runs(engine)
        assert tr.state is State.COMPLETED and tr.cached_from is None
        assert CALLS == [("payload", 50)]
        [warning] = _unusable_warnings(caplog, key)
        assert "payload" in warning
        # The recomputed value replaced the bad entry: the next call hits it.
        assert await payload_flow(50) == list(range(50))
        [hit] = await task_runs(engine)
    assert hit.state is State.CACHED and CALLS == [("payload", 50)]


async def test_entry_without_any_result_is_a_miss(caplog: pytest.LogCaptureFixture) -> None:
    key = payload.keys.key((50,), {})  # type: ignore[union-attr]
    async with flowcore.Engine() as engine:
        await engine.store.write(WriteBatch([], [], [_plant(key)]))
        with caplog.at_level(logging.WARNING, logger="flowcore"):
            assert await payload_flow(50) == list(range(50))
    assert CALLS == [("payload", 50)]
    assert _unusable_warnings(caplog, key)


async def test_planted_pickle_is_never_loaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # First prove the payload is live: loading it does create a marker file.
    proof = tmp_path / "proof"
    assert pickle.loads(pickle.dumps(Planted(str(proof)))) == [1, 2, 3]
    assert proof.exists()

    marker = tmp_path / "marker"
    blob = encode_result(Planted(str(marker)), "pickle", "payload")
    assert blob[:5] == MAGIC + b"\x01p"
    assert not marker.exists()  # pickling it ran nothing
    key = payload.keys.key((50,), {})  # type: ignore[union-attr]
    async with flowcore.Engine() as engine:
        await engine.store.write(WriteBatch([], [], [_plant(key, result=blob)]))
        with caplog.at_level(logging.WARNING, logger="flowcore"):
            assert await payload_flow(50) == list(range(50))
        [tr] = await task_runs(engine)
    assert not marker.exists()
    assert CALLS == [("payload", 50)]
    assert tr.state is State.COMPLETED
    [warning] = _unusable_warnings(caplog, key)
    assert "pickle" in warning


async def test_planted_pickle_in_a_result_file_is_never_loaded(
    tmp_path: Path, flowcore_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "marker"
    blob = encode_result(Planted(str(marker), padding=20_000), "pickle", "payload")
    assert len(blob) > 16 * 1024
    files = FileBlobs(flowcore_home / "results")
    ref = files.ref(blob)
    files.write(ref, blob)
    key = payload.keys.key((50,), {})  # type: ignore[union-attr]
    async with flowcore.Engine() as engine:
        await engine.store.write(WriteBatch([], [], [_plant(key, result_ref=ref)]))
        with caplog.at_level(logging.WARNING, logger="flowcore"):
            assert await payload_flow(50) == list(range(50))
    assert not marker.exists()
    assert CALLS == [("payload", 50)]
    assert _unusable_warnings(caplog, key)


async def test_corrupt_pickle_of_a_pickle_task_is_a_miss(
    caplog: pytest.LogCaptureFixture,
) -> None:
    @flowcore.task(cache=True, serializer="pickle")
    async def pickled(x: int) -> Point:
        CALLS.append(x)
        return Point(x, 0j)

    @flowcore.flow
    async def f() -> Point:
        return await pickled(1)

    key = pickled.keys.key((1,), {})  # type: ignore[union-attr]
    good = encode_result(Point(1, 0j), "pickle", "pickled")
    async with flowcore.Engine() as engine:
        await engine.store.write(WriteBatch([], [], [_plant(key, result=good[: len(good) - 10])]))
        with caplog.at_level(logging.WARNING, logger="flowcore"):
            assert await f() == Point(1, 0j)
    assert CALLS == [1]
    assert _unusable_warnings(caplog, key)


def _result_file(home: Path, ref: str) -> Path:
    return home / "results" / ref[:2] / ref


FILE_DAMAGE = {
    "missing": lambda path: path.unlink(),
    "modified": lambda path: path.write_bytes(path.read_bytes().replace(b"xxxx", b"xxyx", 1)),
    "truncated": lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
    "emptied": lambda path: path.write_bytes(b""),
}


async def _damage_big_entry(home: Path, kind: str) -> str:
    """Compute ``big(40_000)`` (a file-backed entry), then damage its file; returns the key."""
    async with flowcore.Engine() as engine:
        assert await big_flow(40_000) == "x" * 40_000
        [entry] = await engine.store.list_cache()
    assert entry.result is None and entry.result_ref is not None
    path = _result_file(home, entry.result_ref)
    assert path.is_file()
    FILE_DAMAGE[kind](path)
    return entry.key


@pytest.mark.parametrize("kind", list(FILE_DAMAGE))
async def test_bad_result_file_is_a_miss_with_a_warning(
    kind: str, flowcore_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = await _damage_big_entry(flowcore_home, kind)
    async with flowcore.Engine() as engine:
        with caplog.at_level(logging.WARNING, logger="flowcore"):
            assert await big_flow(40_000) == "x" * 40_000
        [tr] = await task_runs(engine)
    assert CALLS == [("big", 40_000), ("big", 40_000)]
    assert tr.state is State.COMPLETED
    [warning] = _unusable_warnings(caplog, key)
    assert "missing" in warning if kind == "missing" else "checksum" in warning


@pytest.mark.parametrize("kind", list(FILE_DAMAGE))
async def test_bad_result_file_is_repaired_by_the_recomputed_value(
    kind: str, flowcore_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = await _damage_big_entry(flowcore_home, kind)
    async with flowcore.Engine():
        assert await big_flow(40_000) == "x" * 40_000  # miss: computes again
    caplog.clear()
    async with flowcore.Engine() as engine:
        with caplog.at_level(logging.WARNING, logger="flowcore"):
            assert await big_flow(40_000) == "x" * 40_000
        [tr] = await task_runs(engine)
    assert not _unusable_warnings(caplog, key), "the damaged result file was never replaced"
    assert tr.state is State.CACHED
    assert CALLS == [("big", 40_000), ("big", 40_000)]


# -- keys of odd arguments -------------------------------------------------------------------


def _nested(depth: int) -> list[Any]:
    outer: list[Any] = []
    inner = outer
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    return outer


async def test_an_argument_nested_too_deeply_raises_cache_key_error() -> None:
    # Regression: msgspec's RecursionError escaped, where a CacheKeyError naming the
    # argument and the fix is promised.
    @flowcore.task(cache=True)
    async def walks(tree: list[Any]) -> int:
        CALLS.append("walked")
        return 1

    @flowcore.flow
    async def f() -> int:
        return await walks(_nested(100_000))

    async with flowcore.Engine() as engine:
        with pytest.raises(CacheKeyError, match="'tree' is a list, nested too deeply") as info:
            await f()
        [tr] = await task_runs(engine)
    assert "exclude=['tree']" in str(info.value)
    assert CALLS == []
    assert tr.state is State.FAILED and tr.error_type == "flowcore.CacheKeyError"
    # Its inputs are recorded as a placeholder, not an error.
    assert flowcore.encoding.decode_inputs(tr.inputs)["tree"]["__flowcore__"] == "unencodable"


async def test_text_that_is_not_utf8_is_a_key_of_its_own() -> None:
    # A file name that is not UTF-8 (os.fsdecode gives lone surrogates) used to raise
    # UnicodeEncodeError from the key; it is a key, distinct from the text it resembles.
    name = os.fsdecode(b"caf\xe9.csv")

    @flowcore.task(cache=True)
    async def load(path: str, options: dict[str, Any]) -> int:
        CALLS.append(path)
        return len(path)

    @flowcore.task(cache=CachePolicy.from_key(lambda args: args["path"]))
    async def load_by_key(path: str) -> int:
        CALLS.append(("key", path))
        return len(path)

    @flowcore.flow
    async def f() -> list[int]:
        return [
            await load(name, {"tags": [name]}),
            await load(name, {"tags": [name]}),  # a hit
            await load("caf\\xe9.csv", {"tags": ["caf\\xe9.csv"]}),  # the escaped text: a miss
            await load_by_key(name),
            await load_by_key(name),  # a hit
        ]

    async with flowcore.Engine() as engine:
        assert await f() == [8, 8, 11, 8, 8]
        runs = await task_runs(engine)
    assert [name, "caf\\xe9.csv", ("key", name)] == CALLS
    assert [t.state for t in runs] == [
        State.COMPLETED,
        State.CACHED,
        State.COMPLETED,
        State.COMPLETED,
        State.CACHED,
    ]


def test_a_key_function_sees_the_arguments_in_signature_order() -> None:
    # Regression: the fast path gave keyword arguments in call order and defaults last;
    # bind() (the slow path) gives the signature's order. Always the signature's.
    def fn(a: int, b: int = 2, *, c: int = 3, d: int = 4) -> None: ...

    seen: list[list[str]] = []

    def key(args: Any) -> str:
        seen.append(list(args))
        return "k"

    maker = KeyMaker(fn, "fn", CachePolicy.from_key(key))
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((1,), {}),
        ((1,), {"c": 5}),
        ((1,), {"d": 5, "c": 6}),
        ((), {"d": 5, "a": 1}),
        ((1, 2), {"d": 5}),
        ((1, 2), {}),
    ]
    for args, kwargs in calls:
        maker.key(args, kwargs)
    assert seen == [["a", "b", "c", "d"]] * len(calls)
    # And they are the arguments bind() gives, values included.
    slow = inspect.signature(fn)
    for args, kwargs in calls:
        bound = slow.bind(*args, **kwargs)
        bound.apply_defaults()
        assert maker._arguments(args, kwargs) == dict(bound.arguments)
        assert list(maker._arguments(args, kwargs)) == list(bound.arguments)


def test_a_keyword_only_parameter_given_positionally_is_refused() -> None:
    # The fast path bound a keyword-only parameter to a positional argument.
    def fn(a: int, *, b: int = 2) -> None: ...

    maker = KeyMaker(fn, "fn", CachePolicy())
    with pytest.raises(TypeError, match="positional"):
        maker.key((1, 2), {})


# -- claims left behind --------------------------------------------------------------------


class RoundTripReads(flowcore.MemoryStore):
    """A store whose cache reads are round trips, as a database server's are
    (``get_cache_nowait`` never answers): ``fail`` fails the next read; while ``hold``
    is set to an unset event, reads wait for it."""

    def __init__(self) -> None:
        super().__init__()
        self.fail: flowcore.StoreError | None = None
        self.hold: anyio.Event | None = None
        self.reading = anyio.Event()

    def get_cache_nowait(self, key: str) -> CacheEntry | None:
        raise anyio.WouldBlock

    async def get_cache(self, key: str) -> CacheEntry | None:
        self.reading.set()
        if self.hold is not None:
            await self.hold.wait()
        await anyio.lowlevel.checkpoint()
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise error
        return super().get_cache_nowait(key)


@pytest.fixture
def one_key_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The memory store without ``get_cache_many`` (should it have one): lookups that wait
    read their keys one at a time, through ``get_cache``."""
    monkeypatch.delattr(flowcore.MemoryStore, "get_cache_many", raising=False)


@pytest.mark.usefixtures("one_key_reads")
async def test_a_cache_read_that_fails_leaves_the_key_free() -> None:
    # The lookup claimed the key, then the read raised: the claim stayed, and every
    # later call with that key in the engine waited for it for ever.
    store = RoundTripReads()
    store.fail = flowcore.StoreError("the database server went away")
    async with flowcore.Engine(store):
        with pytest.raises(flowcore.StoreError, match="went away"):
            await stamp_flow(5)
        with anyio.fail_after(10):
            assert await stamp_flow(5) == [5, 1]
    assert CALLS == [("stamp", 5)]


@pytest.mark.usefixtures("one_key_reads")
async def test_a_call_cancelled_while_its_cache_read_waits_leaves_the_key_free() -> None:
    store = RoundTripReads()
    store.hold = anyio.Event()

    async def cancelled() -> None:
        await stamp_flow(6)

    async with flowcore.Engine(store):
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(cancelled)
                await store.reading.wait()  # its lookup has claimed the key and waits
                tg.cancel_scope.cancel()
        store.hold.set()
        with anyio.fail_after(10):
            assert await stamp_flow(6) == [6, 1]
    assert CALLS == [("stamp", 6)]


class FailingLookup(flowcore.MemoryStore):
    """A store that answers lookups at once (as SQLite does), the first of which fails."""

    def __init__(self) -> None:
        super().__init__()
        self.fail: flowcore.StoreError | None = flowcore.StoreError("database is gone")

    def get_cache_nowait(self, key: str) -> CacheEntry | None:
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise error
        return super().get_cache_nowait(key)


async def test_a_cache_lookup_that_fails_at_once_leaves_the_key_free() -> None:
    async with flowcore.Engine(FailingLookup()):
        with pytest.raises(flowcore.StoreError, match="is gone"):
            await stamp_flow(7)
        with anyio.fail_after(10):
            assert await stamp_flow(7) == [7, 1]
    assert CALLS == [("stamp", 7)]
