"""The engine and the run context: what every run needs that is not the user's code.

An engine holds a store, a clock, limits, executors and the writer; the current
engine and the current flow run live in context variables, never in globals.
``flowcore.run`` and a flow awaited with no engine around open one for the call;
a service that runs many flows opens one for its lifetime::

    async with flowcore.Engine() as engine:      # SQLite in $FLOWCORE_HOME
        await my_flow(x=1)
        print(engine.statistics())
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel

from .. import _validate, telemetry
from .._current import current_limits, current_task_run
from ..clock import Clock, SystemClock
from ..errors import ConfigurationError, UnsupportedBackend, deprecated
from ..limits import Limit
from ..options import Logs, Tracing
from ..records import FlowRunRecord
from ..store import Store, resolve_store
from ..store.crash import mark_crashed_runs
from ..telemetry import SpanMaker, configured_provider, export_requested
from .executor import Executor, LocalExecutor, load_executor
from .gates import Limits, RunGate
from .inflight import InFlight
from .logs import EngineLogs, RunLog, RunLogger
from .logs import install as capture_logs
from .logs import uninstall as stop_capturing_logs
from .recorder import Recorder

if TYPE_CHECKING:
    from ..telemetry import SpanShipper
    from ..telemetry.shipper import Sender
    from .futures import TaskFuture
    from .replay import Replay
    from .spawner import Spawner

__all__ = [
    "Engine",
    "EngineStatistics",
    "RunContext",
    "ambient_engine",
    "current_run",
    "entered",
    "get_run_logger",
    "in_engine",
]

T = TypeVar("T")

_engine_var: ContextVar[Engine | None] = ContextVar("flowcore_engine", default=None)
_run_var: ContextVar[RunContext | None] = ContextVar("flowcore_run", default=None)


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
    #: Always 0: spans not shipped yet wait in the store (kept for older callers).
    spans_dropped: int = 0
    spans_failed: int = 0  # requests the collector did not accept (their spans wait)
    #: Spans the collector refused for good (HTTP 400, or a span too large for it): set
    #: aside with a warning, not sent again unless asked (``flowcore trace export``).
    spans_refused: int = 0
    logs_written: int = 0  # lines of run logs written to the store


class Engine:
    """Runs flows and tasks, and records them in a store.

    ``store``: a path, ``"memory"``, a URL or a store object (default: SQLite at
    ``$FLOWCORE_HOME/flowcore.db``). ``clock``: wall and monotonic time and
    sleeps for retry waits, rate limits, cache expiry, heartbeats and lease
    expiry (tests pass :class:`flowcore.testing.FakeClock`). ``seed``: seeds the
    jitter of retry backoff, for reproducible schedules. ``flush_interval``: the
    longest a state change waits before it is written (seconds).

    ``durability``: ``"batched"`` (default) commits state changes every
    ``flush_interval`` and at the end of each run, so a crash may lose the last
    window and those tasks run again on resume; ``"strict"`` commits a task's
    completion before its result is returned (tasks finishing together share
    one commit), so a completed task never runs again.
    ``cache=False`` turns caching off for every task; ``refresh_cache=True``
    recomputes every cached task and overwrites its entry.
    ``persist_results=False`` stores no results (resume then re-runs every task).

    ``tracing``: ``True`` (default), ``False`` (no spans), or a
    :class:`flowcore.Tracing` with a provider, an exporter, parameters on spans,
    retention. ``limits``: named limits (``flowcore.limit("api", 50, rate=100)``)
    that apply to tasks tagged with their name.

    ``executor``: the name of the executor tasks run on unless their flow or
    they say otherwise (default ``"local"``: the event loop, and worker threads
    for sync tasks). ``executors``: instances by name (a configured Dask
    executor, say); other names are loaded from the ``flowcore.executors``
    entry points. ``sync_threads``: worker threads of the local executor.

    ``logs``: ``True`` (default: :class:`flowcore.Logs`' defaults), ``False`` (no
    run logs kept), or a :class:`flowcore.Logs` with the level and the per-run
    limits: ``logging`` records made in runs (and ``print`` in ``log_prints``
    tasks and flows) are kept with their run (``flowcore runs logs RUN_ID``).
    """

    def __init__(
        self,
        store: Store | str | os.PathLike[str] | None = None,
        *,
        clock: Clock | None = None,
        seed: int | None = None,
        flush_interval: float = 0.02,
        durability: Literal["batched", "strict"] = "batched",
        cache: bool = True,
        refresh_cache: bool = False,
        persist_results: bool = True,
        tracing: bool | Tracing = True,
        limits: list[Limit] | tuple[Limit, ...] = (),
        executor: str = "local",
        executors: Mapping[str, Executor] | None = None,
        sync_threads: int = 40,
        logs: bool | Logs = True,
        # Deprecated spellings, kept for one release:
        thread_limit: int | None = None,
        tracer_provider: Any = None,
        exporter: Any = None,
        trace_parameters: bool | None = None,
        trace_retention_days: float | None = None,
    ) -> None:
        if thread_limit is not None:
            deprecated("Engine(thread_limit=...)", "Engine(sync_threads=...)", stacklevel=2)
            sync_threads = thread_limit
        tracing = _tracing_option(
            tracing, tracer_provider, exporter, trace_parameters, trace_retention_days
        )
        problems = []
        if not _validate.is_number(flush_interval) or not 0 < flush_interval <= 60:
            problems.append(f"`flush_interval` must be seconds in (0, 60], got {flush_interval!r}")
        if problem := _validate.count("sync_threads", sync_threads, optional=False):
            problems.append(problem)
        if durability not in ("batched", "strict"):
            problems.append(f'`durability` must be "batched" or "strict", got {durability!r}')
        for option, flag in (
            ("cache", cache),
            ("refresh_cache", refresh_cache),
            ("persist_results", persist_results),
        ):
            if problem := _validate.flag(option, flag):
                problems.append(problem)
        if problem := _validate.name("executor", executor, optional=False):
            problems.append(problem)
        bad = [e for e in (executors or {}).values() if not isinstance(e, Executor)]
        if bad:
            problems.append(
                f"`executors` maps names to executors (open, close, call), got {bad[0]!r}"
            )
        bad_limits = [spec for spec in limits if not isinstance(spec, Limit)]
        if bad_limits:
            problems.append(f"`limits` takes flowcore.limit(...) objects, got {bad_limits[0]!r}")
        retention = tracing.retention_days if isinstance(tracing, Tracing) else None
        if retention is None and os.environ.get("FLOWCORE_TRACE_RETENTION_DAYS"):
            raw = os.environ["FLOWCORE_TRACE_RETENTION_DAYS"]
            try:
                retention = float(raw)
                if not retention > 0:
                    raise ValueError(raw)
            except ValueError:
                problems.append(
                    f"FLOWCORE_TRACE_RETENTION_DAYS must be a number of days > 0, got {raw!r}"
                )
        given: object = logs
        if given is not True and given is not False and not isinstance(given, Logs):
            problems.append(f"`logs` must be True, False or a flowcore.Logs, got {logs!r}")
        if problems:
            raise ConfigurationError("invalid Engine options: " + "; ".join(problems))
        self.trace_retention_days = retention
        self._tracing_options = tracing
        #: Makes the spans of runs; ``None`` when tracing is off.
        self.tracing: SpanMaker | None = None
        #: Ships spans of ended runs to the collector, when one is configured.
        self.shipper: SpanShipper | None = None
        self.strict = durability == "strict"
        self.cache_enabled = cache
        self.refresh_cache = refresh_cache
        self.persist_results = persist_results
        #: Cache keys being computed now, so equal calls wait instead of computing twice.
        self.inflight: dict[str, InFlight] = {}
        self.store: Store = resolve_store(store)
        self.clock: Clock = clock or SystemClock()
        #: Concurrency and rate limits (named ones from ``limits``, per-task ones on use).
        self.limits = Limits(self.store, self.clock, self._start_soon, limits)
        self.rng = random.Random(seed)
        self.recorder = Recorder(
            self.store, flush_interval=flush_interval, wall_time=self.clock.time
        )
        #: What the engine's runs share for their logs (``None``: ``logs=False``).
        self.logs: EngineLogs | None = None
        if logs is not False:
            options = Logs() if logs is True else logs
            self.logs = EngineLogs(options, self.recorder.logs, self.recorder.truncated)
        self.sync_threads = sync_threads
        #: The executors by name; "local" is always there.
        self.executors: dict[str, Executor] = {"local": LocalExecutor(sync_threads)}
        self.executors.update(executors or {})
        self.default_executor = executor
        self._opened_executors: list[Executor] = []
        self._executor_lock: anyio.Lock | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._tokens: tuple[Token[Any], ...] = ()
        #: Failed opens of executors: how many so far, and the last error of each name.
        self._executor_attempts = 0
        self._executor_failures: dict[str, tuple[int, Exception]] = {}
        self._loop: object = None  # the event loop it is open on (see ambient_engine)
        self._opened = False
        self._capturing = False  # this engine installed the capture of logging
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
        # A store declares it needs asyncio (aiosqlite, asyncpg) with `asyncio_only`.
        if getattr(self.store, "asyncio_only", False) and not _on_asyncio():
            raise UnsupportedBackend(
                f"the store {self.store.location} needs asyncio (its driver is "
                "asyncio-only); run flows with asyncio (the default of flowcore.run), or use "
                "Engine(store='memory') on trio"
            )
        self._executor_lock = anyio.Lock()
        await self.store.open()
        try:
            await mark_crashed_runs(self.store, now=self.clock.time())
            if self.trace_retention_days is not None:
                await self.store.prune_spans(
                    before=self.clock.time() - self.trace_retention_days * 86400
                )
            # The default executor is opened now: a bad name fails here, not mid-run.
            await self.executor(self.default_executor)
            # Last: it may start the export thread, which must not outlive a failed open.
            self.tracing = self._make_tracing()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._close_executors()
                await self.store.close()
            raise
        tg = anyio.create_task_group()
        try:
            await tg.__aenter__()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._close_executors()
                await self.store.close()
            raise
        self._task_group = tg
        tg.start_soon(self.recorder.run)
        tg.start_soon(self.limits.leases.keep)
        if self.shipper is not None:
            tg.start_soon(self.shipper.run)
        self._tokens = (_engine_var.set(self), current_limits.set(self.limits))
        self._loop = _loop_key()
        _open_engines.setdefault(self._loop, []).append(self)
        if self.logs is not None:
            capture_logs(_run_var)  # from here nothing can fail: __aexit__ undoes it
            self._capturing = True
        self._opened = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tokens, self._tokens = self._tokens, ()
        engines = _open_engines.get(self._loop)
        if engines is not None and self in engines:
            engines.remove(self)
            if not engines:
                del _open_engines[self._loop]
        if tokens:
            try:
                current_limits.reset(tokens[1])
                _engine_var.reset(tokens[0])
            except ValueError:  # exited from another context; nothing to restore there
                pass
        tg, self._task_group = self._task_group, None
        try:
            if self._capturing:
                self.recorder.close_logs()
            # Shielded: the last records must reach the store even when we are
            # leaving because of a cancellation or Ctrl-C.
            with anyio.CancelScope(shield=True):
                await self.recorder.flush()
                if self.shipper is not None:
                    # Bounded, and only while the collector takes spans: a sick one
                    # never holds the exit; what is left waits in the store.
                    await self.shipper.close(self._export_timeout())
        finally:
            if self._capturing:
                self._capturing = False
                stop_capturing_logs()
            try:
                if tg is not None:
                    tg.cancel_scope.cancel()
                    await tg.__aexit__(None, None, None)
            finally:
                with anyio.CancelScope(shield=True):
                    await self._close_executors()
                    await self.store.close()

    async def run(self, flow: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """``await flow(*args, **kwargs)`` in this engine, from any context: a request
        handler of a web app whose lifespan opened the engine (its context does not
        hold it), or a process with several engines open. With one engine open on the
        event loop, calling the flow directly does the same (:func:`ambient_engine`)."""
        if not self._opened:
            raise ConfigurationError(
                "this Engine is not open: open it first (`async with engine:`, or in your "
                "web app's lifespan), then call engine.run(flow, ...)"
            )
        with entered(self):
            return await flow(*args, **kwargs)

    async def executor(self, name: str) -> Executor:
        """The open executor called ``name`` (opened, or loaded and opened, on first use)."""
        found = self.executors.get(name)
        if found is not None and found in self._opened_executors:
            return found
        lock = self._executor_lock
        if lock is None:
            raise ConfigurationError("the engine is not open; use `async with Engine():`")
        # The failures seen so far: a call that queued behind a failed open gets that
        # error rather than trying again (a map of 100 tasks on an unreachable cluster
        # would otherwise try to connect 100 times in a row); later calls try again.
        attempts = self._executor_attempts
        async with lock:
            failed = self._executor_failures.get(name)
            if failed is not None and failed[0] > attempts:
                raise failed[1]
            found = self.executors.get(name)
            try:
                if found is None:
                    found = self.executors[name] = load_executor(name)
                if found not in self._opened_executors:
                    await found.open()
                    self._opened_executors.append(found)
            except Exception as exc:
                self._executor_attempts += 1
                self._executor_failures[name] = (self._executor_attempts, exc)
                raise
        return found

    async def _close_executors(self) -> None:
        opened, self._opened_executors = self._opened_executors, []
        for executor in reversed(opened):
            await executor.close()

    def _start_soon(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        tg = self._task_group
        if tg is None:
            raise ConfigurationError("the engine is not open; use `async with Engine():`")
        tg.start_soon(fn)

    def _export_timeout(self) -> float:
        options = self._tracing_options
        return (options if isinstance(options, Tracing) else Tracing()).export_timeout

    def _make_tracing(self) -> SpanMaker | None:
        options = self._tracing_options
        if options is False:
            return None
        if options is True:
            options = Tracing()
        provider = options.provider or configured_provider()
        if provider is None:  # flowcore's own light spans, shipped from the store if asked
            # The shipper's module is read only when something is to be shipped (see
            # flowcore.telemetry): a process that exports nothing never imports it.
            sender: Sender | None = None
            if options.exporter is not None:
                sender = telemetry.SdkSender(options.exporter)
            elif export_requested():
                sender = telemetry.from_environment()
            if sender is not None:
                self.shipper = telemetry.SpanShipper(
                    self.store, sender, catchup=options.export_catchup, clock=self.clock.time
                )
        return SpanMaker(self.recorder.spans, provider, options.parameters)

    def statistics(self) -> EngineStatistics:
        r = self.recorder
        shipper = self.shipper
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
            spans_exported=shipper.spans_shipped if shipper is not None else 0,
            spans_failed=shipper.failures if shipper is not None else 0,
            spans_refused=shipper.spans_refused if shipper is not None else 0,
            logs_written=r.logs_written,
        )

    def __repr__(self) -> str:
        return f"<flowcore.Engine store={self.store.location!r}>"


def _tracing_option(
    tracing: object,
    provider: Any,
    exporter: Any,
    parameters: bool | None,
    retention_days: float | None,
) -> bool | Tracing:
    """``tracing=``, with the deprecated ``tracer_provider``, ``exporter`` and ``trace_*``
    options folded in."""
    old = {
        "tracer_provider": ("provider", provider),
        "exporter": ("exporter", exporter),
        "trace_parameters": ("parameters", parameters),
        "trace_retention_days": ("retention_days", retention_days),
    }
    given = {field: value for _, (field, value) in old.items() if value is not None}
    for name, (field, value) in old.items():
        if value is not None:
            deprecated(
                f"Engine({name}=...)",
                f"Engine(tracing=flowcore.Tracing({field}=...))",
                stacklevel=3,
            )
    if tracing is not True and tracing is not False and not isinstance(tracing, Tracing):
        raise ConfigurationError(
            f"invalid Engine options: `tracing` must be True, False or a flowcore.Tracing, "
            f"got {tracing!r}"
        )
    if not given:
        return tracing
    if tracing is False:
        return False
    base = tracing if isinstance(tracing, Tracing) else Tracing()
    try:
        return Tracing(
            provider=given.get("provider", base.provider),
            exporter=given.get("exporter", base.exporter),
            parameters=given.get("parameters", base.parameters),
            retention_days=given.get("retention_days", base.retention_days),
            export_timeout=base.export_timeout,
        )
    except ConfigurationError as exc:
        raise ConfigurationError(f"invalid Engine options: {exc}") from None


class RunContext:
    """The flow run in progress: ``flowcore.current_run()`` inside a flow or its tasks.

    ``id`` is the run id people pass to ``flowcore runs show``; ``parameters``
    the flow's bound arguments.
    """

    __slots__ = (
        "_closers", "deadline", "engine", "executor", "failed", "gate", "log", "parameters",
        "record", "replay", "resources", "span", "spawner",
    )  # fmt: skip

    def __init__(
        self, engine: Engine, record: FlowRunRecord, parameters: Mapping[str, Any]
    ) -> None:
        self.engine = engine
        self.record = record
        self.parameters = parameters
        #: Starts the run's submitted task runs, while an attempt of the run is going.
        self.spawner: Spawner | None = None
        #: When re-driving a crashed or failed run: the earlier run's task results.
        self.replay: Replay | None = None
        #: The flow's ``concurrency`` gate, if it has one.
        self.gate: RunGate | None = None
        #: Whether the run has a deadline (its ``timeout``): calls that cannot be
        #: interrupted (sync tasks' threads) are abandoned when it passes.
        self.deadline = False
        #: Where the run's tasks run unless a task names another executor (the flow's
        #: executor, else the engine's default, opened when the engine opened).
        self.executor: Executor = engine.executors[engine.default_executor]
        #: Failed futures nobody has looked at yet, in failure order; a flow that
        #: ends with any left fails with the first, so no failure is silent.
        self.failed: dict[TaskFuture[Any], None] = {}
        #: Things made once per run and shared by its tasks (the HTTP client), by key.
        self.resources: dict[str, Any] | None = None
        self._closers: list[Callable[[], Awaitable[None]]] | None = None
        #: The run's log (``None`` when the engine keeps no logs).
        self.log: RunLog | None = None if engine.logs is None else RunLog(record.id, engine.logs)
        #: The run's span while it runs (``None`` when not tracing): failed hooks of the
        #: run and of its task runs become events on it.
        self.span: Any = None

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def name(self) -> str:
        return self.record.name

    def resource(self, key: str, make: Callable[[], T], close: Callable[[T], Awaitable[None]]) -> T:
        """The run's ``key`` resource, made by ``make()`` on first use and closed by
        ``close(it)`` when the run ends, however it ends (in reverse order of making)."""
        resources = self.resources
        if resources is None:
            resources = self.resources = {}
        elif key in resources:
            value: T = resources[key]
            return value
        made = resources[key] = make()
        if self._closers is None:
            self._closers = []
        self._closers.append(lambda: close(made))
        return made

    async def close_resources(self) -> None:
        """Close what :meth:`resource` made (shielded: a cancelled run still closes them)."""
        closers, self._closers = self._closers, None
        self.resources = None
        if closers:
            with anyio.CancelScope(shield=True):
                for closer in reversed(closers):
                    await closer()

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


def get_run_logger() -> RunLogger:
    """A logger bound to the current run (and task run): its lines are kept in the run's
    log at the engine's ``Logs.level`` whatever the ``logging`` levels, and go to the
    handlers of the ``flowcore.run`` logger as any logger's do.

    >>> @flowcore.task
    ... async def fetch(page: int) -> None:
    ...     flowcore.get_run_logger().info("fetching page %d", page)
    """
    ctx = _run_var.get()
    if ctx is None:
        raise ConfigurationError(
            "flowcore.get_run_logger() was called outside a flow run; call it in a "
            "@flowcore.flow function or a task it calls (outside runs, use "
            "logging.getLogger(__name__))"
        )
    return RunLogger(ctx.log, current_task_run.get(), ctx.record.id)


async def in_engine(call: Callable[[Engine], Awaitable[T]]) -> T:
    """``await call(engine)`` with the current engine (:func:`ambient_engine` when the
    context has none), or in one opened for the call."""
    engine = _engine_var.get()
    if engine is not None:
        return await call(engine)
    ambient = ambient_engine()
    if ambient is not None:
        with entered(ambient):
            return await call(ambient)
    async with Engine() as engine:
        return await call(engine)


#: Engines open in this process, by the event loop they were opened on.
_open_engines: dict[object, list[Engine]] = {}


def _loop_key() -> object:
    return anyio.lowlevel.current_token()


def ambient_engine() -> Engine | None:
    """The engine a flow called outside any engine's context runs in: the one engine open
    on this event loop, if there is exactly one.

    Why: a web app opens its engine once, in its lifespan, and its request handlers run
    in contexts that do not inherit the lifespan's (so they would see no engine, and
    open and close one per request: a SQLite store opened per call). With one engine
    open on the loop there is no doubt which one is meant; with several, a call must
    be made inside one (``async with engine:`` or :meth:`Engine.run`).
    """
    try:
        engines = _open_engines.get(_loop_key())
    except RuntimeError:  # no event loop running
        return None
    return engines[0] if engines is not None and len(engines) == 1 else None


@contextlib.contextmanager
def entered(engine: Engine) -> Iterator[None]:
    """``engine`` current for the calls made inside (its context variables set, then
    reset), as inside ``async with engine:``."""
    tokens = (_engine_var.set(engine), current_limits.set(engine.limits))
    try:
        yield
    finally:
        try:
            current_limits.reset(tokens[1])
            _engine_var.reset(tokens[0])
        except ValueError:  # reset from another context: nothing to restore there
            pass


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
