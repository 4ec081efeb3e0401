"""Logs end to end on real Kafka and Elasticsearch: SDK handler and NDJSON ingest → logs.records
→ governance agent (level, quota, size, secrets, rules from config.releases) → daily indices,
volume metric points, search API, dead letters."""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from elasticsearch import Elasticsearch

from streams.bus.codec import AvroCodec, SchemaRegistry
from streams.logs.agents import LOGS_TO_ELASTICSEARCH, TRACK_RULES
from streams.logs.events import (
    CONFIG_RELEASE_SCHEMA,
    CONFIG_RELEASES_TOPIC,
    POINT_SCHEMA,
    POINTS_TOPIC,
    RECORD_SCHEMA,
    RECORDS_TOPIC,
)
from streams.logs.model import MINUTE_US, VOLUME_METRIC
from streams.sdk.context import trace_scope
from streams.sdk.logging import StackstreamLogHandler
from streams.sdk.producer import EventProducer
from streams.settings import Settings
from tests.integration.worker import apply_topics, eventually, get_json, running_worker

pytestmark = pytest.mark.integration


def record(service: str, sequence: int, timestamp_us: int, **overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "timestamp_us": timestamp_us,
        "level": "ERROR",
        "message": f"line {sequence}",
        "service": service,
        "host": "test-host",
        "logger": "test",
        "trace_id": None,
        "span_id": None,
        "error_type": None,
        "error_message": None,
        "error_stack_trace": None,
        "labels": {},
        "sequence": sequence,
    }
    value.update(overrides)
    return value


def release(app_id: str, configurations: dict[str, str], release_id: int) -> dict[str, Any]:
    return {
        "app_id": app_id,
        "cluster": "default",
        "namespace": "stackstream.logging",
        "format": "properties",
        "kind": "NORMAL",
        "release_id": release_id,
        "release_key": f"20261125000000-{release_id:016x}",
        "name": "logging rules",
        "comment": "",
        "author": "test",
        "released_at_ms": int(time.time() * 1000),
        "configurations": configurations,
        "is_public": False,
        "is_rollback": False,
        "rolled_back_from": None,
        "rolled_back_to": None,
        "gray": None,
        "closed_branch_name": None,
    }


def topic_records(settings: Settings, topic: str, schema: str) -> list[dict[str, Any]]:
    """Every record on a topic of this test, decoded."""
    codec = AvroCodec(SchemaRegistry.from_directory(settings.schemas_dir))
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka,
            "group.id": f"{settings.app_id}-inspect-{time.monotonic_ns()}",
            "enable.auto.commit": False,
        }
    )
    name = settings.topic_prefix + topic
    try:
        partitions = consumer.list_topics(name, timeout=10).topics[name].partitions
        ends = {}
        for partition in partitions:
            ends[partition] = consumer.get_watermark_offsets(TopicPartition(name, partition))[1]
        consumer.assign([TopicPartition(name, partition, 0) for partition in partitions])
        records: list[dict[str, Any]] = []
        read = dict.fromkeys(partitions, 0)
        deadline = time.monotonic() + 20
        while any(read[p] < ends[p] for p in partitions) and time.monotonic() < deadline:
            message = consumer.poll(1)
            if message is None or message.error():
                continue
            read[message.partition()] = message.offset() + 1
            records.append(codec.decode(message.value(), schema))
        return records
    finally:
        consumer.close()


def post_ndjson(url: str, body: str) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/x-ndjson"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def indexed(es: Elasticsearch, pattern: str, query: dict[str, Any]) -> list[dict[str, Any]]:
    es.indices.refresh(index=pattern, allow_no_indices=True, ignore_unavailable=True)
    response = es.search(
        index=pattern, query=query, size=1000, ignore_unavailable=True, allow_no_indices=True
    )
    return [hit["_source"] | {"_id": hit["_id"]} for hit in response["hits"]["hits"]]


def test_governance_rules_sdk_handler_metrics_and_dead_letters(
    stack_settings: Settings, tmp_path: Path
) -> None:
    settings = stack_settings.model_copy(
        update={"logs_quota_per_minute": 10, "logs_sample_every": 5, "logs_max_line_bytes": 300}
    )
    apply_topics(settings)
    log_path = tmp_path / "worker.log"
    es = Elasticsearch(settings.elasticsearch)
    pattern = f"{settings.elasticsearch_index_prefix}-logs-*"
    minute = (time.time_ns() // 1000) // MINUTE_US * MINUTE_US
    producer = EventProducer(settings.kafka, topic_prefix=settings.topic_prefix)

    with running_worker(settings, log_path):
        # Quota: 30 ERROR lines of one app in one minute, quota 10, 1 in 5 sampled past it.
        for sequence in range(30):
            line = record("flood", sequence, minute + sequence)
            assert producer.emit(RECORDS_TOPIC, RECORD_SCHEMA, line, key="flood")
        # Level: INFO below the default WARN is dropped; a redelivered line is indexed once.
        producer.emit(RECORDS_TOPIC, RECORD_SCHEMA, record("quiet", 1, minute, level="INFO"))
        twice = record("quiet", 2, minute + 1, level="WARN", message="said twice")
        producer.emit(RECORDS_TOPIC, RECORD_SCHEMA, twice, key="quiet")
        producer.emit(RECORDS_TOPIC, RECORD_SCHEMA, twice, key="quiet")
        # A bad record goes to dead letters, the stream goes on.
        producer.emit(RECORDS_TOPIC, RECORD_SCHEMA, record("quiet", 3, minute, level="LOUD"))
        producer.flush()

        # The SDK handler: trace ids from the tracing context, errors, secrets, oversize.
        handler = StackstreamLogHandler("checkout", producer=producer, labels={"team": "pay"})
        logger = logging.getLogger(f"test.{settings.app_id}")
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
        logger.info("not collected by default")
        with trace_scope("trace-abc", "span-1"):
            try:
                raise ValueError("card declined")
            except ValueError:
                logger.exception("charge failed password=hunter2 card 4111 1111 1111 1111")
        logger.warning("x" * 500)
        handler.flush()
        assert producer.stats.failed == 0

        def flood_done() -> list[dict[str, Any]] | None:
            docs = indexed(es, pattern, {"term": {"service.name": "flood"}})
            summary = [d for d in docs if d.get("labels", {}).get("governance") == "quota_summary"]
            return docs if summary and summary[0]["labels"]["dropped"] == "16" else None

        flood = eventually(flood_done, 120, "the flood app's lines and summary", log_path)
        lines = [d for d in flood if "governance" not in d.get("tags", [])]
        assert len(lines) == 10 + 4, "10 within quota, then lines 1, 6, 11, 16 past it sampled"
        assert sum("sampled" in d.get("tags", []) for d in lines) == 4
        (summary,) = [d for d in flood if "governance" in d.get("tags", [])]
        assert "16 lines dropped" in summary["message"]

        checkout = eventually(
            lambda: (lambda docs: docs if len(docs) == 2 else None)(
                indexed(es, pattern, {"term": {"service.name": "checkout"}})
            ),
            60,
            "the SDK handler's lines",
            log_path,
        )
        error = next(d for d in checkout if d["log"]["level"] == "ERROR")
        assert error["trace"] == {"id": "trace-abc"} and error["span"] == {"id": "span-1"}
        assert error["message"] == "charge failed password=*** card ****1111"
        assert error["error"]["type"] == "ValueError"
        assert "card declined" in error["error"]["stack_trace"]
        assert error["labels"]["team"] == "pay" and "masked" in error["tags"]
        long = next(d for d in checkout if d["log"]["level"] == "WARN")
        assert long["message"] == "x" * 300 and "truncated" in long["tags"]
        assert long["labels"]["original_bytes_message"] == "500"

        quiet = indexed(es, pattern, {"term": {"service.name": "quiet"}})
        assert [d["message"] for d in quiet] == ["said twice"]

        # Rules at run time from the config centre's namespace: quiet may log INFO now.
        assert producer.emit(
            CONFIG_RELEASES_TOPIC,
            CONFIG_RELEASE_SCHEMA,
            release("quiet", {"level": "INFO", "quota_per_minute": "1000"}, 1),
            key="quiet+default+stackstream.logging",
        )
        bad_rule = release("other", {"level": "chatty"}, 2)
        assert producer.emit(
            CONFIG_RELEASES_TOPIC,
            CONFIG_RELEASE_SCHEMA,
            bad_rule,
            key="other+default+stackstream.logging",
        )
        attempt = iter(range(100, 10_000))

        def info_collected() -> list[dict[str, Any]] | None:
            probe_minute = minute - MINUTE_US  # apart from the minute whose volume is checked
            line = record("quiet", next(attempt), probe_minute, level="INFO")
            producer.emit(RECORDS_TOPIC, RECORD_SCHEMA, line, key="quiet")
            producer.flush()
            time.sleep(1)
            docs = indexed(es, pattern, {"term": {"log.level": "INFO"}})
            return [d for d in docs if d["service"]["name"] == "quiet"] or None

        eventually(info_collected, 60, "an INFO line after the rule changed", log_path)

        def our_dead_letters() -> list[dict[str, Any]] | None:
            letters = topic_records(settings, "bus.deadletters", "stackstream.bus.DeadLetter")
            ours = [d for d in letters if d["agent"] in (LOGS_TO_ELASTICSEARCH, TRACK_RULES)]
            return ours if len(ours) >= 2 else None

        dead = eventually(our_dead_letters, 60, "dead letters of the bad line and rule", log_path)
        by_agent = {d["agent"]: d for d in dead}
        assert by_agent[LOGS_TO_ELASTICSEARCH]["error_type"] == "validation"
        assert "level" in by_agent[LOGS_TO_ELASTICSEARCH]["reason"]
        assert "configurations.level" in by_agent[TRACK_RULES]["reason"]

        # Volume: running per-minute counts per app, level and outcome as metric points.
        def volume() -> dict[tuple[str, str, str], float] | None:
            counts: dict[tuple[str, str, str], float] = {}
            for point in topic_records(settings, POINTS_TOPIC, POINT_SCHEMA):
                if point["name"] == VOLUME_METRIC and point["timestamp_ms"] == minute // 1000:
                    tags = point["tags"]
                    key = (tags["service"], tags["level"], tags["outcome"])
                    counts[key] = max(counts.get(key, 0.0), point["value"])
            return counts if counts.get(("flood", "ERROR", "dropped_quota")) == 16 else None

        counts = eventually(volume, 60, "volume metric points", log_path)
        assert counts[("flood", "ERROR", "accepted")] == 14
        assert counts[("quiet", "INFO", "dropped_level")] == 1
        assert counts[("quiet", "WARN", "accepted")] == 2, "both deliveries are counted"
    producer.close()
    es.indices.delete(index=pattern, allow_no_indices=True)


def test_search_api_and_ndjson_ingest(stack_settings: Settings, tmp_path: Path) -> None:
    settings = stack_settings
    apply_topics(settings)
    log_path = tmp_path / "worker.log"
    es = Elasticsearch(settings.elasticsearch)
    pattern = f"{settings.elasticsearch_index_prefix}-logs-*"
    base = f"http://127.0.0.1:{settings.web_port}"

    with running_worker(settings, log_path):
        eventually(lambda: get_json(f"{base}/openapi.json")[0] == 200, 60, "the worker", log_path)
        lines = [
            {
                "@timestamp": "2026-11-25T10:00:00Z",
                "log.level": "error",
                "message": "db timeout",
                "service.name": "billing",
                "trace.id": "t-1",
            },
            "this is not json",
            {
                "@timestamp": "2026-11-25T10:00:01Z",
                "log": {"level": "WARN"},
                "message": "slow query token=abc123",
                "service": {"name": "billing"},
            },
            {"message": "no service"},
            {
                "@timestamp": "2026-11-24T23:59:59Z",
                "log.level": "FATAL",
                "message": "disk full",
                "service.name": "billing",
                "error": {"type": "OSError", "message": "ENOSPC"},
            },
            {
                "@timestamp": "2026-11-25T10:00:02Z",
                "log.level": "ERROR",
                "message": "db timeout again",
                "service.name": "shipping",
                "trace.id": "t-1",
            },
        ]
        body = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
        status, answer = post_ndjson(f"{base}/logs/ingest", body + "\n")
        assert status == 200, answer
        assert answer["accepted"] == 4 and answer["rejected"] == 2
        assert [(e["line"], e["field"]) for e in answer["errors"]] == [
            (2, "line"),
            (4, "service.name"),
        ]
        status, answer = post_ndjson(f"{base}/logs/ingest", '{"message": 1}\n')
        assert status == 400 and answer["field"] == "message" and answer["accepted"] == 0
        status, answer = post_ndjson(f"{base}/logs/ingest", "\n\n")
        assert status == 400 and answer["field"] == "body"

        def searchable() -> Any:
            es.indices.refresh(index=pattern, allow_no_indices=True)
            status, page = get_json(f"{base}/logs/search?size=10")
            return page if status == 200 and page["total"] == 4 else None

        page = eventually(searchable, 90, "ingested lines searchable", log_path)
        assert [line["message"] for line in page["lines"]] == [
            "db timeout again",
            "slow query token=***",
            "db timeout",
            "disk full",
        ], "newest first, secrets masked"
        assert {line["_index"] for line in page["lines"]} == {
            f"{settings.elasticsearch_index_prefix}-logs-billing-2026.11.25",
            f"{settings.elasticsearch_index_prefix}-logs-billing-2026.11.24",
            f"{settings.elasticsearch_index_prefix}-logs-shipping-2026.11.25",
        }

        def search(query: str) -> dict[str, Any]:
            status, answer = get_json(f"{base}/logs/search?{query}")
            assert status == 200, answer
            return answer

        def messages(query: str) -> list[str]:
            return [line["message"] for line in search(query)["lines"]]

        assert messages("service=billing&level=ERROR,FATAL") == ["db timeout", "disk full"]
        assert messages("min_level=ERROR&service=shipping") == ["db timeout again"]
        assert messages("trace_id=t-1") == ["db timeout again", "db timeout"]
        assert messages("q=timeout%20-again") == ["db timeout"]
        assert messages("q=%7B%22match_all%22%3A%7B%7D%7D") == [], "JSON is just text"
        assert messages("from=2026-11-25T00:00:00Z&to=2026-11-25T10:00:01Z") == ["db timeout"]
        first = search("size=3&page=1")
        second = search("size=3&page=2")
        assert first["next_page"] == 2 and second["next_page"] is None
        assert [line["message"] for line in first["lines"] + second["lines"]] == [
            line["message"] for line in page["lines"]
        ]
        for query, field in [
            ("level=LOUD", "level"),
            ("from=yesterday", "from"),
            ("size=100000", "size"),
            ("sort=%7B%7D", "sort"),
        ]:
            status, error = get_json(f"{base}/logs/search?{query}")
            assert status == 400 and error["field"] == field, (query, error)

        status, document = get_json(f"{base}/openapi.json")
        assert {"/logs/search", "/logs/ingest"} <= set(document["paths"])
        parameters = {p["name"] for p in document["paths"]["/logs/search"]["get"]["parameters"]}
        assert {"service", "level", "from", "to", "q", "trace_id", "page", "size"} <= parameters

    resent = topic_records(settings, RECORDS_TOPIC, RECORD_SCHEMA)
    assert len(resent) == 4, "accepted lines were on the bus before the answer"
    es.indices.delete(index=pattern, allow_no_indices=True)
