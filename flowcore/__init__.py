"""flowcore: an async reactive dataflow engine.

Decorate async functions with :func:`flow` and :func:`task`; every task call
inside a flow becomes a tracked, persisted task run. Importing flowcore only
defines names: no files, threads or network until a flow runs.

The package is layered; each layer imports only the ones below it:

- vocabulary: :mod:`.errors`, :mod:`.states`, :mod:`.records`, :mod:`.ids`,
  :mod:`.encoding`, :mod:`.serializers`, :mod:`.clock`;
- policies (values): :mod:`.retry`, :mod:`.cache`, :mod:`.limits`, :mod:`.options`;
- persistence: :mod:`.store` (the store contract, SQLite, memory);
- telemetry: :mod:`.telemetry` (spans, export);
- runtime: :mod:`.engine` (the engine, runs, task runs, limits, executors);
- what users decorate and call: :mod:`.task`, :mod:`.flow`, :mod:`.resume`,
  :mod:`.http`, :mod:`.testing`;
- what serves flows: :mod:`.serve` (schedules and triggers, run by ``flowcore serve``);
- readers and front ends: :mod:`.views` (shared), :mod:`.cli`.
"""

from . import hooks
from .assets import (
    AllPartitionsMapping,
    AssetCheck,
    AssetDefinitionError,
    AssetGraph,
    AssetStatus,
    CheckResult,
    DailyPartitions,
    DynamicPartitions,
    FilesIO,
    Freshness,
    HourlyPartitions,
    MaterializationFailed,
    MaterializeResult,
    Output,
    PartitionKeyError,
    StaticMapping,
    StaticPartitions,
    TimeWindowMapping,
    add_partitions,
    asset,
    asset_check,
    backfill,
    backfill_async,
    materialize,
    materialize_async,
    on_cron,
    on_missing,
    on_upstream_change,
    status_async,
)
from .cache import CachePolicy
from .engine import (
    Engine,
    EngineStatistics,
    Executor,
    FlowRunInfo,
    LocalExecutor,
    RunContext,
    TaskFuture,
    TaskFutureList,
    TaskRunInfo,
    current_flow_run,
    current_run,
    current_task_run,
    wait,
)
from .engine.core import get_run_logger
from .engine.futures import allow_failure
from .errors import (
    CacheKeyError,
    ConfigurationError,
    FlowcoreDeprecationWarning,
    FlowcoreError,
    FlowLoadError,
    FlowTimeout,
    NonRetryable,
    ParameterError,
    PickleNotAllowed,
    ResultNotSerializable,
    ResultNotStored,
    ResultUnreadable,
    RunNotFound,
    SchemaTooNew,
    StoreCorrupted,
    StoreError,
    StoreUnavailable,
    TaskTimeout,
    UnsupportedBackend,
    UpstreamFailed,
)
from .flow import Flow, flow, run
from .hooks import HookEvent
from .http import http_client, http_retry
from .limits import Limit, limit
from .options import Logs, TaskOptions, Tracing
from .records import FlowRunRecord, TaskRunRecord
from .resume import resume, resume_async
from .retry import Backoff, RetryPolicy, backoff
from .schedules import CronSchedule, IntervalSchedule, Schedule, cron, every
from .secret import Secret
from .serve import aserve, serve
from .states import State
from .store import MemoryStore, SQLiteStore, Store
from .task import Task, task, unmapped
from .views.results import read_task_result, task_result

__version__ = "0.1.0"

__all__ = [
    "AllPartitionsMapping",
    "AssetCheck",
    "AssetDefinitionError",
    "AssetGraph",
    "AssetStatus",
    "Backoff",
    "CacheKeyError",
    "CachePolicy",
    "CheckResult",
    "ConfigurationError",
    "CronSchedule",
    "DailyPartitions",
    "DynamicPartitions",
    "Engine",
    "EngineStatistics",
    "Executor",
    "FilesIO",
    "Flow",
    "FlowLoadError",
    "FlowRunInfo",
    "FlowRunRecord",
    "FlowTimeout",
    "FlowcoreDeprecationWarning",
    "FlowcoreError",
    "Freshness",
    "HookEvent",
    "HourlyPartitions",
    "IntervalSchedule",
    "Limit",
    "LocalExecutor",
    "Logs",
    "MaterializationFailed",
    "MaterializeResult",
    "MemoryStore",
    "NonRetryable",
    "Output",
    "ParameterError",
    "PartitionKeyError",
    "PickleNotAllowed",
    "ResultNotSerializable",
    "ResultNotStored",
    "ResultUnreadable",
    "RetryPolicy",
    "RunContext",
    "RunNotFound",
    "SQLiteStore",
    "Schedule",
    "SchemaTooNew",
    "Secret",
    "State",
    "StaticMapping",
    "StaticPartitions",
    "Store",
    "StoreCorrupted",
    "StoreError",
    "StoreUnavailable",
    "Task",
    "TaskFuture",
    "TaskFutureList",
    "TaskOptions",
    "TaskRunInfo",
    "TaskRunRecord",
    "TaskTimeout",
    "TimeWindowMapping",
    "Tracing",
    "UnsupportedBackend",
    "UpstreamFailed",
    "__version__",
    "add_partitions",
    "allow_failure",
    "aserve",
    "asset",
    "asset_check",
    "backfill",
    "backfill_async",
    "backoff",
    "cron",
    "current_flow_run",
    "current_run",
    "current_task_run",
    "every",
    "flow",
    "get_run_logger",
    "hooks",
    "http_client",
    "http_retry",
    "limit",
    "materialize",
    "materialize_async",
    "on_cron",
    "on_missing",
    "on_upstream_change",
    "read_task_result",
    "resume",
    "resume_async",
    "run",
    "serve",
    "status_async",
    "task",
    "task_result",
    "unmapped",
    "wait",
]
