"""I/O plugins by entry point: ``io="name"`` resolved through ``flowcore.asset_io``."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from typing import Any, ClassVar

import pytest

import flowcore
from flowcore.assets import AssetDefinitionError, AssetGraph, asset
from flowcore.assets import io as asset_io
from flowcore.assets.io import IO_ENTRY_POINTS, PluginIO
from flowcore.assets.materialize import materialize_async

pytestmark = pytest.mark.anyio


class MemoryIO:
    """A plugin's I/O: values in a dict shared by every instance, to see them from the test."""

    values: ClassVar[dict[tuple[str, str | None], Any]] = {}

    async def store(self, key: str, partition: str | None, value: Any) -> None:
        self.values[key, partition] = value

    async def load(self, key: str, partition: str | None) -> Any:
        return self.values[key, partition]


def not_an_io() -> object:
    return object()


def install(monkeypatch: pytest.MonkeyPatch, **targets: str) -> None:
    """Entry points ``name = module:attr`` in the I/O group, as an installed plugin has."""
    found = [EntryPoint(name, value, IO_ENTRY_POINTS) for name, value in targets.items()]

    def entry_points(*, group: str) -> list[EntryPoint]:
        return found if group == IO_ENTRY_POINTS else []

    monkeypatch.setattr(asset_io, "entry_points", entry_points)


def test_a_plugin_name_resolves_to_its_io_at_definition(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, memory=f"{__name__}:MemoryIO")

    @asset(io="memory")
    def raw() -> list[int]:
        return [1]

    assert raw.io == PluginIO("memory", MemoryIO())
    assert isinstance(raw.io, PluginIO) and isinstance(raw.io.inner, MemoryIO)
    assert repr(raw.io) == "PluginIO('memory')"  # stable: what the stored definition shows


def test_an_unknown_io_name_is_refused_listing_the_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    install(monkeypatch, memory=f"{__name__}:MemoryIO")
    with pytest.raises(AssetDefinitionError) as caught:

        @asset(io="memroy")
        def raw() -> list[int]:
            return [1]

    message = str(caught.value)
    assert "'memroy'" in message and "installed: files, memory, result" in message
    assert "flowcore.asset_io" in message


def test_a_plugin_that_makes_no_io_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, odd=f"{__name__}:not_an_io", gone="no_such_module_here:Thing")
    with pytest.raises(AssetDefinitionError, match=r"'odd'.*not an asset I/O"):

        @asset(io="odd")
        def a() -> int:
            return 1

    with pytest.raises(AssetDefinitionError, match=r"'gone'.*failed to load.*ModuleNotFound"):

        @asset(io="gone")
        def b() -> int:
            return 1


def test_the_built_in_names_need_no_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch)

    @asset(io="files")
    def a() -> int:
        return 1

    @asset
    def b() -> int:
        return 1

    assert (a.io, b.io) == ("files", "result")


async def test_a_plugin_io_stores_and_the_downstream_loads_through_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    install(monkeypatch, memory=f"{__name__}:MemoryIO")
    MemoryIO.values.clear()

    @asset(io="memory")
    def raw() -> list[int]:
        return [3, 1, 2]

    seen: list[list[int]] = []

    @asset
    def total(raw: list[int]) -> int:
        seen.append(raw)
        return sum(raw)

    graph = AssetGraph([raw, total])
    async with flowcore.Engine(store="memory") as engine:
        first = await materialize_async(["raw"], graph=graph, engine=engine)
        assert first.ok
        assert MemoryIO.values == {("raw", None): [3, 1, 2]}
        MemoryIO.values["raw", None] = [10, 20]  # the downstream reads what the plugin gives
        second = await materialize_async(["total"], graph=graph, engine=engine)
        assert second.ok
        assert seen == [[10, 20]]
        (stored,) = await engine.store.asset_history("raw")
        assert stored.io == "memory"  # the plugin's name: which plugin keeps the value
