"""Registry agents: apply registry events to the global tables; expire leases on the owner.

`registry.apply_events` is the only writer of the registry tables. The eviction timer runs on
every worker but only looks at the partitions that worker owns, and publishes its decisions
(EXPIRE, self-preservation on/off, threshold updates) as events (DESIGN rules 1 and 2).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from streams.registry import api
from streams.registry.events import EVENT_SCHEMA, EVENTS_TOPIC, registry_event
from streams.registry.model import (
    EXPIRE,
    INSTANCE_ACTIONS,
    REGISTRY_KEY,
    RENEWAL_THRESHOLD_UPDATE,
    SELF_PRESERVATION_OFF,
    SELF_PRESERVATION_ON,
    apply_event,
    choose_evictions,
    count_renewal,
    expected_clients,
    instance_key,
    is_live,
    lease_expiration_enabled,
    renewal_threshold,
    renews_last_minute,
    tombstones_to_purge,
    updated_expected_clients,
    validate_event,
)
from streams.registry.tables import INSTANCES_TABLE, STATE_TABLE, partition_key

if TYPE_CHECKING:
    import faust

    from streams.app import Decoded, Runtime

APPLY_EVENTS = "registry.apply_events"
PURGE_EVERY_MS = 30_000
EXPIRE_RESEND_AFTER_S = 10.0
log = logging.getLogger(__name__)


def now_ms() -> int:
    return int(time.time() * 1000)


class Registry:
    """What the agent, the eviction timer and the HTTP views share: tables and lease accounting."""

    def __init__(self, runtime: Runtime, instances: faust.Table, state: faust.Table) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.instances = instances
        self.state = state
        self.partitions = runtime.topology.topic(EVENTS_TOPIC).partitions
        self.window_ms = int(self.settings.registry_renewal_rate_window_s * 1000)
        self._expiring: dict[str, float] = {}
        self._purged_at: dict[int, int] = {}

    # --- reads ------------------------------------------------------------------------------

    def entries(self) -> list[dict[str, Any]]:
        return [entry for _, entry in self.instances.items()]

    def entry(self, app: str, instance_id: str) -> dict[str, Any] | None:
        return self.instances.get(instance_key(app, instance_id))

    def owned_partitions(self) -> set[int]:
        topic = self.runtime.kafka_topic_name(EVENTS_TOPIC)
        return {
            tp.partition for tp in self.runtime.app.assignor.assigned_actives() if tp.topic == topic
        }

    def ready(self) -> bool:
        """Whether this worker can take a write now: partitions assigned, tables recovered.

        Between a rebalance and the end of table recovery Faust pauses the source partitions and
        has not resumed the global tables' standby partitions, so a write would be applied (and
        seen here) only seconds later; writes are answered 503 with Retry-After instead.
        """
        app = self.runtime.app
        recovery = app.tables.recovery
        return not app.rebalancing and not recovery.in_recovery and recovery.completed.is_set()

    def partition_states(self) -> list[dict[str, Any]]:
        states = (self.state.get(partition_key(p)) for p in range(self.partitions))
        return [state for state in states if state is not None]

    def status(self, now: int | None = None) -> dict[str, Any]:
        """Self-preservation inputs and decision, as the status endpoint shows them."""
        now = now_ms() if now is None else now
        settings = self.settings
        registry = self.state.get(REGISTRY_KEY) or {}
        expected = expected_clients(registry, self.partition_states())
        threshold = renewal_threshold(
            expected,
            settings.registry_expected_renewal_interval_s,
            settings.registry_renewal_percent_threshold,
            settings.registry_renewal_rate_window_s,
        )
        renews = sum(
            renews_last_minute(s.get("rate"), now, self.window_ms) for s in self.partition_states()
        )
        enabled = lease_expiration_enabled(settings.registry_self_preservation, threshold, renews)
        return {
            "self_preservation_enabled": settings.registry_self_preservation,
            "self_preservation_active": bool(registry.get("self_preservation_active", False)),
            "lease_expiration_enabled": enabled,
            "expected_clients": expected,
            "renewal_threshold_per_min": threshold,
            "renews_last_min": renews,
            "registered_instances": sum(1 for e in self.entries() if is_live(e)),
            "renewal_percent_threshold": settings.registry_renewal_percent_threshold,
            "renewal_window_s": settings.registry_renewal_rate_window_s,
            "last_threshold_update_ms": registry.get("threshold_updated_ms", 0),
            "owned_partitions": sorted(self.owned_partitions()),
            "ready": self.ready(),
        }

    async def wait_for(self, key: str, since_ms: int) -> bool:
        """Read-your-writes: wait (bounded) until this worker's table has applied our event."""
        deadline = time.monotonic() + self.settings.registry_read_your_writes_timeout_s
        while True:
            entry = self.instances.get(key)
            if entry is not None and entry.get("event_ms", 0) >= since_ms:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)

    # --- writes -----------------------------------------------------------------------------

    async def publish(self, record: dict[str, Any], *, partition: int | None = None) -> None:
        """Produce one registry event and wait for the broker's ack."""
        if partition is None:
            key = instance_key(record["app"], record["instance_id"])
            await self.runtime.send(EVENTS_TOPIC, key, EVENT_SCHEMA, record)
            return
        value = self.runtime.codec.encode(EVENT_SCHEMA, record)
        topic = self.runtime.topic(EVENTS_TOPIC)
        future = await topic.send(key=REGISTRY_KEY.encode(), value=value, partition=partition)
        await future

    # --- the apply agent's work -------------------------------------------------------------

    def apply_batch(self, batch: Iterable[Decoded], set_current: Any) -> None:
        """Apply a batch of events to the tables, each write in its event's partition."""
        renewals: dict[int, tuple[int, int, Decoded]] = {}
        lease_changes: dict[int, tuple[int, Decoded]] = {}
        newest: dict[int, tuple[int, Decoded]] = {}
        for item in batch:
            record = item.record
            partition = item.event.message.partition
            newest[partition] = (max(record["timestamp_ms"], newest.get(partition, (0,))[0]), item)
            if record["action"] not in INSTANCE_ACTIONS:
                set_current(item)
                self._apply_registry_wide(record)
                continue
            key = instance_key(record["app"], record["instance_id"])
            applied = apply_event(self.instances.get(key), record, partition)
            if applied.entry is None:
                continue
            set_current(item)
            self.instances[key] = applied.entry
            if applied.renewed:
                count, _, _ = renewals.get(partition, (0, 0, item))
                renewals[partition] = (count + 1, record["timestamp_ms"], item)
            change = (1 if applied.new_lease else 0) - (1 if applied.cancelled else 0)
            if change:
                total, _ = lease_changes.get(partition, (0, item))
                lease_changes[partition] = (total + change, item)
        for partition in set(renewals) | set(lease_changes):
            count, at_ms, renew_item = renewals.get(partition, (0, 0, None))
            change, change_item = lease_changes.get(partition, (0, None))
            state = dict(self.state.get(partition_key(partition)) or {"partition": partition})
            if count:
                state["rate"] = count_renewal(state.get("rate"), at_ms, count, self.window_ms)
            state["lease_delta"] = state.get("lease_delta", 0) + change
            set_current(renew_item or change_item)
            self.state[partition_key(partition)] = state
        for partition, (at_ms, item) in newest.items():
            self._purge_tombstones(partition, at_ms, item, set_current)

    def _apply_registry_wide(self, record: dict[str, Any]) -> None:
        registry = dict(self.state.get(REGISTRY_KEY) or {})
        action = record["action"]
        if action in (SELF_PRESERVATION_ON, SELF_PRESERVATION_OFF):
            registry["self_preservation_active"] = action == SELF_PRESERVATION_ON
            registry["self_preservation_changed_ms"] = record["timestamp_ms"]
        elif action == RENEWAL_THRESHOLD_UPDATE and record["self_preservation"] is not None:
            registry["expected_base"] = record["self_preservation"]["expected_clients"]
            registry["marks"] = {
                str(state["partition"]): state.get("lease_delta", 0)
                for state in self.partition_states()
            }
            registry["threshold_updated_ms"] = record["timestamp_ms"]
        self.state[REGISTRY_KEY] = registry

    def _purge_tombstones(
        self, partition: int, at_ms: int, item: Decoded, set_current: Any
    ) -> None:
        if at_ms - self._purged_at.get(partition, 0) < PURGE_EVERY_MS:
            return
        self._purged_at[partition] = at_ms
        retention_ms = int(self.settings.registry_delta_retention_s * 1000)
        mine = ((k, e) for k, e in self.instances.items() if e.get("partition") == partition)
        stale = tombstones_to_purge(mine, at_ms, retention_ms)
        if stale:
            set_current(item)
            for key in stale:
                del self.instances[key]

    # --- the owner's decisions --------------------------------------------------------------

    async def evict_once(self) -> list[str]:
        """One eviction run over this worker's partitions; returns the keys it expired."""
        app = self.runtime.app
        if app.rebalancing or app.tables.recovery.in_recovery:
            return []
        owned = self.owned_partitions()
        if not owned:
            return []
        now = now_ms()
        status = self.status(now)
        origin = f"{self.settings.app_id}@{self.settings.web_host}:{self.settings.web_port}"
        if 0 in owned:
            await self._registry_wide_decisions(status, now, origin)
        if not status["lease_expiration_enabled"]:
            return []
        mine = [(k, e) for k, e in self.instances.items() if e.get("partition") in owned]
        monotonic = time.monotonic()
        self._expiring = {
            k: at for k, at in self._expiring.items() if monotonic - at < EXPIRE_RESEND_AFTER_S
        }
        chosen = [
            key
            for key in choose_evictions(mine, now, self.settings.registry_renewal_percent_threshold)
            if key not in self._expiring
        ]
        for key in chosen:
            app_name, _, instance_id = key.partition("/")
            self._expiring[key] = monotonic
            await self.publish(
                registry_event(EXPIRE, app_name, instance_id, timestamp_ms=now, origin=origin)
            )
        if chosen:
            log.info("registry: expired %d lease(s): %s", len(chosen), ", ".join(chosen[:10]))
        return chosen

    async def _registry_wide_decisions(self, status: dict[str, Any], now: int, origin: str) -> None:
        settings = self.settings
        registry = self.state.get(REGISTRY_KEY) or {}
        snapshot = {
            "enabled": settings.registry_self_preservation,
            "expected_clients": status["expected_clients"],
            "threshold_per_min": status["renewal_threshold_per_min"],
            "renews_last_min": status["renews_last_min"],
        }
        active = settings.registry_self_preservation and not status["lease_expiration_enabled"]
        if active != bool(registry.get("self_preservation_active", False)):
            action = SELF_PRESERVATION_ON if active else SELF_PRESERVATION_OFF
            await self.publish(
                registry_event(action, timestamp_ms=now, origin=origin, self_preservation=snapshot),
                partition=0,
            )
        interval_ms = settings.registry_threshold_update_interval_s * 1000
        if now - registry.get("threshold_updated_ms", 0) >= interval_ms:
            expected = updated_expected_clients(
                status["expected_clients"],
                status["registered_instances"],
                settings.registry_renewal_percent_threshold,
                settings.registry_self_preservation,
            )
            update = {**snapshot, "expected_clients": expected}
            update["threshold_per_min"] = renewal_threshold(
                expected,
                settings.registry_expected_renewal_interval_s,
                settings.registry_renewal_percent_threshold,
                settings.registry_renewal_rate_window_s,
            )
            await self.publish(
                registry_event(
                    RENEWAL_THRESHOLD_UPDATE,
                    timestamp_ms=now,
                    origin=origin,
                    self_preservation=update,
                ),
                partition=0,
            )


def register(runtime: Runtime) -> None:
    from streams.app import as_current_event

    instances = runtime.table(INSTANCES_TABLE)
    state = runtime.table(STATE_TABLE)
    for table in (instances, state):
        # Faust applies standby changelog records in buffers of 1000 by default, which would
        # hold other workers' changes back indefinitely; a global table must apply each one.
        table.recovery_buffer_size = 1
        table.standby_buffer_size = 1
    registry = Registry(runtime, instances, state)
    runtime.context["registry"] = registry
    events = runtime.topic(EVENTS_TOPIC)

    @runtime.app.agent(events, name=APPLY_EVENTS)
    async def apply_events(stream):  # type: ignore[no-untyped-def]
        async for batch in runtime.decoded_batches(
            stream, APPLY_EVENTS, EVENT_SCHEMA, validate=validate_event, within_seconds=0.01
        ):
            registry.apply_batch(batch, as_current_event)

    @runtime.app.timer(interval=runtime.settings.registry_eviction_interval_s)
    async def expire_leases() -> None:
        try:
            await registry.evict_once()
        except Exception:
            log.exception("registry: eviction run failed; the next run retries")

    api.register(runtime, registry)
