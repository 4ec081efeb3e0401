"""The query cache against real writers: a worker's rollup agent and deleter, and the backfill
command, invalidate cached hours through Cassandra's rollup_hour_versions.

A MetricStore with the cache (the one under test) and one without it read the keyspace a real
worker writes; after every change they must answer alike, and the cached one must have read
only the hours that changed.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.cassandra import CassandraSink
from streams.bus.backfill import backfill, default_margin_ms
from streams.bus.backfill_model import BackfillWindow
from streams.metrics.events import POINTS_TOPIC
from streams.metrics.model import row_time, tags_from_text, tags_text
from streams.metrics.query import answer_metric, parse_query, plan_metric
from streams.metrics.rollup import HOUR_MS, MINUTE_MS
from streams.metrics.store import MetricStore
from streams.settings import Settings
from tests.integration.faults import TrafficProducer
from tests.integration.test_metrics_kairos import metrics_worker_settings
from tests.integration.worker import eventually, get_json, running_worker

pytestmark = pytest.mark.integration
METRIC = "demo.cache.latency"
HOSTS = ("a", "b", "c")
PACKED = "rollups_1m_packed"


def _point(host: str, at_ms: int, value: float) -> tuple[str, str, dict[str, Any], int]:
    record = {
        "name": METRIC,
        "timestamp_ms": at_ms,
        "value": value,
        "tags": {"host": host},
        "ttl_seconds": 0,
    }
    return (POINTS_TOPIC, METRIC, record, at_ms)


def _produce(settings: Settings, points: list[tuple[str, str, dict[str, Any], int]]) -> None:
    producer = TrafficProducer(settings)  # Kafka timestamps = event times, as backfill needs
    producer.send(points)
    producer.close()


def _documents(start: int, end: int) -> list[dict[str, Any]]:
    """1-minute avg (packed minute rows), 1-hour max (hour rows), 1-minute p90 (sketch bins)."""
    aggregators = [
        {"name": "avg", "sampling": {"value": 1, "unit": "minutes"}},
        {"name": "max", "sampling": {"value": 1, "unit": "hours"}},
        {"name": "percentile", "percentile": 0.9, "sampling": {"value": 1, "unit": "minutes"}},
    ]
    return [
        {
            "start_absolute": start,
            "end_absolute": end,
            "metrics": [
                {
                    "name": METRIC,
                    "group_by": [{"name": "tag", "tags": ["host"]}],
                    "aggregators": [aggregator],
                }
            ],
        }
        for aggregator in aggregators
    ]


async def _answer(store: MetricStore, document: dict[str, Any]) -> dict[str, Any]:
    """What the KairosDB view answers (api.run_query), from this store."""
    query = parse_query(document, int(time.time() * 1000))
    (metric,) = query.metrics
    await store.open()
    texts = [
        text
        for text in await store.series_tags(metric.name, query.start, query.end)
        if metric.matches(tags_from_text(text))
    ]
    plan = plan_metric(metric, query.start, query.end)
    series = await store.series_data(metric.name, texts, plan)
    return answer_metric(metric, query.start, query.end, series)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    running = asyncio.new_event_loop()
    yield running
    running.close()


def test_cached_hours_are_read_again_after_late_points_deletes_and_backfills(
    stack_settings: Settings, tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    settings = metrics_worker_settings(stack_settings)
    log_path = tmp_path / "worker.log"
    base = f"http://127.0.0.1:{settings.web_port}/api/v1"
    first = (int(time.time() * 1000) // HOUR_MS - 4) * HOUR_MS
    hours = [first + i * HOUR_MS for i in range(3)]
    # One point per minute and host for three hours: 540 points.
    _produce(
        settings,
        [
            _point(host, hour + minute * MINUTE_MS + 1_000, float((minute * 7 + offset) % 23))
            for hour in hours
            for minute in range(60)
            for offset, host in enumerate(HOSTS)
        ],
    )
    documents = _documents(first, first + 3 * HOUR_MS - 1)
    sink = CassandraSink(
        settings.cassandra_contact_points,
        settings.cassandra_keyspace,
        datacenter=settings.cassandra_datacenter,
    )
    cached = MetricStore(sink, cache_bytes=64 * 2**20)
    uncached = MetricStore(sink)
    reads: list[tuple[str, int, int]] = []
    cached.read_hook = lambda table, metric, hour, series: reads.append((table, hour, series))

    def answers(store: MetricStore) -> list[dict[str, Any]]:
        return [loop.run_until_complete(_answer(store, d)) for d in documents]

    def packed_reads() -> dict[int, int]:
        """Series read per hour of the packed rows by the last query (the avg one)."""
        found: dict[int, int] = {}
        for table, hour, series in reads:
            if table == PACKED:
                found[hour] = found.get(hour, 0) + series
        return found

    def cached_answer_read_only(expected_hours: dict[int, int], sample_size: int) -> bool:
        """The cached store's answers equal the uncached store's, with the expected sample size,
        and its avg query read exactly `expected_hours` (hour -> series) of packed rows."""
        reads.clear()
        avg = loop.run_until_complete(_answer(cached, documents[0]))
        read = packed_reads()
        if avg["sample_size"] != sample_size:
            return False
        assert read == expected_hours
        assert [avg, *answers(cached)[1:]] == answers(uncached)
        return True

    try:
        with running_worker(settings, log_path):
            eventually(lambda: get_json(f"{base}/version")[0] == 200, 60, "worker up", log_path)
            eventually(
                lambda: answers(uncached)[0]["sample_size"] == 540, 120, "540 points", log_path
            )
            # Cold: every hour of every series is read, once.
            reads.clear()
            cold = answers(cached)
            assert packed_reads() == dict.fromkeys(hours, 3 * 2)  # avg and percentile queries
            assert cold == answers(uncached)

            # Warm: once the last version write has landed, nothing is read again.
            def nothing_read() -> bool:
                reads.clear()
                warm = answers(cached)
                return not reads and warm == cold

            eventually(nothing_read, 30, "a repeated query served from the cache", log_path)

            # A late point into the first (closed) hour: only that hour is read again.
            late_at = hours[0] + 10 * MINUTE_MS + 30_000
            _produce(settings, [_point("a", late_at, 1_000.0)])
            eventually(
                lambda: cached_answer_read_only({hours[0]: 3}, 541), 90, "late point", log_path
            )
            avg = loop.run_until_complete(_answer(cached, documents[0]))
            host_a = avg["results"][0]
            assert host_a["tags"]["host"] == ["a"]
            minute_value = dict(host_a["values"])[hours[0] + 10 * MINUTE_MS + 1_000]
            assert minute_value == pytest.approx((float(70 % 23) + 1_000.0) / 2)

            # A delete of host b's first 20 minutes of the second hour: only that hour.
            request = urllib.request.Request(
                f"{base}/datapoints/delete",
                data=json.dumps(
                    {
                        "start_absolute": hours[1],
                        "end_absolute": hours[1] + 20 * MINUTE_MS - 1,
                        "metrics": [{"name": METRIC, "tags": {"host": ["b"]}}],
                    }
                ).encode(),
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == 204
            eventually(lambda: cached_answer_read_only({hours[1]: 3}, 521), 90, "delete", log_path)

        # A lost packed row (removed behind the writers' back, so no version changes) is not
        # seen through the cache; a backfill of its hour rewrites it and its version, and the
        # cached store reads that hour again and answers like the uncached one.
        sink.session.execute(
            f"DELETE FROM {settings.cassandra_keyspace}.{PACKED} "
            "WHERE metric=%s AND row_time=%s AND tags=%s AND ts=%s",
            (METRIC, row_time(hours[2]), tags_text({"host": "c"}), hours[2]),
        )
        before = answers(cached)
        assert before[0]["sample_size"] == 521
        assert answers(uncached)[0]["sample_size"] == 521 - 60
        window = BackfillWindow(
            hours[2], hours[2] + HOUR_MS, default_margin_ms(settings, "metrics")
        )
        loop.run_until_complete(backfill(settings, "metrics", window))
        assert cached_answer_read_only({hours[2]: 3}, 521)
        assert answers(cached) == before
    finally:
        sink.close()
