"""The engine: the one object that holds a store, a clock, limits and the writer.

Everything a run needs that is not the user's code hangs off an engine, and the
current engine lives in a context variable, never in a global. ``flowcore.run``
and a flow awaited with no engine around open one for the call; a service that
runs many flows opens one for its lifetime::

    async with flowcore.Engine() as engine:      # SQLite in $FLOWCORE_HOME
        await my_flow(x=1)
        print(engine.statistics())
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from contextvars import Token
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from .clock import Clock, SystemClock
from .context import _engine_var
from .errors import ConfigurationError, UnsupportedBackend
from .export import SpanExport, from_environment
from .limits import Limit, Limits
from .recorder import Recorder
from .records import FlowRunRecord
from .store import SQLiteStore, Store, resolve_store
from .telemetry import Tracing, configured_provider

if TYPE_CHECKING:
    from .taskrun import InFlight

__all__ = ["Engine", "EngineStatistics"]


@dataclass(frozen=True, slots=True)
class EngineStatistics:
    """Counters since the engine opened, for progress displays and tests."""

    tasks_started: int
    tasks_completed: int
    tasks_failed: int
    tasks_retried: int
    flows_running: int
    records_pending: int
    rows_written: int
    flushes: int
    spans_written: int = 0
    spans_exported: int = 0
    spans_dropped: int = 0  # will not reach the collector: queue full, or export failed
    spans_failed: int = 0  # the part of spans_dropped whose export was tried and failed


class Engine:
    """Runs flows and tasks, and records them in a store.

    ``store``: a path, ``"memory"``, a URL or a store object (default: SQLite at
    ``$FLOWCORE_HOME/flowcore.db``). ``clock``: used for retry waits (tests pass
    :class:`flowcore.testing.FakeClock`). ``seed``: seeds the jitter of retry
    backoff, for reproducible schedules. ``flush_interval``: the longest a state
    change waits before it is written (seconds). ``thread_limit``: how many sync
    tasks may run in worker threads at once.

    ``durability``: ``"batched"`` (default) commits state changes every
    ``flush_interval`` and at the end of each run, so a crash may lose the last
    window and those tasks run again on resume; ``"strict"`` commits a task's
    completion before its result is returned (tasks finishing together share
    one commit), so a completed task never runs again.
    ``cache=False`` turns caching off for every task; ``refresh_cache=True``
    recomputes every cached task and overwrites its entry.
    ``persist_results=False`` stores no results (resume then re-runs every task).

    ``tracing=False`` makes no spans. ``tracer_provider``: an OpenTelemetry SDK
    provider to make spans with (default: the application's global one if it
    set one, else flowcore's own light spans). ``exporter``: an SDK
    ``SpanExporter`` for flowcore's own spans (default: OTLP when
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set). ``trace_parameters=True`` puts
    parameter values on flow spans (off by default: they can be secrets).
    ``limits``: named limits (``flowcore.limit("api", 50, rate=100)``) that apply to
    tasks tagged with their name.
    ``trace_retention_days`` (or ``FLOWCORE_TRACE_RETENTION_DAYS``): span rows older
    than this are deleted when an engine opens (default: kept).
    Spans are persisted in the store either way.
    """

    def __init__(
        self,
        store: Store | str | os.PathLike[str] | None = None,
        *,
        clock: Clock | None = None,
        seed: int | None = None,
        flush_interval: float = 0.02,
        thread_limit: int = 40,
        durability: str = "batched",
        cache: bool = True,
        refresh_cache: bool = False,
        persist_results: bool = True,
        tracing: bool = True,
        tracer_provider: Any = None,
        exporter: Any = None,
        trace_parameters: bool = False,
        trace_retention_days: float | None = None,
        limits: list[Limit] | tuple[Limit, ...] = (),
    ) -> None:
        problems = []
        if not isinstance(flush_interval, int | float) or not 0 < flush_interval <= 60:
            problems.append(f"`flush_interval` must be seconds in (0, 60], got {flush_interval!r}")
        if not isinstance(thread_limit, int) or isinstance(thread_limit, bool) or thread_limit < 1:
            problems.append(f"`thread_limit` must be an int >= 1, got {thread_limit!r}")
        if durability not in ("batched", "strict"):
            problems.append(f'`durability` must be "batched" or "strict", got {durability!r}')
        if tracer_provider is not None and exporter is not None:
            problems.append(
                "`exporter` is for flowcore's own spans; with `tracer_provider`, add the exporter "
                "to your provider (provider.add_span_processor(BatchSpanProcessor(exporter)))"
            )
        if tracer_provider is not None and not hasattr(tracer_provider, "get_tracer"):
            problems.append(f"`tracer_provider` must be a TracerProvider, got {tracer_provider!r}")
        if trace_retention_days is None and os.environ.get("FLOWCORE_TRACE_RETENTION_DAYS"):
            raw = os.environ["FLOWCORE_TRACE_RETENTION_DAYS"]
            try:
                trace_retention_days = float(raw)
            except ValueError:
                problems.append(
                    f"FLOWCORE_TRACE_RETENTION_DAYS must be a number of days, got {raw!r}"
                )
        if trace_retention_days is not None and (
            not isinstance(trace_retention_days, int | float) or not trace_retention_days > 0
        ):
            problems.append(
                f"`trace_retention_days` must be a number of days > 0, got {trace_retention_days!r}"
            )
        if problems:
            raise ConfigurationError("invalid Engine options: " + "; ".join(problems))
        self.trace_retention_days = trace_retention_days
        self._tracing_options = (tracing, tracer_provider, exporter, trace_parameters)
        #: Makes the spans of runs; ``None`` when tracing is off.
        self.tracing: Tracing | None = None
        self.strict = durability == "strict"
        self.cache_enabled = cache
        self.refresh_cache = refresh_cache
        self.persist_results = persist_results
        #: Cache keys being computed now, so equal calls wait instead of computing twice.
        self.inflight: dict[str, InFlight] = {}
        self.store: Store = resolve_store(store)
        self.clock: Clock = clock or SystemClock()
        bad = [spec for spec in limits if not isinstance(spec, Limit)]
        if bad:
            raise ConfigurationError(f"`limits` takes flowcore.limit(...) objects, got {bad[0]!r}")
        #: Concurrency and rate limits (named ones from ``limits``, per-task ones on use).
        self.limits = Limits(self, list(limits))
        self.rng = random.Random(seed)
        self.recorder = Recorder(self.store, flush_interval=flush_interval)
        self.thread_limit = thread_limit
        self.thread_limiter: anyio.CapacityLimiter | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._token: Token[Engine | None] | None = None
        self._opened = False
        # Counters, bumped on the hot path (plain ints: no locks needed on one loop).
        self.tasks_started = 0
        self.tasks_completed = 0
        self.tasks_failed = 0
        self.tasks_retried = 0
        self.flows_running = 0
        #: The record of the newest top-level flow run started by this engine (live: its
        #: state changes as the run goes on). With one flow per engine, that run's.
        self.last_run: FlowRunRecord | None = None

    async def __aenter__(self) -> Engine:
        if self._opened:
            raise ConfigurationError("this Engine is already open; an engine is entered once")
        if isinstance(self.store, SQLiteStore) and not _on_asyncio():
            raise UnsupportedBackend(
                "the SQLite store needs asyncio (it uses aiosqlite, which is asyncio-only); "
                "run flows with asyncio (the default of flowcore.run), or use "
                "Engine(store='memory') on trio"
            )
        self.thread_limiter = anyio.CapacityLimiter(self.thread_limit)
        await self.store.open()
        try:
            from .crash import mark_crashed_runs

            await mark_crashed_runs(self.store)
            if self.trace_retention_days is not None:
                await self.store.prune_spans(before=time.time() - self.trace_retention_days * 86400)
            # Last: it may start the export thread, which must not outlive a failed open.
            self.tracing = self._make_tracing()
        except BaseException:
            await self.store.close()
            raise
        tg = anyio.create_task_group()
        try:
            await tg.__aenter__()
        except BaseException:
            await self.store.close()
            raise
        self._task_group = tg
        tg.start_soon(self.recorder.run)
        tg.start_soon(self.limits.keep_leases)
        self._token = _engine_var.set(self)
        self._opened = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            try:
                _engine_var.reset(self._token)
            except ValueError:  # exited from another context; nothing to restore there
                pass
            self._token = None
        tg, self._task_group = self._task_group, None
        try:
            # Shielded: the last records must reach the store even when we are
            # leaving because of a cancellation or Ctrl-C.
            with anyio.CancelScope(shield=True):
                await self.recorder.flush()
        finally:
            try:
                if tg is not None:
                    tg.cancel_scope.cancel()
                    await tg.__aexit__(None, None, None)
            finally:
                with anyio.CancelScope(shield=True):
                    try:
                        await self.store.close()
                    finally:
                        export = self.tracing.export if self.tracing is not None else None
                        if export is not None:
                            # Bounded (export.shutdown_timeout), off the loop: a hung
                            # collector delays the exit by at most that, and fails nothing.
                            await anyio.to_thread.run_sync(export.shutdown)

    def _make_tracing(self) -> Tracing | None:
        enabled, provider, exporter, parameters = self._tracing_options
        if not enabled:
            return None
        provider = provider or configured_provider()
        export = None
        if provider is None:  # flowcore's own light spans, exported if asked
            export = SpanExport(exporter) if exporter is not None else from_environment()
        return Tracing(self.recorder.spans, provider, export, parameters)

    def statistics(self) -> EngineStatistics:
        r = self.recorder
        export = self.tracing.export if self.tracing is not None else None
        return EngineStatistics(
            tasks_started=self.tasks_started,
            tasks_completed=self.tasks_completed,
            tasks_failed=self.tasks_failed,
            tasks_retried=self.tasks_retried,
            flows_running=self.flows_running,
            records_pending=r.pending,
            rows_written=r.rows_written,
            flushes=r.flushes,
            spans_written=r.spans_written,
            spans_exported=export.exported if export is not None else 0,
            spans_dropped=export.dropped if export is not None else 0,
            spans_failed=export.failed if export is not None else 0,
        )

    def __repr__(self) -> str:
        return f"<flowcore.Engine store={self.store.location!r}>"


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
