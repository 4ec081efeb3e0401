"""CAT reports end to end: SDK services → trace.messages → worker → Cassandra, API, logview."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cassandra import InvalidRequest
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable
from cassandra.policies import DCAwareRoundRobinPolicy

from streams.sdk.producer import EventProducer
from streams.settings import Settings
from streams.tracing.events import MESSAGES_TOPIC, TREE_SCHEMA
from streams.tracing.sample_services import call_services, sample_apps, sample_tracers
from streams.tracing.tables import REPORT_TABLE_NAMES, unpack_parts
from tests.integration.worker import apply_topics, eventually, get_json, running_worker

pytestmark = pytest.mark.integration
CALLS = 30


def _hour(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).strftime("%Y%m%d%H")


def _tracing_settings(stack_settings: Settings, **update: Any) -> Settings:
    return stack_settings.model_copy(
        update={
            "domains": "bus,tracing",
            "tracing_grace_s": 1.0,
            "tracing_logview_sample_rate": 1.0,
            **update,
        }
    )


def _emit_sample_traffic(settings: Settings) -> tuple[int, int]:
    """Cross-service trees from the two sample services, one malformed tree, then a heartbeat
    per domain three minutes ahead so every minute of the traffic closes. (start, end) in µs."""
    shop_tracer, stock_tracer = sample_tracers(settings.kafka, settings.topic_prefix)
    start_us = int(time.time() * 1e6)
    statuses = asyncio.run(call_services(sample_apps(shop_tracer, stock_tracer), CALLS))
    end_us = int(time.time() * 1e6)
    assert len(statuses) == CALLS
    for tracer in (shop_tracer, stock_tracer):
        tracer.close()
        assert tracer.stats.dropped == 0 and tracer.stats.sent >= CALLS
    producer = EventProducer(settings.kafka, topic_prefix=settings.topic_prefix)
    malformed = _heartbeat("shop", "10.1.0.11", end_us) | {
        "message_id": "shop-0a01000b-1-bad",
        "root": {"kind": "TRANSACTION", "type": "URL", "name": "/x", "status": "0",
                 "timestamp_us": end_us, "duration_us": -5, "data": "", "children": []},
    }  # fmt: skip
    assert producer.emit(MESSAGES_TOPIC, TREE_SCHEMA, malformed, key="shop")
    ahead = end_us + 180_000_000
    for domain, ip in (("shop", "10.1.0.11"), ("stock", "10.1.0.21")):
        assert producer.emit(MESSAGES_TOPIC, TREE_SCHEMA, _heartbeat(domain, ip, ahead), key=domain)
    producer.close()
    assert producer.stats.failed == 0
    return start_us, end_us


def _heartbeat(domain: str, ip: str, at_us: int) -> dict[str, Any]:
    return {
        "domain": domain,
        "hostname": "host",
        "ip": ip,
        "message_id": f"{domain}-hb-{at_us}",
        "root": {"kind": "HEARTBEAT", "type": "Heartbeat", "name": ip, "status": "0",
                 "timestamp_us": at_us, "data": ""},
    }  # fmt: skip


def _total(base: str, report: str, domain: str, hours: set[str], type_: str) -> int:
    count = 0
    for hour in hours:
        status, answer = get_json(f"{base}/tracing/{report}?domain={domain}&date={hour}")
        if status != 200:
            return -1
        count += sum(row["count"] for row in answer["rows"] if row["type"] == type_)
    return count


def _cassandra_rows(settings: Settings, table: str) -> list[dict[str, Any]]:
    host, _, port = settings.cassandra.rpartition(":")
    profile = ExecutionProfile(load_balancing_policy=DCAwareRoundRobinPolicy("datacenter1"))
    cluster = Cluster(
        [host], port=int(port), protocol_version=5,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
    )  # fmt: skip
    try:
        session = cluster.connect()
        try:
            rows = session.execute(f"SELECT * FROM {settings.cassandra_keyspace}.{table}")
        except InvalidRequest:  # the worker has not created its keyspace yet
            return []
        except NoHostAvailable as error:  # "Unknown CF": read while the worker creates the table
            if "Unknown CF" not in str(error):
                raise
            return []
        found = [row._asdict() for row in rows]
        return unpack_parts(found) if table in REPORT_TABLE_NAMES else found
    finally:
        cluster.shutdown()


def test_cross_service_trees_become_reports_logview_chains_and_dead_letters(
    stack_settings: Settings, tmp_path: Path
) -> None:
    settings = _tracing_settings(stack_settings)
    apply_topics(settings)
    log_path = tmp_path / "worker.log"
    base = f"http://127.0.0.1:{settings.web_port}"
    with running_worker(settings, log_path):
        start_us, end_us = _emit_sample_traffic(settings)
        hours = {_hour(start_us), _hour(end_us)}

        eventually(
            lambda: _total(base, "transaction", "shop", hours, "URL") == CALLS
            and _total(base, "transaction", "stock", hours, "URL") == CALLS,
            90, "both domains' URL transactions in closed minutes", log_path,
        )  # fmt: skip
        hour = _hour(start_us)
        status, totals = get_json(f"{base}/tracing/transaction?domain=shop&date={hour}")
        assert status == 200
        assert {row["type"] for row in totals["rows"]} >= {"URL", "Service", "SQL", "Call"}
        status, names = get_json(
            f"{base}/tracing/transaction?domain=shop&date={hour}&type=URL&sort=count"
        )
        assert status == 200 and names["total"]["name"] == ""
        assert [r["count"] for r in names["rows"]] == sorted(
            (r["count"] for r in names["rows"]), reverse=True
        )
        assert {r["name"] for r in names["rows"]} <= {
            f"/order/{i}" for i in ("book", "lamp", "chair", "kettle", "plant")
        }
        url = names["total"]
        assert url["min_ms"] <= url["p50_ms"] <= url["p99_ms"] <= url["max_ms"]
        assert url["fail_count"] == 3  # stock fails every 9th call; shop answers 502
        if len(hours) == 1:  # the day merges the hour rows: the same figures when one hour
            day = get_json(f"{base}/tracing/transaction?domain=shop&date={hour[:8]}&type=URL"
                           "&sort=count")[1]  # fmt: skip
            assert day["period"] == "day" and day["total"]["count"] == url["count"]
            assert [(r["name"], r["count"], r["p99_ms"]) for r in day["rows"]] == [
                (r["name"], r["count"], r["p99_ms"]) for r in names["rows"]
            ]

        problems = eventually(
            lambda: get_json(f"{base}/tracing/problem?domain=stock&date={hour}&type=error")[1],
            30, "stock's problem report",
        )  # fmt: skip
        error_rows = [r for r in problems["rows"] if r["name"] == "OutOfStock"]
        assert error_rows and error_rows[0]["count"] == 3
        assert error_rows[0]["sample_message_ids"]

        with urllib.request.urlopen(
            f"{base}/tracing/transaction?domain=shop&date={hour}&format=xml", timeout=5
        ) as response:
            xml = response.read().decode()
        assert '<transaction-report domain="shop"' in xml and '<type id="URL"' in xml

        for query, field in (
            ("domain=shop&date=2024", "date"),
            ("date=2024010100", "domain"),
            (f"domain=shop&date={hour}&sort=colour", "sort"),
            (f"domain=shop&date={hour}&format=yaml", "format"),
        ):
            status, body = get_json(f"{base}/tracing/transaction?{query}")
            assert status == 400 and body["field"] == field, query

        failed_id = url["fail_message_id"]
        chain = eventually(
            lambda: (lambda s, b: b if s == 200 else None)(
                *get_json(f"{base}/tracing/logview?message_id={failed_id}")
            ),
            30, "the logview chain of a failed order", log_path,
        )  # fmt: skip
        top = chain["chain"]
        assert top["domain"] == "shop" and top["message_id"] == failed_id
        assert [callee["domain"] for callee in top["callees"]] == ["stock"]
        assert top["callees"][0]["parent_message_id"] == failed_id
        status, body = get_json(f"{base}/tracing/logview?message_id=")
        assert status == 400 and body["field"] == "message_id"

        deadletters = eventually(
            lambda: [
                row for row in get_json(f"{base}/bus/deadletters")[1].get("dead_letters", [])
                if row.get("source_topic") == MESSAGES_TOPIC
            ],
            30, "the malformed tree in dead letters", log_path,
        )  # fmt: skip
        assert sum(row["count"] for row in deadletters) == 1
        status, openapi = get_json(f"{base}/openapi.json")
        assert "/tracing/transaction" in openapi["paths"] and "/tracing/logview" in openapi["paths"]

    minute_rows = _cassandra_rows(settings, "trace_minute_reports")
    assert any(r["domain"] == "stock" and r["report"] == "problem" for r in minute_rows)
    assert all(r["last_offset"] >= 0 for r in minute_rows)


def test_replay_into_a_fresh_app_gives_identical_reports(
    stack_settings: Settings, tmp_path: Path
) -> None:
    live = _tracing_settings(stack_settings)
    apply_topics(live)
    with running_worker(live, tmp_path / "live.log"):
        _emit_sample_traffic(live)
        eventually(
            lambda: len(_cassandra_rows(live, "trace_minutes")) >= 2
            and get_json(f"http://127.0.0.1:{live.web_port}/tracing/status")[1]["trees"]
            >= 2 * CALLS + 2,
            90, "the live run's closed minutes", tmp_path / "live.log",
        )  # fmt: skip
        time.sleep(2)
        live_rows = _cassandra_rows(live, "trace_minute_reports")

    replay = live.model_copy(
        update={"app_id": f"{live.app_id}_replay", "cassandra_keyspace": f"{live.app_id}_r"}
    )
    with running_worker(replay, tmp_path / "replay.log"):
        eventually(
            lambda: len(_cassandra_rows(replay, "trace_minute_reports")) == len(live_rows),
            90, "the replay's rows", tmp_path / "replay.log",
        )  # fmt: skip
        time.sleep(2)
        replay_rows = _cassandra_rows(replay, "trace_minute_reports")

    def key(row: dict[str, Any]) -> tuple:
        return (row["domain"], row["report"], row["period_start_ms"], row["host"], row["type"],
                row["name"])  # fmt: skip

    assert live_rows
    assert sorted(live_rows, key=key) == sorted(replay_rows, key=key)


def _url_tree(index: int, at_us: int, duration_us: int) -> dict[str, Any]:
    return {
        "domain": "quiet",
        "hostname": "host",
        "ip": "10.2.0.1",
        "message_id": f"quiet-0a020001-1-{index}",
        "root": {"kind": "TRANSACTION", "type": "URL", "name": "/q", "status": "0",
                 "timestamp_us": at_us, "duration_us": duration_us, "data": "",
                 "children": []},
    }  # fmt: skip


def test_a_quiet_domain_closes_its_minute_and_a_late_tree_amends_the_answer(
    stack_settings: Settings, tmp_path: Path
) -> None:
    """No heartbeat follows the trees: the idle timeout closes their minute. A late tree then
    amends it, and the (cached) report answers show the new revision."""
    settings = _tracing_settings(stack_settings, tracing_idle_close_s=2.0)
    apply_topics(settings)
    log_path = tmp_path / "worker.log"
    base = f"http://127.0.0.1:{settings.web_port}"
    minute_us = (int(time.time()) // 60 - 3) * 60_000_000
    minute = dt.datetime.fromtimestamp(minute_us / 1e6, dt.UTC).strftime("%Y%m%d%H%M")
    url = f"{base}/tracing/transaction?domain=quiet&date={minute}&type=URL"
    producer = EventProducer(settings.kafka, topic_prefix=settings.topic_prefix)

    def emit(index: int, duration_us: int) -> None:
        tree = _url_tree(index, minute_us + index * 1_000_000, duration_us)
        assert producer.emit(MESSAGES_TOPIC, TREE_SCHEMA, tree, key="quiet")
        producer.flush()

    def total() -> dict[str, Any] | None:
        status, answer = get_json(url)
        return answer["total"] if status == 200 else None

    with running_worker(settings, log_path):
        for index in range(5):
            emit(index, 1_000 * (index + 1))
        first = eventually(
            lambda: (t := total()) and t["count"] == 5 and t,
            60, "the quiet minute closed by the idle timeout", log_path,
        )  # fmt: skip
        assert (first["revision"], first["min_ms"], first["max_ms"]) == (0, 1.0, 5.0)
        assert first["p50_ms"] == pytest.approx(3.0, rel=0.01)
        assert first["p99_ms"] == pytest.approx(4.0, rel=0.01)
        assert total() == first  # answered again (from the cache)

        emit(5, 60_000)
        amended = eventually(
            lambda: (t := total()) and t["revision"] == 1 and t,
            60, "the amended minute", log_path,
        )  # fmt: skip
        assert (amended["count"], amended["late_count"], amended["max_ms"]) == (6, 1, 60.0)
        hour = get_json(f"{base}/tracing/transaction?domain=quiet&date={minute[:10]}&type=URL")
        assert hour[0] == 200 and hour[1]["total"]["count"] == 6
    producer.close()

    rows = [r for r in _cassandra_rows(settings, "trace_minute_reports")
            if r["report"] == "transaction"]  # fmt: skip
    assert rows and all(r["p50_us"] is not None and r["p999_us"] is not None for r in rows)
