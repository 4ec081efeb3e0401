"""`stackstream backfill` gives back exactly the rows live processing wrote.

An hour of generated traffic (Kafka timestamps = event times) is processed by a live worker;
its minute and hour report rows and rollups are kept, deleted from Cassandra, rebuilt with the
backfill command, and compared with what live processing wrote.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streams.settings import Settings
from tests.integration.faults import (
    DOMAINS,
    HOUR_MS,
    SERIES,
    StoredReports,
    TrafficProducer,
    closers,
    rollups_equal,
    traffic,
)
from tests.integration.test_faults_kill import fault_settings
from tests.integration.worker import apply_topics, eventually, running_worker

pytestmark = pytest.mark.integration
REPORT_KEY = ("domain", "report", "period_start_ms", "host", "type", "name")
ROLLUP_KEY = ("metric", "tags", "ts")
FLOAT_COLUMNS = ("sum", "m2")


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat()


def _keyed(rows: list[dict[str, Any]], key: tuple[str, ...], start: int, end: int) -> dict:
    time_column = "period_start_ms" if "period_start_ms" in key else "ts"
    return {tuple(r[c] for c in key): r for r in rows if start <= r[time_column] < end}


def _backfill(settings: Settings, domain: str, start: int, end: int, log: Path) -> str:
    command = [sys.executable, "-m", "streams.cli", "backfill", "--domain", domain,
               "--from", _iso(start), "--to", _iso(end)]  # fmt: skip
    env = {**os.environ, **settings.environment(), "COLUMNS": "160"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    log.write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _packed(rows: dict) -> dict:
    """Each packed series-hour row's blob columns as arrays (floats compared with a tolerance)."""
    from streams.metrics.columns import PACKED_COLUMNS, PACKED_OFFSETS

    types = dict([PACKED_OFFSETS, *PACKED_COLUMNS.values()])
    return {
        key: {c: np.frombuffer(row[c] or b"", types[c]) for c in types if c in row}
        for key, row in rows.items()
    }


def _same_rollups(live: dict, rebuilt: dict) -> list[str]:
    differences = []
    for key in sorted(set(live) | set(rebuilt)):
        a, b = live.get(key), rebuilt.get(key)
        if a is None or b is None:
            differences.append(f"{key}: live {a is not None}, backfill {b is not None}")
            continue
        for column in a:
            if column in FLOAT_COLUMNS:
                if abs(a[column] - b[column]) > 1e-6 * max(1.0, abs(a[column])):
                    differences.append(f"{key}.{column}: {a[column]} != {b[column]}")
            elif column != "sketch" and a[column] != b[column]:
                differences.append(f"{key}.{column}: {a[column]} != {b[column]}")
    return differences


def test_backfill_after_a_wipe_gives_back_the_rows_live_processing_wrote(
    stack_settings: Settings, tmp_path: Path
) -> None:
    # Closed minutes stay in memory longer than the traffic's span: with the default hour,
    # one batch reaching two hours back makes the report agent forget minutes it is closing
    # (KeyError in ReportBuilder._publish; reported with this test).
    settings = fault_settings(stack_settings).model_copy(
        update={"tracing_keep_closed_s": 4 * 3600.0}
    )
    apply_topics(settings)
    hour = (int(time.time() * 1000) // HOUR_MS - 2) * HOUR_MS
    records, truth = traffic(hour, 60, 4)
    records += closers(hour + HOUR_MS + 5 * 60_000)
    producer = TrafficProducer(settings)
    producer.send(records)
    producer.close()
    end = hour + HOUR_MS
    stored = StoredReports(settings)
    log_path = tmp_path / "worker.log"
    try:
        with running_worker(settings, log_path):
            eventually(
                lambda: {k: v for k, v in stored.transactions().items() if hour <= k[1] < end}
                == truth.transactions,
                180, "live transaction minutes equal to the truth", log_path,
            )  # fmt: skip
            eventually(
                lambda: rollups_equal(
                    {k: v for k, v in stored.rollups().items() if hour <= k[2] < end},
                    truth.rollups(),
                ),
                120, "live minute rollups equal to the truth", log_path,
            )  # fmt: skip
            eventually(
                lambda: rollups_equal(
                    {k: v for k, v in stored.rollups("rollups_1h").items() if k[2] == hour},
                    truth.rollups(HOUR_MS),
                )
                or None,
                60, "live hour rollups", log_path,
            )  # fmt: skip
            time.sleep(2)
        live = {
            table: _keyed(stored.rows(table), REPORT_KEY, hour, end)
            for table in ("trace_minute_reports", "trace_hour_reports")
        }
        live_index = _keyed(stored.rows("trace_minutes"), ("domain", "period_start_ms"), hour, end)
        live_rollups = {
            table: _keyed(stored.rows(table), ROLLUP_KEY, hour, end)
            for table in ("rollups_1m", "rollups_1h")
        }
        live_packed = _packed(_keyed(stored.rows("rollups_1m_packed"), ROLLUP_KEY, hour, end))
        assert len(live["trace_hour_reports"]) > 0 and len(live_rollups["rollups_1h"]) == 3

        _wipe(stored, hour)
        assert not _keyed(stored.rows("trace_minute_reports"), REPORT_KEY, hour, end)
        assert not _keyed(stored.rows("rollups_1m"), ROLLUP_KEY, hour, end)

        started = time.monotonic()
        output = _backfill(settings, "tracing", hour, end, tmp_path / "backfill-tracing.log")
        output += _backfill(settings, "metrics", hour, end, tmp_path / "backfill-metrics.log")
        print(f"both backfills in {time.monotonic() - started:.1f} s\n{output}")

        for table, rows in live.items():
            rebuilt = _keyed(stored.rows(table), REPORT_KEY, hour, end)
            assert rebuilt.keys() == rows.keys(), table
            for key, row in rows.items():
                assert rebuilt[key] == row, (table, key)
        assert _keyed(stored.rows("trace_minutes"), ("domain", "period_start_ms"), hour, end) == (
            live_index
        )
        for table, rows in live_rollups.items():
            rebuilt = _keyed(stored.rows(table), ROLLUP_KEY, hour, end)
            assert not _same_rollups(rows, rebuilt), _same_rollups(rows, rebuilt)[:10]

        rebuilt_packed = _packed(_keyed(stored.rows("rollups_1m_packed"), ROLLUP_KEY, hour, end))
        assert rebuilt_packed.keys() == live_packed.keys() and len(live_packed) == 3
        for key, columns in live_packed.items():
            for column, values in columns.items():
                assert np.allclose(values, rebuilt_packed[key][column], rtol=1e-9), (key, column)

        _backfill(settings, "metrics", hour, end, tmp_path / "again.log")
        again = _keyed(stored.rows("rollups_1m"), ROLLUP_KEY, hour, end)
        assert not _same_rollups(live_rollups["rollups_1m"], again), "a second run changes nothing"
    finally:
        stored.close()


def _wipe(stored: StoredReports, hour: int) -> None:
    """Delete the hour's report rows, minute index and rollups (what a backfill restores)."""
    from streams.metrics.model import row_time, tags_text

    session, ks = stored.session, stored.keyspace
    day = hour - hour % (24 * HOUR_MS)
    for domain in DOMAINS:
        for report in ("transaction", "event", "problem"):
            session.execute(
                f"DELETE FROM {ks}.trace_minute_reports WHERE domain=%s AND report=%s "
                "AND bucket_ms=%s",
                (domain, report, hour),
            )
            session.execute(
                f"DELETE FROM {ks}.trace_hour_reports WHERE domain=%s AND report=%s "
                "AND bucket_ms=%s AND period_start_ms=%s",
                (domain, report, day, hour),
            )
        session.execute(
            f"DELETE FROM {ks}.trace_minutes WHERE domain=%s AND period_start_ms>=%s "
            "AND period_start_ms<%s",
            (domain, hour, hour + HOUR_MS),
        )
    for metric, tags in SERIES:
        for table in ("rollups_1m", "rollups_1h", "rollups_1m_packed"):
            session.execute(
                f"DELETE FROM {ks}.{table} WHERE metric=%s AND row_time=%s AND tags=%s "
                "AND ts>=%s AND ts<%s",
                (metric, row_time(hour), tags_text(tags), hour, hour + HOUR_MS),
            )
