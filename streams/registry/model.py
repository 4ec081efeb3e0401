"""The registry's rules, as pure functions: Eureka's lease state machine and its read views.

An *entry* is what the instances table holds per `APP/ID` key: the instance document as Eureka
would return it (`instance`, an `InstanceInfo` record), the status override Eureka keeps beside
the lease (`override`), the last delta-visible change (`action_type`, `changed_ms`), whether the
lease is gone (`deleted`: kept as a tombstone while the delta feed still needs it) and the
partition that owns the key. No Faust, Kafka or HTTP here.
"""

from __future__ import annotations

import copy
import itertools
import random
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from streams.errors import RecordRejected, StackstreamError

STATUSES = ("UP", "DOWN", "STARTING", "OUT_OF_SERVICE", "UNKNOWN")
REGISTER = "REGISTER"
RENEW = "RENEW"
CANCEL = "CANCEL"
STATUS_OVERRIDE = "STATUS_OVERRIDE"
DELETE_STATUS_OVERRIDE = "DELETE_STATUS_OVERRIDE"
METADATA = "METADATA"
EXPIRE = "EXPIRE"
SELF_PRESERVATION_ON = "SELF_PRESERVATION_ON"
SELF_PRESERVATION_OFF = "SELF_PRESERVATION_OFF"
RENEWAL_THRESHOLD_UPDATE = "RENEWAL_THRESHOLD_UPDATE"
INSTANCE_ACTIONS = (
    REGISTER,
    RENEW,
    CANCEL,
    STATUS_OVERRIDE,
    DELETE_STATUS_OVERRIDE,
    METADATA,
    EXPIRE,
)
REGISTRY_ACTIONS = (SELF_PRESERVATION_ON, SELF_PRESERVATION_OFF, RENEWAL_THRESHOLD_UPDATE)
ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"
DATA_CENTER_NAMES = ("Netflix", "Amazon", "MyOwn")
MAX_LEASE_SECONDS = 86_400
REGISTRY_KEY = "_registry"


class InvalidRegistration(StackstreamError):
    """A register body Eureka would answer with 400; `reason` is Eureka's own text."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


def instance_key(app: str, instance_id: str) -> str:
    """The table and topic key of one instance: `APP/ID` (app upper-cased as Eureka does)."""
    return f"{app.upper()}/{instance_id}"


# --- validation ------------------------------------------------------------------------------


def validate_instance(instance: Mapping[str, Any], path_app: str) -> None:
    """Eureka's register checks (ApplicationResource.addInstance), then our lease sanity checks."""
    checks = (
        ("instanceId", instance.get("instance_id"), "Missing instanceId"),
        ("hostName", instance.get("host_name"), "Missing hostname"),
        ("ipAddr", instance.get("ip_addr"), "Missing ip address"),
        ("app", instance.get("app"), "Missing appName"),
    )
    for field, value, reason in checks:
        if not value or not str(value).strip():
            raise InvalidRegistration(field, reason)
    expected = path_app.upper()
    if instance["app"] != expected:
        raise InvalidRegistration(
            "app", f"Mismatched appName, expecting {expected} but was {instance['app']}"
        )
    center = instance.get("data_center_info")
    if center is None:
        raise InvalidRegistration("dataCenterInfo", "Missing dataCenterInfo")
    if not center.get("name"):
        raise InvalidRegistration("dataCenterInfo.name", "Missing dataCenterInfo Name")
    statuses = (("status", instance["status"]), ("overriddenstatus", instance["overridden_status"]))
    for field, value in statuses:
        if value not in STATUSES:
            raise InvalidRegistration(field, f"Unknown {field} {value}, expected one of {STATUSES}")
    lease = instance["lease_info"]
    duration, interval = lease["duration_s"], lease["renewal_interval_s"]
    if not 0 < duration <= MAX_LEASE_SECONDS:
        raise InvalidRegistration(
            "leaseInfo.durationInSecs",
            f"Invalid durationInSecs {duration}: must be 1..{MAX_LEASE_SECONDS}",
        )
    if not 0 < interval <= MAX_LEASE_SECONDS:
        raise InvalidRegistration(
            "leaseInfo.renewalIntervalInSecs",
            f"Invalid renewalIntervalInSecs {interval}: must be 1..{MAX_LEASE_SECONDS}",
        )
    for field, port in (("port", instance["port"]), ("securePort", instance["secure_port"])):
        if not 0 <= port <= 65_535:
            raise InvalidRegistration(field, f"Invalid {field} {port}: must be 0..65535")


def validate_event(record: Mapping[str, Any]) -> None:
    """Reject registry events no worker could apply (they go to dead letters)."""
    action = record["action"]
    if action not in INSTANCE_ACTIONS and action not in REGISTRY_ACTIONS:
        raise RecordRejected("action", f"unknown action {action!r}")
    if action in INSTANCE_ACTIONS and (not record["app"] or not record["instance_id"]):
        raise RecordRejected("app", f"{action} needs an app and an instance id")
    if action == REGISTER:
        instance = record.get("instance")
        if instance is None:
            raise RecordRejected("instance", "REGISTER must carry the instance document")
        try:
            validate_instance(instance, record["app"])
        except InvalidRegistration as error:
            raise RecordRejected(f"instance.{error.field}", error.reason) from None
        if instance["instance_id"] != record["instance_id"]:
            raise RecordRejected("instance_id", "the event and its document name different ids")
    for field in ("status", "overridden_status"):
        value = record.get(field)
        if value is not None and value not in STATUSES:
            raise RecordRejected(field, f"unknown status {value!r}")
    if action == STATUS_OVERRIDE and record.get("overridden_status") is None:
        raise RecordRejected("overridden_status", "STATUS_OVERRIDE needs the new status")


# --- the lease state machine -----------------------------------------------------------------


def effective_status(
    reported: str, override: str | None, existing: str | None, *, is_replication: bool = False
) -> str:
    """Eureka's default InstanceStatusOverrideRule, first match wins.

    DOWN/STARTING/UNKNOWN as reported stand; else an override; else the status of the existing
    lease when it is UP or OUT_OF_SERVICE (client calls only); else what was reported.
    """
    if reported not in ("UP", "OUT_OF_SERVICE"):
        return reported
    if override and override != "UNKNOWN":
        return override
    if existing in ("UP", "OUT_OF_SERVICE") and not is_replication:
        return existing
    return reported


def is_live(entry: Mapping[str, Any] | None) -> bool:
    return entry is not None and not entry.get("deleted", False)


@dataclass(frozen=True)
class Applied:
    """An event's effect: the new entry (None = unchanged) and the lease accounting it implies."""

    entry: dict[str, Any] | None
    new_lease: bool = False
    cancelled: bool = False
    renewed: bool = False


def apply_event(
    entry: Mapping[str, Any] | None, event: Mapping[str, Any], partition: int = 0
) -> Applied:
    """What one instance event does to its entry, as Eureka's AbstractInstanceRegistry does it."""
    action = event["action"]
    now = event["timestamp_ms"]
    if action == REGISTER:
        return _register(entry, event["instance"], now, partition, event["is_replication"])
    if not is_live(entry):
        return Applied(None)
    assert entry is not None
    current = copy.deepcopy(dict(entry))
    instance = current["instance"]
    lease = instance["lease_info"]
    if action == RENEW:
        status = renewed_status(entry)
        if status is None:
            return Applied(None)
        instance["status"] = status
        lease["last_renewal_timestamp_ms"] = now
        current["event_ms"] = now
        return Applied(current, renewed=True)
    if action in (CANCEL, EXPIRE):
        lease["eviction_timestamp_ms"] = now
        instance["action_type"] = DELETED
        instance["last_updated_timestamp_ms"] = now
        current.update(
            deleted=True, override=None, action_type=DELETED, changed_ms=now, event_ms=now
        )
        return Applied(current, cancelled=action == CANCEL)
    if action == STATUS_OVERRIDE:
        new_status = event["overridden_status"]
        if instance["status"] == new_status:
            current["event_ms"] = now
            return Applied(current)
        if new_status == "UP" and not lease["service_up_timestamp_ms"]:
            lease["service_up_timestamp_ms"] = now
        instance["overridden_status"] = new_status
        instance["status"] = new_status
        current["override"] = new_status
        _modified(current, event, now)
        return Applied(current)
    if action == DELETE_STATUS_OVERRIDE:
        instance["overridden_status"] = "UNKNOWN"
        instance["status"] = event.get("status") or "UNKNOWN"
        current["override"] = None
        _modified(current, event, now)
        return Applied(current)
    if action == METADATA:
        merged = copy.deepcopy(instance)
        merged["metadata"] = {**instance["metadata"], **event["metadata"]}
        return _register(current, merged, now, partition, event["is_replication"])
    return Applied(None)


def renewed_status(entry: Mapping[str, Any] | None) -> str | None:
    """The status a renewal leaves an entry in, or None when a renewal does nothing to it.

    A renewal changes only the lease time unless this differs from the stored status, so the
    apply agent can keep plain renewals out of the instance table.
    """
    if not is_live(entry):
        return None
    assert entry is not None
    instance = entry["instance"]
    status = effective_status(instance["status"], entry.get("override"), instance["status"])
    return None if status == "UNKNOWN" else status


def with_renewal(entry: Mapping[str, Any], renewed_ms: int) -> dict[str, Any]:
    """The entry with its lease's last renewal moved to `renewed_ms` when that is newer.

    Renewals live beside the documents (a lease table and the owner's memory); reads and the
    eviction run see them through this overlay. The stored entry is not modified.
    """
    lease = entry["instance"]["lease_info"]
    if renewed_ms <= lease["last_renewal_timestamp_ms"]:
        return dict(entry)
    instance = {
        **entry["instance"],
        "lease_info": {**lease, "last_renewal_timestamp_ms": renewed_ms},
    }
    return {**entry, "instance": instance}


def _modified(current: dict[str, Any], event: Mapping[str, Any], now: int) -> None:
    instance = current["instance"]
    dirty = event.get("last_dirty_timestamp_ms") or 0
    if dirty > instance["last_dirty_timestamp_ms"]:
        instance["last_dirty_timestamp_ms"] = dirty
    instance["action_type"] = MODIFIED
    instance["last_updated_timestamp_ms"] = now
    current.update(action_type=MODIFIED, changed_ms=now, event_ms=now)


def _register(
    entry: Mapping[str, Any] | None,
    registrant: Mapping[str, Any],
    now: int,
    partition: int,
    is_replication: bool,
) -> Applied:
    live = is_live(entry)
    existing = entry["instance"] if live and entry is not None else None
    instance = copy.deepcopy(dict(registrant))
    if (
        existing is not None
        and existing["last_dirty_timestamp_ms"] > instance["last_dirty_timestamp_ms"]
    ):
        instance = copy.deepcopy(existing)
    override = entry.get("override") if live and entry is not None else None
    if not override and instance["overridden_status"] != "UNKNOWN":
        override = instance["overridden_status"]
    if override:
        instance["overridden_status"] = override
    instance["status"] = effective_status(
        instance["status"],
        override,
        existing["status"] if existing else None,
        is_replication=is_replication,
    )
    terms = instance["lease_info"]
    service_up = existing["lease_info"]["service_up_timestamp_ms"] if existing else 0
    if instance["status"] == "UP" and not service_up:
        service_up = now
    instance["lease_info"] = {
        "renewal_interval_s": terms["renewal_interval_s"],
        "duration_s": terms["duration_s"],
        "registration_timestamp_ms": now,
        "last_renewal_timestamp_ms": now,
        "eviction_timestamp_ms": 0,
        "service_up_timestamp_ms": service_up,
    }
    instance["action_type"] = ADDED
    instance["last_updated_timestamp_ms"] = now
    fresh = {
        "instance": instance,
        "override": override,
        "action_type": ADDED,
        "changed_ms": now,
        "event_ms": now,
        "deleted": False,
        "partition": partition,
    }
    return Applied(fresh, new_lease=not live)


def renew_outcome(entry: Mapping[str, Any] | None, last_dirty_timestamp_ms: int | None) -> int:
    """The HTTP status of a heartbeat (InstanceResource.renewLease with syncWhenTimestampDiffers).

    404 tells the client to register again: no lease, an effective status of UNKNOWN (its
    override was removed), or a client copy newer than ours.
    """
    if not is_live(entry):
        return 404
    assert entry is not None
    instance = entry["instance"]
    status = effective_status(instance["status"], entry.get("override"), instance["status"])
    if status == "UNKNOWN":
        return 404
    stored = instance["last_dirty_timestamp_ms"]
    if last_dirty_timestamp_ms is not None and last_dirty_timestamp_ms > stored:
        return 404
    return 200


def lease_expired(entry: Mapping[str, Any], now_ms: int) -> bool:
    """True when a live lease has gone `durationInSecs` without a renewal.

    Eureka adds the duration twice (the documented Lease.renew quirk) and so evicts after about
    2x the lease; we expire after exactly one lease length.
    """
    if not is_live(entry):
        return False
    lease = entry["instance"]["lease_info"]
    return now_ms > lease["last_renewal_timestamp_ms"] + lease["duration_s"] * 1000


def eviction_limit(registry_size: int, percent_threshold: float) -> int:
    """At most this many leases are evicted per run: size - int(size x threshold)."""
    return registry_size - int(registry_size * percent_threshold)


def choose_evictions(
    entries: Iterable[tuple[str, Mapping[str, Any]]],
    now_ms: int,
    percent_threshold: float,
    rng: random.Random | None = None,
) -> list[str]:
    """Keys whose leases expired, capped per run and picked at random as Eureka does."""
    live = [(key, entry) for key, entry in entries if is_live(entry)]
    expired = [key for key, entry in live if lease_expired(entry, now_ms)]
    limit = eviction_limit(len(live), percent_threshold)
    if len(expired) <= limit:
        return sorted(expired)
    return sorted((rng or random).sample(expired, limit))


# --- self-preservation -----------------------------------------------------------------------


def renewal_threshold(
    expected_clients: int, expected_interval_s: int, percent: float, window_s: float = 60.0
) -> int:
    """Renewals per window needed before leases may expire: int(expected x window/interval x %).

    Eureka's window is one minute; a shorter one lets tests see self-preservation in seconds.
    """
    return int(expected_clients * (window_s / expected_interval_s) * percent)


def lease_expiration_enabled(
    self_preservation: bool, threshold_per_min: int, renews_last_min: int
) -> bool:
    """Eureka's isLeaseExpirationEnabled: always without self-preservation, else above threshold."""
    if not self_preservation:
        return True
    return threshold_per_min > 0 and renews_last_min > threshold_per_min


def count_renewal(
    rate: Mapping[str, int] | None, now_ms: int, count: int = 1, window_ms: int = 60_000
) -> dict[str, int]:
    """A per-window renewal counter (Eureka's MeasuredRate) after `count` renewals at `now_ms`.

    `minute` is the index of the current window (a minute with Eureka's default window).
    """
    minute = now_ms // window_ms
    if rate is None or rate["minute"] < minute:
        last = rate["current"] if rate is not None and rate["minute"] == minute - 1 else 0
        return {"minute": minute, "current": count, "last": last}
    if rate["minute"] > minute:
        return dict(rate)
    return {"minute": minute, "current": rate["current"] + count, "last": rate["last"]}


def renews_last_minute(rate: Mapping[str, int] | None, now_ms: int, window_ms: int = 60_000) -> int:
    """Renewals counted in the last complete window (minute), as of `now_ms`."""
    if rate is None:
        return 0
    minute = now_ms // window_ms
    if rate["minute"] == minute:
        return rate["last"]
    if rate["minute"] == minute - 1:
        return rate["current"]
    return 0


def expected_clients(
    registry_state: Mapping[str, Any] | None, partition_states: Iterable[Mapping[str, Any]]
) -> int:
    """Instances expected to renew: the last recomputed base plus registers minus cancels since.

    Each partition counts its own registrations and cancellations (`lease_delta`); a threshold
    update stores the base and the deltas it saw (`marks`), so later changes add on top.
    """
    base = int((registry_state or {}).get("expected_base", 0))
    marks = (registry_state or {}).get("marks", {})
    total = base
    for state in partition_states:
        total += state.get("lease_delta", 0) - marks.get(str(state["partition"]), 0)
    return max(total, 0)


def updated_expected_clients(
    expected: int, registered: int, percent: float, self_preservation: bool
) -> int:
    """Eureka's 15-minute recount: adopt the live count only above percent x expected."""
    if registered > percent * expected or not self_preservation:
        return registered
    return expected


# --- read views ------------------------------------------------------------------------------


def apps_hashcode(instances: Iterable[Mapping[str, Any]]) -> str:
    """Eureka's reconcile hash: `STATUS_count_` per status with instances, statuses sorted."""
    counts: dict[str, int] = {}
    for instance in instances:
        counts[instance["status"]] = counts.get(instance["status"], 0) + 1
    return "".join(f"{status}_{counts[status]}_" for status in sorted(counts) if counts[status])


def live_instances(entries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The documents of every live lease, as a full fetch returns them."""
    return [entry["instance"] for entry in entries if is_live(entry)]


def delta_view(
    entries: Iterable[Mapping[str, Any]], now_ms: int, retention_ms: int
) -> tuple[list[dict[str, Any]], str, str]:
    """(changed instances with their actionType, versions__delta, apps__hashcode of everything).

    An instance appears once, with its latest change, when that change is younger than the
    retention; plain renewals are no change. The version is the newest change time, so it moves
    whenever the delta's content does and every worker gives the same answer.
    """
    changed: list[dict[str, Any]] = []
    live: list[dict[str, Any]] = []
    newest = 0
    for entry in entries:
        if is_live(entry):
            live.append(entry["instance"])
        if entry.get("changed_ms", 0) >= now_ms - retention_ms:
            instance = dict(entry["instance"])
            instance["action_type"] = entry["action_type"]
            changed.append(instance)
            newest = max(newest, entry["changed_ms"])
    return changed, str(newest), apps_hashcode(live)


def with_vip(instances: Iterable[Mapping[str, Any]], vip: str, secure: bool) -> list[dict]:
    """Instances serving a VIP (the comma-separated vipAddress or secureVipAddress)."""
    field = "secure_vip_address" if secure else "vip_address"
    chosen = []
    for instance in instances:
        names = [name.strip() for name in (instance.get(field) or "").split(",")]
        if vip in names:
            chosen.append(dict(instance))
    return chosen


def tombstones_to_purge(
    entries: Iterable[tuple[str, Mapping[str, Any]]], now_ms: int, retention_ms: int
) -> list[str]:
    """Deleted entries the delta feed no longer needs."""
    return [
        key
        for key, entry in entries
        if entry.get("deleted") and entry.get("changed_ms", 0) < now_ms - retention_ms
    ]


# --- one worker's in-memory view -------------------------------------------------------------


_generations = itertools.count(1)
"""Generations of every RegistryIndex of the process: a rebuilt index never reuses one."""


class AnswerCache:
    """Rendered read answers (full fetch, delta), reused while the index keeps its generation.

    As with Eureka's response cache, renewals alone do not invalidate an answer, so the lease
    timestamps in one may be up to `max_age_s` old; registers, cancels, expiries and status
    changes do. Without it, every client's delta fetch in the minutes after a mass registration
    rendered thousands of instances again.
    """

    def __init__(self) -> None:
        self._answers: dict[Hashable, tuple[int, float, bytes]] = {}

    def get(
        self,
        key: Hashable,
        generation: int,
        now_s: float,
        max_age_s: float,
        render: Callable[[], bytes],
    ) -> bytes:
        """The answer cached under `key` if rendered at this generation within max_age_s, else
        `render()` (then cached)."""
        cached = self._answers.get(key)
        if cached is not None and cached[0] == generation and now_s - cached[1] <= max_age_s:
            return cached[2]
        body = render()
        self._answers[key] = (generation, now_s, body)
        return body


class RegistryIndex:
    """The instance entries of one worker's copy, by key and by app, with renewals overlaid.

    Reads, the eviction run and the tombstone purge would otherwise decode every stored entry
    (a full table scan per request); the index is kept current from the same table writes and
    changelog records that update the store, so reads cost a dict lookup per answer.
    """

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}
        self.by_app: dict[str, dict[str, dict[str, Any]]] = {}
        self.renewed: dict[str, int] = {}
        self.generation = next(_generations)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def put(self, key: str, entry: Mapping[str, Any] | None) -> None:
        """Store (or with None forget) the entry of `key`, overlaid with its newest renewal.

        Moves `generation` on (renewals alone do not), so rendered answers are rendered again.
        """
        self.generation = next(_generations)
        self._place(key, entry)

    def _place(self, key: str, entry: Mapping[str, Any] | None) -> None:
        old = self.entries.pop(key, None)
        if old is not None:
            members = self.by_app.get(old["instance"]["app"], {})
            members.pop(key, None)
            if not members:
                self.by_app.pop(old["instance"]["app"], None)
        if entry is None:
            self.renewed.pop(key, None)
            return
        current = with_renewal(entry, self.renewed.get(key, 0))
        self.entries[key] = current
        self.by_app.setdefault(current["instance"]["app"], {})[key] = current

    def renew(self, renewals: Mapping[str, int]) -> None:
        """Take lease renewals (key -> last renewal, ms); older ones than known are ignored."""
        for key, at_ms in renewals.items():
            if at_ms <= self.renewed.get(key, 0):
                continue
            self.renewed[key] = at_ms
            entry = self.entries.get(key)
            if entry is not None:
                self._place(key, entry)

    def live(self) -> list[dict[str, Any]]:
        """Every live instance document (a full fetch)."""
        return live_instances(self.entries.values())

    def app(self, name: str) -> list[dict[str, Any]]:
        """The live instance documents of one app (name upper-cased)."""
        return live_instances(self.by_app.get(name.upper(), {}).values())

    def live_count(self) -> int:
        return sum(1 for entry in self.entries.values() if is_live(entry))

    def in_partitions(self, partitions: Iterable[int]) -> list[tuple[str, dict[str, Any]]]:
        wanted = set(partitions)
        return [(key, e) for key, e in self.entries.items() if e.get("partition") in wanted]


def add_renewals(
    rate: Mapping[str, int] | None, counts: Mapping[int, int], window_ms: int
) -> dict[str, int] | None:
    """The renewal counter after renewals counted per window index (`at_ms // window_ms`).

    Renewals are counted in memory and written in batches; applying each window's count at
    that window's start gives the same counter as counting them one by one.
    """
    for window in sorted(counts):
        rate = count_renewal(rate, window * window_ms, counts[window], window_ms)
    return dict(rate) if rate is not None else None
