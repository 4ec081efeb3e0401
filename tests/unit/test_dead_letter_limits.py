"""Dead letters of huge records stay producible, and `dlq replay` refuses their cut values."""

from __future__ import annotations

from streams.bus.codec import AvroCodec, SchemaRegistry
from streams.bus.deadletters import (
    DEAD_LETTER_SCHEMA,
    MAX_DEAD_LETTER_VALUE_BYTES,
    TRUNCATED_HEADER,
    TRUNCATED_PREFIX_BYTES,
    dead_letter_record,
)
from streams.bus.replay_model import OffsetSet, decide_dead_letter_replay
from streams.settings import PROJECT_ROOT

WORKER_PRODUCER_LIMIT = 1_000_000  # Faust's default producer max_request_size


def _letter(value: bytes) -> dict:
    return dead_letter_record(
        reason="not Avro single-object encoded",
        error_type="decode",
        source_topic="metrics.points",
        partition=2,
        offset=41,
        timestamp_ms=1_700_000_000_000,
        agent="metrics.track_latest",
        key=b"cpu",
        value=value,
        headers={"trace": b"abc"},
    )


def test_a_record_near_the_topic_limit_makes_a_dead_letter_the_worker_can_produce() -> None:
    huge = bytes(range(256)) * 4090  # 1,047,040 bytes: just under the broker's 1 MiB
    letter = _letter(huge)
    codec = AvroCodec(SchemaRegistry.from_directory(PROJECT_ROOT / "schemas"))
    assert len(codec.encode(DEAD_LETTER_SCHEMA, letter)) < WORKER_PRODUCER_LIMIT // 10
    assert letter["value"] == huge[:TRUNCATED_PREFIX_BYTES]
    assert letter["headers"] == {"trace": b"abc", TRUNCATED_HEADER: b"1047040"}
    assert "1047040 bytes" in letter["reason"] and letter["reason"].startswith("not Avro")


def test_values_up_to_the_limit_are_kept_whole() -> None:
    value = b"x" * MAX_DEAD_LETTER_VALUE_BYTES
    letter = _letter(value)
    assert letter["value"] == value and TRUNCATED_HEADER not in letter["headers"]


def test_dlq_replay_refuses_a_cut_value_and_sends_a_whole_one() -> None:
    options = {"limit": 3, "replayed_offsets": OffsetSet(), "sent_origins": set()}
    cut = decide_dead_letter_replay(_letter(b"y" * (MAX_DEAD_LETTER_VALUE_BYTES + 1)), 7, **options)
    assert cut.action == "truncated" and "--from-offset" in cut.detail
    assert decide_dead_letter_replay(_letter(b"y" * 10), 8, **options).action == "send"
