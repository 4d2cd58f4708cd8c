"""What a tracked task run costs beyond a raw asyncio task (issue 17): the objects the
garbage collector walks while a big gather waits for its last call, and the rows the
writer binds for it.
"""

from __future__ import annotations

import asyncio
import collections
import gc
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import pytest

import flowcore
from flowcore import MemoryStore, State
from flowcore.records import FlowRunRecord, TaskRunRecord
from flowcore.store.sqlite import rows

pytestmark = pytest.mark.anyio

N = 2000

#: GC-tracked objects per task counted while the last call of a gather runs, by kind.
_counts: dict[str, collections.Counter[str]] = {}


def _count(kind: str) -> None:
    gc.collect()
    _counts[kind] = collections.Counter(type(o).__name__ for o in gc.get_objects())


async def raw_probe(i: int) -> int:
    if i == N - 1:
        _count("raw")
    return i


@flowcore.task
async def probe(i: int) -> int:
    if i == N - 1:
        _count("flowcore")
    return i


@flowcore.flow
async def gathered() -> None:
    await asyncio.gather(*(probe(i) for i in range(N)))


async def raw_gathered() -> None:
    await asyncio.gather(*(raw_probe(i) for i in range(N)))


async def _per_task(kind: str, run: Callable[[], Awaitable[None]]) -> float:
    """GC-tracked objects per task while the gather's last call runs, over those before:
    of the kinds there are about one of per task or more (what else the process holds
    at the time, other tests' leftovers, is not the gather's)."""
    for _ in range(3):  # let the loop drop what an earlier gather's step held
        await asyncio.sleep(0)
    _count("before")
    await run()
    grown = _counts[kind] - _counts["before"]
    return sum(n for n in grown.values() if n >= N // 2) / N


async def test_a_finished_task_run_keeps_few_objects_more_than_a_raw_task() -> None:
    # Every object a finished call keeps until the gather ends is walked by each garbage
    # collection meanwhile: with 100,000 calls, the collector was half of a task run's
    # cost. A raw asyncio task keeps its Task, coroutine, two Contexts, a weak reference
    # and a Handle; a task run adds its history list and the context it made current
    # (a HAMT and its node, or two nodes: how deep depends on the context variables'
    # hashes). Its record is untracked (a gc=False Struct).
    async with flowcore.Engine(store=MemoryStore(), flush_interval=60):
        await gathered()  # warm up (first-call imports and caches)
        await raw_gathered()
        raw = await _per_task("raw", raw_gathered)
        tracked = await _per_task("flowcore", gathered)
    assert tracked - raw <= 4.2, (tracked, raw, _counts["flowcore"] - _counts["raw"])


def _task_run(state: State = State.COMPLETED) -> TaskRunRecord:
    return TaskRunRecord(
        run_id="r" * 32,
        seq=7,
        name="noop",
        state=state,
        created=1.0,
        inputs=b"\x91\x01",
        attempts=1,
        started=1.0,
        ended=2.0,
        history=[("Running", 1.0), ("Completed", 2.0)],
        result=b"\x01",
        span_id="0123456789abcdef",
    )


@pytest.mark.parametrize("state", list(State))
def test_rows_bind_the_state_as_plain_text(state: State) -> None:
    # sqlite3 binds an exact str directly; a State (a str subclass) would make it look
    # for an adapter, a failed attribute lookup per row.
    rec = _task_run(state)
    run = FlowRunRecord(id="r" * 32, name="f", state=state, created=1.0)
    for column in (rows.task_row(rec)[3], rows.task_row_no_ref(rec)[3], rows.flow_row(run)[3]):
        assert type(column) is str and column == state.value


def test_a_task_row_body_is_the_record_in_msgpack_and_reads_back() -> None:
    # The stored form: the whole record, msgpack-encoded as before.
    rec = _task_run()
    row = rows.task_row(rec)
    assert bytes(row[5]) == msgspec.msgpack.encode(rec)
    assert rows.task_record(row) == rec
    assert rows.task_row_no_ref(rec) == (*row[:4], row[5])


@pytest.mark.parametrize("count", [1, 5, 4096, 4096 * 2 + 3])
def test_multi_row_binds_every_row_once_in_order(count: int) -> None:
    given = [(f"r{i}", i, "noop", "Completed", bytearray(b"x")) for i in range(count)]
    bound: list[Any] = []
    for sql, batches in rows.multi_row(rows.INSERT_TASK_NO_REF, given):
        for params in batches:
            assert sql.count("?") == len(params)
            bound.extend(params)
    assert bound == [v for row in given for v in row]
