"""Finding runs whose process died, and marking them Crashed.

A running flow run's record carries its host, pid and a heartbeat the writer
refreshes every few seconds. A run still "Running" in the store is crashed when:

- it ran on this host and its process is gone: no process has its pid, the one
  that has it is a zombie, or it was started after the run was (the pid was
  reused). Found at once, by asking the operating system through psutil, which
  answers the same way on Linux, macOS and Windows;
- it ran on another host (whose processes cannot be asked) and its heartbeat is
  older than ``stale_after`` seconds.

Readers (``flowcore runs ls``, ``resume``) and engines opening call this before
they look, so a killed run shows as Crashed instead of Running forever.
"""

from __future__ import annotations

import os
import time
from typing import Final

import psutil

from ..ids import HOST
from ..records import FlowRunRecord, WriteBatch, transition
from ..states import TERMINAL, State
from .base import RunStore

__all__ = ["STALE_AFTER", "is_crashed", "mark_crashed_runs", "process_alive"]

#: Seconds without a heartbeat after which a run on another host counts as crashed.
STALE_AFTER: Final = 30.0
#: Slack when comparing a process's start time with a run's (clock ticks, rounding).
_START_SLACK: Final = 1.0


def process_alive(pid: int, started: float | None = None) -> bool:
    """Whether process ``pid`` is running and, if ``started`` (unix seconds) is given,
    is the one that was running then (not a later process that reused the pid)."""
    if pid <= 0:
        return False
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False  # ended; its parent has not collected it yet
        created = process.create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # exists, owned by someone else; its start time is private
    return started is None or created <= started + _START_SLACK


def is_crashed(run: FlowRunRecord, now: float, stale_after: float = STALE_AFTER) -> bool:
    """Whether ``run``, recorded as not finished, can no longer finish."""
    if run.state.is_terminal:
        return False
    if run.host == HOST:
        if run.pid == os.getpid():
            return False  # this very process: alive by definition
        return not process_alive(run.pid, run.started or run.created)
    last = run.heartbeat or run.started or run.created
    return now - last > stale_after


async def mark_crashed_runs(
    store: RunStore, *, now: float | None = None, stale_after: float = STALE_AFTER
) -> list[FlowRunRecord]:
    """Mark every crashed run (and its unfinished task runs) Crashed; returns those runs."""
    now = time.time() if now is None else now
    running = await store.list_runs(state=State.RUNNING.value, limit=100_000)
    crashed = [r for r in running if is_crashed(r, now, stale_after)]
    for run in crashed:
        alive_note = (
            f"process {run.pid} on {run.host} is gone"
            if run.host == HOST
            else f"no heartbeat from {run.host} for {now - (run.heartbeat or run.created):.0f} s"
        )
        transition(run, State.CRASHED, now, alive_note)
        run.ended = run.heartbeat or now  # it stopped around its last sign of life
        run.error_type = "Crashed"
        run.error_message = f"the run's process stopped without ending it ({alive_note})"
        tasks = [t for t in await store.list_task_runs(run.id) if t.state not in TERMINAL]
        for t in tasks:
            transition(t, State.CRASHED, now)
        await store.write(WriteBatch(flow_runs=[run], task_runs=tasks))
    return crashed
