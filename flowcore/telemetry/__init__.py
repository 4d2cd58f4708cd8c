"""Telemetry: OpenTelemetry spans of flow and task runs, persisted with them and exported.

- :mod:`.tracing`: :class:`SpanMaker`, which makes the spans on the hot path;
- :mod:`.task_spans`: a run's span (a task run's, a flow run's) rebuilt from its record;
- :mod:`.sdk`: the bridge to the OpenTelemetry SDK (the application's provider,
  SDK span objects);
- :mod:`.otlp`: OTLP requests made straight from span records;
- :mod:`.shipper`: shipping the spans of ended runs to a collector from the store,
  durably, never from the hot path.
"""

from .sdk import configured_provider
from .shipper import SdkSender, SpanShipper, from_environment
from .task_spans import flow_span, task_span
from .tracing import SpanMaker

__all__ = [
    "SdkSender",
    "SpanMaker",
    "SpanShipper",
    "configured_provider",
    "flow_span",
    "from_environment",
    "task_span",
]
