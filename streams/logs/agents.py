"""Log agents: index log records into daily Elasticsearch indices per service."""

from __future__ import annotations

from typing import TYPE_CHECKING

from connectors.elasticsearch import Document, ElasticsearchSink
from connectors.retry import stable_id
from streams.logs.events import RECORD_SCHEMA, RECORDS_TOPIC
from streams.logs.model import (
    ECS_MAPPINGS,
    document_id_parts,
    ecs_document,
    index_name,
    validate_record,
)

if TYPE_CHECKING:
    from streams.app import Runtime

LOGS_TO_ELASTICSEARCH = "sinks.logs_to_elasticsearch"


def register(runtime: Runtime) -> None:
    records = runtime.topic(RECORDS_TOPIC)
    prefix = runtime.settings.elasticsearch_index_prefix

    @runtime.app.agent(records, name=LOGS_TO_ELASTICSEARCH)
    async def logs_to_elasticsearch(stream):  # type: ignore[no-untyped-def]
        sink = ElasticsearchSink(runtime.settings.elasticsearch)
        await sink.ensure_template(
            f"{prefix}-logs", [f"{prefix}-logs-*"], ECS_MAPPINGS, {"number_of_replicas": 0}
        )
        try:
            async for batch in runtime.decoded_batches(
                stream, LOGS_TO_ELASTICSEARCH, RECORD_SCHEMA, validate=validate_record
            ):
                documents = [
                    Document(
                        index=index_name(
                            prefix, item.record["service"], item.record["timestamp_us"]
                        ),
                        id=stable_id(*document_id_parts(item.record)),
                        source=ecs_document(item.record),
                    )
                    for item in batch
                ]
                result = await sink.write(documents)
                if result.rejected:
                    source_of = {doc.id: item for doc, item in zip(documents, batch, strict=True)}
                    for rejected in result.rejected:
                        await runtime.dead_letter(
                            source_of[rejected.document.id].event,
                            LOGS_TO_ELASTICSEARCH,
                            "sink",
                            rejected.reason,
                        )
        finally:
            await sink.close()
