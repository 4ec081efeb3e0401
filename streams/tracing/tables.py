"""Cassandra tables of the CAT reports: closed minute rows, hour rows, and the minute index.

Minute rows are partitioned by (domain, report, hour): one read gives an hour's minutes, which
the hour row is merged from, and a minute query is a clustering prefix. Hour rows are
partitioned by (domain, report, day) the same way, so a day report is one read and a merge. The
primary key is the row's identity (period start, host, type, name): rewriting a row, as a replay
or a later revision does, is an upsert, never a second row. Transaction rows also carry their
percentile lines as columns (`p50_us` ... `p999_us`), so a report read selects no sketch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connectors.cassandra import TableDefinition
from streams.tracing.model import DAY_MS, HOUR_MS, PERCENTILE_COLUMNS

ROW_COLUMNS = {
    "domain": "text",
    "report": "text",
    "bucket_ms": "bigint",
    "period_start_ms": "bigint",
    "host": "text",
    "type": "text",
    "name": "text",
    "count": "bigint",
    "fail_count": "bigint",
    "sum_us": "bigint",
    "min_us": "bigint",
    "max_us": "bigint",
    "sum_squares": "double",
    "sketch": "blob",
    "sketch_format": "text",
    **dict.fromkeys(PERCENTILE_COLUMNS, "double"),
    "duration_counts": "map<text, bigint>",
    "success_message_id": "text",
    "fail_message_id": "text",
    "longest_message_id": "text",
    "sample_message_ids": "list<text>",
    "late_count": "bigint",
    "revision": "int",
    "closed_at_ms": "bigint",
    "last_offset": "bigint",
}
ROW_KEY = ("period_start_ms", "host", "type", "name")


def _report_table(name: str) -> TableDefinition:
    return TableDefinition(
        name=name,
        columns=ROW_COLUMNS,
        partition_key=("domain", "report", "bucket_ms"),
        clustering=ROW_KEY,
    )


MINUTE_ROWS = _report_table("trace_report_minute")
HOUR_ROWS = _report_table("trace_report_hour")

# One row per closed minute: which source partition wrote it and the highest offset it counts.
# A worker that replays after a crash reads it to recognise trees the minute already holds.
MINUTES = TableDefinition(
    name="trace_minutes",
    columns={
        "domain": "text",
        "period_start_ms": "bigint",
        "source_partition": "int",
        "last_offset": "bigint",
        "revision": "int",
        "late_count": "bigint",
    },
    partition_key=("domain",),
    clustering=("period_start_ms",),
)

TABLES = (MINUTE_ROWS, HOUR_ROWS, MINUTES)

_SHOWN = ("period_start_ms", "host", "type", "name", "count", "fail_count", "late_count",
          "revision", "closed_at_ms")  # fmt: skip
# What a report page reads per report: never the sketch (transaction percentiles are columns).
VIEW_COLUMNS = {
    "transaction": (*_SHOWN, "sum_us", "min_us", "max_us", "sum_squares", *PERCENTILE_COLUMNS,
                    "duration_counts", "success_message_id", "fail_message_id",
                    "longest_message_id"),
    "event": (*_SHOWN, "success_message_id", "fail_message_id"),
    "problem": (*_SHOWN, "duration_counts", "sample_message_ids"),
}  # fmt: skip
BUCKET_MS = {"minute": HOUR_MS, "hour": DAY_MS}


def bucket_of(period: str, start_ms: int) -> int:
    """The partition bucket of a row: the hour of a minute row, the day of an hour row."""
    size = BUCKET_MS[period]
    return start_ms - start_ms % size


def stored_row(row: Mapping[str, Any], last_offset: int) -> dict[str, Any]:
    """A ReportRow as a Cassandra row of its period's table."""
    stored = {column: row.get(column) for column in ROW_COLUMNS}
    stored["bucket_ms"] = bucket_of(row["period"], row["period_start_ms"])
    stored["last_offset"] = last_offset
    return stored


def report_row(stored: Mapping[str, Any], period: str) -> dict[str, Any]:
    """A Cassandra row back as a ReportRow (what merge_rows and describe_row take)."""
    row = {k: v for k, v in stored.items() if k not in ("bucket_ms", "last_offset")}
    row["period"] = period
    row["duration_counts"] = dict(row.get("duration_counts") or {})
    row["sample_message_ids"] = list(row.get("sample_message_ids") or [])
    row["sketch_format"] = row.get("sketch_format") or ""
    return row
