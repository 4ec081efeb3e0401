"""Replays a topic's time or offset range: into a consumer group (offset reset) or a topic (copy).

The pure parts (times, ranges, rate, checkpoints) are in `replay_model`; this module talks to
the broker. `RangeReader` is the piece a backfill reuses: it yields the records of a planned
range in batches and stops at the range's end on every partition.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams.bus.replay_model import (
    Checkpoint,
    RateLimiter,
    ReplayPlan,
    bounded_range,
    offset_for,
)
from streams.settings import Settings

Progress = Callable[[int], None]
CHECKPOINT_EVERY_RECORDS = 50_000
CHECKPOINT_EVERY_SECONDS = 2.0
TIMEOUT_S = 15.0


class ReplayError(Exception):
    """A replay cannot start or go on; the message says what to do."""


class DeliveryFailed(ReplayError):
    """Records were not acknowledged by the broker; the checkpoint stays before them."""


class GroupActive(ReplayError):
    """The consumer group to reset still has members: its offsets cannot be moved under them."""


def admin_for(settings: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.kafka, "socket.timeout.ms": 10_000})


def reader_consumer(settings: Settings, purpose: str) -> Consumer:
    """A consumer that is assigned partitions, never joins its group and never commits."""
    return Consumer(
        {
            "bootstrap.servers": settings.kafka,
            "group.id": f"stackstream-{purpose}-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": 100,
            "queued.max.messages.kbytes": 65536,
        }
    )


def topic_partitions(admin: AdminClient, topic: str) -> list[int]:
    metadata = admin.list_topics(topic, timeout=TIMEOUT_S)
    described = metadata.topics.get(topic)
    if described is None or described.error is not None or not described.partitions:
        raise ReplayError(
            f"topic {topic} does not exist on the broker; check the name and the topic prefix "
            "(`stackstream topics list`)"
        )
    return sorted(described.partitions)


def plan_range(
    settings: Settings,
    topic: str,
    *,
    from_ms: int | None = None,
    to_ms: int | None = None,
    from_offsets: dict[int | None, int] | None = None,
    to_offsets: dict[int | None, int] | None = None,
    spec: str = "",
) -> ReplayPlan:
    """Resolve times through the broker's time index (`offsets_for_times`) and clamp everything
    into the watermarks. The end is exclusive: the first record at or after `to_ms`."""
    partitions = topic_partitions(admin_for(settings), topic)
    consumer = reader_consumer(settings, "replay-plan")
    try:
        starts = _offsets_at(consumer, topic, partitions, from_ms)
        ends = _offsets_at(consumer, topic, partitions, to_ms)
        ranges = []
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=TIMEOUT_S
            )
            start = offset_for(from_offsets, partition) if from_offsets else starts[partition]
            end = offset_for(to_offsets, partition) if to_offsets else ends[partition]
            ranges.append(bounded_range(partition, low, high, start, end))
        return ReplayPlan(topic, tuple(ranges), spec)
    finally:
        consumer.close()


def _offsets_at(
    consumer: Consumer, topic: str, partitions: Sequence[int], at_ms: int | None
) -> dict[int, int | None]:
    if at_ms is None:
        return dict.fromkeys(partitions)
    found = consumer.offsets_for_times(
        [TopicPartition(topic, p, at_ms) for p in partitions], timeout=TIMEOUT_S
    )
    for tp in found:
        if tp.error is not None:
            raise ReplayError(
                f"the broker's time index failed for {topic}[{tp.partition}]: {tp.error}"
            )
    return {tp.partition: tp.offset for tp in found}


class RangeReader:
    """Reads exactly the records of a plan, in batches, from an assigned (group-less) consumer.

    A partition is done when a record at or past its end arrives or its log ends (EOF), so gaps
    left by compaction or transaction markers cannot make it wait forever.
    """

    def __init__(self, settings: Settings, plan: ReplayPlan, batch_size: int = 5000) -> None:
        self.settings = settings
        self.plan = plan
        self.batch_size = batch_size

    def batches(self) -> Iterator[list[Message]]:
        pending = {r.partition: r for r in self.plan.ranges if r.count > 0}
        if not pending:
            return
        topic = self.plan.topic
        consumer = reader_consumer(self.settings, "replay")
        try:
            consumer.assign([TopicPartition(topic, p, r.start) for p, r in pending.items()])
            idle_since = time.monotonic()
            while pending:
                messages = consumer.consume(self.batch_size, 0.5)
                if not messages:
                    if time.monotonic() - idle_since > 60:
                        raise ReplayError(
                            f"no records from {topic} partitions {sorted(pending)} for 60 s; "
                            "is the broker reachable and were the records deleted by retention?"
                        )
                    continue
                idle_since = time.monotonic()
                batch: list[Message] = []
                finished: list[int] = []
                for message in messages:
                    partition = message.partition()
                    wanted = pending.get(partition)
                    if wanted is None:
                        continue
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            finished.append(partition)
                            del pending[partition]
                            continue
                        raise ReplayError(f"reading {topic}[{partition}]: {error}")
                    if message.offset() >= wanted.end:
                        finished.append(partition)
                        del pending[partition]
                        continue
                    batch.append(message)
                    if message.offset() == wanted.end - 1:
                        finished.append(partition)
                        del pending[partition]
                if finished:
                    consumer.incremental_unassign([TopicPartition(topic, p) for p in finished])
                if batch:
                    yield batch
        finally:
            consumer.close()


# --- into a topic -------------------------------------------------------------------------------


@dataclass
class CopyResult:
    copied: int
    resumed_from: int
    checkpoint: Path


def ensure_target(admin: AdminClient, source: str, target: str) -> int:
    """The target topic's partition count; created like the source when missing."""
    metadata = admin.list_topics(timeout=TIMEOUT_S)
    if target in metadata.topics and metadata.topics[target].partitions:
        return len(metadata.topics[target].partitions)
    partitions = len(metadata.topics[source].partitions)
    futures = admin.create_topics(
        [NewTopic(target, num_partitions=partitions, replication_factor=1)]
    )
    for future in futures.values():
        try:
            future.result(timeout=TIMEOUT_S)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise ReplayError(f"cannot create target topic {target}: {error}") from None
    return partitions


def load_checkpoint(path: Path) -> Checkpoint | None:
    return Checkpoint.from_json(path.read_text()) if path.exists() else None


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Atomically: a crash mid-write leaves the previous checkpoint, never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(checkpoint.to_json())
    os.replace(temporary, path)


def copy_range(
    settings: Settings,
    checkpoint: Checkpoint,
    checkpoint_path: Path,
    *,
    rate: float | None = None,
    progress: Progress | None = None,
    batch_size: int = 5000,
) -> CopyResult:
    """Copy what the checkpoint has not yet copied to its target topic; keys, headers and
    timestamps are kept, and so is the partition when source and target have as many.

    The checkpoint is saved after each producer flush, and on interruption (Ctrl-C) after a last
    flush, so a re-run continues without duplicates; only a hard kill can repeat up to one
    checkpoint interval (at-least-once), which idempotent consumers absorb.
    """
    admin = admin_for(settings)
    source_partitions = len(topic_partitions(admin, checkpoint.source))
    target_partitions = ensure_target(admin, checkpoint.source, checkpoint.target)
    keep_partition = target_partitions == source_partitions
    plan = checkpoint.remaining()
    resumed_from = checkpoint.done
    failures: list[str] = []

    def delivered(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            failures.append(f"{message.topic()}[{message.partition()}]: {error}")

    producer = Producer(
        {
            "bootstrap.servers": settings.kafka,
            "client.id": "stackstream-replay",
            "linger.ms": 20,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 500_000,
            "compression.type": "lz4",
            "enable.idempotence": True,
            "partitioner": "murmur2_random",
            "on_delivery": delivered,
        }
    )
    limiter = RateLimiter(rate, time.monotonic())
    target = checkpoint.target
    copied = 0
    unsaved = 0
    saved_at = time.monotonic()
    positions: dict[int, int] = {}

    def flush_and_save() -> None:
        remaining = producer.flush(60)
        if remaining or failures:
            raise DeliveryFailed(
                f"{remaining} record(s) not acknowledged, {len(failures)} failed "
                f"({'; '.join(failures[:3])}); the checkpoint stays at the last good position, "
                "re-run to continue"
            )
        for partition, next_offset in positions.items():
            checkpoint.advance(partition, next_offset)
        save_checkpoint(checkpoint_path, checkpoint)

    try:
        for batch in RangeReader(settings, plan, batch_size).batches():
            pause = limiter.delay(len(batch), time.monotonic())
            if pause:
                time.sleep(pause)
            for message in batch:
                partition = message.partition()
                timestamp = message.timestamp()[1]
                _produce_waiting(
                    producer,
                    target,
                    message.value(),
                    message.key(),
                    partition if keep_partition else -1,
                    timestamp if timestamp > 0 else 0,
                    message.headers(),
                )
                positions[partition] = message.offset() + 1
            producer.poll(0)
            copied += len(batch)
            unsaved += len(batch)
            if progress is not None:
                progress(len(batch))
            now = time.monotonic()
            if unsaved >= CHECKPOINT_EVERY_RECORDS or now - saved_at >= CHECKPOINT_EVERY_SECONDS:
                flush_and_save()
                unsaved, saved_at = 0, now
        for partition_range in plan.ranges:
            positions[partition_range.partition] = partition_range.end
        flush_and_save()
    except DeliveryFailed:
        raise
    except BaseException:
        flush_and_save()
        raise
    return CopyResult(copied, resumed_from, checkpoint_path)


def _produce_waiting(
    producer: Producer,
    topic: str,
    value: bytes | None,
    key: bytes | None,
    partition: int,
    timestamp: int,
    headers: list | None,
) -> None:
    """Produce, waiting for room while the producer's queue is full (back-pressure)."""
    while True:
        try:
            producer.produce(topic, value, key, partition, timestamp=timestamp, headers=headers)
            return
        except BufferError:
            producer.poll(0.1)


# --- into a consumer group ----------------------------------------------------------------------


def group_members(admin: AdminClient, group: str) -> list[str]:
    """Client ids of the group's current members (empty for an unknown or idle group)."""
    described = admin.describe_consumer_groups([group], request_timeout=TIMEOUT_S)[group]
    description = described.result(timeout=TIMEOUT_S)
    return [f"{member.client_id}@{member.host}" for member in description.members or []]


def reset_group(settings: Settings, group: str, plan: ReplayPlan) -> None:
    """Move the group's committed offsets on the plan's topic to the start of the range.

    Refused while the group has members: Kafka rejects offset changes of an active group, and
    the members would overwrite them with their next commit anyway.
    """
    from confluent_kafka import ConsumerGroupTopicPartitions

    admin = admin_for(settings)
    members = group_members(admin, group)
    if members:
        raise GroupActive(
            f"consumer group {group} has {len(members)} active member(s) "
            f"({', '.join(members[:4])}); stop the workers that run it, then replay again"
        )
    offsets = [TopicPartition(plan.topic, r.partition, r.start) for r in plan.ranges]
    request = ConsumerGroupTopicPartitions(group, offsets)
    future = admin.alter_consumer_group_offsets([request], request_timeout=TIMEOUT_S)[group]
    try:
        result = future.result(timeout=TIMEOUT_S)
    except KafkaException as error:
        raise ReplayError(f"cannot reset the offsets of {group}: {error}") from None
    for tp in result.topic_partitions:
        if tp.error is not None:
            raise ReplayError(f"cannot reset {group} on {plan.topic}[{tp.partition}]: {tp.error}")


def committed_offsets(settings: Settings, group: str, plan: ReplayPlan) -> dict[int, int]:
    """The group's committed offset per partition of the plan's topic (-1: none)."""
    from confluent_kafka import ConsumerGroupTopicPartitions

    admin = admin_for(settings)
    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(plan.topic, r.partition) for r in plan.ranges]
    )
    answer = admin.list_consumer_group_offsets([request], request_timeout=TIMEOUT_S)[group]
    return {tp.partition: tp.offset for tp in answer.result(timeout=TIMEOUT_S).topic_partitions}


def consumed_in_range(plan: ReplayPlan, committed: dict[int, int]) -> int:
    """How much of the range a group has committed past."""
    return sum(min(max(committed.get(r.partition, -1) - r.start, 0), r.count) for r in plan.ranges)


def agent_groups(settings: Settings, agents: Sequence[str], topic: str) -> dict[str, str]:
    """Consumer group per agent: Faust agents share the app id; batch agents (and other group
    consumers of ours) use `{app_id}-{agent}`. Agents must read the replayed topic."""
    from streams.bus.codec import SchemaRegistry
    from streams.topology import load_topology

    registry = SchemaRegistry.from_directory(settings.schemas_dir)
    topology = load_topology(settings.topology_file, known_schemas=registry.names)
    faust_agents = _faust_agent_names(settings)
    groups: dict[str, str] = {}
    for agent in agents:
        try:
            spec = topology.agent(agent)
        except (KeyError, ValueError) as error:
            raise ReplayError(str(error)) from None
        if spec.source != topic:
            raise ReplayError(
                f"agent {agent} reads {spec.source}, not {topic}; name agents of the replayed topic"
            )
        groups[agent] = settings.app_id if agent in faust_agents else f"{settings.app_id}-{agent}"
    return groups


def _faust_agent_names(settings: Settings) -> set[str]:
    """Names of the Faust agents a worker with these settings runs (it builds, never starts)."""
    import tempfile

    from streams.app import Runtime

    with tempfile.TemporaryDirectory(prefix="stackstream-replay-") as scratch:
        inspect = settings.model_copy(update={"data_dir": Path(scratch), "table_store": "memory"})
        try:
            runtime = Runtime(inspect)
        except Exception as error:
            raise ReplayError(
                f"cannot tell Faust agents from batch agents ({type(error).__name__}: {error}); "
                "name the consumer group with --group instead"
            ) from None
        return set(runtime.app.agents.keys())


def default_checkpoint_dir(settings: Settings) -> Path:
    return settings.data_dir.parent / "replay"
