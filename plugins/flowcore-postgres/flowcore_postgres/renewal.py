"""Renewing leases of shared limits from a thread, without the engine's event loop.

An engine renews its leases every 10 s from a thread of its own (``engine.leases``), so
that an event loop blocked by sync code or a long CPU-bound step keeps its slots: were
they renewed on the loop, a loop blocked past a lease's 30 s would lose them to other
processes while still using them. A store offers this as ``renew_leases_blocking``;
here it is an object the renewing thread calls, holding an event loop and one
connection of that thread's own (asyncpg is asyncio-only), made at the first call and
closed by ``close()``, which the thread calls when it ends.
"""

from __future__ import annotations

import asyncio

import asyncpg

__all__ = ["BlockingRenewal"]

#: Seconds one renewal may take before it is given up (the next one comes 10 s later).
_TIMEOUT = 10.0


class BlockingRenewal:
    """``renewal(holder, expires)``: ``renew_leases`` made from the calling thread."""

    def __init__(self, dsn: str, settings: dict[str, str]) -> None:
        self._dsn = dsn
        self._settings = dict(settings)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: asyncpg.Connection | None = None

    def __call__(self, holder: str, expires: float) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.new_event_loop()
        loop.run_until_complete(asyncio.wait_for(self._renew(holder, expires), _TIMEOUT))

    async def _renew(self, holder: str, expires: float) -> None:
        conn = self._conn
        if conn is None or conn.is_closed():
            conn = self._conn = await asyncpg.connect(
                self._dsn, timeout=_TIMEOUT, server_settings=self._settings
            )
        await conn.execute(
            "UPDATE limit_leases SET expires = $1 WHERE holder = $2", expires, holder
        )

    def close(self) -> None:
        loop, self._loop = self._loop, None
        conn, self._conn = self._conn, None
        if loop is None:
            return
        try:
            if conn is not None and not conn.is_closed():
                loop.run_until_complete(asyncio.wait_for(conn.close(), _TIMEOUT))
        except Exception:
            if conn is not None:
                conn.terminate()
        finally:
            loop.close()
