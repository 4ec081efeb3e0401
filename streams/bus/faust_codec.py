"""Our Avro codec as Faust codecs: `avro:<schema name>` serializes a topic's or table's values.

Agents on our topics read raw bytes and decode in batches (so a bad record reaches the dead-letter
topic instead of being skipped); these codecs serve Faust code that wants typed values directly.
"""

from __future__ import annotations

from typing import Any

from faust.serializers import codecs

from streams.bus.codec import AvroCodec

PREFIX = "avro:"


class FaustAvroCodec(codecs.Codec):
    """One schema's single-object Avro encoding, as a Faust codec."""

    def __init__(self, avro: AvroCodec, schema: str) -> None:
        super().__init__(schema=schema)
        self.avro = avro
        self.schema = schema

    def _dumps(self, obj: Any) -> bytes:
        return self.avro.encode(self.schema, obj)

    def _loads(self, s: bytes) -> Any:
        return self.avro.decode(s, self.schema)


def register_faust_codecs(avro: AvroCodec) -> list[str]:
    """Register `avro:<name>` for every current schema; returns the codec names."""
    names = []
    for schema in sorted(avro.registry.names):
        name = f"{PREFIX}{schema}"
        codecs.register(name, FaustAvroCodec(avro, schema))
        names.append(name)
    return names
