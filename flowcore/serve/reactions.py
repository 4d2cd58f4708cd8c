"""Reactive assets: the server's evaluation of assets' automation policies.

Each wake (the store's change token moved, a debounce or a cron tick is due), the
:class:`Reactor` reads the state rows of the assets with an ``automation=`` policy and
of their upstreams (one query), and decides per asset (partition):

- ``on_upstream_change(debounce=...)``: materialise what the store marks stale (an
  upstream was materialised to a new data version: the store keeps that incrementally,
  so an upstream re-materialised to the same version changes nothing) or missing with
  every upstream built, once ``debounce`` seconds have passed since the newest upstream
  materialisation, and once no upstream is stale with an automation of its own (it
  would be built twice: before and after that upstream is rebuilt).
- ``on_cron(expr, tz=...)``: at each tick, materialise if stale or missing.
- ``on_missing()``: materialise an unpartitioned asset never built (its upstreams
  built), or the partitions of a time-window asset whose window is complete and which
  were never built (the oldest :data:`MAX_PER_WAKE` per wake).
- ``freshness=`` with ``on_overdue=`` hooks or a policy: past its deadline (for a
  time-window asset, its latest complete window's), the hooks fire and the asset is
  materialised (with a policy), once per overdue period (the deadline names it).

**Never twice.** Before materialising, the server claims the reaction with
``claim_once`` (one transaction, across every process sharing the store): kind
``asset-reaction``, key ``KEY/PARTITION/FINGERPRINT`` where the fingerprint hashes the
upstreams' current data versions (and, for a partitioned upstream, the partition
last materialised) and the asset's code version; ``asset-cron`` keys name the tick;
``asset-missing`` keys the partition; ``asset-overdue`` keys the overdue period. Of
several servers one claims it and starts the run; the others record
``claimed-elsewhere``. A materialisation that fails is not retried for the same
upstream versions: a new upstream version (a new fingerprint) is a new reaction.

**Explained.** Every decision that differs from this process's previous one for that
asset, policy and partition is stored (:class:`~flowcore.records.AssetEvaluationRecord`,
``AssetStore.add_asset_evaluations``) with what it considered, so ``flowcore assets
why NAME`` can say why an asset was or was not materialised at a given time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from ..assets import AssetGraph, OnCron, OnMissing, OnUpstreamChange
from ..assets.definition import Asset
from ..assets.partitions import DynamicPartitions, TimeWindowPartitions
from ..ranges import RangeSet
from ..records import AssetEvaluationRecord, AssetStateRecord
from ..store import Store
from .logs import log, text

__all__ = ["MAX_PER_WAKE", "Reaction", "Reactor"]

#: The most partitions one asset's policy starts per wake (a long backlog drains in turn).
MAX_PER_WAKE: Final = 20
#: The longest the reactor lets a server sleep while it waits for nothing in particular.
_IDLE: Final = 5.0


@dataclass(frozen=True, slots=True)
class Reaction:
    """A materialisation this server claimed: start it (``on_started`` records its end)."""

    key: str
    partition: str | None
    policy: str
    reason: str
    only_stale: bool = False
    #: An overdue period's ``on_overdue`` hooks to fire (nothing is materialised), with
    #: the event's ``asset`` details.
    overdue: dict[str, Any] | None = None


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def fingerprint(versions: Sequence[tuple[str, str | None, str | None]]) -> str:
    """A short hash of ``(upstream, partition, data version)`` triples, in any order."""
    data = msgspec.json.encode(sorted(versions, key=lambda v: (v[0], v[1] or "", v[2] or "")))
    return hashlib.sha256(data).hexdigest()[:20]


class Reactor:
    """Evaluates the automation of ``graph``'s assets for one server (module docstring)."""

    def __init__(self, graph: AssetGraph, store: Store, holder: str, started: float) -> None:
        self.graph = graph
        self.store = store
        self.holder = holder
        self.reactive: list[Asset[Any, Any]] = [a for a in graph.assets.values() if a.automation]
        #: Assets whose freshness the server watches: overdue ones fire their on_overdue
        #: hooks, and are materialised when they have an automation policy.
        self.timely: list[Asset[Any, Any]] = [
            a
            for a in graph.assets.values()
            if a.freshness is not None and (a.on_overdue or a.automation)
        ]
        watched: dict[str, None] = {}
        for definition in self.timely:
            watched[definition.key] = None
        for definition in self.reactive:
            watched[definition.key] = None
            watched.update(dict.fromkeys(graph.upstream[definition.key]))
        self.watched = list(watched)
        #: Next tick of each cron policy, by (asset, schedule key).
        self.ticks: dict[tuple[str, str], float] = {}
        for definition in self.reactive:
            for policy in definition.automation:
                if isinstance(policy, OnCron):
                    tick = policy.schedule.next_after(_dt(started)).timestamp()
                    self.ticks[(definition.key, policy.schedule.key)] = tick
        #: (asset, partition) being materialised by this server.
        self.inflight: set[tuple[str, str | None]] = set()
        self._last: dict[tuple[str, str, str | None], tuple[str, str]] = {}
        self._pending: list[AssetEvaluationRecord] = []
        self._due = -float("inf")  # when a waiting debounce should be looked at again

    def __bool__(self) -> bool:
        return bool(self.reactive or self.timely)

    # -- recording ---------------------------------------------------------------------

    def note(
        self,
        key: str,
        policy: str,
        decision: str,
        reason: str,
        now: float,
        *,
        partition: str | None = None,
        considered: dict[str, Any] | None = None,
        run_id: str | None = None,
        until: float | None = None,
        always: bool = False,
    ) -> None:
        """Queue an evaluation to store, unless it repeats this process's previous one."""
        where = (key, policy, partition)
        if not always and self._last.get(where) == (decision, reason):
            return
        self._last[where] = (decision, reason)
        self._pending.append(
            AssetEvaluationRecord(
                key=key,
                at=now,
                policy=policy,
                decision=decision,
                reason=reason,
                partition=partition,
                considered=considered or {},
                run_id=run_id,
                until=until,
                holder=self.holder,
            )
        )

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            await self.store.add_asset_evaluations(pending)

    # -- evaluating --------------------------------------------------------------------

    async def evaluate(self, now: float, changed: bool, free: int) -> tuple[list[Reaction], float]:
        """One evaluation; returns the reactions claimed here (at most ``free``) and when
        to look again."""
        wake_at = now + _IDLE
        for tick in self.ticks.values():
            wake_at = min(wake_at, tick)
        cron_due = any(tick <= now for tick in self.ticks.values())
        if not (changed or cron_due or now >= self._due):
            await self.flush()
            return [], min(wake_at, self._due)
        self._due = float("inf")
        found = await self.store.asset_states(self.watched)
        states: dict[str, AssetStateRecord] = {s.key: s for s in found}
        wanted: list[tuple[Reaction, str, str]] = []  # reaction, claim kind, claim key
        for definition in self.reactive:
            for policy in definition.automation:
                if isinstance(policy, OnUpstreamChange):
                    wanted += self._upstream_change(definition, policy, states, now)
                elif isinstance(policy, OnCron):
                    wanted += self._cron(definition, policy, states, now)
                elif isinstance(policy, OnMissing):
                    wanted += self._missing(definition, states, now)
        for definition in self.timely:
            wanted += self._overdue(definition, states.get(definition.key), now)
        wake_at = min(wake_at, self._due)
        for tick in self.ticks.values():
            wake_at = min(wake_at, tick)
        claimed: list[Reaction] = []
        for reaction, kind, claim in wanted:
            if len(claimed) >= free:
                break  # the rest waits for a free slot (unclaimed: another server may take it)
            [*got] = await self.store.claim_once(kind, [claim], self.holder, now)
            considered = {"claim": f"{kind}:{claim}"}
            if got and reaction.overdue is not None:
                claimed.append(reaction)
                self.note(
                    reaction.key,
                    reaction.policy,
                    "fire-hooks",
                    reaction.reason,
                    now,
                    partition=reaction.partition,
                    considered={**considered, **reaction.overdue},
                    always=True,
                )
            elif got:
                claimed.append(reaction)
                self.inflight.add((reaction.key, reaction.partition))
                self.note(
                    reaction.key,
                    reaction.policy,
                    "materialize",
                    reaction.reason,
                    now,
                    partition=reaction.partition,
                    considered=considered,
                    always=True,
                )
            else:
                self.note(
                    reaction.key,
                    reaction.policy,
                    "claimed-elsewhere",
                    f"{reaction.reason}; another server claimed this reaction",
                    now,
                    partition=reaction.partition,
                    considered=considered,
                )
        await self.flush()
        return claimed, wake_at

    def _upstream_versions(
        self, key: str, states: dict[str, AssetStateRecord]
    ) -> tuple[list[tuple[str, str | None, str | None]], list[str], float]:
        versions: list[tuple[str, str | None, str | None]] = []
        missing: list[str] = []
        newest = -float("inf")
        for up in self.graph.upstream[key]:
            state = states.get(up)
            if state is None or not state.materialized:
                missing.append(up)
                continue
            partitioned = self.graph.assets[up].partitions is not None
            versions.append((up, state.last_partition if partitioned else None, state.data_version))
            newest = max(newest, state.last_at or 0.0)
        return versions, missing, newest

    def _upstream_change(
        self,
        definition: Asset[Any, Any],
        policy: OnUpstreamChange,
        states: dict[str, AssetStateRecord],
        now: float,
    ) -> list[tuple[Reaction, str, str]]:
        key, name = definition.key, "on_upstream_change"
        state = states.get(key)
        versions, missing, newest = self._upstream_versions(key, states)
        considered: dict[str, Any] = {"upstream": [list(v) for v in versions]}
        if missing:
            self.note(
                key,
                name,
                "skip",
                f"upstream {', '.join(missing)} never materialised",
                now,
                considered=considered,
            )
            return []
        coming = [
            up
            for up in self.graph.upstream[key]
            if self.graph.assets[up].automation and _stale(states.get(up))
        ]
        if coming:
            # Built now, it would be built again when they are: wait for them.
            self.note(
                key,
                name,
                "wait",
                f"upstream {', '.join(coming)} is stale and rebuilt by its own automation",
                now,
                considered=considered,
            )
            return []
        materialized = RangeSet.from_bytes(state.materialized) if state else RangeSet()
        stale = RangeSet.from_bytes(state.stale) & materialized if state else RangeSet()
        parts = definition.partitions
        targets: list[str | None]
        if state is None or not materialized:
            if parts is not None:
                self.note(key, name, "skip", "no partition built yet (see on_missing)", now)
                return []
            targets, why = [None], "never materialised, and every upstream is"
        elif not stale:
            self.note(
                key,
                name,
                "skip",
                "up to date: built from the upstreams' current data versions",
                now,
                considered=considered,
            )
            return []
        else:
            cause = state.cause or {}
            why = f"stale ({cause.get('reason', 'upstream-changed')}"
            why += f" from {cause['upstream']})" if cause.get("upstream") else ")"
            if parts is None:
                targets = [None]
            elif isinstance(parts, DynamicPartitions):
                self.note(key, name, "skip", "dynamic partitions are not automated yet", now)
                return []
            else:
                targets = [parts.key_of(i) for i in _first(stale, MAX_PER_WAKE)]
        until = newest + policy.debounce
        if now < until:
            self._due = min(self._due, until)
            self.note(
                key,
                name,
                "wait",
                f"{why}: debounce of {policy.debounce:g}s after the last upstream change",
                now,
                considered=considered,
                until=until,
            )
            return []
        # The code version too: a code change (stale, same upstreams) is a new reaction.
        mark = fingerprint([*versions, ("", None, definition.code_version)])
        return [
            (
                Reaction(key, p, name, why),
                "asset-reaction",
                f"{key}/{'' if p is None else p}/{mark}",
            )
            for p in targets
            if (key, p) not in self.inflight
        ]

    def _cron(
        self,
        definition: Asset[Any, Any],
        policy: OnCron,
        states: dict[str, AssetStateRecord],
        now: float,
    ) -> list[tuple[Reaction, str, str]]:
        key, name = definition.key, "on_cron"
        where = (key, policy.schedule.key)
        tick = self.ticks[where]
        if tick > now:
            return []
        # The newest due tick fires (ticks missed while no server ran are not replayed).
        while (following := policy.schedule.next_after(_dt(tick)).timestamp()) <= now:
            tick = following
        self.ticks[where] = following
        state = states.get(key)
        label = f"tick {_dt(tick).isoformat()} of {policy.schedule.key!r}"
        if (
            state is not None
            and state.materialized
            and not (RangeSet.from_bytes(state.stale) & RangeSet.from_bytes(state.materialized))
            and definition.partitions is None
        ):
            self.note(key, name, "skip", f"{label}: fresh", now, always=True)
            return []
        reason = f"{label}: stale or missing"
        claim = f"{key}/{policy.schedule.key}/{tick:.6f}"
        return [(Reaction(key, None, name, reason, only_stale=True), "asset-cron", claim)]

    def _missing(
        self,
        definition: Asset[Any, Any],
        states: dict[str, AssetStateRecord],
        now: float,
    ) -> list[tuple[Reaction, str, str]]:
        key, name = definition.key, "on_missing"
        state = states.get(key)
        materialized = RangeSet.from_bytes(state.materialized) if state else RangeSet()
        parts = definition.partitions
        if parts is None:
            if materialized:
                self.note(key, name, "skip", "materialised", now)
                return []
            _, missing, _ = self._upstream_versions(key, states)
            if missing:
                self.note(
                    key, name, "wait", f"upstream {', '.join(missing)} never materialised", now
                )
                return []
            reason = "never materialised"
            return [(Reaction(key, None, name, reason), "asset-missing", f"{key}/")]
        if not isinstance(parts, TimeWindowPartitions):
            self.note(key, name, "skip", "only time-window partitions complete by themselves", now)
            return []
        complete = parts.count(until=_dt(now))
        todo = (RangeSet.from_ranges([(0, complete)]) if complete else RangeSet()) - materialized
        if not todo:
            self.note(key, name, "skip", f"all {complete} complete partitions materialised", now)
            return []
        out = []
        for index in _first(todo, MAX_PER_WAKE):
            partition = parts.key_of(index)
            if (key, partition) in self.inflight:
                continue
            reason = f"partition {partition} is complete and was never materialised"
            out.append(
                (Reaction(key, partition, name, reason), "asset-missing", f"{key}/{partition}")
            )
        return out

    def _overdue(
        self, definition: Asset[Any, Any], state: AssetStateRecord | None, now: float
    ) -> list[tuple[Reaction, str, str]]:
        """Overdue under its freshness: once per overdue period (its deadline), the
        ``on_overdue`` hooks, and a materialisation when it has an automation policy."""
        freshness = definition.freshness
        assert freshness is not None
        key, parts = definition.key, definition.partitions
        last = None if state is None or state.last_at is None else _dt(state.last_at)
        window_end: datetime | None = None
        partition: str | None = None
        if isinstance(parts, TimeWindowPartitions):
            done = parts.count(until=_dt(now))
            if not done:
                return []
            window_end = parts.window_of(done - 1)[1]
            partition = parts.key_of(done - 1)
            built = state is not None and (done - 1) in RangeSet.from_bytes(state.materialized)
            last = last if built else None
        elif parts is not None:
            return []  # static and dynamic partitions: judged per partition by status only
        due = freshness.due_by(last, window_end=window_end)
        if not freshness.overdue(last, _dt(now), window_end=window_end):
            if due is not None:
                self._due = min(self._due, due.timestamp())
            return []
        period = "never" if due is None else f"{due.timestamp():.6f}"
        details = {
            "key": key,
            "partition": partition,
            "due_by": None if due is None else due.isoformat(),
            "last_materialized": None if last is None else last.isoformat(),
        }
        since = "never materialised" if due is None else f"due by {due.isoformat()}"
        reason = f"overdue under {freshness!r}: {since}"
        claim = f"{key}/{'' if partition is None else partition}/{period}"
        out = []
        if definition.on_overdue:
            hooks = Reaction(key, partition, "on_overdue", reason, overdue=details)
            out.append((hooks, "asset-overdue", claim))
        if definition.automation and (key, partition) not in self.inflight:
            run = Reaction(key, partition, "freshness", reason)
            out.append((run, "asset-overdue-run", claim))
        return out

    def ended(
        self, reaction: Reaction, run_id: str, outcome: str, now: float, error: str = ""
    ) -> None:
        """A reaction's run ended: note it (stored at the next flush)."""
        self.inflight.discard((reaction.key, reaction.partition))
        self.note(
            reaction.key,
            reaction.policy,
            outcome,
            error or reaction.reason,
            now,
            partition=reaction.partition,
            run_id=run_id or None,
            always=True,
        )
        if error:
            log.warning(
                "asset %s%s: %s", text(reaction.key), _part(reaction.partition), text(error)
            )


def _stale(state: AssetStateRecord | None) -> bool:
    if state is None or not state.stale:
        return False
    return bool(RangeSet.from_bytes(state.stale) & RangeSet.from_bytes(state.materialized))


def _part(partition: str | None) -> str:
    return "" if partition is None else f" partition {partition}"


def _first(found: RangeSet, limit: int) -> list[int]:
    out: list[int] = []
    for start, stop in found.ranges():
        for index in range(start, stop):
            if len(out) >= limit:
                return out
            out.append(index)
    return out
