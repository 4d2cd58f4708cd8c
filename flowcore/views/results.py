"""Reading stored task results back, after the run: ``flowcore.task_result(run_id, seq)``.

A task run's result is kept inline in its record when small, or as a blob in
the store's blob store when large (see :mod:`flowcore.store.files`). This module
finds it and decodes it for people and tools that look at runs afterwards:
notebooks, scripts, ``flowcore runs show --results``, the web UI.

Two deliberate limits:

- The value comes back as **plain data**. Here there is no task function, so
  no return annotation to decode into: a task that returned a dataclass or a
  msgspec Struct gives back a ``dict``, a tuple gives back a ``list``.
  Convert it yourself (``msgspec.convert(value, MyType)``) when you need the type.
- A **pickled** result (a task with ``serializer="pickle"``) is loaded only
  with ``allow_pickle=True``: loading a pickle runs code chosen by whoever
  wrote the store, so reading a store must never do it by default.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from .._sync import run_sync
from ..errors import (
    ConfigurationError,
    PickleNotAllowed,
    ResultNotStored,
    ResultUnreadable,
    RunNotFound,
)
from ..records import FlowRunRecord, TaskRunRecord
from ..serializers import MAGIC, SERIALIZERS, decode_result
from ..store import SQLiteStore, Store, resolve_store
from ..store.base import BlobStore
from .format import json_fallback

__all__ = [
    "StoredResult",
    "inspect_result",
    "load_task_run_result",
    "read_task_result",
    "result_to_json",
    "task_result",
]


def _is_pickle(blob: bytes) -> bool:
    return blob[:3] == MAGIC and blob[4:5] == SERIALIZERS["pickle"]


def _not_stored_reason(tr: TaskRunRecord) -> str:
    """Why ``tr`` has no result, in words that point at the fix."""
    if tr.state.is_success:
        return (
            f"task run {tr.label} of {tr.name!r} completed, but its result was not stored: the "
            "task has persist_result=False, the engine ran with persist_results=False, or it "
            "returned a value its serializer cannot store (set persist_result=True on the task "
            "to make such a value fail the task with the reason)"
        )
    if not tr.state.is_terminal:
        return f"task run {tr.label} of {tr.name!r} is {tr.state}: it has no result yet"
    error = f" ({tr.error_type}: {tr.error_message})" if tr.error_type else ""
    return f"task run {tr.label} of {tr.name!r} ended {tr.state}{error}, so it has no result"


async def load_task_run_result(
    tr: TaskRunRecord, blobs: BlobStore | None, *, allow_pickle: bool = False
) -> Any:
    """The decoded result of the task run ``tr``, as plain data.

    ``blobs``: the store's blob store (``store.blobs``), where large results are.
    Raises :class:`~flowcore.ResultNotStored`, :class:`~flowcore.PickleNotAllowed`,
    or :class:`~flowcore.ResultUnreadable` (a missing, corrupt or modified blob;
    a blob of an unknown format).
    """
    blob = tr.result
    if blob is None and tr.result_ref is not None:
        if blobs is None:
            raise ResultUnreadable(
                f"the result of task run {tr.label} is a blob, but this store keeps no "
                "blobs (its `blobs` is None); read it from the store that ran it"
            )
        blob = await blobs.get(tr.result_ref)
    if blob is None:
        raise ResultNotStored(_not_stored_reason(tr))
    if _is_pickle(blob) and not allow_pickle:
        raise PickleNotAllowed(
            f"the result of task run {tr.label} of {tr.name!r} is a pickle, which runs code "
            "when it is loaded, so it was not loaded; pass allow_pickle=True (--allow-pickle "
            "on the command line) if you trust whoever wrote this store"
        )
    return decode_result(blob, allow_pickle=allow_pickle)


@dataclass(frozen=True, slots=True)
class StoredResult:
    """What a reader can show of one task run's result; never an exception.

    ``status``: ``"ok"`` (``value`` holds the decoded value), ``"pickle"`` (not
    loaded: ``allow_pickle`` was off), ``"unreadable"`` or ``"not_stored"``
    (``reason`` says why).
    """

    status: Literal["ok", "pickle", "unreadable", "not_stored"]
    value: Any = None
    reason: str = ""


async def inspect_result(
    tr: TaskRunRecord, blobs: BlobStore | None, *, allow_pickle: bool = False
) -> StoredResult:
    """:func:`load_task_run_result` for views: every problem becomes a status, so one
    bad result cannot stop a listing of many."""
    try:
        value = await load_task_run_result(tr, blobs, allow_pickle=allow_pickle)
    except ResultNotStored as exc:
        return StoredResult("not_stored", reason=str(exc))
    except PickleNotAllowed as exc:
        return StoredResult("pickle", reason=str(exc))
    except ResultUnreadable as exc:
        return StoredResult("unreadable", reason=str(exc))
    return StoredResult("ok", value=value)


async def _find_task_run(store: Store, run: FlowRunRecord, seq: int) -> TaskRunRecord:
    # seq is assigned in call order from 0, so it is usually also the position:
    # one row fetched, however big the run. Fall back to a scan if a gap moved it.
    if seq >= 0:
        for tr in await store.list_task_runs(run.id, offset=seq, limit=1):
            if tr.seq == seq:
                return tr
        task_runs = await store.list_task_runs(run.id)
        for tr in task_runs:
            if tr.seq == seq:
                return tr
        count = len(task_runs)
    else:
        count = sum((await store.count_task_runs(run.id)).values())
    has = f"task runs #0–#{count - 1}" if count else "no task runs"
    raise RunNotFound(
        f"run {run.id[:8]} of {run.name!r} has no task run #{seq}; it has {has} (see "
        f"`flowcore runs show {run.id[:8]}`)"
    )


async def task_result(
    run_id: str,
    seq: int,
    *,
    store: Store | str | os.PathLike[str] | None = None,
    allow_pickle: bool = False,
) -> Any:
    """The stored result of task run ``seq`` of run ``run_id`` (an id prefix is enough).

    ``store``: an open store object (used as is, left open), or what
    :func:`flowcore.store.resolve_store` takes (``None``: the SQLite database in
    ``$FLOWCORE_HOME``), opened and closed for the call.

    The value is plain data (a dataclass result comes back as a ``dict``): there
    is no return annotation to decode into here. A pickled result is loaded only
    with ``allow_pickle=True``.

    Raises :class:`flowcore.RunNotFound` (no such run, or no task run ``seq`` in
    it), :class:`ResultNotStored` (the task run failed, has not finished, or its
    value was not kept), :class:`PickleNotAllowed`, or
    :class:`~flowcore.serializers.ResultUnreadable` (a corrupt or missing file).
    """
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise ConfigurationError(
            f"`seq` must be the int number of a task run (the N in {run_id[:8]}.N), got {seq!r}"
        )
    if store is not None and not isinstance(store, str | os.PathLike) and isinstance(store, Store):
        return await _task_result(store, run_id, seq, allow_pickle)
    opened = resolve_store(store)
    if isinstance(opened, SQLiteStore) and not opened.path.exists():
        # Opening would create an empty database just to say the run is not in it.
        raise RunNotFound(
            f"no run with id {run_id!r}: there is no flowcore database at {opened.path}; point "
            "`store=` (or FLOWCORE_HOME) at the database that holds the run"
        )
    try:
        await opened.open()
        return await _task_result(opened, run_id, seq, allow_pickle)
    finally:
        await opened.close()


async def _task_result(store: Store, run_id: str, seq: int, allow_pickle: bool) -> Any:
    run = await store.get_run(run_id)
    tr = await _find_task_run(store, run, seq)
    return await load_task_run_result(tr, store.blobs, allow_pickle=allow_pickle)


def read_task_result(
    run_id: str,
    seq: int,
    *,
    store: Store | str | os.PathLike[str] | None = None,
    allow_pickle: bool = False,
) -> Any:
    """The sync form of :func:`task_result`, for scripts and notebooks without an event loop.

    Pass a path or URL as ``store`` (or nothing) rather than a store opened in
    another event loop: the call runs in an event loop of its own.
    """
    call = functools.partial(task_result, run_id, seq, store=store, allow_pickle=allow_pickle)
    return run_sync(
        call, name="flowcore.read_task_result", instead="await flowcore.task_result(...)"
    )


def result_to_json(result: StoredResult) -> Any:
    """A stored result as JSON-ready data; when there is none, a ``{"__flowcore__": ...}``
    stand-in saying why (``null`` would read as a task that returned ``None``)."""
    if result.status == "ok":
        try:
            return msgspec.to_builtins(result.value, str_keys=True, enc_hook=json_fallback)
        except (TypeError, ValueError):  # e.g. a loaded pickle's dict with tuple keys
            return json_fallback(result.value)
    if result.status == "pickle":
        return {"__flowcore__": "pickle", "loaded": False, "hint": "pass --allow-pickle"}
    return {"__flowcore__": result.status, "reason": result.reason}
