"""Makes a Kafka cluster match topology.yaml, and reports what is there.

`plan` compares; `apply` creates missing topics, adds partitions and alters configs.
Nothing is ever deleted or shrunk: Kafka cannot remove partitions, and a deletion is not
something a config file should do by surprise.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

from streams.topology import TopicSpec, Topology


class TopicPlanError(Exception):
    """The cluster cannot be made to match: e.g. a topic has more partitions than declared."""


@dataclass
class TopicChange:
    """What `apply` will do to one topic."""

    topic: str
    action: str  # create, alter, unchanged
    partitions: tuple[int | None, int] = (None, 0)
    configs: dict[str, tuple[str | None, str]] = field(default_factory=dict)

    def describe(self) -> list[str]:
        if self.action == "create":
            return [f"+ {self.topic}: create with {self.partitions[1]} partitions"] + [
                f"    {name} = {new}" for name, (_, new) in sorted(self.configs.items())
            ]
        if self.action == "unchanged":
            return [f"  {self.topic}: up to date"]
        lines = [f"~ {self.topic}:"]
        before, after = self.partitions
        if before is not None and before != after:
            lines.append(f"    partitions {before} -> {after}")
        lines += [
            f"    {name}: {old} -> {new}" for name, (old, new) in sorted(self.configs.items())
        ]
        return lines


def admin_client(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10_000})


def plan(admin: AdminClient, specs: Iterable[TopicSpec], prefix: str) -> list[TopicChange]:
    """Compare the declared topics with the cluster."""
    specs = list(specs)
    metadata = admin.list_topics(timeout=15)
    existing = {
        spec.kafka_name(prefix): spec
        for spec in specs
        if spec.kafka_name(prefix) in metadata.topics
    }
    current_configs: dict[str, dict[str, str]] = {}
    if existing:
        resources = [ConfigResource(ResourceType.TOPIC, name) for name in existing]
        for resource, future in admin.describe_configs(resources).items():
            current_configs[resource.name] = {
                name: entry.value for name, entry in future.result(timeout=15).items()
            }
    changes = []
    for spec in specs:
        name = spec.kafka_name(prefix)
        wanted = spec.kafka_configs()
        if name not in metadata.topics:
            changes.append(
                TopicChange(
                    name,
                    "create",
                    (None, spec.partitions),
                    {key: (None, value) for key, value in wanted.items()},
                )
            )
            continue
        have_partitions = len(metadata.topics[name].partitions)
        if have_partitions > spec.partitions:
            raise TopicPlanError(
                f"{name} has {have_partitions} partitions but topology.yaml declares "
                f"{spec.partitions}; Kafka cannot remove partitions: raise the declaration"
            )
        have = current_configs.get(name, {})
        differing = {k: (have.get(k), v) for k, v in wanted.items() if have.get(k) != v}
        action = "alter" if differing or have_partitions != spec.partitions else "unchanged"
        changes.append(TopicChange(name, action, (have_partitions, spec.partitions), differing))
    return changes


def apply(admin: AdminClient, topology: Topology, prefix: str, changes: list[TopicChange]) -> None:
    """Carry out a plan; raises on the first broker error with the topic named."""
    specs = {spec.kafka_name(prefix): spec for spec in topology.topics.values()}
    new_topics = [
        NewTopic(
            change.topic,
            num_partitions=specs[change.topic].partitions,
            replication_factor=specs[change.topic].replication,
            config=specs[change.topic].kafka_configs(),
        )
        for change in changes
        if change.action == "create"
    ]
    if new_topics:
        for topic, future in admin.create_topics(new_topics, request_timeout=30).items():
            try:
                future.result()
            except Exception as error:
                if "TOPIC_ALREADY_EXISTS" not in str(error):
                    raise TopicPlanError(f"could not create {topic}: {error}") from error
    grow = [
        NewPartitions(change.topic, change.partitions[1])
        for change in changes
        if change.action == "alter"
        and change.partitions[0] is not None
        and change.partitions[0] < change.partitions[1]
    ]
    if grow:
        for topic, future in admin.create_partitions(grow, request_timeout=30).items():
            try:
                future.result()
            except Exception as error:
                raise TopicPlanError(f"could not add partitions to {topic}: {error}") from error
    alter = [
        ConfigResource(
            ResourceType.TOPIC,
            change.topic,
            incremental_configs=[
                ConfigEntry(name, new, incremental_operation=AlterConfigOpType.SET)
                for name, (_, new) in change.configs.items()
            ],
        )
        for change in changes
        if change.action == "alter" and change.configs
    ]
    if alter:
        for resource, future in admin.incremental_alter_configs(alter).items():
            try:
                future.result()
            except Exception as error:
                raise TopicPlanError(f"could not alter {resource.name}: {error}") from error


@dataclass(frozen=True)
class TopicState:
    name: str
    partitions: int
    end_offsets: int
    declared: bool


def describe_topics(bootstrap: str, topology: Topology, prefix: str) -> list[TopicState]:
    """Declared topics (and other topics with the prefix) with partition counts and end offsets."""
    admin = admin_client(bootstrap)
    metadata = admin.list_topics(timeout=15)
    declared = {spec.kafka_name(prefix) for spec in topology.topics.values()}
    names = sorted(
        name
        for name in metadata.topics
        if name in declared or (prefix and name.startswith(prefix) and not name.startswith("__"))
    )
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "stackstream-topics-list",
            "enable.auto.commit": False,
        }
    )
    try:
        states = []
        for name in names:
            total = 0
            for partition in metadata.topics[name].partitions:
                _, high = consumer.get_watermark_offsets(
                    TopicPartition(name, partition), timeout=10
                )
                total += high
            states.append(
                TopicState(name, len(metadata.topics[name].partitions), total, name in declared)
            )
        missing = sorted(declared - set(metadata.topics))
        states += [TopicState(name, 0, 0, True) for name in missing]
        return states
    finally:
        consumer.close()
