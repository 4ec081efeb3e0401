"""Batch agents on the real broker: offsets move only after the handler has the batch."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from streams.app import Runtime
from streams.bus.batching import BatchAgent, BatchItem
from streams.metrics.events import POINT_SCHEMA, POINTS_TOPIC
from streams.sdk.producer import EventProducer
from streams.settings import Settings
from tests.integration.worker import apply_topics
from tests.records import metric_point

pytestmark = pytest.mark.integration
AGENT = "sinks.points_to_cassandra"  # any agent declared on metrics.points
RECORDS = 2_000


class HandlerFailed(Exception):
    pass


async def consume_until(agent: BatchAgent, done: asyncio.Event, timeout: float) -> None:
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(done.wait(), timeout)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, HandlerFailed):
            await task


async def test_a_failed_batch_is_seen_again_and_a_handled_one_is_not(
    stack_settings: Settings,
) -> None:
    settings = stack_settings.model_copy(update={"table_store": "memory"})
    apply_topics(settings)
    producer = EventProducer(settings.kafka, topic_prefix=settings.topic_prefix)
    for index in range(RECORDS):
        producer.emit(POINTS_TOPIC, POINT_SCHEMA, metric_point(value=float(index)), key="cpu")
    producer.close()
    assert producer.stats.delivered == RECORDS
    runtime = Runtime(settings, domains=())

    failed = asyncio.Event()

    async def fail(batch: list[BatchItem]) -> None:
        failed.set()
        raise HandlerFailed

    agent = BatchAgent(runtime, AGENT, POINTS_TOPIC, POINT_SCHEMA, fail)
    task = asyncio.create_task(agent.run())
    await asyncio.wait_for(failed.wait(), 60)
    with pytest.raises(HandlerFailed):
        await task

    seen: list[float] = []
    all_seen = asyncio.Event()

    async def keep(batch: list[BatchItem]) -> None:
        seen.extend(item.record["value"] for item in batch)
        if len(seen) >= RECORDS:
            all_seen.set()

    await consume_until(BatchAgent(runtime, AGENT, POINTS_TOPIC, POINT_SCHEMA, keep), all_seen, 60)
    assert sorted(seen) == [float(index) for index in range(RECORDS)], (
        "nothing was committed for the failed batch, so every record comes again"
    )

    again: list[float] = []
    nothing_new = asyncio.Event()

    async def record(batch: list[BatchItem]) -> None:
        again.extend(item.record["value"] for item in batch)

    agent = BatchAgent(runtime, AGENT, POINTS_TOPIC, POINT_SCHEMA, record)
    with contextlib.suppress(TimeoutError):
        await consume_until(agent, nothing_new, 8)
    assert again == [], "a handled batch is committed and not delivered a second time"
    assert runtime.liveness[AGENT].records >= RECORDS
