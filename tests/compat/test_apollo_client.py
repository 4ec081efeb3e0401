"""apollo-client-python (PyPI, unchanged) reads config from stackstream and receives a change."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from apollo import ApolloClient

from streams.settings import Settings
from tests.integration.test_config_service import reachable, wait_ready
from tests.integration.worker import apply_topics, eventually, running_worker

pytestmark = pytest.mark.integration

APP = "compat-apollo"


def test_apollo_client_python_reads_config_and_receives_a_change(
    stack_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = stack_settings.model_copy(
        update={"domains": "bus,config", "config_long_poll_seconds": 5.0}
    )
    apply_topics(settings)
    log = tmp_path / "worker.log"
    base = f"http://127.0.0.1:{settings.web_port}"
    with running_worker(settings, log):
        wait_ready(base, log)
        admin = httpx.Client(
            base_url=base,
            headers={"Authorization": f"Bearer {settings.config_admin_token}"},
            timeout=20,
        )
        eventually(
            lambda: reachable(
                lambda: (
                    admin.post(
                        "/config/admin/apps", json={"appId": APP, "operator": "ann"}
                    ).status_code
                    in (201, 409)
                )
            ),
            90,
            "the app",
            log,
        )
        ns = f"/config/admin/apps/{APP}/clusters/default/namespaces/application"
        admin.put(ns + "/items/timeout", json={"value": "100", "operator": "ann"})
        admin.put(ns + "/items/mode", json={"value": "blue", "operator": "ann"})
        assert admin.post(ns + "/releases", json={"releasedBy": "ann"}).status_code == 201

        changes: list[dict[str, Any]] = []
        client = ApolloClient(
            config_url=base,
            app_id=APP,
            cluster="default",
            namespaces=["application"],
            enable_scheduled_updates=False,
            enable_long_pool_updates=True,
            value_change_listeners=[changes.append],
            enable_dotenv=False,
        )
        try:
            assert client.get_value("timeout") == "100"
            assert client.get_config() == {"timeout": "100", "mode": "blue"}
            cache = tmp_path / "data/apollo/cache" / f"{APP}_configuration_application.txt"
            assert cache.is_file(), "the client wrote its file cache from our answer"
            client.start()
            time.sleep(1.0)

            admin.put(ns + "/items/timeout", json={"value": "250", "operator": "bob"})
            admin.delete(ns + "/items/mode", params={"operator": "bob"})
            assert admin.post(ns + "/releases", json={"releasedBy": "bob"}).status_code == 201
            eventually(lambda: client.get_value("timeout") == "250", 20, "the pushed change", log)
            assert client.get_value("mode") is None
            by_key = {c["key"]: c for c in changes}
            assert by_key["timeout"]["action"] == "update"
            assert (by_key["timeout"]["old_value"], by_key["timeout"]["value"]) == ("100", "250")
            assert by_key["mode"]["action"] == "delete"
        finally:
            client.stop()
