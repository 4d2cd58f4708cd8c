"""The write-behind recorder: the one writer between the engine and the store.

Why it exists: one SQLite round trip per state change costs 45–300 µs, while a
row in an ``executemany`` batch costs 2–3 µs. So the engine only marks records
as changed (a dict assignment on the hot path) and this writer flushes every
changed record, once, in one transaction, every ``flush_interval`` seconds, as
soon as ``max_batch`` records are waiting, and whenever a run ends.

Changed records are keyed by identity, so a task that starts and finishes
between two flushes costs one row, not two. After a flush the recorder drops
its references: a finished task run is then garbage unless the user holds it.

A failed write (disk full, database locked for longer than the store's
timeout) puts the batch back and is retried at the next flush; it never drops
records. The last flush, when the engine closes, raises the error instead.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

import anyio

from ..errors import StoreError
from ..records import CacheEntry, FlowRunRecord, SpanRecord, TaskRunRecord, WriteBatch
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
        max_backlog: int = 50_000,
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
        #: Where large results go before the records that refer to them (None: inline).
        self.blobs = store.blobs
        # Group commit: flushes are numbered; commit() waits for the next one to finish.
        self._started = 0
        self._completed = 0
        self._admission: deque[anyio.Event] = deque()  # task runs waiting for room
        #: Whether a task run about to start must first wait for the writer (:meth:`admit`):
        #: ``max_backlog`` task runs wait to be written, or others already wait to start.
        self.behind = False
        self._flushed = anyio.Event()
        self._wakeup = anyio.Event()
        self._wake_requested = False
        self._lock = anyio.Lock()
        self._last_heartbeat = 0.0
        self.flushes = 0
        self.rows_written = 0
        self.spans_written = 0
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

    @property
    def pending(self) -> int:
        """Records changed since the last flush."""
        return len(self._tasks) + len(self._flows) + len(self._cache)

    async def admit(self) -> None:
        """Wait until the writer has room for more task runs (backpressure, in turn).

        Called by a task run about to start when ``max_backlog`` task runs wait to
        be written, or others already wait here (first come, first served). Each
        flush lets in as many as it made room for. A flush that fails lets
        everyone in: a store that cannot be written to must not hang the flow
        (its records stay queued, and the end of the run reports the error).
        """
        event = anyio.Event()
        self._admission.append(event)
        self.behind = True
        self._wake_requested = True
        self._wakeup.set()
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
            waiting.popleft().set()
            room -= 1
        self.behind = bool(waiting) or len(self._tasks) >= self.max_backlog
        if waiting:
            self._wake_requested = True  # more to write before the rest can start
            self._wakeup.set()

    async def commit(self) -> None:
        """Wait until everything changed before this call is committed (group commit).

        Tasks finishing together share one flush: each waits for the first flush
        that starts after its change, and asks for it to start now.
        """
        target = self._started + 1
        self._wake_requested = True
        self._wakeup.set()
        while self._completed < target:
            await self._flushed.wait()

    # -- the writer ---------------------------------------------------------------------

    async def run(self) -> None:
        """Flush periodically until cancelled (the engine runs this in its task group)."""
        while True:
            with anyio.move_on_after(self.flush_interval):
                await self._wakeup.wait()
            if self._wakeup.is_set():
                self._wakeup = anyio.Event()
                self._wake_requested = False
            try:
                await self.flush()
            except StoreError as exc:
                # Kept for the final flush; records stay queued and are retried.
                if self.last_error is None or str(exc) != str(self.last_error):
                    log.warning("flowcore could not write run records yet, will retry: %s", exc)
                self.last_error = exc
                await anyio.sleep(min(1.0, self.flush_interval * 10))

    async def flush(self) -> None:
        """Write every changed record now, in one transaction."""
        # Taken without a checkpoint when free: anyio's acquire() always yields to the
        # event loop once, a whole loop turn added to every flow run's last write.
        lock = self._lock
        try:
            lock.acquire_nowait()
        except anyio.WouldBlock:
            await lock.acquire()
        try:
            await self._flush()
        finally:
            lock.release()

    async def _flush(self) -> None:
        now = self.time()
        if self._live_flows and now - self._last_heartbeat >= self.heartbeat_interval:
            self._last_heartbeat = now
            for fr in self._live_flows.values():
                fr.heartbeat = now
                self._flows[id(fr)] = fr
        if not self._tasks and not self._flows and not self._cache and not self.spans:
            if self._admission:
                self._let_in(everyone=False)
            return
        self._started += 1
        generation = self._started
        flows, self._flows = self._flows, {}
        tasks, self._tasks = self._tasks, {}
        self.behind = bool(self._admission)  # the backlog is being written
        cache, self._cache = self._cache, {}
        files, self._files = self._files, {}
        spans = []
        for _ in range(len(self.spans)):
            spans.append(self.spans.popleft())
        self._writing_cache, self._writing_files = cache, files
        try:
            if files and self.blobs is not None:
                # Blobs first: a record never refers to a result not yet stored.
                await self.blobs.put(files)
            await self.store.write(
                WriteBatch(list(flows.values()), list(tasks.values()), list(cache.values()), spans)
            )
        except BaseException as exc:
            # Put the batch back under the newer changes (same objects, so no loss).
            flows.update(self._flows)
            tasks.update(self._tasks)
            cache.update(self._cache)
            files.update(self._files)
            self._flows, self._tasks, self._cache, self._files = flows, tasks, cache, files
            self.spans.extendleft(reversed(spans))
            self._writing_cache, self._writing_files = {}, {}
            self._let_in(everyone=True)
            if isinstance(exc, OSError):
                raise StoreError(f"cannot write result files: {exc}") from exc
            raise
        self._writing_cache, self._writing_files = {}, {}
        self.last_error = None
        self.flushes += 1
        self.rows_written += len(flows) + len(tasks) + len(cache)
        self.spans_written += len(spans)
        self._completed = generation
        if self._admission:
            self._let_in(everyone=False)
        done, self._flushed = self._flushed, anyio.Event()
        done.set()
