"""Columnar aggregates: many rollup pieces as numpy arrays, merged per query bucket at once.

A 1-minute query over a day of 100 series merges 144,000 minute aggregates; as `Aggregate`
objects that takes seconds, as arrays milliseconds. The merge is the same maths as
`Aggregate.merge` (count, sum, Chan's M2, min, max, first/last with ties broken by value), so
answers equal the object path up to float rounding of sums. Only the fields an aggregator needs
are read and merged.

Percentiles merge DDSketch bins the same way: each piece carries its sketch's bins as arrays
(`SketchBins`: zero count per piece; key and count per non-empty bin of the positive and the
negative store), the bins of a bucket are summed by key, and `bucket_quantiles` walks them as
`DDSketch.get_quantile_value` walks a merged sketch, so the answer is the sketch's, bit for bit.

The packed minute row (`pack_minutes`) stores one series-hour of minute aggregates as one array
per field, sketch bins included, so a day of one series is 24 Cassandra rows instead of 1,440.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from ddsketch import DDSketch

from streams.metrics.rollup import HOUR_MS, MINUTE_MS, new_sketch

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
# Not a scalar field: the pieces' sketch bins (`Columns.sketch`), for percentiles.
SKETCH = "sketch"
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
    "percentile": ALWAYS | {SKETCH},
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
# Packed sketch bins: per minute the zero count and its number of positive and negative bins;
# per bin (minutes in order, keys ascending) its key and count. Counts are whole numbers.
PACKED_SKETCH_COLUMNS: dict[str, str] = {
    "zero_counts": "<u4",
    "positive_lengths": "<u4",
    "positive_keys": "<i4",
    "positive_counts": "<u4",
    "negative_lengths": "<u4",
    "negative_keys": "<i4",
    "negative_counts": "<u4",
}
_MAPPING = new_sketch()._mapping
_KEY_SPAN = 1 << 19


class PackedRowError(ValueError):
    """A packed minute row whose arrays disagree in length: written by something else."""


class MissingSketchColumns(PackedRowError):
    """A packed minute row written before sketch bins were packed: read `rollups_1m` instead."""


@dataclass
class SketchBins:
    """The DDSketch bins of many pieces: per piece its zero count; per non-empty bin of the
    positive and the negative store its piece (index), key and count."""

    zero: np.ndarray
    positive: tuple[np.ndarray, np.ndarray, np.ndarray]
    negative: tuple[np.ndarray, np.ndarray, np.ndarray]

    @classmethod
    def empty(cls, pieces: int = 0) -> SketchBins:
        none = np.zeros(0, np.int64)
        return cls(np.zeros(pieces, np.int64), (none, none, none), (none, none, none))

    @classmethod
    def of_sketches(cls, sketches: Sequence[DDSketch]) -> SketchBins:
        """The bins of DDSketch objects (one piece each)."""
        zero = np.fromiter((_whole(s._zero_count) for s in sketches), np.int64, len(sketches))
        return cls(
            zero,
            _store_bins([s._store for s in sketches]),
            _store_bins([s._negative_store for s in sketches]),
        )

    @classmethod
    def of_values(cls, values: np.ndarray) -> SketchBins:
        """One piece per value, each a sketch of that value alone (DDSketch.add's mapping)."""
        pieces = np.arange(len(values), dtype=np.int64)
        ones = np.ones(len(values), np.int64)
        floor = _MAPPING.min_possible
        positive, negative = values > floor, values < -floor
        key = _MAPPING.key
        return cls(
            (~positive & ~negative).astype(np.int64),
            (
                pieces[positive],
                np.fromiter((key(v) for v in values[positive].tolist()), np.int64),
                ones[positive],
            ),
            (
                pieces[negative],
                np.fromiter((key(-v) for v in values[negative].tolist()), np.int64),
                ones[negative],
            ),
        )

    def take(self, keep: np.ndarray) -> SketchBins:
        """Only the pieces where `keep` (a boolean mask over pieces) holds, renumbered."""
        renumbered = np.cumsum(keep) - 1

        def side(bins: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple:
            piece, key, count = bins
            kept = keep[piece]
            return (renumbered[piece[kept]], key[kept], count[kept])

        return SketchBins(self.zero[keep], side(self.positive), side(self.negative))

    def split(self, cuts: np.ndarray) -> list[SketchBins]:
        """The pieces cut at `cuts` (as np.split cuts them), each part renumbered from 0."""
        bounds = np.r_[0, cuts, len(self.zero)]
        sides = []
        for piece, key, count in (self.positive, self.negative):
            at = np.searchsorted(piece, bounds)
            sides.append(
                [
                    (piece[a:b] - low, key[a:b], count[a:b])
                    for a, b, low in zip(at[:-1], at[1:], bounds[:-1], strict=True)
                ]
            )
        return [
            SketchBins(self.zero[low:high], positive, negative)
            for low, high, positive, negative in zip(bounds[:-1], bounds[1:], *sides, strict=True)
        ]

    @classmethod
    def concat(cls, parts: Sequence[SketchBins]) -> SketchBins:
        if not parts:
            return cls.empty()
        shifts = np.r_[0, np.cumsum([len(part.zero) for part in parts])[:-1]]

        def side(which: Callable[[SketchBins], tuple]) -> tuple:
            return (
                np.concatenate(
                    [which(p)[0] + shift for p, shift in zip(parts, shifts, strict=True)]
                ),
                np.concatenate([which(p)[1] for p in parts]),
                np.concatenate([which(p)[2] for p in parts]),
            )

        return cls(
            np.concatenate([part.zero for part in parts]),
            side(lambda part: part.positive),
            side(lambda part: part.negative),
        )


def _whole(count: float) -> int:
    if count != int(count):
        raise ValueError(f"sketch bin count {count} is not a whole number")
    return int(count)


def _store_bins(stores: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(piece, key, count) of the non-empty bins of DDSketch DenseStores, in piece order.

    Only the bins between the store's min_key and max_key are looked at: a store keeps at least
    128, and a minute of a few points fills one or two.
    """
    pieces: list[int] = []
    keys: list[int] = []
    counts: list[float] = []
    for index, store in enumerate(stores):
        if not store.count:
            continue
        offset = store.offset
        used = store.bins[store.min_key - offset : store.max_key - offset + 1]
        for key, count in enumerate(used, start=store.min_key):
            if count:
                pieces.append(index)
                keys.append(key)
                counts.append(count)
    count_array = np.array(counts, np.float64)
    whole = count_array.astype(np.int64)
    if (whole != count_array).any():
        raise ValueError("sketch bin counts must be whole numbers")
    return np.array(pieces, np.int64), np.array(keys, np.int64), whole


@dataclass
class Columns:
    """Aggregates as arrays: `start` (piece start, or a point's timestamp) and some FIELDS."""

    start: np.ndarray
    fields: dict[str, np.ndarray]
    sketch: SketchBins | None = None

    def __len__(self) -> int:
        return len(self.start)

    @property
    def sample_size(self) -> int:
        return int(self.fields["count"].sum())

    @classmethod
    def of_points(cls, points: Sequence[tuple[int, float]], *, sketch: bool = False) -> Columns:
        """Each raw point as a one-point aggregate (with its one-value sketch if `sketch`)."""
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
            SketchBins.of_values(values) if sketch else None,
        )

    @classmethod
    def of_aggregates(
        cls, pieces: Sequence[tuple[int, Aggregate]], *, sketch: bool = False
    ) -> Columns:
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
            SketchBins.of_sketches([a.sketch for _, a in pieces]) if sketch else None,
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
        wanted = [f for f in fields if f != SKETCH]
        with_sketch = SKETCH in set(fields)
        bins = [part.sketch for part in chosen if part.sketch is not None]
        if with_sketch and len(bins) != len(chosen):
            raise ValueError("a part without sketch bins cannot answer a percentile")
        sketch = SketchBins.concat(bins) if with_sketch else None
        if not chosen:
            return cls(np.zeros(0, np.int64), {f: _empty(f) for f in wanted}, sketch)
        if len(chosen) == 1:
            only = chosen[0]
            return cls(only.start, {f: only.fields[f] for f in wanted}, sketch)
        return cls(
            np.concatenate([part.start for part in chosen]),
            {f: np.concatenate([part.fields[f] for part in chosen]) for f in wanted},
            sketch,
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
    bins = SketchBins.of_sketches([a.sketch for a in aggregates])
    row |= _packed_sketch(bins, len(aggregates))
    return {column: array.tobytes() for column, array in row.items()}


def _packed_sketch(bins: SketchBins, pieces: int) -> dict[str, np.ndarray]:
    columns = {"zero_counts": bins.zero}
    for side, (piece, key, count) in (("positive", bins.positive), ("negative", bins.negative)):
        columns[f"{side}_lengths"] = np.bincount(piece, minlength=pieces)
        columns[f"{side}_keys"] = key
        columns[f"{side}_counts"] = count
    return {
        column: array.astype(PACKED_SKETCH_COLUMNS[column]) for column, array in columns.items()
    }


def packed_columns_for(fields: Iterable[str]) -> list[str]:
    """The Cassandra columns to select for `fields`: minute offsets, scalar fields in FIELDS
    order, then the sketch bin columns if `fields` holds SKETCH."""
    chosen = set(fields)
    sketch = list(PACKED_SKETCH_COLUMNS) if SKETCH in chosen else []
    return [PACKED_OFFSETS[0], *(PACKED_COLUMNS[f][0] for f in FIELDS if f in chosen), *sketch]


def unpack_minutes(
    groups: Sequence[Sequence[Sequence[Any]]], fields: Iterable[str], low: int, high: int
) -> list[Columns]:
    """Minute aggregates in [low, high] of each group (a series) of packed rows.

    Each row is (hour start, then the blobs of `packed_columns_for(fields)`).
    All groups are decoded in one pass: per-call numpy overhead, not bytes, is the cost here.
    """
    chosen = set(fields)
    wanted = [f for f in FIELDS if f in chosen]
    rows = [row for group in groups for row in group]
    if not rows:
        return [Columns.concat((), chosen) for _ in groups]
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
    sketch = _unpack_sketch(rows, 2 + len(wanted), len(starts)) if SKETCH in chosen else None
    inside = (starts >= low) & (starts <= high)
    group_ends = np.cumsum([sum(len(row[1]) for row in group) for group in groups])
    if not inside.all():
        starts = starts[inside]
        result = {f: a[inside] for f, a in result.items()}
        sketch = sketch.take(inside) if sketch is not None else None
        group_ends = np.concatenate(([0], np.cumsum(inside)))[group_ends]
    cuts = group_ends[:-1]
    pieces = zip(*(np.split(a, cuts) for a in [starts, *result.values()]), strict=True)
    sketches = sketch.split(cuts) if sketch is not None else [None] * len(groups)
    return [
        Columns(piece[0], dict(zip(result, piece[1:], strict=True)), part_sketch)
        for piece, part_sketch in zip(pieces, sketches, strict=True)
    ]


def _unpack_sketch(rows: Sequence[Sequence[Any]], first: int, minutes: int) -> SketchBins:
    """The sketch bins of packed rows whose sketch columns start at position `first`."""
    arrays: dict[str, np.ndarray] = {}
    for position, (column, dtype) in enumerate(PACKED_SKETCH_COLUMNS.items(), start=first):
        blobs = [row[position] for row in rows]
        if any(blob is None for blob in blobs):
            raise MissingSketchColumns(f"a packed minute row has no {column}")
        arrays[column] = np.frombuffer(b"".join(blobs), dtype).astype(np.int64)
    if len(arrays["zero_counts"]) != minutes:
        raise PackedRowError(f"zero_counts has {len(arrays['zero_counts'])} entries, not {minutes}")
    sides = []
    for side in ("positive", "negative"):
        lengths, keys, counts = (arrays[f"{side}_{part}"] for part in ("lengths", "keys", "counts"))
        if len(lengths) != minutes or len(keys) != len(counts) or lengths.sum() != len(keys):
            raise PackedRowError(f"packed {side} sketch bins disagree with their lengths")
        sides.append((np.repeat(np.arange(minutes, dtype=np.int64), lengths), keys, counts))
    return SketchBins(arrays["zero_counts"], sides[0], sides[1])


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
    if len(bucket_of) == 1 or bool((bucket_of[1:] > bucket_of[:-1]).all()):
        return _one_piece_per_bucket(columns, bucket_of, wanted)
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


def _one_piece_per_bucket(columns: Columns, buckets: np.ndarray, wanted: set[str]) -> Merged:
    """`merge_by_bucket` when buckets ascend with one piece each (1-minute sampling of minute
    rollups): every merged field is the piece's own, so nothing is sorted or reduced."""
    data = columns.fields
    names = {"count"} | (wanted & {"total", "m2", "minimum", "maximum"})
    if "first_value" in wanted:
        names |= {"first_ts", "first_value"}
    elif "first_ts" in wanted:
        names.add("first_ts")
    if "last_value" in wanted or "last_ts" in wanted:
        names |= {"last_ts", "last_value"}
    return Merged(buckets, {name: data[name] for name in names})


def bucket_quantiles(
    bins: SketchBins, bucket_of: np.ndarray, buckets: np.ndarray, quantile: float
) -> np.ndarray:
    """Per bucket in `buckets` (ascending), the quantile of the merged sketch of its pieces.

    As `DDSketch.get_quantile_value`: rank = q * (count - 1); a rank below the negative count
    is found in the negative store (walked by key with the reversed rank, `lower=False`), then
    the zero count (0), else the positive store; a key becomes a value through the sketch's
    LogarithmicMapping. Counts are whole numbers, so the sums are exact whatever the order.
    """
    slots = len(buckets)
    index_of = np.searchsorted(buckets, bucket_of)
    known = index_of < slots
    known[known] = buckets[index_of[known]] == bucket_of[known]
    piece_slot = np.where(known, index_of, slots)  # slot `slots` collects unknown pieces

    def side_totals(bins_side: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple:
        piece, key, count = bins_side
        slot = piece_slot[piece]
        totals = np.bincount(slot, weights=count, minlength=slots + 1)[:slots]
        return slot, key, count, totals

    zero = np.bincount(piece_slot, weights=bins.zero, minlength=slots + 1)[:slots]
    negative_slot, negative_key, negative_count, negative = side_totals(bins.negative)
    positive_slot, positive_key, positive_count, positive = side_totals(bins.positive)
    count = negative + zero + positive
    rank = quantile * (count - 1)
    in_negative = rank < negative
    in_zero = ~in_negative & (rank < zero + negative)
    in_positive = ~in_negative & ~in_zero & (count > 0)
    positive_keys = _key_at_rank(
        positive_slot, positive_key, positive_count, rank - zero - negative, slots, lower=True
    )
    negative_keys = _key_at_rank(
        negative_slot, negative_key, negative_count, negative - rank - 1, slots, lower=False
    )
    value = _MAPPING.value
    result = np.zeros(slots)
    for slot in np.flatnonzero(in_positive).tolist():
        result[slot] = value(int(positive_keys[slot]))
    for slot in np.flatnonzero(in_negative & (count > 0)).tolist():
        result[slot] = -value(int(negative_keys[slot]))
    return result


def _key_at_rank(
    slot: np.ndarray,
    key: np.ndarray,
    count: np.ndarray,
    rank: np.ndarray,
    slots: int,
    *,
    lower: bool,
) -> np.ndarray:
    """Per slot, DenseStore.key_at_rank over the slot's bins (-1 where it has none)."""
    found = np.full(slots, -1, np.int64)
    inside = slot < slots
    slot, key, count = slot[inside], key[inside], count[inside]
    if not len(slot):
        return found
    if key.min() >= -_KEY_SPAN and key.max() < _KEY_SPAN:  # every double's key is (about ±37,000)
        order = np.argsort(slot * (2 * _KEY_SPAN) + (key + _KEY_SPAN))  # 3x faster than lexsort
    else:
        order = np.lexsort((key, slot))
    slot, key, count = slot[order], key[order], count[order]
    firsts = np.flatnonzero(np.r_[True, slot[1:] != slot[:-1]])
    running = np.cumsum(count)
    before = np.r_[0, running[firsts[1:] - 1]]
    within = running - np.repeat(before, np.diff(np.r_[firsts, len(slot)]))
    target = rank[slot]
    reached = within > target if lower else within >= target + 1
    short = np.add.reduceat((~reached).astype(np.int64), firsts)
    lasts = np.r_[firsts[1:] - 1, len(slot) - 1]
    found[slot[firsts]] = key[np.minimum(firsts + short, lasts)]
    return found


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
