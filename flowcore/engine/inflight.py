"""Cache keys being computed right now, so equal calls wait instead of computing twice."""

from __future__ import annotations

import anyio

from ..records import CacheEntry, TaskRunRecord

__all__ = ["InFlight"]


class InFlight:
    """A cache key being computed right now: later calls with the same key wait for it."""

    __slots__ = ("_event", "finished", "key", "source")

    def __init__(self, key: str) -> None:
        self.key = key
        self.finished = False
        self._event: anyio.Event | None = None  # made only if someone waits: most never do
        self.source: TaskRunRecord | CacheEntry | None = None  # set when a value is found

    async def wait(self) -> None:
        if not self.finished:
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()

    def succeed(self, source: TaskRunRecord | CacheEntry) -> None:
        self.source = source

    def release(self, table: dict[str, InFlight]) -> None:
        """The computation ended (however it ended): take it out of ``table``, wake waiters."""
        if table.get(self.key) is self:
            del table[self.key]
        self.finished = True
        if self._event is not None:
            self._event.set()
