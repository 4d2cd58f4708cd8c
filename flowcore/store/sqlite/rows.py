"""Row codecs: how records become SQLite rows and back, and multi-row statements.

Task runs are stored as ``(keys, state, body)``: the body is the whole record in
msgpack, so adding a task-run field needs no migration. Flow runs too, since
migration 6: the columns queries and indexes use, and the whole record as msgpack
in ``body``; rows written before it (``body`` NULL) are read from their columns.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from itertools import chain
from typing import Any, Final, Generic, TypeVar

import msgspec

from ...records import (
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
from ...states import TERMINAL, State
from ..base import FINISHED

__all__ = [
    "ACTIVE_RUNS",
    "CACHE_COLS",
    "CLAIM_HOLDER",
    "CLAIM_ONCE",
    "CLAIM_SLOT",
    "CLAIM_TRIGGERS",
    "CRASHED_FLOW",
    "CRASHED_TASKS",
    "FINISHED_SQL",
    "FLOW_COLS",
    "FLOW_WRITE_COLS",
    "INSERT_FLOW",
    "INSERT_LOG",
    "INSERT_NEW_FLOW",
    "INSERT_SPAN",
    "INSERT_TASK",
    "INSERT_TASK_NO_REF",
    "LOG_COLS",
    "REPLACE_CRASHED_FLOW",
    "REPLACE_CRASHED_TASK",
    "SCHEDULE_COLS",
    "SERVED_COLS",
    "SLOT_COLS",
    "TASK_COLS",
    "TERMINAL_SQL",
    "TRIGGER_COLS",
    "UNFINISHED_SQL",
    "UPSERT_CACHE",
    "UPSERT_CURSOR",
    "UPSERT_FLOW",
    "UPSERT_SCHEDULE",
    "UPSERT_SERVED",
    "UPSERT_TASK",
    "V1_TASK_COLS",
    "V5_FLOW_COLS",
    "asset_body",
    "asset_def_record",
    "asset_state_record",
    "blob",
    "cache_record",
    "cache_row",
    "check_record",
    "evaluation_body",
    "evaluation_record",
    "flow_record",
    "flow_row",
    "log_record",
    "log_row",
    "materialization_record",
    "multi_row",
    "replace_crashed_flow_params",
    "replace_crashed_task_params",
    "schedule_record",
    "schedule_row",
    "served_record",
    "served_row",
    "slot_record",
    "span_record",
    "span_row",
    "task_record",
    "task_row",
    "task_row_no_ref",
    "trigger_record",
    "trigger_row",
    "v1_task_record",
    "v5_flow_record",
    "written_flow_record",
]

TERMINAL_SQL = ", ".join(f"'{s}'" for s in sorted(TERMINAL))
#: The states a late completion is written in (see store.base.FINISHED), as stored.
FINISHED_SQL: Final = frozenset(state.value for state in FINISHED)

V1_TASK_COLS = (
    "run_id, seq, name, state, created, parent_seq, upstream, inputs, attempts, started, ended, "
    "error_type, error_message, traceback, history"
)
#: A flow run's columns up to schema version 5, one per field: how rows written before
#: migration 6 (``body`` NULL) are read.
V5_FLOW_COLS = (
    "id, name, kind, state, created, parameters, parent_run_id, parent_task_seq, started, ended, "
    "heartbeat, error_type, error_message, traceback, history, host, pid, task_count, "
    "entrypoint, resumed_from, trace_id, span_id"
)
#: What reads select: the old columns (for rows from before migration 6) and the body.
FLOW_COLS = f"{V5_FLOW_COLS}, body"
#: What a write fills: the columns queries and indexes use, and the whole record in
#: ``body`` (a new FlowRunRecord field needs no migration).
FLOW_WRITE_COLS = (
    "id, name, kind, state, created, parent_run_id, parent_task_seq, trace_id, resumed_from, body"
)
TASK_COLS = "run_id, seq, name, state, result_ref, body"
CACHE_COLS = "key, task_name, created, expires, result, result_ref, run_id, seq"
INSERT_FLOW = f"INSERT INTO flow_runs ({FLOW_WRITE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
#: The run holding the claim on resuming run ?1 (see RunStore.claim_resume): the runs
#: re-driving it, at any depth (resumptions have the name of the run they resume, ?2,
#: which keeps the walk on an index), unfinished first, then (unless ?3, force)
#: completed ones, newest first.
CLAIM_HOLDER = f"""
WITH RECURSIVE chain(id) AS (
    SELECT ?1
    UNION
    SELECT f.id FROM flow_runs AS f JOIN chain ON f.resumed_from = chain.id WHERE f.name = ?2
)
SELECT {FLOW_COLS} FROM flow_runs
WHERE id IN (SELECT id FROM chain) AND id != ?1
    AND (state NOT IN ({TERMINAL_SQL}) OR (state = 'Completed' AND NOT ?3))
ORDER BY state = 'Completed', created DESC
LIMIT 1
"""
UPSERT_FLOW = f"""
INSERT INTO flow_runs ({FLOW_WRITE_COLS}) VALUES {{values}}
ON CONFLICT (id) DO UPDATE SET
    state = excluded.state, trace_id = excluded.trace_id,
    resumed_from = excluded.resumed_from, body = excluded.body
WHERE flow_runs.state NOT IN ({TERMINAL_SQL})
"""
UPSERT_TASK = f"""
INSERT INTO task_runs ({TASK_COLS}) VALUES {{values}}
ON CONFLICT (run_id, seq) DO UPDATE SET
    state = excluded.state, result_ref = excluded.result_ref, body = excluded.body
WHERE task_runs.state NOT IN ({TERMINAL_SQL})
"""
# A late completion over a Crashed row (see store.base.late_completion): read the
# Crashed row, then write the merged record over it.
CRASHED_FLOW = f"SELECT {FLOW_COLS} FROM flow_runs WHERE id = ? AND state = 'Crashed'"
CRASHED_TASKS = f"SELECT {TASK_COLS} FROM task_runs WHERE run_id = ? AND state = 'Crashed'"
REPLACE_CRASHED_FLOW = """
UPDATE flow_runs SET
    name = ?, kind = ?, state = ?, created = ?, parent_run_id = ?, parent_task_seq = ?,
    trace_id = ?, resumed_from = ?, body = ?
WHERE id = ? AND state = 'Crashed'
"""
REPLACE_CRASHED_TASK = """
UPDATE task_runs SET name = ?, state = ?, result_ref = ?, body = ?
WHERE run_id = ? AND seq = ? AND state = 'Crashed'
"""
INSERT_TASK = f"INSERT INTO task_runs ({TASK_COLS}) VALUES {{values}}"
# Most task runs have no result file: leaving the column out binds no None (see _blob).
INSERT_TASK_NO_REF = "INSERT INTO task_runs (run_id, seq, name, state, body) VALUES {values}"
INSERT_SPAN = (
    "INSERT OR REPLACE INTO spans (trace_id, span_id, run_id, start, body) VALUES {values}"
)
#: A log line as written, and as read (``id`` first: the store gives it).
LOG_WRITE_COLS = "run_id, seq, task, time, level, logger, message"
LOG_COLS = f"id, {LOG_WRITE_COLS}"
INSERT_LOG = f"INSERT INTO logs ({LOG_WRITE_COLS}) VALUES {{values}}"
UPSERT_CACHE = f"""
INSERT OR REPLACE INTO cache_entries ({CACHE_COLS}) VALUES {{values}}
"""

# -- serving (flowcore serve, migration 8) --------------------------------------------

#: The states of a run that is not finished, as the partial index flow_runs_active has
#: them (the query must repeat them for SQLite to use that index).
UNFINISHED_SQL: Final = "'Pending', 'Running', 'Retrying'"
#: Unfinished top-level runs of flow ?, oldest first (on the index flow_runs_active).
ACTIVE_RUNS = f"""
SELECT {FLOW_COLS} FROM flow_runs
WHERE name = ? AND parent_run_id IS NULL AND state IN ({UNFINISHED_SQL})
ORDER BY created, id
"""
#: A claim's run: a new row (the same codec as the writer's, so its later upserts of the
#: run land on it), or nothing when its id (or a unique index) is taken.
INSERT_NEW_FLOW = (
    f"INSERT INTO flow_runs ({FLOW_WRITE_COLS}) VALUES {{values}} "
    "ON CONFLICT DO NOTHING RETURNING id"
)
SLOT_COLS = "flow, key, slot, run_id, skipped, claimed"
#: Slots claimed here: those whose row this statement inserted.
CLAIM_SLOT = (
    f"INSERT INTO slots ({SLOT_COLS}) VALUES {{values}} "
    "ON CONFLICT DO NOTHING RETURNING flow, key, slot"
)
#: A slot claim moves its schedule's cursor forward, never back (a new schedule gets one).
UPSERT_CURSOR = """
INSERT INTO schedules (flow, key, cursor, updated) VALUES (?, ?, ?, ?)
ON CONFLICT (flow, key) DO UPDATE SET cursor = excluded.cursor
WHERE schedules.cursor IS NULL OR schedules.cursor < excluded.cursor
"""
SCHEDULE_COLS = "flow, key, description, cursor, next_fire, paused, updated"
#: A server's view of a schedule; cursor and paused stay as stored (see put_schedules).
UPSERT_SCHEDULE = f"""
INSERT INTO schedules ({SCHEDULE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (flow, key) DO UPDATE SET
    description = excluded.description, next_fire = excluded.next_fire,
    updated = excluded.updated
RETURNING {SCHEDULE_COLS}
"""
TRIGGER_COLS = 'id, flow, parameters, created, "by", claimed_by, claimed, run_id'
SERVED_COLS = (
    "flow, holder, host, pid, machine, entrypoint, parameters_schema, schedules, started, heartbeat"
)
#: Triggers claimed here, ?1 the holder and ?2 the time, then (trigger id, run id) pairs:
#: those this statement updated (a trigger claimed already is left as it is).
CLAIM_TRIGGERS = """
UPDATE triggers SET claimed_by = ?1, claimed = ?2, run_id = v.column2
FROM (VALUES {values}) AS v
WHERE triggers.id = v.column1 AND triggers.claimed_by IS NULL
RETURNING triggers.id
"""
UPSERT_SERVED = f"INSERT OR REPLACE INTO served ({SERVED_COLS}) VALUES {{values}}"
#: One-shot keys claimed here: those whose row this statement inserted.
CLAIM_ONCE = (
    "INSERT INTO once (kind, key, holder, claimed) VALUES {values} "
    "ON CONFLICT DO NOTHING RETURNING key"
)

#: Rows per statement when writing a batch. Python's sqlite3 releases the GIL around
#: every statement step, and a thread waiting to take it back waits for the event
#: loop's thread to yield it (up to 5 ms when the loop is busy): one row per step made
#: a 2,000-row flush take seconds under load. Many rows per step make it one wait.
_ROWS_PER_STATEMENT = 4096
#: Bound parameters per statement: 32,766 since SQLite 3.32, 999 before.
_MAX_PARAMS = 32_766 if sqlite3.sqlite_version_info >= (3, 32) else 999


@functools.lru_cache(maxsize=64)
def _statement(template: str, width: int, rows: int) -> str:
    group = "(" + ", ".join("?" * width) + ")"
    return template.format(values=", ".join([group] * rows))


def multi_row(template: str, rows: Sequence[Sequence[Any]]) -> list[tuple[str, list[Any]]]:
    """``(sql, [params])`` batches writing ``rows`` with many rows per statement.

    Full chunks share one statement (one ``executemany``); the remainder is split
    into power-of-two chunks, so only a few statement shapes are ever prepared.
    """
    if not rows:
        return []
    width = len(rows[0])
    size = 1 << (min(_ROWS_PER_STATEMENT, _MAX_PARAMS // width).bit_length() - 1)
    full = len(rows) // size * size
    out: list[tuple[str, list[Any]]] = []
    # Flattened by chain.from_iterable: in C, half the time of a nested comprehension.
    flat = chain.from_iterable
    if full:
        sql = _statement(template, width, size)
        out.append((sql, [list(flat(rows[i : i + size])) for i in range(0, full, size)]))
    rest = len(rows) - full
    start = full
    while rest:  # the remainder as powers of two, largest first: its set bits
        chunk = 1 << (rest.bit_length() - 1)
        part = rows[start : start + chunk]
        out.append((_statement(template, width, chunk), [list(flat(part))]))
        start += chunk
        rest -= chunk
    return out


_history_dec = msgspec.msgpack.Decoder(list[tuple[Any, ...]])
_upstream_dec = msgspec.msgpack.Decoder(list[int])


def v1_task_record(r: sqlite3.Row | tuple[Any, ...]) -> TaskRunRecord:
    return TaskRunRecord(
        run_id=r[0], seq=r[1], name=r[2], state=State(r[3]), created=r[4],
        parent_seq=r[5], upstream=_upstream_dec.decode(r[6]) if r[6] else None,
        inputs=r[7] or b"", attempts=r[8], started=r[9], ended=r[10],
        error_type=r[11], error_message=r[12], traceback=r[13],
        history=_history_dec.decode(r[14]) if r[14] else [],
    )  # fmt: skip


_R = TypeVar("_R")


class _Decoder(Generic[_R]):
    """A msgpack decoder of ``type``, made when it first decodes.

    Making a decoder of a run record resolves the record's annotations (about 0.5 ms for
    a flow run), which a process that writes runs and never reads one back (a first
    flow: ``benchmarks/coldstart.py``) need not pay. After the first call, ``decode`` is
    the decoder's own method: reading costs what it did.
    """

    def __init__(self, type: type[_R]) -> None:
        self._type = type

    def decode(self, data: bytes | bytearray | memoryview) -> _R:
        decoder = msgspec.msgpack.Decoder(self._type)
        self.decode = decoder.decode  # type: ignore[method-assign,assignment]  # directly now
        return decoder.decode(data)


_flow_enc = msgspec.msgpack.Encoder()
_flow_dec = _Decoder(FlowRunRecord)
#: Each state's text, as its column holds it: ``State.value`` is an enum property (a
#: Python call, a tenth of a task run row), a lookup is not; and the member itself, a
#: ``str`` subclass, would make sqlite3 look for an adapter.
_STATE_TEXT: Final = {state: state.value for state in State}


def flow_row(r: FlowRunRecord) -> tuple[Any, ...]:
    """A flow run as written (``FLOW_WRITE_COLS``): its query columns and its body."""
    return (
        r.id, r.name, r.kind, _STATE_TEXT[r.state], r.created, r.parent_run_id, r.parent_task_seq,
        r.trace_id, r.resumed_from, blob(_flow_enc, r),
    )  # fmt: skip


def written_flow_record(row: Sequence[Any]) -> FlowRunRecord:
    """The record a :func:`flow_row` holds."""
    return _flow_dec.decode(row[9])


def replace_crashed_flow_params(row: Sequence[Any]) -> tuple[Any, ...]:
    """``REPLACE_CRASHED_FLOW``'s parameters for a :func:`flow_row`."""
    return (*row[1:], row[0])


_task_enc = msgspec.msgpack.Encoder()
_task_dec = _Decoder(TaskRunRecord)


def task_row(r: TaskRunRecord) -> tuple[Any, ...]:
    return (r.run_id, r.seq, r.name, _STATE_TEXT[r.state], r.result_ref, blob(_task_enc, r))


def replace_crashed_task_params(row: Sequence[Any]) -> tuple[Any, ...]:
    """``REPLACE_CRASHED_TASK``'s parameters for a :func:`task_row`."""
    return (row[2], row[3], row[4], row[5], row[0], row[1])


def task_row_no_ref(r: TaskRunRecord) -> tuple[Any, ...]:
    """:func:`task_row` without ``result_ref`` (None), for ``INSERT_TASK_NO_REF``."""
    return (r.run_id, r.seq, r.name, _STATE_TEXT[r.state], blob(_task_enc, r))


def blob(encoder: msgspec.msgpack.Encoder, value: Any) -> bytearray:
    """``value`` encoded as a bytearray, which binds as a BLOB at half the cost of bytes.

    Python's sqlite3 binds int, float, str and bytearray directly, but looks up an
    adapter for anything else (bytes and None too), and that lookup builds and
    discards an AttributeError: 0.5-0.7 µs a parameter, a fifth of a task run row.
    """
    out = bytearray()
    encoder.encode_into(value, out)
    return out


def cache_row(e: CacheEntry) -> tuple[Any, ...]:
    return (e.key, e.task_name, e.created, e.expires, e.result, e.result_ref, e.run_id, e.seq)


def cache_record(row: tuple[Any, ...]) -> CacheEntry:
    return CacheEntry(
        key=row[0], task_name=row[1], created=row[2], expires=row[3], result=row[4],
        result_ref=row[5], run_id=row[6], seq=row[7],
    )  # fmt: skip


def flow_record(row: sqlite3.Row | tuple[Any, ...]) -> FlowRunRecord:
    """A flow run read with ``FLOW_COLS``: its body, or its columns when it has none."""
    body = row[22]
    if body is None:
        return v5_flow_record(row)
    record = _flow_dec.decode(body)
    record.id, record.state = row[0], State(row[3])  # the columns queries act on win
    return record


def v5_flow_record(row: sqlite3.Row | tuple[Any, ...]) -> FlowRunRecord:
    """A flow run from its columns (``V5_FLOW_COLS``), as rows before migration 6 hold it."""
    return FlowRunRecord(
        id=row[0], name=row[1], kind=row[2], state=State(row[3]), created=row[4],
        parameters=row[5] or b"", parent_run_id=row[6], parent_task_seq=row[7], started=row[8],
        ended=row[9], heartbeat=row[10], error_type=row[11], error_message=row[12],
        traceback=row[13], history=_history_dec.decode(row[14]) if row[14] else [],
        host=row[15] or "", pid=row[16] or 0, task_count=row[17], entrypoint=row[18],
        resumed_from=row[19], trace_id=row[20], span_id=row[21],
    )  # fmt: skip


def task_record(row: sqlite3.Row | tuple[Any, ...]) -> TaskRunRecord:
    record = _task_dec.decode(row[5])
    # The key columns are the truth (the body may predate a rename of the task).
    record.run_id, record.seq, record.name, record.state = row[0], row[1], row[2], State(row[3])
    return record


_span_enc = msgspec.msgpack.Encoder()
_span_dec = _Decoder(SpanRecord)


def span_row(s: SpanRecord) -> tuple[Any, ...]:
    return (s.trace_id, s.span_id, s.run_id, s.start, blob(_span_enc, s))


def span_record(body: bytes) -> SpanRecord:
    return _span_dec.decode(body)


def log_row(line: LogRecord) -> tuple[Any, ...]:
    """A log line as written (``INSERT_LOG``)."""
    return (line.run_id, line.seq, line.task, line.time, line.level, line.logger, line.message)


def log_record(row: sqlite3.Row | tuple[Any, ...]) -> LogRecord:
    """A log line read with ``LOG_COLS``."""
    return LogRecord(
        id=row[0], run_id=row[1], seq=row[2], task=row[3], time=row[4], level=row[5],
        logger=row[6], message=row[7],
    )  # fmt: skip


def schedule_row(state: ScheduleState) -> tuple[Any, ...]:
    return (
        state.flow, state.key, state.description, state.cursor, state.next_fire,
        int(state.paused), state.updated,
    )  # fmt: skip


def schedule_record(row: sqlite3.Row | tuple[Any, ...]) -> ScheduleState:
    """A schedule read with ``SCHEDULE_COLS``."""
    # Floats made floats: a value read back by RETURNING has not been given the column's
    # REAL affinity yet (an integer given stays one).
    return ScheduleState(
        flow=row[0], key=row[1], description=row[2], cursor=_real(row[3]),
        next_fire=_real(row[4]), paused=bool(row[5]), updated=float(row[6]),
    )  # fmt: skip


def _real(value: float | None) -> float | None:
    return None if value is None else float(value)


def slot_record(row: sqlite3.Row | tuple[Any, ...]) -> SlotClaim:
    """A claimed slot read as ``flow, key, slot, skipped, claimed`` (without its run)."""
    return SlotClaim(flow=row[0], key=row[1], slot=row[2], skipped=row[3], claimed=row[4])


def trigger_row(t: Trigger) -> tuple[Any, ...]:
    return (t.id, t.flow, t.parameters, t.created, t.by, t.claimed_by, t.claimed, t.run_id)


def trigger_record(row: sqlite3.Row | tuple[Any, ...]) -> Trigger:
    """A trigger read with ``TRIGGER_COLS``."""
    return Trigger(
        id=row[0], flow=row[1], parameters=row[2], created=row[3], by=row[4],
        claimed_by=row[5], claimed=row[6], run_id=row[7],
    )  # fmt: skip


_names_enc = msgspec.json.Encoder()
_names_dec = msgspec.json.Decoder(list[str])


def served_row(s: ServedFlow) -> tuple[Any, ...]:
    """A registry row (``SERVED_COLS``): the schedule keys as JSON text."""
    return (
        s.flow, s.holder, s.host, s.pid, s.machine, s.entrypoint, s.parameters_schema,
        _names_enc.encode(s.schedules).decode(), s.started, s.heartbeat,
    )  # fmt: skip


def served_record(row: sqlite3.Row | tuple[Any, ...]) -> ServedFlow:
    """A registry row read with ``SERVED_COLS``."""
    return ServedFlow(
        flow=row[0], holder=row[1], host=row[2], pid=row[3], machine=row[4], entrypoint=row[5],
        parameters_schema=row[6], schedules=_names_dec.decode(row[7]), started=row[8],
        heartbeat=row[9],
    )  # fmt: skip


# -- assets (migration 9): bodies are whole records in msgpack -----------------------------

_asset_encoder = msgspec.msgpack.Encoder()
# Made at their first read, like the run records' (see _Decoder): a process that never
# reads an asset (most flows) does not resolve their annotations, about 1 ms.
_materialization_decoder = _Decoder(MaterializationRecord)
_check_decoder = _Decoder(CheckResultRecord)
_state_decoder = _Decoder(AssetStateRecord)


#: The room an asset body (about 150 bytes for a materialisation or a state) is encoded
#: into, made once rather than grown as it is written: a materialisation writes two.
_ASSET_BODY_ROOM: Final = 256
_encode_asset_into = _asset_encoder.encode_into


def asset_body(
    record: AssetDefRecord | MaterializationRecord | CheckResultRecord | AssetStateRecord,
) -> bytearray:
    """The record in msgpack, as a bytearray (which binds without an adapter lookup)."""
    body = bytearray(_ASSET_BODY_ROOM)
    _encode_asset_into(record, body)  # the buffer ends where the message does
    return body


_NIL: Final = msgspec.Raw(b"\xc0")  # msgpack's nil


def _raw_description(f: msgspec.structs.FieldInfo) -> Any:
    """``AssetDefRecord``'s field spec with the description left as raw bytes."""
    if f.name == "description":
        return (f.name, msgspec.Raw, _NIL)
    if f.default is not msgspec.NODEFAULT:
        return (f.name, f.type, f.default)
    if f.default_factory is not msgspec.NODEFAULT:
        return (f.name, f.type, msgspec.field(default_factory=f.default_factory))
    return (f.name, f.type)


#: ``AssetDefRecord`` with its description undecoded (same fields, same order), so that
#: the descriptions of many assets, mostly identical, are decoded once (below).
_DefRow = msgspec.defstruct(
    "_DefRow",
    [_raw_description(f) for f in msgspec.structs.fields(AssetDefRecord)],
    gc=False,
)
assert msgspec.structs.fields(AssetDefRecord)[-1].name == "description"  # read positionally
_def_row_decoder = _Decoder(_DefRow)
_description_decoder = msgspec.msgpack.Decoder(dict[str, Any])
#: Decoded descriptions by their bytes, shared by the records that read them (records
#: are read-only). Listing 10,000 assets allocates one description, not 10,000 dicts
#: whose garbage collection was a third of ``flowcore assets ls``. Bounded: cleared
#: when full.
_descriptions: dict[bytes, dict[str, Any]] = {}
_DESCRIPTIONS_KEPT: Final = 1024


def asset_def_record(body: bytes | bytearray) -> AssetDefRecord:
    fields = msgspec.structs.astuple(_def_row_decoder.decode(body))
    raw = bytes(fields[-1])
    if raw == b"\xc0":
        return AssetDefRecord(*fields[:-1], None)  # type: ignore[call-arg]  # (positional)
    description = _descriptions.get(raw)
    if description is None:
        if len(_descriptions) >= _DESCRIPTIONS_KEPT:
            _descriptions.clear()
        description = _descriptions[raw] = _description_decoder.decode(raw)
    return AssetDefRecord(*fields[:-1], description)  # type: ignore[call-arg]


def materialization_record(body: bytes | bytearray) -> MaterializationRecord:
    return _materialization_decoder.decode(body)


def check_record(body: bytes | bytearray) -> CheckResultRecord:
    return _check_decoder.decode(body)


def asset_state_record(body: bytes | bytearray) -> AssetStateRecord:
    return _state_decoder.decode(body)


_evaluation_encoder = msgspec.msgpack.Encoder()
_evaluation_decoder = _Decoder(AssetEvaluationRecord)


def evaluation_body(record: AssetEvaluationRecord) -> bytes:
    return _evaluation_encoder.encode(record)


def evaluation_record(body: bytes) -> AssetEvaluationRecord:
    return _evaluation_decoder.decode(body)
