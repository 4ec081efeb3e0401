"""The config check agents in Faust's test context: bad records become dead letters, once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from streams.app import Runtime
from streams.config import model
from streams.config.agents import CHECK_AGENTS
from streams.config.events import RELEASE_SCHEMA, RELEASES_TOPIC
from streams.settings import Settings

NOW = 1_700_000_000_000


@pytest.fixture
def runtime(unit_settings: Settings) -> Runtime:
    runtime = Runtime(unit_settings.model_copy(update={"domains": "bus,config"}))
    runtime.app.finalize()
    runtime.app.flow_control.resume()
    sent: list[tuple[str, Any, str, dict]] = []

    async def capture(topic: str, key: Any, schema: str, record: dict, **options: Any) -> None:
        sent.append((topic, key, schema, record))

    runtime.send = capture  # type: ignore[method-assign]
    runtime.context["sent"] = sent
    return runtime


def release(**changes: Any) -> dict[str, Any]:
    draft = model.new_draft(
        "orders", "default", "application", author="a", now_ms=NOW, request_id="r"
    )
    draft["configurations"] = {"timeout": "100"}
    record = model.publish(
        None,
        draft,
        author="a",
        name="r1",
        comment="",
        now_ms=NOW,
        release_key=model.new_release_key("orders", "default", "application", NOW),
    )
    return record | changes


async def test_bad_release_records_become_dead_letters_and_tombstones_pass(
    runtime: Runtime,
) -> None:
    agent_name = CHECK_AGENTS[RELEASES_TOPIC]
    agent = runtime.app.agents[agent_name]
    encode = runtime.codec.encode
    key = model.namespace_key("orders", "default", "application").encode()
    async with agent.test_context() as context:
        await context.put(encode(RELEASE_SCHEMA, release()), key=key)
        await context.put(b"not avro", key=key)
        await context.put(encode(RELEASE_SCHEMA, release(format="toml")), key=key)
        await context.put(None, key=key)
        for _ in range(50):
            if runtime.liveness.get(agent_name) and runtime.liveness[agent_name].records >= 2:
                break
            await asyncio.sleep(0.05)

    dead = runtime.context["sent"]
    assert [entry[0] for entry in dead] == ["bus.deadletters"] * 2
    assert [entry[3]["error_type"] for entry in dead] == ["decode", "validation"]
    assert "format" in dead[1][3]["reason"] and dead[1][3]["agent"] == agent_name
    assert dead[0][3]["source_topic"] == RELEASES_TOPIC
    pulse = runtime.liveness[agent_name].snapshot()
    assert pulse["records"] == 2 and pulse["rejected"] == 2
