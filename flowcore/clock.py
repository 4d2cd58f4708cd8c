"""The engine's clock, used for retry backoff waits.

Backoff goes through a clock object rather than ``anyio.sleep`` so tests can
swap in :class:`flowcore.testing.FakeClock` and check a retry schedule of
minutes in microseconds, without sleeping.
"""

from __future__ import annotations

import time

import anyio

__all__ = ["Clock", "SystemClock"]


class Clock:
    """Interface: ``now()`` in monotonic seconds and ``await sleep(seconds)``."""

    def now(self) -> float:
        raise NotImplementedError

    async def sleep(self, seconds: float) -> None:
        raise NotImplementedError


class SystemClock(Clock):
    """Real time: ``time.monotonic`` and ``anyio.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)
