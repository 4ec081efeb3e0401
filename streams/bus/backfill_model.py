"""Pure logic of `stackstream backfill`: which periods a time range covers, and the rebuild of
CAT reports and metric rollups from source records with the domains' own model functions.

No Kafka and no Cassandra here (streams/bus/backfill.py reads and writes). Records come in
offset order per source partition, as the live agents see them, so the rebuilt rows are the ones
live processing wrote: the same minute statistics (tracing.model.PartitionReports), the same
hour merges (HourReport.from_rows), the same per-minute aggregates of points by timestamp
(metrics.rollup.SeriesMinute) and the same cardinality guard (metrics.model.admit_series).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from streams.errors import RecordRejected
from streams.metrics.model import (
    CardinalityExceeded,
    MetricSeries,
    admit_series,
    tags_text,
    validate_point,
)
from streams.metrics.rollup import Aggregate, SeriesMinute
from streams.tracing.model import (
    HourReport,
    Outcome,
    PartitionReports,
    ReportOptions,
    empty_closed_minute,
    tree_minute_ms,
    validate_tree,
)

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DOMAINS = ("tracing", "metrics")
NEVER_FORGET_MS = 10**15  # a rebuild keeps every closed minute until it is written


class BackfillInputError(ValueError):
    """The requested backfill cannot be done as asked; the message says what to change."""


def _ceil(value: int, size: int) -> int:
    return -(-value // size) * size


@dataclass(frozen=True)
class BackfillWindow:
    """The event-time range to recompute and the wider broker-time range to read for it.

    Only whole minutes (and whole hours) inside [from, to) are written, so a row is never
    rebuilt from part of its records. Records are read from `margin_ms` before to `margin_ms`
    after the range: trees and points arrive up to the grace period (and clock skew) after
    their event time, and the records before the range make the watermark what it was live.
    """

    from_ms: int
    to_ms: int
    margin_ms: int

    def __post_init__(self) -> None:
        if self.margin_ms < 0:
            raise BackfillInputError("--margin must not be negative")
        if self.first_minute_ms >= self.end_minute_ms:
            raise BackfillInputError(
                "the range holds no whole minute: --from must be before --to by at least a "
                "minute once both are rounded inwards to whole minutes"
            )

    @property
    def first_minute_ms(self) -> int:
        return _ceil(self.from_ms, MINUTE_MS)

    @property
    def end_minute_ms(self) -> int:
        return self.to_ms - self.to_ms % MINUTE_MS

    @property
    def first_hour_ms(self) -> int:
        return _ceil(self.from_ms, HOUR_MS)

    @property
    def end_hour_ms(self) -> int:
        return self.to_ms - self.to_ms % HOUR_MS

    @property
    def read_from_ms(self) -> int:
        return self.first_minute_ms - self.margin_ms

    @property
    def read_to_ms(self) -> int:
        return self.end_minute_ms + self.margin_ms

    def has_minute(self, minute_ms: int) -> bool:
        return self.first_minute_ms <= minute_ms and minute_ms + MINUTE_MS <= self.end_minute_ms

    def has_hour(self, hour_ms: int) -> bool:
        return self.first_hour_ms <= hour_ms and hour_ms + HOUR_MS <= self.end_hour_ms


@dataclass
class RebuildCounts:
    """What a rebuild saw: records applied, refused (already dead-lettered live), written."""

    records: int = 0
    rejected: int = 0
    outside: int = 0
    minute_rows: int = 0
    hour_rows: int = 0


@dataclass
class TracingRows:
    """Rebuilt report rows: minute rows with the last source offset they count, hour rows, and
    the minute index entries (what a live worker reads to recognise replayed trees)."""

    minutes: list[tuple[dict[str, Any], int]] = field(default_factory=list)
    hours: list[dict[str, Any]] = field(default_factory=list)
    index: list[dict[str, Any]] = field(default_factory=list)


class TracingRebuild:
    """CAT minute and hour reports of a window, rebuilt from trees in offset order."""

    def __init__(self, window: BackfillWindow, grace_ms: int, options: ReportOptions) -> None:
        self.window = window
        self.grace_ms = grace_ms
        self.options = options
        self.partitions: dict[int, PartitionReports] = {}
        self.counts = RebuildCounts()

    def add(
        self, partition: int, offset: int, tree: Mapping[str, Any], written_us: int | None = None
    ) -> None:
        """Count one tree read at `offset`, refused as live processing refuses it (validated
        against when it was written)."""
        try:
            validate_tree(tree, written_us)
        except RecordRejected:
            self.counts.rejected += 1
            return
        state = self.partitions.get(partition)
        if state is None:
            state = self.partitions[partition] = PartitionReports(
                grace_ms=self.grace_ms, keep_closed_ms=NEVER_FORGET_MS, options=self.options
            )
        if state.apply(tree, offset) is Outcome.TOO_LATE:
            # Live, the minute is restored from Cassandra and amended; here it has no other tree.
            state.restore_closed(empty_closed_minute(tree["domain"], tree_minute_ms(tree)))
            state.apply(tree, offset)
        self.counts.records += 1

    def rows(self) -> TracingRows:
        """Every minute closed at once (the input is complete), then the window's share."""
        result = TracingRows()
        by_hour: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
        for partition, state in sorted(self.partitions.items()):
            state.flush_all()
            for (domain, minute_ms), minute in sorted(state.closed.items()):
                if not self.window.has_minute(minute_ms):
                    self.counts.outside += 1
                    continue
                rows = minute.rows(minute_ms + MINUTE_MS, self.options)
                result.minutes.extend((row, minute.last_offset) for row in rows)
                result.index.append(
                    {
                        "domain": domain,
                        "period_start_ms": minute_ms,
                        "source_partition": partition,
                        "last_offset": minute.last_offset,
                        "revision": max(minute.revision, 0),
                        "late_count": minute.late_count,
                    }
                )
                by_hour[(domain, minute_ms - minute_ms % HOUR_MS)].extend(rows)
        for (domain, hour_ms), rows in sorted(by_hour.items()):
            if self.window.has_hour(hour_ms):
                hour = HourReport.from_rows(domain, hour_ms, rows, self.options.max_problem_samples)
                result.hours.extend(hour.rows())
        self.counts.minute_rows = len(result.minutes)
        self.counts.hour_rows = len(result.hours)
        return result


SeriesKey = tuple[str, str]  # metric, canonical tags


@dataclass
class MetricRows:
    """Rebuilt rollups: (metric, tags, period start, aggregate) per minute and per hour, and
    the series admitted here that the guard's table did not list yet."""

    minutes: list[tuple[str, str, int, Aggregate]] = field(default_factory=list)
    hours: list[tuple[str, str, int, Aggregate]] = field(default_factory=list)
    new_series: list[tuple[str, str]] = field(default_factory=list)


class MetricsRebuild:
    """Minute and hour rollups of a window, rebuilt from points in offset order.

    `known_series(metric)` gives the tag sets the live cardinality guard has admitted (read
    before the metric's first point is added); new series are admitted under the same limit.
    """

    def __init__(
        self,
        window: BackfillWindow,
        series_limit: int,
        known_series: Callable[[str], list[dict[str, str]]],
    ) -> None:
        self.window = window
        self.series_limit = series_limit
        self.known_series = known_series
        self.series: dict[str, MetricSeries] = {}
        self.minutes: dict[tuple[SeriesKey, int], SeriesMinute] = {}
        self.new_series: list[tuple[str, str]] = []
        self.counts = RebuildCounts()

    def metrics_to_load(self, points: list[Mapping[str, Any]]) -> set[str]:
        """Metrics of these points whose admitted series are not known yet."""
        return {point["name"] for point in points} - self.series.keys()

    def add(self, point: Mapping[str, Any]) -> None:
        try:
            validate_point(point)
        except RecordRejected:
            self.counts.rejected += 1
            return
        metric = point["name"]
        known = self.series.get(metric)
        if known is None:
            known = self.series[metric] = MetricSeries(metric, self.known_series(metric))
        try:
            if admit_series(known, point["tags"], self.series_limit):
                self.new_series.append((metric, tags_text(point["tags"])))
        except CardinalityExceeded:
            self.counts.rejected += 1
            return
        timestamp = point["timestamp_ms"]
        minute = timestamp - timestamp % MINUTE_MS
        if not self.window.has_minute(minute):
            self.counts.outside += 1
            return
        key = ((metric, tags_text(point["tags"])), minute)
        self.minutes.setdefault(key, SeriesMinute()).points[timestamp] = point["value"]
        self.counts.records += 1

    def rows(self) -> MetricRows:
        result = MetricRows(new_series=list(self.new_series))
        hours: dict[tuple[SeriesKey, int], Aggregate] = {}
        for (series, minute), points in sorted(self.minutes.items()):
            aggregate = points.aggregate()
            result.minutes.append((*series, minute, aggregate))
            hour = minute - minute % HOUR_MS
            if self.window.has_hour(hour):
                hours.setdefault((series, hour), Aggregate()).merge(aggregate)
        result.hours = [(*series, hour, aggregate) for (series, hour), aggregate in hours.items()]
        self.counts.minute_rows = len(result.minutes)
        self.counts.hour_rows = len(result.hours)
        return result
