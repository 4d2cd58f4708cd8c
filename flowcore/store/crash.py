"""Finding runs whose process died, and marking them Crashed.

A running flow run's record carries its host, pid, machine identity and a
heartbeat the writer refreshes every few seconds. A run still "Running" in the
store is crashed when:

- it ran where its pid means what it means here (the same machine identity,
  :data:`flowcore._process.MACHINE`: the same kernel boot and PID namespace) and
  its process is gone: no process has its pid, the one that has it is a zombie,
  or it was started after the run was (the pid was reused). Found at once, by
  asking the operating system through psutil, which answers the same way on
  Linux, macOS and Windows;
- it ran anywhere else (another host, or another container of this host with
  the same host name, whose pids name other processes here) and its heartbeat
  is older than ``stale_after`` seconds.

Readers (``flowcore runs ls``, ``resume``) and engines opening call this before
they look, so a killed run shows as Crashed instead of Running forever. A run
taken for dead that was only silent (a long pause) and finishes after all is
recorded as it finished: the store replaces Crashed by a late completion (see
:class:`flowcore.store.base.RunStore`).
"""

from __future__ import annotations

import os
import time
from typing import Final

from .._process import MACHINE
from ..ids import HOST
from ..records import FlowRunRecord, TaskRunRecord, WriteBatch, transition
from ..states import TERMINAL, State
from .base import RunStore

__all__ = [
    "STALE_AFTER",
    "is_crashed",
    "judged_by_pid",
    "last_sign_of_life",
    "mark_crashed_runs",
    "process_alive",
]

#: Seconds without a heartbeat after which a run judged by its heartbeat counts as crashed.
STALE_AFTER: Final = 30.0
#: Slack when comparing a process's start time with a run's (clock ticks, rounding).
_START_SLACK: Final = 1.0


def process_alive(pid: int, started: float | None = None) -> bool:
    """Whether process ``pid`` is running and, if ``started`` (unix seconds) is given,
    is the one that was running then (not a later process that reused the pid)."""
    if pid <= 0:
        return False
    # Imported here, not with the module: every engine opening looks for crashed runs,
    # and on a store with no run of this machine left Running (the usual case) psutil,
    # some 10 ms to import, is never asked anything.
    import psutil

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


def judged_by_pid(run: FlowRunRecord) -> bool:
    """Whether this process may ask the operating system about ``run``'s pid: only where
    that pid means the same process (the same machine identity; a run recorded without
    one, by an older flowcore, is judged by its heartbeat)."""
    return bool(run.machine) and run.machine == MACHINE


def is_crashed(run: FlowRunRecord, now: float, stale_after: float = STALE_AFTER) -> bool:
    """Whether ``run``, recorded as not finished, can no longer finish."""
    if run.state.is_terminal:
        return False
    if judged_by_pid(run):
        if run.pid == os.getpid():
            return False  # this very process: alive by definition
        return not process_alive(run.pid, run.started or run.created)
    last = run.heartbeat or run.started or run.created
    return now - last > stale_after


def last_sign_of_life(run: FlowRunRecord, tasks: list[TaskRunRecord]) -> float:
    """When ``run`` was last known alive: its heartbeat, or the latest start or end of
    one of its task runs, whichever is latest (its start when nothing else is known)."""
    times = [run.heartbeat, run.started, run.created]
    for t in tasks:
        times.append(t.ended)
        times.append(t.started)
    return max(t for t in times if t is not None)


async def mark_crashed_runs(
    store: RunStore, *, now: float | None = None, stale_after: float = STALE_AFTER
) -> list[FlowRunRecord]:
    """Mark every crashed run (and its unfinished task runs) Crashed; returns those runs.

    A crashed run's ``ended`` is its last sign of life (:func:`last_sign_of_life`) and
    its ``task_count`` the number of task runs the store has for it: what it did, not
    what its record said at its last heartbeat.
    """
    now = time.time() if now is None else now
    # Running, and Retrying: a flow run waiting out a retry's delay is alive too.
    running = [
        *await store.list_runs(state=State.RUNNING.value, limit=100_000),
        *await store.list_runs(state=State.RETRYING.value, limit=100_000),
    ]
    crashed = [r for r in running if is_crashed(r, now, stale_after)]
    for run in crashed:
        if judged_by_pid(run):
            why = f"process {run.pid} on {run.host} is gone"
        else:
            silent = now - (run.heartbeat or run.started or run.created)
            where = run.host or "its host"
            if run.host == HOST:  # our name, but not our pids: a container, or an earlier boot
                where += " (another PID namespace or boot)"
            why = f"no heartbeat from {where} for {silent:.0f} s"
        every_task = await store.list_task_runs(run.id)
        transition(run, State.CRASHED, now, why)
        run.ended = last_sign_of_life(run, every_task)  # it stopped around then
        run.task_count = len(every_task)
        run.error_type = "Crashed"
        run.error_message = f"the run's process stopped without ending it ({why})"
        tasks = [t for t in every_task if t.state not in TERMINAL]
        for t in tasks:
            transition(t, State.CRASHED, now)
        await store.write(WriteBatch(flow_runs=[run], task_runs=tasks))
    return crashed
