"""The store protocol: what the engine and the readers need from a database.

The engine only ever calls :meth:`Store.write`, from one writer task, with
batches; readers (CLI, resume, UI) call the ``list``/``get`` methods. Any store
that passes ``tests/test_store.py`` can back flowcore.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..records import CacheEntry, FlowRunRecord, TaskRunRecord
from ..telemetry import SpanRecord

__all__ = ["Store"]


@runtime_checkable
class Store(Protocol):
    """A place where run records live.

    ``write`` must take everything it needs from the records *before its first
    await*: the engine keeps mutating the same record objects while a write is
    in flight, and relies on each write being a snapshot taken at call time.
    Writes are upserts keyed by run id (and ``seq`` for task runs); a record
    already in a terminal state is never overwritten.
    """

    #: Where the data lives, for messages (a path or a URL without password).
    location: str
    #: A folder for large results kept as files, or ``None`` to keep them in the store.
    results_dir: Path | None

    async def open(self) -> None:
        """Connect, create or migrate the schema. Raises a ``StoreError`` subclass on failure."""

    async def close(self) -> None:
        """Release every connection; safe to call twice and after a failed ``open``."""

    async def write(
        self,
        flow_runs: Sequence[FlowRunRecord],
        task_runs: Sequence[TaskRunRecord],
        cache_entries: Sequence[CacheEntry] = (),
        spans: Sequence[SpanRecord] = (),
    ) -> None:
        """Upsert a batch of records (and replace cache entries, add spans) in one transaction."""

    async def list_runs(
        self, *, name: str | None = None, state: str | None = None, limit: int = 50
    ) -> list[FlowRunRecord]:
        """Flow runs, newest first, optionally filtered by flow name and state."""

    async def get_run(self, run_id: str) -> FlowRunRecord:
        """The run with this id or unique id prefix; raises ``RunNotFound``."""

    async def list_task_runs(
        self, run_id: str, *, offset: int = 0, limit: int | None = None, state: str | None = None
    ) -> list[TaskRunRecord]:
        """Task runs of one flow run, in call order (``seq``); only those in ``state``."""

    async def count_task_runs(self, run_id: str) -> dict[str, int]:
        """Task runs of one flow run counted by state."""

    async def child_runs(self, run_id: str) -> list[FlowRunRecord]:
        """Subflow runs started from this run."""

    async def get_cache(self, key: str) -> CacheEntry | None:
        """The cache entry with this key, expired or not."""

    async def list_cache(self, *, task_name: str | None = None) -> list[CacheEntry]:
        """Cache entries, newest first, optionally of one task."""

    async def delete_cache(self, keys: Sequence[str]) -> None:
        """Remove these cache entries."""

    async def result_refs(self) -> set[str]:
        """Every result file still referenced (by a task run or a cache entry)."""

    async def list_spans(self, trace_id: str) -> list[SpanRecord]:
        """The persisted spans of one trace, by start time."""

    async def prune_spans(
        self, *, before: float | None = None, keep_runs: int | None = None
    ) -> int:
        """Delete old spans (started before ``before``, or not of the newest ``keep_runs`` runs)."""
