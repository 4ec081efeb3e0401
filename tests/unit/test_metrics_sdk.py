"""The SDK's counters, gauges, timers and histograms: what they emit, and that they never block."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
from typing import Any

import pytest

from streams.bus.codec import AvroCodec, SchemaRegistry
from streams.metrics.model import validate_point
from streams.sdk.metrics import POINT_SCHEMA, POINTS_TOPIC, InvalidMetric, Metrics
from streams.sdk.producer import EventProducer
from streams.settings import PROJECT_ROOT


class RecordingProducer:
    """Stands in for EventProducer: keeps what the metrics emit (no Kafka involved)."""

    def __init__(self) -> None:
        self.emitted: list[tuple[str, str, dict[str, Any], Any]] = []

    def emit(self, topic: str, schema: str, record: Any, key: Any = None) -> bool:
        self.emitted.append((topic, schema, dict(record), key))
        return True

    def flush(self, timeout: float = 10.0) -> int:
        return 0


class Clock:
    def __init__(self, now: int = 1_700_000_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def recorded() -> tuple[Metrics, RecordingProducer, Clock]:
    producer = RecordingProducer()
    clock = Clock()
    metrics = Metrics(
        producer, tags={"service": "shop", "host": "web1"}, clock_ms=clock, start=False
    )
    return metrics, producer, clock


def test_counters_report_cumulative_counts_and_gauges_their_value(
    recorded: tuple[Metrics, RecordingProducer, Clock],
) -> None:
    metrics, producer, clock = recorded
    requests = metrics.counter("demo.http.requests", route="/pay")
    assert metrics.counter("demo.http.requests", route="/pay") is requests
    requests.inc()
    requests.inc(2)
    depth = metrics.gauge("demo.queue.depth")
    queue = [1, 2, 3]
    metrics.gauge("demo.queue.items", lambda: len(queue))
    assert metrics.sample() == 2, "an unset gauge emits nothing"
    depth.set(7)
    requests.inc()
    clock.now += 10_000
    queue.append(4)
    assert metrics.sample() == 3
    by_name: dict[str, list[tuple[int, float]]] = {}
    for topic, schema, record, key in producer.emitted:
        assert (topic, schema, key) == (POINTS_TOPIC, POINT_SCHEMA, record["name"])
        by_name.setdefault(record["name"], []).append((record["timestamp_ms"], record["value"]))
    t0 = 1_700_000_000_000
    assert by_name["demo.http.requests"] == [(t0, 3.0), (t0 + 10_000, 4.0)]
    assert by_name["demo.queue.items"] == [(t0, 3.0), (t0 + 10_000, 4.0)]
    assert by_name["demo.queue.depth"] == [(t0 + 10_000, 7.0)]
    first = producer.emitted[0][2]
    assert first["tags"] == {"service": "shop", "host": "web1", "route": "/pay"}
    with pytest.raises(ValueError, match="only go up"):
        requests.inc(-1)


def test_histograms_emit_every_observation_and_timers_time_blocks(
    recorded: tuple[Metrics, RecordingProducer, Clock],
) -> None:
    metrics, producer, clock = recorded
    latency = metrics.timer("demo.http.latency_ms", route="/pay")
    sizes = metrics.histogram("demo.http.body_bytes")
    for value in (12.0, 15.0, 9.0):
        assert latency.record(value)
    sizes.record(512)
    clock.now += 5
    with latency.time():
        pass
    with pytest.raises(KeyError), latency.time():
        raise KeyError("the block failed")

    @latency.timed
    def work() -> int:
        return 1

    @latency.timed
    async def async_work() -> int:
        return 2

    assert work() == 1 and asyncio.run(async_work()) == 2
    points = [r for _, _, r, _ in producer.emitted if r["name"] == "demo.http.latency_ms"]
    assert [p["value"] for p in points[:3]] == [12.0, 15.0, 9.0]
    assert len(points) == 7
    stamps = [p["timestamp_ms"] for p in points]
    assert stamps == sorted(set(stamps)), "one series never repeats a timestamp (no overwrite)"
    t0 = 1_700_000_000_000
    assert stamps[:3] == [t0, t0 + 1, t0 + 2] and stamps[3] == t0 + 5
    assert all(0 <= p["value"] < 1000 for p in points[3:])
    assert metrics.histogram("demo.http.body_bytes") is sizes
    with pytest.raises(InvalidMetric, match="plain histogram"):
        metrics.timer("demo.http.body_bytes")


def test_every_emitted_point_is_a_valid_metric_point(
    recorded: tuple[Metrics, RecordingProducer, Clock],
) -> None:
    metrics, producer, _ = recorded
    codec = AvroCodec(SchemaRegistry.from_directory(PROJECT_ROOT / "schemas"))
    metrics.counter("c").inc()
    metrics.gauge("g").set(-1.5)
    metrics.timer("t").record(3)
    metrics.sample()
    assert len(producer.emitted) == 3
    for _, schema, record, _ in producer.emitted:
        decoded = codec.decoder(schema)(codec.encode(schema, record))
        validate_point(decoded)


def test_bad_declarations_raise_and_bad_values_are_counted_not_sent() -> None:
    producer = RecordingProducer()
    metrics = Metrics(producer, start=False)
    with pytest.raises(InvalidMetric, match="at least one tag"):
        metrics.counter("no.tags")
    with pytest.raises(InvalidMetric, match="empty"):
        metrics.counter("x", host="")
    with pytest.raises(InvalidMetric, match="name"):
        metrics.counter("", host="a")
    metrics.counter("x", host="a")
    with pytest.raises(InvalidMetric, match="already a Counter"):
        metrics.gauge("x", host="a")
    histogram = metrics.histogram("h", host="a")
    assert not histogram.record(math.nan)
    assert not histogram.record(math.inf)
    metrics.gauge("broken", lambda: 1 / 0, host="a")
    metrics.sample()
    assert metrics.invalid == 2
    assert [r["name"] for _, _, r, _ in producer.emitted] == ["x"], "the failing gauge is skipped"


def test_the_sampling_thread_reports_periodically_and_close_flushes() -> None:
    producer = RecordingProducer()
    metrics = Metrics(producer, tags={"host": "a"}, interval_s=0.05)
    metrics.counter("ticks").inc()
    deadline = 200
    while len(producer.emitted) < 2 and deadline:
        deadline -= 1
        time.sleep(0.02)
    assert len(producer.emitted) >= 2, "the background thread samples every interval"
    metrics.close()
    after_close = len(producer.emitted)
    assert producer.emitted[-1][2]["value"] == 1.0
    time.sleep(0.15)
    assert len(producer.emitted) == after_close, "no sampling after close"


def test_a_full_producer_queue_drops_points_instead_of_blocking() -> None:
    producer = EventProducer(
        "127.0.0.1:1",
        queue_max_messages=5,
        extra_config={"message.timeout.ms": 1000, "socket.connection.setup.timeout.ms": 1000},
    )
    metrics = Metrics(producer, tags={"host": "a"}, start=False)
    latency = metrics.timer("t")
    results = [latency.record(float(i)) for i in range(50)]
    assert results[:5] == [True] * 5
    assert not any(results[5:])
    assert producer.stats.dropped == 45
    producer.close(timeout=0.1)


def test_the_sdk_module_imports_no_worker_code() -> None:
    code = (
        "import sys, streams.sdk.metrics; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('faust', 'cassandra', 'aiokafka') "
        "or m.startswith('streams.metrics')]; print(bad); assert not bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
