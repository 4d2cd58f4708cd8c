"""A run's log: its lines read (or followed) from the store, as JSON-ready data and text.

The lines are what the run's code logged and printed: user text, shown with its
control characters made :func:`~.format.visible`, each continuation line of a
message (a traceback) indented, so no line of a message can pass for a line of
the log. JSON keeps the exact text (escaped as :func:`~.format.to_json` does).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Final

import anyio
import msgspec

from ..records import FlowRunRecord, LogRecord
from ..store.base import Store
from ..store.crash import mark_crashed_runs
from .format import iso_utc, to_json, visible

__all__ = [
    "LEVELS",
    "PAGE",
    "follow_logs",
    "level_name",
    "log_line_text",
    "log_to_json",
    "log_to_json_line",
    "parse_level",
    "read_logs",
]

#: The level names people filter by, and their numbers.
LEVELS: Final = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
}
#: Lines read from the store at a time.
PAGE: Final = 1000
#: How often a follower looks for runs whose process died (seconds).
CRASH_CHECK: Final = 5.0


def parse_level(text: str) -> int:
    """A level given by name (any case; ``WARN`` and ``FATAL`` too) or number; raises
    ``ValueError`` naming the accepted ones."""
    name = text.strip().upper()
    name = {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(name, name)
    if name in LEVELS:
        return LEVELS[name]
    if name.isdigit() and int(name) <= 1000:
        return int(name)
    raise ValueError(
        f"{text!r} is not a log level; give one of {', '.join(LEVELS)} (any case), "
        "or a number from 0 to 1000"
    )


def level_name(level: int) -> str:
    """``INFO`` for 20; ``Level 25`` for a level ``logging`` has no name for."""
    name = logging.getLevelName(level)
    return name if isinstance(name, str) else f"Level {level}"


async def read_logs(
    store: Store,
    run_id: str,
    *,
    task: str | None = None,
    min_level: int | None = None,
    limit: int | None = None,
) -> tuple[FlowRunRecord, list[LogRecord]]:
    """The run with this id (or prefix) and its log lines (of task ``task``, at
    ``min_level`` or above), in order: all of them, or the first ``limit``."""
    await mark_crashed_runs(store)
    run = await store.get_run(run_id)
    lines: list[LogRecord] = []
    while limit is None or len(lines) < limit:
        size = PAGE if limit is None else min(PAGE, limit - len(lines))
        after = lines[-1].id if lines else None
        page = await store.list_logs(
            run.id, task=task, min_level=min_level, after=after, limit=size
        )
        lines.extend(page)
        if len(page) < size:
            break
    return run, lines


async def follow_logs(
    store: Store,
    run_id: str,
    *,
    task: str | None = None,
    min_level: int | None = None,
    limit: int | None = None,
    poll: float = 0.3,
) -> AsyncIterator[list[LogRecord]]:
    """The log lines of a run as they are written, a batch at a time, until the run
    has ended and every line is read (or ``limit`` lines were given).

    The run's state is read before its lines: once a state read is terminal, the lines
    read after it are all there are (the end of a run and its last lines are written
    together). The store is asked again every ``poll`` seconds; a run whose process
    died is found (and marked Crashed) every few seconds, so following one ends too.
    """
    await mark_crashed_runs(store)
    run = await store.get_run(run_id)
    after: int | None = None
    left = limit
    checked = time.monotonic()
    while True:
        ended = run.state.is_terminal
        while True:
            size = PAGE if left is None else min(PAGE, left)
            page = await store.list_logs(
                run.id, task=task, min_level=min_level, after=after, limit=size
            )
            if page:
                after = page[-1].id
                yield page
                if left is not None:
                    left -= len(page)
                    if left <= 0:
                        return
            if len(page) < size:
                break
        if ended:
            return
        await anyio.sleep(poll)
        if time.monotonic() - checked >= CRASH_CHECK:
            checked = time.monotonic()
            await mark_crashed_runs(store)
        run = await store.get_run(run.id)


def log_to_json(line: LogRecord) -> dict[str, Any]:
    """A log line as JSON-ready data (the text exact; ``runs logs --json``)."""
    return {
        "id": line.id,
        "run_id": line.run_id,
        "seq": line.seq,
        "task": line.task,
        "time": iso_utc(line.time),
        "level": level_name(line.level),
        "levelno": line.level,
        "logger": line.logger,
        "message": line.message,
    }


def log_to_json_line(line: LogRecord) -> str:
    """:func:`log_to_json` on one line of text (JSON Lines, for a follower)."""
    return msgspec.json.format(to_json(log_to_json(line)), indent=0)


def log_line_text(line: LogRecord) -> str:
    """A log line as people read it, safe to print on a terminal::

        2024-05-01 12:00:03.120 WARNING  fetch#3 myapp.io: page 3 was empty

    ``flow`` names the flow's own body. A message of several lines (a traceback)
    continues on lines indented by four spaces.
    """
    moment = datetime.fromtimestamp(line.time)
    stamp = f"{moment:%Y-%m-%d %H:%M:%S}.{moment.microsecond // 1000:03d}"
    where = "flow" if line.seq is None else f"{line.task or 'task'}#{line.seq}"
    message = visible(line.message, multiline=True).replace("\n", "\n    ")
    return f"{stamp} {level_name(line.level):<8} {visible(where)} {visible(line.logger)}: {message}"
