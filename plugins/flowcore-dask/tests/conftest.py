"""A real Dask cluster for the tests: worker processes, as a user's cluster has.

One ``LocalCluster(processes=True, n_workers=2, threads_per_worker=1)`` per test module
(the machine may have 2 CPUs: more would only queue), started with the setting the
executor requires of a cluster it is given (``allowed_failures=0``: dask must not re-run
a task whose worker died). Its scheduler runs on dask's own thread, so every test can
connect to it from its own event loop, as an engine connects to a remote scheduler.

``dask_helpers`` has what tests share beyond fixtures; its helpers wait for cluster
events (dask events, worker counts, handled messages): no test sleeps to let something
happen.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from dask_helpers import wait_for_workers
from distributed import LocalCluster

from flowcore_dask import DaskExecutor


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # dask's client is asyncio-only


@pytest.fixture(autouse=True)
def flowcore_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own FLOWCORE_HOME, so no test touches ~/.flowcore."""
    home = tmp_path / "flowcore-home"
    monkeypatch.setenv("FLOWCORE_HOME", str(home))
    monkeypatch.delenv("FLOWCORE_DASK_ADDRESS", raising=False)
    return home


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[LocalCluster]:
    cluster = LocalCluster(
        processes=True,
        n_workers=2,
        threads_per_worker=1,
        dashboard_address=":0",
        scheduler_kwargs={"allowed_failures": 0},
    )
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
async def executor(dask_cluster: LocalCluster) -> AsyncIterator[DaskExecutor]:
    """An executor of the module's cluster, with both workers up (a test before may have
    killed one: its nanny starts a new one)."""
    executor = DaskExecutor(dask_cluster.scheduler_address)
    await executor.open()
    try:
        await wait_for_workers(executor.client, 2)
        yield executor
    finally:
        await executor.close()
