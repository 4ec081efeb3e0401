"""Settings: defaults, a YAML or TOML file, and environment variables over both."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from streams.settings import Settings


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No STACKSTREAM_* variable from the calling shell (CI may set ports and addresses)."""
    for name in list(os.environ):
        if name.startswith("STACKSTREAM_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("clean_environment")
def test_defaults_run_against_the_local_stack() -> None:
    settings = Settings()
    assert settings.kafka == "127.0.0.1:19092"
    assert settings.cassandra_contact_points == [("127.0.0.1", 19042)]


@pytest.mark.usefixtures("clean_environment")
@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("s.yaml", "kafka: broker-a:9092\nweb_port: 7000\n"),
        ("s.toml", 'kafka = "broker-a:9092"\nweb_port = 7000\n'),
    ],
)
def test_file_then_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, text: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    monkeypatch.setenv("STACKSTREAM_SETTINGS_FILE", str(path))
    monkeypatch.delenv("STACKSTREAM_KAFKA", raising=False)
    monkeypatch.delenv("STACKSTREAM_WEB_PORT", raising=False)
    assert Settings().kafka == "broker-a:9092"
    monkeypatch.setenv("STACKSTREAM_WEB_PORT", "7100")
    settings = Settings()
    assert settings.web_port == 7100 and settings.kafka == "broker-a:9092"


def test_a_missing_settings_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STACKSTREAM_SETTINGS_FILE", str(tmp_path / "nope.yaml"))
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        Settings()


def test_unknown_keys_and_bad_values_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("kafak: x\n")
    monkeypatch.setenv("STACKSTREAM_SETTINGS_FILE", str(path))
    with pytest.raises(ValidationError, match="kafak"):
        Settings()
    monkeypatch.delenv("STACKSTREAM_SETTINGS_FILE")
    with pytest.raises(ValidationError, match="topic_prefix"):
        Settings(topic_prefix="bad prefix/")


def test_environment_round_trips(tmp_path: Path) -> None:
    settings = Settings(topic_prefix="t1.", web_port=7001, data_dir=tmp_path)
    env = settings.environment()
    assert env["STACKSTREAM_TOPIC_PREFIX"] == "t1."
    assert env["STACKSTREAM_WEB_PORT"] == "7001"
    assert env["STACKSTREAM_DATA_DIR"] == str(tmp_path)


@pytest.mark.usefixtures("clean_environment")
def test_server_addresses_follow_the_local_stack_ports() -> None:
    settings = Settings(kafka_port=29092, elasticsearch_port=29200, cassandra_port=29042)
    assert settings.kafka == "127.0.0.1:29092"
    assert settings.elasticsearch == "http://127.0.0.1:29200"
    assert settings.cassandra_contact_points == [("127.0.0.1", 29042)]
    assert Settings(kafka="broker:9092", kafka_port=29092).kafka == "broker:9092"


def test_workers_can_run_a_subset_of_domains() -> None:
    from streams.app import UnknownDomain, domain_modules

    assert domain_modules(["metrics", "bus"]) == ("streams.bus.agents", "streams.metrics.agents")
    assert "streams.logs.agents" in domain_modules()
    with pytest.raises(UnknownDomain, match="no such domain: nope"):
        domain_modules(["nope"])
    assert Settings(domains=" bus, metrics ").domain_names == ["bus", "metrics"]
