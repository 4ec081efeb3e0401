"""Rollup rows kept in the querying process by hour, valid while their hour's version holds.

Every writer of `rollups_1m_packed` and `rollups_1h` (rollup agent, deleter, backfill)
increments the (metric, hour) counter in `rollup_hour_versions` after its rows are
acknowledged. A query reads the versions first and the rows after, so the rows it holds are at
least as new as the versions it read: a cached hour whose version is unchanged is still right.
Closed hours rarely change, so a repeated query reads from Cassandra only the hours whose version
moved (the open hour, a late point, a delete, a backfill) or that it never read. Hours without
a version row (written before versions existed) are always read and never cached.

The rows are kept as read (packed blobs, hour scalars), not decoded: decoding a day of 100
series from bytes is one `unpack_minutes` pass, while joining 2,400 decoded hours of arrays cost
twice as much, and the blobs take half the memory.

Pure: no I/O; `store.MetricStore` reads the versions and rows and calls this module.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from streams.metrics.rollup import HOUR_MS, hour_of

HourKey = tuple[str, str, int]  # table, metric, hour start
Row = tuple[Any, ...]  # a rollup row as read: hour start, then the selected columns
# One hour of some series: tag text -> that series-hour's row (None: no row that hour).
HourSeries = dict[str, Row | None]
# The Cassandra columns a set of fields selects (after the hour start), in row order.
ColumnsFor = Callable[[frozenset[str]], Sequence[str]]
# Approximate Python overheads, so that many small entries are not counted as free.
ENTRY_OVERHEAD = 240
ROW_OVERHEAD = 120
VALUE_OVERHEAD = 40


def row_bytes(row: Row | None) -> int:
    """Approximate memory of one cached series-hour row."""
    if row is None:
        return ROW_OVERHEAD
    return ROW_OVERHEAD + sum(
        VALUE_OVERHEAD + (len(value) if isinstance(value, bytes) else 0) for value in row
    )


@dataclass
class HourEntry:
    """The cached series of one (table, metric, hour) as read under one version, all with
    the same fields."""

    version: int
    fields: frozenset[str]
    series: HourSeries
    size: int


class HourCache:
    """LRU of rollup hours by (table, metric, hour), bounded by approximate bytes; 0 disables."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._entries: OrderedDict[HourKey, HourEntry] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: HourKey) -> bool:
        return key in self._entries

    def get(self, key: HourKey, version: int | None) -> HourEntry | None:
        """The entry if it was read under `version` (now most recently used); a stale entry or
        one whose hour lost its version is dropped."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if version is None or entry.version != version:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(
        self,
        key: HourKey,
        version: int | None,
        fields: frozenset[str],
        series: Mapping[str, Row | None],
    ) -> None:
        """Keep series read under `version` with `fields`: added to the entry read under the same
        version and fields, else replacing it. Nothing is kept for an hour without a version."""
        if not self.enabled or version is None or not series:
            return
        entry = self._entries.get(key)
        if entry is None or entry.version != version or entry.fields != fields:
            if entry is not None:
                self._drop(key)
            entry = HourEntry(version, fields, {}, ENTRY_OVERHEAD)
            self._entries[key] = entry
            self.size += entry.size
        for text, row in series.items():
            added = row_bytes(row) - (row_bytes(entry.series[text]) if text in entry.series else 0)
            entry.series[text] = row
            entry.size += added
            self.size += added
        self._entries.move_to_end(key)
        if entry.size > self.max_bytes:
            self._drop(key)
            return
        while self.size > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: HourKey) -> None:
        self.size -= self._entries.pop(key).size


@dataclass(frozen=True)
class HourRead:
    """Rows to read from Cassandra: these hours (inclusive ranges of hour starts) of these series,
    with these fields."""

    texts: tuple[str, ...]
    hours: tuple[tuple[int, int], ...]
    fields: frozenset[str]

    def hour_starts(self) -> list[int]:
        return [hour for low, high in self.hours for hour in range(low, high + 1, HOUR_MS)]


@dataclass
class HourPlan:
    """What a query takes from the cache (per hour, per series) and what it must read, and per
    hour the fields its rows hold (cached or to be read)."""

    cached: dict[int, HourSeries]
    reads: list[HourRead]
    layouts: dict[int, frozenset[str]]


def hours_of(ranges: Sequence[tuple[int, int]]) -> list[int]:
    """The hour starts that the inclusive millisecond ranges touch, ascending."""
    return sorted({hour for low, high in ranges for hour in range(hour_of(low), high + 1, HOUR_MS)})


def hour_ranges(hours: Sequence[int]) -> list[tuple[int, int]]:
    """Ascending hour starts as runs of consecutive hours (inclusive first and last start)."""
    runs: list[tuple[int, int]] = []
    for hour in hours:
        if runs and runs[-1][1] + HOUR_MS == hour:
            runs[-1] = (runs[-1][0], hour)
        else:
            runs.append((hour, hour))
    return runs


def plan_hours(
    cache: HourCache,
    table: str,
    metric: str,
    hours: Sequence[int],
    versions: Mapping[int, int],
    texts: Sequence[str],
    fields: frozenset[str],
) -> HourPlan:
    """Per hour, the series the cache answers (version unchanged, fields enough); the rest as
    reads, hours with the same missing series and fields in one read of consecutive runs.

    An hour whose entry lacks some needed fields is read again for all series with the entry's
    fields added, so that one entry's series always share their fields.
    """
    cached: dict[int, HourSeries] = {}
    layouts: dict[int, frozenset[str]] = {}
    missing_hours: dict[tuple[frozenset[str], tuple[str, ...]], list[int]] = defaultdict(list)
    for hour in hours:
        entry = cache.get((table, metric, hour), versions.get(hour))
        if entry is not None and fields <= entry.fields:
            cached[hour] = {text: entry.series[text] for text in texts if text in entry.series}
            missing = tuple(text for text in texts if text not in entry.series)
            wanted = entry.fields
        else:
            cached[hour] = {}
            missing = tuple(texts)
            wanted = fields | entry.fields if entry is not None else fields
        layouts[hour] = wanted
        if missing:
            missing_hours[(wanted, missing)].append(hour)
    reads = [
        HourRead(missing, tuple(hour_ranges(found)), wanted)
        for (wanted, missing), found in missing_hours.items()
    ]
    return HourPlan(cached, reads, layouts)


def range_groups(
    plan: HourPlan,
    ranges: Sequence[tuple[int, int]],
    texts: Sequence[str],
    fields: frozenset[str],
    columns_for: ColumnsFor,
) -> list[list[list[Row]]]:
    """Per range, per series, its rows of the hours the range touches, holding the columns of
    `fields` only (a cached row may hold more), ready for `unpack_minutes` or `Columns.of_rows`."""
    wanted = list(columns_for(fields))
    positions: dict[frozenset[str], list[int] | None] = {}
    for layout in set(plan.layouts.values()):
        held = list(columns_for(layout))
        positions[layout] = None if held == wanted else [1 + held.index(c) for c in wanted]
    groups: list[list[list[Row]]] = []
    for low, high in ranges:
        hours = range(hour_of(low), high + 1, HOUR_MS)
        per_series: list[list[Row]] = []
        for text in texts:
            rows: list[Row] = []
            for hour in hours:
                row = plan.cached[hour].get(text)
                if row is None:
                    continue
                chosen = positions[plan.layouts[hour]]
                rows.append(row if chosen is None else (row[0], *(row[i] for i in chosen)))
            per_series.append(rows)
        groups.append(per_series)
    return groups


def rows_by_hour(
    rows_by_text: Mapping[str, Sequence[Row]], read: HourRead
) -> dict[int, HourSeries]:
    """The read's rows per hour and series; None where a series has no row in an hour."""
    found: dict[int, HourSeries] = {hour: dict.fromkeys(read.texts) for hour in read.hour_starts()}
    for text in read.texts:
        for row in rows_by_text.get(text, ()):
            if row[0] in found:
                found[row[0]][text] = row
    return found
