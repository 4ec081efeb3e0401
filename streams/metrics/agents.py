"""Metric agents: keep the newest point per series; store points, indexes and rollups.

`sinks.points_to_cassandra` is a batch agent (high volume, idempotent): per batch it applies the
cardinality guard, writes raw points (with their retention TTL), then the row-key and string
indexes, minute and hour rollups and the per-partition rollup progress. Offsets are committed
after all of it is in Cassandra, so a crash replays the batch into the same rows.
`sinks.deletes_to_cassandra` applies KairosDB deletes from `metrics.deletes` (deleter.py).
`metrics.track_latest` reads both topics (co-partitioned) and applies points and deletes to the
latest table (`deletes.latest_changes`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from connectors.cassandra import CassandraSink
from streams.app import Decoded, Validator, as_current_event
from streams.bus.batching import BatchItem
from streams.metrics import api
from streams.metrics.deleter import DeleteApplier
from streams.metrics.deletes import latest_changes, validate_delete
from streams.metrics.events import DELETE_SCHEMA, DELETES_TOPIC, POINT_SCHEMA, POINTS_TOPIC
from streams.metrics.model import (
    CardinalityExceeded,
    MetricSeries,
    admit_series,
    cardinality_level,
    latest_entry,
    newest,
    raw_point_row,
    row_time,
    series_key,
    tags_text,
    validate_point,
)
from streams.metrics.rollup import PartitionRollups, SeriesId
from streams.metrics.store import MetricStore
from streams.metrics.tables import (
    CARDINALITY,
    LATEST_TABLE,
    METRIC_NAMES,
    METRIC_SERIES,
    RAW_POINTS,
    ROLLUP_PROGRESS,
    ROLLUPS_HOUR,
    ROLLUPS_MINUTE,
    ROLLUPS_MINUTE_PACKED,
    ROW_KEYS,
    STRING_INDEX,
    TAG_NAMES,
    TAG_VALUES,
    packed_row,
    partition_order,
    rollup_row,
)

if TYPE_CHECKING:
    from streams.app import Runtime

log = logging.getLogger(__name__)
TRACK_LATEST = "metrics.track_latest"
POINTS_TO_CASSANDRA = "sinks.points_to_cassandra"
DELETES_TO_CASSANDRA = "sinks.deletes_to_cassandra"
# Rows of one Cassandra partition go as UNLOGGED batches of about this size: one request for
# many rows (server warns above 5 KiB by default, fails at 50 KiB).
PARTITION_BATCH_BYTES = 16_384


@dataclass
class MetricsStats:
    """Counters of this worker's metric pipeline, shown at /metrics/status."""

    late_points: int = 0
    rejected_series: int = 0
    rollup_rows: int = 0
    warned: set[str] = field(default_factory=set)


def register(runtime: Runtime) -> None:
    latest = runtime.table(LATEST_TABLE)
    points = runtime.topic(POINTS_TOPIC)
    latest_guard = LatestGuard(latest, runtime.settings.metrics_series_limit)
    tracker = LatestTracker(latest, latest_guard, runtime.kafka_topic_name(POINTS_TOPIC))
    sources = latest_sources(runtime)
    # One Faust topic over both names: the agent reads each partition of both in offset order,
    # and Faust's assignor gives both topics' partition n to the same worker (co-subscribed
    # topics with equal partition counts are co-partitioned), the worker that owns the
    # table's partition n.
    points_and_deletes = runtime.app.topic(
        *sources,
        key_serializer="raw",
        value_serializer="raw",
        partitions=runtime.topology.topic(POINTS_TOPIC).partitions,
    )

    @runtime.app.on_partitions_revoked.connect
    async def forget_latest_series(*args: object, **kwargs: object) -> None:
        latest_guard.forget()

    @runtime.app.agent(points_and_deletes, name=TRACK_LATEST)
    async def track_latest(stream):  # type: ignore[no-untyped-def]
        async for batch in runtime.decoded_batches(stream, TRACK_LATEST, sources):
            tracker.apply(batch)

    settings = runtime.settings
    sink = CassandraSink(
        settings.cassandra_contact_points,
        settings.cassandra_keyspace,
        datacenter=settings.cassandra_datacenter,
    )
    store = MetricStore(sink, cache_bytes=settings.metrics_query_cache_mb * 2**20)
    writer = PointWriter(runtime, store)
    runtime.context["metrics.stats"] = writer.stats

    @runtime.batch_agent(
        POINTS_TO_CASSANDRA,
        POINTS_TOPIC,
        POINT_SCHEMA,
        validate=validate_point,
        on_revoked=writer.forget,
    )
    async def points_to_cassandra(batch: list[BatchItem]) -> None:
        await writer.write(batch)

    deleter = DeleteApplier(store, writer)

    @runtime.batch_agent(
        DELETES_TO_CASSANDRA, DELETES_TOPIC, DELETE_SCHEMA, validate=validate_delete
    )
    async def deletes_to_cassandra(batch: list[BatchItem]) -> None:
        for item in batch:
            await deleter.apply(item.record)

    @runtime.app.on_before_shutdown.connect
    async def close_sink(app: object, **kwargs: object) -> None:
        sink.close()

    api.register(runtime, latest, points, store)


def latest_sources(runtime: Runtime) -> dict[str, tuple[str, Validator]]:
    """The Kafka topics `metrics.track_latest` reads, with each one's schema and validator.

    Points and deletes must be co-partitioned (same partition count and key, both produced with
    the murmur2 partitioner: aiokafka's default, and `murmur2_random` in the SDK), so a delete
    of a metric is read by the worker that holds the metric's latest entries.
    """
    spec_points = runtime.topology.topic(POINTS_TOPIC)
    spec_deletes = runtime.topology.topic(DELETES_TOPIC)
    if (spec_points.partitions, spec_points.key) != (spec_deletes.partitions, spec_deletes.key):
        raise ValueError(
            f"{POINTS_TOPIC} and {DELETES_TOPIC} must be co-partitioned (same partitions and "
            f"key) for {TRACK_LATEST}; topology.yaml declares {spec_points.partitions} "
            f"({spec_points.key!r}) and {spec_deletes.partitions} ({spec_deletes.key!r})"
        )
    return {
        runtime.kafka_topic_name(POINTS_TOPIC): (POINT_SCHEMA, validate_point),
        runtime.kafka_topic_name(DELETES_TOPIC): (DELETE_SCHEMA, validate_delete),
    }


def accepted_ms(event: Any) -> int:
    """When the bus accepted a record: its Kafka timestamp (Faust gives seconds), in ms."""
    timestamp = event.message.timestamp
    return round(timestamp * 1000) if timestamp else 0


class LatestTracker:
    """The one writer of `metrics.latest`: points and deletes in the order they are read.

    Every table write is made with its record's event as the current event, so the changelog
    and store partition is the record's (points and deletes of a metric share it).
    """

    def __init__(self, latest: Any, guard: LatestGuard, points_topic: str) -> None:
        self.latest = latest
        self.guard = guard
        self.points_topic = points_topic
        self.deletes = 0

    def apply(self, batch: list[Decoded]) -> None:
        points: list[Decoded] = []
        for item in batch:
            if item.event.message.topic == self.points_topic:
                points.append(item)
                continue
            self.apply_points(points)
            points = []
            self.apply_delete(item)
        self.apply_points(points)

    def apply_points(self, items: list[Decoded]) -> None:
        # One table write (and changelog record) per series per run of points, not per point.
        newest_in_batch: dict[str, Decoded] = {}
        for item in items:
            point = item.record
            if not self.guard.admits(point):
                continue
            key = series_key(point["name"], point["tags"])
            best = newest_in_batch.get(key)
            if newest(best.record if best is not None else None, point):
                newest_in_batch[key] = item
        for key, item in newest_in_batch.items():
            if newest(self.latest.get(key), item.record):
                as_current_event(item)
                self.latest[key] = latest_entry(item.record, accepted_ms(item.event))

    def apply_delete(self, item: Decoded) -> None:
        delete = item.record
        prefix = f"{delete['metric']}|"
        changes = latest_changes(
            delete, [(k, v) for k, v in self.latest.items() if k.startswith(prefix)]
        )
        if not changes:
            return
        as_current_event(item)
        for key, entry in changes.hidden.items():
            self.latest[key] = entry
        for key in changes.dropped:
            del self.latest[key]
        if changes.dropped:
            self.guard.forget_metric(delete["metric"])
        self.deletes += 1
        log.info(
            "delete %s: %d latest entries of %s hidden, %d dropped",
            delete["delete_id"],
            len(changes.hidden),
            delete["metric"],
            len(changes.dropped),
        )


class LatestGuard:
    """The cardinality guard of the latest-point table: the same rule, the same answers.

    Points of a metric share a partition and both agents see them in offset order, so applying
    `admit_series` here admits exactly the series the batch agent stores (and dead-letters; this
    agent skips the rest). The admitted series of a metric are the table's keys for it, so the
    memory is rebuilt from the table after a restart or rebalance.
    """

    def __init__(self, latest: Any, limit: int) -> None:
        self.latest = latest
        self.limit = limit
        self.series: dict[str, MetricSeries] = {}
        self.rejected = 0

    def forget(self) -> None:
        self.series.clear()

    def forget_metric(self, metric: str) -> None:
        """Series of the metric were dropped from the table: read its keys again when needed."""
        self.series.pop(metric, None)

    def admits(self, point: dict[str, Any]) -> bool:
        metric = point["name"]
        known = self.series.get(metric)
        if known is None:
            prefix = f"{metric}|"
            known = MetricSeries(
                metric,
                [entry["tags"] for key, entry in self.latest.items() if key.startswith(prefix)],
            )
            self.series[metric] = known
        try:
            admit_series(known, point["tags"], self.limit)
        except CardinalityExceeded:
            self.rejected += 1
            return False
        return True


class PointWriter:
    """The batch handler's state: known series per metric, rollups per partition, indexes."""

    def __init__(self, runtime: Runtime, store: MetricStore) -> None:
        self.runtime = runtime
        self.store = store
        self.limit = runtime.settings.metrics_series_limit
        self.retention = runtime.settings.metrics_raw_retention_s
        self.grace_ms = int(runtime.settings.metrics_rollup_grace_s * 1000)
        self.series: dict[str, MetricSeries] = {}
        self.metric_partition: dict[str, int] = {}
        self.rollups: dict[int, PartitionRollups] = {}
        self.indexed_strings: set[tuple[str, str]] = set()
        self.indexed_rows: set[tuple[str, int, str]] = set()
        self.stats = MetricsStats()
        # Held while a batch is written or a delete applied, so neither sees the other half done.
        self.lock = asyncio.Lock()

    def forget_series(self, series: set[SeriesId], start: int, end: int) -> None:
        """A delete changed these series in [start, end]: rollup memory is read again."""
        for state in self.rollups.values():
            state.forget(series, start, end)
        self.indexed_rows = {key for key in self.indexed_rows if (key[0], key[2]) not in series}

    def forget_metric(self, metric: str) -> None:
        """A metric was deleted: its series count starts again and its name is indexed anew."""
        self.series.pop(metric, None)
        self.metric_partition.pop(metric, None)
        self.indexed_strings.discard((METRIC_NAMES, metric))

    async def forget(self, partitions: list[int]) -> None:
        """Partitions went to another worker: what it writes there is no longer known here."""
        lost = set(partitions)
        for partition in lost:
            self.rollups.pop(partition, None)
        for metric in [m for m, p in self.metric_partition.items() if p in lost]:
            self.series.pop(metric, None)
            del self.metric_partition[metric]

    async def write(self, batch: list[BatchItem]) -> None:
        await self.store.open()
        async with self.lock:
            await self._write(batch)

    async def _write(self, batch: list[BatchItem]) -> None:
        accepted, changed_metrics = await self._guard(batch)
        sink = self.store.sink
        by_ttl: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for item in accepted:
            record = item.record
            by_ttl[record["ttl_seconds"] or self.retention].append(raw_point_row(record))
        for ttl, rows in by_ttl.items():
            rows.sort(key=partition_order)
            await sink.upsert(
                RAW_POINTS.name, rows, ttl_seconds=ttl, partition_batch_bytes=PARTITION_BATCH_BYTES
            )
        await asyncio.gather(
            self._write_indexes(accepted),
            self._write_rollups(accepted),
            self._write_cardinality(changed_metrics),
        )

    async def _guard(self, batch: list[BatchItem]) -> tuple[list[BatchItem], set[str]]:
        """Points of known series, or of new series within the limit; the rest dead-lettered."""
        missing = sorted({item.record["name"] for item in batch} - self.series.keys())
        loaded = await asyncio.gather(*(self.store.metric_series(m) for m in missing))
        rejected_before = await asyncio.gather(*(self.store.rejected_count(m) for m in missing))
        for metric, tag_sets, rejected in zip(missing, loaded, rejected_before, strict=True):
            self.series[metric] = MetricSeries(metric, tag_sets)
            self.series[metric].rejected = rejected
        accepted: list[BatchItem] = []
        new_series: list[dict[str, str]] = []
        changed: set[str] = set()
        for item in batch:
            record = item.record
            metric = record["name"]
            self.metric_partition[metric] = item.partition
            known = self.series[metric]
            try:
                if admit_series(known, record["tags"], self.limit):
                    new_series.append({"metric": metric, "tags": tags_text(record["tags"])})
                    changed.add(metric)
            except CardinalityExceeded as error:
                changed.add(metric)
                self.stats.rejected_series += 1
                await self.runtime.dead_letter(
                    item.origin, POINTS_TO_CASSANDRA, error.error_type, str(error)
                )
                continue
            accepted.append(item)
        for metric in changed:
            known = self.series[metric]
            level = cardinality_level(len(known.series), self.limit)
            if level != "ok" and metric not in self.stats.warned:
                self.stats.warned.add(metric)
                worst, values = known.worst_tag()
                log.warning(
                    "metric %r has %d of its %d series (%s); tag %r has %d values",
                    metric,
                    len(known.series),
                    self.limit,
                    level,
                    worst,
                    values,
                )
        await self.store.sink.upsert(METRIC_SERIES.name, new_series)
        return accepted, changed

    async def _write_indexes(self, accepted: list[BatchItem]) -> None:
        strings: list[dict[str, str]] = []
        rows: list[dict[str, Any]] = []
        for item in accepted:
            record = item.record
            name = record["name"]
            tags = record["tags"]
            row_key = (name, row_time(record["timestamp_ms"]), tags_text(tags))
            if row_key in self.indexed_rows:
                continue
            self.indexed_rows.add(row_key)
            rows.append({"metric": row_key[0], "row_time": row_key[1], "tags": row_key[2]})
            wanted = [(METRIC_NAMES, name)]
            wanted += [(TAG_NAMES, key) for key in tags]
            wanted += [(TAG_VALUES, value) for value in tags.values()]
            for kind, value in wanted:
                if (kind, value) not in self.indexed_strings:
                    self.indexed_strings.add((kind, value))
                    strings.append({"kind": kind, "value": value})
        await self.store.sink.upsert(ROW_KEYS.name, rows)
        await self.store.sink.upsert(STRING_INDEX.name, strings)

    async def _write_rollups(self, accepted: list[BatchItem]) -> None:
        by_partition: dict[int, list[tuple[SeriesId, int, float]]] = defaultdict(list)
        for item in accepted:
            record = item.record
            series = (record["name"], tags_text(record["tags"]))
            by_partition[item.partition].append((series, record["timestamp_ms"], record["value"]))
        await asyncio.gather(*(self._roll(p, points) for p, points in by_partition.items()))

    async def _roll(self, partition: int, points: list[tuple[SeriesId, int, float]]) -> None:
        state = self.rollups.get(partition)
        if state is None:
            known_until = await self.store.progress(partition)
            state = PartitionRollups(self.grace_ms, known_until=known_until)
            self.rollups[partition] = state
        minute_keys = state.minutes_to_load((series, ts) for series, ts, _ in points)
        minute_points = await asyncio.gather(
            *(self.store.raw_minute(s[0], s[1], minute) for s, minute in minute_keys)
        )
        for key, loaded in zip(minute_keys, minute_points, strict=True):
            state.load_minute(key, loaded)
        touched = {(series, ts - ts % 60_000) for series, ts, _ in points}
        hour_keys = state.hours_to_load(touched)
        hour_minutes = await asyncio.gather(
            *(self.store.minute_rollups(s[0], s[1], hour) for s, hour in hour_keys)
        )
        for key, minutes in zip(hour_keys, hour_minutes, strict=True):
            state.load_hour(key, minutes)
        changes = state.apply(points)
        self.stats.late_points += changes.late_points
        minute_rows = [rollup_row(key, aggregate) for key, aggregate in changes.minutes.items()]
        hour_rows = [rollup_row(key, aggregate) for key, aggregate in changes.hours.items()]
        packed_rows = [packed_row(key, minutes) for key, minutes in changes.hour_minutes.items()]
        for rows in (minute_rows, hour_rows, packed_rows):
            rows.sort(key=partition_order)
        sink = self.store.sink
        await asyncio.gather(
            *(
                sink.upsert(table.name, rows, partition_batch_bytes=PARTITION_BATCH_BYTES)
                for table, rows in (
                    (ROLLUPS_MINUTE, minute_rows),
                    (ROLLUPS_HOUR, hour_rows),
                    (ROLLUPS_MINUTE_PACKED, packed_rows),
                )
            )
        )
        # After the rows are acknowledged and before the progress that would skip them on replay.
        await self.store.bump_versions((series[0], hour) for series, hour in changes.hour_minutes)
        await sink.upsert(
            ROLLUP_PROGRESS.name,
            [{"source_partition": partition, "max_event_ms": state.max_event_ms}],
        )
        self.stats.rollup_rows += len(minute_rows) + len(hour_rows)

    async def _write_cardinality(self, metrics: set[str]) -> None:
        rows = []
        now = int(time.time() * 1000)
        for metric in sorted(metrics):
            known = self.series[metric]
            worst, values = known.worst_tag()
            rows.append(
                {
                    "metric": metric,
                    "series": len(known.series),
                    "series_limit": self.limit,
                    "rejected": known.rejected,
                    "worst_tag": worst,
                    "worst_tag_values": values,
                    "updated_ms": now,
                }
            )
        await self.store.sink.upsert(CARDINALITY.name, rows)
