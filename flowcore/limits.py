"""Concurrency and rate limits, as values: per task, per flow run, and named limits.

- ``@flowcore.task(concurrency=20)``: at most 20 runs of that task at once (per engine).
- ``@flowcore.flow(concurrency=100)``: at most 100 task runs of one flow run in flight.
- ``flowcore.limit("partner-api", 50, rate=100)``: a named limit, applied to every task
  tagged ``"partner-api"`` (``@flowcore.task(tags=["partner-api"])``) once registered
  (``Engine(limits=[...])``), or around any code with ``async with flowcore.limit(...)``.
  ``rate`` is a token bucket: ``rate`` acquisitions per second, bursts up to ``burst``
  (default: a second's worth).

This module holds the specification only; the engine keeps the live state
(slots, buckets, leases) in :mod:`flowcore.engine.gates`. Waiting is fair
(first come, first served), shows in the task run's history as a ``Pending``
entry naming the limit, and happens before the attempt starts, so it never
counts against the task's ``timeout``. A slot is held for one attempt and
given back when it ends, however it ends.

Limits hold within one engine unless ``shared=True``: then both the
concurrency and the rate hold across every process sharing the store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import TracebackType

import anyio

from ._current import current_limits
from ._validate import count, is_number
from .errors import ConfigurationError
from .ids import safe_text

__all__ = ["Limit", "limit", "limit_problems", "task_limit"]


@dataclass(frozen=True, slots=True)
class Limit:
    """A named limit (see the module docstring). Also an async context manager.

    ``burst`` defaults to a second's worth of ``rate`` (at least 1), so
    ``Limit("api", rate=10)`` and ``flowcore.limit("api", rate=10)`` are the same
    limit: 10 starts a second, up to 10 at once after a quiet spell.

    >>> flowcore.Limit("api", rate=10) == flowcore.limit("api", rate=10)
    True
    >>> flowcore.limit("api", rate=2.5).burst
    3
    """

    name: str
    concurrency: int | None = None
    rate: float | None = None
    burst: int | None = None
    #: Hold the concurrency and the rate across every process sharing the store.
    shared: bool = False

    def __post_init__(self) -> None:
        problems = limit_problems(self.name, self.concurrency, self.rate, self.burst)
        if problems:
            raise ConfigurationError(f"invalid limit {self.name!r}: " + "; ".join(problems))
        if self.rate is not None and self.burst is None:
            object.__setattr__(self, "burst", max(1, math.ceil(self.rate)))

    async def __aenter__(self) -> Limit:
        limits = current_limits.get()
        if limits is None:
            raise ConfigurationError(
                f"`async with flowcore.limit({self.name!r}, ...)` needs an engine: use it inside "
                "a flow or task, or inside `async with flowcore.Engine():`"
            )
        await limits.acquire(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        limits = current_limits.get()
        if limits is not None:
            with anyio.CancelScope(shield=True):
                await limits.release(self.name)


def limit(
    name: str,
    concurrency: int | None = None,
    *,
    rate: float | None = None,
    burst: int | None = None,
    shared: bool = False,
) -> Limit:
    """A named limit: ``flowcore.limit("partner-api", 50, rate=100)``; the same as :class:`Limit`.

    ``shared=True`` holds the concurrency and the rate across every process
    using the same store: each slot is a lease in the store that expires unless
    its engine renews it, so a process that dies does not keep its slots, and
    each use of the rate reserves its turn in the store.
    """
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
    elif safe_text(name) is not name:
        # A shared limit's name is a key in the store, which cannot hold lone surrogates.
        problems.append(f"`name` must be text UTF-8 can encode (no lone surrogates), got {name!r}")
    if problem := count("concurrency", concurrency):
        problems.append(problem)
    if rate is not None and (not is_number(rate) or rate <= 0):  # type: ignore[operator]
        problems.append(f"`rate` must be a number of acquisitions per second > 0, got {rate!r}")
    if problem := count("burst", burst):
        problems.append(problem)
    if burst is not None and rate is None:
        problems.append("`burst` needs a `rate`")
    if needs_one and concurrency is None and rate is None:
        problems.append("a limit needs `concurrency`, `rate`, or both")
    return problems


def task_limit(
    task_name: str, concurrency: int | None, rate: float | None, burst: int | None
) -> Limit:
    """The per-task limit of ``@task(concurrency=..., rate=..., burst=...)``, named after it."""
    parts = []
    if concurrency is not None:
        parts.append(f"concurrency={concurrency}")
    if rate is not None:
        parts.append(f"rate={rate:g}/s")
    return Limit(f"{task_name} ({', '.join(parts)})", concurrency, rate, burst)
