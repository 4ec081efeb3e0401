"""Ribbon-style rules, per-service config and retries of the SDK's load balancer."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from streams.sdk.discovery import (
    AvailabilityFilteringRule,
    BestAvailableRule,
    LoadBalancer,
    NoServerAvailable,
    RandomRule,
    RetriesExhausted,
    RibbonConfig,
    RoundRobinRule,
    Server,
    ServerStats,
    WeightedResponseTimeRule,
    ZoneAvoidanceRule,
    _hashcode,
)

A, B, C = (Server(name, "10.0.0.1", port, "z1") for name, port in (("a", 1), ("b", 2), ("c", 3)))
D = Server("d", "10.0.0.2", 4, "z2")
NOW = 1000.0


def tripped() -> ServerStats:
    stats = ServerStats()
    for _ in range(3):
        stats.started(NOW - 1)
        stats.finished(NOW - 1, 1.0, connection_failed=True)
    return stats


def busy(active: int) -> ServerStats:
    stats = ServerStats()
    for _ in range(active):
        stats.started(NOW)
    return stats


def test_round_robin_cycles_through_every_server() -> None:
    rule = RoundRobinRule()
    picks = [rule.choose([A, B, C], {}, NOW) for _ in range(6)]
    assert picks == [A, B, C, A, B, C]
    assert rule.choose([], {}, NOW) is None


def test_random_picks_every_server_roughly_evenly() -> None:
    rule = RandomRule(random.Random(1))
    counts = Counter(rule.choose([A, B, C], {}, NOW) for _ in range(3000))
    assert set(counts) == {A, B, C} and min(counts.values()) > 850


def test_weighted_response_time_prefers_fast_servers() -> None:
    stats = {A: ServerStats(requests=10, total_response_ms=100.0)}
    stats[B] = ServerStats(requests=10, total_response_ms=900.0)
    rule = WeightedResponseTimeRule(rng=random.Random(2))
    counts = Counter(rule.choose([A, B], stats, NOW) for _ in range(2000))
    assert counts[A] > 4 * counts[B], "weights 90 vs 10"


def test_weighted_response_time_falls_back_to_round_robin_without_data() -> None:
    rule = WeightedResponseTimeRule()
    assert [rule.choose([A, B], {}, NOW) for _ in range(4)] == [A, B, A, B]


def test_best_available_skips_tripped_and_picks_the_least_busy() -> None:
    stats = {A: tripped(), B: busy(5), C: busy(2)}
    assert BestAvailableRule().choose([A, B, C], stats, NOW) == C


def test_circuit_trips_after_three_connection_failures_and_backs_off() -> None:
    stats = tripped()
    assert stats.tripped(NOW) and stats.blackout_until == pytest.approx(NOW - 1 + 10)
    stats.finished(NOW, 1.0, connection_failed=True)
    assert stats.blackout_until == pytest.approx(NOW + 20)
    for _ in range(5):
        stats.finished(NOW, 1.0, connection_failed=True)
    assert stats.blackout_until == pytest.approx(NOW + 30), "capped at 30 s"
    stats.finished(NOW, 1.0, connection_failed=False)
    assert stats.consecutive_failures == 0


def test_availability_filtering_skips_tripped_and_overloaded_servers() -> None:
    rule = AvailabilityFilteringRule(active_connections_limit=3)
    stats = {A: tripped(), B: busy(3), C: busy(1)}
    assert {rule.choose([A, B, C], stats, NOW) for _ in range(6)} == {C}
    assert rule.choose([A, B], stats, NOW) is None


def test_zone_avoidance_drops_a_blacked_out_zone() -> None:
    rule = ZoneAvoidanceRule(rng=random.Random(0))
    stats = {D: tripped()}
    assert rule.available_zones([A, B, D], stats, NOW) == {"z1"}
    assert {rule.choose([A, B, D], stats, NOW) for _ in range(4)} == {A, B}


def test_zone_avoidance_drops_the_worst_loaded_zone_above_the_trigger() -> None:
    rule = ZoneAvoidanceRule(rng=random.Random(0))
    stats = {A: busy(2), B: busy(2), D: busy(0)}
    assert rule.available_zones([A, B, D], stats, NOW) == {"z2"}
    calm = {A: busy(0), D: busy(0)}
    assert rule.available_zones([A, D], calm, NOW) == {"z1", "z2"}


def test_config_reads_ribbon_properties_with_service_over_global() -> None:
    properties = {
        "ribbon.NFLoadBalancerRuleClassName": "com.netflix.loadbalancer.RandomRule",
        "ribbon.MaxAutoRetriesNextServer": "2",
        "orders.ribbon.NFLoadBalancerRuleClassName": "com.netflix.loadbalancer.BestAvailableRule",
        "orders.ribbon.ActiveConnectionsLimit": "-1",
        "orders.ribbon.ReadTimeout": "1000",
    }
    orders = RibbonConfig.from_properties(properties, "orders")
    assert orders.rule == "BestAvailableRule" and orders.max_auto_retries_next_server == 2
    assert orders.active_connections_limit is None and orders.extra == {"ReadTimeout": "1000"}
    assert isinstance(orders.build_rule(), BestAvailableRule)
    assert RibbonConfig.from_properties(properties, "billing").rule == "RandomRule"
    with pytest.raises(ValueError, match="unknown rule"):
        RibbonConfig.from_properties({"ribbon.NFLoadBalancerRuleClassName": "Nope"}, "x")


class StaticDiscovery:
    def __init__(self, servers: list[Server]) -> None:
        self.servers = servers

    def instances(self, service: str) -> list[dict[str, Any]]:
        return [
            {
                "instance_id": s.instance_id,
                "ip_addr": s.host,
                "port": s.port,
                "metadata": {"zone": s.zone},
                "data_center_info": {"metadata": {}},
            }
            for s in self.servers
        ]


def test_calls_retry_on_the_next_server_within_the_per_call_limit() -> None:
    balancer = LoadBalancer(
        StaticDiscovery([A, B, C]),  # type: ignore[arg-type]
        {"orders": RibbonConfig(rule="RoundRobinRule", max_auto_retries_next_server=1)},
    )
    attempts: list[str] = []

    def call(server: Server) -> str:
        attempts.append(server.instance_id)
        if server.instance_id != "c":
            raise ConnectionError(f"{server.address} refused")
        return "ok"

    def refused(server: Server) -> str:
        attempts.append(server.instance_id)
        raise ConnectionError(f"{server.address} refused")

    with pytest.raises(RetriesExhausted):
        balancer.execute("orders", refused)
    assert len(attempts) == 2 and len(set(attempts)) == 2, "1 + MaxAutoRetriesNextServer servers"
    attempts.clear()
    assert balancer.execute("orders", call, max_auto_retries_next_server=2) == "ok"
    assert len(set(attempts)) == len(attempts), "a retry goes to a server not yet tried"
    attempts.clear()
    with pytest.raises(RetriesExhausted):
        balancer.execute("orders", call, max_auto_retries=1, max_auto_retries_next_server=0)
    assert len(attempts) == 2 and attempts[0] == attempts[1], "retries on the same server first"


def test_non_connection_errors_are_not_retried_and_no_servers_raise() -> None:
    balancer = LoadBalancer(StaticDiscovery([A, B]))  # type: ignore[arg-type]

    def broken(server: Server) -> None:
        raise ValueError("bad answer")

    with pytest.raises(ValueError):
        balancer.execute("orders", broken)
    with pytest.raises(NoServerAvailable):
        LoadBalancer(StaticDiscovery([])).choose("orders")  # type: ignore[arg-type]


def test_sdk_hash_matches_eurekas_algorithm() -> None:
    instances = {str(i): {"status": s} for i, s in enumerate(["UP", "DOWN", "UP"])}
    assert _hashcode(instances) == "DOWN_1_UP_2_"
