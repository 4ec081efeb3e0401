"""The registry end to end: Eureka REST on two real workers, Kafka in between, lease expiry."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from streams.sdk.discovery import DiscoveryClient
from streams.settings import Settings
from tests.conftest import _free_port
from tests.integration.worker import apply_topics, eventually, get_json, running_worker

pytestmark = pytest.mark.integration


def register_body(instance_id: str, app: str = "ORDERS", lease_s: int = 90) -> bytes:
    return json.dumps(
        {
            "instance": {
                "instanceId": instance_id,
                "hostName": f"{instance_id}.local",
                "app": app,
                "ipAddr": "127.0.0.1",
                "status": "UP",
                "overriddenstatus": "UNKNOWN",
                "port": {"$": 8080, "@enabled": "true"},
                "securePort": {"$": 443, "@enabled": "false"},
                "countryId": 1,
                "dataCenterInfo": {
                    "@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo",
                    "name": "MyOwn",
                },
                "leaseInfo": {"renewalIntervalInSecs": 1, "durationInSecs": lease_s},
                "metadata": {"zone": "z1"},
                "vipAddress": app.lower(),
                "lastDirtyTimestamp": "1700000000000",
            }
        }
    ).encode()


def call(method: str, url: str, body: bytes | None = None, **headers: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def apps_json(base: str) -> dict:
    status, body = call("GET", f"{base}/eureka/apps", Accept="application/json")
    assert status == 200
    return json.loads(body)["applications"]


def ids(envelope: dict) -> set[str]:
    return {i["instanceId"] for app in envelope["application"] for i in app["instance"]}


def test_two_workers_share_the_registry_within_a_second_and_expire_leases(
    stack_settings: Settings, tmp_path: Path
) -> None:
    settings = stack_settings.model_copy(
        update={"registry_self_preservation": False, "registry_eviction_interval_s": 0.5}
    )
    apply_topics(settings)
    other = settings.model_copy(update={"web_port": _free_port(), "data_dir": tmp_path / "w2"})
    a, b = (f"http://127.0.0.1:{s.web_port}" for s in (settings, other))
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    with running_worker(settings, log_a), running_worker(other, log_b):
        for base, log in ((a, log_a), (b, log_b)):
            eventually(
                lambda base=base: get_json(f"{base}/registry/status")[0] == 200,
                120,
                "the registry status view",
                log,
            )

        # Both workers must be in the group, with their tables recovered, before timing.
        def shared() -> bool:
            states = [get_json(f"{base}/registry/status")[1] for base in (a, b)]
            owned = [set(state["owned_partitions"]) for state in states]
            return (
                all(state["ready"] for state in states)
                and all(owned)
                and owned[0] | owned[1] == {0, 1, 2, 3}
                and not owned[0] & owned[1]
            )

        eventually(shared, 90, "the partitions to be shared and both workers ready", log_a)

        status, _ = call(
            "POST",
            f"{a}/eureka/apps/ORDERS",
            register_body("o-1"),
            **{"Content-Type": "application/json"},
        )
        assert status == 204
        assert "o-1" in ids(apps_json(a)), "read-your-writes on the worker that took the write"
        # How fast is for tests/bench/registry.py to measure; here: that it arrives at all.
        eventually(lambda: "o-1" in ids(apps_json(b)), 30, "the register on the other worker")

        status, body = call("GET", f"{b}/eureka/v2/apps/ORDERS/o-1")
        assert status == 200 and b"<overriddenstatus>UNKNOWN</overriddenstatus>" in body
        assert (
            call("PUT", f"{b}/eureka/apps/ORDERS/o-1?status=UP&lastDirtyTimestamp=1700000000000")[0]
            == 200
        )
        assert (
            call("PUT", f"{b}/eureka/apps/ORDERS/o-1?status=UP&lastDirtyTimestamp=1800000000000")[0]
            == 404
        )
        assert call("PUT", f"{a}/eureka/apps/ORDERS/nobody?status=UP")[0] == 404
        status, body = call("PUT", f"{a}/eureka/apps/ORDERS/o-1?lastDirtyTimestamp=yesterday")
        assert status == 400 and json.loads(body)["field"] == "lastDirtyTimestamp"

        assert call("PUT", f"{a}/eureka/apps/ORDERS/o-1/status?value=OUT_OF_SERVICE")[0] == 200
        status, body = call("GET", f"{a}/eureka/instances/o-1", Accept="application/json")
        assert json.loads(body)["instance"]["status"] == "OUT_OF_SERVICE"

        def delta_on_b() -> dict | None:
            delta = json.loads(call("GET", f"{b}/eureka/apps/delta", Accept="application/json")[1])
            envelope = delta["applications"]
            return envelope if envelope["apps__hashcode"] == "OUT_OF_SERVICE_1_" else None

        delta = eventually(delta_on_b, 30, "the override in B's delta")
        changes = {
            i["instanceId"]: i["actionType"]
            for app in delta["application"]
            for i in app["instance"]
        }
        assert changes == {"o-1": "MODIFIED"}
        assert call("DELETE", f"{a}/eureka/apps/ORDERS/o-1/status?value=UP")[0] == 200
        assert call("PUT", f"{a}/eureka/apps/ORDERS/o-1/metadata?weight=3")[0] == 200
        status, body = call("GET", f"{a}/eureka/vips/orders", Accept="application/json")
        instance = json.loads(body)["applications"]["application"][0]["instance"][0]
        assert instance["status"] == "UP" and instance["metadata"]["weight"] == "3"
        assert call("GET", f"{a}/eureka/svips/none")[0] == 404

        status, body = call(
            "POST",
            f"{a}/eureka/apps/BILLING",
            register_body("o-2"),
            **{"Content-Type": "application/json"},
        )
        assert status == 400
        assert json.loads(body)["error"] == "Mismatched appName, expecting BILLING but was ORDERS"
        status, body = call(
            "POST",
            f"{a}/eureka/apps/ORDERS",
            b"<instance><oops>",
            **{"Content-Type": "application/xml"},
        )
        assert status == 400 and "XML" in json.loads(body)["error"]

        # The SDK client sees a registration on B through the push subscription.
        with DiscoveryClient(
            f"{a}/eureka/",
            poll_interval_s=30,
            kafka=settings.kafka,
            topic_prefix=settings.topic_prefix,
        ) as client:
            time.sleep(2)  # let the push consumer join its partitions
            assert (
                call(
                    "POST",
                    f"{b}/eureka/apps/PAYMENTS",
                    register_body("p-1", "PAYMENTS"),
                    **{"Content-Type": "application/json"},
                )[0]
                == 204
            )
            eventually(lambda: client.instances("payments"), 30, "the SDK copy to get p-1")

            # A short lease with no heartbeats is expired by its owner and leaves everywhere.
            assert (
                call(
                    "POST",
                    f"{b}/eureka/apps/SHORT",
                    register_body("s-1", "SHORT", 2),
                    **{"Content-Type": "application/json"},
                )[0]
                == 204
            )
            eventually(
                lambda: "s-1" not in ids(apps_json(a)) and "s-1" not in ids(apps_json(b)),
                60,
                "the short lease to expire (tests/bench/registry.py measures how soon)",
                log_a,
            )
            status, body = call("GET", f"{a}/eureka/apps/delta", Accept="application/json")
            actions = {
                i["instanceId"]: i["actionType"]
                for app in json.loads(body)["applications"]["application"]
                for i in app["instance"]
            }
            assert actions["s-1"] == "DELETED"
            eventually(
                lambda: (
                    not client.instances("short", only_up=False) and client.instances("payments")
                ),
                30,
                "the SDK copy to drop s-1",
            )

        assert call("DELETE", f"{a}/eureka/apps/ORDERS/o-1")[0] == 200
        eventually(lambda: "o-1" not in ids(apps_json(b)), 30, "the cancel on B")
        assert call("DELETE", f"{b}/eureka/apps/ORDERS/o-1")[0] == 404
        status, document = get_json(f"{a}/openapi.json")
        assert "/eureka/apps/{app}/{id}/status" in document["paths"]
        state = get_json(f"{b}/registry/status")[1]
        assert state["self_preservation_enabled"] is False and state["registered_instances"] == 1


def test_writes_during_start_up_are_taken_or_refused_with_retry_after_never_lost(
    stack_settings: Settings, tmp_path: Path
) -> None:
    """From the first HTTP answer through the join of a second worker, every write is either
    acknowledged (and then visible on both workers) or refused with 503 and Retry-After."""
    settings = stack_settings.model_copy(
        update={"domains": "bus,registry", "registry_self_preservation": False}
    )
    apply_topics(settings)
    other = settings.model_copy(update={"web_port": _free_port(), "data_dir": tmp_path / "w2"})
    a, b = (f"http://127.0.0.1:{s.web_port}" for s in (settings, other))
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    taken: list[str] = []
    refused = 0
    with running_worker(settings, log_a), running_worker(other, log_b):
        deadline = time.monotonic() + 120
        ready_since: float | None = None
        sequence = 0
        while time.monotonic() < deadline:
            sequence += 1
            instance_id = f"st-{sequence}"
            base = a if sequence % 2 else b
            request = urllib.request.Request(
                f"{base}/eureka/apps/ORDERS",
                data=register_body(instance_id),
                method="POST",
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    assert response.status == 204
                    taken.append(instance_id)
            except urllib.error.HTTPError as error:
                body = error.read()
                assert error.code == 503, (error.code, body)
                assert error.headers["Retry-After"] == "1"
                assert "retry" in json.loads(body)["error"]
                refused += 1
            except OSError:
                time.sleep(0.1)
                continue
            try:
                states = [get_json(f"{x}/registry/status")[1] for x in (a, b)]
            except OSError:
                continue
            owned = [set(state["owned_partitions"]) for state in states]
            if all(state["ready"] for state in states) and owned[0] and owned[1]:
                ready_since = ready_since or time.monotonic()
                if time.monotonic() - ready_since > 3 and len(taken) > 10:
                    break
            time.sleep(0.05)
        assert taken, f"no write was taken before the deadline\n{log_a.read_text()[-3000:]}"
        print(f"{len(taken)} writes taken, {refused} refused with 503 during start-up")
        for base, log in ((a, log_a), (b, log_b)):
            eventually(
                lambda base=base: set(taken) <= ids(apps_json(base)),
                10,
                f"every acknowledged registration on {base}",
                log,
            )
