"""Pure config-centre logic: namespaces and formats, releases, gray rules, rollback, long poll.

Every function here takes and returns plain `ConfigRelease`-shaped dicts (the Avro record of
`schemas/config_release.avsc`), so the same code serves the admin API, the Apollo client API
and the unit tests without Kafka. Drafts (editable items) use the same record shape with kind
`DRAFT`: `configurations` holds the items, `release_id` the draft revision and `name` the id of
the request that wrote it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import platform
import re
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from connectors.mappings import KEYWORD
from streams.errors import RecordRejected, StackstreamError

DEFAULT_CLUSTER = "default"
CONTENT_KEY = "content"
PROPERTIES = "properties"
FILE_FORMATS = ("json", "yaml", "yml", "xml", "txt")
FORMATS = (PROPERTIES, *FILE_FORMATS)
RELEASE_KINDS = ("NORMAL", "GRAY", "GRAY_MERGE", "GRAY_ABANDON", "ROLLBACK")
DRAFT = "DRAFT"
CONTENT_KINDS = ("NORMAL", "GRAY_MERGE")
HISTORY_LIMIT = 200
ANY = "*"
NAME_PATTERN = re.compile(r"^[0-9A-Za-z_.-]+$")
Record = dict[str, Any]


class ConfigError(StackstreamError):
    """A request the config centre refuses; `field` names the offending input."""

    status = 400

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class InvalidContent(ConfigError):
    """Namespace content that does not parse in its format; `line` is 1-based when known."""

    def __init__(self, fmt: str, message: str, line: int | None) -> None:
        where = f"line {line}: " if line is not None else ""
        super().__init__(CONTENT_KEY, f"invalid {fmt}: {where}{message}")
        self.line = line


class NotFound(ConfigError):
    status = 404


class Conflict(ConfigError):
    status = 409


# --- names and formats -----------------------------------------------------------------------


def check_name(field_name: str, value: Any) -> str:
    """An app, cluster, namespace or branch name as Apollo allows them."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(field_name, "must be a non-empty string")
    if not NAME_PATTERN.match(value) or len(value) > 128:
        raise ConfigError(
            field_name, f"{value!r} may hold only letters, digits, '.', '_' and '-' (max 128)"
        )
    return value


def split_namespace(name: str) -> tuple[str, str]:
    """`application.properties` → (`application`, properties); `db.json` → (`db.json`, json).

    Apollo strips a trailing `.properties`; other formats keep their suffix in the name.
    """
    name = name.strip()
    if name.lower().endswith(".properties"):
        return name[: -len(".properties")], PROPERTIES
    stem, dot, suffix = name.rpartition(".")
    if dot and stem and suffix.lower() in FILE_FORMATS:
        return name, suffix.lower()
    return name, PROPERTIES


def namespace_key(app_id: str, cluster: str, namespace: str) -> str:
    """The table and topic key of a namespace; lookups are case-insensitive on the namespace."""
    return f"{app_id}+{cluster}+{split_namespace(namespace)[0].lower()}"


def validate_content(fmt: str, configurations: Mapping[str, str]) -> None:
    """Raise InvalidContent when the items do not make a valid namespace of this format."""
    if fmt not in FORMATS:
        raise ConfigError("format", f"{fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == PROPERTIES:
        for key in configurations:
            if not key.strip() or any(c in key for c in "\r\n"):
                raise ConfigError("key", f"{key!r} is not a usable property key")
        return
    extra = set(configurations) - {CONTENT_KEY}
    if extra:
        raise ConfigError("key", f"a {fmt} namespace holds only '{CONTENT_KEY}', not {extra}")
    text = configurations.get(CONTENT_KEY, "")
    if not text.strip():
        return
    if fmt == "json":
        try:
            json.loads(text)
        except json.JSONDecodeError as error:
            raise InvalidContent(fmt, error.msg, error.lineno) from None
    elif fmt in ("yaml", "yml"):
        try:
            list(yaml.safe_load_all(text))
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            line = mark.line + 1 if mark is not None else None
            raise InvalidContent(fmt, str(error.problem or error), line) from None
        except yaml.YAMLError as error:
            raise InvalidContent(fmt, str(error), None) from None
    elif fmt == "xml":
        try:
            ElementTree.fromstring(text)
        except ElementTree.ParseError as error:
            raise InvalidContent(fmt, str(error), error.position[0]) from None


# --- release keys and ids ----------------------------------------------------------------------

_MACHINE = hashlib.sha1(f"{platform.node()}:{os.getpid()}".encode()).digest()[:3]
_COUNTER = itertools.count(int.from_bytes(os.urandom(2), "big"))


def new_release_key(app_id: str, cluster: str, namespace: str, now_ms: int) -> str:
    """Apollo's release key: `yyyyMMddHHmmss-<16 hex>` (namespace hash, machine, counter)."""
    stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(now_ms / 1000))
    scope = hashlib.sha1(namespace_key(app_id, cluster, namespace).encode()).digest()[:2]
    counter = (next(_COUNTER) & 0xFFFFFF).to_bytes(3, "big")
    return f"{stamp}-{(scope + _MACHINE + counter).hex()}"


def next_release_id(previous: Mapping[str, Any] | None, now_ms: int) -> int:
    """Larger than the previous id of the namespace, and than any id minted before `now_ms`.

    Time-based so two workers publishing the same namespace at once rarely mint the same id.
    """
    last = previous["release_id"] if previous else 0
    return max(last + 1, now_ms)


# --- records ------------------------------------------------------------------------------------


def _record(
    *,
    app_id: str,
    cluster: str,
    namespace: str,
    fmt: str,
    kind: str,
    release_id: int,
    release_key: str,
    author: str,
    now_ms: int,
    configurations: Mapping[str, str],
    name: str = "",
    comment: str = "",
    is_public: bool = False,
    gray: Record | None = None,
    **extra: Any,
) -> Record:
    record: Record = {
        "app_id": app_id,
        "cluster": cluster,
        "namespace": namespace,
        "format": fmt,
        "kind": kind,
        "release_id": release_id,
        "release_key": release_key,
        "name": name,
        "comment": comment,
        "author": author,
        "released_at_ms": now_ms,
        "configurations": dict(configurations),
        "is_public": is_public,
        "is_rollback": False,
        "rolled_back_from": None,
        "rolled_back_to": None,
        "gray": gray,
        "closed_branch_name": None,
    }
    record.update(extra)
    return record


def _derived(previous: Record, **changes: Any) -> Record:
    record = dict(previous)
    record.update(
        {"is_rollback": False, "rolled_back_from": None, "rolled_back_to": None}
        | {"closed_branch_name": None}
    )
    record.update(changes)
    return record


def validate_release(record: Mapping[str, Any]) -> None:
    """Reject release or draft records no client could be served from (dead-letter reason)."""
    for name in ("app_id", "cluster", "namespace"):
        if not record[name]:
            raise RecordRejected(name, "must not be empty")
    if record["format"] not in FORMATS:
        raise RecordRejected("format", f"{record['format']!r} is not a known format")
    if record["kind"] not in (*RELEASE_KINDS, DRAFT):
        raise RecordRejected("kind", f"{record['kind']!r} is not a release kind")
    if record["release_id"] <= 0:
        raise RecordRejected("release_id", "must be positive")


# --- drafts ----------------------------------------------------------------------------------


def new_draft(
    app_id: str,
    cluster: str,
    namespace: str,
    *,
    author: str,
    now_ms: int,
    request_id: str,
    is_public: bool = False,
    fmt: str | None = None,
) -> Record:
    """The empty draft of a newly created namespace."""
    name, suffix_format = split_namespace(namespace)
    fmt = fmt or suffix_format
    if fmt != suffix_format and not (fmt in ("yaml", "yml") and suffix_format in ("yaml", "yml")):
        raise ConfigError("format", f"namespace {name!r} implies format {suffix_format}, not {fmt}")
    return _record(
        app_id=app_id,
        cluster=cluster,
        namespace=name,
        fmt=fmt,
        kind=DRAFT,
        release_id=1,
        release_key="",
        author=author,
        now_ms=now_ms,
        configurations={},
        name=request_id,
        is_public=is_public,
    )


def set_item(
    draft: Record, key: str, value: str, *, author: str, now_ms: int, request_id: str, comment: str
) -> tuple[Record, str | None]:
    """The draft with `key` set to `value`, and the value it had before (None when new)."""
    if not isinstance(key, str) or not key.strip():
        raise ConfigError("key", "must be a non-empty string")
    if not isinstance(value, str):
        raise ConfigError("value", "must be a string")
    if draft["format"] != PROPERTIES and key != CONTENT_KEY:
        raise ConfigError("key", f"a {draft['format']} namespace holds only '{CONTENT_KEY}'")
    items = dict(draft["configurations"])
    old = items.get(key)
    items[key] = value
    return _draft_revision(draft, items, author, now_ms, request_id, comment), old


def delete_item(
    draft: Record, key: str, *, author: str, now_ms: int, request_id: str
) -> tuple[Record, str]:
    """The draft without `key`, and the value it had."""
    items = dict(draft["configurations"])
    if key not in items:
        raise NotFound("key", f"{key!r} is not an item of {draft['namespace']}")
    old = items.pop(key)
    return _draft_revision(draft, items, author, now_ms, request_id, ""), old


def _draft_revision(
    draft: Record, items: dict[str, str], author: str, now_ms: int, request_id: str, comment: str
) -> Record:
    return _derived(
        draft,
        configurations=items,
        release_id=draft["release_id"] + 1,
        author=author,
        released_at_ms=now_ms,
        name=request_id,
        comment=comment,
    )


# --- releases --------------------------------------------------------------------------------


def publish(
    previous: Record | None,
    draft: Record,
    *,
    author: str,
    name: str,
    comment: str,
    now_ms: int,
    release_key: str,
) -> Record:
    """A NORMAL release of the draft's items; an open gray branch is rebased onto it."""
    validate_content(draft["format"], draft["configurations"])
    configurations = dict(draft["configurations"])
    gray = None
    if previous is not None and previous["gray"] is not None:
        gray = _rebased_gray(previous["gray"], previous["configurations"], configurations)
    return _record(
        app_id=draft["app_id"],
        cluster=draft["cluster"],
        namespace=draft["namespace"],
        fmt=draft["format"],
        kind="NORMAL",
        release_id=next_release_id(previous, now_ms),
        release_key=release_key,
        author=author,
        now_ms=now_ms,
        configurations=configurations,
        name=name,
        comment=comment,
        is_public=draft["is_public"],
        gray=gray,
    )


def _rebased_gray(
    gray: Mapping[str, Any], old_main: Mapping[str, str], new_main: Mapping[str, str]
) -> Record:
    """The branch's own changes (overrides and deletions) applied to the new main items."""
    overrides = {k: v for k, v in gray["configurations"].items() if old_main.get(k) != v}
    removed = set(old_main) - set(gray["configurations"])
    configurations = {k: v for k, v in new_main.items() if k not in removed} | overrides
    return {**gray, "configurations": configurations}


def check_rules(rules: Any) -> list[Record]:
    """Gray rules from the admin API (`clientAppId`, `clientIpList`, `clientLabelList`)."""
    if not isinstance(rules, list) or not rules:
        raise ConfigError("rules", "must be a non-empty list of rule items")
    checked = []
    for index, rule in enumerate(rules):
        where = f"rules[{index}]"
        if not isinstance(rule, dict):
            raise ConfigError(where, "must be an object")
        app_id = rule.get("clientAppId")
        if not isinstance(app_id, str) or not app_id.strip():
            raise ConfigError(f"{where}.clientAppId", "must be a non-empty string")
        lists = {}
        for name in ("clientIpList", "clientLabelList"):
            value = rule.get(name, [])
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f"{where}.{name}", "must be a list of non-empty strings")
            lists[name] = value
        if not lists["clientIpList"] and not lists["clientLabelList"]:
            raise ConfigError(where, "needs clientIpList or clientLabelList")
        checked.append(
            {
                "client_app_id": app_id,
                "client_ip_list": lists["clientIpList"],
                "client_label_list": lists["clientLabelList"],
            }
        )
    return checked


def gray_publish(
    previous: Record | None,
    *,
    branch_name: str,
    items: Mapping[str, str],
    deleted_keys: Iterable[str],
    rules: list[Record] | None,
    author: str,
    comment: str,
    now_ms: int,
    release_key: str,
) -> Record:
    """A GRAY release: the main items with the branch's changes, served to matching clients."""
    if previous is None:
        raise Conflict("namespace", "publish a main release before a gray release")
    current = previous["gray"]
    if current is not None and current["branch_name"] != branch_name:
        raise Conflict(
            "branchName", f"branch {current['branch_name']!r} is open; merge or abandon it first"
        )
    if rules is None:
        if current is None:
            raise ConfigError("rules", "a new gray branch needs rules")
        rules = list(current["rules"])
    base = dict(current["configurations"]) if current else dict(previous["configurations"])
    for key in deleted_keys:
        base.pop(key, None)
    base.update(items)
    validate_content(previous["format"], base)
    gray = {
        "branch_name": branch_name,
        "release_key": release_key,
        "configurations": base,
        "rules": rules,
    }
    return _derived(
        previous,
        kind="GRAY",
        release_id=next_release_id(previous, now_ms),
        author=author,
        comment=comment,
        released_at_ms=now_ms,
        gray=gray,
    )


def gray_update_rules(
    previous: Record | None, rules: list[Record], *, author: str, now_ms: int
) -> Record:
    """A GRAY record with new rules for the open branch; its items stay."""
    previous, gray = _open_gray(previous)
    return _derived(
        previous,
        kind="GRAY",
        release_id=next_release_id(previous, now_ms),
        author=author,
        comment="gray rules changed",
        released_at_ms=now_ms,
        gray={**gray, "rules": rules},
    )


def gray_merge(
    previous: Record | None, *, author: str, comment: str, now_ms: int, release_key: str
) -> Record:
    """GRAY_MERGE: the branch's items become the main release; the branch closes."""
    previous, gray = _open_gray(previous)
    return _derived(
        previous,
        kind="GRAY_MERGE",
        release_id=next_release_id(previous, now_ms),
        release_key=release_key,
        configurations=dict(gray["configurations"]),
        author=author,
        comment=comment,
        name=f"merge of gray branch {gray['branch_name']}",
        released_at_ms=now_ms,
        gray=None,
        closed_branch_name=gray["branch_name"],
    )


def gray_abandon(previous: Record | None, *, author: str, now_ms: int) -> Record:
    """GRAY_ABANDON: the branch closes; every client is served the main release again."""
    previous, gray = _open_gray(previous)
    return _derived(
        previous,
        kind="GRAY_ABANDON",
        release_id=next_release_id(previous, now_ms),
        author=author,
        comment=f"gray branch {gray['branch_name']} abandoned",
        released_at_ms=now_ms,
        gray=None,
        closed_branch_name=gray["branch_name"],
    )


def _open_gray(previous: Record | None) -> tuple[Record, Record]:
    if previous is None or previous["gray"] is None:
        raise NotFound("branchName", "this namespace has no open gray branch")
    return previous, previous["gray"]


def abandoned_release_ids(history: Sequence[Mapping[str, Any]]) -> set[int]:
    """Content releases that a rollback took back: ids in (rolled_back_to, rolled_back_from]."""
    content_ids = [r["release_id"] for r in history if r["kind"] in CONTENT_KINDS]
    abandoned: set[int] = set()
    for record in history:
        if record["kind"] == "ROLLBACK":
            low, high = record["rolled_back_to"], record["rolled_back_from"]
            abandoned.update(i for i in content_ids if low < i <= high)
    return abandoned


def rollback(
    previous: Record | None,
    history: Sequence[Mapping[str, Any]],
    *,
    author: str,
    comment: str,
    now_ms: int,
    to_release_id: int | None = None,
) -> Record:
    """ROLLBACK: serve an earlier content release again (the one before the live one by default).

    As in Apollo the live release is marked abandoned and the target's release key is served
    again; a later rollback goes further back.
    """
    if previous is None:
        raise NotFound("namespace", "nothing has been released in this namespace")
    abandoned = abandoned_release_ids(history)
    alive = [r for r in history if r["kind"] in CONTENT_KINDS and r["release_id"] not in abandoned]
    alive.sort(key=lambda r: r["release_id"])
    if not alive:
        raise Conflict("namespace", "no release in the history to roll back from")
    live = alive[-1]
    earlier = alive[:-1]
    if to_release_id is None:
        if not earlier:
            raise Conflict(
                "namespace", "the live release is the first one; nothing to roll back to"
            )
        target = earlier[-1]
    else:
        matches = [r for r in earlier if r["release_id"] == to_release_id]
        if not matches:
            raise ConfigError(
                "toReleaseId",
                f"{to_release_id} is not an earlier, not abandoned release of this namespace",
            )
        target = matches[0]
    gray = previous["gray"]
    if gray is not None:
        gray = _rebased_gray(gray, previous["configurations"], target["configurations"])
    return _derived(
        previous,
        kind="ROLLBACK",
        release_id=next_release_id(previous, now_ms),
        release_key=target["release_key"],
        configurations=dict(target["configurations"]),
        name=target["name"],
        comment=comment,
        author=author,
        released_at_ms=now_ms,
        gray=gray,
        is_rollback=True,
        rolled_back_from=live["release_id"],
        rolled_back_to=target["release_id"],
    )


def diff(old: Mapping[str, str], new: Mapping[str, str]) -> dict[str, Any]:
    """What changed between two sets of items: added, modified (old/new) and deleted keys."""
    return {
        "added": {k: v for k, v in sorted(new.items()) if k not in old},
        "modified": {
            k: {"old": old[k], "new": v} for k, v in sorted(new.items()) if k in old and old[k] != v
        },
        "deleted": {k: v for k, v in sorted(old.items()) if k not in new},
    }


# --- what a client is served ---------------------------------------------------------------------


def parse_labels(label: str | None) -> frozenset[str]:
    return frozenset(part.strip() for part in (label or "").split(",") if part.strip())


def rule_matches(
    rule: Mapping[str, Any], client_app_id: str, ip: str | None, labels: frozenset[str]
) -> bool:
    """Apollo's gray rule: same app id (any case), and ip or a label listed (`*`: any)."""
    if rule["client_app_id"].lower() != client_app_id.lower():
        return False
    ips = rule["client_ip_list"]
    if ANY in ips or (ip and ip in ips):
        return True
    rule_labels = rule["client_label_list"]
    return ANY in rule_labels or bool(labels & set(rule_labels))


@dataclass(frozen=True)
class Served:
    """The items and release key one client gets from one release record."""

    record: Record
    configurations: dict[str, str]
    release_key: str
    gray: bool


def served(
    record: Record, client_app_id: str, ip: str | None, labels: frozenset[str] = frozenset()
) -> Served:
    gray = record["gray"]
    if gray is not None and any(
        rule_matches(rule, client_app_id, ip, labels) for rule in gray["rules"]
    ):
        return Served(record, dict(gray["configurations"]), gray["release_key"], True)
    return Served(record, dict(record["configurations"]), record["release_key"], False)


def candidate_clusters(cluster: str, data_center: str | None) -> list[str]:
    """Apollo's fallback order: the requested cluster, the data-center cluster, `default`."""
    order = [cluster or DEFAULT_CLUSTER]
    if data_center and data_center not in order:
        order.append(data_center)
    if DEFAULT_CLUSTER not in order:
        order.append(DEFAULT_CLUSTER)
    return order


def resolve_release(
    releases: Mapping[str, Record],
    app_id: str,
    cluster: str,
    namespace: str,
    data_center: str | None = None,
) -> Record | None:
    """The release a client of this cluster is served, after cluster fallback."""
    for candidate in candidate_clusters(cluster, data_center):
        record = releases.get(namespace_key(app_id, candidate, namespace))
        if record is not None:
            return record
    return None


def watched_keys(app_id: str, cluster: str, namespace: str, data_center: str | None) -> list[str]:
    return [namespace_key(app_id, c, namespace) for c in candidate_clusters(cluster, data_center)]


def parse_notifications(text: str | None) -> list[tuple[str, int]]:
    """`[{"namespaceName": "application", "notificationId": -1}, ...]`, named by the field."""
    if not text:
        raise ConfigError("notifications", "missing query parameter")
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError("notifications", f"not JSON: {error.msg}") from None
    if not isinstance(entries, list) or not entries:
        raise ConfigError("notifications", "must be a non-empty JSON array")
    parsed: dict[str, tuple[str, int]] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("namespaceName"), str):
            raise ConfigError(f"notifications[{index}].namespaceName", "must be a string")
        notification_id = entry.get("notificationId", -1)
        if isinstance(notification_id, bool) or not isinstance(notification_id, int):
            raise ConfigError(f"notifications[{index}].notificationId", "must be an integer")
        name = split_namespace(entry["namespaceName"])[0]
        parsed.setdefault(name.lower(), (entry["namespaceName"], notification_id))
    return list(parsed.values())


def notification_updates(
    releases: Mapping[str, Record],
    app_id: str,
    cluster: str,
    data_center: str | None,
    watched: Sequence[tuple[str, int]],
) -> list[dict[str, Any]]:
    """The `/notifications/v2` entries for namespaces whose newest id beats the client's."""
    updates = []
    for namespace, client_id in watched:
        details = {
            key: releases[key]["release_id"]
            for key in watched_keys(app_id, cluster, namespace, data_center)
            if key in releases
        }
        if details and max(details.values()) > client_id:
            updates.append(
                {
                    "namespaceName": namespace,
                    "notificationId": max(details.values()),
                    "messages": {"details": details},
                }
            )
    return updates


def properties_text(configurations: Mapping[str, str]) -> str:
    """A Java-properties rendering of items, escaped so `java.util.Properties` reads it back."""
    lines = [f"{_escape(k, key=True)}={_escape(v, key=False)}" for k, v in configurations.items()]
    return "\n".join(lines) + ("\n" if lines else "")


def _escape(text: str, *, key: bool) -> str:
    out = []
    for index, char in enumerate(text):
        if char == "\\":
            out.append("\\\\")
        elif char == "\n":
            out.append("\\n")
        elif char == "\r":
            out.append("\\r")
        elif char == "\t":
            out.append("\\t")
        elif char in "=:#!" or (char == " " and (key or index == 0)):
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


def apollo_release_json(record: Mapping[str, Any]) -> dict[str, Any]:
    """A release as the admin API shows it (Apollo open-platform field names)."""
    return {
        "appId": record["app_id"],
        "clusterName": record["cluster"],
        "namespaceName": record["namespace"],
        "format": record["format"],
        "kind": record["kind"],
        "releaseId": record["release_id"],
        "releaseKey": record["release_key"],
        "name": record["name"],
        "comment": record["comment"],
        "releasedBy": record["author"],
        "releasedAt": record["released_at_ms"],
        "configurations": record["configurations"],
        "isRollback": record["is_rollback"],
        "rolledBackFrom": record["rolled_back_from"],
        "rolledBackTo": record["rolled_back_to"],
        "closedBranchName": record["closed_branch_name"],
        "gray": None
        if record["gray"] is None
        else {
            "branchName": record["gray"]["branch_name"],
            "releaseKey": record["gray"]["release_key"],
            "configurations": record["gray"]["configurations"],
            "rules": [
                {
                    "clientAppId": r["client_app_id"],
                    "clientIpList": r["client_ip_list"],
                    "clientLabelList": r["client_label_list"],
                }
                for r in record["gray"]["rules"]
            ],
        },
    }


# --- audit ---------------------------------------------------------------------------------------


def audit_event(
    action: str,
    actor: str,
    app_id: str,
    *,
    now_ms: int,
    cluster: str = "",
    namespace: str = "",
    details: Mapping[str, Any] | None = None,
    source_ip: str | None = None,
    success: bool = True,
    request_id: str | None = None,
) -> Record:
    return {
        "action": action,
        "actor": actor,
        "app_id": app_id,
        "cluster": cluster,
        "namespace": namespace,
        "at_ms": now_ms,
        "details": {k: "" if v is None else str(v) for k, v in (details or {}).items()},
        "source_ip": source_ip,
        "success": success,
        "request_id": request_id,
    }


def audit_document(event: Mapping[str, Any]) -> dict[str, Any]:
    """The Elasticsearch document of an audit event."""
    return {
        "@timestamp": event["at_ms"],
        "action": event["action"],
        "actor": event["actor"],
        "app_id": event["app_id"],
        "cluster": event["cluster"],
        "namespace": event["namespace"],
        "details": dict(event["details"]),
        "source_ip": event["source_ip"],
        "success": event["success"],
        "request_id": event["request_id"],
    }


def audit_document_id_parts(event: Mapping[str, Any]) -> tuple[str, ...]:
    return (
        event["request_id"] or "",
        event["action"],
        event["app_id"],
        event["cluster"],
        event["namespace"],
        str(event["at_ms"]),
    )


AUDIT_MAPPINGS: dict[str, Any] = {
    "properties": {
        "@timestamp": {"type": "date", "format": "epoch_millis"},
        "action": KEYWORD,
        "actor": KEYWORD,
        "app_id": KEYWORD,
        "cluster": KEYWORD,
        "namespace": KEYWORD,
        "details": {"type": "object", "dynamic": True},
        "source_ip": KEYWORD,
        "success": {"type": "boolean"},
        "request_id": KEYWORD,
    }
}


# --- the state every worker serves from -------------------------------------------------


@dataclass
class ConfigIndex:
    """Live releases, recent history and drafts per namespace key, as the topics say."""

    releases: dict[str, Record] = field(default_factory=dict)
    history: dict[str, list[Record]] = field(default_factory=dict)
    drafts: dict[str, Record] = field(default_factory=dict)

    def apply_release(self, key: str, record: Record | None) -> None:
        """Last record on the compacted topic wins, as compaction would keep it."""
        if record is None:
            self.releases.pop(key, None)
        else:
            self.releases[key] = record

    def apply_history(self, key: str, record: Record) -> None:
        entries = self.history.setdefault(key, [])
        if any(e["release_id"] == record["release_id"] for e in entries[-HISTORY_LIMIT:]):
            return
        entries.append(record)
        if len(entries) > HISTORY_LIMIT:
            del entries[: len(entries) - HISTORY_LIMIT]

    def apply_draft(self, key: str, record: Record | None) -> None:
        if record is None:
            self.drafts.pop(key, None)
        else:
            self.drafts[key] = record

    def apps(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """app id → cluster → namespaces (name, format, public), from drafts and releases."""
        apps: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
        for record in [*self.drafts.values(), *self.releases.values()]:
            clusters = apps.setdefault(record["app_id"], {})
            namespaces = clusters.setdefault(record["cluster"], {})
            namespaces.setdefault(
                record["namespace"].lower(),
                {
                    "name": record["namespace"],
                    "format": record["format"],
                    "isPublic": record["is_public"],
                },
            )
        return {
            app: {c: sorted(ns.values(), key=lambda n: n["name"]) for c, ns in sorted(cl.items())}
            for app, cl in sorted(apps.items())
        }

    def namespaces_of(self, app_id: str, cluster: str) -> list[Record]:
        prefix = f"{app_id}+{cluster}+"
        return [d for k, d in sorted(self.drafts.items()) if k.startswith(prefix)]


def served_variant(
    record: Record, client_app_id: str, ip: str | None, labels: frozenset[str] = frozenset()
) -> tuple[str, bool]:
    """The release key a client is served and whether it is the gray branch, without copying
    the items (what a cache lookup needs)."""
    gray = record["gray"]
    if gray is not None and any(
        rule_matches(rule, client_app_id, ip, labels) for rule in gray["rules"]
    ):
        return gray["release_key"], True
    return record["release_key"], False


def configs_body(app_id: str, namespace: str, served_release: Served) -> bytes:
    """Apollo's `/configs` answer, encoded once per served release."""
    return json.dumps(
        {
            "appId": app_id,
            "cluster": served_release.record["cluster"],
            "namespaceName": namespace,
            "configurations": served_release.configurations,
            "releaseKey": served_release.release_key,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()


class RenderedConfigs:
    """Encoded `/configs` bodies per (app, record cluster, namespace, release key, gray): a fetch
    after a release is a dict lookup instead of a copy and a JSON encoding per client. A release
    key names one content for good, so an entry is never stale; the oldest are dropped past
    `limit` to bound memory."""

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._bodies: dict[tuple[str, str, str, str, bool], bytes] = {}

    def body(
        self,
        record: Record,
        app_id: str,
        namespace: str,
        ip: str | None,
        labels: frozenset[str],
    ) -> tuple[str, bytes]:
        """The release key this client is served and its encoded answer."""
        release_key, gray = served_variant(record, app_id, ip, labels)
        cache_key = (app_id, record["cluster"], namespace, release_key, gray)
        body = self._bodies.get(cache_key)
        if body is None:
            body = configs_body(app_id, namespace, served(record, app_id, ip, labels))
            if len(self._bodies) >= self.limit:
                del self._bodies[next(iter(self._bodies))]
            self._bodies[cache_key] = body
        return release_key, body

    def __len__(self) -> int:
        return len(self._bodies)


@dataclass(frozen=True)
class PollAnswer:
    """What `/notifications/v2` answers one query now: a 200 body, or the keys to wait on."""

    body: bytes | None
    keys: tuple[str, ...]


class NotificationAnswers:
    """`/notifications/v2` answers per (app, cluster, data center, notifications text), computed
    once for every client that sends the same query (after a release, all of a namespace's
    clients hold the same id). `clear()` on every applied release keeps them current."""

    def __init__(self, releases: Mapping[str, Record], limit: int = 4096) -> None:
        self.releases = releases
        self.limit = limit
        self._answers: dict[tuple[str, str, str | None, str | None], PollAnswer] = {}

    def answer(
        self, app_id: str, cluster: str, data_center: str | None, notifications: str | None
    ) -> PollAnswer:
        """Raises ConfigError (naming the field) for a malformed `notifications`."""
        cache_key = (app_id, cluster, data_center, notifications)
        found = self._answers.get(cache_key)
        if found is not None:
            return found
        watched = parse_notifications(notifications)
        updates = notification_updates(self.releases, app_id, cluster, data_center, watched)
        keys = tuple(
            dict.fromkeys(
                key
                for name, _ in watched
                for key in watched_keys(app_id, cluster, name, data_center)
            )
        )
        found = PollAnswer(
            json.dumps(updates, ensure_ascii=False).encode() if updates else None, keys
        )
        if len(self._answers) >= self.limit:
            self._answers.clear()
        self._answers[cache_key] = found
        return found

    def clear(self) -> None:
        self._answers.clear()

    def __len__(self) -> int:
        return len(self._answers)


def namespace_text(format_name: str, configurations: Mapping[str, str]) -> str:
    """What /configfiles serves: properties text, or a file namespace's content as written."""
    if format_name == PROPERTIES:
        return properties_text(configurations)
    return configurations.get(CONTENT_KEY, "")
