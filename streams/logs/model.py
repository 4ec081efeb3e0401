"""Pure log logic: ECS documents, daily index names per service, stable document ids."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from streams.errors import RecordRejected

LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")
INDEX_UNSAFE = re.compile(r"[^a-z0-9_-]+")

ECS_MAPPINGS: dict[str, Any] = {
    "dynamic": "false",
    "properties": {
        "@timestamp": {"type": "date_nanos"},
        "message": {"type": "text"},
        "log": {"properties": {"level": {"type": "keyword"}, "logger": {"type": "keyword"}}},
        "service": {"properties": {"name": {"type": "keyword"}}},
        "host": {"properties": {"name": {"type": "keyword"}}},
        "trace": {"properties": {"id": {"type": "keyword"}}},
        "span": {"properties": {"id": {"type": "keyword"}}},
        "error": {
            "properties": {
                "type": {"type": "keyword"},
                "message": {"type": "text"},
                "stack_trace": {"type": "text", "index": False},
            }
        },
        "labels": {"type": "flattened"},
        "event": {"properties": {"sequence": {"type": "long"}}},
    },
}


def validate_record(record: Mapping[str, Any]) -> None:
    if record["level"] not in LEVELS:
        raise RecordRejected(
            "level", f"must be one of {', '.join(LEVELS)}, not {record['level']!r}"
        )
    if not record["service"]:
        raise RecordRejected("service", "must name the application")


def index_name(prefix: str, service: str, timestamp_us: int) -> str:
    """Daily index per service, e.g. `stackstream-logs-orders-2026.11.25`."""
    day = datetime.fromtimestamp(timestamp_us / 1_000_000, tz=UTC).strftime("%Y.%m.%d")
    safe_service = INDEX_UNSAFE.sub("_", service.lower()).strip("_") or "unknown"
    return f"{prefix}-logs-{safe_service}-{day}"


def document_id_parts(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """What identifies a log line: redelivery of the same line gives the same id."""
    return (
        record["service"],
        record["host"],
        record["timestamp_us"],
        record["sequence"],
        record["message"],
    )


def ecs_document(record: Mapping[str, Any]) -> dict[str, Any]:
    """The ECS-shaped document of one log record."""
    timestamp = datetime.fromtimestamp(record["timestamp_us"] / 1_000_000, tz=UTC)
    document: dict[str, Any] = {
        "@timestamp": timestamp.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z",
        "message": record["message"],
        "log": {"level": record["level"], "logger": record["logger"]},
        "service": {"name": record["service"]},
        "host": {"name": record["host"]},
        "event": {"sequence": record["sequence"]},
    }
    if record.get("trace_id"):
        document["trace"] = {"id": record["trace_id"]}
    if record.get("span_id"):
        document["span"] = {"id": record["span_id"]}
    error = {
        name: record[f"error_{name}"]
        for name in ("type", "message", "stack_trace")
        if record.get(f"error_{name}")
    }
    if error:
        document["error"] = error
    if record.get("labels"):
        document["labels"] = dict(record["labels"])
    return document
