"""kill -9 the worker three times in the middle of a tracing and a metrics stream; after the last
restart the transaction reports and the metric rollups equal the ground truth of the input.

The batch agents hold no Faust state: minutes and rollups are recovered from Cassandra and the
uncommitted records are replayed (docs/tracing.md "Crash safety", docs/metrics.md), so neither
a lost record nor a double count may show in the stored rows.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path

import pytest

from streams.settings import Settings
from tests.integration.faults import (
    MINUTE_MS,
    StoredReports,
    TrafficProducer,
    chunks,
    closers,
    rollups_equal,
    traffic,
)
from tests.integration.worker import apply_topics, eventually, get_json, running_worker

pytestmark = pytest.mark.integration
MINUTES = 4
PER_MINUTE = 150  # per domain and per series: 4 x 150 x (3 trees + 3 points) = 3,600 records
KILLS = 3


def fault_settings(stack_settings: Settings) -> Settings:
    return stack_settings.model_copy(
        update={
            "domains": "bus,tracing,metrics",
            "tracing_grace_s": 2.0,
            "metrics_rollup_grace_s": 2.0,
            "metrics_telnet_port": 0,
            "tracing_logview_sample_rate": 0.0,
        }
    )


def test_kill_9_mid_stream_three_times_loses_and_doubles_nothing(
    stack_settings: Settings, tmp_path: Path
) -> None:
    settings = fault_settings(stack_settings)
    apply_topics(settings)
    first = (int(time.time() * 1000) // MINUTE_MS - 20) * MINUTE_MS
    records, truth = traffic(first, MINUTES, PER_MINUTE)
    records += closers(first + (MINUTES + 5) * MINUTE_MS)
    producer = TrafficProducer(settings)
    parts = [records[i :: KILLS + 1] for i in range(KILLS + 1)]  # each part spans every minute

    def stream(part: list) -> threading.Thread:
        """Send one part at about 160 records/s while a worker runs, so each kill lands
        mid-stream however long the restart took."""

        def send() -> None:
            for chunk in chunks(part, 40):
                producer.send(chunk)
                time.sleep(0.25)

        thread = threading.Thread(target=send, daemon=True)
        thread.start()
        return thread

    log_path = tmp_path / "worker.log"
    base = f"http://127.0.0.1:{settings.web_port}"
    rng = random.Random(3)
    started = time.monotonic()
    kills = 0
    for part in parts[:KILLS]:
        with running_worker(settings, log_path) as worker:
            feeder = stream(part)
            eventually(
                lambda: get_json(f"{base}/tracing/status")[1].get("trees", 0) > 0
                and get_json(f"{base}/stackstream/health")[1]["agents"]
                .get("sinks.points_to_cassandra", {}).get("records", 0) > 0,
                240, "the restarted worker to process records", log_path,
            )  # fmt: skip
            time.sleep(rng.uniform(0.5, 2.5))
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
            kills += 1
            feeder.join(120)
    assert kills == KILLS

    stored = StoredReports(settings)
    last = first + MINUTES * MINUTE_MS
    expected_minutes = dict(truth.transactions)
    expected_hours = truth.transaction_hours()
    expected_rollups = truth.rollups()
    try:
        with running_worker(settings, log_path):
            stream(parts[KILLS]).join(120)
            producer.close()

            def minutes_match() -> bool:
                rows = stored.transactions()
                return {k: v for k, v in rows.items() if first <= k[1] < last} == expected_minutes

            def rollups_match() -> bool:
                rows = {k: v for k, v in stored.rollups().items() if first <= k[2] < last}
                return rollups_equal(rows, expected_rollups)

            try:
                eventually(minutes_match, 180, "transaction minutes equal to the truth", log_path)
                eventually(rollups_match, 120, "minute rollups equal to the truth", log_path)
            finally:
                _describe_difference(stored, expected_minutes, expected_rollups, first, last)
            hours = {
                k: v
                for k, v in stored.transactions("trace_hour_reports").items()
                if k in expected_hours
            }
            assert hours == expected_hours
            status = get_json(f"{base}/tracing/status")[1]
            print(f"after restarts: {status} in {time.monotonic() - started:.0f} s")
    finally:
        stored.close()


def _describe_difference(
    stored: StoredReports, minutes: dict, rollups: dict, first: int, last: int
) -> None:
    rows = {k: v for k, v in stored.transactions().items() if first <= k[1] < last}
    for key in sorted(set(rows) | set(minutes)):
        if rows.get(key) != minutes.get(key):
            print(f"transactions {key}: stored {rows.get(key)} expected {minutes.get(key)}")
    found = {k: v for k, v in stored.rollups().items() if first <= k[2] < last}
    for key in sorted(set(found) | set(rollups)):
        one_found = {key: found[key]} if key in found else {}
        if not rollups_equal(one_found, {key: rollups[key]} if key in rollups else {}):
            print(f"rollup {key}: stored {found.get(key)} expected {rollups.get(key)}")
