"""Finding runs whose process died, and marking them Crashed.

A running flow run's record carries its host, pid and a heartbeat the writer
refreshes every few seconds. A run still "Running" in the store is crashed when:

- it ran on this host and its process no longer exists (found at once), or
- its heartbeat is older than ``stale_after`` seconds and it ran on another
  host (its process cannot be asked), or on this host under a pid that now
  belongs to another process (pid reuse; allowed a longer grace period).

Readers (``flowcore runs ls``, ``resume``) call this before they look, so a
killed run shows as Crashed instead of Running forever.
"""

from __future__ import annotations

import os
import time
from typing import Final

from .context import HOST
from .records import FlowRunRecord
from .states import TERMINAL, State
from .store import Store

__all__ = ["STALE_AFTER", "mark_crashed_runs"]

#: Seconds without a heartbeat after which a run on another host counts as crashed.
STALE_AFTER: Final = 30.0
#: Same host, pid alive: only this old a heartbeat means the pid was reused.
_PID_REUSE_GRACE: Final = 600.0


def process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def is_crashed(run: FlowRunRecord, now: float, stale_after: float = STALE_AFTER) -> bool:
    if run.state.is_terminal:
        return False
    last = run.heartbeat or run.started or run.created
    age = now - last
    if run.host == HOST:
        if run.pid == os.getpid():
            return False  # this very process: alive by definition
        if not process_alive(run.pid):
            return True
        return age > _PID_REUSE_GRACE
    return age > stale_after


async def mark_crashed_runs(
    store: Store, *, now: float | None = None, stale_after: float = STALE_AFTER
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
        run.state = State.CRASHED
        run.ended = run.heartbeat or now
        run.error_type = "Crashed"
        run.error_message = f"the run's process stopped without ending it ({alive_note})"
        run.history.append((State.CRASHED.value, now, alive_note))
        tasks = [t for t in await store.list_task_runs(run.id) if t.state not in TERMINAL]
        for t in tasks:
            t.state = State.CRASHED
            t.ended = now
            t.history.append((State.CRASHED.value, now))
        await store.write([run], tasks)
    return crashed
