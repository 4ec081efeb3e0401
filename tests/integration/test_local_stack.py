"""The servers behind the `kafka`, `elasticsearch` and `cassandra` fixtures really answer."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from deploy.local import LocalStack, MissingToolError, ServerStartError, tools
from streams.settings import Settings
from tests.servers import ServerSource


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.mark.integration
def test_kafka_creates_topic_and_round_trips_a_message(kafka: str) -> None:
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = unique("stackstream-test")
    admin = AdminClient({"bootstrap.servers": kafka})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
    try:
        producer = Producer({"bootstrap.servers": kafka})
        producer.produce(topic, key=b"k", value=b"hello kafka")
        assert producer.flush(30) == 0
        consumer = Consumer(
            {
                "bootstrap.servers": kafka,
                "group.id": unique("group"),
                "auto.offset.reset": "earliest",
            }
        )
        consumer.subscribe([topic])
        try:
            message = None
            for _ in range(60):
                message = consumer.poll(1.0)
                if message is not None and message.error() is None:
                    break
            assert message is not None and message.error() is None
            assert (message.key(), message.value()) == (b"k", b"hello kafka")
        finally:
            consumer.close()
    finally:
        admin.delete_topics([topic])[topic].result(30)


@pytest.mark.integration
def test_elasticsearch_indexes_and_searches_a_document(elasticsearch: str) -> None:
    from elasticsearch import Elasticsearch

    index = unique("stackstream-test")
    client = Elasticsearch(elasticsearch, request_timeout=30)
    try:
        client.index(index=index, id="1", document={"message": "hello elastic"}, refresh=True)
        found = client.search(index=index, query={"match": {"message": "hello"}})
        assert [hit["_id"] for hit in found["hits"]["hits"]] == ["1"]
    finally:
        client.indices.delete(index=index, ignore_unavailable=True)
        client.close()


@pytest.mark.integration
def test_cassandra_writes_and_reads_a_row(cassandra: str) -> None:
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import DCAwareRoundRobinPolicy

    host, _, port = cassandra.rpartition(":")
    keyspace = unique("stackstream_test")
    profile = ExecutionProfile(
        load_balancing_policy=DCAwareRoundRobinPolicy(local_dc="datacenter1")
    )
    cluster = Cluster(
        [host],
        port=int(port),
        protocol_version=5,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
    )
    session = cluster.connect()
    try:
        session.execute(
            f"CREATE KEYSPACE {keyspace} WITH replication = "
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        )
        session.execute(f"CREATE TABLE {keyspace}.notes (id int PRIMARY KEY, body text)")
        session.execute(f"INSERT INTO {keyspace}.notes (id, body) VALUES (%s, %s)", (1, "hello"))
        row = session.execute(f"SELECT body FROM {keyspace}.notes WHERE id = %s", (1,)).one()
        assert row.body == "hello"
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}")
        cluster.shutdown()


@pytest.mark.integration
def test_up_twice_reuses_running_servers(
    kafka: str, elasticsearch: str, cassandra: str, server_source: ServerSource
) -> None:
    names = list(server_source.from_local_stack)
    if not names:
        pytest.skip("the servers come from STACKSTREAM_* addresses or containers")
    stack = LocalStack(server_source.settings)
    before = {status.name: status.pid for status in stack.status(names)}
    again = stack.up(names)
    assert all(status.state == "running" for status in again)
    assert {status.name: status.pid for status in again} == before


def test_missing_maven_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(
        cache_dir=tmp_path / "cache",
        stack_dir=tmp_path / "stack",
        kafka_port=29492,
        kafka_controller_port=29493,
    )
    monkeypatch.setenv("PATH", str(tmp_path))
    tools.java.cache_clear()
    try:
        with pytest.raises(MissingToolError, match="install") as raised:
            LocalStack(settings).up(["kafka"])
    finally:
        tools.java.cache_clear()
    assert "\n" not in str(raised.value)


@pytest.mark.integration
def test_failed_start_names_the_log_file(tmp_path: Path, kafka: str) -> None:
    settings = Settings(
        stack_dir=tmp_path / "stack",
        kafka_port=29592,
        kafka_controller_port=29593,
        kafka_heap="not-a-size",
        start_timeout_seconds=60,
    )
    stack = LocalStack(settings)
    with pytest.raises(ServerStartError) as raised:
        stack.up(["kafka"])
    assert str(stack.log_file("kafka")) in str(raised.value)
    assert "heap" in str(raised.value).lower()
    assert stack.status(["kafka"])[0].state == "stopped"
