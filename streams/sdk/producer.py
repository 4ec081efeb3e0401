"""What an application uses to put events on the bus: batched, never blocking, counted.

Depends only on the schemas, the codec and confluent-kafka, so an instrumented app stays light.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from streams.bus.codec import AvroCodec, SchemaRegistry

log = logging.getLogger(__name__)
DEFAULT_SCHEMAS_DIR = Path(__file__).resolve().parent.parent.parent / "schemas"


@dataclass
class ProducerStats:
    """What happened to emitted events; `failed` and `dropped` mean data did not arrive."""

    emitted: int = 0
    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    invalid: int = 0
    last_error: str | None = None


class EventProducer:
    """Encodes records with their Avro schema and produces them to Kafka in the background.

    `emit` returns at once; a full local queue drops the event and counts it instead of
    blocking the application. `close` (also run at exit) flushes what is queued.
    """

    def __init__(
        self,
        bootstrap: str | None = None,
        *,
        topic_prefix: str | None = None,
        schemas_dir: Path | None = None,
        linger_ms: int = 20,
        queue_max_messages: int = 100_000,
        client_id: str = "stackstream-sdk",
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.bootstrap = bootstrap or os.environ.get("STACKSTREAM_KAFKA", "127.0.0.1:19092")
        self.topic_prefix = (
            topic_prefix
            if topic_prefix is not None
            else os.environ.get("STACKSTREAM_TOPIC_PREFIX", "")
        )
        self.codec = AvroCodec(SchemaRegistry.from_directory(schemas_dir or DEFAULT_SCHEMAS_DIR))
        self.stats = ProducerStats()
        self._lock = threading.Lock()
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "client.id": client_id,
            "linger.ms": linger_ms,
            "queue.buffering.max.messages": queue_max_messages,
            "compression.type": "lz4",
            "enable.idempotence": True,
            # murmur2 as the Java clients and aiokafka use, so keys land where workers expect.
            "partitioner": "murmur2_random",
        }
        config.update(extra_config or {})
        self._producer = Producer(config)
        self._closed = False
        atexit.register(self.close)

    def emit(
        self,
        topic: str,
        schema: str,
        record: Mapping[str, Any],
        key: str | bytes | None = None,
    ) -> bool:
        """Queue one record for `topic`; False when it was invalid or the queue was full."""
        try:
            value = self.codec.encode(schema, record)
        except ValueError as error:
            with self._lock:
                self.stats.invalid += 1
                self.stats.last_error = str(error)
            log.warning("stackstream: not emitting an invalid %s: %s", schema, error)
            return False
        raw_key = key.encode() if isinstance(key, str) else key
        try:
            self._producer.produce(
                self.topic_prefix + topic, value=value, key=raw_key, on_delivery=self._delivered
            )
        except BufferError:
            with self._lock:
                self.stats.dropped += 1
            self._producer.poll(0)
            return False
        with self._lock:
            self.stats.emitted += 1
        self._producer.poll(0)
        return True

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        with self._lock:
            if error is None:
                self.stats.delivered += 1
            else:
                self.stats.failed += 1
                self.stats.last_error = f"{message.topic()}: {error.str()}"
        if error is not None:
            log.warning("stackstream: delivery to %s failed: %s", message.topic(), error.str())

    def flush(self, timeout: float = 10.0) -> int:
        """Wait until queued events are delivered; returns how many are still queued."""
        return self._producer.flush(timeout)

    def close(self, timeout: float = 10.0) -> None:
        if self._closed:
            return
        self._closed = True
        remaining = self.flush(timeout)
        if remaining:
            log.warning("stackstream: %d events were not delivered before close", remaining)
        atexit.unregister(self.close)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
