"""`stackstream logs search|tail|retention` against a real Elasticsearch."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from elasticsearch import Elasticsearch

from connectors.retry import stable_id
from streams.logs.model import ECS_MAPPINGS, document_id_parts, ecs_document, index_name
from streams.settings import Settings

pytestmark = pytest.mark.integration


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "STACKSTREAM_ELASTICSEARCH": settings.elasticsearch,
        "STACKSTREAM_ELASTICSEARCH_INDEX_PREFIX": settings.elasticsearch_index_prefix,
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", "logs", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def line(days_ago: int, sequence: int, level: str, message: str) -> dict:
    stamp = datetime.now(UTC) - timedelta(days=days_ago, minutes=5)
    return {
        "timestamp_us": int(stamp.timestamp() * 1_000_000),
        "level": level,
        "message": message,
        "service": "cli-app",
        "host": "h",
        "logger": "test",
        "trace_id": "trace-cli" if sequence == 1 else None,
        "span_id": None,
        "error_type": None,
        "error_message": None,
        "error_stack_trace": None,
        "labels": {},
        "sequence": sequence,
    }


def test_search_tail_and_retention(stack_settings: Settings) -> None:
    settings = stack_settings
    prefix = settings.elasticsearch_index_prefix
    es = Elasticsearch(settings.elasticsearch)
    es.indices.put_index_template(
        name=f"{prefix}-logs",
        index_patterns=[f"{prefix}-logs-*"],
        template={"mappings": ECS_MAPPINGS, "settings": {"number_of_replicas": 0}},
    )
    lines = [
        line(0, 1, "ERROR", "checkout exploded"),
        line(0, 2, "WARN", "checkout slow"),
        line(3, 3, "ERROR", "three days ago"),
        line(10, 4, "ERROR", "ten days ago"),
        line(30, 5, "ERROR", "a month ago"),
    ]
    for record in lines:
        es.index(
            index=index_name(prefix, record["service"], record["timestamp_us"]),
            id=stable_id(*document_id_parts(record)),
            document=ecs_document(record),
            refresh=True,
        )
    try:
        found = run_cli(settings, "search", "--app", "cli-app", "--level", "ERROR")
        assert found.returncode == 0, found.stderr
        assert "checkout exploded" in found.stdout and "checkout slow" not in found.stdout
        assert "three days ago" not in found.stdout, "search defaults to the last hour"
        older = run_cli(
            settings, "search", "--from", (datetime.now(UTC) - timedelta(days=40)).isoformat()
        )
        assert "a month ago" in older.stdout and "5 lines" in older.stdout
        bad = run_cli(settings, "search", "--level", "LOUD")
        assert bad.returncode == 1 and "--level" in bad.stdout

        tail = run_cli(settings, "tail", "--app", "cli-app", "--trace-id", "trace-cli", "--once")
        assert tail.returncode == 0, tail.stderr
        assert "checkout exploded" in tail.stdout and "trace=trace-cli" in tail.stdout
        assert "checkout slow" not in tail.stdout

        dry = run_cli(settings, "retention", "--days", "7", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "2 index(es) would be deleted, 2 kept" in dry.stdout
        assert len(es.indices.get(index=f"{prefix}-logs-*")) == 4

        done = run_cli(settings, "retention", "--days", "7")
        assert "2 index(es) deleted, 2 kept" in done.stdout
        left = sorted(es.indices.get(index=f"{prefix}-logs-*"))
        assert left == sorted(
            index_name(prefix, "cli-app", record["timestamp_us"]) for record in lines[1:3]
        )
        refused = run_cli(settings, "retention", "--days", "0")
        assert refused.returncode == 2, "keeping 0 days is refused"
    finally:
        es.indices.delete(index=f"{prefix}-logs-*", allow_no_indices=True)
        es.indices.delete_index_template(name=f"{prefix}-logs")
