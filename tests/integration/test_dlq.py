"""`stackstream dlq list|show|replay` against the real broker, with the loop guard."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from confluent_kafka import Consumer, Producer, TopicPartition

from streams.bus import cli as bus_cli
from streams.bus.codec import AvroCodec, SchemaRegistry
from streams.bus.deadletters import DEAD_LETTER_SCHEMA, DEAD_LETTER_TOPIC, dead_letter_record
from streams.bus.replay_model import ORIGIN_HEADER, REPLAYS_HEADER
from streams.cli import main
from streams.demo import sample_points
from streams.metrics.events import POINT_SCHEMA, POINTS_TOPIC
from streams.settings import Settings, get_settings
from tests.integration.worker import apply_topics

pytestmark = pytest.mark.integration


@pytest.fixture
def run_cli(stack_settings: Settings, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    for name, value in stack_settings.environment().items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    monkeypatch.setattr(bus_cli.console, "width", 200)
    runner = CliRunner()

    def run(*args: str, expect: int = 0) -> Result:
        result = runner.invoke(main, list(args), catch_exceptions=False)
        assert result.exit_code == expect, result.output
        return result

    yield run
    get_settings.cache_clear()


def send_dead_letters(settings: Settings, codec: AvroCodec, letters: list[dict]) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka})
    for record in letters:
        producer.produce(
            settings.topic_prefix + DEAD_LETTER_TOPIC,
            value=codec.encode(DEAD_LETTER_SCHEMA, record),
            key=record["source_topic"].encode(),
        )
    assert producer.flush(30) == 0


def read_topic(settings: Settings, topic: str, partitions: int) -> list:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka,
            "group.id": f"{settings.app_id}-check",
            "enable.partition.eof": True,
        }
    )
    name = settings.topic_prefix + topic
    try:
        consumer.assign([TopicPartition(name, p, 0) for p in range(partitions)])
        messages, ended = [], set()
        deadline = time.monotonic() + 20
        while len(ended) < partitions and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error() is not None:
                ended.add(message.partition())
            else:
                messages.append(message)
        return messages
    finally:
        consumer.close()


def test_dead_letters_are_listed_shown_and_pushed_back_once_with_a_loop_guard(
    stack_settings: Settings, run_cli, tmp_path: Path
) -> None:
    settings = stack_settings
    apply_topics(settings)
    codec = AvroCodec(SchemaRegistry.from_directory(settings.schemas_dir))
    point = sample_points(1, int(time.time() * 1000))[0]
    raw_point = codec.encode(POINT_SCHEMA, point)
    rejected = {
        "reason": "validation: point has no tags",
        "error_type": "validation",
        "source_topic": POINTS_TOPIC,
        "partition": 4,
        "offset": 17,
        "timestamp_ms": 1_700_000_000_123,
        "key": point["name"].encode(),
        "value": raw_point,
        "headers": {"trace": b"abc"},
    }
    send_dead_letters(
        settings,
        codec,
        [
            # one bad point rejected by both agents of metrics.points: two dead letters
            dead_letter_record(agent="metrics.track_latest", **rejected),
            dead_letter_record(agent="sinks.points_to_cassandra", **rejected),
            dead_letter_record(
                reason="not Avro single-object encoded",
                error_type="decode",
                source_topic="logs.records",
                partition=0,
                offset=3,
                timestamp_ms=1_700_000_000_000,
                agent="sinks.logs_to_elasticsearch",
                key=b"svc",
                value=b"garbage\x00\x01\x02",
            ),
            # a point already pushed back three times (the default limit)
            dead_letter_record(
                agent="metrics.track_latest",
                **{**rejected, "offset": 18, "headers": {REPLAYS_HEADER: b"3"}},
            ),
        ],
    )

    listed = run_cli("dlq", "list").output
    assert "metrics.points" in listed and "validation" in listed
    rows = {
        tuple(cell.strip() for cell in line.split("│")[1:4])
        for line in listed.splitlines()
        if line.startswith("│")
    }
    assert ("metrics.points", "validation", "3") in rows
    assert ("logs.records", "decode", "1") in rows
    assert "total: 4" in listed
    assert "total: 1" in run_cli("dlq", "list", "--reason", "decode").output

    shown = run_cli("dlq", "show", "--offset", "0").output
    assert f'"name": "{point["name"]}"' in shown, "the raw value decodes with today's schemas"
    assert f"{POINTS_TOPIC}[4]@17" in shown and "header trace" in shown
    assert "dead letter 0:1" not in shown, "--offset shows one record"
    garbage = run_cli("dlq", "show", "--reason", "decode").output
    assert "does not decode now" in garbage
    assert "67 61 72 62 61 67 65 00 01 02" in garbage and "garbage..." in garbage
    run_cli("dlq", "show", "--offset", "99", expect=1)

    checkpoint = tmp_path / "dlq.json"
    replay = ("dlq", "replay", "--reason", "tags", "--checkpoint", str(checkpoint))
    dry = run_cli(*replay, "--source-topic", POINTS_TOPIC, "--dry-run").output
    assert "would send" in dry and not checkpoint.exists()
    assert read_topic(settings, POINTS_TOPIC, 6) == []

    first = run_cli(*replay, "--source-topic", POINTS_TOPIC).output
    assert _count(first, "sent") == 1
    assert _count(first, "same record already sent in this run") == 1
    assert _count(first, "refused: replayed 3 time(s) already") == 1
    pushed = read_topic(settings, POINTS_TOPIC, 6)
    assert len(pushed) == 1, "one source record, rejected twice, goes back once"
    message = pushed[0]
    assert message.value() == raw_point and message.key() == point["name"].encode()
    assert message.partition() == 4, "back to the partition it came from"
    assert message.timestamp()[1] == 1_700_000_000_123
    headers = dict(message.headers())
    assert headers == {"trace": b"abc", REPLAYS_HEADER: b"1", ORIGIN_HEADER: b"0:0"}

    second = run_cli(*replay, "--source-topic", POINTS_TOPIC).output
    assert _count(second, "sent") == 0
    assert _count(second, "sent by an earlier run (checkpoint)") == 2
    assert len(read_topic(settings, POINTS_TOPIC, 6)) == 1, "a re-run sends nothing again"

    # The pushed-back record fails again: the runtime keeps its headers in the new dead letter.
    send_dead_letters(
        settings,
        codec,
        [
            dead_letter_record(
                agent="metrics.track_latest",
                **{
                    **rejected,
                    "offset": message.offset(),
                    "headers": dict(message.headers()),
                },
            )
        ],
    )
    guarded = run_cli(*replay, "--max-replays", "1").output
    assert _count(guarded, "refused: replayed 1 time(s) already") == 2
    assert _count(guarded, "sent") == 0
    assert len(read_topic(settings, POINTS_TOPIC, 6)) == 1, "the loop guard held"


def _count(output: str, label: str) -> int:
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if len(cells) == 2 and cells[0] == label:
            return int(cells[1])
    return 0
