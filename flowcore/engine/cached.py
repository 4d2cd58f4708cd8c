"""Cache lookups: a stored result reused instead of calling the task again.

A hit is meant to cost no more than running a no-op task, so the common lookup
never awaits: :func:`cache_lookup` computes the key, reads the entry synchronously
(``store.get_cache_nowait``: a few microseconds on the loop's own SQLite
connection) and decodes the value, all in one plain call. Only what has to wait
goes through the coroutine :func:`cache_lookup_waiting`: an equal call computing
right now, a store that answers later (a database server), a result kept in
the blob store.

Equal calls running at the same time compute once. A lookup that does not
wait needs no claim on its hit (nothing else runs before it is recorded), and
claims the key (:class:`~flowcore.engine.inflight.InFlight`) on a miss, before
the caller's first await; a lookup that waits claims it before its first await.
Later equal calls find the claim and wait for it, then hit. A stored value that
cannot be read is a miss with a warning, never an error in the flow.

Lookups that wait for the store are read together: every key asked for during
one turn of the event loop goes in one query (:class:`CacheReads`, with a
store's ``get_cache_many``), so a gather of cached calls costs a few round
trips to a database server, not one each. Lookups the store answers at once
are not batched: parking each call until the batch is read costs a task
switch, more than the one-key read it saves (measured: gathered SQLite hits
got slower by 2-4 µs each, on asyncio's loop and on uvloop).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio
import anyio.lowlevel

from ..errors import ResultUnreadable
from ..records import CacheEntry, TaskRunRecord, task_run_label
from ..states import State
from .core import Engine
from .inflight import InFlight
from .outcome import finish_reused
from .results import IN_BLOB, load_result, result_now
from .spec import TaskSpec

__all__ = ["CacheReads", "cache_lookup", "cache_lookup_waiting"]

log = logging.getLogger("flowcore")

#: What a lookup gives: ``(True, value, claim or None)`` for a hit (recorded Cached);
#: ``(False, None, claim)`` for a miss (the caller computes, then releases the claim);
#: from :func:`cache_lookup` only, ``(None, entry or None, None)``: it has to wait.
Lookup = tuple[bool | None, Any, InFlight | None]

_WAIT: Lookup = (None, None, None)
_CACHED = State.CACHED

#: ``store.get_cache_many(keys)``: the entries stored under any of ``keys``.
ReadMany = Callable[[Sequence[str]], Awaitable[Mapping[str, CacheEntry]]]


def cache_lookup(
    engine: Engine,
    task: TaskSpec,
    rec: TaskRunRecord,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Lookup:
    """The cache's answer for this call, found without waiting when it can be.

    ``(None, entry, None)`` says the lookup has to wait: pass ``entry`` (``None``, or
    an entry whose result is in the blob store) to :func:`cache_lookup_waiting`.
    """
    policy = task.cache
    assert policy is not None and task.keys is not None
    key = task.keys.key(args, kwargs)  # CacheKeyError fails the task, recorded
    rec.cache_key = key
    inflight = engine.inflight
    if policy.refresh or engine.refresh_cache:
        return False, None, _claim(inflight, key)
    if key in inflight:
        return _WAIT  # an equal call is computing: wait for it instead of computing twice
    recorder = engine.recorder
    entry = recorder.pending_cache(key)
    if entry is None:
        try:
            entry = engine.store.get_cache_nowait(key)
        except anyio.WouldBlock:
            return _WAIT
    if entry is not None and not _expired(engine, entry):
        try:
            value = result_now(recorder, task, entry.result, entry.result_ref)
        except ResultUnreadable as exc:
            _unusable(task, key, exc)
        else:
            if value is IN_BLOB:
                return None, entry, None
            _mark_cached(engine, rec, entry)
            return True, value, None
    return False, None, _claim(inflight, key)


async def cache_lookup_waiting(
    engine: Engine, task: TaskSpec, rec: TaskRunRecord, entry: CacheEntry | None
) -> Lookup:
    """The lookup of :func:`cache_lookup` that has to wait (its key is ``rec.cache_key``):
    for an equal call computing now, for the store, or for the blob holding ``entry``'s
    result. Never ``(None, ...)``."""
    key = rec.cache_key
    assert key is not None
    recorder = engine.recorder
    inflight = engine.inflight
    if entry is None:
        while (running := inflight.get(key)) is not None:
            # Same key computing in this engine: wait for it instead of computing twice.
            await running.wait()
            source = running.source
            if source is not None:
                try:
                    value = await load_result(recorder, task, source.result, source.result_ref)
                except ResultUnreadable:
                    break
                _mark_cached(engine, rec, source)
                return True, value, None
    # Claim the key before the first await of the lookup, so equal calls started
    # together wait for this one rather than all missing at once.
    claim = _claim(inflight, key)
    try:
        if entry is None:
            entry = recorder.pending_cache(key) or await _read(engine, key)
            if entry is not None and _expired(engine, entry):
                entry = None
        if entry is not None:
            try:
                value = await load_result(recorder, task, entry.result, entry.result_ref)
            except ResultUnreadable as exc:
                _unusable(task, key, exc)
            else:
                _mark_cached(engine, rec, entry)
                claim.succeed(entry)
                return True, value, claim
    except BaseException:
        # A read that failed, or a cancellation while it waited: the caller never gets
        # the claim to release, and a claim left behind would make every later equal
        # call in this engine wait for ever.
        claim.release(inflight)
        raise
    return False, None, claim


class _Batch:
    """The keys of one read of :class:`CacheReads`, and how it went."""

    __slots__ = ("done", "error", "found", "keys")

    def __init__(self, key: str) -> None:
        self.keys = [key]
        self.found: Mapping[str, CacheEntry] | None = None
        self.error: Exception | None = None
        self.done = anyio.Event()


class CacheReads:
    """Cache lookups that wait for the store, read together: the keys asked for during
    one turn of the event loop, in one ``read_many`` (a store's ``get_cache_many``).

    The first lookup of a turn opens a batch and lets the loop run the other calls
    started with it (one checkpoint), which add their keys; it then reads them all
    and wakes them. A read that fails fails every lookup of the batch with its error;
    a reader cancelled before it read leaves its batch to be read again by the others.
    """

    __slots__ = ("_open", "_read_many")

    def __init__(self, read_many: ReadMany) -> None:
        self._read_many = read_many
        self._open: _Batch | None = None

    async def get(self, key: str) -> CacheEntry | None:
        """The entry stored under ``key`` (expired or not), or ``None``."""
        while True:
            batch = self._open
            if batch is None:
                batch = self._open = _Batch(key)
                await self._read(batch)
            else:
                batch.keys.append(key)
                await batch.done.wait()
            if batch.found is not None:
                return batch.found.get(key)
            if batch.error is not None:
                raise batch.error
            # Its reader was cancelled before it read: read it again.

    async def _read(self, batch: _Batch) -> None:
        try:
            await anyio.lowlevel.checkpoint()  # the lookups started with this one join it
            self._open = None  # from here on, a lookup opens the next batch
            batch.found = await self._read_many(batch.keys)
        except Exception as exc:
            batch.error = exc
            raise
        finally:
            if self._open is batch:
                self._open = None
            batch.done.set()


#: Each engine's batched reads (``None``: its store reads one key at a time).
_reads: weakref.WeakKeyDictionary[Engine, CacheReads | None] = weakref.WeakKeyDictionary()


async def _read(engine: Engine, key: str) -> CacheEntry | None:
    store = engine.store
    try:
        return store.get_cache_nowait(key)
    except anyio.WouldBlock:
        pass
    try:
        reads = _reads[engine]
    except KeyError:
        # A store that can read many keys at once says so with get_cache_many (optional:
        # a store without it reads each key with get_cache, as a round trip of its own).
        read_many: ReadMany | None = getattr(store, "get_cache_many", None)
        reads = _reads[engine] = None if read_many is None else CacheReads(read_many)
    if reads is None:
        return await store.get_cache(key)
    return await reads.get(key)


def _claim(inflight: dict[str, InFlight], key: str) -> InFlight:
    claim = inflight[key] = InFlight(key)
    return claim


def _expired(engine: Engine, entry: CacheEntry) -> bool:
    # Inline (not entry.expired()): most entries never expire, and need no clock read.
    expires = entry.expires
    return expires is not None and expires <= engine.clock.time()


def _unusable(task: TaskSpec, key: str, exc: ResultUnreadable) -> None:
    log.warning(
        "flowcore: cache entry %s of task %r is unusable (%s); computing it again",
        key[:12],
        task.name,
        exc,
    )


def _mark_cached(engine: Engine, rec: TaskRunRecord, source: TaskRunRecord | CacheEntry) -> None:
    """``rec`` ends Cached with ``source``'s stored result (its bytes, not decoded and
    encoded again), naming the task run that computed it."""
    rec.result, rec.result_ref = source.result, source.result_ref
    run_id, seq = source.run_id, source.seq
    if run_id is not None and seq is not None:
        rec.cached_from = f"{run_id}.{seq}"
        note = f"cache hit: value computed by {task_run_label(run_id, seq)}"
    else:
        note = "cache hit: value computed by ?"
    finish_reused(engine.recorder, rec, _CACHED, note)
