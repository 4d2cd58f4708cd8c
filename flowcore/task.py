"""``@flowcore.task``: a function whose every call inside a flow is a tracked task run."""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Generic, ParamSpec, TypeVar, Unpack, overload

import anyio.from_thread

from .engine.attempt import run_task
from .engine.core import _run_var
from .engine.futures import TaskFuture, TaskFutureList
from .engine.inputs import prepare
from .engine.runs import run_standalone_task
from .engine.spec import TaskSpec
from .engine.submit import feed_map, map_window, run_into_future
from .errors import ConfigurationError
from .options import TaskArgs, TaskOptions, task_options

__all__ = ["Task", "task", "unmapped"]

P = ParamSpec("P")
R = TypeVar("R")
_T = TypeVar("_T")


class unmapped:
    """Wrap an argument of ``task.map`` to pass it whole to every call instead of iterating it."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class Task(TaskSpec, Generic[P, R]):
    """A tracked task. Call it inside a flow (``await t(x)``), or ``t.submit(x)``, ``t.map(xs)``.

    ``t.fn`` is the plain function, for unit tests of its logic; ``t.options`` its
    :class:`~flowcore.options.TaskOptions`.
    """

    def __init__(self, fn: Callable[P, Any], options: TaskOptions) -> None:
        super().__init__(fn, options)
        self.__doc__ = getattr(fn, "__doc__", None)
        self.__wrapped__ = fn

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        ctx = _run_var.get()
        if ctx is None:  # outside any flow: a run of its own
            return run_standalone_task(self, args, kwargs)
        return run_task(self, args, kwargs, ctx)

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
        future: TaskFuture[R] = TaskFuture(self.name, rec.seq, ctx.failed)
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
        window = map_window(self, ctx) if ctx is not None else None
        if window is None or ctx is None or ctx.task_group is None or ctx.spawner is None:
            return TaskFutureList(self.submit(*row, **kwargs) for row in rows)
        # Under a limit, start the calls as room frees up (at most `window` alive at a
        # time) instead of making a coroutine per item that would only wait at the limit.
        failed = ctx.failed
        futures: TaskFutureList[R] = TaskFutureList(TaskFuture(self.name, -1, failed) for _ in rows)
        ctx.task_group.start_soon(feed_map, self, ctx, rows, kwargs, list(futures), window)
        return futures

    def with_options(self, **changes: Unpack[TaskArgs]) -> Task[P, R]:
        """A copy of this task with some options changed (the options of ``@flowcore.task``).

        What is not named is kept as it is, a retry policy's ``delay_hint`` included:
        ``fetch.with_options(retries=10)`` keeps ``http_retry()``'s ``Retry-After``.

        ``fetch.with_options(retries=0, cache=CachePolicy(refresh=True))``
        """
        options = task_options(self.name, self.options, stacklevel=2, **changes)
        return Task(self.fn, options)

    def __repr__(self) -> str:
        return f"<flowcore.Task {self.name}>"


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


def _zip_mapped(iterables: tuple[Iterable[Any] | unmapped, ...]) -> Iterable[tuple[Any, ...]]:
    """Rows of arguments: mapped iterables zipped strictly, unmapped values repeated."""
    mapped = [it for it in iterables if not isinstance(it, unmapped)]
    for row in zip(*mapped, strict=True):
        values = iter(row)
        yield tuple(arg.value if isinstance(arg, unmapped) else next(values) for arg in iterables)


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
def task(**options: Unpack[TaskArgs]) -> _TaskDecorator: ...
def task(
    fn: Callable[..., Any] | None = None, /, **options: Unpack[TaskArgs]
) -> Task[Any, Any] | _TaskDecorator:
    """Make a function a tracked task: ``@flowcore.task`` or ``@flowcore.task(retries=3, ...)``.

    ``retries``/``retry_delay``/``retry_on``: shortcuts for ``retry=RetryPolicy(...)``.
    ``timeout``: seconds per attempt. ``tags``: labels for limits and filtering.
    ``record_inputs=False``: do not record argument values (e.g. secrets).
    ``cache=True`` (or a :class:`CachePolicy`, e.g. ``CachePolicy(ttl=3600)``): reuse the
    stored result of an earlier call with the same inputs and source.
    ``serializer``: ``"msgpack"`` (default) or ``"pickle"`` (opt-in: loads run code).
    ``concurrency``: at most this many runs of the task at once (per engine).
    ``rate``/``burst``: at most ``rate`` starts a second (per engine), bursts of ``burst``.
    ``timeout_includes_wait=True``: the ``timeout`` also counts the wait for limits
    (by default only the attempt itself is timed).
    ``persist_result``: ``None`` stores the result when it can (for resume),
    ``True`` requires it, ``False`` never stores it.
    ``executor``: the name of the executor that calls the function (default: the
    flow's, else the engine's; ``"local"`` runs sync functions in worker threads,
    so they never block the event loop).

    Every option is checked when the function is decorated, and every problem is
    reported at once:

    >>> flowcore.task(retries=-1, timeout=0)
    Traceback (most recent call last):
      ...
    flowcore.ConfigurationError: invalid options for task 'task': `retries` must be ...
    """
    label = getattr(fn, "__qualname__", None) or str(options.get("name") or "task")
    built = task_options(label, stacklevel=2, **options)

    def decorate(f: Callable[..., Any]) -> Task[Any, Any]:
        check_function(f, "task")
        return Task(f, built)

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
