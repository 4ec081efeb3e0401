"""CAT Transaction report over N message trees: our worker against a hand-written loop and Quix.

    python -m tests.bench.tracing [--trees N] [--kafka ADDR] [--skip-quix]

N two-level trees (a URL transaction with an SQL child and a RemoteCall event; 6 domains,
4 hosts, 1,000 URL names per domain; root times advance through 10 minutes of event time) are
produced once to a fresh `trace.messages` topic (6 partitions, prefix unique to this run), then
a heartbeat per domain ten minutes ahead closes every minute. The same report is computed
three times:

(a) a `stackstream worker` child process (`domains=bus,tracing`): `tracing.build_reports`
    validates, builds minutes with PartitionReports, writes closed minute and hour rows to
    Cassandra and `trace.reports`; the logview agent reads the same topic (sample rate 0);
(b) a confluent-kafka `Consumer` in this process: `consume(5000)`, the codec's fastavro
    decoder, `validate_tree`, `PartitionReports.apply` + `close_due` per partition, rows kept in
    memory;
(c) a Quix Streams `Application` with the same per-record logic in `StreamingDataFrame.update`.

Each path is timed from its first consumed tree (a: the worker's first status answer) until all
N + 6 trees are applied and every minute has closed. Then the transaction report of one minute
with 1,000 name rows is queried 200 times from the worker (`/tracing/transaction?...&type=URL`)
and its p50/p99 printed. Not a pytest test: run it as a script.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

DOMAINS = ("shop", "stock", "pay", "search", "user", "mail")
HOSTS = ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4")
NAMES = 1000
SPAN_MINUTES = 10


def make_tree(index: int, base_us: int, trees: int) -> dict[str, Any]:
    """Tree `index` of `trees`: root times advance through the span with a few seconds of
    jitter (inside the 10 s grace, so nothing is late), URL 2-62 ms with SQL a quarter of it;
    one tree in 997 is a slow URL (long-url), one in 499 a slow SQL (long-sql), one in 300
    fails: realistic, and few problems for logview."""
    domain = DOMAINS[index % len(DOMAINS)]
    at = base_us + index * (SPAN_MINUTES * 60_000_000) // trees + (index * 7919) % 3_000_000
    duration = 2_000 + (index * 104_729) % 60_000
    if index % 997 == 0:
        duration = 1_500_000
    sql = 150_000 if index % 499 == 0 else duration // 4
    return {
        "domain": domain,
        "hostname": "bench",
        "ip": HOSTS[index // len(DOMAINS) // NAMES % len(HOSTS)],
        "message_id": f"{domain}-0a000001-1-{index}",
        "root": {
            "kind": "TRANSACTION", "type": "URL", "name": f"/api/{index // len(DOMAINS) % NAMES}",
            "status": "500" if index % 300 == 0 else "0",
            "timestamp_us": at, "duration_us": duration, "data": "",
            "children": [
                {"kind": "TRANSACTION", "type": "SQL", "name": f"q{index % 20}", "status": "0",
                 "timestamp_us": at + 10, "duration_us": sql, "data": "",
                 "children": []},
                {"kind": "EVENT", "type": "RemoteCall", "name": "stock", "status": "0",
                 "timestamp_us": at + 20, "data": ""},
            ],
        },
    }  # fmt: skip


def heartbeat(domain: str, at_us: int) -> dict[str, Any]:
    return {"domain": domain, "hostname": "bench", "ip": HOSTS[0],
            "message_id": f"{domain}-hb-{at_us}",
            "root": {"kind": "HEARTBEAT", "type": "Heartbeat", "name": HOSTS[0], "status": "0",
                     "timestamp_us": at_us, "data": ""}}  # fmt: skip


def produce(settings: Any, trees: int, base_us: int) -> int:
    from confluent_kafka import Producer

    from streams.bus.codec import AvroCodec, SchemaRegistry
    from streams.tracing.events import TREE_SCHEMA

    codec = AvroCodec(SchemaRegistry.from_directory(settings.schemas_dir))
    producer = Producer({"bootstrap.servers": settings.kafka, "linger.ms": 50,
                         "compression.type": "lz4", "partitioner": "murmur2_random",
                         "queue.buffering.max.messages": 1_000_000})  # fmt: skip
    topic = f"{settings.topic_prefix}trace.messages"
    records = [make_tree(i, base_us, trees) for i in range(trees)]
    records += [heartbeat(d, base_us + 2 * SPAN_MINUTES * 60_000_000) for d in DOMAINS]
    for record in records:
        while True:
            try:
                producer.produce(topic, codec.encode(TREE_SCHEMA, record), record["domain"])
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    producer.flush(60)
    return len(records)


class Reports:
    """The pure report logic shared by paths (b) and (c)."""

    def __init__(self) -> None:
        from streams.tracing.model import PartitionReports

        self.partitions: dict[int, Any] = defaultdict(PartitionReports)
        self.rows: list[dict[str, Any]] = []
        self.trees = 0

    def apply(self, partition: int, offset: int, tree: dict[str, Any]) -> None:
        from streams.tracing.model import validate_tree

        validate_tree(tree)
        self.partitions[partition].apply(tree, offset)
        self.trees += 1

    def close(self) -> None:
        for state in self.partitions.values():
            self.rows.extend(state.close_due())


def path_b(settings: Any, total: int) -> float:
    from confluent_kafka import Consumer

    from streams.bus.codec import AvroCodec, SchemaRegistry
    from streams.tracing.events import TREE_SCHEMA

    decode = AvroCodec(SchemaRegistry.from_directory(settings.schemas_dir)).decoder(TREE_SCHEMA)
    consumer = Consumer({"bootstrap.servers": settings.kafka, "group.id": f"{settings.app_id}-b",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    consumer.subscribe([f"{settings.topic_prefix}trace.messages"])
    reports = Reports()
    started = None
    while reports.trees < total:
        messages = consumer.consume(5000, 1.0)
        if messages and started is None:
            started = time.perf_counter()
        for message in messages:
            if message.error() is None:
                reports.apply(message.partition(), message.offset(), decode(message.value()))
        reports.close()
        if messages:
            consumer.commit(asynchronous=True)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    print(f"  (b) rows {len(reports.rows)}")
    return elapsed


def path_c(settings: Any, total: int) -> float:
    from quixstreams import Application, message_context

    from streams.bus.codec import AvroCodec, SchemaRegistry
    from streams.tracing.events import TREE_SCHEMA

    decode = AvroCodec(SchemaRegistry.from_directory(settings.schemas_dir)).decoder(TREE_SCHEMA)
    app = Application(broker_address=settings.kafka, consumer_group=f"{settings.app_id}-c",
                      auto_offset_reset="earliest", loglevel="WARNING",
                      use_changelog_topics=False)  # fmt: skip
    topic = app.topic(f"{settings.topic_prefix}trace.messages", value_deserializer="bytes",
                      key_deserializer="bytes")  # fmt: skip
    reports = Reports()
    clock: dict[str, float] = {}

    def handle(value: bytes) -> None:
        clock.setdefault("start", time.perf_counter())
        context = message_context()
        reports.apply(context.partition, context.offset, decode(value))
        if context.offset % 1000 == 0 or reports.trees == total:
            reports.close()

    frame = app.dataframe(topic)
    frame = frame.update(handle)
    app.run(frame, count=total, timeout=600, collect=False)
    reports.close()
    print(f"  (c) rows {len(reports.rows)}")
    return time.perf_counter() - clock["start"]


def status(base: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"{base}/tracing/status", timeout=5) as response:
            return json.loads(response.read())
    except OSError:
        return None


def path_a(settings: Any, total: int, log: Path) -> tuple[float, str]:
    from tests.integration.worker import running_worker

    base = f"http://127.0.0.1:{settings.web_port}"
    with running_worker(settings, log):
        while status(base) is None:
            time.sleep(0.2)
        started = time.perf_counter()
        while True:
            answer = status(base) or {}
            opened = sum(p["open_minutes"] for p in answer.get("partitions", {}).values())
            if answer.get("trees", 0) >= total and opened <= len(DOMAINS):
                break
            time.sleep(0.2)
        return time.perf_counter() - started, base


def query_p99(base: str, minute: str, runs: int = 200) -> tuple[float, float, int]:
    url = f"{base}/tracing/transaction?domain=shop&date={minute}&type=URL&sort=p99_ms"
    timings, rows = [], 0
    for _ in range(runs):
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=10) as response:
            rows = len(json.loads(response.read())["rows"])
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    return statistics.median(timings), timings[int(0.99 * (len(timings) - 1))], rows


def main() -> None:
    import datetime as dt

    from streams.settings import Settings
    from tests.integration.worker import apply_topics, running_worker

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", type=int, default=500_000)
    parser.add_argument("--kafka", default="127.0.0.1:19092")
    parser.add_argument("--skip-quix", action="store_true")
    arguments = parser.parse_args()
    run = f"bench{uuid.uuid4().hex[:8]}"
    folder = Path(tempfile.mkdtemp(prefix="stackstream-bench-"))
    settings = Settings(kafka=arguments.kafka, app_id=run, topic_prefix=f"{run}.",
                        domains="bus,tracing", cassandra_keyspace=run,
                        elasticsearch_index_prefix=run, data_dir=folder / "worker",
                        web_port=16600 + uuid.uuid4().int % 1000, tracing_logview_sample_rate=0.0,
                        table_store="memory")  # fmt: skip
    apply_topics(settings)
    base_us = (int(time.time()) // 3600 - 2) * 3_600_000_000
    started = time.perf_counter()
    total = produce(settings, arguments.trees, base_us)
    print(f"produced {total} trees in {time.perf_counter() - started:.1f}s")

    seconds_a, base = path_a(settings, total, folder / "worker.log")
    rate_a = total / seconds_a
    print(f"(a) stackstream worker      {rate_a:10,.0f} trees/s  ({seconds_a:.1f}s)")
    seconds_b = path_b(settings, total)
    rate_b = total / seconds_b
    print(f"(b) confluent-kafka loop    {rate_b:10,.0f} trees/s  ({seconds_b:.1f}s)")
    rate_c = float("nan")
    if not arguments.skip_quix:
        seconds_c = path_c(settings, total)
        rate_c = total / seconds_c
        print(f"(c) Quix Streams            {rate_c:10,.0f} trees/s  ({seconds_c:.1f}s)")
    print(
        f"a/b = {rate_a / rate_b:.2f} (target >= 0.8)   a/c = {rate_a / rate_c:.2f} (target >= 2)"
    )

    minute = dt.datetime.fromtimestamp(base_us / 1e6, dt.UTC).strftime("%Y%m%d%H%M")
    with running_worker(settings, folder / "query.log"):
        while status(base) is None:
            time.sleep(0.2)
        p50, p99, rows = query_p99(base, minute)
    print(f"query: {rows} name rows, p50 {p50:.1f} ms, p99 {p99:.1f} ms (target p99 <= 20 ms)")


if __name__ == "__main__":
    main()
