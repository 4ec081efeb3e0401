"""Shared fixtures: real servers (tests/servers.py) and per-test names so tests never share data."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.settings import Settings

pytest_plugins = ["tests.servers"]


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> str:
    """A short name unique to this test: prefix for its topics, index and keyspace."""
    stem = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:20]
    return f"t{uuid.uuid4().hex[:8]}_{stem}"


@pytest.fixture
def unit_settings(tmp_path: Path, unique: str) -> Settings:
    """Settings for tests without servers: in-memory tables, a private data folder."""
    return Settings(
        app_id=unique,
        topic_prefix=f"{unique}.",
        data_dir=tmp_path / "worker",
        table_store="memory",
        web_port=_free_port(),
    )


@pytest.fixture
def stack_settings(
    tmp_path: Path, unique: str, kafka: str, elasticsearch: str, cassandra: str
) -> Iterator[Settings]:
    """Settings pointing at the real servers, with this test's own topics, index and keyspace.

    Afterwards the test's topics (its prefix, and Faust's topics named after its app id) are
    deleted, so a long-lived broker does not pile up thousands of partitions.
    """
    settings = Settings(
        kafka=kafka,
        elasticsearch=elasticsearch,
        cassandra=cassandra,
        app_id=unique,
        topic_prefix=f"{unique}.",
        elasticsearch_index_prefix=unique.replace("_", "-"),
        cassandra_keyspace=unique,
        data_dir=tmp_path / "worker",
        web_port=_free_port(),
    )
    yield settings
    _delete_topics(kafka, unique)


def _delete_topics(kafka: str, prefix: str) -> None:
    from confluent_kafka.admin import AdminClient

    try:
        admin = AdminClient({"bootstrap.servers": kafka})
        topics = [name for name in admin.list_topics(timeout=10).topics if name.startswith(prefix)]
        if topics:
            for future in admin.delete_topics(topics, operation_timeout=30).values():
                future.result()
    except Exception as error:  # cleanup must never fail a test
        print(f"could not delete the test's topics: {error}")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
