"""The query cache of rollup hours (cache.py): hits, misses, versions, fields, series
sets, the size bound, and answers equal to decoding the packed rows directly."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.metrics.cache import (
    ENTRY_OVERHEAD,
    HourCache,
    HourRead,
    HourSeries,
    hour_ranges,
    hours_of,
    plan_hours,
    range_groups,
    row_bytes,
    rows_by_hour,
)
from streams.metrics.columns import (
    FIELDS,
    FIELDS_OF_AGGREGATOR,
    SKETCH,
    Columns,
    pack_minutes,
    packed_columns_for,
    unpack_minutes,
)
from streams.metrics.rollup import HOUR_MS, MINUTE_MS, Aggregate, minute_of

EVERY_COLUMN = packed_columns_for((*FIELDS, SKETCH))
T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR_MS
PACKED = "rollups_1m_packed"
AVG = frozenset(FIELDS_OF_AGGREGATOR["avg"])
MAX = frozenset(FIELDS_OF_AGGREGATOR["max"])
HOURS = [T0 + i * HOUR_MS for i in range(4)]
TEXTS = ['{"host":"a"}', '{"host":"b"}', '{"host":"c"}']


def _hour(hour: int, texts: Sequence[str], size: int = 8) -> HourSeries:
    """Rows of some series in an hour (their blobs stand for any selected columns)."""
    return {text: (hour, text.encode() * size) for text in texts}


def _fill(cache: HourCache, versions: dict[int, int], fields: frozenset[str] = AVG) -> None:
    for hour in HOURS:
        cache.put((PACKED, "m", hour), versions.get(hour), fields, _hour(hour, TEXTS))


def test_a_cold_cache_reads_every_hour_of_every_series_in_one_run() -> None:
    plan = plan_hours(HourCache(1 << 20), PACKED, "m", HOURS, {}, TEXTS, AVG)
    assert plan.reads == [HourRead(tuple(TEXTS), ((HOURS[0], HOURS[-1]),), AVG)]
    assert plan.cached == {hour: {} for hour in HOURS}
    assert plan.reads[0].hour_starts() == HOURS


def test_unchanged_versions_are_answered_from_the_cache_and_other_metrics_are_not() -> None:
    cache = HourCache(1 << 20)
    versions = {hour: 7 for hour in HOURS}
    _fill(cache, versions)
    plan = plan_hours(cache, PACKED, "m", HOURS, versions, TEXTS, AVG)
    assert plan.reads == []
    assert plan.cached[HOURS[1]][TEXTS[2]] == (HOURS[1], TEXTS[2].encode() * 8)
    assert plan.layouts == dict.fromkeys(HOURS, AVG)
    assert plan_hours(cache, PACKED, "other", HOURS, versions, TEXTS, AVG).reads[0].texts == (
        tuple(TEXTS)
    )
    assert plan_hours(cache, "rollups_1h", "m", HOURS, versions, TEXTS, AVG).reads


def test_a_changed_version_reads_that_hour_again_and_drops_the_stale_entry() -> None:
    cache = HourCache(1 << 20)
    versions = {hour: 1 for hour in HOURS}
    _fill(cache, versions)
    versions[HOURS[1]] = 2
    versions[HOURS[3]] = 5  # the open hour changes with every batch
    plan = plan_hours(cache, PACKED, "m", HOURS, versions, TEXTS, AVG)
    assert plan.reads == [HourRead(tuple(TEXTS), ((HOURS[1], HOURS[1]), (HOURS[3], HOURS[3])), AVG)]
    assert (PACKED, "m", HOURS[1]) not in cache
    assert plan.cached[HOURS[1]] == {} and len(plan.cached[HOURS[0]]) == 3
    cache.put((PACKED, "m", HOURS[1]), 2, AVG, _hour(HOURS[1], TEXTS))
    assert plan_hours(cache, PACKED, "m", HOURS[:3], versions, TEXTS, AVG).reads == []


def test_hours_without_a_version_are_always_read_and_never_kept() -> None:
    cache = HourCache(1 << 20)
    _fill(cache, {HOURS[0]: 1})
    assert len(cache) == 1
    plan = plan_hours(cache, PACKED, "m", HOURS, {HOURS[0]: 1}, TEXTS, AVG)
    assert [read.hours for read in plan.reads] == [((HOURS[1], HOURS[3]),)]
    # A version row that disappeared (never expected) does not leave the old entry usable.
    plan = plan_hours(cache, PACKED, "m", HOURS[:1], {}, TEXTS, AVG)
    assert plan.reads[0].hours == ((HOURS[0], HOURS[0]),) and len(cache) == 0


def test_fields_the_entry_lacks_read_the_hour_again_with_its_fields_added() -> None:
    cache = HourCache(1 << 20)
    versions = {hour: 1 for hour in HOURS}
    _fill(cache, versions, AVG)
    fewer = frozenset({"count", "first_ts"})
    assert plan_hours(cache, PACKED, "m", HOURS, versions, TEXTS, fewer).reads == []
    plan = plan_hours(cache, PACKED, "m", HOURS, versions, TEXTS[:1], MAX)
    assert plan.reads == [HourRead(tuple(TEXTS[:1]), ((HOURS[0], HOURS[-1]),), AVG | MAX)]
    # The entry read with more fields replaces the old one: its series all share the fields.
    cache.put((PACKED, "m", HOURS[0]), 1, AVG | MAX, _hour(HOURS[0], TEXTS[:1]))
    plan = plan_hours(cache, PACKED, "m", HOURS[:1], versions, TEXTS, AVG)
    assert plan.reads == [HourRead(tuple(TEXTS[1:]), ((HOURS[0], HOURS[0]),), AVG | MAX)]


def test_series_missing_from_an_entry_are_read_alone_and_added_to_it() -> None:
    cache = HourCache(1 << 20)
    versions = {hour: 3 for hour in HOURS}
    for hour in HOURS:
        cache.put((PACKED, "m", hour), 3, AVG, _hour(hour, TEXTS[:2]))
    plan = plan_hours(cache, PACKED, "m", HOURS, versions, TEXTS, AVG)
    assert plan.reads == [HourRead((TEXTS[2],), ((HOURS[0], HOURS[-1]),), AVG)]
    assert set(plan.cached[HOURS[0]]) == set(TEXTS[:2])
    for hour in HOURS:
        cache.put((PACKED, "m", hour), 3, AVG, {TEXTS[2]: None})  # no row that hour
    plan = plan_hours(cache, PACKED, "m", HOURS, versions, TEXTS, AVG)
    assert plan.reads == []
    assert plan.cached[HOURS[0]][TEXTS[2]] is None


def test_hour_ranges_are_runs_of_consecutive_hours() -> None:
    assert hour_ranges([]) == []
    hours = [HOURS[0], HOURS[1], HOURS[3]]
    assert hour_ranges(hours) == [(HOURS[0], HOURS[1]), (HOURS[3], HOURS[3])]
    ranges = [(T0 + 30 * MINUTE_MS, T0 + HOUR_MS - 1), (T0 + 2 * HOUR_MS, T0 + 2 * HOUR_MS)]
    assert hours_of(ranges) == [T0, T0 + 2 * HOUR_MS]


def test_the_size_bound_evicts_the_least_recently_used_hours() -> None:
    one_hour = ENTRY_OVERHEAD + sum(row_bytes(row) for row in _hour(T0, TEXTS).values())
    cache = HourCache(int(3.5 * one_hour))
    versions = {hour: 1 for hour in HOURS}
    _fill(cache, versions)
    assert len(cache) == 3 and (PACKED, "m", HOURS[0]) not in cache
    assert cache.size <= cache.max_bytes
    assert cache.get((PACKED, "m", HOURS[1]), 1) is not None  # now the most recent
    cache.put((PACKED, "m", HOURS[0]), 1, AVG, _hour(HOURS[0], TEXTS))
    assert (PACKED, "m", HOURS[2]) not in cache and (PACKED, "m", HOURS[1]) in cache
    # An hour larger than the whole cache is not kept and evicts nothing.
    big = _hour(T0, TEXTS, size=1000)
    cache.put((PACKED, "m", HOURS[0] + 100 * HOUR_MS), 1, AVG, big)
    assert len(cache) == 3
    for key in [(PACKED, "m", hour) for hour in HOURS]:
        cache.get(key, None)
    assert len(cache) == 0 and cache.size == 0


def test_sizes_stay_exact_through_merges_and_replacements() -> None:
    cache = HourCache(1 << 20)
    key = (PACKED, "m", T0)
    cache.put(key, 1, AVG, _hour(T0, TEXTS[:2]))
    cache.put(key, 1, AVG, _hour(T0, TEXTS[1:]))  # one series replaced, one added
    cache.put(key, 2, AVG, _hour(T0, TEXTS[:1]))  # a new version replaces the entry
    entry = cache.get(key, 2)
    assert entry is not None and list(entry.series) == TEXTS[:1]
    assert cache.size == entry.size
    cache.get(key, 3)
    assert cache.size == 0


def test_a_zero_size_cache_keeps_nothing() -> None:
    cache = HourCache(0)
    assert not cache.enabled
    _fill(cache, {hour: 1 for hour in HOURS})
    assert len(cache) == 0


def test_range_groups_give_each_range_its_hours_rows_with_only_the_wanted_columns() -> None:
    cache = HourCache(1 << 20)
    versions = {hour: 1 for hour in HOURS}
    wide = AVG | MAX
    wide_columns = packed_columns_for(wide)
    rows = {
        hour: {TEXTS[0]: (hour, *(f"{hour}:{c}".encode() for c in wide_columns)), TEXTS[1]: None}
        for hour in HOURS
    }
    cache.put((PACKED, "m", HOURS[0]), 1, wide, rows[HOURS[0]])
    plan = plan_hours(cache, PACKED, "m", HOURS[:3], versions, TEXTS[:2], AVG)
    assert [read.hours for read in plan.reads] == [((HOURS[1], HOURS[2]),)]
    for hour in (HOURS[1], HOURS[2]):  # as read: only the avg columns
        plan.cached[hour] = {
            TEXTS[0]: (hour, *(f"{hour}:{c}".encode() for c in packed_columns_for(AVG))),
            TEXTS[1]: None,
        }
    ranges = [(T0 + MINUTE_MS, T0 + HOUR_MS + 5), (HOURS[2], HOURS[2] + MINUTE_MS)]
    groups = range_groups(plan, ranges, TEXTS[:2], AVG, packed_columns_for)
    expected = [
        [(hour, *(f"{hour}:{c}".encode() for c in packed_columns_for(AVG))) for hour in hours]
        for hours in ([HOURS[0], HOURS[1]], [HOURS[2]])
    ]
    assert groups == [[expected[0], []], [expected[1], []]]


def test_rows_by_hour_marks_series_without_a_row() -> None:
    row = (T0, 2, 3.0)
    read = HourRead(tuple(TEXTS[:2]), ((T0, T0 + HOUR_MS),), frozenset(FIELDS))
    found = rows_by_hour({TEXTS[0]: [row, (T0 + 7, 1, 1.0)]}, read)
    assert found == {T0: {TEXTS[0]: row, TEXTS[1]: None}, T0 + HOUR_MS: dict.fromkeys(TEXTS[:2])}


values = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False).map(lambda v: round(v, 2))
series_points = st.lists(
    st.dictionaries(st.integers(0, 3 * HOUR_MS - 1), values, max_size=40), min_size=3, max_size=3
)
minute_bounds = st.tuples(st.integers(0, 3 * 60 - 1), st.integers(0, 3 * 60 - 1))


@settings(max_examples=60, deadline=None)
@given(
    series_points,
    st.lists(minute_bounds, min_size=1, max_size=2),
    st.sampled_from(["avg", "max", "last", "dev", "percentile"]),
    st.integers(0, 2),
)
def test_cached_hours_give_the_pieces_of_decoding_the_packed_rows_directly(
    points: list[dict[int, float]], bounds: list, aggregator: str, changed: int
) -> None:
    fields = frozenset(FIELDS_OF_AGGREGATOR[aggregator])
    ranges = sorted(
        {(T0 + min(a, b) * MINUTE_MS, T0 + (max(a, b) + 1) * MINUTE_MS - 1) for a, b in bounds}
    )
    rows: dict[str, list[tuple]] = {}
    for text, offsets in zip(TEXTS, points, strict=True):
        by_hour: dict[int, dict[int, list[tuple[int, float]]]] = defaultdict(dict)
        for offset, value in sorted(offsets.items()):
            at = T0 + offset
            by_hour[at - at % HOUR_MS].setdefault(minute_of(at), []).append((at, value))
        rows[text] = []
        for hour, minutes in sorted(by_hour.items()):
            packed = pack_minutes(hour, {m: Aggregate.of_points(ps) for m, ps in minutes.items()})
            rows[text].append((hour, *(packed[c] for c in EVERY_COLUMN)))

    def select(read: HourRead) -> dict[str, list[tuple]]:
        """What Cassandra answers: the read's hours of the read's series, its columns only."""
        wanted = set(read.hour_starts())
        columns = packed_columns_for(read.fields)
        return {
            text: [
                (row[0], *(row[1 + EVERY_COLUMN.index(c)] for c in columns))
                for row in rows[text]
                if row[0] in wanted
            ]
            for text in read.texts
        }

    cache = HourCache(1 << 24)
    versions = {T0 + i * HOUR_MS: 1 for i in range(3)}

    def query() -> tuple[list[Columns], int]:
        """The store's cached path: versions, plan, reads, cache, then one decoding per range."""
        hours = hours_of(ranges)
        plan = plan_hours(cache, PACKED, "m", hours, versions, TEXTS, fields)
        for read in plan.reads:
            for hour, series in rows_by_hour(select(read), read).items():
                plan.cached[hour].update(series)
                cache.put((PACKED, "m", hour), versions.get(hour), read.fields, series)
        groups = range_groups(plan, ranges, TEXTS, fields, packed_columns_for)
        parts: list[list[Columns]] = [[] for _ in TEXTS]
        for (low, high), per_series in zip(ranges, groups, strict=True):
            for index, columns in enumerate(unpack_minutes(per_series, fields, low, high)):
                parts[index].append(columns)
        return [Columns.concat(part, fields) for part in parts], len(plan.reads)

    def direct(text: str, low: int, high: int) -> Columns:
        """The pieces as the uncached path decodes them: the range's rows of one series."""
        read = HourRead((text,), tuple(hour_ranges(hours_of([(low, high)]))), fields)
        return unpack_minutes([select(read)[text]], fields, low, high)[0]

    expected = {text: Columns.concat([direct(text, *r) for r in ranges], fields) for text in TEXTS}
    cold, cold_reads = query()
    warm, warm_reads = query()
    versions[T0 + changed * HOUR_MS] = 2
    changed_hour, _ = query()
    assert cold_reads == 1 and warm_reads == 0
    for answer in (cold, warm, changed_hour):
        for text, got in zip(TEXTS, answer, strict=True):
            want = expected[text]
            assert got.start.tolist() == want.start.tolist()
            for field in fields - {SKETCH}:
                assert got.fields[field].tolist() == want.fields[field].tolist(), field
            if SKETCH in fields:
                assert got.sketch is not None and want.sketch is not None
                assert got.sketch.zero.tolist() == want.sketch.zero.tolist()
                for a, b in (
                    (got.sketch.positive, want.sketch.positive),
                    (got.sketch.negative, want.sketch.negative),
                ):
                    assert [x.tolist() for x in a] == [x.tolist() for x in b]
