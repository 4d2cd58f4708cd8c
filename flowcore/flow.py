"""``@flowcore.flow`` and ``flowcore.run``: an async function whose runs are recorded.

A flow run owns its tasks (see :mod:`flowcore.engine.runs`): leaving the flow
waits for them, and a failure or cancellation of the flow cancels them.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Generic, ParamSpec, TypeVar, overload

from . import _validate
from ._sync import run_sync
from .engine.core import Engine, _engine_var
from .engine.inputs import has_futures, resolve_flow_inputs
from .engine.runs import run_flow
from .errors import ConfigurationError, deprecated
from .retry import Backoff, RetryPolicy, validate_retry_options
from .task import Task, check_function

__all__ = ["Flow", "flow", "run"]

P = ParamSpec("P")
R = TypeVar("R")


class _Keep:
    """The default of ``with_options``' options: keep the flow's own value."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<keep>"


_KEEP = _Keep()


class Flow(Generic[P, R]):
    """A flow: ``await my_flow(...)`` in async code, ``flowcore.run(my_flow, ...)`` in sync code.

    ``name``, ``timeout``, ``concurrency`` and ``executor`` are its options (see
    :func:`flow`); ``fn`` is the plain function.
    """

    def __init__(
        self,
        fn: Callable[P, Coroutine[Any, Any, R]],
        *,
        name: str | None = None,
        timeout: float | None = None,
        concurrency: int | None = None,
        executor: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.fn = fn
        self.name = name or fn.__name__
        self.timeout = timeout
        self.concurrency = concurrency
        self.executor = executor
        #: How a failed run is retried (``None``: it is not).
        self.retry = retry
        self.signature = inspect.signature(fn)
        # The parameter names when every parameter can be passed by position: a call
        # passing all of them so maps them without Signature.bind (a sixth of an
        # empty run's Python).
        params = self.signature.parameters
        self._positional: tuple[str, ...] | None = (
            tuple(params)
            if all(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params.values())
            else None
        )
        self._entrypoint: str | None = None
        # Hashed now, while the file is the code just loaded (not at the first run: a
        # file edited in between would be recorded as the code that ran).
        self._entrypoint_hash = file_sha256(source_file(fn))
        functools.update_wrapper(self, fn)

    @property
    def max_concurrency(self) -> int | None:
        """Deprecated: the flow's ``concurrency``."""
        deprecated("Flow.max_concurrency", "Flow.concurrency", stacklevel=2)
        return self.concurrency

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        return _call_flow(self, args, kwargs)

    @property
    def entrypoint(self) -> str | None:
        """Where ``resume`` imports this flow from: ``module:qualname`` or ``file.py:qualname``."""
        if self._entrypoint is None:
            self._entrypoint = _entrypoint_of(self.fn)
        return self._entrypoint

    @entrypoint.setter
    def entrypoint(self, value: str | None) -> None:
        self._entrypoint = value

    @property
    def entrypoint_hash(self) -> str | None:
        """SHA-256 (hex) of the flow's source file (:func:`source_file`) as it was loaded;
        its runs record it, and ``resume`` refuses to re-drive one with changed code."""
        return self._entrypoint_hash

    def run(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run from synchronous code: ``my_flow.run(x=1)`` is ``flowcore.run(my_flow, x=1)``."""
        return run(self, *args, **kwargs)

    def with_options(
        self,
        *,
        name: str | None = None,
        timeout: float | _Keep | None = _KEEP,
        concurrency: int | _Keep | None = _KEEP,
        executor: str | _Keep | None = _KEEP,
        retries: int | None = None,
    ) -> Flow[P, R]:
        """A copy of this flow with some options changed; what is not named is kept.

        ``timeout``, ``concurrency`` and ``executor`` may be set to ``None`` to drop them.
        (A copy under another name is resumed with ``flowcore.resume(run_id, flow=copy)``:
        its runs record where the original is defined.)

        >>> @flowcore.flow(timeout=60)
        ... async def etl() -> None: ...
        >>> etl.with_options(name="etl-nightly", timeout=None).timeout is None
        True
        """
        changed: Flow[P, R] = flow(
            name=self.name if name is None else name,
            timeout=self.timeout if isinstance(timeout, _Keep) else timeout,
            concurrency=self.concurrency if isinstance(concurrency, _Keep) else concurrency,
            executor=self.executor if isinstance(executor, _Keep) else executor,
        )(self.fn)
        changed.retry = self.retry if retries is None else _flow_retry(self.retry, retries)
        return changed

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The parameters a call with ``args`` and ``kwargs`` gives, defaults applied."""
        names = self._positional
        if names is not None and not kwargs and len(args) == len(names):
            return dict(zip(names, args, strict=True))
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ConfigurationError(
                f"flow {self.name!r} called with bad arguments: {exc}; its signature is "
                f"{self.name}{self.signature}"
            ) from None
        bound.apply_defaults()
        return bound.arguments

    def __repr__(self) -> str:
        return f"<flowcore.Flow {self.name}>"


async def _call_flow(flow: Flow[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    upstream = None
    if (args or kwargs) and has_futures(args, kwargs):
        # Futures passed to a subflow: it waits for them and gets their results, and its
        # run records the edges (a failed one fails the call, before any run is made).
        args, kwargs, upstream = await resolve_flow_inputs(flow.name, args, kwargs)
    parameters = flow.bind(args, kwargs)
    engine = _engine_var.get()
    if engine is None:
        async with Engine() as engine:
            return await _start(engine, flow, args, kwargs, parameters, upstream)
    return await _start(engine, flow, args, kwargs, parameters, upstream)


def _start(
    engine: Engine,
    flow: Flow[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    parameters: dict[str, Any],
    upstream: list[int] | None = None,
) -> Coroutine[Any, Any, Any]:
    return run_flow(
        engine,
        flow.name,
        flow.fn,
        args,
        kwargs,
        parameters,
        timeout=flow.timeout,
        concurrency=flow.concurrency,
        executor=flow.executor,
        entrypoint=flow.entrypoint,
        entrypoint_hash=flow.entrypoint_hash,
        retry=flow.retry,
        upstream=upstream,
    )


@overload
def flow(fn: Callable[P, Coroutine[Any, Any, R]], /) -> Flow[P, R]: ...
@overload
def flow(
    *,
    name: str | None = ...,
    timeout: float | None = ...,
    concurrency: int | None = ...,
    executor: str | None = ...,
    retries: int = ...,
    retry_delay: float | Sequence[float] | Backoff = ...,
    max_concurrency: int | None = ...,
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Flow[P, R]]: ...
def flow(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    timeout: float | None = None,
    concurrency: int | None = None,
    executor: str | None = None,
    retries: int = 0,
    retry_delay: float | Sequence[float] | Backoff = 0.0,
    max_concurrency: int | None = None,
) -> Any:
    """Make an async function a flow: ``@flowcore.flow`` or ``@flowcore.flow(timeout=600)``.

    Every task awaited inside it is a tracked task run; ``timeout`` bounds each
    attempt of a run; ``concurrency``: at most this many of its task runs in flight
    at once; ``executor``: the executor its tasks run on unless they name another.
    ``retries``/``retry_delay``: a failed run (an error, a timeout) is run again from
    the start, in the same run, this many times, waiting the delay before each (a
    number, a list, or ``flowcore.backoff(...)``); each attempt is recorded.
    (``max_concurrency`` is the deprecated spelling of ``concurrency``.)
    """
    if max_concurrency is not None:
        deprecated("@flowcore.flow(max_concurrency=...)", "concurrency=...", stacklevel=2)
        if concurrency is None:
            concurrency = max_concurrency
    problems = [
        problem
        for problem in (
            _validate.name("name", name),
            _validate.seconds("timeout", timeout),
            _validate.count("concurrency", concurrency),
            _validate.name("executor", executor),
            *validate_retry_options(retries, retry_delay, None),
        )
        if problem
    ]
    if problems:
        label = getattr(fn, "__qualname__", None) or name or "flow"
        raise ConfigurationError(f"invalid options for flow {label!r}: " + "; ".join(problems))

    def decorate(f: Callable[..., Any]) -> Flow[Any, Any]:
        check_function(f, "flow")
        if isinstance(f, Flow):
            raise ConfigurationError(f"{f.name!r} is already a flow; apply @flowcore.flow once")
        if not inspect.iscoroutinefunction(f):
            raise ConfigurationError(
                f"@flowcore.flow needs an `async def` function, got the sync function "
                f"{getattr(f, '__qualname__', f)!r}; write `async def`, and put blocking code in a "
                "@flowcore.task (sync tasks run in worker threads)"
            )
        return Flow(
            f,
            name=name,
            timeout=None if timeout is None else float(timeout),
            concurrency=concurrency,
            executor=executor,
            retry=RetryPolicy(retries=retries, delay=retry_delay) if retries else None,
        )

    if fn is None:
        return decorate
    return decorate(fn)


def run(flow: Flow[P, R] | Task[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """Run a flow (or a single task) from synchronous code and return its result.

    ``flowcore.run(ingest, pages=20)``. Runs on asyncio, with uvloop when it is
    installed. Inside a running event loop, ``await ingest(pages=20)`` instead.
    """
    given: object = flow
    if inspect.iscoroutine(given):
        # The unstarted coroutine of a flow or task call holds it as a local.
        local_vars = given.cr_frame.f_locals if given.cr_frame is not None else {}
        called = local_vars.get("flow") or local_vars.get("task")
        name = getattr(called, "name", given.__qualname__)
        given.close()
        raise ConfigurationError(
            f"flowcore.run() takes the flow itself, not a call of it: write "
            f"flowcore.run({name}, ...arguments...), not flowcore.run({name}(...))"
        )
    if not isinstance(given, Flow | Task):
        raise ConfigurationError(
            f"flowcore.run() takes a @flowcore.flow (or @flowcore.task), got {flow!r}; "
            "decorate the function with @flowcore.flow"
        )
    result: R = run_sync(
        functools.partial(flow, *args, **kwargs),
        name="flowcore.run",
        instead=f"await {given.name}(...)",
    )
    return result


def _flow_retry(policy: RetryPolicy | None, retries: int) -> RetryPolicy | None:
    """``policy`` with ``retries`` changed (its delay kept); ``None`` for no retries."""
    problems = validate_retry_options(retries, 0.0, None)
    if problems:
        raise ConfigurationError("invalid flow options: " + "; ".join(problems))
    if not retries:
        return None
    return RetryPolicy(retries=retries, delay=policy.delay if policy else 0.0)


def _entrypoint_of(fn: Callable[..., Any]) -> str | None:
    module_name = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "")
    if not module_name or "<locals>" in qualname:
        return None  # a flow defined inside a function cannot be imported again
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    if module_name == "__main__" or module_name.startswith("_flowcore_user_"):
        return f"{Path(file).resolve()}:{qualname}" if file else None
    return f"{module_name}:{qualname}"


def source_file(fn: Callable[..., Any]) -> Path | None:
    """The file the module defining ``fn`` was loaded from (the file its
    :attr:`Flow.entrypoint` names); ``None`` for a function defined inside another,
    which no entrypoint names."""
    if "<locals>" in getattr(fn, "__qualname__", "<locals>"):
        return None
    file = getattr(sys.modules.get(getattr(fn, "__module__", None) or ""), "__file__", None)
    return Path(file) if file else None


#: Digests of the files read, by path: (mtime in ns, size, SHA-256). Flows defined in
#: one file (and their with_options copies) read it once.
_DIGESTS: dict[str, tuple[int, int, str]] = {}


def file_sha256(path: Path | None, *, fresh: bool = False) -> str | None:
    """SHA-256 (hex) of the file at ``path``; ``None`` when there is none to read.
    Read again only when its modification time or size changed, or when ``fresh``."""
    if path is None:
        return None
    key = str(path)
    try:
        stat = path.stat()
        known = _DIGESTS.get(key)
        if not fresh and known is not None and known[:2] == (stat.st_mtime_ns, stat.st_size):
            return known[2]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
    _DIGESTS[key] = (stat.st_mtime_ns, stat.st_size, digest)
    return digest
