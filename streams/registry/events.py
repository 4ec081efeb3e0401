"""Registry records on the bus: the topic and schema every registry change travels with."""

from __future__ import annotations

from typing import Any

EVENTS_TOPIC = "registry.events"
EVENT_SCHEMA = "stackstream.registry.RegistryEvent"


def registry_event(action: str, app: str = "", instance_id: str = "", **fields: Any) -> dict:
    """A RegistryEvent record with the schema's defaults filled in."""
    record: dict[str, Any] = {
        "action": action,
        "app": app.upper(),
        "instance_id": instance_id,
        "timestamp_ms": 0,
        "last_dirty_timestamp_ms": None,
        "status": None,
        "overridden_status": None,
        "metadata": {},
        "instance": None,
        "is_replication": False,
        "origin": None,
        "self_preservation": None,
    }
    unknown = set(fields) - set(record)
    if unknown:
        raise TypeError(f"RegistryEvent has no field(s) {sorted(unknown)}")
    record.update(fields)
    return record
