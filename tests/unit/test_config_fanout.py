"""The release fan-out path: cached client answers and shared long-poll wake-ups."""

from __future__ import annotations

import asyncio
import json

import pytest

from streams.config import model
from streams.config.model import ConfigError, NotificationAnswers, RenderedConfigs
from streams.config.tables import ConfigState
from tests.unit.test_config_model import NOW, release

KEY = model.namespace_key("orders", "default", "application")


def gray_of(main: dict, items: dict[str, str]) -> dict:
    return model.gray_publish(
        main,
        branch_name="canary",
        items=items,
        deleted_keys=[],
        rules=model.check_rules([{"clientAppId": "orders", "clientIpList": ["10.0.0.9"]}]),
        author="x",
        comment="",
        now_ms=NOW,
        release_key="gray-key",
    )


def poll_text(notification_id: int) -> str:
    return json.dumps([{"namespaceName": "application", "notificationId": notification_id}])


def test_rendered_configs_are_apollo_answers_cached_per_release_key_and_gray_variant() -> None:
    rendered = RenderedConfigs()
    main = release(None, {"a": "1"})
    key, body = rendered.body(main, "orders", "application", None, frozenset())
    assert key == main["release_key"]
    assert json.loads(body) == {
        "appId": "orders",
        "cluster": "default",
        "namespaceName": "application",
        "configurations": {"a": "1"},
        "releaseKey": main["release_key"],
    }
    assert rendered.body(main, "orders", "application", None, frozenset())[1] is body
    assert len(rendered) == 1

    gray = gray_of(main, {"a": "2"})
    gray_key, gray_body = rendered.body(gray, "orders", "application", "10.0.0.9", frozenset())
    assert gray_key == "gray-key" and json.loads(gray_body)["configurations"] == {"a": "2"}
    other_key, other_body = rendered.body(gray, "orders", "application", "10.0.0.1", frozenset())
    assert other_key == main["release_key"] and json.loads(other_body)["configurations"] == {
        "a": "1"
    }
    newer = release(main, {"a": "3"}, at=NOW + 5)
    assert json.loads(rendered.body(newer, "orders", "application", None, frozenset())[1])[
        "configurations"
    ] == {"a": "3"}, "a new release key is a new entry, never the old body"


def test_rendered_configs_stay_within_their_limit() -> None:
    rendered = RenderedConfigs(limit=2)
    previous = None
    for step in range(5):
        previous = release(previous, {"a": str(step)}, at=NOW + step)
        rendered.body(previous, "orders", "application", None, frozenset())
    assert len(rendered) == 2


def test_notification_answers_are_shared_by_equal_queries_and_follow_releases() -> None:
    releases: dict[str, dict] = {}
    answers = NotificationAnswers(releases)
    waiting = answers.answer("orders", "default", None, poll_text(-1))
    assert waiting.body is None and waiting.keys == (KEY,)

    live = release(None, {"a": "1"})
    releases[KEY] = live
    assert answers.answer("orders", "default", None, poll_text(-1)) is waiting, "cached"
    answers.clear()
    ready = answers.answer("orders", "default", None, poll_text(-1))
    assert json.loads(ready.body or b"") == model.notification_updates(
        releases, "orders", "default", None, [("application", -1)]
    )
    assert answers.answer("orders", "default", None, poll_text(-1)) is ready
    assert answers.answer("orders", "default", None, poll_text(live["release_id"])).body is None
    with pytest.raises(ConfigError) as caught:
        answers.answer("orders", "default", None, "not json")
    assert caught.value.field == "notifications"


def test_data_center_polls_watch_both_clusters() -> None:
    answers = NotificationAnswers({})
    keys = answers.answer("orders", "shanghai", None, poll_text(-1)).keys
    assert keys == (
        model.namespace_key("orders", "shanghai", "application"),
        model.namespace_key("orders", "default", "application"),
    )


def test_one_release_wakes_every_waiter_of_its_namespace_through_one_shared_event() -> None:
    async def scenario() -> None:
        state = ConfigState()
        other = model.namespace_key("orders", "default", "db")
        first = state.watch((KEY,))
        second = state.watch((KEY,))
        unrelated = state.watch((other,))
        both = state.watch((KEY, other))
        assert first is second and state.watcher_count == 4

        state.release_applied(KEY, release(None, {"a": "1"}))
        assert first.is_set() and both.is_set() and not unrelated.is_set()
        assert state.notifications.answer("orders", "default", None, poll_text(-1)).body
        renewed = state.watch((KEY,))
        assert renewed is not first and not renewed.is_set(), "the next wait gets a new event"

        for keys in ((KEY,), (KEY,), (KEY,), (other,), (KEY, other)):
            state.unwatch(keys)
        assert state.watcher_count == 0
        assert not state._events and not state._key_sets, "nothing kept for gone waiters"

    asyncio.run(scenario())


def test_release_clears_cached_poll_answers() -> None:
    state = ConfigState()
    assert state.notifications.answer("orders", "default", None, poll_text(-1)).body is None
    state.release_applied(KEY, release(None, {"a": "1"}))
    assert state.notifications.answer("orders", "default", None, poll_text(-1)).body is not None
    state.release_applied(KEY, None)
    assert state.notifications.answer("orders", "default", None, poll_text(-1)).body is None
