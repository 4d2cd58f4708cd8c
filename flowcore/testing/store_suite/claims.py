"""Cases on resume claims: one resumption of a run at a time, and none after one completed.

``flowcore resume`` claims the run it re-drives with :meth:`RunStore.claim_resume`
before it runs anything, so two resumes of one run started together cannot both
re-drive it, and a run already resumed to completion is not re-run by mistake. The
claim is the new run's own row, so it ends as the run ends: a resumption that
failed or crashed holds no claim.
"""

from __future__ import annotations

from typing import Any

import anyio

from ...records import FlowRunRecord, WriteBatch
from ...states import State
from ...store.base import Store
from .assertions import differs
from .cases import Cases, OpenStore
from .records import flow_run

__all__ = ["CASES"]

CASES = Cases()


def resumption(run_id: str, of: str, created: float = 2000.0, **fields: Any) -> FlowRunRecord:
    """A new run resuming ``of``, as resume claims it: Running, ``resumed_from`` set."""
    fields.setdefault("state", State.RUNNING)
    fields.setdefault("history", [("Running", created, f"resuming run {of}")])
    fields.setdefault("host", "worker-1")
    fields.setdefault("pid", 4242)
    return flow_run(run_id, created, resumed_from=of, started=created, **fields)


async def crashed_run(store: Store, run_id: str = "crashed") -> FlowRunRecord:
    """A run to resume, written as a crash left it."""
    run = flow_run(run_id, state=State.CRASHED)
    await store.write(WriteBatch([run], []))
    return run


@CASES.case("resume: a claim writes the new run as given and returns None")
async def _claim_writes_the_run(store: Store) -> None:
    await crashed_run(store)
    got = await store.claim_resume(resumption("new", "crashed"))
    assert got is None, differs("claim_resume of a run nobody resumed", got, None)
    read = await store.get_run("new")
    assert read == resumption("new", "crashed"), differs(
        "the claimed run read back", read, resumption("new", "crashed")
    )


@CASES.case("resume: a claim while another resumption runs returns it and writes nothing")
async def _claim_while_running(store: Store) -> None:
    await crashed_run(store)
    assert await store.claim_resume(resumption("first", "crashed")) is None
    for force in (False, True):  # force re-runs a completed run, never a running one
        holder = await store.claim_resume(resumption("second", "crashed", 2001.0), force=force)
        assert holder is not None and holder.id == "first", differs(
            f"claim_resume(force={force}) while run 'first' resumes the run",
            holder and holder.id,
            "first",
        )
        assert holder.host == "worker-1" and holder.pid == 4242, differs(
            "the holder's host and pid", (holder.host, holder.pid), ("worker-1", 4242)
        )
    ids = sorted(r.id for r in await store.list_runs())
    assert ids == ["crashed", "first"], differs("runs after a refused claim", ids, "no 'second'")


@CASES.case("resume: a claimed run takes the engine's later writes, and its end frees the claim")
async def _claimed_run_is_written_on(store: Store) -> None:
    await crashed_run(store)
    run = resumption("first", "crashed")
    assert await store.claim_resume(run) is None
    run.heartbeat = 2005.0
    run.task_count = 7
    await store.write(WriteBatch([run], []))
    read = await store.get_run("first")
    assert (read.heartbeat, read.task_count) == (2005.0, 7), differs(
        "heartbeat and task_count after writing the claimed run",
        (read.heartbeat, read.task_count),
        (2005.0, 7),
    )
    run.state = State.FAILED
    run.history.append(("Failed", 2010.0))
    await store.write(WriteBatch([run], []))
    assert (await store.get_run("first")).state is State.FAILED
    got = await store.claim_resume(resumption("second", "crashed", 2020.0))
    assert got is None, differs("a claim after the resumption failed", got, None)
    assert (await store.get_run("second")).state is State.RUNNING


@CASES.case("resume: a completed resumption refuses a claim, unless forced")
async def _completed_refuses(store: Store) -> None:
    await crashed_run(store)
    done = resumption("done", "crashed", 2000.0, state=State.COMPLETED, ended=2001.0)
    older = resumption("older", "crashed", 1500.0, state=State.COMPLETED, ended=1501.0)
    await store.write(WriteBatch([older, done], []))
    holder = await store.claim_resume(resumption("again", "crashed", 3000.0))
    assert holder is not None and holder.id == "done", differs(
        "claim_resume of a run resumed to completion twice", holder and holder.id, "done (newest)"
    )
    assert [r.id for r in await store.list_runs(limit=10) if r.id == "again"] == []
    got = await store.claim_resume(resumption("again", "crashed", 3000.0), force=True)
    assert got is None, differs("claim_resume(force=True) after a completed resumption", got, None)
    assert (await store.get_run("again")).state is State.RUNNING


@CASES.case("resume: resumptions that failed, crashed or were cancelled hold no claim")
async def _ended_hold_nothing(store: Store) -> None:
    await crashed_run(store)
    ended = [
        resumption(f"r-{state.value}", "crashed", 2000.0 + i, state=state, ended=2100.0)
        for i, state in enumerate((State.FAILED, State.CRASHED, State.CANCELLED, State.TIMED_OUT))
    ]
    await store.write(WriteBatch(ended, []))
    got = await store.claim_resume(resumption("new", "crashed", 3000.0))
    assert got is None, differs(
        "claim_resume past resumptions that all ended unfinished", got, None
    )


@CASES.case("resume: a Retrying resumption holds the claim")
async def _retrying_holds(store: Store) -> None:
    await crashed_run(store)
    run = resumption("first", "crashed")
    assert await store.claim_resume(run) is None
    run.state = State.RETRYING
    await store.write(WriteBatch([run], []))
    holder = await store.claim_resume(resumption("second", "crashed", 2001.0))
    assert holder is not None and holder.id == "first", differs(
        "claim_resume while the resumption waits to retry", holder and holder.id, "first"
    )


@CASES.case("resume: a resumption of a resumption holds the claim on the run both re-drive")
async def _chains(store: Store) -> None:
    await crashed_run(store)
    # crashed <- middle (crashed too) <- last (running): resuming 'crashed' again would
    # re-drive what 'last' is re-driving.
    middle = resumption("middle", "crashed", 2000.0, state=State.CRASHED, ended=2001.0)
    await store.write(WriteBatch([middle], []))
    assert await store.claim_resume(resumption("last", "middle", 2100.0)) is None
    holder = await store.claim_resume(resumption("again", "crashed", 2200.0))
    assert holder is not None and holder.id == "last", differs(
        "claim_resume of a run whose resumption is being resumed", holder and holder.id, "last"
    )
    last = await store.get_run("last")
    last.state = State.COMPLETED
    await store.write(WriteBatch([last], []))
    holder = await store.claim_resume(resumption("again", "crashed", 2200.0))
    assert holder is not None and holder.id == "last", differs(
        "claim_resume of a run resumed to completion through a chain", holder and holder.id, "last"
    )
    # Another run's resumptions say nothing about this one.
    await crashed_run(store, "other")
    assert await store.claim_resume(resumption("other-2", "other", 2300.0)) is None


@CASES.handles_case("resume: two handles racing for one claim get exactly one")
async def _race(store: Store, open_store: OpenStore) -> None:
    other = await open_store()
    for round_ in range(20):
        source = f"crashed-{round_:02d}"
        await crashed_run(store, source)
        results: dict[str, FlowRunRecord | None] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(_claim, store, resumption(f"a-{round_:02d}", source), results)
            tg.start_soon(_claim, other, resumption(f"b-{round_:02d}", source), results)
        winners = sorted(run_id for run_id, holder in results.items() if holder is None)
        assert len(winners) == 1, differs(f"claims made in round {round_}", winners, "one")
        losers = [holder.id for holder in results.values() if holder is not None]
        assert losers == winners, differs(
            f"the holder the loser of round {round_} was told of", losers, winners
        )
        for handle in (store, other):
            resumptions = sorted(
                r.id for r in await handle.list_runs(limit=1000) if r.resumed_from == source
            )
            assert resumptions == winners, differs(
                f"resumptions of {source} in the store", resumptions, winners
            )


async def _claim(
    handle: Store, run: FlowRunRecord, results: dict[str, FlowRunRecord | None]
) -> None:
    results[run.id] = await handle.claim_resume(run)
