"""The SDK producer never blocks the app, and says what did not arrive."""

from __future__ import annotations

import socket
import time

from streams.sdk.producer import EventProducer
from tests.records import metric_point as point

POINT_SCHEMA = "stackstream.metrics.MetricPoint"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_invalid_records_are_refused_and_counted() -> None:
    producer = EventProducer(f"127.0.0.1:{closed_port()}")
    try:
        assert not producer.emit("metrics.points", POINT_SCHEMA, {**point(), "value": "x"})
        assert producer.stats.invalid == 1
        assert "MetricPoint" in (producer.stats.last_error or "")
    finally:
        producer.close(timeout=0.1)


def test_delivery_failures_are_counted_and_surfaced() -> None:
    producer = EventProducer(f"127.0.0.1:{closed_port()}", extra_config={"message.timeout.ms": 500})
    started = time.monotonic()
    for _ in range(3):
        assert producer.emit("metrics.points", POINT_SCHEMA, point(), key="m")
    assert time.monotonic() - started < 1.0, "emit must not wait for the broker"
    assert producer.flush(timeout=10) == 0
    assert producer.stats.emitted == 3
    assert producer.stats.failed == 3 and producer.stats.delivered == 0
    assert "metrics.points" in (producer.stats.last_error or "")
    producer.close()


def test_a_full_queue_drops_instead_of_blocking() -> None:
    producer = EventProducer(
        f"127.0.0.1:{closed_port()}", queue_max_messages=2, extra_config={"message.timeout.ms": 500}
    )
    results = [producer.emit("metrics.points", POINT_SCHEMA, point()) for _ in range(5)]
    assert results.count(False) == 3
    assert producer.stats.dropped == 3 and producer.stats.emitted == 2
    producer.close(timeout=5)


def test_topic_prefix_is_applied(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("STACKSTREAM_TOPIC_PREFIX", "tenant1.")
    producer = EventProducer(f"127.0.0.1:{closed_port()}", extra_config={"message.timeout.ms": 300})
    producer.emit("metrics.points", POINT_SCHEMA, point())
    producer.flush(5)
    assert (producer.stats.last_error or "").startswith("tenant1.metrics.points")
    producer.close()
