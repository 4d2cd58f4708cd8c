"""``flowcore.Output``: an asset's value with a data version and metadata of its own."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from ..errors import ConfigurationError

__all__ = ["Output", "check_metadata"]

T = TypeVar("T")


def check_metadata(metadata: object, what: str) -> Mapping[str, Any]:
    """``metadata`` (a dict with str keys, or None) as a read-only mapping."""
    if metadata is None:
        return MappingProxyType({})
    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
        raise ConfigurationError(
            f"{what} `metadata` must be a dict with str keys (such as {{'rows': 10}}), "
            f"got {metadata!r}"
        )
    return MappingProxyType(dict(metadata))


@dataclass(frozen=True, slots=True)
class Output(Generic[T]):
    """What an asset function may return instead of its bare value.

    ``data_version``: the version of the data (default: a hash of the value, see
    :mod:`flowcore.assets.versions`); give one when the value has no stable encoding
    (a DataFrame) or when you know a cheaper one (a source's ETag). Downstream assets
    are stale when it changes, and stay fresh when it does not. ``metadata``: shown
    with the materialisation (row count, bytes, a preview).

    >>> out = flowcore.assets.Output([1, 2, 3], metadata={"rows": 3})
    >>> out.value, out.data_version, dict(out.metadata)
    ([1, 2, 3], None, {'rows': 3})
    """

    value: T
    data_version: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        version: object = self.data_version
        if version is not None and (not isinstance(version, str) or not version):
            raise ConfigurationError(
                f"Output `data_version` must be a non-empty str or None, got {version!r}"
            )
        object.__setattr__(self, "metadata", check_metadata(self.metadata, "Output"))
