"""Log agents: govern log records (level, quota, size, secrets), index them into daily
Elasticsearch indices, count volumes as metric points; keep per-app rules from the config centre.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from connectors.elasticsearch import Document, ElasticsearchSink, Rejected
from connectors.retry import Backoff, stable_id
from streams.bus.batching import BatchItem, Unfinished
from streams.bus.codec import CodecError
from streams.bus.follow import follow_topics
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
SINK_BATCH_RECORDS = 1000


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


class LogIndexer:
    """The handler of `sinks.logs_to_elasticsearch`: governs a batch, bulk-indexes what is kept,
    dead-letters what Elasticsearch refuses for good, and sends the volume points.

    The batch agent commits a batch only once all of that is done. While Elasticsearch is away
    the sink's write retries; any other failure (Kafka refusing the points, say) is logged and
    the unfinished steps are retried with backoff, so the batch is governed once and its offsets
    stay uncommitted until it is fully handled.
    """

    def __init__(self, runtime: Runtime, rules: RuleFollower) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.prefix = settings.elasticsearch_index_prefix
        self.rule_book = RuleBook(rules.overrides, fallback_rule(settings))
        masker = secret_masker(settings.logs_secret_patterns, settings.logs_mask_default_secrets)
        self.governor = Governor(self.rule_book, masker, settings.logs_max_line_bytes)
        self.backoff = Backoff(first=0.5, maximum=10.0)
        self._sink: ElasticsearchSink | None = None
        self._writing: asyncio.Future[None] | None = None

    async def sink(self) -> ElasticsearchSink:
        """The Elasticsearch sink, with the logs index template installed on first use."""
        if self._sink is None:
            sink = ElasticsearchSink(self.runtime.settings.elasticsearch)
            await sink.ensure_template(
                f"{self.prefix}-logs",
                [f"{self.prefix}-logs-*"],
                ECS_MAPPINGS,
                {"number_of_replicas": 0},
            )
            self._sink = sink
        return self._sink

    async def close(self) -> None:
        if self._sink is not None:
            await self._sink.close()

    async def handle(self, batch: list[BatchItem]) -> Unfinished:
        """Govern the batch now; return its writes as an unfinished future, so the batch agent
        hands over the next batch while Elasticsearch indexes this one (writes stay in order)."""
        self.rule_book.refresh()
        outcome = self.governor.govern([item.record for item in batch])
        prefix = self.prefix
        documents = [
            Document(
                index=index_name(prefix, kept.record["service"], kept.record["timestamp_us"]),
                id=stable_id(*document_id_parts(kept.record)),
                source=ecs_document(kept.record, kept.tags),
            )
            for kept in outcome.accepted
        ]
        source_of = {
            document.id: batch[kept.position]
            for document, kept in zip(documents, outcome.accepted, strict=True)
        }
        for summary in outcome.summaries:
            documents.append(
                Document(
                    index=index_name(prefix, summary.service, summary.minute_us),
                    id=stable_id(*summary.document_id_parts()),
                    source=ecs_document(summary.record(), ("governance",)),
                )
            )
        points = volume_points(outcome.volume)
        previous, self._writing = self._writing, None
        writing = asyncio.ensure_future(self._write(previous, documents, source_of, points))
        self._writing = writing
        return writing

    async def _write(
        self,
        previous: asyncio.Future[None] | None,
        documents: list[Document],
        source_of: Mapping[str, BatchItem],
        points: list[dict[str, Any]],
    ) -> None:
        """Index, dead-letter refusals, send the volume points; retried until all are done."""
        if previous is not None:
            await asyncio.wait([previous])
        refused: list[Rejected] | None = None
        attempt = 0
        while True:
            try:
                if refused is None:
                    refused = (await (await self.sink()).write(documents)).rejected
                while refused:
                    await self._dead_letter(refused[-1], source_of)
                    refused.pop()
                await asyncio.gather(
                    *(self.runtime.send(POINTS_TOPIC, p["name"], POINT_SCHEMA, p) for p in points)
                )
                return
            except Exception:
                attempt += 1
                log.exception("handling a batch of %s failed; retry %d", RECORDS_TOPIC, attempt)
                await asyncio.sleep(self.backoff.delay(attempt))

    async def _dead_letter(self, rejected: Rejected, source_of: Mapping[str, BatchItem]) -> None:
        item = source_of.get(rejected.document.id)
        if item is None:
            log.error("quota summary %s refused: %s", rejected.document.id, rejected.reason)
            return
        await self.runtime.dead_letter(
            item.origin,  # type: ignore[arg-type]
            LOGS_TO_ELASTICSEARCH,
            "sink",
            rejected.reason,
        )


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
        await runtime.dead_letter_message(
            message, TRACK_RULES, error.error_type, str(error), timestamp_ms=message.timestamp or 0
        )


def register(runtime: Runtime) -> None:
    settings = runtime.settings
    rules = RuleFollower(settings.logs_config_namespace, settings.logs_config_cluster)
    indexer = LogIndexer(runtime, rules)

    @runtime.app.task
    async def track_rules() -> None:
        async def apply_release(message: Any) -> None:
            await _apply_release(runtime, rules, message)

        await follow_topics(runtime, {CONFIG_RELEASES_TOPIC: apply_release}, fetch_max_wait_ms=200)

    runtime.batch_agent(
        LOGS_TO_ELASTICSEARCH,
        RECORDS_TOPIC,
        RECORD_SCHEMA,
        validate=validate_record,
        max_records=SINK_BATCH_RECORDS,
        prefetch=True,
    )(indexer.handle)

    @runtime.app.on_before_shutdown.connect
    async def close_sink(app: object, **kwargs: object) -> None:
        await indexer.close()

    api.register(runtime)
