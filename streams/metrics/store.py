"""Cassandra reads of the metrics domain: series, raw points, rollups, indexes, cardinality.

Writes go through connectors.cassandra.CassandraSink (idempotent upserts, retried); this module
reads with the sink's session and the driver's asynchronous execution, many partitions at once.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from cassandra.query import PreparedStatement

from connectors.cassandra import CassandraSink, is_retryable
from connectors.retry import retry_async
from streams.metrics.cache import (
    ColumnsFor,
    HourCache,
    HourRead,
    HourSeries,
    hours_of,
    plan_hours,
    range_groups,
    rows_by_hour,
)
from streams.metrics.columns import (
    FIELDS,
    SKETCH,
    Columns,
    MissingSketchColumns,
    packed_columns_for,
    unpack_minutes,
)
from streams.metrics.model import ROW_WIDTH_MS, tags_from_text
from streams.metrics.query import Plan, SeriesData
from streams.metrics.rollup import Aggregate, hour_of
from streams.metrics.tables import (
    AGGREGATE_COLUMNS,
    ALL_TABLES,
    METRIC_NAMES,
    ROLLUP_HOUR_VERSIONS,
    ROLLUPS_HOUR,
    ROLLUPS_MINUTE_PACKED,
)

SCALAR_COLUMNS = [c for c in AGGREGATE_COLUMNS if c != "sketch"]
# The rollup reads of a query, per series and hour range; `{columns}` is the fields it needs.
PACKED_MINUTES_CQL = (
    "SELECT tags, ts, {columns} FROM {{ks}}.rollups_1m_packed WHERE metric=? "
    "AND row_time=? AND tags IN ? AND ts>=? AND ts<=?"
)
HOUR_ROWS_CQL = (
    "SELECT tags, ts, {columns} FROM {{ks}}.rollups_1h WHERE metric=? "
    "AND row_time=? AND tags IN ? AND ts>=? AND ts<=?"
)
# Series partitions per read request (`tags IN ?`); see MetricStore.series_data.
IN_CHUNK = 10
ROW_TIME_CHUNK = 100
# Version increments sent at once (a whole-metric delete may touch thousands of hours).
VERSION_BUMPS_AT_ONCE = 256
# Called with (table, metric, hour start, series) for every series-hour the cached query path
# reads from Cassandra: how tests see what the cache saved.
ReadHook = Callable[[str, str, int, int], None]


def row_times(start: int, end: int) -> list[int]:
    """The three-week row starts that overlap [start, end]."""
    first = start - start % ROW_WIDTH_MS
    return list(range(first, end + 1, ROW_WIDTH_MS))


class MetricStore:
    """The metrics tables on one keyspace, opened lazily, with prepared reads.

    With `cache_bytes` > 0, rollup queries keep the rows of hours in memory (cache.py) and read
    from Cassandra only the hours whose version changed since.
    """

    def __init__(self, sink: CassandraSink, *, cache_bytes: int = 0) -> None:
        self.sink = sink
        self._opened: asyncio.Lock | None = None
        self._ready = False
        self._statements: dict[str, PreparedStatement] = {}
        self.cache = HourCache(cache_bytes)
        self.read_hook: ReadHook | None = None

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
            create_versions = ROLLUP_HOUR_VERSIONS.create_cql(self.sink.keyspace)
            await self.sink.retrying(
                lambda: self.sink.session.execute(create_versions), "create rollup_hour_versions"
            )
            self._ready = True

    def _prepared(self, cql: str) -> PreparedStatement:
        statement = self._statements.get(cql)
        if statement is None:
            statement = self.sink.session.prepare(cql.format(ks=self.sink.keyspace))
            self._statements[cql] = statement
        return statement

    async def execute(self, cql: str, parameters: Sequence[Any] = ()) -> list[Any]:
        """All rows of one prepared query (every page), without blocking the event loop;
        retried through outages, since the agents read before they change state."""
        return await retry_async(
            lambda: self._execute_once(cql, parameters),
            is_retryable,
            self.sink.backoff,
            "metrics query",
        )

    async def _execute_once(self, cql: str, parameters: Sequence[Any]) -> list[Any]:
        statement = self._prepared(cql)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[Any]] = loop.create_future()
        rows: list[Any] = []
        future = self.sink.session.execute_async(statement, parameters)

        def on_page(page: list[Any] | None) -> None:
            rows.extend(page or ())  # writes (DELETE) answer no rows at all
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

    # --- rollup hour versions (cache.py) ----------------------------------------------------------

    async def bump_versions(self, metric_hours: Iterable[tuple[str, int]]) -> None:
        """Increment the version of each (metric, hour start): call it after the rollup rows of
        those hours are acknowledged, so that cached copies of them are read again."""
        keys = sorted(set(metric_hours))
        for first in range(0, len(keys), VERSION_BUMPS_AT_ONCE):
            await self.gather(
                "UPDATE {ks}.rollup_hour_versions SET version = version + 1 "
                "WHERE metric=? AND hour=?",
                keys[first : first + VERSION_BUMPS_AT_ONCE],
            )

    async def hour_versions(self, metric: str, first_hour: int, last_hour: int) -> dict[int, int]:
        """The versions of a metric's hours in [first_hour, last_hour] that have one."""
        rows = await self.execute(
            "SELECT hour, version FROM {ks}.rollup_hour_versions "
            "WHERE metric=? AND hour>=? AND hour<=?",
            (metric, first_hour, last_hour),
        )
        return {row.hour: row.version for row in rows}

    # --- deletes ---------------------------------------------------------------------------------

    async def series_rows(self, metric: str, start: int, end: int) -> list[tuple[int, str]]:
        """(row time, tag text) of every series row of a metric overlapping [start, end]."""
        times = row_times(start, end)
        pages = await self.gather(
            "SELECT row_time, tags FROM {ks}.row_keys WHERE metric=? AND row_time IN ?",
            [(metric, times[i : i + ROW_TIME_CHUNK]) for i in range(0, len(times), ROW_TIME_CHUNK)],
        )
        return [(row.row_time, row.tags) for page in pages for row in page]

    async def delete_range(
        self, table: str, series_row: tuple[str, int, str], low: int, high: int, stamp_us: int
    ) -> None:
        """Delete the rows of one series partition with low <= ts <= high written before stamp."""
        await self.execute(
            f"DELETE FROM {{ks}}.{table} USING TIMESTAMP ? WHERE metric=? AND row_time=? "
            "AND tags=? AND ts>=? AND ts<=?",
            (stamp_us, *series_row, low, high),
        )

    async def delete_row_key(self, series_row: tuple[str, int, str], stamp_us: int) -> None:
        await self.execute(
            "DELETE FROM {ks}.row_keys USING TIMESTAMP ? WHERE metric=? AND row_time=? AND tags=?",
            (stamp_us, *series_row),
        )

    async def forget_metric(self, metric: str, stamp_us: int) -> None:
        """Drop a metric's name from the index and its series from the cardinality guard."""
        await asyncio.gather(
            self.execute(
                "DELETE FROM {ks}.string_index USING TIMESTAMP ? WHERE kind=? AND value=?",
                (stamp_us, METRIC_NAMES, metric),
            ),
            self.execute(
                "DELETE FROM {ks}.metric_series USING TIMESTAMP ? WHERE metric=?",
                (stamp_us, metric),
            ),
            self.execute(
                "DELETE FROM {ks}.metric_cardinality USING TIMESTAMP ? WHERE metric=?",
                (stamp_us, metric),
            ),
        )

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
        """Raw points and rollup pieces of each series, as the plan says.

        Reads go `IN_CHUNK` series partitions per request, all requests at once: one request per
        series costs the driver about 0.7 ms of CPU each, which alone missed the latency target.
        """
        texts = list(tag_texts)
        found = {text: SeriesData(tags_from_text(text)) for text in texts}
        raw_reads = [
            self._by_series(
                "SELECT tags, ts, value FROM {ks}.raw_points WHERE metric=? AND row_time=? "
                "AND tags IN ? AND ts>=? AND ts<=?",
                metric,
                texts,
                low,
                high,
            )
            for low, high in plan.raw
        ]
        if plan.fields:
            rollups = self._rollup_columns(metric, texts, plan, found)
        else:
            rollups = self._rollup_pieces(metric, texts, plan, found)
        raw_pages, _ = await asyncio.gather(asyncio.gather(*raw_reads), rollups)
        for page in raw_pages:
            for text, rows in page.items():
                found[text].points += [(row[1], row[2]) for row in rows]
        for data in found.values():
            data.points.sort()
        return [found[text] for text in texts]

    async def _by_series(
        self, cql: str, metric: str, texts: Sequence[str], low: int, high: int
    ) -> dict[str, list[Any]]:
        """Rows (tags first) of each series partition between low and high, by tag text."""
        pages = await self.gather(
            cql,
            [
                (metric, row_time, list(texts[i : i + IN_CHUNK]), low, high)
                for row_time in row_times(low, high)
                for i in range(0, len(texts), IN_CHUNK)
            ],
        )
        grouped: dict[str, list[Any]] = defaultdict(list)
        for page in pages:
            for row in page:
                grouped[row[0]].append(row)
        return grouped

    async def _rollup_pieces(
        self, metric: str, texts: Sequence[str], plan: Plan, found: dict[str, SeriesData]
    ) -> None:
        """Minute and hour rollups as objects, with sketches when the plan needs them."""
        columns = ", ".join(SCALAR_COLUMNS + (["sketch"] if plan.needs_sketch else []))
        reads = [
            self._by_series(
                f"SELECT tags, ts, {columns} FROM {{ks}}.{table} WHERE metric=? AND row_time=? "
                "AND tags IN ? AND ts>=? AND ts<=?",
                metric,
                texts,
                low,
                high,
            )
            for table, ranges in (("rollups_1m", plan.minutes), ("rollups_1h", plan.hours))
            for low, high in ranges
        ]
        for page in await asyncio.gather(*reads):
            for text, rows in page.items():
                found[text].pieces += [
                    (row.ts, Aggregate.from_row(row._asdict(), with_sketch=plan.needs_sketch))
                    for row in rows
                ]

    async def _rollup_columns(
        self, metric: str, texts: Sequence[str], plan: Plan, found: dict[str, SeriesData]
    ) -> None:
        """Packed minute rows and hour rows as arrays of the fields the plan needs.

        A percentile reads its whole hours from the packed rows too (the hour rows carry their
        sketch only as a protobuf); packed rows written before sketch bins were packed send it
        back to the `rollups_1m`/`rollups_1h` objects.
        """
        sketch = SKETCH in plan.fields
        minute_ranges = plan.minutes + plan.hours if sketch else plan.minutes
        hour_ranges = () if sketch else plan.hours
        if self.cache.enabled:
            await self._cached_rollup_columns(
                metric, texts, plan, found, minute_ranges, hour_ranges
            )
            return
        packed = ", ".join(packed_columns_for(plan.fields))
        minute_reads = [
            self._by_series(
                PACKED_MINUTES_CQL.format(columns=packed),
                metric,
                texts,
                hour_of(low),
                high,
            )
            for low, high in minute_ranges
        ]
        hour_reads = [
            self._by_series(
                HOUR_ROWS_CQL.format(columns=", ".join(SCALAR_COLUMNS)),
                metric,
                texts,
                low,
                high,
            )
            for low, high in hour_ranges
        ]
        minute_pages, hour_pages = await asyncio.gather(
            asyncio.gather(*minute_reads), asyncio.gather(*hour_reads)
        )

        def by_text(page: dict[str, list[Any]]) -> list[list[Any]]:
            return [[row[1:] for row in page.get(text, ())] for text in texts]

        await self._fill_columns(
            metric,
            texts,
            plan,
            found,
            minute_ranges,
            [by_text(page) for page in minute_pages],
            [by_text(page) for page in hour_pages],
        )

    async def _cached_rollup_columns(
        self,
        metric: str,
        texts: Sequence[str],
        plan: Plan,
        found: dict[str, SeriesData],
        minute_ranges: Sequence[tuple[int, int]],
        hour_ranges: Sequence[tuple[int, int]],
    ) -> None:
        """`_rollup_columns` through the hour cache: the same rows, most from memory."""
        minute_groups, hour_groups = await asyncio.gather(
            self._cached_hours(
                ROLLUPS_MINUTE_PACKED.name,
                metric,
                texts,
                minute_ranges,
                plan.fields,
                packed_columns_for,
                PACKED_MINUTES_CQL,
            ),
            self._cached_hours(
                ROLLUPS_HOUR.name,
                metric,
                texts,
                hour_ranges,
                frozenset(FIELDS),
                lambda fields: SCALAR_COLUMNS,
                HOUR_ROWS_CQL,
            ),
        )
        await self._fill_columns(
            metric, texts, plan, found, minute_ranges, minute_groups, hour_groups
        )

    async def _fill_columns(
        self,
        metric: str,
        texts: Sequence[str],
        plan: Plan,
        found: dict[str, SeriesData],
        minute_ranges: Sequence[tuple[int, int]],
        minute_groups: Sequence[Sequence[Sequence[Any]]],
        hour_groups: Sequence[Sequence[Sequence[Any]]],
    ) -> None:
        """Each series' columns from its packed minute rows (per minute range) and hour rows,
        both given per range as one list of rows per series, in `texts` order."""
        parts: dict[str, list[Columns]] = defaultdict(list)
        for (low, high), groups in zip(minute_ranges, minute_groups, strict=True):
            try:
                unpacked = unpack_minutes(groups, plan.fields, low, high)
            except MissingSketchColumns:
                await self._rollup_pieces(metric, texts, plan, found)
                return
            for text, columns in zip(texts, unpacked, strict=True):
                parts[text].append(columns)
        for groups in hour_groups:
            for text, rows in zip(texts, groups, strict=True):
                if rows:
                    parts[text].append(Columns.of_rows(rows))
        for text in texts:
            found[text].columns = Columns.concat(parts.get(text, ()), plan.fields)

    async def _cached_hours(
        self,
        table: str,
        metric: str,
        texts: Sequence[str],
        ranges: Sequence[tuple[int, int]],
        fields: frozenset[str],
        columns_for: ColumnsFor,
        cql: str,
    ) -> list[list[list[Any]]]:
        """Per range, per series, its rows of one rollup table (hour start, then the columns of
        `fields`): cached hours whose version is unchanged, the rest read after the versions
        (see cache.py) and cached."""
        hours = hours_of(ranges)
        if not hours or not texts:
            return [[[] for _ in texts] for _ in ranges]
        versions = await self.hour_versions(metric, hours[0], hours[-1])
        plan = plan_hours(self.cache, table, metric, hours, versions, texts, fields)

        async def read(wanted: HourRead) -> dict[int, HourSeries]:
            select = cql.format(columns=", ".join(columns_for(wanted.fields)))
            pages = await asyncio.gather(
                *(
                    self._by_series(select, metric, wanted.texts, low, high)
                    for low, high in wanted.hours
                )
            )
            rows: dict[str, list[Any]] = defaultdict(list)
            for page in pages:
                for text, found in page.items():
                    rows[text] += [tuple(row[1:]) for row in found]
            return rows_by_hour(rows, wanted)

        fresh = await asyncio.gather(*(read(wanted) for wanted in plan.reads))
        for wanted, by_hour in zip(plan.reads, fresh, strict=True):
            for hour, series in by_hour.items():
                plan.cached[hour].update(series)
                self.cache.put((table, metric, hour), versions.get(hour), wanted.fields, series)
                if self.read_hook is not None:
                    self.read_hook(table, metric, hour, len(series))
        return range_groups(plan, ranges, texts, fields, columns_for)

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
