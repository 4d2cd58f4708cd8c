"""Stored results: the serializer format, persist_result, and content-addressed result files."""

from __future__ import annotations

import hashlib
import os
import pickle
import time
from pathlib import Path
from typing import Any

import pytest

import flowcore
from flowcore import State
from flowcore.serializers import (
    FORMAT_VERSION,
    MAGIC,
    ResultNotSerializable,
    ResultUnreadable,
    decode_result,
    encode_result,
)
from flowcore.store.files import INLINE_LIMIT, FileBlobs


async def task_runs(engine: flowcore.Engine) -> list[flowcore.TaskRunRecord]:
    await engine.recorder.flush()
    assert engine.last_run is not None
    return await engine.store.list_task_runs(engine.last_run.id)


class Opaque:
    """Neither msgpack nor (because of the lambda) pickle can store it."""

    def __init__(self) -> None:
        self.fn = lambda: None


def result_files(home: Path) -> list[Path]:
    folder = home / "results"
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# -- the stored format ---------------------------------------------------------------------


def test_encoded_results_carry_a_header() -> None:
    blob = encode_result({"a": [1, 2]}, "msgpack", "t")
    assert blob[:3] == MAGIC and blob[3] == FORMAT_VERSION and blob[4:5] == b"m"
    assert decode_result(blob, allow_pickle=False) == {"a": [1, 2]}
    pickled = encode_result({1, 2}, "pickle", "t")
    assert pickled[4:5] == b"p"
    assert decode_result(pickled, allow_pickle=True) == {1, 2}


def test_a_pickle_is_refused_unless_allowed() -> None:
    blob = encode_result([1, 2], "pickle", "t")
    with pytest.raises(ResultUnreadable, match="did not opt in"):
        decode_result(blob, allow_pickle=False)


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"FCR",
        b"FCR\x01",
        b"XYZ\x01m\x90",
        b"FCR\x02m\x90",
        b"FCR\x01q\x90",
        b"FCR\x01m\xdc\x00\x05\x01",  # an array of 5 with one item: truncated
        b"FCR\x01m\xc1",
        b"FCR\x01p\x80\x04not a pickle",
    ],
)
def test_bad_blobs_are_unreadable(blob: bytes) -> None:
    with pytest.raises(ResultUnreadable):
        decode_result(blob, allow_pickle=True)


def test_unserializable_result_names_the_type_and_the_options() -> None:
    with pytest.raises(ResultNotSerializable) as info:
        encode_result(Opaque(), "msgpack", "make")
    message = str(info.value)
    assert "'make'" in message and "Opaque" in message
    assert 'serializer="pickle"' in message and "persist_result=False" in message
    with pytest.raises(ResultNotSerializable, match="picklable"):
        encode_result(Opaque(), "pickle", "make")


def test_a_value_that_does_not_fit_the_annotation_comes_back_as_plain_data() -> None:
    blob = encode_result({"a": 1}, "msgpack", "t")
    assert decode_result(blob, allow_pickle=False, type_=list[int]) == {"a": 1}


# -- persist_result --------------------------------------------------------------------------

pytest_anyio = pytest.mark.anyio


@pytest_anyio
async def test_results_are_stored_by_default() -> None:
    @flowcore.task
    async def make(x: int) -> dict[str, int]:
        return {"x": x}

    @flowcore.flow
    async def f() -> dict[str, int]:
        return await make(3)

    async with flowcore.Engine() as engine:
        assert await f() == {"x": 3}
        [tr] = await task_runs(engine)
    assert tr.result is not None and tr.result_ref is None
    assert decode_result(tr.result, allow_pickle=False) == {"x": 3}
    assert tr.cache_key is None  # not a cached task


@pytest_anyio
async def test_best_effort_unserializable_result_still_completes() -> None:
    made: list[Opaque] = []

    @flowcore.task
    async def make() -> Opaque:
        made.append(Opaque())
        return made[-1]

    @flowcore.flow
    async def f() -> Opaque:
        return await make()

    async with flowcore.Engine() as engine:
        result = await f()
        [tr] = await task_runs(engine)
        run = await engine.store.get_run(engine.last_run.id)  # type: ignore[union-attr]
    assert result is made[0]
    assert tr.state is State.COMPLETED and run.state is State.COMPLETED
    assert tr.result is None and tr.result_ref is None


@pytest_anyio
async def test_persist_result_true_requires_a_storable_result() -> None:
    @flowcore.task(persist_result=True)
    async def make() -> Opaque:
        return Opaque()

    @flowcore.flow
    async def f() -> Opaque:
        return await make()

    async with flowcore.Engine() as engine:
        with pytest.raises(ResultNotSerializable, match="Opaque"):
            await f()
        [tr] = await task_runs(engine)
    assert tr.state is State.FAILED
    assert tr.error_type == "flowcore.ResultNotSerializable"
    assert tr.result is None


@pytest_anyio
async def test_persist_result_true_with_pickle_stores_it() -> None:
    @flowcore.task(persist_result=True, serializer="pickle")
    async def make() -> set[frozenset[int]]:
        return {frozenset({1, 2})}

    @flowcore.flow
    async def f() -> set[frozenset[int]]:
        return await make()

    async with flowcore.Engine() as engine:
        assert await f() == {frozenset({1, 2})}
        [tr] = await task_runs(engine)
    assert tr.result is not None
    assert decode_result(tr.result, allow_pickle=True) == {frozenset({1, 2})}


@pytest_anyio
async def test_persist_result_false_stores_nothing(flowcore_home: Path) -> None:
    @flowcore.task(persist_result=False)
    async def make(n: int) -> str:
        return "z" * n

    @flowcore.flow
    async def f() -> list[str]:
        return [await make(3), await make(50_000)]

    async with flowcore.Engine() as engine:
        assert await f() == ["zzz", "z" * 50_000]
        runs = await task_runs(engine)
    assert [(t.state, t.result, t.result_ref) for t in runs] == [(State.COMPLETED, None, None)] * 2
    assert result_files(flowcore_home) == []


@pytest_anyio
async def test_engine_persist_results_false_stores_nothing() -> None:
    @flowcore.task(persist_result=True)
    async def make(x: int) -> int:
        return x

    @flowcore.flow
    async def f() -> int:
        return await make(1)

    async with flowcore.Engine(persist_results=False) as engine:
        assert await f() == 1
        [tr] = await task_runs(engine)
    assert tr.state is State.COMPLETED and tr.result is None


# -- large results in files ----------------------------------------------------------------


@flowcore.task
async def blob(n: int, fill: bytes = b"a") -> bytes:
    return fill * n


def _size_for(total: int) -> int:
    """The ``n`` for which the stored form of ``blob(n)`` is exactly ``total`` bytes."""
    n = total - 8
    while len(encode_result(b"a" * n, "msgpack", "blob")) < total:
        n += 1
    while len(encode_result(b"a" * n, "msgpack", "blob")) > total:
        n -= 1
    assert len(encode_result(b"a" * n, "msgpack", "blob")) == total
    return n


@pytest_anyio
async def test_large_results_go_to_content_addressed_files(flowcore_home: Path) -> None:
    at_limit = _size_for(INLINE_LIMIT)
    over_limit = _size_for(INLINE_LIMIT + 1)

    @flowcore.flow
    async def f() -> list[int]:
        values = [
            await blob(10),
            await blob(at_limit),
            await blob(over_limit),
            await blob(100_000),
            await blob(100_000),  # the same content again
            await blob(100_000, b"b"),
        ]
        return [len(v) for v in values]

    async with flowcore.Engine() as engine:
        assert await f() == [10, at_limit, over_limit, 100_000, 100_000, 100_000]
        small, limit, over, big1, big2, other = await task_runs(engine)
        refs = await engine.store.result_refs()
    assert small.result is not None and small.result_ref is None
    assert limit.result is not None and limit.result_ref is None  # 16 KiB exactly: inline
    for tr in (over, big1, big2, other):
        assert tr.result is None and tr.result_ref is not None
    assert big1.result_ref == big2.result_ref != other.result_ref
    files = result_files(flowcore_home)
    assert len(files) == 3  # over, big (once for both calls), other
    for path in files:
        content = path.read_bytes()
        assert path.name == hashlib.sha256(content).hexdigest()
        assert path.parent.name == path.name[:2]
        assert decode_result(content, allow_pickle=False) in (
            b"a" * over_limit,
            b"a" * 100_000,
            b"b" * 100_000,
        )
    assert refs == {over.result_ref, big1.result_ref, other.result_ref}


@pytest_anyio
async def test_identical_large_results_of_two_runs_share_one_file(flowcore_home: Path) -> None:
    @flowcore.flow
    async def f() -> int:
        return len(await blob(70_000))

    async with flowcore.Engine():
        await f()
    async with flowcore.Engine():
        await f()
    assert len(result_files(flowcore_home)) == 1


@pytest_anyio
async def test_memory_store_keeps_large_results_inline() -> None:
    @flowcore.flow
    async def f() -> int:
        return len(await blob(70_000))

    async with flowcore.Engine("memory") as engine:
        assert await f() == 70_000
        [tr] = await task_runs(engine)
    assert tr.result is not None and tr.result_ref is None
    assert decode_result(tr.result, allow_pickle=False) == b"a" * 70_000


# -- ResultFiles -----------------------------------------------------------------------------


def test_write_then_read_verifies(tmp_path: Path) -> None:
    files = FileBlobs(tmp_path / "results")
    data = b"content" * 1000
    ref = files.ref(data)
    files.write(ref, data)
    assert files.path(ref) == tmp_path / "results" / ref[:2] / ref
    assert files.read(ref) == data
    files.write(ref, data)  # writing the same content again is a no-op
    assert files.read(ref) == data
    files.path(ref).write_bytes(data[:-1])
    with pytest.raises(ResultUnreadable, match="checksum"):
        files.read(ref)
    files.path(ref).unlink()
    with pytest.raises(ResultUnreadable, match="missing"):
        files.read(ref)


@pytest.mark.parametrize(
    "ref", ["", "abc", "../" * 20 + "etc/passwd", "A" * 64, "g" * 64, "0" * 63 + "/"]
)
def test_invalid_references_are_refused(tmp_path: Path, ref: str) -> None:
    files = FileBlobs(tmp_path / "results")
    with pytest.raises(ResultUnreadable, match="invalid result reference"):
        files.read(ref)
    with pytest.raises(ResultUnreadable):
        files.write(ref, b"x")
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("failing", ["fsync", "replace", "write"])
def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    files = FileBlobs(tmp_path / "results")
    data = b"x" * 100_000
    ref = files.ref(data)

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    if failing == "write":
        real_fdopen = os.fdopen

        class HalfWriter:
            def __init__(self, fd: int, mode: str) -> None:
                self.f = real_fdopen(fd, mode)

            def __enter__(self) -> HalfWriter:
                return self

            def __exit__(self, *exc: object) -> None:
                self.f.close()

            def write(self, b: bytes) -> int:
                self.f.write(b[: len(b) // 2])  # half the data reaches the disk...
                self.f.flush()
                raise OSError(28, "No space left on device")  # ...then the disk is full

        monkeypatch.setattr("flowcore.store.files.os.fdopen", HalfWriter)
    else:
        monkeypatch.setattr(f"flowcore.store.files.os.{failing}", fail)
    with pytest.raises(OSError, match="No space"):
        files.write(ref, data)
    monkeypatch.undo()
    leftovers = [p for p in (tmp_path / "results").rglob("*") if p.is_file()]
    assert leftovers == []  # neither the target nor the temporary file
    with pytest.raises(ResultUnreadable, match="missing"):
        files.read(ref)
    files.write(ref, data)  # and a later write succeeds
    assert files.read(ref) == data


def test_remove_unreferenced_keeps_referenced_and_young_files(tmp_path: Path) -> None:
    files = FileBlobs(tmp_path / "results")
    blobs = [bytes([i]) * 5000 for i in range(5)]
    refs = [files.ref(b) for b in blobs]
    for ref, b in zip(refs, blobs, strict=True):
        files.write(ref, b)
    young_tmp = files.path(refs[0]).parent / ".tmp-young"
    young_tmp.write_bytes(b"being written")
    old_tmp = files.path(refs[1]).parent / ".tmp-old"
    old_tmp.write_bytes(b"left by a crash")
    two_hours_ago = time.time() - 7200
    for path in (files.path(refs[0]), files.path(refs[1]), files.path(refs[3]), old_tmp):
        os.utime(path, (two_hours_ago, two_hours_ago))
    (files.folder / "stray-file-at-top").write_bytes(b"not in a sub-folder")

    removed = files.remove_unreferenced({refs[0], refs[2]})

    # Gone: the old unreferenced files. Kept: referenced ones, old or young, and young
    # unreferenced ones (a writer puts a file on disk before committing its reference).
    assert removed == 3  # refs[1], refs[3] and the old temporary file
    assert files.read(refs[0]) == blobs[0] and files.read(refs[2]) == blobs[2]
    for ref in (refs[1], refs[3]):
        assert not files.path(ref).exists()
    assert files.read(refs[4]) == blobs[4]
    assert young_tmp.exists() and not old_tmp.exists()
    assert (files.folder / "stray-file-at-top").exists()
    assert files.remove_unreferenced({refs[0], refs[2]}, grace=0) == 2  # refs[4], young tmp
    assert files.read(refs[0]) == blobs[0] and files.read(refs[2]) == blobs[2]
    assert FileBlobs(tmp_path / "nowhere").remove_unreferenced(set()) == 0


@pytest_anyio
async def test_remove_unreferenced_with_the_refs_of_the_store(flowcore_home: Path) -> None:
    @flowcore.flow
    async def f() -> int:
        return len(await blob(40_000)) + len(await blob(40_000, b"q"))

    async with flowcore.Engine() as engine:
        await f()
        await engine.recorder.flush()
        refs = await engine.store.result_refs()
        files = engine.recorder.blobs
        assert isinstance(files, FileBlobs)
        orphan = b"orphan" * 10_000
        files.write(files.ref(orphan), orphan)
        assert files.remove_unreferenced(refs) == 0  # too young to tell
        assert files.remove_unreferenced(refs, grace=0) == 1
    assert {p.name for p in result_files(flowcore_home)} == refs and len(refs) == 2


def test_pickle_payloads_are_only_loaded_when_allowed(tmp_path: Path) -> None:
    marker = tmp_path / "marker"

    class Boom:
        def __reduce__(self) -> tuple[Any, ...]:
            return (Path.write_text, (marker, "ran"))

    blob = MAGIC + bytes((FORMAT_VERSION,)) + b"p" + pickle.dumps(Boom())
    with pytest.raises(ResultUnreadable):
        decode_result(blob, allow_pickle=False)
    assert not marker.exists()
