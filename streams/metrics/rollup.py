"""Pure rollup maths: mergeable aggregates of points, per series and minute or hour.

An `Aggregate` holds count, sum, Chan's M2 (for the standard deviation), min, max, first and last
point and a DDSketch of the values. Merging two aggregates equals aggregating the union of their
points, so an hour is the merge of its minutes and a query bucket the merge of its minutes; a
single raw point is a one-point aggregate, which is how raw and rolled-up answers stay equal.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ddsketch import DDSketch
from ddsketch.pb.ddsketch_pb2 import DDSketch as DDSketchMessage
from ddsketch.pb.proto import DDSketchProto

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
SKETCH_RELATIVE_ACCURACY = 0.01
SKETCH_FORMAT = "ddsketch-proto-zlib-v1"


def new_sketch() -> DDSketch:
    return DDSketch(SKETCH_RELATIVE_ACCURACY)


def sketch_bytes(sketch: DDSketch) -> bytes:
    """DDSketch's own protobuf form, zlib-compressed (empty bins compress to almost nothing)."""
    return zlib.compress(DDSketchProto.to_proto(sketch).SerializeToString())


def sketch_from_bytes(data: bytes) -> DDSketch:
    """A sketch written by `sketch_bytes`, with the exact mapping of `new_sketch`.

    The protobuf carries gamma as a float that can come back a few ulps off, and DDSketch only
    merges sketches whose mappings are equal; the bins are the same, so the mapping is reset.
    """
    message = DDSketchMessage.FromString(zlib.decompress(data))
    sketch = DDSketchProto.from_proto(message)
    reference = new_sketch()
    if abs(sketch._mapping.relative_accuracy - SKETCH_RELATIVE_ACCURACY) > 1e-9:
        raise ValueError(f"sketch of another accuracy ({sketch._mapping.relative_accuracy})")
    sketch._mapping = reference._mapping
    sketch._relative_accuracy = reference._relative_accuracy
    return sketch  # type: ignore[no-any-return]


@dataclass
class Aggregate:
    """Count, sum, M2, min, max, first/last point and a quantile sketch of some points.

    Points of different series can share a timestamp; first and last then break the tie by
    value (smallest first, largest last), so any merge order gives the same answer.
    """

    count: int = 0
    total: float = 0.0
    m2: float = 0.0
    minimum: float = float("inf")
    maximum: float = float("-inf")
    first_ts: int = 0
    first_value: float = 0.0
    last_ts: int = 0
    last_value: float = 0.0
    sketch: DDSketch = field(default_factory=new_sketch)

    @classmethod
    def of_point(cls, timestamp: int, value: float) -> Aggregate:
        sketch = new_sketch()
        sketch.add(value)
        return cls(1, value, 0.0, value, value, timestamp, value, timestamp, value, sketch)

    @classmethod
    def of_points(
        cls, points: Iterable[tuple[int, float]], *, with_sketch: bool = True
    ) -> Aggregate:
        """The aggregate of (timestamp, value) pairs, in one pass (Welford for M2).

        `with_sketch=False` skips the sketch when no quantile will be asked of it.
        """
        aggregate = cls()
        sketch = aggregate.sketch if with_sketch else None
        count, mean, m2 = 0, 0.0, 0.0
        total = 0.0
        for timestamp, value in points:
            count += 1
            total += value
            delta = value - mean
            mean += delta / count
            m2 += delta * (value - mean)
            if sketch is not None:
                sketch.add(value)
            aggregate.minimum = min(aggregate.minimum, value)
            aggregate.maximum = max(aggregate.maximum, value)
            if count == 1 or (timestamp, value) < (aggregate.first_ts, aggregate.first_value):
                aggregate.first_ts, aggregate.first_value = timestamp, value
            if count == 1 or (timestamp, value) > (aggregate.last_ts, aggregate.last_value):
                aggregate.last_ts, aggregate.last_value = timestamp, value
        aggregate.count, aggregate.total, aggregate.m2 = count, total, m2
        return aggregate

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def merge(self, other: Aggregate) -> None:
        """Fold `other` in; afterwards self describes the union of both point sets."""
        if other.count == 0:
            return
        if self.count == 0:
            self.count, self.total, self.m2 = other.count, other.total, other.m2
            self.minimum, self.maximum = other.minimum, other.maximum
            self.first_ts, self.first_value = other.first_ts, other.first_value
            self.last_ts, self.last_value = other.last_ts, other.last_value
            self.sketch = new_sketch()
            self.sketch.merge(other.sketch)
            return
        count = self.count + other.count
        delta = other.mean - self.mean
        self.m2 = self.m2 + other.m2 + delta * delta * self.count * other.count / count
        self.count = count
        self.total += other.total
        self.minimum = min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)
        if (other.first_ts, other.first_value) < (self.first_ts, self.first_value):
            self.first_ts, self.first_value = other.first_ts, other.first_value
        if (other.last_ts, other.last_value) > (self.last_ts, self.last_value):
            self.last_ts, self.last_value = other.last_ts, other.last_value
        self.sketch.merge(other.sketch)

    def std_dev(self) -> float:
        """Sample standard deviation (n - 1), 0 for fewer than two points, as KairosDB's `dev`."""
        if self.count < 2:
            return 0.0
        return float(max(self.m2, 0.0) / (self.count - 1)) ** 0.5

    def quantile(self, q: float) -> float:
        """The q-quantile (0 < q <= 1) from the sketch, within 1% relative error."""
        value = self.sketch.get_quantile_value(q)
        return float(value) if value is not None else 0.0

    def row(self) -> dict[str, Any]:
        """The Cassandra columns of this aggregate (keys are added by the caller)."""
        return {
            "count": self.count,
            "sum": self.total,
            "m2": self.m2,
            "min": self.minimum,
            "max": self.maximum,
            "first_ts": self.first_ts,
            "first_value": self.first_value,
            "last_ts": self.last_ts,
            "last_value": self.last_value,
            "sketch": sketch_bytes(self.sketch),
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any], *, with_sketch: bool = True) -> Aggregate:
        sketch = (
            sketch_from_bytes(row["sketch"]) if with_sketch and row.get("sketch") else new_sketch()
        )
        return cls(
            int(row["count"]),
            row["sum"],
            row["m2"],
            row["min"],
            row["max"],
            row["first_ts"],
            row["first_value"],
            row["last_ts"],
            row["last_value"],
            sketch,
        )


def minute_of(timestamp_ms: int) -> int:
    return timestamp_ms - timestamp_ms % MINUTE_MS


def hour_of(timestamp_ms: int) -> int:
    return timestamp_ms - timestamp_ms % HOUR_MS


SeriesId = tuple[str, str]  # (metric, canonical tag text)


@dataclass
class SeriesMinute:
    """The raw points of one open series-minute, by timestamp (a repeated timestamp replaces)."""

    points: dict[int, float] = field(default_factory=dict)

    def aggregate(self) -> Aggregate:
        return Aggregate.of_points(sorted(self.points.items()))


@dataclass
class RollupChanges:
    """What one batch changed: minute and hour rows to upsert, and the late points it had.

    `hour_minutes` holds every minute aggregate of each changed hour (for packed minute rows).
    """

    minutes: dict[tuple[SeriesId, int], Aggregate]
    hours: dict[tuple[SeriesId, int], Aggregate]
    late_points: int
    hour_minutes: dict[tuple[SeriesId, int], dict[int, Aggregate]] = field(default_factory=dict)


@dataclass
class PartitionRollups:
    """Rollup state of one source partition: open minutes, hour parts and the watermark.

    The watermark is the largest event time seen minus the grace period; a minute whose end is
    at or below it is closed and leaves memory (its aggregate stays, as part of its hour, until
    the hour closes too). A point for a closed minute is late: it is counted and applied; the
    caller reloads that minute's points from the raw store first (`needs_points`), so the result
    equals what an on-time point would have given. `known_until` is the largest event time any
    earlier owner of this partition had processed: a minute after it cannot have points this
    worker has not seen, so it needs no reload.
    """

    grace_ms: int
    known_until: int = -1
    max_event_ms: int = -1
    open_minutes: dict[tuple[SeriesId, int], SeriesMinute] = field(default_factory=dict)
    hour_parts: dict[tuple[SeriesId, int], dict[int, Aggregate]] = field(default_factory=dict)
    hour_closed: dict[tuple[SeriesId, int], tuple[frozenset[int], Aggregate]] = field(
        default_factory=dict
    )
    late_points: int = 0
    reload_minutes: set[tuple[SeriesId, int]] = field(default_factory=set)
    reload_hours: set[tuple[SeriesId, int]] = field(default_factory=set)

    @property
    def watermark(self) -> int:
        return self.max_event_ms - self.grace_ms if self.max_event_ms >= 0 else -1

    def is_closed(self, minute: int) -> bool:
        return minute + MINUTE_MS <= self.watermark

    def minutes_to_load(self, points: Iterable[tuple[SeriesId, int]]) -> set[tuple[SeriesId, int]]:
        """Series-minutes whose earlier points are not in memory and must be read first."""
        wanted = set()
        for series, timestamp in points:
            minute = minute_of(timestamp)
            key = (series, minute)
            if key in self.open_minutes:
                continue
            if minute <= self.known_until or self.is_closed(minute) or key in self.reload_minutes:
                wanted.add(key)
        return wanted

    def hours_to_load(
        self, minute_keys: Iterable[tuple[SeriesId, int]]
    ) -> set[tuple[SeriesId, int]]:
        """Series-hours whose other minutes are not in memory and must be read first."""
        wanted = set()
        for series, minute in minute_keys:
            hour = hour_of(minute)
            if (series, hour) in self.hour_parts:
                continue
            if (
                hour <= self.known_until
                or hour + HOUR_MS <= self.watermark
                or (series, hour) in self.reload_hours
            ):
                wanted.add((series, hour))
        return wanted

    def load_minute(self, key: tuple[SeriesId, int], points: Iterable[tuple[int, float]]) -> None:
        """Points of a series-minute read from the raw store (before this batch is applied)."""
        self.open_minutes[key] = SeriesMinute(dict(points))
        self.reload_minutes.discard(key)

    def load_hour(self, key: tuple[SeriesId, int], minutes: Mapping[int, Aggregate]) -> None:
        """Minute aggregates of a series-hour read from the rollup store."""
        parts = self.hour_parts.setdefault(key, {})
        for minute, aggregate in minutes.items():
            parts.setdefault(minute, aggregate)
        self.reload_hours.discard(key)

    def forget(self, series: Collection[SeriesId], start: int, end: int) -> None:
        """Drop what memory holds of `series` around [start, end]: a delete changed the store.

        The dropped minutes and hours are read again from the store when next touched.
        """
        for key in [
            k
            for k in self.open_minutes
            if k[0] in series and _overlaps(k[1], MINUTE_MS, start, end)
        ]:
            del self.open_minutes[key]
            self.reload_minutes.add(key)
        for key in [
            k for k in self.hour_parts if k[0] in series and _overlaps(k[1], HOUR_MS, start, end)
        ]:
            del self.hour_parts[key]
            self.hour_closed.pop(key, None)
            self.reload_hours.add(key)

    def apply(self, points: Iterable[tuple[SeriesId, int, float]]) -> RollupChanges:
        """Apply (series, timestamp, value) points in offset order; returns the rows to write."""
        touched: set[tuple[SeriesId, int]] = set()
        late = 0
        for series, timestamp, value in points:
            minute = minute_of(timestamp)
            key = (series, minute)
            if self.is_closed(minute):
                late += 1
            self.open_minutes.setdefault(key, SeriesMinute()).points[timestamp] = value
            touched.add(key)
            if timestamp > self.max_event_ms:
                self.max_event_ms = timestamp
        minutes = {key: self.open_minutes[key].aggregate() for key in touched}
        touched_hours: set[tuple[SeriesId, int]] = set()
        for (series, minute), aggregate in minutes.items():
            hour_key = (series, hour_of(minute))
            self.hour_parts.setdefault(hour_key, {})[minute] = aggregate
            closed = self.hour_closed.get(hour_key)
            if closed is not None and minute in closed[0]:
                del self.hour_closed[hour_key]
            touched_hours.add(hour_key)
        hours = {key: self._hour(key) for key in touched_hours}
        hour_minutes = {key: dict(self.hour_parts[key]) for key in touched_hours}
        self.late_points += late
        self._close()
        return RollupChanges(minutes, hours, late, hour_minutes)

    def _hour(self, key: tuple[SeriesId, int]) -> Aggregate:
        """Merge of the hour's minutes; closed minutes are merged once and kept merged."""
        parts = self.hour_parts[key]
        closed_minutes, closed = self.hour_closed.get(key, (frozenset(), Aggregate()))
        newly_closed = [m for m in parts if m not in closed_minutes and self.is_closed(m)]
        if newly_closed:
            for minute in newly_closed:
                closed.merge(parts[minute])
            closed_minutes = closed_minutes | frozenset(newly_closed)
            self.hour_closed[key] = (closed_minutes, closed)
        result = Aggregate()
        result.merge(closed)
        for minute, aggregate in parts.items():
            if minute not in closed_minutes:
                result.merge(aggregate)
        return result

    def _close(self) -> None:
        watermark = self.watermark
        for key in [k for k in self.open_minutes if k[1] + MINUTE_MS <= watermark]:
            del self.open_minutes[key]
        for key in [k for k in self.hour_parts if k[1] + HOUR_MS <= watermark]:
            del self.hour_parts[key]
            self.hour_closed.pop(key, None)
        self.reload_minutes = {k for k in self.reload_minutes if k[1] + MINUTE_MS > watermark}
        self.reload_hours = {k for k in self.reload_hours if k[1] + HOUR_MS > watermark}


def _overlaps(begin: int, width: int, start: int, end: int) -> bool:
    return begin <= end and begin + width - 1 >= start


def merge_all(aggregates: Iterable[Aggregate]) -> Aggregate:
    merged = Aggregate()
    for aggregate in aggregates:
        merged.merge(aggregate)
    return merged
