"""Pure replay logic: time parsing, range planning, rate limiting and checkpoint maths."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.bus.replay_model import (
    Checkpoint,
    PartitionRange,
    RateLimiter,
    ReplayInputError,
    ReplayPlan,
    bounded_range,
    job_id,
    offset_for,
    parse_partition_offsets,
    parse_time_ms,
    replay_spec,
)

NOW = 1_717_243_200_000  # 2024-06-01T12:00:00Z


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("-2h", NOW - 2 * 3_600_000),
        ("-30m", NOW - 30 * 60_000),
        ("- 1.5d", NOW - 36 * 3_600_000),
        ("-500ms", NOW - 500),
        ("2024-06-01T12:00:00Z", NOW),
        ("2024-06-01T14:00:00+02:00", NOW),
        ("2024-06-01T12:00:00", NOW),
        ("2024-06-01 12:00:00.250", NOW + 250),
        ("1717243200000", NOW),
    ],
)
def test_times_parse_iso_relative_and_epoch(text: str, expected: int) -> None:
    assert parse_time_ms(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "-2x", "+2h", "2024-13-01", ""])
def test_bad_times_name_the_accepted_forms(text: str) -> None:
    with pytest.raises(ReplayInputError, match="ISO-8601"):
        parse_time_ms(text, NOW)


def test_offsets_parse_for_every_or_each_partition() -> None:
    assert parse_partition_offsets("1200") == {None: 1200}
    offsets = parse_partition_offsets("0:10, 3:50,7")
    assert offsets == {0: 10, 3: 50, None: 7}
    assert offset_for(offsets, 3) == 50
    assert offset_for(offsets, 1) == 7
    assert offset_for({0: 1}, 1) is None
    for bad in ("a", "0:x", "-1", "1:-5", ","):
        with pytest.raises(ReplayInputError):
            parse_partition_offsets(bad)


def test_ranges_clamp_into_the_watermarks() -> None:
    assert bounded_range(0, 100, 200, 150, 180) == PartitionRange(0, 150, 180)
    assert bounded_range(0, 100, 200, 10, 180).start == 100, "before retention: from the low mark"
    assert bounded_range(0, 100, 200, 150, None).end == 200, "no end: to the log end"
    assert bounded_range(0, 100, 200, -1, -1).count == 0, "no record after the start time"
    assert bounded_range(0, 100, 200, 190, 120).count == 0, "an inverted range is empty"
    assert bounded_range(0, 0, 0, None, None).count == 0


@given(
    low=st.integers(0, 1000),
    size=st.integers(0, 1000),
    start=st.one_of(st.none(), st.integers(-1, 3000)),
    end=st.one_of(st.none(), st.integers(-1, 3000)),
)
def test_a_range_always_lies_inside_the_log(
    low: int, size: int, start: int | None, end: int | None
) -> None:
    high = low + size
    result = bounded_range(2, low, high, start, end)
    assert low <= result.start <= result.end <= high
    assert result.count == result.end - result.start


def test_the_rate_limiter_holds_the_long_run_rate() -> None:
    limiter = RateLimiter(1000, now=0.0)
    assert limiter.delay(1000, 0.0) == 0.0, "a second's worth may go at once"
    assert limiter.delay(500, 0.0) == pytest.approx(0.5)
    clock, sent = 0.5, 0
    for _ in range(100):
        clock += limiter.delay(100, clock)
        sent += 100
    assert sent / clock == pytest.approx(1000, rel=0.05)
    assert RateLimiter(None, 0.0).delay(10**9, 0.0) == 0.0
    with pytest.raises(ReplayInputError):
        RateLimiter(-5, 0.0)


@given(st.lists(st.integers(1, 5000), min_size=1, max_size=50), st.floats(10, 10_000))
def test_the_rate_limiter_never_exceeds_rate_plus_one_burst(
    batches: list[int], rate: float
) -> None:
    limiter = RateLimiter(rate, now=0.0)
    clock = 0.0
    for size in batches:
        clock += limiter.delay(size, clock)
    assert sum(batches) <= rate * clock + rate + 1e-6


def _plan() -> ReplayPlan:
    return ReplayPlan(
        "p.metrics.points",
        (PartitionRange(0, 10, 20), PartitionRange(1, 5, 5), PartitionRange(2, 0, 100)),
        replay_spec(topic="metrics.points", from_time="-2h"),
    )


def test_a_checkpoint_resumes_where_it_stopped() -> None:
    checkpoint = Checkpoint.start(_plan(), "p.backfill")
    assert checkpoint.done == 0 and checkpoint.remaining().total == 110
    checkpoint.advance(0, 15)
    checkpoint.advance(2, 60)
    checkpoint.advance(2, 40)  # an older position never moves it back
    restored = Checkpoint.from_json(checkpoint.to_json())
    assert restored == checkpoint
    remaining = restored.remaining()
    assert remaining.range_of(0) == PartitionRange(0, 15, 20)
    assert remaining.range_of(2) == PartitionRange(2, 60, 100)
    assert restored.done == 65 and remaining.total == 45
    restored.advance(0, 20)
    restored.advance(2, 100)
    assert restored.finished


@given(st.lists(st.tuples(st.sampled_from([0, 1, 2]), st.integers(0, 200)), max_size=30))
def test_done_and_remaining_always_add_up(moves: list[tuple[int, int]]) -> None:
    checkpoint = Checkpoint.start(_plan(), "p.backfill")
    for partition, offset in moves:
        checkpoint.advance(partition, offset)
    assert checkpoint.done + checkpoint.remaining().total == _plan().total


def test_the_job_name_follows_the_request_as_given() -> None:
    spec = replay_spec(topic="t", from_time="-2h", to_time=None)
    assert spec == replay_spec(to_time="", from_time="-2h", topic="t")
    assert job_id("a.b", "c", spec) == job_id("a.b", "c", spec)
    assert job_id("a.b", "c", spec) != job_id("a.b", "d", spec)
    assert "/" not in job_id("a/b", "c", spec)


def test_an_unreadable_checkpoint_says_what_to_do() -> None:
    with pytest.raises(ReplayInputError, match="--restart"):
        Checkpoint.from_json("{not json")
