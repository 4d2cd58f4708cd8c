"""What is current in this context, for the layers below the engine.

The engine keeps "where am I" in context variables (no globals): asyncio copies
them into every task it creates and anyio into worker threads. Most of them live
with the engine; the two here are read by code below it, so they are defined at
the bottom, typed by what those readers need:

- the current task run's record, read by telemetry so the trace context inside
  task code is the task run's span;
- the open engine's limits, read by ``async with flowcore.limit(...)``, a policy
  value that must not import the engine.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Protocol

from .records import TaskRunRecord

__all__ = ["LimitHolder", "current_limits", "current_task_run"]


class LimitHolder(Protocol):
    """What ``async with flowcore.limit(...)`` needs of an open engine."""

    async def acquire(self, spec: Any) -> None:  # a flowcore.Limit (a layer above)
        ...

    async def release(self, name: str) -> None: ...


current_task_run: ContextVar[TaskRunRecord | None] = ContextVar("flowcore_task_run", default=None)
current_limits: ContextVar[LimitHolder | None] = ContextVar("flowcore_limits", default=None)
