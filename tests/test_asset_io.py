"""FilesIO: round trips, private atomic files, and strange keys kept inside the folder."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from flowcore.assets import AssetDefinitionError, AssetIO, AssetValueMissing, FilesIO
from flowcore.assets.errors import PartitionKeyError
from flowcore.assets.io import FileFormat, partition_file_name

pytestmark = pytest.mark.anyio


async def test_round_trips_in_each_format(tmp_path: Path) -> None:
    value = {"rows": [1, 2, 3], "name": "café"}
    formats: tuple[FileFormat, ...] = ("msgpack", "json")
    for fmt in formats:
        io = FilesIO(tmp_path, format=fmt)
        await io.store("marts/daily", "2026-03-29", value)
        await io.store("marts/daily", None, [value])
        assert await io.load("marts/daily", "2026-03-29") == value
        assert await io.load("marts/daily", None) == [value]
    raw = FilesIO(tmp_path / "raw", format="bytes")
    await raw.store("blob", None, b"\x00\xff")
    assert await raw.load("blob", None) == b"\x00\xff"
    with pytest.raises(TypeError, match=r"format='bytes'.*return bytes"):
        await raw.store("blob", None, "text")
    with pytest.raises(TypeError, match="cannot be stored as msgpack"):
        await FilesIO(tmp_path).store("x", None, object())
    assert isinstance(raw, AssetIO)


async def test_the_default_folder_is_under_flowcore_home(flowcore_home: Path) -> None:
    io = FilesIO()
    await io.store("raw/events", None, [1])
    assert (
        io.path("raw/events", None)
        == flowcore_home / "assets" / "raw" / "events" / "=value.msgpack"
    )
    assert io.path("raw/events", None).exists()


async def test_files_are_private_and_written_atomically(tmp_path: Path) -> None:
    root = tmp_path / "store"
    io = FilesIO(root)
    await io.store("a/b", "p", [1])
    await io.store("a/b", "p", [2])  # replaced, not appended
    path = io.path("a/b", "p")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    folder = root
    for part in ("a", "b", "=partitions"):
        folder = folder / part
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["p.msgpack"]  # no temporary left
    assert await io.load("a/b", "p") == [2]

    existing = tmp_path / "shared"
    existing.mkdir(mode=0o755)
    os.chmod(existing, 0o755)
    await FilesIO(existing).store("k", None, 1)
    assert stat.S_IMODE(existing.stat().st_mode) == 0o755  # an existing folder keeps its mode


async def test_a_missing_value_names_the_asset_and_partition(tmp_path: Path) -> None:
    io = FilesIO(tmp_path)
    with pytest.raises(AssetValueMissing) as caught:
        await io.load("marts/daily", "2026-03-29")
    message = str(caught.value)
    assert "asset 'marts/daily' partition '2026-03-29'" in message
    assert "flowcore assets materialize marts/daily" in message
    io.path("x", None).parent.mkdir(parents=True)
    io.path("x", None).write_bytes(b"\xc1")  # never valid msgpack
    with pytest.raises(AssetValueMissing, match="not valid msgpack"):
        await io.load("x", None)


@pytest.mark.parametrize(
    "partition",
    ["../../etc/passwd", "..", ".", "a/b", "a\\b", "C:x", "~root", ".hidden", " ", "é/ü", "%2F"],
)
async def test_strange_partition_keys_stay_inside_the_asset_folder(
    tmp_path: Path, partition: str
) -> None:
    io = FilesIO(tmp_path)
    await io.store("k", partition, partition)
    path = io.path("k", partition)
    assert path.parent == tmp_path / "k" / "=partitions"
    assert path.resolve().is_relative_to(tmp_path.resolve())  # noqa: ASYNC240
    assert not path.name.startswith(".")
    assert await io.load("k", partition) == partition


async def test_names_are_one_to_one_and_long_keys_are_hashed(tmp_path: Path) -> None:
    keys = ["a b", "a%20b", "a_b", "a-b", "A-B", "x" * 500, "x" * 499 + "y", "日本"]
    names = {partition_file_name(k) for k in keys}
    assert len(names) == len(keys)
    assert all(len(name) <= 120 for name in names)
    io = FilesIO(tmp_path)
    for key in keys:
        await io.store("k", key, key)
    for key in keys:
        assert await io.load("k", key) == key


@pytest.mark.parametrize("partition", ["new\nline", "nul\x00", "esc\x1b[31m", "caf\udce9", ""])
async def test_control_characters_and_surrogates_are_refused(
    tmp_path: Path, partition: str
) -> None:
    with pytest.raises(PartitionKeyError):
        await FilesIO(tmp_path).store("k", partition, 1)
    assert not any(tmp_path.rglob("*.msgpack"))  # noqa: ASYNC240


@pytest.mark.parametrize("key", ["../up", "a/../../b", "/abs", "a//b", "", "a\\b", "a=b"])
async def test_asset_keys_that_are_not_safe_paths_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(AssetDefinitionError, match="asset key"):
        await FilesIO(tmp_path).store(key, None, 1)
