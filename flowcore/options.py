"""Options as values: what ``@flowcore.task``, ``Engine(tracing=...)`` and
``Engine(logs=...)`` are given.

A task's options are one frozen :class:`TaskOptions`. ``@flowcore.task(...)``
builds it, ``task.with_options(...)`` derives a new one from it, and both go
through :func:`task_options`, so every option is named, checked and converted
in one place, and a change keeps whatever it does not touch (a retry policy's
``delay_hint`` survives ``with_options(retries=10)``).

The decorator takes a few shortcuts besides the fields: ``retries``,
``retry_delay`` and ``retry_on`` build (or change) the :class:`RetryPolicy`,
and ``cache=True`` is ``cache=CachePolicy()``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypedDict

from . import _validate
from .cache import CachePolicy
from .errors import ConfigurationError, deprecated
from .hooks import HOOK_OPTIONS, HOOK_TIMEOUT, Hook, HookOption, Hooks, hooks_from_options
from .limits import limit_problems
from .retry import Backoff, RetryOn, RetryPolicy, validate_retry_options
from .serializers import SERIALIZERS

__all__ = ["Logs", "TaskArgs", "TaskOptions", "Tracing", "task_options"]


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """Every option of a task (see :func:`flowcore.task` for what each one means)."""

    name: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float | None = None
    timeout_includes_wait: bool = False
    tags: frozenset[str] = frozenset()
    record_inputs: bool = True
    cache: CachePolicy | None = None
    serializer: str = "msgpack"
    persist_result: bool | None = None
    concurrency: int | None = None
    rate: float | None = None
    burst: int | None = None
    #: The name of the executor that calls the function (``None``: the flow's, or the engine's).
    executor: str | None = None
    #: Each call's name: a string, a template over the parameters (``"fetch-{page}"``),
    #: or a function of the bound arguments returning a string.
    task_run_name: str | Callable[[Mapping[str, Any]], str] | None = None
    #: ``print`` in the task goes to its run's log (True), or not (False); ``None``:
    #: as where it is called (its flow's ``log_prints``, or its calling task's).
    log_prints: bool | None = None
    #: State hooks, by kind (see :mod:`flowcore.hooks`; ``on_crashed`` stays empty for a
    #: task), and the seconds each may run.
    on_completion: tuple[Hook, ...] = ()
    on_failure: tuple[Hook, ...] = ()
    on_cancellation: tuple[Hook, ...] = ()
    on_crashed: tuple[Hook, ...] = ()
    on_retry: tuple[Hook, ...] = ()
    hook_timeout: float = HOOK_TIMEOUT

    @property
    def hooks(self) -> Hooks:
        """The hook options as one :class:`~flowcore.hooks.Hooks` (false when empty)."""
        return Hooks(
            self.on_completion,
            self.on_failure,
            self.on_cancellation,
            self.on_crashed,
            self.on_retry,
            self.hook_timeout,
        )


class TaskArgs(TypedDict, total=False):
    """The keyword arguments of ``@flowcore.task(...)`` and ``with_options(...)``."""

    name: str | None
    retries: int
    retry_delay: float | Sequence[float] | Backoff
    retry_on: RetryOn | None
    retry: RetryPolicy | None
    timeout: float | None
    timeout_includes_wait: bool
    tags: Iterable[str]
    record_inputs: bool
    cache: bool | CachePolicy | None
    cache_ttl: float | None  # deprecated: cache=CachePolicy(ttl=...)
    serializer: str
    persist_result: bool | None
    concurrency: int | None
    rate: float | None
    burst: int | None
    executor: str | None
    task_run_name: str | Callable[[Mapping[str, Any]], str] | None
    log_prints: bool | None
    on_completion: HookOption
    on_failure: HookOption
    on_cancellation: HookOption
    on_crashed: HookOption  # refused with the reason: a task's crash is seen by its flow
    on_retry: HookOption
    hook_timeout: float


#: The retry shortcuts and the RetryPolicy field each one sets.
_RETRY_SHORTCUTS: Final = {"retries": "retries", "retry_delay": "delay", "retry_on": "retry_on"}
#: Every keyword ``task()`` and ``with_options()`` take.
OPTION_NAMES: Final = tuple(TaskArgs.__annotations__)


def task_options(
    label: str, base: TaskOptions | None = None, *, stacklevel: int = 1, **given: Any
) -> TaskOptions:
    """``base`` (default: all defaults) with the options ``given`` changed, checked.

    Every problem is collected and reported at once in one ``ConfigurationError``
    naming the task (``label``) and, for each option, what was given and the fix.
    """
    unknown = sorted(set(given) - set(OPTION_NAMES))
    if unknown:
        raise ConfigurationError(
            f"invalid options for task {label!r}: unknown options {unknown}; "
            f"the options are: {', '.join(OPTION_NAMES)}"
        )
    old = base or TaskOptions()
    problems: list[str] = []
    changes: dict[str, Any] = {}

    # Retry: a whole policy, or shortcuts that change the current one.
    shortcuts = {key: given.pop(key) for key in _RETRY_SHORTCUTS if key in given}
    explicit = given.get("retry") is not None
    policy: object = given.pop("retry", None) or old.retry
    if not isinstance(policy, RetryPolicy):
        problems.append(f"`retry` must be a flowcore.RetryPolicy, got {type(policy).__name__}")
    elif explicit and shortcuts:
        problems.append(
            "give either `retry=RetryPolicy(...)` or `retries`/`retry_delay`/`retry_on`, not both"
        )
    elif shortcuts:
        problems.extend(
            validate_retry_options(
                shortcuts.get("retries", policy.retries),
                shortcuts.get("retry_delay", policy.delay),
                shortcuts.get("retry_on", policy.retry_on),
            )
        )
        if not problems:
            changes["retry"] = dataclasses.replace(
                policy, **{_RETRY_SHORTCUTS[k]: v for k, v in shortcuts.items()}
            )
    else:
        changes["retry"] = policy

    if "name" in given:
        changes["name"] = given.pop("name")
        if problem := _validate.name("name", changes["name"]):
            problems.append(problem)
    if "timeout" in given:
        timeout = given.pop("timeout")
        if problem := _validate.seconds("timeout", timeout):
            problems.append(problem)
        else:
            changes["timeout"] = None if timeout is None else float(timeout)
    if "tags" in given:
        tags = given.pop("tags")
        if isinstance(tags, str) or not isinstance(tags, Iterable):
            problems.append(f"`tags` must be an iterable of str, got {tags!r}")
        else:
            tags = frozenset(tags)
            if not all(isinstance(tag, str) for tag in tags):
                problems.append(f"`tags` must be an iterable of str, got {sorted(map(repr, tags))}")
            changes["tags"] = tags
    for option in ("timeout_includes_wait", "record_inputs"):
        if option in given:
            changes[option] = given.pop(option)
            if problem := _validate.flag(option, changes[option]):
                problems.append(problem)

    # Caching: True, False/None, or a policy; cache_ttl is the deprecated shortcut.
    cache: object = given.pop("cache", old.cache)
    ttl = given.pop("cache_ttl", None)
    if ttl is not None:
        deprecated(
            "`cache_ttl=`", "`cache=flowcore.CachePolicy(ttl=...)`", stacklevel=stacklevel + 1
        )
    if cache is True:
        cache = CachePolicy()
    if cache is False:
        cache = None
    if cache is not None and not isinstance(cache, CachePolicy):
        problems.append(f"`cache` must be True, False or a flowcore.CachePolicy, got {cache!r}")
    elif ttl is not None:
        if cache is None:
            problems.append("`cache_ttl` was given without `cache`; add cache=True")
        elif problem := _validate.seconds("cache_ttl", ttl, optional=False):
            problems.append(problem)
        else:
            cache = cache.with_ttl(ttl)
    if not problems:
        changes["cache"] = cache

    if "serializer" in given:
        changes["serializer"] = serializer = given.pop("serializer")
        if serializer not in SERIALIZERS:
            problems.append(
                f"`serializer` must be one of {', '.join(map(repr, SERIALIZERS))}, "
                f"got {serializer!r}"
            )
    if "persist_result" in given:
        changes["persist_result"] = persist = given.pop("persist_result")
        if persist is not None and persist is not True and persist is not False:
            problems.append(f"`persist_result` must be True, False or None, got {persist!r}")
    for option in ("concurrency", "rate", "burst"):
        if option in given:
            changes[option] = given.pop(option)
    if "executor" in given:
        changes["executor"] = executor = given.pop("executor")
        if problem := _validate.name("executor", executor):
            problems.append(problem)
    if "task_run_name" in given:
        changes["task_run_name"] = run_name = given.pop("task_run_name")
        if (
            run_name is not None
            and not (isinstance(run_name, str) and run_name)
            and (isinstance(run_name, str) or not callable(run_name))
        ):
            problems.append(
                "`task_run_name` must be a non-empty str, a template such as 'fetch-{page}', or "
                f"a function (arguments) -> str, got {run_name!r}"
            )
    if "log_prints" in given:
        changes["log_prints"] = log_prints = given.pop("log_prints")
        if log_prints is not None and log_prints is not True and log_prints is not False:
            problems.append(
                "`log_prints` must be True, False or None (as where the task is called), "
                f"got {log_prints!r}"
            )
    hook_options = {key: given.pop(key) for key in (*HOOK_OPTIONS, "hook_timeout") if key in given}
    if hook_options:
        hooks = hooks_from_options(old.hooks, hook_options, problems, what="task")
        changes.update({option: hooks.of(kind) for option, kind in HOOK_OPTIONS.items()})
        changes["hook_timeout"] = hooks.timeout
    assert not given, given  # every option is handled above

    if problems:
        raise ConfigurationError(f"invalid options for task {label!r}: " + "; ".join(problems))
    new = dataclasses.replace(old, **changes)
    # Checks across options, on the result (a change may break a pair that was fine).
    problems.extend(limit_problems("task", new.concurrency, new.rate, new.burst, needs_one=False))
    if new.timeout_includes_wait and new.timeout is None:
        problems.append("`timeout_includes_wait=True` needs a `timeout`")
    if new.cache is not None and new.persist_result is False:
        problems.append("`cache` needs stored results; drop persist_result=False")
    if problems:
        raise ConfigurationError(f"invalid options for task {label!r}: " + "; ".join(problems))
    rate: object = new.rate
    if type(rate) is int:  # typed float; an int is accepted and stored as a float
        new = dataclasses.replace(new, rate=float(rate))
    return new


@dataclass(frozen=True, slots=True)
class Tracing:
    """How an engine makes and ships spans: ``Engine(tracing=flowcore.Tracing(...))``.

    ``provider``: an OpenTelemetry SDK ``TracerProvider`` to make spans with
    (default: the application's global one if it set one, else flowcore's own
    light spans). ``exporter``: an SDK ``SpanExporter`` for flowcore's own spans
    (default: OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set); flowcore's own spans
    are shipped to it from the store once their run ended (durably: a collector that
    is down gets them when it is back). ``parameters``:
    put parameter values on flow spans (off by default: they can be secrets).
    ``retention_days`` (or ``$FLOWCORE_TRACE_RETENTION_DAYS``): span rows older
    than this are deleted when an engine opens (default: kept).
    ``export_timeout``: the longest closing the engine waits to ship its runs' spans to
    a collector that takes them (never for one that failed: they wait in the store).
    ``export_catchup``: runs older than this (seconds) are not shipped after an outage
    (``None``: all; default one day).

    ``Engine(tracing=True)`` is ``Tracing()``; ``tracing=False`` makes no spans.
    """

    provider: Any = None
    exporter: Any = None
    parameters: bool = False
    retention_days: float | None = None
    export_timeout: float = 2.0
    export_catchup: float | None = 86400.0

    def __post_init__(self) -> None:
        problems = []
        if self.provider is not None and self.exporter is not None:
            problems.append(
                "`exporter` is for flowcore's own spans; with `provider`, add the exporter "
                "to your provider (provider.add_span_processor(BatchSpanProcessor(exporter)))"
            )
        if self.provider is not None and not hasattr(self.provider, "get_tracer"):
            problems.append(f"`provider` must be a TracerProvider, got {self.provider!r}")
        if self.exporter is not None and not hasattr(self.exporter, "export"):
            problems.append(
                f"`exporter` must be an OpenTelemetry SpanExporter, got {self.exporter!r}"
            )
        if problem := _validate.flag("parameters", self.parameters):
            problems.append(problem)
        if problem := _validate.seconds("retention_days", self.retention_days):
            problems.append(problem.replace("seconds", "days"))
        if problem := _validate.seconds("export_timeout", self.export_timeout, zero=True):
            problems.append(problem)
        if problem := _validate.seconds("export_catchup", self.export_catchup):
            problems.append(problem)
        if problems:
            raise ConfigurationError("invalid tracing options: " + "; ".join(problems))


#: The level names ``Logs(level=...)`` takes besides numbers (``logging``'s own).
_LEVELS: Final = {
    "CRITICAL": logging.CRITICAL,
    "ERROR": logging.ERROR,
    "WARNING": logging.WARNING,
    "INFO": logging.INFO,
    "DEBUG": logging.DEBUG,
    "NOTSET": logging.NOTSET,
}


@dataclass(frozen=True, slots=True)
class Logs:
    """What an engine keeps of its runs' logs: ``Engine(logs=flowcore.Logs(...))``.

    ``logging`` records made inside a run (any logger: whatever its configured level
    lets through), lines printed by tasks and flows with ``log_prints=True``, and
    :func:`flowcore.get_run_logger`'s lines (whatever the loggers' levels) are kept
    with the run when at least ``level`` (a number or a name: ``"WARNING"``).
    Each flow run keeps at most ``max_lines`` lines and ``max_bytes`` bytes (UTF-8)
    of text, whichever comes first; then one last line says how many were dropped.

    ``Engine(logs=True)`` is ``Logs()``; ``logs=False`` keeps no logs.

    >>> flowcore.options.Logs(max_lines=1000, level="warning").levelno
    30
    """

    max_lines: int = 10_000
    max_bytes: int = 1_000_000
    #: A number, or a name given as one (``"WARNING"`` is kept as 30).
    level: int | str = logging.INFO

    def __post_init__(self) -> None:
        problems = []
        for option in ("max_lines", "max_bytes"):
            if problem := _validate.count(option, getattr(self, option), optional=False):
                problems.append(problem)
        level: object = self.level
        if isinstance(level, str) and level.upper() in _LEVELS:
            object.__setattr__(self, "level", _LEVELS[level.upper()])
        elif not isinstance(level, int) or isinstance(level, bool) or level < 0:
            problems.append(
                f"`level` must be a logging level: a number >= 0 or one of "
                f"{', '.join(_LEVELS)}, got {level!r}"
            )
        if problems:
            raise ConfigurationError("invalid log options: " + "; ".join(problems))

    @property
    def levelno(self) -> int:
        """``level`` as a number."""
        return int(self.level)
