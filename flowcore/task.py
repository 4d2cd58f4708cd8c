"""``@flowcore.task``: a function whose every call inside a flow is a tracked task run."""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Callable, Coroutine, Iterable, Sized
from threading import get_ident
from typing import Any, Generic, ParamSpec, TypeVar, Unpack, overload

from .engine.attempt import run_task
from .engine.core import RunContext, _run_var
from .engine.futures import TaskFuture, TaskFutureList, allow_failure
from .engine.inputs import WAIT_FOR, prepare, wait_for_list
from .engine.runs import run_standalone_task
from .engine.spec import TaskSpec
from .engine.submit import (
    check_mappable,
    feed_map,
    map_window,
    read_rows,
    run_into_future,
    unmapped,
)
from .errors import ConfigurationError
from .options import TaskArgs, TaskOptions, task_options

__all__ = ["Task", "task", "unmapped"]

P = ParamSpec("P")
R = TypeVar("R")
_T = TypeVar("_T")

#: The keyword arguments of a call given none, shared by all of them: never mutated (the
#: engine makes a new dict whenever it changes a call's arguments).
_NO_KWARGS: dict[str, Any] = {}

#: What ``wait_for=`` takes: futures (or their ``allow_failure``), or one of them.
WaitFor = Iterable[Any] | TaskFuture[Any] | allow_failure[Any]


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
        spawner = ctx.spawner
        # Inline, not spawner.on_loop_thread(): this runs on every call of every task.
        if spawner is not None and get_ident() != spawner.loop_thread:
            # Called in a sync task's worker thread, where nobody could await a coroutine:
            # the call runs on the loop and this thread waits for its result.
            result: Any = _call_from_worker_thread(self, args, kwargs, ctx)
            return result  # type: ignore[no-any-return]
        # An empty ``**kwargs`` dict is 64 bytes the call's frame would hold until the
        # task run ends (all of a big gather's calls exist at once): share one instead.
        return run_task(self, args, kwargs or _NO_KWARGS, ctx)

    @overload
    def submit(self, *args: P.args, **kwargs: P.kwargs) -> TaskFuture[R]: ...
    @overload
    def submit(self, *args: Any, wait_for: WaitFor, **kwargs: Any) -> TaskFuture[R]: ...
    def submit(self, *args: Any, **kwargs: Any) -> TaskFuture[R]:
        """Start the task now, concurrently, and return a future of its result.

        Futures among the arguments (also at any depth of lists, tuples, dicts and
        sets) are dependencies: the task starts when they finish, with their results.
        ``wait_for=[futures]``: dependencies that pass no value (the task waits for
        them, records them as edges, and is ``UpstreamFailed`` if one failed, unless
        it is wrapped in :class:`flowcore.allow_failure`).
        """
        ctx = _run_var.get()
        if ctx is None or ctx.spawner is None:
            raise ConfigurationError(
                f"{self.name}.submit() needs a running flow to own the task; call it inside a "
                f"@flowcore.flow, or outside flows use `await {self.name}(...)`"
            )
        if not ctx.spawner.on_loop_thread():
            return _from_worker_thread(self.submit, args, kwargs)
        wait_for = kwargs.pop("wait_for", None) if kwargs else None
        if wait_for is None:
            rec, waits = prepare(self, ctx, args, kwargs)
        else:
            after = wait_for_list(self.name, wait_for)
            rec, waits = prepare(self, ctx, args, kwargs, waits=bool(after) or None)
            if after:
                kwargs = {**kwargs, WAIT_FOR: after}
        future: TaskFuture[R] = TaskFuture(self.name, rec.seq, ctx.failed, rec.run_id)
        ctx.spawner.start(run_into_future(self, ctx, rec, waits, args, kwargs, future))
        return future

    def map(
        self,
        *iterables: Iterable[Any] | unmapped | TaskFuture[Any],
        wait_for: WaitFor | None = None,
        **kwargs: Any,
    ) -> TaskFutureList[R]:
        """Submit one task run per item, like the builtin ``map`` over several iterables.

        Positional iterables are zipped (they must have equal lengths); wrap one
        in :class:`unmapped` to pass it whole to every call; a future maps over its
        result, once it has one. Keyword arguments are passed unchanged to every
        call (``wait_for`` as in :meth:`submit`). ``await task.map(...)`` gives the
        list of results.

        Under a limit the calls start as room frees up, and the iterables are read
        as they do (a generator may be endless). Without one every call starts now:
        an iterator is read whole, and refused past ``UNLIMITED_ITEMS`` items.
        """
        ctx = _run_var.get()
        if ctx is not None and ctx.spawner is not None and not ctx.spawner.on_loop_thread():
            # Before anything reads the iterables: a generator is read on the loop's thread.
            if wait_for is not None:
                kwargs = {**kwargs, "wait_for": wait_for}
            return _from_worker_thread(self.map, iterables, kwargs)
        if not iterables:
            raise ConfigurationError(f"{self.name}.map() needs at least one iterable to map over")
        for i, it in enumerate(iterables):
            if not isinstance(it, unmapped | TaskFuture):
                check_mappable(self.name, i, it)
        if all(isinstance(it, unmapped) for it in iterables):
            raise ConfigurationError(
                f"{self.name}.map() got only unmapped arguments; give one iterable"
            )
        after = wait_for_list(self.name, wait_for)
        if ctx is None or ctx.spawner is None:
            raise ConfigurationError(
                f"{self.name}.map() needs a running flow to own the tasks; call it inside a "
                f"@flowcore.flow, or outside flows await the calls: `await {self.name}(x)`"
            )
        window = map_window(self, ctx)
        pending = any(
            type(it) is TaskFuture or (type(it) is TaskFutureList and it._feed is not None)
            for it in iterables
        )
        if window is None and not pending:
            rows = read_rows(self.name, iterables)
            if after:
                return TaskFutureList(self.submit(*row, wait_for=after, **kwargs) for row in rows)
            return TaskFutureList(self.submit(*row, **kwargs) for row in rows)
        # Under a limit, start the calls as room frees up (at most `window` alive at a
        # time) instead of making a coroutine per item that would only wait at the limit.
        return _fed_map(self, ctx, iterables, kwargs, window, after, pending)

    def with_options(self, **changes: Unpack[TaskArgs]) -> Task[P, R]:
        """A copy of this task with some options changed (the options of ``@flowcore.task``).

        What is not named is kept as it is, a retry policy's ``delay_hint`` included:
        ``fetch.with_options(retries=10)`` keeps ``http_retry()``'s ``Retry-After``.

        ``fetch.with_options(retries=0, cache=CachePolicy(refresh=True))``
        """
        options = task_options(self.name, self.options, stacklevel=2, **changes)
        return Task(self.fn, options)

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        """A task defined in a class is a method: ``obj.step(x)`` calls it with ``obj``
        as its first argument (``self``), tracked as usual."""
        if instance is None:
            return self
        return BoundTask(self, instance)

    def __repr__(self) -> str:
        return f"<flowcore.Task {self.name}>"


class BoundTask:
    """A task defined in a class, taken from an instance: ``obj.step``.

    It calls, submits and maps the task with the instance as its first argument.
    The instance is recorded like any input (by its repr when it cannot be encoded);
    a cached method keys on it too, so exclude it when it has no stable encoding:
    ``cache=CachePolicy.from_inputs(exclude=["self"]) + CachePolicy.from_source()``.
    """

    __slots__ = ("__func__", "__self__")

    def __init__(self, task: Task[..., Any], instance: object) -> None:
        self.__func__ = task
        self.__self__ = instance

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__func__(self.__self__, *args, **kwargs)

    def submit(self, *args: Any, **kwargs: Any) -> TaskFuture[Any]:
        return self.__func__.submit(self.__self__, *args, **kwargs)

    def map(self, *iterables: Any, **kwargs: Any) -> TaskFutureList[Any]:
        return self.__func__.map(unmapped(self.__self__), *iterables, **kwargs)

    @property
    def name(self) -> str:
        return self.__func__.name

    @property
    def fn(self) -> Callable[..., Any]:
        return self.__func__.fn

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, BoundTask)
            and other.__func__ is self.__func__
            and other.__self__ is self.__self__
        )

    def __hash__(self) -> int:
        return hash((id(self.__func__), id(self.__self__)))

    def __repr__(self) -> str:
        return f"<flowcore.Task {self.name} of {type(self.__self__).__qualname__}>"


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
    from anyio import from_thread  # only sync tasks calling from their thread need it (4 ms)

    context = contextvars.copy_context()
    reached = False

    def on_loop() -> _T:
        nonlocal reached
        reached = True
        return context.run(method, *args, **kwargs)

    try:
        return from_thread.run_sync(on_loop)
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


def _fed_map(
    task: Task[Any, R],
    ctx: RunContext,
    iterables: tuple[Any, ...],
    kwargs: dict[str, Any],
    window: int | None,
    after: tuple[Any, ...],
    pending: bool,
) -> TaskFutureList[R]:
    """A map whose calls a feeder starts as it reads the rows (see ``feed_map``)."""
    assert ctx.spawner is not None
    failed, run_id = ctx.failed, ctx.record.id
    futures: TaskFutureList[R] = TaskFutureList()
    if not pending and all(isinstance(it, unmapped | Sized) for it in iterables):
        # Collections: a future per call at once (the list is whole from the start).
        lengths = [len(it) for it in iterables if not isinstance(it, unmapped)]
        if len(set(lengths)) > 1:
            raise ConfigurationError(
                f"{task.name}.map(): the iterables to map over have different lengths "
                f"({', '.join(map(str, lengths))}); they are zipped, so give equal lengths"
            )
        futures.extend(TaskFuture(task.name, -1, failed, run_id) for _ in range(lengths[0]))
    futures._feed = TaskFuture(f"{task.name}.map()", -1, failed, run_id)
    # Started like a submitted task run (it never raises: an error goes into the feed),
    # which also works in the hand-over from a sync task's thread.
    ctx.spawner.start(feed_map(task, ctx, iterables, kwargs, futures, window, after))
    return futures


def _call_from_worker_thread(
    task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any], ctx: RunContext
) -> Any:
    """``await task(*args, **kwargs)`` on the event loop, from a sync task's worker thread.

    The call is a child of the sync task's run (anyio runs it in this thread's
    context), this thread waits for its result, and its error is raised here. A
    timed-out or cancelled sync task cancels the call too.
    """
    from anyio import from_thread  # see _from_worker_thread

    reached = False

    async def on_loop() -> Any:
        nonlocal reached
        reached = True
        return await run_task(task, args, kwargs, ctx)

    try:
        return from_thread.run(on_loop)
    except RuntimeError:
        if reached:
            raise
        raise ConfigurationError(
            f"task {task.name!r} was called from a thread flowcore did not start (one a task "
            "started itself): only the thread a sync task runs in can run tasks on the event "
            "loop; call it from the task's own thread, or make the task async and await it"
        ) from None


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
    ``on_completion``, ``on_failure``, ``on_cancellation``, ``on_retry``: state hooks, each
    a function or a list of functions (sync or async) called with one
    :class:`flowcore.hooks.HookEvent` per task run (a Cached run completes, an
    UpstreamFailed one fails); ``hook_timeout``: seconds each may run (default 30).
    (``on_crashed`` is for flows: a task run's crash is found after its process died.)

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
