"""The errors of assets, under flowcore's root (:class:`flowcore.FlowcoreError`).

::

    ConfigurationError
    ├── AssetDefinitionError      an asset, a check or a graph of them is wrong (at definition)
    └── PartitionKeyError         a string that is not a key of the partitions it is given to
    AssetValueMissing (LookupError)   no stored value for an asset (partition)
    DataVersionError (TypeError)      a value with no stable encoding to hash
    PartitionSetCorrupted (ValueError)  stored bytes that are not a partition set
    MaterializationFailed             a materialisation run in which an asset failed, failed
                                      a blocking check or was blocked (the run's error)

Definition problems are :class:`ConfigurationError`\\ s, so code that catches a bad
option of a task catches a bad asset too.
"""

from __future__ import annotations

from ..errors import ConfigurationError, FlowcoreError

__all__ = [
    "AssetDefinitionError",
    "AssetValueMissing",
    "DataVersionError",
    "MaterializationFailed",
    "PartitionKeyError",
    "PartitionSetCorrupted",
]


class AssetDefinitionError(ConfigurationError):
    """An asset, an asset check, or the graph they make is invalid: an unknown upstream,
    a cycle, a duplicate key, an impossible partition mapping. The message names the
    assets involved and the fix."""


class PartitionKeyError(ConfigurationError):
    """A string that is not a key of the partitions it was given to; the message gives
    the expected form and an example."""


class AssetValueMissing(FlowcoreError, LookupError):
    """No value is stored for this asset (partition): it was never materialised, or its
    file was removed. The message names the asset, the partition and where it looked."""


class DataVersionError(FlowcoreError, TypeError):
    """A value has no stable encoding to compute its data version from; return
    ``flowcore.Output(value, data_version=...)`` to give one."""


class PartitionSetCorrupted(FlowcoreError, ValueError):
    """Bytes given to ``PartitionSet.from_bytes`` are not an encoding it can read: corrupt,
    truncated, or written by a newer flowcore (a version byte it does not know)."""


class MaterializationFailed(FlowcoreError):
    """The error a materialisation (or backfill) flow run ends with when an asset failed,
    failed a blocking check or was blocked: the run is Failed, so ``flowcore resume``
    retries what did not complete. ``materialize()`` returns its result all the same;
    the message counts each outcome and names the first few."""
