"""The latest-point agent: the cardinality guard (refused series never show as latest) and
deletes from `metrics.deletes` (deleted series leave the table; later points survive)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.app import Runtime
from streams.metrics.agents import TRACK_LATEST, LatestGuard
from streams.metrics.deletes import latest_changes
from streams.metrics.model import (
    EARLIEST_MS,
    LATEST_MS,
    MetricSeries,
    admit_series,
    hidden_entry,
    is_listed,
    latest_entry,
    newest,
    series_key,
)
from streams.settings import Settings
from tests.faust_context import put_on
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
    points = runtime.kafka_topic_name("metrics.points")
    hosts = ["a", "b", "c", "a", "d", "b"]
    async with agent.test_context() as context:
        for index, host in enumerate(hosts):
            record = point(
                tags={"host": host}, value=float(index), timestamp_ms=1_700_000_000_000 + index
            )
            await put_on(context, points, encode(POINT, record), key=b"cpu")
        mem = point(name="mem", tags={"host": "z"})
        await put_on(context, points, encode(POINT, mem), key=b"mem")
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


# --- deletes ---------------------------------------------------------------------------------

DELETE = "stackstream.metrics.MetricDelete"
T = 1_700_000_000_000


def delete(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "delete_id": "d1",
        "metric": "cpu",
        "start_ms": T,
        "end_ms": T + 1000,
        "tags": {},
        "whole_metric": False,
        "requested_ms": T + 10_000,
    }
    record.update(overrides)
    return record


def entry(host: str, ts: int, accepted: int, name: str = "cpu") -> tuple[str, dict[str, Any]]:
    tags = {"host": host}
    return series_key(name, tags), latest_entry(
        point(name=name, tags=tags, timestamp_ms=ts), accepted
    )


def test_a_range_delete_hides_matching_entries_whose_newest_point_it_covers() -> None:
    table = dict(
        [
            entry("a", T + 500, T + 1),  # matches, in range, stored before the request: hidden
            entry("b", T + 500, T + 2),  # filtered out by the tag filter
            entry("c", T + 2000, T + 3),  # newest point after the range
            entry("d", T + 500, T + 10_001),  # accepted after the request: survives
            entry("e", T + 1000, T + 10_000),  # end and request are inclusive
            entry("a", T + 500, T + 1, name="mem"),  # another metric
        ]
    )
    changes = latest_changes(delete(tags={"host": ["a", "c", "d", "e"]}), table.items())
    assert sorted(changes.hidden) == [series_key("cpu", {"host": h}) for h in ("a", "e")]
    assert changes.dropped == ()
    hidden = changes.hidden[series_key("cpu", {"host": "a"})]
    assert hidden == {
        "name": "cpu",
        "tags": {"host": "a"},
        "accepted_ms": T + 1,
        "deleted_ms": T + 10_000,
    }
    assert not is_listed(hidden) and is_listed(table[series_key("cpu", {"host": "a"})])
    table.update(changes.hidden)
    assert not latest_changes(delete(tags={"host": ["a", "c", "d", "e"]}), table.items())
    # A hidden series is replaced by its next point, whatever its timestamp.
    assert newest(hidden, point(timestamp_ms=T - 10**9))


def test_a_whole_metric_delete_drops_every_series_stored_before_it_hidden_or_not() -> None:
    table = dict(
        [
            entry("a", T + 500, T + 1),
            entry("b", 2_100_000_000_000, T + 2),
            entry("c", T + 500, T + 10_001),  # accepted after the request: survives
            entry("a", T + 500, T + 1, name="mem"),
        ]
    )
    table[series_key("cpu", {"host": "h"})] = hidden_entry(entry("h", T, T)[1], T + 5)
    old = latest_entry(point(tags={"host": "o"}))  # written before accepted_ms was recorded
    old.pop("accepted_ms")
    table[series_key("cpu", {"host": "o"})] = old
    whole = delete(whole_metric=True, start_ms=EARLIEST_MS, end_ms=LATEST_MS)
    changes = latest_changes(whole, table.items())
    assert changes.hidden == {}
    assert changes.dropped == tuple(
        sorted(series_key("cpu", {"host": h}) for h in ("a", "b", "h", "o"))
    )


def test_an_entry_of_a_metric_whose_name_extends_the_deleted_one_is_not_touched() -> None:
    table = dict([entry("a", T + 500, T + 1, name="cpu|x")])
    assert not latest_changes(delete(whole_metric=True, metric="cpu"), table.items())


def _apply(table: dict[str, dict[str, Any]], changes: Any) -> None:
    table.update(changes.hidden)
    for key in changes.dropped:
        del table[key]


hosts = st.sampled_from(["a", "b", "c"])
points_st = st.lists(
    st.tuples(
        st.sampled_from(["cpu", "mem"]), hosts, st.integers(0, 20), st.integers(0, 20)
    ),  # metric, host, event time offset, accepted time offset
    max_size=25,
)


@settings(max_examples=200, deadline=None)
@given(
    before=points_st,
    after=points_st,
    metric=st.sampled_from(["cpu", "mem"]),
    filter_hosts=st.none() | st.lists(hosts, min_size=1, unique=True),
    bounds=st.tuples(st.integers(0, 20), st.integers(0, 20)).map(sorted),
    requested=st.integers(0, 20),
    whole=st.booleans(),
)
def test_deletes_remove_exactly_what_was_stored_before_them_in_range(
    before: list,
    after: list,
    metric: str,
    filter_hosts: Any,
    bounds: list,
    requested: int,
    whole: bool,
) -> None:
    """Points as the agent folds them, one delete, more points: the listed entries are the
    newest points of each series minus those the delete covers and that came before it."""

    def fold(table: dict[str, dict[str, Any]], points: list) -> None:
        for name, host, ts, accepted in points:
            candidate = point(name=name, tags={"host": host}, timestamp_ms=T + ts)
            key = series_key(name, {"host": host})
            if newest(table.get(key), candidate):
                table[key] = latest_entry(candidate, T + accepted)

    record = delete(
        metric=metric,
        start_ms=T + bounds[0],
        end_ms=T + bounds[1],
        tags={} if filter_hosts is None or whole else {"host": filter_hosts},
        whole_metric=whole,
        requested_ms=T + requested,
    )
    table: dict[str, dict[str, Any]] = {}
    fold(table, before)
    listed_before = {k: v for k, v in table.items() if is_listed(v)}
    changes = latest_changes(record, list(table.items()))
    _apply(table, changes)

    def covered(value: dict[str, Any]) -> bool:
        return (
            value["name"] == metric
            and value["accepted_ms"] <= record["requested_ms"]
            and (
                whole
                or (
                    (filter_hosts is None or value["tags"]["host"] in filter_hosts)
                    and record["start_ms"] <= value["timestamp_ms"] <= record["end_ms"]
                )
            )
        )

    listed_after = {k: v for k, v in table.items() if is_listed(v)}
    assert listed_after == {k: v for k, v in listed_before.items() if not covered(v)}
    # Whole-metric deletes drop keys (the series count starts again); range deletes keep them.
    assert set(table) == (
        {k for k, v in listed_before.items() if not covered(v)} if whole else set(listed_before)
    )
    # Applying the same delete again changes nothing.
    assert not latest_changes(record, list(table.items()))
    # Points arriving after the request survive a replay of the delete and are listed if newest.
    late = [(n, h, ts, requested + 1 + accepted % 5) for n, h, ts, accepted in after]
    fold(table, late)
    expected = dict(table)
    _apply(table, latest_changes(record, list(table.items())))
    for name, host, _, _ in late:
        key = series_key(name, {"host": host})
        assert key in table and is_listed(table[key]) and table[key] == expected[key]


async def test_the_agent_applies_deletes_in_order_in_the_delete_partition(runtime: Runtime) -> None:
    """Points and deletes on one partition; table writes of a delete go to its partition; the
    guard keeps counting a range-deleted series and forgets a deleted metric; bad deletes are
    dead-lettered by this agent."""
    agent = runtime.app.agents[TRACK_LATEST]
    table = runtime.table("metrics.latest")
    encode = runtime.codec.encode
    points = runtime.kafka_topic_name("metrics.points")
    deletes = runtime.kafka_topic_name("metrics.deletes")
    writes: list[tuple[int | None, str, Any]] = []
    send_changelog = table.send_changelog

    def record_changelog(partition: int | None, key: Any, value: Any, *args: Any, **kw: Any) -> Any:
        writes.append((partition, key, value))
        return send_changelog(partition, key, value, *args, **kw)

    table.send_changelog = record_changelog  # type: ignore[method-assign]
    at = 1_800_000_000.0  # seconds: the Kafka timestamps of the records
    requested = int(at * 1000) + 50
    key_a, key_b = series_key("cpu", {"host": "a"}), series_key("cpu", {"host": "b"})
    key_z = series_key("mem", {"host": "z"})

    async def put_point(name: str, host: str, ts: int, when: float, partition: int) -> None:
        record = point(name=name, tags={"host": host}, timestamp_ms=ts, value=float(ts % 1000))
        await put_on(context, points, encode(POINT, record), key=name.encode(),
                     partition=partition, timestamp=when)  # fmt: skip

    async def settle(check: Any) -> None:
        for _ in range(100):
            if check():
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the agent did not get there")

    async with agent.test_context() as context:
        await put_point("cpu", "a", T + 500, at, 3)
        await put_point("cpu", "b", T + 100, at, 3)
        await put_point("mem", "z", T, at, 1)
        # Accepted after the request, read before the delete: stays.
        await put_point("cpu", "b", T + 600, at + 1, 3)
        await settle(lambda: key_b in table and table[key_b]["timestamp_ms"] == T + 600)
        await put_on(context, deletes, b"not a delete", key=b"cpu", partition=3)
        range_delete = delete(tags={"host": ["a", "b"]}, requested_ms=requested)
        await put_on(context, deletes, encode(DELETE, range_delete), key=b"cpu", partition=3)
        # In the same batch, a point of another partition: the delete's writes stay on 3.
        await put_point("mem", "y", T, at, 1)
        await settle(lambda: not is_listed(table[key_a]))
        assert table[key_b]["timestamp_ms"] == T + 600
        assert [(p, k) for p, k, v in writes if k == key_a][-1] == (3, key_a)
        # The guard (limit 2) still counts the hidden series: a third one is refused.
        await put_point("cpu", "c", T + 700, at + 2, 3)
        whole = delete(
            delete_id="d2",
            metric="mem",
            whole_metric=True,
            start_ms=EARLIEST_MS,
            end_ms=LATEST_MS,
            requested_ms=requested,
        )
        await put_on(context, deletes, encode(DELETE, whole), key=b"mem", partition=1)
        await settle(lambda: key_z not in table)
        assert [(p, k, v) for p, k, v in writes if k == key_z][-1] == (1, key_z, None)
        assert series_key("cpu", {"host": "c"}) not in table
        # A later point of the hidden series is listed again.
        await put_point("cpu", "a", T + 400, at + 3, 3)
        await settle(lambda: is_listed(table[key_a]))
    assert table[key_a]["timestamp_ms"] == T + 400
    assert table[key_a]["accepted_ms"] == round((at + 3) * 1000)
    assert series_key("mem", {"host": "y"}) not in table, "accepted before the whole delete"
    dead = runtime.context["sent"]
    assert len(dead) == 1 and dead[0][0] == "bus.deadletters"
    letter = dead[0][1]
    assert (letter["agent"], letter["source_topic"], letter["error_type"]) == (
        TRACK_LATEST,
        "metrics.deletes",
        "decode",
    )
    assert runtime.liveness[TRACK_LATEST].snapshot()["rejected"] == 1
