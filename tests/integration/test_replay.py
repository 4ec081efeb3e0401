"""`stackstream replay` against the real broker: dry-run counts, copies, resume, group resets."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from confluent_kafka import Consumer, Producer, TopicPartition

from streams import cli as cli_module
from streams.bus import cli as bus_cli
from streams.bus.codec import AvroCodec, SchemaRegistry
from streams.bus.replay import (
    RangeReader,
    admin_for,
    copy_range,
    group_members,
    load_checkpoint,
    plan_range,
)
from streams.bus.replay_model import Checkpoint, replay_spec
from streams.cli import main
from streams.demo import sample_points
from streams.metrics.events import POINT_SCHEMA, POINTS_TOPIC
from streams.settings import Settings, get_settings
from tests.integration.worker import apply_topics, eventually, get_json, running_worker

pytestmark = pytest.mark.integration

PARTITIONS = 6  # metrics.points in topology.yaml
BASE_MS = int(time.time() * 1000) - 3_600_000  # an hour ago: inside the topic's retention


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


@pytest.fixture
def run_cli(stack_settings: Settings, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    for name, value in stack_settings.environment().items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    monkeypatch.setattr(bus_cli.console, "width", 200)
    monkeypatch.setattr(cli_module.console, "width", 200)
    runner = CliRunner()

    def run(*args: str, expect: int = 0) -> Result:
        result = runner.invoke(main, list(args), catch_exceptions=False)
        assert result.exit_code == expect, result.output
        return result

    yield run
    get_settings.cache_clear()


def produce_timed(
    settings: Settings, topic: str, per_partition: int, step_ms: int = 1000
) -> dict[int, list[tuple[bytes, bytes, list, int]]]:
    """`per_partition` records on every partition at BASE_MS + i*step_ms; returns them by
    partition as (key, value, headers, timestamp)."""
    producer = Producer({"bootstrap.servers": settings.kafka, "linger.ms": 5})
    sent: dict[int, list[tuple[bytes, bytes, list, int]]] = {}
    for partition in range(PARTITIONS):
        for i in range(per_partition):
            record = (
                f"key-{partition}-{i}".encode(),
                f"value-{partition}-{i}".encode() * 3,
                [("trace", f"t{i}".encode()), ("empty", b"")],
                BASE_MS + i * step_ms,
            )
            key, value, headers, timestamp = record
            producer.produce(
                settings.topic_prefix + topic,
                value=value,
                key=key,
                headers=headers,
                timestamp=timestamp,
                partition=partition,
            )
            sent.setdefault(partition, []).append(record)
    assert producer.flush(30) == 0
    return sent


def read_all(settings: Settings, topic: str) -> dict[int, list[tuple[bytes, bytes, list, int]]]:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka,
            "group.id": f"{settings.app_id}-check",
            "enable.partition.eof": True,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        partitions = sorted(metadata.partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        found: dict[int, list[tuple[bytes, bytes, list, int]]] = {}
        ended: set[int] = set()
        deadline = time.monotonic() + 30
        while len(ended) < len(partitions) and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error() is not None:
                ended.add(message.partition())
                continue
            found.setdefault(message.partition(), []).append(
                (message.key(), message.value(), message.headers() or [], message.timestamp()[1])
            )
        return found
    finally:
        consumer.close()


def expected_range(sent: dict, first: int, last: int) -> dict:
    return {p: records[first:last] for p, records in sent.items()}


def test_dry_run_counts_records_per_partition_from_the_time_index(
    stack_settings: Settings, run_cli
) -> None:
    apply_topics(stack_settings)
    produce_timed(stack_settings, POINTS_TOPIC, per_partition=20)
    topic = stack_settings.topic_prefix + POINTS_TOPIC

    plan = plan_range(stack_settings, topic, from_ms=BASE_MS + 5_000, to_ms=BASE_MS + 15_000)
    assert [(r.partition, r.start, r.end) for r in plan.ranges] == [
        (p, 5, 15) for p in range(PARTITIONS)
    ]
    between = plan_range(stack_settings, topic, from_ms=BASE_MS + 4_500, to_ms=BASE_MS + 14_500)
    assert {(r.start, r.end) for r in between.ranges} == {(5, 15)}, "first record at or after"
    after = plan_range(stack_settings, topic, from_ms=BASE_MS + 60_000)
    assert after.total == 0, "nothing after the last record"

    output = run_cli(
        "replay",
        "--topic",
        POINTS_TOPIC,
        "--from",
        iso(BASE_MS + 5_000),
        "--to",
        iso(BASE_MS + 15_000),
        "--into-topic",
        "backfill.points",
        "--dry-run",
    ).output
    rows = [line.split() for line in output.splitlines() if line.strip().startswith("│")]
    counts = {cells[1]: cells[-2] for cells in rows if len(cells) > 3 and cells[1].isdigit()}
    assert counts == {str(p): "10" for p in range(PARTITIONS)}
    assert "60 record(s) would be copied" in output
    metadata = admin_for(stack_settings).list_topics(timeout=10)
    assert stack_settings.topic_prefix + "backfill.points" not in metadata.topics, "read nothing"

    output = run_cli(
        "replay", "--topic", POINTS_TOPIC, "--from-offset", "0:3,18", "--dry-run"
    ).output
    assert "dry run: 27 record(s) in the range" in output  # 17 on partition 0, 2 on each other


def test_replay_into_a_topic_copies_exactly_the_range(stack_settings: Settings, run_cli) -> None:
    apply_topics(stack_settings)
    sent = produce_timed(stack_settings, POINTS_TOPIC, per_partition=30)
    output = run_cli(
        "replay",
        "--topic",
        POINTS_TOPIC,
        "--from",
        iso(BASE_MS + 10_000),
        "--to",
        iso(BASE_MS + 20_000),
        "--into-topic",
        "backfill.points",
    ).output
    assert "copied 60 record(s)" in output
    copied = read_all(stack_settings, stack_settings.topic_prefix + "backfill.points")
    assert copied == expected_range(sent, 10, 20), "keys, values, headers, timestamps, partitions"

    again = run_cli(
        "replay",
        "--topic",
        POINTS_TOPIC,
        "--from",
        iso(BASE_MS + 10_000),
        "--to",
        iso(BASE_MS + 20_000),
        "--into-topic",
        POINTS_TOPIC,
        expect=1,
    ).output
    assert "source topic" in again


def test_an_interrupted_copy_resumes_without_loss_or_duplicates(
    stack_settings: Settings, run_cli, tmp_path: Path
) -> None:
    apply_topics(stack_settings)
    sent = produce_timed(stack_settings, POINTS_TOPIC, per_partition=400, step_ms=10)
    source = stack_settings.topic_prefix + POINTS_TOPIC
    target = stack_settings.topic_prefix + "backfill.points"
    options = {"--from-offset": "50", "--to-offset": "350"}
    spec = replay_spec(
        topic=POINTS_TOPIC,
        from_time=None,
        to_time=None,
        from_offset=options["--from-offset"],
        to_offset=options["--to-offset"],
        into_topic="backfill.points",
    )
    plan = plan_range(
        stack_settings, source, from_offsets={None: 50}, to_offsets={None: 350}, spec=spec
    )
    assert plan.total == 1800
    path = tmp_path / "replay.json"
    seen: list[int] = []

    def interrupt_after_three_batches(records: int) -> None:
        seen.append(records)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        copy_range(
            stack_settings,
            Checkpoint.start(plan, target),
            path,
            progress=interrupt_after_three_batches,
            batch_size=200,
        )
    saved = load_checkpoint(path)
    assert saved is not None and not saved.finished
    assert saved.done == sum(seen), "the checkpoint covers what was flushed at the interruption"

    output = run_cli(
        "replay",
        "--topic",
        POINTS_TOPIC,
        *[item for pair in options.items() for item in pair],
        "--into-topic",
        "backfill.points",
        "--checkpoint",
        str(path),
    ).output
    assert f"resuming from {path}" in output
    assert f"copied {1800 - sum(seen):,} record(s)" in output
    assert load_checkpoint(path).finished  # type: ignore[union-attr]
    assert read_all(stack_settings, target) == expected_range(sent, 50, 350)


def test_the_range_reader_stops_at_the_end_of_every_partition(stack_settings: Settings) -> None:
    apply_topics(stack_settings)
    produce_timed(stack_settings, POINTS_TOPIC, per_partition=5)
    topic = stack_settings.topic_prefix + POINTS_TOPIC
    plan = plan_range(stack_settings, topic, from_offsets={None: 1}, to_offsets={0: 3, 1: 5})
    read = [
        (m.partition(), m.offset()) for b in RangeReader(stack_settings, plan).batches() for m in b
    ]
    assert sorted(read) == sorted(
        [(0, 1), (0, 2)] + [(p, o) for p in range(1, PARTITIONS) for o in range(1, 5)]
    )


def test_replay_into_agents_makes_a_worker_consume_the_range_again(
    stack_settings: Settings, run_cli, tmp_path: Path
) -> None:
    settings = stack_settings.model_copy(update={"domains": "bus,metrics"})
    apply_topics(settings)
    codec = AvroCodec(SchemaRegistry.from_directory(settings.schemas_dir))
    producer = Producer({"bootstrap.servers": settings.kafka, "partitioner": "murmur2_random"})
    now_ms = int(time.time() * 1000)
    points = sample_points(60, now_ms)
    for index, point in enumerate(points):
        # three eras: 30 points, then 20, then 10, a minute apart in Kafka time
        era_ms = BASE_MS + (0 if index < 30 else 60_000 if index < 50 else 120_000)
        producer.produce(
            settings.topic_prefix + POINTS_TOPIC,
            value=codec.encode(POINT_SCHEMA, point),
            key=point["name"].encode(),
            timestamp=era_ms + index,
        )
    assert producer.flush(30) == 0
    agents = "sinks.points_to_cassandra,metrics.track_latest"
    replay = (
        "replay",
        "--topic",
        POINTS_TOPIC,
        "--from",
        iso(BASE_MS + 60_000),
        "--to",
        iso(BASE_MS + 120_000),
        "--into-agents",
        agents,
        "--no-wait",
    )
    base = f"http://127.0.0.1:{settings.web_port}"

    def records_of(wanted: int):  # type: ignore[no-untyped-def]
        def check() -> dict | None:
            status, health = get_json(f"{base}/stackstream/health")
            if status != 200:
                return None
            counts = {
                name: health["agents"].get(name, {}).get("records", 0) for name in agents.split(",")
            }
            return counts if all(c >= wanted for c in counts.values()) else None

        return check

    log_path = tmp_path / "worker.log"
    with running_worker(settings, log_path):
        eventually(records_of(60), 120, "the worker to consume every point", log_path)
        refused = run_cli(*replay, expect=1).output
        assert "active member" in refused and settings.app_id in refused

    admin = admin_for(settings)
    for group in (settings.app_id, f"{settings.app_id}-sinks.points_to_cassandra"):
        eventually(lambda g=group: not group_members(admin, g) or None, 60, f"{group} to empty")
    output = run_cli(*replay).output
    assert f"reset {settings.app_id} (metrics.track_latest)" in output
    assert f"reset {settings.app_id}-sinks.points_to_cassandra" in output

    with running_worker(settings, log_path):
        counts = eventually(records_of(30), 120, "the worker to consume the range again", log_path)
        time.sleep(3)
        counts = records_of(30)()
        assert counts == dict.fromkeys(agents.split(","), 30), (
            "from the start of the range to the log end (20 + 10 points), each once"
        )
