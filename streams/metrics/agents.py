"""Metric agents: keep the newest point per series; write raw points to Cassandra."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from connectors.cassandra import CassandraSink
from streams.bus.batching import BatchItem
from streams.metrics import api
from streams.metrics.events import POINT_SCHEMA, POINTS_TOPIC
from streams.metrics.model import latest_entry, newest, raw_point_row, series_key, validate_point
from streams.metrics.tables import LATEST_TABLE, RAW_POINTS

if TYPE_CHECKING:
    from streams.app import Runtime

TRACK_LATEST = "metrics.track_latest"
POINTS_TO_CASSANDRA = "sinks.points_to_cassandra"


def register(runtime: Runtime) -> None:
    from streams.app import as_current_event

    latest = runtime.table(LATEST_TABLE)
    points = runtime.topic(POINTS_TOPIC)

    @runtime.app.agent(points, name=TRACK_LATEST)
    async def track_latest(stream):  # type: ignore[no-untyped-def]
        async for batch in runtime.decoded_batches(
            stream, TRACK_LATEST, POINT_SCHEMA, validate=validate_point
        ):
            for item in batch:
                point = item.record
                key = series_key(point["name"], point["tags"])
                if newest(latest.get(key), point):
                    as_current_event(item)
                    latest[key] = latest_entry(point)

    sink = CassandraSink(
        runtime.settings.cassandra_contact_points,
        runtime.settings.cassandra_keyspace,
        datacenter=runtime.settings.cassandra_datacenter,
    )
    ready = asyncio.Event()

    @runtime.batch_agent(POINTS_TO_CASSANDRA, POINTS_TOPIC, POINT_SCHEMA, validate=validate_point)
    async def points_to_cassandra(batch: list[BatchItem]) -> None:
        if not ready.is_set():
            await sink.open()
            await sink.ensure_table(RAW_POINTS)
            ready.set()
        by_ttl: dict[int, list[dict]] = {}
        for item in batch:
            by_ttl.setdefault(item.record["ttl_seconds"], []).append(raw_point_row(item.record))
        for ttl, rows in by_ttl.items():
            await sink.upsert(RAW_POINTS.name, rows, ttl_seconds=ttl)

    @runtime.app.on_before_shutdown.connect
    async def close_sink(app: object, **kwargs: object) -> None:
        sink.close()

    api.register(runtime, latest, points)
