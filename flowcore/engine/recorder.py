"""The write-behind recorder: the one writer between the engine and the store.

Why it exists: one SQLite round trip per state change costs 45–300 µs, while a
row in an ``executemany`` batch costs 2–3 µs. So the engine only marks records
as changed (a dict assignment on the hot path) and this writer flushes every
changed record, once, in one transaction, every ``flush_interval`` seconds, as
soon as ``max_batch`` records are waiting, and whenever a run ends.

Lines of run logs are queued as spans are (a deque: sync tasks log from worker
threads) and written with the same batch. Asset events (materialisations, check
results, stale marks) are queued by the materialiser just before its task run
completes, with no await in between, so they are written in the same transaction
as the task run that made them; a task run that does not materialise pays nothing.

Changed records are keyed by identity, so a task that starts and finishes
between two flushes costs one row, not two. After a flush the recorder drops
its references: a finished task run is then garbage unless the user holds it.

Likewise a run made less than ``flush_interval`` ago and not ended yet is left, whole
(its subflow runs and its task runs, ended or not), for a later flush
(:meth:`Recorder._split`). Why: a service's requests end in group commits every few
milliseconds, and each commit wrote every request in flight as Running, with its
task runs ended so far, to write them again a moment later (6.4 rows for the 4
records of a request, twice the pages, and a third of the service's time). So a run
shorter than the flush interval is written once, ended, in one transaction; a longer
one is written Running within two intervals. A run is written whole or not at all,
so the store never holds a record referring to a run it does not hold: a log line,
span row, asset event or cache entry written refers to its run, which is then
written with it. A strict commit (:meth:`Recorder.commit`) and an explicit
:meth:`Recorder.flush` write everything.

A failed write (disk full, database locked for longer than the store's
timeout) puts the batch back and is retried at the next flush; it never drops
records. The last flush, when the engine closes, raises the error instead.

Recording never fails because of a value: a record the store refuses (text with
lone surrogates, an int past 64 bits in a span attribute) is made recordable
(:func:`_scrub`) and written again; that costs nothing until a write fails. Any
other error in the writer is logged and kept like a store error: the batch stays
queued, the writer goes on, and the callers who wait for a commit hear of it.
Whoever is told a write failed sees it agree with what is finally stored: a run
whose end could not be written is recorded as failed with that error
(:meth:`Recorder.end_run`), never as completed.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import anyio.lowlevel
import msgspec

from ..errors import StoreError, StoreUnavailable
from ..ids import error_message, error_name, recorded_text, safe_repr, traceback_text
from ..records import (
    AssetEvent,
    CacheEntry,
    FlowRunRecord,
    LogRecord,
    SpanRecord,
    TaskRunRecord,
    WriteBatch,
    transition,
)
from ..states import State
from ..store.base import Store

__all__ = ["Recorder"]

log = logging.getLogger("flowcore")


class Recorder:
    def __init__(
        self,
        store: Store,
        *,
        flush_interval: float = 0.02,
        max_batch: int = 2000,
        max_backlog: int = 20_000,
        heartbeat_interval: float = 5.0,
        wall_time: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        #: Wall-clock seconds, for heartbeats (the engine passes its clock's).
        self.time = wall_time
        self.flush_interval = flush_interval
        self.max_batch = max_batch
        #: Task runs changed and not yet written past which new task runs wait for a
        #: flush (:meth:`admit`): memory stays bounded when work outpaces the disk.
        self.max_backlog = max_backlog
        self.heartbeat_interval = heartbeat_interval
        self._flows: dict[int, FlowRunRecord] = {}
        self._tasks: dict[int, TaskRunRecord] = {}
        self._live_flows: dict[str, FlowRunRecord] = {}  # running flow runs, for heartbeats
        self._cache: dict[str, CacheEntry] = {}  # new cache entries by key
        self._files: dict[str, bytes] = {}  # large results waiting to be written, by ref
        # The batch being written now, still visible to lookups until it is committed.
        self._writing_cache: dict[str, CacheEntry] = {}
        self._writing_files: dict[str, bytes] = {}
        #: Finished spans to persist; a deque because SDK spans end on any thread.
        self.spans: deque[SpanRecord] = deque()
        #: Lines of run logs to persist, in the order they were written (any thread).
        self.logs: deque[LogRecord] = deque()
        #: Asset events to persist, in order (see the module docstring).
        self.assets: list[AssetEvent] = []
        #: Run logs that reached their limit, by run id: called when the run ends, each
        #: queues the line saying what was dropped (see ``engine.logs.RunLog``).
        self.truncated: dict[str, Callable[[], None]] = {}
        #: Where large results go before the records that refer to them (None: inline).
        self.blobs = store.blobs
        # Group commit: flushes are numbered; commit() waits for the next one to finish.
        self._started = 0
        self._completed = 0
        #: The newest flush that failed, and why: commit() waiters of that flush are told.
        self._failed = 0
        self._failure: StoreError | None = None
        #: Task runs waiting for room (see :meth:`admit`).
        self._admission: deque[asyncio.Future[None] | anyio.Event] = deque()
        #: Whether a task run about to start must first wait for the writer (:meth:`admit`):
        #: ``max_backlog`` task runs wait to be written, or others already wait to start.
        self.behind = False
        #: Set when the flush in flight (or the next one) ends; made only when someone
        #: waits (an Event made per flush cost 1.6 µs, a twentieth of an empty flow run).
        self._flushed: anyio.Event | None = None
        self._wakeup = anyio.Event()
        self._wake_requested = False
        #: A flush is in flight (one at a time: a bool, not an anyio Lock, whose taking
        #: and giving back cost 0.7 µs on every flow run's end).
        self._writing = False
        #: The next flush writes every changed record (a strict commit asked for it).
        self._write_all = False
        self._last_heartbeat = 0.0
        self.flushes = 0
        self.rows_written = 0
        self.spans_written = 0
        self.logs_written = 0
        self.last_error: StoreError | None = None

    # -- hot path: called by the engine on every state change --------------------------

    def task_changed(self, record: TaskRunRecord) -> None:
        tasks = self._tasks
        tasks[id(record)] = record
        n = len(tasks)
        if n >= self.max_batch and not self._wake_requested:
            self._wake_requested = True  # setting an Event costs more than this check
            self._wakeup.set()
        if n >= self.max_backlog:
            self.behind = True

    def flow_changed(self, record: FlowRunRecord) -> None:
        self._flows[id(record)] = record
        if record.state.is_terminal:
            self._live_flows.pop(record.id, None)
            if self.truncated:
                close = self.truncated.pop(record.id, None)
                if close is not None:
                    close()  # the line saying how much of its log was dropped
        else:
            self._live_flows[record.id] = record

    def cache_changed(self, entry: CacheEntry) -> None:
        self._cache[entry.key] = entry

    def pending_cache(self, key: str) -> CacheEntry | None:
        """A cache entry not yet committed (so a lookup sees it before it is written)."""
        return self._cache.get(key) or self._writing_cache.get(key)

    def add_file(self, ref: str, blob: bytes) -> None:
        """Queue a large result to be written as a file before the records that refer to it."""
        self._files[ref] = blob

    def pending_file(self, ref: str) -> bytes | None:
        return self._files.get(ref) or self._writing_files.get(ref)

    def close_logs(self) -> None:
        """Queue the closing line of every run log that dropped lines and whose run did
        not say it ended (the engine closes): nothing dropped goes unmentioned."""
        closers = list(self.truncated.values())
        self.truncated.clear()  # in place: the engine's run logs hold this dict
        for close in closers:
            close()

    @property
    def pending(self) -> int:
        """Records changed since the last flush."""
        return len(self._tasks) + len(self._flows) + len(self._cache)

    def admit(self) -> Awaitable[None]:
        """What a task run about to start awaits until the writer has room for more task
        runs (backpressure, in turn).

        Called by a task run about to start when ``max_backlog`` task runs wait to
        be written, or others already wait here (first come, first served). Each
        flush lets in as many as it made room for. A flush that fails lets
        everyone in: a store that cannot be written to must not hang the flow
        (its records stay queued, and the end of the run reports the error).

        On asyncio the waiter is a bare future, awaited by the task run itself: in a
        big gather half the task runs may wait here at once, and an ``anyio.Event``
        (an ``asyncio.Event`` and its deque) and a coroutine frame each cost about
        1 KB a waiter, against 100 bytes for a future. A cancelled waiter stays queued
        and is skipped when its turn comes.
        """
        self.behind = True
        self._wake_requested = True
        self._wakeup.set()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # trio
            return self._admit_event()
        waiter: asyncio.Future[None] = loop.create_future()
        self._admission.append(waiter)
        return waiter

    async def _admit_event(self) -> None:
        event = anyio.Event()
        self._admission.append(event)
        try:
            await event.wait()
        except BaseException:
            if not event.is_set():
                self._admission.remove(event)
            raise

    def _let_in(self, everyone: bool) -> None:
        waiting = self._admission
        room = len(waiting) if everyone else self.max_backlog - len(self._tasks)
        while waiting and room > 0:
            waiter = waiting.popleft()
            if not isinstance(waiter, asyncio.Future):
                waiter.set()  # trio's
            elif waiter.done():  # cancelled while it waited: takes no room
                continue
            else:
                waiter.set_result(None)
            room -= 1
        self.behind = bool(waiting) or len(self._tasks) >= self.max_backlog
        if waiting:
            self._wake_requested = True  # more to write before the rest can start
            self._wakeup.set()

    async def commit(self) -> None:
        """Wait until everything changed before this call is committed (group commit).

        Tasks finishing together share one flush: each waits for the first flush
        that starts after its change, and asks for it to start now. If that flush
        fails (disk full), this raises its :class:`~flowcore.StoreError` at once, as a
        batched run's end does: the records stay queued, but nothing waits forever.
        """
        target = self._started + 1
        self._write_all = True  # a young run's task runs too (see _split)
        self._wake_requested = True
        self._wakeup.set()
        while self._completed < target:
            if self._failed >= target and self._failure is not None:
                raise _copy(self._failure)
            await self._flush_ended().wait()

    async def end_run(self, record: FlowRunRecord) -> None:
        """Wait until the end of the top-level run ``record`` is committed: a durability
        point, whose error reaches the run's caller (:meth:`_group_commit`).

        If the run's end could not be written, the caller gets the error, so the run
        must not be recorded as completed later, when the store recovers: its end is
        changed, before it is written, to Failed with that error (the history notes
        the end it had reached). A run that had already failed keeps its own error.
        If the run's records were committed by an earlier flush and only other
        records failed, the run's end is durable: nothing is raised here.
        """
        try:
            await self._group_commit()
        except StoreError as exc:
            if id(record) not in self._flows:
                return  # committed already; the others are retried, and reported at close
            if record.state is State.COMPLETED:
                self._end_unwritten(record, exc)
            raise

    async def _group_commit(self) -> None:
        """Wait until every change made before this call is committed (but the young
        runs still going: see :meth:`_split`), sharing the transaction with every run
        that ends meanwhile (group commit).

        The first caller to find no write in flight leads: it lets the event loop turn
        once (other runs ending in the same turn join), then flushes everything queued.
        A caller arriving while a write is in flight waits for it, then for the next
        one, led by the first of them to wake: so ends arriving during a commit share
        the next commit, and none waits for more than the write in flight plus its
        own. Needs no writer task (a run ending while the engine is being cancelled
        still commits), and a failed write fails every caller waiting on it.
        """
        target = self._started + 1
        while self._completed < target:
            if self._failed >= target and self._failure is not None:
                raise _copy(self._failure)
            if self._writing:
                await self._flush_ended().wait()
                continue
            await _checkpoint()
            if self._completed < target and not self._writing:
                await self._flush_in_turn(everything=False)

    def _flush_ended(self) -> anyio.Event:
        """The event set when the flush in flight (or the next one) ends."""
        event = self._flushed
        if event is None:
            event = self._flushed = anyio.Event()
        return event

    def _ended(self) -> None:
        """A flush ended (committed, failed, or committed nothing): wake its waiters."""
        event, self._flushed = self._flushed, None
        if event is not None:
            event.set()

    def _end_unwritten(self, record: FlowRunRecord, exc: StoreError) -> None:
        reached = record.history.pop()  # the end that was never written
        record.state = State(record.history[-1][0]) if record.history else State.RUNNING
        record.ended = None
        note = (
            f"it ended {reached[0]}, but that could not be recorded: {error_name(exc)}: "
            f"{error_message(exc, 300)}"
        )
        transition(record, State.FAILED, time.time(), note)
        record.error_type = error_name(exc)
        record.error_message = error_message(exc)
        record.traceback = traceback_text(exc)
        # Its span, if flowcore persists it and it is still queued, says the same.
        for span in self.spans:
            if span.span_id == record.span_id and span.run_id == record.id:
                span.attributes["flowcore.state"] = State.FAILED.value
                span.status = "ERROR"
                span.status_message = f"{error_name(exc)}: {error_message(exc, 900)}"

    # -- the writer ---------------------------------------------------------------------

    async def run(self) -> None:
        """Flush periodically until cancelled (the engine runs this in its task group).

        No error ends it: records stay queued and are retried, and the error is
        logged (once while it repeats) and kept for the final flush.
        """
        while True:
            with anyio.move_on_after(self.flush_interval):
                await self._wakeup.wait()
            if self._wakeup.is_set():
                self._wakeup = anyio.Event()
                self._wake_requested = False
            try:
                await self._flush_in_turn(everything=False)
            except Exception as exc:
                error = exc if isinstance(exc, StoreError) else _unexpected(exc)
                if self.last_error is None or str(error) != str(self.last_error):
                    # The traceback of what nobody expected (not a full disk or a lock).
                    cause = error.__cause__ if type(error) is StoreError else None
                    log.warning(
                        "flowcore could not write run records yet, will retry: %s",
                        error,
                        exc_info=None if isinstance(cause, OSError | None) else cause,
                    )
                self.last_error = error
                await anyio.sleep(min(1.0, self.flush_interval * 10))

    async def flush(self) -> None:
        """Write every changed record now, in one transaction."""
        await self._flush_in_turn(everything=True)

    async def _flush_in_turn(self, *, everything: bool) -> None:
        """:meth:`_flush` once no other flush is in flight. ``everything``: write the
        young unfinished runs too (see :meth:`_split`)."""
        # No checkpoint when free: a flow run's last write is not a loop turn longer.
        while self._writing:
            await self._flush_ended().wait()
        self._writing = True
        try:
            await self._flush(everything)
        finally:
            self._writing = False
            self._ended()  # however it ended, the next flush may start

    def _split(
        self,
        flows: dict[int, FlowRunRecord],
        tasks: dict[int, TaskRunRecord],
        referring: tuple[Sequence[Any], ...],
    ) -> tuple[dict[int, FlowRunRecord], dict[int, TaskRunRecord]] | None:
        """Take out of ``flows`` and ``tasks`` (in place) the runs this flush leaves for
        a later one, and return them: each run made less than ``flush_interval`` ago
        and not ended, with its subflow runs and all their task runs, ended or not (a
        run is written whole or not at all), unless something written now refers to
        it (``referring``: log lines, span rows, asset events, cache entries, by their
        ``run_id``). ``None`` when there is no such run: most flushes, for a look at
        each changed flow run. See the module docstring for why.
        """
        young = time.time() - self.flush_interval  # records' times are wall-clock times
        # The young runs, and their subflows (made after them: later in ``flows``), by id.
        later: dict[str, str] = {}  # run id -> the id of the young run it belongs to
        for record in flows.values():
            parent = record.parent_run_id
            if parent is not None and parent in later:
                later[record.id] = later[parent]
            elif record.ended is None and record.created > young:
                later[record.id] = record.id
        if not later:
            return None
        for records in referring:
            for item in records:
                run_id = getattr(item, "run_id", None)
                if run_id is not None and run_id in later:
                    root = later[run_id]
                    for member in [i for i, r in later.items() if r == root]:
                        del later[member]
            if not later:
                return None
        later_f = {k: r for k, r in flows.items() if r.id in later}
        later_t = {k: r for k, r in tasks.items() if r.run_id in later}
        for key in later_f:
            del flows[key]
        for key in later_t:
            del tasks[key]
        return later_f, later_t

    async def _flush(self, everything: bool = True) -> None:
        now = self.time()
        if self._live_flows and now - self._last_heartbeat >= self.heartbeat_interval:
            self._last_heartbeat = now
            for fr in self._live_flows.values():
                fr.heartbeat = now
                self._flows[id(fr)] = fr
        if (
            not self._tasks
            and not self._flows
            and not self._cache
            and not self.spans
            and not self.logs
            and not self.assets
        ):
            if self._admission:
                self._let_in(everyone=False)
            # Nothing left to write (and no flush runs meanwhile: this holds the lock),
            # so every change is committed: commit() waiters may go.
            self._started += 1
            self._completed = self._started
            self._ended()
            return
        self._started += 1
        generation = self._started
        flows, self._flows = self._flows, {}
        tasks, self._tasks = self._tasks, {}
        cache, self._cache = self._cache, {}
        files, self._files = self._files, {}
        spans = []
        for _ in range(len(self.spans)):
            spans.append(self.spans.popleft())
        queued = self.logs
        logs = [queued.popleft() for _ in range(len(queued))]
        assets, self.assets = self.assets, []
        if self._write_all:
            everything, self._write_all = True, False
        if not everything and flows and len(tasks) < self.max_batch and not self._admission:
            referring = (logs, spans, assets, list(cache.values()) if cache else ())
            later = self._split(flows, tasks, referring)
            if later is not None:
                self._flows, self._tasks = later  # changes made while writing join them
                if not (flows or tasks or cache or files or spans or logs or assets):
                    # Only young runs changed: nothing to write now.
                    self._completed = generation
                    self._ended()
                    return
        self.behind = bool(self._admission)  # the backlog is being written
        self._writing_cache, self._writing_files = cache, files
        try:
            if files and self.blobs is not None:
                # Blobs first: a record never refers to a result not yet stored.
                try:
                    await self.blobs.put(files)
                except OSError as exc:
                    raise StoreUnavailable(
                        f"cannot write result files in {self.blobs.location}: {exc}; check "
                        "the permissions and free space there, or set FLOWCORE_HOME to a "
                        "writable folder"
                    ) from exc
            await self._write(
                WriteBatch(
                    list(flows.values()),
                    list(tasks.values()),
                    list(cache.values()),
                    spans,
                    logs,
                    assets,
                )
            )
        except BaseException as exc:
            # Put the batch back under the newer changes (same objects, so no loss).
            flows.update(self._flows)
            tasks.update(self._tasks)
            cache.update(self._cache)
            files.update(self._files)
            self._flows, self._tasks, self._cache, self._files = flows, tasks, cache, files
            self.spans.extendleft(reversed(spans))
            self.logs.extendleft(reversed(logs))
            self.assets[:0] = assets
            self._writing_cache, self._writing_files = {}, {}
            self._let_in(everyone=True)
            if not isinstance(exc, Exception):
                # A cancellation: the batch is written by a later flush, led by one of
                # those waiting for this one (a caller's cancellation holds back nobody).
                self._ended()
                raise
            error = exc if isinstance(exc, StoreError) else _unexpected(exc)
            # Whoever waits for this flush to commit (strict durability) is told now.
            self._failed, self._failure = generation, error
            self._ended()
            if error is exc:
                raise
            raise error from exc
        self._writing_cache, self._writing_files = {}, {}
        self.last_error = None
        self._failure = None
        self.flushes += 1
        self.rows_written += len(flows) + len(tasks) + len(cache)
        self.spans_written += len(spans)
        self.logs_written += len(logs)
        self._completed = generation
        if self._admission:
            self._let_in(everyone=False)
        self._ended()

    async def _write(self, batch: WriteBatch) -> None:
        """``store.write(batch)``; a batch refused for one of its values (not a store
        error: a UnicodeEncodeError, an OverflowError) is made recordable and written
        again, so one odd value never blocks the writer."""
        try:
            await self.store.write(batch)
        except StoreError:
            raise
        except Exception as exc:
            if not _scrub(batch):
                raise
            log.debug(
                "flowcore made records recordable after %s: %s",
                error_name(exc),
                error_message(exc, 300),
            )
            await self.store.write(batch)


async def _checkpoint() -> None:
    """A turn of the event loop: ``asyncio.sleep(0)`` on asyncio (anyio's checkpoint
    first asks which event loop runs, about a microsecond), anyio's elsewhere."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # trio
        await anyio.lowlevel.checkpoint()
    else:
        await asyncio.sleep(0)


def _unexpected(exc: BaseException) -> StoreError:
    """The StoreError for an error the store did not expect (a bug here or in the store)."""
    return StoreError(
        f"flowcore could not write its run records: {error_name(exc)}: {error_message(exc)}. "
        "They are kept and written again at the next flush; if this goes on, please report "
        "it with the traceback logged by the `flowcore` logger"
    )


def _copy(error: StoreError) -> StoreError:
    """A copy of ``error`` to raise in one more waiter (one exception object raised in
    several tasks would collect all their tracebacks)."""
    try:
        twin = copy.copy(error)
    except Exception:
        twin = StoreError(str(error))
    twin.__cause__ = error
    return twin


# -- making records recordable ------------------------------------------------------------

#: Containers deeper than this are recorded as a placeholder string.
_MAX_DEPTH = 64
_INT64 = (-(2**63), 2**64 - 1)


def _scrub(batch: WriteBatch) -> bool:
    """Make every record of ``batch`` recordable, in place; returns whether anything
    changed. Text with lone surrogates is escaped (``flowcore.ids.safe_text``), a NUL
    character written ``\\x00``, ints past
    64 bits and values of other types become their repr, containers nested too deep a
    placeholder. Only called after a write failed, so it may take its time."""
    changed = False
    for records in (
        batch.flow_runs,
        batch.task_runs,
        batch.cache_entries,
        batch.spans,
        batch.logs,
        batch.assets,
    ):
        for record in records:
            for name in record.__struct_fields__:
                value = getattr(record, name)
                clean = _recordable(value, 0)
                if clean is not value:
                    setattr(record, name, clean)
                    changed = True
    return changed


def _recordable(value: Any, depth: int) -> Any:
    """``value`` itself if it is recordable, else a recordable copy (see :func:`_scrub`)."""
    t = type(value)
    if value is None or isinstance(value, bool | float | bytes | bytearray):
        return value
    if isinstance(value, str):
        return recorded_text(value, nul=True)  # a NUL too: PostgreSQL's text cannot hold one
    if isinstance(value, int):
        return value if _INT64[0] <= value <= _INT64[1] else safe_repr(value, 200)
    if depth >= _MAX_DEPTH and t in (list, tuple, dict):
        return f"<{t.__name__} nested too deep to record>"
    if t is list or t is tuple:
        items = [_recordable(v, depth + 1) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return items if t is list else tuple(items)
    if t is dict:
        pairs = [(_recordable(k, depth + 1), _recordable(v, depth + 1)) for k, v in value.items()]
        if all(k is k0 and v is v0 for (k, v), (k0, v0) in zip(pairs, value.items(), strict=True)):
            return value
        return dict(pairs)
    try:
        _probe.encode(value)  # a type the store may know (a datetime, a Struct)
    except Exception:
        return safe_repr(value, 200)
    return value


_probe = msgspec.msgpack.Encoder()
