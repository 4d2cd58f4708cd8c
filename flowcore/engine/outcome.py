"""How a task run's record changes: the few moves the attempt loop makes, each in one place.

Every change goes through :func:`flowcore.records.transition` (checked against the
table of states) and marks the record changed for the writer. These are plain
functions, not coroutines: the attempt loop stays one coroutine frame per task run.
"""

from __future__ import annotations

import time

from ..errors import TaskTimeout, UpstreamFailed
from ..ids import error_message, error_name, traceback_text
from ..records import TaskRunRecord, transition
from ..states import State
from .recorder import Recorder

__all__ = ["failed_state", "finish_failed", "finish_reused", "move"]


def move(recorder: Recorder, rec: TaskRunRecord, state: State, note: str | None = None) -> float:
    """``rec`` to ``state`` now (with ``note``), marked for the writer; returns the time."""
    now = time.time()
    transition(rec, state, now, note)
    recorder.task_changed(rec)
    return now


def failed_state(exc: BaseException) -> State:
    """The terminal state an error ends a task run in."""
    if isinstance(exc, TaskTimeout):
        return State.TIMED_OUT
    if isinstance(exc, UpstreamFailed):
        return State.UPSTREAM_FAILED
    return State.FAILED


def finish_failed(recorder: Recorder, rec: TaskRunRecord, exc: BaseException) -> None:
    """End ``rec`` with the error ``exc``: its type, message and traceback are recorded.

    Never raises because of what ``exc`` holds (a ``__str__`` that raises, a file name
    that is not UTF-8): the task's own error is what reaches the flow.
    """
    rec.error_type = error_name(exc)
    rec.error_message = error_message(exc)
    rec.traceback = traceback_text(exc)
    move(recorder, rec, failed_state(exc))


def finish_reused(recorder: Recorder, rec: TaskRunRecord, state: State, note: str) -> None:
    """End ``rec`` with a value that came from elsewhere (a cache hit or a replay).

    :func:`move`, inline: this ends every cache hit and every replayed call, on the
    hot path, where one Python call more is a few percent of a hit.
    """
    transition(rec, state, time.time(), note)
    recorder.task_changed(rec)
