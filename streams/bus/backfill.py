"""`stackstream backfill`: recompute CAT reports or metric rollups of a time range from the source
topic and upsert them into Cassandra.

The range is found with the broker's time index (`replay.plan_range`), widened by a margin;
`replay.RangeReader` reads it without joining any consumer group, so live workers are not
disturbed; `backfill_model` rebuilds the rows with the domains' model functions; the writes are
upserts keyed by the rows' identity, so running a backfill twice, or over rows live processing
wrote, leaves one row per key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from connectors.cassandra import CassandraSink
from streams.bus.backfill_model import (
    BackfillInputError,
    BackfillWindow,
    MetricsRebuild,
    RebuildCounts,
    TracingRebuild,
)
from streams.bus.batching import written_us
from streams.bus.codec import AvroCodec, CodecError, SchemaRegistry
from streams.bus.replay import RangeReader, plan_range
from streams.bus.replay_model import ReplayPlan
from streams.metrics.events import POINT_SCHEMA, POINTS_TOPIC
from streams.metrics.model import row_time, tags_from_text
from streams.metrics.rollup import HOUR_MS
from streams.metrics.store import MetricStore
from streams.metrics.tables import (
    METRIC_NAMES,
    METRIC_SERIES,
    ROLLUPS_HOUR,
    ROLLUPS_MINUTE,
    ROLLUPS_MINUTE_PACKED,
    ROW_KEYS,
    STRING_INDEX,
    TAG_NAMES,
    TAG_VALUES,
    packed_row,
    rollup_row,
)
from streams.settings import Settings
from streams.tracing.agents import ReportStore, report_options
from streams.tracing.events import MESSAGES_TOPIC, TREE_SCHEMA
from streams.tracing.tables import MINUTES, stored_row

Progress = Callable[[int], None]
SOURCES = {"tracing": (MESSAGES_TOPIC, TREE_SCHEMA), "metrics": (POINTS_TOPIC, POINT_SCHEMA)}

PACKED_READS_AT_ONCE = 256


def default_margin_ms(settings: Settings, domain: str) -> int:
    """How far around the range to read: the domain's grace period plus five minutes for
    records produced late or with a skewed clock."""
    grace = settings.tracing_grace_s if domain == "tracing" else settings.metrics_rollup_grace_s
    return int(grace * 1000) + 5 * 60_000


def plan_backfill(settings: Settings, domain: str, window: BackfillWindow) -> ReplayPlan:
    """The source records to read, per partition, through the broker's time index."""
    if domain not in SOURCES:
        raise BackfillInputError(f"--domain must be one of {', '.join(SOURCES)}, not {domain!r}")
    topic, _ = SOURCES[domain]
    return plan_range(
        settings,
        settings.topic_prefix + topic,
        from_ms=window.read_from_ms,
        to_ms=window.read_to_ms,
        spec=f"backfill {domain} {window.from_ms}..{window.to_ms}",
    )


@dataclass
class BackfillResult:
    domain: str
    plan: ReplayPlan
    counts: RebuildCounts
    undecodable: int = 0
    written: bool = False


Decoded = tuple[int, int, dict[str, Any], int | None]


def _decoded(
    settings: Settings, plan: ReplayPlan, schema: str, progress: Progress | None
) -> tuple[list[list[Decoded]], int]:
    """The plan's records, decoded, per batch: (partition, offset, record, written µs)."""
    codec = AvroCodec(SchemaRegistry.from_directory(settings.schemas_dir))
    decode = codec.decoder(schema)
    batches: list[list[Decoded]] = []
    undecodable = 0
    for messages in RangeReader(settings, plan).batches():
        batch = []
        for message in messages:
            try:
                record = decode(message.value())
                batch.append((message.partition(), message.offset(), record, written_us(message)))
            except CodecError:
                undecodable += 1
        batches.append(batch)
        if progress is not None:
            progress(len(messages))
    return batches, undecodable


async def backfill(
    settings: Settings,
    domain: str,
    window: BackfillWindow,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> BackfillResult:
    """Rebuild the domain's rows of the window and upsert them (unless `dry_run`)."""
    plan = plan_backfill(settings, domain, window)
    sink = CassandraSink(
        settings.cassandra_contact_points,
        settings.cassandra_keyspace,
        datacenter=settings.cassandra_datacenter,
    )
    try:
        if domain == "tracing":
            counts, undecodable = await _tracing(settings, sink, plan, window, dry_run, progress)
        else:
            counts, undecodable = await _metrics(settings, sink, plan, window, dry_run, progress)
    finally:
        sink.close()
    return BackfillResult(domain, plan, counts, undecodable, written=not dry_run)


async def _tracing(
    settings: Settings,
    sink: CassandraSink,
    plan: ReplayPlan,
    window: BackfillWindow,
    dry_run: bool,
    progress: Progress | None,
) -> tuple[RebuildCounts, int]:
    rebuild = TracingRebuild(window, int(settings.tracing_grace_s * 1000), report_options(settings))
    batches, undecodable = await asyncio.to_thread(_decoded, settings, plan, TREE_SCHEMA, progress)
    for batch in batches:
        for partition, offset, tree, written in batch:
            rebuild.add(partition, offset, tree, written)
    rows = rebuild.rows()
    if not dry_run:
        store = ReportStore(sink)
        await store.open()
        await store.write_rows(
            "minute", [stored_row(row, last_offset) for row, last_offset in rows.minutes]
        )
        await store.write_rows("hour", [stored_row(row, -1) for row in rows.hours])
        await sink.upsert(MINUTES.name, rows.index)
    return rebuild.counts, undecodable


async def _metrics(
    settings: Settings,
    sink: CassandraSink,
    plan: ReplayPlan,
    window: BackfillWindow,
    dry_run: bool,
    progress: Progress | None,
) -> tuple[RebuildCounts, int]:
    store = MetricStore(sink)
    await store.open()
    known: dict[str, list[dict[str, str]]] = {}
    rebuild = MetricsRebuild(window, settings.metrics_series_limit, lambda m: known[m])
    batches, undecodable = await asyncio.to_thread(_decoded, settings, plan, POINT_SCHEMA, progress)
    for batch in batches:
        points = [point for _, _, point, _ in batch]
        missing = sorted(rebuild.metrics_to_load(points) - known.keys())
        for metric, tag_sets in zip(
            missing, await asyncio.gather(*(store.metric_series(m) for m in missing)), strict=True
        ):
            known[metric] = tag_sets
        for point in points:
            rebuild.add(point)
    rows = rebuild.rows()
    if not dry_run:

        def rollup_rows(entries: list[Any]) -> list[dict[str, Any]]:
            return [rollup_row(((m, t), start), aggregate) for m, t, start, aggregate in entries]

        await sink.upsert(
            METRIC_SERIES.name, [{"metric": m, "tags": t} for m, t in rows.new_series]
        )
        await sink.upsert(ROLLUPS_MINUTE.name, rollup_rows(rows.minutes))
        await sink.upsert(ROLLUPS_HOUR.name, rollup_rows(rows.hours))
        # A packed row holds a whole series-hour, so it is rebuilt from the stored minutes of
        # that hour (the backfilled ones and, for an hour the range cuts, the others).
        series_hours = sorted({(m, t, start - start % HOUR_MS) for m, t, start, _ in rows.minutes})
        for first in range(0, len(series_hours), PACKED_READS_AT_ONCE):
            chunk = series_hours[first : first + PACKED_READS_AT_ONCE]
            hour_minutes = await asyncio.gather(
                *(store.minute_rollups(m, t, hour) for m, t, hour in chunk)
            )
            await sink.upsert(
                ROLLUPS_MINUTE_PACKED.name,
                [
                    packed_row(((m, t), hour), minutes)
                    for (m, t, hour), minutes in zip(chunk, hour_minutes, strict=True)
                ],
            )
        await store.bump_versions(
            {(m, hour) for m, _, hour in series_hours}
            | {(m, start) for m, _, start, _ in rows.hours}
        )
        row_keys = {(m, row_time(start), t) for m, t, start, _ in rows.minutes}
        await sink.upsert(
            ROW_KEYS.name, [{"metric": m, "row_time": r, "tags": t} for m, r, t in row_keys]
        )
        strings: set[tuple[str, str]] = set()
        for metric, tags, _, _ in rows.minutes:
            strings.add((METRIC_NAMES, metric))
            for key, value in tags_from_text(tags).items():
                strings.update({(TAG_NAMES, key), (TAG_VALUES, value)})
        await sink.upsert(STRING_INDEX.name, [{"kind": k, "value": v} for k, v in strings])
    return rebuild.counts, undecodable
