"""The registry's in-memory view and batched renewal accounting: pure functions, no servers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.registry.model import (
    CANCEL,
    STATUS_OVERRIDE,
    AnswerCache,
    RegistryIndex,
    add_renewals,
    apply_event,
    choose_evictions,
    count_renewal,
    lease_expired,
    renewed_status,
    with_renewal,
)
from tests.unit.test_registry_model import T0, event, instance, registered

KEY = "ORDERS/10.0.0.1:orders:8080"


def test_with_renewal_moves_the_lease_forward_only_and_leaves_the_entry_alone() -> None:
    entry = registered(T0)
    later = with_renewal(entry, T0 + 5000)
    assert later["instance"]["lease_info"]["last_renewal_timestamp_ms"] == T0 + 5000
    assert entry["instance"]["lease_info"]["last_renewal_timestamp_ms"] == T0, "not modified"
    assert with_renewal(later, T0 + 1000) == later, "an older renewal changes nothing"
    assert later["instance"]["lease_info"]["registration_timestamp_ms"] == T0


def test_renewed_status_is_none_without_a_live_renewable_lease() -> None:
    entry = registered(T0)
    assert renewed_status(entry) == "UP"
    assert renewed_status(None) is None
    cancelled = apply_event(entry, event(CANCEL, T0 + 1)).entry
    assert renewed_status(cancelled) is None
    down = apply_event(entry, event(STATUS_OVERRIDE, T0 + 1, overridden_status="DOWN")).entry
    assert renewed_status(down) == "DOWN"


def test_index_groups_by_app_overlays_renewals_and_forgets_deleted_keys() -> None:
    index = RegistryIndex()
    index.renew({KEY: T0 + 7000})  # a lease snapshot may arrive before the document
    index.put(KEY, registered(T0))
    other = apply_event(
        None,
        {
            **event("REGISTER", T0, instance=instance(app="BILLING", instance_id="b-1")),
            "app": "BILLING",
            "instance_id": "b-1",
        },
    ).entry
    index.put("BILLING/b-1", other)
    assert [i["instance_id"] for i in index.app("orders")] == ["10.0.0.1:orders:8080"]
    assert index.get(KEY)["instance"]["lease_info"]["last_renewal_timestamp_ms"] == T0 + 7000
    assert index.live_count() == 2 and len(index.live()) == 2

    index.renew({KEY: T0 + 9000, "BILLING/b-1": T0 - 1})
    assert index.get(KEY)["instance"]["lease_info"]["last_renewal_timestamp_ms"] == T0 + 9000
    assert index.get("BILLING/b-1")["instance"]["lease_info"]["last_renewal_timestamp_ms"] == T0

    tombstone = apply_event(index.get(KEY), event(CANCEL, T0 + 10_000)).entry
    index.put(KEY, tombstone)
    assert index.app("ORDERS") == [] and index.live_count() == 1
    index.put(KEY, None)
    assert KEY not in index.entries and KEY not in index.renewed and "ORDERS" not in index.by_app
    assert [k for k, _ in index.in_partitions([0])] == ["BILLING/b-1"]


def test_eviction_sees_renewals_through_the_index() -> None:
    index = RegistryIndex()
    index.put(KEY, registered(T0, lease_info={**instance()["lease_info"], "duration_s": 5}))
    assert lease_expired(index.get(KEY), T0 + 6000)
    index.renew({KEY: T0 + 4000})
    assert not lease_expired(index.get(KEY), T0 + 6000)
    assert choose_evictions(index.in_partitions([0]), T0 + 9001, 0.0) == [KEY]


@given(
    st.lists(st.integers(min_value=0, max_value=10 * 60_000), min_size=1, max_size=60).map(sorted)
)
def test_batched_renewal_counts_equal_counting_one_by_one(offsets: list[int]) -> None:
    window_ms = 60_000
    one_by_one = None
    for offset in offsets:
        one_by_one = count_renewal(one_by_one, T0 + offset, 1, window_ms)
    counts: dict[int, int] = {}
    for offset in offsets:
        window = (T0 + offset) // window_ms
        counts[window] = counts.get(window, 0) + 1
    assert add_renewals(None, counts, window_ms) == one_by_one


def test_an_answer_is_rendered_again_after_a_change_or_its_age_but_not_after_a_renewal() -> None:
    index = RegistryIndex()
    index.put(KEY, registered(T0))
    renders: list[int] = []
    cache = AnswerCache()

    def answer(now_s: float) -> bytes:
        def render() -> bytes:
            renders.append(index.generation)
            return f"render {len(renders)}".encode()

        return cache.get("apps", index.generation, now_s, 30.0, render)

    assert answer(0.0) == b"render 1"
    assert answer(1.0) == b"render 1", "same generation, young: reused"
    index.renew({KEY: T0 + 5000})
    assert answer(2.0) == b"render 1", "a renewal alone keeps the answer (as Eureka's cache)"
    index.put(KEY, apply_event(registered(T0), event(CANCEL, T0 + 6000)).entry)
    assert answer(3.0) == b"render 2", "a cancel renders it again"
    assert answer(34.0) == b"render 3", "older than max_age_s: rendered again"


def test_a_rebuilt_index_never_matches_an_answer_of_the_index_it_replaces() -> None:
    first, second = RegistryIndex(), RegistryIndex()
    first.put(KEY, registered(T0))
    second.put(KEY, registered(T0))
    assert first.generation != second.generation
