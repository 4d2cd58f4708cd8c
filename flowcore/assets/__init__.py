"""Assets: named, versioned data products, with lineage, partitions, checks and freshness.

This first part holds the definitions and their pure arithmetic, tested on plain
values (no store, no engine): :func:`asset` and :class:`AssetGraph`, partitions
and the compact :class:`PartitionSet`, partition mappings, checks, ``Output``,
freshness and automation policies, code and data versions, and the I/O protocol
with the files built-in. Layers, bottom up: ``keys``/``partition_set``/``versions``;
``partitions``; ``mappings``/``freshness``/``automation``/``output``;
``checks``/``io``; ``definition``; ``graph``.
"""

from __future__ import annotations

from .automation import (
    Automation,
    OnCron,
    OnMissing,
    OnUpstreamChange,
    on_cron,
    on_missing,
    on_upstream_change,
)
from .checks import AssetCheck, CheckResult, asset_check
from .definition import PARTITION_PARAMETER, Asset, asset
from .errors import (
    AssetDefinitionError,
    AssetValueMissing,
    DataVersionError,
    PartitionKeyError,
    PartitionSetCorrupted,
)
from .freshness import Freshness
from .graph import AssetGraph
from .io import RESULT_IO, AssetIO, FilesIO
from .mappings import (
    AllPartitionsMapping,
    IdentityMapping,
    PartitionMapping,
    StaticMapping,
    TimeWindowMapping,
)
from .output import Output
from .partition_set import PartitionSet
from .partitions import (
    DailyPartitions,
    DynamicPartitions,
    HourlyPartitions,
    KeyRange,
    Partitions,
    StaticPartitions,
    TimeWindowPartitions,
)
from .versions import code_fingerprint, data_version

__all__ = [
    "PARTITION_PARAMETER",
    "RESULT_IO",
    "AllPartitionsMapping",
    "Asset",
    "AssetCheck",
    "AssetDefinitionError",
    "AssetGraph",
    "AssetIO",
    "AssetValueMissing",
    "Automation",
    "CheckResult",
    "DailyPartitions",
    "DataVersionError",
    "DynamicPartitions",
    "FilesIO",
    "Freshness",
    "HourlyPartitions",
    "IdentityMapping",
    "KeyRange",
    "OnCron",
    "OnMissing",
    "OnUpstreamChange",
    "Output",
    "PartitionKeyError",
    "PartitionMapping",
    "PartitionSet",
    "PartitionSetCorrupted",
    "Partitions",
    "StaticMapping",
    "StaticPartitions",
    "TimeWindowMapping",
    "TimeWindowPartitions",
    "asset",
    "asset_check",
    "code_fingerprint",
    "data_version",
    "on_cron",
    "on_missing",
    "on_upstream_change",
]
