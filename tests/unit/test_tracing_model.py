"""Report logic without Kafka: validation, minute rows, All-hosts and totals, problems, merges,
watermarks, late trees and commit offsets."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from streams.bus.batching import written_us
from streams.bus.codec import AvroCodec, SchemaRegistry
from streams.errors import RecordRejected
from streams.settings import Settings
from streams.tracing.events import REPORT_SCHEMA, TREE_SCHEMA
from streams.tracing.model import (
    MINUTE_MS,
    PERCENTILE_COLUMNS,
    HourReport,
    MinuteReport,
    Outcome,
    PartitionReports,
    ProblemThresholds,
    ReportOptions,
    TreeLimits,
    describe_row,
    duration_bucket_ms,
    merge_rows,
    standard_deviation,
    validate_tree,
)
from streams.tracing.sketch import LatencySketch

T0_US = 1_706_608_800_000_000  # 2024-01-30 10:00:00 UTC
NOW_US = T0_US + 3_600_000_000


def transaction(
    type_: str, name: str, duration_us: int, *, at_us: int = T0_US, status: str = "0",
    children: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:  # fmt: skip
    return {
        "kind": "TRANSACTION", "type": type_, "name": name, "status": status,
        "timestamp_us": at_us, "duration_us": duration_us, "data": "",
        "children": children or [],
    }  # fmt: skip


def event(type_: str, name: str, *, at_us: int = T0_US, status: str = "0") -> dict[str, Any]:
    return {"kind": "EVENT", "type": type_, "name": name, "status": status,
            "timestamp_us": at_us, "data": ""}  # fmt: skip


def tree(root: dict[str, Any], *, domain: str = "orders", ip: str = "10.0.0.1",
         message_id: str = "orders-0a000001-474058-1") -> dict[str, Any]:  # fmt: skip
    return {
        "domain": domain, "hostname": "h", "ip": ip, "thread_group_name": "",
        "thread_id": "", "thread_name": "", "message_id": message_id,
        "parent_message_id": None, "root_message_id": None, "session_token": None,
        "root": root,
    }  # fmt: skip


def rows_by(rows: list[dict[str, Any]], report: str) -> dict[tuple[str, str, str], dict]:
    return {(r["host"], r["type"], r["name"]): r for r in rows if r["report"] == report}


# --- validation ---------------------------------------------------------------------------


def test_a_good_tree_passes_validation_and_is_valid_avro() -> None:
    good = tree(transaction("URL", "/pay", 1200, children=[event("Exception", "Boom")]))
    validate_tree(good, now_us=NOW_US)
    codec = AvroCodec(SchemaRegistry.from_directory(Settings().schemas_dir))
    assert codec.decoder(TREE_SCHEMA)(codec.encode(TREE_SCHEMA, good)) == good


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda t: t.update(domain=""), "domain"),
        (lambda t: t.update(ip=" "), "ip"),
        (lambda t: t.update(message_id="a b"), "message_id"),
        (lambda t: t["root"].update(timestamp_us=5), "root.timestamp_us"),
        (lambda t: t["root"].update(timestamp_us=NOW_US + 10**12), "root.timestamp_us"),
        (lambda t: t["root"].update(duration_us=-1), "root.duration_us"),
        (lambda t: t["root"].update(duration_us=10**12), "root.duration_us"),
        (lambda t: t["root"].update(type=""), "root.type"),
        (lambda t: t["root"]["children"][0].update(name=""), "root.children[0].name"),
        (
            lambda t: t["root"]["children"][0].update(timestamp_us=T0_US - 120_000_000),
            "root.children[0].timestamp_us",
        ),
    ],
)
def test_malformed_trees_are_rejected_naming_the_field(change: Any, field: str) -> None:
    bad = tree(transaction("URL", "/pay", 1200, children=[event("Exception", "Boom")]))
    change(bad)
    with pytest.raises(RecordRejected) as rejected:
        validate_tree(bad, now_us=NOW_US)
    assert rejected.value.field == field


def test_oversize_and_too_deep_trees_are_rejected() -> None:
    wide = tree(transaction("URL", "/x", 1, children=[event("E", str(i)) for i in range(20)]))
    with pytest.raises(RecordRejected, match="more than 10 messages"):
        validate_tree(wide, now_us=NOW_US, limits=TreeLimits(max_messages=10))
    deep = transaction("Call", "leaf", 1)
    for _ in range(5):
        deep = transaction("Call", "level", 1, children=[deep])
    with pytest.raises(RecordRejected, match="deeper than 3"):
        validate_tree(tree(deep), now_us=NOW_US, limits=TreeLimits(max_depth=3))


# --- one minute ---------------------------------------------------------------------------


def test_transaction_rows_carry_exact_statistics_and_sketch_quantiles() -> None:
    minute = MinuteReport("orders", T0_US // 1000)
    durations = [1_000, 2_000, 3_000, 400_000]
    for index, duration in enumerate(durations):
        status = "500" if index == 3 else "0"
        minute.add_tree(
            tree(transaction("URL", "/pay", duration, status=status), message_id=f"m-{index}"),
            ReportOptions(),
        )
    row = rows_by(minute.rows(0, ReportOptions()), "transaction")[("10.0.0.1", "URL", "/pay")]
    assert (row["count"], row["fail_count"], row["sum_us"]) == (4, 1, 406_000)
    assert (row["min_us"], row["max_us"]) == (1_000, 400_000)
    assert row["success_message_id"] == "m-0"
    assert row["fail_message_id"] == row["longest_message_id"] == "m-3"
    assert row["duration_counts"] == {"1": 1, "2": 1, "4": 1, "512": 1}
    described = describe_row(row)
    assert described["fail_percent"] == 25.0
    assert described["tps"] == round(4 / 60, 4)
    assert described["avg_ms"] == 101.5
    exact_std = math.sqrt(sum(d * d for d in durations) / 4 - (406_000 / 4) ** 2) / 1000
    assert described["std_ms"] == pytest.approx(exact_std, abs=1e-4)
    assert described["p50_ms"] == pytest.approx(2.0, rel=0.01)
    assert described["p999_ms"] == pytest.approx(3.0, rel=0.01)  # lower quantile: rank 2.997


def test_all_hosts_rows_and_type_totals_are_merges_of_host_rows() -> None:
    minute = MinuteReport("orders", T0_US // 1000)
    generator = random.Random(3)
    per_host: dict[str, list[int]] = {"10.0.0.1": [], "10.0.0.2": []}
    for index in range(300):
        host = "10.0.0.1" if index % 3 else "10.0.0.2"
        name = "/a" if index % 2 else "/b"
        duration = round(generator.lognormvariate(8, 1.2))
        per_host[host].append(duration)
        minute.add_tree(tree(transaction("URL", name, duration), ip=host), ReportOptions())
    rows = rows_by(minute.rows(0, ReportOptions()), "transaction")
    everything = [d for values in per_host.values() for d in values]
    total = rows[("All", "URL", "")]
    assert total["count"] == 300
    assert total["sum_us"] == sum(everything)
    assert LatencySketch.from_bytes(total["sketch"]) == LatencySketch.of(everything)
    host_total = rows[("10.0.0.2", "URL", "")]
    assert host_total["count"] == len(per_host["10.0.0.2"])
    assert rows[("All", "URL", "/a")]["count"] + rows[("All", "URL", "/b")]["count"] == 300


def test_problems_follow_cat_thresholds_and_keep_a_few_samples() -> None:
    options = ReportOptions(max_problem_samples=2)
    minute = MinuteReport("orders", T0_US // 1000)
    cases = [
        transaction("URL", "/slow", 2_500_000),  # long-url, bucket 2000
        transaction("URL", "/fast", 999_000),  # below 1000 ms: no problem
        transaction("SQL", "select", 100_000),  # long-sql at exactly 100 ms
        transaction("Cache.redis", "get", 60_000),  # long-cache, bucket 50
        transaction("PigeonCall", "svc.m", 700_000),  # long-call, bucket 500
        transaction("Service", "svc.m", 40_000),  # below 50 ms
        transaction("Job", "nightly", 1, status="timeout"),  # failed transaction
        transaction("URL", "/e", 5, children=[event("RuntimeException", "NPE", status="1")]),
        transaction("URL", "/e", 5, children=[event("RuntimeException", "NPE", status="1")]),
        transaction("URL", "/e", 5, children=[event("RuntimeException", "NPE", status="1")]),
        transaction("URL", "/e", 5, children=[event("Exception", "ok", status="0")]),
    ]
    for index, root in enumerate(cases):
        minute.add_tree(tree(root, message_id=f"m-{index}"), options)
    problems = rows_by(minute.rows(0, options), "problem")
    host = "10.0.0.1"
    assert problems[(host, "long-url", "/slow")]["duration_counts"] == {"2000": 1}
    assert (host, "long-url", "/fast") not in problems
    assert problems[(host, "long-sql", "select")]["duration_counts"] == {"100": 1}
    assert problems[(host, "long-cache", "get")]["duration_counts"] == {"50": 1}
    assert problems[(host, "long-call", "svc.m")]["duration_counts"] == {"500": 1}
    assert (host, "long-service", "svc.m") not in problems
    assert problems[(host, "Job", "nightly")]["count"] == 1
    error = problems[(host, "error", "NPE")]
    assert error["count"] == 3
    assert error["sample_message_ids"] == ["m-7", "m-8"]
    assert (host, "error", "ok") not in problems
    assert problems[("All", "error", "")]["count"] == 3


def test_thresholds_are_configurable_per_domain() -> None:
    options = ReportOptions(domain_thresholds={"orders": ProblemThresholds(long_url=(100,))})
    minute = MinuteReport("orders", T0_US // 1000)
    minute.add_tree(tree(transaction("URL", "/x", 150_000)), options)
    other = MinuteReport("billing", T0_US // 1000)
    other.add_tree(tree(transaction("URL", "/x", 150_000), domain="billing"), options)
    assert ("10.0.0.1", "long-url", "/x") in rows_by(minute.rows(0, options), "problem")
    assert rows_by(other.rows(0, options), "problem") == {}


def test_event_rows_count_and_fail() -> None:
    minute = MinuteReport("orders", T0_US // 1000)
    root = transaction(
        "URL", "/pay", 10,
        children=[event("RemoteCall", "billing"), event("RemoteCall", "billing", status="1")],
    )  # fmt: skip
    minute.add_tree(tree(root), ReportOptions())
    row = rows_by(minute.rows(0, ReportOptions()), "event")[("All", "RemoteCall", "billing")]
    assert (row["count"], row["fail_count"]) == (2, 1)


def test_rows_are_valid_report_rows() -> None:
    minute = MinuteReport("orders", T0_US // 1000)
    minute.add_tree(
        tree(transaction("URL", "/e", 5, children=[event("Error", "E", status="1")])),
        ReportOptions(),
    )
    codec = AvroCodec(SchemaRegistry.from_directory(Settings().schemas_dir))
    decode = codec.decoder(REPORT_SCHEMA)
    for row in minute.rows(123, ReportOptions()):
        on_topic = {k: v for k, v in row.items() if k not in PERCENTILE_COLUMNS}
        assert decode(codec.encode(REPORT_SCHEMA, row)) == on_topic


def test_cat_duration_buckets_and_standard_deviation() -> None:
    assert [duration_bucket_ms(us) for us in (0, 1_000, 1_001, 3_000, 10**9)] == [
        1, 1, 2, 4, 65_536,
    ]  # fmt: skip
    assert standard_deviation(1, 5, 25) == 0.0
    assert standard_deviation(2, 3, 5) == pytest.approx(0.5)


# --- hours and days -----------------------------------------------------------------------


def test_an_hour_is_the_exact_merge_of_its_minutes() -> None:
    generator = random.Random(11)
    minutes: list[dict[str, Any]] = []
    durations: list[int] = []
    for index in range(60):
        minute = MinuteReport("orders", T0_US // 1000 + index * MINUTE_MS)
        for _ in range(20):
            duration = round(generator.paretovariate(1.3) * 500)
            durations.append(duration)
            minute.add_tree(tree(transaction("SQL", "q", duration)), ReportOptions())
        minutes.extend(minute.rows(0, ReportOptions()))
    hour = rows_by(merge_rows(minutes, "hour"), "transaction")[("All", "SQL", "q")]
    assert hour["period"] == "hour"
    assert hour["period_start_ms"] == T0_US // 1000
    assert hour["count"] == 1200
    assert hour["sum_us"] == sum(durations)
    assert (hour["min_us"], hour["max_us"]) == (min(durations), max(durations))
    assert LatencySketch.from_bytes(hour["sketch"]) == LatencySketch.of(durations)
    assert describe_row(hour)["tps"] == round(1200 / 3600, 4)
    day = merge_rows(merge_rows(minutes, "hour"), "day")
    assert rows_by(day, "transaction")[("All", "SQL", "q")]["sum_us"] == sum(durations)
    with pytest.raises(ValueError, match="period"):
        merge_rows(minutes, "week")


def _varied_minutes(count: int) -> list[MinuteReport]:
    """Minutes with several hosts, names, failures and problems, so first-seen ids matter."""
    generator = random.Random(23)
    minutes = []
    for index in range(count):
        minute = MinuteReport("orders", T0_US // 1000 + index * MINUTE_MS)
        for n in range(30):
            failed = generator.random() < 0.2
            root = transaction(
                "URL", f"/{generator.randrange(4)}", generator.randrange(1, 3_000_000),
                status="500" if failed else "0",
                children=[transaction("SQL", "q", generator.randrange(1, 900_000)),
                          event("Exception", "Boom", status="1" if failed else "0")],
            )  # fmt: skip
            ip = f"10.0.0.{generator.randrange(1, 4)}"
            minute.add_tree(tree(root, ip=ip, message_id=f"orders-{index}-{n}"), ReportOptions())
        minutes.append(minute)
    return minutes


def test_an_hour_kept_in_memory_gives_the_rows_merge_rows_gives() -> None:
    minutes = _varied_minutes(6)
    all_rows: list[dict[str, Any]] = []
    hour = HourReport("orders", T0_US // 1000)
    changed: set[Any] = set()
    for index, minute in enumerate(minutes):
        minute.late_count = index % 2
        all_rows.extend(minute.rows(minute.period_start_ms + MINUTE_MS, ReportOptions()))
        assert minute.emitted is not None
        changed |= hour.add_minute(minute.period_start_ms, minute.emitted)
    expected = merge_rows(all_rows, "hour")
    assert hour.rows() == expected
    assert hour.rows(changed) == expected
    with pytest.raises(ValueError, match="rebuild"):
        hour.add_minute(minutes[2].period_start_ms, minutes[2].emitted)

    stored = [row for row in all_rows if row["period_start_ms"] < minutes[4].period_start_ms]
    restored = HourReport.from_rows("orders", T0_US // 1000, stored, 5)
    assert not restored.takes_next(minutes[3].period_start_ms)
    for minute in minutes[4:]:
        assert minute.emitted is not None
        restored.add_minute(minute.period_start_ms, minute.emitted)
    assert restored.rows() == expected


# --- watermark, late trees, commits ---------------------------------------------------------


def at(minute: int, second: int = 0) -> int:
    return T0_US + (minute * 60 + second) * 1_000_000


def test_minutes_close_by_event_time_and_late_trees_amend_them() -> None:
    state = PartitionReports(grace_ms=10_000)
    assert state.apply(tree(transaction("URL", "/a", 5, at_us=at(0, 5))), 0) is Outcome.APPLIED
    assert state.apply(tree(transaction("URL", "/a", 5, at_us=at(1, 5))), 1) is Outcome.APPLIED
    assert state.close_due() == [], "minute 0 waits for the grace period"
    assert state.safe_commit_offset() == 0
    state.apply(tree(transaction("URL", "/a", 5, at_us=at(0, 50))), 2)  # out of order, in grace
    state.apply(tree(transaction("URL", "/a", 5, at_us=at(1, 15))), 3)
    rows = rows_by(state.close_due(), "transaction")
    assert rows[("All", "URL", "/a")]["count"] == 2
    assert rows[("All", "URL", "/a")]["revision"] == 0
    assert state.safe_commit_offset() == 1, "minute 1 is still open from offset 1"
    assert state.apply(tree(transaction("URL", "/a", 5, at_us=at(0, 7))), 4) is Outcome.LATE
    amended = rows_by(state.close_due(), "transaction")[("All", "URL", "/a")]
    assert (amended["count"], amended["late_count"], amended["revision"]) == (3, 1, 1)
    assert state.close_due() == []


def test_a_replayed_tree_already_in_a_restored_minute_is_recognised() -> None:
    first = PartitionReports()
    first.apply(tree(transaction("URL", "/a", 5, at_us=at(0))), 10)
    first.apply(tree(transaction("URL", "/a", 5, at_us=at(0, 30))), 11)
    closed = first.flush_all()
    restored = PartitionReports()
    restored.restore_closed(first.closed[("orders", at(0) // 1000)])
    assert restored.apply(tree(transaction("URL", "/a", 5, at_us=at(0))), 10) is Outcome.DUPLICATE
    assert restored.apply(tree(transaction("URL", "/a", 5, at_us=at(0))), 12) is Outcome.LATE
    again = rows_by(restored.close_due(), "transaction")[("All", "URL", "/a")]
    assert again["count"] == rows_by(closed, "transaction")[("All", "URL", "/a")]["count"] + 1


def test_a_tree_for_a_forgotten_minute_is_too_late() -> None:
    state = PartitionReports(grace_ms=0, keep_closed_ms=0)
    state.apply(tree(transaction("URL", "/a", 5, at_us=at(0))), 0)
    state.apply(tree(transaction("URL", "/a", 5, at_us=at(5))), 1)
    assert state.close_due()
    assert ("orders", at(0) // 1000) in state.closed  # kept for the writer of its rows
    state.close_due()
    assert state.apply(tree(transaction("URL", "/a", 5, at_us=at(0))), 2) is Outcome.TOO_LATE


def test_processing_in_any_batch_split_gives_the_same_rows() -> None:
    generator = random.Random(5)
    trees = [
        tree(
            transaction(
                "URL",
                f"/{i % 7}",
                generator.randrange(1, 10**6),
                at_us=at(i // 40, generator.randrange(0, 60)),
            )
        )
        for i in range(400)
    ]

    def run(split: int) -> list[dict[str, Any]]:
        state = PartitionReports(grace_ms=30_000)
        rows: list[dict[str, Any]] = []
        for offset, item in enumerate(trees):
            state.apply(item, offset)
            if offset % split == 0:
                rows.extend(state.close_due())
        rows.extend(state.flush_all())
        return sorted(
            (r for r in rows if r["revision"] == 0),
            key=lambda r: (r["period_start_ms"], r["report"], r["host"], r["type"], r["name"]),
        )

    one, other = run(1), run(97)
    strip = [{k: v for k, v in r.items() if k != "closed_at_ms"} for r in one]
    assert strip == [{k: v for k, v in r.items() if k != "closed_at_ms"} for r in other]


def test_transaction_rows_store_their_percentile_lines_and_old_rows_read_the_same() -> None:
    minute = MinuteReport("orders", T0_US // 1000)
    for duration in (1_000, 2_000, 3_000, 50_000, 400):
        minute.add_tree(tree(transaction("URL", "/a", duration)), ReportOptions())
    rows = minute.rows(0, ReportOptions())
    row = rows_by(rows, "transaction")[("10.0.0.1", "URL", "/a")]
    lines = LatencySketch.from_bytes(row["sketch"]).quantiles()
    assert {column: row[column] for column in PERCENTILE_COLUMNS} == {
        f"{label}_us": value for label, value in lines.items()
    }
    older = {k: v for k, v in row.items() if k not in PERCENTILE_COLUMNS}
    assert describe_row(older) == describe_row(row)
    assert describe_row(row)["p99_ms"] == round(lines["p99"] / 1000, 4)


def test_an_idle_partition_closes_its_last_minute_by_the_wall_clock() -> None:
    state = PartitionReports(grace_ms=10_000)
    state.apply(tree(transaction("URL", "/a", 1000)), 0)
    minute_end = T0_US // 1000 - (T0_US // 1000) % MINUTE_MS + MINUTE_MS
    assert state.close_due() == []
    state.advance_idle(minute_end + 9_999)  # the grace period is not over yet
    assert state.close_due() == []
    state.advance_idle(minute_end + 10_000)
    closed = state.close_due()
    assert closed and {row["closed_at_ms"] for row in closed} == {minute_end}
    state.advance_idle(T0_US // 1000)  # the clock never moves event time back
    assert state.watermark_ms == minute_end
    assert state.apply(tree(transaction("URL", "/a", 5)), 1) is Outcome.LATE


def test_a_domain_whose_clocks_run_ahead_closes_only_its_own_minutes() -> None:
    """Domains share partitions: one whose hosts run ahead (up to the 5 minutes validation
    lets through) must not make other domains' trees late, as the per-partition watermark
    once did; a domain that went quiet still closes once the partition is 5 minutes past it."""
    state = PartitionReports(grace_ms=10_000)
    minute0 = T0_US // 1000 - (T0_US // 1000) % MINUTE_MS
    assert state.apply(tree(transaction("URL", "/a", 1000), domain="orders"), 0) is Outcome.APPLIED
    ahead = T0_US + 4 * 60_000_000
    skewed = tree(transaction("URL", "/b", 1000, at_us=ahead), domain="skewed")
    assert state.apply(skewed, 1) is Outcome.APPLIED
    assert {row["domain"] for row in state.close_due()} == set()
    later = tree(transaction("URL", "/a", 1000, at_us=T0_US + 1_000_000), domain="orders")
    assert state.apply(later, 2) is Outcome.APPLIED
    assert state.watermark_ms == ahead // 1000 - 10_000
    assert state.domain_watermark_ms("orders") == (T0_US + 1_000_000) // 1000 - 10_000
    state.apply(tree(transaction("URL", "/b", 1, at_us=ahead + 71_000_000), domain="skewed"), 3)
    assert {row["domain"] for row in state.close_due()} == {"skewed"}
    assert ("orders", minute0) in state.open
    beyond = T0_US + (5 * 60 + 10 + 60) * 1_000_000  # orders' minute end + lag + grace
    state.apply(tree(transaction("URL", "/b", 1, at_us=beyond), domain="skewed"), 4)
    assert ("orders", minute0) in {(r["domain"], r["period_start_ms"]) for r in state.close_due()}


def test_trees_more_than_five_minutes_ahead_of_the_clock_are_refused() -> None:
    for ahead_s, refused in ((299, False), (301, True)):
        item = tree(transaction("URL", "/a", 1000, at_us=NOW_US + ahead_s * 1_000_000))
        if refused:
            with pytest.raises(RecordRejected, match=r"root\.timestamp_us"):
                validate_tree(item, now_us=NOW_US)
        else:
            validate_tree(item, now_us=NOW_US)


def test_problem_samples_are_kept_per_duration_bucket() -> None:
    """CAT keeps a problem's sample messages per duration: the few slowest calls have their own
    samples even after many fast ones filled the problem's first samples."""
    options = ReportOptions(max_problem_samples=2)
    minute = MinuteReport("orders", T0_US // 1000 - (T0_US // 1000) % MINUTE_MS)
    durations = [1_200_000] * 5 + [6_000_000] * 3  # long-url buckets 1000 ms and 5000 ms
    for index, duration in enumerate(durations):
        item = tree(transaction("URL", "/slow", duration), message_id=f"orders-0a000001-1-{index}")
        minute.add_tree(item, options)
    problems = rows_by(minute.rows(0, options), "problem")
    row = problems[("All", "long-url", "/slow")]
    assert row["duration_counts"] == {"1000": 5, "5000": 3}
    assert row["sample_message_ids"] == ["orders-0a000001-1-0", "orders-0a000001-1-1"]
    assert row["bucket_samples"] == {
        "1000": ["orders-0a000001-1-0", "orders-0a000001-1-1"],
        "5000": ["orders-0a000001-1-5", "orders-0a000001-1-6"],
    }
    hour = merge_rows([row, {**row, "period_start_ms": row["period_start_ms"] + MINUTE_MS}],
                      "hour", 3)  # fmt: skip
    assert hour[0]["bucket_samples"]["5000"] == [
        "orders-0a000001-1-5", "orders-0a000001-1-6", "orders-0a000001-1-5"
    ]  # fmt: skip
    assert describe_row(row)["bucket_samples"] == row["bucket_samples"]


def test_written_us_is_the_records_kafka_timestamp_when_there_is_one() -> None:
    class Message:
        def __init__(self, kind: int, ms: int) -> None:
            self.stamp = (kind, ms)

        def timestamp(self) -> tuple[int, int]:
            return self.stamp

    assert written_us(Message(2, 1_706_608_800_123)) == 1_706_608_800_123_000  # append time
    assert written_us(Message(1, 1_706_608_800_123)) == 1_706_608_800_123_000  # create time
    assert written_us(Message(0, -1)) is None  # not available: validation uses the clock


def test_a_domain_hours_ahead_of_the_wall_clock_does_not_close_other_domains() -> None:
    """Live, the partition's newest root time counts only up to the wall clock when it drags
    quiet domains along: a host whose clock runs hours ahead cannot close others' minutes."""
    state = PartitionReports(grace_ms=10_000)
    state.wall_ms = T0_US // 1000 + 30_000
    state.apply(tree(transaction("URL", "/a", 1000), domain="orders"), 0)
    ahead = tree(transaction("URL", "/b", 1000, at_us=T0_US + 20 * 3_600_000_000), domain="fast")
    state.apply(ahead, 1)
    assert {row["domain"] for row in state.close_due()} == set()
    state.wall_ms += 6 * 60_000  # six minutes later orders has gone quiet: now it closes
    assert {row["domain"] for row in state.close_due()} == {"orders"}
