"""Stored definitions readable without the code: a versioned description, and its rebuild.

A reader without the code (``flowcore assets ls``, the web UI, a server in another
process) cannot count an asset's missing partitions or judge its freshness from a
``repr``. So the definition is also stored as data: :func:`describe` gives the
parameters of its partitions, partition mappings, freshness and automation as plain
JSON-ready values under a format version (``{"v": 1, ...}``), and
:func:`rebuild_definition` makes the same values again from a stored
:class:`~flowcore.records.AssetDefRecord`. The description holds parameters only
(dates, offsets, keys, cron expressions): nothing is imported or evaluated to read it.

Upgrades: a row written before descriptions (flowcore's first asset format) or by a
newer format version rebuilds to what it can (nothing but its key, group and code
version) and says so in :attr:`StoredDefinition.problems`; readers then leave out what
needs the definition (``missing`` counts, ``overdue``), as they did before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from types import MappingProxyType
from typing import Any, Final

from ..errors import ConfigurationError
from ..records import AssetDefRecord
from .automation import Automation, OnCron, OnMissing, OnUpstreamChange, on_cron
from .freshness import Freshness
from .mappings import (
    AllPartitionsMapping,
    IdentityMapping,
    PartitionMapping,
    StaticMapping,
    TimeWindowMapping,
)
from .partitions import (
    DailyPartitions,
    DynamicPartitions,
    HourlyPartitions,
    Partitions,
    StaticPartitions,
)

__all__ = [
    "DESCRIPTION_VERSION",
    "StoredDefinition",
    "describe",
    "describe_automation",
    "describe_freshness",
    "describe_mapping",
    "describe_partitions",
    "is_plain",
    "rebuild_definition",
]

#: The format version :func:`describe` writes (``"v"``); a reader refuses newer ones.
DESCRIPTION_VERSION: Final = 1


def describe_partitions(partitions: Partitions | None) -> dict[str, Any] | None:
    """The parameters of ``partitions`` (``None``: unpartitioned)."""
    if partitions is None:
        return None
    if isinstance(partitions, DailyPartitions | HourlyPartitions):
        return {
            "kind": "daily" if isinstance(partitions, DailyPartitions) else "hourly",
            "start": partitions.start.isoformat(),
            "end": None if partitions.end is None else partitions.end.isoformat(),
            "tz": partitions.tz,
            "end_offset": partitions.end_offset,
        }
    if isinstance(partitions, StaticPartitions):
        return {"kind": "static", "keys": list(partitions.keys_)}
    if isinstance(partitions, DynamicPartitions):
        return {"kind": "dynamic", "name": partitions.name}
    return {"kind": "unknown", "repr": repr(partitions)}


def describe_mapping(mapping: PartitionMapping) -> dict[str, Any]:
    """The parameters of a partition mapping."""
    if isinstance(mapping, IdentityMapping):
        return {"kind": "identity"}
    if isinstance(mapping, TimeWindowMapping):
        return {
            "kind": "time-window",
            "start_offset": mapping.start_offset,
            "end_offset": mapping.end_offset,
        }
    if isinstance(mapping, AllPartitionsMapping):
        return {"kind": "all"}
    if isinstance(mapping, StaticMapping):
        return {"kind": "static", "table": {k: list(v) for k, v in mapping.table.items()}}
    return {"kind": "unknown", "repr": repr(mapping)}


def describe_freshness(freshness: Freshness | None) -> dict[str, Any] | None:
    """The parameters of a freshness policy (``None``: none)."""
    if freshness is None:
        return None
    lag = freshness.max_lag
    return {
        "max_lag": None if lag is None else lag.total_seconds(),
        "cron": freshness.cron,
        "tz": freshness.tz,
    }


def describe_automation(policy: Automation) -> dict[str, Any]:
    """The parameters of an automation policy."""
    if isinstance(policy, OnUpstreamChange):
        return {"kind": "on-upstream-change", "debounce": policy.debounce}
    if isinstance(policy, OnCron):
        return {"kind": "on-cron", "expr": policy.schedule.expr, "tz": policy.schedule.tz}
    if isinstance(policy, OnMissing):
        return {"kind": "on-missing"}
    return {"kind": "unknown", "repr": repr(policy)}


def describe(
    partitions: Partitions | None,
    mappings: Mapping[str, PartitionMapping],
    freshness: Freshness | None,
    automation: Sequence[Automation] = (),
    *,
    on_overdue: bool = False,
) -> dict[str, Any]:
    """The stored description of a definition (module docstring): ``mappings`` by
    upstream key; ``on_overdue``: whether it has an ``on_overdue`` hook."""
    return {
        "v": DESCRIPTION_VERSION,
        "partitions": describe_partitions(partitions),
        "mappings": {up: describe_mapping(m) for up, m in mappings.items()},
        "freshness": describe_freshness(freshness),
        "automation": [describe_automation(p) for p in automation],
        "on_overdue": on_overdue,
    }


@dataclass(frozen=True, slots=True)
class StoredDefinition:
    """A definition rebuilt from the store (:func:`rebuild_definition`).

    ``complete``: everything was rebuilt; otherwise ``problems`` says what could not be
    (an old row, a newer format, a kind this version does not know) and the values it
    concerns are ``None`` or left out."""

    key: str
    code_version: str
    group: str = "default"
    partitions: Partitions | None = None
    mappings: Mapping[str, PartitionMapping] = field(default_factory=dict)
    freshness: Freshness | None = None
    automation: tuple[Automation, ...] = ()
    upstream: tuple[str, ...] = ()
    on_overdue: bool = False
    problems: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return not self.problems


def _partitions(found: Any) -> Partitions | None:
    if found is None:
        return None
    kind = found["kind"]
    if kind in ("daily", "hourly"):
        window, parse = (
            (DailyPartitions, date.fromisoformat)
            if kind == "daily"
            else (HourlyPartitions, datetime.fromisoformat)
        )
        end = found.get("end")
        return window(
            parse(found["start"]),
            None if end is None else parse(end),
            tz=found["tz"],
            end_offset=found.get("end_offset", 0),
        )
    if kind == "static":
        return StaticPartitions(list(found["keys"]))
    if kind == "dynamic":
        return DynamicPartitions(found["name"])
    raise ValueError(f"partitions of an unknown kind {kind!r}")


def _mapping(found: Any) -> PartitionMapping:
    kind = found["kind"]
    if kind == "identity":
        return IdentityMapping()
    if kind == "time-window":
        return TimeWindowMapping(
            start_offset=found.get("start_offset", 0), end_offset=found.get("end_offset", 0)
        )
    if kind == "all":
        return AllPartitionsMapping()
    if kind == "static":
        return StaticMapping(dict(found["table"]))
    raise ValueError(f"a partition mapping of an unknown kind {kind!r}")


def _freshness(found: Any) -> Freshness | None:
    if found is None:
        return None
    lag = found.get("max_lag")
    return Freshness(
        max_lag=None if lag is None else timedelta(seconds=lag),
        cron=found.get("cron"),
        tz=found.get("tz", "UTC"),
    )


def _automation(found: Any) -> Automation:
    kind = found["kind"]
    if kind == "on-upstream-change":
        return OnUpstreamChange(float(found.get("debounce", 1.0)))
    if kind == "on-cron":
        return on_cron(found["expr"], tz=found.get("tz", "UTC"))
    if kind == "on-missing":
        return OnMissing()
    raise ValueError(f"an automation policy of an unknown kind {kind!r}")


def is_plain(description: Mapping[str, Any] | None) -> bool:
    """A description of this format with nothing to rebuild: unpartitioned, no mappings,
    freshness or automation (most assets). Readers of many assets skip those."""
    return (
        description is not None
        and description.get("v") == DESCRIPTION_VERSION
        and not (
            description.get("partitions")
            or description.get("mappings")
            or description.get("freshness")
            or description.get("automation")
            or description.get("on_overdue")
        )
    )


def rebuild_definition(record: AssetDefRecord) -> StoredDefinition:
    """The partitions, mappings, freshness and automation of a stored definition, made
    again from its description; what cannot be is named in ``problems`` (module
    docstring), never raised: a reader shows what it can."""
    key, code, group = record.key, record.code_version, record.group
    upstream = tuple(up for up, _ in record.upstream)
    found = record.description
    if found is None:
        return StoredDefinition(
            key,
            code,
            group,
            upstream=upstream,
            problems=(
                f"asset {record.key!r} was stored by an older flowcore, with its partitions "
                f"({record.partitions or 'none'}) and freshness ({record.freshness or 'none'}) "
                "as text only: missing partitions and freshness are unknown until a process "
                "with its code materialises it (or runs `flowcore serve`) with this version",
            ),
        )
    version = found.get("v") if isinstance(found, Mapping) else None
    if version != DESCRIPTION_VERSION:
        return StoredDefinition(
            key,
            code,
            group,
            upstream=upstream,
            problems=(
                f"asset {record.key!r} was stored with description format {version!r}, and "
                f"this flowcore reads format {DESCRIPTION_VERSION}: upgrade flowcore to read it",
            ),
        )
    if is_plain(found):
        # Most assets: unpartitioned, no freshness, no automation; nothing to rebuild
        # (a status over 10,000 assets makes this call 10,000 times).
        return StoredDefinition(key, code, group, upstream=upstream)
    problems: list[str] = []
    partitions: Partitions | None = None
    freshness: Freshness | None = None
    mappings: dict[str, PartitionMapping] = {}
    automation: list[Automation] = []
    try:
        partitions = _partitions(found.get("partitions"))
    except (KeyError, TypeError, ValueError, ConfigurationError) as exc:
        problems.append(f"its partitions cannot be rebuilt ({exc})")
    for up, described in dict(found.get("mappings") or {}).items():
        try:
            mappings[up] = _mapping(described)
        except (KeyError, TypeError, ValueError, ConfigurationError) as exc:
            problems.append(f"its partition mapping from {up!r} cannot be rebuilt ({exc})")
    try:
        freshness = _freshness(found.get("freshness"))
    except (KeyError, TypeError, ValueError, ConfigurationError) as exc:
        problems.append(f"its freshness cannot be rebuilt ({exc})")
    for described in found.get("automation") or ():
        try:
            automation.append(_automation(described))
        except (KeyError, TypeError, ValueError, ConfigurationError) as exc:
            problems.append(f"an automation policy cannot be rebuilt ({exc})")
    return StoredDefinition(
        key,
        code,
        group,
        upstream=upstream,
        partitions=partitions,
        mappings=MappingProxyType(mappings),
        freshness=freshness,
        automation=tuple(automation),
        on_overdue=bool(found.get("on_overdue", False)),
        problems=tuple(f"asset {record.key!r}: {p}" for p in problems),
    )
