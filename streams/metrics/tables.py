"""Metric state: the newest point per series, and the Cassandra tables of the KairosDB layout.

Raw points, rollups and the row-key index share KairosDB's partitioning: metric + row time
(three-week rows) + canonical tag set, with the timestamp as the clustering column.
"""

from __future__ import annotations

from connectors.cassandra import TableDefinition

LATEST_TABLE = "metrics.latest"

RAW_POINTS = TableDefinition(
    name="raw_points",
    columns={
        "metric": "text",
        "row_time": "bigint",
        "tags": "text",
        "ts": "bigint",
        "value": "double",
    },
    partition_key=("metric", "row_time", "tags"),
    clustering=("ts",),
)

AGGREGATE_COLUMNS = {
    "count": "bigint",
    "sum": "double",
    "m2": "double",
    "min": "double",
    "max": "double",
    "first_ts": "bigint",
    "first_value": "double",
    "last_ts": "bigint",
    "last_value": "double",
    "sketch": "blob",
}


def _rollup_table(name: str) -> TableDefinition:
    return TableDefinition(
        name=name,
        columns={"metric": "text", "row_time": "bigint", "tags": "text", "ts": "bigint"}
        | AGGREGATE_COLUMNS,
        partition_key=("metric", "row_time", "tags"),
        clustering=("ts",),
    )


ROLLUPS_MINUTE = _rollup_table("rollups_1m")
ROLLUPS_HOUR = _rollup_table("rollups_1h")

# KairosDB's row_keys: which tag sets a metric has in each three-week row.
ROW_KEYS = TableDefinition(
    name="row_keys",
    columns={"metric": "text", "row_time": "bigint", "tags": "text"},
    partition_key=("metric", "row_time"),
    clustering=("tags",),
)

# KairosDB's string_index: one partition each for metric names, tag names and tag values.
STRING_INDEX = TableDefinition(
    name="string_index",
    columns={"kind": "text", "value": "text"},
    partition_key=("kind",),
    clustering=("value",),
)
METRIC_NAMES, TAG_NAMES, TAG_VALUES = "metric_names", "tag_names", "tag_values"

# Every tag set ever accepted per metric: the cardinality guard's memory.
METRIC_SERIES = TableDefinition(
    name="metric_series",
    columns={"metric": "text", "tags": "text"},
    partition_key=("metric",),
    clustering=("tags",),
)

CARDINALITY = TableDefinition(
    name="metric_cardinality",
    columns={
        "metric": "text",
        "series": "int",
        "series_limit": "int",
        "rejected": "bigint",
        "worst_tag": "text",
        "worst_tag_values": "int",
        "updated_ms": "bigint",
    },
    partition_key=("metric",),
)

# The largest event time each source partition's rollups have seen (see rollup.PartitionRollups).
ROLLUP_PROGRESS = TableDefinition(
    name="rollup_progress",
    columns={"source_partition": "int", "max_event_ms": "bigint"},
    partition_key=("source_partition",),
)

ALL_TABLES = (
    RAW_POINTS,
    ROLLUPS_MINUTE,
    ROLLUPS_HOUR,
    ROW_KEYS,
    STRING_INDEX,
    METRIC_SERIES,
    CARDINALITY,
    ROLLUP_PROGRESS,
)
