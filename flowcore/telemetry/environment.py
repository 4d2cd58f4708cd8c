"""Whether the standard OpenTelemetry variables ask for spans to be exported.

Read by every engine that opens, before anything of the shipper is imported: a process
that exports nothing (most first flows) never loads the shipper, the OTLP encoders or
what they import (about a millisecond of a cold start, issue 17).
:func:`~.shipper.from_environment` reads the rest of the variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["export_requested"]


def export_requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
    ``OTEL_EXPORTER_OTLP_ENDPOINT``) and not turned off (``OTEL_SDK_DISABLED=true``,
    ``OTEL_TRACES_EXPORTER=none``), as the OpenTelemetry specification reads them."""
    env = os.environ if environ is None else environ
    if not (
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    ):
        return False
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() != "none"
