"""Pure delete logic: KairosDB delete bodies, validation, and rollups rebuilt after a delete."""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.errors import RecordRejected
from streams.metrics.columns import PACKED_SKETCH_COLUMNS
from streams.metrics.deletes import (
    delete_records,
    matches,
    partial_minutes,
    rebuild_hour,
    row_delete,
    stored_range,
    validate_delete,
    whole_metric_record,
)
from streams.metrics.ingest import KairosErrors
from streams.metrics.model import EARLIEST_MS, LATEST_MS, ROW_WIDTH_MS, tags_text
from streams.metrics.rollup import HOUR_MS, MINUTE_MS, Aggregate, PartitionRollups, minute_of
from streams.metrics.tables import packed_row

T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR_MS
ROW = T0 - T0 % ROW_WIDTH_MS


def test_a_delete_body_is_a_query_body_with_one_record_per_metric() -> None:
    body = {
        "start_absolute": T0,
        "end_relative": {"value": 1, "unit": "minutes"},
        "metrics": [
            {"name": "cpu", "tags": {"host": ["b", "a"], "dc": "eu"}, "aggregators": [
                {"name": "avg", "sampling": {"value": 1, "unit": "minutes"}}]},
            {"name": "mem"},
        ],
    }  # fmt: skip
    now = T0 + HOUR_MS
    cpu, mem = delete_records(body, now)
    assert cpu == {
        "metric": "cpu",
        "start_ms": T0,
        "end_ms": now - MINUTE_MS,
        "tags": {"dc": ["eu"], "host": ["a", "b"]},
        "whole_metric": False,
    }
    assert mem["metric"] == "mem" and mem["tags"] == {}
    assert whole_metric_record("cpu") == {
        "metric": "cpu",
        "start_ms": EARLIEST_MS,
        "end_ms": LATEST_MS,
        "tags": {},
        "whole_metric": True,
    }


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"metrics": [{"name": "cpu"}]}, "start_time relative or absolute time must be set"),
        ({"start_absolute": T0, "metrics": []}, "metric[] must have a size of at least 1"),
        ({"start_absolute": T0, "metrics": [{"name": ""}]}, "query.metric[0].name"),
        ({"start_absolute": T0, "end_absolute": T0 - 1, "metrics": [{"name": "c"}]}, "before"),
        ([1, 2], "query must be a JSON object"),
    ],
)
def test_bad_delete_bodies_get_kairos_errors(body: object, problem: str) -> None:
    with pytest.raises(KairosErrors) as caught:
        delete_records(body, T0)
    assert problem in caught.value.body()["errors"][0]


def _record(**changes: object) -> dict:
    record = {
        "delete_id": "d1",
        "metric": "cpu",
        "start_ms": T0,
        "end_ms": T0 + 1,
        "tags": {"host": ["a"]},
        "whole_metric": False,
        "requested_ms": T0,
    }
    return record | changes


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"delete_id": ""}, "delete_id"),
        ({"metric": " "}, "metric"),
        ({"end_ms": T0 - 1}, "end_ms"),
        ({"tags": {"host": []}}, "tags"),
    ],
)
def test_delete_records_no_request_could_make_are_rejected(changes: dict, field: str) -> None:
    validate_delete(_record())
    with pytest.raises(RecordRejected) as caught:
        validate_delete(_record(**changes))
    assert caught.value.field == field


def test_series_match_when_every_filtered_tag_has_a_listed_value() -> None:
    assert matches({}, {"host": "a"})
    assert matches({"host": ["a", "b"]}, {"host": "b", "dc": "eu"})
    assert not matches({"host": ["a"], "dc": ["us"]}, {"host": "a", "dc": "eu"})
    assert not matches({"rack": ["1"]}, {"host": "a"})
    assert stored_range(0, 2**62) == (EARLIEST_MS, LATEST_MS)


def test_a_row_delete_names_whole_minutes_whole_hours_and_partial_hours() -> None:
    plan = row_delete(ROW, T0 + 30_000, T0 + 2 * HOUR_MS + 90_000)
    assert plan is not None
    assert plan.whole_minutes == (T0 + MINUTE_MS, T0 + 2 * HOUR_MS)
    assert plan.whole_hours == (T0 + HOUR_MS, T0 + HOUR_MS)
    assert plan.partial_hours == (T0, T0 + 2 * HOUR_MS)
    assert not plan.whole_row
    assert partial_minutes(T0, plan.start, plan.end) == [T0]
    assert partial_minutes(T0 + 2 * HOUR_MS, plan.start, plan.end) == [T0 + 2 * HOUR_MS + MINUTE_MS]
    inside = row_delete(ROW, T0 + 1000, T0 + 2000)
    assert inside is not None
    assert (inside.whole_minutes, inside.whole_hours, inside.partial_hours) == (None, None, (T0,))
    whole = row_delete(ROW, 0, LATEST_MS)
    assert whole is not None and whole.whole_row and whole.partial_hours == ()
    assert (whole.start, whole.end) == (ROW, ROW + ROW_WIDTH_MS - 1)
    assert row_delete(ROW, ROW + ROW_WIDTH_MS, ROW + ROW_WIDTH_MS + 5) is None


values = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False).map(lambda v: round(v, 2))


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(st.integers(min_value=0, max_value=3 * HOUR_MS - 1), values, min_size=1),
    st.integers(min_value=0, max_value=3 * HOUR_MS),
    st.integers(min_value=0, max_value=3 * HOUR_MS),
)
def test_rollups_rebuilt_after_a_delete_equal_rollups_of_the_remaining_points(
    points: dict, a: int, b: int
) -> None:
    start, end = T0 + min(a, b), T0 + max(a, b)
    stored = {T0 + t: v for t, v in points.items()}
    remaining = {t: v for t, v in stored.items() if not start <= t <= end}
    minutes: dict[int, dict[int, float]] = defaultdict(dict)
    for t, v in stored.items():
        minutes[minute_of(t)][t] = v
    by_hour: dict[int, dict[int, Aggregate]] = defaultdict(dict)
    for minute, ps in minutes.items():
        stored_row = Aggregate.of_points(sorted(ps.items())).row()  # as rollups_1m holds it
        by_hour[minute - minute % HOUR_MS][minute] = Aggregate.from_row(stored_row)
    plan = row_delete(ROW, start, end)
    assert plan is not None
    after: dict[int, dict[int, Aggregate]] = {
        hour: dict(ms)
        for hour, ms in by_hour.items()
        if not (plan.whole_hours and plan.whole_hours[0] <= hour <= plan.whole_hours[1])
    }
    hour_rollups = {hour: None for hour in by_hour}
    for hour in plan.partial_hours:
        left = {
            m: [(t, v) for t, v in remaining.items() if minute_of(t) == m]
            for m in partial_minutes(hour, start, end)
        }
        rebuilt = rebuild_hour(hour, by_hour.get(hour, {}), start, end, left)
        after[hour] = rebuilt.minutes
        hour_rollups[hour] = rebuilt.hour
        assert set(rebuilt.removed) <= set(by_hour.get(hour, {}))
    for hour in after:
        if hour not in plan.partial_hours:
            hour_rollups[hour] = Aggregate.of_points(
                sorted((t, v) for t, v in remaining.items() if t - t % HOUR_MS == hour)
            )
    expected: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for t, v in sorted(remaining.items()):
        expected[minute_of(t)].append((t, v))
    got = {m: a for ms in after.values() for m, a in ms.items()}
    assert set(got) == set(expected)
    for minute, ps in expected.items():
        assert (got[minute].count, got[minute].first_ts, got[minute].last_ts) == (
            len(ps),
            ps[0][0],
            ps[-1][0],
        )
        assert got[minute].total == pytest.approx(sum(v for _, v in ps), abs=1e-6)
    for hour, aggregate in hour_rollups.items():
        inside = [(t, v) for t, v in remaining.items() if t - t % HOUR_MS == hour]
        if not inside:
            assert aggregate is None or aggregate.count == 0
        else:
            assert aggregate is not None and aggregate.count == len(inside)
            assert aggregate.maximum == max(v for _, v in inside)
    series = ("cpu", "host=a")
    for hour, left_minutes in after.items():
        wanted = {
            m: Aggregate.of_points(ps) for m, ps in expected.items() if m - m % HOUR_MS == hour
        }
        got_row, want_row = (
            packed_row((series, hour), left_minutes),
            packed_row((series, hour), wanted),
        )
        for column in PACKED_SKETCH_COLUMNS:
            assert got_row[column] == want_row[column], column


def test_forgotten_minutes_and_hours_are_read_again_before_new_points() -> None:
    series, other = ("cpu", tags_text({"host": "a"})), ("cpu", tags_text({"host": "b"}))
    state = PartitionRollups(grace_ms=10 * MINUTE_MS)
    state.apply([(series, T0 + 1000, 1.0), (series, T0 + 2000, 2.0), (other, T0 + 1000, 5.0)])
    assert state.minutes_to_load([(series, T0 + 3000)]) == set()
    state.forget({series}, T0 + 1500, T0 + 2500)
    assert state.minutes_to_load([(series, T0 + 3000), (other, T0 + 3000)]) == {(series, T0)}
    assert state.hours_to_load([(series, T0), (other, T0)]) == {(series, T0)}
    state.load_minute((series, T0), [(T0 + 1000, 1.0)])  # what the store has after the delete
    state.load_hour((series, T0), {})
    assert state.minutes_to_load([(series, T0 + 3000)]) == set()
    changes = state.apply([(series, T0 + 3000, 3.0)])
    assert changes.minutes[(series, T0)].count == 2
    assert changes.minutes[(series, T0)].total == 4.0
    assert changes.hours[(series, T0)].count == 2
