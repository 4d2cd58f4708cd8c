"""The demo's fake partner API (examples/api_server.py), tested on its own."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

_PATH = Path(__file__).resolve().parents[1] / "examples" / "api_server.py"
_spec = importlib.util.spec_from_file_location("examples_api_server", _PATH)
assert _spec is not None
assert _spec.loader is not None
api_server = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = api_server
_spec.loader.exec_module(api_server)
FakeRecordsAPI = api_server.FakeRecordsAPI


def test_pages_have_the_documented_shape() -> None:
    with (
        FakeRecordsAPI(total_records=250, page_size=100, latency=0, failure_rate=0) as api,
        httpx.Client(base_url=api.url) as client,
    ):
        pages = [client.get("/records", params={"page": n}) for n in range(3)]
        for n, response in enumerate(pages):
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/json"
            body = response.json()
            assert body["page"] == n
            assert body["pages"] == 3
        records = [r for response in pages for r in response.json()["records"]]
        assert [len(response.json()["records"]) for response in pages] == [100, 100, 50]
        assert [r["id"] for r in records] == list(range(1, 251))  # unique, in order
        for record in records:
            assert set(record) == {"id", "name", "value", "updated_at"}
            assert isinstance(record["name"], str)
            assert isinstance(record["value"], float)
            assert isinstance(record["updated_at"], str)
        assert api.stats == {
            "requests": 3,
            "served_pages": 3,
            "failures_503": 0,
            "throttled_429": 0,
        }


def test_record_content_is_deterministic() -> None:
    def fetch(page: int, **kwargs: float) -> dict[str, Any]:
        with (
            FakeRecordsAPI(total_records=300, page_size=50, latency=0, **kwargs) as api,
            httpx.Client(base_url=api.url) as client,
        ):
            while True:  # tolerate the transient 503s of the default failure rate
                response = client.get("/records", params={"page": page})
                if response.status_code != 503:
                    body: dict[str, Any] = response.json()
                    return body

    first = fetch(3, failure_rate=0)
    assert first == fetch(3, failure_rate=0.5)
    assert first["records"][0] == api_server.make_record(151)


def test_failure_rate_is_roughly_as_configured() -> None:
    with (
        FakeRecordsAPI(total_records=100, page_size=10, latency=0, failure_rate=0.5) as api,
        httpx.Client(base_url=api.url) as client,
    ):
        statuses = [client.get("/records", params={"page": n % 10}).status_code for n in range(200)]
        stats = api.stats
    failures = statuses.count(503)
    assert set(statuses) == {200, 503}
    assert 60 <= failures <= 140
    assert statuses.count(200) == 200 - failures
    assert stats == {
        "requests": 200,
        "served_pages": 200 - failures,
        "failures_503": failures,
        "throttled_429": 0,
    }


def test_failures_are_reproducible_from_the_seed() -> None:
    def statuses(seed: int) -> list[int]:
        with (
            FakeRecordsAPI(latency=0, failure_rate=0.3, seed=seed) as api,
            httpx.Client(base_url=api.url) as client,
        ):
            return [client.get("/records", params={"page": 0}).status_code for _ in range(40)]

    assert statuses(1) == statuses(1)
    assert statuses(1) != statuses(2)


def test_503_body_is_a_json_error() -> None:
    with (
        FakeRecordsAPI(latency=0, failure_rate=1) as api,
        httpx.Client(base_url=api.url) as client,
    ):
        response = client.get("/records", params={"page": 0})
    assert response.status_code == 503
    assert "error" in response.json()


@pytest.mark.parametrize("page", ["-1", "3", "1000"])
def test_page_out_of_range_is_404(page: str) -> None:
    with (
        FakeRecordsAPI(total_records=300, page_size=100, latency=0, failure_rate=0) as api,
        httpx.Client(base_url=api.url) as client,
    ):
        response = client.get("/records", params={"page": page})
    assert response.status_code == 404
    assert "out of range" in response.json()["error"]


def test_unknown_path_is_404_and_bad_page_is_400() -> None:
    with (
        FakeRecordsAPI(latency=0, failure_rate=0) as api,
        httpx.Client(base_url=api.url) as client,
    ):
        assert client.get("/nope").status_code == 404
        assert client.get("/records").status_code == 400
        assert client.get("/records", params={"page": "two"}).status_code == 400


def test_latency_is_injected() -> None:
    with (
        FakeRecordsAPI(latency=0.1, failure_rate=0) as api,
        httpx.Client(base_url=api.url) as client,
    ):
        response = client.get("/records", params={"page": 0})
    assert response.elapsed.total_seconds() >= 0.1


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"total_records": -1}, "total_records"),
        ({"page_size": 0}, "page_size"),
        ({"latency": -0.5}, "latency"),
        ({"latency": float("nan")}, "latency"),
        ({"failure_rate": 1.5}, "failure_rate"),
        ({"failure_rate": -0.1}, "failure_rate"),
    ],
)
def test_bad_arguments_raise_naming_the_parameter(kwargs: dict[str, float], name: str) -> None:
    with pytest.raises(ValueError, match=f"`{name}`"):
        FakeRecordsAPI(**kwargs)


def test_failure_rate_message() -> None:
    with pytest.raises(ValueError, match=r"^`failure_rate` must be between 0 and 1, got 1.5$"):
        FakeRecordsAPI(failure_rate=1.5)


def test_server_shuts_down_cleanly() -> None:
    api = FakeRecordsAPI(latency=0, failure_rate=0)
    with pytest.raises(RuntimeError, match="not running"):
        _ = api.url
    with api, httpx.Client() as client:
        url = api.url
        assert client.get(f"{url}/records", params={"page": 0}).status_code == 200
        thread = api._thread
        assert thread is not None
        assert thread.is_alive()
    assert not thread.is_alive()
    with httpx.Client() as client, pytest.raises(httpx.ConnectError):
        client.get(f"{url}/records", params={"page": 0})
    api.close()  # closing twice is harmless


def test_start_twice_is_refused() -> None:
    with FakeRecordsAPI(latency=0) as api, pytest.raises(RuntimeError, match="already running"):
        api.start()


def test_rate_limit_answers_429_with_retry_after() -> None:
    with FakeRecordsAPI(
        total_records=100, page_size=10, latency=0, failure_rate=0, rate_limit=5
    ) as api:
        with httpx.Client() as client:
            statuses = [client.get(f"{api.url}/records", params={"page": 0}) for _ in range(12)]
        codes = [r.status_code for r in statuses]
        assert codes[:5] == [200] * 5  # a second's worth of burst
        assert 429 in codes
        throttled = next(r for r in statuses if r.status_code == 429)
        assert throttled.headers["Retry-After"] == "1"
        assert api.stats["throttled_429"] == codes.count(429)
    with pytest.raises(ValueError, match="rate_limit"):
        FakeRecordsAPI(rate_limit=0)
