"""Real single-node Kafka, Elasticsearch and Cassandra for development and tests, without Docker."""

from deploy.local.errors import (
    DownloadError,
    LocalStackError,
    MissingToolError,
    ServerStartError,
)
from deploy.local.stack import SERVER_NAMES, LocalStack, ServerStatus

__all__ = [
    "SERVER_NAMES",
    "DownloadError",
    "LocalStack",
    "LocalStackError",
    "MissingToolError",
    "ServerStartError",
    "ServerStatus",
]
