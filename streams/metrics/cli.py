"""`stackstream metrics`: operator commands of the metrics domain."""

from __future__ import annotations

import asyncio

import click
from rich.console import Console
from rich.table import Table

from connectors.cassandra import CassandraSink
from streams.metrics.model import cardinality_level
from streams.metrics.store import MetricStore
from streams.settings import get_settings

console = Console()
LEVEL_COLOURS = {"ok": "green", "warning": "yellow", "full": "red"}


@click.group("metrics")
def metrics_group() -> None:
    """Metrics (KairosDB-compatible): series cardinality."""


@metrics_group.command("cardinality")
@click.option("--top", default=50, show_default=True, help="how many metrics, most series first")
def cardinality(top: int) -> None:
    """Series per metric against the limit, the worst tag key and rejected points."""
    settings = get_settings()
    sink = CassandraSink(
        settings.cassandra_contact_points,
        settings.cassandra_keyspace,
        datacenter=settings.cassandra_datacenter,
    )

    async def read() -> list[dict]:
        store = MetricStore(sink)
        await store.open()
        return await store.cardinality()

    try:
        rows = asyncio.run(read())
    finally:
        sink.close()
    rows.sort(key=lambda row: (-row["series"], row["metric"]))
    table = Table(title=f"series per metric (keyspace {settings.cassandra_keyspace})")
    for column in ("metric", "series", "limit", "level", "worst tag", "its values", "rejected"):
        table.add_column(column, overflow="fold")
    for row in rows[:top]:
        level = cardinality_level(row["series"], row["series_limit"])
        table.add_row(
            row["metric"],
            str(row["series"]),
            str(row["series_limit"]),
            f"[{LEVEL_COLOURS[level]}]{level}[/]",
            row["worst_tag"] or "-",
            str(row["worst_tag_values"]),
            str(row["rejected"] or 0),
        )
    console.print(table)
