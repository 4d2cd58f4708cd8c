"""Slots of a shared limit, leased from the store by every process that uses it.

A limit made with ``shared=True`` holds its concurrency across processes: each
slot in use is a row in the store's ``limit_leases`` table, with an expiry its
engine keeps pushing back (so the slots of a process that died come back by
themselves).

Going to the store once per task run would make a shared limit the slowest
part of a busy flow, so an engine talks to the store for a limit through one
*pump* at a time, and gives slots to its own task runs itself:

- task runs wait in a local first-come-first-served queue;
- while anyone waits, the pump asks the store for as many slots as there are
  waiters, in one transaction, and hands what it gets out in order. A process
  that gets fewer than it asked for is recorded as waiting (how many, and since
  when), and a free slot goes to the oldest waiter of *any* process;
- a task run that ends hands its slot straight to the next local waiter when
  no other process was waiting at the last look (at most ``FRESH`` seconds
  ago); otherwise it gives the slot back to the store for the others.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import anyio

from ..clock import Clock
from ..limits import Limit
from ..store.base import LeaseStore

__all__ = ["LeaseKeeper", "SharedSlots"]

#: How recent the last look at other processes' waiters must be to keep a slot local.
FRESH = 0.02


class LeaseKeeper:
    """One engine's leases in the store: who holds them, how long they last, renewing them.

    ``start_soon`` starts a background task in the engine's task group (the pumps
    of shared limits run there). Expiry times are the clock's wall time, so tests
    can move them with a fake clock.
    """

    def __init__(
        self,
        store: LeaseStore,
        clock: Clock,
        start_soon: Callable[[Callable[[], Coroutine[Any, Any, None]]], None],
        *,
        ttl: float = 30.0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.start_soon = start_soon
        #: This engine, as the holder of store leases.
        self.holder = uuid.uuid4().hex
        self.ttl = ttl
        #: Leases this engine holds now (renewed while any are held).
        self.held = 0

    def expires(self) -> float:
        """When a lease taken or renewed now expires."""
        return self.clock.time() + self.ttl

    async def keep(self) -> None:
        """Renew this engine's leases until cancelled (the engine runs it)."""
        while True:
            await anyio.sleep(self.ttl / 3)
            if self.held:
                await self.store.renew_leases(self.holder, self.expires())


class _Waiter:
    __slots__ = ("event", "lease", "since")

    def __init__(self, since: float) -> None:
        self.event = anyio.Event()
        self.lease: str | None = None
        self.since = since


class SharedSlots:
    """One engine's side of a shared limit's concurrency (see the module docstring)."""

    def __init__(self, spec: Limit, keeper: LeaseKeeper) -> None:
        assert spec.concurrency is not None
        self.name = spec.name
        self.capacity = spec.concurrency
        self.keeper = keeper
        self.waiters: deque[_Waiter] = deque()
        #: Slots this engine holds and has given to a task run.
        self.borrowed = 0
        self._waiter_id = uuid.uuid4().hex  # this engine's waiting row for the limit
        self._pumping = False
        self._kick = anyio.Event()  # set to cut the pump's backoff short
        self._others_waiting = 0  # other processes' waiters, at the last look
        self._looked_at = -1.0

    @property
    def available(self) -> int:
        return 0 if self.waiters else self.capacity - self.borrowed

    async def acquire(self) -> str:
        """Wait for a slot; returns its lease id (give it to :meth:`release`)."""
        waiter = _Waiter(self.keeper.clock.time())
        self.waiters.append(waiter)
        self._start_pump()
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.lease is not None:  # handed a slot as the wait was cancelled
                with anyio.CancelScope(shield=True):
                    await self.release(waiter.lease)
            else:
                self.waiters.remove(waiter)
                if not self.waiters:
                    self._kick.set()  # the pump stops asking, and drops the waiting row
            raise
        assert waiter.lease is not None
        return waiter.lease

    async def release(self, lease: str) -> None:
        """Give a slot back: to the next waiter here, or to the store for the others."""
        self.borrowed -= 1
        fresh = time.monotonic() - self._looked_at < FRESH
        if fresh and not self._others_waiting and self._hand(lease):
            return
        self.keeper.held -= 1
        with anyio.CancelScope(shield=True):
            await self.keeper.store.release_lease(lease)
        if self.waiters:
            self._kick.set()  # a slot just came free: ask for it now, not after a backoff
            self._start_pump()

    def _hand(self, lease: str) -> bool:
        """Give ``lease`` to the oldest waiter here; False when nobody waits."""
        if not self.waiters:
            return False
        waiter = self.waiters.popleft()
        waiter.lease = lease
        self.borrowed += 1
        waiter.event.set()
        return True

    def _start_pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        self.keeper.start_soon(self._pump)

    async def _pump(self) -> None:
        keeper = self.keeper
        store = keeper.store
        delay = 0.002
        row = False  # whether the store has this engine's waiting row
        try:
            while self.waiters:
                now = keeper.clock.time()
                want = len(self.waiters)
                # Shielded: if the engine closed while this is in flight, slots granted
                # in the store would be known to nobody and held until they expire.
                with anyio.CancelScope(shield=True):
                    leases, others = await store.lease_slots(
                        self.name,
                        self.capacity,
                        keeper.holder,
                        self._waiter_id,
                        want,
                        self.waiters[0].since,  # the oldest waiter's
                        now,
                        now + keeper.ttl,
                    )
                row = len(leases) < want
                self._others_waiting = others
                self._looked_at = time.monotonic()
                keeper.held += len(leases)
                for lease in leases:
                    if not self._hand(lease):  # its waiter left meanwhile: give it back
                        keeper.held -= 1
                        with anyio.CancelScope(shield=True):
                            await store.release_lease(lease)
                if leases:
                    delay = 0.002
                    continue
                # Every slot is taken, or promised to older waiters elsewhere: poll,
                # backing off, with jitter so processes do not poll in step.
                self._kick = anyio.Event()
                with anyio.move_on_after(delay * (0.5 + random.random())):
                    await self._kick.wait()
                delay = min(delay * 2, 0.1)
        finally:
            self._pumping = False
            if row:
                with anyio.CancelScope(shield=True):
                    await store.release_lease(self._waiter_id)  # no longer waiting here
