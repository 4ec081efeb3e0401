"""A second worker joins mid-stream and leaves again: nothing is lost, state stays correct."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from streams.metrics.events import POINT_SCHEMA, POINTS_TOPIC
from streams.sdk.producer import EventProducer
from streams.settings import Settings
from tests.integration.worker import apply_topics, eventually, get_json, running_worker

pytestmark = pytest.mark.integration

METRICS = [f"rebalance.m{index}" for index in range(12)]


def _emit_round(producer: EventProducer, round_index: int, start_ms: int) -> dict:
    """One point per series; returns the newest point per (metric, host) so far."""
    newest = {}
    for metric in METRICS:
        for host in ("a", "b"):
            point = {
                "name": metric,
                "timestamp_ms": start_ms + round_index * 1000,
                "value": float(round_index * 100 + random.randint(0, 99)),
                "tags": {"host": host},
                "ttl_seconds": 0,
            }
            producer.emit(POINTS_TOPIC, POINT_SCHEMA, point, key=metric)
            newest[(metric, host)] = point
    return newest


def test_worker_joining_and_leaving_mid_stream(stack_settings: Settings, tmp_path: Path) -> None:
    settings_a = stack_settings.model_copy(update={"domains": "bus,metrics"})
    settings_b = settings_a.model_copy(
        update={"web_port": stack_settings.web_port + 1, "data_dir": tmp_path / "worker-b"}
    )
    apply_topics(settings_a)
    producer = EventProducer(settings_a.kafka, topic_prefix=settings_a.topic_prefix)
    start_ms = int(time.time() * 1000) - 3_600_000
    expected: dict = {}
    rounds = iter(range(1000))

    def emit_for(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            expected.update(_emit_round(producer, next(rounds), start_ms))
            producer.flush(5)
            time.sleep(0.2)

    with running_worker(settings_a, tmp_path / "a.log"):
        emit_for(8)
        with running_worker(settings_b, tmp_path / "b.log"):
            emit_for(12)
        emit_for(6)
        producer.close()
        assert producer.stats.failed == 0 and producer.stats.dropped == 0

        base = f"http://127.0.0.1:{settings_a.web_port}"

        def all_newest() -> bool:
            for metric in METRICS:
                status, answer = get_json(f"{base}/metrics/latest?metric={metric}")
                if status != 200:
                    return False
                seen = {s["tags"]["host"]: s["value"] for s in answer["series"]}
                for host in ("a", "b"):
                    if seen.get(host) != expected[(metric, host)]["value"]:
                        return False
            return True

        eventually(
            all_newest, 120, "worker A to hold the newest point of every series", tmp_path / "a.log"
        )
