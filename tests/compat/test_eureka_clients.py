"""Real Eureka clients against a real worker: py-eureka-client 0.13.3 and Spring-style bodies.

py-eureka-client registers with a JSON body and reads the registry as XML (gzip); version 0.13.3
has no JSON read mode, so JSON reads are exercised by our SDK's DiscoveryClient on the same
registry, and JSON/XML register bodies as a Spring Cloud client sends them are read back
byte-compatible.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from xml.etree.ElementTree import fromstring

import httpx
import pytest
from py_eureka_client.eureka_client import EurekaClient

from streams.sdk.discovery import DiscoveryClient, LoadBalancer, Server
from streams.settings import Settings
from tests.integration.worker import apply_topics, eventually, get_json, running_worker
from tests.unit.test_registry_codec import SPRING_JSON, SPRING_XML

pytestmark = pytest.mark.integration

SERVER_OWNED_LEASE = (
    "registrationTimestamp",
    "lastRenewalTimestamp",
    "serviceUpTimestamp",
    "evictionTimestamp",
)


def call(method: str, url: str, body: bytes | None = None, **headers: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture
def registry_url(stack_settings: Settings, tmp_path: Path) -> Iterator[str]:
    """One worker running only the bus and registry domains; its base URL once it takes writes."""
    settings = stack_settings.model_copy(
        update={"domains": "bus,registry", "registry_self_preservation": False}
    )
    apply_topics(settings)
    base = f"http://127.0.0.1:{settings.web_port}"
    log = tmp_path / "worker.log"
    with running_worker(settings, log):

        def ready() -> bool:
            status, state = get_json(f"{base}/registry/status")
            return status == 200 and state["ready"] and bool(state["owned_partitions"])

        eventually(ready, 120, "the registry worker to take writes", log)
        yield base


@pytest.fixture
def callee() -> Iterator[int]:
    """A tiny HTTP service on 127.0.0.1 that the clients discover and call; yields its port."""

    class Hello(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"hello": "from callee", "path": self.path}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def instance_xml(base: str, app: str, instance_id: str) -> dict[str, str]:
    status, body = call("GET", f"{base}/eureka/apps/{app}/{instance_id}")
    assert status == 200, body
    root = fromstring(body)
    assert root.tag == "instance"
    fields = {child.tag: child.text or "" for child in root}
    fields.update({f"lease.{c.tag}": c.text or "" for c in root.find("leaseInfo") or []})
    fields["port.enabled"] = root.find("port").get("enabled")  # type: ignore[union-attr]
    return fields


def test_py_eureka_client_registers_heartbeats_discovers_and_calls_a_service(
    registry_url: str, callee: int
) -> None:
    base = registry_url

    async def scenario() -> None:
        provider = EurekaClient(
            eureka_server=f"{base}/eureka",
            app_name="hello-svc",
            instance_id=f"127.0.0.1:hello-svc:{callee}",
            instance_host="127.0.0.1",
            instance_ip="127.0.0.1",
            instance_port=callee,
            renewal_interval_in_secs=1,
            duration_in_secs=30,
            metadata={"zone": "z1", "version": "1.2"},
            should_discover=False,
        )
        await provider.start()
        provider_id = f"127.0.0.1:hello-svc:{callee}"
        first = instance_xml(base, "HELLO-SVC", provider_id)
        assert first["status"] == "UP" and first["port"] == str(callee)
        assert first["port.enabled"] == "true" and first["vipAddress"] == "hello-svc"
        assert first["lease.durationInSecs"] == "30"

        # Heartbeats every second move lastRenewalTimestamp on the server.
        def renewed() -> bool:
            now = instance_xml(base, "HELLO-SVC", provider_id)["lease.lastRenewalTimestamp"]
            return int(now) > int(first["lease.lastRenewalTimestamp"])

        eventually(renewed, 10, "a heartbeat from py-eureka-client")
        status, state = get_json(f"{base}/registry/status")
        assert status == 200 and state["renews_last_min"] + state["registered_instances"] >= 1

        # The consumer registers too (through /eureka/v2/), discovers the provider over XML
        # (gzip) and calls it.
        consumer = EurekaClient(
            eureka_server=f"{base}/eureka/v2",
            app_name="hello-caller",
            instance_host="127.0.0.1",
            instance_ip="127.0.0.1",
            instance_port=9,
            renewal_interval_in_secs=1,
        )
        await consumer.start()
        answer = await consumer.do_service(
            "HELLO-SVC", "/greet?name=eureka", return_type="json", prefer_ip=True
        )
        assert answer == {"hello": "from callee", "path": "/greet?name=eureka"}

        # A second provider instance reaches the consumer through its delta fetch.
        second = EurekaClient(
            eureka_server=f"{base}/eureka",
            app_name="hello-svc",
            instance_id="127.0.0.2:hello-svc:1",
            instance_host="127.0.0.2",
            instance_ip="127.0.0.2",
            instance_port=1,
            renewal_interval_in_secs=1,
            should_discover=False,
        )
        await second.start()

        def both_known() -> bool:
            application = consumer.applications.get_application("HELLO-SVC")
            return len(application.instances) == 2

        eventually(both_known, 10, "the second instance in py-eureka-client's copy (delta)")

        # Our own SDK reads the same registry as JSON and calls the provider through a rule.
        with DiscoveryClient(f"{base}/eureka/", poll_interval_s=0.5) as discovery:
            servers = {s.instance_id for s in LoadBalancer(discovery).servers("hello-svc")}
            assert servers == {provider_id, "127.0.0.2:hello-svc:1"}

            def greet(server: Server) -> dict:
                response = httpx.get(f"http://{server.address}/sdk", timeout=2)
                return response.json()

            balancer = LoadBalancer(discovery)
            for _ in range(4):
                # 127.0.0.2:1 refuses connections: the balancer retries the next server.
                assert balancer.execute("HELLO-SVC", greet)["path"] == "/sdk"

        await consumer.stop()
        await second.stop()
        await provider.stop()

    # A generous bound: the first worker after the servers start answers slowly at first.
    asyncio.run(asyncio.wait_for(scenario(), 240))


def normalise_json(document: str, served: dict) -> str:
    """The recorded body with the values only a server sets taken from what the server said."""
    recorded = json.loads(document)["instance"]
    for name in SERVER_OWNED_LEASE:
        recorded["leaseInfo"][name] = served["leaseInfo"][name]
    recorded["lastUpdatedTimestamp"] = served["lastUpdatedTimestamp"]
    return json.dumps({"instance": recorded}, separators=(",", ":"))


def normalise_xml(document: str, served: bytes) -> str:
    expected = document
    for name in (*SERVER_OWNED_LEASE, "lastUpdatedTimestamp"):
        value = re.search(rf"<{name}>([^<]*)</{name}>".encode(), served)
        assert value is not None, name
        served_element = f"<{name}>{value[1].decode()}</{name}>"
        expected = re.sub(rf"<{name}>[^<]*</{name}>", served_element, expected)
    return expected


@pytest.mark.parametrize(
    ("content_type", "recorded"),
    [("application/json", SPRING_JSON), ("application/xml", SPRING_XML)],
)
def test_a_recorded_spring_register_body_is_read_back_byte_compatible(
    registry_url: str, content_type: str, recorded: str
) -> None:
    base = registry_url
    started = int(time.time() * 1000)
    status, body = call(
        "POST", f"{base}/eureka/apps/ORDERS", recorded.encode(), **{"Content-Type": content_type}
    )
    assert status == 204, body
    instance_url = f"{base}/eureka/apps/ORDERS/192.0.2.10:orders:8080"

    status, served_json = call("GET", instance_url, Accept="application/json")
    assert status == 200
    served = json.loads(served_json)["instance"]
    assert int(served["leaseInfo"]["registrationTimestamp"]) >= started
    assert served_json.decode() == normalise_json(SPRING_JSON, served)

    status, served_xml = call("GET", instance_url, Accept="application/xml")
    assert status == 200
    assert served_xml.decode() == normalise_xml(SPRING_XML, served_xml)

    status, body = call("GET", f"{base}/eureka/v2/apps", Accept="application/json")
    envelope = json.loads(body)["applications"]
    assert envelope["apps__hashcode"] == "UP_1_" and envelope["versions__delta"] == "1"
    assert envelope["application"][0]["instance"][0] == served
