"""A mergeable latency sketch with at most 1% relative error on every quantile.

DDSketch (DataDog's algorithm; the `ddsketch` package supplies the index mapping and the protobuf
message): logarithmic buckets, so a quantile's value is within `relative_accuracy` of the exact one
whatever the distribution, and merging two sketches adds bucket counts, an exact operation. The
buckets are kept in a plain dict (ddsketch's dense store re-extends and copies a list on adds and
merges, which made report rows of a few values dominate the report agent). Added here: exact min
and max (quantiles are clamped to them), a byte encoding for report rows (ddsketch's protobuf
after 16 bytes of min and max), and a refusal of negative durations.
"""

from __future__ import annotations

import math
import struct
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from itertools import accumulate

from ddsketch.mapping import LogarithmicMapping
from ddsketch.pb.ddsketch_pb2 import DDSketch as DDSketchMessage
from ddsketch.pb.proto import KeyMappingProto
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
_MAPPING = LogarithmicMapping(RELATIVE_ACCURACY)
_MAPPING_MESSAGE = KeyMappingProto.to_proto(_MAPPING)
_MIN_INDEXABLE = _MAPPING.min_possible
_key = _MAPPING.key
_BOUNDS = struct.Struct(">dd")
_VALUES: dict[int, float] = {}  # bucket key -> its value, memoised (quantiles read a few)
# The message up to its stores: field 1, the index mapping. The stores are written by hand
# (protobuf wire format, fields 2 and 3 of DDSketch; 2 packed and 3 zig-zag of Store): building
# the messages cost more than the rest of a report row. A unit test holds the bytes equal to
# protobuf's own encoding.
_MESSAGE_HEAD = DDSketchMessage(mapping=_MAPPING_MESSAGE).SerializeToString()


def _varint(value: int) -> bytes:
    """A non-negative int in protobuf's base-128 varint encoding."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class SketchError(ValueError):
    """A sketch cannot take a value, be merged or be decoded; the message says why."""


class LatencySketch:
    """Quantiles of non-negative durations within 1% relative error; mergeable and encodable."""

    __slots__ = ("bins", "count", "max", "min", "zero_count")

    def __init__(self) -> None:
        self.bins: dict[int, float] = {}
        self.zero_count: float = 0
        self.count: int = 0
        self.min = math.inf
        self.max = -math.inf

    @classmethod
    def of(cls, values: Iterable[float]) -> LatencySketch:
        sketch = cls()
        for value in values:
            sketch.add(value)
        return sketch

    def add(self, value: float, weight: int = 1) -> None:
        if value > _MIN_INDEXABLE:
            key = _key(value)
            bins = self.bins
            bins[key] = bins.get(key, 0) + weight
        elif value < 0:
            raise SketchError(f"a duration cannot be negative (got {value})")
        else:
            self.zero_count += weight
        self.count += weight
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    def merge(self, other: LatencySketch) -> None:
        """Add `other`'s counts to this sketch (bucket-wise, exact)."""
        if not other.count:
            return
        bins = self.bins
        if bins:
            get = bins.get
            for key, count in other.bins.items():
                bins[key] = get(key, 0) + count
        else:
            bins.update(other.bins)
        self.zero_count += other.zero_count
        self.count += other.count
        if other.min < self.min:
            self.min = other.min
        if other.max > self.max:
            self.max = other.max

    def copy(self) -> LatencySketch:
        twin = LatencySketch()
        twin.merge(self)
        return twin

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0 <= q <= 1) within 1% relative error; None when empty."""
        if not 0.0 <= q <= 1.0:
            raise SketchError(f"a quantile lies between 0 and 1 (got {q})")
        return self.quantiles((("q", q),))["q"]

    def quantiles(
        self, points: Sequence[tuple[str, float]] = REPORT_QUANTILES
    ) -> dict[str, float | None]:
        """Each point's quantile in one walk over the buckets. Rank is DDSketch's,
        `q * (count - 1)` (the lower quantile); q = 0 and 1 give the exact min and max."""
        if not self.count:
            return {label: None for label, _ in points}
        return self._quantiles(sorted(self.bins.items()), points)

    def _quantiles(
        self, ordered: list[tuple[int, float]], points: Sequence[tuple[str, float]]
    ) -> dict[str, float | None]:
        low, high = float(self.min), float(self.max)
        cumulative = list(accumulate([count for _, count in ordered]))
        last = len(cumulative) - 1
        answers: dict[str, float | None] = {}
        for label, q in points:
            rank = q * (self.count - 1) - self.zero_count
            if q >= 1.0:
                answers[label] = high
            elif q <= 0.0 or rank < 0:
                answers[label] = low
            else:
                key = ordered[min(bisect_right(cumulative, rank), last)][0]
                value = _VALUES.get(key)
                if value is None:
                    value = _VALUES[key] = _MAPPING.value(key)
                answers[label] = low if value < low else high if value > high else value
        return answers

    def to_bytes(self) -> bytes:
        return self.encode()[0]

    def encode(
        self, points: Sequence[tuple[str, float]] = REPORT_QUANTILES
    ) -> tuple[bytes, dict[str, float | None]]:
        """The encoding and the quantiles of `points`, from one sort of the buckets.

        Encoding: 16 bytes of min and max (IEEE doubles, big-endian), then DDSketch's protobuf
        message with the buckets from the first to the last non-empty one, so equal sketches
        encode to equal bytes however they were built."""
        ordered = sorted(item for item in self.bins.items() if item[1])
        parts = [_BOUNDS.pack(self.min, self.max), _MESSAGE_HEAD]
        if ordered:
            first = ordered[0][0]
            counts = [0.0] * (ordered[-1][0] - first + 1)
            for key, count in ordered:
                counts[key - first] = count
            packed = struct.pack(f"<{len(counts)}d", *counts)
            store = b"\x12" + _varint(len(packed)) + packed
            if first:
                store += b"\x18" + _varint((first << 1) ^ (first >> 63))
            parts += [b"\x12", _varint(len(store)), store]
        else:
            parts.append(b"\x12\x00")
        parts.append(b"\x1a\x00")
        if self.zero_count:
            parts += [b"\x21", struct.pack("<d", self.zero_count)]
        encoded = b"".join(parts)
        if not self.count:
            return encoded, {label: None for label, _ in points}
        return encoded, self._quantiles(ordered, points)

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
        positive, negative = message.positiveValues, message.negativeValues
        if positive.binCounts or negative.binCounts:
            raise SketchError("sparse sketch bins are not part of the sketch format")
        if any(negative.contiguousBinCounts):
            raise SketchError("a latency sketch holds no negative durations")
        sketch = cls()
        offset = positive.contiguousBinIndexOffset
        sketch.bins = {
            offset + index: count
            for index, count in enumerate(positive.contiguousBinCounts)
            if count
        }
        sketch.zero_count = message.zeroCount
        sketch.count = round(sum(sketch.bins.values()) + sketch.zero_count)
        sketch.min, sketch.max = _BOUNDS.unpack(data[:16])
        return sketch

    def bucket_counts(self) -> dict[int, float]:
        """Non-empty bucket index -> count; the zero bucket has index -2**31."""
        return {key: count for key, count in self.bins.items() if count} | (
            {-(2**31): self.zero_count} if self.zero_count else {}
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
