"""The latency sketch: 1% relative error on skewed and bimodal data, exact merges, encoding."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.tracing.sketch import REPORT_QUANTILES, LatencySketch, SketchError

QUANTILES = (0.0, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0)
BOUND = 0.01 + 1e-9


def exact_quantile(values: list[float], q: float) -> float:
    """The lower q-quantile: the value of rank floor(q * (n - 1)), as DDSketch defines rank."""
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


def assert_within_bound(sketch: LatencySketch, values: list[float]) -> None:
    for q in QUANTILES:
        exact = exact_quantile(values, q)
        estimate = sketch.quantile(q)
        assert estimate is not None
        assert abs(estimate - exact) <= BOUND * exact, (q, exact, estimate)


# Durations in microseconds: log-normal (the usual long right tail), Pareto (heavier),
# and two modes (cache hits near 200 us, misses near 80 ms).
lognormal = st.lists(
    st.floats(min_value=4.0, max_value=16.0).map(lambda x: round(math.exp(x))),
    min_size=1,
    max_size=400,
)
pareto = st.lists(
    st.floats(min_value=0.0, max_value=0.9999).map(lambda u: round(100 / (1 - u) ** (1 / 1.2))),
    min_size=1,
    max_size=400,
)
bimodal = st.lists(
    st.one_of(st.integers(150, 260), st.integers(60_000, 110_000)), min_size=1, max_size=400
)
latencies = st.one_of(lognormal, pareto, bimodal)


@settings(max_examples=200, deadline=None)
@given(latencies)
def test_quantiles_are_within_one_percent_of_exact(values: list[int]) -> None:
    assert_within_bound(LatencySketch.of(values), values)


def test_a_large_skewed_sample_stays_within_the_bound() -> None:
    import random

    generator = random.Random(7)
    values = [round(generator.lognormvariate(9, 1.5)) for _ in range(50_000)]
    values += [round(generator.gauss(250_000, 10_000)) for _ in range(5_000)]
    assert_within_bound(LatencySketch.of(values), values)


def test_zero_durations_count_and_are_the_minimum() -> None:
    sketch = LatencySketch.of([0, 0, 0, 5_000])
    assert sketch.quantile(0.5) == 0
    assert sketch.quantile(1.0) == 5_000
    assert sketch.count == 4


@settings(max_examples=100, deadline=None)
@given(latencies, latencies, latencies)
def test_merge_is_associative_and_commutative(a: list[int], b: list[int], c: list[int]) -> None:
    sa, sb, sc = LatencySketch.of(a), LatencySketch.of(b), LatencySketch.of(c)
    left = sa.copy()
    left.merge(sb)
    left.merge(sc)
    inner = sb.copy()
    inner.merge(sc)
    right = sa.copy()
    right.merge(inner)
    assert left == right
    swapped = sb.copy()
    swapped.merge(sa)
    ab = sa.copy()
    ab.merge(sb)
    assert ab == swapped


@settings(max_examples=100, deadline=None)
@given(st.lists(latencies, min_size=1, max_size=6))
def test_merged_host_sketches_equal_the_sketch_of_the_union(hosts: list[list[int]]) -> None:
    merged = LatencySketch()
    for values in hosts:
        merged.merge(LatencySketch.of(values))
    union = [value for values in hosts for value in values]
    assert merged == LatencySketch.of(union)
    assert_within_bound(merged, union)


@settings(max_examples=100, deadline=None)
@given(latencies)
def test_encoding_round_trips(values: list[int]) -> None:
    sketch = LatencySketch.of(values)
    decoded = LatencySketch.from_bytes(sketch.to_bytes())
    assert decoded == sketch
    assert decoded.quantiles() == sketch.quantiles()
    decoded.merge(LatencySketch.of(values))
    assert decoded.count == 2 * len(values)


@settings(max_examples=100, deadline=None)
@given(latencies, latencies)
def test_equal_sketches_encode_to_equal_bytes(a: list[int], b: list[int]) -> None:
    merged = LatencySketch.from_bytes(LatencySketch.of(b).to_bytes())
    merged.merge(LatencySketch.of(a))
    assert merged.to_bytes() == LatencySketch.of([*a, *b]).to_bytes()


@settings(max_examples=200, deadline=None)
@given(latencies)
def test_all_quantiles_at_once_equal_each_quantile(values: list[int]) -> None:
    sketch = LatencySketch.of([*values, 0, 0] if len(values) % 3 == 0 else values)
    points = (("min", 0.0), ("p1", 0.01), *REPORT_QUANTILES, ("max", 1.0))
    assert sketch.quantiles(points) == {label: sketch.quantile(q) for label, q in points}


def test_an_empty_sketch_has_no_quantiles_and_round_trips() -> None:
    sketch = LatencySketch()
    assert sketch.quantile(0.99) is None
    assert LatencySketch.from_bytes(sketch.to_bytes()) == sketch


def test_bad_input_is_refused_with_a_reason() -> None:
    with pytest.raises(SketchError, match="negative"):
        LatencySketch().add(-1)
    with pytest.raises(SketchError, match="between 0 and 1"):
        LatencySketch.of([1]).quantile(1.5)
    with pytest.raises(SketchError, match="at least 16 bytes"):
        LatencySketch.from_bytes(b"\x00")
    with pytest.raises(SketchError, match="not a"):
        LatencySketch.from_bytes(b"\x00" * 16 + b"\xff\xff\xff")


def _library_encoding(sketch: LatencySketch) -> bytes:
    """The encoding built with ddsketch's protobuf messages, as the first sketch version did."""
    import struct

    from ddsketch.mapping import LogarithmicMapping
    from ddsketch.pb.ddsketch_pb2 import DDSketch, Store
    from ddsketch.pb.proto import KeyMappingProto

    store = Store()
    if sketch.bins:
        first, last = min(sketch.bins), max(sketch.bins)
        store = Store(
            contiguousBinCounts=[sketch.bins.get(k, 0.0) for k in range(first, last + 1)],
            contiguousBinIndexOffset=first,
        )
    message = DDSketch(
        mapping=KeyMappingProto.to_proto(LogarithmicMapping(0.01)),
        positiveValues=store,
        negativeValues=Store(),
        zeroCount=sketch.zero_count,
    )
    return struct.pack(">dd", sketch.min, sketch.max) + message.SerializeToString()


@settings(max_examples=200, deadline=None)
@given(st.one_of(latencies, st.lists(st.floats(0.0, 3.0), max_size=20)), st.integers(0, 3))
def test_the_hand_written_wire_format_is_the_protobuf_encoding(
    values: list[float], zeros: int
) -> None:
    sketch = LatencySketch.of([*values, *[0] * zeros])
    assert sketch.to_bytes() == _library_encoding(sketch)


@settings(max_examples=100, deadline=None)
@given(latencies)
def test_encode_gives_the_bytes_and_the_report_quantiles(values: list[int]) -> None:
    sketch = LatencySketch.of(values)
    encoded, lines = sketch.encode()
    assert encoded == sketch.to_bytes()
    assert lines == sketch.quantiles() == LatencySketch.from_bytes(encoded).quantiles()


def test_the_buckets_are_ddsketchs_own() -> None:
    from ddsketch.ddsketch import LogCollapsingLowestDenseDDSketch

    values = [1, 7, 250, 251, 9_999, 1_000_000, 3.5, 0]
    reference = LogCollapsingLowestDenseDDSketch(0.01, bin_limit=100_000)
    for value in values:
        reference.add(value)
    store = reference._store
    reference_bins = {store.offset + i: c for i, c in enumerate(store.bins) if c}
    sketch = LatencySketch.of(values)
    assert sketch.bins == reference_bins and sketch.zero_count == reference._zero_count == 1
