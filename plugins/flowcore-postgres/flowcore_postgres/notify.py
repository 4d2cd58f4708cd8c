"""Change notifications: ``LISTEN``/``NOTIFY`` behind ``store.changes()``.

``flowcore serve`` asks ``store.changes()`` every 150 ms for a token that moves when
another process commits something a server acts on (a trigger, a pause, a claim, a
schedule, a materialised asset, a run that ended). SQLite answers from a counter in
its file; here the writers of those things ``NOTIFY`` the store's channel in the
transaction that commits them (PostgreSQL delivers a notification only once its
transaction commits, and never one of a transaction rolled back), and each handle keeps
one connection that ``LISTEN``\\s and counts what arrives. Nothing polls a table.

The batches of task runs the engine writes every 20 ms do not notify: a ``NOTIFY``
takes a database-wide lock at commit, which would serialise every writer's commits,
and no server waits for a task run. A batch notifies when it ends a flow run or
carries asset events.

``changes()`` makes one round trip on the listening connection before it reads the
count (``SELECT 1``: no table read, never waits for a writer). The server flushes
notifications committed before that query to the connection ahead of the query's
answer, so a commit made before ``changes()`` was called is always counted, as
SQLite's ``data_version`` guarantees; without it the token would lag by a turn of the
event loop, or more.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import asyncpg

__all__ = ["Listener", "channel_of"]


def channel_of(schema: str) -> str:
    """The channel of the store in ``schema`` (short: channel names are identifiers)."""
    return "flowcore_" + hashlib.sha256(schema.encode()).hexdigest()[:16]


class Listener:
    """One connection listening on the store's channel, and the count of what it heard."""

    def __init__(self, channel: str, connect: Callable[[], Awaitable[asyncpg.Connection]]) -> None:
        self.channel = channel
        self._connect = connect
        self._conn: asyncpg.Connection | None = None
        self._heard = 0
        self._lock = asyncio.Lock()  # one query at a time on the connection

    def _on_notify(self, *args: Any) -> None:
        self._heard += 1

    async def _listening(self) -> asyncpg.Connection:
        conn = self._conn
        if conn is None or conn.is_closed():
            conn = await self._connect()
            try:
                await conn.add_listener(self.channel, self._on_notify)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await conn.close(timeout=5)
                raise
            if self._conn is not None:
                # Reconnected: whatever was sent meanwhile was missed, so say "changed".
                self._heard += 1
            self._conn = conn
        return conn

    async def open(self) -> None:
        async with self._lock:
            await self._listening()

    async def changes(self) -> int:
        """The count of notifications heard, every commit before this call included."""
        async with self._lock:
            conn = await self._listening()
            await conn.execute("SELECT 1")
        return self._heard

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with anyio.CancelScope(shield=True):
                try:
                    await conn.close(timeout=5)
                except Exception:
                    conn.terminate()
