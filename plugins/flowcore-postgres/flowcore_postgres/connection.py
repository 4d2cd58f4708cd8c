"""The store's connections to PostgreSQL, its transactions, and the errors it raises.

Two kinds of connection, each for a reason:

- a pool (asyncpg's) for reads, claims and the other calls readers and servers make,
  which may run concurrently;
- one connection of its own for the engine's batched writes (:meth:`Connection.write`):
  the engine writes one batch at a time, a batch must commit after the one before it,
  and a connection that stays the same keeps the batch statement prepared (no pool
  acquire, no parse: the batch costs one round trip).

Every connection has the store's schema as its search path, so statements name tables
bare.

Transactions run in an asyncio task of their own, which the caller's cancellation does
not reach (:func:`shielded`): a cancelled caller's write (a lease given back on
cancellation) still commits, and no connection is left mid-transaction by a cancel
arriving between two statements. A transaction that PostgreSQL aborts to break a
deadlock or a serialisation conflict (two servers claiming slots in one moment) is run
again, a few times, after a short jittered wait.

Errors come out as flowcore's: :class:`~flowcore.errors.StoreUnavailable` for a server
that cannot be reached, refuses the login or went away, naming the URL without its
password and what to check; :class:`~flowcore.errors.StoreError` for the rest.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, TypeVar, cast

import anyio
import asyncpg

from flowcore.errors import StoreError, StoreUnavailable
from flowcore.ids import recorded_text

from .url import StoreURL, quote_ident

__all__ = ["Connection", "shielded", "translate"]

_T = TypeVar("_T")

#: Seconds to wait for a connection to the server before saying it cannot be reached.
CONNECT_TIMEOUT: Final = 10.0
#: How many times a transaction aborted by a deadlock or a serialisation conflict is tried.
_TRIES: Final = 12
#: Errors that mean "try the transaction again": nothing was committed.
_RETRYABLE: Final = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
#: Errors that mean the server is out of reach (or the connection to it was lost).
_UNREACHABLE: Final = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)


#: Errors after which the writer's connection is not used again.
_BROKEN: Final = (*_UNREACHABLE, asyncpg.InterfaceError, asyncpg.InternalClientError)


def _recorded(exc: Exception, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """``args`` as recorded text, when ``exc`` is a text argument refused (lone
    surrogates, which asyncpg cannot encode; a NUL, which PostgreSQL's text cannot hold)
    and writing them as the recorder does changes something; else ``None`` (raise)."""
    unencodable = isinstance(exc, asyncpg.DataError) and isinstance(
        exc.__cause__, UnicodeEncodeError
    )
    if not (unencodable or isinstance(exc, asyncpg.CharacterNotInRepertoireError)):
        return None
    recorded: tuple[Any, ...] = recorded_text(args, nul=True)
    return None if recorded is args else recorded


def translate(exc: BaseException, location: str) -> StoreError:
    """The flowcore error for a failure talking to the server at ``location``, with the fix."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(
        exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
    ):
        return StoreUnavailable(
            f"the PostgreSQL server of {location} refused the login: {exc}. Check the user and "
            "password in the URL (or PGPASSWORD, ~/.pgpass), and that pg_hba.conf lets this "
            "host in"
        )
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return StoreUnavailable(
            f"the database in {location} does not exist on that server ({exc}); create it "
            "(`createdb NAME`, or CREATE DATABASE) or name an existing one in the URL"
        )
    if isinstance(exc, asyncpg.TooManyConnectionsError):
        return StoreUnavailable(
            f"the PostgreSQL server of {location} has no connection left ({exc}); raise its "
            "max_connections, or lower the store's pool_size"
        )
    if isinstance(exc, (*_UNREACHABLE, asyncpg.InternalClientError)) or (
        isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)
    ):
        what = str(exc) or type(exc).__name__
        return StoreUnavailable(
            f"cannot reach the PostgreSQL server of {location}: {what}. Check that it runs and "
            "that the host, port (or socket folder, ?host=/path) in the URL are right (try "
            "`pg_isready -d URL`); records not written yet are kept and written once it answers"
        )
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return StoreUnavailable(
            f"the PostgreSQL user of {location} lacks a privilege flowcore needs: {exc}. Grant "
            "it USAGE and CREATE on the store's schema (or on the database, to create it)"
        )
    return StoreError(f"the PostgreSQL store {location} failed: {type(exc).__name__}: {exc}")


async def shielded(coro: Coroutine[Any, Any, _T]) -> _T:
    """``await coro`` in a task of its own, which the caller's cancellation does not reach
    (anyio's shields cannot promise it: plain asyncio cancellation goes through them)."""
    task = asyncio.get_running_loop().create_task(coro)
    task.add_done_callback(_retrieve)
    return await asyncio.shield(task)


def _retrieve(task: asyncio.Task[Any]) -> None:
    # A write whose caller went away still ends; its error is the caller's, not a warning.
    if not task.cancelled():
        task.exception()


class Connection:
    """The pool, the writer's connection, and the ways to read and write through them."""

    def __init__(self, url: StoreURL, *, pool_size: int = 10) -> None:
        self.url = url
        self.location = url.location
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._writer: asyncpg.Connection | None = None
        self._write_order = asyncio.Lock()

    @property
    def is_open(self) -> bool:
        return self._pool is not None

    def settings(self) -> dict[str, str]:
        """Session settings of every connection: the schema as search path, a name for
        ``pg_stat_activity``, and no JIT (it costs milliseconds on short statements)."""
        return {
            "search_path": quote_ident(self.url.schema),
            "application_name": "flowcore",
            "jit": "off",
        }

    async def connect(self) -> asyncpg.Connection:
        """A new connection of the store's own (closed by the caller)."""
        try:
            conn: asyncpg.Connection = await asyncpg.connect(
                self.url.dsn, timeout=CONNECT_TIMEOUT, server_settings=self.settings()
            )
        except Exception as exc:
            raise translate(exc, self.location) from exc
        return conn

    async def open(self, prepare: Callable[[asyncpg.Connection], Awaitable[None]]) -> None:
        """Connect, run ``prepare(conn)`` (migrations) on a first connection, then make the
        pool and the writer's connection."""
        if self._pool is not None:
            return
        writer = await self.connect()
        try:
            await prepare(writer)
            try:
                pool = await asyncpg.create_pool(
                    self.url.dsn,
                    min_size=1,
                    max_size=self.pool_size,
                    timeout=CONNECT_TIMEOUT,
                    server_settings=self.settings(),
                )
            except Exception as exc:
                raise translate(exc, self.location) from exc
        except BaseException:
            with anyio.CancelScope(shield=True):
                await writer.close(timeout=5)
            raise
        self._pool, self._writer = pool, writer

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        writer, self._writer = self._writer, None
        with anyio.CancelScope(shield=True):
            if writer is not None:
                try:
                    await writer.close(timeout=5)
                except Exception:
                    writer.terminate()
            if pool is not None:
                try:
                    await asyncio.wait_for(pool.close(), 10)
                except Exception:
                    pool.terminate()

    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError(
                f"the store {self.location} is not open; use `async with store:` or open()"
            )
        return self._pool

    # -- reads -----------------------------------------------------------------------

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """The rows of a read. Text arguments with lone surrogates, which PostgreSQL
        cannot take, are looked up as they were recorded (escaped, as
        :func:`flowcore.ids.recorded_text` gives them), as the SQLite store does."""
        try:
            rows: list[asyncpg.Record] = await self.pool().fetch(sql, *args)
        except StoreError:
            raise
        except Exception as exc:
            if (recorded := _recorded(exc, args)) is not None:
                return await self.fetch(sql, *recorded)
            raise translate(exc, self.location) from exc
        return rows

    async def fetchval(self, sql: str, *args: Any) -> Any:
        try:
            return await self.pool().fetchval(sql, *args)
        except StoreError:
            raise
        except Exception as exc:
            if (recorded := _recorded(exc, args)) is not None:
                return await self.fetchval(sql, *recorded)
            raise translate(exc, self.location) from exc

    # -- writes ----------------------------------------------------------------------

    async def transaction(self, body: Callable[[asyncpg.Connection], Awaitable[_T]]) -> _T:
        """``body(conn)`` in a transaction on a pooled connection, shielded from the
        caller's cancellation, tried again when aborted by a deadlock."""
        pool = self.pool()

        async def run() -> _T:
            async with pool.acquire() as proxy:
                # The pool's proxy forwards everything to its connection.
                return await _retrying(cast(asyncpg.Connection, proxy), body)

        return await self._guard(run())

    async def execute(self, sql: str, *args: Any) -> str:
        """One statement in a transaction of its own (autocommit), shielded."""

        async def body(conn: asyncpg.Connection) -> str:
            status: str = await conn.execute(sql, *args)
            return status

        pool = self.pool()

        async def run() -> str:
            async with pool.acquire() as proxy:
                return await body(cast(asyncpg.Connection, proxy))

        return await self._guard(run())

    async def write(
        self,
        body: Callable[[asyncpg.Connection], Awaitable[_T]],
        *,
        transaction: bool = True,
    ) -> _T:
        """``body(conn)`` on the writer's connection, after every write called before it.

        ``transaction=False`` for a body that is one statement (autocommit: one round
        trip, where BEGIN and COMMIT would add two).
        """

        async def run() -> _T:
            async with self._write_order:
                conn = await self._writer_connection()
                try:
                    if transaction:
                        return await _retrying(conn, body)
                    return await _retrying_statement(conn, body)
                except _BROKEN:
                    # The connection may be in no state to go on (lost in the middle of a
                    # statement, asyncpg says "another operation is in progress" to every
                    # later one): the next write makes a new one.
                    if self._writer is conn:
                        self._writer = None
                        conn.terminate()
                    raise

        return await self._guard(run())

    async def _writer_connection(self) -> asyncpg.Connection:
        writer = self._writer
        if writer is None:
            self.pool()  # raises if the store is closed
            writer = self._writer = await self.connect()
        elif writer.is_closed():
            # Lost (the server restarted): a new one, as the pool would make.
            writer = self._writer = await self.connect()
        return writer

    async def _guard(self, coro: Coroutine[Any, Any, _T]) -> _T:
        try:
            return await shielded(coro)
        except StoreError:
            raise
        except asyncpg.DataError as exc:
            # A value PostgreSQL cannot hold (a NUL character in text): not a store failure.
            # As SQLite's UnicodeEncodeError, a ValueError, which the engine's writer answers
            # by making the batch recordable and writing it again (never retried as is).
            raise ValueError(f"PostgreSQL refused a value of the batch: {exc}") from exc
        except (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
            OSError,
            TimeoutError,
        ) as exc:
            raise translate(exc, self.location) from exc


async def _retrying(
    conn: asyncpg.Connection, body: Callable[[asyncpg.Connection], Awaitable[_T]]
) -> _T:
    for tries in range(1, _TRIES + 1):
        try:
            async with conn.transaction():
                return await body(conn)
        except _RETRYABLE:
            if tries == _TRIES:
                raise
            await asyncio.sleep(_backoff(tries))
    raise AssertionError("unreachable")


async def _retrying_statement(
    conn: asyncpg.Connection, body: Callable[[asyncpg.Connection], Awaitable[_T]]
) -> _T:
    for tries in range(1, _TRIES + 1):
        try:
            return await body(conn)
        except _RETRYABLE:
            if tries == _TRIES:
                raise
            await asyncio.sleep(_backoff(tries))
    raise AssertionError("unreachable")


def _backoff(tries: int) -> float:
    """1 ms doubling to 50 ms, jittered so that two retrying writers do not meet again."""
    delay: float = min(0.001 * 2 ** min(tries, 10), 0.05)
    return delay * (0.5 + random.random())
