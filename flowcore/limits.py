"""Concurrency and rate limits: per task, per flow run, and named limits shared by tag.

- ``@flowcore.task(concurrency=20)``: at most 20 runs of that task at once (per engine).
- ``@flowcore.flow(max_concurrency=100)``: at most 100 task runs of one flow run in flight.
- ``flowcore.limit("partner-api", 50, rate=100)``: a named limit, applied to every task
  tagged ``"partner-api"`` (``@flowcore.task(tags=["partner-api"])``) once registered
  (``Engine(limits=[...])``), or around any code with ``async with flowcore.limit(...)``.
  ``rate`` is a token bucket: ``rate`` acquisitions per second, bursts up to ``burst``.

Waiting is fair (first come, first served: slots and tokens go out in FIFO order),
shows in the task run's history as a ``Pending`` entry naming the limit, and
happens before the attempt starts, so it never counts against the task's
``timeout``. A slot is held for one attempt and given back when it ends,
however it ends (error, timeout, cancellation).

Limits hold within one engine unless ``shared=True``: then both the
concurrency and the rate hold across every process sharing the store.

- A slot is a lease in the store (``limit_leases``), taken in a write
  transaction, which expires ``lease_ttl`` (30 s) after its engine last renewed
  it, so the slots of a process that died come back by themselves. A process
  that must wait records itself as a waiter, and a free slot goes to the
  oldest waiter of any process.
- The rate is one row per limit (``limit_rates``): each use reserves its turn
  (see :class:`SharedRate`), so the rate holds over all processes together.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

from .clock import Clock
from .errors import ConfigurationError
from .leases import SharedSlots

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["Limit", "Limits", "RunGate", "Slots", "TokenBucket", "limit"]

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

    def __init__(self, spec: Limit, burst: int, owner: Limits, clock: Clock) -> None:
        assert spec.rate is not None
        self.name = spec.name
        self.interval = 1.0 / spec.rate
        self.tolerance = (burst - 1) * self.interval
        self.owner = owner
        self.clock = clock
        self._next = -math.inf  # when this process last saw the bucket allow a use

    def available(self) -> bool:
        return self.clock.time() >= self._next

    async def acquire(self) -> None:
        store: Any = self.owner._engine.store
        now = self.clock.time()
        start = await store.reserve_rate(self.name, self.interval, self.tolerance, now)
        self._next = start + self.interval
        wait = start - self.clock.time()
        if wait > 0:
            await self.clock.sleep(wait)


@dataclass(frozen=True, slots=True)
class Limit:
    """A named limit (see the module docstring). Also an async context manager."""

    name: str
    concurrency: int | None = None
    rate: float | None = None
    burst: int | None = None
    #: Hold the concurrency across every process sharing the store (slots leased there).
    shared: bool = False

    def __post_init__(self) -> None:
        problems = limit_problems(self.name, self.concurrency, self.rate, self.burst)
        if problems:
            raise ConfigurationError(f"invalid limit {self.name!r}: " + "; ".join(problems))

    async def __aenter__(self) -> Limit:
        from .context import _engine_var

        engine = _engine_var.get()
        if engine is None:
            raise ConfigurationError(
                f"`async with flowcore.limit({self.name!r}, ...)` needs an engine: use it inside "
                "a flow or task, or inside `async with flowcore.Engine():`"
            )
        await engine.limits.acquire(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        from .context import _engine_var

        engine = _engine_var.get()
        if engine is not None:
            with anyio.CancelScope(shield=True):
                await engine.limits.release(self.name)


def limit(
    name: str,
    concurrency: int | None = None,
    *,
    rate: float | None = None,
    burst: int | None = None,
    shared: bool = False,
) -> Limit:
    """A named limit: ``flowcore.limit("partner-api", 50, rate=100)``.

    ``shared=True`` holds the concurrency and the rate across every process
    using the same store: each slot is a lease in the store that expires unless
    its engine renews it, so a process that dies does not keep its slots, and
    each use of the rate reserves its turn in the store.
    """
    if (
        burst is None
        and isinstance(rate, int | float)
        and not isinstance(rate, bool)
        and math.isfinite(rate)
        and rate > 0
    ):
        burst = max(1, math.ceil(rate))  # a bad rate is left for Limit to explain
    return Limit(name, concurrency, rate, burst, shared)


def limit_problems(
    name: object,
    concurrency: object,
    rate: object,
    burst: object,
    *,
    needs_one: bool = True,
) -> list[str]:
    """What is wrong with these limit options, one phrase each (empty when nothing is).

    ``needs_one``: a limit must have a concurrency or a rate; a task's options may
    have neither.
    """
    problems = []
    if not isinstance(name, str) or not name:
        problems.append(f"`name` must be a non-empty str, got {name!r}")
    if concurrency is not None and (
        not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1
    ):
        problems.append(f"`concurrency` must be an int >= 1, got {concurrency!r}")
    if rate is not None and (
        not isinstance(rate, int | float)
        or isinstance(rate, bool)
        or not math.isfinite(rate)
        or rate <= 0
    ):
        problems.append(f"`rate` must be a number of acquisitions per second > 0, got {rate!r}")
    if burst is not None and (not isinstance(burst, int) or isinstance(burst, bool) or burst < 1):
        problems.append(f"`burst` must be an int >= 1, got {burst!r}")
    if burst is not None and rate is None:
        problems.append("`burst` needs a `rate`")
    if needs_one and concurrency is None and rate is None:
        problems.append("a limit needs `concurrency`, `rate`, or both")
    return problems


def task_limit(task: Any) -> Limit:
    """The per-task limit of ``@task(concurrency=..., rate=..., burst=...)``, named after it."""
    parts = []
    if task.concurrency is not None:
        parts.append(f"concurrency={task.concurrency}")
    if task.rate is not None:
        parts.append(f"rate={task.rate:g}/s")
    name = f"{task.name} ({', '.join(parts)})"
    return limit(name, task.concurrency, rate=task.rate, burst=task.burst)


class _State:
    __slots__ = ("bucket", "leases", "limit", "limiter", "owner")

    def __init__(self, spec: Limit, clock: Clock, owner: Limits | None = None) -> None:
        self.limit = spec
        self.owner = owner if spec.shared else None
        self.limiter: Slots | SharedSlots | None = None
        if spec.concurrency:
            if self.owner is not None:
                self.limiter = SharedSlots(spec, self.owner)
            else:
                self.limiter = Slots(spec.concurrency)
        self.bucket: TokenBucket | SharedRate | None = None
        if spec.rate is not None:
            if self.owner is not None:
                self.bucket = SharedRate(spec, spec.burst or 1, self.owner, clock)
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


class RunGate(_State):
    """A flow run's ``max_concurrency``."""

    def __init__(self, max_concurrency: int, clock: Clock) -> None:
        super().__init__(Limit("flow run", max_concurrency), clock)


class Limits:
    """An engine's limits: named ones, and the per-task ones made on first use."""

    def __init__(self, engine: Engine, named: list[Limit]) -> None:
        self._engine = engine
        self._clock = engine.clock
        #: This engine, as the holder of store leases.
        self.holder = uuid.uuid4().hex
        self.lease_ttl = 30.0
        self.leases_held = 0
        self._named: dict[str, _State] = {}
        self._tasks: dict[object, _State] = {}
        for spec in named:
            self.register(spec)

    def register(self, spec: Limit) -> _State:
        state = self._named.get(spec.name)
        if state is None:
            state = self._named[spec.name] = _State(spec, self._clock, self)
        elif state.limit != spec:
            raise ConfigurationError(
                f"limit {spec.name!r} is already defined as {state.limit}; one name, one limit"
            )
        return state

    def named(self, name: str) -> _State | None:
        return self._named.get(name)

    def for_task(self, task: Any) -> _State:
        """The state of a task's own limit (its ``concurrency`` / ``rate`` options)."""
        state = self._tasks.get(task)
        if state is None:
            state = self._tasks[task] = _State(task.own_limit, self._clock)
        return state

    def pool_size(self, gate: _State | None, default: int) -> int:
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

    async def keep_leases(self) -> None:
        """Renew this engine's leases until cancelled (the engine runs it)."""
        while True:
            await anyio.sleep(self.lease_ttl / 3)
            if self.leases_held:
                store: Any = self._engine.store
                await store.renew_leases(self.holder, time.time() + self.lease_ttl)

    def statistics(self) -> dict[str, dict[str, float | int | None]]:
        out: dict[str, dict[str, float | int | None]] = {}
        for name, state in self._named.items():
            limiter = state.limiter
            out[name] = {
                "concurrency": state.limit.concurrency,
                "holders": limiter.borrowed if limiter is not None else None,
                "waiting": len(limiter.waiters) if limiter is not None else None,
                "rate": state.limit.rate,
            }
        return out


def gates_for(engine: Engine, task: Any, gate: _State | None) -> list[_State]:
    """The limits one attempt of ``task`` must pass, in a fixed order (no lock-order cycles)."""
    gates = []
    if gate is not None:
        gates.append(gate)
    if task.own_limit is not None:
        gates.append(engine.limits.for_task(task))
    for tag in sorted(task.tags):
        state = engine.limits.named(tag)
        if state is not None:
            gates.append(state)
    return gates


async def enter(gates: list[_State]) -> None:
    """Pass every gate, waiting as needed; all or none are held when it returns or raises."""
    passed: list[_State] = []
    try:
        for g in gates:
            await g.acquire()
            passed.append(g)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await leave(passed)
        raise


async def leave(gates: list[_State]) -> None:
    """Give every slot back; shielded, so a cancelled attempt still returns its slots.

    Every gate is released even if giving one back raises (plain asyncio
    cancellation goes through anyio's shields); the first error is raised after.
    """
    error: BaseException | None = None
    for g in reversed(gates):
        try:
            if g.owner is None:
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
