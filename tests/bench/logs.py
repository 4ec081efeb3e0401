"""Log lines from topic to searchable in Elasticsearch: our governance agent against a
hand-written confluent-kafka consumer feeding `elasticsearch.helpers.bulk`.

    python tests/bench/logs.py [--lines N] [--kafka ADDR] [--elasticsearch URL]

N `stackstream.logs.LogRecord` lines (WARN/ERROR of 7 services, all within quota) are produced
once to a fresh `logs.records` topic (prefix unique to this run), then indexed twice into
separate index prefixes with the same composable template (ECS mappings, 0 replicas):

(a) a `stackstream worker` child process running the logs domain (`--domains`, default
    `bus,logs`; an empty value runs every domain, as one all-in-one production worker would,
    which also spends the same cores on the metrics sink writing the volume points to
    Cassandra); its `sinks.logs_to_elasticsearch` agent governs (level, quota, masking, size)
    and bulk-indexes;
(b) a confluent-kafka `Consumer` in this process: `consume(1000)`, decode with the codec,
    `ecs_document` + `stable_id`, `elasticsearch.helpers.bulk`, commit after the bulk.

Each path is timed from its first searchable line to the N-th (count polled every 0.5 s, no
forced refresh: searchable means after Elasticsearch's 1 s refresh); start-up is printed
apart. Elasticsearch's own rate is index_total / index_time of the path's indices
(`_stats/indexing`: docs per second of indexing thread time). Topics, consumer groups and
indices of the run are deleted at the end. Not a pytest test: run it as a script.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

SERVICES = ("gateway", "orders", "payments", "inventory", "search", "accounts", "notifications")
MESSAGES = (
    "upstream {svc} timed out after {ms} ms",
    "retrying request {id} (attempt {n})",
    "payment {id} declined: insufficient funds",
    "slow query on table orders took {ms} ms",
    "cache miss storm: {n} misses in 1 s",
    "circuit for {svc} opened after {n} failures",
)


@dataclass
class PathResult:
    path: str
    lines: int
    startup_seconds: float
    seconds: float
    timed_lines: int
    es_rate: float

    @property
    def rate(self) -> float:
        return self.timed_lines / self.seconds if self.seconds > 0 else float("nan")


def sample_lines(count: int) -> list[dict]:
    rng = random.Random(11)
    now_us = time.time_ns() // 1000
    lines = []
    for index in range(count):
        service = SERVICES[index % len(SERVICES)]
        template = MESSAGES[rng.randrange(len(MESSAGES))]
        message = template.format(
            svc=rng.choice(SERVICES),
            ms=rng.randint(50, 9000),
            id=uuid.uuid4().hex[:12],
            n=rng.randint(1, 9),
        )
        failed = index % 4 == 0
        lines.append(
            {
                "timestamp_us": now_us - (count - index) * 10,
                "level": "ERROR" if failed else "WARN",
                "message": message,
                "service": service,
                "host": f"{service}-{index % 3}",
                "logger": f"{service}.handler",
                "trace_id": uuid.uuid4().hex if index % 2 else None,
                "span_id": None,
                "error_type": "TimeoutError" if failed else None,
                "error_message": "upstream timed out" if failed else None,
                "error_stack_trace": None,
                "labels": {"region": "eu-west-1"},
                "sequence": index,
            }
        )
    return lines


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_searchable(es, pattern: str, total: int, started: float, timeout: float) -> tuple:  # type: ignore[no-untyped-def]
    """(seconds to first searchable line, count then, seconds to the total) from `started`."""
    first_at = first_count = None
    deadline = time.monotonic() + timeout
    from elastic_transport import TransportError
    from elasticsearch import ApiError

    count = 0
    while time.monotonic() < deadline:
        try:
            count = es.count(index=pattern, allow_no_indices=True, ignore_unavailable=True)["count"]
        except (ApiError, TransportError):
            time.sleep(0.5)  # a new index's shards are still starting
            continue
        now = time.monotonic()
        if count and first_at is None:
            first_at, first_count = now - started, count
        if count >= total:
            return first_at, first_count, now - started
        time.sleep(0.5)
    raise TimeoutError(f"only {count} of {total} lines searchable under {pattern}")


def es_indexing_rate(es, pattern: str) -> float:  # type: ignore[no-untyped-def]
    stats = es.indices.stats(index=pattern, metric="indexing")["_all"]["primaries"]["indexing"]
    millis = stats["index_time_in_millis"]
    return stats["index_total"] / (millis / 1000) if millis else float("nan")


def run_agent(settings, total: int, workdir: Path) -> PathResult:  # type: ignore[no-untyped-def]
    from elasticsearch import Elasticsearch

    es = Elasticsearch(settings.elasticsearch, request_timeout=30)
    pattern = f"{settings.elasticsearch_index_prefix}-logs-*"
    env = {**os.environ, **settings.environment()}
    log = (workdir / "worker.log").open("ab")
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "worker", "--loglevel", "warning"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        first_at, first_count, done_at = wait_searchable(es, pattern, total, started, 900)
    finally:
        process.terminate()
        process.wait(60)
    return PathResult(
        "(a) stackstream agent + sink",
        total,
        first_at,
        done_at - first_at,
        total - first_count,
        es_indexing_rate(es, pattern),
    )


def run_baseline(settings, total: int) -> PathResult:  # type: ignore[no-untyped-def]
    from confluent_kafka import Consumer
    from elasticsearch import Elasticsearch, helpers

    from connectors.retry import stable_id
    from streams.bus.codec import AvroCodec, SchemaRegistry
    from streams.logs.model import ECS_MAPPINGS, document_id_parts, ecs_document, index_name

    prefix = f"{settings.elasticsearch_index_prefix}-b"
    pattern = f"{prefix}-logs-*"
    es = Elasticsearch(settings.elasticsearch, request_timeout=30)
    es.indices.put_index_template(
        name=f"{prefix}-logs",
        index_patterns=[pattern],
        priority=100,
        template={"mappings": ECS_MAPPINGS, "settings": {"number_of_replicas": 0}},
    )
    codec = AvroCodec(SchemaRegistry.from_directory(settings.schemas_dir))
    schema = "stackstream.logs.LogRecord"
    stop = threading.Event()

    def consume() -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka,
                "group.id": f"{settings.app_id}-baseline",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        consumer.subscribe([settings.topic_prefix + "logs.records"])
        try:
            while not stop.is_set():
                messages = consumer.consume(num_messages=1000, timeout=0.2)
                actions = []
                for message in messages:
                    if message.error():
                        continue
                    record = codec.decode(message.value(), schema)
                    actions.append(
                        {
                            "_index": index_name(prefix, record["service"], record["timestamp_us"]),
                            "_id": stable_id(*document_id_parts(record)),
                            "_source": ecs_document(record),
                        }
                    )
                if actions:
                    helpers.bulk(es, actions, chunk_size=1000)
                    consumer.commit(asynchronous=False)
        finally:
            consumer.close()

    started = time.monotonic()
    worker = threading.Thread(target=consume, daemon=True)
    worker.start()
    try:
        first_at, first_count, done_at = wait_searchable(es, pattern, total, started, 900)
    finally:
        stop.set()
        worker.join(30)
    return PathResult(
        "(b) confluent-kafka + helpers.bulk",
        total,
        first_at,
        done_at - first_at,
        total - first_count,
        es_indexing_rate(es, pattern),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of both paths")
    parser.add_argument("--kafka", default=None)
    parser.add_argument("--elasticsearch", default=None)
    parser.add_argument(
        "--domains", default="bus,logs", help="the worker's domains; empty: every domain"
    )
    args = parser.parse_args()

    from elasticsearch import Elasticsearch

    from streams.bus.admin import admin_client, apply, plan
    from streams.logs.events import RECORD_SCHEMA, RECORDS_TOPIC
    from streams.sdk.producer import EventProducer
    from streams.settings import Settings
    from streams.topology import load_topology

    run = f"benchlogs{uuid.uuid4().hex[:6]}"
    workdir = Path(tempfile.mkdtemp(prefix=f"{run}-"))
    overrides = {
        "app_id": run,
        "topic_prefix": f"{run}.",
        "elasticsearch_index_prefix": run,
        "data_dir": workdir / "worker",
        "table_store": "memory",
        "web_port": free_port(),
        "logs_quota_per_minute": 10**9,
        "domains": args.domains,
    }
    if args.kafka:
        overrides["kafka"] = args.kafka
    if args.elasticsearch:
        overrides["elasticsearch"] = args.elasticsearch
    settings = Settings(**overrides)
    admin = admin_client(settings.kafka)
    topology = load_topology(settings.topology_file)
    changes = plan(admin, topology.topics.values(), settings.topic_prefix)
    apply(admin, topology, settings.topic_prefix, [c for c in changes if c.action != "unchanged"])
    lines = sample_lines(args.lines)
    producer = EventProducer(settings.kafka, topic_prefix=settings.topic_prefix)
    for line in lines:
        while not producer.emit(RECORDS_TOPIC, RECORD_SCHEMA, line, key=line["service"]):
            producer.flush(1)
    producer.close(60)
    print(f"{args.lines} lines on {settings.topic_prefix}logs.records; run {run}")

    es = Elasticsearch(settings.elasticsearch, request_timeout=30)
    try:
        agents: list[PathResult] = []
        baselines: list[PathResult] = []
        for round_number in range(1, args.rounds + 1):
            name = f"{run}r{round_number}"
            variant = settings.model_copy(
                update={"app_id": name, "elasticsearch_index_prefix": name, "web_port": free_port()}
            )
            baselines.append(run_baseline(variant, args.lines))
            agents.append(run_agent(variant, args.lines, workdir))
            for result in (agents[-1], baselines[-1]):
                print(
                    f"round {round_number} {result.path:38} {result.rate:10,.0f} lines/s",
                    flush=True,
                )
        print(f"all {args.rounds} rounds (baseline runs first in each round):")
        ratios = []
        for round_number, (agent, baseline) in enumerate(zip(agents, baselines, strict=True), 1):
            ratios.append(agent.rate / baseline.rate)
            for result in (agent, baseline):
                print(
                    f"round {round_number} {result.path:38} {result.rate:10,.0f} lines/s  "
                    f"(start-up {result.startup_seconds:5.1f} s, timed {result.timed_lines} "
                    f"lines in {result.seconds:6.1f} s; Elasticsearch indexing "
                    f"{result.es_rate:,.0f} docs/s of thread time)"
                )
            print(f"round {round_number} a/b = {ratios[-1]:.2f}")
        print(
            f"a/b per round: {', '.join(f'{r:.2f}' for r in ratios)}; "
            f"median {statistics.median(ratios):.2f}  (target >= 0.8)"
        )
    finally:
        es.indices.delete(index=f"{run}*", allow_no_indices=True, ignore_unavailable=True)
        es.options(ignore_status=404).indices.delete_index_template(name=f"{run}*")
        topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(run)]
        if topics:
            for future in admin.delete_topics(topics).values():
                future.result()
        groups = [
            name
            for round_number in range(1, args.rounds + 1)
            for name in (f"{run}r{round_number}-baseline", f"{run}r{round_number}")
        ]
        for future in admin.delete_consumer_groups(groups).values():
            try:
                future.result()
            except Exception as error:
                print(f"consumer group not deleted: {error}")


if __name__ == "__main__":
    main()
