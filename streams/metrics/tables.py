"""Metric state: the newest point per series, and the Cassandra table of raw points."""

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
