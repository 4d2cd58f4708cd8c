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
    """Interface: ``now()`` in monotonic seconds, ``time()`` wall seconds, ``await sleep(s)``."""

    def now(self) -> float:
        raise NotImplementedError

    def time(self) -> float:
        """Wall-clock seconds, comparable between processes (shared rate limits use it)."""
        return time.time()

    async def sleep(self, seconds: float) -> None:
        raise NotImplementedError


class SystemClock(Clock):
    """Real time: ``time.monotonic`` and ``anyio.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)
