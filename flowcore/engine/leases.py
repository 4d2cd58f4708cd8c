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

Leases are renewed off the event loop, by a thread of the keeper's own, when
the store offers a way that needs no loop (:func:`blocking_renewal`): a loop
blocked by a sync call or CPU-bound code for longer than the lease lasts would
otherwise lose its slots to other processes while still using them, and two
holders would share one slot. A lease found expired anyway (the process was
suspended, the store stayed locked, or the store can only renew on the loop)
is a warning naming the limit and how long the loop had not run, counted in
``engine.limits.statistics()[name]["leases_lost"]``, and its slot is never
handed on to another task run: it goes back through the store.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import anyio

from ..clock import Clock
from ..limits import Limit
from ..store.base import LeaseStore

__all__ = ["LeaseKeeper", "SharedSlots", "blocking_renewal"]

log = logging.getLogger("flowcore")

#: How recent the last look at other processes' waiters must be to keep a slot local.
FRESH = 0.02

#: Renews every lease (and waiting row) of ``holder`` to expire at ``expires``; callable
#: from any thread, without an event loop.
BlockingRenewal = Callable[[str, float], object]


def blocking_renewal(store: LeaseStore) -> BlockingRenewal | None:
    """How to renew ``store``'s leases from a thread, with no event loop; ``None``: only on it.

    A store offers it as ``renew_leases_blocking``: a callable ``(holder, expires)``
    for one thread (sync, no event loop), with an optional ``close()`` the thread
    calls when done (the SQLite and PostgreSQL stores make a new one each time they
    are asked). The memory store lives in the loop's process and is renewed on the loop.
    """
    own = getattr(store, "renew_leases_blocking", None)
    if callable(own):
        renew: BlockingRenewal = own
        return renew
    return None


class LeaseKeeper:
    """One engine's leases in the store: who holds them, how long they last, renewing them.

    ``start_soon`` starts a background task in the engine's task group (the pumps
    of shared limits run there). Expiry times are the clock's wall time, so tests
    can move them with a fake clock. ``renewal``: how to renew without the event
    loop (default: :func:`blocking_renewal` of the store); with one, a thread renews
    every ``ttl / 3`` seconds while leases are held, whatever the loop is doing.
    """

    def __init__(
        self,
        store: LeaseStore,
        clock: Clock,
        start_soon: Callable[[Callable[[], Coroutine[Any, Any, None]]], None],
        *,
        ttl: float = 30.0,
        renewal: BlockingRenewal | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.start_soon = start_soon
        #: This engine, as the holder of store leases.
        self.holder = uuid.uuid4().hex
        self.ttl = ttl
        self.renewal = renewal if renewal is not None else blocking_renewal(store)
        #: Leases lost by limit name: found expired when renewed or given back.
        self.lost: dict[str, int] = {}
        # Leases held now: lease id -> (limit name, expiry when it was granted). Changed
        # on the loop's thread only; the renewing thread reads copies.
        self._leases: dict[str, tuple[str, float]] = {}
        self._renewed = -math.inf  # the expiry the last renewal gave every lease held then
        self._lost_ids: set[str] = set()  # found lost, not given back yet
        self._beat = clock.now()  # when the event loop last ran this keeper's code
        self._stall = (0.0, -math.inf)  # the longest recent stall of the loop, and when seen
        self._lock = threading.Lock()  # for what both threads write: the lost leases
        self._keeping = False  # keep() is running (the engine is open)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def held(self) -> int:
        """Leases this engine holds now (renewed while any are held)."""
        return len(self._leases)

    def expires(self) -> float:
        """When a lease taken or renewed now expires."""
        return self.clock.time() + self.ttl

    # -- the leases held, on the loop's thread ------------------------------------------

    def granted(self, lease: str, name: str, expires: float) -> None:
        """Keep ``lease`` (of limit ``name``, granted until ``expires``) renewed."""
        self._leases[lease] = (name, expires)
        self._beat = self.clock.now()
        if self._thread is None and self._keeping:
            self._start_thread()

    def _start_thread(self) -> None:
        # Started with the first lease: an engine that never holds one has no thread.
        if self.renewal is not None:
            self._thread = threading.Thread(
                target=self._renew_in_thread,
                args=(self.renewal,),
                name="flowcore-lease-renewal",
                daemon=True,
            )
            self._thread.start()

    def lost_on_release(self, lease: str) -> bool:
        """Whether ``lease``, being given back, expired first (then it is counted as lost)."""
        if lease in self._lost_ids:
            return True
        held = self._leases.get(lease)
        if held is None:
            return False
        name, granted = held
        if max(granted, self._renewed) > self.clock.time():
            self._beat = self.clock.now()
            return False
        self._lose(lease, name)
        return True

    def forget(self, lease: str) -> None:
        """``lease`` goes back to the store: no longer renewed."""
        self._leases.pop(lease, None)
        with self._lock:
            self._lost_ids.discard(lease)

    # -- renewing ----------------------------------------------------------------------

    async def keep(self) -> None:
        """Renew this engine's leases until cancelled (the engine runs it).

        With a blocking renewal, the thread renews and this only notes that the loop
        runs (how long it had not is part of a lost lease's warning); otherwise it
        renews here, on the loop, every ``ttl / 3`` seconds.
        """
        self._keeping = True
        if self._leases and self._thread is None:
            self._start_thread()
        renewed_at = time.monotonic()
        try:
            while True:
                pause = min(1.0, self.ttl / 3) if self._leases else self.ttl / 3
                asleep = self.clock.now()
                await anyio.sleep(pause)
                now = self.clock.now()
                late = max(0.0, now - asleep - pause)  # how much longer than asked it took
                seen, seen_at = self._stall
                if late >= seen or now - seen_at > self.ttl:
                    self._stall = (late, now)
                self._beat = now
                if self.renewal is None and time.monotonic() - renewed_at >= self.ttl / 3:
                    renewed_at = time.monotonic()
                    if self._leases:
                        await self.renew()
        finally:
            self._keeping = False
            self._stop.set()  # the renewing thread ends at its next wake-up, now

    async def renew(self) -> None:
        """Renew every lease now, on the loop (finding first those lost meanwhile)."""
        before = self._check(self.clock.time())
        expires = self.expires()
        await self.store.renew_leases(self.holder, expires)
        self._renewed_after(before, expires)

    def _renew_in_thread(self, renewal: BlockingRenewal) -> None:
        failing = False
        try:
            while not self._stop.wait(self.ttl / 3):
                if not self._leases:
                    continue
                before = self._check(self.clock.time())
                expires = self.expires()
                try:
                    renewal(self.holder, expires)
                except Exception as exc:  # a locked or vanished database: try again
                    if not failing:
                        log.warning("flowcore: could not renew shared limit leases: %s", exc)
                    failing = True
                    continue
                failing = False
                self._renewed_after(before, expires)
        finally:
            close = getattr(renewal, "close", None)
            if callable(close):
                close()

    def _check(self, now: float) -> dict[str, tuple[str, float]]:
        """The leases held now with their expiries; those already expired are lost."""
        renewed = self._renewed
        leases = {lease: (n, max(e, renewed)) for lease, (n, e) in self._leases.copy().items()}
        self._lost_expired(leases, now)
        return leases

    def _renewed_after(self, before: dict[str, tuple[str, float]], expires: float) -> None:
        # A lease that expired while the renewal waited (for a lock, say) may have
        # been taken before the renewal reached it: lost too, to be safe.
        self._lost_expired(before, self.clock.time())
        self._renewed = max(self._renewed, expires)

    def _lost_expired(self, leases: dict[str, tuple[str, float]], now: float) -> None:
        for lease, (name, expiry) in leases.items():
            if expiry <= now and lease not in self._lost_ids:
                self._lose(lease, name)

    def _lose(self, lease: str, name: str) -> None:
        with self._lock:
            if lease in self._lost_ids:
                return
            self._lost_ids.add(lease)
            self.lost[name] = self.lost.get(name, 0) + 1
        # How long the loop had not run: since it last ran this keeper's code, or the
        # stall the keeper saw when it woke, if that was lately.
        now = self.clock.now()
        stalled = now - self._beat
        seen, seen_at = self._stall
        if now - seen_at <= self.ttl:
            stalled = max(stalled, seen)
        if stalled >= 2 * min(1.0, self.ttl / 3):
            why = (
                f"the event loop had not run for {stalled:.1f} s (a sync call or CPU-bound "
                "code in async code blocks it: run it in a sync task, or with "
                "anyio.to_thread.run_sync)"
            )
        else:
            why = (
                f"the event loop was running (it last ran {stalled:.1f} s ago), so the "
                "renewal did not reach the store in time (a database locked that long, or "
                "a suspended process)"
            )
        log.warning(
            "flowcore: a lease on a slot of shared limit %r expired before it was renewed "
            "(leases last %g s), so another process may have held the slot at the same "
            "time; %s",
            name,
            self.ttl,
            why,
        )


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
        """Give a slot back: to the next waiter here, or to the store for the others.

        A lease that expired while held is never handed on: another process may hold
        its slot now, so the next waiter asks the store.
        """
        self.borrowed -= 1
        keeper = self.keeper
        if not keeper.lost_on_release(lease):
            fresh = time.monotonic() - self._looked_at < FRESH
            if fresh and not self._others_waiting and self._hand(lease):
                return
        keeper.forget(lease)
        with anyio.CancelScope(shield=True):
            await keeper.store.release_lease(lease)
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
                expires = now + keeper.ttl
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
                        expires,
                    )
                row = len(leases) < want
                self._others_waiting = others
                self._looked_at = time.monotonic()
                for lease in leases:
                    keeper.granted(lease, self.name, expires)
                for lease in leases:
                    if not self._hand(lease):  # its waiter left meanwhile: give it back
                        keeper.forget(lease)
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
