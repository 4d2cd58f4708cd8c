"""``@flowcore.asset``: a function whose value is a named, versioned data product.

::

    @flowcore.asset(key="raw/events", group="ingest", retries=3)
    async def events() -> list[dict]: ...

    @flowcore.asset(partitions=flowcore.DailyPartitions("2026-01-01", tz="Europe/Paris"))
    def daily(raw__events: list[dict], partition_key: str) -> dict: ...

**Upstreams.** Each parameter names an upstream asset: ``raw__events`` is the asset
``raw/events`` (a ``/`` is written ``__``), and ``ins={"events": "raw/events"}`` names
it explicitly (for a key that is not a Python name, or a shorter parameter). Its
stored value is loaded and passed in. A parameter with a default that names no asset
is an ordinary parameter; ``partition_key`` receives the key of the partition being
materialised (``None`` when unpartitioned). ``deps=[...]`` orders without passing
values. Which upstreams exist is checked when the graph is built
(:class:`~flowcore.assets.graph.AssetGraph`), not here: assets may be defined in any
order, and in several modules.

**Task options.** An asset is materialised as a task run (per partition), so it takes
the options of ``@flowcore.task`` that say how a run goes (``retries``,
``retry_delay``, ``retry_on``, ``retry``, ``timeout``, ``timeout_includes_wait``,
``tags``, ``concurrency``, ``rate``, ``burst``, ``executor``, ``log_prints``,
``record_inputs``, ``task_run_name``, and any the task gains: :data:`TASK_OPTIONS`).
They are checked here, by the same code as a task's, into one
:class:`~flowcore.options.TaskOptions` (:attr:`Asset.options`, named after the key),
from which the materialiser makes the task. Not ``cache`` (staleness decides what is
rebuilt), nor ``serializer``/``persist_result`` (``io`` decides how the value is kept).

**Calling it.** ``my_asset(...)`` calls the plain function (an async one returns its
coroutine), with nothing loaded, stored or recorded: for unit tests of its logic.
Materialising is :func:`flowcore.materialize`'s.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final, Generic, ParamSpec, TypeVar, overload

from .. import _validate
from ..errors import ConfigurationError
from ..hooks import Hook, HookOption
from ..options import OPTION_NAMES, TaskOptions, task_options
from ..task import check_function
from .automation import Automation, automation_policies
from .checks import AssetCheck
from .errors import AssetDefinitionError
from .freshness import Freshness
from .io import AssetIO, check_io
from .keys import check_asset_key, key_of_parameter
from .mappings import PartitionMapping
from .partitions import Partitions
from .versions import code_fingerprint

__all__ = ["PARTITION_PARAMETER", "TASK_OPTIONS", "Asset", "asset"]

P = ParamSpec("P")
R = TypeVar("R")
_T = TypeVar("_T")

#: The parameter that receives the key of the partition being materialised.
PARTITION_PARAMETER: Final = "partition_key"
_REFUSED: Final = {
    "cache": "an asset is rebuilt when it is stale, not cached: drop `cache`",
    "cache_ttl": "an asset is rebuilt when it is stale, not cached: drop `cache_ttl`",
    "serializer": "how an asset's value is kept is its `io`: drop `serializer`",
    "persist_result": "how an asset's value is kept is its `io`: drop `persist_result`",
}
#: The options of ``@flowcore.task`` an asset takes: all but those above, and ``name``
#: (an asset's ``name`` is its key). Derived, so that a new task option is an asset's too.
TASK_OPTIONS: Final = frozenset(OPTION_NAMES) - set(_REFUSED) - {"name"}
_DEFAULT_GROUP: Final = "default"


class Asset(Generic[P, R]):
    """An asset definition: made by :func:`asset`. Read-only after decoration.

    ``fn`` is the plain function; calling the asset calls it (module docstring).
    """

    def __init__(
        self,
        fn: Callable[P, Any],
        *,
        key: str,
        group: str,
        code_version: str,
        inputs: Mapping[str, str],
        optional: frozenset[str],
        takes_partition_key: bool,
        deps: tuple[str, ...],
        partitions: Partitions | None,
        partition_mapping: Mapping[str, PartitionMapping],
        checks: tuple[AssetCheck, ...],
        freshness: Freshness | None,
        automation: tuple[Automation, ...],
        io: AssetIO | str,
        options: TaskOptions,
        on_overdue: tuple[Hook, ...] = (),
    ) -> None:
        self.fn = fn
        self.__wrapped__ = fn
        #: Whether ``fn`` is a coroutine function (asked per materialisation: kept).
        self.is_async = inspect.iscoroutinefunction(fn)
        #: The task that materialises it, made once by the materialiser and kept here
        #: (a weak-keyed dict's lookup cost ~0.7 µs an asset).
        self.task: Any = None
        self.__doc__ = getattr(fn, "__doc__", None)
        #: ``"raw/events"``: the asset's name in the graph, the store and the CLI.
        self.key = key
        self.group = group
        #: The given ``code_version``, or a fingerprint of the function's source.
        self.code_version = code_version
        #: Parameter name → the key of the upstream asset it names.
        self.inputs = inputs
        #: Parameters with a default: ordinary parameters when no asset has their key.
        self.optional = optional
        self.takes_partition_key = takes_partition_key
        #: Upstream keys for ordering only (no value passed).
        self.deps = deps
        self.partitions = partitions
        #: Parameter name or dep key → mapping (the others: the default for the pair).
        self.partition_mapping = partition_mapping
        self.checks = checks
        self.freshness = freshness
        self.automation = automation
        self.io = io
        #: Hooks fired by ``flowcore serve`` when it is overdue (once per overdue period).
        self.on_overdue = on_overdue
        #: The task options of each materialisation (``name`` is the key).
        self.options = options
        self.description = (inspect.getdoc(fn) or "").partition("\n\n")[0]
        #: Checks made with ``@asset_check(asset=this_asset)`` (the asset object, not its
        #: key): a graph built from this asset runs them too, whether or not they are
        #: listed beside it, so a check written next to its asset is never silently left out.
        self.declared_checks: list[AssetCheck] = []

    def declare_check(self, check: AssetCheck) -> None:
        """Called by :func:`~flowcore.assets.asset_check` given this asset object."""
        if all(c.fn is not check.fn for c in self.declared_checks):
            self.declared_checks.append(check)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the plain function (nothing is loaded, stored or recorded)."""
        return self.fn(*args, **kwargs)  # type: ignore[no-any-return]

    @property
    def name(self) -> str:
        """The last segment of the key (``events`` for ``raw/events``)."""
        return self.key.rpartition("/")[2]

    def upstream_keys(self) -> tuple[str, ...]:
        """Every upstream this asset may name (inputs, then deps), before the graph decides
        which optional parameters are upstreams."""
        return (*dict.fromkeys(self.inputs.values()), *self.deps)

    def __repr__(self) -> str:
        return f"<flowcore.Asset {self.key!r}>"


def _key_of(value: object, what: str) -> str:
    key = value.key if isinstance(value, Asset) else value
    return check_asset_key(key, what=what)


def _build(
    fn: Callable[..., Any],
    *,
    key: object,
    name: object,
    group: object,
    code_version: object,
    deps: object,
    ins: object,
    partitions: object,
    partition_mapping: object,
    checks: object,
    freshness: object,
    automation: object,
    io: object,
    task_args: dict[str, Any],
    on_overdue: object = None,
) -> Asset[Any, Any]:
    if isinstance(fn, Asset):
        raise AssetDefinitionError(f"{fn.key!r} is already an asset; apply @flowcore.asset once")
    check_function(fn, "asset")
    label = str(key or name or getattr(fn, "__qualname__", "asset"))
    problems: list[str] = []

    def attempt(step: Callable[..., _T], *args: Any, **kwargs: Any) -> _T | None:
        try:
            return step(*args, **kwargs)
        except ConfigurationError as exc:
            problems.append(str(exc))
            return None

    if key is not None and name is not None:
        problems.append("give `key` or `name` (the same option), not both")
    given_key = key if key is not None else name
    fn_name = getattr(fn, "__name__", "")
    if given_key is None and (not fn_name.isidentifier() or fn_name == "<lambda>"):
        problems.append(f"{fn!r} has no usable name: give key='...'")
    asset_key = attempt(_key_of, given_key if given_key is not None else fn_name, "`key`")
    label = asset_key or label
    if group is None:
        group = _DEFAULT_GROUP
    elif problem := _validate.name("group", group):
        problems.append(problem)
    if code_version is not None and (problem := _validate.name("code_version", code_version)):
        problems.append(problem)

    # Parameters: upstreams by name (or through `ins`), and partition_key.
    parameters = inspect.signature(fn).parameters
    named: dict[str, str] = {}
    optional: set[str] = set()
    for param in parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            problems.append(
                f"parameter {param}: an asset receives its upstreams by name, so it takes "
                "neither *args, **kwargs nor positional-only parameters"
            )
            continue
        if param.name == PARTITION_PARAMETER:
            continue
        named[param.name] = key_of_parameter(param.name)
        if param.default is not param.empty:
            optional.add(param.name)
    if ins is not None:
        if not isinstance(ins, Mapping):
            problems.append(f"`ins` must be a dict of parameter name to asset key, got {ins!r}")
        else:
            for param_name, upstream in ins.items():
                if param_name not in named:
                    problems.append(
                        f"`ins` names {param_name!r}, which is not a parameter of "
                        f"{getattr(fn, '__qualname__', fn)}{inspect.signature(fn)}"
                    )
                    continue
                named[param_name] = attempt(_key_of, upstream, "an `ins` value") or param_name
                optional.discard(param_name)  # named explicitly: an upstream, default or not

    dep_keys: list[str] = []
    if deps is not None:
        if isinstance(deps, str | Asset) or not isinstance(deps, Iterable):
            problems.append(f"`deps` must be a list of assets or keys, got {deps!r}")
        else:
            for dep in deps:
                if (dep_key := attempt(_key_of, dep, "a `deps` item")) is not None:
                    dep_keys.append(dep_key)

    if partitions is not None and not isinstance(partitions, Partitions):
        problems.append(
            "`partitions` must be flowcore.DailyPartitions(...), HourlyPartitions(...), "
            f"StaticPartitions([...]) or DynamicPartitions(name), got {partitions!r}"
        )
    mapping: dict[str, PartitionMapping] = {}
    if partition_mapping is not None:
        if not isinstance(partition_mapping, Mapping):
            problems.append(
                "`partition_mapping` must be a dict of parameter name (or dep key) to a "
                f"mapping, got {partition_mapping!r}"
            )
        else:
            for where, value in partition_mapping.items():
                where_key = where.key if isinstance(where, Asset) else where
                if where_key not in named and where_key not in dep_keys:
                    problems.append(
                        f"`partition_mapping` names {where_key!r}, which is neither a parameter "
                        f"nor a dep (parameters: {', '.join(named) or 'none'}; deps: "
                        f"{', '.join(dep_keys) or 'none'})"
                    )
                elif not isinstance(value, PartitionMapping):
                    problems.append(
                        f"`partition_mapping[{where_key!r}]` must be a partition mapping "
                        f"(TimeWindowMapping(), StaticMapping({{...}}), ...), got {value!r}"
                    )
                else:
                    mapping[where_key] = value

    attached: list[AssetCheck] = []
    if checks is not None:
        items = [checks] if isinstance(checks, AssetCheck) else checks
        if not isinstance(items, Iterable):
            problems.append(f"`checks` must be a list of @flowcore.asset_check, got {checks!r}")
        else:
            for check in items:
                if not isinstance(check, AssetCheck):
                    problems.append(
                        f"`checks` items must be made by @flowcore.asset_check, got {check!r}"
                    )
                elif asset_key is not None and (found := attempt(check.for_asset, asset_key)):
                    attached.append(found)
        names = [c.name for c in attached]
        if len(set(names)) != len(names):
            problems.append(f"two checks share a name in {names}: give each a distinct name=")

    if freshness is not None and not isinstance(freshness, Freshness):
        problems.append(f"`freshness` must be a flowcore.Freshness(...), got {freshness!r}")
    policies = attempt(automation_policies, automation)
    overdue_hooks = _overdue_hooks(on_overdue, problems)
    if overdue_hooks and freshness is None:
        problems.append(
            "`on_overdue` fires when the asset is past its freshness deadline: give it "
            "freshness=flowcore.Freshness(...) too"
        )
    io_value = attempt(check_io, io)

    for option in sorted(set(task_args) & set(_REFUSED)):
        problems.append(_REFUSED[option])
    unknown = sorted(set(task_args) - TASK_OPTIONS - set(_REFUSED))
    if unknown:
        problems.append(
            f"unknown options {unknown}; an asset takes key/name, group, code_version, deps, "
            "ins, partitions, partition_mapping, checks, freshness, automation, io, and the "
            f"task options {', '.join(sorted(TASK_OPTIONS))}"
        )
    passed = {k: v for k, v in task_args.items() if k in TASK_OPTIONS}
    if passed:
        options = attempt(task_options, label, name=asset_key, **passed)
    else:  # the defaults (what task_options gives for none, at a tenth of its cost)
        options = TaskOptions(name=asset_key)
    if problems:
        raise AssetDefinitionError(f"invalid asset {label!r}: " + "; ".join(problems))
    assert options is not None and asset_key is not None
    assert policies is not None and io_value is not None
    assert partitions is None or isinstance(partitions, Partitions)
    assert freshness is None or isinstance(freshness, Freshness)
    return Asset(
        fn,
        key=asset_key,
        group=group,  # type: ignore[arg-type]  # checked above
        code_version=code_version if code_version is not None else code_fingerprint(fn),  # type: ignore[arg-type]
        inputs=MappingProxyType(named),
        optional=frozenset(optional),
        takes_partition_key=PARTITION_PARAMETER in parameters,
        deps=tuple(dict.fromkeys(dep_keys)),
        partitions=partitions,
        partition_mapping=MappingProxyType(mapping),
        checks=tuple(attached),
        freshness=freshness,
        automation=policies,
        io=io_value,
        options=options,
        on_overdue=overdue_hooks,
    )


def _overdue_hooks(value: object, problems: list[str]) -> tuple[Hook, ...]:
    """``on_overdue``: a hook (a function called with a ``HookEvent``) or a list of them."""
    if value is None:
        return ()
    items = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    wrong = [item for item in items if not callable(item)]
    if wrong:
        problems.append(
            "`on_overdue` must be a function called with a flowcore.HookEvent (sync or "
            f"async), or a list of them, got {wrong[0]!r}"
        )
        return ()
    return tuple(items)  # type: ignore[arg-type]  # checked: callables


@overload
def asset(fn: Callable[P, Coroutine[Any, Any, R]], /) -> Asset[P, Coroutine[Any, Any, R]]: ...
@overload
def asset(fn: Callable[P, R], /) -> Asset[P, R]: ...
@overload
def asset(
    *,
    key: str | Sequence[str] | None = None,
    name: str | None = None,
    group: str | None = None,
    code_version: str | None = None,
    deps: Iterable[Asset[Any, Any] | str] | None = None,
    ins: Mapping[str, Asset[Any, Any] | str] | None = None,
    partitions: Partitions | None = None,
    partition_mapping: Mapping[str, PartitionMapping] | None = None,
    checks: Iterable[AssetCheck] | None = None,
    freshness: Freshness | None = None,
    automation: Automation | Sequence[Automation] | None = None,
    io: AssetIO | str | None = None,
    on_overdue: HookOption = None,
    **task_args: Any,
) -> _AssetDecorator: ...
def asset(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    key: str | Sequence[str] | None = None,
    name: str | None = None,
    group: str | None = None,
    code_version: str | None = None,
    deps: Iterable[Asset[Any, Any] | str] | None = None,
    ins: Mapping[str, Asset[Any, Any] | str] | None = None,
    partitions: Partitions | None = None,
    partition_mapping: Mapping[str, PartitionMapping] | None = None,
    checks: Iterable[AssetCheck] | None = None,
    freshness: Freshness | None = None,
    automation: Automation | Sequence[Automation] | None = None,
    io: AssetIO | str | None = None,
    on_overdue: HookOption = None,
    **task_args: Any,
) -> Asset[Any, Any] | _AssetDecorator:
    """Make a function (async or sync) an asset: ``@flowcore.asset`` or
    ``@flowcore.asset(key="raw/events", ...)``.

    ``key`` (or ``name``): the asset's key, default the function's name; segments
    joined by ``/`` make a prefix path. ``group``: a label to select by (default
    ``"default"``). ``code_version``: default a fingerprint of the function's source.
    ``deps``: upstreams for ordering only. ``ins``: parameter → upstream key.
    ``partitions``, ``partition_mapping`` (parameter or dep → mapping), ``checks``,
    ``freshness``, ``automation``, ``io`` (default ``"result"``: the run store),
    ``on_overdue`` (hooks ``flowcore serve`` fires once per overdue period), and the
    task options (module docstring). Every problem is reported at once.

    >>> @flowcore.assets.asset(key="raw/events", retries=2)
    ... def events() -> list[int]:
    ...     return [1, 2, 3]
    >>> events.key, events.options.retry.retries, events()
    ('raw/events', 2, [1, 2, 3])
    >>> @flowcore.assets.asset
    ... def total(raw__events: list[int]) -> int:
    ...     return sum(raw__events)
    >>> dict(total.inputs)
    {'raw__events': 'raw/events'}
    """
    options = {
        "key": key,
        "name": name,
        "group": group,
        "code_version": code_version,
        "deps": deps,
        "ins": ins,
        "partitions": partitions,
        "partition_mapping": partition_mapping,
        "checks": checks,
        "freshness": freshness,
        "automation": automation,
        "io": io,
        "on_overdue": on_overdue,
    }

    def decorate(f: Callable[..., Any]) -> Asset[Any, Any]:
        return _build(f, **options, task_args=dict(task_args))

    if fn is None:
        return _AssetDecorator(decorate)
    return decorate(fn)


class _AssetDecorator:
    """What ``@flowcore.asset(...)`` with options returns, typed to keep the signature."""

    def __init__(self, decorate: Callable[[Callable[..., Any]], Asset[Any, Any]]) -> None:
        self._decorate = decorate

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]], /
    ) -> Asset[P, Coroutine[Any, Any, R]]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Asset[P, R]: ...
    def __call__(self, fn: Callable[..., Any], /) -> Asset[Any, Any]:
        return self._decorate(fn)
