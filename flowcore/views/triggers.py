"""Parameters of a trigger, checked against a served flow's schema as ``flowcore trigger``
checks them: names here (unknown, missing), values when the run starts (a value that does
not fit makes a run recorded Failed, never a dropped trigger). Shared by the web UI."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from ..errors import ConfigurationError

__all__ = ["check_parameter_names", "form_value"]


def form_value(raw: str, schema: Any) -> Any:
    """A value typed as text: kept as text where the schema takes text (the server converts
    text by the annotation: ``"20"`` → ``20``), else read as JSON when it is JSON (lists,
    objects, null), else kept as text."""
    if isinstance(schema, dict) and schema.get("type") == "string":
        return raw
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return raw


def check_parameter_names(values: Mapping[str, Any], schema: dict[str, Any] | None) -> None:
    """Raise ``ConfigurationError`` listing every unknown parameter and every missing one
    (required, without a default) of the flow as its server registered it."""
    if schema is None:
        return
    properties = schema.get("properties") or {}
    problems = []
    unknown = [n for n in values if n not in properties]
    if unknown and not schema.get("additionalProperties", False):
        known = ", ".join(properties) or "none"
        problems.append(
            f"unknown parameter{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))} (the flow's parameters: {known})"
        )
    missing = [n for n in schema.get("required", []) if n not in values]
    if missing:
        problems.append(
            f"missing parameter{'s' if len(missing) > 1 else ''} "
            f"{', '.join(map(repr, missing))}, which ha{'ve' if len(missing) > 1 else 's'} "
            "no default"
        )
    if problems:
        title = schema.get("title", "the flow")
        raise ConfigurationError(
            f"flow {title!r} (as its server registered it): " + "; ".join(problems)
        )
