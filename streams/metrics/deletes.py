"""Pure delete logic: KairosDB delete requests as records, and what a delete changes in a row.

A delete removes the raw points of the matching series of one metric in [start, end]. Rollups
are a function of the raw points, so the minutes and hours wholly inside the range are removed,
the (at most two) partial minutes are recomputed from their remaining points and the (at most
two) partial hours are merged again from their remaining minutes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from streams.errors import RecordRejected
from streams.metrics.model import EARLIEST_MS, LATEST_MS, ROW_WIDTH_MS, hidden_entry, is_listed
from streams.metrics.query import parse_query
from streams.metrics.rollup import HOUR_MS, MINUTE_MS, Aggregate, merge_all


def delete_records(document: Any, now_ms: int) -> list[dict[str, Any]]:
    """One record per metric of a KairosDB delete body (a query body; aggregators are ignored).

    Raises KairosErrors naming the problem, as KairosDB answers a bad query. `delete_id` and
    `requested_ms` are the caller's to add.
    """
    query = parse_query(document, now_ms)
    return [
        {
            "metric": metric.name,
            "start_ms": query.start,
            "end_ms": query.end,
            "tags": {key: sorted(values) for key, values in sorted(metric.tags.items())},
            "whole_metric": False,
        }
        for metric in query.metrics
    ]


def whole_metric_record(name: str) -> dict[str, Any]:
    """`DELETE /api/v1/metric/{name}`: every point a metric can hold, and its name and series."""
    return {
        "metric": name,
        "start_ms": EARLIEST_MS,
        "end_ms": LATEST_MS,
        "tags": {},
        "whole_metric": True,
    }


def validate_delete(record: Mapping[str, Any]) -> None:
    """Reject delete records no request could have produced, naming the field."""
    if not record["delete_id"]:
        raise RecordRejected("delete_id", "must not be empty")
    if not record["metric"] or not record["metric"].strip():
        raise RecordRejected("metric", "must not be empty")
    if record["end_ms"] < record["start_ms"]:
        raise RecordRejected(
            "end_ms", f"{record['end_ms']} is before start_ms {record['start_ms']}"
        )
    for key, values in record["tags"].items():
        if not values:
            raise RecordRejected("tags", f"tag {key!r} lists no values; it would match nothing")


def matches(tag_filter: Mapping[str, Iterable[str]], tags: Mapping[str, str]) -> bool:
    """A series matches when each filtered tag has one of the listed values (KairosDB's rule)."""
    return all(tags.get(key) in set(values) for key, values in tag_filter.items())


def stored_range(start: int, end: int) -> tuple[int, int]:
    """The part of [start, end] a stored point can be in (points are between 2000 and 2200)."""
    return max(start, EARLIEST_MS), min(end, LATEST_MS)


@dataclass(frozen=True)
class LatestChanges:
    """What one delete does to the latest-point table (`metrics.latest`).

    `hidden`: keys whose point a range delete removed, with the entry that replaces it (not
    listed by /metrics/latest, but the series stays a key, so the guard keeps counting it, as
    the batch agent's `metric_series` does). `dropped`: keys a whole-metric delete removes (the
    series count of the metric starts again, as in Cassandra).
    """

    hidden: dict[str, dict[str, Any]] = field(default_factory=dict)
    dropped: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.hidden or self.dropped)


def latest_changes(
    delete: Mapping[str, Any], entries: Iterable[tuple[str, Mapping[str, Any]]]
) -> LatestChanges:
    """The latest entries (key, value) of the table that a MetricDelete removes.

    An entry goes when it is of the delete's metric, the bus accepted its point at or before the
    request (`accepted_ms <= requested_ms`: a point that arrives after the request survives, as
    Cassandra's `USING TIMESTAMP requested_ms` lets it survive; entries without `accepted_ms`
    were written before it was recorded and count as older) and, unless the whole metric is
    deleted, its series matches the tag filter and its newest point lies in [start_ms, end_ms].
    """
    metric = delete["metric"]
    requested = delete["requested_ms"]
    hidden: dict[str, dict[str, Any]] = {}
    dropped: list[str] = []
    for key, entry in entries:
        if entry.get("name") != metric or entry.get("accepted_ms", 0) > requested:
            continue
        if delete["whole_metric"]:
            dropped.append(key)
        elif (
            is_listed(entry)
            and matches(delete["tags"], entry["tags"])
            and delete["start_ms"] <= entry["timestamp_ms"] <= delete["end_ms"]
        ):
            hidden[key] = hidden_entry(entry, requested)
    return LatestChanges(hidden, tuple(sorted(dropped)))


@dataclass(frozen=True)
class RowDelete:
    """What a delete of [start, end] does to one series row (KairosDB's three-week row).

    `whole_minutes`/`whole_hours` are inclusive ranges of minute/hour starts wholly inside the
    range (their rollups go); `partial_hours` are hours only partly inside (rebuilt);
    `whole_row` says the row key index entry goes too.
    """

    start: int
    end: int
    whole_minutes: tuple[int, int] | None
    whole_hours: tuple[int, int] | None
    partial_hours: tuple[int, ...]
    whole_row: bool


def row_delete(row_time: int, start: int, end: int) -> RowDelete | None:
    """The delete of [start, end] clipped to the row starting at `row_time`; None if disjoint."""
    row_end = row_time + ROW_WIDTH_MS - 1
    low, high = max(start, row_time), min(end, row_end)
    if low > high:
        return None
    return RowDelete(
        low,
        high,
        _whole(low, high, MINUTE_MS),
        _whole(low, high, HOUR_MS),
        tuple(
            sorted(
                {
                    hour
                    for hour in (low - low % HOUR_MS, high - high % HOUR_MS)
                    if not (low <= hour and hour + HOUR_MS - 1 <= high)
                }
            )
        ),
        low == row_time and high == row_end,
    )


def _whole(low: int, high: int, unit: int) -> tuple[int, int] | None:
    first = -(-low // unit) * unit
    last = (high + 1) // unit * unit - unit
    return (first, last) if first <= last else None


def partial_minutes(hour: int, start: int, end: int) -> list[int]:
    """Minutes of `hour` that [start, end] covers only in part (their points are re-read)."""
    candidates = {start - start % MINUTE_MS, end - end % MINUTE_MS}
    return sorted(
        minute
        for minute in candidates
        if hour <= minute < hour + HOUR_MS
        and not (start <= minute and minute + MINUTE_MS - 1 <= end)
        and minute <= end
        and minute + MINUTE_MS - 1 >= start
    )


@dataclass
class HourRebuild:
    """A partial hour after a delete: its minutes and hour aggregate, what to write and drop."""

    minutes: dict[int, Aggregate] = field(default_factory=dict)
    rewritten: dict[int, Aggregate] = field(default_factory=dict)
    removed: list[int] = field(default_factory=list)
    hour: Aggregate | None = None


def rebuild_hour(
    hour: int,
    minutes: Mapping[int, Aggregate],
    start: int,
    end: int,
    remaining: Mapping[int, Iterable[tuple[int, float]]],
) -> HourRebuild:
    """Rebuild a partly deleted hour from its stored minute rollups.

    `minutes` are the hour's minute aggregates before the delete; `remaining` the raw points
    left in each partial minute after it, as the store has them. Minutes wholly inside the
    range go, partial ones are recomputed from their remaining points, the rest are kept as
    they are; the hour is the merge of what is left (None when nothing is).
    """
    result = HourRebuild()
    partial = set(partial_minutes(hour, start, end))
    for minute in sorted(set(minutes) | partial):
        if minute in partial:
            points = sorted(remaining.get(minute, ()))
            if points:
                aggregate = Aggregate.of_points(points)
                result.minutes[minute] = result.rewritten[minute] = aggregate
            elif minute in minutes:
                result.removed.append(minute)
        elif start <= minute and minute + MINUTE_MS - 1 <= end:
            result.removed.append(minute)
        else:
            result.minutes[minute] = minutes[minute]
    if result.minutes:
        result.hour = merge_all(result.minutes[m] for m in sorted(result.minutes))
    return result
