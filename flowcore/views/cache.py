"""Cache entries, as ``flowcore cache ls`` and the web UI show them, and clearing them."""

from __future__ import annotations

import time
from typing import Any

from ..errors import StoreError
from ..records import CacheEntry, task_run_label
from ..store.base import Store
from .format import iso_utc

__all__ = ["ClearRefused", "cache_entry_to_json", "clear_cache", "list_cache", "produced_by"]


async def list_cache(
    store: Store, *, task_name: str | None = None
) -> tuple[list[CacheEntry], dict[str, int | None]]:
    """Cache entries, newest first, and each one's stored result size by key (``None``:
    its blob is missing, so the entry will miss and be computed again)."""
    entries = await store.list_cache(task_name=task_name)
    sizes: dict[str, int | None] = {}
    for entry in entries:
        if entry.result is not None:
            sizes[entry.key] = len(entry.result)
        elif entry.result_ref is not None and store.blobs is not None:
            sizes[entry.key] = await store.blobs.size(entry.result_ref)
        else:
            sizes[entry.key] = None
    return entries, sizes


class ClearRefused(Exception):
    """Clearing was not done, or not all of it; the message says what and why."""


async def clear_cache(
    store: Store,
    *,
    task_name: str | None = None,
    expired: bool = False,
    everything: bool = False,
    now: float | None = None,
) -> tuple[int, int]:
    """Remove cache entries (of ``task_name``, or ``expired`` ones; all of them only with
    ``everything``), then the blobs nothing refers to any more. Returns how many of each.

    Task runs keep their own results: clearing the cache never changes what can be
    read back or resumed.
    """
    entries = await store.list_cache(task_name=task_name)
    if expired:
        now = time.time() if now is None else now
        entries = [e for e in entries if e.expired(now)]
    if task_name is None and not expired and not everything and entries:
        raise ClearRefused(
            f"this would remove all {len(entries)} cache entries; add --yes to confirm "
            "(`flowcore cache clear --yes`), or choose some with --task NAME or --expired"
        )
    if entries:
        await store.delete_cache([e.key for e in entries])
    removed = 0
    if store.blobs is not None:
        try:
            keep = await store.result_refs()
        except StoreError as exc:
            # Sweeping without knowing what is referenced would delete live results.
            raise ClearRefused(
                f"removed {len(entries)} cache entries, but could not tell which result files "
                f"are still in use, so no file was removed: {exc}"
            ) from exc
        removed = await store.blobs.prune(keep)
    return len(entries), removed


def produced_by(entry: CacheEntry) -> str:
    """The task run that computed the entry, as people see it (``3f2a9c1b.4``)."""
    if entry.run_id is None or entry.seq is None:
        return "-"
    return task_run_label(entry.run_id, entry.seq)


def cache_entry_to_json(
    entry: CacheEntry, size: int | None, *, now: float | None = None
) -> dict[str, Any]:
    """A cache entry as JSON-ready data (``size`` ``None``: its result blob is missing)."""
    now = time.time() if now is None else now
    return {
        "key": entry.key,
        "task_name": entry.task_name,
        "created": iso_utc(entry.created),
        "expires": iso_utc(entry.expires),
        "expired": entry.expired(now),
        "stored": "file" if entry.result is None and entry.result_ref is not None else "inline",
        "size": size,
        "result_ref": entry.result_ref,
        "run_id": entry.run_id,
        "seq": entry.seq,
        "produced_by": None if entry.run_id is None else produced_by(entry),
    }
