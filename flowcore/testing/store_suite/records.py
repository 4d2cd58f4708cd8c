"""Records the cases write: short builders with defaults, and "full" ones with every field set.

The full records fill each field with a value a careless encoding would lose
(unicode, bytes with NUL and 0xff, nanosecond times, notes in history entries),
so a round trip through them proves every column; each call makes a fresh
record, so a case can compare what it read with a record nobody has touched.
"""

from __future__ import annotations

from typing import Any

from ...records import CacheEntry, FlowRunRecord, LogRecord, SpanRecord, TaskRunRecord
from ...states import State

__all__ = [
    "cache_entry",
    "flow_run",
    "full_cache_entry",
    "full_flow_run",
    "full_log_line",
    "full_span",
    "full_task_run",
    "log_line",
    "span_record",
    "task_run",
]


def flow_run(run_id: str, created: float = 1000.0, **fields: Any) -> FlowRunRecord:
    fields.setdefault("name", "etl")
    fields.setdefault("state", State.COMPLETED)
    return FlowRunRecord(id=run_id, created=created, **fields)


def task_run(run_id: str, seq: int, **fields: Any) -> TaskRunRecord:
    fields.setdefault("name", "step")
    fields.setdefault("state", State.COMPLETED)
    fields.setdefault("created", 1000.0 + seq)
    return TaskRunRecord(run_id=run_id, seq=seq, **fields)


def full_flow_run() -> FlowRunRecord:
    return FlowRunRecord(
        id="0123456789abcdef0123456789abcdef",
        name="ingest ünïcode ✓",
        state=State.FAILED,
        created=1_700_000_000.125,
        kind="task",
        parameters=b"\x82\xa5pages\x14\xa3raw\xc4\x02\x00\xff",
        parent_run_id="fedcba9876543210fedcba9876543210",
        parent_task_seq=7,
        parent_span_id="00f067aa0ba902b7",
        started=1_700_000_000.25,
        ended=1_700_000_003.5,
        heartbeat=1_700_000_002.0,
        error_type="httpx.HTTPStatusError",
        error_message="503 Service Unavailable — 'quoted' \"double\"",
        traceback="Traceback (most recent call last):\n  ...\nValueError: boom\n" * 50,
        history=[
            ("Running", 1_700_000_000.25),
            ("Retrying", 1_700_000_001.0, "HTTPStatusError: 503 (retry in 0.2 s)"),
            ("Running", 1_700_000_001.25),
            ("Failed", 1_700_000_003.5),
        ],
        host="worker-3.example",
        pid=4242,
        task_count=123_456,
        entrypoint="pipelines/ingest.py:ingest",
        resumed_from="00112233445566778899aabbccddeeff",
        trace_id="0af7651916cd43dd8448eb211c80319c",
        span_id="b7ad6b7169203331",
        machine="linux:6f1c2a5e-0b7d-4c1e-9a8f-3d2e1c0b9a87:pidns:4:4026532190",
        entrypoint_hash="e3b0c442" * 8,
        upstream=[3, 5],
        launched_by="schedule every-5m",
        scheduled_for=1_699_999_800.0,
        interval_start=1_699_999_500.0,
        interval_end=1_699_999_800.0,
    )


def full_task_run() -> TaskRunRecord:
    return TaskRunRecord(
        run_id="0123456789abcdef0123456789abcdef",
        seq=42,
        name="fetch_page",
        state=State.COMPLETED,
        created=1_700_000_000.5,
        parent_seq=3,
        upstream=[1, 2, 40],
        inputs=b"\x81\xa4page\x2a\x00\xff\xfe",
        attempts=3,
        started=1_700_000_000.75,
        ended=1_700_000_002.0,
        error_type="TimeoutError",
        error_message="took too long",
        traceback="Traceback ...\nTimeoutError: took too long\n",
        history=[
            ("Running", 1_700_000_000.75),
            ("Retrying", 1_700_000_001.0, "TimeoutError: took too long (retry in 0.1 s)"),
            ("Running", 1_700_000_001.125),
            ("Completed", 1_700_000_002.0),
        ],
        result=b"\x93\x01\x02\x03",
        result_ref="ab" * 32,
        cache_key="c0ffee" * 10,
        cached_from="fedcba98.7",
        span_id="00f067aa0ba902b7",
        parent_span_id="b7ad6b7169203331",
        identity="9f86d081" * 8,
        tags=["api", "ingest"],
        run_name="fetch-42",
    )


def full_cache_entry(key: str = "k" * 64) -> CacheEntry:
    return CacheEntry(
        key=key,
        task_name="fetch_page",
        created=1_700_000_000.5,
        expires=1_700_086_400.5,
        result=b"\x81\xa3ok\xc3\x00\xff",
        result_ref="cd" * 32,
        run_id="0123456789abcdef0123456789abcdef",
        seq=42,
    )


def full_span() -> SpanRecord:
    return SpanRecord(
        trace_id="0af7651916cd43dd8448eb211c80319c",
        span_id="b7ad6b7169203331",
        name="flow ingest ✓",
        start=1_700_000_000_123_456_789,
        end=1_700_000_003_500_000_001,
        parent_id="00f067aa0ba902b7",
        run_id="0123456789abcdef0123456789abcdef",
        kind="SERVER",
        status="ERROR",
        status_message="boom — 'quoted'",
        attributes={"flowcore.run": "0123", "count": 3, "ratio": 0.5, "ok": True, "tags": ["a"]},
        events=[("exception", 1_700_000_001_000_000_000, {"exception.type": "ValueError"})],
        links=[("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")],
        scope="my.library",
    )


def span_record(trace_id: str, span_id: str, start: int, **fields: Any) -> SpanRecord:
    return SpanRecord(
        trace_id=trace_id, span_id=span_id, name=f"span {span_id}", start=start, **fields
    )


def cache_entry(key: str, created: float, task_name: str = "t", **fields: Any) -> CacheEntry:
    return CacheEntry(key=key, task_name=task_name, created=created, **fields)


def log_line(run_id: str, message: str, **fields: Any) -> LogRecord:
    fields.setdefault("seq", None)
    fields.setdefault("task", None if fields["seq"] is None else "step")
    fields.setdefault("time", 1000.0)
    fields.setdefault("level", 20)
    fields.setdefault("logger", "app")
    return LogRecord(run_id=run_id, message=message, **fields)


def full_log_line() -> LogRecord:
    """A line whose text a careless encoding would lose: every kind of character a log
    holds (a traceback's newlines, tabs, a NUL, escape sequences, other scripts, emoji)."""
    return LogRecord(
        run_id="0123456789abcdef0123456789abcdef",
        seq=42,
        task="fetch ünïcode ✓",
        time=1_700_000_000.123456,
        level=25,  # a level logging has no name for
        logger="app.io.ünï",
        message=(
            "page 3: 'quoted' \"double\" \t tab \x00 nul \x1b[31mred\x1b[0m \r back "
            "\u202e reversed 日本語 🚀\nTraceback (most recent call last):\n"
            + '  File "x.py", line 1, in <module>\n' * 200
            + "ValueError: boom"
        ),
    )
