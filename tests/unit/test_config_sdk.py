"""The SDK config client against a tiny in-test Apollo config service (protocol handling only)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from streams.sdk.config import (
    ChangeType,
    ConfigChangeEvent,
    ConfigClient,
    ConfigUnavailable,
    changes_between,
)

APP = "orders"


class FakeConfigService:
    """Apollo's client endpoints over an in-memory release per namespace, with a real hold."""

    def __init__(self, hold_seconds: float = 1.0, port: int = 0) -> None:
        self.hold_seconds = hold_seconds
        self.releases: dict[str, tuple[int, str, dict[str, str]]] = {}
        self.changed = threading.Condition()
        self.requests: list[tuple[str, dict[str, str]]] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                service.requests.append((url.path, query))
                status, body = service.answer(url.path, query)
                payload = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def publish(self, namespace: str, items: dict[str, str]) -> int:
        with self.changed:
            previous = self.releases.get(namespace, (0, "", {}))[0]
            notification_id = previous + 10
            release_key = f"{notification_id}-{uuid.uuid4().hex[:16]}"
            self.releases[namespace] = (notification_id, release_key, dict(items))
            self.changed.notify_all()
        return notification_id

    def answer(self, path: str, query: dict[str, str]) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        if parts[0] == "configs":
            release = self.releases.get(parts[3])
            if release is None:
                return 404, {"error": "not released"}
            if query.get("releaseKey") == release[1]:
                return 304, None
            return 200, {
                "appId": parts[1],
                "cluster": parts[2],
                "namespaceName": parts[3],
                "configurations": release[2],
                "releaseKey": release[1],
            }
        if parts == ["notifications", "v2"]:
            watched = json.loads(query["notifications"])
            deadline = time.monotonic() + self.hold_seconds
            with self.changed:
                while True:
                    updates = [
                        {"namespaceName": w["namespaceName"], "notificationId": release[0]}
                        for w in watched
                        if (release := self.releases.get(w["namespaceName"]))
                        and release[0] > w["notificationId"]
                    ]
                    remaining = deadline - time.monotonic()
                    if updates or remaining <= 0:
                        return (200, updates) if updates else (304, None)
                    self.changed.wait(remaining)
        return 404, {"error": path}

    def polls(self) -> list[list[dict[str, Any]]]:
        return [
            json.loads(q["notifications"]) for p, q in self.requests if p == "/notifications/v2"
        ]


@pytest.fixture
def service() -> Iterator[FakeConfigService]:
    fake = FakeConfigService()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_changes_name_old_and_new_values() -> None:
    changes = changes_between({"a": "1", "b": "2", "c": "3"}, {"a": "1", "b": "20", "d": "4"})
    assert {k: (c.old_value, c.new_value, c.change_type) for k, c in changes.items()} == {
        "b": ("2", "20", ChangeType.MODIFIED),
        "c": ("3", None, ChangeType.DELETED),
        "d": (None, "4", ChangeType.ADDED),
    }


def test_loads_namespaces_and_writes_the_file_cache(
    service: FakeConfigService, tmp_path: Path
) -> None:
    service.publish("application", {"timeout": "100"})
    service.publish("datasources.json", {"content": '{"url": "x"}'})
    client = ConfigClient(
        service.url,
        APP,
        namespaces=["application", "datasources.json"],
        ip="10.0.0.7",
        label="blue",
        cache_dir=tmp_path,
    )
    with client.start(watch=False):
        assert client.get("timeout") == "100"
        assert client.get("missing", "dflt") == "dflt"
        assert client.config("datasources.json") == {"content": '{"url": "x"}'}
        assert client.get("timeout", namespace="application.properties") == "100"
        assert client.source() == "server" and client.release_key().startswith("10-")
        cached = json.loads(client.cache_file("application").read_text())  # type: ignore[union-attr]
        assert cached["configurations"] == {"timeout": "100"}
    [(_path, query)] = [
        r for r in service.requests if r[0] == "/configs/orders/default/application"
    ]
    assert query == {"releaseKey": "-1", "ip": "10.0.0.7", "label": "blue"}


def test_long_poll_pushes_changes_to_listeners_with_old_and_new_values(
    service: FakeConfigService, tmp_path: Path
) -> None:
    first = service.publish("application", {"timeout": "100", "gone": "x"})
    events: list[ConfigChangeEvent] = []
    client = ConfigClient(service.url, APP, cache_dir=tmp_path)
    client.add_change_listener(events.append)
    with client:
        wait_for(lambda: any(p[0]["notificationId"] == first for p in service.polls()))
        assert events == [], "the first poll (-1) answers at once, the refetch is a 304"
        assert [p[0]["notificationId"] for p in service.polls()][:1] == [-1]
        second = service.publish("application", {"timeout": "200", "added": "y"})
        wait_for(lambda: bool(events))
        assert client.get("timeout") == "200"
        [event] = events
        assert event.namespace == "application" and event.release_key.startswith(f"{second}-")
        summary = {k: (c.old_value, c.new_value, c.change_type) for k, c in event.changes.items()}
        assert summary == {
            "timeout": ("100", "200", ChangeType.MODIFIED),
            "gone": ("x", None, ChangeType.DELETED),
            "added": (None, "y", ChangeType.ADDED),
        }
        wait_for(lambda: service.polls()[-1][0]["notificationId"] == second)
    cached = json.loads(client.cache_file("application").read_text())  # type: ignore[union-attr]
    assert cached["configurations"] == {"timeout": "200", "added": "y"}


def test_a_failing_listener_does_not_stop_the_others(
    service: FakeConfigService, tmp_path: Path
) -> None:
    service.publish("application", {"k": "1"})
    seen: list[str] = []

    def broken(event: ConfigChangeEvent) -> None:
        raise RuntimeError("listener bug")

    client = ConfigClient(service.url, APP, cache_dir=tmp_path)
    client.add_change_listener(broken)
    client.add_change_listener(lambda e: seen.append(e.changes["k"].new_value or ""))
    client.add_change_listener(lambda e: seen.append("other ns"), namespaces=["other"])
    with client:
        wait_for(lambda: len(service.polls()) >= 2)
        service.publish("application", {"k": "2"})
        wait_for(lambda: seen == ["2"])


def test_starts_from_the_file_cache_while_the_config_centre_is_down(
    service: FakeConfigService, tmp_path: Path
) -> None:
    service.publish("application", {"timeout": "100"})
    ConfigClient(service.url, APP, cache_dir=tmp_path).start(watch=False).stop()
    service.server.shutdown()
    service.server.server_close()

    offline = ConfigClient(service.url, APP, cache_dir=tmp_path, request_timeout_s=1)
    with offline.start(watch=False, require=True):
        assert offline.get("timeout") == "100" and offline.source() == "file"

    with pytest.raises(ConfigUnavailable, match="no file cache"):
        ConfigClient(service.url, APP, cache_dir=tmp_path / "empty").start(require=True)
    empty = ConfigClient(service.url, APP, cache_dir=None).start(watch=False)
    assert empty.config() == {} and empty.source() == "none"
    empty.stop()


def test_changes_made_while_down_arrive_after_the_file_cache(tmp_path: Path) -> None:
    down = FakeConfigService(hold_seconds=0.5)
    down.publish("application", {"timeout": "100"})
    down.thread.start()
    ConfigClient(down.url, APP, cache_dir=tmp_path).start(watch=False).stop()
    port = down.server.server_address[1]
    down.server.shutdown()
    down.server.server_close()

    events: list[ConfigChangeEvent] = []
    client = ConfigClient(
        f"http://127.0.0.1:{port}", APP, cache_dir=tmp_path, request_timeout_s=1, max_backoff_s=0.2
    )
    client.add_change_listener(events.append)
    client.start()
    try:
        assert client.source() == "file"
        back = FakeConfigService(hold_seconds=0.5, port=port)
        back.publish("application", {"timeout": "300"})
        back.thread.start()
        wait_for(lambda: client.get("timeout") == "300", 10)
        assert client.source() == "server"
        assert events[0].changes["timeout"].old_value == "100"
    finally:
        client.stop()
        back.server.shutdown()
        back.server.server_close()
