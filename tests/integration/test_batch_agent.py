"""Batch agents on the real broker: offsets move only after the handler has the batch."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

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
WRITE_FALLBACK_S = 10.0


class HandlerFailed(Exception):
    pass


def runtime_over_points(stack_settings: Settings, names: tuple[str, ...]) -> Runtime:
    """A runtime without domains over a fresh points topic holding RECORDS points with values
    0 … RECORDS-1, the metric names (the keys) taken in turn from `names`."""
    settings = stack_settings.model_copy(update={"table_store": "memory"})
    apply_topics(settings)
    producer = EventProducer(settings.kafka, topic_prefix=settings.topic_prefix)
    for index in range(RECORDS):
        point = metric_point(name=names[index % len(names)], value=float(index))
        producer.emit(POINTS_TOPIC, POINT_SCHEMA, point, key=point["name"])
    producer.close()
    assert producer.stats.delivered == RECORDS
    return Runtime(settings, domains=())


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
    runtime = runtime_over_points(stack_settings, ("cpu",))

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


async def test_prefetch_sees_a_failed_batch_again_and_skips_or_repeats_nothing(
    stack_settings: Settings,
) -> None:
    runtime = runtime_over_points(stack_settings, ("cpu", "mem", "disk", "net"))

    def prefetching(handler: Callable[[list[BatchItem]], Awaitable[None]]) -> BatchAgent:
        return BatchAgent(
            runtime, AGENT, POINTS_TOPIC, POINT_SCHEMA, handler, max_records=150, prefetch=True
        )

    handled: list[float] = []
    failed_batch: list[float] = []
    fetches: list[asyncio.Future] = []
    next_fetch_started = 0

    async def fail_third(batch: list[BatchItem]) -> None:
        nonlocal next_fetch_started
        latest = fetches[-1]
        delivered_this_batch = latest.done() and any(
            message is batch[0].message for message in latest.result()
        )
        next_fetch_started += not delivered_this_batch
        await asyncio.sleep(0.3)  # the prefetch has time to fetch the next batch
        values = [item.record["value"] for item in batch]
        if len(handled) >= 2 * 100 and not failed_batch:
            failed_batch.extend(values)
            raise HandlerFailed
        handled.extend(values)

    agent = prefetching(fail_third)
    start_consume = agent._consume

    def counting_consume() -> asyncio.Future:
        fetches.append(start_consume())
        return fetches[-1]

    agent._consume = counting_consume  # type: ignore[method-assign]
    with pytest.raises(HandlerFailed):
        await asyncio.wait_for(agent.run(), 60)
    assert failed_batch and handled
    assert next_fetch_started >= 3, "the next consume started before each handler ran"

    seen: list[tuple[int, float]] = []
    all_seen = asyncio.Event()

    async def keep(batch: list[BatchItem]) -> None:
        seen.extend((item.partition, item.record["value"]) for item in batch)
        if len(handled) + len(seen) >= RECORDS:
            all_seen.set()

    task = asyncio.create_task(prefetching(keep).run())
    try:
        await asyncio.wait_for(all_seen.wait(), 60)
        await asyncio.sleep(2)  # a duplicate would arrive now
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    values = [value for _, value in seen]
    assert set(failed_batch) <= set(values), "the failed batch was not committed: it comes again"
    assert not set(handled) & set(values), "handled batches were committed: they do not come again"
    assert len(values) == len(set(values)), "no record twice across prefetched batches"
    assert sorted(handled + values) == [float(index) for index in range(RECORDS)]
    for partition in {p for p, _ in seen}:
        in_partition = [value for p, value in seen if p == partition]
        assert in_partition == sorted(in_partition), "each partition in order across batches"


async def test_unfinished_writes_overlap_the_next_batch_and_commit_only_when_done(
    stack_settings: Settings,
) -> None:
    runtime = runtime_over_points(stack_settings, ("cpu",))
    loop = asyncio.get_running_loop()
    batches: list[list[float]] = []
    writes: list[asyncio.Future] = []
    overlapped = 0

    def finish(write: asyncio.Future, failure: Exception | None) -> None:
        if write.done():
            return
        if failure is None:
            write.set_result(None)
        else:
            write.set_exception(failure)

    async def write_later(batch: list[BatchItem]) -> asyncio.Future:
        nonlocal overlapped
        # A write ends when the next batch is handed over (so the overlap does not depend on
        # how fast this machine fetches and decodes), or after a long fallback if none comes.
        if writes and not writes[-1].done():
            overlapped += 1
            finish(writes[-1], None)
        batches.append([item.record["value"] for item in batch])
        write = loop.create_future()
        if len(batches) == 4:
            loop.call_soon(finish, write, HandlerFailed())
        else:
            loop.call_later(WRITE_FALLBACK_S, finish, write, None)
        writes.append(write)
        return write

    agent = BatchAgent(runtime, AGENT, POINTS_TOPIC, POINT_SCHEMA, write_later, max_records=150)
    with pytest.raises(HandlerFailed):
        await asyncio.wait_for(agent.run(), 60)
    assert len(batches) >= 4
    assert overlapped >= 3, "each next batch was handed over while the previous one was writing"

    seen: list[float] = []
    all_seen = asyncio.Event()
    first_failed = batches[3][0]

    async def keep(batch: list[BatchItem]) -> None:
        seen.extend(item.record["value"] for item in batch)
        if seen and seen[-1] == float(RECORDS - 1):
            all_seen.set()

    await consume_until(BatchAgent(runtime, AGENT, POINTS_TOPIC, POINT_SCHEMA, keep), all_seen, 60)
    assert seen == [float(index) for index in range(int(first_failed), RECORDS)], (
        "batches whose writes finished were committed; the failed one and later ones come again"
    )
