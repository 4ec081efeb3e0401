"""Pure config-centre logic: formats, releases, gray rules, fallback, notifications, rollback."""

from __future__ import annotations

import json
import re

import pytest

from streams.config import model
from streams.config.model import ConfigError, InvalidContent

NOW = 1_700_000_000_000


def draft(items: dict[str, str], namespace: str = "application") -> dict:
    record = model.new_draft(
        "orders", "default", namespace, author="ann", now_ms=NOW, request_id="r"
    )
    record["configurations"] = dict(items)
    return record


def release(previous: dict | None, items: dict[str, str], at: int = NOW) -> dict:
    return model.publish(
        previous,
        draft(items),
        author="ann",
        name="r",
        comment="",
        now_ms=at,
        release_key=model.new_release_key("orders", "default", "application", at),
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("application", ("application", "properties")),
        ("application.properties", ("application", "properties")),
        ("datasources.json", ("datasources.json", "json")),
        ("app.YAML", ("app.YAML", "yaml")),
        ("TEST1.apollo", ("TEST1.apollo", "properties")),
    ],
)
def test_namespace_names_carry_their_format(name: str, expected: tuple[str, str]) -> None:
    assert model.split_namespace(name) == expected


@pytest.mark.parametrize(
    ("fmt", "content", "line"),
    [
        ("json", '{\n  "a": 1,\n  oops\n}', 3),
        ("yaml", "a: 1\nb: [1, 2\nc: 3\n", 3),
        ("xml", "<a>\n<b></a>\n", 2),
    ],
)
def test_invalid_content_is_an_error_naming_the_line(fmt: str, content: str, line: int) -> None:
    with pytest.raises(InvalidContent) as caught:
        model.validate_content(fmt, {"content": content})
    assert caught.value.field == "content" and caught.value.line == line
    assert f"line {line}" in str(caught.value)


def test_valid_content_and_format_rules() -> None:
    model.validate_content("json", {"content": '{"a": [1, 2]}'})
    model.validate_content("yaml", {"content": "a: 1\n---\nb: 2\n"})
    model.validate_content("xml", {"content": "<a><b/></a>"})
    model.validate_content("txt", {"content": "{ anything"})
    with pytest.raises(ConfigError, match="only 'content'"):
        model.validate_content("json", {"content": "{}", "other": "x"})
    with pytest.raises(ConfigError) as caught:
        model.validate_content("toml", {})
    assert caught.value.field == "format"


def test_release_keys_look_like_apollo_and_differ() -> None:
    keys = {model.new_release_key("orders", "default", "application", NOW) for _ in range(100)}
    assert len(keys) == 100
    assert all(re.fullmatch(r"\d{14}-[0-9a-f]{16}", key) for key in keys)


def test_release_ids_increase_with_every_change() -> None:
    first = release(None, {"a": "1"})
    second = release(first, {"a": "2"}, at=NOW - 5000)
    assert second["release_id"] > first["release_id"]
    rules = model.check_rules([{"clientAppId": "orders", "clientIpList": ["10.0.0.9"]}])
    gray = model.gray_publish(
        second,
        branch_name="b",
        items={"a": "3"},
        deleted_keys=[],
        rules=rules,
        author="x",
        comment="",
        now_ms=NOW - 5000,
        release_key="k",
    )
    assert gray["release_id"] > second["release_id"]
    assert gray["release_key"] == second["release_key"], "a gray release keeps the main key"


def test_gray_rules_match_app_and_ip_or_label() -> None:
    rule = model.check_rules(
        [{"clientAppId": "Orders", "clientIpList": ["10.0.0.9"], "clientLabelList": ["blue"]}]
    )[0]
    assert model.rule_matches(rule, "orders", "10.0.0.9", frozenset())
    assert model.rule_matches(rule, "orders", "10.0.0.1", frozenset({"blue", "x"}))
    assert not model.rule_matches(rule, "orders", "10.0.0.1", frozenset({"green"}))
    assert not model.rule_matches(rule, "billing", "10.0.0.9", frozenset())
    star = model.check_rules([{"clientAppId": "orders", "clientIpList": ["*"]}])[0]
    assert model.rule_matches(star, "orders", None, frozenset())
    with pytest.raises(ConfigError) as caught:
        model.check_rules([{"clientAppId": "orders"}])
    assert caught.value.field == "rules[0]"


def test_gray_release_served_to_matching_clients_then_merged_or_abandoned() -> None:
    main = release(None, {"a": "1", "b": "1"})
    rules = model.check_rules([{"clientAppId": "orders", "clientIpList": ["10.0.0.9"]}])
    gray = model.gray_publish(
        main,
        branch_name="canary",
        items={"a": "2"},
        deleted_keys=["b"],
        rules=rules,
        author="x",
        comment="",
        now_ms=NOW,
        release_key="20240101000000-00000000000000aa",
    )
    canary = model.served(gray, "orders", "10.0.0.9")
    assert canary.gray and canary.configurations == {"a": "2"}
    assert canary.release_key == "20240101000000-00000000000000aa"
    assert model.served(gray, "orders", "10.0.0.1").configurations == {"a": "1", "b": "1"}

    rebased = release(gray, {"a": "1", "b": "1", "c": "1"})
    assert rebased["gray"]["configurations"] == {"a": "2", "c": "1"}, "branch rebased on main"

    merged = model.gray_merge(rebased, author="x", comment="", now_ms=NOW, release_key="k2")
    assert merged["gray"] is None and merged["closed_branch_name"] == "canary"
    assert merged["configurations"] == {"a": "2", "c": "1"} and merged["release_key"] == "k2"
    abandoned = model.gray_abandon(rebased, author="x", now_ms=NOW)
    assert abandoned["gray"] is None and abandoned["configurations"] == rebased["configurations"]
    with pytest.raises(model.NotFound):
        model.gray_abandon(abandoned, author="x", now_ms=NOW)
    with pytest.raises(model.Conflict):
        model.gray_publish(
            None,
            branch_name="b",
            items={},
            deleted_keys=[],
            rules=rules,
            author="x",
            comment="",
            now_ms=NOW,
            release_key="k",
        )


def test_cluster_fallback_to_data_center_then_default() -> None:
    default = release(None, {"a": "default"})
    shanghai = {**default, "cluster": "shanghai", "configurations": {"a": "sh"}}
    releases = {
        model.namespace_key("orders", "default", "application"): default,
        model.namespace_key("orders", "shanghai", "application"): shanghai,
    }
    resolve = model.resolve_release
    assert resolve(releases, "orders", "beijing", "Application.properties") is default
    assert resolve(releases, "orders", "beijing", "application", "shanghai") is shanghai
    assert resolve(releases, "orders", "shanghai", "application") is shanghai
    assert resolve(releases, "billing", "default", "application") is None


def test_notifications_answer_only_namespaces_newer_than_the_client() -> None:
    live = release(None, {"a": "1"})
    releases = {model.namespace_key("orders", "default", "application"): live}
    watched = model.parse_notifications(
        json.dumps(
            [
                {"namespaceName": "application.properties", "notificationId": -1},
                {"namespaceName": "never.json", "notificationId": -1},
            ]
        )
    )
    updates = model.notification_updates(releases, "orders", "default", None, watched)
    assert updates == [
        {
            "namespaceName": "application.properties",
            "notificationId": live["release_id"],
            "messages": {"details": {"orders+default+application": live["release_id"]}},
        }
    ]
    current = [("application", live["release_id"])]
    assert model.notification_updates(releases, "orders", "default", None, current) == []
    with pytest.raises(ConfigError) as caught:
        model.parse_notifications('[{"namespaceName": "a", "notificationId": "x"}]')
    assert caught.value.field == "notifications[0].notificationId"
    with pytest.raises(ConfigError):
        model.parse_notifications("not json")


def test_rollback_goes_back_one_release_at_a_time_and_to_a_chosen_one() -> None:
    history: list[dict] = []
    r1 = release(None, {"a": "1"})
    r2 = release(r1, {"a": "2"})
    r3 = release(r2, {"a": "3"})
    history += [r1, r2, r3]
    back = model.rollback(r3, history, author="x", comment="", now_ms=NOW)
    assert back["configurations"] == {"a": "2"} and back["release_key"] == r2["release_key"]
    assert (back["rolled_back_from"], back["rolled_back_to"]) == (
        r3["release_id"],
        r2["release_id"],
    )
    history.append(back)
    further = model.rollback(back, history, author="x", comment="", now_ms=NOW)
    assert further["configurations"] == {"a": "1"}
    history.append(further)
    with pytest.raises(model.Conflict):
        model.rollback(further, history, author="x", comment="", now_ms=NOW)
    r4 = release(further, {"a": "4"})
    history.append(r4)
    chosen = model.rollback(
        r4, history, author="x", comment="", now_ms=NOW, to_release_id=r1["release_id"]
    )
    assert chosen["configurations"] == {"a": "1"}
    with pytest.raises(ConfigError) as caught:
        model.rollback(
            r4, history, author="x", comment="", now_ms=NOW, to_release_id=r3["release_id"]
        )
    assert caught.value.field == "toReleaseId", "an abandoned release is no rollback target"
    assert model.abandoned_release_ids(history) == {r2["release_id"], r3["release_id"]}


def test_drafts_items_and_diff() -> None:
    record = draft({})
    record, old = model.set_item(
        record, "a", "1", author="x", now_ms=NOW, request_id="q", comment=""
    )
    assert old is None and record["release_id"] == 2 and record["name"] == "q"
    record, old = model.set_item(
        record, "a", "2", author="x", now_ms=NOW, request_id="q2", comment=""
    )
    assert old == "1"
    record, old = model.delete_item(record, "a", author="x", now_ms=NOW, request_id="q3")
    assert old == "2" and record["configurations"] == {}
    with pytest.raises(model.NotFound):
        model.delete_item(record, "a", author="x", now_ms=NOW, request_id="q4")
    json_draft = draft({}, "datasources.json")
    with pytest.raises(ConfigError) as caught:
        model.set_item(json_draft, "url", "x", author="x", now_ms=NOW, request_id="q", comment="")
    assert caught.value.field == "key"
    assert model.diff({"a": "1", "b": "1"}, {"a": "2", "c": "1"}) == {
        "added": {"c": "1"},
        "modified": {"a": {"old": "1", "new": "2"}},
        "deleted": {"b": "1"},
    }


def test_properties_text_escapes_what_java_properties_would_misread() -> None:
    text = model.properties_text({"a b": "x=y", "path": "C:\\dir", "multi": "1\n2"})
    assert text == "a\\ b=x\\=y\npath=C\\:\\\\dir\nmulti=1\\n2\n"


def test_index_keeps_latest_release_and_bounded_history() -> None:
    index = model.ConfigIndex()
    key = model.namespace_key("orders", "default", "application")
    first = release(None, {"a": "1"})
    index.apply_release(key, first)
    index.apply_history(key, first)
    index.apply_history(key, first)
    assert index.history[key] == [first], "a replayed record is not history twice"
    index.apply_release(key, None)
    assert key not in index.releases
    index.apply_draft(key, draft({"a": "1"}))
    assert index.apps() == {
        "orders": {"default": [{"name": "application", "format": "properties", "isPublic": False}]}
    }


def test_bad_records_are_rejected_naming_the_field() -> None:
    from streams.errors import RecordRejected

    record = release(None, {"a": "1"})
    with pytest.raises(RecordRejected) as caught:
        model.validate_release({**record, "format": "toml"})
    assert caught.value.field == "format"
    with pytest.raises(RecordRejected):
        model.validate_release({**record, "release_id": 0})
