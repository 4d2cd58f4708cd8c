"""The engine's clock: wall time, monotonic time, and sleeps.

Retry backoff waits, rate limits, cache expiry, heartbeats and lease expiry go
through a clock object rather than ``time`` and ``anyio.sleep``, so tests can
swap in :class:`flowcore.testing.FakeClock` and check a retry schedule of
minutes, or an entry that expires in an hour, in microseconds, without sleeping.
(Timeouts are anyio's cancel scopes, on the event loop's clock: tests move it
with trio's ``MockClock``.)
"""

from __future__ import annotations

import time
from time import monotonic as _monotonic
from time import time as _wall

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
    """Real time: ``time.time``, ``time.monotonic`` and ``anyio.sleep``.

    ``time`` and ``now`` are the builtins themselves: the hot path reads the clock
    without a Python call.
    """

    now = staticmethod(_monotonic)
    time = staticmethod(_wall)

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)
