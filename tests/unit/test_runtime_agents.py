"""Agents in Faust's test context: decoding, dead letters and table updates, no Kafka."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from streams.app import Runtime
from streams.metrics.agents import TRACK_LATEST
from streams.metrics.model import series_key
from streams.settings import Settings
from tests.faust_context import put_on
from tests.records import metric_point as point

POINT = "stackstream.metrics.MetricPoint"


@pytest.fixture
def runtime(unit_settings: Settings) -> Runtime:
    runtime = Runtime(unit_settings.model_copy(update={"domains": "bus,metrics"}))
    runtime.app.finalize()
    runtime.app.flow_control.resume()
    sent: list[tuple[str, Any, str, dict]] = []

    async def capture(topic: str, key: Any, schema: str, record: dict, **options: Any) -> None:
        sent.append((topic, key, schema, record))

    runtime.send = capture  # type: ignore[method-assign]
    runtime.context["sent"] = sent
    return runtime


async def test_points_update_the_latest_table_and_bad_ones_become_dead_letters(
    runtime: Runtime,
) -> None:
    agent = runtime.app.agents[TRACK_LATEST]
    table = runtime.table("metrics.latest")
    encode = runtime.codec.encode
    points = runtime.kafka_topic_name("metrics.points")
    async with agent.test_context() as context:
        await put_on(context, points, encode(POINT, point(value=1.0)), key=b"cpu")
        await put_on(
            context,
            points,
            encode(POINT, point(value=2.0, timestamp_ms=1_700_000_001_000)),
            key=b"cpu",
        )
        await put_on(
            context,
            points,
            encode(POINT, point(value=9.0, timestamp_ms=1_600_000_000_000)),
            key=b"cpu",
        )
        await put_on(context, points, b"not avro at all", key=b"cpu")
        await put_on(context, points, b"\xc3\x01" + b"\x11" * 8 + b"\x00", key=b"cpu")
        await put_on(context, points, encode(POINT, point(tags={})), key=b"cpu")
        await put_on(context, points, encode(POINT, point(name="mem")), key=b"mem")
        for _ in range(50):
            if len(runtime.context["sent"]) == 3 and series_key("mem", {"host": "a"}) in table:
                break
            await asyncio.sleep(0.05)

    latest = table[series_key("cpu", {"host": "a"})]
    assert latest["value"] == 2.0, "an older point must not replace a newer one"
    assert table[series_key("mem", {"host": "a"})]["value"] == 0.5

    dead = runtime.context["sent"]
    assert [entry[0] for entry in dead] == ["bus.deadletters"] * 3
    kinds = [entry[3]["error_type"] for entry in dead]
    assert kinds == ["decode", "unknown_schema", "validation"]
    assert "tags" in dead[2][3]["reason"]
    assert dead[0][3]["value"] == b"not avro at all"
    assert all(entry[3]["agent"] == TRACK_LATEST for entry in dead)
    pulse = runtime.liveness[TRACK_LATEST].snapshot()
    assert pulse["records"] == 4 and pulse["rejected"] == 3
    assert runtime.dead_letter_counter.by_source["metrics.points"] == 3
