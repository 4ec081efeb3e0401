"""Cassandra reads of the metrics domain: series, raw points, rollups, indexes, cardinality.

Writes go through connectors.cassandra.CassandraSink (idempotent upserts, retried); this module
reads with the sink's session and the driver's asynchronous execution, many partitions at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

from cassandra.query import PreparedStatement

from connectors.cassandra import CassandraSink
from streams.metrics.model import ROW_WIDTH_MS, tags_from_text
from streams.metrics.query import Plan, SeriesData
from streams.metrics.rollup import Aggregate
from streams.metrics.tables import AGGREGATE_COLUMNS, ALL_TABLES

SCALAR_COLUMNS = [c for c in AGGREGATE_COLUMNS if c != "sketch"]


def row_times(start: int, end: int) -> list[int]:
    """The three-week row starts that overlap [start, end]."""
    first = start - start % ROW_WIDTH_MS
    return list(range(first, end + 1, ROW_WIDTH_MS))


class MetricStore:
    """The metrics tables on one keyspace, opened lazily, with prepared reads."""

    def __init__(self, sink: CassandraSink) -> None:
        self.sink = sink
        self._opened: asyncio.Lock | None = None
        self._ready = False
        self._statements: dict[str, PreparedStatement] = {}

    async def open(self) -> None:
        if self._ready:
            return
        if self._opened is None:
            self._opened = asyncio.Lock()
        async with self._opened:
            if self._ready:
                return
            await self.sink.open()
            for table in ALL_TABLES:
                await self.sink.ensure_table(table)
            self._ready = True

    def _prepared(self, cql: str) -> PreparedStatement:
        statement = self._statements.get(cql)
        if statement is None:
            statement = self.sink.session.prepare(cql.format(ks=self.sink.keyspace))
            self._statements[cql] = statement
        return statement

    async def execute(self, cql: str, parameters: Sequence[Any] = ()) -> list[Any]:
        """All rows of one prepared query (every page), without blocking the event loop."""
        statement = self._prepared(cql)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[Any]] = loop.create_future()
        rows: list[Any] = []
        future = self.sink.session.execute_async(statement, parameters)

        def on_page(page: list[Any]) -> None:
            rows.extend(page)
            if future.has_more_pages:
                future.start_fetching_next_page()
            else:
                loop.call_soon_threadsafe(_settle, done, rows, None)

        def on_error(error: BaseException) -> None:
            loop.call_soon_threadsafe(_settle, done, None, error)

        future.add_callbacks(on_page, on_error)
        return await done

    async def gather(self, cql: str, parameter_sets: Iterable[Sequence[Any]]) -> list[list[Any]]:
        return list(await asyncio.gather(*(self.execute(cql, p) for p in parameter_sets)))

    # --- reads for the rollup agent ------------------------------------------------------------

    async def raw_minute(self, metric: str, tags: str, minute: int) -> list[tuple[int, float]]:
        rows = await self.execute(
            "SELECT ts, value FROM {ks}.raw_points WHERE metric=? AND row_time=? AND tags=? "
            "AND ts>=? AND ts<?",
            (metric, minute - minute % ROW_WIDTH_MS, tags, minute, minute + 60_000),
        )
        return [(row.ts, row.value) for row in rows]

    async def minute_rollups(self, metric: str, tags: str, hour: int) -> dict[int, Aggregate]:
        rows = await self.execute(
            f"SELECT ts, {', '.join(AGGREGATE_COLUMNS)} FROM {{ks}}.rollups_1m "
            "WHERE metric=? AND row_time=? AND tags=? AND ts>=? AND ts<?",
            (metric, hour - hour % ROW_WIDTH_MS, tags, hour, hour + 3_600_000),
        )
        return {row.ts: Aggregate.from_row(row._asdict()) for row in rows}

    async def progress(self, partition: int) -> int:
        rows = await self.execute(
            "SELECT max_event_ms FROM {ks}.rollup_progress WHERE source_partition=?", (partition,)
        )
        return rows[0].max_event_ms if rows else -1

    async def metric_series(self, metric: str) -> list[dict[str, str]]:
        rows = await self.execute("SELECT tags FROM {ks}.metric_series WHERE metric=?", (metric,))
        return [tags_from_text(row.tags) for row in rows]

    async def rejected_count(self, metric: str) -> int:
        rows = await self.execute(
            "SELECT rejected FROM {ks}.metric_cardinality WHERE metric=?", (metric,)
        )
        return rows[0].rejected if rows and rows[0].rejected else 0

    # --- reads for the query API ---------------------------------------------------------------

    async def series_tags(self, metric: str, start: int, end: int) -> list[str]:
        """Canonical tag texts of the series a metric has in the rows overlapping [start, end]."""
        pages = await self.gather(
            "SELECT tags FROM {ks}.row_keys WHERE metric=? AND row_time=?",
            [(metric, row_time) for row_time in row_times(start, end)],
        )
        return sorted({row.tags for page in pages for row in page})

    async def series_data(
        self, metric: str, tag_texts: Sequence[str], plan: Plan
    ) -> list[SeriesData]:
        """Raw points and rollup pieces of each series, as the plan says."""
        return list(
            await asyncio.gather(*(self._one_series(metric, text, plan) for text in tag_texts))
        )

    async def _one_series(self, metric: str, text: str, plan: Plan) -> SeriesData:
        data = SeriesData(tags_from_text(text))
        raw_reads = [
            self.execute(
                "SELECT ts, value FROM {ks}.raw_points WHERE metric=? AND row_time=? AND tags=? "
                "AND ts>=? AND ts<=?",
                (metric, row_time, text, low, high),
            )
            for low, high in plan.raw
            for row_time in row_times(low, high)
        ]
        columns = ", ".join(SCALAR_COLUMNS + (["sketch"] if plan.needs_sketch else []))
        rollup_reads = [
            self.execute(
                f"SELECT ts, {columns} FROM {{ks}}.{table} WHERE metric=? AND row_time=? "
                "AND tags=? AND ts>=? AND ts<=?",
                (metric, row_time, text, low, high),
            )
            for table, ranges in (("rollups_1m", plan.minutes), ("rollups_1h", plan.hours))
            for low, high in ranges
            for row_time in row_times(low, high)
        ]
        raw_pages = await asyncio.gather(*raw_reads)
        rollup_pages = await asyncio.gather(*rollup_reads)
        data.points = sorted((row[0], row[1]) for page in raw_pages for row in page)
        for page in rollup_pages:
            for row in page:
                data.pieces.append(
                    (row.ts, Aggregate.from_row(row._asdict(), with_sketch=plan.needs_sketch))
                )
        return data

    async def strings(self, kind: str, prefix: str = "") -> list[str]:
        rows = await self.execute("SELECT value FROM {ks}.string_index WHERE kind=?", (kind,))
        return [row.value for row in rows if row.value.startswith(prefix)]

    async def cardinality(self) -> list[dict[str, Any]]:
        rows = await self.execute(
            "SELECT metric, series, series_limit, rejected, worst_tag, worst_tag_values, "
            "updated_ms FROM {ks}.metric_cardinality"
        )
        return [row._asdict() for row in rows]


def _settle(
    future: asyncio.Future[list[Any]], rows: list[Any] | None, error: BaseException | None
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(rows or [])
