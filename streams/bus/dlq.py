"""Dead-letter tooling on the broker: read `bus.deadletters`, and push fixed records back.

Decisions (filters, loop guard, headers, counts) are pure, in `replay_model`; this module reads
the dead-letter topic up to the end it had when the command started, and produces.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from streams.bus.codec import AvroCodec, CodecError, SchemaRegistry
from streams.bus.deadletters import DEAD_LETTER_SCHEMA, DEAD_LETTER_TOPIC
from streams.bus.replay import (
    DeliveryFailed,
    RangeReader,
    ReplayError,
    admin_for,
    plan_range,
    topic_partitions,
)
from streams.bus.replay_model import (
    DeadLetterFilter,
    OffsetSet,
    decide_dead_letter_replay,
    header_map,
    replay_headers,
)
from streams.settings import Settings


@dataclass(frozen=True)
class DeadLetter:
    """One dead-letter record with its own place in the dead-letter topic."""

    partition: int
    offset: int
    record: dict[str, Any]


def dead_letter_topic(settings: Settings) -> str:
    return settings.topic_prefix + DEAD_LETTER_TOPIC


def codec_for(settings: Settings) -> AvroCodec:
    return AvroCodec(SchemaRegistry.from_directory(settings.schemas_dir))


def read_dead_letters(
    settings: Settings,
    selection: DeadLetterFilter | None = None,
    *,
    from_offset: int | None = None,
    to_offset: int | None = None,
    undecodable: Callable[[Message, CodecError], None] | None = None,
) -> Iterator[DeadLetter]:
    """Dead letters from the topic's start (or `from_offset`) up to its end as of now."""
    codec = codec_for(settings)
    decode = codec.decoder(DEAD_LETTER_SCHEMA)
    plan = plan_range(
        settings,
        dead_letter_topic(settings),
        from_offsets=None if from_offset is None else {None: from_offset},
        to_offsets=None if to_offset is None else {None: to_offset},
    )
    for batch in RangeReader(settings, plan, batch_size=1000).batches():
        for message in batch:
            try:
                record = decode(message.value())
            except CodecError as error:
                if undecodable is not None:
                    undecodable(message, error)
                continue
            if selection is None or selection.matches(record):
                yield DeadLetter(message.partition(), message.offset(), record)


def describe_value(codec: AvroCodec, value: bytes | None) -> tuple[str, Any]:
    """('decoded', record) when the raw value decodes with the schemas known now, else
    ('raw', why): the caller shows a hex dump."""
    if value is None:
        return "raw", "no value"
    try:
        return "decoded", codec.decode(value)
    except CodecError as error:
        return "raw", str(error)


# --- pushing back -------------------------------------------------------------------------------


@dataclass
class DeadLetterReplayResult:
    """What `dlq replay` did, by decision, with the dead letters it sent."""

    decisions: Counter[str] = field(default_factory=Counter)
    sent: list[tuple[int, int]] = field(default_factory=list)
    checkpoint: Path | None = None


class DeadLetterCheckpoint:
    """Dead-letter offsets already pushed back, per partition, for every filter: a re-run of any
    `dlq replay` skips them. A JSON file of offset intervals, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.replayed: dict[int, OffsetSet] = {}
        if path.exists():
            try:
                data = json.loads(path.read_text())
                self.replayed = {
                    int(p): OffsetSet(intervals) for p, intervals in data["replayed"].items()
                }
            except (ValueError, KeyError, TypeError) as error:
                raise ReplayError(
                    f"{path} is not a dead-letter replay checkpoint ({error}); move it away"
                ) from None

    def of(self, partition: int) -> OffsetSet:
        return self.replayed.setdefault(partition, OffsetSet())

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"replayed": {str(p): s.as_list() for p, s in sorted(self.replayed.items())}}
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(data))
        os.replace(temporary, self.path)


def dead_letter_checkpoint_path(settings: Settings, directory: Path) -> Path:
    return directory / f"dlq-{dead_letter_topic(settings)}.json"


def replay_dead_letters(
    settings: Settings,
    selection: DeadLetterFilter,
    checkpoint_path: Path,
    *,
    limit: int,
    dry_run: bool = False,
) -> DeadLetterReplayResult:
    """Push matching dead letters back to their source topics (same key, partition, headers and
    timestamp, plus the replay count and origin headers), guarded against loops.

    Only dead letters present when the command starts are read, so a record that fails again
    during the run is not picked up by it; the checkpoint is saved after the producer has every
    record acknowledged.
    """
    checkpoint = DeadLetterCheckpoint(checkpoint_path)
    result = DeadLetterReplayResult(checkpoint=checkpoint_path)
    admin = admin_for(settings)
    partition_counts: dict[str, int] = {}
    failures: list[str] = []

    def delivered(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            failures.append(f"{message.topic()}[{message.partition()}]: {error}")

    producer = Producer(
        {
            "bootstrap.servers": settings.kafka,
            "client.id": "stackstream-dlq-replay",
            "enable.idempotence": True,
            "partitioner": "murmur2_random",
            "linger.ms": 20,
            "on_delivery": delivered,
        }
    )
    sent_origins: set[tuple[str, int, int]] = set()
    unsaved: list[tuple[int, int]] = []

    def flush_and_save() -> None:
        remaining = producer.flush(60)
        if remaining or failures:
            raise DeliveryFailed(
                f"{remaining} record(s) not acknowledged, {len(failures)} failed "
                f"({'; '.join(failures[:3])}); nothing past the last acknowledged record is "
                "marked as replayed: re-run to send the rest"
            )
        for partition, offset in unsaved:
            checkpoint.of(partition).add(offset)
        unsaved.clear()
        checkpoint.save()

    try:
        for letter in read_dead_letters(settings, selection):
            record = letter.record
            decision = decide_dead_letter_replay(
                record,
                letter.offset,
                limit=limit,
                replayed_offsets=checkpoint.of(letter.partition),
                sent_origins=sent_origins,
            )
            result.decisions[decision.action] += 1
            if decision.action == "duplicate" and not dry_run:
                unsaved.append((letter.partition, letter.offset))
            if decision.action != "send":
                continue
            sent_origins.add((record["source_topic"], record["partition"], record["offset"]))
            result.sent.append((letter.partition, letter.offset))
            if dry_run:
                continue
            target = settings.topic_prefix + record["source_topic"]
            if target not in partition_counts:
                partition_counts[target] = len(topic_partitions(admin, target))
            arguments: dict[str, Any] = {
                "value": record["value"],
                "key": record["key"],
                "headers": replay_headers(
                    header_map(record["headers"]), letter.partition, letter.offset
                ),
            }
            if record["timestamp_ms"] > 0:
                arguments["timestamp"] = record["timestamp_ms"]
            if 0 <= record["partition"] < partition_counts[target]:
                arguments["partition"] = record["partition"]
            producer.produce(target, **arguments)
            producer.poll(0)
            unsaved.append((letter.partition, letter.offset))
        if not dry_run:
            flush_and_save()
    except DeliveryFailed:
        raise
    except BaseException:
        if not dry_run:
            flush_and_save()
        raise
    return result
