"""Telemetry: OpenTelemetry spans of flow and task runs, persisted with them and exported.

- :mod:`.tracing`: :class:`SpanMaker`, which makes the spans on the hot path;
- :mod:`.task_spans`: a task run's span rebuilt from its record;
- :mod:`.sdk`: the bridge to the OpenTelemetry SDK (the application's provider,
  SDK span objects);
- :mod:`.export`: shipping spans to a collector without ever blocking a flow.
"""

from .export import SpanExport, from_environment
from .sdk import configured_provider
from .task_spans import task_span
from .tracing import SpanMaker

__all__ = ["SpanExport", "SpanMaker", "configured_provider", "from_environment", "task_span"]
