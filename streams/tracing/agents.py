"""Tracing agents: CAT reports from message trees, and the logview sink.

`tracing.build_reports` is a batch agent on `trace.messages` (keyed by domain, so one partition
holds all of a domain's trees and is its reports' only writer). Per partition it keeps a
`PartitionReports` (open minutes, event-time watermark); minutes the watermark closes are written
to Cassandra (minute rows, hour rows merged from the stored minutes, then the minute index with
the highest source offset counted) and produced to `trace.reports`. It then returns, per
partition, the first offset of its oldest open minute: the agent commits no further, so a
restart replays exactly what was only in memory (docs/tracing.md, "Crash safety").

`sinks.trace_logview_to_elasticsearch` is a second batch agent (its own consumer group, so an
Elasticsearch outage never holds reports back) indexing failed or problem trees and a sample of
whole call chains, with the message id as document id.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from cassandra.cluster import EXEC_PROFILE_DEFAULT, ExecutionProfile
from cassandra.query import PreparedStatement, tuple_factory
from confluent_kafka import KafkaError, Message, Producer

from connectors.cassandra import CassandraSink
from connectors.elasticsearch import Document, ElasticsearchSink
from connectors.mappings import KEYWORD
from connectors.retry import Backoff, retry_async, stable_id
from streams.bus.batching import BatchItem
from streams.errors import RecordRejected
from streams.tracing import api
from streams.tracing.events import MESSAGES_TOPIC, REPORT_SCHEMA, REPORTS_TOPIC, TREE_SCHEMA
from streams.tracing.model import (
    HOUR_MS,
    MINUTE_MS,
    HourReport,
    MinuteReport,
    Outcome,
    PartitionReports,
    ReportOptions,
    empty_closed_minute,
    logview_document,
    logview_keeps,
    minute_from_rows,
    parse_domain_thresholds,
    report_key,
    tree_minute_ms,
    validate_tree,
)
from streams.tracing.tables import (
    MINUTES,
    REPORT_TABLES,
    TABLES,
    TOTALS_GROUP,
    bucket_of,
    check_format,
    pack_rows,
    packed_columns,
    report_row,
    stored_row,
    unpack_rows,
    whole_groups,
)

if TYPE_CHECKING:
    from streams.app import Runtime
    from streams.settings import Settings

log = logging.getLogger(__name__)
BUILD_REPORTS = "tracing.build_reports"
LOGVIEW_TO_ELASTICSEARCH = "sinks.trace_logview_to_elasticsearch"
REPORTS = ("transaction", "event", "problem")
BATCH_RECORDS = 5000  # trees per batch; a shorter batch means the agent has caught up
WRITE_WAVE_BYTES = 4 << 20
# What a read of whole stored rows (restores, hour and day merges) selects of a packed part.
PACKED_READ = ("bucket_ms", "period_start_ms", "host", "format", "rows", "sketches", "last_offset")
LOGVIEW_MAPPINGS = {
    "dynamic": False,
    "properties": {
        "message_id": KEYWORD,
        "root_message_id": KEYWORD,
        "parent_message_id": KEYWORD,
        "domain": KEYWORD,
        "ip": KEYWORD,
        "hostname": KEYWORD,
        "@timestamp": {"type": "date", "format": "epoch_millis"},
        "timestamp_us": {"type": "long"},
        "type": KEYWORD,
        "name": KEYWORD,
        "status": KEYWORD,
        "tree": {"type": "object", "enabled": False},
    },
}


def report_options(settings: Settings) -> ReportOptions:
    return ReportOptions(
        domain_thresholds=parse_domain_thresholds(settings.tracing_problem_thresholds),
        max_problem_samples=settings.tracing_problem_samples,
    )


def logview_index_pattern(settings: Settings) -> str:
    return f"{settings.elasticsearch_index_prefix}-trace-logview-*"


def logview_index(settings: Settings, timestamp_us: int) -> str:
    day = dt.datetime.fromtimestamp(timestamp_us / 1e6, dt.UTC).strftime("%Y.%m.%d")
    return f"{settings.elasticsearch_index_prefix}-trace-logview-{day}"


class ReportStore:
    """The report tables in Cassandra: writes for the agent, reads for the API and restores.

    Rows go in and come out as stored rows (one per name); packing them into groups
    (`tables.pack_rows`) stays inside."""

    def __init__(self, sink: CassandraSink) -> None:
        self.sink = sink
        self._ready = False
        self._lock = asyncio.Lock()
        self._statements: dict[str, PreparedStatement] = {}
        self._tuples: ExecutionProfile | None = None

    async def open(self) -> None:
        async with self._lock:
            if self._ready:
                return
            await self.sink.open()
            for table in TABLES:
                await self.sink.ensure_table(table)
            self._tuples = self.sink.session.execution_profile_clone_update(
                EXEC_PROFILE_DEFAULT, row_factory=tuple_factory
            )
            # Prepared now, not by the first page asked for (a prepare is a round trip that
            # made each worker's first cold page several times slower).
            page_queries = [self._view_cql(p, n) for p in REPORT_TABLES for n in (1, 2)]
            for cql in [*page_queries, self._version_cql()]:
                self._statements[cql] = await self.sink.retrying(
                    partial(self.sink.session.prepare, cql), "prepare a report query"
                )
            self._ready = True

    async def write_rows(self, period: str, rows: list[dict[str, Any]]) -> None:
        """Stored rows (`stored_row`) of whole groups to their period's table, a few MB of
        packed parts per request wave (dozens of large parts in flight at once made Cassandra
        stop reading the connection: the driver's "connection is overloaded")."""
        chunk: list[dict[str, Any]] = []
        size = 0
        for part in pack_rows(rows):
            chunk.append(part)
            size += len(part["rows"]) + len(part["sketches"])
            if size >= WRITE_WAVE_BYTES:
                await self.sink.upsert(REPORT_TABLES[period].name, chunk)
                chunk, size = [], 0
        if chunk:
            await self.sink.upsert(REPORT_TABLES[period].name, chunk)

    async def minute_entry(self, domain: str, minute_ms: int) -> dict[str, Any] | None:
        found = await self.sink.select(
            f"SELECT * FROM {self.sink.keyspace}.{MINUTES.name} "
            "WHERE domain = %s AND period_start_ms = %s",
            (domain, minute_ms),
        )
        return found[0] if found else None

    async def minutes_of_hour(self, domain: str, hour_ms: int) -> set[int]:
        """The minutes of an hour the minute index holds (closed and stored)."""
        found = await self.sink.select(
            f"SELECT period_start_ms FROM {self.sink.keyspace}.{MINUTES.name} "
            "WHERE domain = %s AND period_start_ms >= %s AND period_start_ms < %s",
            (domain, hour_ms, hour_ms + HOUR_MS),
        )
        return {row["period_start_ms"] for row in found}

    async def rows(
        self,
        period: str,
        domain: str,
        report: str,
        start_ms: int | None = None,
        *,
        bucket_ms: int | None = None,
    ) -> list[dict[str, Any]]:
        """Stored rows of one report, sketches included: one period start, or a whole bucket
        (the hour of minute rows, the day of hour rows)."""
        table = REPORT_TABLES[period]
        bucket = bucket_ms if bucket_ms is not None else bucket_of(period, start_ms or 0)
        where = "domain = ? AND report = ? AND bucket_ms = ?"
        values: list[Any] = [domain, report, bucket]
        if start_ms is not None:
            where += " AND period_start_ms = ?"
            values.append(start_ms)
        columns = ", ".join(PACKED_READ)
        cql = f"SELECT {columns} FROM {self.sink.keyspace}.{table.name} WHERE {where}"
        found = await self.sink.retrying(lambda: self._select_tuples(cql, values), "report read")
        fixed = {"domain": domain, "report": report}
        return [
            report_row(row, period)
            for part in found
            for row in unpack_rows({**fixed, **dict(zip(PACKED_READ, part, strict=True))})
        ]

    async def view_columns(
        self, period: str, domain: str, report: str, start_ms: int, host: str, type_: str | None
    ) -> dict[str, Sequence[Any]]:
        """The rows a report page shows (one minute or hour, one host) as columns: the per-type
        totals, or with `type_` that type's total and name rows. One or two packed groups read
        without their sketches."""
        groups = (TOTALS_GROUP,) if type_ is None else (TOTALS_GROUP, type_)
        cql = self._view_cql(period, len(groups))
        values: list[Any] = [domain, report, bucket_of(period, start_ms), start_ms, host, *groups]
        found = await self.sink.retrying(lambda: self._select_tuples(cql, values), "report read")
        where = {"domain": domain, "report": report, "period_start_ms": start_ms}
        for packed_format, _, _ in found:
            check_format({**where, "format": packed_format})
        columns = packed_columns(found, type_)
        size = len(columns["count"])
        return {**columns, "domain": [domain] * size, "host": [host] * size,
                "period_start_ms": [start_ms] * size}  # fmt: skip

    def _view_cql(self, period: str, groups: int) -> str:
        return (
            f"SELECT format, rows, last_offset FROM {self.sink.keyspace}."
            f"{REPORT_TABLES[period].name} WHERE domain = ? AND report = ? AND bucket_ms = ? "
            "AND period_start_ms = ? AND host = ? "
            f"AND type_group IN ({', '.join('?' for _ in range(groups))})"
        )

    def _version_cql(self) -> str:
        return (
            f"SELECT period_start_ms, revision, last_offset FROM {self.sink.keyspace}."
            f"{MINUTES.name} WHERE domain = ? AND period_start_ms >= ? AND period_start_ms < ?"
        )

    async def minutes_version(
        self, domain: str, period: str, start_ms: int
    ) -> tuple[tuple[int, int, int], ...] | None:
        """The minute index entries of a minute or hour ((minute, revision, last offset) each),
        written after the rows: equal entries mean equal stored rows. None: nothing closed."""
        end_ms = start_ms + (HOUR_MS if period == "hour" else MINUTE_MS)
        cql = self._version_cql()
        found = await self.sink.retrying(
            lambda: self._select_tuples(cql, [domain, start_ms, end_ms]), "minute index read"
        )
        return tuple(found) if found else None

    def _select_tuples(self, cql: str, values: list[Any]) -> list[tuple[Any, ...]]:
        statement = self._statements.get(cql)
        if statement is None:
            statement = self._statements[cql] = self.sink.session.prepare(cql)
        return list(self.sink.session.execute(statement, values, execution_profile=self._tuples))

    async def minute_rows(self, domain: str, minute_ms: int) -> list[dict[str, Any]]:
        answers = await asyncio.gather(
            *(self.rows("minute", domain, report, minute_ms) for report in REPORTS)
        )
        return [row for rows in answers for row in rows]


class ReportDeliveryError(Exception):
    """Kafka did not acknowledge some report rows; the batch is produced again."""


class ReportProducer:
    """Produces a batch's report rows to `trace.reports` with one flush and waits for every
    acknowledgement. librdkafka batches them; one awaited aiokafka send per row (thousands per
    closed minute) spent most of the agent's time in aiokafka's accumulator."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.topic = runtime.kafka_topic_name(REPORTS_TOPIC)
        self.backoff = Backoff()
        self._producer: Producer | None = None

    async def _open(self) -> Producer:
        if self._producer is None:
            await self.runtime.topic(REPORTS_TOPIC).maybe_declare()
            self._producer = Producer(
                {
                    "bootstrap.servers": self.runtime.settings.kafka,
                    "client.id": f"{self.runtime.settings.app_id}-{BUILD_REPORTS}",
                    "enable.idempotence": True,
                    "linger.ms": 5,
                    "compression.type": "lz4",
                    "partitioner": "murmur2_random",
                    "queue.buffering.max.messages": 1_000_000,
                }
            )
        return self._producer

    async def send(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        encode = self.runtime.codec.encode
        messages = [
            (row["domain"].encode(), encode(REPORT_SCHEMA, row, check=False)) for row in rows
        ]
        producer = await self._open()

        async def deliver() -> None:
            failures = await asyncio.to_thread(self._produce_all, producer, messages)
            if failures:
                raise ReportDeliveryError(
                    f"{len(failures)} of {len(messages)} report rows were not acknowledged "
                    f"by {self.topic}: {failures[0]}"
                )

        await retry_async(
            deliver, lambda error: isinstance(error, ReportDeliveryError), self.backoff,
            f"report rows to {self.topic}",
        )  # fmt: skip

    def _produce_all(self, producer: Producer, messages: list[tuple[bytes, bytes]]) -> list[str]:
        failures: list[str] = []

        def delivered(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                failures.append(error.str())

        for key, value in messages:
            while True:
                try:
                    producer.produce(self.topic, value=value, key=key, on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.05)
        remaining = producer.flush(60)
        if remaining:
            failures.append(f"{remaining} still queued after 60 s")
        return failures

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(10)


@dataclass
class TracingStats:
    """Counters of this worker's report agent, shown at /tracing/status."""

    trees: int = 0
    late: int = 0
    duplicates: int = 0
    restored_minutes: int = 0
    rows_written: int = 0
    logview_documents: int = 0

    def snapshot(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class PendingHours:
    """What one partition merged into its hours but has not written yet: the hour rows that
    changed (None: all of them), the minute index entries of the minutes merged, and the
    offset to hold the commit at until they are written."""

    rows: dict[tuple[str, int], set[Any] | None] = field(default_factory=dict)
    minutes: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    hold_offset: int | None = None

    def add(self, hour: tuple[str, int], keys: set[Any] | None) -> None:
        if hour in self.rows:
            known = self.rows[hour]
            self.rows[hour] = None if known is None or keys is None else known | keys
        else:
            self.rows[hour] = keys


class ReportBuilder:
    """The report agent's state: one PartitionReports per source partition it owns."""

    def __init__(self, runtime: Runtime, store: ReportStore) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.store = store
        self.options = report_options(settings)
        self.grace_ms = int(settings.tracing_grace_s * 1000)
        self.keep_closed_ms = int(settings.tracing_keep_closed_s * 1000)
        self.hour_flush_s = settings.tracing_hour_flush_s
        self.idle_close_ms = int(settings.tracing_idle_close_s * 1000)
        self.reports = ReportProducer(runtime)
        self.partitions: dict[int, PartitionReports] = {}
        self.hours: dict[int, dict[tuple[str, int], HourReport]] = defaultdict(dict)
        self.pending: dict[int, PendingHours] = defaultdict(PendingHours)
        self.last_flush = time.monotonic()
        # wall clock of each domain's last tree, per partition: quiet domains close by it
        self.last_tree_ms: dict[int, dict[str, float]] = defaultdict(dict)
        # The last batch was short: the log had no more. A partition missing from batches
        # while the agent is behind is not idle, only not fetched yet.
        self.caught_up = False
        self.lock = asyncio.Lock()
        self._writing: asyncio.Future[None] | None = None
        self._writing_holds: dict[int, int] = {}
        self._writing_minutes: list[dict[str, Any]] = []
        self.stats = TracingStats()

    def state(self, partition: int) -> PartitionReports:
        state = self.partitions.get(partition)
        if state is None:
            state = self.partitions[partition] = PartitionReports(
                grace_ms=self.grace_ms, keep_closed_ms=self.keep_closed_ms, options=self.options
            )
        return state

    async def forget(self, partitions: list[int]) -> None:
        """Revoked partitions: their new owner replays from the committed offset (held back
        before anything not yet written, pending hours included)."""
        async with self.lock:
            for partition in partitions:
                self.partitions.pop(partition, None)
                self.hours.pop(partition, None)
                self.pending.pop(partition, None)
                self.last_tree_ms.pop(partition, None)

    async def handle(self, batch: list[BatchItem]) -> dict[int, int]:
        async with self.lock:
            return await self._handle(batch)

    async def _handle(self, batch: list[BatchItem]) -> dict[int, int]:
        await self.store.open()
        by_partition: dict[int, list[BatchItem]] = defaultdict(list)
        for item in batch:
            by_partition[item.partition].append(item)
        closed: dict[int, list[dict[str, Any]]] = {}
        now_ms = time.time() * 1000
        for partition, items in by_partition.items():
            state = self.state(partition)
            state.wall_ms = int(now_ms)
            self.last_tree_ms[partition].update(
                dict.fromkeys({item.record["domain"] for item in items}, now_ms)
            )
            await self._restore_unknown(state, items)
            for item in items:
                outcome = state.apply(item.record, item.offset)
                if outcome is Outcome.TOO_LATE:
                    await self.drain()
                    await self._restore(state, item.record["domain"], tree_minute_ms(item.record))
                    outcome = state.apply(item.record, item.offset)
                self._count(outcome)
            closed[partition] = state.close_due()
        self.caught_up = len(batch) < BATCH_RECORDS
        await self._publish(closed, caught_up=self.caught_up)
        return {partition: self.safe_offset(partition) for partition in by_partition}

    async def tick(self) -> None:
        """Run between batches (a timer): once the agent has caught up with the log, close the
        minutes of domains that sent no tree for `tracing_idle_close_s` of wall clock (their
        event time is taken to be the wall clock), and write pending hours whose flush is due.
        The commit catches up with the next batch; until then a restart replays, and the
        closed minutes are restored."""
        if self.lock.locked():
            return  # a batch is being handled: the partitions are not idle
        async with self.lock:
            now_ms = time.time() * 1000
            closed: dict[int, list[dict[str, Any]]] = {}
            for partition, state in self.partitions.items():
                if self.idle_close_ms <= 0 or not self.caught_up or not state.open:
                    continue
                seen = self.last_tree_ms[partition]
                idle = {
                    domain
                    for domain, _ in state.open
                    if now_ms - seen.get(domain, now_ms) >= self.idle_close_ms
                }
                if idle:
                    state.advance_idle(int(now_ms), idle)
                    closed[partition] = state.close_due()
            if closed or self._flush_due(force=False):
                await self.store.open()
                await self._publish(closed)

    def unwritten_minutes(self) -> int:
        """Closed minutes whose rows or hour rows are not yet all in Cassandra."""
        writing = self._writing is not None and not self._writing.done()
        pending = sum(len(pending.minutes) for pending in self.pending.values())
        return pending + (len(self._writing_minutes) if writing else 0)

    def safe_offset(self, partition: int) -> int:
        """The first offset whose effect is not yet durable: the oldest open minute's first
        tree, or the first tree of a minute whose rows or hour rows are not yet written."""
        held = [
            self.state(partition).safe_commit_offset(),
            self.pending[partition].hold_offset,
            self._writing_holds.get(partition),
        ]
        return min(offset for offset in held if offset is not None)

    def _count(self, outcome: Outcome) -> None:
        self.stats.trees += 1
        if outcome is Outcome.LATE:
            self.stats.late += 1
        elif outcome is Outcome.DUPLICATE:
            self.stats.duplicates += 1

    async def _restore_unknown(self, state: PartitionReports, items: list[BatchItem]) -> None:
        """Load from Cassandra the closed minutes this batch touches that are not in memory."""
        unknown = {
            (item.record["domain"], tree_minute_ms(item.record))
            for item in items
            if (key := (item.record["domain"], tree_minute_ms(item.record))) not in state.open
            and key not in state.closed
        }
        if unknown:
            await self.drain()
        await asyncio.gather(*(self._restore(state, d, m, only_stored=True) for d, m in unknown))

    async def _restore(
        self, state: PartitionReports, domain: str, minute_ms: int, *, only_stored: bool = False
    ) -> None:
        entry = await self.store.minute_entry(domain, minute_ms)
        if entry is None:
            if not only_stored:
                state.restore_closed(empty_closed_minute(domain, minute_ms))
            return
        rows = await self.store.minute_rows(domain, minute_ms)
        state.restore_closed(
            minute_from_rows(
                domain,
                minute_ms,
                rows,
                last_offset=entry["last_offset"],
                revision=entry["revision"],
                late_count=entry["late_count"],
            )
        )
        self.stats.restored_minutes += 1

    def _flush_due(self, *, force: bool) -> bool:
        if not any(pending.rows for pending in self.pending.values()):
            return False
        return force or time.monotonic() - self.last_flush >= self.hour_flush_s

    async def _publish(
        self, closed: Mapping[int, list[dict[str, Any]]], *, caught_up: bool = False
    ) -> None:
        """Closed minutes' rows to Cassandra at once; their hours merged in memory; the changed
        hour rows and then the minute index entries (which mark a minute and its hour as
        durable) written when the hour flush is due; all rows to `trace.reports`.

        The hour flush is due at once when the batch was short (the agent has caught up with
        the log: live, every minute close is written as it happens), when an hour ends (the
        watermark passes it) or a minute was amended, and otherwise `tracing_hour_flush_s`
        after the last one: catching up, many minutes share one write of their hours. Until
        then the commit is held at the first tree of the pending minutes, so a crash replays
        them and closes them again (identically).

        Hours are kept in memory (`HourReport`) and a closing minute is merged into its hour
        alone; an hour is rebuilt from memory when one of its minutes was amended, and from
        Cassandra when this process does not hold it and the minute index lists minutes of it
        that are not closing now (after a restart or rebalance)."""
        rows = [row for part in closed.values() for row in part]
        minute_rows = [
            stored_row(row, self.partitions[partition].closed[key].last_offset)
            for partition, part in closed.items()
            for row in part
            if (key := (row["domain"], row["period_start_ms"]))
        ]
        force = caught_up
        for partition, part in closed.items():
            if part:
                force |= await self._merge_hours(partition, self.partitions[partition], part)
        hour_rows: list[dict[str, Any]] = []
        changed_hour_rows: list[dict[str, Any]] = []
        entries: list[dict[str, Any]] = []
        released: dict[int, int] = {}
        if self._flush_due(force=force):
            for partition, pending in self.pending.items():
                hours = self.hours[partition]
                for key, keys in sorted(pending.rows.items()):
                    hour = hours[key]
                    group_rows = hour.rows(whole_groups(hour.stats, keys))
                    hour_rows.extend(group_rows)
                    changed_hour_rows.extend(
                        r for r in group_rows if keys is None or report_key(r) in keys
                    )
                entries.extend(pending.minutes.values())
                if pending.hold_offset is not None:
                    released[partition] = pending.hold_offset
            for partition in list(self.pending):
                self.pending[partition] = PendingHours()
                self._forget_old_hours(partition, self.state(partition))
            self.last_flush = time.monotonic()
        if not rows and not hour_rows and not entries:
            return
        await self.drain()
        self._writing_holds = released
        self._writing_minutes = entries
        self._writing = asyncio.ensure_future(
            self._write(minute_rows, [stored_row(row, -1) for row in hour_rows], entries,
                        [*rows, *changed_hour_rows])
        )  # fmt: skip

    async def drain(self) -> None:
        """Wait for the write in flight (its failure is raised here, so the agent stops before
        committing anything it covers)."""
        writing, self._writing = self._writing, None
        if writing is not None:
            try:
                await writing
            finally:
                self._writing_holds = {}

    async def _write(
        self,
        minute_rows: list[dict[str, Any]],
        hour_rows: list[dict[str, Any]],
        entries: list[dict[str, Any]],
        records: list[dict[str, Any]],
    ) -> None:
        """Minute rows, hour rows, the rows on `trace.reports`, and last the minute index
        entries that mark minutes (and their hours) durable. Runs while the next batch is
        applied; the commit stays held until it is done."""
        await self.store.write_rows("minute", minute_rows)
        await self.store.write_rows("hour", hour_rows)
        await self.reports.send(records)
        if entries:
            await self.store.sink.upsert(MINUTES.name, entries)
        self.stats.rows_written += len(minute_rows) + len(hour_rows)

    async def _merge_hours(
        self, partition: int, state: PartitionReports, rows: list[dict[str, Any]]
    ) -> bool:
        """Merge closing minutes into their hours; whether the hour flush is due at once."""
        minutes: dict[tuple[str, int], MinuteReport] = {}
        for row in rows:
            key = (row["domain"], row["period_start_ms"])
            minutes[key] = state.closed[key]
        pending = self.pending[partition]
        force = False
        for (domain, minute_ms), minute in minutes.items():
            pending.minutes[(domain, minute_ms)] = {
                "domain": domain,
                "period_start_ms": minute_ms,
                "source_partition": partition,
                "last_offset": minute.last_offset,
                "revision": max(minute.revision, 0),
                "late_count": minute.late_count,
            }
            first = minute.first_offset if minute.first_offset is not None else minute.last_offset
            if pending.hold_offset is None or first < pending.hold_offset:
                pending.hold_offset = first
            force |= minute.revision > 0
        by_hour: dict[tuple[str, int], list[int]] = defaultdict(list)
        for domain, minute_ms in minutes:
            by_hour[(domain, minute_ms - minute_ms % HOUR_MS)].append(minute_ms)
        hours = self.hours[partition]
        for (domain, hour_ms), closing in sorted(by_hour.items()):
            watermark = state.domain_watermark_ms(domain)
            force |= watermark is not None and hour_ms + HOUR_MS <= watermark
            hour = hours.get((domain, hour_ms))
            closing.sort()
            if hour is not None and hour.takes_next(closing[0]):
                changed: set[Any] = set()
                for minute_ms in closing:
                    emitted = minutes[(domain, minute_ms)].emitted
                    assert emitted is not None, "close_due made its rows"
                    changed |= hour.add_minute(minute_ms, emitted)
                pending.add((domain, hour_ms), changed)
                continue
            if hour is None:
                await self.drain()
            if hour is None and await self.store.minutes_of_hour(domain, hour_ms) <= set(closing):
                hour = HourReport(domain, hour_ms, self.options.max_problem_samples)
            hour = self._hour_from_memory(state, domain, hour_ms, hour, closing)
            if hour is None:
                stored = await asyncio.gather(
                    *(self.store.rows("minute", domain, r, bucket_ms=hour_ms) for r in REPORTS)
                )
                hour = HourReport.from_rows(
                    domain,
                    hour_ms,
                    [row for part in stored for row in part],
                    self.options.max_problem_samples,
                )
            hours[(domain, hour_ms)] = hour
            pending.add((domain, hour_ms), None)
        return force

    def _hour_from_memory(
        self,
        state: PartitionReports,
        domain: str,
        hour_ms: int,
        hour: HourReport | None,
        closing: list[int],
    ) -> HourReport | None:
        """The hour merged again from the closed minutes in memory, when all of them are
        (`hour` None: not known to this process)."""
        if hour is None:
            return None
        rebuilt = HourReport(domain, hour_ms, self.options.max_problem_samples)
        for minute_ms in sorted(hour.minutes | set(closing)):
            minute = state.closed.get((domain, minute_ms))
            if minute is None or minute.emitted is None:
                return None
            rebuilt.add_minute(minute_ms, minute.emitted)
        return rebuilt

    def _forget_old_hours(self, partition: int, state: PartitionReports) -> None:
        """Hours whose minutes are all forgotten: a tree for them is restored from Cassandra."""
        hours = self.hours[partition]
        for key in [key for key in hours if state.hour_forgettable(*key)]:
            del hours[key]


class LogviewWriter:
    """Indexes the trees logview keeps; documents Elasticsearch refuses go to dead letters."""

    def __init__(self, runtime: Runtime, stats: TracingStats) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.options = report_options(runtime.settings)
        self.stats = stats
        self._sink: ElasticsearchSink | None = None

    async def sink(self) -> ElasticsearchSink:
        if self._sink is None:
            sink = ElasticsearchSink(self.settings.elasticsearch)
            await sink.ensure_template(
                f"{self.settings.elasticsearch_index_prefix}-trace-logview",
                [logview_index_pattern(self.settings)],
                LOGVIEW_MAPPINGS,
                {"number_of_replicas": 0},
            )
            self._sink = sink
        return self._sink

    async def write(self, batch: list[BatchItem]) -> None:
        rate = self.settings.tracing_logview_sample_rate
        documents: dict[str, tuple[Document, BatchItem]] = {}
        for item in batch:
            tree = item.record
            # Most trees are not kept: choose first, validate only the kept ones (validation
            # costs more than the choice, and this agent shares the worker's one CPU thread).
            try:
                keep = logview_keeps(tree, self.options.thresholds_for(tree["domain"]), rate)
                if keep:
                    validate_tree(tree, item.written_us)
            except (RecordRejected, KeyError, TypeError, ValueError):
                continue  # tracing.build_reports dead-letters it; once is enough
            if not keep:
                continue
            document = Document(
                index=logview_index(self.settings, tree["root"]["timestamp_us"]),
                id=stable_id(tree["message_id"]),
                source=logview_document(tree),
            )
            documents[document.id] = (document, item)
        if not documents:
            return
        sink = await self.sink()
        result = await sink.write([document for document, _ in documents.values()])
        self.stats.logview_documents += result.written
        for rejected in result.rejected:
            _, item = documents[rejected.document.id]
            await self.runtime.dead_letter(item.origin, LOGVIEW_TO_ELASTICSEARCH, "sink",
                                           rejected.reason)  # fmt: skip

    async def close(self) -> None:
        if self._sink is not None:
            await self._sink.close()


def register(runtime: Runtime) -> None:
    settings = runtime.settings
    report_options(settings)  # refuse unusable thresholds at start, not on the first tree
    sink = CassandraSink(
        settings.cassandra_contact_points,
        settings.cassandra_keyspace,
        datacenter=settings.cassandra_datacenter,
    )
    store = ReportStore(sink)
    builder = ReportBuilder(runtime, store)
    logview = LogviewWriter(runtime, builder.stats)
    runtime.context["tracing.stats"] = builder.stats

    @runtime.batch_agent(
        BUILD_REPORTS,
        MESSAGES_TOPIC,
        TREE_SCHEMA,
        validate_written=validate_tree,
        on_revoked=builder.forget,
        max_records=BATCH_RECORDS,
        prefetch=True,
    )
    async def build_reports(batch: list[BatchItem]) -> dict[int, int]:
        return await builder.handle(batch)

    @runtime.app.task
    async def open_report_store() -> None:
        """Tables and page queries ready at start, not during the first tree or page."""
        try:
            await store.open()
        except Exception:  # the agent and the views open it again when they need it
            log.exception("could not open the tracing report tables at start")

    @runtime.app.timer(1.0)
    async def close_idle_minutes() -> None:
        await builder.tick()

    @runtime.batch_agent(LOGVIEW_TO_ELASTICSEARCH, MESSAGES_TOPIC, TREE_SCHEMA)
    async def logview_to_elasticsearch(batch: list[BatchItem]) -> None:
        await logview.write(batch)

    @runtime.app.on_before_shutdown.connect
    async def close_sinks(app: object, **kwargs: object) -> None:
        await builder.drain()
        await logview.close()
        builder.reports.close()
        sink.close()

    api.register(runtime, store, builder)
