"""Group-less followers: every partition of some topics, from the start, forever, on each worker.

This is what a Faust GlobalTable does, done with a plain aiokafka consumer without a group: a
GlobalTable whose source is an input topic stalled Faust's partition assignor (docs/config.md).
The config and logs domains follow `config.releases` this way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from connectors.retry import Backoff

if TYPE_CHECKING:
    from streams.app import Runtime

log = logging.getLogger(__name__)

MessageHandler = Callable[[Any], Awaitable[None]]


async def follow_topics(
    runtime: Runtime,
    handlers: Mapping[str, MessageHandler],
    *,
    fetch_max_wait_ms: int = 100,
    max_records: int = 500,
) -> None:
    """Hand each record of the logical topics in `handlers` to its handler, in partition order.

    Starts at the beginning of every partition; after a Kafka error it reconnects with backoff
    and resumes after the last handled record, so no record is applied twice in one run.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError

    by_name: dict[str, MessageHandler] = {}
    partitions: list[TopicPartition] = []
    for topic, handler in handlers.items():
        name = runtime.kafka_topic_name(topic)
        by_name[name] = handler
        spec = runtime.topology.topic(topic)
        partitions += [TopicPartition(name, p) for p in range(spec.partitions)]
    positions: dict[TopicPartition, int] = {}
    backoff = Backoff(first=0.5, maximum=10.0)
    attempt = 0
    while True:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=runtime.settings.kafka_bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=fetch_max_wait_ms,
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
                batches = await consumer.getmany(timeout_ms=1000, max_records=max_records)
                for partition, messages in batches.items():
                    handle = by_name[partition.topic]
                    for message in messages:
                        await handle(message)
                        positions[partition] = message.offset + 1
        except KafkaError as error:
            attempt += 1
            log.warning("following %s failed (%s); retry %d", sorted(by_name), error, attempt)
            await asyncio.sleep(backoff.delay(attempt))
        finally:
            await consumer.stop()
