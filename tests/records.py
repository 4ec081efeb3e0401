"""Sample records shared by tests: one realistic record per schema, with overrides."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streams.bus.codec import AvroCodec

TREE_SCHEMA = "stackstream.tracing.MessageTree"
TREE_HEADER = {"domain": "d", "hostname": "h", "ip": "10.0.0.1", "message_id": "d-0a000001-1-1"}
# One level of a chain of transactions as Avro writes it: kind, type "", name "", status "0",
# timestamp 0, duration 0, data "" (then the children array).
_CHAIN_LEVEL = b"\x00\x00\x00\x020\x00\x00\x00"


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


def empty_transaction(children: list[Any]) -> dict[str, Any]:
    """The smallest valid-by-schema transaction (what `chain_tree_bytes` repeats)."""
    return {"kind": "TRANSACTION", "type": "", "name": "", "status": "0", "timestamp_us": 0,
            "duration_us": 0, "data": "", "children": children}  # fmt: skip


def chain_tree_bytes(codec: AvroCodec, depth: int) -> bytes:
    """A MessageTree whose root transaction nests `depth` levels, assembled byte by byte so no
    recursive encoder is needed (fastavro's own overflows the C stack at a few thousand)."""
    leaf = codec.encode(TREE_SCHEMA, {**TREE_HEADER, "root": empty_transaction([])}, check=False)
    prefix = leaf[: -len(_CHAIN_LEVEL) - 1]
    return prefix + (_CHAIN_LEVEL + b"\x02\x00") * (depth - 1) + _CHAIN_LEVEL + b"\x00" * depth
