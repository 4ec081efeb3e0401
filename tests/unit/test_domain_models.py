"""Pure metric and log logic."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.errors import RecordRejected
from streams.logs.model import document_id_parts, ecs_document, index_name, validate_record
from streams.metrics.model import (
    ROW_WIDTH_MS,
    newest,
    raw_point_row,
    series_key,
    validate_point,
)
from tests.records import metric_point as point


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": " "}, "name"),
        ({"tags": {}}, "tags"),
        ({"tags": {"host": ""}}, "tags"),
        ({"value": math.nan}, "value"),
        ({"value": math.inf}, "value"),
        ({"timestamp_ms": 12}, "timestamp_ms"),
    ],
)
def test_invalid_points_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(RecordRejected) as raised:
        validate_point(point(**overrides))
    assert raised.value.field == field


@given(st.dictionaries(st.text(min_size=1), st.text(min_size=1), min_size=1, max_size=5))
def test_series_key_ignores_tag_order(tags: dict[str, str]) -> None:
    reordered = dict(reversed(list(tags.items())))
    assert series_key("m", tags) == series_key("m", reordered)


def test_newest_prefers_later_points() -> None:
    assert newest(None, point())
    assert not newest(point(timestamp_ms=2_000_000_000_000), point())


def test_raw_rows_fall_into_three_week_rows() -> None:
    row = raw_point_row(point(timestamp_ms=ROW_WIDTH_MS * 900 + 5))
    assert row["row_time"] == ROW_WIDTH_MS * 900
    assert row["tags"] == '{"host":"a"}'


def log_record(**overrides: object) -> dict:
    record = {
        "timestamp_us": 1_764_028_800_000_000,
        "level": "ERROR",
        "message": "boom",
        "service": "Orders API",
        "host": "h1",
        "logger": "app",
        "trace_id": "t1",
        "span_id": None,
        "error_type": "KeyError",
        "error_message": "x",
        "error_stack_trace": None,
        "labels": {"team": "a"},
        "sequence": 3,
    }
    record.update(overrides)
    return record


def test_logs_become_ecs_documents_in_daily_indices() -> None:
    record = log_record()
    document = ecs_document(record)
    assert document["@timestamp"] == "2025-11-25T00:00:00.000000Z"
    assert document["log"]["level"] == "ERROR"
    assert document["service"]["name"] == "Orders API"
    assert document["trace"] == {"id": "t1"} and "span" not in document
    assert document["error"] == {"type": "KeyError", "message": "x"}
    assert index_name("ss", record["service"], record["timestamp_us"]) == (
        "ss-logs-orders_api-2025.11.25"
    )
    assert document_id_parts(record) == document_id_parts(log_record())


def test_invalid_log_level_is_rejected() -> None:
    with pytest.raises(RecordRejected, match="level"):
        validate_record(log_record(level="LOUD"))


def test_a_log_service_name_must_fit_an_index_name() -> None:
    validate_record(log_record(service="s" * 100))
    with pytest.raises(RecordRejected, match="at most 100") as caught:
        validate_record(log_record(service="s" * 101))
    assert caught.value.field == "service"
