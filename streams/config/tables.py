"""Config state on every worker: global tables over the config topics, and the waiting polls.

The releases, history and drafts topics are themselves the changelogs of three GlobalTables, so
every worker reads every record straight from the topic an admin write produced to (one hop),
and `on_changelog_event` applies it to this worker's `ConfigIndex` and wakes the long polls
watching that namespace. The tables keep an in-memory store: a worker restart replays the
topics from the start, which rebuilds the index (config topics are small).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from streams.bus.codec import CodecError
from streams.config.events import DRAFTS_TOPIC, HISTORY_TOPIC, RELEASE_SCHEMA, RELEASES_TOPIC
from streams.config.model import ConfigIndex, Record, validate_release
from streams.errors import RecordRejected

if TYPE_CHECKING:
    import faust
    from faust.types import EventT

    from streams.app import Runtime

log = logging.getLogger(__name__)

CURRENT_TABLE = "config.current"
HISTORY_TABLE = "config.history"
DRAFTS_TABLE = "config.draft_items"
SERVE_RELEASES = "config.serve_releases"


class ConfigState:
    """This worker's `ConfigIndex`, with events that wake whoever waits for a namespace."""

    def __init__(self) -> None:
        self.index = ConfigIndex()
        self._watchers: dict[str, set[asyncio.Event]] = {}
        self._any_change = asyncio.Event()
        self.last_applied_at: float | None = None

    def watch(self, keys: list[str]) -> asyncio.Event:
        """An event set as soon as a release of one of these namespace keys is applied."""
        event = asyncio.Event()
        for key in keys:
            self._watchers.setdefault(key, set()).add(event)
        return event

    def unwatch(self, keys: list[str], event: asyncio.Event) -> None:
        for key in keys:
            watchers = self._watchers.get(key)
            if watchers is not None:
                watchers.discard(event)
                if not watchers:
                    del self._watchers[key]

    @property
    def watcher_count(self) -> int:
        return len({id(e) for events in self._watchers.values() for e in events})

    def release_applied(self, key: str, record: Record | None) -> None:
        self.index.apply_release(key, record)
        for event in self._watchers.get(key, ()):
            event.set()
        self._changed()

    def history_applied(self, key: str, record: Record) -> None:
        self.index.apply_history(key, record)
        self._changed()

    def draft_applied(self, key: str, record: Record | None) -> None:
        self.index.apply_draft(key, record)
        self._changed()

    def _changed(self) -> None:
        self.last_applied_at = time.time()
        changed, self._any_change = self._any_change, asyncio.Event()
        changed.set()

    async def until(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Wait until `condition()` holds after some record was applied; False on timeout."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._any_change.wait(), remaining)
            except TimeoutError:
                return condition()
        return True


def config_tables(runtime: Runtime, state: ConfigState) -> dict[str, faust.Table]:
    """Declare the three GlobalTables whose changelogs are the config topics themselves."""
    codec = runtime.codec

    def applier(
        apply: Callable[[str, Record | None], None], allow_tombstone: bool
    ) -> Callable[[EventT], Awaitable[None]]:
        async def on_event(event: EventT) -> None:
            raw_key = event.message.key
            key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
            value = event.message.value
            if value is None:
                if allow_tombstone:
                    apply(key, None)
                return
            try:
                record = codec.decode(value, RELEASE_SCHEMA)
                validate_release(record)
            except (CodecError, RecordRejected) as error:
                await runtime.dead_letter(event, SERVE_RELEASES, error.error_type, str(error))
                return
            apply(key, record)

        return on_event

    def history(key: str, record: Record | None) -> None:
        if record is not None:
            state.history_applied(key, record)

    sources = {
        CURRENT_TABLE: (RELEASES_TOPIC, applier(state.release_applied, True)),
        HISTORY_TABLE: (HISTORY_TOPIC, applier(history, False)),
        DRAFTS_TABLE: (DRAFTS_TOPIC, applier(state.draft_applied, True)),
    }
    tables: dict[str, Any] = {}
    for name, (topic, on_event) in sources.items():
        spec = runtime.topology.table(name)
        tables[name] = runtime.app.GlobalTable(
            name.replace(".", "-"),
            changelog_topic=runtime.topic(topic),
            partitions=runtime.topology.topic(topic).partitions,
            key_type=bytes,
            value_type=bytes,
            store="memory://",
            recovery_buffer_size=1,
            standby_buffer_size=1,
            synchronize_all_active_partitions=True,
            on_changelog_event=on_event,
            help=spec.doc,
        )
    return tables
