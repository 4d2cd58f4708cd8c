"""flowcore: an async reactive dataflow engine.

Decorate async functions with :func:`flow` and :func:`task`; every task call
inside a flow becomes a tracked, persisted task run. Importing flowcore only
defines names: no files, threads or network until a flow runs.
"""

from .cache import CacheKeyError, CachePolicy
from .context import RunContext, current_run
from .engine import Engine, EngineStatistics
from .errors import (
    ConfigurationError,
    FlowcoreError,
    FlowTimeout,
    NonRetryable,
    RunNotFound,
    SchemaTooNew,
    StoreCorrupted,
    StoreError,
    StoreUnavailable,
    TaskTimeout,
    UnsupportedBackend,
    UpstreamFailed,
)
from .flow import Flow, flow, resume, resume_async, run
from .futures import TaskFuture, TaskFutureList, wait
from .http import http_client, http_retry
from .inspection import read_task_result, task_result
from .limits import Limit, limit
from .records import FlowRunRecord, TaskRunRecord
from .retry import Backoff, RetryPolicy, backoff
from .serializers import ResultNotSerializable
from .states import State
from .store import MemoryStore, SQLiteStore, Store
from .task import Task, task, unmapped

__version__ = "0.1.0"

__all__ = [
    "Backoff",
    "CacheKeyError",
    "CachePolicy",
    "ConfigurationError",
    "Engine",
    "EngineStatistics",
    "Flow",
    "FlowRunRecord",
    "FlowTimeout",
    "FlowcoreError",
    "Limit",
    "MemoryStore",
    "NonRetryable",
    "ResultNotSerializable",
    "RetryPolicy",
    "RunContext",
    "RunNotFound",
    "SQLiteStore",
    "SchemaTooNew",
    "State",
    "Store",
    "StoreCorrupted",
    "StoreError",
    "StoreUnavailable",
    "Task",
    "TaskFuture",
    "TaskFutureList",
    "TaskRunRecord",
    "TaskTimeout",
    "UnsupportedBackend",
    "UpstreamFailed",
    "__version__",
    "backoff",
    "current_run",
    "flow",
    "http_client",
    "http_retry",
    "limit",
    "read_task_result",
    "resume",
    "resume_async",
    "run",
    "task",
    "task_result",
    "unmapped",
    "wait",
]
