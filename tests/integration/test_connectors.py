"""The sinks against the real Elasticsearch and Cassandra: idempotent, and honest about rejects."""

from __future__ import annotations

import pytest

from connectors.cassandra import CassandraSink, CassandraSinkError, TableDefinition
from connectors.elasticsearch import Document, ElasticsearchSink
from connectors.mappings import KEYWORD
from connectors.retry import stable_id
from streams.settings import Settings

pytestmark = pytest.mark.integration


async def test_bulk_writes_are_idempotent_and_rejects_are_reported(
    elasticsearch: str, unique: str
) -> None:
    index = f"{unique.replace('_', '-')}-docs"
    sink = ElasticsearchSink(elasticsearch, refresh=True)
    try:
        await sink.ensure_template(
            f"{index}-template",
            [f"{index}*"],
            {"properties": {"n": {"type": "integer"}, "text": {"type": "keyword"}}},
            {"number_of_replicas": 0},
        )
        documents = [
            Document(index, stable_id("doc", n), {"n": n, "text": f"line {n}"}) for n in range(50)
        ]
        first = await sink.write(documents)
        again = await sink.write(documents)
        assert first.written == 50 and again.written == 50
        count = await sink.client.count(index=index)
        assert count["count"] == 50, "redelivered documents must overwrite, not duplicate"

        bad = Document(index, stable_id("bad"), {"n": "not a number"})
        result = await sink.write([bad, Document(index, stable_id("ok"), {"n": 1})])
        assert result.written == 1
        assert [r.document.id for r in result.rejected] == [bad.id]
        assert result.rejected[0].status == 400
        assert "mapper_parsing_exception" in result.rejected[0].reason or "number" in (
            result.rejected[0].reason
        )
        hits = await sink.search(index, {"term": {"n": 7}})
        assert [hit["text"] for hit in hits] == ["line 7"]

        not_json = Document(index, stable_id("huge"), {"n": 2**70})
        result = await sink.write([not_json, Document(index, stable_id("fine"), {"n": 2})])
        assert result.written == 1, "a document JSON cannot carry does not stop the others"
        assert [(r.document.id, r.status) for r in result.rejected] == [(not_json.id, 400)]
        assert "not JSON" in result.rejected[0].reason
    finally:
        await sink.delete_indices(f"{index}*")
        await sink.close()


async def test_an_overlong_keyword_value_is_kept_but_not_indexed(
    elasticsearch: str, unique: str
) -> None:
    """A plain keyword field refuses a 100 KB value (Lucene's 32,766-byte term limit) and with it
    the whole document; the shared KEYWORD mapping keeps the document."""
    index = f"{unique.replace('_', '-')}-long"
    sink = ElasticsearchSink(elasticsearch, refresh=True)
    try:
        await sink.ensure_template(
            f"{index}-template",
            [f"{index}*"],
            {"properties": {"plain": {"type": "keyword"}, "bounded": KEYWORD}},
            {"number_of_replicas": 0},
        )
        long_value = "x" * 100_000
        refused = await sink.write([Document(index, "plain", {"plain": long_value})])
        assert refused.written == 0 and "plain" in refused.rejected[0].reason
        kept = await sink.write(
            [
                Document(index, "bounded", {"bounded": long_value}),
                Document(index, "b", {"bounded": "b"}),
            ]
        )
        assert kept.written == 2 and not kept.rejected
        hits = await sink.search(index, {"ids": {"values": ["bounded"]}})
        assert hits[0]["bounded"] == long_value, "the value stays in _source"
        assert await sink.search(index, {"term": {"bounded": "b"}}), "short values stay terms"
    finally:
        await sink.delete_indices(f"{index}*")
        await sink.close()


async def test_cassandra_upserts_are_idempotent(cassandra: str, unique: str) -> None:
    settings = Settings(cassandra=cassandra)
    sink = CassandraSink(settings.cassandra_contact_points, unique)
    table = TableDefinition(
        name="readings",
        columns={"sensor": "text", "ts": "bigint", "value": "double"},
        partition_key=("sensor",),
        clustering=("ts",),
        clustering_order={"ts": "desc"},
    )
    try:
        await sink.open()
        await sink.ensure_table(table)
        await sink.ensure_table(table)
        rows = [{"sensor": f"s{n % 3}", "ts": n, "value": n / 2} for n in range(300)]
        assert await sink.upsert("readings", rows) == 300
        await sink.upsert("readings", rows[:100])
        counted = await sink.select(f"SELECT count(*) AS n FROM {unique}.readings")
        assert counted[0]["n"] == 300
        newest = await sink.select(
            f"SELECT ts, value FROM {unique}.readings WHERE sensor = %s LIMIT 1", ("s1",)
        )
        assert newest == [{"ts": 298, "value": 149.0}]
        with pytest.raises(CassandraSinkError, match="lacks column"):
            await sink.upsert("readings", [{"sensor": "x"}])
    finally:
        await sink.select(f"DROP KEYSPACE IF EXISTS {unique}")
        sink.close()


async def test_cassandra_upserts_can_leave_none_unset(cassandra: str, unique: str) -> None:
    settings = Settings(cassandra=cassandra)
    sink = CassandraSink(settings.cassandra_contact_points, unique)
    table = TableDefinition(
        name="notes",
        columns={"key": "text", "title": "text", "body": "text"},
        partition_key=("key",),
    )
    try:
        await sink.open()
        await sink.ensure_table(table)
        await sink.upsert("notes", [{"key": "a", "title": "first", "body": "kept"}])
        await sink.upsert("notes", [{"key": "a", "title": "second", "body": None}], unset_none=True)
        await sink.upsert("notes", [{"key": "b", "title": None, "body": None}], unset_none=True)
        rows = await sink.select(f"SELECT key, title, body FROM {unique}.notes")
        assert sorted(rows, key=lambda row: row["key"]) == [
            {"key": "a", "title": "second", "body": "kept"},
            {"key": "b", "title": None, "body": None},
        ]
        await sink.upsert("notes", [{"key": "a", "title": "third", "body": None}])
        cleared = await sink.select(f"SELECT body FROM {unique}.notes WHERE key = %s", ("a",))
        assert cleared == [{"body": None}]
    finally:
        await sink.select(f"DROP KEYSPACE IF EXISTS {unique}")
        sink.close()


async def test_cassandra_upserts_in_partition_batches(cassandra: str, unique: str) -> None:
    settings = Settings(cassandra=cassandra)
    sink = CassandraSink(settings.cassandra_contact_points, unique)
    table = TableDefinition(
        name="cells",
        columns={"sheet": "text", "cell": "int", "text": "text"},
        partition_key=("sheet",),
        clustering=("cell",),
    )
    try:
        await sink.open()
        await sink.ensure_table(table)
        rows = [{"sheet": f"s{n // 250}", "cell": n, "text": "x" * 100} for n in range(1000)]
        assert await sink.upsert("cells", rows, partition_batch_bytes=4_000) == 1000
        await sink.upsert("cells", rows[:10], partition_batch_bytes=4_000)
        counted = await sink.select(f"SELECT count(*) AS n FROM {unique}.cells")
        assert counted[0]["n"] == 1000
        last = await sink.select(f"SELECT cell FROM {unique}.cells WHERE sheet = %s", ("s3",))
        assert [row["cell"] for row in last] == list(range(750, 1000))
    finally:
        await sink.select(f"DROP KEYSPACE IF EXISTS {unique}")
        sink.close()


def test_table_definitions_refuse_unsafe_names() -> None:
    with pytest.raises(CassandraSinkError, match="not a usable Cassandra name"):
        TableDefinition("bad;name", {"a": "text"}, ("a",)).create_cql("ks")
