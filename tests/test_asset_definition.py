"""@flowcore.asset: options checked at decoration, task options carried, code versions."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from flowcore.assets import (
    Asset,
    AssetDefinitionError,
    DailyPartitions,
    FilesIO,
    Freshness,
    TimeWindowMapping,
    asset,
    asset_check,
    code_fingerprint,
    on_missing,
    on_upstream_change,
)
from flowcore.assets.io import RESULT_IO
from flowcore.options import TaskOptions, task_options

pytestmark = pytest.mark.anyio


def test_bare_and_with_options() -> None:
    @asset
    def orders() -> list[int]:
        """Orders of the day.

        More words."""
        return [1]

    assert orders.key == "orders" and orders.group == "default" and orders.io == RESULT_IO
    assert orders.description == "Orders of the day."
    assert isinstance(orders.options, TaskOptions) and orders.options.name == "orders"
    assert orders.options == task_options("orders", name="orders")  # a task's defaults
    assert orders() == [1]  # calling it calls the function

    days = DailyPartitions("2026-01-01")

    @asset(
        key="marts/daily",
        group="marts",
        code_version="7",
        deps=[orders],
        partitions=days,
        partition_mapping={"orders": TimeWindowMapping()},
        freshness=Freshness(cron="0 9 * * *", tz="Europe/Paris"),
        automation=[on_missing(), on_upstream_change(debounce=2)],
        io=FilesIO(format="json"),
        retries=3,
        timeout=10,
        tags=["warehouse"],
        concurrency=4,
    )
    def daily(partition_key: str) -> int:
        return len(partition_key)

    assert (daily.key, daily.name, daily.code_version, daily.deps) == (
        "marts/daily",
        "daily",
        "7",
        ("orders",),
    )
    assert daily.takes_partition_key and dict(daily.inputs) == {}
    assert daily.options.retry.retries == 3 and daily.options.timeout == 10.0
    assert daily.options.tags == frozenset({"warehouse"}) and daily.options.concurrency == 4
    assert daily.options.name == "marts/daily"
    assert len(daily.automation) == 2 and daily.partitions is days


async def test_calling_an_async_asset_gives_its_coroutine() -> None:
    @asset
    async def fetched(raw__events: list[int]) -> int:
        return sum(raw__events)

    assert fetched.is_async
    assert await fetched([1, 2]) == 3


def test_every_problem_is_reported_at_once() -> None:
    wrong: dict[str, Any] = {
        "key": "bad key",
        "group": "",
        "cache": True,
        "serializer": "pickle",
        "retries": -1,
        "partitions": "daily",
        "automation": "eager",
        "frobnicate": 1,
    }
    with pytest.raises(AssetDefinitionError) as caught:

        @asset(**wrong)
        def broken(*rows: int) -> int:
            return 0

    message = str(caught.value)
    for part in [
        "invalid segment 'bad key'",
        "`group` must be a non-empty str",
        "not cached: drop `cache`",
        "`io`: drop `serializer`",
        "`partitions` must be flowcore.DailyPartitions",
        "`automation` must be",
        "unknown options ['frobnicate']",
        "neither *args, **kwargs",
    ]:
        assert part in message
    assert "`retries` must be" in message  # the task options' problems too
    with pytest.raises(AssetDefinitionError, match="already an asset"):
        asset(asset(lambda: 1, key="once"))  # type: ignore[call-overload]


def test_keys_prefixes_and_the_parameters_that_name_them() -> None:
    @asset(key=["raw", "events"])
    def events() -> int:
        return 1

    @asset(ins={"e": events, "f": "raw/files-2026"})
    def joined(e: int, f: int, raw__other: int, limit: int = 10) -> int:
        return e + f + raw__other + limit

    assert events.key == "raw/events"
    assert dict(joined.inputs) == {
        "e": "raw/events",
        "f": "raw/files-2026",
        "raw__other": "raw/other",
        "limit": "limit",
    }
    assert joined.optional == frozenset({"limit"})
    with pytest.raises(AssetDefinitionError, match="`ins` names 'x', which is not a parameter"):
        asset(ins={"x": "raw/events"})(lambda e: e)
    for bad in ["raw/../etc", "/abs", "a//b", "a=b"]:
        with pytest.raises(AssetDefinitionError, match="invalid segment"):
            asset(key=bad)(lambda: 1)
    with pytest.raises(AssetDefinitionError, match="has no usable name"):
        asset(lambda: 1)


def test_checks_given_to_the_asset_must_not_name_another() -> None:
    @asset_check(asset="other")
    def elsewhere(value: int) -> bool:
        return True

    with pytest.raises(AssetDefinitionError, match="checks asset 'other' and was given to"):

        @asset(checks=[elsewhere])
        def mine() -> int:
            return 1

    with pytest.raises(AssetDefinitionError, match="a check of severity 'warn' never blocks"):
        asset_check(asset="x", severity="warn", blocking=True)


# -- code versions ---------------------------------------------------------------------------

V1 = '''
import flowcore.assets as fa

@fa.asset(retries=1)
async def orders(rows: list[int]) -> int:
    """Sum the rows."""
    return sum(rows)
'''

# The same code: other comments, blank lines, docstring, decorator options, place in the file.
V1_REFORMATTED = '''
import flowcore.assets as fa

X = 1  # the function moved down


@fa.asset(retries=5, timeout=3)   # other options
async def orders(rows: list[int]) -> int:
    """Add the rows up (a new docstring)."""

    # a comment
    return sum(
        rows
    )
'''

V2 = '''
import flowcore.assets as fa

@fa.asset(retries=1)
async def orders(rows: list[int]) -> int:
    """Sum the rows."""
    return sum(rows) + 1
'''


def _load(path: Path, text: str) -> ModuleType:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    name = f"_asset_test_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _version(path: Path, text: str) -> str:
    orders: Asset[Any, Any] = _load(path, text).orders
    return orders.code_version


def test_the_code_version_follows_the_code_not_its_layout_or_place(tmp_path: Path) -> None:
    first = _version(tmp_path / "a" / "assets.py", V1)
    assert len(first) == 32
    assert _version(tmp_path / "elsewhere" / "deeper" / "other_name.py", V1) == first
    assert _version(tmp_path / "b" / "assets.py", V1_REFORMATTED) == first
    assert _version(tmp_path / "c" / "assets.py", V2) != first


@pytest.mark.slow
def test_the_code_version_is_the_same_in_another_process(tmp_path: Path) -> None:
    path = tmp_path / "assets.py"
    here = _version(path, V1)
    script = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('m', {str(path)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "print(m.orders.code_version)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == here


def test_without_source_the_bytecode_is_fingerprinted_stably() -> None:
    def made(body: str) -> Any:
        namespace: dict[str, Any] = {}
        exec(compile(f"def f(x):\n    return {body}\n", "<generated>", "exec"), namespace)
        return namespace["f"]

    one, same, other = made("x in {'a', 'b', 'c'}"), made("x in {'a', 'b', 'c'}"), made("x + 2")
    assert code_fingerprint(one) == code_fingerprint(same) != code_fingerprint(other)
    assert asset(key="generated")(one).code_version == code_fingerprint(one)
