"""Context variables: the current engine, flow run and task run.

flowcore keeps no globals; "where am I" lives in ``ContextVar``s, which asyncio
copies into every task it creates (``gather``, ``create_task``, anyio task
groups) and anyio copies into worker threads. That is how a task called from
deep inside user code knows its flow run and its parent task run.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .records import FlowRunRecord, TaskRunRecord
from .states import State

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from .engine import Engine
    from .futures import TaskFuture
    from .limits import RunGate
    from .replay import Replay
    from .spawner import Spawner

__all__ = ["RunContext", "current_run"]

_engine_var: ContextVar[Engine | None] = ContextVar("flowcore_engine", default=None)
_run_var: ContextVar[RunContext | None] = ContextVar("flowcore_run", default=None)
_task_var: ContextVar[TaskRunRecord | None] = ContextVar("flowcore_task_run", default=None)

HOST = socket.gethostname()


class RunContext:
    """The flow run in progress: ``flowcore.current_run()`` inside a flow or its tasks.

    ``id`` is the run id people pass to ``flowcore runs show``; ``parameters``
    the flow's bound arguments.
    """

    __slots__ = (
        "_failed", "engine", "gate", "http", "parameters", "record", "replay", "spawner",
        "task_group",
    )  # fmt: skip

    def __init__(
        self, engine: Engine, record: FlowRunRecord, parameters: Mapping[str, Any]
    ) -> None:
        self.engine = engine
        self.record = record
        self.parameters = parameters
        self.task_group: TaskGroup | None = None
        #: Starts the run's submitted task runs (set with ``task_group``).
        self.spawner: Spawner | None = None
        #: When re-driving a crashed or failed run: the earlier run's task results.
        self.replay: Replay | None = None
        #: The flow's ``max_concurrency`` gate, if it has one.
        self.gate: RunGate | None = None
        #: The run's shared httpx client (flowcore.http_client()), closed when the run ends.
        self.http: Any = None
        # Failed futures nobody has awaited yet, in failure order; a flow that ends
        # with any left fails with the first, so no failure is silent.
        self._failed: dict[TaskFuture[Any], None] = {}

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def name(self) -> str:
        return self.record.name

    def __repr__(self) -> str:
        return f"<RunContext {self.record.name} id={self.record.id} state={self.record.state}>"


def current_run() -> RunContext:
    """The flow run the caller is running in (inside a flow or any of its tasks)."""
    ctx = _run_var.get()
    if ctx is None:
        raise ConfigurationError(
            "flowcore.current_run() was called outside a flow run; call it from a "
            "@flowcore.flow function or a task it calls"
        )
    return ctx


def new_run_id() -> str:
    """A random (version 4) UUID in hex, like ``uuid.uuid4().hex`` at a third of its cost."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    return raw.hex()


def new_flow_record(
    run_id: str, name: str, kind: str, parameters: bytes, now: float
) -> FlowRunRecord:
    parent_ctx = _run_var.get()
    parent_task = _task_var.get()
    return FlowRunRecord(
        id=run_id,
        name=name,
        kind=kind,
        state=State.RUNNING,
        created=now,
        started=now,
        parameters=parameters,
        parent_run_id=None if parent_ctx is None else parent_ctx.record.id,
        parent_task_seq=None if parent_task is None else parent_task.seq,
        history=[(State.RUNNING.value, now)],
        host=HOST,
        pid=os.getpid(),
    )
