"""``@flowcore.flow`` and ``flowcore.run``: an async function whose runs are recorded.

A flow run owns its tasks (see :mod:`flowcore.engine.runs`): leaving the flow
waits for them, and a failure or cancellation of the flow cancels them.
"""

from __future__ import annotations

import functools
import inspect
import sys
import types
import typing
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Final, Generic, ParamSpec, TypeVar, overload

import msgspec

from . import _validate
from ._sync import run_sync
from .engine.core import Engine, _engine_var, ambient_engine, entered
from .engine.inputs import has_futures, resolve_flow_inputs
from .engine.logs import print_scope
from .engine.runs import run_flow
from .errors import ConfigurationError, ParameterError, UpstreamFailed, deprecated
from .hooks import HOOK_TIMEOUT, HookOption, Hooks, hooks_from_options
from .ids import error_message, error_name, safe_repr
from .records import Launch
from .retry import Backoff, RetryPolicy, validate_retry_options
from .secret import Secret
from .task import Task, check_function

if TYPE_CHECKING:
    # Imported by the first schedule made (flowcore.cron, flowcore.every), not here: a
    # flow without one never needs it (see _schedule_type).
    from .schedules import Schedule

__all__ = ["Flow", "convert_parameter", "flow", "run"]

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

    ``name``, ``timeout``, ``concurrency``, ``executor`` and ``hooks`` are its options (see
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
        validate_parameters: bool = True,
        log_prints: bool | None = None,
        schedules: Sequence[Schedule] = (),
        hooks: Hooks | None = None,
    ) -> None:
        #: ``print`` in the flow's body (and its tasks, unless they say) goes to the run's
        #: log (True), or not (False); with it set, ``fn`` is a wrapper that says so.
        self.log_prints = log_prints
        #: The user's plain function; ``call`` is what a run calls (``fn``, or with
        #: ``log_prints``, a wrapper that sends its ``print`` to the run's log).
        self.fn = fn
        self.call = print_scope(fn, log_prints)
        self.name = name or fn.__name__
        self.timeout = timeout
        self.concurrency = concurrency
        self.executor = executor
        #: How a failed run is retried (``None``: it is not).
        self.retry = retry
        #: Whether parameters are converted and checked by the annotations (see
        #: :meth:`validate`); ``False`` passes them as given.
        self.validate_parameters = validate_parameters
        #: When ``flowcore serve`` runs it: its schedules (see :mod:`flowcore.schedules`).
        self.schedules: tuple[Schedule, ...] = tuple(schedules)
        #: Its state hooks (``on_completion=...``; see :mod:`flowcore.hooks`), or ``None``.
        self.hooks: Hooks | None = hooks or None
        # As given, ``hook_timeout`` included when there is no hook yet (with_options
        # builds on it).
        self._hook_options = hooks if hooks is not None else Hooks()
        self._parameters: _Parameters | None = None  # built at the first call
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
        validate_parameters: bool | None = None,
        on_completion: HookOption | _Keep = _KEEP,
        on_failure: HookOption | _Keep = _KEEP,
        on_cancellation: HookOption | _Keep = _KEEP,
        on_crashed: HookOption | _Keep = _KEEP,
        on_retry: HookOption | _Keep = _KEEP,
        hook_timeout: float | _Keep = _KEEP,
    ) -> Flow[P, R]:
        """A copy of this flow with some options changed; what is not named is kept.

        ``timeout``, ``concurrency`` and ``executor`` may be set to ``None`` to drop them;
        an ``on_*`` hook option replaces that kind's hooks (``None``: none).
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
            validate_parameters=(
                self.validate_parameters if validate_parameters is None else validate_parameters
            ),
            log_prints=self.log_prints,
            schedule=list(self.schedules),
        )(self.fn)
        changed.retry = self.retry if retries is None else _flow_retry(self.retry, retries)
        given = {
            key: value
            for key, value in (
                ("on_completion", on_completion),
                ("on_failure", on_failure),
                ("on_cancellation", on_cancellation),
                ("on_crashed", on_crashed),
                ("on_retry", on_retry),
                ("hook_timeout", hook_timeout),
            )
            if not isinstance(value, _Keep)
        }
        problems: list[str] = []
        hooks = hooks_from_options(self._hook_options, given, problems, what="flow")
        if problems:
            raise ConfigurationError(
                f"invalid options for flow {changed.name!r}: " + "; ".join(problems)
            )
        changed.hooks = hooks or None
        changed._hook_options = hooks
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

    # -- parameters: the type hints are the schema ------------------------------------------

    def validate(self, parameters: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters of the call ``flow(**parameters)``, checked and converted by
        the flow's annotations, defaults applied, in signature order; raises
        :class:`~flowcore.ParameterError` listing every problem at once.

        Every way a run starts does this before the run (a call, ``flowcore run``,
        a trigger, a schedule), so a run sees the same values whoever started it:
        lax conversion with msgspec (``"1"`` → ``1``, ``"true"`` → ``True``, an ISO
        text → a ``datetime``, a dict → the annotated dataclass or ``msgspec.Struct``,
        a list of dicts → ``list[MyStruct]``); a value for a ``flowcore.Secret[T]``
        parameter is converted to ``T`` and wrapped (a ``Secret`` is taken as it is);
        unannotated (and ``Any``) parameters are passed as given. Nothing is reset to
        a default or dropped. Positional-only parameters are named here too. With
        ``validate_parameters=False`` only the names are checked (missing, unknown).
        (Calling the flow validates the same way, and records a refused run Failed;
        this checks without running, e.g. before queueing a run.)

        >>> @flowcore.flow
        ... async def ingest(pages: int, dry_run: bool = False) -> None: ...
        >>> ingest.validate({"pages": "20"})
        {'pages': 20, 'dry_run': False}
        """
        spec = self._spec()
        values, problems = spec.bind((), parameters, by_name=True)
        if self.validate_parameters:
            spec.convert(values, problems)
        if problems:
            raise spec.error(problems)
        return values

    def validate_recorded(self, parameters: Mapping[str, Any]) -> dict[str, Any]:
        """A run's recorded parameters (as :attr:`FlowRunRecord.parameters
        <flowcore.records.FlowRunRecord.parameters>` decode: one entry per parameter,
        ``*args`` as a list, ``**kwargs`` as a dict), checked and converted as
        :meth:`validate` does, for re-driving the run (resume). With
        ``validate_parameters=False``, a value that does not convert is kept as recorded.
        """
        spec = self._spec()
        values, problems = spec.bind_recorded(parameters)
        spec.convert(values, problems, lenient=not self.validate_parameters)
        if problems:
            raise spec.error(problems)
        return values

    def arguments(self, parameters: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The positional and keyword arguments that call the flow's function with
        ``parameters`` (one entry per parameter, as :meth:`validate` returns them)."""
        spec = self._spec()
        if spec.by_keyword:  # the common case, without BoundArguments' walk
            kwargs = dict(parameters)
            if spec.var_kw is not None:
                kwargs.update(kwargs.pop(spec.var_kw.name))
            return (), kwargs
        bound = inspect.BoundArguments(self.signature, dict(parameters))
        return bound.args, bound.kwargs

    def parameter_types(self) -> dict[str, Any]:
        """Each parameter's resolved annotation (``typing.Any`` when it has none, or
        one that cannot be resolved), in signature order: the flow's parameter schema."""
        return {p.name: p.annotation for p in self._spec().params}

    def prepare_call(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[dict[str, Any], tuple[Any, ...], dict[str, Any], ParameterError | None]:
        """A call's ``(parameters, args, kwargs, refused)``: its parameters as
        :meth:`validate` makes them and the arguments that pass them to the function
        (the call's own when nothing was converted); or, when they do not fit,
        the parameters as given (defaults applied, secrets wrapped) and the
        :class:`~flowcore.ParameterError` that refuses the run."""
        spec = self._parameters or self._spec()
        names = self._positional
        if names is not None and not kwargs and len(args) == len(names):
            values = dict(zip(names, args, strict=True))
            problems: dict[str, str] = {}
        else:
            values, problems = spec.bind(args, kwargs)
        converted = self.validate_parameters and spec.checked and spec.convert(values, problems)
        if converted and not problems:
            args, kwargs = self.arguments(values)
        if problems:
            return values, args, kwargs, spec.error(problems)
        return values, args, kwargs, None

    def call_with(
        self, parameters: Mapping[str, Any], *, launch: Launch | None = None
    ) -> Coroutine[Any, Any, R]:
        """A run of the flow with ``parameters`` by name (``flow.call_with({"pages": "2"})``
        is ``flow(pages="2")``), started by ``launch`` (a schedule's slot, a trigger: the
        run records it). Parameters are checked and converted as a call's are; ones that
        do not fit make a run recorded Failed with the :class:`~flowcore.ParameterError`,
        which is raised. What ``flowcore serve`` calls; from code, call the flow.
        """
        return _call_flow(self, (), dict(parameters), launch)

    def _spec(self) -> _Parameters:
        # Built at first use, not at decoration: a forward reference in an annotation
        # (a class defined below the flow) resolves by then.
        spec = self._parameters
        if spec is None:
            spec = self._parameters = _Parameters(self)
        return spec

    def __repr__(self) -> str:
        return f"<flowcore.Flow {self.name}>"


async def _call_flow(
    flow: Flow[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    launch: Launch | None = None,
) -> Any:
    upstream = None
    failed_upstream: UpstreamFailed | None = None
    if (args or kwargs) and has_futures(args, kwargs):
        # Futures passed to a subflow: it waits for them and gets their results, and its
        # run records the edges. A failed one makes a run all the same, recorded Failed
        # with the UpstreamFailed error (as invalid parameters do): visible, and its
        # on_failure hooks fire.
        args, kwargs, upstream, failed_upstream = await resolve_flow_inputs(flow.name, args, kwargs)
    # Checked and converted before the run starts; parameters that do not fit make a
    # run all the same, recorded Failed with the ParameterError (never dropped).
    refused: ParameterError | UpstreamFailed | None
    parameters, args, kwargs, refused = flow.prepare_call(args, kwargs)
    if failed_upstream is not None:
        refused = failed_upstream  # parameters as given: futures are recorded as such
    engine = _engine_var.get()
    if engine is not None:
        return await _start(engine, flow, args, kwargs, parameters, upstream, refused, launch)
    ambient = ambient_engine()  # a web app's engine, opened in its lifespan
    if ambient is not None:
        with entered(ambient):
            return await _start(ambient, flow, args, kwargs, parameters, upstream, refused, launch)
    async with Engine() as engine:
        return await _start(engine, flow, args, kwargs, parameters, upstream, refused, launch)


def _start(
    engine: Engine,
    flow: Flow[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    parameters: dict[str, Any],
    upstream: list[int] | None = None,
    refused: ParameterError | UpstreamFailed | None = None,
    launch: Launch | None = None,
) -> Coroutine[Any, Any, Any]:
    return run_flow(
        engine,
        flow.name,
        flow.call,
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
        refused=refused,
        launch=launch,
        hooks=flow.hooks,
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
    validate_parameters: bool = ...,
    log_prints: bool | None = ...,
    schedule: Schedule | Sequence[Schedule] | None = ...,
    on_completion: HookOption = ...,
    on_failure: HookOption = ...,
    on_cancellation: HookOption = ...,
    on_crashed: HookOption = ...,
    on_retry: HookOption = ...,
    hook_timeout: float = ...,
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
    validate_parameters: bool = True,
    log_prints: bool | None = None,
    schedule: Schedule | Sequence[Schedule] | None = None,
    on_completion: HookOption = None,
    on_failure: HookOption = None,
    on_cancellation: HookOption = None,
    on_crashed: HookOption = None,
    on_retry: HookOption = None,
    hook_timeout: float = HOOK_TIMEOUT,
) -> Any:
    """Make an async function a flow: ``@flowcore.flow`` or ``@flowcore.flow(timeout=600)``.

    Every task awaited inside it is a tracked task run; ``timeout`` bounds each
    attempt of a run; ``concurrency``: at most this many of its task runs in flight
    at once; ``executor``: the executor its tasks run on unless they name another.
    ``retries``/``retry_delay``: a failed run (an error, a timeout) is run again from
    the start, in the same run, this many times, waiting the delay before each (a
    number, a list, or ``flowcore.backoff(...)``); each attempt is recorded.
    ``validate_parameters``: parameters are converted and checked by the function's
    annotations before a run starts (see :meth:`Flow.validate`); ``False`` passes
    them as given. ``log_prints=True``: ``print`` in the flow goes to the run's log
    (``flowcore runs logs``), and in its tasks unless they set ``log_prints`` too.
    ``schedule``: ``flowcore.cron(...)``, ``flowcore.every(...)`` or a list of them, the
    times ``flowcore serve`` runs it; their ``parameters`` must name the flow's.
    ``on_completion``, ``on_failure``, ``on_cancellation``, ``on_crashed``, ``on_retry``:
    state hooks, each a function or a list of functions (sync or async) called with one
    :class:`flowcore.hooks.HookEvent`; ``on_failure`` fires for every way a run fails
    (an error, a timeout, invalid parameters, a failed upstream, a crash found by
    ``flowcore serve``). ``hook_timeout``: seconds each hook may run (see
    :mod:`flowcore.hooks`). (``max_concurrency`` is the deprecated spelling of
    ``concurrency``.)
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
            _validate.flag("validate_parameters", validate_parameters),
            "" if log_prints is None else _validate.flag("log_prints", log_prints),
            *validate_retry_options(retries, retry_delay, None),
        )
        if problem
    ]
    hooks = hooks_from_options(
        Hooks(),
        {
            "on_completion": on_completion,
            "on_failure": on_failure,
            "on_cancellation": on_cancellation,
            "on_crashed": on_crashed,
            "on_retry": on_retry,
            "hook_timeout": hook_timeout,
        },
        problems,
        what="flow",
    )
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
            validate_parameters=validate_parameters,
            log_prints=log_prints,
            schedules=_flow_schedules(schedule, f),
            hooks=hooks,
        )

    if fn is None:
        return decorate
    return decorate(fn)


#: The module of flowcore.cron(...) and flowcore.every(...), imported by the first of them.
_SCHEDULES: Final = f"{__package__}.schedules"


def _schedule_type() -> type[Schedule] | tuple[()]:
    """:class:`flowcore.schedules.Schedule`, or ``()`` (of which nothing is an instance)
    while that module is not imported: a schedule is made by it, so a value given before
    it is imported is not one. A flow without a schedule never imports it (issue 17)."""
    module = sys.modules.get(_SCHEDULES)
    if module is None:
        return ()
    schedule: type[Schedule] = module.Schedule
    return schedule


def _flow_schedules(value: object, fn: Callable[..., Any]) -> tuple[Schedule, ...]:
    """``@flowcore.flow(schedule=...)``: one schedule or a list of them, checked against
    the flow's function: every name in their ``parameters`` is a parameter of it, every
    parameter without a default is given, and no two share a key.

    Raises one ``ConfigurationError`` listing every problem.
    """
    if value is None:
        return ()
    items = list(value) if isinstance(value, list | tuple) else [value]
    label = getattr(fn, "__qualname__", repr(fn))
    kind = _schedule_type()
    schedules = [item for item in items if isinstance(item, kind)]
    wrong = [item for item in items if not isinstance(item, kind)]
    if wrong:
        raise ConfigurationError(
            f"invalid options for flow {label!r}: `schedule` must be flowcore.cron(...), "
            f"flowcore.every(...) or a list of them, got {wrong[0]!r}"
        )
    parameters = inspect.signature(fn).parameters.values()
    by_name = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    any_name = any(p.kind is p.VAR_KEYWORD for p in parameters)
    required = [
        p.name
        for p in parameters
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    positional = {p.name for p in parameters if p.kind is p.POSITIONAL_ONLY}
    problems = []
    seen: set[str] = set()
    for schedule in schedules:
        given = [k for k in schedule.parameters if k in positional]
        if given:
            problems.append(
                f"schedule {schedule.key!r} gives {', '.join(map(repr, given))}, positional-only "
                f"in {label}{inspect.signature(fn)}: scheduled runs pass parameters by name, "
                "so make it a regular parameter"
            )
        unknown = [
            k
            for k in schedule.parameters
            if k not in by_name and k not in positional and not any_name
        ]
        if unknown:
            problems.append(
                f"schedule {schedule.key!r} gives {', '.join(map(repr, unknown))}, which "
                f"{'is not a parameter' if len(unknown) == 1 else 'are not parameters'} of "
                f"{label}{inspect.signature(fn)}: fix the name, or add the parameter"
            )
        missing = [k for k in required if k not in schedule.parameters]
        if missing:
            problems.append(
                f"schedule {schedule.key!r} does not give {', '.join(map(repr, missing))}, "
                "which has no default: add it to the schedule's `parameters`, or give it a "
                "default"
            )
        if schedule.key in seen:
            problems.append(
                f"two schedules have the key {schedule.key!r}: give each a distinct `name=`"
            )
        seen.add(schedule.key)
    if problems:
        raise ConfigurationError(f"invalid schedule for flow {label!r}: " + "; ".join(problems))
    return tuple(schedules)


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
        # Imported here: `import flowcore` does not hash (OpenSSL's library, about 2 ms
        # to load, is loaded by the first flow defined).
        import hashlib

        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
    _DIGESTS[key] = (stat.st_mtime_ns, stat.st_size, digest)
    return digest


# -- parameters: a flow's type hints are its schema --------------------------------------------


def convert_parameter(value: Any, annotation: Any) -> Any:
    """``value`` as ``annotation`` asks, converted as every flow parameter is: msgspec's
    lax conversion (``"1"`` → ``1``, ``"true"`` → ``True``, a dict → a dataclass), and a
    path from its text. Raises ``msgspec.ValidationError`` naming what was expected."""
    return msgspec.convert(value, annotation, strict=False, dec_hook=_from_text)


def _from_text(kind: Any, value: Any) -> Any:
    """msgspec's hook for the types it does not know itself: a path from its text, and
    a generic of a class of its own (``Callable[[int], int]``, ``Iterable[int]``,
    ``MyBox[int]``, ``type[Base]``) checked by its class (its arguments cannot be)."""
    origin = typing.get_origin(kind)
    if isinstance(kind, type) and issubclass(kind, PurePath) and isinstance(value, str):
        return kind(value)
    if isinstance(origin, type) and isinstance(value, origin):
        args = typing.get_args(kind)
        if origin is not type or not args or not isinstance(args[0], type):
            return value
        if isinstance(value, type) and issubclass(value, args[0]):
            return value
    raise TypeError(f"Expected `{_type_label(kind)}`, got `{type(value).__name__}`")


class _Probe:
    """A value of no annotated type: converting it tells whether msgspec knows a type
    (a ``ValidationError``) or cannot convert to it at all (a ``TypeError``)."""

    __slots__ = ()


_MISSING: Any = object()
_EMPTY = inspect.Parameter.empty
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_BY_NAME = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
_UNIONS = (typing.Union, types.UnionType)


class _Param:
    """One parameter: how a value given for it is checked and converted.

    ``exact``: the types whose values are passed as given without converting (the
    fast path: an ``int`` for ``int``, a ``Window`` for ``Window``); ``target``: what
    msgspec converts other values to (``None``: nothing to convert); ``instance_of``:
    for annotations msgspec cannot convert to (a union with a class of its own), an
    ``isinstance`` check; ``secret``: the value is wrapped in a ``flowcore.Secret``.
    A parameter none of these apply to (unannotated, ``Any``) takes any value as given.
    """

    __slots__ = (
        "annotation", "checked", "default", "exact", "instance_of", "kind", "label", "name",
        "secret", "target",
    )  # fmt: skip

    def __init__(self, parameter: inspect.Parameter, annotation: Any) -> None:
        self.name = parameter.name
        self.kind = parameter.kind
        self.default = parameter.default
        self.annotation = annotation
        self.label = _type_label(annotation)
        self.exact: tuple[type, ...] = ()
        self.target: Any = None
        self.instance_of: tuple[type, ...] | None = None
        self.secret = False
        kind = annotation
        if annotation is Any or annotation is object:
            kind = None
        elif parameter.kind is parameter.VAR_POSITIONAL:
            kind = tuple[annotation, ...]
        elif parameter.kind is parameter.VAR_KEYWORD:
            kind = dict[str, annotation]
        else:
            secret = _secret_of(annotation)
            if secret is not None:
                self.secret = True
                self.exact = (Secret, type(None)) if secret[1] else (Secret,)
                kind = secret[0]
                if kind is Any or kind is object:
                    kind = None
                else:
                    self.label = f"Secret[{_type_label(kind)}]" + " | None" * secret[1]
            else:
                self.exact = _exact_types(annotation)
        if kind is not None and _uncheckable(kind):
            kind = None  # e.g. a Protocol that is not runtime-checkable: taken as given
        if kind is not None:
            try:
                convert_parameter(_Probe(), kind)
            except msgspec.ValidationError:
                self.target = kind
            except Exception:  # a type msgspec cannot convert to (a union with a class)
                self.instance_of = _classes_of(kind)
            else:
                pass  # a type that takes any value (msgspec.Raw and the like)
        self.checked = self.secret or self.target is not None or self.instance_of is not None

    def convert(self, value: Any) -> tuple[Any, str | None]:
        """``(the value to pass, None)``, or ``(the value as given, what is wrong)``."""
        if self.secret:
            if self.target is None:
                return Secret(value), None
            try:
                return Secret(convert_parameter(value, self.target)), None
            except Exception as exc:  # not the value: it is a secret
                return value, self.problem(exc, "a secret: the value is not shown")
        if self.target is not None:
            try:
                return convert_parameter(value, self.target), None
            except Exception as exc:
                return value, self.problem(exc, f"given {_shown(value)}")
        if self.instance_of is None or isinstance(value, self.instance_of):
            return value, None
        return value, (
            f"Expected `{self.label}`, got `{type(value).__name__}` - at `$.{self.name}` "
            f"(given {_shown(value)})"
        )

    def problem(self, exc: Exception, given: str) -> str:
        """What converting raised, then the parameter's type (unless msgspec's message
        already names it: a value of the wrong type, not inside it) and ``given``."""
        text = _located(exc, self.name)
        if text.startswith(f"Expected `{self.label}`") or (
            text.startswith("Expected `") and text.endswith(f" - at `$.{self.name}`")
        ):
            return f"{text} ({given})"
        return f"{text} (expected `{self.label}`; {given})"


class _Parameters:
    """A flow's parameters, built once per flow: binding a call to them, checking and
    converting the values given (:meth:`Flow.validate`), and the error that lists
    every problem."""

    __slots__ = (
        "by_keyword", "by_name", "checked", "flow", "params", "positional", "var_kw", "var_pos",
    )  # fmt: skip

    def __init__(self, flow: Flow[Any, Any]) -> None:
        self.flow = flow
        hints = _annotations(flow.fn, flow.signature)
        self.params = [_Param(p, hints.get(n, Any)) for n, p in flow.signature.parameters.items()]
        self.by_name = {p.name: p for p in self.params}
        self.positional = [p for p in self.params if p.kind in _POSITIONAL]
        self.var_pos = next((p for p in self.params if p.kind is p.kind.VAR_POSITIONAL), None)
        self.var_kw = next((p for p in self.params if p.kind is p.kind.VAR_KEYWORD), None)
        #: The parameters whose values are checked (not those passed as given).
        self.checked = [p for p in self.params if p.checked]
        #: Whether every parameter can be passed by name (none positional-only, no *args).
        self.by_keyword = self.var_pos is None and all(
            p.kind is not p.kind.POSITIONAL_ONLY for p in self.params
        )

    def bind(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any], *, by_name: bool = False
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """``(parameters, problems)`` of the call ``fn(*args, **kwargs)``: one entry per
        parameter in signature order, defaults applied (``*args`` a tuple, ``**kwargs``
        a dict); what does not fit is a problem, and its value is kept as given (extra
        positional arguments as ``*N``, N their position). ``by_name``: positional-only
        parameters may be given by name (a mapping of parameters has no positions)."""
        problems: dict[str, str] = {}
        given: dict[str, Any] = {}
        positional = self.positional
        for at, value in zip(positional, args, strict=False):
            given[at.name] = value
        extra = args[len(positional) :]
        more: dict[str, Any] = {}  # for **kwargs
        unknown: dict[str, Any] = {}
        for name, value in kwargs.items():
            param = self.by_name.get(name)
            if param is not None and (
                param.kind in _BY_NAME or (by_name and param.kind is param.kind.POSITIONAL_ONLY)
            ):
                if name in given:
                    problems[name] = "given twice: by position and by name"
                    unknown[f"{name} (by name)"] = value
                else:
                    given[name] = value
            elif self.var_kw is not None:
                more[name] = value
            else:
                unknown[name] = value
                problems[name] = (
                    "positional-only, given by name"
                    if param is not None and param.kind is param.kind.POSITIONAL_ONLY
                    else "unknown parameter"
                ) + f" (given {_shown(value)})"
        values: dict[str, Any] = {}
        for param in self.params:
            name = param.name
            if name in given:
                values[name] = given[name]
            elif param is self.var_pos:
                values[name] = tuple(extra)
            elif param is self.var_kw:
                values[name] = more
            elif param.default is not _EMPTY:
                values[name] = param.default
            else:
                problems[name] = _missing(param)
        values.update(unknown)
        if extra and self.var_pos is None:
            start = len(positional)
            for i, value in enumerate(extra, start):
                values[f"*{i}"] = value
            problems["*"] = (
                f"bad arguments: {len(args)} positional arguments given, the flow takes at "
                f"most {start} (given {_shown(extra)} beyond)"
            )
        return values, problems

    def bind_recorded(self, recorded: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """``(parameters, problems)`` from a run's recorded parameters (one entry per
        parameter: the form :meth:`bind` returns)."""
        problems: dict[str, str] = {}
        values: dict[str, Any] = {}
        for param in self.params:
            name = param.name
            if name in recorded:
                values[name] = recorded[name]
            elif param is self.var_pos:
                values[name] = ()
            elif param is self.var_kw:
                values[name] = {}
            elif param.default is not _EMPTY:
                values[name] = param.default
            else:
                problems[name] = _missing(param)
        for name, value in recorded.items():
            if name not in self.by_name:
                problems[name] = f"unknown parameter (given {_shown(value)})"
                values[name] = value
        if self.var_pos is not None and not isinstance(values[self.var_pos.name], tuple):
            values[self.var_pos.name] = tuple(values[self.var_pos.name])  # recorded as a list
        return values, problems

    def convert(
        self, values: dict[str, Any], problems: dict[str, str], *, lenient: bool = False
    ) -> bool:
        """Check and convert the given ``values`` in place (a default is not converted:
        it is the flow's own); add what does not fit to ``problems`` (kept as given,
        or with ``lenient`` not a problem). Whether any value was converted."""
        changed = False
        for param in self.checked:
            value = values.get(param.name, _MISSING)
            if value is _MISSING or value is param.default or type(value) in param.exact:
                continue
            new, problem = param.convert(value)
            if problem is not None:
                if param.secret:  # recorded as a secret all the same
                    values[param.name] = value if isinstance(value, Secret) else Secret(value)
                if not lenient:
                    problems[param.name] = problem
            elif new is not value and not _same(new, value):
                values[param.name] = new
                changed = True
        return changed

    def error(self, problems: Mapping[str, str], lead: str | None = None) -> ParameterError:
        """The error that lists ``problems``, in signature order."""
        order = {name: i for i, name in enumerate(self.by_name)}
        ordered = dict(sorted(problems.items(), key=lambda item: order.get(item[0], len(order))))
        flow = self.flow
        count = len(ordered)
        lines = "\n".join(
            f"  {problem}" if name == "*" else f"  {name}: {problem}"
            for name, problem in ordered.items()
        )
        if lead is None:
            lead = f"flow {flow.name!r} was given {count} invalid parameter" + "s" * (count > 1)
        return ParameterError(
            f"{lead}:\n{lines}\nits signature: {self.signature_text()}. Nothing was reset "
            "to a default or dropped; give values that fit the annotations (or pass them as "
            "given: @flowcore.flow(validate_parameters=False))",
            ordered,
        )

    def signature_text(self) -> str:
        """``ingest(pages: int, dry_run: bool = False)``: the flow's parameters as
        messages show them (types as :func:`_type_label` names them)."""
        shown = []
        for param in self.params:
            text = {param.kind.VAR_POSITIONAL: "*", param.kind.VAR_KEYWORD: "**"}.get(
                param.kind, ""
            ) + param.name
            if param.annotation is not Any:
                text += f": {param.label}"
            if param.default is not _EMPTY:
                text += f" = {_shown(param.default)}"
            shown.append(text)
        return f"{self.flow.name}({', '.join(shown)})"


def _annotations(fn: Callable[..., Any], signature: inspect.Signature) -> dict[str, Any]:
    """The function's parameter annotations, resolved (``from __future__ import
    annotations`` makes them text); one that does not resolve (a class defined inside
    a function) is left out: its parameter takes any value."""
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:
        pass
    hints: dict[str, Any] = {}
    namespace = getattr(fn, "__globals__", None)
    for name, parameter in signature.parameters.items():
        if parameter.annotation is _EMPTY:
            continue

        def one() -> None: ...

        one.__annotations__ = {name: parameter.annotation}
        try:
            hints[name] = typing.get_type_hints(one, globalns=namespace, include_extras=True)[name]
        except Exception:
            continue
    return hints


def _secret_of(annotation: Any) -> tuple[Any, bool] | None:
    """``(T, optional)`` for ``Secret[T]`` and ``Secret[T] | None``; else ``None``."""
    optional = False
    if typing.get_origin(annotation) in _UNIONS:
        args = typing.get_args(annotation)
        others = [a for a in args if a is not type(None)]
        if len(others) != 1 or len(args) != 2:
            return None
        annotation, optional = others[0], True
    if annotation is Secret:
        return Any, optional
    if typing.get_origin(annotation) is Secret:
        args = typing.get_args(annotation)
        return (args[0] if args else Any), optional
    return None


def _is_class(annotation: Any) -> bool:
    return isinstance(annotation, type) and typing.get_origin(annotation) is None


def _exact_types(annotation: Any) -> tuple[type, ...]:
    """The types whose values satisfy ``annotation`` as they are (the fast path):
    ``int`` for ``int``, ``(int, NoneType)`` for ``int | None``; none for a generic
    (``list[int]``: its items need checking) or a constrained type."""
    if _is_class(annotation):
        return (annotation,)
    if typing.get_origin(annotation) in _UNIONS:
        return tuple(a for a in typing.get_args(annotation) if _is_class(a))
    return ()


def _uncheckable(annotation: Any) -> bool:
    """Whether ``annotation`` (or a member of its union) is a class no ``isinstance`` can
    check: a ``Protocol`` that is not ``@runtime_checkable``."""
    members = typing.get_args(annotation) if typing.get_origin(annotation) in _UNIONS else ()
    for member in members or (annotation,):
        cls = typing.get_origin(member) or member
        if isinstance(cls, type):
            try:
                isinstance(None, cls)
            except TypeError:
                return True
    return False


def _classes_of(annotation: Any) -> tuple[type, ...] | None:
    """The classes an ``isinstance`` check accepts for ``annotation`` (a union of
    classes), or ``None`` when it is not one (its values are passed as given)."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) in _UNIONS else ()
    classes = tuple(typing.get_origin(a) or a for a in args) or (annotation,)
    return classes if all(isinstance(c, type) for c in classes) else None


def _type_label(annotation: Any) -> str:
    """A type as messages show it: ``int``, ``list[Window]``, ``int | None``."""
    if annotation is type(None) or annotation is None:
        return "None"
    if annotation is Any:
        return "Any"
    if annotation is Ellipsis:
        return "..."
    if hasattr(annotation, "__supertype__"):  # a NewType
        return str(annotation.__name__)
    if _is_class(annotation):
        return str(annotation.__qualname__)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in _UNIONS:
        return " | ".join(_type_label(a) for a in args)
    if origin is typing.Annotated:
        return _type_label(args[0])
    if origin is typing.Literal:
        return f"Literal[{', '.join(map(repr, args))}]"
    if origin is not None and args:
        inner = ", ".join(_type_label(a) if not isinstance(a, list) else "[...]" for a in args)
        return f"{_type_label(origin)}[{inner}]"
    return str(annotation).replace("typing.", "")


def _located(exc: Exception, name: str) -> str:
    """msgspec's message, its error path rooted at the parameter: ``Expected `int`, got
    `str` - at `$.pages` ``."""
    if not isinstance(exc, msgspec.ValidationError):
        return f"cannot be converted to the annotated type: {error_name(exc)}: {error_message(exc)}"
    text = str(exc)
    if "`$" in text:
        return text.replace("`$", f"`$.{name}")
    return f"{text} - at `$.{name}`"


def _same(converted: Any, given: Any) -> bool:
    """Whether converting changed nothing (a list of ints for ``list[int]``): then the
    flow gets the caller's own object, not msgspec's copy of it."""
    try:
        return type(converted) is type(given) and bool(converted == given)
    except Exception:  # an __eq__ that raises, or returns an array
        return False


def _shown(value: Any) -> str:
    text = safe_repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _missing(param: _Param) -> str:
    if param.annotation is Any:
        return "missing (it has no default)"
    return f"missing (it has no default; expected `{param.label}`)"
