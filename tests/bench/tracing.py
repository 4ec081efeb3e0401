"""CAT Transaction report over N message trees: our worker against a hand-written loop and Quix.

    python -m tests.bench.tracing [--trees N] [--kafka ADDR] [--skip-quix]
                                  [--baselines sinks|memory|both]

N two-level trees (a URL transaction with an SQL child and a RemoteCall event; 6 domains,
4 hosts, 1,000 URL names per domain; root times advance through 10 minutes of event time) are
produced once to a fresh `trace.messages` topic (6 partitions, prefix unique to this run), then
a heartbeat per domain ten minutes ahead closes every minute. The same report is computed
three times:

(a) a `stackstream worker` child process (`domains=bus,tracing`): `tracing.build_reports`
    validates, builds minutes with PartitionReports, writes closed minute and hour rows to
    Cassandra and `trace.reports`; the logview agent reads the same topic (sample rate 0);
(b) a confluent-kafka `Consumer` in this process: `consume(5000)`, the codec's fastavro
    decoder, `validate_tree`, then the same report logic;
(c) a Quix Streams `Application` with the same per-record decoding and validation in
    `StreamingDataFrame.update`, handing the report logic batches of up to 5,000 trees.

"The same logic" comes in two forms (`--baselines`): `sinks` (the default) runs the worker's own
`ReportBuilder` in (b) and (c), so they write the same minute and hour rows to Cassandra (a
keyspace each) and `trace.reports` as (a) does, and the ratios measure what our runtime adds or
saves; `memory` keeps only `PartitionReports.apply` + `close_due` with the rows in memory (the
first version of this benchmark: the baselines then do a fraction of (a)'s work).

Each path is timed from its first consumed tree (a: the worker's first status answer) until all
N + 6 trees are applied, every minute has closed and (sinks) its rows are written. Then the
transaction report with 1,000 name rows (`/tracing/transaction?...&type=URL`) is queried from a
fresh worker: once per (domain, minute) never asked before (cold: read from Cassandra), then
one minute 200 times (warm: the answer cached, checked against the minute index on each query);
p50/p99 of both are printed. Not a pytest test: run it as a script.
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
    """The pure report logic, rows kept in memory (`--baselines memory`)."""

    def __init__(self) -> None:
        from streams.tracing.model import PartitionReports

        self.partitions: dict[int, Any] = defaultdict(PartitionReports)
        self.rows: list[dict[str, Any]] = []
        self.trees = 0

    def apply_batch(self, batch: list[Any]) -> None:
        for item in batch:
            self.partitions[item.partition].apply(item.record, item.offset)
        self.trees += len(batch)
        for state in self.partitions.values():
            self.rows.extend(state.close_due())

    def finish(self) -> int:
        return len(self.rows)


class SinkReports:
    """The worker's own report logic and sinks (`ReportBuilder`: Cassandra, `trace.reports`)
    driven by a baseline's loop (`--baselines sinks`), with a keyspace of its own."""

    def __init__(self, settings: Any) -> None:
        import asyncio

        from connectors.cassandra import CassandraSink
        from streams.app import Runtime
        from streams.tracing.agents import ReportBuilder, ReportStore

        self.settings = settings
        self.loop = asyncio.new_event_loop()
        runtime = Runtime(settings, domains=[])
        self.sink = CassandraSink(settings.cassandra_contact_points, settings.cassandra_keyspace,
                                  datacenter=settings.cassandra_datacenter)  # fmt: skip
        self.builder = ReportBuilder(runtime, ReportStore(self.sink))
        self.trees = 0

    def apply_batch(self, batch: list[Any]) -> None:
        self.loop.run_until_complete(self.builder.handle(batch))
        self.trees += len(batch)

    def finish(self) -> int:
        self.loop.run_until_complete(self.builder.drain())
        written = self.builder.stats.rows_written
        self.builder.reports.close()
        self.sink.close()
        return written


class Position:
    """A record's partition and offset, shaped as the confluent-kafka Message a BatchItem holds
    (Quix hands values and a message context instead)."""

    __slots__ = ("_offset", "_partition")

    def __init__(self, partition: int, offset: int) -> None:
        self._partition, self._offset = partition, offset

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


def baseline_reports(settings: Any, path: str, mode: str) -> Reports | SinkReports:
    if mode == "memory":
        return Reports()
    keyspace = f"{settings.cassandra_keyspace}_{path}"
    return SinkReports(settings.model_copy(update={"cassandra_keyspace": keyspace}))


def path_b(settings: Any, total: int, mode: str) -> float:
    from confluent_kafka import Consumer

    from streams.bus.batching import BatchItem
    from streams.bus.codec import AvroCodec, SchemaRegistry
    from streams.tracing.events import TREE_SCHEMA
    from streams.tracing.model import validate_tree

    decode = AvroCodec(SchemaRegistry.from_directory(settings.schemas_dir)).decoder(TREE_SCHEMA)
    consumer = Consumer({"bootstrap.servers": settings.kafka,
                         "group.id": f"{settings.app_id}-b-{mode}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    consumer.subscribe([f"{settings.topic_prefix}trace.messages"])
    reports = baseline_reports(settings, "b", mode)
    started = None
    while reports.trees < total:
        messages = consumer.consume(5000, 1.0)
        if messages and started is None:
            started = time.perf_counter()
        batch = []
        for message in messages:
            if message.error() is None:
                record = decode(message.value())
                validate_tree(record)
                batch.append(BatchItem(message, record))
        if batch:
            reports.apply_batch(batch)
            consumer.commit(asynchronous=True)
    rows = reports.finish()
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    print(f"  (b, {mode}) rows {rows}")
    return elapsed


def path_c(settings: Any, total: int, mode: str) -> float:
    from quixstreams import Application, message_context

    from streams.bus.batching import BatchItem
    from streams.bus.codec import AvroCodec, SchemaRegistry
    from streams.tracing.events import TREE_SCHEMA
    from streams.tracing.model import validate_tree

    decode = AvroCodec(SchemaRegistry.from_directory(settings.schemas_dir)).decoder(TREE_SCHEMA)
    app = Application(broker_address=settings.kafka, consumer_group=f"{settings.app_id}-c-{mode}",
                      auto_offset_reset="earliest", loglevel="WARNING",
                      use_changelog_topics=False)  # fmt: skip
    topic = app.topic(f"{settings.topic_prefix}trace.messages", value_deserializer="bytes",
                      key_deserializer="bytes")  # fmt: skip
    reports = baseline_reports(settings, "c", mode)
    clock: dict[str, float] = {}
    batch: list[Any] = []
    seen = [0]

    def handle(value: bytes) -> None:
        clock.setdefault("start", time.perf_counter())
        context = message_context()
        record = decode(value)
        validate_tree(record)
        batch.append(BatchItem(Position(context.partition, context.offset), record))
        seen[0] += 1
        if len(batch) >= 5000 or seen[0] == total:
            reports.apply_batch(batch)
            batch.clear()

    frame = app.dataframe(topic)
    frame = frame.update(handle)
    app.run(frame, count=total, timeout=600, collect=False)
    if batch:
        reports.apply_batch(batch)
    rows = reports.finish()
    print(f"  (c, {mode}) rows {rows}")
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
            done = answer.get("trees", 0) >= total and opened <= len(DOMAINS)
            if done and answer.get("unwritten_minutes", 1) == 0:
                break
            time.sleep(0.2)
        elapsed = time.perf_counter() - started
        print(f"  (a) rows {answer.get('rows_written')}")
        return elapsed, base


def query_timings(base: str, dates: list[tuple[str, str]]) -> tuple[list[float], int]:
    """Milliseconds per query of (domain, date) pairs, in order, and the last answer's rows."""
    timings, rows = [], 0
    for domain, date in dates:
        url = f"{base}/tracing/transaction?domain={domain}&date={date}&type=URL&sort=p99_ms"
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read()
        timings.append((time.perf_counter() - started) * 1000)
        rows = len(json.loads(body)["rows"])  # the client's parsing is not the query's time
    return timings, rows


def percentiles(timings: list[float]) -> tuple[float, float]:
    ordered = sorted(timings)
    return statistics.median(ordered), ordered[int(0.99 * (len(ordered) - 1))]


def main() -> None:
    from streams.settings import Settings
    from tests.integration.worker import apply_topics

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", type=int, default=500_000)
    parser.add_argument("--kafka", default="127.0.0.1:19092")
    parser.add_argument("--skip-quix", action="store_true")
    parser.add_argument("--baselines", choices=("sinks", "memory", "both"), default="sinks")
    arguments = parser.parse_args()
    run = f"bench{uuid.uuid4().hex[:8]}"
    folder = Path(tempfile.mkdtemp(prefix="stackstream-bench-"))
    settings = Settings(kafka=arguments.kafka, app_id=run, topic_prefix=f"{run}.",
                        domains="bus,tracing", cassandra_keyspace=run,
                        elasticsearch_index_prefix=run, data_dir=folder / "worker",
                        web_port=16600 + uuid.uuid4().int % 1000, tracing_logview_sample_rate=0.0,
                        table_store="memory")  # fmt: skip
    apply_topics(settings)
    try:
        run_benchmark(settings, arguments, folder)
    finally:
        cleanup(settings)


def cleanup(settings: Any) -> None:
    """Delete the run's topics (a long-lived broker runs out of heap on leftover partitions)
    and its keyspaces."""
    from confluent_kafka.admin import AdminClient

    from connectors.cassandra import CassandraSink

    run = settings.app_id
    try:
        admin = AdminClient({"bootstrap.servers": settings.kafka})
        topics = [name for name in admin.list_topics(timeout=10).topics if name.startswith(run)]
        for future in admin.delete_topics(topics).values() if topics else ():
            future.result()
        sink = CassandraSink(settings.cassandra_contact_points, run,
                             datacenter=settings.cassandra_datacenter)  # fmt: skip
        for keyspace in (run, f"{run}_b", f"{run}_c"):
            sink.session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}")
        sink.close()
    except Exception as error:  # cleanup must not hide the figures printed above
        print(f"could not clean up {run}: {error}")


def run_benchmark(settings: Any, arguments: argparse.Namespace, folder: Path) -> None:
    import datetime as dt

    from tests.integration.worker import running_worker

    base_us = (int(time.time()) // 3600 - 2) * 3_600_000_000
    started = time.perf_counter()
    total = produce(settings, arguments.trees, base_us)
    print(f"produced {total} trees in {time.perf_counter() - started:.1f}s")

    seconds_a, base = path_a(settings, total, folder / "worker.log")
    rate_a = total / seconds_a
    print(f"(a) stackstream worker      {rate_a:10,.0f} trees/s  ({seconds_a:.1f}s)")
    modes = ("sinks", "memory") if arguments.baselines == "both" else (arguments.baselines,)
    for mode in modes:
        seconds_b = path_b(settings, total, mode)
        rate_b = total / seconds_b
        print(f"(b) confluent-kafka loop, {mode:6} {rate_b:10,.0f} trees/s  ({seconds_b:.1f}s)")
        rate_c = float("nan")
        if not arguments.skip_quix:
            seconds_c = path_c(settings, total, mode)
            rate_c = total / seconds_c
            print(f"(c) Quix Streams, {mode:6}        {rate_c:10,.0f} trees/s  ({seconds_c:.1f}s)")
        print(
            f"baselines {mode}: a/b = {rate_a / rate_b:.2f} (target >= 0.8)   "
            f"a/c = {rate_a / rate_c:.2f} (target >= 2)"
        )

    minutes = [
        dt.datetime.fromtimestamp((base_us + m * 60_000_000) / 1e6, dt.UTC).strftime("%Y%m%d%H%M")
        for m in range(SPAN_MINUTES)
    ]
    with running_worker(settings, folder / "query.log"):
        while status(base) is None:
            time.sleep(0.2)
        time.sleep(10)  # the worker's consumer groups join and its agents start meanwhile
        cold, rows = query_timings(base, [(d, m) for m in minutes for d in DOMAINS])
        warm, _ = query_timings(base, [("shop", minutes[0])] * 200)
    print(f"query, {rows} name rows (target p99 <= 20 ms):")
    for label, timings in (("cold, each minute once", cold), ("warm, one minute 200x", warm)):
        p50, p99 = percentiles(timings)
        slowest = sorted(enumerate(timings, 1), key=lambda item: item[1])[-3:][::-1]
        listed = ", ".join(f"#{number} {ms:.1f} ms" for number, ms in slowest)
        print(f"  {label}: {len(timings)} queries, p50 {p50:.1f} ms, p99 {p99:.1f} ms "
              f"(slowest: {listed})")  # fmt: skip


if __name__ == "__main__":
    main()
