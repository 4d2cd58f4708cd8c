"""Replaying an earlier run's finished task runs when a run is resumed.

A resumed run calls the flow again with the recorded parameters. Each task call
is matched to the earlier run's task run with the same identity: the task
name, its inputs, and the position of the call among calls with that same name
and inputs (the first ``fetch(3)`` matches the first ``fetch(3)``). Calls whose
match completed return the stored result without running; the others run,
continuing the attempt count of their match.

The inputs are the recorded inputs when they hold every argument in full; when
recording shortened or left out a value (a long string, a big container, an
object recorded as a stand-in, ``record_inputs=False``), two different calls may
record the same inputs, so the call is matched on its ``identity`` instead, a
hash of its complete arguments (see :func:`flowcore.encoding.record_call`). A
call whose arguments have no stable encoding (:data:`~flowcore.encoding.UNHASHABLE`)
is never replayed: it could not be told from another.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from ..encoding import UNHASHABLE
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
        self._earlier: dict[_Key, list[TaskRunRecord | None]] = defaultdict(list)
        for tr in sorted(task_runs, key=lambda t: t.seq):
            key = _key(tr)
            if key is not None:
                self._earlier[key].append(tr)
        self._seen: dict[_Key, int] = defaultdict(int)
        #: (trace id, span id) of the earlier run, for a span link.
        self.trace: tuple[str, str] | None = None
        self.replayed = 0

    async def take(self, task: TaskSpec, rec: TaskRunRecord) -> tuple[bool, Any]:
        """``(True, value)`` if this call completed in the earlier run; else ``(False, None)``.

        Also carries over the attempt count of an earlier attempt that did not
        complete, so retries continue rather than start over.
        """
        identity = _key(rec)
        if identity is None:
            return False, None  # no stable identity: it could be any call
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


#: A call's identity: its task's name, and its recorded inputs (bytes) when they are
#: complete, else the hash of its complete arguments (str): never equal to each other.
_Key = tuple[str, bytes | str]


def _key(tr: TaskRunRecord) -> _Key | None:
    """The identity ``tr`` is matched on; ``None`` for a call that cannot be matched."""
    identity = tr.identity
    if identity is None:
        return (tr.name, tr.inputs)
    if identity == UNHASHABLE:
        return None
    return (tr.name, identity)


def _cannot_replay(earlier: TaskRunRecord, exc: Exception) -> None:
    log.warning("flowcore: cannot replay %s (%s); running it again", earlier.label, exc)
