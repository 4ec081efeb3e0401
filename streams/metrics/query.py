"""Pure KairosDB query logic: parse a query body, plan where to read, aggregate, group, answer.

The planner reads hour and minute rollups for the whole hours and minutes of the time range when
the first aggregator is a range aggregator whose buckets are unions of whole minutes, and raw
points for the partial minutes at the edges and for everything else. A bucket's aggregate is the
merge of its pieces, so both plans give the same answer (sums to float rounding; percentiles
exactly, since both come from the same sketch bins, merged as arrays in columns.py).
"""

from __future__ import annotations

import calendar
import itertools
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from streams.metrics.columns import (
    COLUMNAR_AGGREGATORS,
    FIELDS_OF_AGGREGATOR,
    SKETCH,
    Columns,
    aggregator_values,
    bucket_quantiles,
    merge_by_bucket,
)
from streams.metrics.ingest import KairosErrors
from streams.metrics.rollup import HOUR_MS, MINUTE_MS, Aggregate

FIXED_UNITS_MS = {
    "milliseconds": 1,
    "seconds": 1000,
    "minutes": MINUTE_MS,
    "hours": HOUR_MS,
    "days": 86_400_000,
    "weeks": 604_800_000,
}
CALENDAR_UNITS = {"months": 1, "years": 12}
UNITS = (*FIXED_UNITS_MS, *CALENDAR_UNITS)
RANGE_AGGREGATORS = frozenset(
    {"avg", "sum", "min", "max", "count", "first", "last", "dev", "percentile", "least_squares"}
)
ROLLUP_AGGREGATORS = RANGE_AGGREGATORS - {"least_squares"}
OTHER_AGGREGATORS = frozenset({"diff", "div", "scale", "rate", "sampler", "trim", "filter"})
ALIASES = {"histogram": "percentile"}
FILTER_OPS = {
    "lte": lambda v, t: v <= t,
    "lt": lambda v, t: v < t,
    "gte": lambda v, t: v >= t,
    "gt": lambda v, t: v > t,
    "equal": lambda v, t: v == t,
}


@dataclass(frozen=True)
class Duration:
    """`{"value": n, "unit": "minutes"}`; months and years are calendar units (UTC)."""

    value: int
    unit: str

    @property
    def fixed_ms(self) -> int | None:
        per_unit = FIXED_UNITS_MS.get(self.unit)
        return self.value * per_unit if per_unit is not None else None

    def months(self) -> int:
        return self.value * CALENDAR_UNITS[self.unit]

    def before(self, timestamp_ms: int) -> int:
        fixed = self.fixed_ms
        if fixed is not None:
            return timestamp_ms - fixed
        return add_months(timestamp_ms, -self.months())


def add_months(timestamp_ms: int, months: int) -> int:
    moment = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    index = moment.year * 12 + moment.month - 1 + months
    year, month = divmod(index, 12)
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return int(moment.replace(year=year, month=month + 1, day=day).timestamp() * 1000)


def month_index(timestamp_ms: int) -> int:
    moment = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    return moment.year * 12 + moment.month - 1


def month_start(index: int) -> int:
    year, month = divmod(index, 12)
    return int(datetime(year, month + 1, 1, tzinfo=UTC).timestamp() * 1000)


@dataclass(frozen=True)
class Buckets:
    """How a range aggregator cuts time: fixed widths from an origin, or calendar months."""

    origin: int
    width_ms: int | None
    months: int = 0

    def start_of(self, timestamp_ms: int) -> int:
        if self.width_ms is not None:
            return self.origin + (timestamp_ms - self.origin) // self.width_ms * self.width_ms
        origin_index = month_index(self.origin)
        index = origin_index + (month_index(timestamp_ms) - origin_index) // self.months * (
            self.months
        )
        return month_start(index)

    def end_of(self, bucket_start: int) -> int:
        if self.width_ms is not None:
            return bucket_start + self.width_ms
        return month_start(month_index(bucket_start) + self.months)

    def aligned_to(self, unit_ms: int) -> bool:
        """Whether every bucket boundary is a multiple of `unit_ms` (minutes or hours)."""
        if self.width_ms is None:
            return self.origin % unit_ms == 0
        return self.origin % unit_ms == 0 and self.width_ms % unit_ms == 0


@dataclass(frozen=True)
class AggregatorSpec:
    """One entry of `aggregators`, parsed and checked."""

    name: str
    sampling: Duration | None = None
    align_sampling: bool = True
    align_start_time: bool = False
    align_end_time: bool = False
    start_time: int | None = None
    percentile: float = 0.0
    divisor: float = 1.0
    factor: float = 1.0
    unit_ms: int = 1000
    trim: str = "both"
    filter_op: str = "equal"
    threshold: float = 0.0

    @property
    def is_range(self) -> bool:
        return self.name in RANGE_AGGREGATORS

    def buckets(self, query_start: int) -> Buckets:
        sampling = self.sampling or Duration(1, "milliseconds")
        fixed = sampling.fixed_ms
        if self.align_sampling and not self.align_start_time and self.start_time is None:
            if fixed is not None:
                return Buckets(0, fixed)
            return Buckets(month_start(month_index(query_start)), None, sampling.months())
        origin = self.start_time if self.start_time is not None else query_start
        if fixed is not None:
            return Buckets(origin, fixed)
        return Buckets(origin, None, sampling.months())


@dataclass(frozen=True)
class GroupBySpec:
    kind: str
    tags: tuple[str, ...] = ()
    range_size: Duration | None = None
    group_count: int = 0
    value_range: float = 0.0


@dataclass(frozen=True)
class MetricQuery:
    name: str
    tags: Mapping[str, frozenset[str]]
    group_by: tuple[GroupBySpec, ...] = ()
    aggregators: tuple[AggregatorSpec, ...] = ()
    limit: int | None = None
    order: str = "asc"
    exclude_tags: bool = False

    def matches(self, tags: Mapping[str, str]) -> bool:
        return all(tags.get(key) in allowed for key, allowed in self.tags.items())


@dataclass(frozen=True)
class Query:
    start: int
    end: int
    metrics: tuple[MetricQuery, ...]


# --- parsing -----------------------------------------------------------------------------------


def parse_query(document: Any, now_ms: int, *, need_metrics: bool = True) -> Query:
    """A checked query; every problem raises KairosErrors naming its JSON path."""
    if not isinstance(document, dict):
        raise KairosErrors(["query must be a JSON object"])
    start = _time_bound(document, "start", now_ms)
    if start is None:
        raise KairosErrors(["query.start_time relative or absolute time must be set"])
    end = _time_bound(document, "end", now_ms)
    end = now_ms if end is None else end
    if end < start:
        raise KairosErrors(["query.start_time must be before the end time"])
    metrics = document.get("metrics")
    if not isinstance(metrics, list) or (need_metrics and not metrics):
        raise KairosErrors(["query.metric[] must have a size of at least 1"])
    parsed = [_metric(metric, f"query.metric[{i}]", start) for i, metric in enumerate(metrics)]
    return Query(start, end, tuple(parsed))


def _time_bound(document: Mapping[str, Any], which: str, now_ms: int) -> int | None:
    absolute, relative = f"{which}_absolute", f"{which}_relative"
    if absolute in document and relative in document:
        raise KairosErrors([f"query.{which}_time: set {absolute} or {relative}, not both"])
    if absolute in document:
        value = document[absolute]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise KairosErrors([f"query.{absolute} must be a time in milliseconds"])
        return int(value)
    if relative in document:
        return _duration(document[relative], f"query.{relative}").before(now_ms)
    return None


def _duration(raw: Any, where: str) -> Duration:
    if not isinstance(raw, dict):
        raise KairosErrors([f"{where} must be {{value, unit}}"])
    value = raw.get("value")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise KairosErrors([f"{where}.value must be greater than or equal to 1"])
    unit = str(raw.get("unit", "")).lower()
    if unit not in UNITS:
        raise KairosErrors([f"{where}.unit must be one of {', '.join(u.upper() for u in UNITS)}"])
    return Duration(value, unit)


def _number(raw: Any, where: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise KairosErrors([f"{where} must be a number"])
    try:
        value = float(raw)
    except ValueError:
        raise KairosErrors([f"{where} must be a number"]) from None
    if not math.isfinite(value):
        raise KairosErrors([f"{where} must be a finite number"])
    return value


def _metric(raw: Any, where: str, start: int) -> MetricQuery:
    if not isinstance(raw, dict):
        raise KairosErrors([f"{where} must be an object"])
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise KairosErrors([f"{where}.name may not be empty"])
    tags: dict[str, frozenset[str]] = {}
    raw_tags = raw.get("tags") or {}
    if not isinstance(raw_tags, dict):
        raise KairosErrors([f"{where}.tags must be an object of tag name to values"])
    for key, values in raw_tags.items():
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise KairosErrors([f"{where}.tags[{key}] must be a list of strings"])
        if values:
            tags[key] = frozenset(values)
    group_by = tuple(
        _group_by(g, f"{where}.group_by[{i}]") for i, g in enumerate(raw.get("group_by") or [])
    )
    aggregators = tuple(
        _aggregator(a, f"{where}.aggregators[{i}]")
        for i, a in enumerate(raw.get("aggregators") or [])
    )
    limit = raw.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise KairosErrors([f"{where}.limit must be greater than or equal to 1"])
    order = str(raw.get("order", "asc")).lower()
    if order not in ("asc", "desc"):
        raise KairosErrors([f"{where}.order must be asc or desc"])
    return MetricQuery(
        name, tags, group_by, aggregators, limit, order, bool(raw.get("exclude_tags", False))
    )


def _group_by(raw: Any, where: str) -> GroupBySpec:
    if not isinstance(raw, dict):
        raise KairosErrors([f"{where} must be an object"])
    kind = raw.get("name")
    if kind == "tag":
        tags = raw.get("tags")
        if not isinstance(tags, list) or not tags or not all(isinstance(t, str) for t in tags):
            raise KairosErrors([f"{where}.tags must be a non-empty list of tag names"])
        return GroupBySpec("tag", tags=tuple(tags))
    if kind == "time":
        count = raw.get("group_count")
        if isinstance(count, str) and count.isdigit():
            count = int(count)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise KairosErrors([f"{where}.group_count must be greater than or equal to 1"])
        size = _duration(raw.get("range_size"), f"{where}.range_size")
        if size.fixed_ms is None:
            raise KairosErrors([f"{where}.range_size.unit must be weeks or shorter"])
        return GroupBySpec("time", range_size=size, group_count=count)
    if kind == "value":
        size = _number(raw.get("range_size"), f"{where}.range_size")
        if size <= 0:
            raise KairosErrors([f"{where}.range_size must be greater than 0"])
        return GroupBySpec("value", value_range=size)
    raise KairosErrors([f"{where}.name {kind!r} is not a grouper (tag, time or value)"])


def _aggregator(raw: Any, where: str) -> AggregatorSpec:
    if not isinstance(raw, dict):
        raise KairosErrors([f"{where} must be an object"])
    name = ALIASES.get(raw.get("name"), raw.get("name"))
    if name not in RANGE_AGGREGATORS and name not in OTHER_AGGREGATORS:
        raise KairosErrors([f"{where}.name {raw.get('name')!r} is not a supported aggregator"])
    options: dict[str, Any] = {}
    if name in RANGE_AGGREGATORS:
        options["sampling"] = (
            _duration(raw["sampling"], f"{where}.sampling")
            if "sampling" in raw
            else Duration(1, "milliseconds")
        )
        options["align_sampling"] = bool(raw.get("align_sampling", True))
        options["align_start_time"] = bool(raw.get("align_start_time", False))
        options["align_end_time"] = bool(raw.get("align_end_time", False))
        if options["align_start_time"] and options["align_end_time"]:
            raise KairosErrors([f"{where}: align_start_time and align_end_time exclude each other"])
        if "start_time" in raw:
            options["start_time"] = int(_number(raw["start_time"], f"{where}.start_time"))
    if name == "percentile":
        percentile = _number(raw.get("percentile"), f"{where}.percentile")
        if not 0 < percentile <= 1:
            raise KairosErrors([f"{where}.percentile must be greater than 0 and at most 1"])
        options["percentile"] = percentile
    if name == "div":
        divisor = _number(raw.get("divisor"), f"{where}.divisor")
        if divisor == 0:
            raise KairosErrors([f"{where}.divisor may not be 0"])
        options["divisor"] = divisor
    if name == "scale":
        options["factor"] = _number(raw.get("factor"), f"{where}.factor")
    if name in ("rate", "sampler"):
        if "sampling" in raw:
            unit = _duration(raw["sampling"], f"{where}.sampling")
        else:
            unit = Duration(1, str(raw.get("unit", "")).lower())
            if unit.unit not in UNITS:
                raise KairosErrors([f"{where}.unit must be one of {', '.join(UNITS)}"])
        if unit.fixed_ms is None:
            raise KairosErrors([f"{where}.unit must be weeks or shorter"])
        options["unit_ms"] = unit.fixed_ms
    if name == "trim":
        trim = str(raw.get("trim", "")).lower()
        if trim not in ("first", "last", "both"):
            raise KairosErrors([f"{where}.trim must be FIRST, LAST or BOTH"])
        options["trim"] = trim
    if name == "filter":
        operation = str(raw.get("filter_op", "")).lower()
        if operation not in FILTER_OPS:
            raise KairosErrors([f"{where}.filter_op must be one of LTE, LT, GTE, GT, EQUAL"])
        options["filter_op"] = operation
        options["threshold"] = _number(raw.get("threshold"), f"{where}.threshold")
    return AggregatorSpec(name, **options)


# --- planning ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Where to read: raw ranges, whole minutes and whole hours (inclusive ms bounds).

    `fields` are the aggregate fields the first aggregator needs (see columns.py), with
    columns.SKETCH for a percentile (its sketch bins come from the packed minute rows, for whole
    hours too); empty when the rollups must be read as objects.
    """

    raw: tuple[tuple[int, int], ...]
    minutes: tuple[tuple[int, int], ...] = ()
    hours: tuple[tuple[int, int], ...] = ()
    needs_sketch: bool = False
    fields: frozenset[str] = frozenset()

    @property
    def uses_rollups(self) -> bool:
        return bool(self.minutes or self.hours)


def plan_metric(metric: MetricQuery, start: int, end: int) -> Plan:
    """Rollups for the whole minutes/hours when the first aggregator allows it; raw otherwise."""
    everything = Plan(((start, end),))
    first = metric.aggregators[0] if metric.aggregators else None
    if (
        first is None
        or first.name not in ROLLUP_AGGREGATORS
        or metric.limit is not None
        or any(group.kind != "tag" for group in metric.group_by)
    ):
        return everything
    buckets = first.buckets(start)
    if not buckets.aligned_to(MINUTE_MS):
        return everything
    first_minute = -(-start // MINUTE_MS) * MINUTE_MS
    end_minute = (end + 1) // MINUTE_MS * MINUTE_MS  # exclusive
    if first_minute >= end_minute:
        return everything
    raw = _ranges([(start, first_minute - 1), (end_minute, end)])
    sketch = first.name == "percentile"
    fields = FIELDS_OF_AGGREGATOR.get(first.name, frozenset())
    first_hour = -(-first_minute // HOUR_MS) * HOUR_MS
    end_hour = end_minute // HOUR_MS * HOUR_MS
    if buckets.aligned_to(HOUR_MS) and first_hour < end_hour:
        minutes = _ranges([(first_minute, first_hour - 1), (end_hour, end_minute - 1)])
        return Plan(raw, minutes, ((first_hour, end_hour - 1),), sketch, fields)
    return Plan(raw, ((first_minute, end_minute - 1),), (), sketch, fields)


def _ranges(candidates: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    return tuple((low, high) for low, high in candidates if low <= high)


# --- execution ---------------------------------------------------------------------------------


@dataclass
class SeriesData:
    """What the store read for one series: raw points and rollup pieces.

    Pieces come as objects (piece start, Aggregate), with sketches, or as arrays (`columns`)
    with only the fields the plan needs.
    """

    tags: dict[str, str]
    points: list[tuple[int, float]] = field(default_factory=list)
    pieces: list[tuple[int, Aggregate]] = field(default_factory=list)
    columns: Columns | None = None

    @property
    def sample_size(self) -> int:
        rolled = self.columns.sample_size if self.columns is not None else 0
        return len(self.points) + sum(piece.count for _, piece in self.pieces) + rolled


Points = list[tuple[int, float]]


def answer_metric(metric: MetricQuery, start: int, end: int, series: Sequence[SeriesData]) -> dict:
    """One `queries[]` entry of KairosDB's answer for one metric."""
    chosen = [s for s in series if metric.matches(s.tags)]
    groups: dict[tuple, list[tuple[SeriesData, Points]]] = defaultdict(list)
    group_labels: dict[tuple, list[dict[str, Any]]] = {}
    for data in chosen:
        for key, labels, points in _split_into_groups(metric, start, data):
            groups[key].append((data, points))
            group_labels.setdefault(key, labels)
    results = []
    sample_size = sum(data.sample_size for data in chosen)
    for key in sorted(groups, key=_sortable):
        members = groups[key]
        values = _aggregate_group(metric, start, members)
        tags: dict[str, set[str]] = defaultdict(set)
        for data, _ in members:
            for tag, value in data.tags.items():
                tags[tag].add(value)
        result: dict[str, Any] = {
            "name": metric.name,
            "group_by": [{"name": "type", "type": "number"}, *group_labels[key]],
        }
        if not metric.exclude_tags:
            result["tags"] = {tag: sorted(values) for tag, values in sorted(tags.items())}
        result["values"] = values
        results.append(result)
    if not results:
        empty: dict[str, Any] = {"name": metric.name, "tags": {}, "values": []}
        if metric.exclude_tags:
            del empty["tags"]
        results.append(empty)
    return {"sample_size": sample_size, "results": results}


def _sortable(key: tuple) -> tuple:
    return tuple((str(type(part)), part) for part in key)


def _split_into_groups(
    metric: MetricQuery, start: int, data: SeriesData
) -> list[tuple[tuple, list[dict[str, Any]], Points]]:
    tag_key: list[Any] = []
    labels: list[dict[str, Any]] = []
    for grouper in metric.group_by:
        if grouper.kind == "tag":
            group = {tag: data.tags.get(tag, "") for tag in grouper.tags}
            tag_key.append(tuple(sorted(group.items())))
            labels.append({"name": "tag", "tags": list(grouper.tags), "group": group})
    point_groupers = [g for g in metric.group_by if g.kind != "tag"]
    if not point_groupers:
        return [(tuple(tag_key), labels, data.points)]
    split: dict[tuple, tuple[list[dict[str, Any]], Points]] = {}
    for timestamp, value in data.points:
        numbers = []
        point_labels = []
        for grouper in point_groupers:
            if grouper.kind == "time":
                size = grouper.range_size.fixed_ms  # type: ignore[union-attr]
                number = (timestamp - start) // size % grouper.group_count
                point_labels.append(
                    {
                        "name": "time",
                        "range_size": {
                            "value": grouper.range_size.value,  # type: ignore[union-attr]
                            "unit": grouper.range_size.unit,  # type: ignore[union-attr]
                        },
                        "group_count": grouper.group_count,
                        "group": {"group_number": number},
                    }
                )
            else:
                number = math.floor(value / grouper.value_range)
                point_labels.append(
                    {
                        "name": "value",
                        "range_size": grouper.value_range,
                        "group": {"group_number": number},
                    }
                )
            numbers.append(number)
        key = (*tag_key, *numbers)
        split.setdefault(key, ([*labels, *point_labels], []))[1].append((timestamp, value))
    return [(key, group_labels, points) for key, (group_labels, points) in split.items()]


def _aggregate_group(
    metric: MetricQuery, start: int, members: Sequence[tuple[SeriesData, Points]]
) -> list[list[float | int]]:
    points = sorted(
        (point for _, member_points in members for point in member_points),
        key=lambda point: point[0],
    )
    pieces = [piece for data, _ in members for piece in data.pieces]
    columns = [data.columns for data, _ in members if data.columns is not None]
    aggregators = list(metric.aggregators)
    if not aggregators:
        if metric.order == "desc":
            points.reverse()
        if metric.limit is not None:
            points = points[: metric.limit]
        return [[timestamp, _plain(value)] for timestamp, value in points]
    if metric.order == "desc":
        points.reverse()
    if metric.limit is not None:
        points = points[: metric.limit]
    points.sort(key=lambda point: point[0])
    first = aggregators.pop(0)
    if first.is_range:
        series = range_aggregate(first, start, points, pieces, columns)
    else:
        series = apply_aggregator(first, start, points)
    for aggregator in aggregators:
        series = apply_aggregator(aggregator, start, series)
    if metric.order == "desc":
        series.reverse()
    return [[timestamp, value] for timestamp, value in series]


def _plain(value: float) -> float | int:
    """Integral values print as integers, as KairosDB returns long points."""
    if value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def range_aggregate(
    spec: AggregatorSpec,
    start: int,
    points: Points,
    pieces: Sequence[tuple[int, Aggregate]] = (),
    columns: Sequence[Columns] = (),
) -> Points:
    """A range aggregator over points and rollup pieces whose bucket is known by their start.

    least_squares works on points; the others merge arrays (percentile: sketch bins).
    """
    if spec.name in COLUMNAR_AGGREGATORS:
        return _range_aggregate_columns(spec, start, points, pieces, columns)
    if columns or pieces:
        raise ValueError(f"{spec.name} works on raw points, not rollups")
    buckets = spec.buckets(start)
    by_bucket: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for timestamp, value in points:
        by_bucket[buckets.start_of(timestamp)].append((timestamp, value))
    output: Points = []
    for bucket in sorted(by_bucket):
        output.extend(_least_squares(by_bucket[bucket]))
    return output


def _range_aggregate_columns(
    spec: AggregatorSpec,
    start: int,
    points: Points,
    pieces: Sequence[tuple[int, Aggregate]],
    columns: Sequence[Columns],
) -> Points:
    fields = FIELDS_OF_AGGREGATOR[spec.name]
    sketch = SKETCH in fields
    parts = [*columns]
    if points:
        parts.append(Columns.of_points(points, sketch=sketch))
    if pieces:
        parts.append(Columns.of_aggregates(pieces, sketch=sketch))
    merged_input = Columns.concat(parts, fields)
    buckets = spec.buckets(start)
    bucket_of = _bucket_starts(buckets, merged_input.start)
    merged = merge_by_bucket(merged_input, bucket_of, fields)
    if sketch and merged_input.sketch is not None:  # concat of SKETCH always has the bins
        values = bucket_quantiles(
            merged_input.sketch, bucket_of, merged.buckets, spec.percentile
        ).tolist()
    else:
        values = aggregator_values(spec.name, merged).tolist()
    if spec.align_start_time:
        stamps = merged.buckets.tolist()
    elif spec.align_end_time:
        if buckets.width_ms is not None:
            stamps = (merged.buckets + buckets.width_ms).tolist()
        else:
            stamps = [buckets.end_of(bucket) for bucket in merged.buckets.tolist()]
    else:
        stamps = merged.fields["first_ts"].tolist()
    return list(zip(stamps, values, strict=True))


def _bucket_starts(buckets: Buckets, starts: np.ndarray) -> np.ndarray:
    if buckets.width_ms is not None:
        return buckets.origin + (starts - buckets.origin) // buckets.width_ms * buckets.width_ms
    distinct, where = np.unique(starts, return_inverse=True)
    mapped = np.fromiter((buckets.start_of(t) for t in distinct.tolist()), np.int64, len(distinct))
    return mapped[where]


def _least_squares(points: Points) -> Points:
    """Two points on the best-fit line, at the first and last timestamp of the range."""
    if not points:
        return []
    if len(points) == 1:
        return list(points)
    count = len(points)
    origin = points[0][0]
    mean_t = sum(t - origin for t, _ in points) / count
    mean_v = sum(v for _, v in points) / count
    spread = sum((t - origin - mean_t) ** 2 for t, _ in points)
    slope = sum((t - origin - mean_t) * (v - mean_v) for t, v in points) / spread if spread else 0.0
    first, last = points[0][0], points[-1][0]
    line: Callable[[int], float] = lambda t: mean_v + slope * (t - origin - mean_t)  # noqa: E731
    return [(first, line(first)), (last, line(last))] if first != last else [(first, mean_v)]


def apply_aggregator(spec: AggregatorSpec, start: int, points: Points) -> Points:
    """One aggregator over a sorted (timestamp, value) series."""
    if spec.is_range:
        return range_aggregate(spec, start, points)
    name = spec.name
    if name == "scale":
        return [(t, v * spec.factor) for t, v in points]
    if name == "div":
        return [(t, v / spec.divisor) for t, v in points]
    if name == "diff":
        return [(t, v - pv) for (_, pv), (t, v) in itertools.pairwise(points)]
    if name == "rate":
        return [
            (t, (v - pv) / (t - pt) * spec.unit_ms)
            for (pt, pv), (t, v) in itertools.pairwise(points)
            if t != pt
        ]
    if name == "sampler":
        return [
            (t, v * spec.unit_ms / (t - pt))
            for (pt, _), (t, v) in itertools.pairwise(points)
            if t != pt
        ]
    if name == "trim":
        low = 1 if spec.trim in ("first", "both") else 0
        high = len(points) - (1 if spec.trim in ("last", "both") else 0)
        return points[low:high]
    operation = FILTER_OPS[spec.filter_op]
    return [(t, v) for t, v in points if not operation(v, spec.threshold)]


def tags_answer(name: str, series: Sequence[Mapping[str, str]], metric: MetricQuery) -> dict:
    """One `queries[]` entry of /datapoints/query/tags: every tag value of matching series."""
    tags: dict[str, set[str]] = defaultdict(set)
    for tag_set in series:
        if metric.matches(tag_set):
            for key, value in tag_set.items():
                tags[key].add(value)
    return {
        "results": [
            {
                "name": name,
                "tags": {key: sorted(values) for key, values in sorted(tags.items())},
                "values": [],
            }
        ]
    }
