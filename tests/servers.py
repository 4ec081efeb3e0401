"""Pytest plugin: session fixtures that give the address of a real Kafka, Elasticsearch, Cassandra.

Each address comes from, in order: the STACKSTREAM_<NAME> environment variable; a testcontainers
container when a Docker engine answers; the local stack of `deploy.local` (only servers that are
not already running are started, and only those are stopped at session end). A server that
cannot start is a test error, never a skip. The chosen address is exported to STACKSTREAM_<NAME>
so that worker processes started by tests find it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from deploy.local import LocalStack, ServerStatus
from streams.settings import Settings

ENV_VARIABLES = {
    "kafka": "STACKSTREAM_KAFKA",
    "elasticsearch": "STACKSTREAM_ELASTICSEARCH",
    "cassandra": "STACKSTREAM_CASSANDRA",
}
KAFKA_IMAGE = "confluentinc/cp-kafka:7.9.0"


def docker_available() -> bool:
    """True when a Docker engine answers within a few seconds."""
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


class ServerSource:
    """Decides where each server comes from, once per session, and cleans up what it started."""

    def __init__(self) -> None:
        self.settings = Settings()
        self.stack = LocalStack(self.settings)
        self.from_local_stack: dict[str, ServerStatus] = {}
        self._started_locally: list[str] = []
        self._cleanups: list[Callable[[], None]] = []
        self._docker: bool | None = None

    def address(self, name: str) -> str:
        """The address of server `name`, starting it if needed."""
        variable = ENV_VARIABLES[name]
        given = os.environ.get(variable)
        if given:
            return given
        if self._docker is None:
            self._docker = docker_available()
        address = self._from_container(name) if self._docker else self._from_local_stack(name)
        os.environ[variable] = address
        return address

    def _from_local_stack(self, name: str) -> str:
        before = self.stack.status([name])[0]
        status = self.stack.up([name])[0]
        if before.state in ("stopped", "failed"):
            self._started_locally.append(name)
        self.from_local_stack[name] = status
        return status.address

    def _from_container(self, name: str) -> str:
        if name == "kafka":
            from testcontainers.community.kafka import KafkaContainer

            kafka = KafkaContainer(KAFKA_IMAGE).with_kraft().start()
            self._cleanups.append(kafka.stop)
            return kafka.get_bootstrap_server()
        if name == "elasticsearch":
            from testcontainers.community.elasticsearch import ElasticSearchContainer

            version = self.settings.elasticsearch_version
            elastic = ElasticSearchContainer(f"elasticsearch:{version}", mem_limit="2G").start()
            self._cleanups.append(elastic.stop)
            return f"http://{elastic.get_container_host_ip()}:{elastic.get_exposed_port(9200)}"
        from testcontainers.community.cassandra import CassandraContainer

        cassandra = CassandraContainer(f"cassandra:{self.settings.cassandra_version}").start()
        self._cleanups.append(cassandra.stop)
        host, port = cassandra.get_contact_points()[0]
        return f"{host}:{port}"

    def close(self) -> None:
        """Stop the containers and the local servers that this session started."""
        for cleanup in reversed(self._cleanups):
            cleanup()
        if self._started_locally:
            self.stack.down(self._started_locally)


@pytest.fixture(scope="session")
def server_source() -> Iterator[ServerSource]:
    """The session's ServerSource; its `from_local_stack` tells which servers the stack gave."""
    source = ServerSource()
    try:
        yield source
    finally:
        source.close()


@pytest.fixture(scope="session")
def kafka(server_source: ServerSource) -> str:
    """Bootstrap address "host:port" of a real Kafka broker."""
    return server_source.address("kafka")


@pytest.fixture(scope="session")
def elasticsearch(server_source: ServerSource) -> str:
    """URL of a real Elasticsearch, like "http://127.0.0.1:19200"."""
    return server_source.address("elasticsearch")


@pytest.fixture(scope="session")
def cassandra(server_source: ServerSource) -> str:
    """Contact point "host:port" of a real Cassandra (datacenter1, CQL protocol 5)."""
    return server_source.address("cassandra")
