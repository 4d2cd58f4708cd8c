"""``@flowcore.task``: a function whose every call inside a flow is a tracked task run."""

from __future__ import annotations

import contextvars
import inspect
import math
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, Generic, ParamSpec, TypeVar, overload

import anyio.from_thread

from .cache import CachePolicy, KeyMaker, resolve_policy
from .context import _run_var
from .encoding import first_input_prefix
from .errors import ConfigurationError
from .futures import TaskFuture, TaskFutureList
from .limits import limit_problems, task_limit
from .retry import Backoff, RetryOn, RetryPolicy, validate_retry_options
from .serializers import SERIALIZERS, return_type
from .taskrun import feed_map, prepare, run_into_future, run_task

__all__ = ["Task", "task", "unmapped"]

P = ParamSpec("P")
R = TypeVar("R")
_T = TypeVar("_T")


class unmapped:
    """Wrap an argument of ``task.map`` to pass it whole to every call instead of iterating it."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class Task(Generic[P, R]):
    """A tracked task. Call it inside a flow (``await t(x)``), or ``t.submit(x)``, ``t.map(xs)``.

    ``t.fn`` is the plain function, for unit tests of its logic.
    """

    def __init__(
        self,
        fn: Callable[P, Any],
        *,
        name: str | None = None,
        retry: RetryPolicy,
        timeout: float | None,
        tags: frozenset[str],
        record_inputs: bool,
        cache: CachePolicy | None = None,
        serializer: str = "msgpack",
        persist_result: bool | None = None,
        concurrency: int | None = None,
        timeout_includes_wait: bool = False,
        rate: float | None = None,
        burst: int | None = None,
    ) -> None:
        self.fn: Callable[..., Any] = fn
        self.concurrency = concurrency
        self.rate = rate
        self.burst = burst
        self.timeout_includes_wait = timeout_includes_wait
        self.name = name or getattr(fn, "__name__", None) or type(fn).__name__
        self.retry = retry
        self.timeout = timeout
        self.tags = tags
        self.record_inputs = record_inputs
        self.cache = cache
        self.serializer = serializer
        self.persist_result = persist_result
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - an instance with an async __call__
        )
        self.signature = _signature(fn)
        self.param_names = tuple(
            p.name
            for p in self.signature.parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        )
        self.first_input = first_input_prefix(self.param_names)
        #: The limit made from ``concurrency`` / ``rate`` (``None`` without them): made
        #: once here, not at every call or map.
        self.own_limit = task_limit(self) if concurrency is not None or rate is not None else None
        self.keys = KeyMaker(fn, self.name, cache) if cache is not None else None
        # OpenTelemetry code.* attributes of the task's spans.
        self.code_function = getattr(fn, "__qualname__", self.name)
        self.code_namespace = getattr(fn, "__module__", None) or ""
        self._return_type: Any = _UNSET
        self.__doc__ = getattr(fn, "__doc__", None)
        self.__wrapped__ = fn

    @property
    def return_type(self) -> Any:
        """The return annotation, resolved on first use (it may name types defined later)."""
        if self._return_type is _UNSET:
            self._return_type = return_type(self.fn)
        return self._return_type

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        return run_task(self, args, kwargs)

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> TaskFuture[R]:
        """Start the task now, concurrently, and return a future of its result.

        Futures among the arguments (also inside a list, tuple or dict) are
        dependencies: the task starts when they finish, with their results.
        """
        ctx = _run_var.get()
        if ctx is None or ctx.spawner is None:
            raise ConfigurationError(
                f"{self.name}.submit() needs a running flow to own the task; call it inside a "
                f"@flowcore.flow, or outside flows use `await {self.name}(...)`"
            )
        if not ctx.spawner.on_loop_thread():
            return _from_worker_thread(self.submit, args, kwargs)
        rec, waits = prepare(self, ctx, args, kwargs)
        future: TaskFuture[R] = TaskFuture(self.name, rec.seq, ctx)
        ctx.spawner.start(run_into_future(self, ctx, rec, waits, args, kwargs, future))
        return future

    def map(self, *iterables: Iterable[Any] | unmapped, **kwargs: Any) -> TaskFutureList[R]:
        """Submit one task run per item, like the builtin ``map`` over several iterables.

        Positional iterables are zipped (they must have equal lengths); wrap one
        in :class:`unmapped` to pass it whole to every call. Keyword arguments
        are passed unchanged to every call. ``await task.map(...)`` gives the
        list of results.
        """
        ctx = _run_var.get()
        if ctx is not None and ctx.spawner is not None and not ctx.spawner.on_loop_thread():
            # Before anything reads the iterables: a generator can be read only once.
            return _from_worker_thread(self.map, iterables, kwargs)
        if not iterables:
            raise ConfigurationError(f"{self.name}.map() needs at least one iterable to map over")
        for i, it in enumerate(iterables):
            if not isinstance(it, unmapped) and (
                isinstance(it, str | bytes) or not isinstance(it, Iterable)
            ):
                raise ConfigurationError(
                    f"argument {i} of {self.name}.map() must be an iterable to map over, got "
                    f"{type(it).__name__}; wrap it in flowcore.unmapped(...) to pass it whole"
                )
        if all(isinstance(it, unmapped) for it in iterables):
            raise ConfigurationError(
                f"{self.name}.map() got only unmapped arguments; give one iterable"
            )
        try:
            rows = list(_zip_mapped(iterables))
        except ValueError as exc:
            raise ConfigurationError(f"{self.name}.map(): {exc}") from exc
        window = _map_window(self, ctx) if ctx is not None else None
        if window is None or ctx is None or ctx.task_group is None or ctx.spawner is None:
            return TaskFutureList(self.submit(*row, **kwargs) for row in rows)
        # Under a limit, start the calls as room frees up (at most `window` alive at a
        # time) instead of making a coroutine per item that would only wait at the limit.
        futures: TaskFutureList[R] = TaskFutureList(TaskFuture(self.name, -1, ctx) for _ in rows)
        ctx.task_group.start_soon(feed_map, self, ctx, rows, kwargs, list(futures), window)
        return futures

    def with_options(self, **changes: Any) -> Task[P, R]:
        """A copy of this task with some options changed (the options of ``@flowcore.task``).

        ``fetch.with_options(retries=0, cache=CachePolicy(refresh=True))``
        """
        unknown = set(changes) - set(_OPTION_NAMES)
        if unknown:
            raise ConfigurationError(
                f"{self.name}.with_options() got unknown options {sorted(unknown)}; "
                f"the options are: {', '.join(_OPTION_NAMES)}"
            )
        options: dict[str, Any] = {
            "name": self.name,
            "timeout": self.timeout,
            "tags": self.tags,
            "record_inputs": self.record_inputs,
            "cache": self.cache if self.cache is not None else False,
            "serializer": self.serializer,
            "persist_result": self.persist_result,
            "concurrency": self.concurrency,
            "timeout_includes_wait": self.timeout_includes_wait,
            "rate": self.rate,
            "burst": self.burst,
        }
        retry_parts = {
            k: changes.pop(k) for k in ("retries", "retry_delay", "retry_on") if k in changes
        }
        if "retry" not in changes:
            base = self.retry
            if retry_parts:
                changes["retry"] = _make_retry(
                    self.name,
                    retry_parts.get("retries", base.retries),
                    retry_parts.get("retry_delay", base.delay),
                    retry_parts.get("retry_on", base.retry_on),
                )
            else:
                changes["retry"] = base
        elif retry_parts:
            raise ConfigurationError(
                "give either `retry=RetryPolicy(...)` or `retries`/`retry_delay`/`retry_on`, "
                "not both"
            )
        options.update(changes)
        copy: Task[P, R] = task(**options)(self.fn)
        return copy

    def __repr__(self) -> str:
        return f"<flowcore.Task {self.name}>"


_UNSET: Any = object()
_OPTION_NAMES = (
    "name", "retries", "retry_delay", "retry_on", "retry", "timeout", "tags", "record_inputs",
    "cache", "cache_ttl", "serializer", "persist_result", "concurrency", "timeout_includes_wait",
    "rate", "burst",
)  # fmt: skip


def _from_worker_thread(
    method: Callable[..., _T], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> _T:
    """``method(*args, **kwargs)`` made on the event loop's thread, from a worker thread.

    A sync task runs in a worker thread, and may submit or map from there. The flow
    run's records (a task run's seq is the next of its run's count) and its tasks
    belong to the event loop's thread: a task made from another thread would not even
    wake the loop. So the call is handed to the loop, in this thread's context (the
    current task run stays the parent), and this thread waits the moment it takes.
    """
    context = contextvars.copy_context()
    reached = False

    def on_loop() -> _T:
        nonlocal reached
        reached = True
        return context.run(method, *args, **kwargs)

    try:
        return anyio.from_thread.run_sync(on_loop)
    except RuntimeError:
        if reached:
            raise
        # anyio could not reach the loop: not one of its worker threads.
        raise ConfigurationError(
            f"{getattr(method, '__qualname__', 'submit')}() was called from a thread flowcore "
            "did not start (one a task started itself): only the thread a sync task runs in "
            "can hand calls to the event loop; submit from the task's own thread, or make "
            "the task async and await there"
        ) from None


def _map_window(task: Task[Any, Any], ctx: Any) -> int | None:
    """How many calls of a limited ``map`` to keep alive at once (``None``: no limit applies)."""
    specs = [task.own_limit] if task.own_limit is not None else []
    if ctx.gate is not None:
        specs.append(ctx.gate.limit)
    for tag in task.tags:
        state = ctx.engine.limits.named(tag)
        if state is not None:
            specs.append(state.limit)
    bounds = []
    for spec in specs:
        if spec.concurrency is not None:
            bounds.append(spec.concurrency)
        if spec.rate is not None:  # a second's worth of starts (at least a burst)
            bounds.append(max(spec.burst or 1, math.ceil(spec.rate)))
    # Twice the tightest limit: the next calls are ready the moment a slot frees up.
    return 2 * min(bounds) if bounds else None


def _zip_mapped(iterables: tuple[Iterable[Any] | unmapped, ...]) -> Iterable[tuple[Any, ...]]:
    """Rows of arguments: mapped iterables zipped strictly, unmapped values repeated."""
    mapped = [it for it in iterables if not isinstance(it, unmapped)]
    for row in zip(*mapped, strict=True):
        values = iter(row)
        yield tuple(arg.value if isinstance(arg, unmapped) else next(values) for arg in iterables)


def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return inspect.Signature()


def _timeout_problems(timeout: object) -> str:
    if timeout is None:
        return ""
    if (
        not isinstance(timeout, int | float)
        or isinstance(timeout, bool)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        return f"`timeout` must be a number of seconds > 0 or None, got {timeout!r}"
    return ""


def _make_retry(name: str, retries: object, delay: object, retry_on: object) -> RetryPolicy:
    problems = validate_retry_options(retries, delay, retry_on)
    if problems:
        raise ConfigurationError(f"invalid options for task {name!r}: " + "; ".join(problems))
    return RetryPolicy(retries=retries, delay=delay, retry_on=retry_on)  # type: ignore[arg-type]


def check_function(fn: object, what: str) -> None:
    """Refuse what cannot be a task or flow, with the reason and the fix."""
    if isinstance(fn, Task):
        raise ConfigurationError(f"{fn.name!r} is already a task; apply @flowcore.{what} once")
    if not callable(fn):
        raise ConfigurationError(
            f"@flowcore.{what} decorates a function, got {type(fn).__name__} {fn!r}; "
            f"write @flowcore.{what} or @flowcore.{what}(retries=...) directly above a def"
        )
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise ConfigurationError(
            f"@flowcore.{what} cannot decorate the generator {getattr(fn, '__qualname__', fn)!r}: "
            "its values would be produced after the run is recorded as finished; return a list "
            "instead, or make each item a task call"
        )


@overload
def task(fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...
@overload
def task(
    *,
    name: str | None = ...,
    retries: int = ...,
    retry_delay: float | Sequence[float] | Backoff = ...,
    retry_on: RetryOn | None = ...,
    retry: RetryPolicy | None = ...,
    timeout: float | None = ...,
    tags: Iterable[str] = ...,
    record_inputs: bool = ...,
    cache: bool | CachePolicy = ...,
    cache_ttl: float | None = ...,
    serializer: str = ...,
    persist_result: bool | None = ...,
    concurrency: int | None = ...,
    timeout_includes_wait: bool = ...,
    rate: float | None = ...,
    burst: int | None = ...,
) -> _TaskDecorator: ...
def task(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    retries: int = 0,
    retry_delay: float | Sequence[float] | Backoff = 0.0,
    retry_on: RetryOn | None = None,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
    tags: Iterable[str] = (),
    record_inputs: bool = True,
    cache: bool | CachePolicy = False,
    cache_ttl: float | None = None,
    serializer: str = "msgpack",
    persist_result: bool | None = None,
    concurrency: int | None = None,
    timeout_includes_wait: bool = False,
    rate: float | None = None,
    burst: int | None = None,
) -> Task[Any, Any] | _TaskDecorator:
    """Make a function a tracked task: ``@flowcore.task`` or ``@flowcore.task(retries=3, ...)``.

    ``retries``/``retry_delay``/``retry_on``: shortcuts for ``retry=RetryPolicy(...)``.
    ``timeout``: seconds per attempt. ``tags``: labels for limits and filtering.
    ``record_inputs=False``: do not record argument values (e.g. secrets).
    ``cache=True`` (or a :class:`CachePolicy`): reuse the stored result of an
    earlier call with the same inputs and source; ``cache_ttl``: seconds it stays valid.
    ``serializer``: ``"msgpack"`` (default) or ``"pickle"`` (opt-in: loads run code).
    ``concurrency``: at most this many runs of the task at once (per engine).
    ``rate``/``burst``: at most ``rate`` starts a second (per engine), bursts of ``burst``.
    ``timeout_includes_wait=True``: the ``timeout`` also counts the wait for limits
    (by default only the attempt itself is timed).
    ``persist_result``: ``None`` stores the result when it can (for resume),
    ``True`` requires it, ``False`` never stores it.
    Sync functions run in worker threads, so they never block the event loop.
    """
    problems: list[str] = []
    if name is not None and (not isinstance(name, str) or not name):
        problems.append(f"`name` must be a non-empty str, got {name!r}")
    given_retry: object = retry
    if given_retry is not None:
        if not isinstance(given_retry, RetryPolicy):
            problems.append(f"`retry` must be a flowcore.RetryPolicy, got {type(retry).__name__}")
        if retries or retry_delay or retry_on is not None:
            problems.append(
                "give either `retry=RetryPolicy(...)` or `retries`/`retry_delay`/`retry_on`, "
                "not both"
            )
    else:
        problems.extend(validate_retry_options(retries, retry_delay, retry_on))
    if t := _timeout_problems(timeout):
        problems.append(t)
    if isinstance(tags, str) or not all(isinstance(tag, str) for tag in tags):
        problems.append(f"`tags` must be an iterable of str, got {tags!r}")
    policy_cache: CachePolicy | None = None
    try:
        policy_cache = resolve_policy(cache, cache_ttl)
    except ConfigurationError as exc:
        problems.append(str(exc))
    if serializer not in SERIALIZERS:
        problems.append(
            f"`serializer` must be one of {', '.join(map(repr, SERIALIZERS))}, got {serializer!r}"
        )
    given_persist: object = persist_result
    if given_persist is not None and given_persist is not True and given_persist is not False:
        problems.append(f"`persist_result` must be True, False or None, got {given_persist!r}")
    given_concurrency: object = concurrency
    if given_concurrency is not None and (
        not isinstance(given_concurrency, int)
        or isinstance(given_concurrency, bool)
        or given_concurrency < 1
    ):
        problems.append(f"`concurrency` must be an int >= 1 or None, got {given_concurrency!r}")
    given_includes: object = timeout_includes_wait
    if given_includes is not True and given_includes is not False:
        problems.append(f"`timeout_includes_wait` must be True or False, got {given_includes!r}")
    elif timeout_includes_wait and timeout is None:
        problems.append("`timeout_includes_wait=True` needs a `timeout`")
    problems.extend(limit_problems("task", None, rate, burst, needs_one=False))
    if policy_cache is not None and persist_result is False:
        problems.append("`cache` needs stored results; drop persist_result=False")
    if problems:
        label = getattr(fn, "__qualname__", None) or name or "task"
        raise ConfigurationError(f"invalid options for task {label!r}: " + "; ".join(problems))
    policy = retry or RetryPolicy(retries=retries, delay=retry_delay, retry_on=retry_on)

    def decorate(f: Callable[..., Any]) -> Task[Any, Any]:
        check_function(f, "task")
        return Task(
            f,
            name=name,
            retry=policy,
            timeout=None if timeout is None else float(timeout),
            tags=frozenset(tags),
            record_inputs=record_inputs,
            cache=policy_cache,
            serializer=serializer,
            persist_result=persist_result,
            concurrency=concurrency,
            timeout_includes_wait=timeout_includes_wait,
            rate=None if rate is None else float(rate),
            burst=burst,  # None: limit() makes it a second's worth of `rate`
        )

    if fn is None:
        return _TaskDecorator(decorate)
    return decorate(fn)


class _TaskDecorator:
    """What ``@flowcore.task(...)`` with options returns, typed to keep the function's signature."""

    def __init__(self, decorate: Callable[[Callable[..., Any]], Task[Any, Any]]) -> None:
        self._decorate = decorate

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    def __call__(self, fn: Callable[..., Any], /) -> Task[Any, Any]:
        return self._decorate(fn)
