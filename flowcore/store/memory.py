"""A store that keeps records in memory: for tests and for runs that need no history."""

from __future__ import annotations

import bisect
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

import msgspec

from ..errors import ConfigurationError, RunNotFound
from ..records import (
    AssetDefRecord,
    AssetEvaluationRecord,
    AssetStateRecord,
    CacheEntry,
    CheckResultRecord,
    FlowRunRecord,
    LogRecord,
    MaterializationRecord,
    ScheduleState,
    ServedFlow,
    SlotClaim,
    SpanRecord,
    StaleMark,
    TaskRunRecord,
    Trigger,
    WriteBatch,
)
from ..states import TERMINAL, State
from .base import (
    LOG_CHUNK,
    PRUNE_CHUNK,
    AssetWrite,
    BlobStore,
    PruneCount,
    apply_asset_events,
    apply_code_change,
    check_prune,
    claimed_source,
    ended_at,
    freed_results,
    late_completion,
    not_found_message,
    replaces,
)

__all__ = ["MemoryStore"]

_R = TypeVar("_R", FlowRunRecord, TaskRunRecord)


class MemoryStore:
    """Records in dictionaries, lost when the process ends.

    Writes store copies, so what a reader sees is what was written, as with a
    real database, and not the engine's live objects. One store is one handle: every
    method runs to its end without an await, so each call is atomic, as a claim
    must be.
    """

    location = ":memory:"

    def __init__(self) -> None:
        self._runs: dict[str, FlowRunRecord] = {}
        self._tasks: dict[str, dict[int, TaskRunRecord]] = {}
        self._cache: dict[str, CacheEntry] = {}
        self._spans: dict[tuple[str, str], SpanRecord] = {}
        #: Span export of ended runs by run id: ``(holder, until)`` claimed, or
        #: ``None`` once shipped or skipped (a run without an entry was never claimed).
        self._exports: dict[str, tuple[str, float] | None] = {}
        #: Ended runs not shipped or skipped yet, in the order they ended: what a claim
        #: reads (not every run the store holds, polled by a shipper every 2 s).
        self._unshipped: dict[str, None] = {}
        self._leases: dict[str, tuple[str, str, str, int, float, int, float]] = {}
        self._rates: dict[str, float] = {}  # shared rate limits: name -> tat (see SQLiteStore)
        self._logs: dict[str, list[LogRecord]] = {}  # lines of run logs, by run, in id order
        self._log_id = 0  # the id of the last line written
        self.blobs: BlobStore | None = None  # results stay inline, in memory
        self.writes = 0  # number of write batches, for tests of the batching
        # Serving (flowcore serve): schedule state, claimed slots, the trigger queue,
        # the served-flows registry and one-shot claims, keyed as the SQLite tables are.
        self._schedules: dict[tuple[str, str], ScheduleState] = {}
        self._slots: dict[tuple[str, str, float], tuple[str | None, str | None, float]] = {}
        self._triggers: dict[str, Trigger] = {}
        self._served: dict[tuple[str, str], ServedFlow] = {}
        self._once: dict[tuple[str, str], tuple[str, float]] = {}
        self._changes = 0  # bumped by every change of any kind: see changes()
        # Assets, keyed as the SQLite tables are (see AssetStore).
        self._asset_defs: dict[str, AssetDefRecord] = {}
        self._asset_history: dict[tuple[str, str | None], list[MaterializationRecord]] = {}
        #: The same by asset alone, in the order written (the history across partitions).
        self._asset_written: dict[str, list[MaterializationRecord]] = {}
        self._asset_current: dict[tuple[str, int], MaterializationRecord] = {}
        self._asset_checks: dict[str, list[CheckResultRecord]] = {}
        self._asset_evaluations: dict[str, list[AssetEvaluationRecord]] = {}
        self._asset_state: dict[str, AssetStateRecord] = {}
        self._dynamic: dict[str, dict[str, int]] = {}  # name -> key -> index

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def write(self, batch: WriteBatch) -> None:
        self._changes += 1
        self.writes += 1
        for span in batch.spans:
            self._spans[(span.trace_id, span.span_id)] = _copy_span(span)
        for entry in batch.cache_entries:
            self._cache[entry.key] = msgspec.structs.replace(entry)
        for fr in batch.flow_runs:
            old = self._runs.get(fr.id)
            if old is None or old.state not in TERMINAL:
                self._put_run(_copy(fr))
            elif replaces(old.state, fr.state):  # a late completion over Crashed
                self._put_run(late_completion(old, _copy(fr)))
        for tr in batch.task_runs:
            by_seq = self._tasks.setdefault(tr.run_id, {})
            old_t = by_seq.get(tr.seq)
            if old_t is None or old_t.state not in TERMINAL:
                by_seq[tr.seq] = _copy(tr)
            elif replaces(old_t.state, tr.state):
                by_seq[tr.seq] = late_completion(old_t, _copy(tr))
        for line in batch.logs:
            self._log_id += 1
            kept = msgspec.structs.replace(line, id=self._log_id)
            self._logs.setdefault(line.run_id, []).append(kept)
        if batch.assets:
            write = self._asset_write()
            apply_asset_events(write, [_clone(e) for e in batch.assets], 0.0)
            self._commit_assets(write)

    # -- assets -------------------------------------------------------------------------

    def _asset_write(self) -> AssetWrite:
        def version_of(key: str, index: int) -> str | None:
            found = self._asset_current.get((key, index))
            return None if found is None else found.data_version

        return AssetWrite(lambda key: _clone(self._asset_state.get(key)), version_of)

    def _commit_assets(self, write: AssetWrite) -> None:
        for item in write.history:
            if isinstance(item, MaterializationRecord):
                self._asset_history.setdefault((item.key, item.partition), []).append(item)
                self._asset_written.setdefault(item.key, []).append(item)
            else:
                self._asset_checks.setdefault(item.key, []).append(item)
        self._asset_current.update(write.current)
        self._asset_state.update(write.states)

    async def sync_assets(
        self, defs: Sequence[AssetDefRecord], marks: Mapping[str, Sequence[StaleMark]]
    ) -> dict[str, str]:
        self._changes += 1
        changed: dict[str, str] = {}
        write = self._asset_write()
        for definition in defs:
            old = self._asset_defs.get(definition.key)
            if old is not None and old.code_version != definition.code_version:
                changed[definition.key] = old.code_version
                apply_code_change(
                    write,
                    definition.key,
                    old.code_version,
                    definition.code_version,
                    [_clone(m) for m in marks.get(definition.key, ())],
                )
            self._asset_defs[definition.key] = _clone(definition)
        self._commit_assets(write)
        return changed

    async def list_asset_defs(self, keys: Sequence[str] | None = None) -> list[AssetDefRecord]:
        found = (
            self._asset_defs
            if keys is None
            else {k: self._asset_defs[k] for k in keys if k in self._asset_defs}
        )
        return [_clone(found[k]) for k in sorted(found)]

    async def asset_states(self, keys: Sequence[str] | None = None) -> list[AssetStateRecord]:
        states = self._asset_state
        chosen = sorted(states) if keys is None else sorted(k for k in set(keys) if k in states)
        return [_clone(states[k]) for k in chosen]

    async def asset_history(
        self, key: str, *, partition: str | None = None, limit: int = 100
    ) -> list[MaterializationRecord]:
        if limit < 1:
            return []
        if partition is not None:
            rows = self._asset_history.get((key, partition), [])
        else:  # in the order written, as SQLite's ids (two at the same time included)
            rows = self._asset_written.get(key, [])
        return [_clone(m) for m in reversed(rows[-limit:])]

    async def latest_materializations(
        self, key: str, partitions: Sequence[str | None]
    ) -> list[MaterializationRecord | None]:
        out: list[MaterializationRecord | None] = []
        for partition in partitions:
            rows = self._asset_history.get((key, partition))
            out.append(_clone(rows[-1]) if rows else None)
        return out

    async def add_dynamic_partitions(self, name: str, keys: Sequence[str], now: float) -> list[int]:
        self._changes += 1
        known = self._dynamic.setdefault(name, {})
        for key in keys:
            known.setdefault(key, len(known))
        return [known[key] for key in keys]

    async def dynamic_partitions(self, name: str) -> list[str]:
        return list(self._dynamic.get(name, {}))

    async def add_asset_evaluations(self, records: Sequence[AssetEvaluationRecord]) -> None:
        if records:
            self._changes += 1
        for record in records:
            self._asset_evaluations.setdefault(record.key, []).append(_clone(record))

    async def asset_evaluations(
        self, key: str, *, until: float | None = None, limit: int = 100
    ) -> list[AssetEvaluationRecord]:
        if limit < 1:
            raise ConfigurationError(f"`limit` must be >= 1, got {limit}")
        rows = self._asset_evaluations.get(key, [])
        found = [r for r in reversed(rows) if until is None or r.at <= until]
        return [_clone(r) for r in found[:limit]]

    async def check_results(
        self, key: str, *, partition: str | None = None, limit: int = 100
    ) -> list[CheckResultRecord]:
        rows = [
            c
            for c in self._asset_checks.get(key, [])
            if partition is None or c.partition == partition
        ]
        return [_clone(c) for c in reversed(rows[-limit:])]

    async def list_runs(
        self, *, name: str | None = None, state: str | None = None, limit: int = 50
    ) -> list[FlowRunRecord]:
        return await self.filter_runs(name=name, state=state, limit=limit)

    async def filter_runs(
        self,
        *,
        name: str | None = None,
        state: str | None = None,
        since: float | None = None,
        until: float | None = None,
        tag: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> list[FlowRunRecord]:
        if limit < 1:
            raise ConfigurationError(f"`limit` must be >= 1, got {limit}")
        if offset < 0:
            raise ConfigurationError(f"`offset` must be >= 0, got {offset}")
        runs = [
            r
            for r in self._runs.values()
            if (name is None or r.name == name)
            and (state is None or r.state == state)
            and (since is None or r.created >= since)
            and (until is None or r.created < until)
            and (tag is None or self._has_tag(r.id, tag))
        ]
        runs.sort(key=lambda r: r.created, reverse=True)
        return [_copy(r) for r in runs[offset : offset + limit]]

    def _has_tag(self, run_id: str, tag: str) -> bool:
        return any(tag in (t.tags or ()) for t in self._tasks.get(run_id, {}).values())

    async def get_run(self, run_id: str) -> FlowRunRecord:
        if run_id in self._runs:
            return _copy(self._runs[run_id])
        matches = [r for key, r in self._runs.items() if key.startswith(run_id)] if run_id else []
        if len(matches) == 1:
            return _copy(matches[0])
        raise RunNotFound(not_found_message(run_id, self.location, len(matches)))

    async def list_task_runs(
        self,
        run_id: str,
        *,
        offset: int = 0,
        limit: int | None = None,
        state: str | None = None,
        tag: str | None = None,
    ) -> list[TaskRunRecord]:
        tasks = sorted(
            (
                t
                for t in self._tasks.get(run_id, {}).values()
                if state in (None, str(t.state)) and (tag is None or tag in (t.tags or ()))
            ),
            key=lambda t: t.seq,
        )
        end = None if limit is None else offset + limit
        return [_copy(t) for t in tasks[offset:end]]

    async def task_run_edges(
        self, run_id: str, *, after: int = -1, limit: int | None = None
    ) -> list[tuple[int, str, str, int | None, list[int] | None]]:
        tasks = sorted(
            (t for t in self._tasks.get(run_id, {}).values() if t.seq > after),
            key=lambda t: t.seq,
        )
        return [
            (
                t.seq,
                t.name,
                str(t.state),
                t.parent_seq,
                None if t.upstream is None else list(t.upstream),
            )
            for t in tasks[:limit]
        ]

    async def count_task_runs(self, run_id: str, *, tag: str | None = None) -> dict[str, int]:
        return dict(
            Counter(
                str(t.state)
                for t in self._tasks.get(run_id, {}).values()
                if tag is None or tag in (t.tags or ())
            )
        )

    async def child_runs(self, run_id: str) -> list[FlowRunRecord]:
        kids = [r for r in self._runs.values() if r.parent_run_id == run_id]
        kids.sort(key=lambda r: r.created)
        return [_copy(k) for k in kids]

    async def claim_resume(
        self, run: FlowRunRecord, *, force: bool = False
    ) -> FlowRunRecord | None:
        holder = _claim_holder(self._runs.values(), claimed_source(run), run.name, force)
        if holder is not None:
            return _copy(holder)
        if run.id in self._runs:
            raise ConfigurationError(f"claim_resume: a run with id {run.id!r} exists already")
        self._put_run(_copy(run))  # checked and written without an await: atomic
        self._changes += 1
        return None

    def _put_run(self, run: FlowRunRecord) -> None:
        self._runs[run.id] = run
        if run.state in TERMINAL and self._exports.get(run.id, ()) is not None:
            self._unshipped[run.id] = None

    async def claim_span_exports(
        self, holder: str, *, now: float, lease: float, limit: int, since: float | None = None
    ) -> list[FlowRunRecord]:
        exports = self._exports
        ended = sorted((self._runs[i] for i in self._unshipped), key=lambda r: r.created)
        out: list[FlowRunRecord] = []
        for run in ended:
            if since is not None and run.created < since:
                exports[run.id] = None
                del self._unshipped[run.id]
                continue
            claim = exports.get(run.id)
            if claim is not None and claim[1] > now:
                continue
            if len(out) < limit:
                exports[run.id] = (holder, now + lease)
                out.append(_copy(run))
        return out

    async def end_span_exports(self, run_ids: Sequence[str], holder: str, *, shipped: bool) -> None:
        for run_id in run_ids:
            claim = self._exports.get(run_id)
            if shipped:
                self._exports[run_id] = None
                self._unshipped.pop(run_id, None)
            elif claim is not None and claim[0] == holder:
                del self._exports[run_id]

    async def list_spans(self, trace_id: str) -> list[SpanRecord]:
        spans = [_copy_span(s) for (t, _), s in self._spans.items() if t == trace_id]
        return sorted(spans, key=lambda s: s.start)

    async def prune_spans(
        self, *, before: float | None = None, keep_runs: int | None = None
    ) -> int:
        keep: set[str] | None = None
        if keep_runs is not None:
            tops = sorted(
                (r for r in self._runs.values() if r.parent_run_id is None and r.trace_id),
                key=lambda r: r.created,
                reverse=True,
            )
            keep = {r.trace_id for r in tops[:keep_runs] if r.trace_id}
        if before is None and keep is None:
            return 0
        doomed = [
            key
            for key, s in self._spans.items()
            if (before is None or s.start < before * 1e9)
            and (keep is None or s.trace_id not in keep)
        ]
        for key in doomed:
            del self._spans[key]
        self._changes += 1
        return len(doomed)

    async def list_logs(
        self,
        run_id: str,
        *,
        seq: int | None = None,
        task: str | None = None,
        min_level: int | None = None,
        after: int | None = None,
        limit: int | None = None,
    ) -> list[LogRecord]:
        if limit is not None and limit < 1:
            raise ConfigurationError(f"`limit` must be >= 1, got {limit}")
        lines = self._logs.get(run_id, [])
        if after is not None:  # ids grow along the list: start after the cursor
            lines = lines[bisect.bisect_right(lines, after, key=lambda line: line.id or 0) :]
        found = []
        for line in lines:
            if (
                (seq is None or line.seq == seq)
                and (task is None or line.task == task)
                and (min_level is None or line.level >= min_level)
            ):
                found.append(msgspec.structs.replace(line))
                if limit is not None and len(found) >= limit:
                    break
        return found

    async def lease_slots(
        self,
        name: str,
        capacity: int,
        holder: str,
        waiter_id: str,
        want: int,
        since: float,
        now: float,
        expires: float,
    ) -> tuple[list[str], int]:
        leases = self._leases
        for key in [k for k, v in leases.items() if v[0] == name and v[4] <= now]:
            del leases[key]
        mine = [(key, row) for key, row in leases.items() if row[0] == name]
        held = sum(1 for _, row in mine if not row[5])
        ahead = sum(
            row[5]
            for key, row in mine
            if row[5] and key != waiter_id and (row[6], key) < (since, waiter_id)
        )
        others = sum(row[5] for _, row in mine if row[5] and row[1] != holder)
        grant = max(0, min(want, capacity - held - ahead))
        self._changes += 1
        granted = [uuid.uuid4().hex for _ in range(grant)]
        for lease in granted:
            leases[lease] = (name, holder, "", 0, expires, 0, since)
        if want > grant:
            leases[waiter_id] = (name, holder, "", 0, expires, want - grant, since)
        else:
            leases.pop(waiter_id, None)
        return granted, others

    async def release_lease(self, lease_id: str) -> None:
        self._changes += 1
        self._leases.pop(lease_id, None)

    async def renew_leases(self, holder: str, expires: float) -> None:
        self._changes += 1
        for key, (name, who, host, pid, _, waiting, since) in list(self._leases.items()):
            if who == holder:
                self._leases[key] = (name, who, host, pid, expires, waiting, since)

    async def list_leases(self) -> list[tuple[str, str, str, int, float, int]]:
        return sorted(row[:6] for row in self._leases.values())

    async def list_rates(self) -> list[tuple[str, float]]:
        return sorted(self._rates.items())

    async def reserve_rate(self, name: str, interval: float, tolerance: float, now: float) -> float:
        tat = max(self._rates.get(name, now), now)
        self._changes += 1
        self._rates[name] = tat + interval
        return max(now, tat - tolerance)

    async def get_cache(self, key: str) -> CacheEntry | None:
        return self.get_cache_nowait(key)

    async def get_cache_many(self, keys: Sequence[str]) -> dict[str, CacheEntry]:
        found: dict[str, CacheEntry] = {}
        for key in keys:
            entry = self._cache.get(key)
            if entry is not None:
                found[key] = msgspec.structs.replace(entry)
        return found

    def get_cache_nowait(self, key: str) -> CacheEntry | None:
        entry = self._cache.get(key)
        return None if entry is None else msgspec.structs.replace(entry)

    async def list_cache(self, *, task_name: str | None = None) -> list[CacheEntry]:
        entries = [e for e in self._cache.values() if task_name in (None, e.task_name)]
        entries.sort(key=lambda e: e.created, reverse=True)
        return [msgspec.structs.replace(e) for e in entries]

    async def delete_cache(self, keys: Sequence[str]) -> None:
        self._changes += 1
        for key in keys:
            self._cache.pop(key, None)

    async def result_refs(self) -> set[str]:
        refs = self._kept_refs()
        for tasks in self._tasks.values():
            refs.update(t.result_ref for t in tasks.values() if t.result_ref)
        return refs

    def _kept_refs(self) -> set[str]:
        """The result refs held by cache entries and asset materialisations."""
        refs = {e.result_ref for e in self._cache.values() if e.result_ref}
        for history in self._asset_history.values():
            refs.update(m.value_ref for m in history if m.value_ref)
        return refs

    # -- retention (store.base.RunRetention) ---------------------------------------------

    async def prune_runs(
        self,
        before: float,
        *,
        keep_runs: int | None = None,
        chunk: int = PRUNE_CHUNK,
        dry_run: bool = False,
    ) -> PruneCount:
        """The whole prune at once (no await: atomic, as every call of this store is)."""
        check_prune(before, keep_runs, chunk)
        runs = self._runs
        tops = sorted(
            (r for r in runs.values() if r.parent_run_id is None), key=lambda r: (r.created, r.id)
        )
        if keep_runs:
            tops = tops[:-keep_runs]
        resumed = {
            r.resumed_from for r in runs.values() if r.state in _UNFINISHED and r.resumed_from
        }
        doomed = [
            r.id
            for r in tops
            if r.state in TERMINAL
            and r.id not in resumed
            and ended_at(r.ended, r.heartbeat, r.started, r.created) < before
        ]
        kids: dict[str, list[str]] = {}
        for r in runs.values():
            if r.parent_run_id is not None:
                kids.setdefault(r.parent_run_id, []).append(r.id)
        tree: set[str] = set()
        queue = deque(doomed)
        while queue:
            run_id = queue.popleft()
            if run_id not in tree:
                tree.add(run_id)
                queue.extend(kids.get(run_id, ()))
        traces = {runs[i].trace_id for i in tree if runs[i].trace_id}
        shared = {r.trace_id for r in runs.values() if r.trace_id in traces and r.id not in tree}
        # A run that joined a trace it did not start shares it with its maker.
        shared.update(runs[i].trace_id for i in doomed if runs[i].parent_span_id is not None)
        spans = [
            key
            for key, span in self._spans.items()
            if span.trace_id in traces and (span.trace_id not in shared or span.run_id in tree)
        ]
        count = PruneCount(
            len(tree),
            sum(len(self._tasks.get(i, ())) for i in tree),
            sum(len(self._logs.get(i, ())) for i in tree),
            len(spans),
        )
        if dry_run:
            refs = Counter(
                t.result_ref for i in tree for t in self._tasks.get(i, {}).values() if t.result_ref
            )
            holders = Counter(
                ref
                for tasks in self._tasks.values()
                for t in tasks.values()
                if (ref := t.result_ref) is not None and ref in refs
            )
            count.blobs = freed_results(refs, holders, self._kept_refs())
            return count
        for run_id in tree:
            del runs[run_id]
            self._tasks.pop(run_id, None)
            self._logs.pop(run_id, None)
            self._exports.pop(run_id, None)
            self._unshipped.pop(run_id, None)
            self._once.pop(("crashed-hooks", run_id), None)  # see serve.crashes.CLAIM_KIND
        for key in spans:
            del self._spans[key]
        for trigger_id in [t.id for t in self._triggers.values() if t.run_id in tree]:
            del self._triggers[trigger_id]
        self._changes += 1
        return count

    async def prune_logs(
        self, before: float, *, chunk: int = LOG_CHUNK, dry_run: bool = False
    ) -> int:
        check_prune(before, None, chunk)
        deleted = 0
        for run_id, lines in list(self._logs.items()):
            kept = [line for line in lines if line.time >= before]
            deleted += len(lines) - len(kept)
            if not dry_run:
                self._logs[run_id] = kept
        if deleted and not dry_run:
            self._changes += 1
        return deleted

    # -- serving (flowcore serve) ----------------------------------------------------------

    async def claim_slots(self, claims: Sequence[SlotClaim], now: float) -> list[bool]:
        got: list[bool] = []
        for claim in claims:
            key = (claim.flow, claim.key, claim.slot)
            run = claim.run
            if key in self._slots or (run is not None and run.id in self._runs):
                got.append(False)
                continue
            self._slots[key] = (None if run is None else run.id, claim.skipped, now)
            if run is not None:
                self._put_run(_copy(run))
            state = self._schedules.get((claim.flow, claim.key))
            if state is None:
                self._schedules[(claim.flow, claim.key)] = ScheduleState(
                    claim.flow, claim.key, cursor=claim.slot, updated=now
                )
            elif state.cursor is None or claim.slot > state.cursor:
                state.cursor = claim.slot
            got.append(True)
        self._changes += 1
        return got

    async def list_slots(
        self, flow: str, key: str | None = None, *, limit: int = 100
    ) -> list[SlotClaim]:
        if limit < 1:
            raise ConfigurationError(f"`limit` must be >= 1, got {limit}")
        found = [
            SlotClaim(f, k, slot, skipped=skipped, claimed=claimed)
            for (f, k, slot), (_, skipped, claimed) in self._slots.items()
            if f == flow and key in (None, k)
        ]
        found.sort(key=lambda c: (c.slot, c.key), reverse=True)
        return found[:limit]

    async def slot_run_ids(self, flow: str, key: str, slots: Sequence[float]) -> list[str | None]:
        return [self._slots.get((flow, key, slot), (None,))[0] for slot in slots]

    async def put_schedules(self, states: Sequence[ScheduleState]) -> list[ScheduleState]:
        stored: list[ScheduleState] = []
        for given in states:
            old = self._schedules.get((given.flow, given.key))
            new = msgspec.structs.replace(given)
            if old is not None:
                new.cursor, new.paused = old.cursor, old.paused
            self._schedules[(given.flow, given.key)] = new
            stored.append(msgspec.structs.replace(new))
        self._changes += 1
        return stored

    async def list_schedules(self, *, flow: str | None = None) -> list[ScheduleState]:
        return [
            msgspec.structs.replace(state)
            for (f, _), state in sorted(self._schedules.items())
            if flow in (None, f)
        ]

    async def set_paused(self, flow: str, key: str | None, paused: bool) -> int:
        found = [
            state for (f, k), state in self._schedules.items() if f == flow and key in (None, k)
        ]
        for state in found:
            state.paused = paused
        self._changes += 1
        return len(found)

    async def active_runs(self, name: str, launched_by: str | None = None) -> list[FlowRunRecord]:
        runs = [
            r
            for r in self._runs.values()
            if r.name == name
            and r.parent_run_id is None
            and r.state in _UNFINISHED
            and launched_by in (None, r.launched_by)
        ]
        runs.sort(key=lambda r: (r.created, r.id))
        return [_copy(r) for r in runs]

    async def enqueue_trigger(self, trigger: Trigger) -> None:
        if trigger.id in self._triggers:
            raise ConfigurationError(
                f"enqueue_trigger: a trigger with id {trigger.id!r} exists already; "
                "give each trigger a new id"
            )
        self._triggers[trigger.id] = msgspec.structs.replace(
            trigger, claimed_by=None, claimed=None, run_id=None
        )
        self._changes += 1

    async def claim_triggers(
        self,
        flows: Sequence[str],
        holder: str,
        now: float,
        make_run: Callable[[Trigger], FlowRunRecord],
        *,
        limit: int = 100,
    ) -> list[Trigger]:
        if limit < 1:
            raise ConfigurationError(f"`limit` must be >= 1, got {limit}")
        wanted = set(flows)
        pending = sorted(
            (t for t in self._triggers.values() if t.claimed_by is None and t.flow in wanted),
            key=lambda t: (t.created, t.id),
        )[:limit]
        runs = [make_run(msgspec.structs.replace(t)) for t in pending]
        _refuse_taken_ids(runs, self._runs)  # before anything is written: all or nothing
        claimed: list[Trigger] = []
        for trigger, run in zip(pending, runs, strict=True):
            self._put_run(_copy(run))
            trigger.claimed_by, trigger.claimed, trigger.run_id = holder, now, run.id
            claimed.append(msgspec.structs.replace(trigger))
        self._changes += 1
        return claimed

    async def get_trigger(self, trigger_id: str) -> Trigger | None:
        trigger = self._triggers.get(trigger_id)
        return None if trigger is None else msgspec.structs.replace(trigger)

    async def list_triggers(
        self, *, flow: str | None = None, pending: bool = False, limit: int = 100
    ) -> list[Trigger]:
        if limit < 1:
            raise ConfigurationError(f"`limit` must be >= 1, got {limit}")
        found = [
            t
            for t in self._triggers.values()
            if flow in (None, t.flow) and not (pending and t.claimed_by is not None)
        ]
        found.sort(key=lambda t: (t.created, t.id), reverse=True)
        return [msgspec.structs.replace(t) for t in found[:limit]]

    async def put_served(self, served: Sequence[ServedFlow]) -> None:
        for row in served:
            self._served[(row.flow, row.holder)] = _copy_served(row)
        self._changes += 1

    async def beat_served(self, holder: str, now: float) -> None:
        for (_, who), row in self._served.items():
            if who == holder:
                row.heartbeat = now
        self._changes += 1

    async def remove_served(self, holder: str) -> None:
        for key in [k for k in self._served if k[1] == holder]:
            del self._served[key]
        self._changes += 1

    async def list_served(self) -> list[ServedFlow]:
        rows = sorted(self._served.values(), key=lambda r: (r.flow, r.started, r.holder))
        return [_copy_served(r) for r in rows]

    async def claim_once(
        self, kind: str, keys: Sequence[str], holder: str, now: float
    ) -> list[str]:
        claimed: list[str] = []
        for key in keys:
            if (kind, key) not in self._once:
                self._once[(kind, key)] = (holder, now)
                claimed.append(key)
        self._changes += 1
        return claimed

    async def changes(self) -> int:
        """A counter bumped by every change of any kind through this store (its only
        handle): it differs after any write, claim, enqueue or put, and stays the same
        while nothing is written."""
        return self._changes


#: The states of a run that is not finished: what ``active_runs`` counts.
_UNFINISHED = frozenset({State.PENDING, State.RUNNING, State.RETRYING})


def _refuse_taken_ids(runs: Sequence[FlowRunRecord], stored: dict[str, FlowRunRecord]) -> None:
    """A claim's run is a new row: an id already stored (or given twice) is a caller's bug."""
    seen: set[str] = set()
    for run in runs:
        if run.id in stored or run.id in seen:
            raise ConfigurationError(
                f"claim_triggers: make_run gave run id {run.id!r}, which is taken; "
                "make_run must give each run a new id"
            )
        seen.add(run.id)


def _copy_served(row: ServedFlow) -> ServedFlow:
    return msgspec.structs.replace(row, schedules=list(row.schedules))


def _claim_holder(
    runs: Iterable[FlowRunRecord], of: str, name: str, force: bool
) -> FlowRunRecord | None:
    """The run holding the claim on resuming ``of`` (see ``RunStore.claim_resume``): an
    unfinished run re-driving it, else (without ``force``) the newest that completed."""
    by_source: dict[str, list[FlowRunRecord]] = {}
    for r in runs:
        if r.resumed_from is not None and r.name == name:
            by_source.setdefault(r.resumed_from, []).append(r)
    chain: list[FlowRunRecord] = []
    seen = {of}
    frontier = [of]
    while frontier:
        found = [r for source in frontier for r in by_source.get(source, ()) if r.id not in seen]
        seen.update(r.id for r in found)
        chain.extend(found)
        frontier = [r.id for r in found]
    unfinished = [r for r in chain if r.state not in TERMINAL]
    if unfinished:
        return max(unfinished, key=lambda r: r.created)
    completed = [r for r in chain if r.state is State.COMPLETED]
    if completed and not force:
        return max(completed, key=lambda r: r.created)
    return None


_span_enc = msgspec.msgpack.Encoder()
_span_dec = msgspec.msgpack.Decoder(SpanRecord)


def _copy_span(span: SpanRecord) -> SpanRecord:
    """A deep copy: a span's attributes, events and links are containers of their own."""
    return _span_dec.decode(_span_enc.encode(span))


def _copy(record: _R) -> _R:
    """A copy a reader may change without changing the store (as with a real database)."""
    copy = msgspec.structs.replace(record, history=list(record.history))
    if isinstance(copy, TaskRunRecord):
        if copy.upstream is not None:
            copy.upstream = list(copy.upstream)
        if copy.tags is not None:
            copy.tags = list(copy.tags)
    return copy


_T = TypeVar("_T")


def _clone(record: _T) -> _T:
    """A deep copy of a record (a msgpack round trip): the store never shares objects."""
    if record is None:
        return record
    return msgspec.msgpack.decode(msgspec.msgpack.encode(record), type=type(record))
