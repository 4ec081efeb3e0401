"""Avro single-object encoding of records: marker, CRC-64-AVRO fingerprint, schemaless body.

The fingerprint tells a consumer which writer schema to decode with, so producers and
consumers can evolve their schemas independently. No Faust, Kafka or HTTP here: the SDK uses it.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form
from fastavro.validation import validate

SINGLE_OBJECT_MARKER = b"\xc3\x01"
HEADER_SIZE = len(SINGLE_OBJECT_MARKER) + 8
# fastavro reads nested records recursively in C: about 3,500 levels overflow an 8 MB stack and
# kill the process, about 820 a 2 MB thread stack (glibc's thread default under an unlimited
# `ulimit -s`). Records of a recursive schema larger than NESTING_CHECK_BYTES are measured first,
# without recursion, and refused past MAX_DECODE_NESTING levels; a MessageTree level takes at
# least 10 bytes, so a smaller one cannot nest deeper than that. Trees deeper than 64 levels are
# refused by validation anyway.
MAX_DECODE_NESTING = 200
NESTING_CHECK_BYTES = 2_000


class CodecError(ValueError):
    """A record could not be encoded or decoded."""

    error_type = "decode"


class NotSingleObjectEncoded(CodecError):
    """The bytes do not start with the Avro single-object marker."""


class UnknownSchema(CodecError):
    """The fingerprint names a schema this process does not know."""

    error_type = "unknown_schema"


class CorruptRecord(CodecError):
    """The body does not decode with the schema its fingerprint names."""


class WrongSchema(CodecError):
    """A record of one schema arrived where another was expected."""

    error_type = "unknown_schema"


class NestedTooDeep(CorruptRecord):
    """A record of a recursive schema nests deeper than the decoder can safely follow."""


class InvalidRecord(CodecError):
    """A record does not conform to the schema it is to be encoded with."""

    error_type = "validation"


@dataclass(frozen=True)
class Schema:
    """A parsed Avro schema and its single-object fingerprint."""

    name: str
    parsed: Any
    fingerprint: bytes
    source: Path | None = None

    @property
    def header(self) -> bytes:
        return SINGLE_OBJECT_MARKER + self.fingerprint


def schema_fingerprint(parsed: Any) -> bytes:
    """The 8-byte little-endian CRC-64-AVRO fingerprint of a schema's canonical form."""
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


def parse_schema(definition: Mapping[str, Any], source: Path | None = None) -> Schema:
    parsed = fastavro.parse_schema(dict(definition))
    return Schema(
        name=parsed["name"], parsed=parsed, fingerprint=schema_fingerprint(parsed), source=source
    )


class SchemaRegistry:
    """Every schema this process can read: current ones by name, all versions by fingerprint."""

    def __init__(self, current: Iterable[Schema], older: Iterable[Schema] = ()) -> None:
        self._by_name: dict[str, Schema] = {}
        self._by_fingerprint: dict[bytes, Schema] = {}
        for schema in current:
            if schema.name in self._by_name:
                raise ValueError(
                    f"schema {schema.name} is defined twice: "
                    f"{self._by_name[schema.name].source} and {schema.source}"
                )
            self._by_name[schema.name] = schema
            self._by_fingerprint[schema.fingerprint] = schema
        for schema in older:
            self._by_fingerprint.setdefault(schema.fingerprint, schema)

    @classmethod
    def from_directory(cls, directory: Path) -> SchemaRegistry:
        """Load `*.avsc` as current schemas and `history/**/*.avsc` as older writer versions."""
        if not directory.is_dir():
            raise FileNotFoundError(f"schema folder {directory} does not exist")

        def load(path: Path) -> Schema:
            try:
                return parse_schema(json.loads(path.read_text()), source=path)
            except (ValueError, fastavro.schema.SchemaParseException) as error:
                raise ValueError(f"{path}: not a valid Avro schema: {error}") from error

        current = [load(path) for path in sorted(directory.glob("*.avsc"))]
        older = [load(path) for path in sorted(directory.glob("history/**/*.avsc"))]
        return cls(current, older)

    @property
    def names(self) -> set[str]:
        return set(self._by_name)

    def get(self, name: str) -> Schema:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownSchema(
                f"no schema named {name!r}; known: {', '.join(sorted(self._by_name))}"
            ) from None

    def by_fingerprint(self, fingerprint_bytes: bytes) -> Schema:
        try:
            return self._by_fingerprint[fingerprint_bytes]
        except KeyError:
            raise UnknownSchema(
                f"no schema with fingerprint {fingerprint_bytes.hex()}; the writer used a schema "
                "this process was not given (add it under schemas/history/)"
            ) from None


class AvroCodec:
    """Encodes dicts to single-object Avro and back, resolving writer to reader schema."""

    def __init__(self, registry: SchemaRegistry) -> None:
        self.registry = registry
        self._recursive: dict[bytes, bool] = {}

    def _needs_nesting_check(self, schema: Schema, data: bytes) -> bool:
        if len(data) <= NESTING_CHECK_BYTES:
            return False
        recursive = self._recursive.get(schema.fingerprint)
        if recursive is None:
            recursive = self._recursive[schema.fingerprint] = is_recursive(schema.parsed)
        return recursive

    def _check_nesting(self, schema: Schema, data: bytes) -> None:
        if self._needs_nesting_check(schema, data):
            depth = nesting_depth(data, HEADER_SIZE, schema.parsed, MAX_DECODE_NESTING)
            if depth > MAX_DECODE_NESTING:
                raise NestedTooDeep(
                    f"{schema.name}: records nest more than {MAX_DECODE_NESTING} levels deep; "
                    "refused before decoding (following them would overflow the stack)"
                )

    def encode(self, schema_name: str, record: Mapping[str, Any], *, check: bool = True) -> bytes:
        schema = self.registry.get(schema_name)
        if check:
            try:
                validate(record, schema.parsed, raise_errors=True)
            except fastavro.validation.ValidationError as error:
                raise InvalidRecord(f"{schema_name}: {_describe_validation(error)}") from None
        buffer = io.BytesIO()
        buffer.write(schema.header)
        try:
            fastavro.schemaless_writer(buffer, schema.parsed, record)
        except (TypeError, ValueError, KeyError, AttributeError, struct.error) as error:
            raise InvalidRecord(f"{schema_name}: {error}") from None
        return buffer.getvalue()

    def writer_schema(self, data: bytes) -> Schema:
        if data is None or len(data) < HEADER_SIZE or data[:2] != SINGLE_OBJECT_MARKER:
            raise NotSingleObjectEncoded(
                "not Avro single-object encoded: expected marker c301 and an 8-byte fingerprint, "
                f"got {bytes(data[:HEADER_SIZE]).hex() if data else 'no bytes'}"
            )
        return self.registry.by_fingerprint(bytes(data[2:HEADER_SIZE]))

    def decoder(self, expected: str) -> Callable[[bytes], dict[str, Any]]:
        """A decode function for records of one schema, fast when written with its current version.

        Records by older writers, and every error, take the general path of `decode`.
        """
        schema = self.registry.get(expected)
        header, parsed, size = schema.header, schema.parsed, HEADER_SIZE
        reader, general = fastavro.schemaless_reader, self.decode

        def decode_current(data: bytes) -> dict[str, Any]:
            if (
                data is not None
                and data[:size] == header
                and not self._needs_nesting_check(schema, data)
            ):
                body = io.BytesIO(data)
                body.seek(size)
                try:
                    record = reader(body, parsed, None)
                except Exception:
                    return general(data, expected)
                if body.tell() == len(data):
                    return record  # type: ignore[return-value]
            return general(data, expected)

        return decode_current

    def decode(self, data: bytes, expected: str | None = None) -> dict[str, Any]:
        """Decode with the writer's schema into the current version of `expected` (if given)."""
        writer = self.writer_schema(data)
        reader = writer
        if expected is not None:
            reader = self.registry.get(expected)
            if writer.name != expected:
                raise WrongSchema(f"expected a {expected} record, got a {writer.name} record")
        self._check_nesting(writer, data)
        try:
            body = io.BytesIO(data)
            body.seek(HEADER_SIZE)
            record = fastavro.schemaless_reader(
                body,
                writer.parsed,
                None if reader is writer else reader.parsed,
            )
            if body.tell() != len(data):
                raise CorruptRecord(
                    f"{writer.name}: {len(data) - body.tell()} bytes left over after the record"
                )
        except CodecError:
            raise
        except Exception as error:
            raise CorruptRecord(
                f"{writer.name}: the body does not decode ({type(error).__name__}: {error})"
            ) from None
        if not isinstance(record, dict):
            raise CorruptRecord(f"{writer.name}: decoded to {type(record).__name__}, not a record")
        return record


def _describe_validation(error: fastavro.validation.ValidationError) -> str:
    messages = error.args[0] if error.args else []
    if isinstance(messages, list):
        return "; ".join(str(message) for message in messages) or "does not match the schema"
    return str(messages)


def is_recursive(parsed: Any) -> bool:
    """Whether a parsed schema has a named type that contains itself (a tree, a linked list)."""
    named = parsed.get("__named_schemas", {}) if isinstance(parsed, dict) else {}

    def refers(node: Any, name: str, seen: set[str]) -> bool:
        if isinstance(node, str):
            if node == name:
                return True
            if node in named and node not in seen:
                seen.add(node)
                return refers(named[node], name, seen)
            return False
        if isinstance(node, list):
            return any(refers(branch, name, seen) for branch in node)
        kind = node.get("type")
        if kind == "record":
            return any(refers(field["type"], name, seen) for field in node["fields"])
        if kind == "array":
            return refers(node["items"], name, seen)
        if kind == "map":
            return refers(node["values"], name, seen)
        return not isinstance(kind, str) and refers(kind, name, seen)

    return any(
        definition.get("type") == "record"
        and any(refers(field["type"], name, set()) for field in definition["fields"])
        for name, definition in named.items()
    )


_FIXED_WIDTH = {"null": 0, "boolean": 1, "float": 4, "double": 8}
_VARINT = frozenset(("int", "long", "enum"))
_LENGTH_PREFIXED = frozenset(("string", "bytes"))


def nesting_depth(data: bytes, start: int, parsed: Any, limit: int) -> int:
    """How deep records nest in the Avro body at data[start:], read with an explicit stack
    instead of recursion; stops as soon as the depth passes `limit`. Raises CorruptRecord
    when the body ends early or holds an impossible length or item count (more items than
    bytes left: also refuses arrays of that many nulls, which no schema here has)."""
    named = parsed.get("__named_schemas", {}) if isinstance(parsed, dict) else {}
    end = len(data)
    position = start

    def read_long() -> int:
        nonlocal position
        shift = result = 0
        while True:
            if position >= end or shift > 63:
                raise CorruptRecord("the body ends inside a number")
            byte = data[position]
            position += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return (result >> 1) ^ -(result & 1)
            shift += 7

    deepest = 0
    pending: list[tuple[Any, int, bool]] = [(parsed, 0, False)]
    while pending:
        node, depth, block = pending.pop()
        if block:  # the next block of an array or map whose earlier blocks were queued
            count = read_long()
            if count < 0:
                count = -count
                read_long()
            if count > end - position:  # every item takes a byte (arrays of nulls aside)
                raise CorruptRecord(f"a block of {count} items in {end - position} bytes")
            if count:
                pending.append((node, depth, True))
                element = node["items"] if node["type"] == "array" else node["values"]
                for _ in range(count):
                    pending.append((element, depth, False))
                    if node["type"] == "map":
                        pending.append(("string", depth, False))
            continue
        if isinstance(node, str):
            node = named.get(node, node)
        if isinstance(node, list):
            branch = read_long()
            if not 0 <= branch < len(node):
                raise CorruptRecord(f"union branch {branch} does not exist")
            pending.append((node[branch], depth, False))
            continue
        kind = node if isinstance(node, str) else node["type"]
        if not isinstance(kind, str):
            pending.append((kind, depth, False))
        elif kind == "record":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
            pending.extend((field["type"], depth, False) for field in reversed(node["fields"]))
        elif kind in _VARINT:
            read_long()
        elif kind in _LENGTH_PREFIXED:
            length = read_long()
            if length < 0:
                raise CorruptRecord(f"negative length {length}")
            position += length
        elif kind in _FIXED_WIDTH:
            position += _FIXED_WIDTH[kind]
        elif kind == "fixed":
            position += node["size"]
        elif kind in ("array", "map"):
            pending.append((node, depth, True))
        else:
            raise CorruptRecord(f"unknown Avro type {kind!r}")
        if position > end:
            raise CorruptRecord("the body ends inside a value")
    if position != end:
        raise CorruptRecord(f"{end - position} bytes left over after the record")
    return deepest
