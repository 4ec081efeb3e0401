"""The Avro single-object codec: fingerprints per the Avro spec, round trips, every bad input."""

from __future__ import annotations

import contextlib
import io
import json
import struct
import threading
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.bus.codec import (
    NESTING_CHECK_BYTES,
    AvroCodec,
    CodecError,
    CorruptRecord,
    InvalidRecord,
    NestedTooDeep,
    NotSingleObjectEncoded,
    SchemaRegistry,
    UnknownSchema,
    WrongSchema,
    is_recursive,
    nesting_depth,
    parse_schema,
    schema_fingerprint,
)
from streams.settings import PROJECT_ROOT
from tests.records import (
    TREE_HEADER,
    TREE_SCHEMA,
    chain_tree_bytes,
    empty_transaction,
)
from tests.records import metric_point as point

POINT = "stackstream.metrics.MetricPoint"


def _crc64_avro(data: bytes) -> int:
    """The reference algorithm from the Avro specification, written out independently."""
    empty = 0xC15D213AA4D7A795
    table = []
    for byte in range(256):
        fp = byte
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec(SchemaRegistry.from_directory(PROJECT_ROOT / "schemas"))


def test_fingerprint_is_little_endian_crc64_of_canonical_form() -> None:
    schema = parse_schema({"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}]})
    canonical = b'{"name":"R","type":"record","fields":[{"name":"a","type":"int"}]}'
    assert schema.fingerprint == struct.pack("<Q", _crc64_avro(canonical))
    assert schema.header[:2] == b"\xc3\x01"


def test_round_trip_keeps_the_record(codec: AvroCodec) -> None:
    data = codec.encode(POINT, point())
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == codec.registry.get(POINT).fingerprint
    assert codec.decode(data, POINT) == point()


def test_invalid_record_is_refused_on_encode(codec: AvroCodec) -> None:
    with pytest.raises(InvalidRecord, match="MetricPoint"):
        codec.encode(POINT, point(value="high"))


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", NotSingleObjectEncoded),
        (b'{"name": "cpu"}', NotSingleObjectEncoded),
        (b"\xc3\x01" + b"\x00" * 8 + b"\x02", UnknownSchema),
    ],
)
def test_bad_bytes_raise_codec_errors(codec: AvroCodec, data: bytes, error: type) -> None:
    with pytest.raises(error):
        codec.decode(data, POINT)


def test_truncated_and_padded_bodies_are_corrupt(codec: AvroCodec) -> None:
    data = codec.encode(POINT, point())
    with pytest.raises(CorruptRecord):
        codec.decode(data[:-3], POINT)
    with pytest.raises(CorruptRecord, match="left over"):
        codec.decode(data + b"\x00\x00", POINT)


def test_a_record_of_another_schema_is_refused(codec: AvroCodec) -> None:
    dead_letter = {
        "reason": "r",
        "error_type": "decode",
        "source_topic": "t",
        "partition": 0,
        "offset": 1,
        "timestamp_ms": 0,
        "failed_at_ms": 0,
        "agent": "",
        "key": None,
        "value": None,
        "headers": {},
    }
    data = codec.encode("stackstream.bus.DeadLetter", dead_letter)
    with pytest.raises(WrongSchema, match=r"expected a stackstream\.metrics\.MetricPoint"):
        codec.decode(data, POINT)
    assert codec.decode(data)["reason"] == "r"


def test_old_writer_versions_decode_into_the_current_schema(tmp_path: Path) -> None:
    current = {
        "type": "record",
        "name": "Thing",
        "namespace": "t",
        "fields": [
            {"name": "a", "type": "string"},
            {"name": "b", "type": "int", "default": 7},
        ],
    }
    older = {
        "type": "record",
        "name": "Thing",
        "namespace": "t",
        "fields": [
            {"name": "a", "type": "string"},
        ],
    }
    (tmp_path / "thing.avsc").write_text(json.dumps(current))
    (tmp_path / "history").mkdir()
    (tmp_path / "history" / "thing.v1.avsc").write_text(json.dumps(older))
    codec = AvroCodec(SchemaRegistry.from_directory(tmp_path))
    writer_only = AvroCodec(SchemaRegistry([parse_schema(older)]))
    data = writer_only.encode("t.Thing", {"a": "x"})
    assert codec.decode(data, "t.Thing") == {"a": "x", "b": 7}


def test_registry_refuses_a_schema_defined_twice(tmp_path: Path) -> None:
    schema = {"type": "record", "name": "Thing", "fields": []}
    (tmp_path / "a.avsc").write_text(json.dumps(schema))
    (tmp_path / "b.avsc").write_text(json.dumps(schema))
    with pytest.raises(ValueError, match="defined twice"):
        SchemaRegistry.from_directory(tmp_path)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_ever_raise_codec_errors(data: bytes) -> None:
    codec = AvroCodec(SchemaRegistry.from_directory(PROJECT_ROOT / "schemas"))
    for candidate in (data, b"\xc3\x01" + codec.registry.get(POINT).fingerprint + data):
        with contextlib.suppress(CodecError):
            codec.decode(candidate, POINT)


def test_schema_fingerprint_matches_header(codec: AvroCodec) -> None:
    schema = codec.registry.get(POINT)
    assert schema_fingerprint(schema.parsed) == schema.fingerprint


def test_the_fast_decoder_agrees_with_decode(codec: AvroCodec) -> None:
    decode = codec.decoder(POINT)
    data = codec.encode(POINT, point(value=3.5))
    assert decode(data) == codec.decode(data, POINT) == point(value=3.5)
    for bad, error in [
        (data[:-2], CorruptRecord),
        (data + b"\x00", CorruptRecord),
        (b"junk", NotSingleObjectEncoded),
        (b"\xc3\x01" + b"\x07" * 8, UnknownSchema),
    ]:
        with pytest.raises(error):
            decode(bad)


def test_every_schema_is_a_faust_codec(codec: AvroCodec) -> None:
    from faust.serializers import codecs

    from streams.bus.faust_codec import register_faust_codecs

    names = register_faust_codecs(codec)
    assert f"avro:{POINT}" in names and len(names) == len(codec.registry.names)
    data = codecs.dumps(f"avro:{POINT}", point())
    assert data[:2] == b"\xc3\x01"
    assert codecs.loads(f"avro:{POINT}", data) == point()
    with pytest.raises(NotSingleObjectEncoded):
        codecs.loads(f"avro:{POINT}", b"junk")


TREE = TREE_SCHEMA


def test_hand_assembled_chains_are_what_the_encoder_writes(codec: AvroCodec) -> None:
    nested = empty_transaction([])
    for _ in range(4):
        nested = empty_transaction([nested])
    assert chain_tree_bytes(codec, 5) == codec.encode(TREE, {**TREE_HEADER, "root": nested})


def test_records_nested_too_deep_are_refused_not_followed(codec: AvroCodec) -> None:
    """50,000 levels would overflow the C stack inside fastavro and kill the process; the codec
    measures the nesting first and refuses the record as corrupt, on both decode paths. The
    deepest record that cannot be measured (under NESTING_CHECK_BYTES) decodes safely even on
    a 2 MB thread stack."""
    data = chain_tree_bytes(codec, 50_000)
    with pytest.raises(NestedTooDeep, match="more than 200 levels"):
        codec.decode(data, TREE)
    with pytest.raises(NestedTooDeep):
        codec.decoder(TREE)(data)
    allowed = chain_tree_bytes(codec, 190)
    for decoded in (codec.decoder(TREE)(allowed), codec.decode(allowed, TREE)):
        levels, node = 1, decoded["root"]
        while node["children"]:
            levels, node = levels + 1, node["children"][0]
        assert levels == 190


def test_large_flat_trees_decode_on_both_paths(codec: AvroCodec) -> None:
    wide = {**TREE_HEADER, "root": empty_transaction([empty_transaction([]) for _ in range(2000)])}
    data = codec.encode(TREE, wide)
    assert len(data) > 8192
    assert codec.decoder(TREE)(data) == codec.decode(data, TREE) == codec.decode(data)


def test_only_self_containing_schemas_count_as_recursive(codec: AvroCodec) -> None:
    assert is_recursive(codec.registry.get(TREE).parsed)
    assert not is_recursive(codec.registry.get(POINT).parsed)
    reused = parse_schema({"type": "record", "name": "Pair", "fields": [
        {"name": "a", "type": {"type": "fixed", "name": "Id", "size": 2}},
        {"name": "b", "type": "Id"},
    ]})  # fmt: skip
    assert not is_recursive(reused.parsed)


NODE = parse_schema({"type": "record", "name": "Node", "fields": [
    {"name": "flag", "type": "boolean"},
    {"name": "weight", "type": "double"},
    {"name": "ratio", "type": "float"},
    {"name": "blob", "type": "bytes"},
    {"name": "tag", "type": {"type": "fixed", "name": "Tag", "size": 3}},
    {"name": "color", "type": {"type": "enum", "name": "Color", "symbols": ["RED", "BLUE"]}},
    {"name": "attrs", "type": {"type": "map", "values": "long"}},
    {"name": "note", "type": ["null", "string"]},
    {"name": "kids", "type": {"type": "array", "items": "Node"}},
    {"name": "next", "type": ["null", "Node"]},
]})  # fmt: skip


LEAF: st.SearchStrategy[Any] = st.nothing()


def _nodes(kids: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({
        "flag": st.booleans(), "weight": st.floats(allow_nan=False), "ratio": st.just(0.5),
        "blob": st.binary(max_size=20), "tag": st.binary(min_size=3, max_size=3),
        "color": st.sampled_from(["RED", "BLUE"]),
        "attrs": st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1),
                                 max_size=3),
        "note": st.none() | st.text(max_size=10),
        "kids": st.lists(kids, max_size=3) if kids is not LEAF else st.just([]),
        "next": st.none() | kids if kids is not LEAF else st.none(),
    })  # fmt: skip


def _depth(node: dict[str, Any]) -> int:
    below = [_depth(kid) for kid in node["kids"]] + ([_depth(node["next"])] if node["next"] else [])
    return 1 + max(below, default=0)


@settings(max_examples=200, deadline=None)
@given(st.recursive(_nodes(LEAF), _nodes, max_leaves=30))
def test_nesting_depth_reads_every_avro_type_like_the_decoder(node: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, NODE.parsed, node)
    body = b"xx" + buffer.getvalue()
    assert nesting_depth(body, 2, NODE.parsed, 10_000) == _depth(node)
    assert nesting_depth(body, 2, NODE.parsed, 0) == 1
    for broken in (body[:-1], body + b"\x00"):
        if _depth(node) > 0:
            with pytest.raises(CorruptRecord):
                nesting_depth(broken, 2, NODE.parsed, 10_000)


def test_a_block_claiming_more_items_than_bytes_is_corrupt_without_queueing_them(
    codec: AvroCodec,
) -> None:
    """A 9 KB tree whose children count says 2^40 once exhausted memory in the walker."""
    prefix = chain_tree_bytes(codec, 1)[: -len(b"\x00\x00\x00\x020\x00\x00\x00\x00")]
    level = b"\x00\x00\x00\x020\x00\x00\x00"
    huge_count = b"\x80\x80\x80\x80\x80\x80\x04"  # zigzag varint of 2^40
    data = prefix + level + huge_count + b"\x00" * 9000
    with pytest.raises(CorruptRecord, match="block of"):
        codec.decode(data, TREE)
    with pytest.raises(CodecError):
        codec.decoder(TREE)(data)


def test_records_under_the_check_size_cannot_nest_too_deep_for_a_small_thread_stack(
    codec: AvroCodec,
) -> None:
    """The deepest tree that skips the walk decodes on a 2 MB thread stack (glibc's default
    for threads when `ulimit -s` is unlimited); deeper ones are walked and refused first."""
    data = chain_tree_bytes(codec, (NESTING_CHECK_BYTES - 43) // 11)  # 43 + 11 bytes a level
    assert NESTING_CHECK_BYTES - 11 < len(data) <= NESTING_CHECK_BYTES
    outcome: list[Any] = []
    threading.stack_size(2 * 1024 * 1024)
    try:
        worker = threading.Thread(target=lambda: outcome.append(codec.decoder(TREE)(data)))
        worker.start()
        worker.join()
    finally:
        threading.stack_size(0)
    assert outcome and outcome[0]["root"]["kind"] == "TRANSACTION"
