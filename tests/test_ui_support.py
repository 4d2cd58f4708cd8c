"""What the web UI's tests share (no tests here): stores seeded with a run that has a
failed task, a retried one, a dependency edge, logs and hostile text; a run of many task
runs written directly; a served flow with a schedule; and an app on an open store."""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path

import anyio

import flowcore
from flowcore.records import (
    FlowRunRecord,
    LogRecord,
    ScheduleState,
    ServedFlow,
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
