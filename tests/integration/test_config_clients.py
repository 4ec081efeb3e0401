"""Config centre clients on real servers: the operator CLI, the SDK client, and dead letters."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, Producer, TopicPartition

from streams.bus.codec import AvroCodec, SchemaRegistry
from streams.cli import main
from streams.config import model
from streams.sdk.config import ChangeType, ConfigChangeEvent, ConfigClient
from streams.settings import Settings
from tests.integration.test_config_service import reachable, wait_ready
from tests.integration.worker import apply_topics, eventually, running_worker

pytestmark = pytest.mark.integration

APP = "payments"


def config_settings(stack_settings: Settings, **changes: Any) -> Settings:
    """Only the bus and config domains, so other domains' work in progress cannot interfere."""
    return stack_settings.model_copy(update={"domains": "bus,config"} | changes)


def create_app(base: str, token: str, log: Path) -> None:
    def created() -> bool:
        answer = reachable(
            lambda: httpx.post(
                f"{base}/config/admin/apps",
                json={"appId": APP, "operator": "ann"},
                headers={"Authorization": f"Bearer {token}"},
                timeout=20,
            )
        )
        return answer is not None and answer.status_code in (201, 409)

    eventually(created, 90, "the app to be created", log)


def cli(base: str, token: str, *args: str) -> str:
    result = CliRunner().invoke(main, ["config", "--url", base, "--token", token, *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_cli_changes_reach_the_sdk_client_which_starts_from_its_file_cache_when_down(
    stack_settings: Settings, tmp_path: Path
) -> None:
    settings = config_settings(stack_settings, config_long_poll_seconds=5.0)
    apply_topics(settings)
    log = tmp_path / "worker.log"
    base = f"http://127.0.0.1:{settings.web_port}"
    token = settings.config_admin_token
    cache = tmp_path / "config-cache"
    with running_worker(settings, log):
        wait_ready(base, log)
        create_app(base, token, log)

        refused = CliRunner().invoke(
            main, ["config", "--url", base, "--token", "wrong", "get", APP]
        )
        assert refused.exit_code == 1 and "401" in refused.output
        assert "added" in cli(base, token, "set", APP, "timeout", "100", "--operator", "ann")
        assert "released" in cli(base, token, "publish", APP, "--comment", "v1", "--operator", "a")
        assert cli(base, token, "get", APP, "timeout").strip() == "100"

        events: list[ConfigChangeEvent] = []
        client = ConfigClient(base, APP, cache_dir=cache, long_poll_timeout_s=30)
        client.add_change_listener(events.append)
        client.start(require=True)
        try:
            assert client.get("timeout") == "100" and client.source() == "server"
            eventually(lambda: client.long_polls >= 2, 10, "the client to hold a long poll")

            cli(base, token, "set", APP, "timeout", "200", "--operator", "bob")
            cli(base, token, "set", APP, "retries", "3", "--operator", "bob")
            cli(base, token, "publish", APP, "--title", "v2", "--operator", "bob")
            returned = time.monotonic()
            eventually(lambda: events, 10, "the change to reach the SDK client", log)
            assert time.monotonic() - returned < 4.0, "pushed by the long poll, before its 5 s hold"
            changes = events[0].changes
            assert changes["timeout"].old_value == "100" and changes["timeout"].new_value == "200"
            assert changes["retries"].change_type is ChangeType.ADDED

            history = cli(base, token, "history", APP, "--json")
            assert '"releaseComment"' not in history and '"v2"' in history
            assert "rolled back" in cli(base, token, "rollback", APP, "--operator", "dan")
            eventually(lambda: client.get("timeout") == "100", 10, "the rollback to reach it")
            assert client.get("retries") is None
            assert events[-1].changes["retries"].change_type is ChangeType.DELETED
        finally:
            client.stop()

        failed = CliRunner().invoke(
            main, ["config", "--url", base, "--token", token, "get", APP, "-n", "nope"]
        )
        assert failed.exit_code == 1 and "404" in failed.output

    offline = ConfigClient(base, APP, cache_dir=cache, request_timeout_s=1)
    offline.start(watch=False, require=True)
    assert offline.get("timeout") == "100" and offline.source() == "file"
    offline.stop()


def _dead_letters(settings: Settings) -> list[dict[str, Any]]:
    codec = AvroCodec(SchemaRegistry.from_directory(settings.schemas_dir))
    name = settings.topic_prefix + "bus.deadletters"
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka,
            "group.id": f"{settings.app_id}-inspect-{time.monotonic_ns()}",
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(name, timeout=10).topics[name].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(name, p))[1] for p in partitions}
        consumer.assign([TopicPartition(name, p, 0) for p in partitions])
        read = dict.fromkeys(partitions, 0)
        letters = []
        deadline = time.monotonic() + 20
        while any(read[p] < ends[p] for p in partitions) and time.monotonic() < deadline:
            message = consumer.poll(1)
            if message is None or message.error():
                continue
            read[message.partition()] = message.offset() + 1
            letters.append(codec.decode(message.value(), "stackstream.bus.DeadLetter"))
        return letters
    finally:
        consumer.close()


def test_a_bad_config_record_is_dead_lettered_once_across_workers_and_restarts(
    stack_settings: Settings, tmp_path: Path
) -> None:
    from tests.conftest import _free_port

    settings_a = config_settings(stack_settings)
    settings_b = settings_a.model_copy(
        update={"web_port": _free_port(), "data_dir": tmp_path / "worker-b"}
    )
    apply_topics(settings_a)
    base_a = f"http://127.0.0.1:{settings_a.web_port}"
    base_b = f"http://127.0.0.1:{settings_b.web_port}"
    key = model.namespace_key(APP, "default", "application").encode()
    releases = settings_a.topic_prefix + "config.releases"

    def letters_for_releases() -> list[dict[str, Any]]:
        return [d for d in _dead_letters(settings_a) if d["source_topic"] == "config.releases"]

    def serves(base: str, value: str) -> bool:
        answer = reachable(lambda: httpx.get(f"{base}/configs/{APP}/default/application"))
        return (
            answer is not None
            and answer.status_code == 200
            and answer.json()["configurations"].get("k") == value
        )

    with (
        running_worker(settings_a, tmp_path / "a.log"),
        running_worker(settings_b, tmp_path / "b.log"),
    ):
        wait_ready(base_a, tmp_path / "a.log")
        wait_ready(base_b, tmp_path / "b.log")
        producer = Producer({"bootstrap.servers": settings_a.kafka})
        producer.produce(releases, key=key, value=b"not a release")
        producer.flush(10)
        create_app(base_a, settings_a.config_admin_token, tmp_path / "a.log")
        admin = httpx.Client(
            base_url=base_a,
            headers={"Authorization": f"Bearer {settings_a.config_admin_token}"},
            timeout=20,
        )
        ns = f"/config/admin/apps/{APP}/clusters/default/namespaces/application"
        assert admin.put(ns + "/items/k", json={"value": "1", "operator": "a"}).status_code == 200
        assert admin.post(ns + "/releases", json={"releasedBy": "a"}).status_code == 201
        eventually(lambda: serves(base_b, "1"), 60, "B to read past the bad record")
        eventually(letters_for_releases, 60, "the dead letter", tmp_path / "a.log")
        time.sleep(3)
        [letter] = letters_for_releases()
        assert letter["error_type"] == "decode" and letter["agent"] == "config.check_releases"
        assert letter["value"] == b"not a release"

    with running_worker(settings_a, tmp_path / "a2.log"):
        wait_ready(base_a, tmp_path / "a2.log")
        eventually(lambda: serves(base_a, "1"), 60, "A to serve again after its restart")
        producer.produce(releases, key=key, value=b"another bad one")
        producer.flush(10)
        letters = eventually(
            lambda: len(letters_for_releases()) >= 2 and letters_for_releases(),
            60,
            "the restarted worker's check agent to dead-letter the new bad record",
            tmp_path / "a2.log",
        )
        time.sleep(2)
        values = [d["value"] for d in letters_for_releases()]
        assert values == [b"not a release", b"another bad one"], "the old one is not repeated"
        assert len(letters) == 2
