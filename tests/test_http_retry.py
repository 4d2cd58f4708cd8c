"""HTTP-aware retries: 429/5xx/transport errors retried, other 4xx not, Retry-After honoured."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

import flowcore
from flowcore.http import is_retryable_http_error, retry_after
from flowcore.testing import FakeClock

pytestmark = pytest.mark.anyio


def api(responses: list[httpx.Response]) -> tuple[httpx.AsyncClient, list[int]]:
    """A client whose server answers ``responses`` in turn (the last one repeats)."""
    seen: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(len(seen))
        return responses[min(len(seen) - 1, len(responses) - 1)]

    return httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://api"), seen


async def fetch_with(
    client: httpx.AsyncClient, policy: flowcore.RetryPolicy, clock: FakeClock
) -> tuple[object, flowcore.TaskRunRecord]:
    @flowcore.task(retry=policy)
    async def fetch() -> str:
        response = await client.get("/items")
        response.raise_for_status()
        return response.text

    @flowcore.flow
    async def f() -> str:
        return await fetch()

    async with flowcore.Engine("memory", clock=clock, seed=1) as engine:
        try:
            outcome: object = await f()
        except Exception as exc:
            outcome = exc
        await engine.recorder.flush()
        (run,) = await engine.store.list_runs()
        (rec,) = await engine.store.list_task_runs(run.id)
    return outcome, rec


async def test_429_with_retry_after_seconds_waits_what_the_server_asks() -> None:
    client, seen = api(
        [httpx.Response(429, headers={"Retry-After": "7"}), httpx.Response(200, text="ok")]
    )
    clock = FakeClock()
    outcome, rec = await fetch_with(client, flowcore.http_retry(retries=3, max=30), clock)
    assert outcome == "ok" and rec.attempts == 2 and len(seen) == 2
    (slept,) = clock.sleeps
    assert 7.0 <= slept <= 7.0 * 1.2  # never sooner than asked; jitter spreads a crowd


async def test_retry_after_is_exact_without_jitter_and_spread_with_it() -> None:
    waits = []
    for seed in range(20):
        policy = flowcore.http_retry(retries=1, max=60, jitter=0.5)
        err = httpx.HTTPStatusError(
            "429",
            request=httpx.Request("GET", "http://x"),
            response=httpx.Response(429, headers={"Retry-After": "4"}),
        )
        waits.append(policy.delay_for(0, random.Random(seed), err))
    assert all(4.0 <= w <= 4.8 for w in waits) and len(set(waits)) > 10  # at most 20% later
    exact = flowcore.http_retry(retries=1, max=60, jitter=0)
    assert exact.delay_for(0, random.Random(0), err) == 4.0


async def test_retry_after_is_capped_by_max() -> None:
    client, _ = api(
        [httpx.Response(429, headers={"Retry-After": "3600"}), httpx.Response(200, text="ok")]
    )
    clock = FakeClock()
    await fetch_with(client, flowcore.http_retry(retries=3, max=10), clock)
    assert clock.sleeps == [10.0]


async def test_5xx_is_retried_with_backoff_and_gives_up() -> None:
    client, seen = api([httpx.Response(503)])
    clock = FakeClock()
    policy = flowcore.http_retry(retries=2, base=1, factor=2, max=60, jitter=0)
    outcome, rec = await fetch_with(client, policy, clock)
    assert isinstance(outcome, httpx.HTTPStatusError) and outcome.response.status_code == 503
    assert clock.sleeps == [1.0, 2.0] and len(seen) == 3
    assert rec.state is flowcore.State.FAILED and rec.attempts == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_other_4xx_are_not_retried(status: int) -> None:
    client, seen = api([httpx.Response(status)])
    clock = FakeClock()
    outcome, rec = await fetch_with(client, flowcore.http_retry(retries=5), clock)
    assert isinstance(outcome, httpx.HTTPStatusError)
    assert len(seen) == 1 and clock.sleeps == [] and rec.attempts == 1


async def test_a_4xx_is_retried_when_told() -> None:
    client, seen = api([httpx.Response(409), httpx.Response(200, text="ok")])
    outcome, _ = await fetch_with(client, flowcore.http_retry(also_retry={409}), FakeClock())
    assert outcome == "ok" and len(seen) == 2


async def test_transport_errors_are_retried() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, text="ok")

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://api")
    outcome, rec = await fetch_with(client, flowcore.http_retry(), FakeClock())
    assert outcome == "ok" and rec.attempts == 2


def _error(status: int, headers: dict[str, str] | None = None) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "http://api/items")
    response = httpx.Response(status, headers=headers or {}, request=request)
    return httpx.HTTPStatusError("x", request=request, response=response)


def test_retry_after_as_an_http_date() -> None:
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    waited = retry_after(_error(503, {"Retry-After": date}), now=now)
    assert waited is not None and 29 <= waited <= 31
    assert retry_after(_error(503, {"Retry-After": "soon"})) is None
    assert retry_after(_error(503)) is None
    assert retry_after(ValueError("not http")) is None


@pytest.mark.parametrize(
    ("make", "retryable"),
    [
        (lambda: _error(429), True),
        (lambda: _error(500), True),
        (lambda: _error(599), True),
        (lambda: _error(404), False),
        (lambda: ConnectionResetError(), True),
        (lambda: ValueError("bad"), False),
    ],
)
def test_what_counts_as_retryable(make: Callable[[], BaseException], retryable: bool) -> None:
    assert is_retryable_http_error(make()) is retryable


def _api_server_module() -> Any:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "api_server.py"
    spec = importlib.util.spec_from_file_location("api_server", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pool_size(client: httpx.AsyncClient) -> int:
    """The size of the client's connection pool (httpx has no public way to read it)."""
    transport = client._transport
    assert isinstance(transport, httpx.AsyncHTTPTransport), transport
    return transport._pool._max_connections


async def test_a_run_shares_one_http_client_and_closes_it() -> None:
    import asyncio

    module = _api_server_module()
    clients: list[httpx.AsyncClient] = []

    @flowcore.task
    async def page(url: str, n: int) -> int:
        client = flowcore.http_client()
        clients.append(client)
        response = await client.get(f"{url}/records", params={"page": n})
        response.raise_for_status()
        return len(response.json()["records"])

    @flowcore.flow(concurrency=4)
    async def pages(url: str) -> int:
        gathered = await asyncio.gather(*(page(url, n) for n in range(3)))
        submitted = await page.submit(url, 3)
        return sum(gathered) + submitted

    with module.FakeRecordsAPI(total_records=400, page_size=100, latency=0, failure_rate=0) as api:
        async with flowcore.Engine("memory"):
            assert await pages(api.url) == 400
    assert len(clients) == 4 and len({id(c) for c in clients}) == 1
    assert clients[0].is_closed
    assert _pool_size(clients[0]) == 4  # the pool is sized from the flow's concurrency
    with pytest.raises(flowcore.ConfigurationError, match="outside a flow run"):
        flowcore.http_client()


async def test_the_shared_client_pool_covers_the_largest_named_limit() -> None:
    sizes: list[int] = []

    @flowcore.task(tags=["api"])
    async def call() -> None:
        sizes.append(_pool_size(flowcore.http_client()))

    @flowcore.flow
    async def f() -> None:
        await call()

    # 300 calls may hold the "api" limit at once: a pool of 100 would make them queue
    # inside httpx while holding their slots.
    async with flowcore.Engine("memory", limits=[flowcore.limit("api", 300)]):
        await f()
    async with flowcore.Engine("memory", limits=[flowcore.limit("api", 10)]):
        await f()
    assert sizes == [300, 100]
