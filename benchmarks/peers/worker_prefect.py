"""Prefect 3: the five workloads as an async ``@flow`` over async ``@task`` calls.

Runs in its own venv (``.venvs/prefect``), against Prefect's ephemeral local
server (a uvicorn subprocess Prefect starts itself, SQLite database) in a
temporary ``PREFECT_HOME``, logging at WARNING, telemetry off. Async tasks are
awaited directly and gathered with ``asyncio.gather``. Retries:
``@task(retries=2, retry_delay_seconds=0)``; cache hits:
``@task(cache_policy=INPUTS)``.

Prefect records task runs from events: the local server goes on writing them
after a flow returns. ``settle()`` waits until the server has recorded every task
run started so far as completed, so no timed run pays for the one before; the
time it waited is reported as ``settle_s``. See ``common.py``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import time

if not os.environ.get("PREFECT_HOME"):
    _home = tempfile.mkdtemp(prefix="peerbench-prefect-home-")
    atexit.register(shutil.rmtree, _home, ignore_errors=True)  # runs after the server stops
    os.environ["PREFECT_HOME"] = _home
os.environ.pop("PREFECT_API_URL", None)
os.environ.update(
    PREFECT_SERVER_EPHEMERAL_ENABLED="true",
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
    PREFECT_LOGGING_LEVEL="WARNING",
    PREFECT_SERVER_LOGGING_LEVEL="WARNING",
    PREFECT_SERVER_ANALYTICS_ENABLED="false",
    PREFECT_UI_ENABLED="false",
    DO_NOT_TRACK="1",
)

import asyncio
from importlib.metadata import version

from common import (
    ATTEMPTS,
    CACHE_HIT,
    CACHE_RUNS,
    FAILURES,
    GATHERED,
    RETRY,
    SEQUENTIAL,
    SLEEP,
    SLEEPING,
    Bench,
    main,
)
from prefect import flow, get_client, task
from prefect.cache_policies import INPUTS

SETTLE_TIMEOUT = float(os.environ.get("PEERBENCH_SETTLE_TIMEOUT", "300"))
SETTLE_POLL = float(os.environ.get("PEERBENCH_SETTLE_POLL", "0.5"))


@task
async def noop(i: int) -> int:
    return i


@task
async def sleeper(i: int) -> int:
    await asyncio.sleep(SLEEP)
    return i


@task(retries=FAILURES, retry_delay_seconds=0)
async def flaky(i: int) -> int:
    return ATTEMPTS.check(i)


@task(cache_policy=INPUTS)
async def cached(i: int) -> int:
    return CACHE_RUNS.computed(i)


@flow
async def sequential(n: int) -> None:
    for i in range(n):
        await noop(i)


@flow
async def gathered(n: int) -> None:
    await asyncio.gather(*(noop(i) for i in range(n)))


@flow
async def sleeping(n: int) -> None:
    await asyncio.gather(*(sleeper(i) for i in range(n)))


@flow
async def retrying(n: int) -> None:
    await asyncio.gather(*(flaky(i) for i in range(n)))


@flow
async def cache_hits(n: int) -> None:
    await asyncio.gather(*(cached(i) for i in range(n)))


class Prefect(Bench):
    engine = "prefect"
    fixed_loop = "asyncio"  # its own default
    cache_note = "cache_policy=INPUTS"

    def __init__(self) -> None:
        super().__init__()
        self.bodies = {
            SEQUENTIAL: sequential,
            GATHERED: gathered,
            SLEEPING: sleeping,
            RETRY: retrying,
            CACHE_HIT: cache_hits,
        }
        self.started = 0  # task runs started so far (each call is one task run)
        self.baseline = 0  # completed task runs in the database before setup

    def version(self) -> str:
        return version("prefect")

    async def setup(self) -> None:
        async with get_client() as client:  # starts the ephemeral server
            await client.hello()
        self.baseline = await self.completed()

    async def run(self, workload: str, n: int) -> None:
        self.started += n
        await super().run(workload, n)

    async def prepare(self, workload: str, n: int) -> None:
        if workload == CACHE_HIT:
            self.started += n
            await cache_hits(n)

    async def completed(self) -> int:
        async with get_client() as client:
            response = await client.request(
                "POST",
                "/task_runs/count",
                json={"task_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}},
            )
            response.raise_for_status()
            return int(response.json())

    async def settle(self) -> None:
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while (done := await self.completed() - self.baseline) < self.started:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the server recorded {done:,} of {self.started:,} task runs as completed "
                    f"after {SETTLE_TIMEOUT:g} s"
                )
            await asyncio.sleep(SETTLE_POLL)


if __name__ == "__main__":
    sys.exit(main(Prefect()))
