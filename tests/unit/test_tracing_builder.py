"""The report agent's writes without servers: hours coalesced while catching up, the commit held
until minutes and their hours are written, idle partitions closed, cached report answers."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest

from streams.bus.batching import BatchItem
from streams.settings import Settings
from streams.tracing import agents
from streams.tracing.agents import ReportBuilder
from streams.tracing.api import ReportReader
from streams.tracing.model import (
    HOUR_MS,
    MINUTE_MS,
    ReportQueryError,
    elapsed_seconds,
    merge_rows,
)
from streams.tracing.tables import (
    REPORT_TABLE_NAMES,
    REPORT_TABLES,
    pack_rows,
    report_row,
    unpack_parts,
)
from tests.unit.test_tracing_model import T0_US, transaction, tree

MINUTE0_MS = T0_US // 1000 - (T0_US // 1000) % MINUTE_MS


class Position:
    """Where a record was read, as BatchItem asks a Kafka message."""

    def __init__(self, partition: int, offset: int) -> None:
        self._partition, self._offset = partition, offset

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


class MemoryStore:
    """ReportStore's interface over dicts, recording each write. Report rows go through
    `pack_rows` and `unpack_parts` as they do to and from Cassandra."""

    def __init__(self) -> None:
        self.sink = self
        self.tables: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = defaultdict(dict)
        self.writes: list[str] = []

    async def open(self) -> None:
        return None

    async def upsert(self, table: str, rows: list[dict[str, Any]], *_: Any, **__: Any) -> int:
        await asyncio.sleep(0)
        self.writes.append(table)
        for row in rows:
            key = tuple(row[c] for c in PART_KEY) if table in REPORT_TABLE_NAMES else (
                row["domain"], row["period_start_ms"]
            )  # fmt: skip
            self.tables[table][key] = dict(row)
        return len(rows)

    async def write_rows(self, period: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            await self.upsert(REPORT_TABLES[period].name, pack_rows(rows))

    def stored(self, period: str) -> list[dict[str, Any]]:
        return unpack_parts(self.tables[REPORT_TABLES[period].name].values())

    async def minute_entry(self, domain: str, minute_ms: int) -> dict[str, Any] | None:
        return self.tables["trace_minutes"].get((domain, minute_ms))

    async def minutes_of_hour(self, domain: str, hour_ms: int) -> set[int]:
        return {m for d, m in self.tables["trace_minutes"] if d == domain
                and hour_ms <= m < hour_ms + HOUR_MS}  # fmt: skip

    async def rows(self, period: str, domain: str, report: str, start_ms: int | None = None,
                   **_: Any) -> list[dict[str, Any]]:  # fmt: skip
        return [report_row(row, period) for row in self.stored(period)
                if (row["domain"], row["report"]) == (domain, report)]  # fmt: skip

    async def minute_rows(self, domain: str, minute_ms: int) -> list[dict[str, Any]]:
        return [row for report in ("transaction", "event", "problem")
                for row in await self.rows("minute", domain, report)
                if row["period_start_ms"] == minute_ms]  # fmt: skip


PART_KEY = ("domain", "report", "bucket_ms", "period_start_ms", "host", "type_group", "part")


class Reports:
    """What the builder produces to `trace.reports`."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    async def send(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)

    def close(self) -> None:
        return None


def builder_of(**settings: Any) -> tuple[ReportBuilder, MemoryStore, Reports]:
    runtime = SimpleNamespace(
        settings=Settings(tracing_grace_s=0, **settings), kafka_topic_name=lambda name: name
    )
    store = MemoryStore()
    builder = ReportBuilder(runtime, store)  # type: ignore[arg-type]
    reports = Reports()
    builder.reports = reports  # type: ignore[assignment]
    return builder, store, reports


def batch(*trees: tuple[int, int]) -> list[BatchItem]:
    """(minute, offset) pairs as one batch of partition 0."""
    return [
        BatchItem(Position(0, offset),  # type: ignore[arg-type]
                  tree(transaction("URL", f"/{offset % 2}", 1000 + offset,
                                   at_us=T0_US + minute * 60_000_000),
                       message_id=f"orders-{offset}"))
        for minute, offset in trees
    ]  # fmt: skip


def test_catching_up_writes_hours_once_and_holds_the_commit_until_they_are_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(agents, "BATCH_RECORDS", 3)
    builder, store, reports = builder_of(tracing_hour_flush_s=3600)

    async def run() -> None:
        assert await builder.handle(batch((0, 0), (0, 1), (1, 2))) == {0: 0}
        assert await builder.handle(batch((1, 3), (2, 4), (2, 5))) == {0: 0}
        await builder.drain()
        assert store.writes == ["trace_minute_reports", "trace_minute_reports"]
        assert builder.safe_offset(0) == 0 and builder.unwritten_minutes() == 2
        assert await builder.handle(batch((3, 6))) == {0: 0}  # short: caught up, all written
        await builder.drain()
        assert builder.safe_offset(0) == 6 and builder.unwritten_minutes() == 0

    asyncio.run(run())
    assert store.writes[-2:] == ["trace_hour_reports", "trace_minutes"]
    assert store.writes.count("trace_hour_reports") == 1
    assert set(store.tables["trace_minutes"]) == {
        ("orders", MINUTE0_MS + m * MINUTE_MS) for m in range(3)
    }
    minute_rows = [report_row(r, "minute") for r in store.stored("minute")]
    hour_rows = {(r["report"], r["host"], r["type"], r["name"]): report_row(r, "hour")
                 for r in store.stored("hour")}  # fmt: skip
    expected = merge_rows(minute_rows, "hour")
    assert {(r["report"], r["host"], r["type"], r["name"]): r for r in expected} == hour_rows
    assert len(reports.rows) == len(minute_rows) + len(hour_rows)


def test_a_due_flush_writes_hours_with_every_close() -> None:
    builder, store, _ = builder_of(tracing_hour_flush_s=0)

    async def run() -> None:
        for offset in range(4):
            await builder.handle(batch((offset, offset)))
        await builder.drain()

    asyncio.run(run())
    assert store.writes.count("trace_hour_reports") == 3
    assert store.writes.count("trace_minutes") == 3
    # each flush changed one name's rows, and rewrote its whole group: no name is lost
    minute_rows = [report_row(r, "minute") for r in store.stored("minute")]
    hour_rows = sorted(store.stored("hour"), key=lambda r: (r["report"], r["host"], r["type"],
                                                            r["name"]))  # fmt: skip
    assert {r["name"] for r in hour_rows} == {"", "/0", "/1"}
    assert [report_row(r, "hour") for r in hour_rows] == merge_rows(minute_rows, "hour")


def test_an_idle_partition_closes_its_minutes_on_the_timer() -> None:
    builder, store, _ = builder_of(tracing_idle_close_s=0.01)

    async def run() -> None:
        await builder.handle([*batch((0, 0)), *[batch((0, 1))[0]] * (agents.BATCH_RECORDS - 1)])
        await asyncio.sleep(0.05)
        await builder.tick()
        await builder.drain()
        assert "trace_minutes" not in store.writes  # behind the log: not idle, only not fetched
        await builder.handle(batch((0, 5000)))
        await builder.tick()
        await builder.drain()
        assert "trace_minutes" not in store.writes  # not idle long enough
        await asyncio.sleep(0.05)
        await builder.tick()
        await builder.drain()

    asyncio.run(run())
    assert set(store.tables["trace_minutes"]) == {("orders", MINUTE0_MS)}
    assert builder.safe_offset(0) == 5001


class ReaderStore:
    """What ReportReader reads: stored rows, and the minute index version of a period."""

    def __init__(self) -> None:
        self.version: tuple[Any, ...] | None = ((MINUTE0_MS, 0, 5),)
        self.count = 3
        self.reads = 0
        self.index_reads = 0
        self.revisions = [0, 0, 0]

    async def open(self) -> None:
        return None

    async def minutes_version(self, domain: str, period: str, start_ms: int) -> Any:
        self.index_reads += 1
        return self.version

    async def view_columns(self, *args: Any) -> dict[str, list[Any]]:
        self.reads += 1
        ((_, revision, last_offset),) = self.version or ((0, 0, 0),)
        return {"period_start_ms": [MINUTE0_MS] * 3, "domain": ["orders"] * 3,
                "host": ["All"] * 3, "type": ["Call"] * 3, "name": ["", "a", "b"],
                "count": [self.count] * 3, "fail_count": [0] * 3,
                "revision": [revision + r for r in self.revisions],
                "last_offset": [last_offset] * 3}  # fmt: skip


def test_report_answers_are_cached_until_the_minute_index_changes() -> None:
    store = ReaderStore()
    reader = ReportReader(store, 5, recheck_s=0)  # type: ignore[arg-type]
    query = {"domain": "orders", "date": "202401301000", "type": "Call"}

    def ask(**extra: str) -> dict[str, Any]:
        return json.loads(asyncio.run(reader.answer("event", {**query, **extra}, "json")))

    first = ask()
    assert [row["name"] for row in first["rows"]] == ["a", "b"] and first["total"]["count"] == 3
    assert ask(order="desc")["rows"][0]["name"] == "b"
    assert store.reads == 1
    store.version, store.count = ((MINUTE0_MS, 1, 9),), 4  # a late tree amended the minute
    assert ask()["total"]["count"] == 4 and store.reads == 2
    store.version = None  # nothing in the index: never cached
    ask()
    ask()
    assert store.reads == 4


def test_a_minutes_first_answer_takes_its_version_from_its_rows() -> None:
    store = ReaderStore()
    reader = ReportReader(store, 5, recheck_s=0)  # type: ignore[arg-type]
    query = {"domain": "orders", "date": "202401301000", "type": "Call"}

    def ask() -> None:
        asyncio.run(reader.answer("event", query, "json"))

    ask()
    assert (store.reads, store.index_reads) == (1, 0)  # one read: the rows carry their version
    ask()
    assert (store.reads, store.index_reads) == (1, 1)  # the index agrees: cached
    store.revisions = [1, 0, 0]  # read while revision 1 was half written
    store.version = ((MINUTE0_MS, 1, 9),)
    ask()
    ask()
    assert store.reads == 3  # rows of two revisions are never cached
    store.revisions = [0, 0, 0]
    ask()
    ask()
    assert store.reads == 4


def test_a_cached_answer_is_checked_again_only_after_the_recheck_interval() -> None:
    store = ReaderStore()
    reader = ReportReader(store, 5, recheck_s=3600)  # type: ignore[arg-type]
    query = {"domain": "orders", "date": "202401301000", "type": "Call"}

    def total() -> int:
        answer = json.loads(asyncio.run(reader.answer("event", query, "json")))
        return int(answer["total"]["count"])

    assert total() == 3
    store.version, store.count = ((MINUTE0_MS, 1, 9),), 4
    assert total() == 3 and store.reads == 1  # within the interval: not checked
    reader.recheck_s = 0
    assert total() == 4 and store.reads == 2


def test_an_hour_in_progress_divides_its_counts_by_its_closed_minutes() -> None:
    """CAT's current-hour TPS: counts over the time elapsed, not over 3,600 s; once the hour
    is over, over the whole hour. The answer is recomputed as the hour goes on."""
    store = ReaderStore()
    hour_ms = MINUTE0_MS - MINUTE0_MS % 3_600_000
    now = [(hour_ms + 5 * 60_000 + 10_500) / 1000]  # 10:05:10.5, grace 10 s: 5 minutes closed
    reader = ReportReader(store, 5, recheck_s=0, clock=lambda: now[0])  # type: ignore[arg-type]
    query = {"domain": "orders", "date": "2024013010", "type": "Call"}

    def tps() -> float:
        answer = json.loads(asyncio.run(reader.answer("event", query, "json")))
        return float(answer["total"]["tps"])

    assert tps() == round(3 / 300, 4)
    now[0] += 60
    assert tps() == round(3 / 360, 4)
    now[0] += 7200
    assert tps() == round(3 / 3600, 4)


def test_elapsed_seconds_counts_only_closed_minutes_of_a_running_period() -> None:
    hour_ms = MINUTE0_MS - MINUTE0_MS % 3_600_000
    assert elapsed_seconds("hour", hour_ms, hour_ms + 1_000, 10_000) == 60  # at least a minute
    assert elapsed_seconds("hour", hour_ms, hour_ms + 130_000, 10_000) == 120
    assert elapsed_seconds("hour", hour_ms, hour_ms + 129_999, 10_000) == 60
    assert elapsed_seconds("day", hour_ms, hour_ms + 10 * 86_400_000, 10_000) == 86_400
    assert elapsed_seconds("minute", MINUTE0_MS, MINUTE0_MS + 1, 10_000) == 60


def test_event_and_problem_reports_refuse_sorting_by_durations_they_do_not_have() -> None:
    reader = ReportReader(ReaderStore(), 5)  # type: ignore[arg-type]
    query = {"domain": "orders", "date": "202401301000", "type": "Call"}
    for kind in ("event", "problem"):
        with pytest.raises(ReportQueryError) as caught:
            asyncio.run(reader.answer(kind, {**query, "sort": "p99_ms"}, "json"))
        assert caught.value.parameter == "sort" and "tps" in str(caught.value)
        asyncio.run(reader.answer(kind, {**query, "sort": "fail_percent"}, "json"))
    asyncio.run(reader.answer("transaction", {**query, "sort": "p99_ms"}, "json"))


def test_a_quiet_domain_closes_its_minute_while_another_keeps_its_partition_busy() -> None:
    """Event time is per domain, so idleness is too: a domain that stopped sending closes its
    last minute by the wall clock even though its partition never goes idle."""
    builder, store, _ = builder_of(tracing_idle_close_s=0.3)

    def busy(offset: int) -> BatchItem:
        record = tree(transaction("URL", "/b", 1000, at_us=T0_US), domain="busy",
                      message_id=f"busy-{offset}")  # fmt: skip
        return BatchItem(Position(0, offset), record)  # type: ignore[arg-type]

    async def run() -> None:
        await builder.handle([*batch((0, 0)), busy(1)])
        for offset in range(2, 40):  # busy every 20 ms, for twice the idle time
            await asyncio.sleep(0.02)
            await builder.handle([busy(offset)])
            await builder.tick()
        await builder.drain()

    asyncio.run(run())
    assert set(store.tables["trace_minutes"]) == {("orders", MINUTE0_MS)}
    assert ("busy", MINUTE0_MS) in builder.partitions[0].open
