"""Assets: the list with statuses (fresh, stale and why, missing, failed check, overdue),
and an asset's page: its lineage graph, the heat map of its partitions, its freshness,
and its materialisations, check results and automation decisions, a page at a time.

Statuses are judged as ``flowcore assets`` judges them without the code: from the state
the store keeps incrementally and the stored definitions rebuilt from their description
(:func:`flowcore.assets.status_async`: missing partitions by now, overdue under a
freshness policy), three queries whatever the number of assets. The UI never imports the
assets' code: materialising from here starts ``flowcore assets materialize -f FILE.py``
as a process of its own (:mod:`.actions`).

The lineage graph is JSON the page's script lays out with dagre
(:func:`flowcore.views.assets.lineage_graph`: past a few hundred assets, one node per
group and level with counts by status, so the browser never lays out thousands); the
heat map is server-rendered, at most a few hundred cells whatever the number of
partitions (:func:`flowcore.views.assets.partition_heatmap`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..assets import status_async
from ..records import AssetDefRecord
from ..store.base import Store
from ..views import assets as views
from .config import UIConfig
from .pages import query_int, query_text, store_of
from .templating import page_json, render, show

__all__ = ["overview", "routes"]

#: Assets per page of the list, and the most a page may ask for.
PER_PAGE: Final = 100
MAX_PER_PAGE: Final = 1000
#: Materialisations, check results and automation decisions per page of an asset.
HISTORY_PER_PAGE: Final = 20
EVALUATIONS_SHOWN: Final = 10
#: How deep paging goes (the store reads what it skips).
MAX_OFFSET: Final = 100_000


async def overview(
    store: Store, *, now: datetime, keys: Sequence[str] | None = None
) -> tuple[list[views.AssetOverview], dict[str, AssetDefRecord]]:
    """Every asset with a stored definition or state (of ``keys``), by key, its status
    judged by its stored definition as of ``now``; and the stored definitions by key."""
    defs = {d.key: d for d in await store.list_asset_defs(keys)}
    rows = []
    for found in await status_async(keys, store=store, now=now):
        d = defs.get(found.key)
        if keys is not None and d is None and found.status == "missing" and not found.notes:
            continue  # asked for a key the store has nothing of
        last = found.last_materialized
        rows.append(
            views.AssetOverview(
                key=found.key,
                group=None if d is None else d.group,
                status=found.status,
                cause=found.cause,
                last_at=None if last is None else last.timestamp(),
                last_run_id=found.last_run_id,
                partitions=found.partitions,
                partitioned=None if d is None else d.partitions,
                defined=d is not None,
                notes=found.notes,
            )
        )
    return rows, defs


def _status(request: Request) -> str | None:
    value = query_text(request, "status")
    if value is not None and value not in views.STATUSES:
        raise HTTPException(
            400, f"status: expected one of {', '.join(views.STATUSES)}, got {value!r}"
        )
    return value


async def assets_page(request: Request) -> Response:
    store = store_of(request)
    group = query_text(request, "group")
    status = _status(request)
    text = query_text(request, "q")
    offset = query_int(request, "offset", 0, 0, MAX_OFFSET)
    limit = query_int(request, "limit", PER_PAGE, 1, MAX_PER_PAGE)
    rows, _ = await overview(store, now=datetime.now(UTC))
    groups = sorted({r.group for r in rows if r.group is not None})
    if group is not None:
        rows = [r for r in rows if r.group == group]
    if text is not None:
        needle = text.casefold()
        rows = [r for r in rows if needle in r.key.casefold()]
    counts = {s: 0 for s in views.STATUSES}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    if status is not None:
        rows = [r for r in rows if r.status == status]
    params = {k: v for k, v in request.query_params.items() if k != "offset"}
    return render(
        request,
        "assets.html",
        rows=rows[offset : offset + limit],
        total=len(rows),
        offset=offset,
        limit=limit,
        counts=counts,
        groups=groups,
        group=group or "",
        status=status or "",
        q=text or "",
        statuses=views.STATUSES,
        params=params,
        href=views.asset_href,
        cause_text=views.cause_text,
    )


def _unknown(key: str, known: Sequence[str]) -> HTTPException:
    close = views.closest_keys(key, known)
    hint = f"; the closest: {', '.join(close)}" if close else ""
    return HTTPException(404, f"no asset {key!r} in this store{hint}")


async def asset_page(request: Request) -> Response:
    store = store_of(request)
    key = request.path_params["key"]
    now = datetime.now(UTC)
    found, defs = await overview(store, now=now, keys=[key])
    if not found:
        raise _unknown(key, [d.key for d in await store.list_asset_defs()])
    row = found[0]
    record = defs.get(key)
    definition = views.stored_definition(record)
    states = await store.asset_states([key])
    state = states[0] if states else None
    partition = query_text(request, "partition")
    history_at = query_int(request, "history", 0, 0, MAX_OFFSET)
    checks_at = query_int(request, "checks", 0, 0, MAX_OFFSET)
    depth = query_int(request, "depth", 0, 0, 1000)
    history = await store.asset_history(
        key, partition=partition, limit=history_at + HISTORY_PER_PAGE + 1
    )
    checks = await store.check_results(
        key, partition=partition, limit=checks_at + HISTORY_PER_PAGE + 1
    )
    heatmap = await views.asset_heatmap(store, definition, state, now=now)
    kind = views.partitions_kind(definition)
    config: UIConfig = request.app.state.config
    params = {k: v for k, v in request.query_params.items() if k not in ("history", "checks")}
    lineage_src = "/asset-lineage" + views.asset_href(key)[len("/assets") :]
    if depth:
        lineage_src += f"?depth={depth}"
    return render(
        request,
        "asset.html",
        a=row,
        definition=record,
        stored=definition,
        state=state,
        partition=partition or "",
        history=history[history_at : history_at + HISTORY_PER_PAGE],
        more_history=len(history) > history_at + HISTORY_PER_PAGE,
        history_at=history_at,
        checks=checks[checks_at : checks_at + HISTORY_PER_PAGE],
        more_checks=len(checks) > checks_at + HISTORY_PER_PAGE,
        checks_at=checks_at,
        per_page=HISTORY_PER_PAGE,
        evaluations=await store.asset_evaluations(key, limit=EVALUATIONS_SHOWN),
        heatmap=heatmap,
        heat_rows=_rows(heatmap.cells, views.heatmap_row(kind, heatmap)) if heatmap else [],
        freshness=views.freshness_of(record, definition, row, now=now),
        lineage_src=lineage_src,
        depth=depth,
        params=params,
        href=views.asset_href,
        preview=views.metadata_preview,
        edge_text=views.edge_text,
        can_materialize=bool(config.asset_files),
    )


def _rows(cells: Sequence[views.HeatCell], width: int) -> list[Sequence[views.HeatCell]]:
    return [cells[i : i + width] for i in range(0, len(cells), width)]


async def lineage_json(request: Request) -> Response:
    store = store_of(request)
    key = request.path_params["key"]
    depth = query_int(request, "depth", 0, 0, 1000)
    rows, defs = await overview(store, now=datetime.now(UTC))
    by_key = {r.key: r for r in rows}
    if key not in by_key and key not in defs:
        raise _unknown(key, sorted(defs))
    graph = views.lineage_graph(defs, by_key, key, depth=depth or None)
    for node in graph["nodes"]:
        node["label"] = show(node["label"])
        node["reason"] = show(node["reason"])
    for edge in graph["edges"]:
        edge["mapping"] = show(edge["mapping"])
    return Response(page_json(graph), media_type="application/json")


def routes() -> list[Route]:
    return [
        Route("/assets", assets_page),
        Route("/assets/{key:path}", asset_page),
        Route("/asset-lineage/{key:path}", lineage_json),
    ]
