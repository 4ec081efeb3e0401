"""topology.yaml: the one declaration of topics, tables, agents and sinks, validated on load.

Errors name the file and line, so a typo is found without reading the loader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

DURATION_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
SIZE_UNITS = {"": 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
CLEANUP_POLICIES = {"delete", "compact", "compact,delete"}
CONNECTORS = {"elasticsearch", "cassandra"}
T = TypeVar("T")
TOPIC_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")


class TopologyError(ValueError):
    """topology.yaml is malformed; the message names the file and line."""


class _Located(dict):
    """A mapping that remembers the line of each key and of itself."""

    line: int = 0
    key_lines: dict[str, int]


class _LineLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> _Located:
        mapping = _Located(super().construct_mapping(node, deep=True))
        mapping.line = node.start_mark.line + 1
        mapping.key_lines = {
            str(key_node.value): key_node.start_mark.line + 1 for key_node, _ in node.value
        }
        return mapping


_LineLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _LineLoader.construct_mapping,  # type: ignore[arg-type]
)


def parse_duration_ms(text: str | int) -> int:
    """'7d' → 604800000; 'forever' → -1 (Kafka's 'keep everything')."""
    if isinstance(text, int):
        return text
    if text == "forever":
        return -1
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d)", text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration like 30s, 15m, 12h, 7d or 'forever'")
    return int(match.group(1)) * DURATION_UNITS_MS[match.group(2)]


def parse_size_bytes(text: str | int) -> int:
    """'10MiB' → 10485760."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"(\d+)\s*(B|KiB|MiB|GiB|)", text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a size like 1048576, 512KiB, 10MiB or 1GiB")
    return int(match.group(1)) * SIZE_UNITS[match.group(2)]


@dataclass(frozen=True)
class TopicSpec:
    """One declared topic; `name` is logical, `kafka_name(prefix)` is what the broker sees."""

    name: str
    partitions: int
    replication: int
    retention_ms: int
    cleanup: str
    key: str
    value_schema: str
    doc: str
    configs: dict[str, str] = field(default_factory=dict)

    def kafka_name(self, prefix: str = "") -> str:
        return f"{prefix}{self.name}"

    def kafka_configs(self) -> dict[str, str]:
        """The broker-side configuration this declaration implies."""
        configs = {"cleanup.policy": self.cleanup, "retention.ms": str(self.retention_ms)}
        configs.update(self.configs)
        return configs


@dataclass(frozen=True)
class TableSpec:
    name: str
    source: str
    key: str
    agent: str
    doc: str
    is_global: bool = False


@dataclass(frozen=True)
class AgentSpec:
    name: str
    source: str
    doc: str


@dataclass(frozen=True)
class SinkSpec:
    name: str
    source: str
    connector: str
    target: str
    agent: str


@dataclass(frozen=True)
class Topology:
    """The validated contents of topology.yaml."""

    path: Path
    topics: dict[str, TopicSpec]
    tables: dict[str, TableSpec]
    agents: dict[str, AgentSpec]
    sinks: dict[str, SinkSpec]

    def topic(self, name: str) -> TopicSpec:
        return _declared(self, "topic", self.topics, name)

    def table(self, name: str) -> TableSpec:
        return _declared(self, "table", self.tables, name)

    def agent(self, name: str) -> AgentSpec:
        return _declared(self, "agent", self.agents, name)

    def sink(self, name: str) -> SinkSpec:
        return _declared(self, "sink", self.sinks, name)


def _declared(topology: Topology, kind: str, entries: dict[str, T], name: str) -> T:
    try:
        return entries[name]
    except KeyError:
        raise KeyError(f"{kind} {name!r} is not declared in {topology.path}") from None


class _Reader:
    """Walks the parsed YAML, turning every problem into a TopologyError with a line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, line: int, message: str) -> TopologyError:
        return TopologyError(f"{self.path}:{line}: {message}")

    def section(self, document: _Located, name: str, required: bool = True) -> _Located:
        value = document.get(name)
        if value is None:
            if required:
                raise self.fail(document.line, f"missing section {name!r}")
            return _Located()
        if not isinstance(value, _Located):
            raise self.fail(document.key_lines[name], f"{name!r} must be a mapping")
        return value

    def entry(self, section: _Located, section_name: str, name: str) -> _Located:
        value = section[name]
        if not isinstance(value, _Located):
            raise self.fail(section.key_lines[name], f"{section_name} {name!r} must be a mapping")
        return value

    def check_fields(
        self, entry: _Located, what: str, required: set[str], optional: set[str]
    ) -> None:
        for key in entry:
            if key not in required | optional:
                allowed = ", ".join(sorted(required | optional))
                raise self.fail(
                    entry.key_lines[key], f"{what}: unknown field {key!r} (allowed: {allowed})"
                )
        for key in sorted(required - set(entry)):
            raise self.fail(entry.line, f"{what}: missing field {key!r}")

    def text(self, entry: _Located, key: str, what: str, default: str | None = None) -> str:
        value = entry.get(key, default)
        if not isinstance(value, str) or not value:
            raise self.fail(entry.key_lines.get(key, entry.line), f"{what}: {key!r} must be text")
        return value

    def positive_int(self, entry: _Located, key: str, what: str, default: int) -> int:
        value = entry.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise self.fail(
                entry.key_lines.get(key, entry.line),
                f"{what}: {key!r} must be a whole number of at least 1, not {value!r}",
            )
        return value

    def reference(self, entry: _Located, key: str, what: str, known: dict[str, Any]) -> str:
        value = self.text(entry, key, what)
        if value not in known:
            raise self.fail(entry.key_lines[key], f"{what}: {key} {value!r} is not declared")
        return value


def load_topology(path: Path, known_schemas: set[str] | None = None) -> Topology:
    """Read and validate topology.yaml; `known_schemas` checks that value schemas exist."""
    reader = _Reader(path)
    try:
        document = yaml.load(path.read_text(), Loader=_LineLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        line = mark.line + 1 if mark else 0
        raise reader.fail(line, f"not valid YAML: {error.problem}") from error
    if not isinstance(document, _Located):
        raise reader.fail(1, "the file must be a mapping with 'topics', 'tables', 'agents'")
    reader.check_fields(
        document,
        "topology",
        {"version", "topics"},
        {"defaults", "tables", "agents", "sinks"},
    )
    if document["version"] != 1:
        raise reader.fail(document.key_lines["version"], "only version 1 is understood")

    defaults = reader.section(document, "defaults", required=False)
    reader.check_fields(
        defaults, "defaults", set(), {"partitions", "replication", "retention", "cleanup"}
    )

    topics = _read_topics(reader, reader.section(document, "topics"), defaults, known_schemas)
    agents_section = reader.section(document, "agents", required=False)
    agents: dict[str, AgentSpec] = {}
    for name in agents_section:
        entry = reader.entry(agents_section, "agent", name)
        what = f"agent {name!r}"
        reader.check_fields(entry, what, {"source", "doc"}, set())
        agents[name] = AgentSpec(
            name=name,
            source=reader.reference(entry, "source", what, topics),
            doc=reader.text(entry, "doc", what),
        )

    tables_section = reader.section(document, "tables", required=False)
    tables: dict[str, TableSpec] = {}
    for name in tables_section:
        entry = reader.entry(tables_section, "table", name)
        what = f"table {name!r}"
        reader.check_fields(entry, what, {"source", "key", "agent", "doc"}, {"global"})
        is_global = entry.get("global", False)
        if not isinstance(is_global, bool):
            raise reader.fail(entry.key_lines["global"], f"{what}: 'global' must be true or false")
        tables[name] = TableSpec(
            name=name,
            source=reader.reference(entry, "source", what, topics),
            key=reader.text(entry, "key", what),
            agent=reader.reference(entry, "agent", what, agents),
            doc=reader.text(entry, "doc", what),
            is_global=is_global,
        )

    sinks_section = reader.section(document, "sinks", required=False)
    sinks: dict[str, SinkSpec] = {}
    for name in sinks_section:
        entry = reader.entry(sinks_section, "sink", name)
        what = f"sink {name!r}"
        reader.check_fields(entry, what, {"source", "connector", "target", "agent"}, set())
        connector = reader.text(entry, "connector", what)
        if connector not in CONNECTORS:
            raise reader.fail(
                entry.key_lines["connector"],
                f"{what}: connector must be one of {sorted(CONNECTORS)}, not {connector!r}",
            )
        sinks[name] = SinkSpec(
            name=name,
            source=reader.reference(entry, "source", what, topics),
            connector=connector,
            target=reader.text(entry, "target", what),
            agent=reader.reference(entry, "agent", what, agents),
        )
    return Topology(path=path, topics=topics, tables=tables, agents=agents, sinks=sinks)


def _read_topics(
    reader: _Reader,
    section: _Located,
    defaults: _Located,
    known_schemas: set[str] | None,
) -> dict[str, TopicSpec]:
    topics: dict[str, TopicSpec] = {}
    for name in section:
        line = section.key_lines[name]
        if not TOPIC_NAME.match(name):
            raise reader.fail(
                line, f"topic name {name!r} must look like 'domain.name' in lowercase"
            )
        entry = reader.entry(section, "topic", name)
        what = f"topic {name!r}"
        reader.check_fields(
            entry,
            what,
            {"doc", "key", "value_schema"},
            {"partitions", "replication", "retention", "cleanup", "configs"},
        )
        cleanup = entry.get("cleanup", defaults.get("cleanup", "delete"))
        if cleanup not in CLEANUP_POLICIES:
            raise reader.fail(
                entry.key_lines.get("cleanup", line),
                f"{what}: cleanup must be one of {sorted(CLEANUP_POLICIES)}, not {cleanup!r}",
            )
        retention = entry.get("retention", defaults.get("retention", "7d"))
        try:
            retention_ms = parse_duration_ms(retention)
        except ValueError as error:
            raise reader.fail(entry.key_lines.get("retention", line), f"{what}: {error}") from None
        configs = entry.get("configs", {})
        if not isinstance(configs, dict) or not all(
            isinstance(k, str) and isinstance(v, str | int) for k, v in configs.items()
        ):
            raise reader.fail(
                entry.key_lines.get("configs", line),
                f"{what}: 'configs' must map Kafka config names to values",
            )
        value_schema = reader.text(entry, "value_schema", what)
        if known_schemas is not None and value_schema not in known_schemas:
            raise reader.fail(
                entry.key_lines["value_schema"],
                f"{what}: no schema named {value_schema!r} in schemas/",
            )
        topics[name] = TopicSpec(
            name=name,
            partitions=reader.positive_int(
                entry, "partitions", what, defaults.get("partitions", 1)
            ),
            replication=reader.positive_int(
                entry, "replication", what, defaults.get("replication", 1)
            ),
            retention_ms=retention_ms,
            cleanup=cleanup,
            key=reader.text(entry, "key", what),
            value_schema=value_schema,
            doc=reader.text(entry, "doc", what),
            configs={k: str(v) for k, v in configs.items()},
        )
    return topics
