"""Automation policies: when ``flowcore serve`` materialises an asset by itself.

Values only: ``serve`` evaluates them (and records each evaluation, so that
``flowcore assets why`` can explain it). An asset takes one policy or a list of them
(any of them starts a materialisation).

- :func:`on_upstream_change`: eagerly, when an upstream's data version changes (after
  ``debounce`` seconds without another change, so a burst of upstream writes gives
  one run); never twice for the same set of upstream data versions.
- :func:`on_cron`: at each tick of a cron expression in a time zone (the slots of
  :func:`flowcore.cron`, daylight saving included), when stale or missing.
- :func:`on_missing`: when the asset (partition) was never materialised, e.g. a new
  daily partition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from .. import _validate
from ..errors import ConfigurationError
from ..schedules import CronSchedule, cron

__all__ = [
    "Automation",
    "OnCron",
    "OnMissing",
    "OnUpstreamChange",
    "automation_policies",
    "on_cron",
    "on_missing",
    "on_upstream_change",
]


class Automation:
    """The base of the automation policies."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class OnUpstreamChange(Automation):
    """Eager: materialise when an upstream's data version changes (:func:`on_upstream_change`)."""

    #: Seconds without a further upstream change before it runs.
    debounce: float = 1.0


@dataclass(frozen=True, slots=True)
class OnCron(Automation):
    """At each tick of a cron schedule, when stale or missing (:func:`on_cron`)."""

    schedule: CronSchedule


@dataclass(frozen=True, slots=True)
class OnMissing(Automation):
    """When never materialised (:func:`on_missing`)."""


def on_upstream_change(*, debounce: float | timedelta = 1.0) -> OnUpstreamChange:
    """Materialise when an upstream's data changes, ``debounce`` seconds after the last
    change of a burst.

    >>> flowcore.assets.on_upstream_change(debounce=5)
    OnUpstreamChange(debounce=5.0)
    """
    value: object = debounce.total_seconds() if isinstance(debounce, timedelta) else debounce
    if problem := _validate.seconds("debounce", value, zero=True, optional=False):
        raise ConfigurationError(f"invalid on_upstream_change(): {problem}")
    assert isinstance(value, int | float)
    return OnUpstreamChange(float(value))


def on_cron(expr: str, *, tz: str = "UTC") -> OnCron:
    """Materialise at each tick of ``expr`` in ``tz`` when stale or missing.

    >>> flowcore.assets.on_cron("0 6 * * *", tz="Europe/Paris").schedule.key
    '0 6 * * * Europe/Paris'
    """
    return OnCron(cron(expr, tz=tz))


def on_missing() -> OnMissing:
    """Materialise what was never materialised (a new partition, a new asset)."""
    return OnMissing()


def automation_policies(value: object) -> tuple[Automation, ...]:
    """``automation=``: a policy, a list of them, or None, as a tuple (checked)."""
    if value is None:
        return ()
    items = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    wrong = [item for item in items if not isinstance(item, Automation)]
    if wrong:
        raise ConfigurationError(
            "`automation` must be flowcore.on_upstream_change(), on_cron(...), on_missing() "
            f"or a list of them, got {wrong[0]!r}"
        )
    return tuple(items)  # type: ignore[arg-type]  # checked above
