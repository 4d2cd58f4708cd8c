"""The server: fires schedule slots and triggered runs of its flows, and marks crashes.

How a slot is fired exactly once, without a gap, by any number of servers
------------------------------------------------------------------------
Each wake, a server reads every schedule's stored ``cursor`` (the last slot
claimed, by anyone) and asks :func:`flowcore.schedules.due_slots` what is due after it,
the catch-up policy applied. It claims what it fires in **one** ``claim_slots`` call:
a slot is a unique key in the store, and its run row is inserted in the same
transaction, so of several servers one claims it and the others get ``False`` (and
move on: the cursor moved). The cursor only moves by claims, and a server claims a
schedule's due slots oldest first, so while one server is up no slot is passed over
without a claim: it was fired, or claimed *skipped* with the reason (a catch-up
policy, the overlap policy), which ``flowcore flows ls`` and the store show. A server
killed after a claim leaves a Running run that crash detection marks Crashed.

When a slot waits
-----------------
Nothing is claimed that this process cannot start now: at most ``max_runs`` runs
at once. A due slot beyond that (or one waiting for ``overlap="queue"``) stays
unclaimed, so another server may fire it; this one looks again when one of its runs
ends. Waiting costs no memory: the slot is the schedule's cursor, and when it fires
later the catch-up policy decides what of the backlog runs (``"latest"``: the newest
slot only; ``"all"``: at most ``max_catchup``). Triggers wait in the store likewise.

What it polls
-------------
``store.changes()`` every :data:`POLL` seconds (a cheap token that moves when another
process commits: a trigger, a pause, another server's claim) wakes it early; the
registry heartbeat, the stored next fire times and crash marking go every
:data:`BEAT` seconds.

Retention
---------
With ``FLOWCORE_RUN_RETENTION_DAYS`` (``flowcore serve --run-retention-days``), a server
prunes the runs that ended more than that many days ago (with their subflows, task
runs, logs, spans and the result blobs nothing else uses) once when it starts, then
every :data:`RETENTION_EVERY` seconds, in chunks that leave the store to its runs in
between (``store.base.RunRetention``), and logs what it deleted. Several servers on one
store each prune: a run is deleted once, whoever gets to it.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final

import anyio
import anyio.abc
import anyio.lowlevel
import msgspec

from .. import _validate
from ..assets import AssetGraph, materialize_async
from ..assets.marks import sync_definitions
from ..engine.core import Engine
from ..engine.hooks import run_hooks
from ..errors import ConfigurationError, ParameterError
from ..flow import Flow
from ..hooks import HOOK_TIMEOUT, HookEvent
from ..ids import HOST, error_message, error_name
from ..records import FlowRunRecord, Launch, ScheduleState, SlotClaim, Trigger, transition
from ..schedules import Schedule, due_slots
from ..states import State
from ..store.base import PruneCount, RunRetention, prune_runs_and_results
from .crashes import CrashWatch
from .launches import claimed_run, launch_of, schedule_by, slot_launch, trigger_by
from .logs import log, text, when
from .reactions import Reaction, Reactor
from .registry import schedule_state, served_row

__all__ = ["BEAT", "POLL", "RETENTION_EVERY", "RETENTION_VARIABLE", "Server", "retention_days"]

#: Seconds between two looks at ``store.changes()``.
POLL: Final = 0.15
#: Seconds between registry heartbeats, next-fire updates and crash marking.
BEAT: Final = 5.0
#: The longest a server sleeps without looking at the store (a clock that jumped).
_MAX_SLEEP: Final = 5.0
#: Seconds before a wake that failed (a store error) is tried again.
_RETRY: Final = 1.0
#: Seconds between two prunes of old runs (with a retention set).
RETENTION_EVERY: Final = 3600.0
#: The variable that sets the retention of runs, in days.
RETENTION_VARIABLE: Final = "FLOWCORE_RUN_RETENTION_DAYS"


def retention_days(given: float | None) -> float | None:
    """The retention of runs in days: ``given``, else ``$FLOWCORE_RUN_RETENTION_DAYS`` (unset
    or empty: none). Anything but a finite number above 0 is a ``ConfigurationError``."""
    if given is not None:
        if not _validate.is_number(given) or not given > 0:
            raise ConfigurationError(
                "`run_retention_days` must be a number of days above 0 (0.5 is 12 hours), "
                f"got {given!r}"
            )
        return float(given)
    raw = os.environ.get(RETENTION_VARIABLE, "").strip()
    if not raw:
        return None
    try:
        days = float(raw)
    except ValueError:
        days = math.nan
    if not (math.isfinite(days) and days > 0):
        raise ConfigurationError(
            f"{RETENTION_VARIABLE} must be a number of days above 0 (0.5 is 12 hours), got "
            f"{raw!r}; unset it to keep runs for ever"
        )
    return days


@dataclass
class _Entry:
    """One schedule of one served flow, and what this server knows of its stored state."""

    flow: Flow[Any, Any]
    schedule: Schedule
    cursor: float | None = None
    paused: bool = False
    #: When it fires next, as last computed, and as last stored (``put_schedules``).
    next_fire: float | None = None
    stored_next_fire: float | None = None
    #: The cursor for which the "catch-up capped" warning was given.
    warned: float | None = None

    @property
    def by(self) -> str:
        return schedule_by(self.schedule)


@dataclass
class _Active:
    """A run this server drives."""

    scope: anyio.CancelScope
    flow: str
    by: str
    started: float
    cancelling: bool = False


@dataclass
class _Plan:
    """What one wake claims, and what it starts when claimed."""

    claims: list[SlotClaim] = field(default_factory=list)
    entries: list[_Entry] = field(default_factory=list)


class Server:
    """Serves ``flows`` on an open ``engine``: ``async with Server(...) as server:``.

    Entering registers the flows and their schedules; :meth:`serve_forever` fires
    slots and triggers until :meth:`stop`; :meth:`tick` is one wake, for tests and
    benchmarks on a fake clock. Leaving stops firing, lets runs in flight finish for
    ``grace`` seconds, cancels the rest (recorded Cancelled) and unregisters.
    """

    def __init__(
        self,
        flows: Sequence[Flow[Any, Any]],
        *,
        engine: Engine,
        max_runs: int = 100,
        grace: float = 30.0,
        assets: AssetGraph | None = None,
        run_retention_days: float | None = None,
    ) -> None:
        self.flows = {f.name: f for f in flows}
        #: Assets served: those with an ``automation=`` policy are materialised by it.
        self.assets = assets
        self.reactor: Reactor | None = None
        self.engine = engine
        self.store = engine.store
        self.clock = engine.clock
        self.max_runs = max_runs
        self.grace = grace
        #: This process's name in the store's registry and claims.
        self.holder = f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.entries = [_Entry(f, s) for f in flows for s in f.schedules]
        self.crashes = CrashWatch(flows, self.holder)
        #: Runs in flight, by run id.
        self.running: dict[str, _Active] = {}
        self.started = 0.0
        self._tg: anyio.abc.TaskGroup | None = None
        self._wake = anyio.Event()
        self._changed = anyio.Event()
        self._stopping = False
        self._force = anyio.Event()
        self._token: int | None = None
        self._triggers_due = True
        self._last_trigger_look = -math.inf
        #: Runs that ended more than this many days ago are pruned (``None``: kept).
        self.run_retention_days = retention_days(run_retention_days)
        if self.run_retention_days is not None and not isinstance(self.store, RunRetention):
            raise ConfigurationError(
                f"the store {self.store.location} cannot prune runs ({type(self.store).__name__}"
                f" has no prune_runs), so a retention of {self.run_retention_days:g} days cannot "
                f"be kept; unset {RETENTION_VARIABLE}, or upgrade the store's plugin"
            )
        #: Prunes done by the periodic retention, and an event set after each.
        self.retention_passes = 0
        self._retained = anyio.Event()

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Server:
        now = self.started = self.clock.time()
        states = []
        for entry in self.entries:
            schedule = entry.schedule
            entry.next_fire = None
            if schedule.active:
                first = schedule.next_after(_dt(now))
                entry.next_fire = schedule.fire_at(first, flow=entry.flow.name).timestamp()
            states.append(schedule_state(entry.flow, schedule, entry.next_fire, now))
        if states:
            self._apply(await self.store.put_schedules(states))
        for entry in self.entries:
            entry.stored_next_fire = entry.next_fire
        await self.store.put_served(
            [served_row(f, self.holder, now, now) for f in self.flows.values()]
        )
        if self.assets is not None:
            # Stored with their descriptions: readers without the code judge them too.
            await sync_definitions(self.assets, self.store, now)
            reactor = Reactor(self.assets, self.store, self.holder, now)
            self.reactor = reactor if reactor else None
        self._token = await self.store.changes()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        names = ", ".join(text(name) for name in self.flows)
        keys = sum(1 for e in self.entries if e.schedule.active)
        log.info(
            "serving %d flow%s (%s), %d schedule%s, at most %d runs at once, as %s",
            len(self.flows),
            "" if len(self.flows) == 1 else "s",
            names,
            keys,
            "" if keys == 1 else "s",
            self.max_runs,
            self.holder,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping = True
        tg, self._tg = self._tg, None
        try:
            with anyio.CancelScope(shield=True):
                await self._drain()
        finally:
            if tg is not None:
                tg.cancel_scope.cancel()
                await tg.__aexit__(None, None, None)
            with anyio.CancelScope(shield=True):
                try:
                    await self.store.remove_served(self.holder)
                except Exception as error:  # the store is gone: nothing left to unregister
                    log.warning("could not unregister the served flows: %s", text(error))
        log.info("stopped")

    def stop(self, *, force: bool = False) -> None:
        """Stop firing and claiming; with ``force`` (or when already stopping), cancel
        the runs in flight at once instead of waiting out the grace period."""
        if self._stopping or force:
            self._force.set()
        self._stopping = True
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def _drain(self) -> None:
        """Let runs in flight finish for ``grace`` seconds, then cancel them."""
        if self.running and not self._force.is_set():
            log.info(
                "stopping: waiting up to %gs for %d run%s in flight",
                self.grace,
                len(self.running),
                "" if len(self.running) == 1 else "s",
            )
            with anyio.move_on_after(self.grace):
                async with anyio.create_task_group() as tg:

                    async def forced() -> None:
                        await self._force.wait()
                        tg.cancel_scope.cancel()

                    tg.start_soon(forced)
                    await self.wait_idle()
                    tg.cancel_scope.cancel()
        if self.running:
            log.warning(
                "cancelling %d run%s still in flight",
                len(self.running),
                "" if len(self.running) == 1 else "s",
            )
            for active in self.running.values():
                active.scope.cancel()
            await self.wait_idle()

    async def wait_idle(self) -> None:
        """Wait until no run of this server is in flight."""
        while self.running:
            await self._changed.wait()

    def _notify(self) -> None:
        """A run ended: wake the loop (a queued slot, a waiting trigger) and waiters."""
        self._changed.set()
        self._changed = anyio.Event()
        self._triggers_due = True
        self._wake.set()

    # -- the loops ----------------------------------------------------------------------------

    async def serve_forever(self) -> None:
        """Fire slots and triggers until :meth:`stop`, polling the store for changes
        and beating the registry's heartbeat."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch)
            tg.start_soon(self._beat)
            if self.run_retention_days is not None:
                tg.start_soon(self._retain)
            try:
                while True:
                    try:
                        wake_at = await self.tick()
                    except Exception as error:  # a locked or unavailable store: try again
                        log.error(
                            "could not fire or claim (retrying in %gs): %s: %s",
                            _RETRY,
                            type(error).__name__,
                            text(error),
                        )
                        wake_at = self.clock.time() + _RETRY
                    if self._stopping:
                        break
                    await self._sleep(min(wake_at - self.clock.time(), _MAX_SLEEP))
            finally:
                tg.cancel_scope.cancel()

    async def _sleep(self, delay: float) -> None:
        """Sleep ``delay`` seconds on the engine's clock, or until woken."""
        if delay <= 0 or self._wake.is_set():
            return
        wake = self._wake
        async with anyio.create_task_group() as tg:

            async def sleeper() -> None:
                await self.clock.sleep(delay)
                tg.cancel_scope.cancel()

            tg.start_soon(sleeper)
            await wake.wait()
            tg.cancel_scope.cancel()

    async def _watch(self) -> None:
        """Wake the loop when another process commits (a trigger, a pause, a claim)."""
        while True:
            await anyio.sleep(POLL)
            try:
                token = await self.store.changes()
            except Exception as error:
                log.warning("could not poll the store: %s", text(error))
                continue
            if token != self._token:
                self._wake.set()

    async def _beat(self) -> None:
        """Every :data:`BEAT` seconds: the registry's heartbeat, the next fire times that
        changed, and crashed runs."""
        while True:
            await anyio.sleep(BEAT)
            try:
                await self.beat()
            except Exception as error:  # a locked or unavailable store: next time
                log.warning("heartbeat failed: %s: %s", type(error).__name__, text(error))

    async def _retain(self) -> None:
        """Prune old runs now, then every :data:`RETENTION_EVERY` seconds."""
        while True:
            try:
                await self.retain()
            except Exception as error:  # a locked or unavailable store: next time
                log.warning(
                    "retention: could not prune runs (next try in %gs): %s: %s",
                    RETENTION_EVERY,
                    type(error).__name__,
                    text(error),
                )
            await anyio.sleep(RETENTION_EVERY)

    async def retain(self) -> PruneCount:
        """One prune of the runs that ended more than ``run_retention_days`` days ago (see
        the module docstring); logged, and returned."""
        days = self.run_retention_days
        if days is None:
            raise ConfigurationError("this server keeps runs for ever (no run_retention_days)")
        try:
            count = await prune_runs_and_results(self.store, self.clock.time() - days * 86400)
        finally:
            self.retention_passes += 1
            self._retained.set()
            self._retained = anyio.Event()
        log.info(
            "retention: deleted %d run%s that ended more than %g days ago, with %d task runs, "
            "%d log lines, %d spans and %d result files",
            count.runs,
            "" if count.runs == 1 else "s",
            days,
            count.task_runs,
            count.logs,
            count.spans,
            count.blobs,
        )
        return count

    async def wait_retention(self, passes: int = 1) -> None:
        """Wait until the periodic retention has pruned ``passes`` times (done or failed)."""
        while self.retention_passes < passes:
            await self._retained.wait()

    async def beat(self) -> None:
        """One heartbeat (see :meth:`_beat`)."""
        now = self.clock.time()
        await self.store.beat_served(self.holder, now)
        changed = [e for e in self.entries if e.next_fire != e.stored_next_fire]
        if changed:
            states = [schedule_state(e.flow, e.schedule, e.next_fire, now) for e in changed]
            self._apply(await self.store.put_schedules(states))
            for e in changed:
                e.stored_next_fire = e.next_fire
        await self.crashes.check(self.engine, now)

    def _apply(self, states: Sequence[ScheduleState]) -> None:
        """Take the stored cursors and paused flags of these schedules."""
        by_key = {(s.flow, s.key): s for s in states}
        for entry in self.entries:
            state = by_key.get((entry.flow.name, entry.schedule.key))
            if state is None:
                continue
            if state.cursor is not None and (entry.cursor is None or state.cursor > entry.cursor):
                entry.cursor = state.cursor
            if state.paused != entry.paused:
                log.info(
                    "schedule %s of flow %s %s",
                    text(entry.schedule.key),
                    text(entry.flow.name),
                    "paused" if state.paused else "resumed",
                )
            entry.paused = state.paused

    # -- one wake -------------------------------------------------------------------------------

    async def tick(self) -> float:
        """One wake: read what changed, claim the due slots and pending triggers this
        process can start, start them; returns when to wake next (wall-clock seconds)."""
        self._wake = anyio.Event()
        now = self.clock.time()
        token = await self.store.changes()
        changed = token != self._token
        self._token = token
        if changed and self.entries:
            self._apply(await self.store.list_schedules())
        wake_at = now + _MAX_SLEEP
        if self._stopping:
            return wake_at
        free = self.max_runs - len(self.running)
        plan = _Plan()
        active: dict[str, list[FlowRunRecord]] = {}
        for entry in self.entries:
            if not entry.schedule.active or entry.paused:
                continue
            free, next_at = await self._plan(entry, now, free, plan, active)
            wake_at = min(wake_at, next_at)
        if plan.claims:
            await self._claim(plan, now)
        if free > 0 and (changed or self._triggers_due or now - self._last_trigger_look >= BEAT):
            await self._claim_triggers(now, free)
        if self.reactor is not None:
            free = self.max_runs - len(self.running)
            reactions, react_at = await self.reactor.evaluate(now, changed, free)
            for reaction in reactions:
                self._react(reaction, now)
            wake_at = min(wake_at, react_at)
        return wake_at

    async def _plan(
        self,
        entry: _Entry,
        now: float,
        free: int,
        plan: _Plan,
        active: dict[str, list[FlowRunRecord]],
    ) -> tuple[int, float]:
        """Add ``entry``'s due slots to ``plan`` (at most ``free`` to fire); returns what
        is left of ``free`` and when the schedule fires next."""
        schedule, flow = entry.schedule, entry.flow
        cursor = None if entry.cursor is None else _dt(entry.cursor)
        due = due_slots(schedule, cursor, _dt(now), flow=flow.name)
        entry.next_fire = due.wake_at.timestamp()
        if due.capped and entry.warned != entry.cursor:
            entry.warned = entry.cursor
            log.warning(
                "schedule %s of flow %s: catch-up capped at max_catchup=%d slots; the older "
                "missed slots are skipped",
                text(schedule.key),
                text(flow.name),
                schedule.max_catchup,
            )
        if due.skipped is not None:
            first, last = (t.timestamp() for t in due.skipped)
            why = (
                f"catchup={schedule.catchup!r} capped at max_catchup={schedule.max_catchup}"
                if due.capped
                else f"catchup={schedule.catchup!r}"
            )
            reason = f"{why}: missed slots {when(first)} to {when(last)} skipped"
            for t in dict.fromkeys((first, last)):
                plan.claims.append(SlotClaim(flow.name, schedule.key, t, skipped=reason))
                plan.entries.append(entry)
        starting = 0
        for slot in due.slots:
            slot_time = slot.scheduled_for.timestamp()
            if free <= 0:
                break  # no room in this process: it stays unclaimed, for us later or another
            if schedule.overlap != "allow":
                if flow.name not in active:
                    active[flow.name] = await self.store.active_runs(flow.name)
                mine = [
                    r
                    for r in active[flow.name]
                    if r.launched_by == entry.by
                    and not (r.id in self.running and self.running[r.id].cancelling)
                ]
                count = len(mine) + starting
                if count >= schedule.max_active_runs and (starting or slot is not due.slots[-1]):
                    # A catch-up backlog: its slots fire in turn as runs end (the overlap
                    # policy is for a slot that comes while an earlier run goes on).
                    break
                if count >= schedule.max_active_runs:
                    ids = ", ".join(r.id[:8] for r in mine)
                    if schedule.overlap == "skip":
                        reason = (
                            f"overlap='skip': {count} run{'s' if count != 1 else ''} of the "
                            f"schedule still active (max_active_runs="
                            f"{schedule.max_active_runs}): {ids or 'starting'}"
                        )
                        plan.claims.append(
                            SlotClaim(flow.name, schedule.key, slot_time, skipped=reason)
                        )
                        plan.entries.append(entry)
                        continue
                    if schedule.overlap == "queue":
                        break  # the slot waits for one of them to end
                    # cancel_previous: cancel the oldest of ours to make room; another
                    # server's runs are that server's to cancel (it fires the slot when
                    # it holds them), so while they run the slot waits.
                    ours = [r for r in mine if r.id in self.running]
                    extra = count - schedule.max_active_runs + 1
                    if len(ours) < extra:
                        break
                    for r in ours[:extra]:
                        previous = self.running[r.id]
                        previous.cancelling = True
                        previous.scope.cancel()
                        log.info(
                            "overlap='cancel_previous': cancelling run %s of flow %s for slot %s",
                            r.id[:8],
                            text(flow.name),
                            when(slot_time),
                        )
            launch = slot_launch(schedule, slot)
            run = claimed_run(flow, schedule.parameters, launch, now)
            plan.claims.append(SlotClaim(flow.name, schedule.key, slot_time, run=run))
            plan.entries.append(entry)
            free -= 1
            starting += 1
        return free, entry.next_fire

    async def _claim(self, plan: _Plan, now: float) -> None:
        """Claim the planned slots in one call; start those claimed here."""
        got = await self.store.claim_slots(plan.claims, now)
        for claim, entry, mine in zip(plan.claims, plan.entries, got, strict=True):
            # Claimed here or elsewhere, the slot is taken: the cursor is past it.
            if entry.cursor is None or claim.slot > entry.cursor:
                entry.cursor = claim.slot
            if not mine:
                continue
            flow = entry.flow
            if claim.run is None:
                log.info(
                    "skipped slot %s of flow %s (schedule %s): %s",
                    when(claim.slot),
                    text(flow.name),
                    text(entry.schedule.key),
                    text(claim.skipped),
                )
                continue
            log.info(
                "fired slot %s of flow %s (schedule %s): run %s",
                when(claim.slot),
                text(flow.name),
                text(entry.schedule.key),
                claim.run.id[:8],
            )
            self._start(flow, entry.schedule.parameters, claim.run, now)

    async def _claim_triggers(self, now: float, free: int) -> None:
        self._triggers_due = False
        self._last_trigger_look = now
        made: dict[str, tuple[FlowRunRecord, Mapping[str, Any] | None, str | None]] = {}

        def make_run(trigger: Trigger) -> FlowRunRecord:
            flow = self.flows[trigger.flow]
            parameters, problem = _trigger_parameters(trigger)
            launch = Launch(by=trigger_by(trigger.id))
            record = claimed_run(flow, parameters or {}, launch, now)
            made[trigger.id] = (record, parameters, problem)
            return record

        triggers = await self.store.claim_triggers(
            list(self.flows), self.holder, now, make_run, limit=free
        )
        if len(triggers) >= free:
            self._triggers_due = True  # more may wait: look again when a run ends
        for trigger in triggers:
            flow = self.flows[trigger.flow]
            record, parameters, problem = made[trigger.id]
            log.info(
                "trigger %s of flow %s (by %s): run %s",
                trigger.id[:8],
                text(flow.name),
                text(trigger.by or "?"),
                record.id[:8],
            )
            if problem is not None or parameters is None:
                self._refuse(record, problem or "no parameters")
                continue
            self._start(flow, parameters, record, now)

    def _refuse(self, record: FlowRunRecord, problem: str) -> None:
        """A trigger whose parameters are not a JSON object: its run is recorded Failed."""
        transition(record, State.FAILED, self.clock.time())
        record.error_type = "flowcore.ParameterError"
        record.error_message = problem
        self.engine.recorder.flow_changed(record)
        log.warning("run %s failed: %s", record.id[:8], text(problem))

    # -- runs ---------------------------------------------------------------------------------

    def _start(
        self,
        flow: Flow[Any, Any],
        parameters: Mapping[str, Any],
        claimed: FlowRunRecord,
        now: float,
    ) -> None:
        tg = self._tg
        if tg is None:
            raise ConfigurationError("the server is not open; use `async with Server(...)`")
        launch = launch_of(claimed)
        scope = anyio.CancelScope()
        self.running[claimed.id] = _Active(scope, flow.name, launch.by, now)
        tg.start_soon(self._drive, flow, dict(parameters), launch, scope, claimed)

    def _react(self, reaction: Reaction, now: float) -> None:
        """Start the materialisation of a reaction this server claimed (or fire an
        overdue period's hooks)."""
        tg = self._tg
        if tg is None:
            raise ConfigurationError("the server is not open; use `async with Server(...)`")
        if reaction.overdue is not None:
            log.info(
                "asset %s: %s: firing its on_overdue hooks",
                text(reaction.key),
                text(reaction.reason),
            )
            tg.start_soon(self._fire_overdue, reaction)
            return
        scope = anyio.CancelScope()
        where = "" if reaction.partition is None else f"/{reaction.partition}"
        active = f"asset:{reaction.key}{where}"
        self.running[active] = _Active(scope, "materialize", f"automation:{reaction.policy}", now)
        log.info(
            "asset %s%s: %s (%s): materialising",
            text(reaction.key),
            text(where),
            text(reaction.reason),
            reaction.policy,
        )
        tg.start_soon(self._materialize, reaction, scope, active)

    async def _fire_overdue(self, reaction: Reaction) -> None:
        """Call the asset's ``on_overdue`` hooks (each within the default hook timeout; a
        failing hook is logged, as in a run)."""
        assert self.assets is not None and reaction.overdue is not None
        definition = self.assets.assets[reaction.key]
        found = await self.store.asset_states([reaction.key])
        state = found[0] if found else None
        run: FlowRunRecord | None = None
        if state is not None and state.last_run_id:
            try:
                run = await self.store.get_run(state.last_run_id)
            except Exception:
                run = None
        if run is None:  # never materialised (or its run pruned): a placeholder
            run = FlowRunRecord("", "materialize", State.PENDING, self.clock.time())
        event = HookEvent(
            "overdue", run, run.state, time=self.clock.time(), asset=dict(reaction.overdue)
        )
        await run_hooks(definition.on_overdue, event, HOOK_TIMEOUT, None, None)

    async def _materialize(self, reaction: Reaction, scope: anyio.CancelScope, active: str) -> None:
        assert self.assets is not None and self.reactor is not None
        outcome, error, run_id = "materialized", "", ""
        try:
            with scope:
                try:
                    result = await materialize_async(
                        [reaction.key],
                        graph=self.assets,
                        engine=self.engine,
                        partition=reaction.partition,
                        only_stale=reaction.only_stale,
                    )
                    run_id = result.run_id
                    bad = [*result.failed, *result.failed_checks, *result.blocked]
                    if bad:
                        outcome, error = "failed", f"run {run_id[:8]}: {bad[0][2]}"
                    elif not result.materialized:
                        outcome = "skipped"
                except Exception as exc:
                    outcome, error = "failed", f"{type(exc).__name__}: {exc}"
            if scope.cancelled_caught:
                outcome, error = "cancelled", "the server stopped"
        finally:
            self.running.pop(active, None)
            self.reactor.ended(reaction, run_id, outcome, self.clock.time(), error)
            self._notify()

    async def _drive(
        self,
        flow: Flow[Any, Any],
        parameters: dict[str, Any],
        launch: Launch,
        scope: anyio.CancelScope,
        claimed: FlowRunRecord,
    ) -> None:
        run_id = claimed.id
        outcome = "Completed"
        failure: BaseException | None = None
        try:
            with scope:
                try:
                    if scope.cancel_called:  # stopped before it started: it never starts
                        await anyio.lowlevel.checkpoint()
                    await flow.call_with(parameters, launch=launch)
                except ParameterError as error:
                    outcome = f"Failed: invalid parameters: {text(error)}"
                except Exception as error:
                    outcome = f"Failed: {type(error).__name__}: {text(error)}"
                    failure = error
            if scope.cancelled_caught:
                outcome = "Cancelled"
            if failure is not None or scope.cancelled_caught:
                with anyio.CancelScope(shield=True):
                    await self._end_unstarted(claimed, failure)
        finally:
            self.running.pop(run_id, None)
            self._notify()
        report = log.warning if outcome != "Completed" else log.info
        report("run %s of flow %s ended %s", run_id[:8], text(flow.name), outcome)

    async def _end_unstarted(self, claimed: FlowRunRecord, error: BaseException | None) -> None:
        """A claimed run that ended before the engine recorded it (cancelled before it
        started, or an error before its first record): its claimed row, still Running,
        is recorded Cancelled or Failed, never left Running. A run the engine recorded
        was committed when it ended (the end of a top-level run is a durability point):
        the store shows it finished, and nothing is written."""
        try:
            stored = await self.store.get_run(claimed.id)
        except Exception:
            stored = claimed
        if stored.state.is_terminal:
            return
        state = State.CANCELLED if error is None else State.FAILED
        transition(stored, state, self.clock.time())
        if error is not None:
            stored.error_type = error_name(error)
            stored.error_message = error_message(error)
        self.engine.recorder.flow_changed(stored)
        await self.engine.recorder.flush()


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _trigger_parameters(trigger: Trigger) -> tuple[dict[str, Any] | None, str | None]:
    """A trigger's parameters, or why they cannot be read (the run is then Failed)."""
    try:
        value = msgspec.json.decode(trigger.parameters)
    except msgspec.DecodeError as error:
        return None, f"trigger {trigger.id}: its parameters are not valid JSON ({error})"
    if not isinstance(value, dict):
        return None, f"trigger {trigger.id}: its parameters are not a JSON object"
    return value, None
