"""The errors of the Dask executor, under flowcore's own root.

The tree::

    flowcore.FlowcoreError
    └── DaskExecutorError
        ├── WorkerLost                  the worker running an attempt died: the attempt failed
        ├── CallCancelled               the cluster dropped the call (scheduler lost, restarted)
        ├── SchedulerUnreachable        (ConnectionError) no scheduler at the address
        ├── ClusterNotStarted           the local cluster could not start
        ├── ClusterNotReady             (ConfigurationError) the cluster at the address is not
        │                                set up for flowcore (re-runs tasks itself, lacks us)
        ├── NotPicklable                (NonRetryable, TypeError) a function or argument
        ├── FunctionUnavailable         (NonRetryable) a worker cannot load the function
        └── ResultNotTransferable       (NonRetryable, TypeError) a result cannot come back

Which ones another attempt may fix decides how they are retried: a lost worker or a
dropped call is retried under the task's retry policy (it is an ordinary error); a
function that cannot be pickled, or that the workers cannot import, fails at once
(:class:`flowcore.NonRetryable`): the next attempt would fail the same way.

Each error is raised on the engine's side (the client), except
:class:`FunctionUnavailable` and :class:`ResultNotTransferable`, which a worker raises
and dask pickles back; so every error keeps its arguments in ``args`` (what pickle
rebuilds it from).
"""

from __future__ import annotations

from flowcore import ConfigurationError, FlowcoreError, NonRetryable

__all__ = [
    "CallCancelled",
    "ClusterNotReady",
    "ClusterNotStarted",
    "DaskExecutorError",
    "FunctionUnavailable",
    "NotPicklable",
    "ResultNotTransferable",
    "SchedulerUnreachable",
    "WorkerLost",
]


class DaskExecutorError(FlowcoreError):
    """Root of the errors the Dask executor raises on its own behalf."""


class WorkerLost(DaskExecutorError):
    """The Dask worker running an attempt died (its process ended, was killed, or stopped
    answering the scheduler) before the attempt finished.

    The attempt is recorded failed with this error, whose message names the worker; the
    task's retry policy decides whether it runs again (on another worker). Dask itself
    does not re-run it: the executor's cluster does not allow it to (see
    :class:`ClusterNotReady`). A task whose ``retry_on`` names only some errors must
    name this one too for a lost worker to be retried.
    """

    def __init__(self, task: str, worker: str) -> None:
        super().__init__(task, worker)

    @property
    def task(self) -> str:
        """The name of the task whose attempt was lost."""
        return str(self.args[0])

    @property
    def worker(self) -> str:
        """The address of the worker that died, e.g. ``tcp://10.0.0.7:39121``."""
        return str(self.args[1])

    def __str__(self) -> str:
        return (
            f"the Dask worker {self.worker} died while running task {self.task!r} (its "
            "process ended, was killed, or stopped answering the scheduler), so this attempt "
            "failed; the task's retry policy decides whether it runs again, on another "
            "worker. The worker's log says why it died (a memory limit, a crash, a kill)"
        )


class CallCancelled(DaskExecutorError):
    """The cluster dropped a call before it finished: the client lost its scheduler, or
    the scheduler restarted. Retried under the task's retry policy, like any error."""

    def __init__(self, task: str, reason: str, detail: str | None = None) -> None:
        super().__init__(task, reason, detail)

    def __str__(self) -> str:
        task, reason, detail = self.args
        return (
            f"the Dask cluster dropped the call of task {task!r} before it finished "
            f"(reason: {reason}{f'; {detail}' if detail else ''}); this attempt failed, and "
            "the task's retry policy decides whether it runs again"
        )


class SchedulerUnreachable(DaskExecutorError, ConnectionError):
    """No Dask scheduler answered at the address the executor was given."""


class ClusterNotStarted(DaskExecutorError):
    """The executor's own local cluster (no address given) did not start."""


class ClusterNotReady(DaskExecutorError, ConfigurationError):
    """The cluster at the address is not set up for flowcore: its scheduler re-runs a task
    itself when its worker dies (dask's ``distributed.scheduler.allowed-failures`` is above
    0), unseen by flowcore, whose retry policy must decide instead; or its workers cannot
    import ``flowcore_dask``, which runs the calls there."""


class NotPicklable(DaskExecutorError, NonRetryable, TypeError):
    """A task's function, or an argument of a call, cannot be pickled to send it to the
    cluster. Not retried: the next attempt would fail the same way."""


class FunctionUnavailable(DaskExecutorError, NonRetryable):
    """A worker could not load a task's function (its module is not installed there, or
    loading it failed). Raised on the worker; not retried."""


class ResultNotTransferable(DaskExecutorError, NonRetryable, TypeError):
    """A task returned a value that can be neither msgpack-encoded nor pickled, so it
    cannot come back from the worker. Raised on the worker; not retried."""
