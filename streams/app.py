"""Builds the Faust app from topology.yaml and the settings, and gives agents their topics.

Domains do not create topics or tables themselves: they ask the `Runtime` by logical name, so
the topic prefix, partition counts and serializers come from one place.
"""

from __future__ import annotations

import asyncio
import importlib
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from faust.streams import _current_event
from faust.types import EventT, StreamT

from streams.bus.batching import BatchAgent, BatchHandler, RevokeHandler, WrittenValidator
from streams.bus.codec import AvroCodec, CodecError, SchemaRegistry
from streams.bus.deadletters import (
    DEAD_LETTER_SCHEMA,
    DEAD_LETTER_TOPIC,
    DeadLetterCounter,
    dead_letter_record,
)
from streams.bus.faust_codec import register_faust_codecs
from streams.errors import RecordRejected
from streams.http import OpenAPIDocument, error_body
from streams.settings import Settings, get_settings
from streams.topology import Topology, load_topology

STREAMS_PACKAGE = Path(__file__).resolve().parent


class UnknownDomain(ValueError):
    """The settings name a domain that has no `streams/<domain>/agents.py`."""


def domain_modules(only: Sequence[str] = ()) -> tuple[str, ...]:
    """Every `streams/<domain>/agents.py` (or just those named): a domain joins by having one."""
    available = [
        folder.name
        for folder in sorted(STREAMS_PACKAGE.iterdir())
        if (folder / "agents.py").is_file() and folder.name != "sdk"
    ]
    unknown = sorted(set(only) - set(available))
    if unknown:
        raise UnknownDomain(
            f"no such domain: {', '.join(unknown)}; available: {', '.join(available)}"
        )
    return tuple(f"streams.{name}.agents" for name in available if not only or name in only)


Validator = Callable[[dict[str, Any]], None]


@dataclass
class AgentLiveness:
    """Records seen and rejected by one agent, with a moving rate: the agent's pulse."""

    records: int = 0
    rejected: int = 0
    last_record_at: float | None = None
    window_start: float = field(default_factory=time.monotonic)
    window_records: int = 0
    records_per_second: float = 0.0

    def observe(self, accepted: int, rejected: int) -> None:
        now = time.monotonic()
        self.records += accepted
        self.rejected += rejected
        self.window_records += accepted + rejected
        self.last_record_at = time.time()
        elapsed = now - self.window_start
        if elapsed >= 5.0:
            self.records_per_second = self.window_records / elapsed
            self.window_start, self.window_records = now, 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "rejected": self.rejected,
            "records_per_second": round(self.records_per_second, 1),
            "last_record_at": self.last_record_at,
        }


@dataclass
class Decoded:
    """One source record that decoded and validated, with the Faust event it came in."""

    event: EventT
    record: dict[str, Any]

    @property
    def key(self) -> bytes | None:
        return self.event.message.key


class Runtime:
    """The Faust app plus everything agents share: topology, codec, dead letters, liveness."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        domains: Sequence[str] | None = None,
        app_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.registry = SchemaRegistry.from_directory(self.settings.schemas_dir)
        self.topology: Topology = load_topology(
            self.settings.topology_file, known_schemas=self.registry.names
        )
        self.codec = AvroCodec(self.registry)
        register_faust_codecs(self.codec)
        self.app = _faust_app(self.settings, dict(app_options or {}))
        self.dead_letter_counter = DeadLetterCounter()
        self.liveness: dict[str, AgentLiveness] = {}
        self._topics: dict[str, faust.TopicT] = {}
        self._tables: dict[str, faust.Table] = {}
        self.batch_agents: dict[str, BatchAgent] = {}
        self.context: dict[str, Any] = {}
        self.openapi = OpenAPIDocument("stackstream worker", _version())
        if domains is None:
            domains = domain_modules(self.settings.domain_names)
        for module_name in domains:
            importlib.import_module(module_name).register(self)

    # --- topics and tables by logical name -------------------------------------------------

    def kafka_topic_name(self, name: str) -> str:
        return self.topology.topic(name).kafka_name(self.settings.topic_prefix)

    def topic(self, name: str) -> faust.TopicT:
        """The Faust topic for a declared topic; values stay raw bytes, decoded in batches."""
        if name not in self._topics:
            spec = self.topology.topic(name)
            self._topics[name] = self.app.topic(
                spec.kafka_name(self.settings.topic_prefix),
                key_serializer="raw",
                value_serializer="raw",
                partitions=spec.partitions,
                replicas=spec.replication,
                retention=spec.retention_ms / 1000 if spec.retention_ms > 0 else None,
                compacting="compact" in spec.cleanup,
                deleting="delete" in spec.cleanup,
            )
        return self._topics[name]

    def table(self, name: str, default: Callable[[], Any] | None = None) -> faust.Table:
        """The Faust table for a declared table, co-partitioned with its source topic."""
        if name not in self._tables:
            spec = self.topology.table(name)
            source = self.topology.topic(spec.source)
            factory = self.app.GlobalTable if spec.is_global else self.app.Table
            self._tables[name] = factory(
                name.replace(".", "-"),
                default=default,
                partitions=source.partitions,
                key_type=str,
                help=spec.doc,
            )
        return self._tables[name]

    def agent_liveness(self, agent: str) -> AgentLiveness:
        self.topology.agent(agent)
        return self.liveness.setdefault(agent, AgentLiveness())

    def batch_agent(
        self,
        name: str,
        topic: str,
        schema: str,
        *,
        validate: Validator | None = None,
        validate_written: WrittenValidator | None = None,
        on_revoked: RevokeHandler | None = None,
        max_records: int = 5000,
        prefetch: bool = False,
    ) -> Callable[[BatchHandler], BatchHandler]:
        """Declare a batch agent (see streams.bus.batching): the decorated coroutine gets lists.

        For high-volume topics whose handlers are idempotent and keep no Faust table.
        """

        def register(handler: BatchHandler) -> BatchHandler:
            agent = BatchAgent(
                self,
                name,
                topic,
                schema,
                handler,
                validate=validate,
                validate_written=validate_written,
                on_revoked=on_revoked,
                max_records=max_records,
                prefetch=prefetch,
            )
            self.batch_agents[name] = agent
            source = self.topic(topic)

            async def run() -> None:
                await source.maybe_declare()
                await agent.run()

            run.__name__ = run.__qualname__ = name
            self.app.task(run)
            return handler

        return register

    # --- producing --------------------------------------------------------------------------

    async def send(
        self,
        topic: str,
        key: bytes | str | None,
        schema: str,
        record: dict,
        *,
        source: EventT | None = None,
    ) -> None:
        """Encode and produce one record, waiting for the broker's acknowledgement.

        `source` is the event being processed when an agent sends: under exactly-once the record
        joins the transaction of the source partition, so it commits with that offset. (Faust's
        own routing picks the destination partition's transaction, which is never committed when
        this worker consumes nothing new from the destination.) Without `source` (HTTP writes,
        timers) the record is sent outside any transaction and is visible at once.
        """
        value = self.codec.encode(schema, record)
        raw_key = key.encode() if isinstance(key, str) else key
        transactional_id = None
        if source is not None and self.settings.processing_guarantee == "exactly_once":
            transactional_id = self._transaction_of(source)
        future = await self.app.producer.send(
            self.kafka_topic_name(topic),
            raw_key,
            value,
            None,
            None,
            None,
            transactional_id=transactional_id,
        )
        await future

    def _transaction_of(self, source: Any) -> str | None:
        """The Faust transaction of a source record's partition; None for topics Faust does not
        consume (batch agents and plain consumers commit on their own)."""
        message = source.message
        try:
            group = self.app.assignor.group_for_topic(message.topic)
        except KeyError:
            return None
        return f"{self.app.conf.id}-{group}-{message.partition}"

    async def dead_letter(self, event: EventT, agent: str, error_type: str, reason: str) -> None:
        """Send one source record to the dead-letter topic with why and where it came from."""
        message = event.message
        await self.dead_letter_message(
            message,
            agent,
            error_type,
            reason,
            timestamp_ms=int(message.timestamp * 1000) if message.timestamp else 0,
            source=event,
        )

    async def dead_letter_message(
        self,
        message: Any,
        agent: str,
        error_type: str,
        reason: str,
        *,
        timestamp_ms: int,
        source: EventT | None = None,
    ) -> None:
        """Dead-letter a consumed record of any client (Faust, aiokafka: topic, partition,
        offset, key, value, headers); `source` joins a Faust event's transaction."""
        source_topic = message.topic
        prefix = self.settings.topic_prefix
        if prefix and source_topic.startswith(prefix):
            source_topic = source_topic[len(prefix) :]
        record = dead_letter_record(
            reason=reason,
            error_type=error_type,
            source_topic=source_topic,
            partition=message.partition,
            offset=message.offset,
            timestamp_ms=timestamp_ms,
            agent=agent,
            key=message.key,
            value=message.value,
            headers=dict(message.headers or []),
        )
        self.dead_letter_counter.add(source_topic, error_type)
        await self.send(DEAD_LETTER_TOPIC, source_topic, DEAD_LETTER_SCHEMA, record, source=source)

    # --- consuming --------------------------------------------------------------------------

    async def _wait_for_changelog_metadata(self, timeout_seconds: float = 30.0) -> None:
        """Wait until the consumer's metadata knows every table's changelog partitions.

        Right after a changelog topic is created the group's metadata snapshot can list it with
        0 partitions; Faust's first table write then fails its partition check
        (PartitionsMismatch) and crashes the agent. The snapshot corrects itself within
        moments, so the first batch waits for it (bounded) instead.
        """
        deadline = time.monotonic() + timeout_seconds
        consumer = self.app.consumer
        while time.monotonic() < deadline:
            if all(
                consumer.topic_partitions(table.changelog_topic_name) != 0
                for table in self._tables.values()
            ):
                return
            await asyncio.sleep(0.2)

    async def decoded_batches(
        self,
        stream: StreamT,
        agent: str,
        schema: str | Mapping[str, tuple[str, Validator | None]],
        validate: Validator | None = None,
        max_records: int = 1000,
        within_seconds: float = 0.2,
    ) -> AsyncIterator[list[Decoded]]:
        """Batches of decoded, validated records; the rest go to dead letters on the way.

        A stream over several topics gives `schema` as {Kafka topic name: (schema, validator)}:
        each record is decoded and validated by its own topic's pair.
        """
        liveness = self.agent_liveness(agent)
        if isinstance(schema, str):
            only = (self.codec.decoder(schema), validate)
            by_topic: dict[str, tuple[Callable[[bytes], dict[str, Any]], Validator | None]] = {}
        else:
            by_topic = {
                topic: (self.codec.decoder(name), check) for topic, (name, check) in schema.items()
            }
        tables_checked = False
        async for events in stream.take_events(max_records, within_seconds):
            if not tables_checked:
                await self._wait_for_changelog_metadata()
                tables_checked = True
            batch: list[Decoded] = []
            rejected = 0
            for event in events:
                decode, check = by_topic[event.message.topic] if by_topic else only
                try:
                    record = decode(event.value)
                    if check is not None:
                        check(record)
                except (CodecError, RecordRejected) as error:
                    rejected += 1
                    await self.dead_letter(event, agent, error.error_type, str(error))
                    continue
                batch.append(Decoded(event, record))
            liveness.observe(len(batch), rejected)
            if batch:
                yield batch


async def routed_or_unavailable(view: Any, answer: Callable[[], Awaitable[Any]]) -> Any:
    """Answer a request routed to a key's owner, or 503 while the worker cannot route yet.

    Routing needs the partition assignment and the topic's metadata; right after start or during
    a rebalance either may be missing (aiokafka then raises TypeError from its partitioner).
    """
    unavailable = view.json(
        error_body(None, "this worker is starting or rebalancing; retry shortly"),
        status=503,
        headers={"Retry-After": "1"},
    )
    if view.app.rebalancing:
        return unavailable
    try:
        return await answer()
    except TypeError:
        return unavailable


def as_current_event(decoded: Decoded) -> None:
    """Make a batched record the current event, so table writes land in its partition.

    Faust picks a table write's changelog and store partition from the current event; after
    `take_events` that is the batch's last event, which may belong to another partition.
    """
    _current_event.set(weakref.ref(decoded.event))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stackstream")
    except PackageNotFoundError:
        return "0"


def _faust_app(settings: Settings, options: dict[str, Any]) -> faust.App:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = "rocksdb://" if settings.table_store == "rocksdb" else "memory://"
    config: dict[str, Any] = {
        "broker": [f"kafka://{address}" for address in settings.kafka_bootstrap],
        "store": store,
        "datadir": str(settings.data_dir / settings.app_id),
        "web_enabled": True,
        "web_host": settings.web_host,
        "web_port": settings.web_port,
        "web_in_thread": False,
        "processing_guarantee": settings.processing_guarantee,
        "topic_replication_factor": 1,
        "topic_allow_declare": True,
        "autodiscover": False,
        "consumer_auto_offset_reset": "earliest",
        "table_cleanup_interval": 30.0,
        "stream_wait_empty": False,
        "producer_acks": -1,
        # Table keys and values (our topics are raw bytes, decoded by the codec).
        "key_serializer": "json",
        "value_serializer": "json",
    }
    config.update(options)
    return faust.App(settings.app_id, **config)


def create_runtime(settings: Settings | None = None, **kwargs: Any) -> Runtime:
    """The worker's runtime with every domain registered."""
    return Runtime(settings, **kwargs)
