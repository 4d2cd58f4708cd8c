r"""Stale marks and definition sync: what a change means downstream, in index ranges.

When an asset (partition) is materialised to a new data version, or its code version
changes, everything downstream that was built from it is stale. The store applies
that in its write transaction, but cannot compute it: the partition mappings live
here, above it. So the materialiser hands the store :class:`~flowcore.records.StaleMark`\ s
computed by :func:`downstream_marks`: a breadth-first walk of the graph carrying index
ranges through each edge's mapping (a time window maps a range of windows to a range,
by its two ends; identity keeps it; an unpartitioned side is one partition or all).
A mark is idempotent (a union), so two processes marking at once lose nothing, and
the store applies a materialisation's marks only if its data version changed.

:func:`sync_definitions` stores the definitions a process has (only those that
changed) and, for an asset whose code version changed, the marks of its downstream,
in the transaction that records the new version.
"""

from __future__ import annotations

import weakref
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from .. import ranges
from ..errors import ConfigurationError
from ..records import AssetDefRecord, StaleMark
from ..store import Store
from .definition import Asset
from .description import describe
from .graph import AssetGraph
from .mappings import AllPartitionsMapping, IdentityMapping, TimeWindowMapping
from .partitions import DynamicPartitions, Partitions, TimeWindowPartitions

__all__ = ["downstream_marks", "sync_definitions"]

#: Far enough for "every time window" (an open-ended set counted up to it).
_FAR: Final = datetime(9000, 1, 1, tzinfo=UTC)


def _mapped(graph: AssetGraph, up: str, down: str, spans: list[int]) -> list[tuple[int, int]]:
    """The downstream index ranges the upstream ranges ``spans`` (bounds) feed."""
    up_parts = graph.assets[up].partitions
    down_parts = graph.assets[down].partitions
    if down_parts is None:
        return [(0, 1)]
    mapping = graph.mapping(down, up)
    if up_parts is None or isinstance(mapping, AllPartitionsMapping):
        return [(0, ranges.MAX_INDEX)]
    if isinstance(mapping, IdentityMapping):
        return [(spans[i], spans[i + 1]) for i in range(0, len(spans), 2)]
    if isinstance(down_parts, DynamicPartitions) or isinstance(up_parts, DynamicPartitions):
        return [(0, ranges.MAX_INDEX)]
    out = ranges.RangeSet()
    for i in range(0, len(spans), 2):
        start, stop = spans[i], _existing(up_parts, spans[i + 1])
        if stop <= start:
            continue
        monotone = isinstance(mapping, TimeWindowMapping)
        # A time window maps a range of windows onto a range: its two ends say where.
        ends = (start, stop - 1) if monotone and stop - start > 2 else range(start, stop)
        found: list[int] = []
        for index in ends:
            keys = mapping.downstream_keys(up_parts, up_parts.key_of(index), down_parts)
            found += [down_parts.index_of(k) for k in keys or ()]
        if found:
            if monotone and stop - start > 2:
                out.add_range(min(found), max(found) + 1)
            else:
                for index in found:
                    out.add_range(index, index + 1)
    return list(out.ranges())


def _existing(partitions: Partitions, stop: int) -> int:
    """``stop`` clipped to the partitions that can exist (a stale range may be open:
    ``[0, 2**62)`` for "every partition")."""
    try:
        if isinstance(partitions, TimeWindowPartitions):
            return min(stop, partitions.count(until=_FAR))
        return min(stop, partitions.count())
    except (ConfigurationError, TypeError):
        return stop


def downstream_marks(
    graph: AssetGraph, key: str, spans: list[int], cause: dict[str, Any]
) -> list[StaleMark]:
    """Stale marks for everything downstream of ``key``'s partitions ``spans``: its direct
    downstream with ``cause``, theirs with ``upstream-stale``, breadth first; a partition
    reached twice is marked once."""
    marks: dict[str, ranges.RangeSet] = {}
    causes: dict[str, dict[str, Any]] = {}
    frontier: list[tuple[str, list[int]]] = [(key, spans)]
    while frontier:
        following: list[tuple[str, list[int]]] = []
        for up, up_spans in frontier:
            for down in graph.downstream[up]:
                new = ranges.RangeSet.from_ranges(_mapped(graph, up, down, up_spans))
                seen = marks.setdefault(down, ranges.RangeSet())
                new = new - seen
                if not new:
                    continue
                seen.update(new)
                causes.setdefault(
                    down, cause if up == key else {"reason": "upstream-stale", "upstream": up}
                )
                following.append((down, new.bounds))
        frontier = following
    return [StaleMark(k, list(marks[k].ranges()), causes[k]) for k in marks]


def _definition_record(
    graph: AssetGraph, definition: Asset[Any, Any], now: float
) -> AssetDefRecord:
    key = definition.key
    return AssetDefRecord(
        key=key,
        code_version=definition.code_version,
        group=definition.group,
        partitions=None if definition.partitions is None else repr(definition.partitions),
        upstream=[(up, repr(graph.mapping(key, up))) for up in graph.upstream[key]],
        freshness=None if definition.freshness is None else repr(definition.freshness),
        io=definition.io if isinstance(definition.io, str) else repr(definition.io),
        checks=[c.name for c in graph.checks[key]],
        synced=now,
        description=describe(
            definition.partitions,
            {up: graph.mapping(key, up) for up in graph.upstream[key]},
            definition.freshness,
            definition.automation,
            on_overdue=bool(definition.on_overdue),
        ),
    )


#: Per graph, the stores this process synced it to, with the code versions it had then:
#: syncing 1,000 definitions again costs ~4 µs an asset per materialisation, for nothing.
_synced: weakref.WeakKeyDictionary[AssetGraph, weakref.WeakKeyDictionary[Any, tuple[str, ...]]] = (
    weakref.WeakKeyDictionary()
)


async def sync_definitions(graph: AssetGraph, store: Store, now: float) -> dict[str, str]:
    """Store the graph's definitions; an asset whose code version changed is stale, with
    its downstream (in the same transaction). Returns ``key → previous code version``.

    Skipped when this process already synced this graph, with the same code versions, to
    this store handle: the definitions it would write are those stored. (Another process
    syncing other code versions meanwhile is not undone by this one until it syncs
    another graph or handle.)"""
    versions = tuple([a.code_version for a in graph.assets.values()])
    stores = _synced.get(graph)
    if stores is not None and stores.get(store) == versions:
        return {}
    changed_before = await _sync(graph, store, now)
    _synced.setdefault(graph, weakref.WeakKeyDictionary())[store] = versions
    return changed_before


async def _sync(graph: AssetGraph, store: Store, now: float) -> dict[str, str]:
    known = {d.key: d for d in await store.list_asset_defs()}
    stored = {k: d.code_version for k, d in known.items()}
    changed = [k for k, a in graph.assets.items() if k in stored and stored[k] != a.code_version]
    marks: dict[str, list[StaleMark]] = {}
    if changed:
        states = {s.key: s for s in await store.asset_states(changed)}
        for key in changed:
            state = states.get(key)
            if state is None or not state.materialized:
                continue
            spans = ranges.decode(state.materialized)
            cause = {"reason": "upstream-stale", "upstream": key}
            marks[key] = downstream_marks(graph, key, spans, cause)
    defs = []
    for definition in graph.assets.values():  # only what changed is written
        record = _definition_record(graph, definition, now)
        before = known.get(definition.key)
        if before is None or msgspec.structs.replace(before, synced=now) != record:
            defs.append(record)
    if not defs:
        return {}
    return await store.sync_assets(defs, marks)
