"""The SQLite store's connections and write machinery.

Three connections to one file, each for a reason:

- aiosqlite's connection, on its own thread: reads, and writes that are big or
  must wait for a lock, so the event loop never blocks on them;
- a plain connection used on the event loop's thread for small writes when the
  database is free (:meth:`Connection.write`): the round trip to aiosqlite's
  thread costs more than the write itself;
- a read-only connection for cache lookups on the hot path
  (:meth:`Connection.read_nowait`), sharing one read snapshot per loop turn;
- a read-only connection that only asks ``PRAGMA data_version``
  (:meth:`Connection.data_version`): a change token for ``flowcore serve``, which
  must see every commit made by any other connection, this store's own included.

Every write is one ``BEGIN IMMEDIATE ... COMMIT`` made in a single call, so no
transaction is ever left open half-way, and a locked database is waited out
with short jittered retries for ``lock_timeout`` seconds before an error.

Before each write the file at the path is checked to be the one that was opened
(same device and inode, one ``stat``: about a microsecond a write): SQLite goes
on writing to a database file that was deleted or replaced, and every record
written after that would be lost without a word.

Run records hold parameters and inputs in plain text, so what flowcore creates is
private to its user: the folder 0700, the database (and so its ``-wal`` and
``-shm`` files, which SQLite creates with the database's mode) 0600. A folder or
a database that already exists keeps the mode it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import anyio

from ...errors import StoreCorrupted, StoreError, StoreUnavailable
from ...ids import recorded_text

__all__ = [
    "Connection",
    "atomically",
    "check_parent",
    "is_locked",
    "make_private_folder",
    "on_thread",
    "translate",
]

_T = TypeVar("_T")


def is_locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc)
    )


def is_corrupt(exc: BaseException) -> bool:
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    text = str(exc)
    return "not a database" in text or "malformed" in text or "corrupt" in text


def translate(exc: sqlite3.DatabaseError, path: Path, lock_timeout: float) -> StoreError:
    """The flowcore error for an SQLite error on the database at ``path``, naming the fix."""
    if is_corrupt(exc):
        return StoreCorrupted(
            f"{path} is not a readable flowcore database ({exc}). flowcore has not "
            "changed it. Move it aside (e.g. `mv flowcore.db flowcore.db.bad`) to start a "
            "new one, or try `sqlite3 flowcore.db .recover` to salvage its records"
        )
    if is_locked(exc):
        return StoreUnavailable(
            f"{path} stayed locked by another process for more than "
            f"{lock_timeout:g} s; find the process holding it (`fuser {path}`) "
            "or raise `lock_timeout`"
        )
    if isinstance(exc, sqlite3.OperationalError) and (
        "readonly" in str(exc) or "unable to open" in str(exc) or "disk" in str(exc)
    ):
        return StoreUnavailable(
            f"cannot write the flowcore database {path}: {exc}; check permissions "
            "and free space, or set FLOWCORE_HOME to a writable folder"
        )
    return StoreError(f"flowcore database {path} failed: {exc}")


class Connection:
    """The connections to one database file, and the ways to read and write it."""

    def __init__(self, path: Path, *, synchronous: str, lock_timeout: float) -> None:
        self.path = path
        self.synchronous = synchronous
        self.lock_timeout = lock_timeout
        self._db: aiosqlite.Connection | None = None
        self._reading = False  # the cache reader holds a read snapshot (read_nowait)
        self._reader: sqlite3.Connection | None = None
        #: Asks only ``PRAGMA data_version`` (see data_version), never in a transaction.
        self._watcher: sqlite3.Connection | None = None
        self._version = 0  # the last data_version read, kept for a busy moment
        #: The connection for small writes made on the event loop's thread (see
        #: _write_here); None with synchronous=FULL, whose fsync must not block the loop.
        self._here: sqlite3.Connection | None = None
        self._thread_writes = 0  # write transactions handed to aiosqlite's thread, not ended
        self._write_order = asyncio.Lock()
        self._here_rows = 0  # rows written here since the last checkpoint was asked for
        self._checkpoint: asyncio.Task[Any] | None = None
        #: (device, inode) of the database file opened: each write checks the path still
        #: names it (_check_file).
        self._file: tuple[int, int] | None = None

    @property
    def is_open(self) -> bool:
        return self._db is not None

    async def open(self, prepare: Callable[[aiosqlite.Connection], Any]) -> None:
        """Connect, run ``prepare(db)`` (checks and migrations), then make the others."""
        if self._db is not None:
            return
        check_parent(self.path)
        _create_private(self.path)
        try:
            db = await aiosqlite.connect(self.path, isolation_level=None, timeout=5.0)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(
                f"cannot open the flowcore database {self.path}: {exc}; check that the folder "
                "exists and is writable, or set FLOWCORE_HOME to a folder that is"
            ) from exc
        try:
            await prepare(db)
            # From now on a busy database is waited out by our own retries (short,
            # jittered sleeps), not by SQLite's busy handler, whose sleeps grow to
            # 100 ms: under contention a lock changes hands every millisecond or so.
            await db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            if self.synchronous == "NORMAL":
                self._here = self._connect_here()
            self._file = _identity(os.stat(self.path))
        except BaseException:
            here, self._here = self._here, None
            if here is not None:
                here.close()
            await db.close()
            raise
        self._db = db

    def _connect_here(self) -> sqlite3.Connection:
        try:
            here = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                # Never wait for a lock on the loop's thread: a busy database is
                # waited out on aiosqlite's thread instead. No automatic checkpoints
                # either (they fsync): _write_here asks for them on that thread.
                here.execute("PRAGMA busy_timeout = 0")
                here.execute("PRAGMA synchronous = NORMAL")
                here.execute("PRAGMA wal_autocheckpoint = 0")
            except BaseException:
                here.close()
                raise
        except sqlite3.DatabaseError as exc:
            raise self._translate(exc) from exc
        return here

    async def close(self) -> None:
        self.end_read()
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.close()
        checkpoint, self._checkpoint = self._checkpoint, None
        if checkpoint is not None:
            with anyio.CancelScope(shield=True):
                await asyncio.wait([checkpoint])
        here, self._here = self._here, None
        if here is not None:
            here.close()  # before aiosqlite's: the last connection to close checkpoints
        self._file = None
        db, self._db = self._db, None
        if db is not None:
            # Closing must finish even if the caller is being cancelled, or the
            # connection's thread stays alive and can hang the interpreter at exit.
            with anyio.CancelScope(shield=True):
                await db.close()

    def _translate(self, exc: sqlite3.DatabaseError) -> StoreError:
        return translate(exc, self.path, self.lock_timeout)

    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError(
                f"the store {self.path} is not open; use `async with store:` or open()"
            )
        return self._db

    # -- reads -----------------------------------------------------------------------

    async def fetch(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        return await self.call(_fetch_all, sql, tuple(params))

    async def call(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(connection, *args)`` on the connection's thread, in one round trip,
        retried while another process holds the lock; errors become StoreErrors.

        Text arguments with lone surrogates, which SQLite cannot take, are looked up
        as they were recorded (escaped: :func:`flowcore.ids.recorded_text`)."""
        db = self._conn()
        deadline = time.monotonic() + self.lock_timeout
        tries = 0
        while True:
            try:
                return await on_thread(db, fn, *args)
            except UnicodeEncodeError:
                recorded = recorded_text(args)
                if recorded is args:
                    raise
                args = recorded
            except sqlite3.DatabaseError as exc:
                if is_locked(exc) and time.monotonic() < deadline:
                    tries += 1
                    await anyio.sleep(_lock_backoff(tries))
                    continue
                raise self._translate(exc) from exc

    def read_nowait(self, sql: str, params: tuple[Any, ...]) -> Any:
        """The first row of a read made synchronously on the calling thread (or ``None``).

        A primary-key read of a local WAL database takes a few microseconds and
        never waits for the writer, while a trip through aiosqlite's thread costs
        tens: for cache lookups on the hot path, blocking briefly is cheaper.
        """
        if self._db is None:
            raise StoreError(f"the store {self.path} is not open; use `async with store:`")
        reader = self._reader
        try:
            if reader is None:
                reader = self._reader = self._connect_reader()
            if not self._reading and (loop := _running_loop()) is not None:
                # One read snapshot for every lookup until the event loop's next turn:
                # starting a read transaction (file locks, the WAL index) is most of
                # the cost of a lookup made on its own. Lookups that run together
                # (a gather of cached calls) share it. It ends at the loop's next turn,
                # and whenever this store commits a write, so this process's own new
                # entries are seen; another process's, a turn later at most.
                reader.execute("BEGIN")
                self._reading = True
                loop.call_soon(self.end_read)
            return reader.execute(sql, params).fetchone()
        except sqlite3.DatabaseError as exc:
            self.end_read()
            raise self._translate(exc) from exc

    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version`` on a connection of its own, read here at once.

        It changes when another connection commits to the file: another process, and
        also this store's own writes, made on its other connections. Never in a
        transaction, so each read sees the latest commit; in WAL mode it reads the
        WAL index and takes no lock a writer holds (about 3 µs, on the calling thread).
        A database busy at that instant (a checkpoint restarting the WAL) gives the
        last value read: the next poll sees the change.
        """
        if self._db is None:
            raise StoreError(f"the store {self.path} is not open; use `async with store:`")
        try:
            watcher = self._watcher
            if watcher is None:
                watcher = self._watcher = self._connect_reader()
                watcher.execute("PRAGMA busy_timeout = 0")
            row = watcher.execute("PRAGMA data_version").fetchone()
        except sqlite3.DatabaseError as exc:
            if is_locked(exc):
                return self._version
            raise self._translate(exc) from exc
        self._version = int(row[0])
        return self._version

    def _connect_reader(self) -> sqlite3.Connection:
        # mode=rw: a database deleted while the engine runs is an error here, not a
        # new empty file made in its place.
        uri = f"{self.path.resolve().as_uri()}?mode=rw"
        try:
            reader = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        except sqlite3.OperationalError as exc:
            if not self.path.exists():
                raise self._gone("is gone (deleted or moved)") from exc
            raise
        reader.execute("PRAGMA query_only = 1")
        reader.execute("PRAGMA busy_timeout = 1000")
        return reader

    def end_read(self) -> None:
        if self._reading:
            self._reading = False
            reader = self._reader
            if reader is not None and reader.in_transaction:
                try:
                    reader.execute("COMMIT")
                except sqlite3.Error:  # a read-only transaction: nothing to lose
                    with contextlib.suppress(sqlite3.Error):
                        reader.execute("ROLLBACK")

    # -- writes ----------------------------------------------------------------------

    async def transaction(self, batches: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        """Run ``executemany`` batches in one write transaction, waiting out locks."""

        def run(db: sqlite3.Connection) -> None:
            for sql, rows in batches:
                db.executemany(sql, rows)

        await self.write(run, sum(len(rows) for _, rows in batches))

    async def write(self, body: Callable[[sqlite3.Connection], _T], rows: int) -> _T:
        """``body`` inside ``BEGIN IMMEDIATE ... COMMIT``, retried while another process
        holds the lock, rolled back on any error. ``rows``: about how many rows it writes.

        A small write is made at once on the event loop's thread (:meth:`_write_here`)
        when the database is free. Otherwise the whole transaction is one call on
        aiosqlite's thread (:func:`atomically`): each aiosqlite call is a round trip
        to that thread (120-250 µs on a busy 2-core machine), and BEGIN, the
        statements and COMMIT as separate calls made an empty flow run's last write
        cost about 1 ms. Being one call also means no transaction is ever left open
        half-way: once handed to the thread it commits or rolls back, whatever
        happens to the caller.

        On the thread it runs in a task of its own, which the caller's cancellation
        does not reach, so that a cancelled caller's write (giving back a lease) is
        not dropped while it waits out a lock. anyio's shields cannot promise this:
        plain asyncio cancellation (a cancelled ``gather``) goes through them.
        """
        self._check_file()
        if rows <= _HERE_MAX_ROWS and self._here is not None and not self._thread_writes:
            try:
                return self._write_here(body, rows)
            except _Locked:
                pass  # another process is writing: wait for it on the thread
        self._thread_writes += 1
        task = asyncio.get_running_loop().create_task(self._write_on_thread(body))
        task.add_done_callback(self._thread_write_ended)
        return await asyncio.shield(task)

    async def _write_on_thread(self, body: Callable[[sqlite3.Connection], _T]) -> _T:
        # In turn (an asyncio lock is first come, first served): a write waiting out
        # a lock sleeps between tries, and a later write must not commit meanwhile.
        async with self._write_order:
            return await self.call(atomically, body)

    def _check_file(self) -> None:
        """Raise :class:`StoreUnavailable` if the path no longer names the database file
        that was opened (deleted, or replaced by another file): SQLite would go on
        writing to the open file, and every record written would be lost."""
        opened = self._file
        if opened is None:
            return
        try:
            now = _identity(os.stat(self.path))
        except FileNotFoundError:
            raise self._gone("was deleted") from None
        except OSError:
            return  # cannot tell (a permission change): let the write itself report it
        if now != opened:
            raise self._gone("was replaced by another file")

    def _gone(self, what: str) -> StoreUnavailable:
        return StoreUnavailable(
            f"the flowcore database {self.path} {what} while this engine had it open, so "
            "nothing more can be recorded in it (what SQLite wrote to the old file would "
            "be lost). The records not written yet are kept until the engine closes; "
            "restart the engine (or reopen the store) to start a new database there, or "
            "point FLOWCORE_HOME at the folder where the database now is"
        )

    def _write_here(self, body: Callable[[sqlite3.Connection], _T], rows: int) -> _T:
        """``body`` in a write transaction on this thread; raises ``_Locked`` if the
        database is locked (the caller then waits for it on aiosqlite's thread).

        Why: a flow run's last write is a durability point its caller waits for, and
        for a small run the round trip to aiosqlite's thread and back (two thread
        wake-ups, 120-250 µs) cost more than the write itself (a few µs a row). So
        writes of up to ``_HERE_MAX_ROWS`` rows are made on the event loop's thread,
        blocking it about as long as running those task runs did, on a connection
        that never waits for a lock (``busy_timeout = 0``): a database held by another
        process sends the write to the thread at once. Only while no write of ours
        is on that thread, so writes are committed in the order they were made.
        """
        here = self._here
        assert here is not None
        try:
            result = atomically(here, body)
        except sqlite3.DatabaseError as exc:
            if is_locked(exc):
                raise _Locked from exc
            raise self._translate(exc) from exc
        self._here_rows += rows
        if self._here_rows >= _CHECKPOINT_ROWS and self._checkpoint is None:
            # This connection does not checkpoint on its own (a checkpoint fsyncs);
            # without one the WAL would grow for as long as the writes stay small.
            self._here_rows = 0
            self._checkpoint = asyncio.get_running_loop().create_task(self._checkpoint_wal())
        return result

    async def _checkpoint_wal(self) -> None:
        try:
            await self.fetch("PRAGMA wal_checkpoint(PASSIVE)")
        except StoreError as exc:  # the next one will try again; nothing is lost
            logging.getLogger("flowcore").debug("WAL checkpoint failed: %s", exc)
        finally:
            self._checkpoint = None

    def _thread_write_ended(self, task: asyncio.Task[Any]) -> None:
        self._thread_writes -= 1
        _retrieve(task)


class _Locked(Exception):
    """The database is locked by another connection (a write on the loop's thread)."""


async def on_thread(db: aiosqlite.Connection, fn: Callable[..., _T], *args: Any) -> _T:
    """Call ``fn(sqlite3_connection, *args)`` on the connection's thread, in one round trip.

    aiosqlite has no public way to run several statements in one call; its own
    public methods are built on ``_execute``, which queues a function for the
    connection's thread, so that is what flowcore uses (see ``Connection.write``
    for why it matters).
    """
    result: _T = await db._execute(_Once(fn, (db._conn, *args)))  # type: ignore[no-untyped-call]
    return result


class _Once:
    """``fn(*args)``, letting go of both once called.

    aiosqlite's thread keeps the last function it ran until it is handed the next
    one: holding a write's rows would keep the last batch (thousands of rows, and
    their records' data) alive while the store sits idle.
    """

    __slots__ = ("args", "fn")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn: Callable[..., Any] | None = fn
        self.args: tuple[Any, ...] = args

    def __call__(self) -> Any:
        fn, args = self.fn, self.args
        self.fn, self.args = None, ()
        assert fn is not None, "called twice"
        return fn(*args)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # called from a thread: read on its own, nothing to end it
        return None


def _fetch_all(db: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> list[Any]:
    return db.execute(sql, params).fetchall()


def atomically(db: sqlite3.Connection, body: Callable[[sqlite3.Connection], _T]) -> _T:
    """``body`` in a write transaction on ``db``, committed or rolled back (on whichever
    thread owns ``db``: aiosqlite's, or the event loop's for small writes; a schema
    upgrade's too)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = body(db)
        db.execute("COMMIT")
    except BaseException:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the failed statement may have rolled back already
        raise
    return result


def _retrieve(task: asyncio.Task[Any]) -> None:
    # A write whose caller was cancelled still ends; its error is not worth a warning
    # about an unretrieved exception (the caller has gone, the records stay queued).
    if not task.cancelled():
        task.exception()


#: SQLite's own wait for a lock once a store is open; longer waits are our retries.
_BUSY_TIMEOUT_MS = 2
#: Writes of at most this many rows are made on the event loop's thread (_write_here):
#: a few µs a row, so the loop is blocked for a millisecond or two at most.
_HERE_MAX_ROWS = 256
#: Rows written on the loop's thread after which a WAL checkpoint is asked for (on
#: aiosqlite's thread): a few MB of WAL at most between checkpoints.
_CHECKPOINT_ROWS = 5_000


def _lock_backoff(tries: int) -> float:
    """Seconds to wait before try ``tries + 1`` at a locked database: 0.5 ms doubling
    to 20 ms, jittered so waiting processes do not retry in step."""
    delay: float = min(0.0005 * 2 ** min(tries, 10), 0.02)
    return delay * (0.5 + random.random())


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def make_private_folder(folder: Path) -> None:
    """Create ``folder`` (and missing parents, as ``mkdir -p`` does) if it is missing:
    the folder itself readable by its user only (0700), since what flowcore keeps in it
    holds parameters and inputs. A folder that exists keeps its mode."""
    if folder.is_dir():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.mkdir(mode=0o700, exist_ok=True)


def _create_private(path: Path) -> None:
    """Create the database file empty, readable and writable by its user only, if it
    does not exist: SQLite would create it 0644, and its ``-wal`` and ``-shm`` files
    take the database's mode. An empty file is a new database to SQLite."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError:
        return  # let SQLite's own open report the problem, in its words
    os.close(fd)


def check_parent(path: Path) -> None:
    folder = path.parent
    try:
        make_private_folder(folder)
    except OSError as exc:
        raise StoreUnavailable(
            f"cannot create the folder {folder} for the flowcore database: {exc.strerror}; "
            "set FLOWCORE_HOME to a writable folder"
        ) from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StoreUnavailable(
            f"the folder {folder} is not writable, so flowcore cannot keep its database "
            "there; set FLOWCORE_HOME to a writable folder"
        )
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise StoreUnavailable(
            f"the flowcore database {path} is not readable and writable by this user; fix its "
            "permissions or set FLOWCORE_HOME to another folder"
        )
