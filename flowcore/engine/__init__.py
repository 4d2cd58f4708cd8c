"""The runtime: the engine, runs and task runs, limits, the writer, executors.

Modules, lowest first (each imports only those before it):

- :mod:`.spawner`, :mod:`.futures`, :mod:`.inflight`: small runtime pieces;
- :mod:`.leases`, :mod:`.gates`: the live state of limits;
- :mod:`.recorder`: the write-behind writer between the engine and the store;
- :mod:`.executor`: where task functions run (the seam for plugins);
- :mod:`.spec`: a task as the engine runs it;
- :mod:`.core`: :class:`Engine` and :class:`RunContext`;
- :mod:`.outcome`, :mod:`.results`, :mod:`.replay`, :mod:`.inputs`, :mod:`.cached`:
  the steps of a task run;
- :mod:`.attempt`: the task run pipeline; :mod:`.submit`: submitted ones;
- :mod:`.runs`: the life of a flow run; :mod:`.info`: read-only views of the current ones
  (``flowcore.current_flow_run()``; imported at its first use, through
  ``flowcore.__getattr__``: a run never needs it).
"""

from .core import Engine, EngineStatistics, RunContext, current_run, in_engine
from .executor import Executor, LocalExecutor
from .futures import TaskFuture, TaskFutureList, wait

__all__ = [
    "Engine",
    "EngineStatistics",
    "Executor",
    "LocalExecutor",
    "RunContext",
    "TaskFuture",
    "TaskFutureList",
    "current_run",
    "in_engine",
    "wait",
]
