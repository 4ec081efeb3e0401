"""Metric points through validation, cardinality guard, rollups and Cassandra: worker vs a loop.

    python -m tests.bench.metrics [--series 100] [--hours 24] [--per-minute 1] [--queries 100]
        [--warmup 20] [--aggregator avg|percentile] [--percentile 0.99] [--skip-b]

One metric (`bench.latency_ms`, tags service x host: `--series` series) gets `--per-minute`
points per series per minute over `--hours` hours of event time (defaults: 100 x 1,440 =
144,000 points), produced once in time order to a fresh `metrics.points` topic (prefix unique
to this run). The same rows are then written twice, each into a keyspace of its own:

(a) a `stackstream worker` child process (`domains=bus,metrics`): the batch agent
    `sinks.points_to_cassandra` validates, guards cardinality, writes raw points, row-key and
    string indexes, minute and hour rollups and rollup progress (the Faust agent
    `metrics.track_latest` reads the same topic in the same process, as in production);
(b) a hand-written confluent-kafka `Consumer` in this process: `consume(5000)`, the codec's
    fastavro decoder, the same pure functions (`validate_point`, `admit_series`,
    `raw_point_row`, `PartitionRollups.apply`) and the same rows (packed minute rows too),
    written one statement per row with cassandra-driver's `execute_concurrent_with_args`
    (concurrency 64), as the issue defines the baseline; committing after each batch.

(a) is timed from the worker's first health answer until its batch agent has handled every
point; (b) from its first consumed batch until the last batch is written. Then the query of
the issue, a 24-hour, 1-minute-sampled `avg` (or `--aggregator percentile`, Grafana's latency
panels) over all series (answered from packed minute rollups), is sent `--warmup` times and then
`--queries` times to a quiet worker on the keyspace of (a) (see `query_phase`) and its p50/p99
printed. The warm-up (default 20, about a second) lets that worker, started just before, fill
its hour cache and settle, so the figures are a running worker's, as a dashboard sees it; the
first queries after a start are slower (see docs/metrics.md). Not a pytest test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

METRIC = "bench.latency_ms"
MINUTE_MS = 60_000


def series_tags(count: int) -> list[dict[str, str]]:
    services = max(1, int(count**0.5))
    return [{"service": f"svc{i % services}", "host": f"host{i // services}"} for i in range(count)]


def make_points(series: int, hours: int, per_minute: int, base_ms: int) -> list[dict[str, Any]]:
    tags = series_tags(series)
    step = MINUTE_MS // per_minute
    points = []
    for slot in range(hours * 60 * per_minute):
        at = base_ms + slot * step
        for index, tag_set in enumerate(tags):
            value = float((slot * 31 + index * 17) % 500) + 0.25 * (index % 4)
            points.append(
                {"name": METRIC, "timestamp_ms": at, "value": value, "tags": tag_set,
                 "ttl_seconds": 0}
            )  # fmt: skip
    return points


def produce(settings: Any, points: list[dict[str, Any]]) -> None:
    from confluent_kafka import Producer

    from streams.bus.codec import AvroCodec, SchemaRegistry
    from streams.metrics.events import POINT_SCHEMA

    codec = AvroCodec(SchemaRegistry.from_directory(settings.schemas_dir))
    producer = Producer({"bootstrap.servers": settings.kafka, "linger.ms": 50,
                         "compression.type": "lz4", "partitioner": "murmur2_random",
                         "queue.buffering.max.messages": 1_000_000})  # fmt: skip
    topic = f"{settings.topic_prefix}metrics.points"
    for point in points:
        while True:
            try:
                producer.produce(topic, codec.encode(POINT_SCHEMA, point), point["name"])
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    producer.flush(60)


class LoopWriter:
    """Path (b): the agent's pure logic in a plain loop, rows written with execute_concurrent."""

    def __init__(self, settings: Any, keyspace: str) -> None:
        from cassandra.cluster import Cluster

        from streams.metrics.tables import ALL_TABLES

        host, port = settings.cassandra_contact_points[0]
        self.cluster = Cluster([host], port=port, protocol_version=5)
        self.session = self.cluster.connect()
        self.session.execute(
            f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = "
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        )
        self.statements = {}
        self.columns = {}
        for table in ALL_TABLES:
            self.session.execute(table.create_cql(keyspace))
            self.statements[table.name] = self.session.prepare(table.upsert_cql(keyspace))
            self.columns[table.name] = list(table.columns)
        self.retention = settings.metrics_raw_retention_s
        self.limit = settings.metrics_series_limit
        self.grace_ms = int(settings.metrics_rollup_grace_s * 1000)
        self.series: dict[str, Any] = {}
        self.rollups: dict[int, Any] = {}
        self.indexed_rows: set[tuple[str, int, str]] = set()
        self.indexed_strings: set[tuple[str, str]] = set()
        self.points = 0

    def write(self, table: str, rows: list[dict[str, Any]], ttl: int = 0) -> None:
        from cassandra.concurrent import execute_concurrent_with_args

        if not rows:
            return
        columns = self.columns[table]
        parameters = [(*[row[c] for c in columns], ttl) for row in rows]
        execute_concurrent_with_args(
            self.session, self.statements[table], parameters, concurrency=64,
            raise_on_first_error=True,
        )  # fmt: skip

    def handle(self, batch: list[tuple[int, dict[str, Any]]]) -> None:
        from streams.errors import RecordRejected
        from streams.metrics.model import (
            MetricSeries,
            admit_series,
            raw_point_row,
            row_time,
            tags_text,
            validate_point,
        )
        from streams.metrics.rollup import PartitionRollups
        from streams.metrics.tables import (
            METRIC_NAMES,
            TAG_NAMES,
            TAG_VALUES,
            packed_row,
            rollup_row,
        )

        accepted: list[tuple[int, dict[str, Any]]] = []
        new_series, changed = [], set()
        for partition, record in batch:
            try:
                validate_point(record)
                known = self.series.setdefault(record["name"], MetricSeries(record["name"]))
                if admit_series(known, record["tags"], self.limit):
                    new_series.append({"metric": record["name"], "tags": tags_text(record["tags"])})
                    changed.add(record["name"])
            except RecordRejected:
                continue
            accepted.append((partition, record))
        self.write("metric_series", new_series)
        by_ttl: dict[int, list[dict[str, Any]]] = defaultdict(list)
        rows, strings = [], []
        by_partition: dict[int, list[Any]] = defaultdict(list)
        for partition, record in accepted:
            by_ttl[record["ttl_seconds"] or self.retention].append(raw_point_row(record))
            text = tags_text(record["tags"])
            key = (record["name"], row_time(record["timestamp_ms"]), text)
            if key not in self.indexed_rows:
                self.indexed_rows.add(key)
                rows.append({"metric": key[0], "row_time": key[1], "tags": key[2]})
                wanted = [(METRIC_NAMES, record["name"])]
                wanted += [(TAG_NAMES, k) for k in record["tags"]]
                wanted += [(TAG_VALUES, v) for v in record["tags"].values()]
                for kind, value in wanted:
                    if (kind, value) not in self.indexed_strings:
                        self.indexed_strings.add((kind, value))
                        strings.append({"kind": kind, "value": value})
            by_partition[partition].append(
                ((record["name"], text), record["timestamp_ms"], record["value"])
            )
        for ttl, raw_rows in by_ttl.items():
            self.write("raw_points", raw_rows, ttl)
        self.write("row_keys", rows)
        self.write("string_index", strings)
        for partition, points in by_partition.items():
            state = self.rollups.setdefault(partition, PartitionRollups(self.grace_ms))
            changes = state.apply(points)
            self.write("rollups_1m", [rollup_row(k, a) for k, a in changes.minutes.items()])
            self.write("rollups_1h", [rollup_row(k, a) for k, a in changes.hours.items()])
            self.write(
                "rollups_1m_packed", [packed_row(k, m) for k, m in changes.hour_minutes.items()]
            )
            self.write(
                "rollup_progress",
                [{"source_partition": partition, "max_event_ms": state.max_event_ms}],
            )
        now = int(time.time() * 1000)
        cardinality = []
        for metric in sorted(changed):
            known = self.series[metric]
            worst, values = known.worst_tag()
            cardinality.append({"metric": metric, "series": len(known.series),
                                "series_limit": self.limit, "rejected": known.rejected,
                                "worst_tag": worst, "worst_tag_values": values,
                                "updated_ms": now})  # fmt: skip
        self.write("metric_cardinality", cardinality)
        self.points += len(batch)


def path_b(settings: Any, total: int, keyspace: str) -> float:
    from confluent_kafka import Consumer

    from streams.bus.codec import AvroCodec, SchemaRegistry
    from streams.metrics.events import POINT_SCHEMA

    decode = AvroCodec(SchemaRegistry.from_directory(settings.schemas_dir)).decoder(POINT_SCHEMA)
    writer = LoopWriter(settings, keyspace)
    consumer = Consumer({"bootstrap.servers": settings.kafka, "group.id": f"{settings.app_id}-b",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    consumer.subscribe([f"{settings.topic_prefix}metrics.points"])
    started = None
    while writer.points < total:
        messages = consumer.consume(5000, 1.0)
        if messages and started is None:
            started = time.perf_counter()
        batch = [(m.partition(), decode(m.value())) for m in messages if m.error() is None]
        if batch:
            writer.handle(batch)
            consumer.commit(asynchronous=True)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    writer.cluster.shutdown()
    return elapsed


def health(base: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"{base}/stackstream/health", timeout=5) as response:
            return json.loads(response.read())
    except OSError:
        return None


def load() -> str:
    """The machine's load average: the figures mean little without it on a shared machine."""
    return "[load {:.2f} {:.2f} {:.2f}]".format(*os.getloadavg())


def handled(base: str, agent: str) -> int:
    pulse = (health(base) or {}).get("agents", {}).get(agent, {})
    return int(pulse.get("records", 0) + pulse.get("rejected", 0))


def path_a(settings: Any, total: int, log: Path) -> tuple[float, int]:
    """Seconds until the batch agent has handled every point, and how many points the Faust
    agent `metrics.track_latest` had handled by then."""
    from tests.integration.worker import running_worker

    base = f"http://127.0.0.1:{settings.web_port}"
    with running_worker(settings, log):
        while health(base) is None:
            time.sleep(0.2)
        started = time.perf_counter()
        while handled(base, "sinks.points_to_cassandra") < total:
            time.sleep(0.2)
        return time.perf_counter() - started, handled(base, "metrics.track_latest")


def query_phase(
    settings: Any, log: Path, document: dict[str, Any], queries: int, warmup: int = 20
) -> tuple[list[float], dict]:
    """Query timings from a quiet worker: the keyspace of (a), topics of its own (empty), so no
    changelog recovery or agent backlog competes with the queries, as in steady state."""
    from tests.integration.worker import apply_topics, running_worker

    quiet = settings.model_copy(
        update={"app_id": f"{settings.app_id}-q", "topic_prefix": f"{settings.app_id}-q.",
                "web_port": settings.web_port + 1, "data_dir": settings.data_dir.parent / "q"}
    )  # fmt: skip
    apply_topics(quiet)
    base = f"http://127.0.0.1:{quiet.web_port}"
    with running_worker(quiet, log):
        while health(base) is None:
            time.sleep(0.2)
        query_times(base, document, warmup)
        return query_times(base, document, queries)


def query_times(base: str, document: dict[str, Any], runs: int) -> tuple[list[float], dict]:
    body = json.dumps(document).encode()
    timings, answer = [], {}
    for _ in range(runs):
        request = urllib.request.Request(
            f"{base}/api/v1/datapoints/query", data=body, method="POST",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        timings.append((time.perf_counter() - started) * 1000)
    return timings, answer


def main() -> None:
    from streams.settings import Settings
    from tests.integration.worker import apply_topics

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=100)
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--per-minute", type=int, default=1)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--aggregator", choices=("avg", "percentile"), default="avg")
    parser.add_argument("--percentile", type=float, default=0.99)
    parser.add_argument("--kafka", default="127.0.0.1:19092")
    parser.add_argument("--skip-b", action="store_true")
    arguments = parser.parse_args()
    run = f"bench{uuid.uuid4().hex[:8]}"
    folder = Path(tempfile.mkdtemp(prefix="stackstream-bench-"))
    settings = Settings(kafka=arguments.kafka, app_id=run, topic_prefix=f"{run}.",
                        domains="bus,metrics", cassandra_keyspace=run, metrics_telnet_port=0,
                        data_dir=folder / "worker", web_port=16600 + uuid.uuid4().int % 1000,
                        table_store="memory")  # fmt: skip
    apply_topics(settings)
    base_ms = (int(time.time() * 1000) // 3_600_000 - arguments.hours - 2) * 3_600_000
    points = make_points(arguments.series, arguments.hours, arguments.per_minute, base_ms)
    total = len(points)
    started = time.perf_counter()
    produce(settings, points)
    del points
    print(f"produced {total:,} points ({arguments.series} series, {arguments.hours} h, "
          f"{arguments.per_minute}/min) in {time.perf_counter() - started:.1f}s")  # fmt: skip

    aggregator: dict[str, Any] = {
        "name": arguments.aggregator,
        "sampling": {"value": 1, "unit": "minutes"},
    }
    if arguments.aggregator == "percentile":
        aggregator["percentile"] = arguments.percentile
    document = {
        "start_absolute": base_ms,
        "end_absolute": base_ms + arguments.hours * 3_600_000 - 1,
        "metrics": [{"name": METRIC, "tags": {}, "aggregators": [aggregator]}],
    }  # fmt: skip
    seconds_a, latest_done = path_a(settings, total, folder / "worker.log")
    rate_a = total / seconds_a
    print(f"(a) stackstream worker      {rate_a:10,.0f} points/s  ({seconds_a:.1f}s; "
          f"metrics.track_latest had {latest_done:,}) {load()}")  # fmt: skip
    if not arguments.skip_b:
        seconds_b = path_b(settings, total, f"{run}_b")
        rate_b = total / seconds_b
        print(f"(b) confluent-kafka loop    {rate_b:10,.0f} points/s  ({seconds_b:.1f}s) {load()}")
        print(f"a/b = {rate_a / rate_b:.2f} (target >= 0.8)")

    timings, answer = query_phase(
        settings, folder / "query.log", document, arguments.queries, arguments.warmup
    )
    result = answer["queries"][0]
    ranked = sorted(timings)
    p50, p99 = statistics.median(ranked), ranked[int(0.99 * (len(ranked) - 1))]
    p90, p95 = ranked[int(0.90 * (len(ranked) - 1))], ranked[int(0.95 * (len(ranked) - 1))]
    print(f"query {arguments.hours} h / 1 min {arguments.aggregator} over "
          f"{arguments.series} series: sample_size "
          f"{result['sample_size']:,}, {len(result['results'][0]['values'])} values, "
          f"p50 {p50:.1f} ms, p99 {p99:.1f} ms (target p99 <= 100 ms) {load()}")  # fmt: skip
    slowest = sorted(range(len(timings)), key=timings.__getitem__, reverse=True)[:5]
    print(
        f"  p90 {p90:.1f} ms, p95 {p95:.1f} ms; slowest (query number: ms): "
        + ", ".join(f"{n}: {timings[n]:.0f}" for n in sorted(slowest))
    )


if __name__ == "__main__":
    main()
