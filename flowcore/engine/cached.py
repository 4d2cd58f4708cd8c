"""Cache lookups: a stored result reused instead of calling the task again.

Equal calls running at the same time compute once: the first claims the key
(:class:`~flowcore.engine.inflight.InFlight`) before its first await, and the
others wait for it and hit. A stored value that cannot be read is a miss with a
warning, never an error in the flow.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio

from ..errors import ResultUnreadable
from ..records import CacheEntry, TaskRunRecord, task_run_label
from ..states import State
from .core import Engine
from .inflight import InFlight
from .outcome import finish_reused
from .results import load_result
from .spec import TaskSpec

__all__ = ["cache_lookup"]

log = logging.getLogger("flowcore")


async def cache_lookup(
    engine: Engine,
    task: TaskSpec,
    rec: TaskRunRecord,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> tuple[bool, Any, InFlight | None]:
    """``(hit?, value, claim)``: a claim on the key is returned for the caller to release."""
    policy = task.cache
    assert policy is not None and task.keys is not None
    key = task.keys.key(args, kwargs)  # CacheKeyError fails the task, recorded
    rec.cache_key = key
    recorder = engine.recorder
    refresh = policy.refresh or engine.refresh_cache
    if not refresh:
        while (running := engine.inflight.get(key)) is not None:
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
    claim = InFlight(key)
    engine.inflight[key] = claim
    if not refresh:
        entry = recorder.pending_cache(key) or await _get_cache(engine, key)
        if entry is not None and not entry.expired(engine.clock.time()):
            try:
                value = await load_result(recorder, task, entry.result, entry.result_ref)
            except ResultUnreadable as exc:
                log.warning(
                    "flowcore: cache entry %s of task %r is unusable (%s); computing it again",
                    key[:12],
                    task.name,
                    exc,
                )
            else:
                _mark_cached(engine, rec, entry)
                claim.succeed(entry)
                return True, value, claim
    return False, None, claim


async def _get_cache(engine: Engine, key: str) -> CacheEntry | None:
    store = engine.store
    try:
        return store.get_cache_nowait(key)
    except anyio.WouldBlock:
        return await store.get_cache(key)


def _mark_cached(engine: Engine, rec: TaskRunRecord, source: TaskRunRecord | CacheEntry) -> None:
    rec.result, rec.result_ref = source.result, source.result_ref
    run_id, seq = source.run_id, source.seq
    label = "?"
    if run_id is not None and seq is not None:
        rec.cached_from = f"{run_id}.{seq}"
        label = task_run_label(run_id, seq)
    finish_reused(engine.recorder, rec, State.CACHED, f"cache hit: value computed by {label}")
