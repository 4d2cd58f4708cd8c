"""The Dask executor: a flowcore executor whose calls run on a ``dask.distributed`` cluster.

An executor only decides *where* a task's function runs; limits, retries, timeouts,
cancellation, records, spans and hooks stay in the engine, exactly as for local tasks
(see ``flowcore.engine.executor``). So a call here is: pack the arguments, submit one
dask task, await it, bring the result back by value, release the future.

Why each call releases its future at once, and what that guarantees: the result is
fetched the moment dask reports the call finished (awaiting the future gathers it), and
the future is released in the same step, so the scheduler forgets the key and the worker
drops its copy. A task the engine has recorded Completed therefore holds nothing on the
cluster: when a worker dies later, dask has nothing of it to recompute (it recomputes
lost results only while a client still wants them), so it is never re-run, and the
cluster's memory does not grow with the number of calls. A worker that dies *while* a
call runs fails that call with :class:`WorkerLost` (the cluster does not re-run it: see
:mod:`.cluster`), and the engine retries it under the task's policy.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import uuid
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Final

import anyio
from distributed import Client, KilledWorker
from distributed.client import FutureCancelledError

import flowcore

from .cluster import Cluster, connect
from .errors import CallCancelled, WorkerLost
from .functions import Prepared, prepare
from .transfer import pack_call, unpack_result
from .worker import cancel, run_async, run_sync

__all__ = ["ADDRESS_VARIABLE", "DaskExecutor"]

#: The environment variable naming the scheduler when no address is given.
ADDRESS_VARIABLE: Final = "FLOWCORE_DASK_ADDRESS"


class DaskExecutor:
    """Runs task functions on a Dask cluster, through dask's asyncio client.

    ``address``: the scheduler's (``tcp://host:8786``); ``None`` reads
    ``$FLOWCORE_DASK_ADDRESS`` when the executor opens, and without it a local cluster
    of worker processes is started then and stopped when the engine closes.
    ``n_workers``, ``threads_per_worker`` (1: CPU-bound Python wants processes, not
    threads) and any other keyword (``memory_limit=``, ``dashboard_address=``) configure
    that local cluster. ``connect_timeout``: seconds to reach the scheduler.
    ``rerun_on_worker_loss``: accept a scheduler that re-runs a task on another worker
    when its worker dies (dask's ``allowed-failures`` above 0), which is refused by
    default because flowcore cannot see those re-runs (see :mod:`.cluster`).

    ``DaskExecutor()`` is what the ``flowcore.executors`` entry point ``dask`` makes, so
    ``@flowcore.task(executor="dask")`` needs nothing else; give the engine an instance
    to configure it: ``Engine(executors={"dask": DaskExecutor("tcp://sched:8786")})``.

    Calls: a sync function runs in a worker's thread pool, an async one on the worker's
    event loop. Arguments and the function are pickled (cloudpickle for the function:
    define tasks at module level); results come back by value (see :mod:`.transfer`).
    A call the engine stops waiting for (a timeout, a cancelled flow) is released on the
    cluster: it does not start if it had not, an async one that runs is cancelled on its
    worker, and a sync one that runs finishes there in the background, its result
    dropped, as a timed-out sync task does in a local thread.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        n_workers: int | None = None,
        threads_per_worker: int = 1,
        connect_timeout: float = 10.0,
        rerun_on_worker_loss: bool = False,
        **cluster_options: Any,
    ) -> None:
        problems = []
        if address is not None and (not isinstance(address, str) or not address.strip()):
            problems.append(
                f"`address` must be a scheduler address like 'tcp://host:8786', got {address!r}"
            )
        for option, value, optional in (
            ("n_workers", n_workers, True),
            ("threads_per_worker", threads_per_worker, False),
        ):
            if (value is None and not optional) or (
                value is not None and (type(value) is not int or value < 1)
            ):
                problems.append(f"`{option}` must be an int >= 1, got {value!r}")
        if (
            isinstance(connect_timeout, bool)
            or not isinstance(connect_timeout, int | float)
            or not 0 < connect_timeout < float("inf")
        ):
            problems.append(f"`connect_timeout` must be seconds > 0, got {connect_timeout!r}")
        given: object = rerun_on_worker_loss
        if not isinstance(given, bool):
            problems.append(
                f"`rerun_on_worker_loss` must be True or False, got {rerun_on_worker_loss!r}"
            )
        if problems:
            raise flowcore.ConfigurationError(
                "invalid DaskExecutor options: " + "; ".join(problems)
            )
        self._address = address
        self._connect_timeout = float(connect_timeout)
        self._rerun_on_worker_loss = rerun_on_worker_loss
        self._cluster_options: dict[str, Any] = dict(cluster_options)
        self._cluster_options["threads_per_worker"] = threads_per_worker
        if n_workers is not None:
            self._cluster_options["n_workers"] = n_workers
        self._cluster: Cluster | None = None
        self._users = 0
        self._lock = anyio.Lock()
        #: Functions made ready to send, by the function (the engine passes the same one
        #: for every call of a task); weakly, so tasks made on the fly do not pile up.
        self._prepared: weakref.WeakKeyDictionary[Callable[..., Any], Prepared] = (
            weakref.WeakKeyDictionary()
        )
        #: Cancels on their way to the workers (kept so they are not collected mid-way).
        self._cancels: set[asyncio.Future[Any]] = set()

    # -- lifetime -------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect to the scheduler (or start the local cluster). The engine calls this
        before the first call, and :meth:`close` when it closes.

        Opens and closes are counted: an executor opened by several engines (or by its
        owner and an engine) stays connected until the last of them closes it."""
        async with self._lock:
            if self._cluster is None:
                self._cluster = await self._connect()
            self._users += 1

    async def close(self) -> None:
        """Disconnect, and stop the local cluster if this executor started one (when the
        last user of an executor opened more than once closes it)."""
        async with self._lock:
            if self._users > 1:
                self._users -= 1
                return
            self._users = 0
            cluster, self._cluster = self._cluster, None
            cancels, self._cancels = self._cancels, set()
            if cancels:  # bounded: an unresponsive cluster must not hold the engine's exit
                with anyio.move_on_after(self._connect_timeout):
                    await asyncio.gather(*cancels, return_exceptions=True)
                for sent in cancels:
                    sent.cancel()
            if cluster is not None:
                await cluster.close()

    async def _connect(self) -> Cluster:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise flowcore.UnsupportedBackend(
                "the Dask executor needs asyncio (dask's client is asyncio-only); run flows "
                "with asyncio, flowcore.run's default"
            ) from None
        address, source = self._address, "given to DaskExecutor"
        if address is None and os.environ.get(ADDRESS_VARIABLE, "").strip():
            address, source = os.environ[ADDRESS_VARIABLE].strip(), f"from ${ADDRESS_VARIABLE}"
        return await connect(
            address,
            source,
            timeout=self._connect_timeout,
            rerun_on_worker_loss=self._rerun_on_worker_loss,
            cluster_options=self._cluster_options,
        )

    @property
    def client(self) -> Client:
        """The asyncio dask client calls go through (while open): for what flowcore does
        not do itself, e.g. ``client.scheduler_info()``, or events of the cluster."""
        return self._open().client

    @property
    def scheduler_address(self) -> str | None:
        """The scheduler's address while open (the local cluster's, if it started one)."""
        return None if self._cluster is None else self._cluster.address

    @property
    def dashboard_link(self) -> str | None:
        """The dask dashboard's URL while open, if the scheduler serves one."""
        if self._cluster is None:
            return None
        link = self._cluster.client.dashboard_link
        return None if link is None else str(link)

    # -- calls ----------------------------------------------------------------------------

    def call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        is_async: bool,
        abandon: bool,
        /,
    ) -> Awaitable[Any]:
        """``fn(*args, **kwargs)`` on the cluster. ``abandon`` makes no difference here: a
        call the engine stops waiting for is always released at once (see the class)."""
        return self._call(fn, args, kwargs, is_async)

    async def _call(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], is_async: bool
    ) -> Any:
        client = self._open().client
        try:
            task = flowcore.current_task_run().name
        except flowcore.ConfigurationError:  # called outside a task run (a test, a benchmark)
            task = getattr(fn, "__name__", "call")
        try:
            prepared = self._prepared.get(fn)
        except TypeError:  # not weakly referenceable (a builtin): prepared on each call
            prepared = None
        if prepared is None:
            prepared = prepare(fn, task)
            try:
                self._prepared[fn] = prepared
            except TypeError:
                pass
        # Unique, and named after the task: the dashboard groups calls by this prefix.
        key = f"{task}-{uuid.uuid4().hex}"
        call = pack_call(task, key, args, kwargs)
        future = client.submit(
            run_async if is_async else run_sync,
            prepared.token,
            prepared.blob,
            call,
            key=key,
            pure=False,
        )
        try:
            packed = await future
        except KilledWorker as exc:
            raise WorkerLost(task, _worker_of(exc)) from exc
        except FutureCancelledError as exc:
            raise CallCancelled(task, exc.reason, exc.msg) from exc
        except asyncio.CancelledError:
            # The engine stopped waiting (a timeout, a cancelled flow): the release below
            # stops a call that has not started; an async one that has is cancelled on
            # its worker (a sync one cannot be: it finishes there, its result dropped).
            if is_async and not future.done():
                self._cancel_on_workers(client, key)
            raise
        finally:
            future.release()  # the scheduler forgets the key: nothing left to recompute
        return unpack_result(packed, prepared.decoder)

    def _cancel_on_workers(self, client: Client, key: str) -> None:
        """Send :func:`.worker.cancel` for ``key`` to every worker, without waiting (the
        caller is being cancelled); :meth:`close` waits for what is still on its way."""
        sent: asyncio.Future[Any] = contextvars.Context().run(
            asyncio.ensure_future, client.run(cancel, key, on_error="ignore")
        )
        self._cancels.add(sent)
        sent.add_done_callback(self._cancels.discard)

    def _open(self) -> Cluster:
        cluster = self._cluster
        if cluster is None:
            raise flowcore.ConfigurationError(
                "the Dask executor is not open; the engine opens it on first use "
                "(@flowcore.task(executor='dask') in `async with flowcore.Engine():` or "
                "flowcore.run), or call `await executor.open()` yourself"
            )
        return cluster

    def __repr__(self) -> str:
        where = self.scheduler_address or self._address or "a local cluster when opened"
        return f"<flowcore DaskExecutor {where}>"


def _worker_of(exc: KilledWorker) -> str:
    """The address of the worker a ``KilledWorker`` names."""
    worker = getattr(exc, "last_worker", None)
    address = getattr(worker, "address", None)
    return str(address) if address else "(unknown worker)"
