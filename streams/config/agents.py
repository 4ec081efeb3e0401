"""Config agents: state every worker serves from, record checks, audit events into Elasticsearch.

The `config.check_*` agents consume the config topics in the worker's consumer group, so each
record has one owner and committed offsets: a record no client could be served from goes to
dead letters once, not once per worker and again after every restart (the serving task on every
worker only skips it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from connectors.elasticsearch import Document, ElasticsearchSink
from connectors.retry import stable_id
from streams.bus.codec import CodecError
from streams.config import api
from streams.config.events import (
    AUDIT_SCHEMA,
    AUDIT_TOPIC,
    DRAFTS_TOPIC,
    HISTORY_TOPIC,
    RELEASE_SCHEMA,
    RELEASES_TOPIC,
)
from streams.config.model import (
    AUDIT_MAPPINGS,
    audit_document,
    audit_document_id_parts,
    validate_release,
)
from streams.config.tables import ConfigState, follow_config_topics
from streams.errors import RecordRejected

if TYPE_CHECKING:
    from streams.app import Runtime

AUDIT_TO_ELASTICSEARCH = "sinks.config_audit_to_elasticsearch"
CONFIG_STATE = "config.state"
CHECK_AGENTS = {
    RELEASES_TOPIC: "config.check_releases",
    HISTORY_TOPIC: "config.check_history",
    DRAFTS_TOPIC: "config.check_drafts",
}


def audit_index(prefix: str) -> str:
    return f"{prefix}-config-audit"


def register(runtime: Runtime) -> None:
    state = ConfigState()
    runtime.context[CONFIG_STATE] = state

    @runtime.app.task
    async def serve_releases() -> None:
        await follow_config_topics(runtime, state)

    for topic, agent in CHECK_AGENTS.items():
        _register_check(runtime, topic, agent)

    index = audit_index(runtime.settings.elasticsearch_index_prefix)

    @runtime.app.agent(runtime.topic(AUDIT_TOPIC), name=AUDIT_TO_ELASTICSEARCH)
    async def audit_to_elasticsearch(stream):  # type: ignore[no-untyped-def]
        sink = ElasticsearchSink(runtime.settings.elasticsearch)
        await sink.ensure_template(index, [index], AUDIT_MAPPINGS, {"number_of_replicas": 0})
        try:
            async for batch in runtime.decoded_batches(
                stream, AUDIT_TO_ELASTICSEARCH, AUDIT_SCHEMA
            ):
                documents = [
                    Document(
                        index=index,
                        id=stable_id(*audit_document_id_parts(item.record)),
                        source=audit_document(item.record),
                    )
                    for item in batch
                ]
                result = await sink.write(documents)
                source_of = {doc.id: item for doc, item in zip(documents, batch, strict=True)}
                for rejected in result.rejected:
                    await runtime.dead_letter(
                        source_of[rejected.document.id].event,
                        AUDIT_TO_ELASTICSEARCH,
                        "sink",
                        rejected.reason,
                    )
        finally:
            await sink.close()

    api.register(runtime, state)


def _register_check(runtime: Runtime, topic: str, agent: str) -> None:
    """An agent that dead-letters the records of `topic` that no client could be served from.

    Tombstones are legitimate on the compacted topics and pass there (`decoded_batches` would
    reject them, so the loop is spelled out here); on the history, never compacted, a record
    without a value is dead-lettered like any undecodable one. After a dead letter the offsets
    up to it are committed at once (bad records are rare): the worker's `stream_wait_empty=False`
    means a rebalance does not commit first, and the next owner would dead-letter it again.
    """

    tombstones_allowed = "compact" in runtime.topology.topic(topic).cleanup

    async def check(stream):  # type: ignore[no-untyped-def]
        liveness = runtime.agent_liveness(agent)
        async for events in stream.take_events(1000, 0.2):
            rejected = 0
            for event in events:
                value = event.message.value
                if value is None and tombstones_allowed:
                    continue
                try:
                    if value is None:
                        raise CodecError(f"no value: {topic} is not compacted, so no tombstones")
                    validate_release(runtime.codec.decode(value, RELEASE_SCHEMA))
                except (CodecError, RecordRejected) as error:
                    rejected += 1
                    await runtime.dead_letter(event, agent, error.error_type, str(error))
                    for done in events[: events.index(event) + 1]:
                        done.ack()
                    await runtime.app.consumer.commit()
            liveness.observe(len(events) - rejected, rejected)

    runtime.app.agent(runtime.topic(topic), name=agent)(check)
