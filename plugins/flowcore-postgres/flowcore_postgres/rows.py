"""Row codecs: how records become PostgreSQL rows and back.

Records are stored as SQLite stores them (``flowcore.store.sqlite.rows``): the columns
that queries and indexes use, and the whole record as msgpack in ``body``, so a new
record field needs no migration. Reads decode the body and let the key columns win.

A batch is bound as one array per column (``unnest($1::text[], ...)``): one statement
and one round trip for any number of rows, where a statement per row would cost a round
trip each. The ``*_columns`` functions turn records into those arrays.

Log lines keep their text as UTF-8 ``bytea``: PostgreSQL's ``text`` cannot hold a NUL
character, and a log line may (a line's text is whatever the program logged). Run tags
too (``run_tags.tag``): a tag is any ``str`` a task was given, and a write batch that
failed on one would hold back every record in it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final, TypeAlias

import asyncpg
import msgspec

from flowcore.records import (
    AssetDefRecord,
    AssetEvaluationRecord,
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
    TaskRunRecord,
    Trigger,
)
from flowcore.states import TERMINAL, State
from flowcore.store.base import FINISHED

__all__ = [
    "CACHE_COLS",
    "FINISHED_VALUES",
    "FLOW_COLS",
    "LOG_COLS",
    "SCHEDULE_COLS",
    "SERVED_COLS",
    "TASK_COLS",
    "TERMINAL_SQL",
    "TERMINAL_VALUES",
    "TRIGGER_COLS",
    "UNFINISHED_SQL",
    "asset_body",
    "asset_def_record",
    "asset_state_record",
    "cache_columns",
    "cache_record",
    "check_record",
    "columns",
    "edges",
    "evaluation_body",
    "evaluation_record",
    "flow_columns",
    "flow_record",
    "flow_row",
    "log_columns",
    "log_record",
    "materialization_record",
    "run_tags",
    "schedule_record",
    "schedule_row",
    "served_record",
    "served_row",
    "slot_record",
    "span_columns",
    "span_record",
    "tag_value",
    "task_columns",
    "task_record",
    "task_row",
    "trigger_record",
    "trigger_row",
]

#: A row as read (an asyncpg record) or as written (a tuple of values).
Row: TypeAlias = Sequence[Any] | asyncpg.Record

TERMINAL_SQL: Final = ", ".join(f"'{s.value}'" for s in sorted(TERMINAL))
UNFINISHED_SQL: Final = "'Pending', 'Running', 'Retrying'"
#: The states a late completion is written in (``store.base.FINISHED``), as stored.
FINISHED_VALUES: Final = frozenset(state.value for state in FINISHED)
#: The terminal states, as stored.
TERMINAL_VALUES: Final = frozenset(state.value for state in TERMINAL)

FLOW_COLS: Final = (
    "id, name, kind, state, created, parent_run_id, parent_task_seq, trace_id, resumed_from, body"
)
TASK_COLS: Final = "run_id, seq, name, state, result_ref, body"
CACHE_COLS: Final = "key, task_name, created, expires, result, result_ref, run_id, seq"
LOG_COLS: Final = "id, run_id, seq, task, time, level, logger, message"
SCHEDULE_COLS: Final = "flow, key, description, cursor, next_fire, paused, updated"
TRIGGER_COLS: Final = 'id, flow, parameters, created, "by", claimed_by, claimed, run_id'
SERVED_COLS: Final = (
    "flow, holder, host, pid, machine, entrypoint, parameters_schema, schedules, started, heartbeat"
)


def columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows turned into ``width`` column lists (the arrays ``unnest`` takes)."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]


def last_by_key(rows: Iterable[tuple[Any, ...]], width: int) -> list[tuple[Any, ...]]:
    """``rows`` with one row per key (its first ``width`` values), the last one given.

    An upsert may not touch a row twice in one statement, and a batch may hold a record
    twice (a repeat is the newer state, as in SQLite, where the later row wins).
    """
    by_key: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for row in rows:
        by_key[row[:width]] = row
    return list(by_key.values())


# -- flow and task runs ---------------------------------------------------------------

_flow_enc = msgspec.msgpack.Encoder()
_flow_dec = msgspec.msgpack.Decoder(FlowRunRecord)
_task_enc = msgspec.msgpack.Encoder()
_task_dec = msgspec.msgpack.Decoder(TaskRunRecord)


def flow_row(r: FlowRunRecord) -> tuple[Any, ...]:
    """A flow run as written (``FLOW_COLS``): its query columns and its body."""
    return (
        r.id, r.name, r.kind, r.state.value, r.created, r.parent_run_id, r.parent_task_seq,
        r.trace_id, r.resumed_from, _flow_enc.encode(r),
    )  # fmt: skip


def flow_columns(records: Iterable[FlowRunRecord]) -> list[list[Any]]:
    return columns(last_by_key((flow_row(r) for r in records), 1), 10)


def flow_record(row: Row) -> FlowRunRecord:
    """A flow run read with ``FLOW_COLS``: the body, with the columns queries act on."""
    record = _flow_dec.decode(row[9])
    record.id, record.state = row[0], State(row[3])
    return record


def task_row(r: TaskRunRecord) -> tuple[Any, ...]:
    return (r.run_id, r.seq, r.name, r.state.value, r.result_ref, _task_enc.encode(r))


def task_columns(records: Iterable[TaskRunRecord]) -> list[list[Any]]:
    return columns(last_by_key((task_row(r) for r in records), 2), 6)


def task_record(row: Row) -> TaskRunRecord:
    record = _task_dec.decode(row[5])
    # The key columns are the truth (the body may predate a rename of the task).
    record.run_id, record.seq, record.name, record.state = row[0], row[1], row[2], State(row[3])
    return record


class _Edges(msgspec.Struct, gc=False):
    """What a task graph reads of a task run's body (the rest is skipped, not built)."""

    parent_seq: int | None = None
    upstream: list[int] | None = None


_edges_dec = msgspec.msgpack.Decoder(_Edges)


def edges(row: Row) -> tuple[int, str, str, int | None, list[int] | None]:
    """``(seq, name, state, parent_seq, upstream)`` of a task run read as ``seq, name,
    state, body`` (``RunQueries.task_run_edges``)."""
    found = _edges_dec.decode(row[3])
    return row[0], row[1], row[2], found.parent_seq, found.upstream


# -- run tags -------------------------------------------------------------------------


def tag_value(tag: str) -> bytes:
    """A tag as ``run_tags.tag`` holds it: its UTF-8 bytes, compared whole, byte for byte
    (a NUL is kept as it is; a lone surrogate never gets here: the task run's body refuses
    it first, and the recorder makes the record writable)."""
    return tag.encode()


def run_tags(task_runs: Sequence[TaskRunRecord]) -> dict[str, set[str]]:
    """The tags these task runs carry, by run: a batch holds a few runs, so a few sets. A
    task's records share one tags list, so a run of them is looked at once: ~15 ns a
    task run, tagged or not."""
    by_run: dict[str, set[str]] = {}
    last: list[str] | None = None
    last_run = ""
    for r in task_runs:
        tags = r.tags
        if tags and (tags is not last or r.run_id != last_run):
            last, last_run = tags, r.run_id
            found = by_run.get(last_run)
            if found is None:
                found = by_run[last_run] = set()
            found.update(tags)
    return by_run


# -- cache entries, spans, logs -------------------------------------------------------


def cache_columns(entries: Iterable[CacheEntry]) -> list[list[Any]]:
    rows = (
        (e.key, e.task_name, e.created, e.expires, e.result, e.result_ref, e.run_id, e.seq)
        for e in entries
    )
    return columns(last_by_key(rows, 1), 8)


def cache_record(row: Row) -> CacheEntry:
    return CacheEntry(
        key=row[0], task_name=row[1], created=row[2], expires=row[3], result=row[4],
        result_ref=row[5], run_id=row[6], seq=row[7],
    )  # fmt: skip


_span_enc = msgspec.msgpack.Encoder()
_span_dec = msgspec.msgpack.Decoder(SpanRecord)


def span_columns(spans: Iterable[SpanRecord]) -> list[list[Any]]:
    rows = ((s.trace_id, s.span_id, s.run_id, s.start, _span_enc.encode(s)) for s in spans)
    return columns(last_by_key(rows, 2), 5)


def span_record(body: bytes) -> SpanRecord:
    return _span_dec.decode(body)


def _utf8(text: str | None) -> bytes | None:
    return None if text is None else text.encode("utf-8", "surrogatepass")


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", "surrogatepass")


def log_columns(lines: Iterable[LogRecord]) -> list[list[Any]]:
    """Log lines as written (``LOG_COLS`` but ``id``), in order: ids follow it."""
    rows = [
        (
            line.run_id,
            line.seq,
            _utf8(line.task),
            line.time,
            line.level,
            _utf8(line.logger),
            _utf8(line.message),
        )
        for line in lines
    ]
    return columns(rows, 7)


def log_record(row: Row) -> LogRecord:
    """A log line read with ``LOG_COLS``."""
    return LogRecord(
        id=row[0], run_id=row[1], seq=row[2], task=_text(row[3]), time=row[4], level=row[5],
        logger=_text(row[6]) or "", message=_text(row[7]) or "",
    )  # fmt: skip


def log_filter_value(task: str) -> bytes:
    """A task name as the ``task`` column holds it, to compare with."""
    data = _utf8(task)
    assert data is not None
    return data


# -- serving --------------------------------------------------------------------------


def schedule_row(state: ScheduleState) -> tuple[Any, ...]:
    return (
        state.flow, state.key, state.description, state.cursor, state.next_fire,
        state.paused, state.updated,
    )  # fmt: skip


def schedule_record(row: Row) -> ScheduleState:
    """A schedule read with ``SCHEDULE_COLS``."""
    return ScheduleState(
        flow=row[0], key=row[1], description=row[2], cursor=row[3], next_fire=row[4],
        paused=bool(row[5]), updated=float(row[6]),
    )  # fmt: skip


def slot_record(row: Row) -> SlotClaim:
    """A claimed slot read as ``flow, key, slot, skipped, claimed`` (without its run)."""
    return SlotClaim(flow=row[0], key=row[1], slot=row[2], skipped=row[3], claimed=row[4])


def trigger_row(t: Trigger) -> tuple[Any, ...]:
    return (t.id, t.flow, t.parameters, t.created, t.by, t.claimed_by, t.claimed, t.run_id)


def trigger_record(row: Row) -> Trigger:
    """A trigger read with ``TRIGGER_COLS``."""
    return Trigger(
        id=row[0], flow=row[1], parameters=row[2], created=row[3], by=row[4],
        claimed_by=row[5], claimed=row[6], run_id=row[7],
    )  # fmt: skip


def served_row(s: ServedFlow) -> tuple[Any, ...]:
    """A registry row (``SERVED_COLS``): the schedule keys as a text array."""
    return (
        s.flow, s.holder, s.host, s.pid, s.machine, s.entrypoint, s.parameters_schema,
        list(s.schedules), s.started, s.heartbeat,
    )  # fmt: skip


def served_record(row: Row) -> ServedFlow:
    """A registry row read with ``SERVED_COLS``."""
    return ServedFlow(
        flow=row[0], holder=row[1], host=row[2], pid=row[3], machine=row[4], entrypoint=row[5],
        parameters_schema=row[6], schedules=list(row[7]), started=row[8], heartbeat=row[9],
    )  # fmt: skip


# -- assets: bodies are whole records in msgpack --------------------------------------

_asset_enc = msgspec.msgpack.Encoder()
_asset_def_dec = msgspec.msgpack.Decoder(AssetDefRecord)
_materialization_dec = msgspec.msgpack.Decoder(MaterializationRecord)
_check_dec = msgspec.msgpack.Decoder(CheckResultRecord)
_state_dec = msgspec.msgpack.Decoder(AssetStateRecord)
_evaluation_enc = msgspec.msgpack.Encoder()
_evaluation_dec = msgspec.msgpack.Decoder(AssetEvaluationRecord)


def asset_body(
    record: AssetDefRecord | MaterializationRecord | CheckResultRecord | AssetStateRecord,
) -> bytes:
    return _asset_enc.encode(record)


def asset_def_record(body: bytes) -> AssetDefRecord:
    return _asset_def_dec.decode(body)


def materialization_record(body: bytes) -> MaterializationRecord:
    return _materialization_dec.decode(body)


def check_record(body: bytes) -> CheckResultRecord:
    return _check_dec.decode(body)


def asset_state_record(body: bytes) -> AssetStateRecord:
    return _state_dec.decode(body)


def evaluation_body(record: AssetEvaluationRecord) -> bytes:
    return _evaluation_enc.encode(record)


def evaluation_record(body: bytes) -> AssetEvaluationRecord:
    return _evaluation_dec.decode(body)
