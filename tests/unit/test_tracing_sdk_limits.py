"""The tracing SDK's guards: refused trees, tree limits, text coercion, unique message ids,
work that outlives its request, the exit hook and cancellations."""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from streams.sdk.producer import EventProducer
from streams.sdk.tracing import (
    CANCELLED,
    PID_SLOTS,
    TRUNCATED_EVENT_TYPE,
    MessageIdFactory,
    RemoteContext,
    Tracer,
    TreeLimits,
)
from streams.tracing import model
from tests.unit.test_sdk_producer import closed_port
from tests.unit.test_tracing_sdk import RecordingProducer, make_tracer, valid

HOUR = 3600.0
ID_FORMAT = re.compile(r"orders-c0000202-\d+-\d+")


def messages(tree: dict[str, Any]) -> Iterator[tuple[dict[str, Any], int]]:
    """Every message of a tree with its depth (the root is 1), without recursion."""
    stack = [(tree["root"], 1)]
    while stack:
        message, depth = stack.pop()
        yield message, depth
        stack.extend((child, depth + 1) for child in message.get("children", ()))


# --- 1. one refused tree does not lose the batch ------------------------------------------------


class RefusingProducer(RecordingProducer):
    """Refuses trees by name the ways confluent-kafka, the codec and a full queue do."""

    def emit(self, topic: str, schema: str, record: dict[str, Any], key: Any = None) -> bool:
        name = record["root"]["name"]
        if name == "huge":
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        if name == "full":
            raise BufferError("Local: Queue full")
        if name == "odd":
            raise ValueError("not a MessageTree")
        if name == "invalid":
            return False
        return super().emit(topic, schema, record, key)


def test_a_refused_tree_is_counted_and_the_rest_of_the_batch_is_sent() -> None:
    producer = RefusingProducer()
    tracer = make_tracer(producer=producer)
    names = ["a", "huge", "b", "full", "c", "odd", "d", "invalid", "e"]
    for name in names:
        tracer.log_event("Tick", name)
    tracer.send_batch(tracer.drain())
    assert [record["root"]["name"] for _, _, record, _ in producer.sent] == list("abcde")
    assert (tracer.stats.sent, tracer.stats.refused) == (5, 4)
    assert "ValueError" in (tracer.stats.last_error or "")


def test_a_tree_over_kafkas_message_size_is_refused_by_the_real_producer() -> None:
    producer = EventProducer(
        f"127.0.0.1:{closed_port()}", extra_config={"message.max.bytes": 20_000}
    )
    tracer = make_tracer(producer=producer)
    try:
        tracer.log_event("Tick", "before")
        tracer.log_event("Dump", "huge", data="x" * 60_000)
        tracer.log_event("Tick", "after")
        tracer.send_batch(tracer.drain())
        assert (tracer.stats.sent, tracer.stats.refused) == (2, 1)
        assert "MSG_SIZE_TOO_LARGE" in (tracer.stats.last_error or "")
    finally:
        producer.close(timeout=0)


# --- 2. trees stay inside what the server accepts -----------------------------------------------


def test_the_sdk_limits_are_the_servers() -> None:
    server = dataclasses.asdict(model.TreeLimits())
    sdk = dataclasses.asdict(TreeLimits())
    assert sdk == {name: server[name] for name in sdk}
    with pytest.raises(ValueError, match="max_depth >= 3"):
        TreeLimits(max_depth=2)


def test_deep_recursion_is_recorded_within_max_depth_and_encodes() -> None:
    tracer = make_tracer()
    with ExitStack() as stack:
        for level in range(3_000):
            stack.enter_context(tracer.transaction("Recurse", f"level-{level}"))
        tracer.log_event("Bottom", "reached")
    [tree] = tracer.drain()
    depths = [depth for _, depth in messages(tree)]
    assert max(depths) == TreeLimits().max_depth
    kinds = [message["kind"] for message, _ in messages(tree)]
    assert (kinds.count("TRANSACTION"), kinds.count("EVENT")) == (3_000, 1)
    valid(tree)


def test_a_full_tree_keeps_max_messages_and_notes_how_many_were_left_out() -> None:
    tracer = make_tracer()
    with tracer.transaction("Job", "batch"):
        for index in range(6_000):
            tracer.log_event("Row", str(index))
        with tracer.transaction("SQL", "too-late"):
            tracer.count("rows")
    [tree] = tracer.drain()
    assert sum(1 for _ in messages(tree)) == TreeLimits().max_messages
    note = tree["root"]["children"][-1]
    assert (note["type"], note["status"]) == (TRUNCATED_EVENT_TYPE, "0")
    assert note["data"] == "dropped=1004&max_messages=5000"
    assert tracer.stats.truncated == 1_004
    valid(tree)


def test_smaller_limits_count_every_message_left_out() -> None:
    tracer = make_tracer(limits=TreeLimits(max_messages=4))
    with tracer.transaction("Job", "small"):
        for index in range(5):
            tracer.log_event("Row", str(index))
    [tree] = tracer.drain()
    assert [m["name"] for m in tree["root"]["children"]] == ["0", "1", "messages"]
    assert tree["root"]["children"][-1]["data"] == "dropped=3&max_messages=4"


def test_over_long_strings_are_cut_to_the_limits() -> None:
    tracer = make_tracer()
    limits = TreeLimits()
    with tracer.transaction("T" * 5_000, "N" * 5_000) as span:
        span.add_data("blob", "v" * 70_000)
        for index in range(10_000):
            span.add_data("k", index)
        span.set_status("S" * 5_000)
        tracer.log_event("E" * 5_000, "n" * 5_000, "s" * 5_000, "d" * 70_000)
        tracer.log_metric("m" * 5_000, "C", "1" * 70_000)
    [tree] = tracer.drain()
    root = tree["root"]
    assert [len(root[field]) for field in ("type", "name", "status", "data")] == [
        limits.max_string,
        limits.max_string,
        limits.max_string,
        limits.max_data,
    ]
    event, metric = root["children"]
    assert (len(event["type"]), len(event["data"])) == (limits.max_string, limits.max_data)
    assert (len(metric["name"]), len(metric["data"])) == (limits.max_string, limits.max_data)
    valid(tree)


# --- 3. values of the wrong type ----------------------------------------------------------------


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text")


def test_values_of_the_wrong_type_become_strings() -> None:
    tracer = make_tracer()
    with tracer.transaction("URL", 404) as span:  # type: ignore[arg-type]
        span.add_data(7)
        span.add_data("amount", 12.5)
        span.add_data(Unprintable())
        span.set_status(503)
        tracer.log_event("Pay", 3, status=500, data=123)  # type: ignore[arg-type]
        tracer.log_event("Pay", "none", data=None)
        tracer.log_metric(5, "C", 2)  # type: ignore[arg-type]
    [tree] = tracer.drain()
    root = tree["root"]
    assert (root["name"], root["status"]) == ("404", "503")
    assert root["data"] == "7&amount=12.5&<unprintable Unprintable>"
    event, empty, metric = root["children"]
    assert (event["name"], event["status"], event["data"]) == ("3", "500", "123")
    assert empty["data"] == ""
    assert (metric["name"], metric["data"]) == ("5", "2")
    valid(tree)


# --- 4. message ids never repeat -----------------------------------------------------------------


def test_processes_and_a_restart_within_the_hour_never_issue_the_same_id() -> None:
    now = 493_160 * HOUR + 5
    issued: set[str] = set()
    for pid in (4242, 4243, 9001, 0, PID_SLOTS - 1):  # two workers, a restart, the extremes
        factory = MessageIdFactory("orders", "192.0.2.2", clock=lambda: now, pid=pid)
        ids = [factory.next_id() for _ in range(1_000)]
        assert all(ID_FORMAT.fullmatch(message_id) for message_id in ids)
        assert issued.isdisjoint(ids), f"pid {pid} repeated an id"
        issued.update(ids)
    assert len(issued) == 5_000


def test_a_clock_step_back_never_moves_the_hour_back_or_repeats_an_id() -> None:
    now = [493_161 * HOUR + 5]
    factory = MessageIdFactory("orders", "192.0.2.2", clock=lambda: now[0], pid=0)
    before = [factory.next_id() for _ in range(3)]
    now[0] -= HOUR
    after = [factory.next_id() for _ in range(3)]
    assert after == [f"orders-c0000202-493161-{sequence}" for sequence in (3, 4, 5)]
    assert len(set(before + after)) == 6
    now[0] += 2 * HOUR
    assert factory.next_id() == "orders-c0000202-493162-0"


def test_tracers_of_one_domain_share_the_process_id_factory() -> None:
    first, second = make_tracer("ledger"), make_tracer("ledger")
    assert first.ids is second.ids
    assert first.ids.pid == os.getpid()
    assert make_tracer("billing").ids is not first.ids


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_worker_does_not_continue_its_parents_sequence() -> None:
    factory = make_tracer("forked").ids
    parent_ids = {factory.next_id() for _ in range(3)}
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read)
        os.write(write, f"{factory.pid} {factory.next_id()}".encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_pid, child_id = pipe.read().split()
    os.waitpid(child, 0)
    assert int(child_pid) == child != os.getpid()
    assert child_id.endswith(f"-{(child % PID_SLOTS) * 1_000_000_000}")
    assert child_id not in parent_ids


# --- 5. work that outlives its request -----------------------------------------------------------


async def test_work_that_outlives_its_request_is_reported_linked_to_it() -> None:
    tracer = make_tracer()
    request_done, early_open = asyncio.Event(), asyncio.Event()

    async def early() -> None:
        with tracer.transaction("Job", "early"):
            early_open.set()
            await request_done.wait()

    async def late() -> None:
        await request_done.wait()
        with tracer.transaction("Job", "late"):
            tracer.log_event("Step", "inside")
        tracer.log_event("Step", "outside")

    with tracer.transaction("URL", "/order") as request:
        tasks = [asyncio.create_task(early()), asyncio.create_task(late())]
        await early_open.wait()
    request_done.set()
    await asyncio.gather(*tasks)
    trees = {tree["root"]["name"]: tree for tree in tracer.drain()}
    assert set(trees) == {"/order", "early", "late", "outside"}
    assert trees["/order"]["root"]["children"] == []
    assert [m["name"] for m in trees["late"]["root"]["children"]] == ["inside"]
    for name in ("early", "late", "outside"):
        tree = trees[name]
        assert tree["parent_message_id"] == request.message_id
        assert tree["root_message_id"] == request.root_message_id
        assert tree["message_id"] != request.message_id
        valid(tree)
    assert len({tree["message_id"] for tree in trees.values()}) == 4


async def test_work_that_outlives_a_nested_transaction_joins_the_open_root() -> None:
    tracer = make_tracer()
    nested_done = asyncio.Event()

    async def job() -> None:
        await nested_done.wait()
        with tracer.transaction("Job", "after-nested"):
            pass

    with tracer.transaction("URL", "/order"):
        with tracer.transaction("Service", "nested"):
            task = asyncio.create_task(job())
        nested_done.set()
        await task
    [tree] = tracer.drain()
    assert [m["name"] for m in tree["root"]["children"]] == ["nested", "after-nested"]


# --- 6. the exit hook ----------------------------------------------------------------------------

EXIT_SCRIPT = """
from streams.sdk.tracing import Tracer

class Printing:
    def emit(self, topic, schema, record, key=None):
        print("sent", record["root"]["name"], flush=True)
        return True

    def flush(self, timeout=10.0):
        print("flush", timeout, flush=True)
        return 0

tracer = Tracer("orders", ip="192.0.2.2", producer=Printing(), flush_interval=3600,
                exit_timeout=2.0)
with tracer.transaction("Job", "last"):
    pass
"""


def test_trees_finished_just_before_exit_are_sent() -> None:
    repository = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT],
        cwd=repository,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert "sent last" in lines
    [flush] = [line for line in lines if line.startswith("flush")]
    assert 0 <= float(flush.split()[1]) <= 2.0, "the exit flush is bounded by exit_timeout"


class AtExitLog:
    """Records atexit registrations in order, instead of changing the interpreter's."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, Any]] = []
        monkeypatch.setattr(atexit, "register", lambda f, *a: self.calls.append(("register", f)))
        monkeypatch.setattr(atexit, "unregister", lambda f: self.calls.append(("unregister", f)))

    def registered(self) -> list[Any]:
        hooks: list[Any] = []
        for action, function in self.calls:
            hooks = [hook for hook in hooks if hook != function]
            if action == "register":
                hooks.append(function)
        return hooks


def test_close_removes_the_exit_hook_and_bounds_the_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    hooks = AtExitLog(monkeypatch)
    producer = FlushRecordingProducer()
    tracer = Tracer("orders", ip="192.0.2.2", producer=producer, flush_interval=3600)  # type: ignore[arg-type]
    assert hooks.registered() == [tracer.close]
    tracer.log_event("Tick", "one")
    tracer.close(timeout=1.5)
    assert hooks.registered() == []
    assert len(producer.sent) == 1
    assert producer.timeouts and all(0 <= timeout <= 1.5 for timeout in producer.timeouts)


def test_the_exit_hook_runs_before_the_producers_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STACKSTREAM_KAFKA", f"127.0.0.1:{closed_port()}")
    hooks = AtExitLog(monkeypatch)
    tracer = Tracer("orders", ip="192.0.2.2", flush_interval=3600)
    producer = tracer.producer
    assert hooks.registered() == [producer.close, tracer.close], "last registered runs first"
    tracer.close(timeout=0)
    assert hooks.registered() == [], "the tracer closes the producer it made"


class FlushRecordingProducer(RecordingProducer):
    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[float] = []

    def flush(self, timeout: float = 10.0) -> int:
        self.timeouts.append(timeout)
        return 0


# --- 7. cancellations ----------------------------------------------------------------------


async def test_a_cancelled_request_is_cancelled_not_an_error() -> None:
    tracer = make_tracer()
    started = asyncio.Event()

    @tracer.transactional("URL", "/slow")
    async def slow() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(slow())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [tree] = tracer.drain()
    assert (tree["root"]["status"], tree["root"]["children"]) == (CANCELLED, [])
    valid(tree)


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, SystemExit, GeneratorExit])
def test_interruptions_are_cancelled_without_an_error_event(
    interruption: type[BaseException],
) -> None:
    tracer = make_tracer()
    with pytest.raises(interruption), tracer.transaction("Job", "interrupted"):
        raise interruption()
    [tree] = tracer.drain()
    assert (tree["root"]["status"], tree["root"]["children"]) == (CANCELLED, [])


def test_blank_types_and_names_are_named_so_the_tree_is_not_refused() -> None:
    tracer = make_tracer()
    with tracer.transaction("", "   "):
        tracer.log_event(" ", "")
    [tree] = tracer.drain()
    valid(tree)
    event = tree["root"]["children"][0]
    assert (tree["root"]["type"], tree["root"]["name"]) == ("unknown", "unknown")
    assert (event["type"], event["name"]) == ("unknown", "unknown")


def test_unusable_cat_headers_are_ignored_not_carried_into_the_tree() -> None:
    good = "web-0a000001-474058-1"
    assert RemoteContext.from_headers({"X-CAT-ID": "has space", "X-CAT-ROOT-ID": good}) is None
    linked = RemoteContext.from_headers(
        {"X-CAT-ID": "x" * 300, "X-CAT-PARENT-ID": good, "X-CAT-ROOT-ID": " \t"}
    )
    assert linked == RemoteContext(None, good, None)
    tracer = make_tracer("billing")
    with tracer.transaction("URL", "/charge", remote=linked):
        pass
    [tree] = tracer.drain()
    valid(tree)
    assert tree["parent_message_id"] == tree["root_message_id"] == good
    assert tree["message_id"].startswith("billing-")


def test_a_forked_worker_sends_its_trees_with_a_sender_of_its_own() -> None:
    """gunicorn --preload builds the app, and its Tracer, before forking workers: threads do
    not survive a fork, so each worker starts its own sender."""
    producer = RecordingProducer()
    tracer = Tracer("forked", ip="192.0.2.2", producer=producer, flush_interval=0.01)  # type: ignore[arg-type]
    try:
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            os.close(read)
            with tracer.transaction("URL", "/in-child"):
                pass
            deadline = time.monotonic() + 10
            while not producer.sent and time.monotonic() < deadline:
                time.sleep(0.01)
            names = [record["root"]["name"] for _, _, record, _ in producer.sent]
            os.write(write, " ".join(names).encode() or b"-")
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            sent_in_child = pipe.read().split()
        os.waitpid(child, 0)
        assert sent_in_child == ["/in-child"]
    finally:
        tracer.close(1)
