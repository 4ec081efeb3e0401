"""Service discovery for applications: a live local copy of the registry and Ribbon-style rules.

`DiscoveryClient` fetches `GET /eureka/apps` once, then keeps its copy current from
`/eureka/apps/delta` (merged, verified with `apps__hashcode`, full fetch on mismatch). With
`kafka=` it also subscribes to `registry.events`: a register or cancel is applied to the copy as
soon as it is pushed, and the delta is fetched to reconcile; the delta poll stays as the
fallback.
`LoadBalancer` picks servers with Ribbon's rules and retries the next server on connection
errors. Depends on httpx, confluent-kafka, the codec and the standard library only.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import httpx

from streams.bus.codec import AvroCodec, CodecError, SchemaRegistry
from streams.errors import StackstreamError
from streams.sdk.eureka import applications_from_json
from streams.sdk.producer import DEFAULT_SCHEMAS_DIR

log = logging.getLogger(__name__)
T = TypeVar("T")
EVENTS_TOPIC = "registry.events"
EVENT_SCHEMA = "stackstream.registry.RegistryEvent"
UNSEEN_ACTIONS = frozenset({"RENEW"})
REMOVING_ACTIONS = frozenset({"CANCEL", "EXPIRE"})
PUSH_GRACE_S = 3.0
"""After a pushed change, a delta whose hashcode disagrees is kept this long before a full fetch."""


def changes_registry(
    key: bytes | None, value: bytes | None, decode: Callable[[bytes], dict[str, Any]]
) -> bool:
    """Whether a registry event can change what a full fetch or the delta shows.

    Registry-wide decisions and plain renewals cannot (a renewal only moves the lease time,
    which the delta does not report), so they do not trigger a fetch; at thousands of
    instances renewals are hundreds a second. An event we cannot decode counts as a change.
    """
    if key is not None and key.startswith(b"_registry"):
        return False
    if value is None:
        return True
    try:
        return decode(value)["action"] not in UNSEEN_ACTIONS
    except (CodecError, KeyError):
        return True


class NoServerAvailable(StackstreamError):
    """No instance of the service could be chosen (none UP, or all tripped/overloaded)."""


class RetriesExhausted(StackstreamError):
    """Every attempt the retry policy allowed failed; `__cause__` is the last error."""


# --- the local copy --------------------------------------------------------------------------


def _hashcode(instances: Mapping[str, Mapping[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for instance in instances.values():
        counts[instance["status"]] = counts.get(instance["status"], 0) + 1
    return "".join(f"{status}_{counts[status]}_" for status in sorted(counts))


class DiscoveryClient:
    """A registry client that keeps every instance document of the registry in memory."""

    def __init__(
        self,
        eureka_url: str,
        *,
        poll_interval_s: float = 1.0,
        kafka: str | None = None,
        topic_prefix: str = "",
        timeout_s: float = 5.0,
    ) -> None:
        self.base = eureka_url.rstrip("/") + "/"
        self.poll_interval_s = poll_interval_s
        self.kafka = kafka
        self.topic_prefix = topic_prefix
        self._http = httpx.Client(timeout=timeout_s, headers={"Accept": "application/json"})
        self._instances: dict[str, dict[str, Any]] = {}
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_delta: tuple[str, str] | None = None
        self._pushed_at = float("-inf")
        self.full_fetches = 0
        self.delta_fetches = 0
        self.pushed_changes = 0
        self.listeners: list[Callable[[], None]] = []

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> DiscoveryClient:
        """Fetch everything now, then keep the copy current in the background."""
        self.refresh(full=True)
        self._spawn(self._poll_loop, "stackstream-discovery-poll")
        if self.kafka:
            self._spawn(self._push_loop, "stackstream-discovery-push")
        return self

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._http.close()

    def __enter__(self) -> DiscoveryClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading the copy --------------------------------------------------------------------

    def instances(self, service: str, *, only_up: bool = True) -> list[dict[str, Any]]:
        """Instances of an app (by name) or VIP, UP ones only unless asked otherwise."""
        wanted = service.upper()
        with self._lock:
            chosen = [
                dict(i)
                for i in self._instances.values()
                if i["app"] == wanted or service in (i.get("vip_address") or "").split(",")
            ]
        if only_up:
            chosen = [i for i in chosen if i["status"] == "UP"]
        return sorted(chosen, key=lambda i: i["instance_id"])

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self._instances)

    # --- keeping it current ------------------------------------------------------------------

    def apply_pushed(self, event: Mapping[str, Any]) -> bool:
        """Apply a pushed registry event to the copy at once; True when the copy changed.

        A register adds its instance document as sent and a cancel or expiry removes the
        instance, before the server has applied them; the delta fetch the push also triggers
        then reconciles (server-side rules such as status overrides, lease times). An instance
        with a status override is left to that fetch, so no overridden instance turns UP here.
        """
        action = event.get("action")
        key = f"{event.get('app', '')}/{event.get('instance_id', '')}"
        with self._lock:
            current = self._instances.get(key)
            if action in REMOVING_ACTIONS:
                changed = self._instances.pop(key, None) is not None
            elif action == "REGISTER" and event.get("instance"):
                if current is not None and current.get("overridden_status") not in (
                    None,
                    "UNKNOWN",
                ):
                    return False
                self._instances[key] = dict(event["instance"])
                changed = True
            else:
                return False
        if changed:
            self.pushed_changes += 1
            self._pushed_at = time.monotonic()
            self._notify()
        return changed

    def refresh(self, *, full: bool = False) -> bool:
        """Merge the delta (or fetch everything) and verify the result against apps__hashcode.

        Returns False when the delta was the one already merged (nothing new on the server).
        """
        if full or not self._instances:
            self._full_fetch()
            return True
        answer = self._get("apps/delta")
        self.delta_fetches += 1
        version = (answer["versions_delta"], answer["apps_hashcode"])
        if version == self._last_delta:
            return False
        self._last_delta = version
        with self._lock:
            for instance in answer["instances"]:
                key = f"{instance['app']}/{instance['instance_id']}"
                if instance.get("action_type") == "DELETED":
                    self._instances.pop(key, None)
                else:
                    self._instances[key] = instance
            matches = _hashcode(self._instances) == answer["apps_hashcode"]
        if matches or time.monotonic() - self._pushed_at < PUSH_GRACE_S:
            # Right after a push the server may not have applied it yet: a full fetch would
            # take the pushed change back out of the copy; a later fetch reconciles.
            self._notify()
        else:
            self._full_fetch()
        return True

    def _full_fetch(self) -> None:
        answer = self._get("apps/")
        self.full_fetches += 1
        with self._lock:
            self._instances = {f"{i['app']}/{i['instance_id']}": i for i in answer["instances"]}
        self._notify()

    def _notify(self) -> None:
        for listener in list(self.listeners):
            listener()

    def _get(self, path: str) -> dict[str, Any]:
        response = self._http.get(self.base + path)
        response.raise_for_status()
        return applications_from_json(response.json())

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_interval_s)
            if self._stop.is_set():
                return
            pushed = self._wake.is_set()
            self._wake.clear()
            # A pushed change may not be applied on the server yet: fetch again (briefly) until
            # the delta moves.
            for attempt in range(5 if pushed else 1):
                try:
                    if self.refresh() or not pushed:
                        break
                except (httpx.HTTPError, ValueError, KeyError) as error:
                    log.warning("stackstream discovery: refresh failed: %s", error)
                    break
                time.sleep(0.02 * (attempt + 1))

    def _push_loop(self) -> None:
        from confluent_kafka import Consumer, KafkaError

        consumer = Consumer(
            {
                "bootstrap.servers": self.kafka,
                "group.id": f"stackstream-discovery-{uuid.uuid4().hex}",
                "auto.offset.reset": "latest",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 50,
            }
        )
        consumer.subscribe([self.topic_prefix + EVENTS_TOPIC])
        decode = AvroCodec(SchemaRegistry.from_directory(DEFAULT_SCHEMAS_DIR)).decoder(EVENT_SCHEMA)
        try:
            while not self._stop.is_set():
                message = consumer.poll(0.2)
                if message is None:
                    continue
                error = message.error()
                if error is not None and error.code() != KafkaError._PARTITION_EOF:
                    log.warning("stackstream discovery: push stream: %s", error.str())
                    continue
                if error is None and changes_registry(message.key(), message.value(), decode):
                    with contextlib.suppress(CodecError, TypeError):
                        self.apply_pushed(decode(message.value()))
                    # The worker applies the event in parallel; give it a moment, then fetch.
                    time.sleep(0.03)
                    self._wake.set()
        finally:
            consumer.close()


# --- Ribbon-style load balancing ------------------------------------------------------------


@dataclass
class ServerStats:
    """What Ribbon's ServerStats tracks per server: load, failures and response times."""

    active_requests: int = 0
    last_active_at: float = 0.0
    consecutive_failures: int = 0
    blackout_until: float = 0.0
    requests: int = 0
    total_response_ms: float = 0.0
    failure_threshold: int = 3
    trip_factor_s: float = 10.0
    trip_max_s: float = 30.0

    def active(self, now: float) -> int:
        """Active requests; counts older than 600 s are discarded as Ribbon does."""
        return self.active_requests if now - self.last_active_at < 600 else 0

    def tripped(self, now: float) -> bool:
        return now < self.blackout_until

    @property
    def average_response_ms(self) -> float:
        return self.total_response_ms / self.requests if self.requests else 0.0

    def started(self, now: float) -> None:
        self.active_requests += 1
        self.last_active_at = now

    def finished(self, now: float, elapsed_ms: float, connection_failed: bool) -> None:
        self.active_requests = max(0, self.active_requests - 1)
        self.requests += 1
        self.total_response_ms += elapsed_ms
        if connection_failed:
            self.consecutive_failures += 1
            if self.consecutive_failures >= self.failure_threshold:
                excess = self.consecutive_failures - self.failure_threshold
                seconds = min(self.trip_factor_s * 2**excess, self.trip_max_s)
                self.blackout_until = now + seconds
        else:
            self.consecutive_failures = 0


@dataclass(frozen=True)
class Server:
    """One pickable instance: address, zone and the id it has in the registry."""

    instance_id: str
    host: str
    port: int
    zone: str = "default"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def from_instance(cls, instance: Mapping[str, Any]) -> Server:
        center = instance.get("data_center_info") or {}
        zone = (center.get("metadata") or {}).get("availability-zone") or instance["metadata"].get(
            "zone", "default"
        )
        return cls(instance["instance_id"], instance["ip_addr"], instance["port"], zone)


class Rule(Protocol):
    """A Ribbon rule: choose one of the servers given their stats, or None."""

    def choose(
        self, servers: list[Server], stats: Mapping[Server, ServerStats], now: float
    ) -> Server | None: ...


class RoundRobinRule:
    """An atomic counter modulo all servers; gives up after 10 tries (RoundRobinRule)."""

    def __init__(self) -> None:
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def next_index(self, size: int) -> int:
        with self._lock:
            return next(self._counter) % size

    def choose(
        self,
        servers: list[Server],
        stats: Mapping[Server, ServerStats],
        now: float,
        usable: Callable[[Server], bool] | None = None,
    ) -> Server | None:
        if not servers:
            return None
        for _ in range(10):
            server = servers[self.next_index(len(servers))]
            if usable is None or usable(server):
                return server
        return None


class RandomRule:
    """Uniformly random among the servers (RandomRule)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    def choose(
        self, servers: list[Server], stats: Mapping[Server, ServerStats], now: float
    ) -> Server | None:
        return self.rng.choice(servers) if servers else None


class WeightedResponseTimeRule:
    """Weight = total average response time - own average; recomputed every `interval_s`."""

    def __init__(self, interval_s: float = 30.0, rng: random.Random | None = None) -> None:
        self.interval_s = interval_s
        self.rng = rng or random.Random()
        self._round_robin = RoundRobinRule()
        self._weights: list[tuple[Server, float]] = []
        self._computed_at = float("-inf")

    def compute_weights(self, servers: list[Server], stats: Mapping[Server, ServerStats]) -> None:
        averages = [(s, stats[s].average_response_ms if s in stats else 0.0) for s in servers]
        total = sum(avg for _, avg in averages)
        cumulative, weights = 0.0, []
        for server, avg in averages:
            cumulative += total - avg
            weights.append((server, cumulative))
        self._weights = weights

    def choose(
        self, servers: list[Server], stats: Mapping[Server, ServerStats], now: float
    ) -> Server | None:
        if not servers:
            return None
        if now - self._computed_at >= self.interval_s or {s for s, _ in self._weights} != set(
            servers
        ):
            self.compute_weights(servers, stats)
            self._computed_at = now
        top = self._weights[-1][1] if self._weights else 0.0
        if top <= 0:
            return self._round_robin.choose(servers, stats, now)
        pick = self.rng.uniform(0, top)
        for server, bound in self._weights:
            if pick < bound:
                return server
        return self._weights[-1][0]


class BestAvailableRule:
    """The non-tripped server with the fewest active requests; round robin otherwise."""

    def __init__(self) -> None:
        self._round_robin = RoundRobinRule()

    def choose(
        self, servers: list[Server], stats: Mapping[Server, ServerStats], now: float
    ) -> Server | None:
        best, fewest = None, None
        for server in servers:
            server_stats = stats.get(server) or ServerStats()
            if server_stats.tripped(now):
                continue
            active = server_stats.active(now)
            if fewest is None or active < fewest:
                best, fewest = server, active
        return best if best is not None else self._round_robin.choose(servers, stats, now)


class AvailabilityFilteringRule:
    """Round robin skipping tripped or overloaded servers (activeRequests >= limit)."""

    def __init__(self, active_connections_limit: int | None = None) -> None:
        self.limit = active_connections_limit
        self._round_robin = RoundRobinRule()

    def available(self, server: Server, stats: Mapping[Server, ServerStats], now: float) -> bool:
        server_stats = stats.get(server)
        if server_stats is None:
            return True
        if server_stats.tripped(now):
            return False
        return self.limit is None or server_stats.active(now) < self.limit

    def choose(
        self, servers: list[Server], stats: Mapping[Server, ServerStats], now: float
    ) -> Server | None:
        chosen = self._round_robin.choose(
            servers, stats, now, lambda s: self.available(s, stats, now)
        )
        if chosen is not None:
            return chosen
        remaining = [s for s in servers if self.available(s, stats, now)]
        return self._round_robin.choose(remaining, stats, now)


class ZoneAvoidanceRule:
    """Drop blacked-out and the worst-loaded zone, then availability filter, then round robin."""

    def __init__(
        self,
        trigger_load_per_server: float = 0.2,
        blackout_percentage: float = 0.99999,
        active_connections_limit: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.trigger = trigger_load_per_server
        self.blackout = blackout_percentage
        self.rng = rng or random.Random()
        self._availability = AvailabilityFilteringRule(active_connections_limit)
        self._round_robin = RoundRobinRule()

    def available_zones(
        self, servers: list[Server], stats: Mapping[Server, ServerStats], now: float
    ) -> set[str]:
        zones: dict[str, list[Server]] = {}
        for server in servers:
            zones.setdefault(server.zone, []).append(server)
        if len(zones) <= 1:
            return set(zones)
        kept: dict[str, float] = {}
        dropped = False
        for zone, members in zones.items():
            tripped = sum(1 for s in members if s in stats and stats[s].tripped(now))
            if tripped / len(members) >= self.blackout:
                dropped = True
                continue
            active = sum(stats[s].active(now) for s in members if s in stats)
            kept[zone] = active / (len(members) - tripped)
        if not kept:
            return set()
        worst = max(kept.values())
        if (worst >= self.trigger or dropped) and len(kept) > 1:
            worst_zones = [zone for zone, load in kept.items() if load == worst]
            kept.pop(self.rng.choice(sorted(worst_zones)))
        return set(kept)

    def choose(
        self, servers: list[Server], stats: Mapping[Server, ServerStats], now: float
    ) -> Server | None:
        zones = self.available_zones(servers, stats, now)
        eligible = [
            s for s in servers if s.zone in zones and self._availability.available(s, stats, now)
        ]
        if not eligible:
            eligible = [s for s in servers if self._availability.available(s, stats, now)]
        return self._round_robin.choose(eligible, stats, now)


RULES: dict[str, Callable[..., Rule]] = {
    "RoundRobinRule": RoundRobinRule,
    "RandomRule": RandomRule,
    "WeightedResponseTimeRule": WeightedResponseTimeRule,
    "BestAvailableRule": BestAvailableRule,
    "AvailabilityFilteringRule": AvailabilityFilteringRule,
    "ZoneAvoidanceRule": ZoneAvoidanceRule,
}


@dataclass
class RibbonConfig:
    """Per-service settings under Ribbon's key names (`<service>.ribbon.<Key>`)."""

    rule: str = "ZoneAvoidanceRule"
    max_auto_retries: int = 0
    max_auto_retries_next_server: int = 1
    active_connections_limit: int | None = None
    weight_interval_s: float = 30.0
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_properties(cls, properties: Mapping[str, str], service: str) -> RibbonConfig:
        """Read `ribbon.<Key>` defaults overlaid with `<service>.ribbon.<Key>`."""
        values: dict[str, str] = {}
        for prefix in ("ribbon.", f"{service}.ribbon."):
            for key, value in properties.items():
                if key.startswith(prefix) and key.count(".") == prefix.count("."):
                    values[key[len(prefix) :]] = value
        config = cls()
        rule = values.pop("NFLoadBalancerRuleClassName", None)
        if rule:
            name = rule.rsplit(".", 1)[-1]
            if name not in RULES:
                raise ValueError(f"{service}: unknown rule {rule!r}; known: {sorted(RULES)}")
            config.rule = name
        if "MaxAutoRetries" in values:
            config.max_auto_retries = int(values.pop("MaxAutoRetries"))
        if "MaxAutoRetriesNextServer" in values:
            config.max_auto_retries_next_server = int(values.pop("MaxAutoRetriesNextServer"))
        if "ActiveConnectionsLimit" in values:
            limit = int(values.pop("ActiveConnectionsLimit"))
            config.active_connections_limit = None if limit < 0 else limit
        if "ServerWeightTaskTimerInterval" in values:
            config.weight_interval_s = int(values.pop("ServerWeightTaskTimerInterval")) / 1000
        config.extra = values
        return config

    def build_rule(self) -> Rule:
        if self.rule in ("AvailabilityFilteringRule", "ZoneAvoidanceRule"):
            return RULES[self.rule](active_connections_limit=self.active_connections_limit)
        if self.rule == "WeightedResponseTimeRule":
            return WeightedResponseTimeRule(self.weight_interval_s)
        return RULES[self.rule]()


CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    httpx.ConnectError,
    httpx.ConnectTimeout,
)


class LoadBalancer:
    """Chooses servers of every service with its configured rule and runs calls with retries."""

    def __init__(
        self,
        discovery: DiscoveryClient,
        configs: Mapping[str, RibbonConfig] | None = None,
        default: RibbonConfig | None = None,
    ) -> None:
        self.discovery = discovery
        self.configs = dict(configs or {})
        self.default = default or RibbonConfig()
        self.stats: dict[Server, ServerStats] = {}
        self._rules: dict[str, Rule] = {}
        self._lock = threading.Lock()

    def config(self, service: str) -> RibbonConfig:
        return self.configs.get(service, self.default)

    def rule(self, service: str) -> Rule:
        with self._lock:
            if service not in self._rules:
                self._rules[service] = self.config(service).build_rule()
            return self._rules[service]

    def servers(self, service: str) -> list[Server]:
        return [Server.from_instance(i) for i in self.discovery.instances(service)]

    def choose(self, service: str, exclude: set[Server] | None = None) -> Server:
        servers = [s for s in self.servers(service) if s not in (exclude or set())]
        chosen = self.rule(service).choose(servers, self.stats, time.monotonic())
        if chosen is None:
            raise NoServerAvailable(f"no UP instance of {service} can be chosen")
        return chosen

    def execute(
        self,
        service: str,
        call: Callable[[Server], T],
        *,
        max_auto_retries: int | None = None,
        max_auto_retries_next_server: int | None = None,
        retry_on: tuple[type[BaseException], ...] = CONNECTION_ERRORS,
    ) -> T:
        """Run `call` on a chosen server; retry it there, then on other servers, on `retry_on`.

        Attempts = (MaxAutoRetries + 1) x (MaxAutoRetriesNextServer + 1), per call overridable.
        """
        config = self.config(service)
        same = config.max_auto_retries if max_auto_retries is None else max_auto_retries
        others = (
            config.max_auto_retries_next_server
            if max_auto_retries_next_server is None
            else max_auto_retries_next_server
        )
        tried: set[Server] = set()
        last_error: BaseException | None = None
        for _ in range(others + 1):
            try:
                server = self.choose(service, exclude=tried)
            except NoServerAvailable:
                if last_error is None:
                    raise
                break
            tried.add(server)
            for _ in range(same + 1):
                server_stats = self.stats.setdefault(server, ServerStats())
                started = time.monotonic()
                server_stats.started(started)
                try:
                    result = call(server)
                except retry_on as error:
                    last_error = error
                    server_stats.finished(
                        time.monotonic(), (time.monotonic() - started) * 1000, True
                    )
                    continue
                except BaseException:
                    server_stats.finished(
                        time.monotonic(), (time.monotonic() - started) * 1000, False
                    )
                    raise
                server_stats.finished(time.monotonic(), (time.monotonic() - started) * 1000, False)
                return result
        raise RetriesExhausted(
            f"{service}: {len(tried)} server(s) failed: {last_error}"
        ) from last_error
