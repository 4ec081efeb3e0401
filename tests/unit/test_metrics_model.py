"""Pure metric logic against brute-force references: ingest, rollups, queries, cardinality."""

from __future__ import annotations

import gzip
import json
import math
import statistics
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.metrics.ingest import KairosErrors, decompress, parse_datapoints, parse_put
from streams.metrics.model import (
    CardinalityExceeded,
    MetricSeries,
    admit_series,
    cardinality_level,
    tags_text,
)
from streams.metrics.query import (
    Plan,
    SeriesData,
    answer_metric,
    parse_query,
    plan_metric,
)
from streams.metrics.rollup import (
    HOUR_MS,
    MINUTE_MS,
    Aggregate,
    PartitionRollups,
    minute_of,
    sketch_bytes,
    sketch_from_bytes,
)

T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR_MS  # an hour boundary
values = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).map(lambda v: round(v, 3))
point_lists = st.lists(
    st.tuples(st.integers(min_value=0, max_value=3 * HOUR_MS), values), min_size=1, max_size=80
)


# --- ingest ----------------------------------------------------------------------------------


def test_both_kairos_forms_and_ttl_become_points() -> None:
    body = json.dumps(
        [
            {
                "name": "http.latency",
                "tags": {"host": "web1", "dc": "eu"},
                "ttl": 300,
                "datapoints": [[1700000000000, 12.5], [1700000010000, 13]],
            },
            {"name": "queue.depth", "timestamp": 1700000000000, "value": 7, "tags": {"h": 1}},
        ]
    ).encode()
    points = parse_datapoints(body)
    assert [(p["name"], p["timestamp_ms"], p["value"], p["ttl_seconds"]) for p in points] == [
        ("http.latency", 1700000000000, 12.5, 300),
        ("http.latency", 1700000010000, 13.0, 300),
        ("queue.depth", 1700000000000, 7.0, 0),
    ]
    assert points[2]["tags"] == {"h": "1"}


def test_gzip_bodies_are_read_and_bombs_are_refused() -> None:
    raw = json.dumps([{"name": "a", "timestamp": 1700000000000, "value": 1, "tags": {"h": "x"}}])
    packed = gzip.compress(raw.encode())
    assert decompress(packed, "gzip", "application/json", 10_000) == raw.encode()
    assert decompress(packed, "", "application/gzip", 10_000) == raw.encode()
    with pytest.raises(KairosErrors, match="larger than 100 bytes"):
        decompress(gzip.compress(b"[" + b" " * 10_000 + b"]"), "gzip", "", 100)
    with pytest.raises(KairosErrors, match="gzip"):
        decompress(b"not gzip", "", "application/gzip", 100)
    assert decompress(b"[]", "gzip", "", 100) == b"[]"  # already inflated by aiohttp


@pytest.mark.parametrize(
    ("metric", "problem"),
    [
        ({"name": "m", "timestamp": 1700000000000, "value": 1}, "metric[0](name=m).tags count"),
        ({"name": "m", "tags": {}, "datapoints": [[1700000000000, 1]]}, ".tags count"),
        ({"name": "m", "tags": {"h": "a"}, "datapoints": [[1700000000000, "x"]]}, "not a number"),
        ({"name": "m", "tags": {"h": "a"}, "datapoints": [[1700000000000, "NaN"]]}, "finite"),
        ({"name": "m", "tags": {"h": "a"}, "datapoints": [["soon", 1]]}, "timestamp 'soon'"),
        ({"name": "m", "tags": {"h": "a"}, "datapoints": [[12, 1]]}, "between 2000 and 2200"),
        ({"name": "", "tags": {"h": "a"}, "timestamp": 1700000000000, "value": 1}, "name may not"),
        ({"name": "m" * 600, "tags": {"h": "a"}, "timestamp": 1700000000000, "value": 1}, "longer"),
        (
            {"name": "m", "tags": {"h": "a"}, "timestamp": 1700000000000, "value": 1, "ttl": -1},
            "ttl",
        ),
    ],
)
def test_bad_points_get_kairos_errors_naming_the_problem(metric: dict, problem: str) -> None:
    with pytest.raises(KairosErrors) as raised:
        parse_datapoints(json.dumps([metric]).encode())
    assert problem in " ".join(raised.value.errors)
    assert raised.value.body() == {"errors": raised.value.errors}


def test_every_bad_metric_is_reported_at_once() -> None:
    body = json.dumps([{"name": "a"}, {"name": "b", "tags": {"h": "x"}}]).encode()
    with pytest.raises(KairosErrors) as raised:
        parse_datapoints(body)
    assert len(raised.value.errors) == 2
    with pytest.raises(KairosErrors, match="Invalid json"):
        parse_datapoints(b"[{")


def test_telnet_put_seconds_milliseconds_and_errors() -> None:
    point = parse_put("put sys.load 1700000000 1.5 host=a dc=eu")
    assert point["timestamp_ms"] == 1_700_000_000_000
    assert point["tags"] == {"host": "a", "dc": "eu"}
    assert parse_put("put sys.load 1700000000123 2 host=a")["timestamp_ms"] == 1700000000123
    assert parse_put("putm sys.load 1700000000123 2 host=a")["timestamp_ms"] == 1700000000123
    for line, problem in [
        ("put sys.load 1700000000 1.5", "at least one tag"),
        ("put sys.load 1700000000 abc host=a", "not a number"),
        ("put sys.load 1700000000 nan host=a", "finite"),
        ("put sys.load later 1 host=a", "not a whole number"),
        ("put sys.load 1700000000 1 host", "name=value"),
        ("get x", "unknown command"),
    ]:
        with pytest.raises(KairosErrors, match=problem):
            parse_put(line)


# --- aggregates ------------------------------------------------------------------------------


def _reference(points: list[tuple[int, float]]) -> dict:
    ordered = sorted(points)
    vs = [v for _, v in points]
    return {
        "count": len(vs),
        "sum": math.fsum(vs),
        "min": min(vs),
        "max": max(vs),
        "first": ordered[0][1],
        "dev": statistics.stdev(vs) if len(vs) > 1 else 0.0,
    }


def _check(aggregate: Aggregate, points: list[tuple[int, float]]) -> None:
    expected = _reference(points)
    assert aggregate.count == expected["count"]
    assert aggregate.total == pytest.approx(expected["sum"], rel=1e-9, abs=1e-6)
    assert (aggregate.minimum, aggregate.maximum) == (expected["min"], expected["max"])
    assert aggregate.first_value == expected["first"]
    assert aggregate.std_dev() == pytest.approx(expected["dev"], rel=1e-6, abs=1e-6)
    latest = max(t for t, _ in points)
    assert aggregate.last_ts == latest
    assert aggregate.last_value in [v for t, v in points if t == latest]


@given(point_lists, st.integers(min_value=1, max_value=79))
def test_merged_aggregates_equal_the_aggregate_of_all_points(points: list, cut: int) -> None:
    points = list({t: v for t, v in points}.items())
    left, right = points[:cut], points[cut:]
    merged = Aggregate.of_points(left)
    merged.merge(Aggregate.of_points(right))
    _check(merged, points)
    whole = Aggregate.of_points(points)
    for q in (0.01, 0.5, 0.95, 1.0):
        assert merged.quantile(q) == whole.quantile(q)


@given(st.lists(st.floats(min_value=0.001, max_value=1e6), min_size=1, max_size=300))
def test_sketch_quantiles_are_within_one_percent_and_survive_serialization(vs: list) -> None:
    aggregate = Aggregate.of_points(enumerate(vs))
    restored = sketch_from_bytes(sketch_bytes(aggregate.sketch))
    ordered = sorted(vs)
    for q in (0.5, 0.9, 0.99, 1.0):
        exact = ordered[int(q * (len(ordered) - 1))]
        assert restored.get_quantile_value(q) == pytest.approx(exact, rel=0.0101)
        assert restored.get_quantile_value(q) == aggregate.quantile(q)


# --- rollups ---------------------------------------------------------------------------------

SERIES = [("cpu", tags_text({"host": "a"})), ("cpu", tags_text({"host": "b"}))]


def _roll(points: list[tuple[int, int, float]], batch: int, grace: int) -> PartitionRollups:
    state = PartitionRollups(grace)
    raw: dict[tuple, dict[int, float]] = defaultdict(dict)
    rows_m: dict = {}
    rows_h: dict = {}
    for start in range(0, len(points), batch):
        chunk = [(SERIES[s], T0 + t, v) for s, t, v in points[start : start + batch]]
        for series, t, v in chunk:
            raw[(series, minute_of(t))][t] = v
        for key in state.minutes_to_load((s, t) for s, t, _ in chunk):
            state.load_minute(key, raw[key].items())
        touched = {(s, minute_of(t)) for s, t, _ in chunk}
        for key in state.hours_to_load(touched):
            state.load_hour(
                key,
                {
                    m: rows_m[(key[0], m)]
                    for (s, m) in rows_m
                    if s == key[0] and m - m % HOUR_MS == key[1]
                },
            )
        changes = state.apply(chunk)
        rows_m.update(changes.minutes)
        rows_h.update(changes.hours)
    state.rows = (rows_m, rows_h)  # type: ignore[attr-defined]
    return state


events = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=1),
        st.integers(min_value=0, max_value=2 * HOUR_MS),
        values,
    ),
    min_size=1,
    max_size=120,
)


@settings(max_examples=60, deadline=None)
@given(events, st.integers(min_value=1, max_value=40), st.sampled_from([0, 30_000, 600_000]))
def test_rollups_equal_brute_force_minutes_and_hours_for_any_batching(
    points: list, batch: int, grace: int
) -> None:
    state = _roll(points, batch, grace)
    minutes, hours = state.rows  # type: ignore[attr-defined]
    by_minute: dict = defaultdict(dict)
    by_hour: dict = defaultdict(dict)
    for s, t, v in points:
        by_minute[(SERIES[s], minute_of(T0 + t))][T0 + t] = v
        by_hour[(SERIES[s], (T0 + t) - (T0 + t) % HOUR_MS)][T0 + t] = v
    assert set(minutes) == set(by_minute)
    assert set(hours) == set(by_hour)
    for key, expected in by_minute.items():
        _check(minutes[key], list(expected.items()))
    for key, expected in by_hour.items():
        _check(hours[key], list(expected.items()))
    once = _roll(points, len(points), grace).rows  # type: ignore[attr-defined]
    for key, aggregate in hours.items():
        assert aggregate.count == once[1][key].count
        assert aggregate.quantile(0.5) == once[1][key].quantile(0.5)


def test_late_points_are_counted_and_applied() -> None:
    state = PartitionRollups(grace_ms=0)
    series = SERIES[0]
    state.apply([(series, T0 + 5 * MINUTE_MS, 1.0)])
    changes = state.apply([(series, T0 + 1000, 2.0)])
    assert changes.late_points == 1 and state.late_points == 1
    assert changes.minutes[(series, T0)].count == 1
    assert state.minutes_to_load([(series, T0 + 2000)]) == {(series, T0)}
    fresh = PartitionRollups(grace_ms=0, known_until=T0 + 10 * MINUTE_MS)
    assert fresh.minutes_to_load([(series, T0 + 3 * MINUTE_MS)]) == {(series, T0 + 3 * MINUTE_MS)}
    assert fresh.minutes_to_load([(series, T0 + 11 * MINUTE_MS)]) == set()


# --- queries ---------------------------------------------------------------------------------


def _query(metric: dict, start: int, end: int) -> tuple:
    query = parse_query({"start_absolute": start, "end_absolute": end, "metrics": [metric]}, 0)
    return query, query.metrics[0]


def _series_for(plan: Plan, points_by_series: dict) -> list[SeriesData]:
    """What the store would read for `plan`: raw in raw ranges, brute-force rollups elsewhere."""
    result = []
    for tags, points in points_by_series.items():
        data = SeriesData(dict(tags))
        for low, high in plan.raw:
            data.points += [(t, v) for t, v in points if low <= t <= high]
        data.points.sort()
        for ranges, width in ((plan.minutes, MINUTE_MS), (plan.hours, HOUR_MS)):
            buckets: dict = defaultdict(list)
            for low, high in ranges:
                for t, v in points:
                    if low <= t <= high:
                        buckets[t - t % width].append((t, v))
            data.pieces += [(b, Aggregate.of_points(sorted(ps))) for b, ps in buckets.items()]
        result.append(data)
    return result


def _close(a: list, b: list) -> None:
    assert len(a) == len(b)
    for (ta, va), (tb, vb) in zip(a, b, strict=True):
        assert ta == tb
        assert va == pytest.approx(vb, rel=1e-9, abs=1e-6)


aggregator_names = st.sampled_from(
    ["avg", "sum", "min", "max", "count", "first", "last", "dev", "percentile"]
)
series_points = st.dictionaries(
    st.sampled_from(["a", "b", "c"]),
    st.dictionaries(st.integers(min_value=0, max_value=3 * HOUR_MS), values, min_size=1),
    min_size=1,
)


@settings(max_examples=80, deadline=None)
@given(
    series_points,
    aggregator_names,
    st.sampled_from([(1, "minutes"), (5, "minutes"), (1, "hours"), (2, "hours"), (30, "seconds")]),
    st.integers(min_value=0, max_value=HOUR_MS),
    st.integers(min_value=HOUR_MS, max_value=3 * HOUR_MS),
    st.booleans(),
)
def test_rollup_answers_equal_raw_answers(
    data: dict, name: str, sampling: tuple, start: int, end: int, group: bool
) -> None:
    points_by_series = {
        (("host", host),): sorted((T0 + t, v) for t, v in pts.items()) for host, pts in data.items()
    }
    metric = {
        "name": "cpu",
        "aggregators": [
            {
                "name": name,
                "percentile": 0.9,
                "sampling": {"value": sampling[0], "unit": sampling[1]},
            }
        ],
    }
    if group:
        metric["group_by"] = [{"name": "tag", "tags": ["host"]}]
    query, spec = _query(metric, T0 + start, T0 + end)
    plan = plan_metric(spec, query.start, query.end)
    if sampling[1] != "seconds" and end - start >= 2 * MINUTE_MS:
        assert plan.uses_rollups
    raw_plan = Plan(((query.start, query.end),))
    from_rollups = answer_metric(spec, query.start, query.end, _series_for(plan, points_by_series))
    from_raw = answer_metric(spec, query.start, query.end, _series_for(raw_plan, points_by_series))
    assert from_rollups["sample_size"] == from_raw["sample_size"]
    for left, right in zip(from_rollups["results"], from_raw["results"], strict=True):
        assert left["tags"] == right["tags"] and left["group_by"] == right["group_by"]
        _close(left["values"], right["values"])


@settings(max_examples=60, deadline=None)
@given(series_points, st.sampled_from(["avg", "sum", "min", "max", "count", "dev", "first"]))
def test_range_aggregators_equal_brute_force(data: dict, name: str) -> None:
    points = sorted((T0 + t, v) for pts in data.values() for t, v in pts.items())
    series = [
        SeriesData({"host": h}, sorted((T0 + t, v) for t, v in pts.items()))
        for h, pts in data.items()
    ]
    query, spec = _query(
        {
            "name": "cpu",
            "aggregators": [{"name": name, "sampling": {"value": 10, "unit": "minutes"}}],
        },
        T0,
        T0 + 3 * HOUR_MS,
    )
    answer = answer_metric(spec, query.start, query.end, series)
    buckets: dict = defaultdict(list)
    for t, v in points:
        buckets[t - t % (10 * MINUTE_MS)].append((t, v))
    expected = []
    for bucket in sorted(buckets):
        ps = buckets[bucket]
        reference = _reference(ps)
        vs = [v for _, v in ps]
        value = {
            "avg": reference["sum"] / len(vs),
            "sum": reference["sum"],
            "min": reference["min"],
            "max": reference["max"],
            "count": len(vs),
            "dev": reference["dev"],
            "first": min(ps)[1],
        }[name]
        expected.append((ps[0][0], value))
    _close(answer["results"][0]["values"], expected)
    assert answer["sample_size"] == len(points)


def test_chained_aggregators_rate_diff_scale_div_sampler_trim_filter() -> None:
    series = [SeriesData({"host": "a"}, [(T0, 1.0), (T0 + 1000, 3.0), (T0 + 3000, 7.0)])]

    def run(*aggregators: dict) -> list:
        query, spec = _query({"name": "m", "aggregators": list(aggregators)}, T0, T0 + 10_000)
        return answer_metric(spec, query.start, query.end, series)["results"][0]["values"]

    assert run({"name": "diff"}) == [[T0 + 1000, 2.0], [T0 + 3000, 4.0]]
    assert run({"name": "rate", "unit": "seconds"}) == [[T0 + 1000, 2.0], [T0 + 3000, 2.0]]
    assert run({"name": "sampler", "unit": "seconds"}) == [[T0 + 1000, 3.0], [T0 + 3000, 3.5]]
    assert run({"name": "scale", "factor": 2}) == [[T0, 2.0], [T0 + 1000, 6.0], [T0 + 3000, 14.0]]
    assert run({"name": "div", "divisor": 2})[0] == [T0, 0.5]
    assert run({"name": "trim", "trim": "first"}) == [[T0 + 1000, 3.0], [T0 + 3000, 7.0]]
    assert run({"name": "filter", "filter_op": "gt", "threshold": 2}) == [[T0, 1.0]]
    assert run({"name": "least_squares", "sampling": {"value": 1, "unit": "minutes"}}) == [
        [T0, pytest.approx(1.0)],
        [T0 + 3000, pytest.approx(7.0)],
    ]
    summed = run(
        {"name": "sum", "sampling": {"value": 2, "unit": "seconds"}, "align_start_time": True},
        {"name": "scale", "factor": 10},
    )
    assert summed == [[T0, 40.0], [T0 + 2000, 70.0]]


def test_group_by_time_value_limit_order_and_exclude_tags() -> None:
    series = [
        SeriesData({"host": "a", "dc": "eu"}, [(T0 + i * 1000, float(i)) for i in range(10)]),
        SeriesData({"host": "b", "dc": "us"}, [(T0 + 500, 100.0)]),
    ]

    def run(metric: dict) -> dict:
        query, spec = _query({"name": "m", **metric}, T0, T0 + 60_000)
        return answer_metric(spec, query.start, query.end, series)

    by_value = run({"group_by": [{"name": "value", "range_size": 5}]})["results"]
    assert [r["group_by"][1]["group"]["group_number"] for r in by_value] == [0, 1, 20]
    assert by_value[2]["tags"] == {"dc": ["us"], "host": ["b"]}
    by_time = run(
        {
            "group_by": [
                {"name": "time", "range_size": {"value": 1, "unit": "seconds"}, "group_count": 2}
            ]
        }
    )["results"]
    assert [len(r["values"]) for r in by_time] == [6, 5]
    limited = run({"limit": 3, "order": "desc", "tags": {"host": ["a"]}})["results"][0]
    assert limited["values"] == [[T0 + 9000, 9], [T0 + 8000, 8], [T0 + 7000, 7]]
    assert "tags" not in run({"exclude_tags": True})["results"][0]
    nothing = run({"tags": {"host": ["zzz"]}})
    assert nothing == {"sample_size": 0, "results": [{"name": "m", "tags": {}, "values": []}]}
    by_tag = run({"group_by": [{"name": "tag", "tags": ["dc"]}]})["results"]
    assert [r["group_by"][1] for r in by_tag] == [
        {"name": "tag", "tags": ["dc"], "group": {"dc": "eu"}},
        {"name": "tag", "tags": ["dc"], "group": {"dc": "us"}},
    ]


def test_planner_reads_hours_minutes_and_raw_edges() -> None:
    spec = {
        "name": "m",
        "aggregators": [{"name": "avg", "sampling": {"value": 1, "unit": "hours"}}],
    }
    query, metric = _query(spec, T0 - 90_500, T0 + 2 * HOUR_MS + 61_000)
    plan = plan_metric(metric, query.start, query.end)
    assert plan.raw == ((T0 - 90_500, T0 - 60_001), (T0 + 2 * HOUR_MS + 60_000, query.end))
    assert plan.minutes == ((T0 - 60_000, T0 - 1), (T0 + 2 * HOUR_MS, T0 + 2 * HOUR_MS + 59_999))
    assert plan.hours == ((T0, T0 + 2 * HOUR_MS - 1),)
    raw_only = [
        {"name": "m"},
        {
            "name": "m",
            "aggregators": [{"name": "avg", "sampling": {"value": 90, "unit": "seconds"}}],
        },
        {"name": "m", "limit": 5, "aggregators": spec["aggregators"]},
        {"name": "m", "aggregators": [{"name": "least_squares"}]},
        {
            "name": "m",
            "aggregators": spec["aggregators"],
            "group_by": [{"name": "value", "range_size": 10}],
        },
    ]
    for body in raw_only:
        query, metric = _query(body, T0, T0 + HOUR_MS)
        assert not plan_metric(metric, query.start, query.end).uses_rollups


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"metrics": [{"name": "m"}]}, "start_time relative or absolute time must be set"),
        ({"start_absolute": 1, "metrics": []}, "metric[] must have a size"),
        (
            {"start_relative": {"value": 1, "unit": "fortnights"}, "metrics": [{"name": "m"}]},
            "unit",
        ),
        (
            {"start_absolute": 1, "metrics": [{"name": "m", "aggregators": [{"name": "js_x"}]}]},
            "aggregators[0].name 'js_x'",
        ),
        (
            {
                "start_absolute": 1,
                "metrics": [
                    {"name": "m", "aggregators": [{"name": "percentile", "percentile": 2}]}
                ],
            },
            "percentile must be",
        ),
        (
            {"start_absolute": 1, "metrics": [{"name": "m", "group_by": [{"name": "x"}]}]},
            "group_by[0].name",
        ),
        ({"start_absolute": 10, "end_absolute": 5, "metrics": [{"name": "m"}]}, "before the end"),
    ],
)
def test_bad_queries_name_the_problem(body: dict, problem: str) -> None:
    with pytest.raises(KairosErrors) as raised:
        parse_query(body, 1_700_000_000_000)
    assert problem in raised.value.errors[0]


def test_relative_times_and_calendar_units() -> None:
    now = 1_700_000_000_000
    query = parse_query(
        {
            "start_relative": {"value": 1, "unit": "hours"},
            "end_relative": {"value": "5", "unit": "minutes"},
            "metrics": [{"name": "m"}],
        },
        now,
    )
    assert (query.start, query.end) == (now - HOUR_MS, now - 5 * MINUTE_MS)
    months = parse_query(
        {"start_relative": {"value": 1, "unit": "months"}, "metrics": [{"name": "m"}]}, now
    )
    assert 28 * 86_400_000 <= now - months.start <= 31 * 86_400_000


# --- cardinality -----------------------------------------------------------------------------


def test_cardinality_guard_names_metric_limit_and_worst_tag() -> None:
    known = MetricSeries("api.calls", [{"host": "a", "user": "u1"}])
    assert admit_series(known, {"host": "a", "user": "u2"}, 3) is True
    assert admit_series(known, {"host": "a", "user": "u2"}, 3) is False
    assert admit_series(known, {"host": "b", "user": "u3"}, 3) is True
    assert cardinality_level(len(known.series), 3) == "full"
    with pytest.raises(CardinalityExceeded) as raised:
        admit_series(known, {"host": "a", "user": "u4"}, 3)
    message = str(raised.value)
    assert "'api.calls'" in message and "limit of 3" in message and "'user'" in message
    assert raised.value.error_type == "cardinality"
    assert known.rejected == 1
    assert admit_series(known, {"host": "a", "user": "u1"}, 3) is False
    assert cardinality_level(8, 10) == "warning" and cardinality_level(7, 10) == "ok"
