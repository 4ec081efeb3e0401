"""Sample records shared by tests: one realistic record per schema, with overrides."""

from __future__ import annotations

from typing import Any


def metric_point(**overrides: Any) -> dict[str, Any]:
    """A valid MetricPoint; pass fields to change."""
    record: dict[str, Any] = {
        "name": "cpu",
        "timestamp_ms": 1_700_000_000_000,
        "value": 0.5,
        "tags": {"host": "a"},
        "ttl_seconds": 0,
    }
    record.update(overrides)
    return record
