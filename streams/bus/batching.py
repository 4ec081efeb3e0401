"""Batch agents: consumer-group members that hand decoded batches to a handler.

Faust delivers records one at a time through several tasks and event-loop passes each, which
caps an agent near 5,000 records/s on this hardware (docs/benchmarks.md). High-volume topics are
read here instead with confluent-kafka's batch `consume` in a dedicated thread: the handler gets
up to `max_records` decoded records at once, and offsets are committed only after it returns, so
a crash replays the batch (handlers must be idempotent, as every sink here is).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from streams.bus.codec import CodecError
from streams.errors import RecordRejected

if TYPE_CHECKING:
    from streams.app import Runtime

log = logging.getLogger(__name__)
STOP_GRACE_S = 10.0


@dataclass(frozen=True)
class SourceMessage:
    """Where a record came from: the fields dead letters and handlers need."""

    topic: str
    partition: int
    offset: int
    timestamp: float
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass(frozen=True)
class Origin:
    """A consumed record's origin, shaped like a Faust event (`.message`) for dead letters."""

    message: SourceMessage


class BatchItem:
    """One decoded, validated record of a batch, with the Kafka message it came in."""

    __slots__ = ("message", "record")

    def __init__(self, message: Message, record: dict[str, Any]) -> None:
        self.message = message
        self.record = record

    @property
    def partition(self) -> int:
        return self.message.partition()  # type: ignore[no-any-return]

    @property
    def offset(self) -> int:
        return self.message.offset()  # type: ignore[no-any-return]

    @property
    def origin(self) -> Origin:
        return Origin(_source_message(self.message))

    @property
    def written_us(self) -> int | None:
        return written_us(self.message)


def written_us(message: Message) -> int | None:
    """When the record was written, in µs: its Kafka timestamp (the producer's create time, or
    the broker's append time on topics that use it); None if unknown."""
    _, timestamp_ms = message.timestamp()
    return timestamp_ms * 1000 if timestamp_ms and timestamp_ms > 0 else None


SafeOffsets = Mapping[int, int]
"""Per partition, the next offset whose effect is not yet durable: commit no further than it."""
Unfinished = asyncio.Future  # type: ignore[type-arg]
"""A handler's I/O still running for its batch; its result is the batch's SafeOffsets or None."""
BatchHandler = Callable[[list[BatchItem]], Awaitable[SafeOffsets | Unfinished | None]]
RevokeHandler = Callable[[list[int]], Awaitable[None]]
WrittenValidator = Callable[[dict[str, Any], int | None], None]
"""Validates a record against the time it was written (µs, None if unknown), not the clock's
now, so live processing, replays and backfills refuse the same records."""


def _source_message(message: Message) -> SourceMessage:
    written = written_us(message)
    return SourceMessage(
        topic=message.topic(),
        partition=message.partition(),
        offset=message.offset(),
        timestamp=written / 1_000_000 if written is not None else 0.0,
        key=message.key(),
        value=message.value(),
        headers=list(message.headers() or []),
    )


class BatchAgent:
    """Consumes one declared topic in a consumer group of its own and feeds a handler batches."""

    def __init__(
        self,
        runtime: Runtime,
        name: str,
        topic: str,
        schema: str,
        handler: BatchHandler,
        *,
        validate: Callable[[dict[str, Any]], None] | None = None,
        validate_written: WrittenValidator | None = None,
        on_revoked: RevokeHandler | None = None,
        max_records: int = 5000,
        poll_seconds: float = 0.2,
        prefetch: bool = False,
    ) -> None:
        runtime.topology.agent(name)
        self.runtime = runtime
        self.name = name
        self.topic = runtime.kafka_topic_name(topic)
        self.schema = schema
        self.handler = handler
        self.validate = validate
        self.validate_written = validate_written
        self.on_revoked = on_revoked
        self.max_records = max_records
        self.poll_seconds = poll_seconds
        self.prefetch = prefetch
        self.group_id = f"{runtime.settings.app_id}-{name}"
        self._revoked: list[int] = []
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._consumer: Consumer | None = None
        self._handled: Sequence[Message] = []
        self._safe: SafeOffsets | None = None

    def _create_consumer(self) -> Consumer:
        consumer = Consumer(
            {
                "bootstrap.servers": self.runtime.settings.kafka,
                "group.id": self.group_id,
                "client.id": f"{self.group_id}-{id(self):x}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": "cooperative-sticky",
                "fetch.min.bytes": 1,
                "queued.max.messages.kbytes": 65536,
            }
        )
        consumer.subscribe([self.topic], on_revoke=self._note_revoked, on_lost=self._note_revoked)
        return consumer

    def _note_revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._revoked.extend(tp.partition for tp in partitions)

    async def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    def _consume(self) -> asyncio.Future[list[Message]]:
        """Start one batch `consume` in the consumer thread."""
        return asyncio.get_running_loop().run_in_executor(
            self._thread,
            self._consumer.consume,  # type: ignore[union-attr]
            self.max_records,
            self.poll_seconds,
        )

    async def run(self) -> None:
        """Consume until cancelled; commits after every handled batch.

        Commits are asynchronous: a lost commit only means the batch is handled again, which
        idempotent handlers absorb; waiting for each would cost a broker round trip per batch.

        With `prefetch`, the next `consume` runs in the consumer thread while the handler works
        on the current batch. Commits still follow their own handler (the commit queues behind
        the prefetch in the one consumer thread); prefetched records are not committed until
        handled. The cost: a rebalance seen by the prefetch revokes partitions before the
        current batch's commit, so the new owner may get that batch's records again.

        A handler may return an `Unfinished` future instead of waiting for its writes: the next
        batch is then decoded and handed over while those writes run, and the batch is committed
        once the future is done (in order; one batch at most is left unfinished). A handler doing
        so must order its own writes (each waiting for the previous) if order matters.
        """
        self._consumer = await self._call(self._create_consumer)
        liveness = self.runtime.agent_liveness(self.name)
        decode = self.runtime.codec.decoder(self.schema)
        validate, validate_written = self.validate, self.validate_written
        prefetched: asyncio.Future[list[Message]] | None = None
        unfinished: tuple[Unfinished, list[Message]] | None = None
        try:
            while True:
                messages: list[Message] = await (prefetched or self._consume())
                prefetched = None
                if self._revoked and self.on_revoked is not None:
                    revoked, self._revoked = self._revoked, []
                    await self.on_revoked(revoked)
                if messages and self.prefetch:
                    prefetched = self._consume()
                if not messages:
                    if unfinished is not None:
                        await self._finish(*unfinished)
                        unfinished = None
                    continue
                batch: list[BatchItem] = []
                rejected = 0
                for message in messages:
                    error = message.error()
                    if error is not None:
                        if error.code() != KafkaError._PARTITION_EOF:
                            log.warning("%s: consume error %s", self.name, error)
                        continue
                    try:
                        record = decode(message.value())
                        if validate is not None:
                            validate(record)
                        if validate_written is not None:
                            validate_written(record, written_us(message))
                    except (CodecError, RecordRejected) as failure:
                        rejected += 1
                        await self.runtime.dead_letter(
                            Origin(_source_message(message)),
                            self.name,
                            failure.error_type,
                            str(failure),
                        )
                        continue
                    batch.append(BatchItem(message, record))
                result = await self.handler(batch) if batch else self._safe
                liveness.observe(len(batch), rejected)
                current = (result, messages) if isinstance(result, asyncio.Future) else None
                if unfinished is not None:
                    try:
                        await self._finish(*unfinished)
                    except BaseException:
                        if current is not None:
                            current[0].cancel()  # never committed past the failed batch
                        raise
                unfinished = current
                if current is None:
                    await self._finish(result, messages)
        finally:
            if prefetched is not None:
                prefetched.cancel()
            if unfinished is not None:
                await self._finish_on_stop(*unfinished)
            consumer, self._consumer = self._consumer, None
            if consumer is not None:
                handled, self._handled = self._handled, []
                await asyncio.shield(self._call(self._close, consumer, handled, self._safe))

    async def _finish(
        self, result: SafeOffsets | Unfinished | None, messages: list[Message]
    ) -> None:
        """Commit a handled batch, once its unfinished writes (if any) are done."""
        safe = await asyncio.shield(result) if isinstance(result, asyncio.Future) else result
        self._safe = safe
        self._handled = messages
        await self._call(self._commit, messages, None, safe)
        self._handled = []

    async def _finish_on_stop(self, unfinished: Unfinished, messages: list[Message]) -> None:
        """On stop, give a batch's unfinished writes a while to end so their batch is committed;
        otherwise the batch is left uncommitted and the next owner handles it again."""
        try:
            await asyncio.wait_for(asyncio.shield(unfinished), STOP_GRACE_S)
        except (TimeoutError, asyncio.CancelledError):
            unfinished.cancel()
            return
        except Exception:
            log.exception("%s: the last batch's writes failed; it is left uncommitted", self.name)
            return
        self._safe = unfinished.result()
        self._handled = messages

    def _close(
        self, consumer: Consumer, handled: Sequence[Message], safe: SafeOffsets | None
    ) -> None:
        """Commit what was handled but perhaps not committed (a stop mid-commit), then leave."""
        if handled:
            self._commit(handled, consumer, safe, asynchronous=False)
        consumer.close()

    def _commit(
        self,
        messages: Sequence[Message],
        consumer: Consumer | None = None,
        safe: SafeOffsets | None = None,
        *,
        asynchronous: bool = True,
    ) -> None:
        positions = offsets_to_commit(
            (
                (message.topic(), message.partition(), message.offset())
                for message in messages
                if message.error() is None
            ),
            safe,
        )
        if not positions:
            return
        offsets = [TopicPartition(t, p, offset) for (t, p), offset in positions.items()]
        try:
            (consumer or self._consumer).commit(  # type: ignore[union-attr]
                offsets=offsets, asynchronous=asynchronous
            )
        except Exception as error:
            log.warning("%s: commit failed (%s); the batch will be seen again", self.name, error)


def offsets_to_commit(
    handled: Iterable[tuple[str, int, int]], safe: SafeOffsets | None = None
) -> dict[tuple[str, int], int]:
    """The offset to commit per (topic, partition): past the last handled record, or no further
    than the handler's safe offset for that partition when it returned one.

    A handler keeping state in memory (open report minutes) returns, per partition, the first
    offset its durable output does not yet cover; a restart replays from there.
    """
    positions: dict[tuple[str, int], int] = {}
    for topic, partition, offset in handled:
        positions[(topic, partition)] = offset + 1
    if safe:
        for (topic, partition), position in positions.items():
            if partition in safe:
                positions[(topic, partition)] = min(position, safe[partition])
    return positions
