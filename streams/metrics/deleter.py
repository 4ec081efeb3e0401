"""Applying metric deletes: raw points, row-key index, minute and hour rollups in Cassandra.

Every delete and rollup rewrite is stamped with the time the request was accepted
(`USING TIMESTAMP`), so a delete removes what was written before it and nothing written after
it: replaying `metrics.deletes` later does not delete points ingested since.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cassandra import OperationTimedOut, ReadTimeout, Unavailable, WriteTimeout
from cassandra.cluster import NoHostAvailable

from connectors.retry import retry_async
from streams.metrics.deletes import (
    matches,
    partial_minutes,
    rebuild_hour,
    row_delete,
    stored_range,
)
from streams.metrics.model import tags_from_text
from streams.metrics.rollup import hour_of
from streams.metrics.tables import (
    RAW_POINTS,
    ROLLUPS_HOUR,
    ROLLUPS_MINUTE,
    ROLLUPS_MINUTE_PACKED,
    packed_row,
    rollup_row,
)

if TYPE_CHECKING:
    from streams.metrics.agents import PointWriter
    from streams.metrics.store import MetricStore

log = logging.getLogger(__name__)
RETRYABLE = (NoHostAvailable, OperationTimedOut, Unavailable, WriteTimeout, ReadTimeout)


class DeleteApplier:
    """Applies MetricDelete records; the local point writer forgets what they changed."""

    def __init__(self, store: MetricStore, writer: PointWriter) -> None:
        self.store = store
        self.writer = writer
        self.applied = 0

    async def apply(self, record: Mapping[str, Any]) -> int:
        """Apply one delete (idempotent, retried while Cassandra is away); series touched."""
        await self.store.open()
        return await retry_async(
            lambda: self._apply(record),
            lambda error: isinstance(error, RETRYABLE),
            self.store.sink.backoff,
            f"delete {record['delete_id']} of {record['metric']}",
        )

    async def _apply(self, record: Mapping[str, Any]) -> int:
        metric = record["metric"]
        start, end = stored_range(record["start_ms"], record["end_ms"])
        stamp_us = record["requested_ms"] * 1000
        async with self.writer.lock:
            rows = [
                (row_time, text)
                for row_time, text in await self.store.series_rows(metric, start, end)
                if matches(record["tags"], tags_from_text(text))
            ]
            await asyncio.gather(
                *(self._row((metric, rt, text), start, end, stamp_us) for rt, text in rows)
            )
            # Only hours with a version can be cached, and one created after this read was
            # created after the rows above changed; so bumping the existing ones is enough.
            versions = await self.store.hour_versions(metric, hour_of(start), hour_of(end))
            await self.store.bump_versions((metric, hour) for hour in versions)
            if record["whole_metric"]:
                await self.store.forget_metric(metric, stamp_us)
                self.writer.forget_metric(metric)
            self.writer.forget_series({(metric, text) for _, text in rows}, start, end)
        self.applied += 1
        log.info(
            "delete %s: %s [%d, %d] in %d series rows",
            record["delete_id"],
            metric,
            start,
            end,
            len(rows),
        )
        return len(rows)

    async def _row(self, row: tuple[str, int, str], start: int, end: int, stamp_us: int) -> None:
        metric, row_time, text = row
        plan = row_delete(row_time, start, end)
        if plan is None:
            return
        store = self.store
        before = {
            hour: await store.minute_rollups(metric, text, hour) for hour in plan.partial_hours
        }
        deletes = [store.delete_range(RAW_POINTS.name, row, plan.start, plan.end, stamp_us)]
        if plan.whole_minutes:
            low, high = plan.whole_minutes
            deletes.append(store.delete_range(ROLLUPS_MINUTE.name, row, low, high, stamp_us))
        if plan.whole_hours:
            low, high = plan.whole_hours
            for table in (ROLLUPS_HOUR, ROLLUPS_MINUTE_PACKED):
                deletes.append(store.delete_range(table.name, row, low, high, stamp_us))
        await asyncio.gather(*deletes)
        for hour in plan.partial_hours:
            remaining = {
                minute: await store.raw_minute(metric, text, minute)
                for minute in partial_minutes(hour, plan.start, plan.end)
            }
            rebuilt = rebuild_hour(hour, before[hour], plan.start, plan.end, remaining)
            series = (metric, text)
            writes = [
                store.sink.upsert(
                    ROLLUPS_MINUTE.name,
                    [rollup_row((series, m), a) for m, a in sorted(rebuilt.rewritten.items())],
                ),
                *(
                    store.delete_range(ROLLUPS_MINUTE.name, row, minute, minute, stamp_us)
                    for minute in rebuilt.removed
                ),
            ]
            if rebuilt.hour is not None:
                writes.append(
                    store.sink.upsert(ROLLUPS_HOUR.name, [rollup_row((series, hour), rebuilt.hour)])
                )
                writes.append(
                    store.sink.upsert(
                        ROLLUPS_MINUTE_PACKED.name, [packed_row((series, hour), rebuilt.minutes)]
                    )
                )
            else:
                for table in (ROLLUPS_HOUR, ROLLUPS_MINUTE_PACKED):
                    writes.append(store.delete_range(table.name, row, hour, hour, stamp_us))
            await asyncio.gather(*writes)
        if plan.whole_row:
            await store.delete_row_key(row, stamp_us)
