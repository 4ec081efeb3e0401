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

from ddsketch import DDSketch
from ddsketch.pb.ddsketch_pb2 import DDSketch as DDSketchMessage
from ddsketch.pb.proto import DDSketchProto
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


class SketchError(ValueError):
    """A sketch cannot take a value, be merged or be decoded; the message says why."""


class LatencySketch:
    """Quantiles of non-negative durations within 1% relative error; mergeable and encodable."""

    __slots__ = ("_sketch", "max", "min")

    def __init__(self) -> None:
        self._sketch = DDSketch(RELATIVE_ACCURACY)
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
        return {label: self.quantile(q) for label, q in points}

    def to_bytes(self) -> bytes:
        """Encoding: 16 bytes of min and max (IEEE doubles, big-endian), then DDSketch protobuf."""
        bounds = struct.pack(">dd", self.min, self.max)
        return bounds + DDSketchProto.to_proto(self._sketch).SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> LatencySketch:
        if len(data) < 16:
            raise SketchError(f"a {SKETCH_FORMAT} sketch has at least 16 bytes (got {len(data)})")
        message = DDSketchMessage()
        try:
            message.ParseFromString(data[16:])
        except DecodeError as error:
            raise SketchError(f"not a {SKETCH_FORMAT} sketch: {error}") from None
        decoded = DDSketchProto.from_proto(message)
        sketch = cls()
        if not sketch._sketch._mapping.gamma == decoded._mapping.gamma:
            raise SketchError(
                f"sketch has bucket ratio {decoded._mapping.gamma}, "
                f"expected {sketch._sketch._mapping.gamma} (1% relative accuracy)"
            )
        sketch._sketch.merge(decoded)
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
