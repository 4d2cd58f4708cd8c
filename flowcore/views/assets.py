"""Assets as the store keeps them: the list with statuses, one asset's history, lineage.

What ``flowcore assets`` (and a web UI) shows, read from the store alone: stored
definitions (synced by every process that materialised), the state rows kept
incrementally (range sets of partitions, the cause of the last stale mark), and the
append-only history of materialisations and check results. Nothing here imports the
:mod:`flowcore.assets` package (whose definitions import the task machinery, which
readers may not reach), only its value modules (the stored description and its rebuild,
partitions, keys); a front end that has the code passes what only code knows:

- ``judge``: the status of an asset from its state, by the definitions
  (:func:`flowcore.assets.status.status_of` with the graph: missing partitions whose
  window has ended, overdue under a freshness policy). Without it,
  :func:`stored_status` judges from the state alone, as
  :func:`~flowcore.assets.status.status_of` does without a graph.
- ``extra``: definitions the code has and the store has not (never materialised, or
  changed since the last sync), as :class:`~flowcore.records.AssetDefRecord`\\ s.

Cost: :func:`asset_list` is two queries (every definition, every state) and O(ranges)
per asset, whatever the number of assets; :func:`asset_detail` three or four small ones.

For the web UI: :class:`AssetOverview` (an asset's status, judged by the front end, and
why), :func:`lineage_graph` (an asset's upstreams and downstreams as a graph, grouped
past a few hundred assets so a browser lays out a few dozen nodes, never thousands),
:func:`partition_heatmap` (the partitions as at most a few hundred cells of counts by
state, by range arithmetic: a million partitions are never enumerated),
:func:`freshness_of` and :func:`check_partition_span` (from the stored definition).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote, urlencode

from .. import ranges
from ..assets.description import StoredDefinition, rebuild_definition
from ..assets.errors import PartitionKeyError
from ..assets.keys import partition_key_problem
from ..assets.partitions import DynamicPartitions, HourlyPartitions, TimeWindowPartitions
from ..ranges import RangeSet
from ..records import (
    AssetDefRecord,
    AssetEvaluationRecord,
    AssetStateRecord,
    CheckResultRecord,
    MaterializationRecord,
)
from ..store import Store
from .format import cut, iso_utc, safe_repr

__all__ = [
    "HEATMAP_CELLS",
    "LINEAGE_NODES",
    "STATUSES",
    "AssetDetail",
    "AssetOverview",
    "HeatCell",
    "HeatMap",
    "Judge",
    "LineageNode",
    "asset_detail",
    "asset_heatmap",
    "asset_href",
    "asset_list",
    "cause_text",
    "check_partition_span",
    "check_to_json",
    "closest_keys",
    "edge_text",
    "freshness_of",
    "heatmap_row",
    "lineage",
    "lineage_graph",
    "lineage_to_json",
    "materialization_to_json",
    "metadata_preview",
    "partition_heatmap",
    "partition_state",
    "partitions_kind",
    "stored_definition",
    "stored_status",
]

#: Statuses, most urgent first (the order ``ls`` sorts a summary by).
STATUSES: Final = ("failed-check", "stale", "missing", "overdue", "fresh")

#: ``judge(key, state) -> status dict`` (the shape of :func:`stored_status`).
Judge = Callable[[str, AssetStateRecord | None], dict[str, Any]]

#: The stored set of an unpartitioned asset that was materialised: its one partition, 0.
_ONE: Final = ranges.encode([0, 1])


def _bounds(data: bytes) -> list[int]:
    return ranges.decode(data) if data else []


def stored_status(
    key: str, state: AssetStateRecord | None, *, partitioned: bool | None = None
) -> dict[str, Any]:
    """The status of ``key`` judged from its stored state alone (no definitions, no
    clock): ``failed-check``, ``stale`` (with the stored cause), ``missing`` (never
    materialised) or ``fresh``. ``partitioned``: whether the stored definition says so
    (partition counts are then given; ``missing`` among them is ``None``: how many
    partitions exist by now takes the code)."""
    if state is None:
        return {
            "key": key,
            "status": "missing",
            "cause": {"reason": "never-materialized"},
            "last_materialized": None,
            "last_run_id": None,
            "data_version": None,
            "code_version": None,
            "partitions": None,
            "materializations": 0,
        }
    counts: dict[str, int | None] | None = None
    if state.materialized == _ONE and not state.stale and not state.failed and not partitioned:
        status, cause = "fresh", {}  # the common case: no range arithmetic
    else:
        built = _bounds(state.materialized)
        materialized = ranges.count(built)
        stale = ranges.count(ranges.intersect(_bounds(state.stale), built))
        failed = ranges.count(ranges.intersect(_bounds(state.failed), built))
        if partitioned or (partitioned is None and materialized > 1):
            counts = {
                "materialized": materialized,
                "stale": stale,
                "failed_check": failed,
                "missing": None,
            }
        if failed:
            status, cause = "failed-check", {"reason": "failed-check", "check": state.failed_check}
        elif stale:
            status, cause = "stale", dict(state.cause)
        elif not materialized:
            status, cause = "missing", {"reason": "never-materialized"}
        else:
            status, cause = "fresh", {}
    return {
        "key": key,
        "status": status,
        "cause": cause,
        "last_materialized": iso_utc(state.last_at),
        "last_run_id": state.last_run_id,
        "data_version": state.data_version,
        "code_version": state.code_version,
        "partitions": counts,
        "materializations": state.materializations,
    }


def cause_text(cause: Mapping[str, Any]) -> str:
    """A status cause in a few words, for a table cell or a tree node."""
    reason = cause.get("reason")
    if not reason:
        return ""
    if reason == "code-changed":
        return "code changed"
    if reason == "upstream-changed":
        part = cause.get("partition")
        where = f"[{part}]" if part is not None else ""
        return f"upstream {cause.get('upstream')}{where} changed"
    if reason == "upstream-stale":
        return f"upstream {cause.get('upstream')} stale"
    if reason == "failed-check":
        return f"check {cause.get('check')} failed"
    if reason == "overdue":
        since = cause.get("due_by")
        return f"overdue since {since}" if since else "overdue"
    if reason == "never-materialized":
        return "never materialized"
    if reason == "not-synced":
        return "code changed (not synced yet)"
    return str(reason)


def edge_text(mapping: str) -> str:
    """How an edge's partitions map, in words, from the mapping's stored description:
    ``""`` for identity (the same partition: nothing to say)."""
    name = mapping.partition("(")[0]
    return {
        "IdentityMapping": "",
        "TimeWindowMapping": "overlapping time windows",
        "AllPartitionsMapping": "all partitions",
    }.get(name, mapping)


def closest_keys(name: str, known: Iterable[str], n: int = 3) -> list[str]:
    """The known keys closest to ``name`` (for "unknown asset ...; did you mean")."""
    return difflib.get_close_matches(name, list(known), n=n, cutoff=0.5)


async def asset_list(
    store: Store,
    *,
    extra: Sequence[AssetDefRecord] = (),
    judge: Judge | None = None,
    group: str | None = None,
    stale_only: bool = False,
) -> list[dict[str, Any]]:
    """Every known asset (stored definitions, states, and ``extra``) with its status, by
    key: the rows of ``assets ls`` and its JSON. ``stale_only``: those not fresh.

    Each row is the status dict (:func:`stored_status`) plus ``group``, ``partitioned``
    (the partitions as described, or ``None``) and ``synced`` (``False`` when the
    definition comes only from the code, or its code version differs from the stored
    one)."""
    defs = {d.key: d for d in await store.list_asset_defs()}
    states = {s.key: s for s in await store.asset_states()}
    synced = {key: True for key in defs}
    for d in extra:
        stored = defs.get(d.key)
        synced[d.key] = stored is not None and stored.code_version == d.code_version
        defs[d.key] = d
    rows = []
    for key in sorted(defs.keys() | states.keys()):
        found = defs.get(key)
        if group is not None and (found is None or found.group != group):
            continue
        state = states.get(key)
        if judge is not None:
            row = judge(key, state)
        else:
            partitioned = None if found is None else bool(found.partitions)
            row = stored_status(key, state, partitioned=partitioned)
        if stale_only and row["status"] == "fresh":
            continue
        row["group"] = None if found is None else found.group
        row["partitioned"] = None if found is None else found.partitions
        row["synced"] = synced.get(key, False)
        rows.append(row)
    return rows


def materialization_to_json(m: MaterializationRecord) -> dict[str, Any]:
    """One materialisation, JSON-ready: versions, what it consumed, run, metadata."""
    return {
        "at": iso_utc(m.at),
        "partition": m.partition,
        "run_id": m.run_id,
        "task_run_seq": m.seq,
        "code_version": m.code_version,
        "data_version": m.data_version,
        "consumed": [
            {"upstream": up, "partition": part, "data_version": version}
            for up, part, version, _ in m.consumed
        ],
        "metadata": dict(m.metadata),
        "io": m.io,
    }


def evaluation_to_json(e: AssetEvaluationRecord) -> dict[str, Any]:
    """One stored evaluation of an asset's automation, every field, times in ISO UTC."""
    return {
        "at": iso_utc(e.at),
        "policy": e.policy,
        "decision": e.decision,
        "reason": e.reason,
        "partition": e.partition,
        "considered": e.considered,
        "run_id": e.run_id,
        "until": None if e.until is None else iso_utc(e.until),
        "server": e.holder or None,
    }


def check_to_json(c: CheckResultRecord) -> dict[str, Any]:
    return {
        "at": iso_utc(c.at),
        "check": c.check,
        "passed": c.passed,
        "severity": c.severity,
        "blocking": c.blocking,
        "partition": c.partition,
        "run_id": c.run_id,
        "metadata": dict(c.metadata),
        "error": c.error,
    }


@dataclass
class AssetDetail:
    """One asset as ``assets show`` draws it (a page of its history and checks)."""

    key: str
    definition: AssetDefRecord | None
    state: AssetStateRecord | None
    history: list[MaterializationRecord] = field(default_factory=list)
    checks: list[CheckResultRecord] = field(default_factory=list)
    #: Whether there are more rows past the page (``--offset`` to read on).
    more_history: bool = False
    more_checks: bool = False


async def asset_detail(
    store: Store,
    key: str,
    *,
    partition: str | None = None,
    limit: int = 20,
    offset: int = 0,
) -> AssetDetail:
    """The stored definition, state, and a page of history and check results (newest
    first; ``offset`` rows skipped) of ``key`` (of ``partition`` when given)."""
    defs = await store.list_asset_defs([key])
    states = await store.asset_states([key])
    want = offset + limit + 1  # one past the page says whether there is more
    history = await store.asset_history(key, partition=partition, limit=want)
    checks = await store.check_results(key, partition=partition, limit=want)
    return AssetDetail(
        key=key,
        definition=defs[0] if defs else None,
        state=states[0] if states else None,
        history=history[offset : offset + limit],
        checks=checks[offset : offset + limit],
        more_history=len(history) > offset + limit,
        more_checks=len(checks) > offset + limit,
    )


async def partition_state(
    store: Store, key: str, partition: str
) -> tuple[str, MaterializationRecord | None, dict[str, Any]]:
    """``(status, current materialisation, cause)`` of one partition from the stored
    sets: ``missing`` (never materialised), ``failed-check``, ``stale`` (and why: that
    partition's cause as the store kept it, else the asset's last one) or ``fresh``."""
    [current] = await store.latest_materializations(key, [partition])
    if current is None:
        return "missing", None, {"reason": "never-materialized"}
    states = await store.asset_states([key])
    state = states[0] if states else AssetStateRecord(key=key)
    index = current.index
    if index in ranges.RangeSet.from_bytes(state.failed or None):
        return "failed-check", current, {"reason": "failed-check", "check": state.failed_check}
    if index in ranges.RangeSet.from_bytes(state.stale or None):
        cause = ranges.label_at(state.causes, index)
        return "stale", current, dict(cause if cause is not None else state.cause)
    return "fresh", current, {}


# -- lineage -------------------------------------------------------------------------------


@dataclass
class LineageNode:
    """A node of the lineage tree: an asset, the edge it hangs from, and its children
    (upstreams, or downstreams). ``seen``: drawn already elsewhere in the tree (a
    diamond), so its children are not repeated."""

    key: str
    mapping: str | None = None
    status: dict[str, Any] | None = None
    children: list[LineageNode] = field(default_factory=list)
    seen: bool = False
    cut_at_depth: bool = False


def lineage(
    defs: Mapping[str, AssetDefRecord],
    root: str,
    *,
    direction: str,
    depth: int | None,
    statuses: Mapping[str, dict[str, Any]],
) -> LineageNode:
    """The tree of ``root``'s upstreams (``direction="upstream"``) or downstreams, from
    the stored edges (``upstream`` of each definition), to ``depth`` levels (``None``:
    all). Each node says the partition mapping of its edge (from the downstream side)."""
    downstream: dict[str, list[tuple[str, str]]] = {}
    for d in defs.values():
        for up, mapping in d.upstream:
            downstream.setdefault(up, []).append((d.key, mapping))
    seen: set[str] = set()

    def children(key: str) -> list[tuple[str, str]]:
        if direction == "upstream":
            d = defs.get(key)
            return sorted(d.upstream) if d is not None else []
        return sorted(downstream.get(key, ()))

    def build(key: str, mapping: str | None, level: int) -> LineageNode:
        node = LineageNode(key, mapping, statuses.get(key))
        if key in seen:
            node.seen = bool(children(key))
            return node
        seen.add(key)
        below = children(key)
        if depth is not None and level >= depth:
            node.cut_at_depth = bool(below)
            return node
        node.children = [build(k, m, level + 1) for k, m in below]
        return node

    return build(root, None, 0)


def lineage_to_json(node: LineageNode) -> dict[str, Any]:
    return {
        "key": node.key,
        "mapping": node.mapping,
        "status": None if node.status is None else node.status.get("status"),
        "cause": None if node.status is None else node.status.get("cause"),
        "children": [lineage_to_json(c) for c in node.children],
        "repeated": node.seen,
        "truncated": node.cut_at_depth,
    }


def metadata_preview(metadata: Mapping[str, Any], limit: int = 60) -> str:
    """Metadata as ``rows=3 preview=[...]`` cut to ``limit`` characters (not yet visible:
    the caller makes it so)."""
    text = " ".join(f"{k}={safe_repr(v)}" for k, v in metadata.items())
    return cut(text, limit)


# -- the web UI: statuses judged by the stored definitions, lineage graphs, heat maps -------


@dataclass(frozen=True, slots=True)
class AssetOverview:
    """One asset as the web UI lists it: its status judged by its stored definition
    (missing partitions by now, overdue under its freshness, as
    :func:`flowcore.assets.status_async` judges without the code), and why."""

    key: str
    group: str | None
    status: str
    cause: Mapping[str, Any]
    last_at: float | None
    last_run_id: str | None
    partitions: Mapping[str, int | None] | None
    #: The partitions as described (``None``: unpartitioned, or no definition stored).
    partitioned: str | None
    #: Whether a definition is stored (an asset known only by its state has none).
    defined: bool
    notes: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        """Why it is not fresh, in a few words (``""`` when fresh)."""
        if self.status == "fresh":
            return ""
        counts = self.partitions or {}
        missing, built = counts.get("missing"), counts.get("materialized")
        if self.status == "missing" and missing and built:
            return f"{missing} of {missing + built} partitions never materialized"
        return cause_text(self.cause)


#: Assets drawn one node each in a lineage graph; past this, assets of one group at one
#: level are drawn as one node with their counts by status.
LINEAGE_NODES: Final = 300
#: Past this many edges per node between groups of assets, a lineage is drawn by level
#: alone (so many crossings read as nothing).
_DENSE: Final = 3
#: Statuses, worst first: the one an aggregated node is coloured by.
_WORST: Final = {status: rank for rank, status in enumerate(STATUSES)}


def _closure(root: str, step: Callable[[str], Iterable[str]], depth: int | None) -> dict[str, int]:
    """The assets ``step`` reaches from ``root`` (``root`` left out) with their shortest
    distance, at most ``depth`` steps away."""
    seen = {root: 0}
    frontier = [root]
    level = 0
    while frontier and (depth is None or level < depth):
        level += 1
        nxt = []
        for key in frontier:
            for other in step(key):
                if other not in seen:
                    seen[other] = level
                    nxt.append(other)
        frontier = nxt
    del seen[root]
    return seen


def _levels(root: str, members: set[str], step: Callable[[str], Iterable[str]]) -> dict[str, int]:
    """The longest distance from ``root`` of each of ``members`` along ``step`` within
    them (Kahn's order, no recursion: a chain of thousands is fine), so an edge always
    goes from a lower level to a higher one on each side of the root."""
    inside = members | {root}
    waiting = {key: 0 for key in inside}
    for key in inside:
        for other in step(key):
            if other in inside and other != root:
                waiting[other] += 1
    level = {root: 0}
    ready = [root]
    while ready:
        key = ready.pop()
        for other in step(key):
            if other not in inside or other == root:
                continue
            level[other] = max(level.get(other, 0), level[key] + 1)
            waiting[other] -= 1
            if waiting[other] == 0:
                ready.append(other)
    for key in members:  # in a cycle (stored definitions that disagree): never ready
        level.setdefault(key, 1)
    del level[root]
    return level


def lineage_graph(
    defs: Mapping[str, AssetDefRecord],
    overview: Mapping[str, AssetOverview],
    root: str,
    *,
    depth: int | None = None,
    max_nodes: int = LINEAGE_NODES,
) -> dict[str, Any]:
    """The lineage of ``root`` as the web UI draws it: its upstreams and downstreams (at
    most ``depth`` edges away), with their status and why, and the edges between them
    with how partitions map. JSON-ready; text not yet made visible (the caller does).

    Past ``max_nodes`` assets, the assets of one group at one level (edges from the
    root, upstream negative) are one node with counts by status, coloured by the worst,
    and the edges between such nodes are counted; if that is still too many, one node
    per level (then per band of levels). What the browser lays out stays small however
    big the graph is."""
    readers: dict[str, list[str]] = {}
    for d in defs.values():
        for up, _ in d.upstream:
            readers.setdefault(up, []).append(d.key)

    def ups(key: str) -> list[str]:
        d = defs.get(key)
        return [up for up, _ in d.upstream] if d is not None else []

    def downs(key: str) -> list[str]:
        return readers.get(key, [])

    upstream = _closure(root, ups, depth)
    downstream = {k: v for k, v in _closure(root, downs, depth).items() if k not in upstream}
    side = {**{k: -1 for k in upstream}, **{k: 1 for k in downstream}}
    members = [root, *sorted(side)]
    edges = [
        (up, d.key, mapping)
        for d in (defs.get(k) for k in members)
        if d is not None
        for up, mapping in d.upstream
        if up in side or up == root
    ]

    def node_of(key: str, at: int | None = None) -> dict[str, Any]:
        found = overview.get(key)
        node: dict[str, Any] = {
            "id": key,
            "label": key,
            "status": "missing" if found is None else found.status,
            "reason": "" if found is None else found.reason,
            "group": None if found is None else found.group,
            "href": asset_href(key),
            "root": key == root,
        }
        if at is not None:
            node["level"] = at  # aggregated graphs: edges from the root, upstream negative
        return node

    total = len(members)
    if total <= max_nodes:
        return {
            "mode": "assets",
            "root": root,
            "nodes": [node_of(k) for k in members],
            "edges": [
                {"source": up, "target": down, "mapping": edge_text(mapping)}
                for up, down, mapping in edges
            ],
            "total": total,
            "upstream": len(upstream),
            "downstream": len(downstream),
        }
    level = {
        **{k: -v for k, v in _levels(root, set(upstream), ups).items()},
        **_levels(root, set(downstream), downs),
    }
    group_of = {k: (overview[k].group if k in overview else None) or "" for k in side}

    def bucketed(by_group: bool, band: int) -> tuple[dict[str, list[str]], dict[str, str]]:
        """Assets by bucket (``PLACE:GROUP``: the column, levels ``band`` at a time, and
        the group, or ``PLACE:`` for all groups), and each asset's node id."""
        buckets: dict[str, list[str]] = {}
        for key in side:
            lvl = level[key]
            place = -(-abs(lvl) // band) * (1 if lvl > 0 else -1)  # 1..band: 1; -1..-band: -1
            buckets.setdefault(f"{place}:{group_of[key] if by_group else ''}", []).append(key)
        node_id = {root: root}
        for name, keys in buckets.items():
            for key in keys:
                node_id[key] = key if len(keys) == 1 else f"group:{name}"
        return buckets, node_id

    def joined(node_id: Mapping[str, str]) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for up, down, _ in edges:
            pair = (node_id[up], node_id[down])
            if pair[0] != pair[1]:
                out[pair] = out.get(pair, 0) + 1
        return out

    # By level and group; when that is too many nodes, or so many edges between groups
    # that no layout reads (every group of a level feeding every group of the next), by
    # level alone; then by bands of 2, 4, ... levels.
    band, by_group = 1, True
    while True:
        buckets, node_id = bucketed(by_group, band)
        links = joined(node_id)
        fits = len(buckets) < max_nodes
        if fits and (not by_group or len(links) <= _DENSE * (len(buckets) + 1)):
            break
        if not by_group and (fits or band >= total):
            break
        band, by_group = (band, False) if by_group else (band * 2, False)
    nodes = [node_of(root, 0)]
    for name, keys in sorted(
        buckets.items(), key=lambda item: (int(item[0].split(":")[0]), item[0])
    ):
        place_text, group_text = name.split(":", 1)
        place = int(place_text)
        if len(keys) == 1:
            nodes.append(node_of(keys[0], place))
            continue
        counts: dict[str, int] = {}
        for key in keys:
            found = overview.get(key)
            status = "missing" if found is None else found.status
            counts[status] = counts.get(status, 0) + 1
        where = "upstream" if place < 0 else "downstream"
        last = abs(place) * band
        distance = f"{last}" if band == 1 else f"{last - band + 1}-{last}"
        group = group_text or None
        nodes.append(
            {
                "id": f"group:{name}",
                "label": f"{group or 'assets'} · {len(keys)} {where} ({distance} away)",
                "status": min(counts, key=lambda s: _WORST.get(s, len(_WORST))),
                "reason": ", ".join(f"{counts[s]} {s}" for s in STATUSES if s in counts),
                "group": group,
                "href": None if group is None else "/assets?" + urlencode({"group": group}),
                "root": False,
                "count": len(keys),
                "statuses": counts,
                "level": place,
            }
        )
    return {
        "mode": "aggregated",
        "grouped": ("group and distance" if by_group else "distance")
        + ("" if band == 1 else f", {band} levels a column"),
        "root": root,
        "nodes": nodes,
        "edges": [
            {"source": s, "target": t, "mapping": "", "count": n}
            for (s, t), n in sorted(links.items())
        ],
        "total": total,
        "upstream": len(upstream),
        "downstream": len(downstream),
    }


def asset_href(key: str) -> str:
    """The web UI's page of asset ``key`` (its segments as path segments)."""
    return "/assets/" + quote(key, safe="/")


# -- partition heat map -----------------------------------------------------------------------

#: The most cells a heat map has: past this many partitions, each cell is a bucket of
#: neighbouring partitions with its counts by state.
HEATMAP_CELLS: Final = 400


@dataclass(frozen=True, slots=True)
class HeatCell:
    """Partitions ``[start, stop)`` (by index; keys ``first`` to ``last``), counted by
    state; ``state`` is the worst present (``failed-check``, ``stale``, ``missing``,
    ``fresh``)."""

    start: int
    stop: int
    first: str
    last: str
    fresh: int
    stale: int
    failed: int
    missing: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def state(self) -> str:
        if self.failed:
            return "failed-check"
        if self.stale:
            return "stale"
        if self.missing:
            return "missing"
        return "fresh"

    @property
    def share(self) -> float:
        """The worst state's share of the cell (how strongly it is coloured)."""
        worst = {"failed-check": self.failed, "stale": self.stale, "missing": self.missing}
        return worst.get(self.state, self.fresh) / max(self.size, 1)


@dataclass(frozen=True, slots=True)
class HeatMap:
    """The partitions of an asset that exist by now, in index (time) order, as at most
    :data:`HEATMAP_CELLS` cells; totals by state."""

    total: int
    per_cell: int
    cells: list[HeatCell]
    fresh: int
    stale: int
    failed: int
    missing: int
    #: Whether the keys are known (``False``: the definition could not be rebuilt, so
    #: partitions are named by index and only those materialised are counted).
    keyed: bool = True


def _prefix_counts(bounds: Sequence[int], edges: Sequence[int]) -> list[int]:
    """For each of ``edges`` (ascending), how many indexes of the range set ``bounds``
    lie below it: O(ranges + edges), never one step per partition."""
    out = []
    i, below = 0, 0
    for edge in edges:
        while i < len(bounds) and bounds[i + 1] <= edge:
            below += bounds[i + 1] - bounds[i]
            i += 2
        partial = edge - bounds[i] if i < len(bounds) and bounds[i] < edge else 0
        out.append(below + partial)
    return out


def _flat(found: RangeSet) -> list[int]:
    return [bound for pair in found.ranges() for bound in pair]


def partition_heatmap(
    state: AssetStateRecord | None,
    total: int | None,
    key_of: Callable[[int], str] | None,
    *,
    cells: int = HEATMAP_CELLS,
) -> HeatMap:
    """The heat map of an asset's partitions: ``total`` of them exist by now (``None``:
    unknown, then those up to the last one materialised), ``key_of(index)`` names them
    (``None``: ``#index``). Range arithmetic on the stored sets and one key per cell
    edge: a million partitions cost what a hundred do."""
    materialized = RangeSet.from_bytes(state.materialized if state else None)
    keyed = total is not None and key_of is not None
    if total is None:
        ranges_ = materialized.ranges()
        total = ranges_[-1][1] if ranges_ else 0
    if total:
        materialized = materialized & RangeSet.from_ranges([(0, total)])
    failed = RangeSet.from_bytes(state.failed if state else None) & materialized
    stale = (RangeSet.from_bytes(state.stale if state else None) & materialized) - failed
    per_cell = max(1, -(-total // max(cells, 1)))
    edges = [*range(0, total, per_cell), total]
    built = _prefix_counts(_flat(materialized), edges)
    bad = _prefix_counts(_flat(failed), edges)
    old = _prefix_counts(_flat(stale), edges)
    name = key_of if key_of is not None and keyed else (lambda i: f"#{i}")
    out = []
    for n in range(len(edges) - 1):
        start, stop = edges[n], edges[n + 1]
        m, f, s = built[n + 1] - built[n], bad[n + 1] - bad[n], old[n + 1] - old[n]
        out.append(
            HeatCell(
                start=start,
                stop=stop,
                first=name(start),
                last=name(stop - 1),
                fresh=m - f - s,
                stale=s,
                failed=f,
                missing=(stop - start) - m,
            )
        )
    m, f, s = len(materialized), len(failed), len(stale)
    return HeatMap(total, per_cell, out, m - f - s, s, f, total - m, keyed)


async def asset_heatmap(
    store: Store,
    definition: StoredDefinition | None,
    state: AssetStateRecord | None,
    *,
    now: datetime,
    cells: int = HEATMAP_CELLS,
) -> HeatMap | None:
    """The heat map of a partitioned asset (``None`` for an unpartitioned one): time
    windows counted by now, static keys, dynamic keys as the store numbered them."""
    parts = None if definition is None else definition.partitions
    if parts is None:
        if definition is not None and definition.complete:
            return None  # unpartitioned
        if state is None or state.materialized in (b"", _ONE):
            return None
        return partition_heatmap(state, None, None, cells=cells)  # keys unknown
    if isinstance(parts, DynamicPartitions):
        keys = await store.dynamic_partitions(parts.name)
        return partition_heatmap(state, len(keys), keys.__getitem__, cells=cells)
    return partition_heatmap(state, parts.count(until=now), parts.key_of, cells=cells)


# -- freshness ----------------------------------------------------------------------------------


def freshness_of(
    record: AssetDefRecord | None,
    definition: StoredDefinition | None,
    overview: AssetOverview | None,
    *,
    now: datetime,
) -> dict[str, Any] | None:
    """An asset's freshness: its policy (as described), when it was last materialised,
    when the next materialisation is due (for a time-window asset, its latest complete
    window's) and whether it is overdue; ``None`` without a policy."""
    text = None if record is None else record.freshness
    policy = None if definition is None else definition.freshness
    if text is None and policy is None:
        return None
    last = None if overview is None else overview.last_at
    due: float | None = None
    if policy is not None:
        window_end = None
        parts = definition.partitions if definition is not None else None
        if isinstance(parts, TimeWindowPartitions):
            done = parts.count(until=now)
            window_end = parts.window_of(done - 1)[1] if done else None
        last_dt = None if last is None else datetime.fromtimestamp(last, UTC)
        found = policy.due_by(last_dt, window_end=window_end)
        due = None if found is None else found.timestamp()
    overdue = overview is not None and overview.status == "overdue"
    if not overdue and due is not None:
        overdue = due < now.timestamp()
    return {"policy": text or repr(policy), "last": last, "due_by": due, "overdue": overdue}


def partitions_kind(definition: StoredDefinition | None) -> str | None:
    """``"hourly"``, ``"daily"``, ``"static"``, ``"dynamic"``, or ``None`` (unpartitioned,
    or partitions that could not be rebuilt)."""
    parts = None if definition is None else definition.partitions
    if parts is None:
        return None
    if isinstance(parts, HourlyPartitions):
        return "hourly"
    if isinstance(parts, TimeWindowPartitions):
        return "daily"
    return "dynamic" if isinstance(parts, DynamicPartitions) else "static"


def heatmap_row(kind: str | None, heat: HeatMap) -> int:
    """Cells per row of a heat map, so rows read as time: a day of hours, a week of days
    (four weeks past eight), else 40."""
    if heat.per_cell == 1 and kind == "hourly":
        return 24
    if heat.per_cell == 1 and kind == "daily":
        return 7 if heat.total <= 56 else 28
    return 40


def stored_definition(record: AssetDefRecord | None) -> StoredDefinition | None:
    """``record``'s parameters made again (:func:`flowcore.assets.rebuild_definition`)."""
    return None if record is None else rebuild_definition(record)


def check_partition_span(
    definition: StoredDefinition | None, first: str, last: str | None = None
) -> tuple[int, int] | None:
    """Check ``first`` (and ``last``) are partition keys of ``definition``, ``first`` not
    after ``last``: ``(first index, last index)``, or ``None`` for dynamic partitions
    (any key may be added, numbered by the store). Raises ``ValueError`` naming the
    problem and the form expected."""
    parts = None if definition is None else definition.partitions
    if parts is None:
        raise ValueError("the asset is not partitioned (or its partitions are not stored)")
    if isinstance(parts, DynamicPartitions):
        for key in (first, last):
            if key is not None and (problem := partition_key_problem(key)):
                raise ValueError(problem)
        return None
    try:
        start = parts.index_of(first)
        stop = start if last is None else parts.index_of(last)
    except PartitionKeyError as exc:
        raise ValueError(str(exc)) from None
    if stop < start:
        raise ValueError(f"{first!r} comes after {last!r}: swap them")
    return start, stop
