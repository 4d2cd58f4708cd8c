"""Assets as the store keeps them: the list with statuses, one asset's history, lineage.

What ``flowcore assets`` (and a web UI) shows, read from the store alone: stored
definitions (synced by every process that materialised), the state rows kept
incrementally (range sets of partitions, the cause of the last stale mark), and the
append-only history of materialisations and check results. Nothing here imports
:mod:`flowcore.assets` (whose definitions import the task machinery, which readers
may not reach); a front end that has the code passes what only code knows:

- ``judge``: the status of an asset from its state, by the definitions
  (:func:`flowcore.assets.status.status_of` with the graph: missing partitions whose
  window has ended, overdue under a freshness policy). Without it,
  :func:`stored_status` judges from the state alone, as
  :func:`~flowcore.assets.status.status_of` does without a graph.
- ``extra``: definitions the code has and the store has not (never materialised, or
  changed since the last sync), as :class:`~flowcore.records.AssetDefRecord`\\ s.

Cost: :func:`asset_list` is two queries (every definition, every state) and O(ranges)
per asset, whatever the number of assets; :func:`asset_detail` three or four small ones.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .. import ranges
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
    "STATUSES",
    "AssetDetail",
    "Judge",
    "LineageNode",
    "asset_detail",
    "asset_list",
    "cause_text",
    "check_to_json",
    "closest_keys",
    "edge_text",
    "lineage",
    "lineage_to_json",
    "materialization_to_json",
    "metadata_preview",
    "partition_state",
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
) -> tuple[str, MaterializationRecord | None]:
    """``(status, current materialisation)`` of one partition from the stored sets:
    ``missing`` (never materialised), ``failed-check``, ``stale`` or ``fresh``."""
    [current] = await store.latest_materializations(key, [partition])
    if current is None:
        return "missing", None
    states = await store.asset_states([key])
    state = states[0] if states else AssetStateRecord(key=key)
    index = current.index
    if index in ranges.RangeSet.from_bytes(state.failed or None):
        return "failed-check", current
    if index in ranges.RangeSet.from_bytes(state.stale or None):
        return "stale", current
    return "fresh", current


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
