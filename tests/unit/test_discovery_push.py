"""The SDK's local copy takes pushed registry events at once (no HTTP, no Kafka)."""

from __future__ import annotations

from typing import Any

from streams.sdk.discovery import DiscoveryClient, _hashcode
from tests.unit.test_registry_model import instance


def event(action: str, instance_id: str, **fields: Any) -> dict[str, Any]:
    return {"action": action, "app": "ORDERS", "instance_id": instance_id, **fields}


def test_a_pushed_register_and_cancel_change_the_copy_at_once() -> None:
    client = DiscoveryClient("http://127.0.0.1:1/eureka/")
    notified: list[int] = []
    client.listeners.append(lambda: notified.append(1))
    document = instance(instance_id="orders-2")

    assert client.apply_pushed(event("REGISTER", "orders-2", instance=document))
    assert [i["instance_id"] for i in client.instances("orders")] == ["orders-2"]
    assert not client.apply_pushed(event("RENEW", "orders-2")), "renewals change nothing"
    assert not client.apply_pushed(event("REGISTER", "orders-3")), "no document, no change"

    assert client.apply_pushed(event("EXPIRE", "orders-2"))
    assert client.instances("orders") == []
    assert not client.apply_pushed(event("CANCEL", "orders-2")), "already gone"
    assert len(notified) == 2 and client.pushed_changes == 2
    client.close()


def test_an_instance_with_a_status_override_waits_for_the_server() -> None:
    client = DiscoveryClient("http://127.0.0.1:1/eureka/")
    overridden = instance(instance_id="orders-4", status="OUT_OF_SERVICE")
    overridden["overridden_status"] = "OUT_OF_SERVICE"
    client._instances["ORDERS/orders-4"] = overridden
    pushed = instance(instance_id="orders-4", status="UP")

    assert not client.apply_pushed(event("REGISTER", "orders-4", instance=pushed))
    assert client.instances("orders") == [], "the override keeps it out until the delta says so"
    client.close()


def test_a_delta_fetched_before_the_server_applied_a_push_keeps_the_pushed_change() -> None:
    client = DiscoveryClient("http://127.0.0.1:1/eureka/")
    on_server = {"ORDERS/orders-1": instance(instance_id="orders-1")}
    answers: dict[str, dict[str, Any]] = {}

    def answer(version: str) -> None:
        server = list(on_server.values())
        answers["apps/"] = {"versions_delta": "1", "apps_hashcode": "", "instances": server}
        answers["apps/delta"] = {
            "versions_delta": version,
            "apps_hashcode": _hashcode(on_server),
            "instances": [],
        }

    client._get = lambda path: answers[path]  # type: ignore[method-assign]
    answer("1")
    client.refresh(full=True)
    assert client.apply_pushed(
        event("REGISTER", "orders-2", instance=instance(instance_id="orders-2"))
    )
    answer("2")
    assert client.refresh()
    assert [i["instance_id"] for i in client.instances("orders")] == ["orders-1", "orders-2"]
    assert client.full_fetches == 1, "no full fetch took the pushed register back out"

    client._pushed_at -= 60  # long after the push, the server still has no orders-2
    answer("3")
    assert client.refresh()
    assert client.full_fetches == 2
    assert [i["instance_id"] for i in client.instances("orders")] == ["orders-1"]
    client.close()
