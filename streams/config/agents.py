"""Config agents: global tables every worker serves from; audit events into Elasticsearch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from connectors.elasticsearch import Document, ElasticsearchSink
from connectors.retry import stable_id
from streams.config import api
from streams.config.events import AUDIT_SCHEMA, AUDIT_TOPIC
from streams.config.model import AUDIT_MAPPINGS, audit_document, audit_document_id_parts
from streams.config.tables import ConfigState, follow_config_topics

if TYPE_CHECKING:
    from streams.app import Runtime

AUDIT_TO_ELASTICSEARCH = "sinks.config_audit_to_elasticsearch"
CONFIG_STATE = "config.state"


def audit_index(prefix: str) -> str:
    return f"{prefix}-config-audit"


def register(runtime: Runtime) -> None:
    state = ConfigState()
    runtime.context[CONFIG_STATE] = state

    @runtime.app.task
    async def serve_releases() -> None:
        await follow_config_topics(runtime, state)

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
