"""A mergeable latency sketch with at most 1% relative error on every quantile.

A thin wrapper over the `ddsketch` package (DataDog's DDSketch: logarithmic buckets, so a
quantile's value is within `relative_accuracy` of the exact one whatever the distribution, and
merging two sketches adds bucket counts, an exact operation). The wrapper adds what reports need:
exact min and max (quantiles are clamped to them), a byte encoding for report rows, and a refusal
of negative durations.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

from ddsketch.ddsketch import BaseDDSketch
from ddsketch.mapping import LogarithmicMapping
from ddsketch.pb.ddsketch_pb2 import DDSketch as DDSketchMessage
from ddsketch.pb.ddsketch_pb2 import Store as StoreMessage
from ddsketch.pb.proto import KeyMappingProto
from ddsketch.store import DenseStore
from google.protobuf.message import DecodeError

RELATIVE_ACCURACY = 0.01
SKETCH_FORMAT = "ddsketch-pb-1pct"
REPORT_QUANTILES: tuple[tuple[str, float], ...] = (
    ("p50", 0.50),
    ("p90", 0.90),
    ("p95", 0.95),
    ("p99", 0.99),
    ("p999", 0.999),
)
# One immutable index mapping for every sketch: building it per sketch cost ~20 µs, more than a
# report row's merge, and reports create a sketch per row.
_MAPPING = LogarithmicMapping(RELATIVE_ACCURACY)


class SketchError(ValueError):
    """A sketch cannot take a value, be merged or be decoded; the message says why."""


class LatencySketch:
    """Quantiles of non-negative durations within 1% relative error; mergeable and encodable."""

    __slots__ = ("_sketch", "max", "min")

    def __init__(self) -> None:
        self._sketch = BaseDDSketch(_MAPPING, DenseStore(), DenseStore(), 0.0)
        self.min = float("inf")
        self.max = float("-inf")

    @classmethod
    def of(cls, values: Iterable[float]) -> LatencySketch:
        sketch = cls()
        for value in values:
            sketch.add(value)
        return sketch

    @property
    def count(self) -> int:
        return int(self._sketch.count)

    def add(self, value: float, weight: int = 1) -> None:
        if value < 0:
            raise SketchError(f"a duration cannot be negative (got {value})")
        self._sketch.add(value, weight)
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    def merge(self, other: LatencySketch) -> None:
        """Add `other`'s counts to this sketch (bucket-wise, exact)."""
        if other.count == 0:
            return
        self._sketch.merge(other._sketch)
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def copy(self) -> LatencySketch:
        twin = LatencySketch()
        twin.merge(self)
        return twin

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0 <= q <= 1) within 1% relative error; None when empty."""
        if not 0.0 <= q <= 1.0:
            raise SketchError(f"a quantile lies between 0 and 1 (got {q})")
        if self.count == 0:
            return None
        if q == 1.0:
            return float(self.max)
        if q == 0.0:
            return float(self.min)
        value = self._sketch.get_quantile_value(q)
        return float(min(max(value, self.min), self.max))

    def quantiles(
        self, points: Sequence[tuple[str, float]] = REPORT_QUANTILES
    ) -> dict[str, float | None]:
        """`quantile` of each point, in one walk over the bins (a report row shows five)."""
        sketch = self._sketch
        if self.count == 0 or sketch._negative_store.count:
            return {label: self.quantile(q) for label, q in points}
        zeros = sketch._zero_count
        pending = sorted(
            ((q * (sketch._count - 1) - zeros, label) for label, q in points if 0.0 < q < 1.0),
            reverse=True,
        )
        answers: dict[str, float | None] = {
            label: self.quantile(q) for label, q in points if not 0.0 < q < 1.0
        }
        while pending and pending[-1][0] < 0:
            answers[pending.pop()[1]] = self._clamped(0.0)
        store = sketch._store
        running = 0.0
        for index, count in enumerate(store.bins):
            running += count
            while pending and running > pending[-1][0]:
                key = index + store.offset
                answers[pending.pop()[1]] = self._clamped(_MAPPING.value(key))
            if not pending:
                break
        for _, label in pending:
            answers[label] = self._clamped(_MAPPING.value(store.max_key))
        return {label: answers[label] for label, _ in points}

    def _clamped(self, value: float) -> float:
        return float(min(max(value, self.min), self.max))

    def to_bytes(self) -> bytes:
        """Encoding: 16 bytes of min and max (IEEE doubles, big-endian), then DDSketch protobuf.

        Bins are written from the first to the last non-empty one, so equal sketches encode
        to equal bytes however they were built (ddsketch's own `to_proto` writes its padded
        in-memory range, which depends on the order of adds and merges, and is larger)."""
        bounds = struct.pack(">dd", self.min, self.max)
        message = DDSketchMessage(
            mapping=KeyMappingProto.to_proto(self._sketch._mapping),
            positiveValues=_trimmed(self._sketch._store),
            negativeValues=_trimmed(self._sketch._negative_store),
            zeroCount=self._sketch._zero_count,
        )
        return bounds + message.SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> LatencySketch:
        if len(data) < 16:
            raise SketchError(f"a {SKETCH_FORMAT} sketch has at least 16 bytes (got {len(data)})")
        message = DDSketchMessage()
        try:
            message.ParseFromString(data[16:])
        except DecodeError as error:
            raise SketchError(f"not a {SKETCH_FORMAT} sketch: {error}") from None
        gamma = KeyMappingProto.from_proto(message.mapping).gamma
        if gamma != _MAPPING.gamma:
            raise SketchError(
                f"sketch has bucket ratio {gamma}, expected {_MAPPING.gamma} (1% relative accuracy)"
            )
        sketch = cls()
        sketch._sketch = BaseDDSketch(
            _MAPPING,
            _store_of(message.positiveValues),
            _store_of(message.negativeValues),
            message.zeroCount,
        )
        sketch.min, sketch.max = struct.unpack(">dd", data[:16])
        return sketch

    def bucket_counts(self) -> dict[int, float]:
        """Non-empty bucket index -> count; the zero bucket has index -2**31."""
        store = self._sketch._store
        return {store.offset + index: count for index, count in enumerate(store.bins) if count} | (
            {-(2**31): self._sketch._zero_count} if self._sketch._zero_count else {}
        )

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, LatencySketch)
            and self.count == other.count
            and self.bucket_counts() == other.bucket_counts()
            and (self.count == 0 or (self.min, self.max) == (other.min, other.max))
        )

    def __repr__(self) -> str:
        return f"LatencySketch(count={self.count}, min={self.min}, max={self.max})"


def _trimmed(store: DenseStore) -> StoreMessage:
    """A store's protobuf message with only its non-empty range of bins."""
    bins = store.bins
    used = [index for index, count in enumerate(bins) if count]
    if not used:
        return StoreMessage()
    first, last = used[0], used[-1]
    return StoreMessage(
        contiguousBinCounts=bins[first : last + 1], contiguousBinIndexOffset=store.offset + first
    )


def _store_of(message: StoreMessage) -> DenseStore:
    """A DenseStore holding a message's contiguous bins as they are: ddsketch's own decoder adds
    them one by one, re-extending its range each time, which made reading a report row slow."""
    store = DenseStore()
    counts = list(message.contiguousBinCounts)
    used = [index for index, count in enumerate(counts) if count]
    if message.binCounts:
        raise SketchError("sparse sketch bins are not part of the sketch format")
    if not used:
        return store
    store.bins = counts
    store.offset = message.contiguousBinIndexOffset
    store.min_key = store.offset + used[0]
    store.max_key = store.offset + used[-1]
    store.count = sum(counts)
    return store
