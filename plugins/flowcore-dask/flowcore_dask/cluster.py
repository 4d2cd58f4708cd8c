"""The executor's cluster: an asyncio client of a scheduler, and the local cluster it
started when it was given no scheduler.

Three decisions live here:

- **Dask must not re-run a task on its own.** When a worker dies while running a task,
  dask's scheduler runs it again elsewhere, up to ``allowed-failures`` times (3 by
  default), and flowcore would never know: one attempt recorded for two runs, and the
  task's retry policy bypassed. The local cluster is started with ``allowed_failures=0``
  (the task errs with ``KilledWorker`` at the first death, which the executor records as
  :class:`WorkerLost` and the engine retries under the task's policy); a scheduler at an
  address is asked its setting when the executor opens, and one above 0 is refused
  (:class:`ClusterNotReady`, with both fixes) unless ``rerun_on_worker_loss=True``
  accepts dask's re-runs knowingly.
- **Nothing of the opener's context.** The engine opens an executor on first use, inside
  whichever task run needed it; dask's background tasks (the client's) and threads (the
  local scheduler's) would inherit that context, and every line they log would be kept
  as that run's. They are started in an empty context instead.
- **The local scheduler runs on a thread of its own**, not on the engine's event loop: a
  busy scheduler then delays the engine's other work by sharing the interpreter, not by
  holding its loop. Its workers are processes (``processes=True``), so CPU-bound Python
  tasks run in parallel.
"""

from __future__ import annotations

import contextvars
import importlib.util
from typing import Any

import anyio
from distributed import Client, LocalCluster

from .errors import ClusterNotReady, ClusterNotStarted, SchedulerUnreachable

__all__ = ["Cluster", "connect"]


class Cluster:
    """An open connection to a Dask cluster (and the local cluster, if it started one)."""

    def __init__(self, client: Client, address: str, local: LocalCluster | None) -> None:
        #: The asyncio client every call goes through.
        self.client = client
        #: The scheduler's address.
        self.address = address
        #: The local cluster started for the executor's lifetime, or ``None``.
        self.local = local

    async def close(self) -> None:
        """Disconnect, then stop the local cluster (its workers, its scheduler)."""
        try:
            await self.client.close()
        finally:
            if self.local is not None:
                local, self.local = self.local, None
                await anyio.to_thread.run_sync(local.close)


async def connect(
    address: str | None,
    source: str,
    *,
    timeout: float,
    rerun_on_worker_loss: bool,
    cluster_options: dict[str, Any],
) -> Cluster:
    """Connect to the scheduler at ``address`` (``source`` says where it came from, for
    errors), or start a local cluster when it is ``None``."""
    local: LocalCluster | None = None
    if address is None:
        local = await _started(cluster_options)
        address = str(local.scheduler_address)
        source = "the executor's local cluster"
    try:
        client = await _client(address, source, timeout, local is not None)
        try:
            if local is None:
                await _check_scheduler(client, address, rerun_on_worker_loss)
                await _check_workers(client, address)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await client.close()
            raise
    except BaseException:
        if local is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(local.close)
        raise
    return Cluster(client, address, local)


async def _started(options: dict[str, Any]) -> LocalCluster:
    """A local cluster, started on a thread (dask's sync start blocks) in an empty context."""
    # Shielded: a cancel arriving while the thread starts the cluster would lose the
    # cluster object, and its worker processes with it.
    with anyio.CancelScope(shield=True):
        local: LocalCluster = await anyio.to_thread.run_sync(
            contextvars.Context().run, _start_local, options
        )
    return local


def _start_local(options: dict[str, Any]) -> LocalCluster:
    """A LocalCluster of worker processes whose scheduler lets the engine decide retries."""
    settings: dict[str, Any] = {
        "processes": True,
        "threads_per_worker": 1,
        # A random port: dask's fixed 8787 is often taken (another flowcore, a notebook),
        # and it then warns; the link is `DaskExecutor.dashboard_link`.
        "dashboard_address": ":0",
    }
    settings.update(options)
    scheduler = dict(settings.pop("scheduler_kwargs", None) or {})
    scheduler["allowed_failures"] = 0
    try:
        return LocalCluster(asynchronous=False, scheduler_kwargs=scheduler, **settings)
    except Exception as exc:
        raise ClusterNotStarted(
            f"the Dask executor could not start a local cluster ({type(exc).__name__}: "
            f"{exc}). Worker processes are started with 'spawn' and import the main module: "
            "in a script, run flows under `if __name__ == '__main__':`. Or give a running "
            "scheduler's address (DaskExecutor(address=...) or FLOWCORE_DASK_ADDRESS)"
        ) from exc


async def _client(address: str, source: str, timeout: float, local: bool) -> Client:
    """An asyncio client of ``address``, its background tasks in an empty context."""
    # Made in an empty context: the client starts its background tasks as it is made
    # (and they copy the context they are made in). Direct to workers on the local
    # cluster (on this host): a result comes straight from its worker, not through the
    # scheduler's thread.
    client: Client = contextvars.Context().run(
        Client,
        address,
        asynchronous=True,
        set_as_default=False,
        timeout=timeout,
        direct_to_workers=True if local else None,
    )
    try:
        await client
    except (OSError, TimeoutError) as exc:
        with anyio.CancelScope(shield=True):
            await client.close()
        raise SchedulerUnreachable(
            f"no Dask scheduler answered at {address} ({source}) within {timeout:g} s "
            f"({type(exc).__name__}: {exc}); start one there (`dask scheduler`, then "
            f"`dask worker {address}` on each worker host), correct the address, or give "
            "none (no address, FLOWCORE_DASK_ADDRESS unset) for a local cluster of worker "
            "processes started with the engine"
        ) from exc
    except BaseException:
        with anyio.CancelScope(shield=True):
            await client.close()
        raise
    return client


async def _check_scheduler(client: Client, address: str, rerun_on_worker_loss: bool) -> None:
    """Refuse a scheduler that would re-run a task itself when its worker dies."""
    if rerun_on_worker_loss:
        return
    fixes = (
        "start it with DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=0 in its environment "
        "(or distributed.scheduler.allowed-failures: 0 in its dask config), so a lost "
        "worker fails the attempt and the task's retry policy decides; or accept dask's "
        "re-runs with DaskExecutor(rerun_on_worker_loss=True), and flowcore records one "
        "attempt for a call dask ran more than once"
    )
    try:
        # A lambda is pickled by value: the scheduler needs no flowcore_dask installed.
        allowed = await client.run_on_scheduler(
            lambda dask_scheduler: dask_scheduler.allowed_failures
        )
    except Exception as exc:
        raise ClusterNotReady(
            f"could not read the allowed-failures setting of the Dask scheduler at {address} "
            f"({type(exc).__name__}: {exc}): if it is above 0, dask re-runs a task on another "
            f"worker when its worker dies, unseen by flowcore. Make sure it is 0: {fixes}"
        ) from exc
    if allowed:
        raise ClusterNotReady(
            f"the Dask scheduler at {address} re-runs a task on another worker when its "
            f"worker dies, up to {allowed} times (distributed.scheduler.allowed-failures="
            f"{allowed}), unseen by flowcore, whose retry policy must decide instead: {fixes}"
        )


async def _check_workers(client: Client, address: str) -> None:
    """Refuse workers that cannot run calls (``flowcore_dask`` is not installed there)."""
    found = await client.run(
        lambda: importlib.util.find_spec("flowcore_dask") is not None, on_error="return"
    )
    missing = sorted(worker for worker, ok in found.items() if ok is not True)
    if missing:
        raise ClusterNotReady(
            f"{len(missing)} worker(s) of the Dask scheduler at {address} cannot import "
            f"flowcore_dask ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}), "
            "which runs the calls there; install it on every worker host (`pip install "
            "flowcore-dask`, with the code your tasks use), then restart the workers"
        )
