"""End to end on real servers: SDK → Kafka → worker agents → table, HTTP view, ES and Cassandra."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cassandra import InvalidRequest
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import DCAwareRoundRobinPolicy
from confluent_kafka import Consumer, TopicPartition
from elasticsearch import Elasticsearch

from streams.bus.codec import AvroCodec, SchemaRegistry
from streams.demo import DEMO_METRIC, SERVICES, sample_logs, sample_points
from streams.logs.events import RECORD_SCHEMA, RECORDS_TOPIC
from streams.metrics.events import POINT_SCHEMA, POINTS_TOPIC
from streams.sdk.producer import EventProducer
from streams.settings import Settings
from tests.integration.worker import apply_topics, eventually, get_json, running_worker

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_events_flow_from_sdk_to_table_view_elasticsearch_and_cassandra(
    stack_settings: Settings, tmp_path: Path, guarantee: str
) -> None:
    settings = stack_settings.model_copy(
        update={"processing_guarantee": guarantee, "domains": "bus,metrics,logs"}
    )
    apply_topics(settings)
    now_ms = int(time.time() * 1000)
    points = sample_points(40, now_ms)
    logs = sample_logs(12, now_ms * 1000)
    log_path = tmp_path / "worker.log"

    with running_worker(settings, log_path):
        producer = EventProducer(settings.kafka, topic_prefix=settings.topic_prefix)
        for point in points:
            assert producer.emit(POINTS_TOPIC, POINT_SCHEMA, point, key=point["name"])
        for record in logs:
            assert producer.emit(RECORDS_TOPIC, RECORD_SCHEMA, record, key=record["service"])
        bad = {**points[0], "tags": {}}
        assert producer.emit(POINTS_TOPIC, POINT_SCHEMA, bad, key=DEMO_METRIC)
        producer.close()
        assert producer.stats.delivered == len(points) + len(logs) + 1
        assert producer.stats.failed == 0

        base = f"http://127.0.0.1:{settings.web_port}"
        newest_by_service = {p["tags"]["service"]: p for p in points}

        def latest_is_newest() -> dict | None:
            status, answer = get_json(f"{base}/metrics/latest?metric={DEMO_METRIC}")
            if status != 200:
                return None
            newest = {
                s["tags"]["service"]: (s["timestamp_ms"], s["value"]) for s in answer["series"]
            }
            wanted = {
                service: (p["timestamp_ms"], p["value"]) for service, p in newest_by_service.items()
            }
            return answer if newest == wanted else None

        latest = eventually(
            latest_is_newest, 120, "the latest-point view to show each newest point", log_path
        )
        assert {s["tags"]["service"] for s in latest["series"]} == set(SERVICES)

        status, error = get_json(f"{base}/metrics/latest")
        assert status == 400 and error["field"] == "metric"
        status, document = get_json(f"{base}/openapi.json")
        assert status == 200 and document["openapi"].startswith("3.")
        assert {"/metrics/latest", "/stackstream/health"} <= set(document["paths"])

        def dead_letters_by_reason() -> dict | None:
            rows = get_json(f"{base}/bus/deadletters")[1]["dead_letters"]
            counts = {(r["source_topic"], r["error_type"]): r["count"] for r in rows}
            return counts if counts.get(("metrics.points", "validation"), 0) >= 2 else None

        by_reason = eventually(dead_letters_by_reason, 60, "the dead-letter counts", log_path)
        assert by_reason == {("metrics.points", "validation"): 2}, (
            "the bad point is rejected once by each agent reading metrics.points"
        )

        dead_letter = _first_dead_letter(settings)
        assert dead_letter["source_topic"] == POINTS_TOPIC
        assert dead_letter["error_type"] == "validation" and "tags" in dead_letter["reason"]
        assert dead_letter["value"] == _record_at(
            settings, POINTS_TOPIC, dead_letter["partition"], dead_letter["offset"]
        ), "the dead letter carries the rejected record's raw bytes and true origin"

        es = Elasticsearch(settings.elasticsearch)
        index_pattern = f"{settings.elasticsearch_index_prefix}-logs-*"

        governed = [record for record in logs if record["level"] in ("WARN", "ERROR")]

        def indexed() -> int | None:
            es.indices.refresh(index=index_pattern, allow_no_indices=True)
            count = es.count(index=index_pattern, allow_no_indices=True)["count"]
            return count if count >= len(governed) else None

        assert eventually(indexed, 90, "WARN and ERROR lines in Elasticsearch", log_path) == len(
            governed
        ), "governance keeps WARN and above by default"
        errors = es.search(index=index_pattern, query={"term": {"log.level": "ERROR"}}, size=50)
        assert len(errors["hits"]["hits"]) == sum(1 for r in logs if r["level"] == "ERROR")

        cluster = Cluster(
            [host for host, _ in settings.cassandra_contact_points],
            port=settings.cassandra_contact_points[0][1],
            protocol_version=5,
            execution_profiles={
                EXEC_PROFILE_DEFAULT: ExecutionProfile(
                    load_balancing_policy=DCAwareRoundRobinPolicy(
                        local_dc=settings.cassandra_datacenter
                    )
                )
            },
        )
        try:
            session = cluster.connect()

            def stored() -> int | None:
                try:
                    rows = session.execute(
                        f"SELECT count(*) FROM {settings.cassandra_keyspace}.raw_points "
                        "WHERE metric = %s ALLOW FILTERING",
                        (DEMO_METRIC,),
                    ).one()
                except InvalidRequest:
                    return None  # the sink has not created its table yet
                return rows[0] if rows[0] >= len(points) else None

            assert eventually(stored, 90, "raw points in Cassandra", log_path) == len(points)
            row = session.execute(
                f"SELECT value FROM {settings.cassandra_keyspace}.raw_points "
                "WHERE metric=%s AND row_time=%s AND tags=%s AND ts=%s",
                _primary_key(points[5]),
            ).one()
            assert row.value == points[5]["value"]
            session.execute(f"DROP KEYSPACE IF EXISTS {settings.cassandra_keyspace}")
        finally:
            cluster.shutdown()
        es.indices.delete(index=index_pattern, allow_no_indices=True)


def _primary_key(point: dict) -> tuple:
    from streams.metrics.model import raw_point_row

    row = raw_point_row(point)
    return (row["metric"], row["row_time"], row["tags"], row["ts"])


def _consumer(settings: Settings) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": settings.kafka,
            "group.id": f"{settings.app_id}-inspect",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )


def _first_dead_letter(settings: Settings) -> dict:
    consumer = _consumer(settings)
    try:
        consumer.assign([TopicPartition(settings.topic_prefix + "bus.deadletters", 0, 0)])
        message = consumer.poll(10)
        assert message is not None and message.error() is None, "no dead letter on the topic"
        codec = AvroCodec(SchemaRegistry.from_directory(settings.schemas_dir))
        return codec.decode(message.value(), "stackstream.bus.DeadLetter")
    finally:
        consumer.close()


def _record_at(settings: Settings, topic: str, partition: int, offset: int) -> bytes:
    consumer = _consumer(settings)
    try:
        consumer.assign([TopicPartition(settings.topic_prefix + topic, partition, offset)])
        message = consumer.poll(10)
        assert message is not None and message.offset() == offset
        return message.value()
    finally:
        consumer.close()
