"""Faust's agent test context for agents that read more than one topic.

`AgentTestWrapper.put` names the message after the agent's topic, and an agent over several
topics has no single name (the message comes from `<internal>`); `put_on` names the topic.
"""

from __future__ import annotations

from typing import Any


async def put_on(
    context: Any,
    topic: str,
    value: bytes,
    *,
    key: bytes | None = None,
    partition: int = 0,
    timestamp: float | None = None,
    wait: bool = True,
) -> Any:
    """Put one raw record on `topic` (a Kafka name) of a test context; wait until it is read."""
    message = context.to_message(
        key, value, partition=partition, offset=context.sent_offset, timestamp=timestamp
    )
    message.topic = topic
    channel = context.stream().channel
    event = await channel.decode(message)
    await channel.put(event)
    context.sent_offset += 1
    if wait:
        async with context.new_value_processed:
            await context.new_value_processed.wait()
    return event
