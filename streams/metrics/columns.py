"""Columnar aggregates: many rollup pieces as numpy arrays, merged per query bucket at once.

A 1-minute query over a day of 100 series merges 144,000 minute aggregates; as `Aggregate`
objects that takes seconds, as arrays milliseconds. The merge is the same maths as
`Aggregate.merge` (count, sum, Chan's M2, min, max, first/last with ties broken by value), so
answers equal the object path up to float rounding of sums. Only the fields an aggregator needs
are read and merged. Percentiles need sketches and stay on the object path.

The packed minute row (`pack_minutes`) stores one series-hour of minute aggregates as one array
per field, so a day of one series is 24 Cassandra rows instead of 1,440.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from streams.metrics.rollup import HOUR_MS, MINUTE_MS

if TYPE_CHECKING:
    from streams.metrics.rollup import Aggregate

FIELDS = (
    "count",
    "total",
    "m2",
    "minimum",
    "maximum",
    "first_ts",
    "first_value",
    "last_ts",
    "last_value",
)
INTEGER_FIELDS = frozenset({"count", "first_ts", "last_ts"})
# Every answer needs the count (sample size, empty buckets) and the first timestamp (a bucket's
# timestamp is its first point's unless align_start_time/align_end_time says otherwise).
ALWAYS = frozenset({"count", "first_ts"})
FIELDS_OF_AGGREGATOR = {
    "avg": ALWAYS | {"total"},
    "sum": ALWAYS | {"total"},
    "min": ALWAYS | {"minimum"},
    "max": ALWAYS | {"maximum"},
    "count": ALWAYS,
    "first": ALWAYS | {"first_value"},
    "last": ALWAYS | {"last_ts", "last_value"},
    "dev": ALWAYS | {"total", "m2"},
}
COLUMNAR_AGGREGATORS = frozenset(FIELDS_OF_AGGREGATOR)

# Packed minute rows: Cassandra column, numpy dtype; timestamps are offsets in their minute.
PACKED_OFFSETS = ("minute_offsets", "<u1")
PACKED_COLUMNS: dict[str, tuple[str, str]] = {
    "count": ("counts", "<u4"),
    "total": ("sums", "<f8"),
    "m2": ("m2s", "<f8"),
    "minimum": ("mins", "<f8"),
    "maximum": ("maxs", "<f8"),
    "first_ts": ("first_offsets", "<u2"),
    "first_value": ("first_values", "<f8"),
    "last_ts": ("last_offsets", "<u2"),
    "last_value": ("last_values", "<f8"),
}


class PackedRowError(ValueError):
    """A packed minute row whose arrays disagree in length: written by something else."""


@dataclass
class Columns:
    """Aggregates as arrays: `start` (piece start, or a point's timestamp) and some FIELDS."""

    start: np.ndarray
    fields: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.start)

    @property
    def sample_size(self) -> int:
        return int(self.fields["count"].sum())

    @classmethod
    def of_points(cls, points: Sequence[tuple[int, float]]) -> Columns:
        """Each raw point as a one-point aggregate."""
        timestamps = np.fromiter((t for t, _ in points), np.int64, len(points))
        values = np.fromiter((v for _, v in points), np.float64, len(points))
        return cls(
            timestamps,
            {
                "count": np.ones(len(points), np.int64),
                "total": values,
                "m2": np.zeros(len(points)),
                "minimum": values,
                "maximum": values,
                "first_ts": timestamps,
                "first_value": values,
                "last_ts": timestamps,
                "last_value": values,
            },
        )

    @classmethod
    def of_aggregates(cls, pieces: Sequence[tuple[int, Aggregate]]) -> Columns:
        def column(read: Callable[[Aggregate], float | int], dtype: type) -> np.ndarray:
            return np.fromiter((read(a) for _, a in pieces), dtype, len(pieces))

        return cls(
            np.fromiter((s for s, _ in pieces), np.int64, len(pieces)),
            {
                "count": column(lambda a: a.count, np.int64),
                "total": column(lambda a: a.total, np.float64),
                "m2": column(lambda a: a.m2, np.float64),
                "minimum": column(lambda a: a.minimum, np.float64),
                "maximum": column(lambda a: a.maximum, np.float64),
                "first_ts": column(lambda a: a.first_ts, np.int64),
                "first_value": column(lambda a: a.first_value, np.float64),
                "last_ts": column(lambda a: a.last_ts, np.int64),
                "last_value": column(lambda a: a.last_value, np.float64),
            },
        )

    @classmethod
    def of_rows(cls, rows: Sequence[Sequence[Any]]) -> Columns:
        """Rollup rows given as (start, *FIELDS in order), e.g. scalar columns of rollups_1h."""
        if not rows:
            return cls.concat((), FIELDS)
        columns = list(zip(*rows, strict=True))
        return cls(
            np.array(columns[0], np.int64),
            {
                name: np.array(values, np.int64 if name in INTEGER_FIELDS else np.float64)
                for name, values in zip(FIELDS, columns[1:], strict=True)
            },
        )

    @classmethod
    def concat(cls, parts: Iterable[Columns], fields: Iterable[str]) -> Columns:
        """One Columns of `fields` from parts that each hold at least those fields."""
        chosen = [part for part in parts if len(part)]
        wanted = list(fields)
        if not chosen:
            return cls(np.zeros(0, np.int64), {f: _empty(f) for f in wanted})
        return cls(
            np.concatenate([part.start for part in chosen]),
            {f: np.concatenate([part.fields[f] for part in chosen]) for f in wanted},
        )


def _empty(field: str) -> np.ndarray:
    return np.zeros(0, np.int64 if field in INTEGER_FIELDS else np.float64)


def pack_minutes(hour: int, minutes: Mapping[int, Aggregate]) -> dict[str, bytes]:
    """The packed row columns of one series-hour: one little-endian array per field."""
    chosen = sorted((m, a) for m, a in minutes.items() if a.count and hour <= m < hour + HOUR_MS)
    starts = [m for m, _ in chosen]
    aggregates = [a for _, a in chosen]
    offsets_column, offsets_type = PACKED_OFFSETS
    row = {offsets_column: np.array([(m - hour) // MINUTE_MS for m in starts], offsets_type)}
    row[PACKED_COLUMNS["count"][0]] = np.array([a.count for a in aggregates], "<u4")
    for field in ("total", "m2", "minimum", "maximum", "first_value", "last_value"):
        column, dtype = PACKED_COLUMNS[field]
        row[column] = np.array([getattr(a, field) for a in aggregates], dtype)
    row[PACKED_COLUMNS["first_ts"][0]] = np.array(
        [a.first_ts - m for m, a in chosen], PACKED_COLUMNS["first_ts"][1]
    )
    row[PACKED_COLUMNS["last_ts"][0]] = np.array(
        [a.last_ts - m for m, a in chosen], PACKED_COLUMNS["last_ts"][1]
    )
    return {column: array.tobytes() for column, array in row.items()}


def packed_columns_for(fields: Iterable[str]) -> list[str]:
    """The Cassandra columns to select for `fields`, in FIELDS order after the minute offsets."""
    chosen = set(fields)
    return [PACKED_OFFSETS[0], *(PACKED_COLUMNS[f][0] for f in FIELDS if f in chosen)]


def unpack_minutes(
    groups: Sequence[Sequence[Sequence[Any]]], fields: Iterable[str], low: int, high: int
) -> list[Columns]:
    """Minute aggregates in [low, high] of each group (a series) of packed rows.

    Each row is (hour start, minute offsets, then the blobs of `packed_columns_for(fields)`).
    All groups are decoded in one pass: per-call numpy overhead, not bytes, is the cost here.
    """
    wanted = [f for f in FIELDS if f in set(fields)]
    rows = [row for group in groups for row in group]
    if not rows:
        return [Columns.concat((), wanted) for _ in groups]
    offsets = np.frombuffer(b"".join(row[1] for row in rows), PACKED_OFFSETS[1])
    lengths = [len(row[1]) for row in rows]
    hours = np.repeat(np.fromiter((row[0] for row in rows), np.int64, len(rows)), lengths)
    starts = hours + offsets.astype(np.int64) * MINUTE_MS
    result: dict[str, np.ndarray] = {}
    for position, field in enumerate(wanted, start=2):
        column, dtype = PACKED_COLUMNS[field]
        array = np.frombuffer(b"".join(row[position] for row in rows), dtype)
        if len(array) != len(starts):
            raise PackedRowError(
                f"packed minute column {column} has {len(array)} entries, not {len(starts)}"
            )
        if field in ("first_ts", "last_ts"):
            result[field] = starts + array.astype(np.int64)
        elif field == "count":
            result[field] = array.astype(np.int64)
        else:
            result[field] = array
    inside = (starts >= low) & (starts <= high)
    group_ends = np.cumsum([sum(len(row[1]) for row in group) for group in groups])
    if not inside.all():
        starts = starts[inside]
        result = {f: a[inside] for f, a in result.items()}
        group_ends = np.concatenate(([0], np.cumsum(inside)))[group_ends]
    cuts = group_ends[:-1]
    pieces = zip(*(np.split(a, cuts) for a in [starts, *result.values()]), strict=True)
    return [Columns(piece[0], dict(zip(result, piece[1:], strict=True))) for piece in pieces]


@dataclass
class Merged:
    """Per bucket (ascending) the merged fields of its pieces."""

    buckets: np.ndarray
    fields: dict[str, np.ndarray]


def merge_by_bucket(columns: Columns, bucket_of: np.ndarray, fields: Iterable[str]) -> Merged:
    """Merge the pieces that share a bucket, as repeated `Aggregate.merge` would."""
    wanted = set(fields) | {"count"}
    present = columns.fields["count"] > 0
    if not present.all():
        columns = Columns(
            columns.start[present], {f: a[present] for f, a in columns.fields.items()}
        )
        bucket_of = bucket_of[present]
    if not len(columns):
        return Merged(np.zeros(0, np.int64), {f: _empty(f) for f in wanted})
    order = np.argsort(bucket_of, kind="stable")
    sorted_buckets = bucket_of[order]
    firsts = np.flatnonzero(np.r_[True, sorted_buckets[1:] != sorted_buckets[:-1]])
    lasts = np.r_[firsts[1:] - 1, len(sorted_buckets) - 1]
    data = columns.fields
    count = np.add.reduceat(data["count"][order], firsts)
    merged: dict[str, np.ndarray] = {"count": count}
    if "total" in wanted:
        merged["total"] = np.add.reduceat(data["total"][order], firsts)
    if "m2" in wanted:
        piece_count = data["count"][order]
        piece_mean = data["total"][order] / piece_count
        bucket_mean = np.repeat(merged["total"] / count, np.diff(np.r_[firsts, len(order)]))
        spread = data["m2"][order] + piece_count * (piece_mean - bucket_mean) ** 2
        merged["m2"] = np.add.reduceat(spread, firsts)
    if "minimum" in wanted:
        merged["minimum"] = np.minimum.reduceat(data["minimum"][order], firsts)
    if "maximum" in wanted:
        merged["maximum"] = np.maximum.reduceat(data["maximum"][order], firsts)
    if "first_value" in wanted:
        ranked = np.lexsort((data["first_value"], data["first_ts"], bucket_of))
        merged["first_ts"] = data["first_ts"][ranked[firsts]]
        merged["first_value"] = data["first_value"][ranked[firsts]]
    elif "first_ts" in wanted:
        merged["first_ts"] = np.minimum.reduceat(data["first_ts"][order], firsts)
    if "last_value" in wanted or "last_ts" in wanted:
        ranked = np.lexsort((data["last_value"], data["last_ts"], bucket_of))
        merged["last_ts"] = data["last_ts"][ranked[lasts]]
        merged["last_value"] = data["last_value"][ranked[lasts]]
    return Merged(sorted_buckets[firsts], merged)


def aggregator_values(name: str, merged: Merged) -> np.ndarray:
    """The value of a range aggregator per merged bucket."""
    fields = merged.fields
    if name == "avg":
        return fields["total"] / fields["count"]
    if name == "sum":
        return fields["total"]
    if name == "min":
        return fields["minimum"]
    if name == "max":
        return fields["maximum"]
    if name == "count":
        return fields["count"]
    if name == "first":
        return fields["first_value"]
    if name == "last":
        return fields["last_value"]
    if name == "dev":
        count = fields["count"]
        variance = np.maximum(fields["m2"], 0.0) / np.maximum(count - 1, 1)
        return np.where(count < 2, 0.0, np.sqrt(variance))
    raise ValueError(f"{name!r} is not a columnar aggregator")
