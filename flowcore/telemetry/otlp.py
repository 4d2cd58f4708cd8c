"""OTLP trace requests made straight from flowcore's span records.

The shipper (:mod:`.shipper`) sends stored spans by the thousand; going through the
SDK (a ``ReadableSpan`` per span, then the SDK's own encoder) cost several times the
encoding itself. Here a batch of :class:`~flowcore.records.SpanRecord` becomes one
``ExportTraceServiceRequest``: protobuf through the official ``opentelemetry-proto``
messages (what ``OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf``, the default, sends), or
OTLP/JSON through msgspec (``http/json``: ids in hex, 64-bit integers as strings, as
the OTLP/JSON mapping asks).

Attribute values keep their type when OTLP has one (strings, booleans, integers,
floats, and homogeneous lists of those); anything else is sent as its ``repr``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import msgspec

from ..records import SpanRecord

__all__ = ["encode_json", "encode_protobuf", "partial_success", "protobuf_available"]

#: OTLP's SpanKind numbers (``SPAN_KIND_INTERNAL`` ...) by the names records keep.
_KINDS: Final = {"INTERNAL": 1, "SERVER": 2, "CLIENT": 3, "PRODUCER": 4, "CONSUMER": 5}
#: OTLP's StatusCode numbers.
_STATUS: Final = {"UNSET": 0, "OK": 1, "ERROR": 2}
_INT64: Final = (-(1 << 63), (1 << 63) - 1)


def protobuf_available() -> bool:
    """Whether ``opentelemetry-proto`` (installed with ``flowcore[otlp]``) is installed;
    found without importing it (tens of milliseconds, paid at the first send instead)."""
    try:
        return importlib.util.find_spec("opentelemetry.proto.collector.trace.v1") is not None
    except (ImportError, ValueError):
        return False


def _by_scope(spans: Iterable[SpanRecord]) -> dict[str, list[SpanRecord]]:
    scopes: dict[str, list[SpanRecord]] = {}
    for span in spans:
        scopes.setdefault(span.scope or "flowcore", []).append(span)
    return scopes


# -- protobuf ------------------------------------------------------------------------------


def encode_protobuf(spans: Sequence[SpanRecord], resource: Mapping[str, Any]) -> bytes:
    """One ``ExportTraceServiceRequest`` holding ``spans``, serialised."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    _pb_attributes(resource_spans.resource.attributes, resource)
    for scope, members in _by_scope(spans).items():
        scope_spans = resource_spans.scope_spans.add()
        scope_spans.scope.name = scope
        out = scope_spans.spans
        for record in members:
            span = out.add()
            span.trace_id = bytes.fromhex(record.trace_id)
            span.span_id = bytes.fromhex(record.span_id)
            if record.parent_id:
                span.parent_span_id = bytes.fromhex(record.parent_id)
            span.name = record.name
            span.kind = _KINDS.get(record.kind, 1)
            span.start_time_unix_nano = record.start
            span.end_time_unix_nano = record.end or record.start
            if record.attributes:
                _pb_attributes(span.attributes, record.attributes)
            for name, at, attributes in record.events:
                event = span.events.add()
                event.name = name
                event.time_unix_nano = at
                if attributes:
                    _pb_attributes(event.attributes, attributes)
            for trace_id, span_id in record.links:
                link = span.links.add()
                link.trace_id = bytes.fromhex(trace_id)
                link.span_id = bytes.fromhex(span_id)
            code = _STATUS.get(record.status, 0)
            if code:
                span.status.code = code
                if record.status_message:
                    span.status.message = record.status_message
    encoded: bytes = request.SerializeToString()
    return encoded


def _pb_attributes(into: Any, attributes: Mapping[str, Any]) -> None:
    for key, value in attributes.items():
        kv = into.add()
        kv.key = str(key)
        _pb_value(kv.value, value)


def _pb_value(into: Any, value: Any) -> None:
    kind = type(value)
    if kind is str:
        into.string_value = value
    elif kind is bool:
        into.bool_value = value
    elif kind is int and _INT64[0] <= value <= _INT64[1]:
        into.int_value = value
    elif kind is float:
        into.double_value = value
    elif kind in (list, tuple):
        array = into.array_value
        for item in value:
            _pb_value(array.values.add(), item)
    elif value is None:
        into.string_value = ""
    else:
        into.string_value = repr(value)


# -- JSON ----------------------------------------------------------------------------------

_json = msgspec.json.Encoder()


def encode_json(spans: Sequence[SpanRecord], resource: Mapping[str, Any]) -> bytes:
    """The same request in the OTLP/JSON mapping."""
    scopes = []
    for scope, members in _by_scope(spans).items():
        out = []
        for record in members:
            span: dict[str, Any] = {
                "traceId": record.trace_id,
                "spanId": record.span_id,
                "name": record.name,
                "kind": _KINDS.get(record.kind, 1),
                "startTimeUnixNano": str(record.start),
                "endTimeUnixNano": str(record.end or record.start),
            }
            if record.parent_id:
                span["parentSpanId"] = record.parent_id
            if record.attributes:
                span["attributes"] = _json_attributes(record.attributes)
            if record.events:
                span["events"] = [
                    {"name": n, "timeUnixNano": str(at), "attributes": _json_attributes(a)}
                    for n, at, a in record.events
                ]
            if record.links:
                span["links"] = [{"traceId": t, "spanId": s} for t, s in record.links]
            code = _STATUS.get(record.status, 0)
            if code:
                span["status"] = {"code": code, "message": record.status_message or ""}
            out.append(span)
        scopes.append({"scope": {"name": scope}, "spans": out})
    return _json.encode(
        {
            "resourceSpans": [
                {"resource": {"attributes": _json_attributes(resource)}, "scopeSpans": scopes}
            ]
        }
    )


def _json_attributes(attributes: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"key": str(k), "value": _json_value(v)} for k, v in attributes.items()]


def _json_value(value: Any) -> dict[str, Any]:
    kind = type(value)
    if kind is str:
        return {"stringValue": value}
    if kind is bool:
        return {"boolValue": value}
    if kind is int and _INT64[0] <= value <= _INT64[1]:
        return {"intValue": str(value)}
    if kind is float:
        if value != value or value in (float("inf"), float("-inf")):
            return {"stringValue": repr(value)}  # JSON has no NaN or infinity
        return {"doubleValue": value}
    if kind in (list, tuple):
        return {"arrayValue": {"values": [_json_value(v) for v in value]}}
    if value is None:
        return {"stringValue": ""}
    return {"stringValue": repr(value)}


# -- responses -------------------------------------------------------------------------------


class _JsonPartial(msgspec.Struct, rename="camel"):
    rejected_spans: int | str = 0  # an int64: OTLP/JSON may write it as a string
    error_message: str = ""


class _JsonResponse(msgspec.Struct, rename="camel"):
    partial_success: _JsonPartial | None = None


def partial_success(body: bytes, protocol: str) -> tuple[int, str]:
    """``(rejected spans, error message)`` of a collector's ``ExportTraceServiceResponse``
    (``(0, "")`` when it took everything, or the body is empty or unreadable).

    OTLP lets a collector take part of a request with HTTP 200 and say in the body how
    many spans it rejected, which a client must not send again; reading it is how
    those spans are counted and said rather than taken for delivered."""
    if not body:
        return 0, ""
    try:
        if protocol == "http/json":
            partial = msgspec.json.decode(body, type=_JsonResponse).partial_success
            if partial is None:
                return 0, ""
            return int(partial.rejected_spans), partial.error_message
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceResponse,
        )

        response = ExportTraceServiceResponse()
        response.ParseFromString(body)
        return response.partial_success.rejected_spans, response.partial_success.error_message
    except Exception:  # a body that is not an OTLP response: nothing to learn from it
        return 0, ""
