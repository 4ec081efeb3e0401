"""Elasticsearch goes away for 30 s while log lines flow: every accepted line arrives once.

Runs its own private Elasticsearch (never the shared one) through deploy.local.LocalStack.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
from elastic_transport import TransportError
from elasticsearch import ApiError, Elasticsearch

from deploy.local import LocalStack
from deploy.local.process import port_open
from streams.logs.events import RECORD_SCHEMA, RECORDS_TOPIC
from streams.sdk.producer import EventProducer
from streams.settings import Settings
from tests.integration.worker import apply_topics, eventually, running_worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]
LINES_PER_SECOND = 40
SECONDS = 60
OUTAGE_SECONDS = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def indexed_count(es: Elasticsearch, pattern: str) -> int | None:
    """Searchable lines, or None while the server or a new index's shards are starting."""
    try:
        es.indices.refresh(index=pattern, allow_no_indices=True)
        return es.count(index=pattern, allow_no_indices=True)["count"]
    except (ApiError, TransportError):
        return None


def line(sequence: int) -> dict:
    return {
        "timestamp_us": time.time_ns() // 1000,
        "level": "ERROR",
        "message": f"order {sequence} failed",
        "service": f"outage{sequence % 3}",
        "host": "outage-host",
        "logger": "test",
        "trace_id": None,
        "span_id": None,
        "error_type": None,
        "error_message": None,
        "error_stack_trace": None,
        "labels": {},
        "sequence": sequence,
    }


def test_an_elasticsearch_outage_loses_and_duplicates_nothing(
    stack_settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    private = Settings(
        elasticsearch=f"http://127.0.0.1:{port}",
        elasticsearch_port=port,
        elasticsearch_transport_port=free_port(),
        stack_dir=tmp_path / "private-stack",
        elasticsearch_heap="512m",
    )
    stack = LocalStack(private)
    try:
        (status,) = stack.up(["elasticsearch"])
        assert status.address == private.elasticsearch != stack_settings.elasticsearch
        settings = stack_settings.model_copy(
            update={"elasticsearch": private.elasticsearch, "logs_quota_per_minute": 100_000}
        )
        apply_topics(settings)
        log_path = tmp_path / "worker.log"
        es = Elasticsearch(settings.elasticsearch, request_timeout=30)
        pattern = f"{settings.elasticsearch_index_prefix}-logs-*"
        producer = EventProducer(settings.kafka, topic_prefix=settings.topic_prefix)
        total = LINES_PER_SECOND * SECONDS

        def produce() -> None:
            for sequence in range(total):
                record = line(sequence)
                producer.emit(RECORDS_TOPIC, RECORD_SCHEMA, record, key=record["service"])
                time.sleep(1 / LINES_PER_SECOND)
            producer.flush(30)

        with running_worker(settings, log_path):
            sender = threading.Thread(target=produce, daemon=True)
            sender.start()

            def some_indexed() -> int | None:
                count = indexed_count(es, pattern)
                return count if count else None

            before = eventually(some_indexed, 90, "the first lines indexed", log_path)
            stack.down(["elasticsearch"])
            stopped_at = time.monotonic()
            assert not port_open(private.elasticsearch_port), "the private server is down"
            time.sleep(OUTAGE_SECONDS)
            stack.up(["elasticsearch"])
            outage = time.monotonic() - stopped_at
            sender.join(SECONDS + 60)
            assert producer.stats.delivered == total and producer.stats.failed == 0

            def all_indexed() -> int | None:
                count = indexed_count(es, pattern)
                return count if count is not None and count >= total else None

            count = eventually(all_indexed, 180, f"all {total} lines after the outage", log_path)
            assert count == total
            response = es.search(
                index=pattern,
                size=total,
                source=["event.sequence"],
                query={"match_all": {}},
            )
            sequences = sorted(
                hit["_source"]["event"]["sequence"] for hit in response["hits"]["hits"]
            )
            assert sequences == list(range(total)), "each line exactly once"
            assert before < total and outage >= OUTAGE_SECONDS
            assert "bulk index failed" in log_path.read_text(errors="replace"), (
                "the sink met the outage and retried"
            )
        producer.close()
    finally:
        stack.down(["elasticsearch"])
