"""Shipping spans to a collector from the store, durably.

Spans are persisted with the runs (a run's record is its span); the shipper
sends them from there, never from the hot path. Once a flow run ended, the store
offers it (:meth:`~flowcore.store.base.SpanStore.claim_span_exports`: claimed with a
lease, so two processes never ship one run), the shipper reads the run's spans in
pages, encodes each page straight from the records (:mod:`.otlp`) and posts it on a
worker thread, and only then marks the run shipped. So:

- a collector that is down loses nothing: runs stay unshipped and go out once it is
  back (catch-up bounded by ``catchup``, in seconds: older runs are skipped), by
  this process or whichever comes next, or by ``flowcore trace export``;
- a process that dies before shipping leaves its runs to the next shipper once its
  lease runs out;
- closing an engine waits for a healthy collector (at most ``export_timeout``), never
  for one that failed: its runs are left for later;
- warnings are one line when an outage starts and one when it ends;
- a request too large for the collector (HTTP 413: its own limit, or a proxy's) goes
  again in halves, and later ones are sized to what it took; spans it refuses for
  good (HTTP 400, which OTLP asks clients never to send again, or one span too large
  alone) are set aside with a warning naming the run, and the run counts as shipped:
  retried, it would go first at every poll and hold back every run after it. Spans a
  collector rejects while taking the request (OTLP's partial success) are said alike;
- a run the collector fails on while it takes the run after it (its data trips a bug
  of the collector; an SDK exporter's permanent error) keeps its claim until the lease
  runs out, then is tried again: two runs failing in a row are an outage.

Senders are ``send(spans)`` callables run on a worker thread: :class:`OtlpHttpSender`
(``http/protobuf`` or ``http/json`` with httpx, from the standard
``OTEL_EXPORTER_OTLP_*`` variables) or :class:`SdkSender` around any OpenTelemetry
``SpanExporter`` (``Tracing(exporter=...)``, or OTLP over gRPC).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import unquote, urlsplit

import anyio

from ..errors import ConfigurationError
from ..ids import HOST
from ..records import FlowRunRecord, SpanRecord
from ..store.base import Store
from .environment import export_requested
from .otlp import encode_json, encode_protobuf, partial_success, protobuf_available
from .sdk import to_readable
from .task_spans import flow_span, task_span

if TYPE_CHECKING:
    import httpx

__all__ = [
    "ExportFailed",
    "OtlpHttpSender",
    "SdkSender",
    "Sender",
    "SpanShipper",
    "from_environment",
    "resource_attributes",
]

log = logging.getLogger("flowcore")

#: HTTP statuses after which the same request may succeed (OTLP/HTTP's retryable ones).
_RETRYABLE: Final = frozenset({408, 429, 502, 503, 504})
#: The longest wait a collector's Retry-After is heard for, in seconds.
_MAX_RETRY_AFTER: Final = 600.0
#: Runs with refused spans said in a warning each, per shipper (then no more is said).
_REFUSALS_SAID: Final = 10


class ExportFailed(Exception):
    """A batch the collector did not accept.

    ``retryable``: sending it again later may work (the collector is down, busy, or
    timed out); otherwise it refused the request. ``refused``: it refused the data of
    this request for good (HTTP 400: OTLP asks clients never to send such a request
    again), so the spans are set aside rather than block every run after them.
    ``too_large``: it refused the request for its size (HTTP 413): the same spans go
    again in smaller requests. ``retry_after``: the seconds it asked to wait, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = True,
        refused: bool = False,
        too_large: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.refused = refused
        self.too_large = too_large
        self.retry_after = retry_after


class Sender(Protocol):
    """Sends one batch of spans, blocking (called on a worker thread); raises
    :class:`ExportFailed` when the collector did not take it. Returns how many of the
    spans the collector rejected while taking the request (OTLP's partial success: not
    to be sent again) and what it said of them, or ``None`` when it took them all."""

    #: Where spans go, for messages.
    target: str

    def send(self, spans: Sequence[SpanRecord]) -> tuple[int, str] | None: ...

    def close(self) -> None: ...


def resource_attributes(
    environ: Mapping[str, str], service_name: str | None = None
) -> dict[str, Any]:
    """The resource of exported spans: ``OTEL_RESOURCE_ATTRIBUTES`` (``k=v,...``), then
    ``service.name`` (``service_name``, ``$OTEL_SERVICE_NAME``, else ``"flowcore"``)."""
    attributes: dict[str, Any] = {}
    for pair in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            attributes[unquote(key.strip())] = unquote(value.strip())
    name = service_name or environ.get("OTEL_SERVICE_NAME") or attributes.get("service.name")
    attributes["service.name"] = name or "flowcore"
    return attributes


class OtlpHttpSender:
    """OTLP over HTTP: protobuf (default) or JSON, optionally gzip, posted with httpx."""

    def __init__(
        self,
        endpoint: str,
        *,
        protocol: str = "http/protobuf",
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        compression: str | None = None,
        resource: Mapping[str, Any] | None = None,
        certificate: str | None = None,
        client_certificate: str | None = None,
        client_key: str | None = None,
    ) -> None:
        if problem := url_problem(endpoint):
            raise ConfigurationError(f"the collector's endpoint {endpoint!r} {problem}")
        if protocol not in ("http/protobuf", "http/json"):
            raise ConfigurationError(
                f"OTLP protocol {protocol!r} is not one flowcore sends itself; use "
                "'http/protobuf' (default), 'http/json' or 'grpc'"
            )
        if protocol == "http/protobuf" and not protobuf_available():
            raise ConfigurationError(
                "OTEL_EXPORTER_OTLP_ENDPOINT is set but the OTLP protobuf messages are not "
                "installed (opentelemetry-proto); install them with `pip install "
                "'flowcore[otlp]'`, or set OTEL_EXPORTER_OTLP_PROTOCOL=http/json, or unset "
                "the variable"
            )
        if compression not in (None, "", "none", "gzip"):
            raise ConfigurationError(
                f"OTEL_EXPORTER_OTLP_COMPRESSION={compression!r} is not supported; use "
                "'gzip' or 'none'"
            )
        self.target = endpoint
        self.protocol = protocol
        self._encode = encode_protobuf if protocol == "http/protobuf" else encode_json
        self._gzip = compression == "gzip"
        self.resource = dict(resource or resource_attributes(os.environ))
        content_type = (
            "application/x-protobuf" if protocol == "http/protobuf" else "application/json"
        )
        base = {"Content-Type": content_type, **dict(headers or {})}
        if self._gzip:
            base["Content-Encoding"] = "gzip"
        self._headers, self._timeout = base, timeout
        #: How the collector's certificate is checked (and ours shown): the system's
        #: trusted authorities, unless the TLS variables name others.
        self._tls = tls_context(certificate, client_certificate, client_key)
        self._client: httpx.Client | None = None  # made at the first send (an import)

    def send(self, spans: Sequence[SpanRecord]) -> tuple[int, str] | None:
        if self._client is None:
            self._reachable()
        import httpx  # ~0.1 s the first time: only once the collector answered a connect

        body = self._encode(spans, self.resource)
        if self._gzip:
            import gzip  # OTEL_EXPORTER_OTLP_COMPRESSION=gzip only

            body = gzip.compress(body, 5)
        if self._client is None:
            verify: Any = True if self._tls is None else self._tls
            self._client = httpx.Client(headers=self._headers, timeout=self._timeout, verify=verify)
        try:
            response = self._client.post(self.target, content=body)
        except httpx.HTTPError as exc:
            raise ExportFailed(f"{type(exc).__name__}: {exc}") from None
        status = response.status_code
        if status >= 300:
            wait = response.headers.get("retry-after", "").strip()
            raise ExportFailed(
                f"HTTP {status} {response.text[:200]!r}",
                retryable=status in _RETRYABLE or status >= 500,
                refused=status == 400,
                too_large=status == 413,
                retry_after=float(wait) if wait.isascii() and wait.isdigit() else None,
            )
        rejected, message = partial_success(response.content, self.protocol)
        return (rejected, message) if rejected else None

    def _reachable(self) -> None:
        """Raise :class:`ExportFailed` when nothing listens at the collector's address: a
        run whose collector is down then costs a refused connect, not the import of the
        HTTP client and the encoding of a batch.

        Not when the environment names a proxy (``HTTPS_PROXY``, ``HTTP_PROXY``,
        ``ALL_PROXY``), which httpx sends the requests through: the collector may be
        reachable through the proxy only."""
        parts = urlsplit(self.target)
        if _proxied(parts.scheme):
            return
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            socket.create_connection((parts.hostname or "localhost", port), self._timeout).close()
        except OSError as exc:
            raise ExportFailed(f"ConnectError: {exc}") from None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _proxied(scheme: str) -> bool:
    """Whether the environment names a proxy for ``scheme`` (httpx then sends requests
    through it, unless ``NO_PROXY`` names the host: such a host skips the pre-check
    too, which costs it only the pre-check's saving while the collector is down)."""
    import urllib.request  # only while a collector is being reached for the first time

    proxies = urllib.request.getproxies()
    return bool(proxies.get(scheme) or proxies.get("all"))


class SdkSender:
    """Any OpenTelemetry SDK ``SpanExporter`` (``Tracing(exporter=...)``, OTLP over gRPC):
    spans are made SDK objects only here, on the worker thread."""

    def __init__(self, exporter: Any, resource: Mapping[str, Any] | None = None) -> None:
        from opentelemetry.sdk.resources import Resource

        self.exporter = exporter
        self.target = type(exporter).__name__
        self._resource = Resource.create(dict(resource or resource_attributes(os.environ)))

    def send(self, spans: Sequence[SpanRecord]) -> tuple[int, str] | None:
        try:
            result = self.exporter.export([to_readable(s, self._resource) for s in spans])
        except Exception as exc:  # a broken exporter is a failed batch, never a crash
            raise ExportFailed(f"{type(exc).__name__}: {exc}") from None
        if getattr(result, "name", "") != "SUCCESS":
            raise ExportFailed(f"the exporter answered {result!r}")
        return None

    def close(self) -> None:
        try:
            self.exporter.shutdown()
        except Exception:
            pass


#: What an HTTP header's name may hold (RFC 9110's token).
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _headers(text: str) -> dict[str, str]:
    """``OTEL_EXPORTER_OTLP_HEADERS`` (``key=value,...``, URL-encoded) as headers. An
    entry that is no header (no ``=``, a name with spaces, a value with a line break)
    is refused, naming it: sent anyway, it would fail or drop every request (a key
    left out is an outage of 401s for ever)."""
    headers: dict[str, str] = {}
    for number, pair in enumerate(text.split(","), 1):
        if not pair.strip():
            continue
        key, sep, value = pair.partition("=")
        key, value = unquote(key.strip()), unquote(value.strip())
        if not sep or _TOKEN.fullmatch(key) is None or any(c in value for c in "\r\n\0"):
            # Never the entry itself: a value (or an entry missing its "=") may be a secret.
            what = "has no '='" if not sep else f"(named {key[:40]!r}) is not a header"
            raise ConfigurationError(
                f"OTEL_EXPORTER_OTLP_HEADERS: entry {number} {what}; write name=value pairs "
                "separated by commas, URL-encoded (api-key=s%3Dcret,x-team=etl)"
            )
        headers[key] = value
    return headers


def url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as a collector's address, said after it (``None``: it
    is an ``http://`` or ``https://`` URL with a host), with the fix."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port that is no number)
    except ValueError as exc:
        return f"is not a URL ({exc}); write it as http://HOST:PORT, e.g. http://127.0.0.1:4318"
    if parts.scheme not in ("http", "https"):
        hint = f"http://{url}" if "://" not in url else "http://127.0.0.1:4318"
        return f"is not an http:// or https:// URL; write it as {hint}"
    if not parts.hostname:
        return "names no host; write it as http://HOST:PORT, e.g. http://127.0.0.1:4318"
    return None


def tls_context(
    certificate: str | None, client_certificate: str | None, client_key: str | None
) -> ssl.SSLContext | None:
    """The TLS settings the ``OTEL_EXPORTER_OTLP_*CERTIFICATE`` and ``..._CLIENT_KEY``
    variables ask for (``None``: none set, the system's trusted authorities).

    ``certificate``: a PEM file of the authorities that signed the collector's
    certificate (a private one); ``client_certificate`` and ``client_key``: PEM files of
    this client's certificate and key, for a collector that asks for one (mutual TLS).
    Read now, so a wrong path or a file that is no certificate is said when the engine
    starts, naming the variable, not as every batch failing later."""
    if certificate is None and client_certificate is None and client_key is None:
        return None
    if client_key is not None and client_certificate is None:
        raise ConfigurationError(
            "OTEL_EXPORTER_OTLP_CLIENT_KEY is set without OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE;"
            " set both (the client's certificate and its key, PEM files), or neither"
        )
    context = ssl.create_default_context()
    for variable, path in (
        ("CERTIFICATE", certificate),
        ("CLIENT_CERTIFICATE", client_certificate),
        ("CLIENT_KEY", client_key),
    ):
        if path is not None and not os.path.isfile(path):
            raise ConfigurationError(
                f"OTEL_EXPORTER_OTLP_{variable}={path!r} is not a file; name a PEM file "
                "(a path readable by this process), or unset the variable"
            )
    try:
        if certificate is not None:
            variable = "CERTIFICATE"
            context.load_verify_locations(cafile=certificate)
        if client_certificate is not None:
            variable = "CLIENT_CERTIFICATE"
            context.load_cert_chain(client_certificate, client_key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigurationError(
            f"OTEL_EXPORTER_OTLP_{variable}: cannot use it ({exc}); it must name a PEM "
            "file of certificates (with the client's key, in it or in "
            "OTEL_EXPORTER_OTLP_CLIENT_KEY, for CLIENT_CERTIFICATE)"
        ) from None
    return context


def from_environment(environ: Mapping[str, str] | None = None) -> Sender | None:
    """A sender configured by the standard ``OTEL_EXPORTER_OTLP_*`` variables, or ``None``
    when no endpoint is set (or ``OTEL_SDK_DISABLED=true``, ``OTEL_TRACES_EXPORTER=none``).

    Read as the OpenTelemetry specification says: ``..._TRACES_ENDPOINT`` as given, else
    ``..._ENDPOINT`` + ``/v1/traces``; ``..._HEADERS`` (``k=v,...``, URL-encoded);
    ``..._TIMEOUT`` in milliseconds (default 10 s); ``..._COMPRESSION``; ``..._PROTOCOL``
    (``http/protobuf``, ``http/json``, ``grpc``); ``..._CERTIFICATE``,
    ``..._CLIENT_CERTIFICATE`` and ``..._CLIENT_KEY`` (PEM files: see :func:`tls_context`);
    each with its ``TRACES_`` form first. With ``grpc`` the SDK's exporter reads them."""
    env = os.environ if environ is None else environ

    def get(name: str) -> str | None:
        value = env.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}")
        value = value or env.get(f"OTEL_EXPORTER_OTLP_{name}")
        return value.strip() if value else None

    if not export_requested(env):
        return None
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    protocol = get("PROTOCOL") or "http/protobuf"
    resource = resource_attributes(env)
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise ConfigurationError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc but the gRPC exporter is not installed "
                f"({exc}); install it with `pip install opentelemetry-exporter-otlp-proto-grpc`,"
                " or use http/protobuf (the default)"
            ) from exc
        return SdkSender(OTLPSpanExporter(), resource)
    if protocol == "http":
        protocol = "http/protobuf"
    if protocol not in ("http/protobuf", "http/json"):
        raise ConfigurationError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; use "
            "'http/protobuf' (default), 'http/json' or 'grpc'"
        )
    variable = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" if endpoint else "OTEL_EXPORTER_OTLP_ENDPOINT"
    if problem := url_problem(endpoint or base):
        raise ConfigurationError(f"{variable}={endpoint or base!r} {problem}")
    if not endpoint:
        endpoint = base.rstrip("/") + "/v1/traces"
    headers = _headers(get("HEADERS") or "")
    raw_timeout = get("TIMEOUT")
    try:
        timeout = float(raw_timeout) / 1000 if raw_timeout else 10.0
    except ValueError:
        raise ConfigurationError(
            f"OTEL_EXPORTER_OTLP_TIMEOUT={raw_timeout!r} is not a number of milliseconds"
        ) from None
    return OtlpHttpSender(
        endpoint,
        protocol=protocol,
        headers=headers,
        timeout=timeout,
        compression=get("COMPRESSION"),
        resource=resource,
        certificate=get("CERTIFICATE"),
        client_certificate=get("CLIENT_CERTIFICATE"),
        client_key=get("CLIENT_KEY"),
    )


class SpanShipper:
    """Ships the spans of ended runs from ``store`` through ``sender`` (module docstring).

    ``catchup``: runs created longer ago than this (seconds) are skipped rather than
    shipped (``None``: no bound). ``batch``: spans per request. ``lease``: how long a
    claim holds before another shipper may take the run. ``interval``: how often the
    store is asked when nothing woke the shipper (runs other processes ended).
    """

    first_backoff = 1.0
    max_backoff = 30.0

    def __init__(
        self,
        store: Store,
        sender: Sender,
        *,
        catchup: float | None = 86400.0,
        batch: int = 2000,
        lease: float = 120.0,
        interval: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.sender = sender
        self.catchup = catchup
        self.batch = batch
        self.lease = lease
        self.interval = interval
        self.clock = clock
        self.holder = f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        #: Spans and runs the collector accepted; batches it did not.
        self.spans_shipped = 0
        self.runs_shipped = 0
        self.failures = 0
        #: Spans the collector refused for good, and the runs they belong to.
        self.spans_refused = 0
        self.runs_refused = 0
        #: Runs the collector failed on while it took others: tried again after the lease.
        self.runs_held = 0
        #: The most spans one request may carry, once the collector found one too large.
        self._fits: int | None = None
        self._outage: str | None = None  # the error of the outage going on, if any
        self._backoff = 0.0
        self._retry_at = 0.0
        self._wake = anyio.Event()
        self._scope: anyio.CancelScope | None = None
        self._stopped = anyio.Event()
        self._lock = anyio.Lock()  # one pass at a time (the loop's, or the close's)
        self._closing = False
        #: A request of this shipper went through: pages are then read while one is sent.
        self._confirmed = False
        #: The longest one request may take (set when closing: ``export_timeout``).
        self._send_limit: float | None = None

    @property
    def healthy(self) -> bool:
        """No outage going on: the last batch sent was accepted (or none was sent)."""
        return self._outage is None

    def wake(self) -> None:
        """A run ended (its records are committed): ship now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        """Ship until cancelled (the engine's task group runs it) or :meth:`close`."""
        try:
            with anyio.CancelScope() as self._scope:
                await self._loop()
        finally:
            self._stopped.set()

    async def _loop(self) -> None:
        while not self._closing:
            with anyio.move_on_after(self.interval):
                await self._wake.wait()
            self._wake = anyio.Event()
            if time.monotonic() < self._retry_at:
                continue
            try:
                while not self._closing and await self.ship_pending():
                    pass
            except Exception as exc:  # a store error: try again at the next poll
                log.debug("flowcore: shipping spans failed: %s", exc)

    async def close(self, timeout: float) -> None:
        """Ship what is left (this engine's last runs) while the collector is healthy and
        answers each request within ``timeout`` seconds: a big run's spans all go out
        (a collector taking them is waited for), a collector that failed is not tried,
        and one that does not answer in time is left; what is left goes out later
        (module docstring). A pass already going is let finish first (at most
        ``timeout``), so no run is sent twice."""
        self._closing = True
        try:
            if self.healthy and timeout > 0:
                self._send_limit = timeout
                free = False
                with anyio.move_on_after(timeout):
                    await self._lock.acquire()
                    free = True
                if free:
                    self._lock.release()
                    while self.healthy and await self.ship_pending():
                        pass
        except Exception as exc:
            log.debug("flowcore: shipping spans at close failed: %s", exc)
        finally:
            if self._scope is not None:
                self._scope.cancel()  # a pass still going (a hung collector) gives up
                await self._stopped.wait()
            await anyio.to_thread.run_sync(self.sender.close)

    async def ship_pending(self) -> int:
        """Claim ended runs and ship them; returns how many were shipped (0: nothing to
        ship, or the collector failed: the claims are given back)."""
        async with self._lock:
            return await self._ship_pending()

    async def _ship_pending(self) -> int:
        now = self.clock()
        runs = await self.store.claim_span_exports(
            self.holder,
            now=now,
            lease=self.lease,
            limit=16,
            since=None if self.catchup is None else now - self.catchup,
        )
        shipped: list[str] = []
        held: list[str] = []  # failed while the collector took the run after it
        failed: tuple[FlowRunRecord, ExportFailed] | None = None  # to be judged by the next
        outage: ExportFailed | None = None
        try:
            for run in runs:
                try:
                    await self.ship_run(run)
                except ExportFailed as exc:
                    if failed is not None or self._closing:
                        # Two runs in a row: the collector, not a run. Closing, one is
                        # enough: a close waits for no second request to a sick collector.
                        outage = exc
                        break
                    failed = (run, exc)
                    continue
                shipped.append(run.id)
                self.runs_shipped += 1
                if failed is not None:
                    # The collector takes other runs but failed on this one (its data
                    # trips a bug of the collector, an SDK exporter's permanent error):
                    # it keeps its claim until the lease runs out, so it is tried again
                    # then, and does not go first at every pass, holding back the rest.
                    held.append(failed[0].id)
                    self._held(*failed)
                    failed = None
            if outage is None and failed is not None and not shipped:
                outage = failed[1]  # it failed, and nothing else was taken: an outage
        finally:
            with anyio.CancelScope(shield=True):
                if shipped:
                    await self.store.end_span_exports(shipped, self.holder, shipped=True)
                rest = [r.id for r in runs if r.id not in shipped and r.id not in held]
                if rest:
                    await self.store.end_span_exports(rest, self.holder, shipped=False)
        if outage is not None:
            self._failed(outage)
            return 0
        if shipped:
            self._recovered()
        return len(shipped)

    async def ship_run(self, run: FlowRunRecord) -> int:
        """Send every span of ``run``; returns how many the collector took.

        Raises :class:`ExportFailed` when the collector is down, failed or did not
        answer: the run is shipped again later. Spans it refused for good (HTTP 400,
        or one span too large for it) are set aside, counted in ``spans_refused`` and
        said in a warning, rather than be sent again and again ahead of every later run.
        """
        tally = _Tally()
        try:
            async with anyio.create_task_group() as tg:
                # One page is sent (on a worker thread) while the next is read.
                sending = anyio.Event()
                sending.set()
                async for spans in _pages(self.store, run, self.batch):
                    await sending.wait()
                    sending = anyio.Event()
                    if self._confirmed:
                        tg.start_soon(self._send, spans, tally, sending)
                    else:  # until a request went through: no page read for nothing
                        await self._send(spans, tally, sending)
        except BaseExceptionGroup as group:
            failed = group.subgroup(ExportFailed)
            if failed is None:
                raise
            first = failed.exceptions[0]
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
        if tally.refused:
            self._refused(run, tally)
        return tally.taken

    async def _send(self, spans: list[SpanRecord], tally: _Tally, done: anyio.Event) -> None:
        try:
            fits = self._fits
            if fits is not None and len(spans) > fits:  # what the collector said it takes
                for i in range(0, len(spans), fits):
                    await self._post(spans[i : i + fits], tally)
            else:
                await self._post(spans, tally)
        finally:
            done.set()

    async def _post(self, spans: list[SpanRecord], tally: _Tally) -> None:
        """One request of ``spans``; in halves while the collector finds it too large."""
        limit = self._send_limit
        try:
            with anyio.fail_after(limit) if limit is not None else contextlib.nullcontext():
                partial = await anyio.to_thread.run_sync(
                    self.sender.send, spans, abandon_on_cancel=True
                )
        except TimeoutError:
            raise ExportFailed(f"no answer within {limit:g} s") from None
        except ExportFailed as exc:
            if exc.too_large and len(spans) > 1:
                # Its size limit is its own (an OTLP receiver's, a proxy's): learn it.
                half = len(spans) // 2
                self._fits = half if self._fits is None else min(self._fits, half)
                await self._post(spans[:half], tally)
                await self._post(spans[half:], tally)
                return
            if not (exc.refused or exc.too_large):
                raise
            self._set_aside(tally, len(spans), str(exc))
            return
        self._confirmed = True
        taken = len(spans)
        if partial is not None:  # taken in part: the rest is not to be sent again (OTLP)
            rejected, message = partial
            rejected = min(rejected, taken)
            self._set_aside(tally, rejected, f"partial success: {message!r}")
            taken -= rejected
        self.spans_shipped += taken
        tally.taken += taken

    def _set_aside(self, tally: _Tally, count: int, reason: str) -> None:
        """``count`` spans of ``tally``'s run the collector refused for good, for ``reason``."""
        tally.refused += count
        tally.reason = reason
        self.spans_refused += count

    def _held(self, run: FlowRunRecord, exc: ExportFailed) -> None:
        self.runs_held += 1
        label = run.id[:8]
        _say(
            self.runs_held,
            "flowcore: the span collector %s failed on run %s (%s) while it took the runs "
            "after it; the run is tried again in %g s (`flowcore trace export %s` sends it "
            "now)",
            self.sender.target,
            label,
            exc,
            self.lease,
            label,
        )

    def _refused(self, run: FlowRunRecord, tally: _Tally) -> None:
        self.runs_refused += 1
        label = run.id[:8]
        _say(
            self.runs_refused,
            "flowcore: the span collector %s refused %d of the %d spans of run %s (%s); "
            "they are not sent again on their own (OTLP asks clients not to repeat such "
            "a request): `flowcore trace export %s` sends the run again",
            self.sender.target,
            tally.refused,
            tally.refused + tally.taken,
            label,
            tally.reason,
            label,
        )

    def _failed(self, exc: ExportFailed) -> None:
        self.failures += 1
        if self._outage is None:
            self._outage = str(exc)
            log.warning(
                "flowcore: the span collector %s did not take spans (%s); they stay in the "
                "store and are shipped when it does (`flowcore trace export` sends them too)",
                self.sender.target,
                exc,
            )
        self._backoff = min(self.max_backoff, max(self.first_backoff, self._backoff * 2))
        # A collector that said how long to wait (429, 503 with Retry-After) is heard,
        # up to a bound: a huge or hostile value must not stop shipping for days.
        wait = max(self._backoff, min(exc.retry_after or 0.0, _MAX_RETRY_AFTER))
        self._retry_at = time.monotonic() + wait

    def _recovered(self) -> None:
        if self._outage is not None:
            log.warning("flowcore: the span collector %s takes spans again", self.sender.target)
        self._outage = None
        self._backoff = self._retry_at = 0.0


def _say(count: int, message: str, *args: Any) -> None:
    """Warn of the ``count``-th run of a kind set aside, while there are few: a collector
    that refuses every run must not write a line per run for ever."""
    if count <= _REFUSALS_SAID:
        last = "; the ones after this are not said" if count == _REFUSALS_SAID else ""
        log.warning(message + "%s", *args, last)


class _Tally:
    """What the collector did with the spans of one run: took, refused (and why)."""

    __slots__ = ("reason", "refused", "taken")

    def __init__(self) -> None:
        self.taken = 0
        self.refused = 0
        self.reason = ""


async def _pages(store: Store, run: FlowRunRecord, size: int) -> AsyncIterator[list[SpanRecord]]:
    """The spans of ``run`` in pages of ``size``, read as they are sent (a run of a million
    tasks is never held whole): its span rows (a top-level run also takes the rows of its
    trace that name no run), its own span rebuilt from its record unless a row holds it,
    then its task runs' spans."""
    trace_id = run.trace_id
    if trace_id is None:
        return
    own = [
        s
        for s in await store.list_spans(trace_id)
        if s.run_id == run.id or (s.run_id is None and run.parent_run_id is None)
    ]
    span = flow_span(run)
    if span is not None and all(s.span_id != span.span_id for s in own):
        own.append(span)
    for i in range(0, len(own), size):
        yield own[i : i + size]
    offset = 0
    while True:
        records = await store.list_task_runs(run.id, offset=offset, limit=size)
        offset += len(records)
        spans = [task_span(r, trace_id) for r in records if r.span_id]
        if spans:
            yield spans
        if len(records) < size:
            return
