"""Assets: named, versioned data products, with lineage, partitions, checks and freshness.

The definitions and their pure arithmetic, tested on plain values (no store, no
engine): :func:`asset` and :class:`AssetGraph`, partitions and the compact
:class:`PartitionSet`, partition mappings, checks, ``Output``, freshness and
automation policies, code and data versions, and the I/O protocol with the files
built-in. On top, what runs and reads them: :func:`materialize` (a flow run, a task
run per asset per partition; :func:`backfill` for a range of partitions, resumable)
and :func:`status_async` (fresh, stale and why, missing, failed-check, overdue, from
the state the store keeps incrementally). Definitions are stored with a versioned
description of their parameters, which :func:`rebuild_definition` makes into values
again, so readers without the code judge missing partitions and freshness too.
Layers, bottom up: ``keys``/``partition_set``/``versions``; ``partitions``;
``mappings``/``freshness``/``automation``/``output``; ``checks``/``io``/``description``;
``definition``; ``graph``; ``status``/``marks``; ``materialize``.
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
from .description import StoredDefinition, describe, rebuild_definition
from .errors import (
    AssetDefinitionError,
    AssetValueMissing,
    DataVersionError,
    MaterializationFailed,
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
from .materialize import (
    MaterializeResult,
    add_partitions,
    backfill,
    backfill_async,
    materialize,
    materialize_async,
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
from .status import AssetStatus, status_async
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
    "AssetStatus",
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
    "MaterializationFailed",
    "MaterializeResult",
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
    "StoredDefinition",
    "TimeWindowMapping",
    "TimeWindowPartitions",
    "add_partitions",
    "asset",
    "asset_check",
    "backfill",
    "backfill_async",
    "code_fingerprint",
    "data_version",
    "describe",
    "materialize",
    "materialize_async",
    "on_cron",
    "on_missing",
    "on_upstream_change",
    "rebuild_definition",
    "status_async",
]
