"""The records flowcore keeps about runs: what the engine mutates and the store persists.

They are msgspec Structs because a flow may make a million of them: a Struct is
created several times faster than a class instance and is smaller. ``gc=False``
is safe because a record holds only strings, numbers, bytes and flat lists of
tuples, never a reference back to an object that could form a cycle.

``history`` holds one entry per state change: ``(state, unix time)``, or
``(state, unix time, note)`` where a note explains it (the error that made an
attempt retry).

Schema evolution rule (shared with the store): new fields get defaults, field
types never change, and readers ignore fields they do not know.

Every state change of a run goes through :func:`transition`, which holds it to
the table in :mod:`flowcore.states`: the engine, crash detection and resume
cannot record a history the table forbids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from .states import NEXT, TERMINAL, State

__all__ = [
    "AssetDefRecord",
    "AssetEvent",
    "AssetStateRecord",
    "CacheEntry",
    "CheckResultRecord",
    "FlowRunRecord",
    "Launch",
    "LogRecord",
    "MaterializationRecord",
    "ScheduleState",
    "ServedFlow",
    "SlotClaim",
    "SpanRecord",
    "StaleMark",
    "TaskRunRecord",
    "Trigger",
    "WriteBatch",
    "task_run_label",
    "transition",
]


class FlowRunRecord(msgspec.Struct, gc=False):
    """One run of a flow (or of a task called outside any flow: ``kind="task"``)."""

    id: str
    name: str
    state: State
    created: float
    kind: str = "flow"
    parameters: bytes = b""  # msgpack of the bound parameters, see encoding.encode_inputs
    parent_run_id: str | None = None
    parent_task_seq: int | None = None
    started: float | None = None
    ended: float | None = None
    heartbeat: float | None = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    history: list[tuple[Any, ...]] = msgspec.field(default_factory=list)
    host: str = ""
    pid: int = 0
    task_count: int = 0
    entrypoint: str | None = None  # where to import the flow from, to resume it
    resumed_from: str | None = None  # the run this one re-drives
    trace_id: str | None = None  # OpenTelemetry trace of the run (hex), when traced
    span_id: str | None = None  # the run's own span (hex)
    # Where ``pid`` means something (kernel boot and PID namespace, see _process.MACHINE):
    # only a reader with the same identity may ask the operating system about ``pid``.
    machine: str = ""
    # SHA-256 (hex) of the source file ``entrypoint`` names, as the run had it: a resume
    # refuses a changed file unless asked (see flowcore.resume).
    entrypoint_hash: str | None = None
    # A subflow's dependency edges: seqs of its parent run's task runs whose futures
    # were passed to it (it waited for them and received their results).
    upstream: list[int] | None = None
    # What started the run when a call did not (see :class:`Launch`): ``"schedule
    # <key>"`` or ``"trigger <id>"``; with a schedule, the slot and the data interval
    # it covers (unix seconds).
    launched_by: str | None = None
    scheduled_for: float | None = None
    interval_start: float | None = None
    interval_end: float | None = None
    # The span the run's span is a child of (hex): the calling task run's, the calling
    # flow run's, or a span the caller made current; ``None`` for a root. With
    # flowcore's own spans the record is the run's span (see telemetry.flow_span).
    parent_span_id: str | None = None

    @property
    def duration(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return self.ended - self.started


class Launch(msgspec.Struct, frozen=True, gc=False):
    """What started a run when no call in user code did: a schedule's slot, a trigger.

    Given to :meth:`flowcore.Flow.call_with` by ``flowcore serve``; the run records it
    (:attr:`FlowRunRecord.launched_by` and the slot's times) and user code reads it
    from ``flowcore.current_flow_run()``.
    """

    #: ``"schedule <key>"`` or ``"trigger <id>"``: shown with the run, and filtered on.
    by: str
    #: The slot's time (unix seconds), for a scheduled run.
    scheduled_for: float | None = None
    #: The data interval the slot covers: ``[interval_start, interval_end)``.
    interval_start: float | None = None
    interval_end: float | None = None
    #: The id the run takes: the id of the row a server's claim inserted (a slot's or a
    #: trigger's run, claimed before it starts so a server killed in between leaves a
    #: Crashed run, not a gap); ``None`` for a new id.
    run_id: str | None = None


class TaskRunRecord(msgspec.Struct, gc=False, omit_defaults=True):
    """One tracked call of a task inside a flow run, identified by ``(run_id, seq)``."""

    run_id: str
    seq: int
    name: str
    state: State
    created: float
    parent_seq: int | None = None  # the task run this one was called from
    upstream: list[int] | None = None  # task runs whose futures were inputs (dependency edges)
    inputs: bytes = b""
    attempts: int = 0
    started: float | None = None
    ended: float | None = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    history: list[tuple[Any, ...]] = msgspec.field(default_factory=list)
    result: bytes | None = None  # the stored result (serializers.encode_result), when small
    result_ref: str | None = None  # sha256 of the result file, when large
    cache_key: str | None = None
    cached_from: str | None = None  # "run_id.seq" of the task run that computed a cached value
    # The task run's span (hex ids): with flowcore's own spans, the task run record is
    # the persisted form of its span (see telemetry.task_span), so no span row is written.
    span_id: str | None = None
    parent_span_id: str | None = None
    # What resume matches the call on when ``inputs`` cannot say it in full (recorded
    # lossily, or not at all): a hash of the complete inputs, or encoding.UNHASHABLE for
    # inputs with no stable encoding (never replayed). ``None``: ``inputs`` are complete
    # and are the identity themselves (see encoding.record_call).
    identity: str | None = None
    #: The task's tags (``@task(tags=...)``), for filtering its runs.
    tags: list[str] | None = None
    #: The name of this call (``@task(task_run_name="fetch-{page}")``), beside the task's.
    run_name: str | None = None

    @property
    def duration(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return self.ended - self.started

    @property
    def label(self) -> str:
        return task_run_label(self.run_id, self.seq)


class ScheduleState(msgspec.Struct, gc=False):
    """What the store keeps of one schedule of a served flow (``flowcore serve``).

    Keyed by ``(flow, key)`` (:attr:`flowcore.schedules.Schedule.key`). A server
    upserts ``description`` and ``next_fire`` when it starts and as it goes; ``cursor``
    moves only with a slot claim, and ``paused`` only by ``flowcore schedules
    pause|resume``: a restarted server reads both back.
    """

    flow: str
    key: str
    #: JSON text: what the schedule is (cron expression or interval, time zone,
    #: parameters, catch-up and overlap policies), for ``flowcore flows ls``.
    description: str = "{}"
    #: The last slot claimed (fired or skipped), unix seconds; ``None`` before the first.
    cursor: float | None = None
    #: When the schedule fires next (unix seconds), as its server last computed it.
    next_fire: float | None = None
    paused: bool = False
    updated: float = 0.0


class SlotClaim(msgspec.Struct, gc=False):
    """One slot of a schedule, to claim (:meth:`flowcore.store.base.ServingStore.claim_slots`).

    A slot is ``(flow, key, slot)``; whoever claims it first owns it, in any process.
    ``run`` is the slot's run as it starts (Running, its id, host, pid, machine,
    heartbeat and launch fields set), inserted in the claim's transaction, so a server
    killed right after claiming leaves a run that crash detection marks Crashed, not a
    gap; ``run`` is ``None`` and ``skipped`` says why for a slot claimed to be skipped
    (the overlap policy, a catch-up policy): no other server fires it.
    """

    flow: str
    key: str
    slot: float
    run: FlowRunRecord | None = None
    skipped: str | None = None
    #: Set by the store: when the claim was made (unix seconds).
    claimed: float | None = None


class Trigger(msgspec.Struct, gc=False):
    """A run asked for by hand (``flowcore trigger``), queued until a server claims it."""

    id: str
    flow: str
    #: JSON text of the parameters, as given (validated when the run starts: invalid
    #: parameters make a run recorded Failed, never a dropped trigger).
    parameters: str
    created: float
    #: Who asked (user@host), for display.
    by: str = ""
    #: The server (holder id) that claimed it, and when; the run it became.
    claimed_by: str | None = None
    claimed: float | None = None
    run_id: str | None = None


class ServedFlow(msgspec.Struct, gc=False):
    """A flow a running server serves: the served-flows registry (``flowcore flows ls``)."""

    flow: str
    #: The serving process's holder id (one per server process).
    holder: str
    host: str
    pid: int
    started: float
    heartbeat: float
    entrypoint: str | None = None
    #: JSON text: the parameters' schema (names, types, defaults), for ``trigger`` and UIs.
    parameters_schema: str = "{}"
    #: The keys of its schedules.
    schedules: list[str] = msgspec.field(default_factory=list)
    machine: str = ""


class CacheEntry(msgspec.Struct, gc=False):
    """A cached task result, shared by every run and process using the same store."""

    key: str
    task_name: str
    created: float
    expires: float | None = None
    result: bytes | None = None
    result_ref: str | None = None
    run_id: str | None = None  # the task run that computed it
    seq: int | None = None

    def expired(self, now: float) -> bool:
        return self.expires is not None and self.expires <= now


def task_run_label(run_id: str, seq: int) -> str:
    """The short id people see for a task run: ``<run id prefix>.<seq>``."""
    return f"{run_id[:8]}.{seq}"


class SpanRecord(msgspec.Struct, gc=False, omit_defaults=True):
    """A finished span as flowcore stores it (ids in lowercase hex, times in ns since epoch)."""

    trace_id: str
    span_id: str
    name: str
    start: int
    end: int = 0
    parent_id: str | None = None
    run_id: str | None = None
    kind: str = "INTERNAL"
    status: str = "UNSET"  # UNSET | OK | ERROR
    status_message: str | None = None
    attributes: dict[str, Any] = msgspec.field(default_factory=dict)
    events: list[tuple[str, int, dict[str, Any]]] = msgspec.field(default_factory=list)
    links: list[tuple[str, str]] = msgspec.field(default_factory=list)
    scope: str = "flowcore"


class LogRecord(msgspec.Struct, gc=False):
    """One line of a run's log: a ``logging`` record or a printed line, captured in a run.

    ``seq`` and ``task`` name the task run it was written in (both ``None`` for the
    flow's own body); ``level`` is the ``logging`` level number; ``message`` the
    formatted message, an exception's traceback included. ``id`` is given by the
    store when the line is written: it grows with every line written, so a reader
    pages (and follows) a run's log by it.
    """

    run_id: str
    seq: int | None
    task: str | None
    time: float  # unix seconds
    level: int
    logger: str
    message: str
    id: int | None = None


# -- assets ---------------------------------------------------------------------------------
#
# A partition is named by its key (``None`` for an unpartitioned asset, which is the one
# partition of index 0) and numbered by its index, which the asset's partitions
# definition gives; the store keeps per-asset state as range sets of indexes
# (:mod:`flowcore.ranges`), so a million partitions cost a few ranges.


class AssetDefRecord(msgspec.Struct, gc=False, omit_defaults=True):
    """An asset's definition as synced by a process that has its code."""

    key: str
    code_version: str
    group: str = "default"
    #: How its partitions read (``repr`` of the definition); ``None``: unpartitioned.
    partitions: str | None = None
    #: ``(upstream key, mapping)`` per edge, the mapping as a readable description.
    upstream: list[tuple[str, str]] = []
    #: The freshness policy as a readable description, or ``None``.
    freshness: str | None = None
    io: str = "result"
    checks: list[str] = []
    synced: float = 0.0
    #: The definition's parameters as data (``flowcore.assets.description``: versioned,
    #: rebuilt by readers without the code); ``None`` in rows of older versions.
    description: dict[str, Any] | None = None


class AssetEvaluationRecord(msgspec.Struct, gc=False, omit_defaults=True):
    """One evaluation of an asset's automation by ``flowcore serve``: what was considered,
    what was decided and why (``flowcore assets why NAME`` reads them).

    ``policy``: ``"on_upstream_change"``, ``"on_cron"`` or ``"on_missing"``.
    ``decision``: ``"materialize"`` (this server claimed it and started a run: ``run_id``),
    ``"claimed-elsewhere"`` (another server claimed the same reaction), ``"wait"`` (a
    debounce or a tick still to come: ``until``), or ``"skip"``. ``reason``: a sentence.
    ``considered``: what the decision read (the upstreams' data versions, the tick, the
    missing partitions), as plain data."""

    key: str
    at: float
    policy: str
    decision: str
    reason: str
    partition: str | None = None
    considered: dict[str, Any] = {}
    run_id: str | None = None
    until: float | None = None
    holder: str = ""


class StaleMark(msgspec.Struct, gc=False, omit_defaults=True):
    """Partitions of an asset made stale, and why: an upstream's data changed, or an
    upstream went stale. ``ranges``: half-open index ranges (``[(0, 1)]`` unpartitioned).
    ``cause``: structured (``{"reason": "upstream-changed", "upstream": ..., ...}``)."""

    key: str
    ranges: list[tuple[int, int]]
    cause: dict[str, Any] = {}


class MaterializationRecord(msgspec.Struct, gc=False, omit_defaults=True):
    """One materialisation of an asset (partition): append-only history.

    ``consumed``: ``(upstream key, upstream partition, data version, upstream partition
    index)`` of each upstream value read. ``downstream``: the stale marks its
    downstream gets if its data version differs from the partition's previous one
    (decided by the store, in the write transaction). ``value``/``value_ref``: the
    value kept by the default I/O (inline, or a blob reference when large); both
    ``None`` for another I/O.
    """

    key: str
    at: float
    run_id: str
    seq: int
    code_version: str
    data_version: str
    partition: str | None = None
    index: int = 0
    consumed: list[tuple[str, str | None, str, int]] = []
    metadata: dict[str, Any] = {}
    downstream: list[StaleMark] = []
    io: str = "result"
    value: bytes | None = None
    value_ref: str | None = None


class CheckResultRecord(msgspec.Struct, gc=False, omit_defaults=True):
    """One result of an asset check, run after a materialisation (of a partition)."""

    key: str
    check: str
    passed: bool
    at: float
    run_id: str
    seq: int
    severity: str = "error"
    blocking: bool = True
    partition: str | None = None
    index: int = 0
    metadata: dict[str, Any] = {}
    #: The error the check raised, if it raised (``passed`` is then False).
    error: str | None = None


#: What ``WriteBatch.assets`` holds, applied in order.
AssetEvent = MaterializationRecord | CheckResultRecord | StaleMark


class AssetStateRecord(msgspec.Struct, gc=False, omit_defaults=True):
    """The current state of one asset, kept incrementally by the store.

    The sets are :mod:`flowcore.ranges` bytes of partition indexes: ``materialized``
    (has a value), ``stale`` (marked stale since it was built: read it intersected with
    ``materialized``), ``failed`` (its last materialisation failed a blocking check).
    ``cause``: why it was last marked stale; ``failed_check``: the check that failed last.
    """

    key: str
    materialized: bytes = b""
    stale: bytes = b""
    failed: bytes = b""
    cause: dict[str, Any] = {}
    failed_check: str | None = None
    last_at: float | None = None
    last_run_id: str | None = None
    last_partition: str | None = None
    data_version: str | None = None
    code_version: str | None = None
    materializations: int = 0
    #: The store's id of the newest materialisation, for a store that numbers them and
    #: chains each to the one before (SQLite: the history is read by that chain).
    last_materialization: int | None = None
    #: Why each stale partition is stale: ``(start, stop, cause)`` over half-open index
    #: ranges, sorted and disjoint, within ``stale``. ``cause`` above is the last mark's,
    #: for the asset as a whole. Bounded (see ``store.base.CAUSES_KEPT``): partitions
    #: past it are explained by ``cause``.
    causes: list[tuple[int, int, dict[str, Any]]] = []


class WriteBatch(msgspec.Struct, frozen=True):
    """Everything one flush writes, in one transaction (see ``Store.write``).

    Every field defaults to empty, so a new kind of record is a new field here:
    stores that do not know it yet are not touched by its arrival, and callers
    name only what they write (``WriteBatch(flow_runs=[run])``).
    """

    flow_runs: Sequence[FlowRunRecord] = ()
    task_runs: Sequence[TaskRunRecord] = ()
    cache_entries: Sequence[CacheEntry] = ()
    spans: Sequence[SpanRecord] = ()
    #: Lines of run logs, in the order they were written (see :class:`LogRecord`).
    logs: Sequence[LogRecord] = ()
    #: Materialisations, check results and stale marks, applied in this order (a
    #: materialisation of a downstream clears what an upstream's marked before it).
    assets: Sequence[AssetEvent] = ()

    @property
    def rows(self) -> int:
        """How many records the batch holds."""
        return (
            len(self.flow_runs)
            + len(self.task_runs)
            + len(self.cache_entries)
            + len(self.spans)
            + len(self.logs)
            + len(self.assets)
        )


_VALUE = {state: state.value for state in State}  # a dict lookup beats Enum.value's property


def transition(
    record: FlowRunRecord | TaskRunRecord, state: State, now: float, note: str | None = None
) -> None:
    """Move ``record`` to ``state`` at ``now`` (unix seconds), with an optional ``note``.

    The one way a recorded state changes: checks the move against the table of
    :mod:`flowcore.states` (a refusal is a bug in flowcore, raised loudly rather
    than recorded), appends the history entry, and sets ``ended`` on reaching a
    terminal state. Cheap enough for the hot path (a set lookup and an append).
    """
    if state not in NEXT[record.state]:
        raise RuntimeError(
            f"flowcore bug: illegal state transition {record.state} -> {state} "
            f"of {type(record).__name__} {getattr(record, 'name', '?')!r}"
        )
    record.state = state
    if note is None:
        record.history.append((_VALUE[state], now))
    else:
        record.history.append((_VALUE[state], now, note))
    if state in TERMINAL:
        record.ended = now
