"""Pure logic of replays and dead-letter tooling: times, ranges, rate, checkpoints, loop guard.

No Kafka, Faust or HTTP here: `streams/bus/replay.py` and `streams/bus/dlq.py` do the I/O and
ask these functions what to read, how fast, and where to resume.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from streams.bus.deadletters import TRUNCATED_HEADER

RELATIVE_UNITS_MS = {
    "ms": 1,
    "s": 1_000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 604_800_000,
}
RELATIVE_TIME = re.compile(r"^\s*-\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
REPLAYS_HEADER = "stackstream-dlq-replays"
ORIGIN_HEADER = "stackstream-dlq-origin"
DEFAULT_REPLAY_LIMIT = 3


class ReplayInputError(ValueError):
    """An option of a replay or dead-letter command is malformed; the message says how to fix it."""


# --- times and offsets --------------------------------------------------------------------------


def parse_time_ms(text: str, now_ms: int) -> int:
    """ISO-8601 (naive means UTC), `now`, an epoch in milliseconds, or relative like `-2h`."""
    value = text.strip()
    if value.lower() == "now":
        return now_ms
    relative = RELATIVE_TIME.match(value)
    if relative:
        amount, unit = relative.groups()
        return now_ms - int(float(amount) * RELATIVE_UNITS_MS[unit])
    if value.isdigit():
        return int(value)
    try:
        moment = datetime.fromisoformat(
            value.replace("Z", "+00:00") if value.endswith("Z") else value
        )
    except ValueError:
        raise ReplayInputError(
            f"{text!r} is not a time: use ISO-8601 (2024-05-01T12:00:00Z), 'now', epoch "
            "milliseconds, or a relative time like -30m, -2h, -7d"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def parse_partition_offsets(text: str) -> dict[int | None, int]:
    """`1200` (every partition) or `0:1200,3:50` (per partition); None keys every partition."""
    offsets: dict[int | None, int] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        partition_text, colon, offset_text = part.rpartition(":")
        try:
            offset = int(offset_text)
            partition = int(partition_text) if colon else None
        except ValueError:
            raise ReplayInputError(
                f"{part!r} is not an offset: use N for every partition or P:N,P:N per partition"
            ) from None
        if offset < 0 or (partition is not None and partition < 0):
            raise ReplayInputError(f"{part!r}: offsets and partitions are never negative")
        offsets[partition] = offset
    if not offsets:
        raise ReplayInputError("no offsets given: use N or P:N,P:N")
    return offsets


def offset_for(offsets: Mapping[int | None, int], partition: int) -> int | None:
    """The offset given for a partition, else the one given for every partition, else None."""
    return offsets.get(partition, offsets.get(None))


# --- range planning -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionRange:
    """Offsets [start, end) of one partition to replay."""

    partition: int
    start: int
    end: int

    @property
    def count(self) -> int:
        """Records in the range (an upper bound: compaction and transaction markers leave gaps)."""
        return max(0, self.end - self.start)


def bounded_range(
    partition: int, low: int, high: int, start: int | None, end: int | None
) -> PartitionRange:
    """Clamp a wanted [start, end) into the partition's watermarks [low, high).

    `start`/`end` are what the broker's time index answered (negative: no record at or after
    that time, i.e. the end of the log) or what the user gave as offsets; None: not bounded.
    """
    if start is None:
        first = low
    elif start < 0:
        first = high
    else:
        first = min(max(start, low), high)
    last = high if end is None or end < 0 else min(max(end, low), high)
    return PartitionRange(partition, first, max(first, last))


@dataclass(frozen=True)
class ReplayPlan:
    """What a replay reads: one Kafka topic, a range per partition, and how it was asked for."""

    topic: str
    ranges: tuple[PartitionRange, ...]
    spec: str = ""

    @property
    def total(self) -> int:
        return sum(r.count for r in self.ranges)

    def range_of(self, partition: int) -> PartitionRange:
        for partition_range in self.ranges:
            if partition_range.partition == partition:
                return partition_range
        raise KeyError(partition)


# --- rate limiting ------------------------------------------------------------------------------


class RateLimiter:
    """A token bucket: `delay(n, now)` says how long to wait before taking n more records.

    Capacity is one second's worth, so short bursts are allowed and the long-run rate holds.
    A rate of None or 0 means no limit.
    """

    def __init__(self, per_second: float | None, now: float) -> None:
        if per_second is not None and per_second < 0:
            raise ReplayInputError("--rate must be positive (records per second)")
        self.per_second = per_second or None
        self.tokens = float(per_second or 0)
        self.updated = now

    def delay(self, records: int, now: float) -> float:
        if self.per_second is None:
            return 0.0
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.per_second, self.tokens + elapsed * self.per_second)
        self.updated = now
        self.tokens -= records
        if self.tokens >= 0:
            return 0.0
        return -self.tokens / self.per_second


# --- checkpoints --------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """Where a replay into a topic stands: per partition, the next source offset to copy.

    Written after the producer has flushed, so every offset below `next` is in the target.
    """

    job: str
    source: str
    target: str
    ranges: dict[int, tuple[int, int]]
    next: dict[int, int] = field(default_factory=dict)
    spec: str = ""

    @classmethod
    def start(cls, plan: ReplayPlan, target: str) -> Checkpoint:
        ranges = {r.partition: (r.start, r.end) for r in plan.ranges}
        return cls(
            job=job_id(plan.topic, target, plan.spec),
            source=plan.topic,
            target=target,
            ranges=ranges,
            next={p: start for p, (start, _) in ranges.items()},
            spec=plan.spec,
        )

    def advance(self, partition: int, next_offset: int) -> None:
        self.next[partition] = max(self.next.get(partition, 0), next_offset)

    def remaining(self) -> ReplayPlan:
        """The part of the plan not yet copied."""
        return ReplayPlan(
            self.source,
            tuple(
                PartitionRange(p, min(max(self.next.get(p, start), start), end), end)
                for p, (start, end) in sorted(self.ranges.items())
            ),
            self.spec,
        )

    @property
    def done(self) -> int:
        return sum(
            min(max(self.next.get(p, start), start), end) - start
            for p, (start, end) in self.ranges.items()
        )

    @property
    def finished(self) -> bool:
        return self.remaining().total == 0

    def to_json(self) -> str:
        return json.dumps(
            {
                "job": self.job,
                "source": self.source,
                "target": self.target,
                "spec": self.spec,
                "ranges": {str(p): list(r) for p, r in sorted(self.ranges.items())},
                "next": {str(p): o for p, o in sorted(self.next.items())},
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> Checkpoint:
        try:
            data = json.loads(text)
            return cls(
                job=data["job"],
                source=data["source"],
                target=data["target"],
                spec=data.get("spec", ""),
                ranges={int(p): (int(r[0]), int(r[1])) for p, r in data["ranges"].items()},
                next={int(p): int(o) for p, o in data["next"].items()},
            )
        except (ValueError, KeyError, TypeError, IndexError) as error:
            raise ReplayInputError(
                f"the checkpoint is unreadable ({error}); remove it or pass --restart"
            ) from None


def job_id(source: str, target: str, spec: str) -> str:
    """A stable name for one replay request, so a re-run of the same command resumes it."""
    digest = hashlib.sha256(f"{source}\0{target}\0{spec}".encode()).hexdigest()[:12]
    return f"{_file_safe(source)}--{_file_safe(target)}--{digest}"


def _file_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80]


def replay_spec(**options: Any) -> str:
    """The options that define a replay, as given (relative times unresolved), canonically."""
    return json.dumps({k: v for k, v in sorted(options.items()) if v not in (None, "")})


# --- dead letters -------------------------------------------------------------------------------


def header_map(headers: Iterable[tuple[str, bytes | None]] | Mapping[str, bytes] | None) -> dict:
    if headers is None:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {key: value for key, value in items}


def replays_so_far(headers: Mapping[str, bytes | None]) -> int:
    """How often a record has already been pushed back from the dead letters."""
    raw = headers.get(REPLAYS_HEADER)
    if raw is None:
        return 0
    try:
        return max(0, int(bytes(raw).decode("ascii")))
    except (ValueError, UnicodeDecodeError):
        return 0


def replay_headers(
    headers: Mapping[str, bytes | None], dead_letter_partition: int, dead_letter_offset: int
) -> list[tuple[str, bytes]]:
    """The headers a record is pushed back with: its own, the replay count up by one, and where
    in the dead letters it came from."""
    kept = [
        (key, value if value is not None else b"")
        for key, value in headers.items()
        if key not in (REPLAYS_HEADER, ORIGIN_HEADER)
    ]
    return [
        *kept,
        (REPLAYS_HEADER, str(replays_so_far(headers) + 1).encode()),
        (ORIGIN_HEADER, f"{dead_letter_partition}:{dead_letter_offset}".encode()),
    ]


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters a command acts on. `reason` matches the error type exactly or any part
    of the reason text (case-insensitive)."""

    reason: str | None = None
    source_topic: str | None = None
    agent: str | None = None

    def matches(self, record: Mapping[str, Any]) -> bool:
        if self.source_topic is not None and record.get("source_topic") != self.source_topic:
            return False
        if self.agent is not None and record.get("agent") != self.agent:
            return False
        if self.reason is not None:
            wanted = self.reason.lower()
            error_type = str(record.get("error_type", "")).lower()
            if wanted != error_type and wanted not in str(record.get("reason", "")).lower():
                return False
        return True


@dataclass
class DeadLetterGroup:
    """Dead letters of one source topic and error type, for `dlq list`."""

    source_topic: str
    error_type: str
    count: int = 0
    first_failed_ms: int | None = None
    last_failed_ms: int | None = None
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def common_reason(self) -> str:
        return self.reasons.most_common(1)[0][0] if self.reasons else ""


def summarise(records: Iterable[Mapping[str, Any]]) -> list[DeadLetterGroup]:
    """Counts by source topic and error type, largest first, with the most common reason."""
    groups: dict[tuple[str, str], DeadLetterGroup] = {}
    for record in records:
        key = (record["source_topic"], record["error_type"])
        group = groups.setdefault(key, DeadLetterGroup(*key))
        group.count += 1
        failed = record.get("failed_at_ms")
        if failed is not None:
            group.first_failed_ms = min(failed, group.first_failed_ms or failed)
            group.last_failed_ms = max(failed, group.last_failed_ms or failed)
        group.reasons[record.get("reason", "")] += 1
    return sorted(groups.values(), key=lambda g: (-g.count, g.source_topic, g.error_type))


@dataclass(frozen=True)
class ReplayDecision:
    """What `dlq replay` does with one dead letter, and why."""

    action: str  # send, exhausted, duplicate, done, no_value, truncated
    detail: str = ""


def decide_dead_letter_replay(
    record: Mapping[str, Any],
    dead_letter_offset: int,
    *,
    limit: int,
    replayed_offsets: OffsetSet,
    sent_origins: set[tuple[str, int, int]],
) -> ReplayDecision:
    """Whether to push one dead letter back to its source topic.

    Refused past `limit` replays (the loop guard); skipped when an earlier run of the same
    replay sent it (the checkpoint); skipped when this run already sent the same source record
    (two agents of one topic reject the same record: it goes back once).
    """
    if dead_letter_offset in replayed_offsets:
        return ReplayDecision("done", "replayed by an earlier run of this command")
    if record.get("value") is None:
        return ReplayDecision("no_value", "the dead letter has no value to send")
    if TRUNCATED_HEADER in (record.get("headers") or {}):
        return ReplayDecision(
            "truncated",
            "the dead letter keeps only a prefix of a huge record; replay the source offset "
            "with `stackstream replay --from-offset`",
        )
    count = replays_so_far(header_map(record.get("headers")))
    if count >= limit:
        return ReplayDecision(
            "exhausted", f"already replayed {count} time(s); the limit is {limit}"
        )
    origin = (record["source_topic"], int(record["partition"]), int(record["offset"]))
    if origin in sent_origins:
        return ReplayDecision("duplicate", "the same source record was sent in this run")
    return ReplayDecision("send")


class OffsetSet:
    """A set of offsets kept as sorted, merged [start, end) intervals: small in a checkpoint."""

    def __init__(self, intervals: Iterable[Sequence[int]] = ()) -> None:
        self.intervals: list[list[int]] = []
        for start, end in sorted((int(s), int(e)) for s, e in intervals if int(e) > int(s)):
            if self.intervals and start <= self.intervals[-1][1]:
                self.intervals[-1][1] = max(self.intervals[-1][1], end)
            else:
                self.intervals.append([start, end])

    def __contains__(self, offset: object) -> bool:
        if not isinstance(offset, int):
            return False
        low, high = 0, len(self.intervals)
        while low < high:
            middle = (low + high) // 2
            start, end = self.intervals[middle]
            if offset < start:
                high = middle
            elif offset >= end:
                low = middle + 1
            else:
                return True
        return False

    def add(self, offset: int) -> None:
        if offset in self:
            return
        index = 0
        while index < len(self.intervals) and self.intervals[index][1] < offset:
            index += 1
        if index < len(self.intervals) and self.intervals[index][1] == offset:
            self.intervals[index][1] = offset + 1
            following = index + 1
            if following < len(self.intervals) and self.intervals[following][0] == offset + 1:
                self.intervals[index][1] = self.intervals[following][1]
                del self.intervals[following]
        elif index < len(self.intervals) and self.intervals[index][0] == offset + 1:
            self.intervals[index][0] = offset
        else:
            self.intervals.insert(index, [offset, offset + 1])

    def __len__(self) -> int:
        return sum(end - start for start, end in self.intervals)

    def as_list(self) -> list[list[int]]:
        return [list(interval) for interval in self.intervals]


# --- display ------------------------------------------------------------------------------------

PRINTABLE = set(string.ascii_letters + string.digits + string.punctuation + " ")


def hex_dump(data: bytes, width: int = 16, limit: int = 4096) -> str:
    """Offset, hex bytes and printable characters, like `xxd`, cut at `limit` bytes."""
    lines = []
    for start in range(0, min(len(data), limit), width):
        chunk = data[start : start + width]
        hex_part = " ".join(f"{byte:02x}" for byte in chunk).ljust(width * 3 - 1)
        text = "".join(chr(byte) if chr(byte) in PRINTABLE else "." for byte in chunk)
        lines.append(f"{start:08x}  {hex_part}  {text}")
    if len(data) > limit:
        lines.append(f"... {len(data) - limit} more bytes")
    return "\n".join(lines)
