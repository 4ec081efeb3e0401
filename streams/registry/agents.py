"""Registry agents: apply registry events to the global tables; expire leases on the owner.

`registry.apply_events` is the only writer of the registry tables. The eviction timer runs on
every worker but only looks at the partitions that worker owns, and publishes its decisions
(EXPIRE, self-preservation on/off, threshold updates) as events (DESIGN rules 1 and 2).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from streams.registry import api
from streams.registry.events import EVENT_SCHEMA, EVENTS_TOPIC, registry_event
from streams.registry.model import (
    EXPIRE,
    INSTANCE_ACTIONS,
    REGISTRY_KEY,
    RENEW,
    RENEWAL_THRESHOLD_UPDATE,
    SELF_PRESERVATION_OFF,
    SELF_PRESERVATION_ON,
    RegistryIndex,
    add_renewals,
    apply_event,
    choose_evictions,
    expected_clients,
    instance_key,
    lease_expiration_enabled,
    renewal_threshold,
    renewed_status,
    renews_last_minute,
    tombstones_to_purge,
    updated_expected_clients,
    validate_event,
)
from streams.registry.tables import (
    INSTANCES_TABLE,
    LEASES_TABLE,
    STATE_TABLE,
    lease_key,
    partition_key,
)

if TYPE_CHECKING:
    import faust

    from streams.app import Decoded, Runtime

APPLY_EVENTS = "registry.apply_events"
SetCurrent = Callable[["Decoded"], None]
PURGE_EVERY_MS = 30_000
EXPIRE_RESEND_AFTER_S = 10.0
log = logging.getLogger(__name__)


def now_ms() -> int:
    return int(time.time() * 1000)


class Registry:
    """What the agent, the eviction timer and the HTTP views share: tables and lease accounting.

    Reads go through `view` (an in-memory `RegistryIndex` of this worker's copy, rebuilt after
    every table recovery and kept current by local writes and applied changelog records).
    Renewals do not rewrite instance documents: the owner keeps them in memory (`_renewals`)
    and writes them per partition, with the renewal counts, at most every
    `registry_lease_flush_interval_s`.
    """

    def __init__(
        self,
        runtime: Runtime,
        instances: faust.Table,
        state: faust.Table,
        leases: faust.Table | None = None,
    ) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.instances = instances
        self.state = state
        self.leases = leases if leases is not None else runtime.table(LEASES_TABLE)
        self.partitions = runtime.topology.topic(EVENTS_TOPIC).partitions
        self.window_ms = int(self.settings.registry_renewal_rate_window_s * 1000)
        self._expiring: dict[str, float] = {}
        self._purged_at: dict[int, int] = {}
        self._index = RegistryIndex()
        self._stale = True
        self._waiters: dict[str, list[tuple[int, asyncio.Future[bool]]]] = {}
        self._renewals: dict[int, dict[str, int]] = {}
        self._counts: dict[int, dict[int, int]] = defaultdict(dict)
        self._lease_deltas: dict[int, int] = defaultdict(int)
        self._dirty: dict[int, Decoded] = {}
        self._flushed_at: dict[int, float] = {}

    # --- this worker's view -----------------------------------------------------------------

    @property
    def view(self) -> RegistryIndex:
        """The index of this worker's copy; rebuilt from the tables when marked stale."""
        if self._stale:
            self._rebuild()
        return self._index

    def _rebuild(self) -> None:
        index = RegistryIndex()
        for _, renewals in self.leases.items():
            index.renew(renewals)
        for renewals in self._renewals.values():
            index.renew(renewals)
        for key, entry in self.instances.items():
            index.put(key, entry)
        self._index, self._stale = index, False
        for key in list(self._waiters):
            self._wake(key)

    def mark_stale(self) -> None:
        """The tables were recovered (a rebalance): rebuild the index at the next read."""
        self._stale = True

    def on_instances_applied(self, keys: Iterable[str]) -> None:
        """Changelog records of another worker's writes were applied to the instances table."""
        if self._stale:
            return
        for key in keys:
            self._index.put(key, self.instances.get(key))
            self._wake(key)

    def on_leases_applied(self, keys: Iterable[str]) -> None:
        """Another worker's lease snapshots were applied to the leases table."""
        if self._stale:
            return
        for key in keys:
            self._index.renew(self.leases.get(key) or {})

    def _wake(self, key: str) -> None:
        entry = self._index.get(key)
        applied_ms = entry.get("event_ms", 0) if entry is not None else -1
        for since_ms, future in self._waiters.get(key, ()):
            if applied_ms >= since_ms and not future.done():
                future.set_result(True)

    # --- reads ------------------------------------------------------------------------------

    def entries(self) -> list[dict[str, Any]]:
        return list(self.view.entries.values())

    def entry(self, app: str, instance_id: str) -> dict[str, Any] | None:
        return self.view.get(instance_key(app, instance_id))

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

    def lease_marks(self) -> dict[str, int]:
        """Each partition's registers-minus-cancels count, as a threshold update records them.

        The update carries the marks of the moment its expected count was taken: marks read when
        it is applied would also swallow registrations applied in between, losing them.
        """
        return {
            str(state["partition"]): state.get("lease_delta", 0)
            for state in self.partition_states()
        }

    def status(self, now: int | None = None) -> dict[str, Any]:
        """Self-preservation inputs and decision, as the status endpoint shows them."""
        now = now_ms() if now is None else now
        settings = self.settings
        registry = self.state.get(REGISTRY_KEY) or {}
        states = self.partition_states()
        expected = expected_clients(registry, states)
        threshold = renewal_threshold(
            expected,
            settings.registry_expected_renewal_interval_s,
            settings.registry_renewal_percent_threshold,
            settings.registry_renewal_rate_window_s,
        )
        renews = sum(renews_last_minute(s.get("rate"), now, self.window_ms) for s in states)
        enabled = lease_expiration_enabled(settings.registry_self_preservation, threshold, renews)
        return {
            "self_preservation_enabled": settings.registry_self_preservation,
            "self_preservation_active": bool(registry.get("self_preservation_active", False)),
            "lease_expiration_enabled": enabled,
            "expected_clients": expected,
            "renewal_threshold_per_min": threshold,
            "renews_last_min": renews,
            "registered_instances": self.view.live_count(),
            "renewal_percent_threshold": settings.registry_renewal_percent_threshold,
            "renewal_window_s": settings.registry_renewal_rate_window_s,
            "last_threshold_update_ms": registry.get("threshold_updated_ms", 0),
            "owned_partitions": sorted(self.owned_partitions()),
            "ready": self.ready(),
        }

    async def wait_for(self, key: str, since_ms: int) -> bool:
        """Read-your-writes: wait (bounded) until this worker's copy has applied our event."""
        entry = self.view.get(key)
        if entry is not None and entry.get("event_ms", 0) >= since_ms:
            return True
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        waiting = self._waiters.setdefault(key, [])
        waiting.append((since_ms, future))
        try:
            await asyncio.wait_for(future, self.settings.registry_read_your_writes_timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            waiting.remove((since_ms, future))
            if not waiting:
                self._waiters.pop(key, None)

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

    def _store(self, key: str, entry: dict[str, Any] | None) -> None:
        if entry is None:
            del self.instances[key]
        else:
            self.instances[key] = entry
        self.view.put(key, entry)
        self._wake(key)

    def _owner_renewals(self, partition: int) -> dict[str, int]:
        """The owner's renewal map of a partition, seeded from the leases table on first use."""
        renewals = self._renewals.get(partition)
        if renewals is None:
            renewals = dict(self.leases.get(lease_key(partition)) or {})
            self._renewals[partition] = renewals
        return renewals

    def apply_batch(self, batch: Iterable[Decoded], set_current: SetCurrent) -> None:
        """Apply a batch of events: documents at once, renewals and counts in batches."""
        newest: dict[int, tuple[int, Decoded]] = {}
        view = self.view
        for item in batch:
            record = item.record
            partition = item.event.message.partition
            at_ms = record["timestamp_ms"]
            newest[partition] = (max(at_ms, newest.get(partition, (0,))[0]), item)
            if record["action"] not in INSTANCE_ACTIONS:
                set_current(item)
                self._apply_registry_wide(record)
                continue
            key = instance_key(record["app"], record["instance_id"])
            entry = view.get(key)
            if record["action"] == RENEW:
                status = renewed_status(entry)
                if status is None:
                    continue
                if entry is not None and status != entry["instance"]["status"]:
                    applied = apply_event(entry, record, partition)
                    set_current(item)
                    self._store(key, applied.entry)
                self._renewed(partition, key, at_ms, item)
                continue
            applied = apply_event(entry, record, partition)
            if applied.entry is None:
                continue
            set_current(item)
            self._store(key, applied.entry)
            change = (1 if applied.new_lease else 0) - (1 if applied.cancelled else 0)
            if applied.entry.get("deleted"):
                self._owner_renewals(partition).pop(key, None)
            if change or applied.entry.get("deleted"):
                self._lease_deltas[partition] += change
                self._dirty[partition] = item
        self.flush(set_current)
        for partition, (at_ms, item) in newest.items():
            self._purge_tombstones(partition, at_ms, item, set_current)

    def _renewed(self, partition: int, key: str, at_ms: int, item: Decoded) -> None:
        renewals = self._owner_renewals(partition)
        if at_ms > renewals.get(key, 0):
            renewals[key] = at_ms
        self._index.renew({key: at_ms})
        window = at_ms // self.window_ms
        counts = self._counts[partition]
        counts[window] = counts.get(window, 0) + 1
        self._dirty[partition] = item

    def flush(self, set_current: SetCurrent, *, force: bool = False) -> int:
        """Write each dirty partition's renewals and lease accounting, when its interval is up.

        One `leases/<n>` and one `partition/<n>` write per partition per interval, however many
        renewals arrived: the changelogs (and every other worker) see a few records a second.
        Registrations and cancellations (the expected-client count) are written at once, as
        before. Returns how many partitions were written.
        """
        interval = self.settings.registry_lease_flush_interval_s
        clock = time.monotonic()
        written = 0
        for partition, item in list(self._dirty.items()):
            due = clock - self._flushed_at.get(partition, -interval) >= interval
            if not (force or due or partition in self._lease_deltas):
                continue
            del self._dirty[partition]
            self._flushed_at[partition] = clock
            set_current(item)
            self.leases[lease_key(partition)] = dict(self._owner_renewals(partition))
            state = dict(self.state.get(partition_key(partition)) or {"partition": partition})
            counts = self._counts.pop(partition, {})
            if counts:
                state["rate"] = add_renewals(state.get("rate"), counts, self.window_ms)
            state["lease_delta"] = state.get("lease_delta", 0) + self._lease_deltas.pop(
                partition, 0
            )
            self.state[partition_key(partition)] = state
            written += 1
        return written

    def forget_unowned(self, owned: set[int]) -> None:
        """Drop the owner's memory of partitions this worker no longer owns.

        A new owner starts from the last written `leases/<n>`; renewals newer than that write
        (at most one flush interval) are lost, as an unflushed write would be in any store.
        """
        for partition in [p for p in self._renewals if p not in owned]:
            self._renewals.pop(partition, None)
            self._counts.pop(partition, None)
            self._lease_deltas.pop(partition, None)
            self._dirty.pop(partition, None)

    def flush_quiet_partitions(self, set_current: SetCurrent) -> int:
        """The timer's flush: renewals left in memory when a partition's events stopped.

        The agent flushes only when events arrive; this writes what the last batch left (with
        that batch's event as the current one, so the write lands in its partition) and drops
        partitions this worker lost in a rebalance.
        """
        app = self.runtime.app
        if app.rebalancing or app.tables.recovery.in_recovery:
            return 0
        self.forget_unowned(self.owned_partitions())
        return self.flush(set_current)

    def _apply_registry_wide(self, record: dict[str, Any]) -> None:
        registry = dict(self.state.get(REGISTRY_KEY) or {})
        action = record["action"]
        if action in (SELF_PRESERVATION_ON, SELF_PRESERVATION_OFF):
            registry["self_preservation_active"] = action == SELF_PRESERVATION_ON
            registry["self_preservation_changed_ms"] = record["timestamp_ms"]
        elif action == RENEWAL_THRESHOLD_UPDATE and record["self_preservation"] is not None:
            registry["expected_base"] = record["self_preservation"]["expected_clients"]
            marks = record["self_preservation"].get("partition_marks")
            registry["marks"] = self.lease_marks() if marks is None else marks
            registry["threshold_updated_ms"] = record["timestamp_ms"]
        self.state[REGISTRY_KEY] = registry

    def _purge_tombstones(
        self, partition: int, at_ms: int, item: Decoded, set_current: SetCurrent
    ) -> None:
        if at_ms - self._purged_at.get(partition, 0) < PURGE_EVERY_MS:
            return
        self._purged_at[partition] = at_ms
        retention_ms = int(self.settings.registry_delta_retention_s * 1000)
        stale = tombstones_to_purge(self.view.in_partitions([partition]), at_ms, retention_ms)
        if stale:
            set_current(item)
            for key in stale:
                self._store(key, None)

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
        marks = self.lease_marks()
        origin = f"{self.settings.app_id}@{self.settings.web_host}:{self.settings.web_port}"
        if 0 in owned:
            await self._registry_wide_decisions(status, marks, now, origin)
        if not status["lease_expiration_enabled"]:
            return []
        mine = self.view.in_partitions(owned)
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
            self._expiring[key] = monotonic
        # All at once: a burst of ended leases waits one broker round trip, not one per lease.
        await asyncio.gather(
            *(
                self.publish(
                    registry_event(EXPIRE, *key.split("/", 1), timestamp_ms=now, origin=origin)
                )
                for key in chosen
            )
        )
        if chosen:
            log.info("registry: expired %d lease(s): %s", len(chosen), ", ".join(chosen[:10]))
        return chosen

    async def _registry_wide_decisions(
        self, status: dict[str, Any], marks: dict[str, int], now: int, origin: str
    ) -> None:
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
            update = {**snapshot, "expected_clients": expected, "partition_marks": marks}
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


def _changelog_key(event: Any) -> str:
    key = event.key
    if isinstance(key, bytes | bytearray):
        key = json.loads(key)
    return str(key)


def follow_changelog(table: faust.Table, on_applied: Callable[[list[str]], None]) -> None:
    """Call `on_applied(keys)` after Faust applies changelog records (standby or recovery) to
    `table`, and mark the registry's view stale when a table recovery completes.

    Faust has no public hook for applied changelog records; both methods are the ones its
    recovery service calls on the table object, so instance attributes wrap them.
    """
    apply_batch = table.apply_changelog_batch
    recovered = table.on_recovery_completed

    def apply_changelog_batch(batch: Iterable[Any]) -> None:
        events = list(batch)
        apply_batch(events)
        on_applied([_changelog_key(event) for event in events])

    table.apply_changelog_batch = apply_changelog_batch  # type: ignore[method-assign]

    async def on_recovery_completed(active_tps: Any, standby_tps: Any) -> None:
        await recovered(active_tps, standby_tps)
        registry = getattr(table, "_stackstream_registry", None)
        if registry is not None:
            registry.mark_stale()

    table.on_recovery_completed = on_recovery_completed  # type: ignore[method-assign]


def register(runtime: Runtime) -> None:
    from streams.app import as_current_event

    instances = runtime.table(INSTANCES_TABLE)
    state = runtime.table(STATE_TABLE)
    leases = runtime.table(LEASES_TABLE)
    for table in (instances, state, leases):
        # Faust applies standby changelog records in buffers of 1000 by default, which would
        # hold other workers' changes back indefinitely; a global table must apply each one.
        # Renewals are written in batches (Registry.flush), so these records are few.
        table.recovery_buffer_size = 1
        table.standby_buffer_size = 1
    registry = Registry(runtime, instances, state, leases)
    for table in (instances, state, leases):
        table._stackstream_registry = registry  # type: ignore[attr-defined]
    follow_changelog(instances, registry.on_instances_applied)
    follow_changelog(leases, registry.on_leases_applied)
    follow_changelog(state, lambda keys: None)
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
            registry.flush_quiet_partitions(as_current_event)
            await registry.evict_once()
        except Exception:
            log.exception("registry: eviction run failed; the next run retries")

    api.register(runtime, registry)
