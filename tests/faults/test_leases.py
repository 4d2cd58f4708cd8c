"""Shared-limit leases when the event loop stops running: kept by a thread, or lost loudly.

Lease expiry is on the engine's clock, so these tests move a fake clock past a
lease's life while the loop is blocked, instead of waiting it out.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import anyio
import pytest

import flowcore
from flowcore.engine.leases import SharedSlots
from flowcore.testing import FakeClock

pytestmark = pytest.mark.anyio

TTL = 0.3  # a lease's life: renewed every TTL / 3 seconds (real time) by the keeper's thread


def _expiry(path: Path) -> float:
    """The latest expiry of a lease in the store, read on a connection of our own."""
    with closing(sqlite3.connect(path)) as db:
        row = db.execute("SELECT MAX(expires) FROM limit_leases WHERE waiting = 0").fetchone()
    return float(row[0])


async def test_a_blocked_event_loop_keeps_its_shared_slot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: leases were renewed by a task on the event loop, so a loop blocked for
    # longer than a lease lasts lost its slot while still using it (two holders of a
    # one-slot limit), and nobody was told.
    clock = FakeClock(start=1_000.0)
    path = tmp_path / "flowcore.db"
    limit = flowcore.limit("db", 1, shared=True)

    def block_the_loop() -> None:
        # A sync call made on the loop's thread: nothing on the loop runs meanwhile. The
        # clock moves four lease lives on, a quarter of a life at a time, and each step
        # waits until the lease was renewed from the new time (a renewal gives now + TTL).
        for _ in range(16):
            clock.advance(TTL / 4)
            deadline = time.monotonic() + 10
            while _expiry(path) < clock.time() + TTL:
                assert time.monotonic() < deadline, "the lease was not renewed"
                time.sleep(0.005)

    taken: list[str] = []

    @flowcore.task(tags=["db"])
    async def hold() -> None:
        block_the_loop()
        # Another process asking for the slot now does not get it: it is still held.
        async with flowcore.SQLiteStore(path) as other:
            now = clock.time()
            granted, _ = await other.lease_slots("db", 1, "other", "w", 1, now, now, now + 30)
            taken.extend(granted)
            await other.release_lease("w")

    @flowcore.flow
    async def f() -> None:
        await hold()

    with caplog.at_level(logging.WARNING, logger="flowcore"):
        async with flowcore.Engine(path, clock=clock, limits=[limit]) as engine:
            engine.limits.leases.ttl = TTL
            await f()
            assert engine.limits.statistics()["db"]["leases_lost"] == 0
    assert taken == []
    assert "lease" not in caplog.text


async def test_a_lease_lost_anyway_is_a_warning_a_count_and_is_not_handed_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The memory store renews on the loop only: a blocked loop (the clock moved on with
    # no await in between) lets the lease expire, and another holder takes the slot.
    clock = FakeClock(start=1_000.0)
    limit = flowcore.limit("db", 1, shared=True)
    async with flowcore.Engine("memory", clock=clock, limits=[limit]) as engine:
        gate = engine.limits.named("db")
        assert gate is not None and isinstance(gate.limiter, SharedSlots)
        slots = gate.limiter
        store = engine.store
        await gate.acquire()
        got = anyio.Event()

        async def next_in_line() -> None:
            await gate.acquire()
            got.set()
            await gate.release()

        async with anyio.create_task_group() as tg:
            tg.start_soon(next_in_line)
            with anyio.fail_after(10):
                while not slots.waiters:
                    await anyio.lowlevel.checkpoint()
            with caplog.at_level(logging.WARNING, logger="flowcore"):
                clock.advance(40.0)  # the loop was blocked for 40 s: the lease (30 s) expired
                now = clock.time()
                # No await in between: another holder takes the slot before the loop runs.
                other, _ = await store.lease_slots("db", 1, "other", "w", 1, now, now, now + 30)
                assert len(other) == 1
                await gate.release()
            # The lost slot was not handed to the next task run here: it is the other's.
            assert not got.is_set() and slots.borrowed == 0 and len(slots.waiters) == 1
            assert engine.limits.statistics()["db"]["leases_lost"] == 1
            await store.release_lease(other[0])
            with anyio.fail_after(10):
                await got.wait()
    (warning,) = [r for r in caplog.records if "lease" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    message = warning.getMessage()
    assert "'db'" in message and "had not run for 40.0 s" in message


async def test_a_lease_found_expired_when_renewed_is_counted_once() -> None:
    clock = FakeClock(start=1_000.0)
    limit = flowcore.limit("db", 2, shared=True)
    async with flowcore.Engine("memory", clock=clock, limits=[limit]) as engine:
        gate = engine.limits.named("db")
        assert gate is not None
        keeper = engine.limits.leases
        await gate.acquire()
        clock.advance(31.0)
        await keeper.renew()  # finds it expired before renewing it
        assert engine.limits.statistics()["db"]["leases_lost"] == 1
        await gate.acquire()  # a new lease, renewed in time: not lost
        clock.advance(20.0)
        await keeper.renew()
        await gate.release()
        await gate.release()
        assert engine.limits.statistics()["db"]["leases_lost"] == 1  # counted once
        assert keeper.held == 0
