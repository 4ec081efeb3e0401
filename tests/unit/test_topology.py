"""topology.yaml loads, and every kind of mistake is reported with its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.bus.codec import SchemaRegistry
from streams.settings import PROJECT_ROOT
from streams.topology import TopologyError, load_topology, parse_duration_ms, parse_size_bytes

VALID = """\
version: 1
defaults:
  partitions: 3
topics:
  metrics.points:
    doc: points
    key: metric
    value_schema: stackstream.metrics.MetricPoint
    retention: 2d
  config.releases:
    doc: releases
    key: namespace
    cleanup: compact
    retention: forever
    partitions: 1
    value_schema: stackstream.config.ConfigRelease
agents:
  metrics.track_latest:
    doc: d
    source: metrics.points
tables:
  metrics.latest:
    doc: d
    source: metrics.points
    key: series
    agent: metrics.track_latest
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topology.yaml"
    path.write_text(text)
    return path


def test_the_project_topology_is_valid_and_every_schema_exists() -> None:
    registry = SchemaRegistry.from_directory(PROJECT_ROOT / "schemas")
    topology = load_topology(PROJECT_ROOT / "topology.yaml", known_schemas=registry.names)
    assert {"bus.deadletters", "metrics.points", "config.releases"} <= set(topology.topics)
    for table in topology.tables.values():
        assert table.source in topology.topics
    assert topology.topic("config.releases").kafka_configs()["cleanup.policy"] == "compact"


def test_defaults_and_durations_apply(tmp_path: Path) -> None:
    topology = load_topology(write(tmp_path, VALID))
    points = topology.topic("metrics.points")
    assert points.partitions == 3
    assert points.retention_ms == 2 * 86_400_000
    assert points.kafka_name("t1.") == "t1.metrics.points"
    assert topology.topic("config.releases").retention_ms == -1


@pytest.mark.parametrize(
    ("change", "line", "message"),
    [
        (("    retention: 2d", "    retention: 2 days"), 9, "not a duration"),
        (("    key: metric", "    kee: metric"), 7, "unknown field 'kee'"),
        (
            ("    source: metrics.points\ntables", "    source: metrics.pints\ntables"),
            20,
            "source 'metrics.pints' is not declared",
        ),
        (("    cleanup: compact", "    cleanup: shred"), 13, "cleanup must be one of"),
        (("    partitions: 1", "    partitions: 0"), 15, "at least 1"),
        (("  metrics.points:", "  MetricsPoints:"), 5, "must look like 'domain.name'"),
        (("version: 1", "version: 2"), 1, "only version 1"),
    ],
)
def test_mistakes_name_their_line(
    tmp_path: Path, change: tuple[str, str], line: int, message: str
) -> None:
    path = write(tmp_path, VALID.replace(*change, 1))
    with pytest.raises(TopologyError) as raised:
        load_topology(path)
    assert f"topology.yaml:{line}:" in str(raised.value)
    assert message in str(raised.value)


def test_unknown_schema_is_reported(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match=r"topology.yaml:8: .*no schema named"):
        load_topology(write(tmp_path, VALID), known_schemas={"stackstream.config.ConfigRelease"})


def test_broken_yaml_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match=r"topology.yaml:4: not valid YAML"):
        load_topology(write(tmp_path, "version: 1\ntopics:\n  a: [\n"))


def test_durations_and_sizes() -> None:
    assert parse_duration_ms("15m") == 900_000
    assert parse_size_bytes("10MiB") == 10 * 1024 * 1024
    with pytest.raises(ValueError):
        parse_size_bytes("ten")
