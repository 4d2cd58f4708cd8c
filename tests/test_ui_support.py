"""What the web UI's tests share (no tests here): stores seeded with a run that has a
failed task, a retried one, a dependency edge, logs and hostile text; a run of many task
runs written directly; a served flow with a schedule; and an app on an open store."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio

import flowcore
from flowcore.assets import (
    AssetGraph,
    CheckResult,
    DailyPartitions,
    Freshness,
    Output,
    asset,
    asset_check,
    materialize_async,
)
from flowcore.assets.description import describe
from flowcore.records import (
    AssetDefRecord,
    CheckResultRecord,
    FlowRunRecord,
    LogRecord,
    MaterializationRecord,
    ScheduleState,
    ServedFlow,
    StaleMark,
    TaskRunRecord,
    WriteBatch,
)
from flowcore.states import State
from flowcore.store import flowcore_home
from flowcore.store.base import Store

#: Text that would run script if a page put it in HTML unescaped: a tag, an attribute
#: break-out, a bidi override, a terminal escape, a lone surrogate.
HOSTILE = (
    '<script>window.__pwned=1</script>"onmouseover="window.__pwned=2" x=\''
    "<img src=x onerror=window.__pwned=3>\u202eevil\x1b[31m\ud800"
)
#: What a page may never contain raw.
RAW = ("<script>window", "<img src=x", "\u202e", "\x1b", '"onmouseover=')

log = logging.getLogger("demo.app")


@flowcore.task(name=HOSTILE, tags=["api"])
async def hostile(text: str) -> str:
    log.warning("log says %s", text)
    return text


@flowcore.task(retries=1, retry_delay=0)
async def flaky(x: str | flowcore.TaskFuture[str]) -> int:
    if flowcore.current_task_run().attempt == 1:
        raise RuntimeError("first attempt fails")
    log.warning("flaky worked on attempt 2")
    assert isinstance(x, str)
    return len(x)


@flowcore.task
async def broken(n: int | flowcore.TaskFuture[int]) -> int:
    log.error("broken is about to fail")
    raise ValueError(f"broken <b>{n}</b> \u202e")


@flowcore.flow(name="demo")
async def demo(note: str = "hi") -> int:
    h = hostile.submit(note)
    f = flaky.submit(h)  # an edge: h's future is f's input
    b = broken.submit(f)
    try:
        await b
    except ValueError:
        pass
    result: int = await f
    return result


def seed_demo() -> str:
    """Run the demo flow in ``$FLOWCORE_HOME``; its run id."""
    flowcore.run(demo, note="<i>hi</i>")
    return _last_run_id()


def _last_run_id() -> str:
    async def main() -> str:
        store = flowcore.SQLiteStore(_db())
        await store.open()
        try:
            return (await store.list_runs(limit=1))[0].id
        finally:
            await store.close()

    return anyio.run(main)


def _db() -> Path:
    return flowcore_home() / "flowcore.db"


def running_run(name: str = "live") -> FlowRunRecord:
    """A run in flight in another process (on another machine: judged by heartbeat)."""
    now = time.time()
    return FlowRunRecord(
        id=uuid.uuid4().hex,
        name=name,
        state=State.RUNNING,
        created=now,
        started=now,
        heartbeat=now,
        host="elsewhere",
        pid=1,
        machine="another-machine",
        history=[("Pending", now, None), ("Running", now, None)],
    )


def ended(run: FlowRunRecord, state: State = State.COMPLETED) -> FlowRunRecord:
    now = time.time()
    return FlowRunRecord(
        **{f: getattr(run, f) for f in run.__struct_fields__ if f not in ("state", "ended")},
        state=state,
        ended=now,
    )


async def write_big_run(store: Store, tasks: int, *, names: int = 5) -> FlowRunRecord:
    """A completed run of ``tasks`` task runs of ``names`` tasks, each depending on the
    one before it (every 7th failed), and one log line per 1,000 task runs."""
    now = time.time()
    run = FlowRunRecord(
        id=uuid.uuid4().hex,
        name="big",
        state=State.COMPLETED,
        created=now - 60,
        started=now - 60,
        ended=now,
        host="elsewhere",
        machine="another-machine",
        task_count=tasks,
    )
    step = 60 / max(tasks, 1)
    batch: list[TaskRunRecord] = []
    lines: list[LogRecord] = []
    await store.write(WriteBatch(flow_runs=[run]))
    for seq in range(tasks):
        start = now - 60 + seq * step
        state = State.FAILED if seq % 7 == 6 else State.COMPLETED
        batch.append(
            TaskRunRecord(
                run_id=run.id,
                seq=seq,
                name=f"step{seq % names}",
                state=state,
                created=start,
                started=start,
                ended=start + step,
                attempts=1,
                upstream=[seq - 1] if seq else None,
                history=[("Running", start, None), (state.value, start + step, None)],
                error_type="ValueError" if state is State.FAILED else None,
                error_message="bad row" if state is State.FAILED else None,
            )
        )
        if seq % 1000 == 0:
            lines.append(
                LogRecord(run.id, seq, f"step{seq % names}", start, logging.INFO, "big", "row")
            )
        if len(batch) == 20_000:
            await store.write(WriteBatch(task_runs=batch, logs=lines))
            batch, lines = [], []
    await store.write(WriteBatch(task_runs=batch, logs=lines))
    return run


async def serve_flow(store: Store, flow: str = "report", *, heartbeat: float | None = None) -> None:
    """A server's registration of ``flow`` (parameters ``window: int``, ``label: str``
    with a default) and its hourly schedule."""
    now = time.time() if heartbeat is None else heartbeat
    schema = json.dumps(
        {
            "title": flow,
            "type": "object",
            "properties": {
                "window": {"type": "integer"},
                "label": {"type": "string", "default": "x"},
            },
            "required": ["window"],
        }
    )
    await store.put_served(
        [
            ServedFlow(
                flow=flow, holder="h1", host="elsewhere", pid=1, started=now, heartbeat=now,
                entrypoint="flows.py:report", parameters_schema=schema, schedules=["hourly"],
            )
        ]
    )  # fmt: skip
    await store.put_schedules(
        [
            ScheduleState(
                flow=flow,
                key="hourly",
                description='{"kind": "every", "seconds": 3600, "active": true}',
                next_fire=now + 1800,
                updated=now,
            )
        ]
    )


# -- assets ----------------------------------------------------------------------------------


#: Text for metadata, check messages, groups and keys written straight into the store.
SCRIPT = "<script>alert(1)</script>"


@asset(group="ingest", freshness=Freshness(max_lag=timedelta(hours=1)))
def raw() -> list[int]:
    return [int(x) for x in os.environ.get("TEST_UI_RAW", "1,2,3").split(",")]


@asset(group="warehouse")
def clean(raw: list[int]) -> Output[list[int]]:
    return Output(sorted(raw), metadata={"note": SCRIPT, "rows": len(raw)})


@asset_check(asset=clean)
def positive(rows: list[int]) -> CheckResult:
    return CheckResult(all(r > 0 for r in rows), metadata={"why": SCRIPT})


@asset(group="warehouse", partitions=DailyPartitions("2026-01-01", end="2026-01-21"))
def daily(clean: list[int], partition_key: str) -> int:
    return sum(clean) + int(partition_key[-2:])


@asset(group="reports")
def report(daily: dict[str, int]) -> int:
    return sum(daily.values())


ASSET_GRAPH = AssetGraph([raw, clean, positive, daily, report])


async def seed_assets_async() -> None:
    """The pipeline raw → clean (a blocking check) → daily (20 daily partitions) → report
    in ``$FLOWCORE_HOME``: raw, clean and ten partitions of daily
    materialised; then raw again with a negative value (fresh, a new data version) and
    clean from it (its check fails): raw fresh, clean failed-check, daily's ten
    partitions stale and ten missing, report missing (never materialised)."""
    async with flowcore.Engine() as engine:
        await materialize_async(["raw", "clean", "daily"], graph=ASSET_GRAPH, engine=engine,
                                partitions=("2026-01-01", "2026-01-10"))  # fmt: skip
        os.environ["TEST_UI_RAW"] = "-4,5,6"
        try:
            for key in ("raw", "clean"):
                await materialize_async([key], graph=ASSET_GRAPH, engine=engine, only_stale=False)
        finally:
            del os.environ["TEST_UI_RAW"]


def seed_assets() -> None:
    anyio.run(seed_assets_async)


def asset_defs(
    count: int, *, layers: int = 10, groups: int = 5, fan_in: int = 2
) -> tuple[list[AssetDefRecord], str]:
    """``count`` assets in ``layers`` layers, each reading ``fan_in`` assets of the layer
    before; in the middle layer, a hub reading the whole layer before it, and read by
    the rest of its layer: the hub's lineage is every asset. Returns them and the hub."""
    width = max(1, count // layers)
    plain = describe(None, {}, None)
    keys = [[f"l{layer}/a{i:04d}" for i in range(width)] for layer in range(layers)]
    middle = layers // 2
    hub = f"l{middle}/a0000"
    out = []
    for layer, row in enumerate(keys):
        for i, key in enumerate(row):
            ups: list[str] = []
            if key == hub:
                ups = keys[middle - 1]
            elif layer == middle:
                ups = [hub]
            elif layer:
                ups = sorted({keys[layer - 1][(i * 7 + k * 13) % width] for k in range(fan_in)})
            out.append(
                AssetDefRecord(
                    key=key, code_version="1", group=f"g{(i // 7) % groups}", synced=1.0,
                    upstream=[(up, "IdentityMapping()") for up in ups], description=plain,
                )
            )  # fmt: skip
    return out, hub


async def write_asset_graph(store: Store, count: int, **shape: int) -> str:
    """:func:`asset_defs` stored, all but every 10th materialised, every 9th of those
    stale and every 23rd failing a check; the hub's key."""
    defs, hub = asset_defs(count, **shape)
    await store.sync_assets(defs, {})
    now = time.time()
    events: list[Any] = []
    for n, d in enumerate(defs):
        if n % 10 == 9:
            continue
        events.append(
            MaterializationRecord(
                key=d.key, at=now, run_id="seeded", seq=n, code_version="1", data_version="d"
            )
        )
        if n % 9 == 4:
            events.append(
                StaleMark(d.key, [(0, 1)], {"reason": "upstream-changed", "upstream": "x"})
            )
        if n % 23 == 5:
            events.append(
                CheckResultRecord(
                    key=d.key, check="c", passed=False, at=now, run_id="seeded", seq=n
                )
            )
    await store.write(WriteBatch(assets=events))
    return hub
