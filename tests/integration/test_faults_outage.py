"""Cassandra and Elasticsearch go away for 30-60 s while metric points and log lines flow:
afterwards every record is stored exactly once, and the worker stayed up.

The outage is staged on a private Cassandra and a private Elasticsearch started once for this
module from `deploy.local` (free ports, a temporary stack folder, 512 MB heaps; the shared dev
servers are never stopped); Kafka is the shared broker. Two kinds of outage:

- hung servers: SIGSTOP of both server process groups for 40 s (connections stay open, requests
  time out), then SIGCONT;
- stopped servers: both stopped (connections refused) for 30 s, then started again on their
  data folders.

Input is sent in three parts: before the outage, during it and after it. Ground truth: every
metric point (count and sum per series and minute, raw and rolled up), every log line by its
sequence number and document id, the per-minute line counts the log governor publishes as
`logs.lines` points, and, with tracing, the transaction reports of `faults.traffic`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from elastic_transport import TransportError
from elasticsearch import ApiError, Elasticsearch

from deploy.local import LocalStack
from deploy.local.elasticsearch import Elasticsearch as ElasticsearchServer
from deploy.local.process import port_open
from streams.bus.dlq import read_dead_letters
from streams.logs.events import RECORD_SCHEMA, RECORDS_TOPIC
from streams.logs.model import ACCEPTED, VOLUME_METRIC
from streams.metrics.events import POINTS_TOPIC
from streams.metrics.model import tags_text
from streams.sdk.producer import EventProducer
from streams.settings import Settings
from tests.conftest import _free_port
from tests.integration.faults import (
    MINUTE_MS,
    SERIES,
    GroundTruth,
    StoredReports,
    TrafficProducer,
    closers,
    rollups_equal,
    traffic,
)
from tests.integration.worker import apply_topics, eventually, get_json, running_worker
from tests.unit.test_logs_model import line as log_record

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SERVERS = ["cassandra", "elasticsearch"]
MINUTES = 4
PER_MINUTE = 100  # per domain and per series: 4 x 100 x (3 trees + 3 points) = 2,400 records
LOG_LINES = 1500
LOG_SERVICES = ("outage-a", "outage-b", "outage-c")
PAUSE_SECONDS = 40.0
STOP_SECONDS = 30.0
# Shares of the input sent before, during and after the outage, and how long each takes.
PARTS = ((0.2, 8.0), (0.6, 30.0), (0.2, 8.0))
SETTLE_SECONDS = 240.0
LIVE_POINTS_PER_STEP = 4  # per series, 4 steps a second: 48 points/s


@dataclass
class PrivateStores:
    """A Cassandra and an Elasticsearch of this module only: addresses, pids, fault controls."""

    settings: Settings
    stack: LocalStack
    pids: dict[str, int] = field(default_factory=dict)

    def up(self) -> None:
        for status in self.stack.up(SERVERS):
            assert status.pid is not None, f"{status.name} was not started by this stack"
            self.pids[status.name] = status.pid

    def down(self) -> None:
        self.resume()
        self.stack.down(SERVERS)

    def pause(self) -> None:
        """Freeze both servers: they keep their sockets but answer nothing."""
        for pid in self.pids.values():
            os.killpg(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self.pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def private_stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateStores]:
    """Starts a small private Cassandra and Elasticsearch once; stops them and deletes their
    folders at the end, whatever happened."""
    es_port, cassandra_port = _free_port(), _free_port()
    settings = Settings(
        elasticsearch=f"http://127.0.0.1:{es_port}",
        elasticsearch_port=es_port,
        elasticsearch_transport_port=_free_port(),
        elasticsearch_heap="512m",
        cassandra=f"127.0.0.1:{cassandra_port}",
        cassandra_port=cassandra_port,
        cassandra_storage_port=_free_port(),
        cassandra_heap="512m",
        stack_dir=tmp_path_factory.mktemp("outage-stack"),
        start_timeout_seconds=180.0,
    )
    stores = PrivateStores(settings, LocalStack(settings))
    try:
        started = time.monotonic()
        stores.up()
        print(f"private Cassandra and Elasticsearch up in {time.monotonic() - started:.0f} s")
        yield stores
    finally:
        stores.down()
        shutil.rmtree(settings.stack_dir, ignore_errors=True)
        es_root = ElasticsearchServer(settings).root
        if es_root != settings.stack_dir / "elasticsearch":
            shutil.rmtree(es_root, ignore_errors=True)


def outage_settings(
    stack_settings: Settings, stores: PrivateStores, domains: str, rollup_grace_s: float
) -> Settings:
    return stack_settings.model_copy(
        update={
            "elasticsearch": stores.settings.elasticsearch,
            "cassandra": stores.settings.cassandra,
            "domains": domains,
            "tracing_grace_s": 2.0,
            "metrics_rollup_grace_s": rollup_grace_s,
            "metrics_telnet_port": 0,
            "tracing_logview_sample_rate": 0.0,
            "logs_quota_per_minute": 100_000,
        }
    )


def log_line(sequence: int) -> dict[str, Any]:
    return log_record(
        timestamp_us=time.time_ns() // 1000,
        level="ERROR" if sequence % 2 else "WARN",
        message=f"payment {sequence} failed",
        service=LOG_SERVICES[sequence % len(LOG_SERVICES)],
        host="outage-host",
        logger="test",
        sequence=sequence,
    )


class Feeder(threading.Thread):
    """Sends the input in three parts; part two waits for the outage, part three for its end.

    With `past_traffic`, trees and points come from `faults.traffic` (event time 20 minutes ago,
    so the same partitions also see the log volume points of now: late points). Without it,
    points are made live (event time = wall clock), and only points flow besides the lines.
    """

    def __init__(self, settings: Settings, past_traffic: bool) -> None:
        super().__init__(daemon=True)
        self.traffic = TrafficProducer(settings)
        self.logs = EventProducer(settings.kafka, topic_prefix=settings.topic_prefix)
        self.records: list[tuple[str, str, dict[str, Any], int]] = []
        self.truth = GroundTruth()
        if past_traffic:
            first = (int(time.time() * 1000) // MINUTE_MS - 20) * MINUTE_MS
            self.records, self.truth = traffic(first, MINUTES, PER_MINUTE)
        self.past_traffic = past_traffic
        self.last_ms = {series: 0 for series in range(len(SERIES))}
        self.lines: list[dict[str, Any]] = []
        self.outage_started = threading.Event()
        self.outage_over = threading.Event()
        self.stopped = threading.Event()
        self.sent_per_part: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as error:  # reported by the test thread
            self.error = error

    def live_points(self) -> list[tuple[str, str, dict[str, Any], int]]:
        """LIVE_POINTS_PER_STEP points per series at the wall clock, a unique time each."""
        records = []
        for index, (metric, tags) in enumerate(SERIES):
            for _ in range(LIVE_POINTS_PER_STEP):
                at_ms = max(int(time.time() * 1000), self.last_ms[index] + 1)
                self.last_ms[index] = at_ms
                value = float(at_ms % 997) + 0.25
                point = {"name": metric, "timestamp_ms": at_ms, "value": value, "tags": tags,
                         "ttl_seconds": 0}  # fmt: skip
                records.append((POINTS_TOPIC, metric, point, at_ms))
                self.truth.points[(metric, tags_text(tags), at_ms - at_ms % MINUTE_MS)].append(
                    value
                )
        return records

    def _run(self) -> None:
        record_start = line_start = 0
        gates = (None, self.outage_started, self.outage_over)
        for (share, seconds), gate in zip(PARTS, gates, strict=True):
            if gate is not None:
                gate.wait(300)
            record_end = record_start + round(share * len(self.records))
            line_end = line_start + round(share * LOG_LINES)
            if gate is self.outage_over:
                record_end, line_end = len(self.records), LOG_LINES
            part = self.records[record_start:record_end]
            sequences = list(range(line_start, line_end))
            steps = max(1, int(seconds / 0.25))
            record_step = -(-len(part) // steps)
            line_step = -(-len(sequences) // steps)
            sent = 0
            for index in range(steps):
                if self.stopped.is_set():  # the test failed: no records into deleted topics
                    return
                chunk = part[index * record_step : (index + 1) * record_step]
                if not self.past_traffic:
                    chunk = self.live_points()
                self.traffic.send(chunk)
                sent += len(chunk)
                for sequence in sequences[index * line_step : (index + 1) * line_step]:
                    line = log_line(sequence)
                    self.lines.append(line)
                    self.logs.emit(RECORDS_TOPIC, RECORD_SCHEMA, line, key=line["service"])
                    sent += 1
                time.sleep(0.25)
            self.sent_per_part.append(sent)
            record_start, line_start = record_end, line_end
        self.traffic.send(closers(self.closing_ms))
        self.traffic.close()
        self.logs.flush(60)
        assert self.logs.stats.delivered == LOG_LINES and self.logs.stats.failed == 0
        self.logs.close()

    @property
    def closing_ms(self) -> int:
        """Far enough ahead of every record that each earlier minute closes."""
        newest = max([at_ms for *_, at_ms in self.records] + list(self.last_ms.values()))
        return newest - newest % MINUTE_MS + 5 * MINUTE_MS

    def period(self) -> tuple[int, int]:
        """First minute and end of the last minute of the generated trees and points."""
        minutes = [minute for _, _, minute in self.truth.points]
        return min(minutes), max(minutes) + MINUTE_MS


def indexed_count(es: Elasticsearch, pattern: str) -> int | None:
    """Searchable log lines, or None while the server or an index's shards are away."""
    try:
        es.indices.refresh(index=pattern, allow_no_indices=True)
        return es.count(index=pattern, allow_no_indices=True)["count"]
    except (ApiError, TransportError):
        return None


def expected_volumes(lines: list[dict[str, Any]]) -> dict[tuple[str, int], float]:
    """Per (tag text, minute): the number of accepted lines, the value of the last volume point."""
    counts: Counter[tuple[str, int]] = Counter()
    for line in lines:
        minute = line["timestamp_us"] // 1000 - line["timestamp_us"] // 1000 % MINUTE_MS
        tags = {"service": line["service"], "level": line["level"], "outcome": ACCEPTED}
        counts[(tags_text(tags), minute)] += 1
    return {key: float(count) for key, count in counts.items()}


def run_outage(
    stack_settings: Settings,
    stores: PrivateStores,
    tmp_path: Path,
    outage: Callable[[], float],
    *,
    domains: str,
    past_traffic: bool,
) -> None:
    """Feed the worker before, during and after `outage` (which returns its length in seconds)
    and check that every record is stored exactly once and the worker stayed up."""
    # Live points: a volume point of the minute before stays on time for 30 s (no reads).
    settings = outage_settings(stack_settings, stores, domains, 2.0 if past_traffic else 30.0)
    apply_topics(settings)
    feeder = Feeder(settings, past_traffic)
    log_path = tmp_path / "worker.log"
    base = f"http://127.0.0.1:{settings.web_port}"
    es = Elasticsearch(settings.elasticsearch, request_timeout=30)
    pattern = f"{settings.elasticsearch_index_prefix}-logs-*"
    stored = StoredReports(settings)
    metrics = {metric for metric, _ in SERIES}
    tracing = "tracing" in settings.domain_names
    started = time.monotonic()
    try:
        with running_worker(settings, log_path) as worker:
            eventually(
                lambda: get_json(f"{base}/stackstream/health")[0] == 200, 120,
                "the worker's health view", log_path,
            )  # fmt: skip
            feeder.start()

            def agents() -> dict[str, Any]:
                return get_json(f"{base}/stackstream/health")[1]["agents"]

            def first_stored() -> bool:
                """Points, lines and the first volume point (a new metric: its series are read
                from Cassandra once) are stored; with tracing, trees are counted."""
                return (
                    agents().get("sinks.points_to_cassandra", {}).get("records", 0) > 0
                    and (indexed_count(es, pattern) or 0) > 0
                    and bool(stored_volumes(stored, {}))
                    and (not tracing or get_json(f"{base}/tracing/status")[1].get("trees", 0) > 0)
                )

            eventually(first_stored, 120, "the first records stored", log_path)
            stored_before = indexed_count(es, pattern)
            feeder.outage_started.set()
            outage_seconds = outage()
            feeder.outage_over.set()
            assert_worker_up(worker, log_path)
            recovered_at = time.monotonic()
            feeder.join(120)
            assert not feeder.is_alive() and feeder.error is None, feeder.error
            first, last = feeder.period()
            expected_minutes = dict(feeder.truth.transactions)
            expected_rollups = feeder.truth.rollups()
            volumes = expected_volumes(feeder.lines)

            def minutes_match() -> bool:
                assert_worker_up(worker, log_path)
                rows = stored.transactions()
                return {k: v for k, v in rows.items() if first <= k[1] < last} == expected_minutes

            def rollups_match() -> bool:
                assert_worker_up(worker, log_path)
                rows = {
                    k: v
                    for k, v in stored.rollups().items()
                    if k[0] in metrics and first <= k[2] < last
                }
                return rollups_equal(rows, expected_rollups)

            def lines_match() -> bool:
                assert_worker_up(worker, log_path)
                return indexed_count(es, pattern) == LOG_LINES

            def volumes_match() -> bool:
                return stored_volumes(stored, volumes) == volumes

            try:
                eventually(lines_match, SETTLE_SECONDS, f"{LOG_LINES} log lines", log_path)
                eventually(rollups_match, SETTLE_SECONDS, "rollups equal to the truth", log_path)
                if tracing:
                    eventually(minutes_match, SETTLE_SECONDS, "report minutes", log_path)
                eventually(volumes_match, 60, "log volume points", log_path)
            finally:
                _describe_difference(stored, es, pattern, expected_minutes, expected_rollups,
                                     volumes, first, last, metrics)  # fmt: skip
            caught_up = time.monotonic() - recovered_at
            response = es.search(
                index=pattern, size=LOG_LINES, source=["event.sequence"],
                query={"match_all": {}},
            )  # fmt: skip
            hits = response["hits"]["hits"]
            assert len({hit["_id"] for hit in hits}) == len(hits) == LOG_LINES
            sequences = sorted(hit["_source"]["event"]["sequence"] for hit in hits)
            assert sequences == list(range(LOG_LINES)), "each log line exactly once"
            raw = _raw_counts(stored, metrics, first, last)
            assert raw == {k: v[0] for k, v in expected_rollups.items()}, "raw points once each"
            assert_worker_up(worker, log_path)
            letters = [letter.record for letter in read_dead_letters(settings)]
            assert letters == [], f"valid input was dead-lettered: {letters[:3]}"
            worker_log = log_path.read_text(errors="replace")
            assert re.search(r"upsert into \w+ failed", worker_log), "the metrics sink retried"
            assert "bulk index failed" in worker_log, "the logs sink retried"
            print(
                f"outage {outage_seconds:.0f} s; lines stored before it {stored_before}; "
                f"records sent before/during/after {feeder.sent_per_part}; all stored "
                f"{caught_up:.0f} s after it; test {time.monotonic() - started:.0f} s"
            )
    finally:
        feeder.stopped.set()
        feeder.outage_started.set()
        feeder.outage_over.set()
        if feeder.is_alive():
            feeder.join(30)
        stores.resume()
        stored.close()
        es.close()


def assert_worker_up(worker: subprocess.Popen, log_path: Path) -> None:
    """Fail at once when the worker exited or Faust reported a crash (a crashed worker can take
    a while to exit while its servers are away)."""
    crashes = [
        line
        for line in log_path.read_text(errors="replace").splitlines()
        if "Crashed reason=" in line
    ]
    assert worker.poll() is None and not crashes, f"the worker crashed: {crashes[:1]}"


def stored_volumes(
    stored: StoredReports, expected: dict[tuple[str, int], float]
) -> dict[tuple[str, int], float]:
    """The stored `logs.lines` raw points of the test's accepted lines, by (tag text, minute)."""
    wanted = {tags for tags, _ in expected} | {
        tags_text({"service": service, "level": level, "outcome": ACCEPTED})
        for service in LOG_SERVICES
        for level in ("WARN", "ERROR")
    }
    return {
        (row["tags"], row["ts"]): row["value"]
        for row in stored.rows("raw_points")
        if row["metric"] == VOLUME_METRIC and row["tags"] in wanted
    }


def _raw_counts(
    stored: StoredReports, metrics: set[str], first: int, last: int
) -> dict[tuple[str, str, int], int]:
    counts: Counter[tuple[str, str, int]] = Counter()
    for row in stored.rows("raw_points"):
        if row["metric"] in metrics and first <= row["ts"] < last:
            counts[(row["metric"], row["tags"], row["ts"] - row["ts"] % MINUTE_MS)] += 1
    return dict(counts)


def _describe_difference(
    stored: StoredReports,
    es: Elasticsearch,
    pattern: str,
    minutes: dict,
    rollups: dict,
    volumes: dict,
    first: int,
    last: int,
    metrics: set[str],
) -> None:
    print(f"log lines indexed: {indexed_count(es, pattern)} of {LOG_LINES}")
    rows = {k: v for k, v in stored.transactions().items() if first <= k[1] < last}
    for key in sorted(set(rows) | set(minutes)):
        if rows.get(key) != minutes.get(key):
            print(f"transactions {key}: stored {rows.get(key)} expected {minutes.get(key)}")
    found = {k: v for k, v in stored.rollups().items() if k[0] in metrics and first <= k[2] < last}
    for key in sorted(set(found) | set(rollups)):
        one = {key: found[key]} if key in found else {}
        if not rollups_equal(one, {key: rollups[key]} if key in rollups else {}):
            print(f"rollup {key}: stored {found.get(key)} expected {rollups.get(key)}")
    got = stored_volumes(stored, volumes)
    for key in sorted(set(got) | set(volumes)):
        if got.get(key) != volumes.get(key):
            print(f"log volume {key}: stored {got.get(key)} expected {volumes.get(key)}")


def hang_for(stores: PrivateStores, seconds: float) -> Callable[[], float]:
    def hang() -> float:
        began = time.monotonic()
        stores.pause()
        try:
            time.sleep(seconds)
        finally:
            stores.resume()
        return time.monotonic() - began

    return hang


def test_hung_cassandra_and_elasticsearch_lose_and_double_nothing(
    stack_settings: Settings, private_stores: PrivateStores, tmp_path: Path
) -> None:
    """Both servers frozen (SIGSTOP) for 40 s under load: requests time out, then resume."""
    run_outage(
        stack_settings, private_stores, tmp_path, hang_for(private_stores, PAUSE_SECONDS),
        domains="bus,metrics,logs", past_traffic=False,
    )  # fmt: skip


def test_stopped_cassandra_and_elasticsearch_lose_and_double_nothing(
    stack_settings: Settings, private_stores: PrivateStores, tmp_path: Path
) -> None:
    """Both servers stopped for 30 s under load (connections refused), then started again."""
    private = private_stores.settings

    def stop_and_start() -> float:
        began = time.monotonic()
        private_stores.down()
        assert not port_open(private.cassandra_port) and not port_open(private.elasticsearch_port)
        time.sleep(STOP_SECONDS)
        private_stores.up()
        return time.monotonic() - began

    run_outage(
        stack_settings, private_stores, tmp_path, stop_and_start,
        domains="bus,metrics,logs", past_traffic=False,
    )  # fmt: skip


def test_hung_stores_with_tracing_and_late_points_keep_the_worker_up(
    stack_settings: Settings, private_stores: PrivateStores, tmp_path: Path
) -> None:
    """Trees and points of 20 minutes ago (late next to the volume points of now): handlers
    read Cassandra during the outage (closed minutes to restore), and must wait it out too."""
    run_outage(
        stack_settings, private_stores, tmp_path, hang_for(private_stores, PAUSE_SECONDS),
        domains="bus,metrics,logs,tracing", past_traffic=True,
    )  # fmt: skip
