"""Test helpers that are part of the public API: a fake clock and a quick engine.

``FakeClock`` makes retry backoff instant and observable::

    clock = FakeClock()
    async with flowcore.Engine("memory", clock=clock, seed=0):
        await my_flow()
    assert clock.sleeps == [0.2, 0.4]   # the backoff schedule, without waiting it out
"""

from __future__ import annotations

import anyio.lowlevel

from ..clock import Clock
from .store_suite import STORE_CASES, check_store

__all__ = ["STORE_CASES", "FakeClock", "check_store"]


class FakeClock(Clock):
    """A clock whose ``sleep`` returns at once and moves its time forward (time-skipping).

    ``sleeps`` lists every requested wait, in order, so a test can assert a
    retry schedule exactly.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` without sleeping."""
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self._now += seconds
        await anyio.lowlevel.checkpoint()
