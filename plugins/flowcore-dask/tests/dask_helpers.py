"""What the tests of the Dask executor share beyond fixtures.

Everything here waits for something to have happened on the cluster (a message handled,
an event logged); nothing sleeps to let it happen.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, cast

import anyio
from distributed import Client, get_worker

import flowcore


async def held_keys(client: Client) -> set[str]:
    """The keys the scheduler or any worker holds, once all have handled every message
    the client sent before.

    The client's messages (releases among them) reach the scheduler on one stream, in
    order, and the scheduler's reach each worker on one stream, in order. So a task
    submitted to each worker after them is done only once the scheduler and that worker
    have handled them. Those tasks' own keys are left out.
    """
    assert client.scheduler is not None
    workers = list((await client.scheduler.identity())["workers"])
    probes = [
        client.submit(operator.pos, 0, pure=False, workers=[w], allow_other_workers=False)
        for w in workers
    ]
    try:
        await client.gather(probes)
        on_scheduler: list[Any] = await client.run_on_scheduler(
            lambda dask_scheduler: list(dask_scheduler.tasks)
        )
        on_workers: dict[str, list[Any]] = await client.run(
            lambda dask_worker: list(dask_worker.data), workers=workers
        )
        keys = {str(k) for k in on_scheduler}
        keys.update(str(k) for held in on_workers.values() for k in held)
        return keys - {str(p.key) for p in probes}
    finally:
        for probe in probes:
            probe.release()


async def wait_for_workers(client: Client, n: int, timeout: float = 60) -> None:
    """Until the cluster has ``n`` workers (a test before may have killed one: its nanny
    starts another)."""
    waiting = cast(Any, client).wait_for_workers(n)  # an awaitable on an asynchronous client
    with anyio.fail_after(timeout):
        await waiting


def signal(topic: str, message: Any) -> None:
    """On a worker: log ``message`` under ``topic`` on the scheduler (for :class:`Signals`).

    The message goes on the worker's stream to the scheduler, before the result of the
    task that sends it: whoever sees a task's result can rely on its signals having
    reached the scheduler."""
    get_worker().log_event(topic, message)


class Signals:
    """The messages workers :func:`signal` under one topic, as they reach the scheduler."""

    def __init__(self, client: Client, topic: str) -> None:
        self.client = client
        self.topic = topic
        self.messages: list[Any] = []
        self._changed = anyio.Event()

    async def __aenter__(self) -> Signals:
        self.client.subscribe_topic(self.topic, self._take)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.client.unsubscribe_topic(self.topic)

    def _take(self, event: tuple[float, Any]) -> None:
        self.messages.append(event[1])
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, found: Callable[[list[Any]], bool], timeout: float = 60) -> None:
        """Until ``found(messages)``; fails the test after ``timeout`` seconds."""
        with anyio.fail_after(timeout):
            while not found(self.messages):
                await self._changed.wait()


async def task_runs(engine: flowcore.Engine) -> list[flowcore.TaskRunRecord]:
    """The task runs of the engine's last flow run, as the store has them."""
    run = engine.last_run
    assert run is not None
    await engine.recorder.flush()
    return await engine.store.list_task_runs(run.id)
