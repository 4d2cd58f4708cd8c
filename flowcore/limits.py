"""Concurrency and rate limits: per task, per flow run, and named limits shared by tag.

- ``@flowcore.task(concurrency=20)``: at most 20 runs of that task at once (per engine).
- ``@flowcore.flow(max_concurrency=100)``: at most 100 task runs of one flow run in flight.
- ``flowcore.limit("partner-api", 50, rate=100)``: a named limit, applied to every task
  tagged ``"partner-api"`` (``@flowcore.task(tags=["partner-api"])``) once registered
  (``Engine(limits=[...])``), or around any code with ``async with flowcore.limit(...)``.
  ``rate`` is a token bucket: ``rate`` acquisitions per second, bursts up to ``burst``.

Waiting is fair (first come, first served: anyio's limiter and lock are FIFO),
shows in the task run's history as a ``Pending`` entry naming the limit, and
happens before the attempt starts, so it never counts against the task's
``timeout``. A slot is held for one attempt and given back when it ends,
however it ends (error, timeout, cancellation).

These limits hold within one engine (one process); limits shared by several
processes through the store are planned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

from .clock import Clock
from .errors import ConfigurationError

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["Limit", "Limits", "RunGate", "TokenBucket", "limit"]

_EPSILON = 1e-9


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; ``acquire`` waits for one, in turn."""

    def __init__(self, rate: float, burst: int, clock: Clock) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._tokens = float(burst)
        self._last = clock.now()
        self._lock = anyio.Lock()  # FIFO: waiters are served in arrival order

    def _refill(self) -> None:
        now = self.clock.now()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def available(self) -> bool:
        self._refill()
        return self._tokens >= 1 - _EPSILON

    async def acquire(self) -> None:
        async with self._lock:
            self._refill()
            while self._tokens < 1 - _EPSILON:  # float dust must not mean "wait again"
                await self.clock.sleep((1 - self._tokens) / self.rate)
                self._refill()
            self._tokens = max(0.0, self._tokens - 1)


@dataclass(frozen=True, slots=True)
class Limit:
    """A named limit (see the module docstring). Also an async context manager."""

    name: str
    concurrency: int | None = None
    rate: float | None = None
    burst: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.name, str) or not self.name:
            problems.append(f"`name` must be a non-empty str, got {self.name!r}")
        if self.concurrency is not None and (
            not isinstance(self.concurrency, int)
            or isinstance(self.concurrency, bool)
            or self.concurrency < 1
        ):
            problems.append(f"`concurrency` must be an int >= 1, got {self.concurrency!r}")
        if self.rate is not None and (
            not isinstance(self.rate, int | float)
            or isinstance(self.rate, bool)
            or not math.isfinite(self.rate)
            or self.rate <= 0
        ):
            problems.append(
                f"`rate` must be a number of acquisitions per second > 0, got {self.rate!r}"
            )
        if self.burst is not None and (
            not isinstance(self.burst, int) or isinstance(self.burst, bool) or self.burst < 1
        ):
            problems.append(f"`burst` must be an int >= 1, got {self.burst!r}")
        if self.burst is not None and self.rate is None:
            problems.append("`burst` needs a `rate`")
        if self.concurrency is None and self.rate is None:
            problems.append("a limit needs `concurrency`, `rate`, or both")
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
            engine.limits.release(self.name)


def limit(
    name: str,
    concurrency: int | None = None,
    *,
    rate: float | None = None,
    burst: int | None = None,
) -> Limit:
    """A named limit: ``flowcore.limit("partner-api", 50, rate=100)``."""
    return Limit(
        name,
        concurrency,
        rate,
        burst if burst is not None or rate is None else max(1, math.ceil(rate)),
    )


class _State:
    __slots__ = ("bucket", "limit", "limiter")

    def __init__(self, spec: Limit, clock: Clock) -> None:
        self.limit = spec
        self.limiter = anyio.CapacityLimiter(spec.concurrency) if spec.concurrency else None
        self.bucket = (
            TokenBucket(spec.rate, spec.burst or 1, clock) if spec.rate is not None else None
        )

    def free(self) -> bool:
        if self.limiter is not None and self.limiter.available_tokens < 1:
            return False
        return self.bucket is None or self.bucket.available()

    async def acquire(self) -> None:
        if self.limiter is not None:
            await self.limiter.acquire()
        if self.bucket is not None:
            try:
                await self.bucket.acquire()
            except BaseException:
                if self.limiter is not None:
                    self.limiter.release()
                raise

    def release(self) -> None:
        if self.limiter is not None:
            self.limiter.release()


class RunGate(_State):
    """A flow run's ``max_concurrency``."""

    def __init__(self, max_concurrency: int, clock: Clock) -> None:
        super().__init__(Limit("flow run", max_concurrency), clock)


class Limits:
    """An engine's limits: named ones, and the per-task ones made on first use."""

    def __init__(self, engine: Engine, named: list[Limit]) -> None:
        self._clock = engine.clock
        self._named: dict[str, _State] = {}
        self._tasks: dict[object, _State] = {}
        for spec in named:
            self.register(spec)

    def register(self, spec: Limit) -> _State:
        state = self._named.get(spec.name)
        if state is None:
            state = self._named[spec.name] = _State(spec, self._clock)
        elif state.limit != spec:
            raise ConfigurationError(
                f"limit {spec.name!r} is already defined as {state.limit}; one name, one limit"
            )
        return state

    def named(self, name: str) -> _State | None:
        return self._named.get(name)

    def for_task(self, key: object, name: str, concurrency: int) -> _State:
        state = self._tasks.get(key)
        if state is None:
            spec = Limit(f"{name} (concurrency={concurrency})", concurrency)
            state = self._tasks[key] = _State(spec, self._clock)
        return state

    async def acquire(self, spec: Limit) -> None:
        await self.register(spec).acquire()

    def release(self, name: str) -> None:
        state = self._named.get(name)
        if state is not None:
            state.release()

    def statistics(self) -> dict[str, dict[str, float | int | None]]:
        out: dict[str, dict[str, float | int | None]] = {}
        for name, state in self._named.items():
            limiter = state.limiter
            out[name] = {
                "concurrency": state.limit.concurrency,
                "holders": limiter.borrowed_tokens if limiter is not None else None,
                "waiting": limiter.statistics().tasks_waiting if limiter is not None else None,
                "rate": state.limit.rate,
            }
        return out


def gates_for(engine: Engine, task: Any, gate: _State | None) -> list[_State]:
    """The limits one attempt of ``task`` must pass, in a fixed order (no lock-order cycles)."""
    gates = []
    if gate is not None:
        gates.append(gate)
    if task.concurrency is not None:
        gates.append(engine.limits.for_task(task, task.name, task.concurrency))
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
        leave(passed)
        raise


def leave(gates: list[_State]) -> None:
    for g in reversed(gates):
        g.release()
