"""The tracing SDK: nesting through contextvars, message ids, CAT headers, the bounded buffer."""

from __future__ import annotations

import asyncio
import contextvars
import re
import threading
from typing import Any

import httpx
import pytest

from streams.bus.codec import AvroCodec, SchemaRegistry
from streams.sdk.context import get_trace
from streams.sdk.tracing import (
    CHILD_HEADER,
    PARENT_HEADER,
    ROOT_HEADER,
    MessageIdFactory,
    RemoteContext,
    Tracer,
    TracingMiddleware,
    current_transaction,
    httpx_transport,
    ip_hex,
)
from streams.settings import Settings
from streams.tracing.events import TREE_SCHEMA
from streams.tracing.model import validate_tree


def make_tracer(domain: str = "orders", **options: Any) -> Tracer:
    return Tracer(domain, ip="192.0.2.2", hostname="box", start_sender=False, **options)


def valid(tree: dict[str, Any]) -> dict[str, Any]:
    codec = AvroCodec(SchemaRegistry.from_directory(Settings().schemas_dir))
    decoded = codec.decoder(TREE_SCHEMA)(codec.encode(TREE_SCHEMA, tree))
    validate_tree(decoded)
    return decoded


def test_message_ids_follow_cat_and_restart_each_hour() -> None:
    assert ip_hex("192.0.2.2") == "c0000202"
    now = [493160 * 3600.0 + 5]
    ids = MessageIdFactory("orders", "192.0.2.2", clock=lambda: now[0], pid=0)
    assert [ids.next_id() for _ in range(3)] == [
        "orders-c0000202-493160-0",
        "orders-c0000202-493160-1",
        "orders-c0000202-493160-2",
    ]
    now[0] += 3600
    assert ids.next_id() == "orders-c0000202-493161-0"
    with pytest.raises(ValueError, match="IPv4"):
        ip_hex("::1")


def test_nested_transactions_events_and_metrics_make_one_valid_tree() -> None:
    tracer = make_tracer()
    with tracer.transaction("URL", "/pay") as root:
        root.add_data("amount", 12)
        tracer.log_event("Pay", "card")
        with tracer.transaction("SQL", "insert"):
            tracer.count("orders.paid")
        assert get_trace() is not None and get_trace().span_id == root.message_id
    assert current_transaction() is None and get_trace() is None
    [tree] = tracer.drain()
    assert re.fullmatch(r"orders-c0000202-\d+-\d+", tree["message_id"])
    assert tree["root"]["data"] == "amount=12"
    kinds = [(m["kind"], m["type"]) for m in tree["root"]["children"]]
    assert kinds == [("EVENT", "Pay"), ("TRANSACTION", "SQL")]
    assert tree["root"]["children"][1]["children"][0]["kind"] == "METRIC"
    assert valid(tree)["root"]["type"] == "URL"


def test_an_exception_fails_the_transaction_and_logs_an_error_event() -> None:
    tracer = make_tracer()

    @tracer.transactional("Service")
    def charge() -> None:
        raise KeyError("card")

    with pytest.raises(KeyError):
        charge()
    [tree] = tracer.drain()
    root = tree["root"]
    assert root["name"].endswith("charge")
    assert root["status"] == "KeyError"
    [error] = root["children"]
    assert (error["type"], error["name"], error["status"]) == ("Exception", "KeyError", "ERROR")
    assert "KeyError" in error["data"]
    valid(tree)


async def test_asyncio_tasks_and_to_thread_nest_under_the_transaction_that_started_them() -> None:
    tracer = make_tracer()

    @tracer.transactional("Call")
    async def call(name: str) -> None:
        await asyncio.sleep(0)
        tracer.log_event("Step", name)

    def blocking() -> None:
        with tracer.transaction("SQL", "in-thread"):
            pass

    with tracer.transaction("URL", "/fan-out"):
        await asyncio.gather(call("a"), call("b"))
        await asyncio.to_thread(blocking)
    other = asyncio.create_task(call("alone"))
    await other
    trees = tracer.drain()
    assert len(trees) == 2
    children = trees[0]["root"]["children"]
    assert sorted(m["type"] for m in children) == ["Call", "Call", "SQL"]
    assert trees[1]["root"]["type"] == "Call", "a task started outside runs its own tree"


def test_a_plain_thread_starts_its_own_tree_unless_given_the_context() -> None:
    tracer = make_tracer()

    def work() -> None:
        with tracer.transaction("Job", "thread"):
            pass

    with tracer.transaction("URL", "/spawn"):
        plain = threading.Thread(target=work)
        plain.start()
        plain.join()
        context = contextvars.copy_context()
        joined = threading.Thread(target=context.run, args=(work,))
        joined.start()
        joined.join()
    trees = tracer.drain()
    assert [t["root"]["name"] for t in trees] == ["thread", "/spawn"]
    assert [c["name"] for c in trees[1]["root"]["children"]] == ["thread"]


def test_remote_call_headers_link_caller_and_callee() -> None:
    caller, callee = make_tracer("web"), make_tracer("billing")
    with caller.transaction("URL", "/checkout") as outer:
        headers = caller.remote_call_headers("billing")
    assert headers[ROOT_HEADER] == headers[PARENT_HEADER] == outer.message_id
    remote = RemoteContext.from_headers({k.lower(): v for k, v in headers.items()})
    with callee.transaction("URL", "/charge", remote=remote):
        second_hop = callee.remote_call_headers("ledger")
    [caller_tree], [callee_tree] = caller.drain(), callee.drain()
    [remote_event] = caller_tree["root"]["children"]
    assert (remote_event["type"], remote_event["data"]) == ("RemoteCall", headers[CHILD_HEADER])
    assert callee_tree["message_id"] == headers[CHILD_HEADER]
    assert callee_tree["parent_message_id"] == outer.message_id
    assert callee_tree["root_message_id"] == outer.message_id
    assert second_hop[ROOT_HEADER] == outer.message_id, "the root id travels the whole chain"
    assert second_hop[PARENT_HEADER] == headers[CHILD_HEADER]
    assert RemoteContext.from_headers({}) is None


def test_a_full_buffer_drops_and_counts_instead_of_blocking() -> None:
    tracer = make_tracer(buffer_size=3)
    for index in range(5):
        tracer.log_event("Tick", str(index))
    assert (tracer.stats.queued, tracer.stats.dropped) == (3, 2)
    assert [t["root"]["name"] for t in tracer.drain()] == ["0", "1", "2"]


class RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, Any], Any]] = []

    def emit(self, topic: str, schema: str, record: dict[str, Any], key: Any = None) -> bool:
        self.sent.append((topic, schema, record, key))
        return True

    def flush(self, timeout: float = 10.0) -> int:
        return 0


def test_the_sender_thread_emits_batches_keyed_by_domain() -> None:
    producer = RecordingProducer()
    tracer = Tracer("orders", ip="192.0.2.2", producer=producer, flush_interval=0.01)  # type: ignore[arg-type]
    for index in range(20):
        tracer.log_event("Tick", str(index))
    tracer.close()
    assert len(producer.sent) == 20 and tracer.stats.sent == 20
    assert {(topic, key) for topic, _, _, key in producer.sent} == {("trace.messages", "orders")}


async def test_asgi_middleware_and_httpx_transport_carry_the_chain() -> None:
    web, billing = make_tracer("web"), make_tracer("billing")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        status = 503 if scope["path"] == "/down" else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    service = httpx.ASGITransport(app=TracingMiddleware(app, billing))
    async with httpx.AsyncClient(
        transport=httpx_transport(web, service), base_url="http://billing"
    ) as client:
        with web.transaction("URL", "/checkout") as outer:
            assert (await client.get("/charge")).status_code == 200
            assert (await client.get("/down")).status_code == 503
    [web_tree] = web.drain()
    calls = web_tree["root"]["children"]
    assert [(c["type"], c["name"], c["status"]) for c in calls] == [
        ("Call", "billing/charge", "0"),
        ("Call", "billing/down", "503"),
    ]
    served = billing.drain()
    assert [(t["root"]["name"], t["root"]["status"]) for t in served] == [
        ("/charge", "0"),
        ("/down", "503"),
    ]
    assert {t["root_message_id"] for t in served} == {outer.message_id}
    remote_ids = [c["children"][0]["data"] for c in calls]
    assert [t["message_id"] for t in served] == remote_ids
