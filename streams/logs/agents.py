"""Log agents: govern log records (level, quota, size, secrets), index them into daily
Elasticsearch indices, count volumes as metric points; keep per-app rules from the config centre.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from connectors.elasticsearch import Document, ElasticsearchSink
from connectors.retry import Backoff, stable_id
from streams.app import Decoded
from streams.bus.codec import CodecError
from streams.bus.deadletters import DEAD_LETTER_SCHEMA, DEAD_LETTER_TOPIC, dead_letter_record
from streams.errors import RecordRejected
from streams.logs import api
from streams.logs.events import (
    CONFIG_RELEASE_SCHEMA,
    CONFIG_RELEASES_TOPIC,
    POINT_SCHEMA,
    POINTS_TOPIC,
    RECORD_SCHEMA,
    RECORDS_TOPIC,
)
from streams.logs.model import (
    ECS_MAPPINGS,
    GovernanceRule,
    Governor,
    document_id_parts,
    ecs_document,
    index_name,
    rule_from_configuration,
    rule_overrides,
    secret_masker,
    validate_record,
    volume_points,
)

if TYPE_CHECKING:
    from streams.app import Runtime
    from streams.settings import Settings

log = logging.getLogger(__name__)
LOGS_TO_ELASTICSEARCH = "sinks.logs_to_elasticsearch"
TRACK_RULES = "logs.track_rules"


def fallback_rule(settings: Settings) -> GovernanceRule:
    """The rule of an app whose config-centre namespace sets nothing."""
    return GovernanceRule(
        settings.logs_min_level.upper(),
        settings.logs_quota_per_minute,
        settings.logs_sample_every,
    )


class RuleBook:
    """Each app's rule: its config-centre keys over the fallback, re-read once per batch."""

    def __init__(self, overrides: Mapping[str, Mapping[str, str]], fallback: GovernanceRule):
        self.overrides = overrides
        self.fallback = fallback
        self._cache: dict[str, GovernanceRule] = {}

    def refresh(self) -> None:
        self._cache.clear()

    def __call__(self, service: str) -> GovernanceRule:
        rule = self._cache.get(service)
        if rule is None:
            keys = self.overrides.get(service)
            rule = rule_from_configuration(keys, self.fallback) if keys else self.fallback
            self._cache[service] = rule
        return rule


Prepare = Callable[[list[Decoded]], Callable[[], Awaitable[None]]]


async def consume_in_batches(runtime: Runtime, prepare: Prepare, max_records: int = 1000) -> None:
    """Consume logs.records in batches of up to `max_records`; commit each batch's offsets only
    after its write (`prepare(batch)()`: the bulk call) succeeded.

    One batch is prepared (decoded, governed, documents built) while the previous one is being
    written, so Python and Elasticsearch work at the same time; writes and commits stay in order.

    A plain aiokafka group consumer instead of a Faust agent: Faust's per-message path costs
    about 200 us a record (docs/benchmarks.md), more than governing and indexing it. Undecodable
    or invalid records go to dead letters. A batch that fails, or a worker stopped in the middle
    of one, is not committed, so its lines come again (idempotent ids make that harmless).
    """
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import CommitFailedError, KafkaError

    settings = runtime.settings
    liveness = runtime.agent_liveness(LOGS_TO_ELASTICSEARCH)
    decode = runtime.codec.decode
    backoff = Backoff(first=0.5, maximum=10.0)
    attempt = 0
    while True:
        consumer = AIOKafkaConsumer(
            runtime.kafka_topic_name(RECORDS_TOPIC),
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=f"{settings.app_id}-{LOGS_TO_ELASTICSEARCH}",
            client_id=f"{settings.app_id}-{LOGS_TO_ELASTICSEARCH}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=max_records,
            fetch_max_wait_ms=200,
        )
        writing: tuple[asyncio.Future[None] | None, dict[Any, int]] | None = None

        async def finish(consumer: AIOKafkaConsumer = consumer) -> None:
            nonlocal writing
            if writing is None:
                return
            write, offsets = writing
            if write is not None:
                await write
            writing = None
            try:
                await consumer.commit(offsets)
            except CommitFailedError as error:
                log.warning("offsets not committed (%s); the batch may come again", error)

        try:
            await consumer.start()
            while True:
                fetched = await consumer.getmany(timeout_ms=500, max_records=max_records)
                if not fetched:
                    await finish()
                    continue
                attempt = 0
                batch: list[Decoded] = []
                rejected = 0
                for messages in fetched.values():
                    for message in messages:
                        try:
                            record = decode(message.value, RECORD_SCHEMA)
                            validate_record(record)
                        except (CodecError, RecordRejected) as error:
                            rejected += 1
                            await dead_letter(
                                runtime,
                                message,
                                LOGS_TO_ELASTICSEARCH,
                                error.error_type,
                                str(error),
                            )
                            continue
                        batch.append(Decoded(SimpleNamespace(message=message), record))  # type: ignore[arg-type]
                liveness.observe(len(batch), rejected)
                write = prepare(batch) if batch else None
                await finish()
                offsets = {tp: messages[-1].offset + 1 for tp, messages in fetched.items()}
                writing = (asyncio.ensure_future(write()) if write else None, offsets)
        except KafkaError as error:
            attempt += 1
            log.warning("consuming %s failed (%s); retry %d", RECORDS_TOPIC, error, attempt)
            await asyncio.sleep(backoff.delay(attempt))
        except Exception:
            attempt += 1
            log.exception("a batch of %s failed; it comes again (retry %d)", RECORDS_TOPIC, attempt)
            await asyncio.sleep(backoff.delay(attempt))
        finally:
            if writing is not None and writing[0] is not None and not writing[0].done():
                writing[0].cancel()
            await consumer.stop()


class RuleFollower:
    """Every app's logging keys, materialised from config.releases on this worker."""

    def __init__(self, namespace: str, cluster: str) -> None:
        self.namespace = namespace
        self.cluster = cluster
        self.overrides: dict[str, dict[str, str]] = {}
        self.applied = 0
        self.started_ms = int(time.time() * 1000)

    def apply(self, key: str, release: Mapping[str, Any] | None) -> None:
        """Apply one record of config.releases; a tombstone of a logging namespace clears it.

        Raises RecordRejected for a logging namespace with unusable values (old rule kept).
        Each worker reads every release, so a bad one that arrives while N workers run is
        dead-lettered N times; one older than this worker is only logged.
        """
        self.applied += 1
        if release is None:
            suffix = f"+{self.cluster}+{self.namespace}".lower()
            if key.lower().endswith(suffix):
                self.overrides.pop(key[: -len(suffix)], None)
            return
        change = rule_overrides(release, self.namespace, self.cluster)
        if change is not None:
            app_id, keys = change
            self.overrides[app_id] = keys


async def follow_rules(runtime: Runtime, rules: RuleFollower) -> None:
    """Read every partition of config.releases from the start, forever, into `rules`.

    What a GlobalTable would do, with a group-less consumer: a GlobalTable fed by an agent on
    config.releases stalled Faust's partition assignor, as the config domain also found.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError

    name = runtime.kafka_topic_name(CONFIG_RELEASES_TOPIC)
    spec = runtime.topology.topic(CONFIG_RELEASES_TOPIC)
    partitions = [TopicPartition(name, p) for p in range(spec.partitions)]
    positions: dict[TopicPartition, int] = {}
    backoff = Backoff(first=0.5, maximum=10.0)
    attempt = 0
    while True:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=runtime.settings.kafka_bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=200,
        )
        try:
            await consumer.start()
            consumer.assign(partitions)
            for partition in partitions:
                if partition in positions:
                    consumer.seek(partition, positions[partition])
                else:
                    await consumer.seek_to_beginning(partition)
            attempt = 0
            while True:
                batches = await consumer.getmany(timeout_ms=1000, max_records=500)
                for partition, messages in batches.items():
                    for message in messages:
                        await _apply_release(runtime, rules, message)
                        positions[partition] = message.offset + 1
        except KafkaError as error:
            attempt += 1
            log.warning("following %s failed (%s); retry %d", name, error, attempt)
            await asyncio.sleep(backoff.delay(attempt))
        finally:
            await consumer.stop()


async def _apply_release(runtime: Runtime, rules: RuleFollower, message: Any) -> None:
    key = message.key.decode() if isinstance(message.key, bytes) else str(message.key or "")
    try:
        release = None
        if message.value is not None:
            release = runtime.codec.decode(message.value, CONFIG_RELEASE_SCHEMA)
        rules.apply(key, release)
    except (CodecError, RecordRejected) as error:
        if message.timestamp and message.timestamp < rules.started_ms:
            log.warning("config release %s (before this worker started) refused: %s", key, error)
            return
        await dead_letter(runtime, message, TRACK_RULES, error.error_type, str(error))


async def dead_letter(
    runtime: Runtime, message: Any, agent: str, error_type: str, reason: str
) -> None:
    """Send an aiokafka record to the dead-letter topic, outside any transaction (this
    consumer is not Faust's, so there is no source transaction to join)."""
    source_topic = message.topic
    prefix = runtime.settings.topic_prefix
    if prefix and source_topic.startswith(prefix):
        source_topic = source_topic[len(prefix) :]
    record = dead_letter_record(
        reason=reason,
        error_type=error_type,
        source_topic=source_topic,
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=message.timestamp or 0,
        agent=agent,
        key=message.key,
        value=message.value,
        headers=dict(message.headers or []),
    )
    runtime.dead_letter_counter.add(source_topic, error_type)
    await runtime.send(DEAD_LETTER_TOPIC, source_topic, DEAD_LETTER_SCHEMA, record)


def register(runtime: Runtime) -> None:
    settings = runtime.settings
    prefix = settings.elasticsearch_index_prefix
    fallback = fallback_rule(settings)
    masker = secret_masker(settings.logs_secret_patterns, settings.logs_mask_default_secrets)
    namespace, cluster = settings.logs_config_namespace, settings.logs_config_cluster
    rules = RuleFollower(namespace, cluster)

    @runtime.app.task
    async def track_rules() -> None:
        await follow_rules(runtime, rules)

    @runtime.app.task
    async def logs_to_elasticsearch() -> None:
        sink = ElasticsearchSink(settings.elasticsearch)
        await sink.ensure_template(
            f"{prefix}-logs", [f"{prefix}-logs-*"], ECS_MAPPINGS, {"number_of_replicas": 0}
        )
        rule_book = RuleBook(rules.overrides, fallback)
        governor = Governor(rule_book, masker, settings.logs_max_line_bytes)

        def prepare(batch: list[Decoded]) -> Callable[[], Awaitable[None]]:
            rule_book.refresh()
            return _govern(runtime, sink, governor, batch)

        try:
            await consume_in_batches(runtime, prepare)
        finally:
            await sink.close()

    def _govern(
        runtime: Runtime, sink: ElasticsearchSink, governor: Governor, batch: list[Decoded]
    ) -> Callable[[], Awaitable[None]]:
        """Govern a batch now; the returned coroutine function indexes it and counts volumes."""
        outcome = governor.govern([item.record for item in batch])
        documents = [
            Document(
                index=index_name(prefix, kept.record["service"], kept.record["timestamp_us"]),
                id=stable_id(*document_id_parts(kept.record)),
                source=ecs_document(kept.record, kept.tags),
            )
            for kept in outcome.accepted
        ]
        source_of = {
            doc.id: batch[kept.position]
            for doc, kept in zip(documents, outcome.accepted, strict=True)
        }
        for summary in outcome.summaries:
            record = summary.record()
            documents.append(
                Document(
                    index=index_name(prefix, summary.service, summary.minute_us),
                    id=stable_id(*summary.document_id_parts()),
                    source=ecs_document(record, ("governance",)),
                )
            )
        points = volume_points(outcome.volume)

        async def write() -> None:
            result = await sink.write(documents)
            for rejected in result.rejected:
                item = source_of.get(rejected.document.id)
                if item is None:
                    log.error("quota summary %s refused: %s", rejected.document.id, rejected.reason)
                    continue
                await dead_letter(
                    runtime, item.event.message, LOGS_TO_ELASTICSEARCH, "sink", rejected.reason
                )
            await asyncio.gather(
                *(runtime.send(POINTS_TOPIC, p["name"], POINT_SCHEMA, p) for p in points)
            )

        return write

    api.register(runtime)
