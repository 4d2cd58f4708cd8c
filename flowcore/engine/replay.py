"""Replaying an earlier run's finished task runs when a run is resumed.

A resumed run calls the flow again with the recorded parameters. Each task call
is matched to the earlier run's task run with the same identity: the task
name, the recorded inputs, and the position of the call among calls with that
same name and inputs (the first ``fetch(3)`` matches the first ``fetch(3)``).
Calls whose match completed return the stored result without running; the
others run, continuing the attempt count of their match.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from ..errors import ResultUnreadable
from ..records import TaskRunRecord, task_run_label
from ..states import State
from .outcome import finish_reused
from .recorder import Recorder
from .results import load_result
from .spec import TaskSpec

__all__ = ["Replay"]

log = logging.getLogger("flowcore")


class Replay:
    """The earlier run's task runs, by identity, consumed as the new run makes its calls."""

    def __init__(self, recorder: Recorder, run_id: str, task_runs: Iterable[TaskRunRecord]) -> None:
        self.recorder = recorder
        self.run_id = run_id
        self._earlier: dict[tuple[str, bytes], list[TaskRunRecord | None]] = defaultdict(list)
        for tr in sorted(task_runs, key=lambda t: t.seq):
            self._earlier[(tr.name, tr.inputs)].append(tr)
        self._seen: dict[tuple[str, bytes], int] = defaultdict(int)
        #: (trace id, span id) of the earlier run, for a span link.
        self.trace: tuple[str, str] | None = None
        self.replayed = 0

    async def take(self, task: TaskSpec, rec: TaskRunRecord) -> tuple[bool, Any]:
        """``(True, value)`` if this call completed in the earlier run; else ``(False, None)``.

        Also carries over the attempt count of an earlier attempt that did not
        complete, so retries continue rather than start over.
        """
        identity = (rec.name, rec.inputs)
        n = self._seen[identity]
        self._seen[identity] = n + 1
        matches = self._earlier.get(identity)
        if not matches or n >= len(matches):
            return False, None
        earlier = matches[n]
        matches[n] = None  # drop it: the new run holds what it needs
        if earlier is None:
            return False, None
        if earlier.state is State.COMPLETED or earlier.state is State.CACHED:
            if earlier.result is None and earlier.result_ref is None:
                return False, None  # its result was not storable: it simply runs again
            try:
                value = await load_result(self.recorder, task, earlier.result, earlier.result_ref)
            except ResultUnreadable as exc:
                _cannot_replay(earlier, exc)
                return False, None
            rec.result, rec.result_ref = earlier.result, earlier.result_ref
            rec.attempts = earlier.attempts
            finish_reused(
                self.recorder,
                rec,
                State.COMPLETED,
                f"replayed: completed in {task_run_label(earlier.run_id, earlier.seq)}",
            )
            self.replayed += 1
            return True, value
        if earlier.attempts > 0:
            rec.attempts = earlier.attempts + 1
        return False, None


def _cannot_replay(earlier: TaskRunRecord, exc: Exception) -> None:
    log.warning("flowcore: cannot replay %s (%s); running it again", earlier.label, exc)
