"""Renewing an SQLite store's leases from a thread with no event loop.

A shared limit's leases are renewed by a thread of the engine's own (see
``flowcore.engine.leases``), so a loop blocked by sync code keeps its slots. That
thread cannot use the store's connections (aiosqlite's belongs to its own thread,
the others to the loop's), so it opens one of its own, in the thread, at its first
renewal; SQLite's busy handler waits out another process's write.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = ["BlockingRenewal"]


class BlockingRenewal:
    """``renew_leases`` of an SQLite store, callable from one thread with no event loop:
    every lease (and waiting row) of ``holder`` is made to expire at ``expires``.
    Whoever made it closes it."""

    def __init__(self, path: Path, lock_timeout: float) -> None:
        self.path = path
        self.lock_timeout = lock_timeout
        self._db: sqlite3.Connection | None = None

    def __call__(self, holder: str, expires: float) -> None:
        db = self._db
        if db is None:
            # Made in the thread that uses it (an SQLite connection stays in its thread).
            db = sqlite3.connect(self.path, timeout=self.lock_timeout, isolation_level=None)
            db.execute("PRAGMA synchronous = NORMAL")
            self._db = db
        db.execute("UPDATE limit_leases SET expires = ? WHERE holder = ?", (expires, holder))

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()
