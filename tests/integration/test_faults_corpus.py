"""Malformed-input corpus into every consumed topic: all of it lands in dead letters, the worker
stays up, the counters match, and valid records are still processed afterwards.

For every input topic a worker with all domains reads, the corpus holds hypothesis-generated
bytes (bare and behind a valid header), truncated records, unknown and foreign fingerprints,
empty and missing values, a record near the topic's size limit and records carrying hostile
strings (invalid UTF-8 surrogates, NUL, 100 KB, right-to-left overrides and emoji). What each
reading agent must do with each record is predicted in-process with the same codec and the
domain's own validator; the worker must then have dead-lettered exactly those, with a reason.
"""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, ConfigResource
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from streams.bus.codec import (
    HEADER_SIZE,
    SINGLE_OBJECT_MARKER,
    AvroCodec,
    CodecError,
    SchemaRegistry,
)
from streams.bus.dlq import read_dead_letters
from streams.config.model import validate_release
from streams.errors import RecordRejected
from streams.logs.model import validate_record
from streams.metrics.model import validate_point
from streams.registry.model import validate_event
from streams.settings import Settings
from streams.tracing.model import validate_tree
from tests.integration.worker import apply_topics, eventually, get_json, running_worker
from tests.records import TREE_SCHEMA, chain_tree_bytes
from tests.unit.test_schema_files import SAMPLES

pytestmark = pytest.mark.integration

Validator = Callable[[Mapping[str, Any]], None]
BROKER_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
SURROGATE_PLACEHOLDER = "SURROGATE"  # 9 bytes, replaced by three encoded lone surrogates
SURROGATE_BYTES = "\ud83d\ude00\ud800".encode("utf-8", "surrogatepass")
HOSTILE_STRINGS = {
    "nul": "before\x00after\x00",
    "100kb": "x" * 100_000,
    "rtl_emoji": "\u202egnp.exe\u202c \U0001f469\u200d\U0001f469\u200d\U0001f467 "
    "\u0645\u0631\u062d\u0628\u0627 \ufeff\u200b",
}


@dataclass(frozen=True)
class Reader:
    """An agent that decodes a topic, and the domain validator it applies (if any)."""

    agent: str
    validate: Validator | None = None
    dead_letters_validation: bool = True


def _logging_rules_only(record: Mapping[str, Any]) -> None:
    """logs.track_rules refuses only releases of the logging namespace (none in this corpus)."""
    if record.get("namespace") == "stackstream.logging":
        validate_release(record)


@dataclass(frozen=True)
class InputTopic:
    schema: str
    sample: str
    readers: tuple[Reader, ...]
    tombstones_allowed: bool = False
    hostile_valid_strings: bool = True


# Every topic a worker with all domains consumes (topology.yaml `agents`), with its readers.
INPUT_TOPICS: dict[str, InputTopic] = {
    "metrics.points": InputTopic(
        "stackstream.metrics.MetricPoint",
        "metric_point",
        (
            Reader("metrics.track_latest", validate_point),
            Reader("sinks.points_to_cassandra", validate_point),
        ),
    ),
    "trace.messages": InputTopic(
        "stackstream.tracing.MessageTree",
        "message_tree",
        (
            Reader("tracing.build_reports", validate_tree),
            # the logview sink decodes, and skips trees the report agent dead-letters
            Reader("sinks.trace_logview_to_elasticsearch", validate_tree, False),
        ),
    ),
    "logs.records": InputTopic(
        "stackstream.logs.LogRecord",
        "log_record",
        (Reader("sinks.logs_to_elasticsearch", validate_record),),
    ),
    "registry.events": InputTopic(
        "stackstream.registry.RegistryEvent",
        "registry_event",
        (Reader("registry.apply_events", validate_event),),
    ),
    "config.releases": InputTopic(
        "stackstream.config.ConfigRelease",
        "config_release",
        (
            Reader("config.check_releases", validate_release),
            Reader("logs.track_rules", _logging_rules_only),
        ),
        tombstones_allowed=True,
    ),
    # Never compacted, so a tombstone there is bad input; the check agent passes it silently
    # as on the compacted topics: test_a_tombstone_on_the_release_history_is_dead_lettered.
    "config.release_history": InputTopic(
        "stackstream.config.ConfigRelease",
        "config_release",
        (Reader("config.check_history", validate_release),),
        tombstones_allowed=True,
    ),
    "config.drafts": InputTopic(
        "stackstream.config.ConfigRelease",
        "config_release",
        (Reader("config.check_drafts", validate_release),),
        tombstones_allowed=True,
    ),
    "config.audit": InputTopic(
        "stackstream.config.AuditEvent",
        "config_audit",
        (Reader("sinks.config_audit_to_elasticsearch"),),
    ),
    # A valid DeadLetter written here by hand would be counted as a real one; only undecodable
    # records are sent, which the counting agent must itself dead-letter (no loop: the dead
    # letter it writes is valid).
    "bus.deadletters": InputTopic(
        "stackstream.bus.DeadLetter",
        "dead_letter",
        (Reader("bus.count_deadletters"),),
        hostile_valid_strings=False,
    ),
}


@dataclass
class Sample:
    """One corpus record and what each reading agent must do with it."""

    topic: str
    kind: str
    value: bytes | None
    expected: Counter[tuple[str, str]] = field(default_factory=Counter)
    partition: int = -1
    offset: int = -1


def _hypothesis_examples(strategy: st.SearchStrategy[bytes], count: int) -> list[bytes]:
    """`count` examples of a strategy, derandomised so the corpus is the same on every run."""
    found: list[bytes] = []

    @hypothesis_settings(
        max_examples=count,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(strategy)
    def collect(example: bytes) -> None:
        found.append(example)

    collect()
    return found


def _string_fields(schema: Any) -> list[str]:
    return [f["name"] for f in schema["fields"] if f["type"] == "string"]


def _with_surrogates(codec: AvroCodec, schema_name: str, record: dict[str, Any]) -> bytes:
    """A valid encoding whose first string field holds UTF-8-encoded surrogates (invalid)."""
    first = _string_fields(codec.registry.get(schema_name).parsed)[0]
    encoded = codec.encode(schema_name, {**record, first: SURROGATE_PLACEHOLDER})
    placeholder = SURROGATE_PLACEHOLDER.encode()
    assert len(SURROGATE_BYTES) == len(placeholder) and encoded.count(placeholder) == 1
    return encoded.replace(placeholder, SURROGATE_BYTES)


def build_corpus(codec: AvroCodec, limits: Mapping[str, int]) -> list[Sample]:
    random_bytes = _hypothesis_examples(st.binary(max_size=600), 10)
    random_bodies = _hypothesis_examples(st.binary(min_size=1, max_size=300), 10)
    foreign = codec.encode("stackstream.metrics.MetricPoint", SAMPLES["metric_point"])
    samples: list[Sample] = []
    for topic, spec in INPUT_TOPICS.items():
        schema = codec.registry.get(spec.schema)
        valid = codec.encode(spec.schema, SAMPLES[spec.sample])
        values: list[tuple[str, bytes | None]] = []
        values += [("random_bytes", data) for data in random_bytes]
        values += [("random_body", schema.header + data) for data in random_bodies]
        values += [
            (f"truncated_{cut}", valid[:cut])
            for cut in (
                0,
                1,
                2,
                HEADER_SIZE - 1,
                HEADER_SIZE,
                HEADER_SIZE + 1,
                len(valid) // 2,
                len(valid) - 1,
            )
        ]
        values.append(("trailing_bytes", valid + b"\x00\x00"))
        values.append(("unknown_fingerprint", SINGLE_OBJECT_MARKER + b"\xde\xad" * 4 + valid[10:]))
        values.append(("no_header", valid[HEADER_SIZE:]))
        if spec.schema != "stackstream.metrics.MetricPoint":
            values.append(("foreign_schema", foreign))
        else:
            tree = codec.encode("stackstream.tracing.MessageTree", SAMPLES["message_tree"])
            values.append(("foreign_schema", tree))
        if spec.schema == TREE_SCHEMA:
            # would overflow fastavro's C recursion and kill the worker if it were decoded
            values.append(("nested_50000_levels", chain_tree_bytes(codec, 50_000)))
        if not spec.tombstones_allowed:
            values.append(("missing_value", None))
        huge = limits[topic] - 1024
        values.append(("huge", schema.header + os.urandom(huge - HEADER_SIZE)))
        values.append(("invalid_utf8", _with_surrogates(codec, spec.schema, SAMPLES[spec.sample])))
        if spec.hostile_valid_strings:
            names = _string_fields(schema.parsed)
            for label, text in HOSTILE_STRINGS.items():
                for scope, fields in [*((n, [n]) for n in names), ("all", names)]:
                    record = {**SAMPLES[spec.sample], **dict.fromkeys(fields, text)}
                    values.append((f"hostile_{label}_{scope}", codec.encode(spec.schema, record)))
        for kind, value in values:
            sample = Sample(topic, kind, value)
            for reader in spec.readers:
                outcome = _predict(codec, spec.schema, reader, value)
                if outcome is not None:
                    sample.expected[(reader.agent, outcome)] += 1
            samples.append(sample)
    return samples


def _predict(codec: AvroCodec, schema: str, reader: Reader, value: bytes | None) -> str | None:
    """The error type the agent must dead-letter the value with, or None when it accepts it."""
    try:
        record = codec.decoder(schema)(value)  # type: ignore[arg-type]
    except CodecError as error:
        return error.error_type
    if reader.validate is None:
        return None
    try:
        reader.validate(record)
    except RecordRejected:
        return "validation" if reader.dead_letters_validation else None
    return None


def _max_message_bytes(settings: Settings) -> dict[str, int]:
    admin = AdminClient({"bootstrap.servers": settings.kafka})
    resources = [
        ConfigResource(ConfigResource.Type.TOPIC, settings.topic_prefix + topic)
        for topic in INPUT_TOPICS
    ]
    limits = {}
    deadline = time.monotonic() + 30
    while True:  # topics just created may not be known to the broker's metadata yet
        try:
            described = {r: f.result(30) for r, f in admin.describe_configs(resources).items()}
            break
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    for resource, configs in described.items():
        entry = configs.get("max.message.bytes")
        value = int(entry.value) if entry is not None else BROKER_DEFAULT_MAX_MESSAGE_BYTES
        limits[resource.name[len(settings.topic_prefix) :]] = value
    return limits


def _produce(settings: Settings, samples: list[Sample], limit: int) -> None:
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka,
            "message.max.bytes": limit + 4096,
            "enable.idempotence": True,
            "partitioner": "murmur2_random",
        }
    )
    failures: list[str] = []

    def delivered(sample: Sample) -> Callable[[KafkaError | None, Message], None]:
        def note(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                failures.append(f"{sample.topic}/{sample.kind}: {error.str()}")
            else:
                sample.partition, sample.offset = message.partition(), message.offset()

        return note

    for sample in samples:
        producer.produce(
            settings.topic_prefix + sample.topic,
            value=sample.value,
            key=f"corpus-{sample.kind}".encode(),
            on_delivery=delivered(sample),
        )
        producer.poll(0)
    assert producer.flush(60) == 0
    assert not failures, failures


def test_malformed_corpus_lands_in_dead_letters_and_the_worker_stays_healthy(
    stack_settings: Settings, tmp_path: Path
) -> None:
    settings = stack_settings.model_copy(update={"metrics_telnet_port": 0, "tracing_grace_s": 1.0})
    apply_topics(settings)
    codec = AvroCodec(SchemaRegistry.from_directory(settings.schemas_dir))
    limits = _max_message_bytes(settings)
    samples = build_corpus(codec, limits)
    expected_total = sum(sum(s.expected.values()) for s in samples)
    assert all(s.expected for s in samples if s.kind.startswith(("random_bytes", "truncated",
               "unknown", "no_header", "foreign", "huge", "invalid_utf8", "missing")))  # fmt: skip

    log_path = tmp_path / "worker.log"
    base = f"http://127.0.0.1:{settings.web_port}"
    with running_worker(settings, log_path) as worker:
        eventually(lambda: get_json(f"{base}/stackstream/health")[0] == 200, 90,
                   "the worker's health view", log_path)  # fmt: skip
        time.sleep(3)  # group-less followers note their start time before the corpus arrives
        started = time.monotonic()
        _produce(settings, samples, max(limits.values()))

        def all_dead_lettered() -> list[Any] | None:
            letters = list(read_dead_letters(settings))
            return letters if len(letters) >= expected_total else None

        letters = eventually(all_dead_lettered, 240, f"{expected_total} dead letters", log_path)
        time.sleep(3)  # anything beyond the prediction would arrive now
        letters = list(read_dead_letters(settings))
        print(f"{len(samples)} corpus records, {len(letters)} dead letters "
              f"in {time.monotonic() - started:.1f} s")  # fmt: skip
        assert worker.poll() is None, "the worker died"

        by_origin: dict[tuple[str, int, int], Counter[tuple[str, str]]] = defaultdict(Counter)
        for letter in letters:
            record = letter.record
            assert record["reason"].strip(), record
            origin = (record["source_topic"], record["partition"], record["offset"])
            by_origin[origin][(record["agent"], record["error_type"])] += 1
        sent = {(s.topic, s.partition, s.offset): s for s in samples}
        unexpected = {o: c for o, c in by_origin.items() if o not in sent}
        assert not unexpected, f"dead letters for records that were not sent: {unexpected}"
        refused_by_sinks = {
            f"{s.topic}/{s.kind}": dict(by_origin[origin])
            for origin, s in sent.items()
            if not s.expected and origin in by_origin
            and all(error_type == "sink" for _, error_type in by_origin[origin])
        }  # fmt: skip
        print(f"valid records a server refused (dead-lettered as 'sink'): {refused_by_sinks}")
        for letter in letters:
            if letter.record["error_type"] == "sink":
                print(f"  {letter.record['source_topic']}: {letter.record['reason'][:300]}")
        wrong = {
            f"{s.topic}/{s.kind}": (dict(by_origin.get(origin, {})), dict(s.expected))
            for origin, s in sent.items()
            if by_origin.get(origin, Counter()) != s.expected
            and f"{s.topic}/{s.kind}" not in refused_by_sinks
        }
        assert not wrong, f"dead letters (got, expected) differ: {wrong}"
        assert len(letters) == expected_total + sum(
            sum(counts.values()) for counts in refused_by_sinks.values()
        )

        status, health = get_json(f"{base}/stackstream/health")
        assert status == 200
        by_topic = Counter(letter.record["source_topic"] for letter in letters)
        assert health["dead_letters"]["by_source_topic"] == dict(by_topic)
        by_type = Counter((r.record["source_topic"], r.record["error_type"]) for r in letters)

        def durable_counts_match() -> dict | None:
            rows = get_json(f"{base}/bus/deadletters")[1]["dead_letters"]
            counts = {(r["source_topic"], r["error_type"]): r["count"] for r in rows}
            return counts if counts == dict(by_type) else None

        eventually(durable_counts_match, 60, f"durable dead-letter counts {by_type}", log_path)
        _valid_records_still_flow(settings, codec, base, log_path)
        assert worker.poll() is None, "the worker died"
        status, health = get_json(f"{base}/stackstream/health")
        assert status == 200


def _shifted(message: dict, shift_us: int) -> dict:
    """A message and its children moved in time together (a valid tree stays valid)."""
    moved = {**message, "timestamp_us": message["timestamp_us"] + shift_us}
    if message.get("children"):
        moved["children"] = [_shifted(child, shift_us) for child in message["children"]]
    return moved


def _valid_records_still_flow(settings: Settings, codec: AvroCodec, base: str, log: Path) -> None:
    """After the corpus, a valid point and a valid tree are processed as usual."""
    now_ms = int(time.time() * 1000)
    point = {**SAMPLES["metric_point"], "name": "corpus.after", "timestamp_ms": now_ms,
             "tags": {"host": "a"}}  # fmt: skip
    before = get_json(f"{base}/tracing/status")[1]["trees"]
    sample_tree = SAMPLES["message_tree"]
    shift_us = now_ms * 1000 - sample_tree["root"]["timestamp_us"]
    tree = {
        **sample_tree,
        "domain": "corpus-after",
        "root": _shifted(sample_tree["root"], shift_us),
    }
    validate_tree(tree)
    samples = [
        Sample("metrics.points", "valid", codec.encode("stackstream.metrics.MetricPoint", point)),
        Sample("trace.messages", "valid", codec.encode("stackstream.tracing.MessageTree", tree)),
    ]
    _produce(settings, samples, BROKER_DEFAULT_MAX_MESSAGE_BYTES)

    def latest_point() -> dict | None:
        status, answer = get_json(f"{base}/metrics/latest?metric=corpus.after")
        return answer if status == 200 and answer.get("series") else None

    answer = eventually(latest_point, 60, "the valid point after the corpus", log)
    assert answer["series"][0]["value"] == point["value"]
    eventually(lambda: get_json(f"{base}/tracing/status")[1]["trees"] > before, 60,
               "the valid tree after the corpus", log)  # fmt: skip


def test_a_tombstone_on_the_release_history_is_dead_lettered(
    stack_settings: Settings, tmp_path: Path
) -> None:
    settings = stack_settings.model_copy(update={"domains": "bus,config"})
    apply_topics(settings)
    log_path = tmp_path / "worker.log"
    base = f"http://127.0.0.1:{settings.web_port}"
    with running_worker(settings, log_path):
        eventually(lambda: get_json(f"{base}/stackstream/health")[0] == 200, 90,
                   "the worker's health view", log_path)  # fmt: skip
        tombstone = Sample("config.release_history", "missing_value", None)
        codec = AvroCodec(SchemaRegistry.from_directory(settings.schemas_dir))
        release = codec.encode("stackstream.config.ConfigRelease", SAMPLES["config_release"])
        after = Sample("config.release_history", "bad_after", release[:20])
        _produce(settings, [tombstone, after], BROKER_DEFAULT_MAX_MESSAGE_BYTES)
        letters = eventually(
            lambda: [x.record for x in read_dead_letters(settings)
                     if x.record["offset"] == after.offset] and list(read_dead_letters(settings)),
            60, "the dead letter of the truncated release after the tombstone", log_path,
        )  # fmt: skip
        assert [x.record["offset"] for x in letters] == [tombstone.offset, after.offset]
