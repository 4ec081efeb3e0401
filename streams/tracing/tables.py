"""Cassandra tables of the CAT reports: closed minute reports, hour reports, the minute index.

A report is stored as CAT stores one: a few large cells rather than a row per name. One Cassandra
row holds a (period, host, type) group of name rows, packed (`pack_rows`): the shown columns as
one orjson array of arrays, the sketches as one length-prefixed blob a page never reads. The
per-type totals (name '') of a (period, host) are a group of their own, keyed by type ''
(never a real type: validation refuses it), so the types page and a type's page are one row each.
A closed minute of a domain with 1,000 URL names on 4 hosts is about 30 rows instead of 15,000,
which is what the writes and a cold page read cost.

Minute groups are partitioned by (domain, report, hour): one read gives an hour's minutes, which
the hour is merged from, and a minute query is a clustering prefix. Hour groups are partitioned
by (domain, report, day) the same way, so a day report is one read and a merge. A group is
always written whole (a minute's rows are all emitted when it closes; an hour's changed groups
are written with all their rows), so an upsert replaces it and a replay rewrites the same cell.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from connectors.cassandra import TableDefinition
from streams.tracing.model import DAY_MS, HOUR_MS, PERCENTILE_COLUMNS, ReportKey

# The columns of a report row as ReportStore hands them out (a ReportRow plus its bucket and the
# highest source offset its minute counts).
ROW_COLUMNS = (
    "domain", "report", "bucket_ms", "period_start_ms", "host", "type", "name", "count",
    "fail_count", "sum_us", "min_us", "max_us", "sum_squares", "sketch", "sketch_format",
    *PERCENTILE_COLUMNS, "duration_counts", "success_message_id", "fail_message_id",
    "longest_message_id", "sample_message_ids", "late_count", "revision", "closed_at_ms",
    "last_offset", "bucket_samples",
)  # fmt: skip
GROUP_KEY = ("domain", "report", "bucket_ms", "period_start_ms", "host")
# Per name row inside a group's `rows` cell, in this order. Format 2 appended bucket_samples; a
# format-1 row reads as if it ended with None. Readers take every format in PACKED_WIDTHS.
PACKED_COLUMNS = tuple(c for c in ROW_COLUMNS if c not in (*GROUP_KEY, "sketch", "last_offset"))
PACKED_FORMAT = 2
PACKED_WIDTHS = {1: len(PACKED_COLUMNS) - 1, 2: len(PACKED_COLUMNS)}
_TYPE_INDEX = PACKED_COLUMNS.index("type")
TOTALS_GROUP = ""
PART_BYTES = 1 << 20
_LENGTHS = struct.Struct("<I")


def _report_table(name: str) -> TableDefinition:
    return TableDefinition(
        name=name,
        columns={
            "domain": "text",
            "report": "text",
            "bucket_ms": "bigint",
            "period_start_ms": "bigint",
            "host": "text",
            "type_group": "text",
            "part": "int",
            "format": "int",
            "row_count": "int",
            "rows": "blob",
            "sketches": "blob",
            "last_offset": "bigint",
        },
        partition_key=("domain", "report", "bucket_ms"),
        clustering=("period_start_ms", "host", "type_group", "part"),
    )


MINUTE_REPORTS = _report_table("trace_minute_reports")
HOUR_REPORTS = _report_table("trace_hour_reports")
REPORT_TABLES = {"minute": MINUTE_REPORTS, "hour": HOUR_REPORTS}

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

TABLES = (MINUTE_REPORTS, HOUR_REPORTS, MINUTES)
BUCKET_MS = {"minute": HOUR_MS, "hour": DAY_MS}


class PackedReportError(ValueError):
    """A stored report group this version cannot read (written by a newer one)."""


def bucket_of(period: str, start_ms: int) -> int:
    """The partition bucket of a row: the hour of a minute row, the day of an hour row."""
    size = BUCKET_MS[period]
    return start_ms - start_ms % size


def type_group(type_: str, name: str) -> str:
    """The group a row is stored in: its type, or the totals group for a per-type total."""
    return TOTALS_GROUP if name == "" else type_


def whole_groups(
    row_keys: Iterable[ReportKey], changed: set[ReportKey] | None
) -> set[ReportKey] | None:
    """Of `row_keys`, those in a stored group that a `changed` key belongs to (None: all):
    a group is written whole."""
    if changed is None:
        return None
    groups = {(report, host, type_group(type_, name)) for report, host, type_, name in changed}
    return {key for key in row_keys if (key[0], key[1], type_group(key[2], key[3])) in groups}


def stored_row(row: Mapping[str, Any], last_offset: int) -> dict[str, Any]:
    """A ReportRow with its bucket and last offset, as `pack_rows` takes it."""
    stored = {column: row.get(column) for column in ROW_COLUMNS}
    stored["bucket_ms"] = bucket_of(row["period"], row["period_start_ms"])
    stored["last_offset"] = last_offset
    return stored


def report_row(stored: Mapping[str, Any], period: str) -> dict[str, Any]:
    """A stored row back as a ReportRow (what merge_rows and describe_row take)."""
    row = {k: v for k, v in stored.items() if k not in ("bucket_ms", "last_offset")}
    row["period"] = period
    row["duration_counts"] = dict(row.get("duration_counts") or {})
    row["sample_message_ids"] = list(row.get("sample_message_ids") or [])
    row["bucket_samples"] = dict(row.get("bucket_samples") or {})
    row["sketch_format"] = row.get("sketch_format") or ""
    return row


def pack_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Stored rows as Cassandra rows of a report table: per (period, host, type group), parts
    of at most about PART_BYTES of packed rows (large groups stay under Cassandra's mutation
    limit).

    Every row of a group must be given: the packed parts replace what the group held. A group
    never loses rows (minutes and hours only gain names), so no part is left behind."""
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        key = (*(row[c] for c in GROUP_KEY), type_group(row["type"], row["name"]))
        groups[key].append(row)
    packed = []
    for key, members in groups.items():
        members.sort(key=lambda r: (r["type"], r["name"]))
        encoded = [orjson.dumps([r.get(c) for c in PACKED_COLUMNS]) for r in members]
        starts = [0]
        size = 0
        for index, row_bytes in enumerate(encoded):
            if index > starts[-1] and size + len(row_bytes) > PART_BYTES:
                starts.append(index)
                size = 0
            size += len(row_bytes)
        ends = [*starts[1:], len(members)]
        for part, (start, end) in enumerate(zip(starts, ends, strict=True)):
            packed.append(_part(key, part, members[start:end], encoded[start:end]))
    return packed


def _part(
    key: tuple[Any, ...], part: int, rows: list[Mapping[str, Any]], encoded: list[bytes]
) -> dict[str, Any]:
    sketches = [r.get("sketch") or b"" for r in rows]
    return {
        **dict(zip(GROUP_KEY, key, strict=False)),
        "type_group": key[-1],
        "part": part,
        "format": PACKED_FORMAT,
        "row_count": len(rows),
        "rows": b"[" + b",".join(encoded) + b"]",
        "sketches": b"".join(_LENGTHS.pack(len(s)) for s in sketches) + b"".join(sketches),
        "last_offset": max(r.get("last_offset", -1) for r in rows),
    }


def unpack_rows(packed: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A packed part, every column read, back as stored rows (`ROW_COLUMNS`)."""
    check_format(packed)
    fixed = {c: packed[c] for c in GROUP_KEY}
    fixed["last_offset"] = packed["last_offset"]
    padding = _padding(packed["format"])
    rows = [
        {**fixed, **dict(zip(PACKED_COLUMNS, [*values, *padding], strict=True))}
        for values in orjson.loads(packed["rows"])
    ]
    for row, sketch in zip(rows, split_sketches(packed["sketches"], len(rows)), strict=True):
        row["sketch"] = sketch
    return rows


def _padding(packed_format: int) -> list[None]:
    """What a row of an older format lacks at its end (the columns added since)."""
    return [None] * (len(PACKED_COLUMNS) - PACKED_WIDTHS[packed_format])


def check_format(packed: Mapping[str, Any]) -> None:
    """Refuse a packed part this version cannot read (written by a newer one)."""
    if packed["format"] not in PACKED_WIDTHS:
        raise PackedReportError(
            f"report group {packed['domain']}/{packed['report']}/{packed['period_start_ms']} has "
            f"format {packed['format']}; this version reads formats "
            f"{', '.join(map(str, PACKED_WIDTHS))}: upgrade"
        )


def packed_columns(
    parts: Iterable[tuple[int, bytes, int]], type_: str | None = None
) -> dict[str, Sequence[Any]]:
    """Packed parts, as (`format`, `rows` cell, `last_offset`), as columns: PACKED_COLUMNS and
    each row's `last_offset`, only the rows of `type_` when given. What a report page needs,
    without a dict per row."""
    values: list[list[Any]] = []
    offsets: list[int] = []
    for packed_format, cell, offset in parts:
        rows = orjson.loads(cell)
        if type_ is not None:
            rows = [row for row in rows if row[_TYPE_INDEX] == type_]
        if packed_format != PACKED_FORMAT:
            padding = _padding(packed_format)
            rows = [[*row, *padding] for row in rows]
        values.extend(rows)
        offsets.extend([offset] * len(rows))
    if not values:
        return {column: () for column in (*PACKED_COLUMNS, "last_offset")}
    return {**dict(zip(PACKED_COLUMNS, zip(*values, strict=True), strict=True)),
            "last_offset": offsets}  # fmt: skip


def split_sketches(cell: bytes, count: int) -> list[bytes | None]:
    """The sketches cell as one sketch per row (None for rows without one)."""
    view = memoryview(cell)
    lengths = struct.unpack_from(f"<{count}I", view) if count else ()
    position = _LENGTHS.size * count
    sketches: list[bytes | None] = []
    for length in lengths:
        sketches.append(bytes(view[position : position + length]) if length else None)
        position += length
    return sketches


def unpack_parts(parts: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Whole packed parts (every column, as `SELECT *` reads them) as stored rows."""
    return [row for part in parts for row in unpack_rows(part)]


REPORT_TABLE_NAMES = frozenset(table.name for table in REPORT_TABLES.values())
