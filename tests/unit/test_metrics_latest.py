"""The latest-point agent applies the cardinality guard: refused series never show as latest."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from streams.app import Runtime
from streams.metrics.agents import TRACK_LATEST, LatestGuard
from streams.metrics.model import MetricSeries, admit_series, series_key
from streams.settings import Settings
from tests.records import metric_point as point

POINT = "stackstream.metrics.MetricPoint"


@pytest.fixture
def runtime(unit_settings: Settings) -> Runtime:
    runtime = Runtime(
        unit_settings.model_copy(update={"domains": "bus,metrics", "metrics_series_limit": 2})
    )
    runtime.app.finalize()
    runtime.app.flow_control.resume()

    async def capture(topic: str, key: Any, schema: str, record: dict, **options: Any) -> None:
        runtime.context.setdefault("sent", []).append((topic, record))

    runtime.send = capture  # type: ignore[method-assign]
    return runtime


async def test_series_past_the_limit_are_not_kept_as_latest(runtime: Runtime) -> None:
    agent = runtime.app.agents[TRACK_LATEST]
    table = runtime.table("metrics.latest")
    encode = runtime.codec.encode
    hosts = ["a", "b", "c", "a", "d", "b"]
    async with agent.test_context() as context:
        for index, host in enumerate(hosts):
            record = point(
                tags={"host": host}, value=float(index), timestamp_ms=1_700_000_000_000 + index
            )
            await context.put(encode(POINT, record), key=b"cpu")
        await context.put(encode(POINT, point(name="mem", tags={"host": "z"})), key=b"mem")
        for _ in range(50):
            if series_key("mem", {"host": "z"}) in table:
                break
            await asyncio.sleep(0.05)
    keys = sorted(key for key, _ in table.items() if key.startswith("cpu|"))
    assert keys == [series_key("cpu", {"host": "a"}), series_key("cpu", {"host": "b"})]
    assert table[series_key("cpu", {"host": "b"})]["value"] == 5.0, "known series keep updating"
    assert "sent" not in runtime.context, "the batch agent dead-letters refusals, not this one"


def test_the_guard_rebuilds_its_memory_from_the_table_and_agrees_with_the_batch_rule() -> None:
    table = {
        series_key("cpu", {"host": "a"}): {"tags": {"host": "a"}},
        series_key("cpu", {"host": "b"}): {"tags": {"host": "b"}},
        series_key("cpux", {"host": "q"}): {"tags": {"host": "q"}},
    }
    guard = LatestGuard(table, limit=3)
    reference = MetricSeries("cpu", [{"host": "a"}, {"host": "b"}])
    for host in ["a", "c", "d", "b", "e", "c"]:
        try:
            expected = admit_series(reference, {"host": host}, 3) or True
        except Exception:
            expected = False
        assert guard.admits({"name": "cpu", "tags": {"host": host}}) is expected, host
    assert guard.rejected == 2
    guard.forget()
    assert guard.series == {}
    assert guard.admits({"name": "cpux", "tags": {"host": "r"}})
