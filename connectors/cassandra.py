"""Cassandra sink: schema created from code, prepared statements, idempotent upserts, retries.

An INSERT in Cassandra is an upsert, so writing the same row twice leaves one row: redelivered
records are harmless as long as the primary key is derived from the record.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cassandra import InvalidRequest, OperationTimedOut, ReadTimeout, Unavailable, WriteTimeout
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
    Session,
)
from cassandra.concurrent import execute_concurrent, execute_concurrent_with_args
from cassandra.policies import DCAwareRoundRobinPolicy, ExponentialReconnectionPolicy
from cassandra.query import UNSET_VALUE, BatchStatement, BatchType, PreparedStatement

from connectors.retry import Backoff, retry_async

log = logging.getLogger(__name__)
IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


class CassandraSinkError(Exception):
    """A write failed for a reason retrying cannot fix, or a definition is invalid."""


T = TypeVar("T")


def is_retryable(error: BaseException) -> bool:
    """Errors an outage or an overloaded server causes: waiting and trying again can fix them."""
    return isinstance(
        error, NoHostAvailable | OperationTimedOut | Unavailable | WriteTimeout | ReadTimeout
    )


def _identifier(name: str) -> str:
    if not IDENTIFIER.match(name):
        raise CassandraSinkError(
            f"{name!r} is not a usable Cassandra name: lowercase letters, digits and '_', "
            "starting with a letter, at most 48 characters"
        )
    return name


@dataclass(frozen=True)
class TableDefinition:
    """A table described in code; `create_cql` makes it if missing."""

    name: str
    columns: Mapping[str, str]
    partition_key: Sequence[str]
    clustering: Sequence[str] = ()
    clustering_order: Mapping[str, str] = field(default_factory=dict)
    default_ttl_seconds: int = 0

    def create_cql(self, keyspace: str) -> str:
        for column in [*self.partition_key, *self.clustering, *self.clustering_order]:
            if column not in self.columns:
                raise CassandraSinkError(f"table {self.name}: key column {column!r} is not defined")
        columns = ", ".join(f"{_identifier(n)} {t}" for n, t in self.columns.items())
        partition = ", ".join(self.partition_key)
        key = f"(({partition}){''.join(', ' + c for c in self.clustering)})"
        options = []
        if self.clustering_order:
            order = ", ".join(f"{c} {d.upper()}" for c, d in self.clustering_order.items())
            options.append(f"CLUSTERING ORDER BY ({order})")
        if self.default_ttl_seconds:
            options.append(f"default_time_to_live = {int(self.default_ttl_seconds)}")
        suffix = f" WITH {' AND '.join(options)}" if options else ""
        return (
            f"CREATE TABLE IF NOT EXISTS {_identifier(keyspace)}.{_identifier(self.name)} "
            f"({columns}, PRIMARY KEY {key}){suffix}"
        )

    def upsert_cql(self, keyspace: str) -> str:
        names = list(self.columns)
        return (
            f"INSERT INTO {keyspace}.{self.name} ({', '.join(names)}) "
            f"VALUES ({', '.join('?' for _ in names)}) USING TTL ?"
        )


class CassandraSink:
    """A session on one keyspace: creates tables, upserts rows concurrently, retries outages."""

    def __init__(
        self,
        contact_points: Sequence[tuple[str, int]],
        keyspace: str,
        *,
        datacenter: str = "datacenter1",
        replication_factor: int = 1,
        backoff: Backoff | None = None,
        concurrency: int = 64,
    ) -> None:
        self.keyspace = _identifier(keyspace)
        self.replication_factor = replication_factor
        self.backoff = backoff or Backoff()
        self.concurrency = concurrency
        hosts = [host for host, _ in contact_points]
        port = contact_points[0][1] if contact_points else 9042
        profile = ExecutionProfile(
            load_balancing_policy=DCAwareRoundRobinPolicy(local_dc=datacenter),
            request_timeout=30,
        )
        self.cluster = Cluster(
            hosts,
            port=port,
            protocol_version=5,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            connect_timeout=10,
            # The driver's default backs off to 600 s between reconnection attempts, so after an
            # outage the sinks waited minutes for a server that was long back.
            reconnection_policy=ExponentialReconnectionPolicy(0.5, 10.0),
        )
        self._session: Session | None = None
        self._prepared: dict[str, PreparedStatement] = {}
        self._tables: dict[str, TableDefinition] = {}

    @property
    def session(self) -> Session:
        if self._session is None:
            self._session = self.cluster.connect()
        return self._session

    async def open(self) -> None:
        """Connect and create the keyspace if missing."""

        async def connect() -> None:
            session = await asyncio.to_thread(lambda: self.session)
            await asyncio.to_thread(
                session.execute,
                f"CREATE KEYSPACE IF NOT EXISTS {self.keyspace} WITH replication = "
                f"{{'class': 'SimpleStrategy', 'replication_factor': {self.replication_factor}}}",
            )

        await retry_async(connect, is_retryable, self.backoff, f"keyspace {self.keyspace}")

    async def ensure_table(self, table: TableDefinition) -> None:
        """Create the table if missing, add the columns a table of an older version lacks, and
        prepare its upsert. Old rows keep null in the new columns."""
        cql = table.create_cql(self.keyspace)

        async def create() -> None:
            await asyncio.to_thread(self.session.execute, cql)
            await asyncio.to_thread(self._add_missing_columns, table)
            self._prepared[table.name] = await asyncio.to_thread(
                self.session.prepare, table.upsert_cql(self.keyspace)
            )

        await retry_async(create, is_retryable, self.backoff, f"table {table.name}")
        self._tables[table.name] = table

    def _add_missing_columns(self, table: TableDefinition) -> None:
        missing = self._missing_columns(table)
        if not missing:
            return
        added = ", ".join(f"{column} {table.columns[column]}" for column in missing)
        try:
            self.session.execute(f"ALTER TABLE {self.keyspace}.{table.name} ADD ({added})")
        except InvalidRequest:
            if self._missing_columns(table):  # not just another worker adding them first
                raise

    def _missing_columns(self, table: TableDefinition) -> list[str]:
        rows = self.session.execute(
            "SELECT column_name FROM system_schema.columns "
            "WHERE keyspace_name = %s AND table_name = %s",
            (self.keyspace, table.name),
        )
        present = {row.column_name for row in rows}
        return [column for column in table.columns if column not in present]

    async def upsert(
        self,
        table: str,
        rows: Sequence[Mapping[str, Any]],
        ttl_seconds: int = 0,
        *,
        unset_none: bool = False,
        partition_batch_bytes: int = 0,
    ) -> int:
        """Write rows (dicts by column name); retried until Cassandra has all of them.

        With `unset_none`, None values are sent unset instead of null: no tombstone is written
        (each null cell is one, and reads of wide partitions slow down and warn), but a stored
        value is then kept, not cleared. For rows whose columns never go back to null.
        With `partition_batch_bytes`, consecutive rows of one partition go as UNLOGGED batches of
        about that many bytes (keep it well under the server's 50 KiB batch limit): one request
        instead of one per row, several times the rows/s through the Python driver.
        """
        if table not in self._tables:
            raise CassandraSinkError(f"table {table!r} was not created with ensure_table")
        if not rows:
            return 0
        statement = self._prepared[table]
        columns = list(self._tables[table].columns)
        try:
            if unset_none:
                parameters = [
                    (*[UNSET_VALUE if row[c] is None else row[c] for c in columns], ttl_seconds)
                    for row in rows
                ]
            else:
                parameters = [(*[row[c] for c in columns], ttl_seconds) for row in rows]
        except KeyError as error:
            raise CassandraSinkError(f"table {table}: a row lacks column {error}") from None

        key_positions = [columns.index(c) for c in self._tables[table].partition_key]

        def run() -> object:
            if partition_batch_bytes <= 0:
                return execute_concurrent_with_args(
                    self.session,
                    statement,
                    parameters,
                    concurrency=self.concurrency,
                    raise_on_first_error=True,
                )
            batches = _partition_batches(
                statement, parameters, key_positions, partition_batch_bytes
            )
            return execute_concurrent(
                self.session, batches, concurrency=self.concurrency, raise_on_first_error=True
            )

        async def write() -> None:
            results = await asyncio.to_thread(run)
            del results

        await retry_async(write, is_retryable, self.backoff, f"upsert into {table}")
        return len(rows)

    async def select(self, cql: str, parameters: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows of a query as dicts; retried like writes while Cassandra is unreachable."""

        def run() -> list[dict[str, Any]]:
            return [row._asdict() for row in self.session.execute(cql, parameters)]

        return await self.retrying(run, "select")

    async def retrying(self, call: Callable[[], T], what: str) -> T:
        """Run a blocking driver call in a thread, retrying it through outages and timeouts.

        Agents read before they change state (restoring minutes, reloading late points), so a
        read that fails during an outage must wait like a write rather than crash the worker.
        """

        async def attempt() -> T:
            return await asyncio.to_thread(call)

        return await retry_async(attempt, is_retryable, self.backoff, f"{what} on {self.keyspace}")

    def close(self) -> None:
        self.cluster.shutdown()


def _partition_batches(
    statement: PreparedStatement,
    parameters: Sequence[tuple[Any, ...]],
    key_positions: Sequence[int],
    limit_bytes: int,
) -> list[tuple[BatchStatement, tuple[()]]]:
    """Consecutive rows of one partition as UNLOGGED batches of at most about `limit_bytes`."""
    batches: list[tuple[BatchStatement, tuple[()]]] = []
    batch: BatchStatement | None = None
    batch_key: tuple[Any, ...] | None = None
    size = 0
    for values in parameters:
        key = tuple(values[position] for position in key_positions)
        row_size = sum(_value_size(v) for v in values)
        if batch is None or key != batch_key or size + row_size > limit_bytes:
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)
            batches.append((batch, ()))
            batch_key, size = key, 0
        batch.add(statement, values)
        size += row_size
    return batches


def _value_size(value: Any) -> int:
    """A rough serialized size, enough to keep batches well under the server's limit."""
    if isinstance(value, str | bytes):
        return len(value) + 4
    if isinstance(value, Mapping | list | tuple | set):
        return (
            4
            + sum(_value_size(item) for item in value)
            + (
                sum(_value_size(item) for item in value.values())
                if isinstance(value, Mapping)
                else 0
            )
        )
    return 8
