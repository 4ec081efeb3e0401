"""KairosDB-style metrics for Python apps: counters, gauges, timers and histograms with tags.

    metrics = Metrics(tags={"service": "shop", "host": "web1"})
    requests = metrics.counter("demo.http.requests", route="/pay")
    requests.inc()
    metrics.gauge("demo.queue.depth", lambda: len(queue))
    latency = metrics.timer("demo.http.latency_ms", route="/pay")
    with latency.time():
        ...

Every sample becomes a `stackstream.metrics.MetricPoint` on `metrics.points` through the SDK's
EventProducer, so nothing here blocks the application: a full producer queue drops the point
and counts it (`metrics.producer.stats.dropped`).

* Histograms and timers emit **every observation** as a point: the worker keeps mergeable
  quantile sketches per minute and hour, so p50/p99 over any hosts and time range are exact to
  the sketch's 1 %, where client-side percentiles could only be averaged (wrongly).
  Two observations of one series in the same millisecond would overwrite each other in the
  store (KairosDB keeps one value per timestamp), so a repeated timestamp is moved 1 ms on.
* Counters and gauges are sampled by a background thread every `interval_s` (and on `flush`):
  a counter reports its **cumulative** count since start (use the `rate` or `diff` aggregator
  for per-second figures; a lost point loses no counts), a gauge its current value.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from streams.sdk.producer import EventProducer

log = logging.getLogger(__name__)

POINTS_TOPIC = "metrics.points"
POINT_SCHEMA = "stackstream.metrics.MetricPoint"
MAX_NAME_LENGTH = 512


class Emitter(Protocol):
    """What the metrics need of a producer (EventProducer, or a stand-in in tests)."""

    def emit(
        self, topic: str, schema: str, record: Mapping[str, Any], key: str | bytes | None = None
    ) -> bool: ...

    def flush(self, timeout: float = 10.0) -> int: ...


class InvalidMetric(ValueError):
    """A metric was declared in a way the store would refuse (name, tags)."""


def _clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _checked_tags(name: str, tags: Mapping[str, Any]) -> dict[str, str]:
    if not name or not name.strip() or len(name) > MAX_NAME_LENGTH:
        raise InvalidMetric(f"metric name {name!r} must be 1 to {MAX_NAME_LENGTH} characters")
    text = {str(key): str(value) for key, value in tags.items()}
    if not text:
        raise InvalidMetric(
            f"metric {name!r} needs at least one tag (KairosDB refuses untagged points); "
            "give Metrics(tags={'service': ...}) or tags on the metric"
        )
    empty = [key for key, value in text.items() if not key or not value]
    if empty:
        raise InvalidMetric(f"metric {name!r}: tags {empty} have an empty name or value")
    return text


class Metrics:
    """A registry of metrics sharing common tags, one producer and one sampling thread."""

    def __init__(
        self,
        producer: Emitter | None = None,
        *,
        tags: Mapping[str, Any] | None = None,
        interval_s: float = 10.0,
        clock_ms: Callable[[], int] = _clock_ms,
        start: bool = True,
    ) -> None:
        self.producer: Emitter = producer or EventProducer(client_id="stackstream-metrics")
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.interval_s = interval_s
        self.clock_ms = clock_ms
        self.invalid = 0
        self._lock = threading.Lock()
        self._sampled: dict[tuple[str, tuple[tuple[str, str], ...]], Counter | Gauge] = {}
        self._histograms: dict[tuple[str, tuple[tuple[str, str], ...]], Histogram] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    # --- declaring metrics --------------------------------------------------------------------

    def _identity(self, name: str, tags: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
        return name, _checked_tags(name, {**self.tags, **tags})

    def counter(self, name: str, **tags: Any) -> Counter:
        """The counter of this name and tags (the same object when asked again)."""
        name, text = self._identity(name, tags)
        key = (name, tuple(sorted(text.items())))
        with self._lock:
            existing = self._sampled.get(key)
            if existing is None:
                existing = self._sampled[key] = Counter(name, text)
        if not isinstance(existing, Counter):
            raise InvalidMetric(f"{name} {text} is already a {type(existing).__name__}")
        return existing

    def gauge(self, name: str, read: Callable[[], float] | None = None, **tags: Any) -> Gauge:
        """A gauge: `set()` its value, or give `read`, called at every sample."""
        name, text = self._identity(name, tags)
        key = (name, tuple(sorted(text.items())))
        with self._lock:
            existing = self._sampled.get(key)
            if existing is None:
                existing = self._sampled[key] = Gauge(name, text, read)
        if not isinstance(existing, Gauge):
            raise InvalidMetric(f"{name} {text} is already a {type(existing).__name__}")
        return existing

    def histogram(self, name: str, **tags: Any) -> Histogram:
        """A histogram: every `record(value)` becomes one point."""
        name, text = self._identity(name, tags)
        key = (name, tuple(sorted(text.items())))
        with self._lock:
            existing = self._histograms.get(key)
            if existing is None:
                existing = self._histograms[key] = Histogram(self, name, text)
        return existing

    def timer(self, name: str, **tags: Any) -> Timer:
        """A histogram of durations in milliseconds, with `time()` and `timed` helpers."""
        name, text = self._identity(name, tags)
        key = (name, tuple(sorted(text.items())))
        with self._lock:
            existing = self._histograms.get(key)
            if existing is None:
                existing = self._histograms[key] = Timer(self, name, text)
        if not isinstance(existing, Timer):
            raise InvalidMetric(f"{name} {text} is already a plain histogram")
        return existing

    # --- emitting -----------------------------------------------------------------------------

    def _emit(self, name: str, tags: dict[str, str], timestamp_ms: int, value: float) -> bool:
        if not math.isfinite(value):
            with self._lock:
                self.invalid += 1
            log.warning("stackstream: not emitting %s=%r (not a finite number)", name, value)
            return False
        record = {
            "name": name,
            "timestamp_ms": timestamp_ms,
            "value": float(value),
            "tags": tags,
            "ttl_seconds": 0,
        }
        return self.producer.emit(POINTS_TOPIC, POINT_SCHEMA, record, key=name)

    def sample(self) -> int:
        """Emit one point per counter and gauge now; returns how many were emitted."""
        now = self.clock_ms()
        with self._lock:
            sampled = list(self._sampled.values())
        emitted = 0
        for metric in sampled:
            value = metric.current()
            if value is not None and self._emit(metric.name, metric.tags, now, value):
                emitted += 1
        return emitted

    def flush(self, timeout: float = 10.0) -> int:
        """Sample counters and gauges, then wait for the producer; returns points still queued."""
        self.sample()
        return self.producer.flush(timeout)

    def start(self) -> None:
        """Start the sampling thread (a daemon: it never keeps the app alive)."""
        if self._thread is not None or self.interval_s <= 0:
            return
        self._thread = threading.Thread(target=self._run, name="stackstream-metrics", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception:  # a failing gauge callback must not end the sampling thread
                log.exception("stackstream: sampling metrics failed")

    def close(self, timeout: float = 10.0) -> None:
        """Stop sampling, emit a last sample and flush."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.flush(timeout)


class Counter:
    """A monotonic count; reported as its cumulative value at every sample."""

    def __init__(self, name: str, tags: dict[str, str]) -> None:
        self.name = name
        self.tags = tags
        self._count = 0.0
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError(f"counter {self.name} can only go up (got {amount})")
        with self._lock:
            self._count += amount

    @property
    def count(self) -> float:
        return self._count

    def current(self) -> float:
        return self._count


class Gauge:
    """A value that goes up and down, set by the app or read by a callback at each sample."""

    def __init__(
        self, name: str, tags: dict[str, str], read: Callable[[], float] | None = None
    ) -> None:
        self.name = name
        self.tags = tags
        self.read = read
        self._value: float | None = None

    def set(self, value: float) -> None:
        self._value = float(value)

    def current(self) -> float | None:
        """The value to report now; None (nothing emitted) before the first `set`."""
        if self.read is not None:
            try:
                return float(self.read())
            except Exception as error:  # the app's callback failing must not stop sampling
                log.warning("stackstream: gauge %s could not be read: %s", self.name, error)
                return None
        return self._value


class Histogram:
    """Every recorded value is one point; the worker's sketches give any percentile later."""

    def __init__(self, metrics: Metrics, name: str, tags: dict[str, str]) -> None:
        self.metrics = metrics
        self.name = name
        self.tags = tags
        self._last_ms = -1
        self._lock = threading.Lock()

    def record(self, value: float) -> bool:
        """Emit `value` now; False when it was not finite or the producer queue was full."""
        now = self.metrics.clock_ms()
        with self._lock:
            if now <= self._last_ms:
                now = self._last_ms + 1
            self._last_ms = now
        return self.metrics._emit(self.name, self.tags, now, value)


class Timer(Histogram):
    """A histogram of durations in milliseconds."""

    @contextlib.contextmanager
    def time(self) -> Iterator[None]:
        """Record how long the block took (also when it raises)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.record((time.perf_counter() - started) * 1000)

    def timed(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """Decorate a function (sync or async) so that each call is timed."""
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                with self.time():
                    return await function(*args, **kwargs)

            return timed_async

        @functools.wraps(function)
        def timed_sync(*args: Any, **kwargs: Any) -> Any:
            with self.time():
                return function(*args, **kwargs)

        return timed_sync
