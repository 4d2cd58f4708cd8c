"""A local, paginated HTTP API that behaves like a throttling partner API.

The ingest demo (``examples/ingest.py``) and the tests need something to fetch
from that is slow and unreliable in the way real APIs are: every request takes a
little while, and some fraction of them are answered ``503 Service Unavailable``.
This module is that stand-in, self-contained (stdlib only) so that the demo runs
without network access, API keys or a partner's rate limits, and so that its
failures are reproducible (they come from a seeded random generator).

    with FakeRecordsAPI(total_records=500, failure_rate=0.1) as api:
        httpx.get(f"{api.url}/records", params={"page": 0}).json()
        # {"page": 0, "pages": 5, "records": [{"id": 1, "name": "record-00001", ...}, ...]}

Endpoint: ``GET /records?page=N`` with ``N`` 0-based. A page out of range is a 404,
a missing or malformed ``page`` a 400, any other path a 404; error bodies are
``{"error": "..."}``. Record content depends only on the record id, so two servers
serve identical pages.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

__all__ = ["FakeRecordsAPI", "make_record"]

_EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def make_record(record_id: int) -> dict[str, Any]:
    """The record the API serves for ``record_id``: a pure function of the id."""
    return {
        "id": record_id,
        "name": f"record-{record_id:05d}",
        "value": round((record_id * 7919) % 10_000 / 100, 2),
        "updated_at": (_EPOCH + dt.timedelta(minutes=17 * record_id)).isoformat(),
    }


class _Server(ThreadingHTTPServer):
    # The default listen backlog of 5 drops connections when many clients connect at
    # once, and a dropped SYN is retried only after a second: latency the API never meant.
    request_queue_size = 1024
    daemon_threads = True


class FakeRecordsAPI:
    """A paginated records API served from a daemon thread on ``127.0.0.1``.

    Use it as a context manager (or call :meth:`start` and :meth:`close`);
    :attr:`url` is known once it is started, the port being chosen by the OS.
    """

    def __init__(
        self,
        *,
        total_records: int = 2000,
        page_size: int = 100,
        latency: float = 0.02,
        failure_rate: float = 0.2,
        seed: int = 7,
        rate_limit: float | None = None,
    ) -> None:
        if total_records < 0:
            raise ValueError(f"`total_records` must be >= 0, got {total_records}")
        if page_size < 1:
            raise ValueError(f"`page_size` must be >= 1, got {page_size}")
        if not latency >= 0:  # also refuses NaN
            raise ValueError(f"`latency` must be >= 0 seconds, got {latency}")
        if not 0 <= failure_rate <= 1:
            raise ValueError(f"`failure_rate` must be between 0 and 1, got {failure_rate}")
        if rate_limit is not None and not rate_limit > 0:
            raise ValueError(f"`rate_limit` must be requests per second > 0, got {rate_limit}")
        # Requests per second it serves before answering 429 with Retry-After, like a
        # throttling partner API (a token bucket with one second of burst).
        self.rate_limit = rate_limit
        self._tokens = rate_limit or 0.0
        self._refilled = time.monotonic()
        self.total_records = total_records
        self.page_size = page_size
        self.latency = latency
        self.failure_rate = failure_rate
        self.pages = math.ceil(total_records / page_size)
        self._random = random.Random(seed)
        self._lock = threading.Lock()  # guards _random and _stats
        self._stats = {"requests": 0, "served_pages": 0, "failures_503": 0, "throttled_429": 0}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:54321``."""
        if self._server is None:
            raise RuntimeError("FakeRecordsAPI is not running: call start() or use `with`")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def stats(self) -> dict[str, int]:
        """A snapshot of the counters: ``requests``, ``served_pages``, ``failures_503``,
        ``throttled_429``."""
        with self._lock:
            return dict(self._stats)

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("FakeRecordsAPI is already running")
        server = _Server(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.api = self  # type: ignore[attr-defined]  # read by _Handler
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},  # how soon close() is noticed
            name="FakeRecordsAPI",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        server.shutdown()  # returns once serve_forever has left its loop
        server.server_close()
        thread.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- called from the server's request threads --------------------------------

    def _count(self, key: str) -> None:
        with self._lock:
            self._stats[key] += 1

    def _should_fail(self) -> bool:
        with self._lock:
            return self._random.random() < self.failure_rate

    def _over_rate(self) -> bool:
        if self.rate_limit is None:
            return False
        with self._lock:
            now = time.monotonic()
            self._tokens = min(
                self.rate_limit, self._tokens + (now - self._refilled) * self.rate_limit
            )
            self._refilled = now
            if self._tokens < 1:
                return True
            self._tokens -= 1
            return False

    def _page(self, page: int) -> dict[str, Any]:
        first = page * self.page_size + 1
        last = min(first + self.page_size - 1, self.total_records)
        records = [make_record(i) for i in range(first, last + 1)]
        return {"page": page, "pages": self.pages, "records": records}

    def _respond(self, path: str, query: str) -> tuple[HTTPStatus, dict[str, Any]]:
        """Answer one GET request: (status, JSON body)."""
        self._count("requests")
        time.sleep(self.latency)  # injected latency
        if path != "/records":
            return HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {path}"}
        values = parse_qs(query).get("page", [])
        try:
            page = int(values[0])
        except (IndexError, ValueError):
            return HTTPStatus.BAD_REQUEST, {"error": "query parameter `page` must be an integer"}
        if not 0 <= page < self.pages:
            return HTTPStatus.NOT_FOUND, {"error": f"page {page} out of range ({self.pages} pages)"}
        if self._over_rate():
            self._count("throttled_429")
            return HTTPStatus.TOO_MANY_REQUESTS, {"error": "rate limit exceeded, retry later"}
        if self._should_fail():
            self._count("failures_503")
            return HTTPStatus.SERVICE_UNAVAILABLE, {"error": "temporarily overloaded, retry"}
        self._count("served_pages")
        return HTTPStatus.OK, self._page(page)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so a shared client reuses connections
    timeout = 30  # seconds an idle keep-alive connection holds its thread
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stall

    def do_GET(self) -> None:
        api: FakeRecordsAPI = self.server.api  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        status, body = api._respond(parts.path, parts.query)
        payload = json.dumps(body).encode()
        self.send_response(status)
        if status == HTTPStatus.TOO_MANY_REQUESTS:
            self.send_header("Retry-After", "1")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the demo's output is the summary, not an access log
