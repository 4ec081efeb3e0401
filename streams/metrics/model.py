"""Pure metric logic: point validation, series identity, raw-point rows, cardinality guard.

The other pure modules of the domain: ingest.py (KairosDB ingest formats), rollup.py (mergeable
aggregates), query.py (KairosDB queries).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from streams.errors import RecordRejected

# KairosDB keeps a row per metric, tag set and three weeks of time.
ROW_WIDTH_MS = 3 * 7 * 24 * 3600 * 1000
MAX_NAME_LENGTH = 512
MAX_TAGS = 64
EARLIEST_MS = 946_684_800_000  # 2000-01-01
LATEST_MS = 7_258_118_400_000  # 2200-01-01


def validate_point(point: Mapping[str, Any]) -> None:
    """Reject points KairosDB would refuse, naming the field."""
    name = point["name"]
    if not name or not name.strip():
        raise RecordRejected("name", "must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise RecordRejected("name", f"is longer than {MAX_NAME_LENGTH} characters")
    tags = point["tags"]
    if not tags:
        raise RecordRejected("tags", "a point needs at least one tag")
    if len(tags) > MAX_TAGS:
        raise RecordRejected("tags", f"more than {MAX_TAGS} tags")
    for key, value in tags.items():
        if not key or not value:
            raise RecordRejected("tags", f"tag {key!r} has an empty name or value")
    if not math.isfinite(point["value"]):
        raise RecordRejected("value", f"must be a finite number, not {point['value']}")
    if not EARLIEST_MS <= point["timestamp_ms"] <= LATEST_MS:
        raise RecordRejected(
            "timestamp_ms", f"{point['timestamp_ms']} is not a time between 2000 and 2200"
        )


def tags_text(tags: Mapping[str, str]) -> str:
    """A canonical text of a tag set: the same tags always give the same text."""
    return json.dumps(dict(sorted(tags.items())), separators=(",", ":"), ensure_ascii=False)


def series_key(name: str, tags: Mapping[str, str]) -> str:
    return f"{name}|{tags_text(tags)}"


def newest(current: Mapping[str, Any] | None, candidate: Mapping[str, Any]) -> bool:
    """Whether `candidate` replaces `current` as a series' latest point (ties: later wins).

    A hidden entry (its point was deleted, `hidden_entry`) is replaced by any point.
    """
    return (
        current is None
        or not is_listed(current)
        or candidate["timestamp_ms"] >= current["timestamp_ms"]
    )


def latest_entry(point: Mapping[str, Any], accepted_ms: int = 0) -> dict[str, Any]:
    """The latest-table value of a point; `accepted_ms` is when the bus accepted it (the Kafka
    record's timestamp), which a delete compares with the time it was requested."""
    return {
        "name": point["name"],
        "tags": dict(point["tags"]),
        "timestamp_ms": point["timestamp_ms"],
        "value": point["value"],
        "accepted_ms": accepted_ms,
    }


def hidden_entry(entry: Mapping[str, Any], deleted_ms: int) -> dict[str, Any]:
    """What stays of a latest entry whose point a range delete removed: not listed, but still a
    key of the table, so the series stays counted by the guard (as in `metric_series`)."""
    return {
        "name": entry["name"],
        "tags": dict(entry["tags"]),
        "accepted_ms": entry.get("accepted_ms", 0),
        "deleted_ms": deleted_ms,
    }


def is_listed(entry: Mapping[str, Any]) -> bool:
    """Whether a latest entry holds a point (`/metrics/latest` lists it) or is hidden."""
    return "timestamp_ms" in entry


def raw_point_row(point: Mapping[str, Any]) -> dict[str, Any]:
    """The Cassandra row of one raw point: partition by metric, row time and tag set."""
    timestamp = point["timestamp_ms"]
    return {
        "metric": point["name"],
        "row_time": timestamp - timestamp % ROW_WIDTH_MS,
        "tags": tags_text(point["tags"]),
        "ts": timestamp,
        "value": point["value"],
    }


class CardinalityExceeded(RecordRejected):
    """A point would start a new series past its metric's series limit."""

    error_type = "cardinality"


WARNING_FRACTION = 0.8


class MetricSeries:
    """The accepted tag sets of one metric and how many values each tag key has among them."""

    def __init__(self, metric: str, tag_sets: Iterable[Mapping[str, str]] = ()) -> None:
        self.metric = metric
        self.series: set[str] = set()
        self.values_by_tag: dict[str, set[str]] = {}
        self.rejected = 0
        for tags in tag_sets:
            self.add(tags)

    def add(self, tags: Mapping[str, str]) -> None:
        self.series.add(tags_text(tags))
        for key, value in tags.items():
            self.values_by_tag.setdefault(key, set()).add(value)

    def worst_tag(self) -> tuple[str, int]:
        """The tag key with the most distinct values: the likely cause of a series explosion."""
        if not self.values_by_tag:
            return ("", 0)
        key = max(sorted(self.values_by_tag), key=lambda k: len(self.values_by_tag[k]))
        return key, len(self.values_by_tag[key])


def admit_series(known: MetricSeries, tags: Mapping[str, str], limit: int) -> bool:
    """Whether a point with `tags` may be stored; True when it added a new series.

    Raises CardinalityExceeded (naming the metric, the limit and the worst tag key) when the
    tag set is new and the metric already has `limit` series.
    """
    text = tags_text(tags)
    if text in known.series:
        return False
    if len(known.series) >= limit:
        known.rejected += 1
        probe = MetricSeries(known.metric)
        probe.values_by_tag = {k: set(v) for k, v in known.values_by_tag.items()}
        probe.add(tags)
        worst, count = probe.worst_tag()
        raise CardinalityExceeded(
            "tags",
            f"metric {known.metric!r} has reached its limit of {limit} series; tag {worst!r} "
            f"has {count} distinct values; drop or bound that tag",
        )
    known.add(tags)
    return True


def cardinality_level(series: int, limit: int) -> str:
    """ok, warning (from 80% of the limit) or full."""
    if series >= limit:
        return "full"
    if series >= WARNING_FRACTION * limit:
        return "warning"
    return "ok"


def tags_from_text(text: str) -> dict[str, str]:
    return dict(json.loads(text))


def row_time(timestamp_ms: int) -> int:
    return timestamp_ms - timestamp_ms % ROW_WIDTH_MS
