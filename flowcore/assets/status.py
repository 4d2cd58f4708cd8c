"""Which assets are fresh, stale, missing, failing a check or overdue, and why.

A reader of what the store keeps incrementally (one state row per asset, with range
sets of partitions): :func:`status_async` reads the rows and does O(ranges) of
arithmetic per asset, never walking the graph, so 10,000 assets answer in
milliseconds. Time-dependent answers (missing partitions whose window has ended,
overdue under a freshness policy) need the definitions and a clock: pass the
``graph`` (and ``now``); without it, counts of missing partitions and overdue are
left out (``None``), as a store without the code can know them.

Statuses, most urgent first: ``failed-check`` (its last materialisation failed a
blocking check), ``stale`` (code changed, an upstream's data changed since it was
built, or an upstream went stale: ``cause`` says which), ``missing`` (never
materialised; for partitions: some partition that exists by now never was),
``overdue`` (past its freshness deadline), ``fresh``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final, Literal, Protocol, TypeAlias

import msgspec

from ..ranges import RangeSet, encode
from ..records import AssetDefRecord, AssetStateRecord
from ..store import Store, resolve_store
from .description import is_plain, rebuild_definition
from .freshness import Freshness
from .graph import AssetGraph
from .partitions import DynamicPartitions, Partitions, TimeWindowPartitions

__all__ = ["AssetStatus", "Status", "status_async", "status_of"]

Status: TypeAlias = Literal["fresh", "stale", "missing", "failed-check", "overdue"]
_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})
#: The stored set of an unpartitioned asset that was materialised: its one partition, 0.
_ONE: Final = encode([0, 1])


class AssetStatus(msgspec.Struct, frozen=True, gc=False):
    """One asset's status, JSON-ready through :meth:`as_dict` (for ``assets ls --json``).

    ``cause``: why it is stale (``{"reason": "code-changed", "from", "to"}``,
    ``{"reason": "upstream-changed", "upstream", "partition", ...}``,
    ``{"reason": "upstream-stale", "upstream"}``), or which check failed
    (``{"reason": "failed-check", "check"}``). ``partitions``: counts by state for a
    partitioned asset (``missing`` is ``None`` without definitions).
    """

    key: str
    status: Status
    cause: Mapping[str, Any] = _EMPTY
    last_materialized: datetime | None = None
    last_run_id: str | None = None
    data_version: str | None = None
    code_version: str | None = None
    partitions: Mapping[str, int | None] | None = None
    materializations: int = 0
    #: What could not be judged and why (a definition stored by an older flowcore).
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"notes": list(self.notes)} if self.notes else {}
        return {
            **extra,
            "key": self.key,
            "status": self.status,
            "cause": dict(self.cause),
            "last_materialized": (
                None if self.last_materialized is None else self.last_materialized.isoformat()
            ),
            "last_run_id": self.last_run_id,
            "data_version": self.data_version,
            "code_version": self.code_version,
            "partitions": None if self.partitions is None else dict(self.partitions),
            "materializations": self.materializations,
        }


class _Defined(Protocol):
    """What a status needs of a definition: an :class:`Asset`, or one rebuilt from the
    store (:class:`~flowcore.assets.description.StoredDefinition`)."""

    @property
    def partitions(self) -> Partitions | None: ...

    @property
    def freshness(self) -> Freshness | None: ...


class _Stored(_Defined, Protocol):
    """A definition as rebuilt from the store, with what could not be rebuilt."""

    @property
    def problems(self) -> tuple[str, ...]: ...

    @property
    def complete(self) -> bool: ...


class _Plain(msgspec.Struct, frozen=True):
    """What a status needs of the stored definition of a plain asset (nothing to rebuild:
    :func:`~flowcore.assets.description.is_plain`), one object shared by all of them."""

    partitions: None = None
    freshness: None = None
    problems: tuple[str, ...] = ()
    complete: bool = True


_PLAIN: Final = _Plain()


def _rebuild_all(defs: Sequence[AssetDefRecord]) -> dict[str, _Stored]:
    """The stored definitions by key, plain ones as the one shared :data:`_PLAIN`: a status
    of 10,000 assets builds no object per plain asset."""
    out: dict[str, _Stored] = {}
    plain: dict[int, bool] = {}  # by the description's identity: the store shares them
    for d in defs:
        found = plain.get(id(d.description))
        if found is None:
            found = plain[id(d.description)] = is_plain(d.description)
        out[d.key] = _PLAIN if found else rebuild_definition(d)
    return out


def _definition_of(
    key: str, graph: AssetGraph | None, stored: Mapping[str, _Stored] | None
) -> _Defined | None:
    if graph is not None and (found := graph.assets.get(key)) is not None:
        return found
    if stored is not None and (rebuilt := stored.get(key)) is not None and rebuilt.complete:
        return rebuilt
    return None


def status_of(
    key: str,
    state: AssetStateRecord | None,
    graph: AssetGraph | None,
    now: datetime,
    *,
    stored: Mapping[str, _Stored] | None = None,
) -> AssetStatus:
    """The status of ``key`` from its stored state (``None``: never materialised), judged
    with its definition from ``graph``, else as rebuilt from the store (``stored``)."""
    notes: tuple[str, ...] = ()
    if stored is not None and (graph is None or key not in graph.assets):
        rebuilt = stored.get(key)
        notes = () if rebuilt is None else rebuilt.problems
    if state is None:
        return AssetStatus(key, "missing", {"reason": "never-materialized"}, notes=notes)
    definition = _definition_of(key, graph, stored)
    if _plainly_fresh(state, definition):
        # The common case, an unpartitioned asset built and fresh: no range arithmetic.
        return AssetStatus(
            key=key,
            status="fresh",
            last_materialized=datetime.fromtimestamp(state.last_at or 0.0, UTC),
            last_run_id=state.last_run_id,
            data_version=state.data_version,
            code_version=state.code_version,
            materializations=state.materializations,
            notes=notes,
        )
    materialized = RangeSet.from_bytes(state.materialized)
    stale = RangeSet.from_bytes(state.stale) & materialized
    failed = RangeSet.from_bytes(state.failed) & materialized
    partitions = definition.partitions if definition is not None else None
    last = None if state.last_at is None else datetime.fromtimestamp(state.last_at, UTC)
    missing: int | None = None
    counts: dict[str, int | None] | None = None
    overdue = False
    if partitions is not None and not isinstance(partitions, DynamicPartitions):
        total = partitions.count(until=now)
        existing = RangeSet.from_ranges([(0, total)]) if total else RangeSet()
        missing = total - len(materialized & existing)
    elif definition is not None and definition.partitions is None:
        missing = 0 if materialized else 1
    if partitions is not None or (definition is None and len(materialized) > 1):
        counts = {
            "materialized": len(materialized),
            "stale": len(stale),
            "failed_check": len(failed),
            "missing": missing,
        }
    if definition is not None and definition.freshness is not None:
        freshness = definition.freshness
        if isinstance(partitions, TimeWindowPartitions):
            done = partitions.count(until=now)
            if done:
                window_end = partitions.window_of(done - 1)[1]
                built = (done - 1) in materialized
                overdue = freshness.overdue(last if built else None, now, window_end=window_end)
        else:
            overdue = freshness.overdue(last, now)
    status: Status
    cause: Mapping[str, Any]
    if failed:
        status, cause = "failed-check", {"reason": "failed-check", "check": state.failed_check}
    elif stale:
        status, cause = "stale", state.cause
    elif not materialized or missing:
        status, cause = "missing", {"reason": "never-materialized"}
    elif overdue:
        status, cause = (
            "overdue",
            {"reason": "overdue", "freshness": repr(definition and definition.freshness)},
        )
    else:
        status, cause = "fresh", _EMPTY
    return AssetStatus(
        key=key,
        status=status,
        cause=MappingProxyType(dict(cause)),
        last_materialized=last,
        last_run_id=state.last_run_id,
        data_version=state.data_version,
        code_version=state.code_version,
        partitions=None if counts is None else MappingProxyType(counts),
        materializations=state.materializations,
        notes=notes,
    )


def _plainly_fresh(state: AssetStateRecord, definition: _Defined | None) -> bool:
    """An unpartitioned asset built, not stale, not failing, with no freshness policy: the
    common case, answered by comparing bytes (no range arithmetic, no objects)."""
    return (
        state.materialized == _ONE
        and not state.stale
        and not state.failed
        and (definition is None or (definition.partitions is None and not definition.freshness))
    )


async def status_async(
    keys: Sequence[str] | None = None,
    *,
    stale_only: bool = False,
    store: Store | str | os.PathLike[str] | None = None,
    graph: AssetGraph | None = None,
    now: datetime | None = None,
) -> list[AssetStatus]:
    """The status of each asset (of ``keys``; of the graph's when ``graph`` is given; else
    of every asset with a stored definition or state), by key. ``stale_only``: only those
    not fresh. ``store``: a store, a path or ``"memory"`` (default
    ``$FLOWCORE_HOME/flowcore.db``; opened and closed here unless it is a store object).
    ``now``: for missing partitions and freshness (default: the current time).

    Without ``graph``, the definitions are rebuilt from the store
    (:mod:`flowcore.assets.description`), so missing partitions and overdue are judged
    without the code; an asset stored by an older flowcore says so in its ``notes``."""
    now = now or datetime.now(UTC)
    opened = store is None or isinstance(store, str | os.PathLike)
    handle = resolve_store(store)
    if opened:
        await handle.open()
    stored: dict[str, _Stored] | None = None
    try:
        wanted = list(keys) if keys is not None else (list(graph.order) if graph else None)
        states = {s.key: s for s in await handle.asset_states(wanted)}
        if graph is None:
            stored = _rebuild_all(await handle.list_asset_defs(wanted))
    finally:
        if opened:
            await handle.close()
    order = wanted if wanted is not None else sorted({*states, *(stored or ())})
    if not stale_only:
        return [status_of(key, states.get(key), graph, now, stored=stored) for key in order]
    out = []
    for key in order:
        state = states.get(key)
        definition = _definition_of(key, graph, stored)
        if state is not None and _plainly_fresh(state, definition):
            continue
        found = status_of(key, state, graph, now, stored=stored)
        if found.status != "fresh":
            out.append(found)
    return out
