"""The store contract: what the engine and the readers need from a database, by role.

A store is one object that plays every role below; :class:`Store` is their sum.
The split says who calls what:

- :class:`RunStore`: the engine's one writer calls :meth:`~RunStore.write` with
  batches; readers (CLI, resume, views) call the ``list``/``get`` methods.
- :class:`CacheStore`: cache lookups on the hot path (``get_cache_nowait`` when
  the store can answer without waiting), and the CLI's ``cache`` commands.
- :class:`SpanStore`: persisted spans, read by ``flowcore trace`` and pruned.
- :class:`LogStore`: lines of run logs, read (and followed) by ``flowcore runs logs``.
- :class:`LeaseStore`: slots and rates of limits shared by several processes;
  each call is one atomic claim (a write transaction, or its equivalent).
- :class:`ServingStore`: what ``flowcore serve`` needs to run schedules and triggers
  from several processes at once: slot claims, schedule state, the trigger queue,
  the served-flows registry, one-shot claims and a change token.
- :class:`AssetStore`: asset definitions as synced, the history of materialisations
  and check results, and each asset's current state (range sets of partitions
  materialised, stale, failing a check), kept incrementally on every write.
- :class:`BlobStore` (``store.blobs``): large results, kept beside the records.

Two optional roles, not part of :class:`Store`: :class:`RunQueries` (the web UI's big
pages) and :class:`RunRetention` (deleting old runs and log lines, so that a store's
size stays bounded); a store without one still backs the engine.

``flowcore.testing.check_store(factory)`` is the executable form of this
contract: a store that passes it can back flowcore.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Protocol, TypeVar, runtime_checkable

import msgspec

from .. import _validate, ranges
from ..errors import ConfigurationError
from ..ids import safe_text
from ..records import (
    AssetDefRecord,
    AssetEvaluationRecord,
    AssetEvent,
    AssetStateRecord,
    CacheEntry,
    CheckResultRecord,
    FlowRunRecord,
    LogRecord,
    MaterializationRecord,
    ScheduleState,
    ServedFlow,
    SlotClaim,
    SpanRecord,
    StaleMark,
    TaskRunRecord,
    Trigger,
    WriteBatch,
)
from ..states import TERMINAL, State

__all__ = [
    "CAUSES_KEPT",
    "FINISHED",
    "LOG_CHUNK",
    "PRUNE_CHUNK",
    "AssetStore",
    "AssetWrite",
    "BlobStore",
    "CacheBatchReads",
    "CacheStore",
    "LeaseStore",
    "LogStore",
    "PruneCount",
    "RunQueries",
    "RunRetention",
    "RunStore",
    "RunTimes",
    "ServingStore",
    "SpanStore",
    "Store",
    "TagPage",
    "apply_asset_events",
    "apply_code_change",
    "check_prune",
    "claimed_source",
    "ended_at",
    "freed_results",
    "late_completion",
    "not_found_message",
    "prune_runs_and_results",
    "replaces",
    "run_times",
    "value_ref_of",
]

_R = TypeVar("_R", FlowRunRecord, TaskRunRecord)

#: The terminal states a run reaches by itself, which replace a stored ``Crashed``.
FINISHED: Final = frozenset({State.COMPLETED, State.FAILED, State.TIMED_OUT, State.CANCELLED})


class RunStore(Protocol):
    """Flow runs and task runs.

    ``write`` must take everything it needs from the records *before its first
    await*: the engine keeps mutating the same record objects while a write is
    in flight, and relies on each write being a snapshot taken at call time.
    Writes are upserts keyed by run id (and ``seq`` for task runs); a record
    already in a terminal state is never overwritten, with one exception: a late
    completion. A run another process marked ``Crashed`` (no heartbeat for a while:
    a long GC pause, a blocked event loop) may still be alive, and finish. A write
    of a record in a state the run reached by itself (:data:`FINISHED`: Completed,
    Failed, TimedOut, Cancelled) over a stored ``Crashed`` one replaces it, as
    :func:`late_completion` makes it: the written record, its history keeping the
    Crashed entry with a note saying the run was marked crashed by mistake and
    finished later (flow runs and task runs alike; see :func:`replaces`). Every
    other terminal record stays final.
    """

    #: Where the data lives, for messages (a path or a URL without password).
    location: str
    # A store whose driver runs on asyncio only (aiosqlite, asyncpg) also has a class
    # attribute ``asyncio_only = True``: an engine on trio refuses it at open, naming it.

    async def open(self) -> None:
        """Connect, create or migrate the schema. Raises a ``StoreError`` subclass on failure."""

    async def close(self) -> None:
        """Release every connection; safe to call twice and after a failed ``open``."""

    async def write(self, batch: WriteBatch) -> None:
        """Write a batch in one transaction: upsert runs, replace cache entries, add spans."""

    async def list_runs(
        self, *, name: str | None = None, state: str | None = None, limit: int = 50
    ) -> list[FlowRunRecord]:
        """Flow runs, newest first, optionally filtered by flow name and state."""

    async def get_run(self, run_id: str) -> FlowRunRecord:
        """The run with this id or unique id prefix; raises ``RunNotFound``."""

    async def list_task_runs(
        self,
        run_id: str,
        *,
        offset: int = 0,
        limit: int | None = None,
        state: str | None = None,
        tag: str | None = None,
    ) -> list[TaskRunRecord]:
        """Task runs of one flow run, in call order (``seq``); only those in ``state``,
        and only those whose task carries ``tag``; ``offset`` and ``limit`` count
        within what is kept."""

    async def count_task_runs(self, run_id: str, *, tag: str | None = None) -> dict[str, int]:
        """Task runs of one flow run (only those with ``tag``) counted by state."""

    async def child_runs(self, run_id: str) -> list[FlowRunRecord]:
        """Subflow runs started from this run, oldest first."""

    async def claim_resume(
        self, run: FlowRunRecord, *, force: bool = False
    ) -> FlowRunRecord | None:
        """Claim the resumption of ``run.resumed_from`` for ``run``, atomically: ``None``
        when claimed, else the run that holds it (and nothing is written).

        The claim is the new run's own row: in one write transaction, ``run`` (Running,
        ``resumed_from`` set, its id new) is inserted unless a run re-driving the same
        run (a resumption of it, or of one of its resumptions, at any depth; a
        resumption has the name of the run it resumes) is not finished (Running,
        Retrying: that one is returned), or, without ``force``, one of them completed
        (the newest such is returned). Resumptions that ended otherwise (Failed,
        Crashed, ...) hold no claim. Two claims racing, from any number of handles or
        processes, get one claim between them. The engine then writes ``run`` as it
        goes, as any run (an upsert of the row claimed here).
        """


class CacheStore(Protocol):
    """Cache entries, shared by every run and process using the store."""

    async def get_cache(self, key: str) -> CacheEntry | None:
        """The cache entry with this key, expired or not."""

    def get_cache_nowait(self, key: str) -> CacheEntry | None:
        """:meth:`get_cache` without waiting, for the hot path; raises ``anyio.WouldBlock``
        when the store cannot answer at once (the engine then awaits ``get_cache``)."""

    async def list_cache(self, *, task_name: str | None = None) -> list[CacheEntry]:
        """Cache entries, newest first, optionally of one task."""

    async def delete_cache(self, keys: Sequence[str]) -> None:
        """Remove these cache entries."""

    async def result_refs(self) -> set[str]:
        """Every result blob still referenced: by a task run, a cache entry, or an asset
        materialisation (its ``value_ref``: a large asset value is a blob no task run
        names). Blob pruning deletes every blob not in this set."""


class SpanStore(Protocol):
    """OpenTelemetry spans persisted with the runs."""

    async def list_spans(self, trace_id: str) -> list[SpanRecord]:
        """The persisted spans of one trace, by start time."""

    async def prune_spans(
        self, *, before: float | None = None, keep_runs: int | None = None
    ) -> int:
        """Delete old spans: those started before ``before`` (unix seconds), those not of
        the newest ``keep_runs`` top-level runs, or with both, those matching both;
        returns how many were deleted."""

    async def claim_span_exports(
        self, holder: str, *, now: float, lease: float, limit: int, since: float | None = None
    ) -> list[FlowRunRecord]:
        """Ended flow runs whose spans were not shipped to the collector yet, claimed by
        ``holder`` until ``now + lease``, oldest first, at most ``limit``.

        A run claimed (by any holder) whose lease has not run out is left out, so two
        shippers racing (any handles, any processes) never get the same run, and a
        shipper that died holding runs leaves them to the next one once its lease runs
        out. Runs created before ``since`` are marked skipped
        instead (the catch-up after an outage is bounded), and never offered again.
        Runs recorded before the store knew about export are skipped too."""

    async def end_span_exports(self, run_ids: Sequence[str], holder: str, *, shipped: bool) -> None:
        """``shipped``: the spans of these runs reached the collector: they are never
        offered again. Otherwise ``holder``'s claims on them are given back, and the runs
        are offered again at once (to any shipper)."""


class LogStore(Protocol):
    """Lines of run logs (``WriteBatch.logs``), written with the batches and read in order.

    A write appends the lines of ``batch.logs`` in their order, giving each an ``id``
    greater than that of every line written before, in any run and by any handle on
    the database: a reader that has read up to ``id`` N reads every later line with
    ``after=N``, however writes of several processes interleave (that is how
    ``flowcore runs logs --follow`` pages). Lines are never changed once written.

    Retention: a run's lines go with it when it is pruned, and lines older than a time
    go by themselves when pruned (:class:`RunRetention`); otherwise they stay.
    """

    async def list_logs(
        self,
        run_id: str,
        *,
        seq: int | None = None,
        task: str | None = None,
        min_level: int | None = None,
        after: int | None = None,
        limit: int | None = None,
    ) -> list[LogRecord]:
        """The lines of run ``run_id`` (an exact id), in the order they were written (by
        ``id``), each with its ``id``: only those of task run ``seq``, only those of
        tasks named ``task``, only those at ``min_level`` or above, only those whose
        ``id`` is greater than ``after``; at most ``limit`` of them (the first ones)."""


class LeaseStore(Protocol):
    """Limits shared by several processes: leased slots, waiters and rates.

    Times are wall-clock unix seconds given by the caller, so a store never
    reads a clock of its own (tests drive them with a fake one).
    """

    async def lease_slots(
        self,
        name: str,
        capacity: int,
        holder: str,
        waiter_id: str,
        want: int,
        since: float,
        now: float,
        expires: float,
    ) -> tuple[list[str], int]:
        """Lease up to ``want`` of the ``capacity`` slots of limit ``name``, atomically.

        Expired leases go first. Slots are free when the held leases plus the
        waiters of other engines that have waited longer (``since``) leave room, so
        slots go to the oldest waiter of any process. What cannot be granted is
        recorded as this engine's waiting row (``waiter_id``: how many, since when),
        refreshed by every call and removed once nothing is missing. Returns the new
        lease ids, and how many slots other holders wait for.
        """

    async def release_lease(self, lease_id: str) -> None:
        """Give a lease (or a waiting row) back; unknown ids are ignored."""

    async def renew_leases(self, holder: str, expires: float) -> None:
        """Push the expiry of every lease and waiting row of ``holder`` to ``expires``."""

    async def list_leases(self) -> list[tuple[str, str, str, int, float, int]]:
        """``(name, holder, host, pid, expires, waiting)`` of every lease (``waiting`` 0)
        and waiting row (``waiting``: slots asked for), expired ones included."""

    async def reserve_rate(self, name: str, interval: float, tolerance: float, now: float) -> float:
        """Reserve the next use of shared rate limit ``name``; returns when it may start.

        GCRA: the store keeps ``tat`` per limit, the time the bucket would next be
        empty at the full rate. A use conforms at ``max(tat, now) - tolerance`` and
        pushes ``tat`` to ``max(tat, now) + interval``, atomically.
        """

    async def list_rates(self) -> list[tuple[str, float]]:
        """``(name, tat)`` of every shared rate limit."""


class ServingStore(Protocol):
    """Schedules and triggers served by any number of ``flowcore serve`` processes.

    Every claim is atomic across handles and processes (a write transaction, or its
    equivalent): a slot, a trigger or a one-shot key is claimed once. Times are
    unix seconds given by the caller; the store reads no clock of its own.
    """

    async def claim_slots(self, claims: Sequence[SlotClaim], now: float) -> list[bool]:
        """Claim these slots, all in one transaction; for each, whether it was claimed here.

        A slot ``(flow, key, slot)`` already claimed (by anyone, fired or skipped) is
        not claimed again, and nothing of its claim is written. A claimed slot is
        recorded (with ``claimed=now``); its ``run``, when given, is inserted as it is
        (a new row: a run with that id already there makes the claim fail as taken);
        the schedule's ``cursor`` moves to the slot when it is later than the stored
        one (a schedule with no stored state gets one). Many slots (a thousand
        schedules due in the same minute) are one transaction, not one each.
        """

    async def list_slots(
        self, flow: str, key: str | None = None, *, limit: int = 100
    ) -> list[SlotClaim]:
        """Claimed slots of ``flow`` (of schedule ``key``), newest slot first, without
        their ``run`` (its id is ``run.id`` of the claim when it was fired: read it with
        :meth:`slot_run_ids`)."""

    async def slot_run_ids(self, flow: str, key: str, slots: Sequence[float]) -> list[str | None]:
        """The run id each of these claimed slots started (``None``: skipped or unclaimed)."""

    async def put_schedules(self, states: Sequence[ScheduleState]) -> list[ScheduleState]:
        """Upsert schedules' ``description``, ``next_fire`` and ``updated``, keeping the
        stored ``cursor`` and ``paused`` (a new schedule takes the given ones); returns
        them as stored, in the given order."""

    async def list_schedules(self, *, flow: str | None = None) -> list[ScheduleState]:
        """Stored schedules (of ``flow``), by flow then key."""

    async def set_paused(self, flow: str, key: str | None, paused: bool) -> int:
        """Pause or resume schedule ``key`` of ``flow`` (every schedule of ``flow`` when
        ``key`` is ``None``); returns how many schedules there were."""

    async def active_runs(self, name: str, launched_by: str | None = None) -> list[FlowRunRecord]:
        """Top-level runs of flow ``name`` (launched by ``launched_by``) that are not
        finished (Pending, Running, Retrying), oldest first: what ``max_active_runs``
        counts, across processes."""

    async def enqueue_trigger(self, trigger: Trigger) -> None:
        """Queue a trigger (its ``claimed_by``, ``claimed`` and ``run_id`` unset)."""

    async def claim_triggers(
        self,
        flows: Sequence[str],
        holder: str,
        now: float,
        make_run: Callable[[Trigger], FlowRunRecord],
        *,
        limit: int = 100,
    ) -> list[Trigger]:
        """Claim up to ``limit`` unclaimed triggers of these flows, oldest first, in one
        transaction; each trigger is claimed once across every handle and process.

        For each, ``make_run(trigger)`` gives the run it becomes (Running, its id,
        host, pid, machine, heartbeat and launch set), inserted in the same
        transaction; the trigger records ``holder``, ``now`` and the run's id. A server
        killed after claiming leaves a run that crash detection marks Crashed.

        ``make_run`` is called on the caller's thread for each trigger about to be
        claimed, before the transaction (a store may read the candidates first): it
        must be quick and touch no store, and a run it made for a trigger another
        handle claimed in between is dropped (that call then claims fewer). A run id
        already in the store is the caller's bug: ``ConfigurationError``, nothing
        claimed. An id given to :meth:`enqueue_trigger` twice is one too.
        """

    async def get_trigger(self, trigger_id: str) -> Trigger | None:
        """The trigger with this id (claimed or not), or ``None``."""

    async def list_triggers(
        self, *, flow: str | None = None, pending: bool = False, limit: int = 100
    ) -> list[Trigger]:
        """Triggers (of ``flow``; only unclaimed ones with ``pending``), newest first."""

    async def put_served(self, served: Sequence[ServedFlow]) -> None:
        """Upsert the registry rows of a server, keyed by ``(flow, holder)``."""

    async def beat_served(self, holder: str, now: float) -> None:
        """Refresh the ``heartbeat`` of every registry row of ``holder``."""

    async def remove_served(self, holder: str) -> None:
        """Remove every registry row of ``holder`` (a server stopping)."""

    async def list_served(self) -> list[ServedFlow]:
        """Every registry row, by flow then ``started``; stale ones included (the
        reader judges them by ``heartbeat``)."""

    async def claim_once(
        self, kind: str, keys: Sequence[str], holder: str, now: float
    ) -> list[str]:
        """Claim one-shot ``keys`` of ``kind`` (e.g. ``"crashed-hooks"`` and run ids), in
        one transaction; returns those claimed here, in the given order. A key is
        claimed once, ever, across every handle and process."""

    async def changes(self) -> int:
        """A token that changes whenever another handle or process commits (SQLite's
        ``PRAGMA data_version``, a counter in memory): polled every ~100 ms by a server
        so it wakes for a trigger or a pause without reading tables. Cheap; never
        blocks behind a writer. Compare tokens for equality only (they need not grow).
        It stays the same while nothing is committed; whether a commit through the
        same handle changes it is up to the store (it does in both built-in stores:
        SQLite writes on connections other than the one that asks)."""


class AssetStore(Protocol):
    """Assets: definitions, history, and the current state kept incrementally.

    Materialisations, check results and stale marks arrive in ``WriteBatch.assets``,
    in the transaction of the task runs that made them, and are applied in order by
    :func:`apply_asset_events` (the same code in every built-in store): the state of
    each asset touched is read, changed and written back inside the write
    transaction, so concurrent writers never lose each other's updates. Reading
    "which assets are stale, and why" is then one read of the state rows.
    """

    async def sync_assets(
        self, defs: Sequence[AssetDefRecord], marks: Mapping[str, Sequence[StaleMark]]
    ) -> dict[str, str]:
        """Upsert definitions, in one transaction. An asset whose stored code version
        differs gets every materialised partition marked stale (cause ``code-changed``),
        and the marks ``marks[key]`` (its downstream, computed by the caller from the
        graph) applied too. Returns ``key → previous code version`` of those changed."""

    async def list_asset_defs(self, keys: Sequence[str] | None = None) -> list[AssetDefRecord]:
        """Stored definitions (of ``keys``), by key."""

    async def asset_states(self, keys: Sequence[str] | None = None) -> list[AssetStateRecord]:
        """The state of every asset that has one (of ``keys``), by key."""

    async def asset_history(
        self, key: str, *, partition: str | None = None, limit: int = 100
    ) -> list[MaterializationRecord]:
        """Materialisations of ``key`` (of ``partition`` when given), newest first."""

    async def latest_materializations(
        self, key: str, partitions: Sequence[str | None]
    ) -> list[MaterializationRecord | None]:
        """The current materialisation of each partition (``None``: never materialised)."""

    async def check_results(
        self, key: str, *, partition: str | None = None, limit: int = 100
    ) -> list[CheckResultRecord]:
        """Check results of ``key`` (of ``partition`` when given), newest first."""

    async def add_dynamic_partitions(self, name: str, keys: Sequence[str], now: float) -> list[int]:
        """Add keys to the dynamic partitions ``name`` (those already there are kept as
        they are), in one transaction; returns the index of each given key. Indexes
        count from 0 in the order keys were first added, across handles and processes."""

    async def dynamic_partitions(self, name: str) -> list[str]:
        """The keys of the dynamic partitions ``name``, in index order."""

    async def add_asset_evaluations(self, records: Sequence[AssetEvaluationRecord]) -> None:
        """Append evaluations of assets' automation (``flowcore serve``), in one
        transaction."""

    async def asset_evaluations(
        self, key: str, *, until: float | None = None, limit: int = 100
    ) -> list[AssetEvaluationRecord]:
        """Evaluations of ``key`` made at or before ``until`` (default: all), newest first:
        why it was or was not materialised at a given time."""


#: The set {0} as stored: an unpartitioned asset once materialised.
_ONLY_ZERO: Final = ranges.encode([0, 1])


class AssetWrite:
    """What applying asset events changed, for the store to write back (see
    :func:`apply_asset_events`): states, current partition versions, history rows."""

    def __init__(
        self,
        state_of: Callable[[str], AssetStateRecord | None],
        version_of: Callable[[str, int], str | None],
    ) -> None:
        self._state_of = state_of
        self._version_of = version_of
        #: Touched states by key (written back whole).
        self.states: dict[str, AssetStateRecord] = {}
        #: ``(key, index) → materialisation`` now current (the newest of the batch) of each
        #: partition (an unpartitioned asset's is in its state: stores keep no row for it).
        self.current: dict[tuple[str, int], MaterializationRecord] = {}
        #: History rows to append, in order.
        self.history: list[MaterializationRecord | CheckResultRecord] = []
        self._sets: dict[tuple[str, str], list[int]] = {}

    def state(self, key: str) -> AssetStateRecord:
        found = self.states.get(key)
        if found is None:
            found = self._state_of(key) or AssetStateRecord(key=key)
            self.states[key] = found
        return found

    def version(self, key: str, index: int, partition: str | None = "") -> str | None:
        """The current data version of ``key``'s partition ``index``. An unpartitioned
        one (``partition=None``) is its state's: stores keep no partition row for it
        (one row fewer per materialisation), and each materialisation applied sets it."""
        if partition is None:
            state = self.states.get(key) or self._state_of(key)
            return None if state is None else state.data_version
        mat = self.current.get((key, index))
        if mat is not None:
            return mat.data_version
        return self._version_of(key, index)

    def bounds(self, key: str, which: str) -> list[int]:
        """The bounds of set ``which`` of ``key``, decoded once per batch."""
        found = self._sets.get((key, which))
        if found is None:
            data: bytes = getattr(self.state(key), which)
            found = ranges.decode(data) if data else []
            self._sets[(key, which)] = found
        return found

    def settled(self, key: str, state: AssetStateRecord | None = None) -> bool:
        """Whether ``key``'s sets are exactly "partition 0 materialised, nothing stale or
        failed", read from its state's bytes (none decoded in this batch). ``state``: its
        state, when the caller has read it already."""
        sets = self._sets
        if sets and (
            (key, "materialized") in sets or (key, "stale") in sets or (key, "failed") in sets
        ):
            return False
        if state is None:
            state = self.state(key)
        return state.materialized == _ONLY_ZERO and not state.stale and not state.failed

    def finish(self) -> None:
        """Encode the changed sets back into their states."""
        for (key, which), bounds in self._sets.items():
            setattr(self.states[key], which, ranges.encode(bounds) if bounds else b"")
        self._sets.clear()


#: The stale ranges whose cause an asset's state keeps (``AssetStateRecord.causes``): a
#: backfill marks its range with one cause, so this bounds pathological patterns only;
#: partitions past it are explained by the asset's last cause.
CAUSES_KEPT: Final = 1000


def _label(state: AssetStateRecord, start: int, stop: int, cause: dict[str, Any] | None) -> None:
    """Say why ``[start, stop)`` is stale (``None``: it is not), within the bound."""
    if cause is None and not state.causes:
        return  # the common case: nothing labelled, nothing to unlabel
    causes = ranges.label_range(state.causes, start, stop, cause)
    state.causes = causes[-CAUSES_KEPT:]


def _mark(write: AssetWrite, mark: StaleMark) -> None:
    stale = write.bounds(mark.key, "stale")
    for start, stop in mark.ranges:
        ranges.add_range(stale, start, stop)
    if mark.cause:
        state = write.state(mark.key)
        state.cause = dict(mark.cause)
        for start, stop in mark.ranges:
            _label(state, start, stop, dict(mark.cause))


def apply_asset_events(write: AssetWrite, events: Sequence[AssetEvent], now: float) -> None:
    """Apply materialisations, check results and stale marks in order (module docstring
    of :class:`AssetStore`). Pure: it reads through ``write``'s callbacks and leaves what
    to write in ``write``.

    A materialisation: its partition is materialised, no longer failing a check, and
    fresh, unless an upstream value it consumed is no longer the current one (another
    process re-materialised it meanwhile): then it stays stale, naming that upstream.
    When its data version differs from the partition's previous one, its ``downstream``
    marks (computed by the materialiser from the graph's mappings) apply; the same
    version leaves its downstream fresh.
    """
    history, current_of, states = write.history, write.current, write.states
    for event in events:
        if isinstance(event, MaterializationRecord):
            key, index, partition = event.key, event.index, event.partition
            # Its state first (read once, kept): an unpartitioned asset's version is in it.
            state = states.get(key) or write.state(key)
            if partition is None:
                previous = state.data_version
            else:
                previous = write.version(key, index, partition)
            history.append(event)
            moved = None
            for up, part, seen, upstream_index in event.consumed:
                current = write.version(up, upstream_index, part)
                if current is not None and current != seen:
                    moved = (up, part, seen, current)
                    break
            if moved is None and index == 0 and write.settled(key, state):
                # Re-materialised, not stale, not failed (the common case of an
                # unpartitioned asset): no set changes, none decoded or encoded.
                if state.cause:
                    state.cause = {}
            else:
                _apply_sets(write, event, state, moved)
            if partition is not None:
                current_of[(key, index)] = event
            state.last_at = event.at
            state.last_run_id = event.run_id
            state.last_partition = partition
            state.data_version = event.data_version
            state.code_version = event.code_version
            state.materializations += 1
            if event.downstream and previous is not None and previous != event.data_version:
                for mark in event.downstream:
                    _mark(write, mark)
        elif isinstance(event, CheckResultRecord):
            history.append(event)
            if not event.passed and event.blocking:
                ranges.add_range(write.bounds(event.key, "failed"), event.index, event.index + 1)
                write.state(event.key).failed_check = event.check
        else:
            _mark(write, event)
    write.finish()


def _apply_sets(
    write: AssetWrite,
    event: MaterializationRecord,
    state: AssetStateRecord,
    moved: tuple[str, str | None, str, str] | None,
) -> None:
    key, index = event.key, event.index
    ranges.add_range(write.bounds(key, "materialized"), index, index + 1)
    ranges.discard_range(write.bounds(key, "failed"), index, index + 1)
    stale = write.bounds(key, "stale")
    if moved is None:
        ranges.discard_range(stale, index, index + 1)
        _label(state, index, index + 1, None)
    else:
        ranges.add_range(stale, index, index + 1)
        state.cause = {
            "reason": "upstream-changed",
            "upstream": moved[0],
            "partition": moved[1],
            "consumed": moved[2],
            "current": moved[3],
        }
        _label(state, index, index + 1, dict(state.cause))
    if not stale:
        state.cause = {}
        state.causes = []


def apply_code_change(
    write: AssetWrite, key: str, old: str, new: str, marks: Sequence[StaleMark]
) -> None:
    """A definition synced with another code version: every materialised partition of
    ``key`` is stale (cause ``code-changed``), and its downstream ``marks`` apply."""
    materialized = write.bounds(key, "materialized")
    if not materialized:
        return  # never built: missing, not stale, and nothing downstream read it
    stale = write.bounds(key, "stale")
    for i in range(0, len(materialized), 2):
        ranges.add_range(stale, materialized[i], materialized[i + 1])
    state = write.state(key)
    state.cause = {"reason": "code-changed", "from": old, "to": new}
    state.causes = [
        (materialized[i], materialized[i + 1], dict(state.cause))
        for i in range(0, len(materialized), 2)
    ][-CAUSES_KEPT:]
    for mark in marks:
        _mark(write, mark)
    write.finish()


@runtime_checkable
class CacheBatchReads(Protocol):
    """Reading many cache entries in one go: the lookups of the calls started together.

    A role of its own, not part of :class:`Store`: the engine uses it only for lookups
    that must wait (``get_cache_nowait`` raised ``WouldBlock``: a database server), where
    one query for the keys of a whole ``gather`` replaces a round trip each. A store
    without it reads each key with :meth:`CacheStore.get_cache`. ``check_store`` checks
    it on a store that has it."""

    async def get_cache_many(self, keys: Sequence[str]) -> Mapping[str, CacheEntry]:
        """The entries stored under any of ``keys`` (expired or not), by key; a key with no
        entry is absent. ``keys`` may repeat a key, and may be empty; any number of them
        (the store splits its statements as it needs)."""


@runtime_checkable
class RunQueries(Protocol):
    """What makes the web UI's big pages fast: the runs list filtered and paged by the
    store, and a run's task graph read without whole records. A role of its own, not
    part of :class:`Store` yet: a store without it still backs every page, the views
    then reading what the other roles give (slower on 100,000 runs or task runs).
    ``check_store`` checks it on a store that has it."""

    async def filter_runs(
        self,
        *,
        name: str | None = None,
        state: str | None = None,
        since: float | None = None,
        until: float | None = None,
        tag: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> list[FlowRunRecord]:
        """Flow runs, newest first, of flow ``name``, in ``state``, created in ``[since,
        until)``, with a task run of a task tagged ``tag`` (its own: a subflow's task
        runs tag the subflow), each when given; ``offset`` matches skipped, then at most
        ``limit``. A page costs about the runs it skips and shows, however many the store
        holds (``ConfigurationError`` for a ``limit`` below 1 or a negative ``offset``)."""

    async def task_run_edges(
        self, run_id: str, *, after: int = -1, limit: int | None = None
    ) -> list[tuple[int, str, str, int | None, list[int] | None]]:
        """``(seq, name, state, parent_seq, upstream)`` of run ``run_id``'s task runs
        with ``seq`` greater than ``after``, in ``seq`` order, at most ``limit``: the shape
        of a run's task graph without whole records (the web UI aggregates the graph of
        a run of 100,000 task runs from it, in pages)."""


#: Top-level runs deleted per transaction by :meth:`RunRetention.prune_runs` (by default).
PRUNE_CHUNK: Final = 500
#: Log lines looked at per transaction by :meth:`RunRetention.prune_logs` (by default).
LOG_CHUNK: Final = 5000


class PruneCount(msgspec.Struct):
    """What a prune deleted (with ``dry_run``: what it would delete).

    ``runs`` counts flow runs, top-level ones and their subflows; ``logs`` log lines;
    ``spans`` span rows (task spans are part of their task runs). ``blobs``: result
    blobs. A real prune leaves it 0 in the store's answer, and
    :func:`prune_runs_and_results` sets it to what the blob pruning after it deleted; a
    dry run counts the blobs that only the runs it would delete refer to.
    """

    runs: int = 0
    task_runs: int = 0
    logs: int = 0
    spans: int = 0
    blobs: int = 0

    def __add__(self, other: PruneCount) -> PruneCount:
        return PruneCount(
            self.runs + other.runs,
            self.task_runs + other.task_runs,
            self.logs + other.logs,
            self.spans + other.spans,
            self.blobs + other.blobs,
        )

    def to_dict(self) -> dict[str, int]:
        return msgspec.structs.asdict(self)


@runtime_checkable
class RunRetention(Protocol):
    """Deleting old runs, with everything that is theirs, so a store's size stays bounded
    (``flowcore runs prune``, ``flowcore serve`` with ``FLOWCORE_RUN_RETENTION_DAYS``).

    A role of its own, not part of :class:`Store` yet: a store without it backs the
    engine, and ``flowcore runs prune`` says it cannot prune there. ``check_store``
    checks it on a store that has it.

    What goes: top-level flow runs that *ended* (a terminal state: Completed, Failed,
    Cancelled, TimedOut, Crashed, ...) before ``before``, never a run still Pending,
    Running or Retrying, nor one that an unfinished run is resuming (its resumption
    reads its task runs and results); with each, its whole tree of subflow runs, and
    of every run in it: task runs, tags, log lines, span rows (those naming the run,
    and those naming no run of a trace only the deleted runs have), span-export
    claims, the claimed trigger that started it and its "crashed-hooks" one-shot claim.

    What stays: asset history and state (staleness is judged from them: a
    materialisation keeps naming the run that made it), cache entries, schedules and
    their claimed slots (a slot's row is what keeps it from firing twice), and the
    blobs still referenced by anything (:meth:`CacheStore.result_refs`); a real prune
    deletes no blob itself: :func:`prune_runs_and_results` prunes them after it.

    Work goes in chunks: at most ``chunk`` top-level runs per write transaction, and a
    run of many rows (a million task runs, say) over several, so a prune of a million
    old runs never holds the database long enough to stall running flows. Each chunk
    is found and deleted through indexes: no table is scanned whole. A run's own rows
    go before its flow run row, so a prune that stops half-way leaves no orphan: the
    next one finishes the run.
    """

    async def prune_runs(
        self,
        before: float,
        *,
        keep_runs: int | None = None,
        chunk: int = PRUNE_CHUNK,
        dry_run: bool = False,
    ) -> PruneCount:
        """Delete the top-level runs (and their trees, as above) that ended before
        ``before`` (unix seconds) and are not among the newest ``keep_runs`` top-level
        runs (by ``created``); ``dry_run`` deletes nothing and counts what would go.
        ``ConfigurationError`` for a ``before`` that is not a finite number, a negative
        ``keep_runs`` or a ``chunk`` below 1 (:func:`check_prune`)."""

    async def prune_logs(
        self, before: float, *, chunk: int = LOG_CHUNK, dry_run: bool = False
    ) -> int:
        """Delete the log lines written before ``before`` (their ``time``), of any run,
        kept or not; returns how many (``dry_run``: how many would go). Lines are
        looked at in the order they were written (``id``), ``chunk`` per transaction,
        from the oldest, until a chunk holds none older than ``before``: a line written
        late with an older time (a clock behind the others') may stay."""


def check_prune(before: object, keep_runs: object = None, chunk: object = 1) -> None:
    """Every problem with the options of a prune, in one ``ConfigurationError``."""
    problems = []
    if not _validate.is_number(before):
        problems.append(f"`before` must be a finite number of unix seconds, got {before!r}")
    if problem := _validate.count("keep_runs", keep_runs, minimum=0):
        problems.append(problem)
    if problem := _validate.count("chunk", chunk, optional=False):
        problems.append(problem)
    if problems:
        raise ConfigurationError("invalid prune options: " + "; ".join(problems))


class RunTimes(msgspec.Struct, gc=False):
    """What a prune reads of a flow run's body (the rest is skipped, not built)."""

    ended: float | None = None
    heartbeat: float | None = None
    started: float | None = None
    task_count: int = 0
    #: Set when the run's span is a child of a span it did not make: its trace is shared.
    parent_span_id: str | None = None


class _ValueRef(msgspec.Struct, gc=False):
    value_ref: str | None = None


_run_times_dec = msgspec.msgpack.Decoder(RunTimes)
_value_ref_dec = msgspec.msgpack.Decoder(_ValueRef)


def run_times(body: bytes) -> RunTimes:
    """The times (and task count, and parent span) of a flow run's msgpack body."""
    return _run_times_dec.decode(body)


def value_ref_of(body: bytes) -> str | None:
    """The blob reference of a materialisation's msgpack body, nothing else decoded."""
    return _value_ref_dec.decode(body).value_ref


def ended_at(
    ended: float | None, heartbeat: float | None, started: float | None, created: float
) -> float:
    """When a run in a terminal state ended: its ``ended``, or for a record that has none
    (written by an older flowcore) the last time it is known to have been alive."""
    for value in (ended, heartbeat, started):
        if value is not None and math.isfinite(value):
            return value
    return created


def freed_results(doomed: Counter[str], holders: Mapping[str, int], kept: set[str]) -> int:
    """How many result blobs a prune frees: the refs of ``doomed`` (ref → how many of
    the task runs to delete hold it) that no other task run holds (``holders``: every
    task run holding each, as stored) and nothing else refers to (``kept``: cache entries'
    and asset materialisations' refs)."""
    return sum(
        1 for ref, count in doomed.items() if holders.get(ref, 0) <= count and ref not in kept
    )


@runtime_checkable
class BlobStore(Protocol):
    """Large results, by reference (the SHA-256 of their content).

    Put before the records that refer to them are written, so a record never
    names a blob that is not there; a blob whose content does not match its
    reference is refused when read.
    """

    #: Where the blobs live, for messages.
    location: str

    async def put(self, blobs: Mapping[str, bytes]) -> None:
        """Store each blob under its reference (idempotent: the content decides the name)."""

    async def get(self, ref: str) -> bytes:
        """The verified content of ``ref``; raises ``ResultUnreadable`` if missing or altered."""

    async def size(self, ref: str) -> int | None:
        """The size of ``ref`` in bytes, or ``None`` when it is missing."""

    async def prune(self, keep: set[str], *, grace: float = 120.0) -> int:
        """Delete blobs not in ``keep`` and older than ``grace`` seconds; returns how many."""


@runtime_checkable
class Store(
    RunStore, CacheStore, SpanStore, LogStore, LeaseStore, ServingStore, AssetStore, Protocol
):
    """Every role: what ``Engine(store=...)`` takes."""

    #: Where large results go (``None``: they stay inline in the records).
    blobs: BlobStore | None


class TagPage:
    """A page of task runs whose tags hold ``tag``, taken from chunks read in ``seq``
    order (``list_task_runs(tag=...)`` of a store keeping tags in the record's body):
    ``offset`` matches skipped, then at most ``limit`` kept (``None``: all). With
    ``keep=False`` only what counting needs is kept of each match (id, name, state,
    times), not the whole record. Shared so that every store pages a tag alike.

    ``tag`` is matched as it was recorded: a tag with lone surrogates (from a file name
    that is not UTF-8) is kept escaped by a store that cannot hold it
    (:func:`flowcore.ids.safe_text`), and a lookup of it must find that."""

    def __init__(self, tag: str, offset: int, limit: int | None, *, keep: bool = True) -> None:
        self.tag, self.limit, self.keep = safe_text(tag), limit, keep
        self._skip = offset
        self.found: list[TaskRunRecord] = []

    @property
    def full(self) -> bool:
        return self.limit is not None and len(self.found) >= self.limit

    def take(self, records: Iterable[TaskRunRecord]) -> None:
        """Take the matches of one chunk, until the page is full."""
        for record in records:
            if self.tag not in (record.tags or ()):
                continue
            if self._skip:
                self._skip -= 1
                continue
            self.found.append(record if self.keep else TaskRunRecord(
                run_id=record.run_id, seq=record.seq, name=record.name,
                state=record.state, created=record.created,
            ))  # fmt: skip
            if self.full:
                return


def claimed_source(run: FlowRunRecord) -> str:
    """The run a :meth:`RunStore.claim_resume` of ``run`` claims: its ``resumed_from``.

    Raises ``ConfigurationError`` for a record that resumes nothing: a claim is the
    row of a resumption.
    """
    if not run.resumed_from:
        raise ConfigurationError(
            f"claim_resume takes the record of a resumption (resumed_from set); run "
            f"{run.id!r} resumes nothing"
        )
    return run.resumed_from


def not_found_message(run_id: str, location: str, matches: int) -> str:
    """Why no run matched ``run_id`` in the store at ``location``, and what to do."""
    if matches > 1:
        return (
            f"run id prefix {run_id!r} matches {matches} runs in {location}; "
            "give more characters of the id (see `flowcore runs ls`)"
        )
    return (
        f"no run with id {run_id!r} in {location}; list runs with `flowcore runs ls`, "
        "or point FLOWCORE_HOME at the folder whose database holds it"
    )


def replaces(stored: State, written: State) -> bool:
    """Whether a write of a record in state ``written`` replaces the stored one, in state
    ``stored``: always while it is not terminal; over ``Crashed``, when ``written`` is
    :data:`FINISHED` (a late completion, see :func:`late_completion`); else never."""
    return stored not in TERMINAL or (stored is State.CRASHED and written in FINISHED)


def late_completion(crashed: _R, finished: _R) -> _R:
    """What a store keeps when ``finished`` is written over the stored ``crashed`` record.

    ``finished`` whole (its state, times, error, result, ...), with the Crashed entry of
    ``crashed``'s history put back before its final entry, at the time it was marked and
    with a note saying it was a mistake (and why it was made, when that was recorded):
    the history shows the run was taken for dead, and went on.
    """
    entries = [e for e in crashed.history if e and e[0] == State.CRASHED.value]
    if entries:
        marked: Any = entries[-1][1]
        why = entries[-1][2] if len(entries[-1]) > 2 else None
    else:
        marked = crashed.ended if crashed.ended is not None else crashed.created
        why = None
    note = "marked crashed by mistake: the run went on, and finished later"
    if why:
        note += f" (marked because: {why})"
    entry = (State.CRASHED.value, marked, note)
    history = list(finished.history)
    if history and history[-1] and history[-1][0] == finished.state.value:
        history.insert(len(history) - 1, entry)
    else:
        history.append(entry)
    return msgspec.structs.replace(finished, history=history)


async def prune_runs_and_results(
    store: Store,
    before: float,
    *,
    keep_runs: int | None = None,
    chunk: int = PRUNE_CHUNK,
    dry_run: bool = False,
) -> PruneCount:
    """:meth:`RunRetention.prune_runs`, then the blobs nothing refers to any more
    (:meth:`BlobStore.prune` keeping :meth:`CacheStore.result_refs`, as ``flowcore cache
    clear`` does: a blob younger than the prune's grace stays, in case its records are
    not committed yet). Blobs are pruned only when runs were deleted.

    ``ConfigurationError`` naming the store when it does not play :class:`RunRetention`.
    """
    if not isinstance(store, RunRetention):
        raise ConfigurationError(
            f"the store {store.location} cannot prune runs: {type(store).__name__} has no "
            "prune_runs (the RunRetention role of flowcore.store.base); upgrade the store's "
            "plugin, or delete old runs with the database's own tools"
        )
    count = await store.prune_runs(before, keep_runs=keep_runs, chunk=chunk, dry_run=dry_run)
    if not dry_run and count.runs and store.blobs is not None:
        count.blobs = await store.blobs.prune(await store.result_refs())
    return count
