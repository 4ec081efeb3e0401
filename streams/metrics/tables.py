"""Metric state: the newest point per series, and the Cassandra tables of the KairosDB layout.

Raw points, rollups and the row-key index share KairosDB's partitioning: metric + row time
(three-week rows) + canonical tag set, with the timestamp as the clustering column.
"""

from __future__ import annotations

from typing import Any

from connectors.cassandra import TableDefinition
from streams.metrics.columns import (
    PACKED_COLUMNS,
    PACKED_OFFSETS,
    PACKED_SKETCH_COLUMNS,
    pack_minutes,
)
from streams.metrics.model import row_time
from streams.metrics.rollup import Aggregate, SeriesId

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

# The minute rollups of one series-hour packed into one row, one array per field and the
# sketches' bins as arrays (see columns.pack_minutes): what rollup queries read, 24 rows a day.
ROLLUPS_MINUTE_PACKED = TableDefinition(
    name="rollups_1m_packed",
    columns={"metric": "text", "row_time": "bigint", "tags": "text", "ts": "bigint"}
    | {
        column: "blob"
        for column in (
            PACKED_OFFSETS[0],
            *(c for c, _ in PACKED_COLUMNS.values()),
            *PACKED_SKETCH_COLUMNS,
        )
    },
    partition_key=("metric", "row_time", "tags"),
    clustering=("ts",),
)

# A counter per metric and hour, incremented by every writer of rollups_1m_packed and rollups_1h
# after its rows of that hour are acknowledged: what the query cache checks (cache.py). A counter,
# not a value overwritten last-write-wins, so no increment is lost to clock skew between writers;
# a retried increment only counts twice, which still changes the value. Created by
# MetricStore.open, not ensure_table (a counter table takes no INSERT).
ROLLUP_HOUR_VERSIONS = TableDefinition(
    name="rollup_hour_versions",
    columns={"metric": "text", "hour": "bigint", "version": "counter"},
    partition_key=("metric",),
    clustering=("hour",),
)

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
    ROLLUPS_MINUTE_PACKED,
    ROW_KEYS,
    STRING_INDEX,
    METRIC_SERIES,
    CARDINALITY,
    ROLLUP_PROGRESS,
)


def rollup_row(key: tuple[SeriesId, int], aggregate: Aggregate) -> dict[str, Any]:
    """The rollups_1m or rollups_1h row of one series-minute or series-hour."""
    (metric, tags), start = key
    return {"metric": metric, "row_time": row_time(start), "tags": tags, "ts": start} | (
        aggregate.row()
    )


def packed_row(key: tuple[SeriesId, int], minutes: dict[int, Aggregate]) -> dict[str, Any]:
    """The rollups_1m_packed row of one series-hour from its minute aggregates (with sketches).

    The one place that builds packed rows: the rollup agent, deletes and backfill all call it.
    """
    (metric, tags), hour = key
    return {"metric": metric, "row_time": row_time(hour), "tags": tags, "ts": hour} | (
        pack_minutes(hour, minutes)
    )


def partition_order(row: dict[str, Any]) -> tuple[str, int, str, int]:
    """Rows of one Cassandra partition next to each other, so they go as one batch."""
    return (row["metric"], row["row_time"], row["tags"], row["ts"])
