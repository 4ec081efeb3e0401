"""Config centre end to end on real servers: admin API → topics → worker → Apollo client API."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import pytest
from elasticsearch import Elasticsearch

from streams.config.agents import audit_index
from streams.settings import Settings
from tests.integration.worker import apply_topics, eventually, running_worker

pytestmark = pytest.mark.integration

APP = "orders"


class Admin:
    """The admin API of one worker, with the bearer token."""

    def __init__(self, base: str, token: str) -> None:
        self.client = httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=20
        )

    def ns(self, namespace: str = "application", cluster: str = "default") -> str:
        return f"/config/admin/apps/{APP}/clusters/{cluster}/namespaces/{namespace}"

    def call(self, method: str, path: str, body: dict | None = None) -> httpx.Response:
        return self.client.request(method, path, json=body)


def reachable(call: Any) -> Any:
    """`call()`, or None while the worker does not answer yet."""
    try:
        return call()
    except httpx.TransportError:
        return None


def wait_ready(base: str, log: Path) -> None:
    eventually(
        lambda: reachable(lambda: httpx.get(f"{base}/openapi.json", timeout=2).status_code == 200),
        120,
        "the worker's web server",
        log,
    )


def notifications(items: list[tuple[str, int]]) -> str:
    return urllib.parse.quote(
        json.dumps([{"namespaceName": n, "notificationId": i} for n, i in items])
    )


def test_publish_gray_rollback_long_poll_and_audit(
    stack_settings: Settings, tmp_path: Path
) -> None:
    settings = stack_settings.model_copy(update={"config_long_poll_seconds": 3.0})
    apply_topics(settings)
    log = tmp_path / "worker.log"
    base = f"http://127.0.0.1:{settings.web_port}"
    with running_worker(settings, log):
        wait_ready(base, log)
        admin = Admin(base, settings.config_admin_token)

        assert httpx.post(f"{base}/config/admin/apps", json={}).status_code == 401
        bad = admin.call("POST", "/config/admin/apps", {"appId": "bad app", "operator": "ann"})
        assert bad.status_code == 400 and bad.json()["field"] == "appId"
        created = eventually(
            lambda: admin.call("POST", "/config/admin/apps", {"appId": APP, "operator": "ann"}),
            60,
            "the app to be created",
            log,
        )
        assert created.status_code == 201, created.text
        assert (
            admin.call("POST", "/config/admin/apps", {"appId": APP, "operator": "x"}).status_code
            == 409
        )

        assert admin.call("GET", f"{base}/configs/{APP}/default/application").status_code == 404
        poll = httpx.get(
            f"{base}/notifications/v2?appId={APP}&cluster=default"
            f"&notifications={notifications([('application', -1)])}",
            timeout=10,
        )
        assert poll.status_code == 304, "never released: a client with -1 is held, then 304"

        put = admin.call("PUT", admin.ns() + "/items/timeout", {"value": "100", "operator": "ann"})
        assert put.status_code == 200 and put.json()["previous"] is None
        no_value = admin.call("PUT", admin.ns() + "/items/timeout", {"operator": "ann"})
        assert no_value.status_code == 400 and no_value.json()["field"] == "value"
        first = admin.call(
            "POST", admin.ns() + "/releases", {"releasedBy": "ann", "releaseComment": "v1"}
        )
        assert first.status_code == 201, first.text
        first_release = first.json()

        served = httpx.get(f"{base}/configs/{APP}/default/application?ip=10.0.0.1").json()
        assert served["configurations"] == {"timeout": "100"}
        assert served["releaseKey"] == first_release["releaseKey"]
        assert served["cluster"] == "default"
        same = httpx.get(
            f"{base}/configs/{APP}/default/application?releaseKey={served['releaseKey']}"
        )
        assert same.status_code == 304
        fallback = httpx.get(f"{base}/configs/{APP}/shanghai/application.properties").json()
        assert fallback["cluster"] == "default" and fallback["configurations"] == {"timeout": "100"}
        assert httpx.get(f"{base}/configfiles/json/{APP}/default/application").json() == {
            "timeout": "100"
        }
        assert httpx.get(f"{base}/configfiles/{APP}/default/application").text == "timeout=100\n"

        immediate = httpx.get(
            f"{base}/notifications/v2?appId={APP}&cluster=default"
            f"&notifications={notifications([('application', -1)])}",
            timeout=10,
        )
        assert immediate.status_code == 200
        [entry] = immediate.json()
        assert entry["notificationId"] == first_release["releaseId"]
        assert entry["messages"]["details"] == {
            f"{APP}+default+application": entry["notificationId"]
        }

        woke: dict[str, Any] = {}

        def long_poll() -> None:
            started = time.monotonic()
            answer = httpx.get(
                f"{base}/notifications/v2?appId={APP}&cluster=default&notifications="
                + notifications([("application", entry["notificationId"])]),
                timeout=10,
            )
            woke.update(
                status=answer.status_code, body=answer.json(), at=time.monotonic(), t0=started
            )

        poller = threading.Thread(target=long_poll)
        poller.start()
        time.sleep(0.5)
        admin.call("PUT", admin.ns() + "/items/timeout", {"value": "200", "operator": "bob"})
        second = admin.call("POST", admin.ns() + "/releases", {"releasedBy": "bob"}).json()
        poller.join(10)
        assert woke["status"] == 200 and woke["body"][0]["notificationId"] == second["releaseId"]
        assert woke["at"] - woke["t0"] < 3.0, "the long poll answered on the release, not the hold"

        gray = admin.call(
            "POST",
            admin.ns() + "/gray",
            {
                "branchName": "canary",
                "items": {"timeout": "300"},
                "rules": [{"clientAppId": APP, "clientIpList": ["10.0.0.9"]}],
                "operator": "cat",
            },
        )
        assert gray.status_code == 201, gray.text
        canary = httpx.get(f"{base}/configs/{APP}/default/application?ip=10.0.0.9").json()
        other = httpx.get(f"{base}/configs/{APP}/default/application?ip=10.0.0.1").json()
        assert canary["configurations"]["timeout"] == "300"
        assert other["configurations"]["timeout"] == "200"
        bad_rules = admin.call("PUT", admin.ns() + "/gray/rules", {"rules": [{}], "operator": "c"})
        assert bad_rules.status_code == 400 and bad_rules.json()["field"] == "rules[0].clientAppId"
        by_label = admin.call(
            "PUT",
            admin.ns() + "/gray/rules",
            {"rules": [{"clientAppId": APP, "clientLabelList": ["blue"]}], "operator": "cat"},
        )
        assert by_label.status_code == 200
        blue = httpx.get(f"{base}/configs/{APP}/default/application?ip=10.0.0.1&label=blue").json()
        assert blue["configurations"]["timeout"] == "300"
        merged = admin.call("POST", admin.ns() + "/gray/merge", {"operator": "cat"}).json()
        assert merged["gray"] is None and merged["configurations"]["timeout"] == "300"

        rolled = admin.call("POST", admin.ns() + "/rollback", {"operator": "dan"})
        assert rolled.status_code == 200, rolled.text
        assert rolled.json()["configurations"] == {"timeout": "200"}
        assert rolled.json()["releaseKey"] == second["releaseKey"]
        again = admin.call("POST", admin.ns() + "/rollback", {"operator": "dan"}).json()
        assert again["configurations"] == {"timeout": "100"}
        assert httpx.get(f"{base}/configs/{APP}/default/application").json()["configurations"] == {
            "timeout": "100"
        }
        history = admin.call("GET", admin.ns() + "/releases").json()["releases"]
        assert [r["kind"] for r in history][:3] == ["ROLLBACK", "ROLLBACK", "GRAY_MERGE"]
        diff = admin.call(
            "GET", admin.ns() + f"/diff?from={first_release['releaseId']}&to={second['releaseId']}"
        ).json()
        assert diff["changes"]["modified"] == {"timeout": {"old": "100", "new": "200"}}

        created_ns = admin.call(
            "POST",
            f"/config/admin/apps/{APP}/namespaces",
            {"name": "datasources", "format": "json", "operator": "ann"},
        )
        assert (
            created_ns.status_code == 201
            and created_ns.json()["namespaceName"] == "datasources.json"
        )
        admin.call(
            "PUT",
            admin.ns("datasources.json") + "/items/content",
            {"value": '{\n  "url": "jdbc:x",\n  oops\n}', "operator": "ann"},
        )
        invalid = admin.call(
            "POST", admin.ns("datasources.json") + "/releases", {"releasedBy": "ann"}
        )
        assert invalid.status_code == 400
        assert invalid.json()["field"] == "content" and "line 3" in invalid.json()["error"]

        es = Elasticsearch(settings.elasticsearch)
        index = audit_index(settings.elasticsearch_index_prefix)

        def audited() -> list[dict] | None:
            es.indices.refresh(index=index, ignore_unavailable=True)
            hits = es.search(index=index, size=100, ignore_unavailable=True)["hits"]["hits"]
            actions = [h["_source"] for h in hits]
            return actions if any(not a["success"] for a in actions) else None

        documents = eventually(audited, 90, "audit documents in Elasticsearch", log)
        actions = {d["action"] for d in documents}
        assert {"CREATE_APP", "CREATE_ITEM", "UPDATE_ITEM", "PUBLISH", "GRAY_PUBLISH"} <= actions
        assert {"GRAY_RULES_UPDATE", "GRAY_MERGE", "ROLLBACK", "CREATE_NAMESPACE"} <= actions
        refused = [d for d in documents if not d["success"]]
        assert (
            refused
            and refused[0]["action"] == "PUBLISH"
            and "line 3" in refused[0]["details"]["reason"]
        )
        es.indices.delete(index=index, ignore_unavailable=True)


def test_publish_on_one_worker_wakes_a_long_poll_on_another(
    stack_settings: Settings, tmp_path: Path
) -> None:
    from tests.conftest import _free_port

    settings_a = stack_settings.model_copy(update={"config_long_poll_seconds": 20.0})
    settings_b = settings_a.model_copy(
        update={"web_port": _free_port(), "data_dir": tmp_path / "worker-b"}
    )
    apply_topics(settings_a)
    base_a = f"http://127.0.0.1:{settings_a.web_port}"
    base_b = f"http://127.0.0.1:{settings_b.web_port}"
    with (
        running_worker(settings_a, tmp_path / "a.log"),
        running_worker(settings_b, tmp_path / "b.log"),
    ):
        wait_ready(base_a, tmp_path / "a.log")
        wait_ready(base_b, tmp_path / "b.log")
        admin = Admin(base_a, settings_a.config_admin_token)
        eventually(
            lambda: (
                admin.call(
                    "POST", "/config/admin/apps", {"appId": APP, "operator": "ann"}
                ).status_code
                in (201, 409)
            ),
            90,
            "the app on worker A",
            tmp_path / "a.log",
        )
        eventually(
            lambda: (
                httpx.get(f"{base_b}/openapi.json").status_code == 200
                and admin.call(
                    "PUT", admin.ns() + "/items/k", {"value": "1", "operator": "a"}
                ).status_code
                == 200
            ),
            60,
            "a draft item",
            tmp_path / "a.log",
        )
        first = admin.call("POST", admin.ns() + "/releases", {"releasedBy": "a"}).json()
        eventually(
            lambda: reachable(
                lambda: httpx.get(f"{base_b}/configs/{APP}/default/application").status_code == 200
            ),
            60,
            "B to serve the first release (both workers settled)",
            tmp_path / "b.log",
        )
        admin.call("PUT", admin.ns() + "/items/k", {"value": "2", "operator": "a"})
        answer: dict[str, Any] = {}

        def poll_b() -> None:
            response = httpx.get(
                f"{base_b}/notifications/v2?appId={APP}&cluster=default"
                f"&notifications={notifications([('application', first['releaseId'])])}",
                timeout=30,
            )
            answer.update(status=response.status_code, at=time.monotonic())

        poller = threading.Thread(target=poll_b)
        poller.start()
        time.sleep(1.0)
        assert poller.is_alive(), "B holds the poll: nothing newer than the client's id yet"
        release = admin.call("POST", admin.ns() + "/releases", {"releasedBy": "a"})
        returned = time.monotonic()
        assert release.status_code == 201, release.text
        poller.join(25)
        assert answer["status"] == 200
        assert answer["at"] - returned < 10.0, "B woke on A's release, well before its 20 s hold"
        served = httpx.get(f"{base_b}/configs/{APP}/default/application").json()
        assert served["configurations"] == {"k": "2"}
