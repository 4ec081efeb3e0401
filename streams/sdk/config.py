"""Config for applications from the config centre, Apollo's client protocol over HTTP.

`ConfigClient` loads each namespace with `GET /configs/...`, keeps it in memory, and keeps it
current with the `/notifications/v2` long poll (Apollo's notificationId semantics: the server
answers at once when a namespace's id beats the one the client holds, else holds the request).
Listeners receive every changed key with its old and new value. Each namespace is also written
to a local file, so an application still starts with its last known config while the config
centre is down. Depends on httpx and the standard library only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from streams.errors import StackstreamError

log = logging.getLogger(__name__)

DEFAULT_CLUSTER = "default"
DEFAULT_NAMESPACE = "application"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "stackstream" / "config"
NO_RELEASE_KEY = "-1"
NO_NOTIFICATION = -1


class ConfigUnavailable(StackstreamError):
    """A namespace could be loaded neither from the config centre nor from the file cache."""


class ChangeType(StrEnum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


@dataclass(frozen=True)
class ConfigChange:
    """One key that changed in a namespace: its value before and after."""

    key: str
    old_value: str | None
    new_value: str | None
    change_type: ChangeType


@dataclass(frozen=True)
class ConfigChangeEvent:
    """The keys of one namespace that changed with one release the client received."""

    namespace: str
    changes: Mapping[str, ConfigChange]
    release_key: str

    def changed_keys(self) -> list[str]:
        return sorted(self.changes)


ChangeListener = Callable[[ConfigChangeEvent], None]


@dataclass
class NamespaceConfig:
    """What the client holds for one namespace and where it came from (`server` or `file`)."""

    configurations: dict[str, str] = field(default_factory=dict)
    release_key: str = NO_RELEASE_KEY
    source: str = "none"


def changes_between(old: Mapping[str, str], new: Mapping[str, str]) -> dict[str, ConfigChange]:
    """Every key added, modified or deleted from `old` to `new`."""
    changes: dict[str, ConfigChange] = {}
    for key in old.keys() | new.keys():
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        if before is None:
            kind = ChangeType.ADDED
        elif after is None:
            kind = ChangeType.DELETED
        else:
            kind = ChangeType.MODIFIED
        changes[key] = ConfigChange(key, before, after, kind)
    return changes


def _canonical(namespace: str) -> str:
    """Apollo looks namespaces up case-insensitively, with a `.properties` suffix stripped."""
    lowered = namespace.lower()
    return lowered[: -len(".properties")] if lowered.endswith(".properties") else lowered


class ConfigClient:
    """An application's live copy of its namespaces, pushed by the config centre's long poll."""

    def __init__(
        self,
        config_url: str,
        app_id: str,
        *,
        cluster: str = DEFAULT_CLUSTER,
        namespaces: Iterable[str] = (DEFAULT_NAMESPACE,),
        ip: str | None = None,
        label: str | None = None,
        data_center: str | None = None,
        cache_dir: Path | str | None = DEFAULT_CACHE_DIR,
        request_timeout_s: float = 5.0,
        long_poll_timeout_s: float = 95.0,
        max_backoff_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.config_url = config_url.rstrip("/")
        self.app_id = app_id
        self.cluster = cluster
        self.namespaces = list(dict.fromkeys(namespaces))
        if not self.namespaces:
            raise ValueError("namespaces: name at least one namespace")
        self.ip = ip
        self.label = label
        self.data_center = data_center
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.request_timeout_s = request_timeout_s
        self.long_poll_timeout_s = long_poll_timeout_s
        self.max_backoff_s = max_backoff_s
        self._http = httpx.Client(base_url=self.config_url, transport=transport)
        self._poll_http = httpx.Client(base_url=self.config_url, transport=transport)
        self._held: dict[str, NamespaceConfig] = {ns: NamespaceConfig() for ns in self.namespaces}
        self._notification_ids: dict[str, int] = {ns: NO_NOTIFICATION for ns in self.namespaces}
        self._listeners: list[tuple[ChangeListener, frozenset[str] | None]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._loaded = False
        self.long_polls = 0

    # --- lifecycle -------------------------------------------------------------------------

    def start(self, *, watch: bool = True, require: bool = False) -> ConfigClient:
        """Load every namespace (server, else file cache), then follow changes in the background.

        With `require=True` a namespace found neither on the server nor in the file cache raises
        `ConfigUnavailable`; otherwise it starts empty and fills in once the server answers.
        """
        for namespace in self.namespaces if not self._loaded else ():
            if not self.refresh(namespace) and not self._load_file(namespace) and require:
                raise ConfigUnavailable(
                    f"namespace {namespace!r} of {self.app_id}: the config centre at "
                    f"{self.config_url} did not answer and no file cache is in {self.cache_dir}"
                )
        self._loaded = True
        if watch and self._thread is None:
            self._thread = threading.Thread(
                target=self._follow, name=f"config-long-poll-{self.app_id}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop following changes; an in-flight long poll is cut by closing its connection."""
        self._stopping.set()
        self._poll_http.close()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._http.close()

    def __enter__(self) -> ConfigClient:
        """Start (load and watch) unless `start()` was called already."""
        return self if self._loaded else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- reading ---------------------------------------------------------------------------

    def get(self, key: str, default: str | None = None, namespace: str = DEFAULT_NAMESPACE) -> Any:
        """The value of `key` in `namespace`, or `default`."""
        return self._namespace(namespace).configurations.get(key, default)

    def config(self, namespace: str = DEFAULT_NAMESPACE) -> dict[str, str]:
        """A copy of every item of `namespace` (file namespaces hold one key, `content`)."""
        return dict(self._namespace(namespace).configurations)

    def release_key(self, namespace: str = DEFAULT_NAMESPACE) -> str:
        return self._namespace(namespace).release_key

    def source(self, namespace: str = DEFAULT_NAMESPACE) -> str:
        """Where the held config came from: `server`, `file` (cache) or `none`."""
        return self._namespace(namespace).source

    def add_change_listener(
        self, listener: ChangeListener, namespaces: Iterable[str] | None = None
    ) -> None:
        """Call `listener` with a `ConfigChangeEvent` whenever keys of these namespaces change."""
        watched = frozenset(_canonical(n) for n in namespaces) if namespaces is not None else None
        with self._lock:
            self._listeners.append((listener, watched))

    def _namespace(self, namespace: str) -> NamespaceConfig:
        held = self._held.get(namespace)
        if held is None:
            wanted = _canonical(namespace)
            held = next((v for k, v in self._held.items() if _canonical(k) == wanted), None)
        if held is None:
            raise KeyError(f"namespace {namespace!r} is not one this client loads")
        return held

    # --- fetching --------------------------------------------------------------------------

    def refresh(self, namespace: str) -> bool:
        """Fetch `namespace` from the config centre; True if the server answered (200/304/404)."""
        held = self._held[namespace]
        params = {"releaseKey": held.release_key}
        for name, value in (
            ("ip", self.ip),
            ("label", self.label),
            ("dataCenter", self.data_center),
        ):
            if value:
                params[name] = value
        path = f"/configs/{quote(self.app_id, safe='')}/{quote(self.cluster, safe='')}/" + quote(
            namespace, safe=""
        )
        try:
            response = self._http.get(path, params=params, timeout=self.request_timeout_s)
        except httpx.HTTPError as error:
            log.warning(
                "config %s/%s: config centre unreachable: %s", self.app_id, namespace, error
            )
            return False
        if response.status_code == 304:
            if held.source == "file":
                held.source = "server"
            return True
        if response.status_code == 404:
            log.warning("config %s/%s: nothing released yet", self.app_id, namespace)
            return True
        if response.status_code != 200:
            log.warning(
                "config %s/%s: config centre answered %d: %s",
                self.app_id,
                namespace,
                response.status_code,
                response.text[:200],
            )
            return False
        body = response.json()
        configurations = {str(k): str(v) for k, v in (body.get("configurations") or {}).items()}
        self._update(namespace, configurations, str(body.get("releaseKey", "")), "server")
        self._write_file(namespace, body)
        return True

    def _update(
        self, namespace: str, configurations: dict[str, str], release_key: str, source: str
    ) -> None:
        with self._lock:
            held = self._held[namespace]
            changes = changes_between(held.configurations, configurations)
            self._held[namespace] = NamespaceConfig(configurations, release_key, source)
            listeners = [
                listener
                for listener, watched in self._listeners
                if watched is None or _canonical(namespace) in watched
            ]
        if not changes or held.source == "none":
            return
        event = ConfigChangeEvent(namespace, changes, release_key)
        for listener in listeners:
            try:
                listener(event)
            except Exception:
                log.exception("config change listener %r failed", listener)

    # --- the long poll ---------------------------------------------------------------------

    def _follow(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                changed = self._long_poll()
            except (httpx.HTTPError, ValueError, RuntimeError) as error:
                if self._stopping.is_set():
                    return
                attempt += 1
                delay = min(self.max_backoff_s, 2 ** min(attempt - 1, 10))
                log.warning("config long poll failed (%s); retry in %.0f s", error, delay)
                self._stopping.wait(delay)
                continue
            attempt = 0
            for namespace in changed:
                if not self.refresh(namespace):
                    self._notification_ids[namespace] = NO_NOTIFICATION

    def _long_poll(self) -> list[str]:
        """One `/notifications/v2` request; the namespaces whose notificationId moved."""
        notifications = [
            {"namespaceName": ns, "notificationId": self._notification_ids[ns]}
            for ns in self.namespaces
        ]
        params = {
            "appId": self.app_id,
            "cluster": self.cluster,
            "notifications": json.dumps(notifications, separators=(",", ":")),
        }
        if self.data_center:
            params["dataCenter"] = self.data_center
        if self.ip:
            params["ip"] = self.ip
        self.long_polls += 1
        response = self._poll_http.get(
            "/notifications/v2", params=params, timeout=self.long_poll_timeout_s
        )
        if response.status_code == 304:
            return []
        if response.status_code != 200:
            raise RuntimeError(f"/notifications/v2 answered {response.status_code}")
        by_canonical = {_canonical(ns): ns for ns in self.namespaces}
        changed = []
        for entry in response.json():
            namespace = by_canonical.get(_canonical(str(entry.get("namespaceName", ""))))
            notification_id = entry.get("notificationId")
            if namespace is None or not isinstance(notification_id, int):
                continue
            self._notification_ids[namespace] = notification_id
            changed.append(namespace)
        return changed

    # --- the local file cache --------------------------------------------------------------

    def cache_file(self, namespace: str) -> Path | None:
        if self.cache_dir is None:
            return None
        name = "+".join((self.app_id, self.cluster, _canonical(namespace)))
        return self.cache_dir / f"{quote(name, safe='+.-_')}.json"

    def _write_file(self, namespace: str, body: Mapping[str, Any]) -> None:
        path = self.cache_file(namespace)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(
                "w", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False
            ) as out:
                json.dump(body, out, ensure_ascii=False)
            os.replace(out.name, path)
        except OSError as error:
            log.warning("config %s: cannot write file cache %s: %s", namespace, path, error)
            with contextlib.suppress(OSError, UnboundLocalError):
                os.unlink(out.name)

    def _load_file(self, namespace: str) -> bool:
        path = self.cache_file(namespace)
        if path is None or not path.is_file():
            return False
        try:
            body = json.loads(path.read_text())
            configurations = {str(k): str(v) for k, v in body["configurations"].items()}
            release_key = str(body.get("releaseKey", NO_RELEASE_KEY))
        except (OSError, ValueError, KeyError, AttributeError) as error:
            log.warning("config %s: unreadable file cache %s: %s", namespace, path, error)
            return False
        self._update(namespace, configurations, release_key, "file")
        log.warning("config %s/%s: serving the file cache %s", self.app_id, namespace, path)
        return True
