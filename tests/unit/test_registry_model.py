"""The registry's pure rules: Eureka's lease state machine, views, self-preservation, validation."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.errors import RecordRejected
from streams.registry.events import registry_event
from streams.registry.model import (
    CANCEL,
    DELETE_STATUS_OVERRIDE,
    EXPIRE,
    METADATA,
    REGISTER,
    RENEW,
    STATUS_OVERRIDE,
    InvalidRegistration,
    apply_event,
    apps_hashcode,
    choose_evictions,
    count_renewal,
    delta_view,
    effective_status,
    eviction_limit,
    expected_clients,
    lease_expiration_enabled,
    lease_expired,
    live_instances,
    renew_outcome,
    renewal_threshold,
    renews_last_minute,
    tombstones_to_purge,
    updated_expected_clients,
    validate_event,
    validate_instance,
    with_vip,
)

T0 = 1_700_000_000_000


def instance(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "instance_id": "10.0.0.1:orders:8080",
        "host_name": "orders-1",
        "app": "ORDERS",
        "app_group_name": None,
        "ip_addr": "10.0.0.1",
        "sid": None,
        "status": "UP",
        "overridden_status": "UNKNOWN",
        "port": 8080,
        "port_enabled": True,
        "secure_port": 443,
        "secure_port_enabled": False,
        "country_id": 1,
        "data_center_info": {
            "name": "MyOwn",
            "class_name": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo",
            "metadata": {},
        },
        "lease_info": {
            "renewal_interval_s": 30,
            "duration_s": 90,
            "registration_timestamp_ms": 0,
            "last_renewal_timestamp_ms": 0,
            "eviction_timestamp_ms": 0,
            "service_up_timestamp_ms": 0,
        },
        "metadata": {"zone": "z1"},
        "home_page_url": None,
        "status_page_url": None,
        "health_check_url": None,
        "secure_health_check_url": None,
        "vip_address": "orders,shop",
        "secure_vip_address": "orders-secure",
        "is_coordinating_discovery_server": False,
        "last_updated_timestamp_ms": 0,
        "last_dirty_timestamp_ms": T0,
        "action_type": None,
        "asg_name": None,
    }
    record.update(overrides)
    return record


def event(action: str, at: int, **fields: Any) -> dict[str, Any]:
    return registry_event(action, "ORDERS", "10.0.0.1:orders:8080", timestamp_ms=at, **fields)


def registered(at: int = T0, **overrides: Any) -> dict[str, Any]:
    applied = apply_event(None, event(REGISTER, at, instance=instance(**overrides)))
    assert applied.entry is not None and applied.new_lease
    return applied.entry


def test_register_starts_a_lease_with_server_timestamps_and_an_added_change() -> None:
    entry = registered(T0 + 5)
    lease = entry["instance"]["lease_info"]
    assert lease["registration_timestamp_ms"] == lease["last_renewal_timestamp_ms"] == T0 + 5
    assert lease["service_up_timestamp_ms"] == T0 + 5 and lease["eviction_timestamp_ms"] == 0
    assert entry["instance"]["action_type"] == entry["action_type"] == "ADDED"
    assert entry["instance"]["last_updated_timestamp_ms"] == T0 + 5
    assert entry["changed_ms"] == T0 + 5 and not entry["deleted"]


def test_re_register_keeps_service_up_time_and_is_not_a_new_lease() -> None:
    first = registered(T0)
    again = apply_event(first, event(REGISTER, T0 + 1000, instance=instance()))
    assert not again.new_lease
    assert again.entry["instance"]["lease_info"]["service_up_timestamp_ms"] == T0


def test_register_with_an_older_document_keeps_the_newer_stored_one() -> None:
    first = registered(T0, last_dirty_timestamp_ms=T0 + 500, host_name="new-host")
    stale = instance(last_dirty_timestamp_ms=T0, host_name="old-host")
    again = apply_event(first, event(REGISTER, T0 + 1000, instance=stale)).entry
    assert again["instance"]["host_name"] == "new-host"


def test_renew_updates_the_lease_but_is_not_a_delta_change() -> None:
    entry = registered(T0)
    renewed = apply_event(entry, event(RENEW, T0 + 30_000))
    assert renewed.renewed
    assert renewed.entry["instance"]["lease_info"]["last_renewal_timestamp_ms"] == T0 + 30_000
    assert renewed.entry["changed_ms"] == T0


def test_renew_of_an_unknown_or_cancelled_lease_changes_nothing() -> None:
    assert apply_event(None, event(RENEW, T0)).entry is None
    cancelled = apply_event(registered(), event(CANCEL, T0 + 1)).entry
    assert apply_event(cancelled, event(RENEW, T0 + 2)).entry is None


def test_cancel_and_expire_delete_the_lease_and_only_cancel_counts_down() -> None:
    entry = registered()
    cancelled = apply_event(entry, event(CANCEL, T0 + 10))
    expired = apply_event(entry, event(EXPIRE, T0 + 10))
    assert cancelled.cancelled and not expired.cancelled
    for applied in (cancelled, expired):
        assert applied.entry["deleted"] and applied.entry["action_type"] == "DELETED"
        assert applied.entry["instance"]["lease_info"]["eviction_timestamp_ms"] == T0 + 10
    assert apply_event(cancelled.entry, event(CANCEL, T0 + 11)).entry is None


def test_override_wins_over_heartbeats_and_re_registrations_until_removed() -> None:
    entry = registered()
    out = apply_event(entry, event(STATUS_OVERRIDE, T0 + 1, overridden_status="OUT_OF_SERVICE"))
    entry = out.entry
    assert entry["instance"]["status"] == "OUT_OF_SERVICE"
    assert entry["instance"]["overridden_status"] == "OUT_OF_SERVICE"
    assert entry["action_type"] == "MODIFIED"
    entry = apply_event(entry, event(RENEW, T0 + 2)).entry
    assert entry["instance"]["status"] == "OUT_OF_SERVICE"
    entry = apply_event(entry, event(REGISTER, T0 + 3, instance=instance())).entry
    assert entry["instance"]["status"] == "OUT_OF_SERVICE"
    removed = apply_event(entry, event(DELETE_STATUS_OVERRIDE, T0 + 4)).entry
    assert removed["instance"]["status"] == "UNKNOWN"
    assert removed["instance"]["overridden_status"] == "UNKNOWN"
    assert renew_outcome(removed, None) == 404, (
        "UNKNOWN after removal tells the client to re-register"
    )
    back = apply_event(removed, event(REGISTER, T0 + 5, instance=instance())).entry
    assert back["instance"]["status"] == "UP" and renew_outcome(back, None) == 200


def test_delete_override_with_a_fallback_value_uses_it() -> None:
    entry = apply_event(
        registered(), event(STATUS_OVERRIDE, T0 + 1, overridden_status="OUT_OF_SERVICE")
    ).entry
    entry = apply_event(entry, event(DELETE_STATUS_OVERRIDE, T0 + 2, status="UP")).entry
    assert entry["instance"]["status"] == "UP" and renew_outcome(entry, None) == 200


def test_override_takes_a_newer_dirty_timestamp() -> None:
    entry = apply_event(
        registered(),
        event(STATUS_OVERRIDE, T0 + 1, overridden_status="DOWN", last_dirty_timestamp_ms=T0 + 99),
    ).entry
    assert entry["instance"]["last_dirty_timestamp_ms"] == T0 + 99


def test_metadata_merges_and_re_registers() -> None:
    entry = apply_event(registered(), event(METADATA, T0 + 7, metadata={"weight": "3"})).entry
    assert entry["instance"]["metadata"] == {"zone": "z1", "weight": "3"}
    assert entry["action_type"] == "ADDED"
    assert entry["instance"]["lease_info"]["registration_timestamp_ms"] == T0 + 7


@pytest.mark.parametrize(
    ("reported", "override", "existing", "expected"),
    [
        ("DOWN", "UP", "UP", "DOWN"),
        ("STARTING", None, None, "STARTING"),
        ("UP", "OUT_OF_SERVICE", None, "OUT_OF_SERVICE"),
        ("UP", None, "OUT_OF_SERVICE", "OUT_OF_SERVICE"),
        ("UP", "UNKNOWN", "DOWN", "UP"),
        ("OUT_OF_SERVICE", None, None, "OUT_OF_SERVICE"),
    ],
)
def test_effective_status_follows_eurekas_first_match_rules(
    reported: str, override: str | None, existing: str | None, expected: str
) -> None:
    assert effective_status(reported, override, existing) == expected


def test_heartbeat_outcomes_follow_last_dirty_timestamp_rules() -> None:
    entry = registered()
    assert renew_outcome(entry, None) == 200
    assert renew_outcome(entry, T0) == 200
    assert renew_outcome(entry, T0 - 1) == 200, "server copy newer: the client is fine"
    assert renew_outcome(entry, T0 + 1) == 404, "client copy newer: register again"
    assert renew_outcome(None, T0) == 404


def test_lease_expires_after_one_duration_without_renewal() -> None:
    entry = registered(T0, lease_info={**instance()["lease_info"], "duration_s": 5})
    assert not lease_expired(entry, T0 + 5000)
    assert lease_expired(entry, T0 + 5001)
    renewed = apply_event(entry, event(RENEW, T0 + 4000)).entry
    assert not lease_expired(renewed, T0 + 8000)


def test_evictions_are_capped_per_run_and_random() -> None:
    assert eviction_limit(10, 0.85) == 2 and eviction_limit(1, 0.85) == 1
    entries = [(f"A/{i}", registered(T0, instance_id=str(i))) for i in range(10)]
    chosen = choose_evictions(entries, T0 + 91_000, 0.85, random.Random(3))
    assert len(chosen) == 2 and set(chosen) <= {k for k, _ in entries}
    assert choose_evictions(entries, T0 + 1000, 0.85) == []


def test_self_preservation_math_matches_eureka() -> None:
    assert renewal_threshold(10, 30, 0.85) == 17
    assert not lease_expiration_enabled(True, 17, 17)
    assert lease_expiration_enabled(True, 17, 18)
    assert not lease_expiration_enabled(True, 0, 100), "no threshold yet: nothing expires"
    assert lease_expiration_enabled(False, 17, 0)
    assert updated_expected_clients(10, 9, 0.85, True) == 9
    assert updated_expected_clients(10, 8, 0.85, True) == 10
    assert updated_expected_clients(10, 2, 0.85, False) == 2


def test_expected_clients_add_registrations_since_the_last_recount() -> None:
    partitions = [{"partition": 0, "lease_delta": 5}, {"partition": 1, "lease_delta": 2}]
    assert expected_clients(None, partitions) == 7
    recount = {"expected_base": 10, "marks": {"0": 4, "1": 2}}
    assert expected_clients(recount, partitions) == 11


def test_renewal_rate_counts_the_last_complete_minute() -> None:
    minute = 60_000 * 28_333_333
    rate = count_renewal(None, minute + 10, 5)
    rate = count_renewal(rate, minute + 20, 3)
    assert renews_last_minute(rate, minute + 30) == 0
    assert renews_last_minute(rate, minute + 60_000) == 8
    rate = count_renewal(rate, minute + 61_000, 1)
    assert renews_last_minute(rate, minute + 61_000) == 8
    assert renews_last_minute(rate, minute + 200_000) == 0


def test_hashcode_counts_statuses_sorted_by_name() -> None:
    statuses = ["UP", "UP", "DOWN", "OUT_OF_SERVICE", "UP"]
    assert apps_hashcode({"status": s} for s in statuses) == "DOWN_1_OUT_OF_SERVICE_1_UP_3_"
    assert apps_hashcode([]) == ""


@given(st.lists(st.sampled_from(["UP", "DOWN", "STARTING", "OUT_OF_SERVICE", "UNKNOWN"])))
def test_hashcode_is_order_independent_and_sums_to_the_count(statuses: list[str]) -> None:
    code = apps_hashcode({"status": s} for s in statuses)
    assert code == apps_hashcode({"status": s} for s in reversed(statuses))
    parts = [p for p in code.split("_") if p.isdigit()]
    assert sum(int(p) for p in parts) == len(statuses)


def test_delta_lists_recent_changes_once_with_their_action_and_the_full_hash() -> None:
    up = registered(T0, instance_id="a")
    gone = apply_event(registered(T0, instance_id="b"), event(CANCEL, T0 + 5)).entry
    old = registered(T0 - 200_000, instance_id="c")
    changed, version, hashcode = delta_view([up, gone, old], T0 + 10, 180_000)
    assert {(i["instance_id"], i["action_type"]) for i in changed} == {
        ("a", "ADDED"),
        ("b", "DELETED"),
    }
    assert version == str(T0 + 5)
    assert hashcode == "UP_2_", "the hash describes the whole registry after the delta"
    assert [i["instance_id"] for i in live_instances([up, gone, old])] == ["a", "c"]
    assert tombstones_to_purge([("b", gone), ("a", up)], T0 + 200_000, 180_000) == ["b"]


def test_vips_match_any_of_the_comma_separated_names() -> None:
    docs = [instance(), instance(instance_id="x", vip_address="other")]
    assert [i["instance_id"] for i in with_vip(docs, "shop", False)] == [docs[0]["instance_id"]]
    assert len(with_vip(docs, "orders-secure", True)) == 2
    assert with_vip(docs, "nothing", False) == []


@pytest.mark.parametrize(
    ("overrides", "path_app", "reason"),
    [
        ({"instance_id": ""}, "ORDERS", "Missing instanceId"),
        ({"host_name": " "}, "ORDERS", "Missing hostname"),
        ({"ip_addr": ""}, "ORDERS", "Missing ip address"),
        ({"app": ""}, "ORDERS", "Missing appName"),
        ({}, "billing", "Mismatched appName, expecting BILLING but was ORDERS"),
        ({"data_center_info": None}, "ORDERS", "Missing dataCenterInfo"),
        (
            {"data_center_info": {"name": "", "class_name": "x", "metadata": {}}},
            "ORDERS",
            "Missing dataCenterInfo Name",
        ),
    ],
)
def test_register_validation_answers_with_eurekas_reasons(
    overrides: dict, path_app: str, reason: str
) -> None:
    with pytest.raises(InvalidRegistration) as raised:
        validate_instance(instance(**overrides), path_app)
    assert raised.value.reason == reason


@pytest.mark.parametrize("duration", [0, -5, 10_000_000])
def test_absurd_lease_values_are_refused(duration: int) -> None:
    lease = {**instance()["lease_info"], "duration_s": duration}
    with pytest.raises(InvalidRegistration) as raised:
        validate_instance(instance(lease_info=lease), "orders")
    assert raised.value.field == "leaseInfo.durationInSecs"


def test_events_no_worker_can_apply_are_rejected() -> None:
    validate_event(event(REGISTER, T0, instance=instance()))
    with pytest.raises(RecordRejected, match="action"):
        validate_event(event("EXPLODE", T0))
    with pytest.raises(RecordRejected, match="instance"):
        validate_event(event(REGISTER, T0))
    with pytest.raises(RecordRejected, match="hostName"):
        validate_event(event(REGISTER, T0, instance=instance(host_name="")))
    with pytest.raises(RecordRejected, match="overridden_status"):
        validate_event(event(STATUS_OVERRIDE, T0))
    with pytest.raises(RecordRejected, match="status"):
        validate_event(event(RENEW, T0, status="SLEEPY"))


def test_a_shorter_renewal_window_scales_the_threshold_and_the_counter() -> None:
    assert renewal_threshold(4, 1, 0.85, window_s=2) == 6
    assert renewal_threshold(4, 30, 0.85) == renewal_threshold(4, 30, 0.85, window_s=60) == 6
    rate = count_renewal(None, T0, 3, window_ms=2_000)
    rate = count_renewal(rate, T0 + 2_000, 1, window_ms=2_000)
    assert renews_last_minute(rate, T0 + 2_500, window_ms=2_000) == 3
    assert renews_last_minute(rate, T0 + 4_000, window_ms=2_000) == 1
    assert renews_last_minute(rate, T0 + 6_000, window_ms=2_000) == 0
