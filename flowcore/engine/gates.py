"""The live state of limits: slots, token buckets, shared leases and rates, gates.

:mod:`flowcore.limits` says what a limit is; this module makes it hold. Per engine:

- :class:`Slots`: a FIFO semaphore for a concurrency (no checkpoint while there is room);
- :class:`TokenBucket`: a rate, tokens handed out in arrival order;
- :class:`~flowcore.engine.leases.SharedSlots` and :class:`SharedRate`: the same held
  across processes through the store;
- :class:`Limits`: an engine's named limits and per-task ones;
- :func:`gates_for`, :func:`enter`, :func:`leave`: what one attempt passes, in a
  fixed order (no lock-order cycles), all or none held, always given back.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import anyio

from ..clock import Clock
from ..errors import ConfigurationError
from ..limits import Limit
from ..store.base import LeaseStore
from .leases import LeaseKeeper, SharedSlots

__all__ = ["Gate", "Limits", "RunGate", "Slots", "TokenBucket", "enter", "gates_for", "leave"]

_EPSILON = 1e-9


class Slots:
    """A FIFO semaphore: ``acquire`` takes a slot (no checkpoint when one is free), in turn.

    anyio's ``CapacityLimiter`` tracks a borrower per task and checkpoints on
    every acquire, which on asyncio costs more than the rest of a task run; a
    slot here is a counter while there is room. A released slot is handed
    straight to the longest waiter, so latecomers never overtake it.
    """

    __slots__ = ("borrowed", "total", "waiters")

    def __init__(self, total: int) -> None:
        self.total = total
        self.borrowed = 0
        self.waiters: deque[anyio.Event] = deque()

    @property
    def available(self) -> int:
        return self.total - self.borrowed

    async def acquire(self) -> None:
        if self.borrowed < self.total and not self.waiters:
            self.borrowed += 1
            return
        event = anyio.Event()
        self.waiters.append(event)
        try:
            await event.wait()  # set by release(), which hands its slot over
        except BaseException:
            if event.is_set():
                self.release()  # handed a slot as the wait was cancelled: pass it on
            else:
                self.waiters.remove(event)
            raise

    def release(self) -> None:
        if self.waiters:
            self.waiters.popleft().set()  # the slot changes hands: `borrowed` stays
        else:
            self.borrowed -= 1


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; ``acquire`` waits for one, in turn."""

    def __init__(self, rate: float, burst: int, clock: Clock) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._tokens = float(burst)
        self._last = clock.now()
        self._lock = anyio.Lock()  # FIFO: waiters are served in arrival order
        self._waiting = 0

    def _refill(self) -> None:
        now = self.clock.now()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def available(self) -> bool:
        self._refill()
        return self._tokens >= 1 - _EPSILON

    async def acquire(self) -> None:
        if not self._waiting:
            self._refill()
            if self._tokens >= 1 - _EPSILON:  # a token and nobody ahead: take it now
                self._tokens = max(0.0, self._tokens - 1)
                return
        self._waiting += 1
        try:
            await self._acquire_in_turn()
        finally:
            self._waiting -= 1

    async def _acquire_in_turn(self) -> None:
        async with self._lock:
            self._refill()
            while self._tokens < 1 - _EPSILON:  # float dust must not mean "wait again"
                await self.clock.sleep((1 - self._tokens) / self.rate)
                self._refill()
            self._tokens = max(0.0, self._tokens - 1)


class SharedRate:
    """A rate limit held across processes: each use is reserved in the store (GCRA).

    The store keeps one number per limit, the time the bucket would next be empty
    at the full rate; a reservation moves it on by ``1 / rate`` and says when the
    use may start, so waiting is a sleep, not polling, and uses are served in
    the order their reservations commit, whichever process made them. Times are
    the clock's wall time (``Clock.time``): processes on one host share it; hosts
    sharing a database need synchronised clocks. A use cancelled while it waits
    keeps its reservation: the rate is never exceeded, only under-used.
    """

    def __init__(self, spec: Limit, store: LeaseStore, clock: Clock) -> None:
        assert spec.rate is not None and spec.burst is not None
        self.name = spec.name
        self.interval = 1.0 / spec.rate
        self.tolerance = (spec.burst - 1) * self.interval
        self.store = store
        self.clock = clock
        self._next = -math.inf  # when this process last saw the bucket allow a use

    def available(self) -> bool:
        return self.clock.time() >= self._next

    async def acquire(self) -> None:
        now = self.clock.time()
        start = await self.store.reserve_rate(self.name, self.interval, self.tolerance, now)
        self._next = start + self.interval
        wait = start - self.clock.time()
        if wait > 0:
            await self.clock.sleep(wait)


class Gate:
    """The live state of one limit in one engine: its slots and its bucket."""

    __slots__ = ("bucket", "leases", "limit", "limiter", "shared")

    def __init__(self, spec: Limit, clock: Clock, keeper: LeaseKeeper | None = None) -> None:
        self.limit = spec
        #: Whether slots and rate are held in the store (``Limit(shared=True)``).
        self.shared = spec.shared and keeper is not None
        self.limiter: Slots | SharedSlots | None = None
        if spec.concurrency:
            if self.shared:
                assert keeper is not None
                self.limiter = SharedSlots(spec, keeper)
            else:
                self.limiter = Slots(spec.concurrency)
        self.bucket: TokenBucket | SharedRate | None = None
        if spec.rate is not None:
            if self.shared:
                assert keeper is not None
                self.bucket = SharedRate(spec, keeper.store, clock)
            else:
                self.bucket = TokenBucket(spec.rate, spec.burst or 1, clock)
        self.leases: list[str] = []  # store leases held by this engine (shared limits)

    def free(self) -> bool:
        if self.limiter is not None and self.limiter.available < 1:
            return False
        return self.bucket is None or self.bucket.available()

    async def acquire(self) -> None:
        limiter = self.limiter
        if limiter is not None:
            if isinstance(limiter, Slots):
                await limiter.acquire()
            else:
                self.leases.append(await limiter.acquire())
        try:
            if self.bucket is not None:
                await self.bucket.acquire()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.release()
            raise

    async def release(self) -> None:
        limiter = self.limiter
        if isinstance(limiter, Slots):
            limiter.release()
        elif limiter is not None and self.leases:
            await limiter.release(self.leases.pop())


class RunGate(Gate):
    """A flow run's ``concurrency``: at most this many of its task runs in flight."""

    def __init__(self, concurrency: int, clock: Clock) -> None:
        super().__init__(Limit("flow run", concurrency), clock)


class Limits:
    """An engine's limits: named ones, and the per-task ones made on first use.

    ``start_soon`` starts background work in the engine's task group (the pumps
    that lease slots of shared limits). It is also what ``async with
    flowcore.limit(...)`` acquires through while the engine is open.
    """

    def __init__(
        self,
        store: LeaseStore,
        clock: Clock,
        start_soon: Callable[[Callable[[], Coroutine[Any, Any, None]]], None],
        named: Iterable[Limit] = (),
    ) -> None:
        self._clock = clock
        #: The engine's leases of shared limits' slots.
        self.leases = LeaseKeeper(store, clock, start_soon)
        self._named: dict[str, Gate] = {}
        self._tasks: dict[object, Gate] = {}
        for spec in named:
            self.register(spec)

    def register(self, spec: Limit) -> Gate:
        state = self._named.get(spec.name)
        if state is None:
            state = self._named[spec.name] = Gate(spec, self._clock, self.leases)
        elif state.limit != spec:
            raise ConfigurationError(
                f"limit {spec.name!r} is already defined as {state.limit}; one name, one limit"
            )
        return state

    def named(self, name: str) -> Gate | None:
        return self._named.get(name)

    def for_task(self, key: object, spec: Limit) -> Gate:
        """The gate of a task's own limit (its ``concurrency`` / ``rate`` options)."""
        state = self._tasks.get(key)
        if state is None:
            state = self._tasks[key] = Gate(spec, self._clock)
        return state

    def pool_size(self, gate: Gate | None, default: int) -> int:
        """Connections for a flow run's shared HTTP client: its ``max_concurrency`` if
        it has one, else the largest named concurrency limit (at least ``default``)."""
        if gate is not None:  # a flow run's gate always has a concurrency
            return gate.limit.concurrency or default
        sizes = [s.limit.concurrency for s in self._named.values() if s.limit.concurrency]
        return max([default, *sizes])

    async def acquire(self, spec: Limit) -> None:
        await self.register(spec).acquire()

    async def release(self, name: str) -> None:
        state = self._named.get(name)
        if state is not None:
            await state.release()

    def statistics(self) -> dict[str, dict[str, float | int | None]]:
        """Per named limit: its concurrency and rate, slots held here and waiters here,
        and for a shared limit ``leases_lost``: leases found expired while held (see
        :mod:`flowcore.engine.leases`; ``None`` for a limit that is not shared)."""
        out: dict[str, dict[str, float | int | None]] = {}
        lost = self.leases.lost
        for name, state in self._named.items():
            limiter = state.limiter
            out[name] = {
                "concurrency": state.limit.concurrency,
                "holders": limiter.borrowed if limiter is not None else None,
                "waiting": len(limiter.waiters) if limiter is not None else None,
                "rate": state.limit.rate,
                "leases_lost": lost.get(name, 0) if isinstance(limiter, SharedSlots) else None,
            }
        return out


def gates_for(
    limits: Limits, key: object, own: Limit | None, tags: Iterable[str], gate: Gate | None
) -> list[Gate]:
    """The limits one attempt of a task must pass, in a fixed order (no lock-order cycles):
    the flow run's ``gate``, the task's ``own`` limit (kept under ``key``), its ``tags``."""
    gates = []
    if gate is not None:
        gates.append(gate)
    if own is not None:
        gates.append(limits.for_task(key, own))
    for tag in sorted(tags):
        state = limits.named(tag)
        if state is not None:
            gates.append(state)
    return gates


async def enter(gates: list[Gate]) -> None:
    """Pass every gate, waiting as needed; all or none are held when it returns or raises."""
    passed: list[Gate] = []
    try:
        for g in gates:
            await g.acquire()
            passed.append(g)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await leave(passed)
        raise


async def leave(gates: list[Gate]) -> None:
    """Give every slot back; shielded, so a cancelled attempt still returns its slots.

    Every gate is released even if giving one back raises (plain asyncio
    cancellation goes through anyio's shields); the first error is raised after.
    """
    error: BaseException | None = None
    for g in reversed(gates):
        try:
            if not g.shared:
                limiter = g.limiter
                if isinstance(limiter, Slots):
                    limiter.release()
            else:
                with anyio.CancelScope(shield=True):
                    await g.release()
        except BaseException as exc:
            error = error or exc
    if error is not None:
        raise error
