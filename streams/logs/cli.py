"""`stackstream logs tail|search|retention`: follow, find and expire indexed log lines."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from streams.logs.model import (
    LogSearch,
    ParameterError,
    expired_indices,
    parse_search,
)
from streams.settings import get_settings

console = Console()
LEVEL_COLOURS = {"FATAL": "bold red", "ERROR": "red", "WARN": "yellow", "INFO": "green"}


def _client():  # type: ignore[no-untyped-def]
    from elasticsearch import Elasticsearch

    return Elasticsearch(get_settings().elasticsearch, request_timeout=15)


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False)
    raise SystemExit(1)


def _search(options: Mapping[str, Any]) -> LogSearch:
    params = {name: str(value) for name, value in options.items() if value not in (None, "")}
    try:
        return parse_search(params)
    except ParameterError as error:
        _fail(f"--{error.field.replace('_', '-')}: {error.message}")
        raise


def _line_text(source: Mapping[str, Any]) -> str:
    level = source.get("log", {}).get("level", "")
    colour = LEVEL_COLOURS.get(level, "dim")
    trace = source.get("trace", {}).get("id")
    error = source.get("error", {})
    parts = [
        f"[dim]{source.get('@timestamp', '')}[/]",
        f"[{colour}]{level:5}[/]",
        f"[cyan]{source.get('service', {}).get('name', '')}[/]",
        source.get("message", ""),
    ]
    if error.get("type"):
        parts.append(f"[red]{error['type']}: {error.get('message', '')}[/]")
    if trace:
        parts.append(f"[dim]trace={trace}[/]")
    if source.get("tags"):
        parts.append(f"[magenta]{','.join(source['tags'])}[/]")
    return " ".join(parts)


@click.group("logs")
def logs_group() -> None:
    """Follow, search and expire the log lines indexed in Elasticsearch."""


def _filter_options(function):  # type: ignore[no-untyped-def]
    options = [
        click.option("--app", "service", help="application (service.name)"),
        click.option("--level", help="exact levels, comma-separated (ERROR,FATAL)"),
        click.option("--min-level", help="this level and above"),
        click.option("-q", "--query", "q", help="free text over message and error message"),
        click.option("--trace-id", help="lines of one trace"),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@logs_group.command("search")
@_filter_options
@click.option("--from", "start", help="start: ISO-8601 or epoch ms (default: 1 hour ago)")
@click.option("--to", "end", help="end, exclusive: ISO-8601 or epoch ms")
@click.option("--page", default=1, show_default=True)
@click.option("--size", default=50, show_default=True)
def logs_search(start: str | None, end: str | None, **filters: Any) -> None:
    """Print matching lines, newest first, as a table."""
    start = start or (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    search = _search({**filters, "from": start, "to": end})
    settings = get_settings()
    try:
        response = _client().search(**search.search_arguments(settings.elasticsearch_index_prefix))
    except Exception as error:
        _fail(f"cannot search Elasticsearch at {settings.elasticsearch}: {error}")
        raise
    hits = response["hits"]["hits"]
    table = Table(title=f"{response['hits']['total']['value']} lines (page {search.page})")
    for column in ("time", "level", "app", "message", "trace", "flags"):
        table.add_column(column, overflow="fold")
    for hit in hits:
        source = hit["_source"]
        level = source.get("log", {}).get("level", "")
        table.add_row(
            source.get("@timestamp", ""),
            f"[{LEVEL_COLOURS.get(level, 'dim')}]{level}[/]",
            source.get("service", {}).get("name", ""),
            source.get("message", ""),
            source.get("trace", {}).get("id", ""),
            ",".join(source.get("tags", [])),
        )
    console.print(table)


@logs_group.command("tail")
@_filter_options
@click.option("-n", "--lines", default=20, show_default=True, help="recent lines to show first")
@click.option("--interval", default=1.0, show_default=True, help="seconds between polls")
@click.option("--once", is_flag=True, help="print the recent lines and stop")
def logs_tail(lines: int, interval: float, once: bool, **filters: Any) -> None:
    """Follow new lines live (as soon as Elasticsearch makes them searchable)."""
    settings = get_settings()
    client = _client()
    seen: deque[str] = deque(maxlen=10_000)
    seen_set: set[str] = set()
    newest: str | None = None
    first = True
    while True:
        since = None
        if newest is not None:
            overlap = datetime.fromisoformat(newest) - timedelta(seconds=30)
            since = overlap.isoformat()
        search = _search({**filters, "from": since, "size": lines if first else 500})
        arguments = search.search_arguments(settings.elasticsearch_index_prefix)
        arguments["track_total_hits"] = False
        try:
            response = client.search(**arguments)
        except Exception as error:
            console.print(f"[yellow]Elasticsearch not answering ({error}); retrying[/]")
            time.sleep(max(interval, 2.0))
            continue
        hits = list(reversed(response["hits"]["hits"]))
        for hit in _unseen(hits, seen, seen_set):
            console.print(_line_text(hit["_source"]), highlight=False)
            stamp = hit["_source"].get("@timestamp")
            if stamp and (newest is None or stamp > newest):
                newest = stamp
        first = False
        if once:
            return
        time.sleep(interval)


def _unseen(hits: Iterable[dict], seen: deque[str], seen_set: set[str]) -> Iterable[dict]:
    for hit in hits:
        key = f"{hit['_index']}/{hit['_id']}"
        if key in seen_set:
            continue
        if len(seen) == seen.maxlen:
            seen_set.discard(seen[0])
        seen.append(key)
        seen_set.add(key)
        yield hit


@logs_group.command("retention")
@click.option("--days", type=click.IntRange(min=1), required=True, help="days of logs to keep")
@click.option("--dry-run", is_flag=True, help="list what would be deleted")
def logs_retention(days: int, dry_run: bool) -> None:
    """Delete daily log indices older than N days (UTC)."""
    settings = get_settings()
    client = _client()
    pattern = f"{settings.elasticsearch_index_prefix}-logs-*"
    try:
        names = list(
            client.indices.get(index=pattern, allow_no_indices=True, expand_wildcards="open,closed")
        )
    except Exception as error:
        _fail(f"cannot list indices at {settings.elasticsearch}: {error}")
        raise
    expired = expired_indices(names, datetime.now(UTC).date(), days)
    for name in expired:
        console.print(f"{'would delete' if dry_run else 'deleting'} {name}", highlight=False)
        if not dry_run:
            client.indices.delete(index=name, ignore_unavailable=True)
    kept = len(names) - len(expired)
    verb = "would be deleted" if dry_run else "deleted"
    console.print(f"{len(expired)} index(es) {verb}, {kept} kept", highlight=False)
