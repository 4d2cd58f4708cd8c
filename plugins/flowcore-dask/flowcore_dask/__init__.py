"""flowcore on Dask: ``@flowcore.task(executor="dask")`` runs the task's function on a
``dask.distributed`` cluster; everything else about the task run stays in the engine.

An executor plugin (the ``flowcore.executors`` entry point ``dask``, a factory called
with no arguments). The package, a module per concept:

- :mod:`.executor`: :class:`DaskExecutor`, one dask task per call, released at once;
- :mod:`.cluster`: the client, the local cluster, and the checks that dask does not
  re-run tasks behind the engine's back;
- :mod:`.functions`: a task function pickled once, with the decoder of its results;
- :mod:`.transfer`: the bytes of a call and of its result (msgpack, else pickle);
- :mod:`.worker`: what runs on a worker (a call; the cancelling of an async one);
- :mod:`.errors`: :class:`WorkerLost` and the other errors, each naming the fix.
"""

from .errors import (
    CallCancelled,
    ClusterNotReady,
    ClusterNotStarted,
    DaskExecutorError,
    FunctionUnavailable,
    NotPicklable,
    ResultNotTransferable,
    SchedulerUnreachable,
    WorkerLost,
)
from .executor import ADDRESS_VARIABLE, DaskExecutor

__all__ = [
    "ADDRESS_VARIABLE",
    "CallCancelled",
    "ClusterNotReady",
    "ClusterNotStarted",
    "DaskExecutor",
    "DaskExecutorError",
    "FunctionUnavailable",
    "NotPicklable",
    "ResultNotTransferable",
    "SchedulerUnreachable",
    "WorkerLost",
]
