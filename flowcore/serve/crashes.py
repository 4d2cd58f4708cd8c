"""Crashed runs found while serving, and the one call each gets.

A server marks crashed runs every few seconds (:func:`flowcore.store.crash.mark_crashed_runs`),
not only when its engine opens, so a slot's run whose server was killed shows
``Crashed`` within seconds (at once on the same machine, after
:data:`~flowcore.store.crash.STALE_AFTER` without heartbeat elsewhere).

For each crashed run of a flow it serves, exactly one server of however many share
the store calls :func:`on_crashed_found`: the run ids are claimed with
``store.claim_once("crashed-hooks", ids, holder, now)``, once ever. The runs looked
at are those this server marked, and the Crashed runs another reader marked (``flowcore
runs ls``, an engine opening, another server) within :data:`LOOK_BACK`: a crash marked
while no server ran is handled by the next server to start.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from ..engine.core import Engine
from ..engine.hooks import fire_crashed
from ..flow import Flow
from ..records import FlowRunRecord
from ..states import State
from ..store.base import Store
from ..store.crash import mark_crashed_runs
from .logs import log, text, when

__all__ = ["CLAIM_KIND", "LOOK_BACK", "CrashWatch", "on_crashed_found"]

#: The ``claim_once`` kind of the crashed runs whose hooks were handled.
CLAIM_KIND: Final = "crashed-hooks"
#: How far back (seconds) a server looks for Crashed runs that nobody handled yet.
LOOK_BACK: Final = 24 * 3600.0
#: Crashed runs read per look (newest first).
_READ: Final = 500


async def on_crashed_found(flow: Flow[Any, Any], record: FlowRunRecord, engine: Engine) -> None:
    """Called once (by one server of all those sharing the store) for each crashed run of
    ``flow``: ``record`` is the run as marked Crashed, ``engine`` the server's engine.

    Fires the flow's ``on_crashed`` hooks, then its ``on_failure`` hooks (a crash is one
    of the ways a flow fails), with the failure handling of every hook: a hook that
    raises or times out is logged and kept in the run's log, and the run stays Crashed.
    """
    if flow.hooks:
        await fire_crashed(flow, record, engine)


class CrashWatch:
    """Marks crashed runs, and hands each crashed run of a served flow to one server."""

    def __init__(self, flows: Iterable[Flow[Any, Any]], holder: str) -> None:
        self.flows = {f.name: f for f in flows}
        self.holder = holder
        #: Run ids already handed out (here, or claimed by another server): each is
        #: claimed at most once per process, so the claims stay few.
        self.seen: set[str] = set()

    async def check(self, engine: Engine, now: float) -> list[FlowRunRecord]:
        """Mark crashed runs; call :func:`on_crashed_found` for those this server claims
        (returned)."""
        store: Store = engine.store
        marked = await mark_crashed_runs(store, now=now)
        found = {r.id: r for r in marked if r.name in self.flows}
        for run in marked:
            if run.name in self.flows:
                log.warning(
                    "crash found: run %s of flow %s (%s)",
                    run.id[:8],
                    text(run.name),
                    text(run.error_message or "its process stopped"),
                )
        earliest = now - LOOK_BACK
        for run in await store.list_runs(state=State.CRASHED.value, limit=_READ):
            if run.name in self.flows and run.id not in found and (run.ended or 0) >= earliest:
                found[run.id] = run
        fresh = [run_id for run_id in found if run_id not in self.seen]
        if not fresh:
            return []
        claimed = await store.claim_once(CLAIM_KIND, fresh, self.holder, now)
        self.seen.update(fresh)
        handled = []
        for run_id in claimed:
            run = found[run_id]
            flow = self.flows[run.name]
            try:
                await on_crashed_found(flow, run, engine)
            except Exception as exc:
                log.error(
                    "on_crashed_found failed for run %s of flow %s: %s: %s",
                    run.id[:8],
                    text(run.name),
                    type(exc).__name__,
                    text(exc),
                )
            else:
                log.info(
                    "crashed run %s of flow %s (last seen %s) handled",
                    run.id[:8],
                    text(run.name),
                    when(run.ended),
                )
            handled.append(run)
        return handled
