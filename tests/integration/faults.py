"""Traffic with known ground truth for the fault and backfill tests, and readers of what the
worker stored: CAT transaction report rows and metric rollups in Cassandra.

The traffic is generated, not sampled, so the expected report (count, failures, duration sum per
domain, minute and type) and rollups (count and sum per series and minute) follow from it
exactly; every tree has a unique message id and every point a unique timestamp per series, so a
record counted twice or lost shows up as a difference.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from cassandra import InvalidRequest
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
    Session,
)
from cassandra.policies import DCAwareRoundRobinPolicy
from confluent_kafka import Producer

from streams.bus.codec import AvroCodec, SchemaRegistry
from streams.metrics.events import POINT_SCHEMA, POINTS_TOPIC
from streams.metrics.model import tags_text
from streams.settings import Settings
from streams.tracing.events import MESSAGES_TOPIC, TREE_SCHEMA
from streams.tracing.tables import REPORT_TABLE_NAMES, unpack_parts

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DOMAINS = ("shop", "stock", "billing")
SERIES = (("kill.latency", {"host": "a"}), ("kill.latency", {"host": "b"}),
          ("kill.queue", {"host": "a", "zone": "eu"}))  # fmt: skip

TreeKey = tuple[str, int, str]  # domain, minute, transaction type
SeriesMinute = tuple[str, str, int]  # metric, canonical tags, minute


@dataclass
class TreeTotals:
    count: int = 0
    fail_count: int = 0
    sum_us: int = 0


@dataclass
class GroundTruth:
    """What the reports and rollups must hold for the generated traffic."""

    transactions: dict[TreeKey, TreeTotals] = field(default_factory=lambda: defaultdict(TreeTotals))
    points: dict[SeriesMinute, list[float]] = field(default_factory=lambda: defaultdict(list))

    def transaction_hours(self) -> dict[TreeKey, TreeTotals]:
        hours: dict[TreeKey, TreeTotals] = defaultdict(TreeTotals)
        for (domain, minute, type_), totals in self.transactions.items():
            target = hours[(domain, minute - minute % HOUR_MS, type_)]
            target.count += totals.count
            target.fail_count += totals.fail_count
            target.sum_us += totals.sum_us
        return dict(hours)

    def rollups(self, period_ms: int = MINUTE_MS) -> dict[SeriesMinute, tuple[int, float]]:
        merged: dict[SeriesMinute, list[float]] = defaultdict(list)
        for (metric, tags, minute), values in self.points.items():
            merged[(metric, tags, minute - minute % period_ms)].extend(values)
        return {key: (len(values), sum(values)) for key, values in merged.items()}


def traffic(
    first_minute_ms: int, minutes: int, per_minute: int, seed: int = 7
) -> tuple[list[tuple[str, str, dict[str, Any], int]], GroundTruth]:
    """Trees and points spread over `minutes` minutes of event time, interleaved as a live
    stream would be: (topic, key, record, timestamp_ms), and their ground truth."""
    rng = random.Random(seed)
    truth = GroundTruth()
    records: list[tuple[str, str, dict[str, Any], int]] = []
    sequence = 0
    for minute_index in range(minutes):
        minute = first_minute_ms + minute_index * MINUTE_MS
        for i in range(per_minute):
            at_ms = minute + (i * 59_000) // per_minute
            for domain in DOMAINS:
                sequence += 1
                tree = _tree(domain, sequence, at_ms, rng)
                records.append((MESSAGES_TOPIC, domain, tree, at_ms))
                for message in (tree["root"], tree["root"]["children"][0]):
                    totals = truth.transactions[(domain, minute, message["type"])]
                    totals.count += 1
                    totals.fail_count += message["status"] != "0"
                    totals.sum_us += message["duration_us"]
            for metric, tags in SERIES:
                value = round(rng.uniform(0, 1000), 3)
                point = {"name": metric, "timestamp_ms": at_ms, "value": value, "tags": tags,
                         "ttl_seconds": 0}  # fmt: skip
                records.append((POINTS_TOPIC, metric, point, at_ms))
                truth.points[(metric, tags_text(tags), minute)].append(value)
    return records, truth


def closers(at_ms: int) -> list[tuple[str, str, dict[str, Any], int]]:
    """A heartbeat per domain and a point per series far ahead: every earlier minute closes."""
    records: list[tuple[str, str, dict[str, Any], int]] = []
    for domain in DOMAINS:
        heartbeat = {
            "domain": domain, "hostname": "h", "ip": "10.0.0.1",
            "message_id": f"{domain}-hb-{at_ms}",
            "root": {"kind": "HEARTBEAT", "type": "Heartbeat", "name": "10.0.0.1",
                     "status": "0", "timestamp_us": at_ms * 1000, "data": ""},
        }  # fmt: skip
        records.append((MESSAGES_TOPIC, domain, heartbeat, at_ms))
    for metric, tags in SERIES:
        point = {"name": metric, "timestamp_ms": at_ms, "value": 0.0, "tags": tags,
                 "ttl_seconds": 0}  # fmt: skip
        records.append((POINTS_TOPIC, metric, point, at_ms))
    return records


def _tree(domain: str, sequence: int, at_ms: int, rng: random.Random) -> dict[str, Any]:
    start_us = at_ms * 1000
    duration = rng.randint(1_000, 400_000)
    sql = rng.randint(100, duration)
    return {
        "domain": domain,
        "hostname": f"{domain}-1",
        "ip": "10.0.0.7",
        "message_id": f"{domain}-0a000007-{sequence}",
        "root": {
            "kind": "TRANSACTION", "type": "URL", "name": f"/{domain}/{sequence % 4}",
            "status": "0" if sequence % 7 else "500", "timestamp_us": start_us,
            "duration_us": duration, "data": "",
            "children": [
                {"kind": "TRANSACTION", "type": "SQL", "name": "select",
                 "status": "0" if sequence % 11 else "ERR", "timestamp_us": start_us + 10,
                 "duration_us": sql, "data": "", "children": []},
            ],
        },
    }  # fmt: skip


class TrafficProducer:
    """Produces generated records with their event time as the Kafka timestamp."""

    def __init__(self, settings: Settings) -> None:
        self.prefix = settings.topic_prefix
        self.codec = AvroCodec(SchemaRegistry.from_directory(settings.schemas_dir))
        self.failures: list[str] = []
        self.producer = Producer(
            {
                "bootstrap.servers": settings.kafka,
                "enable.idempotence": True,
                "partitioner": "murmur2_random",
                "linger.ms": 5,
            }
        )

    def send(self, records: list[tuple[str, str, dict[str, Any], int]]) -> None:
        for topic, key, record, at_ms in records:
            schema = TREE_SCHEMA if topic == MESSAGES_TOPIC else POINT_SCHEMA
            self.producer.produce(
                self.prefix + topic,
                value=self.codec.encode(schema, record),
                key=key.encode(),
                timestamp=at_ms,
                on_delivery=self._delivered,
            )
            self.producer.poll(0)

    def _delivered(self, error: Any, message: Any) -> None:
        if error is not None:
            self.failures.append(str(error))

    def close(self) -> None:
        assert self.producer.flush(60) == 0, "records were not delivered"
        assert not self.failures, self.failures


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class StoredReports:
    """Reads the report and rollup tables of a keyspace."""

    def __init__(self, settings: Settings) -> None:
        host, _, port = settings.cassandra.rpartition(":")
        profile = ExecutionProfile(
            load_balancing_policy=DCAwareRoundRobinPolicy(settings.cassandra_datacenter),
            request_timeout=30,
        )
        self.cluster = Cluster(
            [host], port=int(port), protocol_version=5,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        )  # fmt: skip
        self.keyspace = settings.cassandra_keyspace
        self._session: Session | None = None

    @property
    def session(self) -> Session:
        if self._session is None:
            self._session = self.cluster.connect()
        return self._session

    def rows(self, table: str) -> list[dict[str, Any]]:
        """A table's rows; a report table's packed parts as the rows they hold."""
        try:
            found = [
                r._asdict() for r in self.session.execute(f"SELECT * FROM {self.keyspace}.{table}")
            ]
        except InvalidRequest:  # the worker has not created the table yet
            return []
        except NoHostAvailable as error:  # "Unknown CF": read while the table was being created
            if "Unknown CF" not in str(error):
                raise
            return []
        return unpack_parts(found) if table in REPORT_TABLE_NAMES else found

    def transactions(self, table: str = "trace_minute_reports") -> dict[TreeKey, TreeTotals]:
        """Per domain, period and type: the All-hosts total row (name '')."""
        found: dict[TreeKey, TreeTotals] = {}
        for row in self.rows(table):
            if row["report"] == "transaction" and row["host"] == "All" and row["name"] == "":
                key = (row["domain"], row["period_start_ms"], row["type"])
                found[key] = TreeTotals(row["count"], row["fail_count"], row["sum_us"])
        return found

    def rollups(self, table: str = "rollups_1m") -> dict[SeriesMinute, tuple[int, float]]:
        return {(r["metric"], r["tags"], r["ts"]): (r["count"], r["sum"]) for r in self.rows(table)}

    def close(self) -> None:
        self.cluster.shutdown()


def rollups_equal(
    stored: dict[SeriesMinute, tuple[int, float]], expected: dict[SeriesMinute, tuple[int, float]]
) -> bool:
    """Counts exactly, sums up to float rounding (merge order differs)."""
    if stored.keys() != expected.keys():
        return False
    return all(
        stored[k][0] == expected[k][0]
        and abs(stored[k][1] - expected[k][1]) <= 1e-6 * max(1.0, abs(expected[k][1]))
        for k in expected
    )
