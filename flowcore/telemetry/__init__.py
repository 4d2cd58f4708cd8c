"""Telemetry: OpenTelemetry spans of flow and task runs, persisted with them and exported.

- :mod:`.tracing`: :class:`SpanMaker`, which makes the spans on the hot path;
- :mod:`.task_spans`: a run's span (a task run's, a flow run's) rebuilt from its record;
- :mod:`.sdk`: the bridge to the OpenTelemetry SDK (the application's provider,
  SDK span objects);
- :mod:`.otlp`: OTLP requests made straight from span records;
- :mod:`.shipper`: shipping the spans of ended runs to a collector from the store,
  durably, never from the hot path;
- :mod:`.environment`: whether the standard ``OTEL_*`` variables ask for export.

The shipper's names are imported when first read, through ``__getattr__`` (PEP 562,
as ``flowcore.__getattr__``; each also under ``TYPE_CHECKING``): an engine that
exports nothing (:func:`export_requested` says so) never loads it or the OTLP encoders.
"""

import importlib
from typing import TYPE_CHECKING

from .environment import export_requested
from .sdk import configured_provider
from .task_spans import flow_span, task_span
from .tracing import SpanMaker

if TYPE_CHECKING:
    # Imported at their first use, by __getattr__ below (for type checkers, as if here).
    from .shipper import SdkSender, SpanShipper, from_environment

__all__ = [
    "SdkSender",
    "SpanMaker",
    "SpanShipper",
    "configured_provider",
    "export_requested",
    "flow_span",
    "from_environment",
    "task_span",
]

#: The names imported at their first use, and their modules.
_LAZY: dict[str, str] = {
    "SdkSender": ".shipper",
    "SpanShipper": ".shipper",
    "from_environment": ".shipper",
}

if not TYPE_CHECKING:  # to type checkers, these names are imported above

    def __getattr__(name: str) -> object:
        """A name of :data:`_LAZY`, imported at its first read."""
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *_LAZY})
