"""Columnar rollups: packed minute rows and array merges equal the Aggregate objects."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.metrics.columns import (
    FIELDS,
    FIELDS_OF_AGGREGATOR,
    PACKED_SKETCH_COLUMNS,
    SKETCH,
    Columns,
    MissingSketchColumns,
    PackedRowError,
    SketchBins,
    aggregator_values,
    bucket_quantiles,
    merge_by_bucket,
    pack_minutes,
    packed_columns_for,
    unpack_minutes,
)
from streams.metrics.query import Plan, SeriesData, answer_metric, parse_query, plan_metric
from streams.metrics.rollup import (
    HOUR_MS,
    MINUTE_MS,
    Aggregate,
    PartitionRollups,
    merge_all,
    minute_of,
    new_sketch,
    sketch_bytes,
    sketch_from_bytes,
)
from streams.metrics.tables import ROLLUPS_MINUTE_PACKED, packed_row

T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR_MS
values = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).map(lambda v: round(v, 3))
# Few distinct values and timestamps, so ties of first/last happen often.
hour_points = st.dictionaries(
    st.integers(min_value=0, max_value=HOUR_MS - 1), values, min_size=1, max_size=120
)


def _minutes(points: dict[int, float], hour: int) -> dict[int, Aggregate]:
    by_minute: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for offset, value in points.items():
        by_minute[minute_of(hour + offset)].append((hour + offset, value))
    return {minute: Aggregate.of_points(sorted(ps)) for minute, ps in by_minute.items()}


def _row(hour: int, packed: dict[str, bytes], fields: frozenset[str] | tuple) -> tuple:
    return (hour, *(packed[column] for column in packed_columns_for(fields)))


ALL_FIELDS = (*FIELDS, SKETCH)


def _same_bins(left: SketchBins, right: SketchBins) -> None:
    assert left.zero.tolist() == right.zero.tolist()
    for a, b in ((left.positive, right.positive), (left.negative, right.negative)):
        assert [x.tolist() for x in a] == [x.tolist() for x in b]


@given(hour_points)
def test_packed_minutes_unpack_to_the_same_aggregates(points: dict) -> None:
    minutes = _minutes(points, T0)
    packed = pack_minutes(T0, minutes)
    (columns,) = unpack_minutes([[_row(T0, packed, ALL_FIELDS)]], ALL_FIELDS, T0, T0 + HOUR_MS - 1)
    expected = Columns.of_aggregates(sorted(minutes.items()), sketch=True)
    assert columns.start.tolist() == expected.start.tolist()
    for field in FIELDS:
        assert columns.fields[field].tolist() == expected.fields[field].tolist(), field
    assert columns.sketch is not None and expected.sketch is not None
    _same_bins(columns.sketch, expected.sketch)


def test_packed_row_has_every_column_of_its_table_and_sketch_bins_per_minute() -> None:
    minutes = _minutes({0: -2.0, 1: 0.0, 2: 3.0, 3: 3.0, MINUTE_MS: 1e-3}, T0)
    row = packed_row((("m", "host=a"), T0), minutes)
    assert set(row) == set(ROLLUPS_MINUTE_PACKED.columns)
    assert np.frombuffer(row["zero_counts"], "<u4").tolist() == [1, 0]
    assert np.frombuffer(row["positive_lengths"], "<u4").tolist() == [1, 1]
    assert np.frombuffer(row["positive_counts"], "<u4").tolist() == [2, 1]
    assert np.frombuffer(row["negative_lengths"], "<u4").tolist() == [1, 0]
    mapping = new_sketch()._mapping
    keys = np.frombuffer(row["positive_keys"], "<i4").tolist()
    assert keys == [mapping.key(3.0), mapping.key(1e-3)]


def test_a_packed_row_without_sketch_columns_asks_for_the_object_path() -> None:
    packed = pack_minutes(T0, _minutes({0: 1.0}, T0))
    row = list(_row(T0, packed, ALL_FIELDS))
    row[-len(PACKED_SKETCH_COLUMNS)] = None
    with pytest.raises(MissingSketchColumns):
        unpack_minutes([[tuple(row)]], ALL_FIELDS, T0, T0 + HOUR_MS)


def test_unpack_reads_only_the_chosen_fields_and_minutes_of_each_series() -> None:
    a = pack_minutes(T0, _minutes({0: 1.0, MINUTE_MS: 2.0, 5 * MINUTE_MS + 7: 3.0}, T0))
    b = pack_minutes(T0 + HOUR_MS, _minutes({59 * MINUTE_MS + 59_999: 4.0}, T0 + HOUR_MS))
    fields = FIELDS_OF_AGGREGATOR["avg"]
    groups = [
        [],
        [_row(T0, a, fields)],
        [],
        [_row(T0, a, fields), _row(T0 + HOUR_MS, b, fields)],
    ]
    nothing, first, empty, both = unpack_minutes(groups, fields, T0 + MINUTE_MS, T0 + 2 * HOUR_MS)
    assert len(nothing) == 0
    assert set(first.fields) == set(fields)
    assert first.start.tolist() == [T0 + MINUTE_MS, T0 + 5 * MINUTE_MS]
    assert first.fields["first_ts"].tolist() == [T0 + MINUTE_MS, T0 + 5 * MINUTE_MS + 7]
    assert len(empty) == 0
    assert both.start.tolist() == [T0 + MINUTE_MS, T0 + 5 * MINUTE_MS, T0 + 2 * HOUR_MS - MINUTE_MS]
    assert both.fields["total"].tolist() == [2.0, 3.0, 4.0]


def test_a_packed_row_with_arrays_of_different_lengths_is_refused() -> None:
    packed = pack_minutes(T0, _minutes({0: 1.0, MINUTE_MS: 2.0}, T0))
    fields = ("count", "total")
    row = list(_row(T0, packed, fields))
    row[-1] = row[-1][:8]
    with pytest.raises(PackedRowError, match="sums"):
        unpack_minutes([[tuple(row)]], fields, T0, T0 + HOUR_MS)


pieces = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=5),  # bucket
        st.lists(
            st.tuples(st.integers(min_value=0, max_value=3), st.sampled_from([-1.5, 0.0, 2.0])),
            min_size=1,
            max_size=5,
        ),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=80, deadline=None)
@given(pieces, st.sampled_from(sorted(FIELDS_OF_AGGREGATOR)))
def test_array_merge_equals_merging_aggregates(raw: list, name: str) -> None:
    assert_array_merge_equals_merging_aggregates(raw, name)


@settings(max_examples=40, deadline=None)
@given(pieces, st.sampled_from(sorted(FIELDS_OF_AGGREGATOR)))
def test_array_merge_of_one_piece_per_ascending_bucket(raw: list, name: str) -> None:
    """The shortcut taken by 1-minute sampling of minute rollups gives the same answers."""
    one_each = sorted({bucket: pts for bucket, pts in raw}.items())
    assert_array_merge_equals_merging_aggregates(one_each, name)


def assert_array_merge_equals_merging_aggregates(raw: list, name: str) -> None:
    aggregates = [
        (bucket * MINUTE_MS, Aggregate.of_points(sorted({T0 + t: v for t, v in pts}.items())))
        for bucket, pts in raw
    ]
    columns = Columns.of_aggregates(aggregates)
    merged = merge_by_bucket(columns, columns.start, FIELDS_OF_AGGREGATOR[name])
    by_bucket: dict[int, list[Aggregate]] = defaultdict(list)
    for start, aggregate in aggregates:
        by_bucket[start].append(aggregate)
    assert merged.buckets.tolist() == sorted(by_bucket)
    if name == "percentile":
        columns = Columns.of_aggregates(aggregates, sketch=True)
        got = bucket_quantiles(columns.sketch, columns.start, merged.buckets, 0.75).tolist()
    else:
        got = aggregator_values(name, merged).tolist()
    for index, bucket in enumerate(sorted(by_bucket)):
        expected = merge_all(by_bucket[bucket])
        assert merged.fields["count"][index] == expected.count
        assert merged.fields["first_ts"][index] == expected.first_ts
        want = {
            "avg": expected.mean,
            "sum": expected.total,
            "min": expected.minimum,
            "max": expected.maximum,
            "count": expected.count,
            "first": expected.first_value,
            "last": expected.last_value,
            "dev": expected.std_dev(),
            "percentile": expected.quantile(0.75),
        }[name]
        assert got[index] == pytest.approx(want, rel=1e-9, abs=1e-9)


def test_empty_pieces_are_skipped_and_an_empty_input_merges_to_nothing() -> None:
    columns = Columns.of_aggregates([(0, Aggregate()), (0, Aggregate.of_points([(T0, 5.0)]))])
    merged = merge_by_bucket(columns, columns.start, FIELDS_OF_AGGREGATOR["avg"])
    assert merged.buckets.tolist() == [0] and merged.fields["count"].tolist() == [1]
    nothing = Columns.concat((), FIELDS_OF_AGGREGATOR["avg"])
    assert len(merge_by_bucket(nothing, nothing.start, ("count",)).buckets) == 0
    assert Columns.of_rows([]).sample_size == 0
    assert np.array_equal(Columns.of_points([(T0, 2.0)]).fields["first_ts"], [T0])


def test_the_plan_names_the_fields_its_aggregator_needs() -> None:
    def plan(aggregator: dict) -> Plan:
        query = parse_query(
            {"start_absolute": T0, "end_absolute": T0 + 3 * HOUR_MS, "metrics": [
                {"name": "m", "aggregators": [aggregator]}]}, 0
        )  # fmt: skip
        return plan_metric(query.metrics[0], query.start, query.end)

    minute = {"value": 1, "unit": "minutes"}
    assert plan({"name": "avg", "sampling": minute}).fields == {"count", "first_ts", "total"}
    assert plan({"name": "last", "sampling": minute}).fields >= {"last_ts", "last_value"}
    percentile = plan({"name": "percentile", "percentile": 0.5, "sampling": minute})
    assert percentile.fields == {"count", "first_ts", SKETCH} and percentile.needs_sketch


series_points = st.dictionaries(
    st.sampled_from(["a", "b", "c"]),
    st.dictionaries(st.integers(min_value=0, max_value=3 * HOUR_MS), values, min_size=1),
    min_size=1,
)


def _read_like_the_store(plan: Plan, points_by_host: dict) -> list[SeriesData]:
    """Raw points in raw ranges, packed minute rows and hour rows as the store reads them."""
    result = []
    for host, points in sorted(points_by_host.items()):
        data = SeriesData({"host": host})
        data.points = sorted((t, v) for t, v in points if any(lo <= t <= hi for lo, hi in plan.raw))
        result.append(data)
        if not plan.fields:
            continue
        parts = []
        sketch = SKETCH in plan.fields
        for low, high in plan.minutes + plan.hours if sketch else plan.minutes:
            rows = []
            for hour in range(low - low % HOUR_MS, high + 1, HOUR_MS):
                inside = {t - hour: v for t, v in points if hour <= t < hour + HOUR_MS}
                if inside:
                    packed = pack_minutes(hour, _minutes(inside, hour))
                    rows.append(_row(hour, packed, plan.fields))
            parts += unpack_minutes([rows], plan.fields, low, high)
        hour_rows = []
        for low, high in () if sketch else plan.hours:
            by_hour: dict[int, list] = defaultdict(list)
            for t, v in points:
                if low <= t <= high:
                    by_hour[t - t % HOUR_MS].append((t, v))
            for hour, ps in sorted(by_hour.items()):
                aggregate = Aggregate.of_points(sorted(ps))
                hour_rows.append((hour, *[getattr(aggregate, f) for f in FIELDS]))
        parts.append(Columns.of_rows(hour_rows))
        data.columns = Columns.concat(parts, plan.fields)
    return result


@settings(max_examples=80, deadline=None)
@given(
    series_points,
    st.sampled_from(sorted(FIELDS_OF_AGGREGATOR)),
    st.sampled_from([(1, "minutes"), (5, "minutes"), (1, "hours"), (2, "hours")]),
    st.integers(min_value=0, max_value=HOUR_MS),
    st.integers(min_value=HOUR_MS, max_value=3 * HOUR_MS),
    st.booleans(),
)
def test_packed_rollup_answers_equal_raw_answers(
    data: dict, name: str, sampling: tuple, start: int, end: int, group: bool
) -> None:
    points = {host: sorted((T0 + t, v) for t, v in pts.items()) for host, pts in data.items()}
    aggregator = {"name": name, "sampling": {"value": sampling[0], "unit": sampling[1]}}
    if name == "percentile":
        aggregator["percentile"] = 0.9
    metric: dict = {"name": "cpu", "aggregators": [aggregator]}
    if group:
        metric["group_by"] = [{"name": "tag", "tags": ["host"]}]
    query = parse_query({"start_absolute": T0 + start, "end_absolute": T0 + end,
                         "metrics": [metric]}, 0)  # fmt: skip
    spec = query.metrics[0]
    plan = plan_metric(spec, query.start, query.end)
    if end - start >= 2 * MINUTE_MS:
        assert plan.fields and plan.uses_rollups
    raw = [SeriesData({"host": h}, [(t, v) for t, v in ps if query.start <= t <= query.end])
           for h, ps in sorted(points.items())]  # fmt: skip
    from_rollups = answer_metric(spec, query.start, query.end, _read_like_the_store(plan, points))
    from_raw = answer_metric(spec, query.start, query.end, raw)
    assert from_rollups["sample_size"] == from_raw["sample_size"]
    for left, right in zip(from_rollups["results"], from_raw["results"], strict=True):
        assert left["tags"] == right["tags"] and left["group_by"] == right["group_by"]
        assert len(left["values"]) == len(right["values"])
        for (ta, va), (tb, vb) in zip(left["values"], right["values"], strict=True):
            assert ta == tb
            assert va == pytest.approx(vb, rel=1e-9, abs=1e-6)


# Values that reach every part of a sketch: negative and positive stores, the zero count (0, and
# magnitudes below the mapping's smallest distinguishable value), and extreme keys.
sketch_values = st.one_of(
    values,
    st.sampled_from([0.0, -0.0, 1e-310, -1e-310, 2.5e-308, 1e300, -1e300, 0.5, 0.505, -7.0]),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(min_value=0, max_value=4), sketch_values), max_size=60),
    st.lists(st.integers(min_value=0, max_value=4), max_size=5),
    st.floats(min_value=0.0, max_value=1.0),
)
def test_bucket_quantiles_equal_ddsketch_on_the_same_values(
    entries: list, pieces_per_bucket: list, q: float
) -> None:
    """Per bucket, the merged bins give DDSketch's own get_quantile_value, bit for bit: values
    added one by one (raw edge points) and whole sketches (minutes, after a protobuf round
    trip as rollups_1m stores them) in any mix."""
    sketches, starts, points = [], [], []
    for index, (bucket, value) in enumerate(entries):
        if index % 3 == 0:
            points.append((bucket, value))
            continue
        sketch = new_sketch()
        sketch.add(value)
        if index % 2:
            sketch = sketch_from_bytes(sketch_bytes(sketch))
        sketches.append(sketch)
        starts.append(bucket)
    for bucket in pieces_per_bucket:
        sketches.append(new_sketch())  # an empty piece changes nothing
        starts.append(bucket)
    bins = SketchBins.concat(
        [
            SketchBins.of_sketches(sketches),
            SketchBins.of_values(np.array([v for _, v in points], np.float64)),
        ]
    )
    bucket_of = np.array(starts + [b for b, _ in points], np.int64)
    buckets = np.unique(bucket_of)
    got = bucket_quantiles(bins, bucket_of, buckets, q).tolist()
    for index, bucket in enumerate(buckets.tolist()):
        reference = new_sketch()
        for bucket_index, value in entries:
            if bucket_index == bucket:
                reference.add(value)
        want = reference.get_quantile_value(q)
        assert got[index] == (0.0 if want is None else float(want))
        assert np.copysign(1.0, got[index]) == np.copysign(1.0, float(want or 0.0))


@settings(max_examples=60, deadline=None)
@given(
    series_points.map(
        lambda data: {
            h: {t: v * (-1) ** (t % 3) for t, v in pts.items()} for h, pts in data.items()
        }
    ),
    st.sampled_from([(1, "minutes"), (7, "minutes"), (1, "hours"), (2, "hours")]),
    st.integers(min_value=0, max_value=HOUR_MS),
    st.integers(min_value=HOUR_MS, max_value=3 * HOUR_MS),
    st.sampled_from([0.01, 0.5, 0.9, 0.99, 1.0]),
    st.booleans(),
)
def test_percentiles_from_packed_rollups_equal_ddsketch_over_the_raw_points(
    data: dict, sampling: tuple, start: int, end: int, q: float, group: bool
) -> None:
    """The rollup plan (raw edge minutes, packed minute and hour sketches) answers what a
    DDSketch of each bucket's raw points answers, exactly, with the first point's timestamp."""
    points = {host: sorted((T0 + t, v) for t, v in pts.items()) for host, pts in data.items()}
    metric: dict = {"name": "lat", "aggregators": [
        {"name": "percentile", "percentile": q,
         "sampling": {"value": sampling[0], "unit": sampling[1]}}]}  # fmt: skip
    if group:
        metric["group_by"] = [{"name": "tag", "tags": ["host"]}]
    query = parse_query({"start_absolute": T0 + start, "end_absolute": T0 + end,
                         "metrics": [metric]}, 0)  # fmt: skip
    spec = query.metrics[0]
    plan = plan_metric(spec, query.start, query.end)
    if end - start >= 2 * MINUTE_MS:
        assert plan.uses_rollups and SKETCH in plan.fields
    answer = answer_metric(spec, query.start, query.end, _read_like_the_store(plan, points))
    width = sampling[0] * (MINUTE_MS if sampling[1] == "minutes" else HOUR_MS)
    groups = {host: [host] for host in sorted(points)} if group else {"": sorted(points)}
    for result, hosts in zip(answer["results"], groups.values(), strict=True):
        buckets: dict[int, list[tuple[int, float]]] = defaultdict(list)
        for host in hosts:
            for t, v in points[host]:
                if query.start <= t <= query.end:
                    buckets[t - t % width].append((t, v))
        expected = []
        for bucket in sorted(buckets):
            sketch = new_sketch()
            for _, v in buckets[bucket]:
                sketch.add(v)
            value = sketch.get_quantile_value(q)
            expected.append([min(t for t, _ in buckets[bucket]), float(value)])
        assert result["values"] == expected


def test_a_late_point_rewrites_its_hour_packed_row_with_the_right_sketch_bins() -> None:
    series = ("lat", "host=a")
    state = PartitionRollups(grace_ms=0)
    state.apply([(series, T0 + 1000, 5.0), (series, T0 + 61_000, -3.0)])
    state.apply([(series, T0 + 3 * MINUTE_MS, 0.0)])
    assert state.minutes_to_load([(series, T0 + 2000)]) == {(series, T0)}
    state.load_minute((series, T0), [(T0 + 1000, 5.0)])  # what raw_points holds
    changes = state.apply([(series, T0 + 2000, 7.0)])
    assert changes.late_points == 1
    everything = {1000: 5.0, 2000: 7.0, 61_000: -3.0, 3 * MINUTE_MS: 0.0}
    written = packed_row((series, T0), changes.hour_minutes[(series, T0)])
    assert written == packed_row((series, T0), _minutes(everything, T0))
    (columns,) = unpack_minutes([[_row(T0, written, ALL_FIELDS)]], ALL_FIELDS, T0, T0 + HOUR_MS - 1)
    bucket = np.zeros(len(columns), np.int64)
    got = bucket_quantiles(columns.sketch, bucket, np.array([0]), 0.7).tolist()
    reference = new_sketch()
    for value in everything.values():
        reference.add(value)
    assert got == [reference.get_quantile_value(0.7)]
