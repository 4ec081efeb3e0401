"""Dead letters: what could not be decoded or validated goes to `bus.deadletters`, never lost."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

DEAD_LETTER_TOPIC = "bus.deadletters"
DEAD_LETTER_SCHEMA = "stackstream.bus.DeadLetter"
# A dead letter carries the raw record, so a record near the topic's size limit (1 MiB by
# default; the worker's producer allows 1,000,000 bytes) would make a dead letter too large to
# produce, and the agent would crash on it. Past this size only a prefix is kept; the header
# below gives the original size (the whole record stays at its source offset until retention).
MAX_DEAD_LETTER_VALUE_BYTES = 512 * 1024
TRUNCATED_PREFIX_BYTES = 64 * 1024
TRUNCATED_HEADER = "stackstream-truncated-from-bytes"


def dead_letter_record(
    *,
    reason: str,
    error_type: str,
    source_topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int,
    agent: str,
    key: bytes | None,
    value: bytes | None,
    headers: Mapping[str, bytes] | None = None,
) -> dict[str, Any]:
    """The DeadLetter record for one rejected source record (a huge value is cut, see above)."""
    kept_headers = dict(headers or {})
    if value is not None and len(value) > MAX_DEAD_LETTER_VALUE_BYTES:
        reason = (
            f"{reason} [value of {len(value)} bytes cut to its first {TRUNCATED_PREFIX_BYTES} "
            "in this dead letter; the whole record is at the source offset]"
        )
        kept_headers[TRUNCATED_HEADER] = str(len(value)).encode()
        value = value[:TRUNCATED_PREFIX_BYTES]
    return {
        "reason": reason,
        "error_type": error_type,
        "source_topic": source_topic,
        "partition": partition,
        "offset": offset,
        "timestamp_ms": timestamp_ms,
        "failed_at_ms": int(time.time() * 1000),
        "agent": agent,
        "key": None if key is None else bytes(key),
        "value": None if value is None else bytes(value),
        "headers": kept_headers,
    }


class DeadLetterCounter:
    """In-process counts of dead letters per source topic and reason, for the health view."""

    def __init__(self) -> None:
        self.by_source: Counter[str] = Counter()
        self.by_source_and_type: Counter[tuple[str, str]] = Counter()

    def add(self, source_topic: str, error_type: str) -> None:
        self.by_source[source_topic] += 1
        self.by_source_and_type[(source_topic, error_type)] += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "by_source_topic": dict(self.by_source),
            "by_source_topic_and_error_type": [
                {"source_topic": source, "error_type": kind, "count": count}
                for (source, kind), count in sorted(self.by_source_and_type.items())
            ],
        }


def dead_letter_count_key(record: Mapping[str, Any]) -> str:
    """Table key for `bus.deadletter_counts`: source topic and error type."""
    return f"{record['source_topic']}|{record['error_type']}"
