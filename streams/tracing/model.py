"""CAT reports as pure logic: tree validation, per-minute Transaction, Event and Problem reports.

Time is event time. A tree belongs to the minute of its root's start; every message inside counts
there. Each source partition keeps a watermark (the newest root time seen minus a grace period);
a minute closes when the watermark passes its end, and its rows are emitted once (revision 0).
A tree for a closed minute still kept in memory amends it (late_count + 1, a new revision).
Hourly and daily reports are merges of minute rows, never recomputations.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from streams.errors import RecordRejected
from streams.tracing.sketch import REPORT_QUANTILES, SKETCH_FORMAT, LatencySketch

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
PERIOD_MS = {"minute": MINUTE_MS, "hour": HOUR_MS, "day": DAY_MS}
ALL_HOSTS = "All"
SUCCESS = "0"
# Percentile lines of a transaction row, in µs: stored in Cassandra so a read decodes no sketch;
# not on the topic, where the sketch carries them.
PERCENTILE_COLUMNS = tuple(f"{label}_us" for label, _ in REPORT_QUANTILES)
ERROR_EVENT_TYPES = frozenset({"Error", "Exception", "RuntimeException"})
DURATION_BUCKET_CAP_MS = 65_536

EARLIEST_US = 946_684_800_000_000  # 2000-01-01: anything older is a broken clock
MAX_DURATION_US = 86_400_000_000  # a day
CHILD_SKEW_US = 60_000_000  # a child may start this much before its parent (clock steps)


@dataclass(frozen=True)
class TreeLimits:
    """What a tree may be before it is refused as malformed."""

    max_messages: int = 5_000
    max_depth: int = 64
    # A tree from further ahead would move its domain's event time past the minutes the other
    # hosts are still filling, and their trees would all arrive late.
    max_future_us: int = 300_000_000
    max_string: int = 4_096
    max_data: int = 65_536


# How far a domain's event time may trail its partition's newest root time (at most the wall
# clock) before its minutes close anyway: hosts that send late by less than this are not late.
DOMAIN_LAG_MS = 300_000


def validate_tree(
    tree: Mapping[str, Any], now_us: int | None = None, limits: TreeLimits = TreeLimits()
) -> None:
    """Refuse a tree no report can use; the error names the offending field. `now_us` is when
    the tree was written (its Kafka timestamp, at most 5 minutes ahead of the broker), so
    live processing, replays and backfills refuse the same trees; None: the clock's now."""
    for name in ("domain", "ip", "message_id"):
        value = tree.get(name)
        if not isinstance(value, str) or not value.strip():
            raise RecordRejected(name, "is missing or empty")
        if len(value) > limits.max_string:
            raise RecordRejected(name, f"is longer than {limits.max_string} characters")
    if any(character.isspace() for character in tree["message_id"]):
        raise RecordRejected("message_id", "contains white space")
    root = tree.get("root")
    if not isinstance(root, Mapping):
        raise RecordRejected("root", "is missing")
    latest = (now_us if now_us is not None else int(time.time() * 1e6)) + limits.max_future_us
    if not EARLIEST_US <= int(root.get("timestamp_us", 0)) <= latest:
        raise RecordRejected(
            "root.timestamp_us",
            f"{root.get('timestamp_us')} is not a plausible time in microseconds since 1970 "
            "(before 2000 or too far in the future)",
        )
    count = 0
    stack: list[tuple[Mapping[str, Any], str, int, int | None]] = [(root, "root", 1, None)]
    while stack:
        message, path, depth, parent_start = stack.pop()
        count += 1
        if count > limits.max_messages:
            raise RecordRejected("root", f"tree has more than {limits.max_messages} messages")
        if depth > limits.max_depth:
            raise RecordRejected(path, f"nests deeper than {limits.max_depth} levels")
        _validate_message(message, path, parent_start, limits)
        if message.get("kind") == "TRANSACTION":
            start = int(message["timestamp_us"])
            for index, child in enumerate(message.get("children") or ()):
                stack.append((child, f"{path}.children[{index}]", depth + 1, start))


def _validate_message(
    message: Mapping[str, Any], path: str, parent_start: int | None, limits: TreeLimits
) -> None:
    kind = message.get("kind")
    if kind not in ("TRANSACTION", "EVENT", "METRIC", "HEARTBEAT", "TRACE"):
        raise RecordRejected(f"{path}.kind", f"{kind!r} is not a message kind")
    if kind in ("TRANSACTION", "EVENT"):
        for name in ("type", "name"):
            if not str(message.get(name, "")).strip():
                raise RecordRejected(f"{path}.{name}", "is missing or empty")
    for name in ("type", "name", "status"):
        if len(str(message.get(name, ""))) > limits.max_string:
            raise RecordRejected(f"{path}.{name}", f"is longer than {limits.max_string} characters")
    if len(str(message.get("data", ""))) > limits.max_data:
        raise RecordRejected(f"{path}.data", f"is longer than {limits.max_data} characters")
    timestamp = message.get("timestamp_us")
    if not isinstance(timestamp, int):
        raise RecordRejected(f"{path}.timestamp_us", "is missing")
    if parent_start is not None and timestamp < parent_start - CHILD_SKEW_US:
        raise RecordRejected(
            f"{path}.timestamp_us", "starts more than a minute before its parent transaction"
        )
    if kind == "TRANSACTION":
        duration = message.get("duration_us")
        if not isinstance(duration, int) or duration < 0:
            raise RecordRejected(f"{path}.duration_us", f"{duration!r} is not a duration >= 0")
        if duration > MAX_DURATION_US:
            raise RecordRejected(f"{path}.duration_us", "is longer than a day")


# --- statistics that merge exactly ---------------------------------------------------------


def duration_bucket_ms(duration_us: int) -> int:
    """CAT's duration distribution key: the power of two (ms) at or above it, capped at 65536."""
    milliseconds = duration_us / 1000
    bucket = 1
    while bucket < milliseconds and bucket < DURATION_BUCKET_CAP_MS:
        bucket <<= 1
    return bucket


def _first(mine: str | None, theirs: str | None) -> str | None:
    return mine if mine is not None else theirs


@dataclass
class TransactionStats:
    """Counts, sums and a latency sketch of one report row; `merge` is exact."""

    count: int = 0
    fail_count: int = 0
    sum_us: int = 0
    min_us: int = 0
    max_us: int = 0
    sum_squares: float = 0.0
    sketch: LatencySketch = field(default_factory=LatencySketch)
    duration_counts: dict[str, int] = field(default_factory=dict)
    success_message_id: str | None = None
    fail_message_id: str | None = None
    longest_message_id: str | None = None

    def add(self, duration_us: int, failed: bool, message_id: str) -> None:
        if self.count == 0 or duration_us < self.min_us:
            self.min_us = duration_us
        if self.count == 0 or duration_us > self.max_us:
            self.max_us = duration_us
            self.longest_message_id = message_id
        self.count += 1
        self.sum_us += duration_us
        self.sum_squares += float(duration_us) * duration_us
        self.sketch.add(duration_us)
        bucket = str(duration_bucket_ms(duration_us))
        self.duration_counts[bucket] = self.duration_counts.get(bucket, 0) + 1
        if failed:
            self.fail_count += 1
            if self.fail_message_id is None:
                self.fail_message_id = message_id
        elif self.success_message_id is None:
            self.success_message_id = message_id

    def merge(self, other: TransactionStats) -> None:
        if other.count == 0:
            return
        if self.count == 0 or other.min_us < self.min_us:
            self.min_us = other.min_us
        if self.count == 0 or other.max_us > self.max_us:
            self.max_us = other.max_us
            self.longest_message_id = other.longest_message_id
        self.count += other.count
        self.fail_count += other.fail_count
        self.sum_us += other.sum_us
        self.sum_squares += other.sum_squares
        self.sketch.merge(other.sketch)
        for bucket, count in other.duration_counts.items():
            self.duration_counts[bucket] = self.duration_counts.get(bucket, 0) + count
        self.success_message_id = _first(self.success_message_id, other.success_message_id)
        self.fail_message_id = _first(self.fail_message_id, other.fail_message_id)

    def row_fields(self) -> dict[str, Any]:
        """The row's columns, with its percentile lines (`p50_us`...) computed once here, so
        a report read decodes no sketch."""
        sketch, lines = self.sketch.encode()
        return {
            "count": self.count,
            "fail_count": self.fail_count,
            "sum_us": self.sum_us,
            "min_us": self.min_us,
            "max_us": self.max_us,
            "sum_squares": self.sum_squares,
            "sketch": sketch,
            "sketch_format": SKETCH_FORMAT,
            **{f"{label}_us": value for label, value in lines.items()},
            "duration_counts": dict(sorted(self.duration_counts.items(), key=_numeric_key)),
            "success_message_id": self.success_message_id,
            "fail_message_id": self.fail_message_id,
            "longest_message_id": self.longest_message_id,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> TransactionStats:
        sketch = row.get("sketch")
        return cls(
            count=row["count"],
            fail_count=row.get("fail_count", 0),
            sum_us=row.get("sum_us", 0),
            min_us=row.get("min_us", 0),
            max_us=row.get("max_us", 0),
            sum_squares=row.get("sum_squares", 0.0),
            sketch=LatencySketch.from_bytes(sketch) if sketch else LatencySketch(),
            duration_counts=dict(row.get("duration_counts") or {}),
            success_message_id=row.get("success_message_id"),
            fail_message_id=row.get("fail_message_id"),
            longest_message_id=row.get("longest_message_id"),
        )


@dataclass
class EventStats:
    """Counts of one Event report row."""

    count: int = 0
    fail_count: int = 0
    success_message_id: str | None = None
    fail_message_id: str | None = None

    def add(self, failed: bool, message_id: str) -> None:
        self.count += 1
        if failed:
            self.fail_count += 1
            self.fail_message_id = _first(self.fail_message_id, message_id)
        else:
            self.success_message_id = _first(self.success_message_id, message_id)

    def merge(self, other: EventStats) -> None:
        self.count += other.count
        self.fail_count += other.fail_count
        self.success_message_id = _first(self.success_message_id, other.success_message_id)
        self.fail_message_id = _first(self.fail_message_id, other.fail_message_id)

    def row_fields(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "fail_count": self.fail_count,
            "success_message_id": self.success_message_id,
            "fail_message_id": self.fail_message_id,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> EventStats:
        return cls(
            row["count"],
            row.get("fail_count", 0),
            row.get("success_message_id"),
            row.get("fail_message_id"),
        )


@dataclass
class ProblemStats:
    """Occurrences of one problem (type, status): counts per threshold bucket, the first sample
    ids, and the first sample ids of each bucket (so the slowest bucket has its own samples)."""

    count: int = 0
    duration_counts: dict[str, int] = field(default_factory=dict)
    sample_message_ids: list[str] = field(default_factory=list)
    bucket_samples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, bucket: str | None, message_id: str, max_samples: int) -> None:
        self.count += 1
        if bucket is not None:
            self.duration_counts[bucket] = self.duration_counts.get(bucket, 0) + 1
            samples = self.bucket_samples.setdefault(bucket, [])
            if len(samples) < max_samples:
                samples.append(message_id)
        if len(self.sample_message_ids) < max_samples:
            self.sample_message_ids.append(message_id)

    def merge(self, other: ProblemStats, max_samples: int) -> None:
        self.count += other.count
        for bucket, count in other.duration_counts.items():
            self.duration_counts[bucket] = self.duration_counts.get(bucket, 0) + count
        _extend_samples(self.sample_message_ids, other.sample_message_ids, max_samples)
        for bucket, ids in other.bucket_samples.items():
            _extend_samples(self.bucket_samples.setdefault(bucket, []), ids, max_samples)

    def row_fields(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "fail_count": self.count,
            "duration_counts": dict(sorted(self.duration_counts.items(), key=_numeric_key)),
            "sample_message_ids": list(self.sample_message_ids),
            "bucket_samples": {
                bucket: list(ids)
                for bucket, ids in sorted(self.bucket_samples.items(), key=_numeric_key)
            },
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ProblemStats:
        return cls(
            row["count"],
            dict(row.get("duration_counts") or {}),
            list(row.get("sample_message_ids") or []),
            {bucket: list(ids) for bucket, ids in (row.get("bucket_samples") or {}).items()},
        )


def _extend_samples(samples: list[str], more: Sequence[str], max_samples: int) -> None:
    room = max_samples - len(samples)
    if room > 0:
        samples.extend(more[:room])


def _numeric_key(item: tuple[str, Any]) -> tuple[int, str]:
    key = item[0]
    return (int(key), key) if key.isdigit() else (1 << 62, key)


# --- problems --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProblemThresholds:
    """Lower bounds (ms) of CAT's long-execution buckets; the first is the reporting threshold."""

    long_url: tuple[int, ...] = (1000, 2000, 3000, 5000)
    long_sql: tuple[int, ...] = (100, 500, 1000, 3000, 5000)
    long_service: tuple[int, ...] = (50, 100, 500, 1000, 3000, 5000)
    long_call: tuple[int, ...] = (100, 500, 1000, 3000, 5000)
    long_cache: tuple[int, ...] = (10, 50, 100, 500)

    def for_type(self, transaction_type: str) -> tuple[str, tuple[int, ...]] | None:
        """The long-execution problem a transaction type can raise, with its thresholds."""
        if transaction_type == "URL":
            return "long-url", self.long_url
        if transaction_type == "SQL":
            return "long-sql", self.long_sql
        if transaction_type in ("Call", "PigeonCall"):
            return "long-call", self.long_call
        if transaction_type in ("Service", "PigeonService"):
            return "long-service", self.long_service
        if transaction_type.startswith("Cache."):
            return "long-cache", self.long_cache
        return None


def threshold_bucket(duration_us: int, thresholds: tuple[int, ...]) -> str | None:
    """The highest threshold (ms) the duration reaches, or None when below the first."""
    milliseconds = duration_us / 1000
    reached = None
    for threshold in thresholds:
        if milliseconds >= threshold:
            reached = threshold
    return None if reached is None else str(reached)


# --- one minute of one domain ----------------------------------------------------------------

RowKey = tuple[str, str, str]  # host, type, name
ReportKey = tuple[str, str, str, str]  # report, host, type, name


@dataclass
class ReportOptions:
    """How reports are built: thresholds per domain and how many samples a problem keeps."""

    thresholds: ProblemThresholds = field(default_factory=ProblemThresholds)
    domain_thresholds: Mapping[str, ProblemThresholds] = field(default_factory=dict)
    max_problem_samples: int = 5

    def thresholds_for(self, domain: str) -> ProblemThresholds:
        return self.domain_thresholds.get(domain, self.thresholds)


@dataclass
class MinuteReport:
    """Everything one domain did in one minute, per host, type and name."""

    domain: str
    period_start_ms: int
    transactions: dict[RowKey, TransactionStats] = field(default_factory=dict)
    events: dict[RowKey, EventStats] = field(default_factory=dict)
    problems: dict[RowKey, ProblemStats] = field(default_factory=dict)
    first_offset: int | None = None
    last_offset: int = -1
    late_count: int = 0
    revision: int = -1
    emitted: EmittedMinute | None = None

    def add_tree(self, tree: Mapping[str, Any], options: ReportOptions) -> None:
        host = tree["ip"]
        message_id = tree["message_id"]
        thresholds = options.thresholds_for(self.domain)
        samples = options.max_problem_samples
        for message in iter_messages(tree["root"]):
            kind = message["kind"]
            failed = message.get("status", SUCCESS) != SUCCESS
            if kind == "TRANSACTION":
                key = (host, message["type"], message["name"])
                stats = self.transactions.get(key)
                if stats is None:
                    stats = self.transactions[key] = TransactionStats()
                duration = message["duration_us"]
                stats.add(duration, failed, message_id)
                if failed:
                    self._problem(host, message["type"], message["name"], None, message_id, samples)
                long = thresholds.for_type(message["type"])
                if long is not None:
                    bucket = threshold_bucket(duration, long[1])
                    if bucket is not None:
                        self._problem(host, long[0], message["name"], bucket, message_id, samples)
            elif kind == "EVENT":
                key = (host, message["type"], message["name"])
                event = self.events.get(key)
                if event is None:
                    event = self.events[key] = EventStats()
                event.add(failed, message_id)
                if failed and message["type"] in ERROR_EVENT_TYPES:
                    self._problem(host, "error", message["name"], None, message_id, samples)

    def _problem(
        self, host: str, kind: str, status: str, bucket: str | None, message_id: str, samples: int
    ) -> None:
        key = (host, kind, status)
        problem = self.problems.get(key)
        if problem is None:
            problem = self.problems[key] = ProblemStats()
        problem.add(bucket, message_id, samples)

    def row_stats(self, options: ReportOptions) -> dict[ReportKey, Any]:
        """The statistics of every row: per host, All hosts and per-type totals (name ''),
        in row order (report, then host, type, name)."""
        stats: dict[ReportKey, Any] = {}
        for report, table in (
            ("transaction", self.transactions),
            ("event", self.events),
            ("problem", self.problems),
        ):
            for (host, type_, name), row in sorted(_with_totals(table, options).items()):
                stats[(report, host, type_, name)] = row
        return stats

    def rows(self, closed_at_ms: int, options: ReportOptions) -> list[dict[str, Any]]:
        """ReportRow records: per host, the All-hosts rows, and per-type totals (name '').

        Remembers what they were made of (`emitted`), which the hour report merges."""
        stats = self.row_stats(options)
        self.emitted = EmittedMinute(stats, max(self.revision, 0), closed_at_ms, self.late_count)
        base = {
            "period": "minute",
            "period_start_ms": self.period_start_ms,
            "domain": self.domain,
            "late_count": self.late_count,
            "revision": max(self.revision, 0),
            "closed_at_ms": closed_at_ms,
        }
        return [
            {**ROW_DEFAULTS, **base, "report": report, "host": host, "type": type_, "name": name,
             **row.row_fields()}
            for (report, host, type_, name), row in stats.items()
        ]  # fmt: skip


@dataclass(frozen=True)
class EmittedMinute:
    """The statistics a minute's last emitted rows were made of, with their revision and close
    time: what its hour merges (the minute's own stats may have moved on since)."""

    stats: Mapping[ReportKey, Any]
    revision: int
    closed_at_ms: int
    late_count: int


def _with_totals(table: Mapping[RowKey, Any], options: ReportOptions) -> dict[RowKey, Any]:
    """The rows plus All-hosts rows and per-type totals (name ''), all by exact merges."""
    merged: dict[RowKey, Any] = {}
    for (host, type_, name), stats in sorted(table.items()):
        for key in ((host, type_, name), (ALL_HOSTS, type_, name), (host, type_, ""),
                    (ALL_HOSTS, type_, "")):  # fmt: skip
            target = merged.get(key)
            if target is None:
                target = merged[key] = type(stats)()
            _merge(target, stats, options.max_problem_samples)
    return merged


def _merge(target: Any, stats: Any, max_samples: int) -> None:
    if isinstance(target, ProblemStats):
        target.merge(stats, max_samples)
    else:
        target.merge(stats)


ROW_DEFAULTS: dict[str, Any] = {
    "fail_count": 0,
    "sum_us": 0,
    "min_us": 0,
    "max_us": 0,
    "sum_squares": 0.0,
    "sketch": None,
    "sketch_format": "",
    **dict.fromkeys(PERCENTILE_COLUMNS),
    "duration_counts": {},
    "success_message_id": None,
    "fail_message_id": None,
    "longest_message_id": None,
    "sample_message_ids": [],
    "bucket_samples": {},
    "late_count": 0,
    "revision": 0,
    "closed_at_ms": 0,
}


def iter_messages(root: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every message of a tree, depth first in time order."""
    stack = [root]
    while stack:
        message = stack.pop()
        yield message
        children = message.get("children")
        if children:
            stack.extend(reversed(children))


def tree_minute_ms(tree: Mapping[str, Any]) -> int:
    milliseconds = tree["root"]["timestamp_us"] // 1000
    return milliseconds - milliseconds % MINUTE_MS


# --- one source partition: watermark, open and closed minutes --------------------------------


class Outcome(Enum):
    APPLIED = "applied"
    LATE = "late"  # amended a closed minute kept in memory
    DUPLICATE = "duplicate"  # already in a closed minute's rows (replay after a crash)
    TOO_LATE = "too_late"  # its minute closed and is no longer in memory


@dataclass
class PartitionReports:
    """The report state of one source partition (all trees of a domain share a partition).
    Event time is kept per domain: a domain whose clocks run ahead closes only its own
    minutes, never another domain's sharing the partition."""

    grace_ms: int = 10_000
    keep_closed_ms: int = HOUR_MS
    options: ReportOptions = field(default_factory=ReportOptions)
    event_ms: dict[str, int] = field(default_factory=dict)
    max_event_ms: int | None = None
    # the processing wall clock, set by a live agent: bounds how far one domain pulls others
    wall_ms: int | None = None
    open: dict[tuple[str, int], MinuteReport] = field(default_factory=dict)
    closed: dict[tuple[str, int], MinuteReport] = field(default_factory=dict)
    amended: set[tuple[str, int]] = field(default_factory=set)
    last_offset: int = -1
    late_count: int = 0

    @property
    def watermark_ms(self) -> int | None:
        """The furthest domain's watermark (for status pages; closing is per domain)."""
        return max(self.event_ms.values()) - self.grace_ms if self.event_ms else None

    def domain_watermark_ms(self, domain: str) -> int | None:
        """The domain's event time minus the grace period, but no further behind the partition's
        newest root time than DOMAIN_LAG_MS, so a domain that went quiet still closes its
        minutes while the others go on (also while the agent catches up, when no domain is idle
        by the clock). The partition's newest root time counts only up to the wall clock
        (`wall_ms`, live): a host whose clock runs ahead cannot close other domains' minutes.
        An idle close moves only the idle domain (the wall clock is not a root time)."""
        event_ms = self.event_ms.get(domain)
        if event_ms is None or self.max_event_ms is None:
            return None
        newest = self.max_event_ms if self.wall_ms is None else min(self.max_event_ms, self.wall_ms)
        return max(event_ms, newest - DOMAIN_LAG_MS) - self.grace_ms

    def is_closed(self, domain: str, minute_ms: int) -> bool:
        watermark = self.domain_watermark_ms(domain)
        return watermark is not None and minute_ms + MINUTE_MS <= watermark

    def apply(self, tree: Mapping[str, Any], offset: int) -> Outcome:
        """Count one validated tree read at `offset` of this partition."""
        self.last_offset = max(self.last_offset, offset)
        key = (tree["domain"], tree_minute_ms(tree))
        closed = self.closed.get(key)
        if closed is not None:
            if offset <= closed.last_offset:
                return Outcome.DUPLICATE
            closed.add_tree(tree, self.options)
            closed.last_offset = offset
            closed.late_count += 1
            self.late_count += 1
            self.amended.add(key)
            return Outcome.LATE
        if key not in self.open and self.is_closed(*key):
            return Outcome.TOO_LATE
        minute = self.open.get(key)
        if minute is None:
            minute = self.open[key] = MinuteReport(key[0], key[1], first_offset=offset)
        minute.add_tree(tree, self.options)
        minute.last_offset = offset
        event_ms = tree["root"]["timestamp_us"] // 1000
        if event_ms > self.event_ms.get(key[0], event_ms - 1):
            self.event_ms[key[0]] = event_ms
            if self.max_event_ms is None or event_ms > self.max_event_ms:
                self.max_event_ms = event_ms
        return Outcome.APPLIED

    def advance_idle(self, now_ms: int, domains: Iterable[str] | None = None) -> None:
        """Take the event time of `domains` (default: all) to be the wall clock `now_ms` (called
        when they have sent nothing for a while): a domain that went quiet still closes its last
        minutes, at their end plus the grace period as if it had gone on, whatever the other
        domains of its partition do. Trees arriving later for them are late."""
        for domain in list(self.event_ms) if domains is None else domains:
            if now_ms > self.event_ms.get(domain, now_ms):
                self.event_ms[domain] = now_ms

    def restore_closed(self, minute: MinuteReport) -> None:
        """Take back a closed minute read from the store, so late trees amend it and replays
        of trees it already counts (offset <= its last_offset) are recognised."""
        self.closed[(minute.domain, minute.period_start_ms)] = minute

    def close_due(self) -> list[dict[str, Any]]:
        """Rows of minutes their domain's watermark has passed (revision 0) and of amended
        closed minutes."""
        rows: list[dict[str, Any]] = []
        for key in sorted(self.open):
            if self.is_closed(*key):
                minute = self.open.pop(key)
                minute.revision = 0
                # The watermark that makes it due, not the one seen: replay gives the same rows.
                rows.extend(minute.rows(key[1] + MINUTE_MS, self.options))
                self.closed[key] = minute
        for key in sorted(self.amended):
            minute = self.closed[key]
            minute.revision += 1
            rows.extend(minute.rows(self.domain_watermark_ms(key[0]) or 0, self.options))
        self.amended.clear()
        emitted = {(row["domain"], row["period_start_ms"]) for row in rows}
        # Minutes closed just now stay until the next call, whatever the horizon: their rows'
        # writer reads them (a watermark can leap past the horizon, e.g. after an idle close).
        horizons = self._horizons()
        for key in [
            k
            for k in self.closed
            if k not in emitted and k[1] + MINUTE_MS < horizons.get(k[0], -(1 << 62))
        ]:
            del self.closed[key]
        return rows

    def _horizon(self, domain: str) -> int | None:
        """The time before which the domain's closed periods leave memory."""
        watermark = self.domain_watermark_ms(domain)
        return None if watermark is None else watermark - self.keep_closed_ms

    def _horizons(self) -> dict[str, int]:
        horizons = {domain: self._horizon(domain) for domain in self.event_ms}
        return {domain: horizon for domain, horizon in horizons.items() if horizon is not None}

    def hour_forgettable(self, domain: str, hour_ms: int) -> bool:
        """Whether every minute of the hour has left memory (a tree for it is restored)."""
        horizon = self._horizon(domain)
        return horizon is not None and hour_ms + HOUR_MS < horizon

    def flush_all(self) -> list[dict[str, Any]]:
        """Close every open minute now (end of input, e.g. a bounded replay or a benchmark)."""
        for domain, event_ms in self.event_ms.items():
            latest = max([event_ms, *(k[1] for k in self.open if k[0] == domain)])
            self.event_ms[domain] = latest + MINUTE_MS + self.grace_ms
        if self.event_ms:
            self.max_event_ms = max(self.event_ms.values())
        return self.close_due()

    def safe_commit_offset(self) -> int:
        """The offset to commit: the first record of the oldest open minute, or past the last."""
        firsts = [m.first_offset for m in self.open.values() if m.first_offset is not None]
        return min(firsts) if firsts else self.last_offset + 1


# --- hours and days: merges of minute rows ---------------------------------------------------


def merge_rows(
    rows: Iterable[Mapping[str, Any]], period: str, max_samples: int = 5
) -> list[dict[str, Any]]:
    """Merge report rows into `period` rows (hour or day), keyed as the inputs are."""
    if period not in PERIOD_MS:
        raise ValueError(f"period must be one of {', '.join(PERIOD_MS)}, not {period!r}")
    size = PERIOD_MS[period]
    groups: dict[tuple[str, int, str, str, str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        start = row["period_start_ms"] - row["period_start_ms"] % size
        key = (row["report"], start, row["domain"], row["host"], row["type"], row["name"])
        groups.setdefault(key, []).append(row)
    merged_rows = []
    for (report, start, domain, host, type_, name), members in sorted(groups.items()):
        members.sort(key=lambda r: r["period_start_ms"])
        stats = _stats_from_row(members[0])
        for row in members[1:]:
            _merge(stats, _stats_from_row(row), max_samples)
        merged_rows.append(
            {
                **ROW_DEFAULTS,
                "report": report,
                "period": period,
                "period_start_ms": start,
                "domain": domain,
                "host": host,
                "type": type_,
                "name": name,
                "late_count": sum(r.get("late_count", 0) for r in members),
                "revision": max(r.get("revision", 0) for r in members),
                "closed_at_ms": max(r.get("closed_at_ms", 0) for r in members),
                **stats.row_fields(),
            }
        )
    return merged_rows


@dataclass
class HourReport:
    """One domain's hour rows as exact merges of its closed minutes' rows, kept in memory so a
    closing minute is merged in alone instead of re-reading and re-merging the whole hour.

    Minutes must be merged in time order (first-seen sample ids depend on it), which is the
    order minutes close in; anything else (an amended minute) calls for a rebuild. The rows are
    those `merge_rows` gives for the same minute rows."""

    domain: str
    hour_ms: int
    max_samples: int = 5
    stats: dict[ReportKey, Any] = field(default_factory=dict)
    # per row: late counts summed over its minutes, highest revision, latest close
    meta: dict[ReportKey, tuple[int, int, int]] = field(default_factory=dict)
    minutes: set[int] = field(default_factory=set)

    def takes_next(self, minute_ms: int) -> bool:
        """Whether the minute can be merged in as is: later than every merged minute."""
        return not self.minutes or minute_ms > max(self.minutes)

    def add_minute(self, minute_ms: int, emitted: EmittedMinute) -> set[ReportKey]:
        """Merge in a newly closed minute's rows; the keys of the hour rows that changed."""
        if not self.takes_next(minute_ms):
            raise ValueError(
                f"minute {minute_ms} is not after the hour's merged minutes; rebuild the hour"
            )
        self.minutes.add(minute_ms)
        for key, stats in emitted.stats.items():
            target = self.stats.get(key)
            if target is None:
                target = self.stats[key] = type(stats)()
            _merge(target, stats, self.max_samples)
            late, revision, closed = self.meta.get(key, (0, 0, 0))
            self.meta[key] = (
                late + emitted.late_count,
                max(revision, emitted.revision),
                max(closed, emitted.closed_at_ms),
            )
        return set(emitted.stats)

    @classmethod
    def from_rows(
        cls, domain: str, hour_ms: int, minute_rows: list[Mapping[str, Any]], max_samples: int
    ) -> HourReport:
        """The hour rebuilt from its stored minute rows (after a restart)."""
        hour = cls(domain, hour_ms, max_samples)
        for row in merge_rows(minute_rows, "hour", max_samples):
            key = report_key(row)
            hour.stats[key] = _stats_from_row(row)
            hour.meta[key] = (row["late_count"], row["revision"], row["closed_at_ms"])
        hour.minutes = {row["period_start_ms"] for row in minute_rows}
        return hour

    def rows(self, keys: Iterable[ReportKey] | None = None) -> list[dict[str, Any]]:
        """Hour ReportRow records, all or those of `keys`, in row order."""
        chosen = sorted(self.stats if keys is None else keys)
        rows = []
        for key in chosen:
            report, host, type_, name = key
            late, revision, closed = self.meta[key]
            rows.append(
                {**ROW_DEFAULTS, "report": report, "period": "hour",
                 "period_start_ms": self.hour_ms, "domain": self.domain, "host": host,
                 "type": type_, "name": name, "late_count": late, "revision": revision,
                 "closed_at_ms": closed, **self.stats[key].row_fields()}
            )  # fmt: skip
        return rows


def report_key(row: Mapping[str, Any]) -> ReportKey:
    """A report row's identity within its domain and period."""
    return (row["report"], row["host"], row["type"], row["name"])


def _stats_from_row(row: Mapping[str, Any]) -> Any:
    report = row["report"]
    if report == "transaction":
        return TransactionStats.from_row(row)
    if report == "event":
        return EventStats.from_row(row)
    if report == "problem":
        return ProblemStats.from_row(row)
    raise ValueError(f"unknown report {report!r}")


# --- what readers see -------------------------------------------------------------------------


def describe_row(row: Mapping[str, Any], elapsed_seconds: float | None = None) -> dict[str, Any]:
    """A row as CAT shows it: times in ms, fail %, avg, std, TPS and percentile lines."""
    columns = as_columns([row])
    if row["report"] == "transaction":
        for label, value in row_percentiles(row).items():
            columns[f"{label}_us"] = [value]
    return describe_columns(row["report"], row["period"], columns, elapsed_seconds)[0]


def as_columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Rows with the same keys (the first row's) as columns, what describe_columns takes."""
    return {key: [row.get(key) for row in rows] for key in rows[0]} if rows else {}


def describe_columns(
    report: str,
    period: str,
    columns: Mapping[str, Sequence[Any]],
    elapsed_seconds: float | None = None,
) -> list[dict[str, Any]]:
    """Rows of one report given as columns (equal-length sequences by column name, as a packed
    report part holds them), described as CAT shows them: times in ms, fail %, avg, std, TPS and
    percentile lines, rounded to 4 decimals. Numbers are computed a column at a time with numpy:
    a 1,000-row page is described in a few ms (Python's `round` alone took 9 ms of it). Maps and
    lists are shared with the columns, not copied."""
    if not columns.get("count"):
        return []
    count = columns["count"]
    size = len(count)
    seconds = elapsed_seconds or PERIOD_MS[period] / 1000

    def column(name: str, default: Any) -> Sequence[Any]:
        found = columns.get(name)
        return found if found is not None else [default] * size

    def numbers(name: str, dtype: type) -> np.ndarray:
        return np.array(column(name, 0), dtype=dtype)

    counts = np.array(count, dtype=np.float64)
    fail_count = column("fail_count", 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        fail_percent = np.where(counts > 0, np.round(100.0 * numbers("fail_count", np.float64)
                                                     / counts, 4), 0.0)  # fmt: skip
        described: dict[str, Sequence[Any]] = {
            "report": [report] * size,
            "period": [period] * size,
            "period_start_ms": columns["period_start_ms"],
            "domain": columns["domain"],
            "host": columns["host"],
            "type": columns["type"],
            "name": columns["name"],
            "count": count,
            "fail_count": fail_count,
            "fail_percent": fail_percent.tolist(),
            "tps": np.round(counts / seconds, 4).tolist(),
            "late_count": column("late_count", 0),
            "revision": column("revision", 0),
        }
        if report == "transaction":
            total = numbers("sum_us", np.float64)
            mean = total / counts
            variance = numbers("sum_squares", np.float64) / counts - mean * mean
            spread = np.where((counts > 1) & (variance > 0), np.sqrt(variance), 0.0)
            described.update(
                min_ms=(numbers("min_us", np.float64) / 1000).tolist(),
                max_ms=(numbers("max_us", np.float64) / 1000).tolist(),
                sum_ms=(total / 1000).tolist(),
                avg_ms=np.where(counts > 0, np.round(mean / 1000, 4), 0.0).tolist(),
                std_ms=np.round(spread / 1000, 4).tolist(),
                duration_counts=[counts or {} for counts in column("duration_counts", None)],
                success_message_id=column("success_message_id", None),
                fail_message_id=column("fail_message_id", None),
                longest_message_id=column("longest_message_id", None),
            )
            for label, _ in REPORT_QUANTILES:
                values = column(f"{label}_us", None)
                lines = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
                rounded = np.round(lines / 1000, 4).tolist()
                described[f"{label}_ms"] = [
                    None if value is None else line
                    for value, line in zip(values, rounded, strict=True)
                ]
        elif report == "event":
            described.update(
                success_message_id=column("success_message_id", None),
                fail_message_id=column("fail_message_id", None),
            )
        else:
            described.update(
                duration_counts=[counts or {} for counts in column("duration_counts", None)],
                sample_message_ids=[ids or [] for ids in column("sample_message_ids", None)],
                bucket_samples=[ids or {} for ids in column("bucket_samples", None)],
            )
    keys = tuple(described)
    # Every column has `size` values by construction; strict zips cost a fifth of this step.
    rows = zip(*described.values(), strict=False)
    return [dict(zip(keys, values, strict=False)) for values in rows]


def row_percentiles(row: Mapping[str, Any]) -> dict[str, float | None]:
    """A transaction row's percentile lines in µs: the stored columns, or from its sketch for
    rows written before those columns existed."""
    stored = {label: row.get(f"{label}_us") for label, _ in REPORT_QUANTILES}
    if not row["count"] or all(value is not None for value in stored.values()):
        return stored
    sketch = row.get("sketch")
    if not sketch:
        return stored
    return LatencySketch.from_bytes(sketch).quantiles()


def elapsed_seconds(period: str, start_ms: int, now_ms: int, grace_ms: int) -> float:
    """What a period's counts are divided by for TPS: the whole period once it is over; while
    it is in progress, only its minutes that have ended and passed the grace period (the ones a
    report can hold), at least one. CAT likewise divides the current hour by the time elapsed."""
    length = PERIOD_MS[period]
    closed_until = now_ms - grace_ms
    closed_until -= closed_until % MINUTE_MS
    return min(length, max(MINUTE_MS, closed_until - start_ms)) / 1000


def standard_deviation(count: int, total: float, sum_squares: float) -> float:
    """Population standard deviation from count, sum and sum of squares; 0 when undefined."""
    if count <= 1:
        return 0.0
    mean = total / count
    variance = sum_squares / count - mean * mean
    return math.sqrt(variance) if variance > 0 else 0.0


# --- configuration, restore, logview ----------------------------------------------------------

THRESHOLD_FIELDS = ("long_url", "long_sql", "long_service", "long_call", "long_cache")


class ThresholdsError(ValueError):
    """The per-domain problem thresholds setting cannot be used; the message names the part."""


def parse_domain_thresholds(text: str) -> dict[str, ProblemThresholds]:
    """`tracing_problem_thresholds` (JSON, per domain, ms lists) as ProblemThresholds."""
    if not text.strip():
        return {}
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ThresholdsError(f"tracing_problem_thresholds is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise ThresholdsError("tracing_problem_thresholds must be an object keyed by domain")
    parsed: dict[str, ProblemThresholds] = {}
    for domain, overrides in document.items():
        if not isinstance(overrides, dict):
            raise ThresholdsError(f"tracing_problem_thresholds.{domain} must be an object")
        values: dict[str, tuple[int, ...]] = {}
        for name, bounds in overrides.items():
            if name not in THRESHOLD_FIELDS:
                raise ThresholdsError(
                    f"tracing_problem_thresholds.{domain}.{name}: not one of "
                    f"{', '.join(THRESHOLD_FIELDS)}"
                )
            if (
                not isinstance(bounds, list)
                or not bounds
                or not all(isinstance(b, int) and b > 0 for b in bounds)
                or bounds != sorted(set(bounds))
            ):
                raise ThresholdsError(
                    f"tracing_problem_thresholds.{domain}.{name} must be increasing positive "
                    "milliseconds, e.g. [100, 500, 1000]"
                )
            values[name] = tuple(bounds)
        parsed[domain] = ProblemThresholds(**values)
    return parsed


def minute_from_rows(
    domain: str,
    minute_ms: int,
    rows: Iterable[Mapping[str, Any]],
    *,
    last_offset: int,
    revision: int,
    late_count: int,
) -> MinuteReport:
    """A closed minute rebuilt from its stored per-host rows (All and per-type totals are derived
    again when it is re-emitted), so late trees amend it and replayed ones are recognised."""
    minute = MinuteReport(domain, minute_ms, last_offset=last_offset, revision=revision)
    minute.late_count = late_count
    tables: dict[str, dict[RowKey, Any]] = {
        "transaction": minute.transactions,
        "event": minute.events,
        "problem": minute.problems,
    }
    for row in rows:
        if row["host"] == ALL_HOSTS or row["name"] == "":
            continue
        tables[row["report"]][(row["host"], row["type"], row["name"])] = _stats_from_row(row)
    return minute


def empty_closed_minute(domain: str, minute_ms: int) -> MinuteReport:
    """A closed minute nothing was stored for: a late tree amends it into revision 0."""
    return MinuteReport(domain, minute_ms, last_offset=-1, revision=-1)


def chain_root_id(tree: Mapping[str, Any]) -> str:
    """The first message id of the call chain this tree belongs to."""
    return tree.get("root_message_id") or tree["message_id"]


def tree_has_problem(tree: Mapping[str, Any], thresholds: ProblemThresholds) -> bool:
    """Whether any message of the tree failed or reached a long-execution threshold."""
    for message in iter_messages(tree["root"]):
        if message.get("status", SUCCESS) != SUCCESS and message["kind"] in (
            "TRANSACTION",
            "EVENT",
        ):
            return True
        if message["kind"] == "TRANSACTION":
            long = thresholds.for_type(message["type"])
            if long is not None and threshold_bucket(message["duration_us"], long[1]):
                return True
    return False


def chain_sampled(root_id: str, rate: float) -> bool:
    """A deterministic coin per call chain: every tree of a chain (and every replay) agrees."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    digest = hashlib.blake2b(root_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < rate * 2**64


def logview_keeps(tree: Mapping[str, Any], thresholds: ProblemThresholds, rate: float) -> bool:
    """Logview keeps every failed or problem tree, and whole sampled chains of the rest."""
    return tree_has_problem(tree, thresholds) or chain_sampled(chain_root_id(tree), rate)


def logview_document(tree: Mapping[str, Any]) -> dict[str, Any]:
    """The Elasticsearch document of a kept tree: searchable header fields plus the tree."""
    root = tree["root"]
    return {
        "message_id": tree["message_id"],
        "root_message_id": chain_root_id(tree),
        "parent_message_id": tree.get("parent_message_id"),
        "domain": tree["domain"],
        "ip": tree["ip"],
        "hostname": tree.get("hostname", ""),
        "@timestamp": root["timestamp_us"] // 1000,
        "timestamp_us": root["timestamp_us"],
        "type": root.get("type", ""),
        "name": root.get("name", ""),
        "status": root.get("status", SUCCESS),
        "tree": dict(tree),
    }


def remote_call_children(message: Mapping[str, Any]) -> Iterator[tuple[Mapping[str, Any], str]]:
    """(RemoteCall event, callee message id) pairs of a tree: where the chain continues."""
    for child in iter_messages(message):
        if child["kind"] == "EVENT" and child.get("type") == "RemoteCall" and child.get("data"):
            yield child, str(child["data"])


def assemble_chain(trees: Iterable[Mapping[str, Any]], message_id: str) -> dict[str, Any] | None:
    """The whole call chain of `message_id` as a tree: each tree's `callees` are the trees whose
    parent it is, ordered by start time; None when the chain's root tree is not among them."""
    by_id = {tree["message_id"]: tree for tree in trees}
    if message_id not in by_id:
        return None
    root_id = chain_root_id(by_id[message_id])
    children: dict[str, list[Mapping[str, Any]]] = {}
    for tree in by_id.values():
        parent = tree.get("parent_message_id")
        if parent and parent in by_id and parent != tree["message_id"]:
            children.setdefault(parent, []).append(tree)
    top = by_id.get(root_id) or by_id[message_id]
    while top.get("parent_message_id") in by_id and top["message_id"] != root_id:
        top = by_id[top["parent_message_id"]]

    def build(tree: Mapping[str, Any], seen: frozenset[str]) -> dict[str, Any]:
        callees = sorted(
            children.get(tree["message_id"], []), key=lambda t: t["root"]["timestamp_us"]
        )
        return {
            **tree,
            "callees": [build(c, seen | {c["message_id"]}) for c in callees
                        if c["message_id"] not in seen],
        }  # fmt: skip

    chain = build(top, frozenset({top["message_id"]}))
    return {"root_message_id": root_id, "requested": message_id, "chain": chain,
            "trees": len(by_id)}  # fmt: skip


# --- reading reports --------------------------------------------------------------------------

SORT_KEYS = ("name", "count", "fail_count", "fail_percent", "min_ms", "max_ms", "avg_ms",
             "std_ms", "tps", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "p999_ms")  # fmt: skip
# What each report's rows can be sorted by: events and problems have no durations.
REPORT_SORT_KEYS = {
    "transaction": SORT_KEYS,
    "event": ("name", "count", "fail_count", "fail_percent", "tps"),
    "problem": ("name", "count", "fail_count", "fail_percent", "tps"),
}


class ReportQueryError(ValueError):
    """A report query parameter is unusable; `parameter` names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


def parse_report_time(text: str) -> tuple[str, int]:
    """CAT's `date` parameter in UTC: YYYYMMDD (day), YYYYMMDDHH (hour, CAT's own form) or
    YYYYMMDDHHmm (minute), as (period, start in ms)."""
    formats = {8: ("day", "%Y%m%d"), 10: ("hour", "%Y%m%d%H"), 12: ("minute", "%Y%m%d%H%M")}
    if not text.isdigit() or len(text) not in formats:
        raise ReportQueryError(
            "date", "expected YYYYMMDD (day), YYYYMMDDHH (hour) or YYYYMMDDHHmm (minute), UTC"
        )
    period, pattern = formats[len(text)]
    try:
        moment = dt.datetime.strptime(text, pattern).replace(tzinfo=dt.UTC)
    except ValueError as error:
        raise ReportQueryError("date", f"{text!r} is not a date: {error}") from None
    return period, int(moment.timestamp() * 1000)


def sort_described(rows: list[dict[str, Any]], key: str, descending: bool) -> list[dict[str, Any]]:
    """Rows sorted by a column CAT's report can sort by; missing values sort last."""
    if key not in SORT_KEYS:
        raise ReportQueryError("sort", f"must be one of {', '.join(SORT_KEYS)}")
    present = [r for r in rows if r.get(key) is not None]
    missing = [r for r in rows if r.get(key) is None]
    present.sort(key=lambda r: (r[key], r["name"]), reverse=descending)
    return present + missing


def transaction_report_xml(
    domain: str, period: str, start_ms: int, host: str, rows: list[dict[str, Any]]
) -> str:
    """CAT's transaction report XML shape: machine > type > name, with CAT's attribute names."""
    end_ms = start_ms + PERIOD_MS[period] - 1

    def attributes(row: Mapping[str, Any], key: str) -> str:
        values = {
            "id": key,
            "totalCount": row["count"],
            "failCount": row["fail_count"],
            "failPercent": f"{row['fail_percent']:.2f}",
            "min": f"{row['min_ms']:.2f}",
            "max": f"{row['max_ms']:.2f}",
            "avg": f"{row['avg_ms']:.2f}",
            "sum": f"{row['sum_ms']:.1f}",
            "std": f"{row['std_ms']:.2f}",
            "tps": f"{row['tps']:.2f}",
            "line50Value": _xml_number(row.get("p50_ms")),
            "line90Value": _xml_number(row.get("p90_ms")),
            "line95Value": _xml_number(row.get("p95_ms")),
            "line99Value": _xml_number(row.get("p99_ms")),
            "line999Value": _xml_number(row.get("p999_ms")),
            "successMessageUrl": row.get("success_message_id") or "",
            "failMessageUrl": row.get("fail_message_id") or "",
            "longestMessageUrl": row.get("longest_message_id") or "",
        }
        return " ".join(f"{name}={_xml_attribute(value)}" for name, value in values.items())

    def stamp(ms: int) -> str:
        moment = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
        return moment.strftime("%Y-%m-%d %H:%M:%S")

    lines = [
        '<?xml version="1.0" encoding="utf-8"?>',
        f"<transaction-report domain={_xml_attribute(domain)} "
        f"startTime={quoteattr(stamp(start_ms))} endTime={quoteattr(stamp(end_ms))}>",
        f"   <machine ip={_xml_attribute(host)}>",
    ]
    types: dict[str, list[dict[str, Any]]] = {}
    totals: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["name"] == "":
            totals[row["type"]] = row
        else:
            types.setdefault(row["type"], []).append(row)
    for type_ in sorted(set(types) | set(totals)):
        total = totals.get(type_)
        head = attributes(total, type_) if total else f"id={_xml_attribute(type_)}"
        lines.append(f"      <type {head}>")
        for row in types.get(type_, []):
            durations = (row.get("duration_counts") or {}).items()
            if not durations:
                lines.append(f"         <name {attributes(row, row['name'])}/>")
                continue
            lines.append(f"         <name {attributes(row, row['name'])}>")
            lines += [
                f'            <duration value="{value}" count="{count}"/>'
                for value, count in sorted(durations, key=_numeric_key)
            ]
            lines.append("         </name>")
        lines.append("      </type>")
    lines += ["   </machine>", "</transaction-report>", ""]
    return "\n".join(lines)


_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_attribute(value: object) -> str:
    """A quoted XML attribute; characters XML 1.0 cannot carry (control characters a name may
    hold) become U+FFFD, so the document always parses."""
    return quoteattr(_NOT_XML.sub("\ufffd", str(value)))


def _xml_number(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"
