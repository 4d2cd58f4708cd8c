"""Asset checks: data contracts run after each materialisation (per partition).

``@flowcore.asset_check(asset=orders)`` on a function taking the asset's value and
returning a :class:`CheckResult` (or a bool). A failing check of severity
``"error"`` is **blocking** by default: the asset (partition) is marked failed-check
and its downstream is not materialised in that run. ``severity="warn"`` records the
failure and blocks nothing; ``blocking=False`` makes an error non-blocking.

Checks are given to the asset (``@asset(checks=[...])``) or, when they name it
(``asset=``), to the graph beside it (any order): the graph attaches them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, TypeAlias, get_args, overload

from .. import _validate
from .errors import AssetDefinitionError
from .keys import check_asset_key
from .output import check_metadata

__all__ = ["AssetCheck", "CheckResult", "Severity", "asset_check"]

Severity: TypeAlias = Literal["error", "warn"]
_SEVERITIES: Final = get_args(Severity)


class _Keyed(Protocol):
    @property
    def key(self) -> str: ...


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What a check returns: ``passed``, and ``metadata`` shown with the result.

    >>> flowcore.assets.CheckResult(False, metadata={"null_ids": 3}).passed
    False
    """

    passed: bool
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if problem := _validate.flag("passed", self.passed):
            raise AssetDefinitionError(f"invalid CheckResult: {problem}")
        object.__setattr__(self, "metadata", check_metadata(self.metadata, "CheckResult"))


class AssetCheck:
    """A check of an asset: made by :func:`asset_check`. ``fn`` is the plain function;
    calling the check calls it (for unit tests of its logic)."""

    __slots__ = ("__wrapped__", "asset_key", "blocking", "description", "fn", "name", "severity")

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        asset_key: str | None,
        name: str,
        severity: Severity,
        blocking: bool,
    ) -> None:
        self.fn = fn
        self.__wrapped__ = fn
        #: The key of the asset checked (``None``: given through ``@asset(checks=[...])``).
        self.asset_key = asset_key
        self.name = name
        self.severity = severity
        self.blocking = blocking
        self.description = (inspect.getdoc(fn) or "").partition("\n\n")[0]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def for_asset(self, key: str) -> AssetCheck:
        """This check, attached to the asset ``key`` (refused if it names another)."""
        if self.asset_key is not None and self.asset_key != key:
            raise AssetDefinitionError(
                f"check {self.name!r} checks asset {self.asset_key!r} and was given to asset "
                f"{key!r} in `checks=`: give it to {self.asset_key!r}, or drop `asset=`"
            )
        return AssetCheck(
            self.fn, asset_key=key, name=self.name, severity=self.severity, blocking=self.blocking
        )

    def __repr__(self) -> str:
        on = f" of {self.asset_key!r}" if self.asset_key else ""
        return f"<flowcore.AssetCheck {self.name!r}{on} {self.severity}>"


def _asset_key(asset: object) -> str | None:
    if asset is None:
        return None
    key = getattr(asset, "key", asset)
    return check_asset_key(key, what="`asset`")


@overload
def asset_check(fn: Callable[..., Any], /) -> AssetCheck: ...
@overload
def asset_check(
    *,
    asset: _Keyed | str | None = None,
    name: str | None = None,
    severity: Severity = "error",
    blocking: bool | None = None,
) -> Callable[[Callable[..., Any]], AssetCheck]: ...
def asset_check(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    asset: _Keyed | str | None = None,
    name: str | None = None,
    severity: Severity = "error",
    blocking: bool | None = None,
) -> AssetCheck | Callable[[Callable[..., Any]], AssetCheck]:
    """Make a function a check of an asset: ``@flowcore.asset_check(asset=orders)``.

    The function takes the asset's value as its first parameter (and, if it has one
    named ``partition_key``, the key of the partition checked) and returns a
    :class:`CheckResult` or a bool. ``asset``: the asset (or its key); leave it out
    when giving the check in ``@asset(checks=[...])``. ``name``: default the function's.
    ``severity``: ``"error"`` or ``"warn"``. ``blocking``: a failing check stops the
    downstream (default: for errors; a warning never blocks).

    >>> @flowcore.assets.asset_check(asset="orders", severity="warn")
    ... def no_nulls(rows: list[dict]) -> bool:
    ...     return all(row["id"] is not None for row in rows)
    >>> no_nulls.blocking, no_nulls.asset_key
    (False, 'orders')
    """
    problems = []
    if severity not in _SEVERITIES:
        problems.append(f"`severity` must be 'error' or 'warn', got {severity!r}")
    if blocking is not None and (problem := _validate.flag("blocking", blocking)):
        problems.append(problem)
    elif blocking is True and severity == "warn":
        problems.append(
            "a check of severity 'warn' never blocks: drop blocking=True, or write severity='error'"
        )
    if problem := _validate.name("name", name):
        problems.append(problem)
    try:
        key = _asset_key(asset)
    except AssetDefinitionError as exc:
        problems.append(str(exc))
        key = None
    label = name or getattr(fn, "__qualname__", None) or "asset_check"
    if problems:
        raise AssetDefinitionError(f"invalid asset check {label!r}: " + "; ".join(problems))

    def decorate(f: Callable[..., Any]) -> AssetCheck:
        if isinstance(f, AssetCheck) or not callable(f):
            raise AssetDefinitionError(
                f"@flowcore.asset_check decorates a function (once), got {f!r}"
            )
        params = [
            p
            for p in inspect.signature(f).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if not params:
            raise AssetDefinitionError(
                f"check {getattr(f, '__qualname__', f)!r} takes no positional parameter: its "
                "first parameter receives the asset's value, e.g. def check(rows): ..."
            )
        check = AssetCheck(
            f,
            asset_key=key,
            name=name or f.__name__,
            severity=severity,
            blocking=severity == "error" if blocking is None else blocking,
        )
        declare = getattr(asset, "declare_check", None)
        if callable(declare):  # given the asset itself: it carries the check from now on
            declare(check)
        return check

    if fn is not None:
        return decorate(fn)
    return decorate
