"""Counts dead letters per source topic and error type into `bus.deadletter_counts`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from streams.bus import api
from streams.bus.deadletters import DEAD_LETTER_SCHEMA, DEAD_LETTER_TOPIC, dead_letter_count_key

if TYPE_CHECKING:
    from streams.app import Runtime

AGENT = "bus.count_deadletters"


def register(runtime: Runtime) -> None:
    from streams.app import as_current_event

    counts = runtime.table("bus.deadletter_counts", default=int)

    @runtime.app.agent(runtime.topic(DEAD_LETTER_TOPIC), name=AGENT)
    async def count_deadletters(stream):  # type: ignore[no-untyped-def]
        async for batch in runtime.decoded_batches(stream, AGENT, DEAD_LETTER_SCHEMA):
            for item in batch:
                as_current_event(item)
                key = dead_letter_count_key(item.record)
                counts[key] += 1

    api.register(runtime, counts)
