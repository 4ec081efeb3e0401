"""Log governance and the pure log logic: levels, quotas, sampling, sizes, secrets, search,
NDJSON lines and retention."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from streams.errors import RecordRejected
from streams.logs.model import (
    ACCEPTED,
    DROPPED_LEVEL,
    DROPPED_QUOTA,
    MINUTE_US,
    VOLUME_METRIC,
    GovernanceRule,
    Governor,
    LogGovernanceError,
    ParameterError,
    ecs_document,
    expired_indices,
    index_day,
    normalise_level,
    parse_ndjson_line,
    parse_search,
    rule_from_configuration,
    rule_overrides,
    search_page,
    truncate_utf8,
    volume_points,
)
from streams.sdk.masking import MASK, InvalidSecretPattern, SecretMasker, luhn_valid

MINUTE = 1_764_028_800_000_000  # 2025-11-25 00:00 UTC, a minute boundary


def line(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "timestamp_us": MINUTE + 1_000,
        "level": "ERROR",
        "message": "payment failed",
        "service": "orders",
        "host": "h1",
        "logger": "app",
        "trace_id": None,
        "span_id": None,
        "error_type": None,
        "error_message": None,
        "error_stack_trace": None,
        "labels": {},
        "sequence": 0,
    }
    record.update(overrides)
    return record


def governor(rule: GovernanceRule | None = None, max_bytes: int = 1024, **rules: Any) -> Governor:
    by_service = {name: value for name, value in rules.items()}
    default = rule or GovernanceRule()
    return Governor(lambda service: by_service.get(service, default), SecretMasker(), max_bytes)


# --- level --------------------------------------------------------------------------------


def test_default_rule_keeps_warn_and_above_only() -> None:
    lines = [line(level=level, sequence=i) for i, level in enumerate(["DEBUG", "INFO", "WARN"])]
    lines.append(line(level="FATAL", sequence=9))
    outcome = governor().govern(lines)
    assert [kept.record["level"] for kept in outcome.accepted] == ["WARN", "FATAL"]
    assert [kept.position for kept in outcome.accepted] == [2, 3]
    minute_ms = MINUTE // 1000
    assert outcome.volume == {
        ("orders", "DEBUG", minute_ms, DROPPED_LEVEL): 1,
        ("orders", "FATAL", minute_ms, ACCEPTED): 1,
        ("orders", "INFO", minute_ms, DROPPED_LEVEL): 1,
        ("orders", "WARN", minute_ms, ACCEPTED): 1,
    }
    assert outcome.summaries == [], "lines below the level are not quota drops"


def test_each_application_has_its_own_rule() -> None:
    chatty = GovernanceRule(min_level="DEBUG")
    gov = governor(payments=chatty)
    outcome = gov.govern([line(level="DEBUG"), line(level="DEBUG", service="payments")])
    assert [kept.record["service"] for kept in outcome.accepted] == ["payments"]


def test_rules_come_from_config_keys_over_the_fallback() -> None:
    fallback = GovernanceRule("WARN", 100, 10)
    assert rule_from_configuration({"level": "info"}, fallback) == GovernanceRule("INFO", 100, 10)
    assert rule_from_configuration(
        {"level": "error", "quota_per_minute": "5", "sample_every": "0"}, fallback
    ) == GovernanceRule("ERROR", 5, 0)
    assert rule_from_configuration({}, fallback) == fallback
    with pytest.raises(RecordRejected, match=r"configurations\.level"):
        rule_from_configuration({"level": "LOUD"}, fallback)
    with pytest.raises(RecordRejected, match=r"configurations\.quota_per_minute"):
        rule_from_configuration({"quota_per_minute": "-3"}, fallback)
    with pytest.raises(LogGovernanceError, match="min level"):
        GovernanceRule("LOUD")


def release(**overrides: Any) -> dict[str, Any]:
    record = {
        "app_id": "orders",
        "cluster": "default",
        "namespace": "stackstream.logging",
        "configurations": {"level": "INFO", "quota_per_minute": "50", "unrelated": "x"},
    }
    record.update(overrides)
    return record


def test_only_the_logging_namespace_of_the_configured_cluster_sets_a_rule() -> None:
    assert rule_overrides(release(), "stackstream.logging", "default") == (
        "orders",
        {"level": "INFO", "quota_per_minute": "50"},
    )
    assert (
        rule_overrides(release(namespace="application"), "stackstream.logging", "default") is None
    )
    assert rule_overrides(release(cluster="gray1"), "stackstream.logging", "default") is None
    assert rule_overrides(
        release(namespace="StackStream.Logging"), "stackstream.logging", "default"
    ) == ("orders", {"level": "INFO", "quota_per_minute": "50"})
    with pytest.raises(RecordRejected, match="level"):
        rule_overrides(
            release(configurations={"level": "chatty"}), "stackstream.logging", "default"
        )


def test_level_names_as_loggers_write_them_are_understood() -> None:
    assert normalise_level("warning") == "WARN"
    assert normalise_level(" Critical ") == "FATAL"
    assert normalise_level("error") == "ERROR"
    assert normalise_level("loud") is None


# --- quota ----------------------------------------------------------------------------------


def test_over_quota_lines_are_sampled_and_one_summary_counts_the_drops() -> None:
    gov = governor(GovernanceRule("INFO", quota_per_minute=3, sample_every=4))
    lines = [line(sequence=i, timestamp_us=MINUTE + i) for i in range(12)]
    outcome = gov.govern(lines)
    kept = [(kept.position, kept.tags) for kept in outcome.accepted]
    assert kept == [
        (0, ()),
        (1, ()),
        (2, ()),
        (3, ("sampled",)),
        (7, ("sampled",)),
        (11, ("sampled",)),
    ]
    assert len(outcome.summaries) == 1
    summary = outcome.summaries[0]
    assert (summary.dropped, summary.admitted, summary.sampled) == (6, 3, 3)
    record = summary.record()
    assert "6 lines dropped" in record["message"] and record["level"] == "WARN"
    assert record["labels"]["dropped"] == "6" and record["timestamp_us"] == MINUTE
    minute_ms = MINUTE // 1000
    assert outcome.volume[("orders", "ERROR", minute_ms, ACCEPTED)] == 6
    assert outcome.volume[("orders", "ERROR", minute_ms, DROPPED_QUOTA)] == 6

    later = gov.govern([line(sequence=20, timestamp_us=MINUTE + 20)] * 2)
    assert later.summaries[0].dropped == 8, "the summary of a minute carries its running total"
    assert later.summaries[0].document_id_parts() == summary.document_id_parts()
    assert later.volume == {("orders", "ERROR", minute_ms, DROPPED_QUOTA): 8}


def test_quota_is_per_minute_of_event_time_and_per_application() -> None:
    gov = governor(GovernanceRule("INFO", quota_per_minute=2, sample_every=0))
    first = [line(sequence=i) for i in range(3)]
    other_app = [line(service="payments", sequence=i) for i in range(2)]
    next_minute = [line(sequence=i, timestamp_us=MINUTE + MINUTE_US + i) for i in range(2)]
    outcome = gov.govern(first + other_app + next_minute)
    assert [kept.position for kept in outcome.accepted] == [0, 1, 3, 4, 5, 6]
    assert [(s.service, s.minute_us, s.dropped) for s in outcome.summaries] == [
        ("orders", MINUTE, 1)
    ]


def test_sample_every_one_keeps_everything_and_zero_drops_everything_over_quota() -> None:
    keep_all = governor(GovernanceRule("INFO", 1, 1)).govern([line()] * 5)
    assert len(keep_all.accepted) == 5 and keep_all.summaries[0].dropped == 0
    drop_all = governor(GovernanceRule("INFO", 1, 0)).govern([line()] * 5)
    assert len(drop_all.accepted) == 1 and drop_all.summaries[0].dropped == 4


def test_old_minutes_are_forgotten_so_memory_stays_bounded() -> None:
    gov = governor(GovernanceRule("INFO", 1, 0))
    for minute in range(30):
        gov.govern([line(timestamp_us=MINUTE + minute * MINUTE_US)])
    assert len(gov.usage) <= gov.minutes_kept + 1
    assert len(gov.volume) <= gov.minutes_kept + 1


def test_volume_counts_become_metric_points_per_minute() -> None:
    points = volume_points({("orders", "ERROR", 1_000_020, ACCEPTED): 7})
    assert points == [
        {
            "name": VOLUME_METRIC,
            "timestamp_ms": 1_000_020,
            "value": 7.0,
            "tags": {"service": "orders", "level": "ERROR", "outcome": ACCEPTED},
            "ttl_seconds": 0,
        }
    ]


# --- size and secrets --------------------------------------------------------------------


def test_oversize_text_is_cut_on_a_character_boundary_and_flagged() -> None:
    assert truncate_utf8("héllo", 100) == ("héllo", None)
    assert truncate_utf8("héllo", 2) == ("h", 6)
    outcome = governor(max_bytes=100).govern(
        [line(message="é" * 80, error_stack_trace="x" * 500, error_message="short")]
    )
    kept = outcome.accepted[0]
    assert kept.record["message"] == "é" * 50
    assert len(kept.record["error_stack_trace"]) == 100
    assert kept.record["error_message"] == "short"
    assert "truncated" in kept.tags
    assert kept.record["labels"]["original_bytes_message"] == "160"
    assert kept.record["labels"]["original_bytes_error_stack_trace"] == "500"
    assert ecs_document(kept.record, kept.tags)["tags"] == ["truncated"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("login password=hunter2 ok", f"login password={MASK} ok"),
        ('{"token": "abc.def"}', f'{{"token": "{MASK}"}}'),
        ("api_key: s3cr3t-key,next", f"api_key: {MASK},next"),
        ("Authorization: Bearer eyJabc.def", f"Authorization: Bearer {MASK}"),
        ("call with bearer abcDEF123==", f"call with bearer {MASK}"),
        ("db postgres://app:pa55@db:5432/x", f"db postgres://app:{MASK}@db:5432/x"),
        ("card 4111 1111 1111 1111 charged", "card ****1111 charged"),
        ("card 4111-1111-1111-1111", "card ****1111"),
        ("order 1234567890123 shipped", "order 1234567890123 shipped"),
        ("jwt eyJhbGciOi.eyJzdWIiOiIx.sig-nature", f"jwt {MASK}"),
        ("nothing secret here", "nothing secret here"),
    ],
)
def test_secrets_are_masked(text: str, expected: str) -> None:
    assert SecretMasker().mask(text)[0] == expected


def test_masking_covers_errors_and_labels_and_is_flagged_before_storage() -> None:
    outcome = governor().govern(
        [
            line(
                message="user password=abc",
                error_message="token=xyz",
                error_stack_trace="at login(secret=qq)",
                labels={"auth": "Bearer abc123", "team": "a"},
            )
        ]
    )
    kept = outcome.accepted[0]
    document = ecs_document(kept.record, kept.tags)
    text = repr(document)
    for secret in ("=abc", "=xyz", "=qq", "abc123"):
        assert secret not in text
    assert document["message"] == f"user password={MASK}"
    assert document["error"]["message"] == f"token={MASK}"
    assert document["error"]["stack_trace"] == f"at login(secret={MASK})"
    assert document["labels"] == {"auth": f"Bearer {MASK}", "team": "a"}
    assert document["tags"] == ["masked"]


def test_extra_patterns_mask_too_and_bad_ones_are_named() -> None:
    masker = SecretMasker([r"ssn (?P<secret>\d{3}-\d{2}-\d{4})", r"INTERNAL-\w+"])
    assert masker.mask("ssn 123-45-6789 and INTERNAL-abc") == (f"ssn {MASK} and {MASK}", 2)
    with pytest.raises(InvalidSecretPattern, match=r"\(unclosed"):
        SecretMasker([r"(unclosed"])


def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")


# --- search --------------------------------------------------------------------------------


def test_search_parameters_become_a_safe_query() -> None:
    search = parse_search(
        {
            "service": "Orders API",
            "level": "error,fatal",
            "from": "2025-11-25T00:00:00Z",
            "to": "1764032400000",
            "q": 'timeout -retry "upstream"',
            "trace_id": "abc",
            "page": "3",
            "size": "20",
        }
    )
    assert search.indices("ss") == "ss-logs-orders_api-*"
    body = search.body()
    filters = body["query"]["bool"]["filter"]
    assert {"term": {"service.name": "Orders API"}} in filters
    assert {"terms": {"log.level": ["ERROR", "FATAL"]}} in filters
    assert {"term": {"trace.id": "abc"}} in filters
    assert {
        "range": {
            "@timestamp": {"gte": "2025-11-25T00:00:00+00:00", "lt": "2025-11-25T01:00:00+00:00"}
        }
    } in filters
    text_query = body["query"]["bool"]["must"][0]["simple_query_string"]
    assert text_query["query"] == 'timeout -retry "upstream"'
    assert body["from"] == 40 and body["size"] == 20
    arguments = search.search_arguments("ss")
    assert arguments["index"] == "ss-logs-orders_api-*"
    assert (arguments["from_"], arguments["size"], arguments["query"]) == (40, 20, body["query"])
    assert arguments["ignore_unavailable"] and arguments["allow_no_indices"]


def test_min_level_filters_this_level_and_above() -> None:
    body = parse_search({"min_level": "warn"}).body()
    assert body["query"]["bool"]["filter"] == [{"terms": {"log.level": ["WARN", "ERROR", "FATAL"]}}]
    assert parse_search({}).indices("ss") == "ss-logs-*"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"level": "LOUD"}, "level"),
        ({"from": "yesterday"}, "from"),
        ({"from": "2025-11-25T02:00:00Z", "to": "2025-11-25T01:00:00Z"}, "to"),
        ({"size": "0"}, "size"),
        ({"size": "many"}, "size"),
        ({"page": "300", "size": "500"}, "page"),
        ({"query": '{"match_all": {}}'}, "query"),
        ({"q": "x" * 1001}, "q"),
    ],
)
def test_bad_search_parameters_are_named(params: dict[str, str], field: str) -> None:
    with pytest.raises(ParameterError) as error:
        parse_search(params)
    assert error.value.field == field


def test_a_search_page_says_whether_there_is_more() -> None:
    response = {
        "hits": {
            "total": {"value": 45, "relation": "eq"},
            "hits": [{"_id": "a", "_index": "i", "_source": {"message": "m"}}],
        }
    }
    page = search_page(parse_search({"size": "20", "page": "2"}), response)
    assert page["total"] == 45 and page["next_page"] == 3
    assert page["lines"] == [{"message": "m", "_id": "a", "_index": "i"}]
    assert search_page(parse_search({"size": "20", "page": "3"}), response)["next_page"] is None


# --- NDJSON --------------------------------------------------------------------------------


def test_ndjson_lines_with_dotted_or_nested_ecs_names_become_records() -> None:
    dotted = parse_ndjson_line(
        '{"@timestamp":"2025-11-25T00:00:01.5Z","log.level":"warning","message":"slow",'
        '"service.name":"billing","trace.id":"t1","labels":{"n":3}}',
        4,
        now_us=1,
    )
    assert dotted["timestamp_us"] == MINUTE + 1_500_000
    assert dotted["level"] == "WARN" and dotted["service"] == "billing"
    assert dotted["trace_id"] == "t1" and dotted["labels"] == {"n": "3"}
    assert dotted["sequence"] == 4, "the line number makes a resent body idempotent"
    nested = parse_ndjson_line(
        '{"message":"x","log":{"level":"ERROR"},"error":{"type":"E"},"@timestamp":1764028800000}',
        1,
        now_us=7,
        default_service="from-query",
    )
    assert nested["service"] == "from-query" and nested["error_type"] == "E"
    assert nested["timestamp_us"] == MINUTE
    assert parse_ndjson_line('{"message":"x","service.name":"a"}', 1, now_us=7)["level"] == "INFO"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("not json", "line"),
        ("[1, 2]", "line"),
        ('{"service.name":"a"}', "message"),
        ('{"message":"x"}', "service.name"),
        ('{"message":"x","service.name":"' + "s" * 101 + '"}', "service.name"),
        ('{"message":"x","service.name":"a","log.level":"LOUD"}', "log.level"),
        ('{"message":"x","service.name":"a","@timestamp":"soon"}', "@timestamp"),
        ('{"message":"x","service.name":"a","labels":[1]}', "labels"),
        ('{"message":"x","service.name":"a","trace.id":5}', "trace.id"),
    ],
)
def test_bad_ndjson_lines_name_the_field(text: str, field: str) -> None:
    with pytest.raises(ParameterError) as error:
        parse_ndjson_line(text, 1, now_us=1)
    assert error.value.field == field


# --- retention ---------------------------------------------------------------------------


def test_retention_deletes_whole_days_older_than_the_limit() -> None:
    indices = [
        "ss-logs-orders-2025.11.17",
        "ss-logs-orders-2025.11.18",
        "ss-logs-pay_ments-2025.10.01",
        "ss-logs-orders-2025.11.25",
        "ss-logs-orders-notaday",
    ]
    assert expired_indices(indices, date(2025, 11, 25), 7) == [
        "ss-logs-orders-2025.11.17",
        "ss-logs-pay_ments-2025.10.01",
    ]
    assert index_day("x-2025.13.01") is None
    with pytest.raises(LogGovernanceError):
        expired_indices(indices, date(2025, 11, 25), 0)


def test_documents_carry_microsecond_utc_timestamps() -> None:
    document = ecs_document(line(timestamp_us=MINUTE + 5))
    assert document["@timestamp"] == "2025-11-25T00:00:00.000005Z"
    assert datetime.fromisoformat(document["@timestamp"]).tzinfo == UTC


def test_lines_masked_at_the_source_are_still_flagged() -> None:
    governor = Governor(lambda service: GovernanceRule(), SecretMasker(), 4096)
    cleaned, flags = governor.clean(line(labels={"stackstream_masked": "true", "team": "a"}))
    assert "masked" in flags and cleaned["labels"] == {"team": "a"}
