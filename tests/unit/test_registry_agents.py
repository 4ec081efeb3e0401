"""The registry's apply agent in Faust's test context: events in, table entries out, no Kafka."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from streams.app import Runtime, as_current_event
from streams.registry.agents import APPLY_EVENTS, Registry
from streams.registry.events import EVENT_SCHEMA, registry_event
from streams.registry.model import (
    CANCEL,
    REGISTER,
    REGISTRY_KEY,
    RENEW,
    RENEWAL_THRESHOLD_UPDATE,
    SELF_PRESERVATION_ON,
    STATUS_OVERRIDE,
    instance_key,
)
from streams.registry.tables import partition_key
from streams.settings import Settings
from tests.unit.test_registry_model import T0, instance

KEY = instance_key("ORDERS", "10.0.0.1:orders:8080")


@pytest.fixture
def runtime(unit_settings: Settings) -> Runtime:
    # Renewal accounting written after every batch (interval 0), so assertions need no timing.
    update = {"domains": "bus,registry", "registry_lease_flush_interval_s": 0.0}
    runtime = Runtime(unit_settings.model_copy(update=update))
    runtime.app.finalize()
    runtime.app.flow_control.resume()
    sent: list[tuple[str, Any, str, dict]] = []

    async def capture(topic: str, key: Any, schema: str, record: dict, **options: Any) -> None:
        sent.append((topic, key, schema, record))

    runtime.send = capture  # type: ignore[method-assign]
    runtime.context["sent"] = sent
    return runtime


def event(action: str, at: int, **fields: Any) -> dict[str, Any]:
    return registry_event(action, "ORDERS", "10.0.0.1:orders:8080", timestamp_ms=at, **fields)


async def settle(check: Callable[[], bool]) -> None:
    for _ in range(100):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the agent did not apply the events in time")


async def test_events_become_entries_lease_accounting_and_dead_letters(runtime: Runtime) -> None:
    registry: Registry = runtime.context["registry"]
    agent = runtime.app.agents[APPLY_EVENTS]
    encode = runtime.codec.encode
    async with agent.test_context() as context:
        await context.put(
            encode(EVENT_SCHEMA, event(REGISTER, T0, instance=instance())),
            key=KEY.encode(),
            partition=2,
        )
        for step in (1, 2, 3):
            await context.put(
                encode(EVENT_SCHEMA, event(RENEW, T0 + step * 1000)), key=KEY.encode(), partition=2
            )
        await context.put(
            encode(EVENT_SCHEMA, event(STATUS_OVERRIDE, T0 + 4000, overridden_status="DOWN")),
            key=KEY.encode(),
            partition=2,
        )
        await context.put(b"not a registry event", key=KEY.encode(), partition=2)
        await context.put(
            encode(EVENT_SCHEMA, registry_event(REGISTER, "ORDERS", "x-1", timestamp_ms=T0)),
            key=b"ORDERS/x-1",
            partition=1,
        )
        await context.put(
            encode(EVENT_SCHEMA, registry_event(SELF_PRESERVATION_ON, timestamp_ms=T0)),
            key=REGISTRY_KEY.encode(),
            partition=0,
        )
        await settle(lambda: len(runtime.context["sent"]) == 2 and REGISTRY_KEY in registry.state)

    entry = registry.instances[KEY]
    assert entry["partition"] == 2
    assert entry["instance"]["status"] == "DOWN" and entry["override"] == "DOWN"
    assert entry["instance"]["lease_info"]["last_renewal_timestamp_ms"] == T0 + 3000
    assert entry["action_type"] == "MODIFIED"
    assert "ORDERS/x-1" not in registry.instances, "a register without a document is rejected"

    accounting = registry.state[partition_key(2)]
    assert accounting["lease_delta"] == 1
    assert accounting["rate"]["current"] == 3, "three renewals counted, the register excluded"
    assert registry.state[REGISTRY_KEY]["self_preservation_active"] is True

    dead = runtime.context["sent"]
    assert [entry[0] for entry in dead] == ["bus.deadletters"] * 2
    assert [entry[3]["error_type"] for entry in dead] == ["decode", "validation"]
    assert "instance" in dead[1][3]["reason"]
    assert runtime.liveness[APPLY_EVENTS].snapshot()["rejected"] == 2

    async with agent.test_context() as context:
        await context.put(
            encode(EVENT_SCHEMA, event(CANCEL, T0 + 5000)), key=KEY.encode(), partition=2
        )
        await settle(lambda: registry.instances[KEY].get("deleted") is True)
    assert registry.instances[KEY]["action_type"] == "DELETED"
    assert registry.state[partition_key(2)]["lease_delta"] == 0
    assert registry.status(T0 + 5000)["registered_instances"] == 0


async def test_renewals_stay_out_of_the_instance_table_and_are_written_in_batches(
    unit_settings: Settings,
) -> None:
    settings = unit_settings.model_copy(
        update={"domains": "bus,registry", "registry_lease_flush_interval_s": 60.0}
    )
    runtime = Runtime(settings)
    runtime.app.finalize()
    runtime.app.flow_control.resume()
    registry: Registry = runtime.context["registry"]
    agent = runtime.app.agents[APPLY_EVENTS]
    encode = runtime.codec.encode
    writes: list[str] = []
    for table in (registry.instances, registry.leases, registry.state):
        table.on_key_set = lambda key, value, name=table.name: writes.append(f"{name}:{key}")  # type: ignore[method-assign]
    async with agent.test_context() as context:
        await context.put(
            encode(EVENT_SCHEMA, event(REGISTER, T0, instance=instance())),
            key=KEY.encode(),
            partition=2,
        )
        await settle(lambda: KEY in registry.instances)
        for step in range(1, 51):
            await context.put(
                encode(EVENT_SCHEMA, event(RENEW, T0 + step * 100)), key=KEY.encode(), partition=2
            )
        await settle(
            lambda: (
                registry.entry("ORDERS", KEY.split("/")[1]) is not None
                and registry.entry("ORDERS", KEY.split("/")[1])["instance"]["lease_info"][
                    "last_renewal_timestamp_ms"
                ]
                == T0 + 5000
            )
        )

    assert writes.count(f"registry-instances:{KEY}") == 1, "only the register wrote the document"
    stored = registry.instances[KEY]["instance"]["lease_info"]["last_renewal_timestamp_ms"]
    assert stored == T0, "renewals did not rewrite the document"
    assert (
        registry.view.get(KEY)["instance"]["lease_info"]["last_renewal_timestamp_ms"] == T0 + 5000
    )
    assert writes.count("registry-leases:leases/2") == 1, "the first flush is immediate"
    assert registry.flush(as_current_event, force=True) == 1, (
        "the rest wait for the interval; forced here"
    )
    assert registry.leases["leases/2"] == {KEY: T0 + 5000}
    assert registry.state[partition_key(2)]["rate"]["current"] == 50
    assert registry.state[partition_key(2)]["lease_delta"] == 1
    assert len(writes) <= 6, f"50 renewals cost a handful of table writes, not 50: {writes}"

    rebuilt = Registry(runtime, registry.instances, registry.state, registry.leases)
    assert rebuilt.view.get(KEY)["instance"]["lease_info"]["last_renewal_timestamp_ms"] == T0 + 5000


async def test_a_write_waits_for_its_event_in_the_view(runtime: Runtime) -> None:
    registry: Registry = runtime.context["registry"]
    waiting = asyncio.create_task(registry.wait_for(KEY, T0))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    registry.view.put(KEY, {"instance": instance(), "event_ms": T0, "partition": 0})
    registry._wake(KEY)
    assert await waiting is True
    assert registry._waiters == {}
    late = await registry.wait_for("ORDERS/never", T0)
    assert late is False


async def test_a_threshold_update_keeps_registrations_applied_after_its_decision(
    runtime: Runtime,
) -> None:
    """The update's expected count was taken before two registrations; applying it later must
    not swallow them (the self-preservation flake: expected clients stuck below the truth)."""
    registry: Registry = runtime.context["registry"]
    agent = runtime.app.agents[APPLY_EVENTS]
    encode = runtime.codec.encode
    decided = registry_event(
        RENEWAL_THRESHOLD_UPDATE,
        timestamp_ms=T0,
        self_preservation={
            "enabled": True,
            "expected_clients": 0,
            "threshold_per_min": 0,
            "renews_last_min": 0,
            "partition_marks": registry.lease_marks(),
        },
    )
    async with agent.test_context() as context:
        for partition, name in ((1, "a-1"), (2, "a-2")):
            await context.put(
                encode(
                    EVENT_SCHEMA,
                    registry_event(
                        REGISTER,
                        "ORDERS",
                        name,
                        timestamp_ms=T0,
                        instance=instance(instance_id=name),
                    ),
                ),
                key=f"ORDERS/{name}".encode(),
                partition=partition,
            )
        await settle(lambda: registry.status(T0)["expected_clients"] == 2)
        await context.put(encode(EVENT_SCHEMA, decided), key=REGISTRY_KEY.encode(), partition=0)
        await settle(lambda: "expected_base" in (registry.state.get(REGISTRY_KEY) or {}))

    assert registry.status(T0)["expected_clients"] == 2
