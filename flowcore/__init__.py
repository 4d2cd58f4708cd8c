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

Importing flowcore defines what a flow needs; the rest is imported when first used:
the assets (:mod:`.assets`), serving (:mod:`.serve`), resuming (:mod:`.resume`),
schedules (:mod:`.schedules`), the views of the current run (:mod:`.engine.info`,
``flowcore.current_flow_run()``), the HTTP helpers (:mod:`.http`), reading results
(:mod:`.views.results`) and the stores (:mod:`.store.memory`, :mod:`.store.sqlite`:
the default store's is imported by the first engine), through this
module's ``__getattr__`` (PEP 562; each name is also imported under ``TYPE_CHECKING``,
for type checkers, IDEs and import-linter).
So ``import flowcore`` costs what a first run uses (see ``benchmarks/coldstart.py``),
and ``flowcore.asset`` works as every name of ``__all__``.
"""

import importlib as _importlib
import sys as _sys
import types as _types
import typing as _typing

from . import hooks
from .cache import CachePolicy
from .engine import (
    Engine,
    EngineStatistics,
    Executor,
    LocalExecutor,
    RunContext,
    TaskFuture,
    TaskFutureList,
    current_run,
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
from .limits import Limit, limit
from .options import Logs, TaskOptions, Tracing
from .records import FlowRunRecord, TaskRunRecord
from .retry import Backoff, RetryPolicy, backoff
from .secret import Secret
from .states import State
from .store import Store
from .task import Task, task, unmapped

__version__ = "0.1.0"

if _typing.TYPE_CHECKING:
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
        on_cron,
        on_missing,
        on_upstream_change,
        status_async,
    )

    # From their module: to mypy, `materialize` of `.assets` is also its submodule.
    from .assets.materialize import materialize, materialize_async
    from .engine.info import FlowRunInfo, TaskRunInfo, current_flow_run, current_task_run
    from .http import http_client, http_retry
    from .resume import resume, resume_async
    from .schedules import CronSchedule, IntervalSchedule, Schedule, cron, every
    from .serve import aserve, serve
    from .store import MemoryStore, SQLiteStore
    from .views.results import read_task_result, task_result

#: The names imported at their first use, and the module of each (relative to flowcore).
_LAZY: dict[str, str] = {
    "AllPartitionsMapping": ".assets",
    "AssetCheck": ".assets",
    "AssetDefinitionError": ".assets",
    "AssetGraph": ".assets",
    "AssetStatus": ".assets",
    "CheckResult": ".assets",
    "DailyPartitions": ".assets",
    "DynamicPartitions": ".assets",
    "FilesIO": ".assets",
    "Freshness": ".assets",
    "HourlyPartitions": ".assets",
    "MaterializationFailed": ".assets",
    "MaterializeResult": ".assets",
    "Output": ".assets",
    "PartitionKeyError": ".assets",
    "StaticMapping": ".assets",
    "StaticPartitions": ".assets",
    "TimeWindowMapping": ".assets",
    "add_partitions": ".assets",
    "asset": ".assets",
    "asset_check": ".assets",
    "backfill": ".assets",
    "backfill_async": ".assets",
    "materialize": ".assets",
    "materialize_async": ".assets",
    "on_cron": ".assets",
    "on_missing": ".assets",
    "on_upstream_change": ".assets",
    "status_async": ".assets",
    "SQLiteStore": ".store",
    "http_client": ".http",
    "http_retry": ".http",
    "FlowRunInfo": ".engine.info",
    "TaskRunInfo": ".engine.info",
    "current_flow_run": ".engine.info",
    "current_task_run": ".engine.info",
    "resume": ".resume",
    "resume_async": ".resume",
    "CronSchedule": ".schedules",
    "IntervalSchedule": ".schedules",
    "Schedule": ".schedules",
    "cron": ".schedules",
    "every": ".schedules",
    "aserve": ".serve",
    "serve": ".serve",
    "read_task_result": ".views.results",
    "task_result": ".views.results",
    "MemoryStore": ".store",
}


if not _typing.TYPE_CHECKING:  # to mypy, flowcore has the names above and no others

    def __getattr__(name: str) -> object:
        """A name of :data:`_LAZY`, imported now (and kept, so this runs once per name)."""
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'flowcore' has no attribute {name!r}")
        value = getattr(_importlib.import_module(module, __name__), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *_LAZY})


class _Flowcore(_types.ModuleType):
    """flowcore itself: importing its subpackage ``flowcore.serve`` (or module
    ``flowcore.resume``) binds it as an attribute of flowcore, which would hide the
    function of that name; the function is what ``flowcore.serve`` means, so the
    binding is skipped (the subpackage is in ``sys.modules`` all the same)."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in ("serve", "resume") and isinstance(value, _types.ModuleType):
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Flowcore

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
