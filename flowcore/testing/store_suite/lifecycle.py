"""Cases on a store's own life: its attributes, closing, and what survives a reopen.

The reopen case writes something of every kind (runs, task runs, cache entries,
spans, leases, rates, blobs) and reads it all back through a new handle, so it
sits above the modules whose helpers it borrows.
"""

from __future__ import annotations

from ...records import WriteBatch
from ...states import State
from ...store.base import Store
from .assertions import differs, is_close
from .blobs import blob_ref, blob_store
from .cases import Cases, OpenStore
from .leases import lease_rows, lease_slots
from .records import (
    flow_run,
    full_cache_entry,
    full_flow_run,
    full_span,
    full_task_run,
    task_run,
)

__all__ = ["CASES"]

CASES = Cases()


@CASES.case("lifecycle: location is a string and blobs a BlobStore or None")
async def _attributes(store: Store) -> None:
    assert isinstance(store.location, str) and store.location, (
        f"store.location should say where the data lives: {store.location!r}"
    )
    blob_store(store)


@CASES.case("lifecycle: close twice is fine")
async def _close_twice(store: Store) -> None:
    await store.write(WriteBatch([flow_run("run1")], []))
    await store.close()
    await store.close()


@CASES.handles_case(
    "lifecycle: a persistent store keeps what was written across close and reopen",
    persistent=True,
)
async def _reopen(store: Store, open_store: OpenStore) -> None:
    unfinished = task_run(full_flow_run().id, 43, state=State.RUNNING)
    await store.write(
        WriteBatch(
            [full_flow_run(), flow_run("running", state=State.RUNNING)],
            [full_task_run(), unfinished],
            [full_cache_entry()],
            [full_span()],
        )
    )
    (lease,), _ = await lease_slots(store, "db", 1, "A", 1, now=1.0, expires=99.0)
    await store.reserve_rate("api", 0.5, 0.0, 10.0)
    blobs = store.blobs
    blob = b"a large result" * 1000
    if blobs is not None:
        await blobs.put({blob_ref(blob): blob})
    await store.close()

    again = await open_store()
    got_run = await again.get_run(full_flow_run().id)
    assert got_run == full_flow_run(), differs("the run after reopening", got_run, full_flow_run())
    tasks = await again.list_task_runs(full_flow_run().id)
    assert tasks == [full_task_run(), unfinished], differs(
        "task runs after reopening", tasks, [full_task_run(), unfinished]
    )
    entry = await again.get_cache(full_cache_entry().key)
    assert entry == full_cache_entry(), differs(
        "the cache entry after reopening", entry, full_cache_entry()
    )
    spans = await again.list_spans(full_span().trace_id)
    assert spans == [full_span()], differs("spans after reopening", spans, [full_span()])
    rows = await lease_rows(again)
    assert rows == [("db", "A", 99.0, 0)], differs(
        "leases after reopening", rows, [("db", "A", 99.0, 0)]
    )
    rates = await again.list_rates()
    assert [n for n, _ in rates] == ["api"] and is_close(rates[0][1], 10.5), differs(
        "rates after reopening", rates, [("api", 10.5)]
    )
    if again.blobs is not None:
        got_blob = await again.blobs.get(blob_ref(blob))
        assert got_blob == blob, "the blob put before closing reads back different after reopening"
    # Records written before closing can still be finished by the new handle.
    unfinished.state = State.COMPLETED
    unfinished.attempts = 1
    await again.write(WriteBatch([flow_run("running", state=State.COMPLETED)], [unfinished]))
    tasks = await again.list_task_runs(full_flow_run().id, offset=1)
    assert tasks == [unfinished], differs(
        "the task run finished after reopening", tasks, [unfinished]
    )
    state = (await again.get_run("running")).state
    assert state is State.COMPLETED, differs("the run finished after reopening", state, "Completed")
    await again.release_lease(lease)
    rows = await lease_rows(again)
    assert rows == [], differs("leases after the new handle released the old lease", rows, [])
