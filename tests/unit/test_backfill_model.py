"""The backfill's pure parts: which periods a range covers, and rebuilt rows equal to live ones."""

from __future__ import annotations

import pytest

from streams.bus.backfill_model import (
    BackfillInputError,
    BackfillWindow,
    MetricsRebuild,
    TracingRebuild,
)
from streams.metrics.model import tags_text
from streams.tracing.model import PartitionReports, ReportOptions
from tests.integration.faults import HOUR_MS, MINUTE_MS, traffic

HOUR = 1_700_002_800_000  # a whole hour (UTC)


def test_only_whole_minutes_and_hours_inside_the_range_are_written() -> None:
    window = BackfillWindow(HOUR - 30_000, HOUR + HOUR_MS + 90_000, margin_ms=60_000)
    assert window.first_minute_ms == HOUR and window.end_minute_ms == HOUR + HOUR_MS + MINUTE_MS
    assert window.has_minute(HOUR) and not window.has_minute(HOUR - MINUTE_MS)
    assert window.has_minute(HOUR + HOUR_MS) and not window.has_minute(HOUR + HOUR_MS + MINUTE_MS)
    assert window.has_hour(HOUR) and not window.has_hour(HOUR + HOUR_MS)
    assert window.read_from_ms == HOUR - 60_000
    assert window.read_to_ms == HOUR + HOUR_MS + 2 * MINUTE_MS


@pytest.mark.parametrize(("start", "end"), [(HOUR, HOUR + 59_999), (HOUR + 1, HOUR + 60_000)])
def test_a_range_without_a_whole_minute_is_refused(start: int, end: int) -> None:
    with pytest.raises(BackfillInputError, match="no whole minute"):
        BackfillWindow(start, end, 0)


def _trees_and_points() -> tuple[list[tuple[int, int, dict]], list[dict], object]:
    records, truth = traffic(HOUR - 2 * MINUTE_MS, 64, 3)
    trees, points = [], []
    for offset, (topic, key, record, _) in enumerate(records):
        if topic == "trace.messages":
            trees.append((hash(key) % 6, offset, record))
        else:
            points.append(record)
    return trees, points, truth


def test_tracing_rebuild_gives_the_live_minute_rows_and_whole_hours_only() -> None:
    trees, _, truth = _trees_and_points()
    window = BackfillWindow(HOUR, HOUR + HOUR_MS, 0)
    rebuild = TracingRebuild(window, 2_000, ReportOptions())
    for partition, offset, tree in trees:
        rebuild.add(partition, offset, tree)
    rows = rebuild.rows()

    live: list[dict] = []
    states: dict[int, PartitionReports] = {}
    for partition, offset, tree in trees:
        state = states.setdefault(partition, PartitionReports(grace_ms=2_000))
        state.apply(tree, offset)
        live += state.close_due()
    for state in states.values():
        live += state.flush_all()
    inside = [r for r in live if HOUR <= r["period_start_ms"] < HOUR + HOUR_MS]
    assert sorted((r for r, _ in rows.minutes), key=repr) == sorted(inside, key=repr)
    assert {r["period_start_ms"] for r in rows.hours} == {HOUR}
    totals = {
        (r["domain"], r["type"]): r["count"]
        for r in rows.hours
        if r["report"] == "transaction" and r["host"] == "All" and r["name"] == ""
    }
    hours = truth.transaction_hours()
    assert totals == {(d, t): v.count for (d, h, t), v in hours.items() if h == HOUR}
    assert rebuild.counts.outside > 0 and len(rows.index) == 3 * 60


def test_metrics_rebuild_equals_the_ground_truth_and_applies_the_series_limit() -> None:
    _, points, truth = _trees_and_points()
    window = BackfillWindow(HOUR, HOUR + HOUR_MS, 0)
    known = {"kill.latency": [{"host": "a"}], "kill.queue": []}
    rebuild = MetricsRebuild(window, 2, lambda metric: known[metric])
    for point in points:
        rebuild.add(point)
    rebuild.add({**points[0], "tags": {"host": "c"}})  # a third series of kill.latency: refused
    rows = rebuild.rows()
    expected = {k: v for k, v in truth.rollups().items() if HOUR <= k[2] < HOUR + HOUR_MS}
    got = {(m, t, s): (a.count, a.row()["sum"]) for m, t, s, a in rows.minutes}
    assert got.keys() == expected.keys()
    assert all(got[k][0] == expected[k][0] and got[k][1] == pytest.approx(expected[k][1])
               for k in expected)  # fmt: skip
    hours = {(m, t, s): a.count for m, t, s, a in rows.hours}
    assert hours == {k: v[0] for k, v in truth.rollups(HOUR_MS).items() if k[2] == HOUR}
    assert sorted(rows.new_series) == [
        ("kill.latency", tags_text({"host": "b"})),
        ("kill.queue", tags_text({"host": "a", "zone": "eu"})),
    ]
    assert rebuild.counts.rejected == 1


def test_tracing_rebuild_refuses_trees_ahead_of_their_write_time_as_live_did() -> None:
    """Validation measures a tree against when it was written (the broker's append time), not
    the clock at rebuild time: a tree 6 minutes ahead of its write is refused now too, though
    it lies in the past."""
    trees, _, _ = _trees_and_points()
    window = BackfillWindow(HOUR, HOUR + HOUR_MS, 0)
    rebuild = TracingRebuild(window, 2_000, ReportOptions())
    partition, offset, tree = trees[0]
    written_us = tree["root"]["timestamp_us"] - 6 * 60_000_000
    rebuild.add(partition, offset, tree, written_us)
    assert rebuild.counts.rejected == 1
    rebuild.add(partition, offset, tree, written_us + 2 * 60_000_000)
    assert rebuild.counts.rejected == 1
