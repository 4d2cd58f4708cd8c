"""Run states and the one table of transitions allowed between them.

A run moves ``Pending → Running → Completed | Failed | ...``; ``Retrying`` is a
Running task waiting out its backoff, and a Running task back in ``Pending``
waits for a limit before its attempt. Every change goes through
:func:`flowcore.records.transition`, which checks it against :data:`NEXT`.
Terminal states never change: a run that reached one is finished, whatever
happens to the process afterwards.
"""

from __future__ import annotations

import enum

__all__ = ["NEXT", "TERMINAL", "State", "check_transition"]


class State(enum.StrEnum):
    PENDING = "Pending"  # created, waiting for its inputs
    RUNNING = "Running"
    RETRYING = "Retrying"  # an attempt failed; waiting for the next one
    COMPLETED = "Completed"
    CACHED = "Cached"  # completed with a stored result, function not called
    FAILED = "Failed"
    TIMED_OUT = "TimedOut"
    CANCELLED = "Cancelled"
    UPSTREAM_FAILED = "UpstreamFailed"  # never run: an input future failed
    CRASHED = "Crashed"  # the process running it died

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL

    @property
    def is_success(self) -> bool:
        return self is State.COMPLETED or self is State.CACHED


TERMINAL = frozenset(
    {
        State.COMPLETED,
        State.CACHED,
        State.FAILED,
        State.TIMED_OUT,
        State.CANCELLED,
        State.UPSTREAM_FAILED,
        State.CRASHED,
    }
)

#: The states each state may move to (terminal states move nowhere).
NEXT: dict[State, frozenset[State]] = {
    # Pending -> TimedOut: a wait for a limit counted in the timeout (timeout_includes_wait).
    State.PENDING: frozenset({State.RUNNING, State.UPSTREAM_FAILED, State.CANCELLED, State.CACHED})
    | frozenset({State.FAILED, State.TIMED_OUT, State.CRASHED}),
    # Running -> Pending: an attempt waiting for a limit (the wait is before the attempt).
    State.RUNNING: TERMINAL - {State.UPSTREAM_FAILED} | {State.RETRYING, State.PENDING},
    State.RETRYING: frozenset({State.RUNNING, State.CANCELLED, State.CRASHED, State.FAILED}),
    **{state: frozenset() for state in TERMINAL},
}


def check_transition(current: State, new: State) -> None:
    """Raise if ``current → new`` is not an allowed transition.

    Only the engine moves states, so a refusal here is a bug in flowcore, not in
    user code; it is raised loudly rather than recording an impossible history.
    """
    if new not in NEXT[current]:
        raise RuntimeError(f"flowcore bug: illegal state transition {current} -> {new}")
