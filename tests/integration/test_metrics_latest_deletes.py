"""KairosDB deletes reach `/metrics/latest`: a real worker, Kafka and Cassandra.

Points of two series (HTTP, so aiokafka) and a third (the SDK, so librdkafka), a range delete of
one series' newest point, a whole-metric delete; the deleted series leave /metrics/latest, the
others stay, and points sent after the delete requests are listed again. The records of a metric
lie in the same partition of `metrics.points` and `metrics.deletes` whichever client sent them.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiokafka.partitioner import murmur2
from confluent_kafka import Consumer, TopicPartition

from streams.metrics.events import DELETES_TOPIC, POINT_SCHEMA, POINTS_TOPIC
from streams.sdk.producer import EventProducer
from streams.settings import Settings
from tests.integration.test_metrics_kairos import metrics_worker_settings
from tests.integration.worker import eventually, get_json, running_worker

pytestmark = pytest.mark.integration
T0 = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000
METRIC = "demo.latest.depth"
DOOMED = "demo.latest.doomed"


def _send(url: str, body: Any = None, method: str = "POST") -> int:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status


def _partitions_by_key(settings: Settings, topics: list[str], expected: int) -> dict:
    """(topic, key) -> partitions of every record of the topics, read from the beginning."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka,
            "group.id": f"{settings.app_id}-check",
            "enable.auto.commit": False,
        }
    )
    try:
        assignment = [
            TopicPartition(settings.topic_prefix + topic, partition, 0)
            for topic in topics
            for partition in range(6)
        ]
        consumer.assign(assignment)
        seen: dict[tuple[str, bytes], set[int]] = {}
        count = 0
        deadline = time.monotonic() + 60
        while count < expected and time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=1.0):
                if message.error():
                    continue
                topic = message.topic()[len(settings.topic_prefix) :]
                seen.setdefault((topic, message.key()), set()).add(message.partition())
                count += 1
        assert count >= expected, f"read {count} of {expected} records"
        return seen
    finally:
        consumer.close()


def test_deletes_remove_series_from_latest_and_later_points_come_back(
    stack_settings: Settings, tmp_path: Path
) -> None:
    settings = metrics_worker_settings(stack_settings)
    log_path = tmp_path / "worker.log"
    root = f"http://127.0.0.1:{settings.web_port}"
    base = f"{root}/api/v1"
    web = {
        host: [[T0 + i * 10_000, float(i + offset)] for i in range(30)]
        for host, offset in (("web1", 0), ("web2", 100))
    }
    body = [{"name": METRIC, "tags": {"host": h}, "datapoints": ps} for h, ps in web.items()]
    body.append({"name": DOOMED, "tags": {"host": "web1"}, "datapoints": [[T0, 1.0]]})
    newest = {host: points[-1] for host, points in web.items()}

    def latest(metric: str) -> dict[str, list] | None:
        status, answer = get_json(f"{root}/metrics/latest?metric={metric}")
        if status != 200:
            return None
        return {s["tags"]["host"]: [s["timestamp_ms"], s["value"]] for s in answer["series"]}

    with running_worker(settings, log_path):
        eventually(lambda: get_json(f"{base}/version")[0] == 200, 60, "worker up", log_path)
        assert _send(f"{base}/datapoints", body) == 204
        sdk = EventProducer(settings.kafka, topic_prefix=settings.topic_prefix)
        sdk_point = {
            "name": METRIC,
            "timestamp_ms": T0 + 5_000,
            "value": 7.0,
            "tags": {"host": "web3"},
            "ttl_seconds": 0,
        }
        assert sdk.emit(POINTS_TOPIC, POINT_SCHEMA, sdk_point, key=METRIC)
        sdk.close()
        assert sdk.stats.delivered == 1

        everything = {**newest, "web3": [T0 + 5_000, 7.0]}
        eventually(lambda: latest(METRIC) == everything, 90, "three series latest", log_path)
        eventually(lambda: latest(DOOMED) == {"web1": [T0, 1.0]}, 30, "doomed latest", log_path)

        def stored(host: str) -> int:
            document = {
                "start_absolute": T0,
                "end_absolute": T0 + 3_600_000,
                "metrics": [{"name": METRIC, "tags": {"host": [host]}}],
            }
            request = urllib.request.Request(
                f"{base}/datapoints/query", data=json.dumps(document).encode(), method="POST"
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())["queries"][0]["sample_size"]

        # Stored before the requests, or the Cassandra deletes (USING TIMESTAMP) would spare them.
        eventually(lambda: stored("web1") == 30, 90, "web1's points in Cassandra", log_path)

        # Delete web1 over its last five points (its newest included), and DOOMED whole.
        start, end = web["web1"][-5][0], web["web1"][-1][0] + 1
        range_delete = {
            "start_absolute": start,
            "end_absolute": end,
            "metrics": [{"name": METRIC, "tags": {"host": ["web1"]}}],
        }
        assert _send(f"{base}/datapoints/delete", range_delete) == 204
        assert _send(f"{base}/metric/{DOOMED}", method="DELETE") == 204
        remaining = {"web2": newest["web2"], "web3": [T0 + 5_000, 7.0]}
        eventually(lambda: latest(METRIC) == remaining, 60, "web1 gone from latest", log_path)
        eventually(lambda: latest(DOOMED) == {}, 60, "doomed gone from latest", log_path)

        # The delete reached Cassandra too (its own agent): web1's raw points in the range went.
        eventually(lambda: stored("web1") == 25, 60, "web1's range deleted in Cassandra", log_path)

        # Points sent after the requests survive them, even inside the deleted range.
        again = [
            {"name": METRIC, "tags": {"host": "web1"}, "datapoints": [[start + 1, 42.0]]},
            {"name": DOOMED, "tags": {"host": "web9"}, "datapoints": [[T0, 9.0]]},
        ]
        assert _send(f"{base}/datapoints", again) == 204
        back = {**remaining, "web1": [start + 1, 42.0]}
        eventually(lambda: latest(METRIC) == back, 60, "web1's new point latest", log_path)
        eventually(lambda: latest(DOOMED) == {"web9": [T0, 9.0]}, 60, "doomed is back", log_path)
        eventually(lambda: stored("web1") == 26, 60, "web1's new point stored", log_path)

        status, health = get_json(f"{root}/stackstream/health")
        assert status == 200
        assert health["agents"]["metrics.track_latest"]["rejected"] == 0

    # Co-partitioning: every record of a metric, sent by aiokafka (HTTP) or librdkafka (SDK),
    # lies in murmur2(key) of both topics.
    seen = _partitions_by_key(
        settings, [POINTS_TOPIC, DELETES_TOPIC], expected=30 + 30 + 1 + 1 + 2 + 2
    )
    for metric in (METRIC, DOOMED):
        key = metric.encode()
        wanted = {(murmur2(key) & 0x7FFFFFFF) % 6}
        assert seen[(POINTS_TOPIC, key)] == wanted, metric
        assert seen[(DELETES_TOPIC, key)] == wanted, metric
