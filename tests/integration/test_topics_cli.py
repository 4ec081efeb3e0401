"""`stackstream topics apply|list` against the real broker, through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from streams import cli as cli_module
from streams.cli import main
from streams.settings import get_settings

pytestmark = pytest.mark.integration

TOPOLOGY = """\
version: 1
topics:
  demo.events:
    doc: d
    key: k
    value_schema: stackstream.metrics.MetricPoint
    partitions: 2
    retention: 1d
  demo.state:
    doc: d
    key: k
    value_schema: stackstream.metrics.MetricPoint
    partitions: 1
    cleanup: compact
    retention: forever
"""


@pytest.fixture
def cli(kafka: str, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    topology = tmp_path / "topology.yaml"
    topology.write_text(TOPOLOGY)
    monkeypatch.setenv("STACKSTREAM_KAFKA", kafka)
    monkeypatch.setenv("STACKSTREAM_TOPIC_PREFIX", f"{unique}.")
    monkeypatch.setenv("STACKSTREAM_TOPOLOGY_FILE", str(topology))
    get_settings.cache_clear()
    monkeypatch.setattr(cli_module.console, "width", 200)
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(main, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    yield run, topology
    get_settings.cache_clear()


def topic_config(kafka: str, name: str) -> dict[str, str]:
    admin = AdminClient({"bootstrap.servers": kafka})
    resource = ConfigResource(ResourceType.TOPIC, name)
    entries = admin.describe_configs([resource])[resource].result(timeout=15)
    return {key: entry.value for key, entry in entries.items()}


def test_apply_creates_alters_and_is_idempotent(cli, kafka: str, unique: str) -> None:  # type: ignore[no-untyped-def]
    run, topology = cli
    dry = run("topics", "apply", "--dry-run")
    assert f"+ {unique}.demo.events: create with 2 partitions" in dry
    assert "2 topic(s) would change" in dry
    assert (
        f"{unique}.demo.events"
        not in AdminClient({"bootstrap.servers": kafka}).list_topics(timeout=10).topics
    )

    assert "2 topic(s) changed" in run("topics", "apply")
    assert topic_config(kafka, f"{unique}.demo.state")["cleanup.policy"] == "compact"
    assert topic_config(kafka, f"{unique}.demo.events")["retention.ms"] == "86400000"
    assert "0 topic(s) changed" in run("topics", "apply")

    topology.write_text(TOPOLOGY.replace("partitions: 2", "partitions: 3").replace("1d", "2d"))
    diff = run("topics", "apply")
    assert "partitions 2 -> 3" in diff and "retention.ms: 86400000 -> 172800000" in diff
    metadata = AdminClient({"bootstrap.servers": kafka}).list_topics(timeout=10)
    assert len(metadata.topics[f"{unique}.demo.events"].partitions) == 3
    assert topic_config(kafka, f"{unique}.demo.events")["retention.ms"] == "172800000"

    listing = run("topics", "list")
    assert f"{unique}.demo.events" in listing and f"{unique}.demo.state" in listing


def test_shrinking_partitions_is_refused(cli, unique: str) -> None:  # type: ignore[no-untyped-def]
    run, topology = cli
    run("topics", "apply")
    topology.write_text(TOPOLOGY.replace("partitions: 2", "partitions: 1"))
    result = CliRunner().invoke(main, ["topics", "apply"])
    assert result.exit_code == 1
    assert "cannot remove partitions" in result.output


def test_a_bad_topology_names_its_line(cli) -> None:  # type: ignore[no-untyped-def]
    _run, topology = cli
    topology.write_text(TOPOLOGY.replace("retention: 1d", "retention: one day"))
    result = CliRunner().invoke(main, ["topics", "apply", "--dry-run"])
    assert result.exit_code == 1
    assert "topology.yaml:8:" in result.output and "not a duration" in result.output
