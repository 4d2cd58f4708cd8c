"""A task run's result: stored with its record (and its cache entry), and loaded back."""

from __future__ import annotations

from typing import Any, Final

from ..clock import Clock
from ..errors import ResultNotSerializable, ResultUnreadable
from ..records import CacheEntry, TaskRunRecord
from ..serializers import decode_result, encode_result
from ..store.files import INLINE_LIMIT, blob_ref
from .recorder import Recorder
from .spec import TaskSpec

__all__ = ["IN_BLOB", "load_result", "result_now", "store_result"]

#: What :func:`result_now` gives for a result that has to be read from the blob store.
IN_BLOB: Final[Any] = object()


def store_result(
    recorder: Recorder, task: TaskSpec, rec: TaskRunRecord, value: Any, clock: Clock
) -> None:
    """Keep the result on the record (inline, or as a blob reference when large).

    Best effort unless the task needs it (``persist_result=True`` or caching): a
    result that cannot be stored then simply is not, and resume runs that task again.
    A cached task's entry expires ``ttl`` seconds after now, by the engine's ``clock``.
    """
    try:
        blob = encode_result(value, task.serializer, task.name)
    except ResultNotSerializable:
        if task.persist_result or task.cache is not None:
            raise
        return
    if len(blob) > INLINE_LIMIT and recorder.blobs is not None:
        ref = blob_ref(blob)
        recorder.add_file(ref, blob)
        rec.result_ref = ref
    else:
        rec.result = blob
    if task.cache is not None and rec.cache_key is not None:
        ttl = task.cache.ttl
        now = clock.time()
        recorder.cache_changed(
            CacheEntry(
                key=rec.cache_key,
                task_name=task.name,
                created=now,
                expires=None if ttl is None else now + ttl,
                result=rec.result,
                result_ref=rec.result_ref,
                run_id=rec.run_id,
                seq=rec.seq,
            )
        )


def result_now(recorder: Recorder, task: TaskSpec, blob: bytes | None, ref: str | None) -> Any:
    """:func:`load_result` without waiting, for the cache's hot path: the value when its
    bytes are at hand (inline, or a blob not written yet), :data:`IN_BLOB` when they are
    in the blob store (then await :func:`load_result`)."""
    if blob is None and ref is not None:
        blob = recorder.pending_file(ref)
        if blob is None:
            return IN_BLOB
    return _decoded(task, blob)


async def load_result(
    recorder: Recorder, task: TaskSpec, blob: bytes | None, ref: str | None
) -> Any:
    """Decode a stored result; :class:`ResultUnreadable` when missing, corrupt or refused."""
    value = result_now(recorder, task, blob, ref)
    if value is not IN_BLOB:
        return value
    assert ref is not None
    blobs = recorder.blobs
    if blobs is None:
        raise ResultUnreadable("the result is in a blob, but this store keeps no blobs")
    return _decoded(task, await blobs.get(ref))


def _decoded(task: TaskSpec, blob: bytes | None) -> Any:
    if blob is None:
        raise ResultUnreadable("no result was stored")
    return decode_result(blob, allow_pickle=task.serializer == "pickle", type_=task.return_type)
