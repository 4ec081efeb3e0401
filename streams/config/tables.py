"""Config state on every worker: global tables over the config topics, and the waiting polls.

Every worker reads every partition of the releases, history and drafts topics (the
`global: true` tables of topology.yaml) straight from the topic an admin write produced to (one
hop), applies each record to its `ConfigIndex` and wakes the long polls watching that
namespace. A restart replays the topics from the start, which rebuilds the index (config topics
are small: the releases and drafts topics are compacted).

A record no client could be served from is skipped here and counted (`ConfigState.skipped`);
it is not dead-lettered here, because every worker reads every record, again after each
restart. The `config.check_*` agents (consumer group, committed offsets) dead-letter it once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from streams.bus.codec import CodecError
from streams.bus.follow import MessageHandler, follow_topics
from streams.config.events import RELEASE_SCHEMA
from streams.config.model import (
    ConfigIndex,
    NotificationAnswers,
    Record,
    RenderedConfigs,
    validate_release,
)
from streams.errors import RecordRejected

if TYPE_CHECKING:
    from streams.app import Runtime

log = logging.getLogger(__name__)

CURRENT_TABLE = "config.current"
HISTORY_TABLE = "config.history"
DRAFTS_TABLE = "config.draft_items"
SERVE_RELEASES = "config.serve_releases"


class ConfigState:
    """This worker's `ConfigIndex`, the encoded client answers, and the events that wake whoever
    waits for a namespace.

    Long polls watching the same namespace keys share one event, so a release wakes its N
    waiters with one `set()` per watched key set, and they all answer from one cached body.
    """

    def __init__(self) -> None:
        self.index = ConfigIndex()
        self.configs = RenderedConfigs()
        self.notifications = NotificationAnswers(self.index.releases)
        self._events: dict[tuple[str, ...], asyncio.Event] = {}
        self._waiting: dict[tuple[str, ...], int] = {}
        self._key_sets: dict[str, set[tuple[str, ...]]] = {}
        self._any_change = asyncio.Event()
        self.last_applied_at: float | None = None
        self.skipped = 0

    def watch(self, keys: tuple[str, ...]) -> asyncio.Event:
        """An event set as soon as a release of one of these namespace keys is applied (shared
        by every waiter on the same keys; release it with `unwatch`)."""
        event = self._events.get(keys)
        if event is None:
            event = self._events[keys] = asyncio.Event()
            for key in keys:
                self._key_sets.setdefault(key, set()).add(keys)
        self._waiting[keys] = self._waiting.get(keys, 0) + 1
        return event

    def unwatch(self, keys: tuple[str, ...]) -> None:
        left = self._waiting.get(keys, 0) - 1
        if left > 0:
            self._waiting[keys] = left
            return
        self._waiting.pop(keys, None)
        self._events.pop(keys, None)
        for key in keys:
            key_sets = self._key_sets.get(key)
            if key_sets is not None:
                key_sets.discard(keys)
                if not key_sets:
                    del self._key_sets[key]

    @property
    def watcher_count(self) -> int:
        return sum(self._waiting.values())

    def release_applied(self, key: str, record: Record | None) -> None:
        self.index.apply_release(key, record)
        self.notifications.clear()
        for keys in self._key_sets.get(key, ()):
            event = self._events.get(keys)
            if event is not None:
                event.set()
                self._events[keys] = asyncio.Event()
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


async def follow_config_topics(runtime: Runtime, state: ConfigState) -> None:
    """Read every partition of the releases, history and drafts topics from the start, forever.

    This is what a GlobalTable does (every worker holds all of it), with the bus's group-less
    follower (`streams.bus.follow`).
    """

    def history(key: str, record: Record | None) -> None:
        if record is not None:
            state.history_applied(key, record)

    def applier(apply: Callable[[str, Record | None], None]) -> MessageHandler:
        async def handle(message: Any) -> None:
            _apply(runtime, state, apply, message)

        return handle

    handlers = {
        runtime.topology.table(table).source: applier(apply)
        for table, apply in (
            (CURRENT_TABLE, state.release_applied),
            (HISTORY_TABLE, history),
            (DRAFTS_TABLE, state.draft_applied),
        )
    }
    await follow_topics(runtime, handlers, max_records=1000)


def _apply(
    runtime: Runtime,
    state: ConfigState,
    apply: Callable[[str, Record | None], None],
    message: Any,
) -> None:
    key = message.key.decode() if isinstance(message.key, bytes) else str(message.key)
    if message.value is None:
        apply(key, None)
        return
    try:
        record = runtime.codec.decode(message.value, RELEASE_SCHEMA)
        validate_release(record)
    except (CodecError, RecordRejected) as error:
        state.skipped += 1
        log.warning(
            "config record %s[%d]@%d skipped (dead-lettered by the config.check_* agents): %s",
            message.topic,
            message.partition,
            message.offset,
            error,
        )
        return
    apply(key, record)
