"""``flowcore assets``: list, show, trace the lineage of, explain and materialise assets.

**Where the definitions come from.** Readers (``ls``, ``show``, ``lineage``, ``why``)
work from the store alone: every process that materialises syncs its definitions
(key, group, code version, partitions, edges with their mappings, freshness, checks)
into it, and the state of each asset is kept there incrementally. What only code
knows (how many partitions exist by now, so how many are missing; whether an asset
is overdue under its freshness policy; definitions never materialised, or whose
code changed since) is added when the code is given: ``-f/--file FILE.py``
(repeatable), or ``$FLOWCORE_ASSETS`` (files separated by ``os.pathsep``) when no
``-f`` is. ``materialize`` and ``backfill`` run the code, so they need it.

Output is 80 columns wide whatever the terminal (so it reads the same piped), user
text goes through :func:`~flowcore.views.format.visible`; ``--json`` keeps the data
exact and its shape stable. Bad input (an unknown asset, named with the closest
keys; a partition key not of the asset's form) is an ``error:`` line and exit 2.
``materialize``/``backfill`` exit 0 only when everything asked for was materialised
(or was fresh already, without ``--force``-like flags), 1 otherwise.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import anyio
import click
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from .._sync import run_in_own_loop
from ..assets import AssetGraph, MaterializeResult, PartitionKeyError, materialize_async
from ..assets.errors import AssetDefinitionError
from ..assets.partitions import DynamicPartitions, TimeWindowPartitions
from ..assets.status import status_of
from ..engine import Engine
from ..entrypoints import load_module
from ..records import AssetDefRecord, AssetStateRecord
from ..store import Store, resolve_store
from ..views import assets as views
from ..views.format import cut, format_local_time, iso_utc, to_json, visible
from .support import CliUsageError, Count, Group, database, parse_at

__all__ = ["assets"]

#: The width every view is laid out for, whatever the terminal: output reads the
#: same on a terminal, piped, and in a test.
WIDTH = 80
ENV = "FLOWCORE_ASSETS"
#: Upstream values ``why`` lists (changed ones first); ``--json`` has all.
_UPSTREAM_LINES = 8


# -- definitions -----------------------------------------------------------------------------


def _files(given: tuple[Path, ...]) -> list[Path]:
    if given:
        return list(given)
    env = os.environ.get(ENV, "")
    return [Path(p) for p in env.split(os.pathsep) if p.strip()]


def _graph(given: tuple[Path, ...], *, required: bool = False) -> AssetGraph | None:
    """The graph of the assets and checks the files define (``None``: no file given)."""
    files = _files(given)
    if not files:
        if required:
            raise CliUsageError(
                "this command runs the assets' code: give the file defining them with "
                f"-f FILE.py (or set ${ENV})"
            )
        return None
    graph = AssetGraph.from_module(*(load_module(path) for path in files))
    if not len(graph):
        names = ", ".join(str(p) for p in files)
        raise CliUsageError(f"{names} defines no asset; decorate a function with @flowcore.asset")
    return graph


def _def_record(graph: AssetGraph, key: str) -> AssetDefRecord:
    """A definition as the store would keep it once synced (``synced`` 0: not yet)."""
    d = graph[key]
    return AssetDefRecord(
        key=key,
        code_version=d.code_version,
        group=d.group,
        partitions=None if d.partitions is None else repr(d.partitions),
        upstream=[(up, repr(graph.mapping(key, up))) for up in graph.upstream[key]],
        freshness=None if d.freshness is None else repr(d.freshness),
        io=d.io if isinstance(d.io, str) else repr(d.io),
        checks=[c.name for c in graph.checks[key]],
    )


def _judge(graph: AssetGraph, now: datetime) -> views.Judge:
    """Status by the code: :func:`status_of` with the graph, plus a code change not yet
    synced (the state was built by another code version) and when an overdue asset was
    due."""

    def judge(key: str, state: AssetStateRecord | None) -> dict[str, Any]:
        if key not in graph.assets:
            return views.stored_status(key, state)
        found = status_of(key, state, graph, now)
        row = found.as_dict()
        definition = graph[key]
        built_by = None if state is None else state.code_version
        unsynced = built_by not in (None, definition.code_version)
        if unsynced and row["status"] in ("fresh", "overdue", "missing"):
            row["status"] = "stale"
            row["cause"] = {
                "reason": "code-changed",
                "from": built_by,
                "to": definition.code_version,
                "synced": False,
            }
        if row["status"] == "overdue" and definition.freshness is not None:
            parts = definition.partitions
            window_end = None
            if isinstance(parts, TimeWindowPartitions):
                done = parts.count(until=now)
                window_end = parts.window_of(done - 1)[1] if done else None
            due = definition.freshness.due_by(found.last_materialized, window_end=window_end)
            row["cause"] = {**row["cause"], "due_by": None if due is None else due.isoformat()}
        return row

    return judge


def _store() -> Store:
    """The store of ``$FLOWCORE_HOME``, or an empty one when there is no database yet
    (a reader never creates one)."""
    return resolve_store(None if database().exists() else "memory")


def _read(fn: Callable[[Store], Any]) -> Any:
    async def main() -> Any:
        store = _store()
        try:
            await store.open()
            return await fn(store)
        finally:
            await store.close()

    return anyio.run(main)


def _unknown(name: str, known: Sequence[str]) -> CliUsageError:
    close = views.closest_keys(name, known)
    if close:
        hint = f"; the closest: {', '.join(close)}"
    elif known:
        hint = f"; {len(known)} known, e.g. {', '.join(sorted(known)[:3])}"
    else:
        hint = "; none is known: materialise some, or give their file with -f FILE.py"
    return CliUsageError(f"unknown asset {name!r}{hint}")


def _check_partition(
    graph: AssetGraph | None, key: str, partition: str | None, option: str = "--partition"
) -> None:
    """A bad partition key given as ``option`` is a usage error naming that option and
    the form expected (exit 2)."""
    if partition is None or graph is None or key not in graph.assets:
        return
    parts = graph[key].partitions
    if parts is None:
        raise CliUsageError(f"{option}: asset {key!r} is not partitioned")
    if isinstance(parts, DynamicPartitions):
        return  # any key may be added at run time
    try:
        parts.check_key(partition)
    except PartitionKeyError as exc:
        raise CliUsageError(f"{option}: asset {key!r}: {exc}") from None


def _file_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "-f", "--file", "files", multiple=True, metavar="FILE.py",
        type=click.Path(dir_okay=False, path_type=Path),
        help=f"A file defining assets (repeatable; default ${ENV}, separated by "
        f"{os.pathsep!r}).",
    )(fn)  # fmt: skip


def _short(version: str | None) -> str:
    return "-" if not version else version[:8]


def _line(*cells: tuple[str, int]) -> str:
    """Cells padded to their widths, the last one cut to what is left of 80 columns."""
    out = ""
    for i, (text, width) in enumerate(cells):
        if i == len(cells) - 1:
            out += cut(text, WIDTH - len(out))
        else:
            out += cut(text, width).ljust(width) + "  "
    return out.rstrip()


def _status_text(row: Mapping[str, Any]) -> str:
    why = views.cause_text(row.get("cause") or {})
    status = str(row["status"])
    return f"{status}: {why}" if why and status != "missing" else status


def _when(iso: str | None) -> str:
    """An ISO time (UTC, from a view) in the reader's local time, to the second."""
    if not iso:
        return "-"
    return _local_second(iso[:19])


@functools.lru_cache(maxsize=4096)
def _local_second(utc: str) -> str:
    # Cached by the second: the assets of one run share a few seconds, so 10,000 rows
    # convert a handful of times.
    return format_local_time(datetime.fromisoformat(utc).replace(tzinfo=UTC).timestamp())


def _counts_text(counts: Mapping[str, int | None]) -> str:
    missing = counts.get("missing")
    parts = [f"{counts.get('materialized', 0)} materialized", f"{counts.get('stale', 0)} stale"]
    if counts.get("failed_check"):
        parts.append(f"{counts['failed_check']} failed check")
    parts.append("? missing (give -f)" if missing is None else f"{missing} missing")
    return ", ".join(parts)


# -- the group -------------------------------------------------------------------------------


@click.group(cls=Group)
def assets() -> None:
    """List, explain and materialise assets.

    \b
    flowcore assets ls [--stale] [--group G] [--json]
    flowcore assets show NAME [--partition K]
    flowcore assets lineage NAME [--upstream] [--downstream] [--depth N]
    flowcore assets why NAME [--partition K] [--at TIME]
    flowcore assets materialize -f FILE.py [NAME ...] [--stale] [--downstream]
    flowcore assets backfill -f FILE.py NAME --from A --to B [--stale-only]

    Readers work from the store; -f FILE.py (or $FLOWCORE_ASSETS) adds what takes the
    code: missing partitions, freshness, definitions not yet materialised.
    """


@assets.command("ls", short_help="List assets: status, last materialisation, partition counts.")
@_file_option
@click.option("--stale", "stale_only", is_flag=True, help="Only assets that are not fresh.")
@click.option("--group", metavar="G", help="Only assets of this group.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def assets_ls(files: tuple[Path, ...], stale_only: bool, group: str | None, as_json: bool) -> None:
    """List assets with their status, last materialisation and partition counts.

    Two queries whatever the number of assets (10,000 list in well under a second)."""
    graph = _graph(files)
    now = datetime.now(UTC)
    extra = [_def_record(graph, k) for k in graph.order] if graph is not None else []
    judge = _judge(graph, now) if graph is not None else None

    async def fetch(store: Store) -> list[dict[str, Any]]:
        return await views.asset_list(
            store, extra=extra, judge=judge, group=group, stale_only=stale_only
        )

    rows: list[dict[str, Any]] = _read(fetch)
    if as_json:
        click.echo(to_json(rows))
        return
    if not rows:
        what = " that are not fresh" if stale_only else ""
        where = f" in group {group!r}" if group is not None else ""
        hint = "" if graph is not None else " (give -f FILE.py to list definitions too)"
        click.echo(visible(f"no assets{what}{where} in {database()}{hint}"))
        return
    click.echo("\n".join(_ls_lines(rows)))


def _ls_lines(rows: Sequence[Mapping[str, Any]]) -> Iterator[str]:
    """A line per asset (status, last materialisation, run); an indented line under an
    asset that is not fresh says why, and under a partitioned one, its counts."""
    keys = [visible(str(r["key"])) for r in rows]
    key_width = max(5, min(38, max(len(k) for k in keys)))
    yield _line(("ASSET", key_width), ("STATUS", 12), ("MATERIALIZED", 16), ("RUN", 8))
    summary: dict[str, int] = {}
    for key, row in zip(keys, rows, strict=True):
        status = str(row["status"])
        summary[status] = summary.get(status, 0) + 1
        run = row.get("last_run_id")
        yield _line(
            (key, key_width),
            (status, 12),
            (_when(row.get("last_materialized"))[:16], 16),
            ("-" if not run else visible(str(run))[:8], 8),
        )
        why = views.cause_text(row.get("cause") or {})
        if why and status != "missing":
            yield cut(visible(f"  {why}"), WIDTH)
        counts = row.get("partitions")
        if counts:
            yield cut(f"  partitions: {_counts_text(counts)}", WIDTH)
    order = [s for s in views.STATUSES if s in summary]
    yield f"{len(rows)} assets: " + ", ".join(f"{summary[s]} {s}" for s in order)


# -- show ------------------------------------------------------------------------------------


@assets.command("show", short_help="An asset: definition, history of materialisations, checks.")
@click.argument("name")
@_file_option
@click.option("--partition", metavar="K", help="Only this partition's history and checks.")
@click.option(
    "--limit", type=Count(1), default=10, show_default=True, metavar="N",
    help="Materialisations (and check results) to show.",
)  # fmt: skip
@click.option(
    "--offset", type=Count(0), default=0, show_default=True, metavar="N",
    help="Newest rows to skip (for the next page).",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def assets_show(
    name: str,
    files: tuple[Path, ...],
    partition: str | None,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """An asset's definition, its materialisations (versions, upstream versions consumed,
    run, metadata) and check results, newest first, a page at a time."""
    graph = _graph(files)
    _check_partition(graph, name, partition)
    now = datetime.now(UTC)

    async def fetch(store: Store) -> tuple[views.AssetDetail, dict[str, Any], list[str]]:
        detail = await views.asset_detail(
            store, name, partition=partition, limit=limit, offset=offset
        )
        if detail.definition is None and detail.state is None:
            known = {d.key for d in await store.list_asset_defs()}
            if graph is None or name not in graph.assets:
                return detail, {}, sorted(known | set(graph.assets if graph else ()))
        judge = _judge(graph, now) if graph is not None else None
        row = judge(name, detail.state) if judge else views.stored_status(name, detail.state)
        return detail, row, []

    detail, row, known = _read(fetch)
    if known or (not row and detail.definition is None):
        raise _unknown(name, known)
    definition = detail.definition
    if graph is not None and name in graph.assets:
        definition = _def_record(graph, name) if definition is None else definition
    if definition is not None and definition.partitions is None and partition is not None:
        raise CliUsageError(f"--partition: asset {name!r} is not partitioned")
    if as_json:
        click.echo(to_json(_show_json(detail, definition, row, partition, offset)))
        return
    click.echo("\n".join(_show_lines(detail, definition, row, partition, offset)))


def _show_json(
    detail: views.AssetDetail,
    definition: AssetDefRecord | None,
    row: Mapping[str, Any],
    partition: str | None,
    offset: int,
) -> dict[str, Any]:
    return {
        "key": detail.key,
        "partition": partition,
        "definition": None if definition is None else _def_json(definition),
        "status": dict(row),
        "history": [views.materialization_to_json(m) for m in detail.history],
        "checks": [views.check_to_json(c) for c in detail.checks],
        "offset": offset,
        "more_history": detail.more_history,
        "more_checks": detail.more_checks,
    }


def _def_json(d: AssetDefRecord) -> dict[str, Any]:
    return {
        "key": d.key,
        "group": d.group,
        "code_version": d.code_version,
        "partitions": d.partitions,
        "upstream": [{"key": up, "mapping": mapping} for up, mapping in d.upstream],
        "freshness": d.freshness,
        "io": d.io,
        "checks": list(d.checks),
        "synced": d.synced or None,
    }


def _show_lines(
    detail: views.AssetDetail,
    definition: AssetDefRecord | None,
    row: Mapping[str, Any],
    partition: str | None,
    offset: int,
) -> Iterator[str]:
    v = visible
    title = f"asset {v(detail.key)}" + (f" [{v(partition)}]" if partition is not None else "")
    yield cut(title, WIDTH)
    yield cut(f"  status      {v(_status_text(row))}", WIDTH)
    if definition is not None:
        synced = "" if definition.synced else " (not synced: never materialised by this code)"
        yield cut(f"  group       {v(definition.group)}", WIDTH)
        yield cut(f"  code        {_short(definition.code_version)}{synced}", WIDTH)
        if definition.partitions:
            yield cut(f"  partitions  {v(definition.partitions)}", WIDTH)
        for up, mapping in definition.upstream:
            yield cut(f"  upstream    {v(up)} via {v(mapping)}", WIDTH)
        if definition.freshness:
            yield cut(f"  freshness   {v(definition.freshness)}", WIDTH)
        yield cut(f"  io          {v(definition.io)}", WIDTH)
        if definition.checks:
            yield cut(f"  checks      {v(', '.join(definition.checks))}", WIDTH)
    counts = row.get("partitions")
    if counts:
        yield cut(f"  partitions  {_counts_text(counts)}", WIDTH)
    total = row.get("materializations") or 0
    yield f"materializations ({total} in all; newest first, from {offset + 1}):"
    if not detail.history:
        yield "  none"
    for m in detail.history:
        part = f"[{v(m.partition)}] " if m.partition is not None else ""
        yield cut(
            f"  {format_local_time(m.at)}  {part}run {v(m.run_id)[:8]}  "
            f"data {_short(m.data_version)}  code {_short(m.code_version)}",
            WIDTH,
        )
        if m.consumed:
            consumed = ", ".join(
                f"{up}{f'[{p}]' if p is not None else ''}@{ver[:8]}" for up, p, ver, _ in m.consumed
            )
            yield cut(f"      consumed {v(consumed)}", WIDTH)
        if m.metadata:
            yield cut(f"      {v(views.metadata_preview(m.metadata, WIDTH))}", WIDTH)
    if detail.more_history:
        yield f"  (more: --offset {offset + len(detail.history)})"
    yield "checks (newest first):"
    if not detail.checks:
        yield "  none"
    for c in detail.checks:
        part = f"[{v(c.partition)}] " if c.partition is not None else ""
        verdict = "passed" if c.passed else ("FAILED" if c.severity == "error" else "warned")
        kind = f"{c.severity}, {'blocking' if c.blocking else 'non-blocking'}"
        yield cut(
            f"  {format_local_time(c.at)}  {part}{v(c.check)} {verdict} ({kind})  "
            f"run {v(c.run_id)[:8]}",
            WIDTH,
        )
        if c.error:
            yield cut(f"      error: {v(c.error)}", WIDTH)
        elif c.metadata:
            yield cut(f"      {v(views.metadata_preview(c.metadata, WIDTH))}", WIDTH)
    if detail.more_checks:
        yield f"  (more: --offset {offset + len(detail.checks)})"


# -- lineage ---------------------------------------------------------------------------------


async def _all_defs(
    store: Store, graph: AssetGraph | None
) -> tuple[dict[str, AssetDefRecord], list[AssetStateRecord]]:
    defs = {d.key: d for d in await store.list_asset_defs()}
    if graph is not None:
        defs.update((k, _def_record(graph, k)) for k in graph.order)
    return defs, await store.asset_states()


@assets.command("lineage", short_help="The graph around an asset, as a tree with statuses.")
@click.argument("name")
@_file_option
@click.option("--upstream", is_flag=True, help="What NAME reads (the default).")
@click.option("--downstream", is_flag=True, help="What reads NAME.")
@click.option(
    "--depth", type=Count(1, 1000), default=None, metavar="N",
    help="At most N edges away (default: all).",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def assets_lineage(
    name: str,
    files: tuple[Path, ...],
    upstream: bool,
    downstream: bool,
    depth: int | None,
    as_json: bool,
) -> None:
    """The graph around NAME as an indented tree, with each node's status and, on each
    edge, how partitions map (identity, a time window, all partitions)."""
    graph = _graph(files)
    now = datetime.now(UTC)
    judge = _judge(graph, now) if graph is not None else None

    async def fetch(store: Store) -> tuple[dict[str, AssetDefRecord], dict[str, Any]]:
        defs, states = await _all_defs(store, graph)
        by_key = {s.key: s for s in states}
        statuses = {}
        for key in defs.keys() | by_key.keys():
            state = by_key.get(key)
            d = defs.get(key)
            statuses[key] = (
                judge(key, state)
                if judge
                else views.stored_status(
                    key, state, partitioned=None if d is None else bool(d.partitions)
                )
            )
        return defs, statuses

    defs, statuses = _read(fetch)
    if name not in defs:
        raise _unknown(name, sorted(defs))
    directions = [d for d, on in (("upstream", upstream), ("downstream", downstream)) if on]
    trees = {
        d: views.lineage(defs, name, direction=d, depth=depth, statuses=statuses)
        for d in directions or ["upstream"]
    }
    if as_json:
        click.echo(to_json({d: views.lineage_to_json(t) for d, t in trees.items()}))
        return
    out: list[str] = []
    for direction, tree in trees.items():
        if out:
            out.append("")
        reads = "reads" if direction == "upstream" else "is read by"
        out.append(
            cut(f"{direction} of {visible(name)} (each node {reads} those under it):", WIDTH)
        )
        out.extend(_tree_lines(tree, defs))
    click.echo("\n".join(out))


def _node_text(node: views.LineageNode, defs: Mapping[str, AssetDefRecord]) -> str:
    """``key  status (stale/built)  <- how partitions map  (flags)  cause``: the cause
    last, so a line cut to 80 columns loses it first (``why`` has it whole)."""
    status = node.status or {}
    text = visible(node.key)
    if status:
        text += f"  {status['status']}"
    counts = status.get("partitions")
    if counts:
        text += f" ({counts.get('stale', 0)}/{counts.get('materialized', 0)} stale)"
    if node.mapping:
        edge = views.edge_text(node.mapping)
        if edge:
            text += f"  <- {visible(edge)}"
    if node.key not in defs:
        text += "  (no definition stored)"
    if node.seen:
        text += "  (see above)"
    if node.cut_at_depth:
        text += "  (more: --depth)"
    why = views.cause_text(status.get("cause") or {})
    if why and status.get("status") != "missing":
        text += f": {visible(why)}"
    return text


def _tree_lines(node: views.LineageNode, defs: Mapping[str, AssetDefRecord]) -> Iterator[str]:
    yield cut(_node_text(node, defs), WIDTH)

    def walk(children: list[views.LineageNode], prefix: str) -> Iterator[str]:
        for i, child in enumerate(children):
            last = i == len(children) - 1
            branch = "└── " if last else "├── "
            yield cut(prefix + branch + _node_text(child, defs), WIDTH)
            yield from walk(child.children, prefix + ("    " if last else "│   "))

    yield from walk(node.children, "")


# -- why -------------------------------------------------------------------------------------


@assets.command("why", short_help="Why an asset (partition) is stale, missing, failing, overdue.")
@click.argument("name")
@_file_option
@click.option("--partition", metavar="K", help="Explain this partition.")
@click.option(
    "--at",
    "at_text",
    metavar="TIME",
    help="Automation decisions as of TIME: ISO (2026-01-10T06:00, local time without a "
    "zone) or relative (-10m, -2h, -1d). Default: now.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def assets_why(
    name: str,
    files: tuple[Path, ...],
    partition: str | None,
    at_text: str | None,
    as_json: bool,
) -> None:
    """Why NAME (a partition of it) is in its status: which upstream changed from which
    data version to which, which check failed, the code version from and to, or since
    when it is overdue; and why flowcore serve did or did not materialise it as of
    --at (its stored evaluations: policy, decision, reason, what it read, run, server)."""
    now = datetime.now(UTC)
    at = now.timestamp() if at_text is None else parse_at(at_text, now, "--at")
    graph = _graph(files)
    _check_partition(graph, name, partition)
    judge = _judge(graph, now) if graph is not None else None

    async def fetch(store: Store) -> dict[str, Any] | list[str]:
        defs = {d.key: d for d in await store.list_asset_defs()}
        if graph is not None:
            defs.update((k, _def_record(graph, k)) for k in graph.order)
        states = await store.asset_states([name])
        state = states[0] if states else None
        if name not in defs and state is None:
            return sorted(defs)
        definition = defs.get(name)
        if definition is not None and definition.partitions is None and partition is not None:
            return {"error": f"--partition: asset {name!r} is not partitioned"}
        partitioned = None if definition is None else bool(definition.partitions)
        row = (
            judge(name, state)
            if judge
            else views.stored_status(name, state, partitioned=partitioned)
        )
        found = await _explain(store, name, partition, row, definition, partitioned)
        found["at"] = iso_utc(at)
        found["evaluations"] = await _evaluations(store, name, partition, at)
        return found

    found = _read(fetch)
    if isinstance(found, list):
        raise _unknown(name, found)
    if "error" in found:
        raise CliUsageError(found["error"])
    if as_json:
        click.echo(to_json(found))
        return
    click.echo("\n".join(_why_lines(found)))


#: Evaluations ``why`` reads (newest first, at or before --at); the text shows the newest.
_EVALUATIONS: Final = 20


async def _evaluations(
    store: Store, key: str, partition: str | None, at: float
) -> list[dict[str, Any]]:
    """The stored evaluations of ``key``'s automation at or before ``at``, newest first;
    with a partition, those about it and those about the whole asset."""
    found = await store.asset_evaluations(key, until=at, limit=_EVALUATIONS * 5)
    if partition is not None:
        found = [e for e in found if e.partition in (None, partition)]
    return [views.evaluation_to_json(e) for e in found[:_EVALUATIONS]]


async def _explain(
    store: Store,
    key: str,
    partition: str | None,
    row: dict[str, Any],
    definition: AssetDefRecord | None,
    partitioned: bool | None,
) -> dict[str, Any]:
    """The structured explanation: status, cause, and for one materialisation (the
    asset's, or the partition's) each upstream value it consumed against the current
    one, and the failing check's last result."""
    status, cause = row["status"], dict(row.get("cause") or {})
    current = None
    if partition is not None or not partitioned:
        part_status, current, part_cause = await views.partition_state(store, key, partition)  # type: ignore[arg-type]
        if partition is not None:
            status, cause = part_status, part_cause
    upstreams = []
    if current is not None:
        by_upstream: dict[str, list[tuple[str | None, str]]] = {}
        for up, part, seen, _ in current.consumed:
            by_upstream.setdefault(up, []).append((part, seen))
        for up, seen_list in by_upstream.items():
            now_versions = await store.latest_materializations(up, [p for p, _ in seen_list])
            for (part, seen), latest in zip(seen_list, now_versions, strict=True):
                now_version = None if latest is None else latest.data_version
                upstreams.append(
                    {
                        "upstream": up,
                        "partition": part,
                        "consumed": seen,
                        "current": now_version,
                        "changed": now_version != seen,
                    }
                )
    code_moved = (
        definition is not None
        and current is not None
        and current.code_version != definition.code_version
    )
    if (
        code_moved
        and status in ("stale", "fresh")
        and cause.get("reason") in (None, "code-changed")
    ):
        assert definition is not None and current is not None
        status = "stale"
        cause = {
            "reason": "code-changed",
            "from": current.code_version,
            "to": definition.code_version,
            "synced": bool(definition.synced),
        }
    changed = [u for u in upstreams if u["changed"]]
    if status == "stale" and changed and cause.get("reason") in (None, "upstream-changed"):
        # The stored cause is the asset's last mark; what this materialisation read,
        # against what is current now, says exactly which value moved, from and to.
        first = changed[0]
        cause = {"reason": "upstream-changed", **{k: v for k, v in first.items() if k != "changed"}}
    check = None
    if status == "failed-check":
        results = await store.check_results(key, partition=partition, limit=50)
        failing = next((c for c in results if not c.passed and c.blocking), None)
        check = None if failing is None else views.check_to_json(failing)
    return {
        "key": key,
        "partition": partition,
        "status": status,
        "cause": cause,
        "materialization": None if current is None else views.materialization_to_json(current),
        "upstreams": upstreams,
        "failed_check": check,
        "partitions": row.get("partitions"),
    }


def _why_lines(found: Mapping[str, Any]) -> Iterator[str]:
    v = visible
    name = v(found["key"]) + (f" [{v(found['partition'])}]" if found["partition"] else "")
    status, cause = found["status"], found["cause"]
    reason = cause.get("reason")
    yield cut(f"{name} is {status}", WIDTH)
    if reason == "code-changed":
        note = " (not synced yet: materialise to record it)" if cause.get("synced") is False else ""
        yield cut(
            f"  its code changed: version {_short(cause.get('from'))} -> "
            f"{_short(cause.get('to'))}{note}",
            WIDTH,
        )
    elif reason == "upstream-changed":
        part = cause.get("partition")
        where = f" partition {v(str(part))}" if part is not None else ""
        yield cut(f"  upstream {v(str(cause.get('upstream')))}{where} changed:", WIDTH)
        yield cut(
            f"    data version {_short(cause.get('consumed'))} when built, "
            f"now {_short(cause.get('current'))}",
            WIDTH,
        )
    elif reason == "upstream-stale":
        yield cut(
            f"  upstream {v(str(cause.get('upstream')))} is stale (so is what it feeds)", WIDTH
        )
    elif reason == "failed-check":
        yield cut(f"  check {v(str(cause.get('check')))} failed (blocking)", WIDTH)
        check = found.get("failed_check")
        if check:
            yield cut(f"    at {_when(check['at'])} in run {v(check['run_id'])[:8]}", WIDTH)
            if check.get("error"):
                yield cut(f"    error: {v(check['error'])}", WIDTH)
            elif check.get("metadata"):
                yield cut(f"    {v(views.metadata_preview(check['metadata'], WIDTH))}", WIDTH)
    elif reason == "overdue":
        due = cause.get("due_by")
        yield cut(
            f"  overdue since {_when(due) if due else '?'} under {v(str(cause.get('freshness')))}",
            WIDTH,
        )
    elif reason == "never-materialized":
        yield "  never materialised"
    counts = found.get("partitions")
    if counts and not found["partition"]:
        yield cut(f"  partitions: {_counts_text(counts)}", WIDTH)
        yield "  (--partition K explains one partition)"
    m = found.get("materialization")
    if m is not None:
        yield cut(
            f"  built {_when(m['at'])} by run {v(m['run_id'])[:8]} "
            f"(code {_short(m['code_version'])}, data {_short(m['data_version'])})",
            WIDTH,
        )
    upstreams = sorted(found.get("upstreams", ()), key=lambda u: not u["changed"])
    for u in upstreams[:_UPSTREAM_LINES]:
        part = f"[{v(str(u['partition']))}]" if u["partition"] is not None else ""
        mark = "changed" if u["changed"] else "same"
        yield cut(
            f"    read {v(u['upstream'])}{part} at {_short(u['consumed'])}: now "
            f"{_short(u['current'])} ({mark})",
            WIDTH,
        )
    if len(upstreams) > _UPSTREAM_LINES:
        changed = sum(1 for u in upstreams if u["changed"])
        yield (
            f"    ... {len(upstreams) - _UPSTREAM_LINES} more upstream values read "
            f"({changed} changed in all; --json lists every one)"
        )
    yield from _evaluation_lines(found.get("evaluations") or [], found.get("at"))


def _evaluation_lines(evaluations: Sequence[Mapping[str, Any]], at: str | None) -> Iterator[str]:
    """The newest automation decision at ``at``: the policy, what it decided and why, the
    run it started, the server, and what it read."""
    v = visible
    if not evaluations:
        yield cut(f"  automation as of {_when(at)}: no evaluation stored", WIDTH)
        return
    e = evaluations[0]
    part = f" [{v(str(e['partition']))}]" if e.get("partition") is not None else ""
    yield cut(f"  automation as of {_when(at)} ({v(e['policy'])}{part}):", WIDTH)
    extra = []
    if e.get("run_id"):
        extra.append(f"run {v(e['run_id'])[:8]}")
    if e.get("until"):
        extra.append(f"until {_when(e['until'])}")
    if e.get("server"):
        extra.append(f"server {v(e['server'])}")
    more = f" ({', '.join(extra)})" if extra else ""
    yield cut(f"    {_when(e['at'])}: {v(e['decision'])}{more}", WIDTH)
    yield cut(f"      why: {v(e['reason'])}", WIDTH)
    if e.get("considered"):
        yield cut(f"      considered: {v(views.metadata_preview(e['considered'], WIDTH))}", WIDTH)
    if len(evaluations) > 1:
        yield cut(f"    ({len(evaluations) - 1} earlier evaluations: --json lists them)", WIDTH)


# -- materialize and backfill ----------------------------------------------------------------


async def _poll(engine: Engine, progress: Progress, name: str, total: int | None) -> None:
    bar = progress.add_task(visible(name), total=total, counts="starting")
    while True:
        s = engine.statistics()
        progress.update(
            bar,
            total=total if total is not None else max(s.tasks_started, 1),
            completed=s.tasks_completed + s.tasks_failed,
            counts=(
                f"{s.tasks_completed} done · {s.tasks_failed} failed · {s.tasks_retried} retried"
            ),
        )
        progress.refresh()
        await anyio.sleep(0.1)


def _drive(
    name: str,
    call: Callable[[Engine], Any],
    *,
    total: int | None,
    no_progress: bool,
) -> MaterializeResult:
    """Run ``call(engine)`` in an engine of its own, with a progress bar on a terminal."""
    console = Console(stderr=True)
    show = not no_progress and console.is_terminal
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        TextColumn("{task.fields[counts]}", markup=False),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        auto_refresh=False,
        disable=not show,
    )

    async def main() -> MaterializeResult:
        done: list[MaterializeResult] = []
        async with Engine() as engine, anyio.create_task_group() as tg:
            if show:
                progress.start()
                tg.start_soon(_poll, engine, progress, name, total)
            try:
                done.append(await call(engine))
            finally:
                tg.cancel_scope.cancel()
                progress.stop()
        return done[0]

    result: MaterializeResult = run_in_own_loop(main)
    return result


def _report(result: MaterializeResult, as_json: bool) -> None:
    if as_json:
        click.echo(to_json(_result_json(result)))
    else:
        counts = result.counts
        click.echo(
            f"materialized {counts.get('materialized', 0)}, "
            f"skipped {counts.get('skipped', 0)} (fresh), "
            f"failed {counts.get('failed', 0)}, "
            f"failed a check {counts.get('failed_checks', 0)}, "
            f"blocked {counts.get('blocked', 0)}"
        )
        for what, rows in (
            ("failed", result.failed),
            ("failed check", result.failed_checks),
            ("blocked", result.blocked),
        ):
            for key, partition, reason in rows[:20]:
                part = f"[{partition}]" if partition is not None else ""
                click.echo(cut(visible(f"  {what}: {key}{part}: {reason}"), WIDTH))
        click.echo(f"inspect the run: flowcore runs show {result.run_id[:8]}", err=True)
    if not result.ok:
        raise SystemExit(1)


def _result_json(result: MaterializeResult) -> dict[str, Any]:
    def pairs(rows: Sequence[tuple[str, str | None]]) -> list[dict[str, Any]]:
        return [{"key": k, "partition": p} for k, p in rows]

    def reasons(rows: Sequence[tuple[str, str | None, str]]) -> list[dict[str, Any]]:
        return [{"key": k, "partition": p, "reason": r} for k, p, r in rows]

    return {
        "run_id": result.run_id,
        "ok": result.ok,
        "counts": dict(result.counts),
        "materialized": pairs(result.materialized),
        "skipped": pairs(result.skipped),
        "failed": reasons(result.failed),
        "failed_checks": reasons(result.failed_checks),
        "blocked": reasons(result.blocked),
    }


def _select(graph: AssetGraph, names: Sequence[str], downstream: bool) -> tuple[str, ...]:
    for name in names:
        if "*" not in name and "?" not in name and "[" not in name and name not in graph.assets:
            raise _unknown(name, list(graph.assets))
    try:
        return graph.select(*names, downstream=downstream)
    except AssetDefinitionError as exc:  # a pattern that matches nothing
        raise CliUsageError(str(exc)) from None


@assets.command("materialize", short_help="Materialise assets as one flow run (needs -f FILE.py).")
@click.argument("names", nargs=-1, metavar="[NAME ...]")
@_file_option
@click.option("--stale", "only_stale", is_flag=True, help="Only what is stale or missing.")
@click.option("--downstream", is_flag=True, help="And everything downstream of NAME.")
@click.option("--partition", metavar="K", help="This partition of the partitioned assets.")
@click.option("--from", "first", metavar="A", help="Partitions from A (with --to).")
@click.option("--to", "last", metavar="B", help="Partitions to B, included (with --from).")
@click.option(
    "--concurrency", type=Count(1, 100_000), default=None, metavar="N",
    help="At most N task runs at once.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
@click.option("--no-progress", is_flag=True, help="Do not show the progress bar.")
def assets_materialize(
    names: tuple[str, ...],
    files: tuple[Path, ...],
    only_stale: bool,
    downstream: bool,
    partition: str | None,
    first: str | None,
    last: str | None,
    concurrency: int | None,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Materialise NAME ... (keys, or patterns like 'raw/*'; default: every asset of the
    files) as one flow run, a task run per asset (per partition). Exits 0 only when
    everything asked for was materialised (or, with --stale, was fresh already).

    \b
    flowcore assets materialize -f assets.py report --stale
    flowcore assets materialize -f assets.py daily --from 2026-01-01 --to 2026-01-31
    """
    graph = _graph(files, required=True)
    assert graph is not None
    if partition is not None and (first is not None or last is not None):
        raise CliUsageError("give --partition K or --from A --to B, not both")
    if (first is None) != (last is None):
        raise CliUsageError("--from and --to go together: give both")
    keys = _select(graph, names, downstream)
    for key in keys:
        for option, given in (("--partition", partition), ("--from", first), ("--to", last)):
            if given is not None and graph[key].partitions is not None:
                _check_partition(graph, key, given, option)
    span = None if first is None or last is None else (first, last)

    def call(engine: Engine) -> Any:
        return materialize_async(
            list(keys),
            graph=graph,
            partition=partition,
            partitions=span,
            only_stale=only_stale,
            concurrency=concurrency,
            engine=engine,
        )

    result = _drive("materialize", call, total=None, no_progress=no_progress)
    _report(result, as_json)


@assets.command("backfill", short_help="Materialise a range of partitions, resumably (needs -f).")
@click.argument("name")
@_file_option
@click.option("--from", "first", metavar="A", required=True, help="The first partition.")
@click.option("--to", "last", metavar="B", required=True, help="The last partition (included).")
@click.option("--stale-only", is_flag=True, help="Skip partitions that are fresh.")
@click.option(
    "--concurrency", type=Count(1, 100_000), default=None, metavar="N",
    help="At most N partitions at once.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
@click.option("--no-progress", is_flag=True, help="Do not show the progress bar.")
def assets_backfill(
    name: str,
    files: tuple[Path, ...],
    first: str,
    last: str,
    stale_only: bool,
    concurrency: int | None,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Materialise NAME's partitions from A to B (both included) as one flow run, a task
    run per partition; resumable with `flowcore resume RUN_ID` after a crash (completed
    partitions are never redone).

    \b
    flowcore assets backfill -f assets.py daily --from 2025-01-01 --to 2025-12-31
    """
    graph = _graph(files, required=True)
    assert graph is not None
    if name not in graph.assets:
        raise _unknown(name, list(graph.assets))
    parts = graph[name].partitions
    if parts is None:
        raise CliUsageError(f"asset {name!r} is not partitioned: materialize it instead")
    _check_partition(graph, name, first, "--from")
    _check_partition(graph, name, last, "--to")
    total = None
    if not isinstance(parts, DynamicPartitions):
        total = max(parts.index_of(last) - parts.index_of(first) + 1, 0)
        if total == 0:
            raise CliUsageError(f"--from {first} comes after --to {last}")

    def call(engine: Engine) -> Any:
        return materialize_async(
            [name],
            graph=graph,
            partitions=(first, last),
            only_stale=stale_only,
            concurrency=concurrency,
            engine=engine,
        )

    result = _drive(f"backfill {name}", call, total=total, no_progress=no_progress)
    _report(result, as_json)
