"""Every file in schemas/ parses, follows the naming and doc conventions, and round-trips a
realistic sample record through fastavro's schemaless writer and reader."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.validation import validate

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"
SCHEMA_FILES = sorted(SCHEMAS_DIR.glob("*.avsc"))

PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}

# File names the lead fixed before the record names were chosen; everything else must be the
# snake_case of its record name. Keep this list short and exact.
NAME_EXCEPTIONS = {
    "config_audit": "AuditEvent",
    "trace_report": "ReportRow",
    "alert_definition": "CheckDefinition",
}

# Fields whose meaning is not obvious from name and type: each must keep its doc.
REQUIRED_FIELD_DOCS = {
    "stackstream.bus.DeadLetter": {"reason", "error_type", "value"},
    "stackstream.registry.RegistryEvent": {
        "action",
        "timestamp_ms",
        "last_dirty_timestamp_ms",
        "status",
        "overridden_status",
        "metadata",
        "instance",
        "is_replication",
        "origin",
        "self_preservation",
    },
    "stackstream.registry.InstanceInfo": {
        "status",
        "overridden_status",
        "port_enabled",
        "secure_port_enabled",
        "vip_address",
        "secure_vip_address",
        "action_type",
    },
    "stackstream.registry.DataCenterInfo": {"name", "class_name"},
    "stackstream.registry.LeaseInfo": {"renewal_interval_s", "duration_s"},
    "stackstream.registry.SelfPreservationState": {"threshold_per_min", "renews_last_min"},
    "stackstream.config.ConfigRelease": {
        "namespace",
        "format",
        "kind",
        "release_id",
        "release_key",
        "configurations",
        "rolled_back_from",
        "rolled_back_to",
        "gray",
        "closed_branch_name",
    },
    "stackstream.config.GrayRelease": {"branch_name", "release_key", "rules"},
    "stackstream.config.AuditEvent": {"action", "actor", "details", "success"},
    "stackstream.auth.AuthEvent": {
        "action",
        "jti",
        "token_type_hint",
        "token_hash",
        "refresh_token_jti",
        "subject",
        "client",
    },
    "stackstream.auth.OAuthClient": {"client_secret_hash", "token_endpoint_auth_method"},
    "stackstream.tracing.MessageTree": {
        "domain",
        "message_id",
        "parent_message_id",
        "root_message_id",
        "root",
    },
    "stackstream.tracing.Transaction": {"kind", "status", "timestamp_us", "children"},
    "stackstream.tracing.Event": {"kind", "status"},
    "stackstream.tracing.Metric": {"kind", "status"},
    "stackstream.tracing.Heartbeat": {"kind", "name"},
    "stackstream.tracing.Trace": {"kind"},
    "stackstream.tracing.ReportRow": {
        "report",
        "period",
        "host",
        "type",
        "name",
        "sum_squares",
        "sketch",
        "duration_counts",
        "late_count",
        "revision",
    },
    "stackstream.alerts.CheckDefinition": {"kind", "id", "owning_team", "status", "check", "alert"},
    "stackstream.alerts.CheckPart": {"command", "entities"},
    "stackstream.alerts.AlertPart": {"condition", "priority", "parameters", "period"},
    "stackstream.alerts.AlertParameter": {"value_json"},
    "stackstream.alerts.CheckResult": {
        "entity",
        "ts_ms",
        "value_json",
        "value_numeric",
        "exception",
    },
    "stackstream.alerts.AlertEvent": {
        "action",
        "entity_id",
        "at_ms",
        "start_time_ms",
        "captures",
        "in_period",
    },
    "stackstream.circuits.CircuitMetrics": {
        "type",
        "host",
        "error_percentage",
        "rolling_counts",
        "gauges",
        "latency_execute_ms",
        "latency_execute_sketch",
        "properties",
    },
}

T0_MS = 1_706_608_501_000  # 2024-01-30 10:55:01 UTC
T0_US = T0_MS * 1000

INSTANCE = {
    "instance_id": "192.0.2.10:orders:8080",
    "host_name": "orders-1",
    "app": "ORDERS",
    "app_group_name": None,
    "ip_addr": "192.0.2.10",
    "sid": None,
    "status": "UP",
    "overridden_status": "UNKNOWN",
    "port": 8080,
    "port_enabled": True,
    "secure_port": 443,
    "secure_port_enabled": False,
    "country_id": 1,
    "data_center_info": {
        "name": "MyOwn",
        "class_name": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo",
        "metadata": {},
    },
    "lease_info": {
        "renewal_interval_s": 30,
        "duration_s": 90,
        "registration_timestamp_ms": T0_MS,
        "last_renewal_timestamp_ms": T0_MS,
        "eviction_timestamp_ms": 0,
        "service_up_timestamp_ms": T0_MS,
    },
    "metadata": {"management.port": "8080", "zone": "z1"},
    "home_page_url": "http://orders-1:8080/",
    "status_page_url": "http://orders-1:8080/info",
    "health_check_url": "http://orders-1:8080/health",
    "secure_health_check_url": None,
    "vip_address": "orders",
    "secure_vip_address": "orders",
    "is_coordinating_discovery_server": False,
    "last_updated_timestamp_ms": T0_MS,
    "last_dirty_timestamp_ms": T0_MS,
    "action_type": "ADDED",
    "asg_name": None,
}


def _msg(kind: str, type_: str, name: str, offset_us: int, **extra: Any) -> dict[str, Any]:
    record = {
        "kind": kind,
        "type": type_,
        "name": name,
        "status": "0",
        "timestamp_us": T0_US + offset_us,
        "data": "",
    }
    record.update(extra)
    return record


# Three levels: URL transaction > SQL and RPC transactions > a cache transaction, with events
# and a metric in between.
MESSAGE_TREE = {
    "domain": "orders",
    "hostname": "orders-1",
    "ip": "192.0.2.2",
    "thread_group_name": "http-nio",
    "thread_id": "41",
    "thread_name": "http-nio-8080-exec-3",
    "message_id": "orders-c0000202-493160-17",
    "parent_message_id": "gateway-c0000201-493160-902",
    "root_message_id": "gateway-c0000201-493160-902",
    "session_token": None,
    "root": _msg(
        "TRANSACTION",
        "URL",
        "/orders/pay",
        0,
        duration_us=48_250,
        data="method=POST&status=200",
        children=[
            _msg("EVENT", "URL.Server", "192.0.2.99", 15, data="ua=curl/8.5"),
            _msg(
                "TRANSACTION",
                "SQL",
                "orders.insert",
                120,
                duration_us=9_800,
                data="INSERT INTO orders (id, amount) VALUES (?, ?)",
                children=[_msg("EVENT", "SQL.Database", "jdbc:mysql://db-1:3306/orders", 125)],
            ),
            _msg(
                "TRANSACTION",
                "RPC.Call",
                "payments:charge",
                10_100,
                duration_us=36_000,
                children=[
                    _msg(
                        "EVENT", "RemoteCall", "payments", 10_110, data="orders-c0000202-493160-18"
                    ),
                    _msg(
                        "TRANSACTION",
                        "Cache.redis",
                        "get:fx-rate",
                        10_150,
                        duration_us=420,
                        children=[],
                    ),
                    _msg(
                        "EVENT",
                        "Exception",
                        "java.net.SocketTimeoutException",
                        45_900,
                        status="1",
                        data="Read timed out\n\tat java.net.SocketInputStream.read",
                    ),
                ],
                status="1",
            ),
            _msg("METRIC", "", "order.paid", 47_000, status="S,C", data="1,129.90"),
            _msg("TRACE", "trace", "checkout", 47_500, data="cart=3 items"),
            _msg("HEARTBEAT", "Heartbeat", "192.0.2.2", 48_000, data="<status/>"),
        ],
    ),
}

SAMPLES: dict[str, dict[str, Any]] = {
    "dead_letter": {
        "reason": "body does not decode: unexpected end of data",
        "error_type": "decode",
        "source_topic": "trace.messages",
        "partition": 3,
        "offset": 918_224,
        "timestamp_ms": T0_MS,
        "failed_at_ms": T0_MS + 12,
        "agent": "tracing.reports",
        "key": b"orders",
        "value": b"\xc3\x01\x00\x01",
        "headers": {"schema": b"stackstream.tracing.MessageTree"},
    },
    "log_record": {
        "timestamp_us": T0_US,
        "level": "ERROR",
        "message": "payment failed",
        "service": "orders",
        "host": "orders-1",
        "logger": "orders.pay",
        "trace_id": "orders-c0000202-493160-17",
        "span_id": None,
        "error_type": "TimeoutError",
        "error_message": "read timed out",
        "error_stack_trace": "Traceback (most recent call last): ...",
        "labels": {"env": "dev"},
        "sequence": 4411,
    },
    "metric_point": {
        "name": "http.server.requests",
        "timestamp_ms": T0_MS,
        "value": 12.5,
        "tags": {"host": "orders-1", "uri": "/orders/pay"},
        "ttl_seconds": 0,
    },
    "metric_delete": {
        "delete_id": "5f0c3e52-5a4b-4d43-9d0e-2b8f9c1a7e11",
        "metric": "http.server.requests",
        "start_ms": T0_MS - 3_600_000,
        "end_ms": T0_MS,
        "tags": {"host": ["orders-1", "orders-2"]},
        "whole_metric": False,
        "requested_ms": T0_MS + 5_000,
    },
    "registry_event": {
        "action": "REGISTER",
        "app": "ORDERS",
        "instance_id": "192.0.2.10:orders:8080",
        "timestamp_ms": T0_MS,
        "last_dirty_timestamp_ms": T0_MS,
        "status": None,
        "overridden_status": None,
        "metadata": {},
        "instance": INSTANCE,
        "is_replication": False,
        "origin": "192.0.2.10",
        "self_preservation": {
            "enabled": True,
            "expected_clients": 11,
            "threshold_per_min": 18,
            "renews_last_min": 20,
            "partition_marks": {"0": 3, "1": -1},
        },
    },
    "config_release": {
        "app_id": "orders",
        "cluster": "default",
        "namespace": "application",
        "format": "properties",
        "kind": "GRAY",
        "release_id": 102,
        "release_key": "20240130101501-1a2b3c4d5e6f7a8b",
        "name": "20240130-gray-timeout",
        "comment": "try a shorter timeout on two hosts",
        "author": "alice",
        "released_at_ms": T0_MS,
        "configurations": {"timeout": "3000", "db.url": "jdbc:mysql://db-1:3306/orders"},
        "is_public": False,
        "is_rollback": False,
        "rolled_back_from": None,
        "rolled_back_to": None,
        "gray": {
            "branch_name": "20240130105501-gray",
            "release_key": "20240130105501-1a2b3c4d5e6f7a91",
            "configurations": {"timeout": "1500", "db.url": "jdbc:mysql://db-1:3306/orders"},
            "rules": [
                {
                    "client_app_id": "orders",
                    "client_ip_list": ["192.0.2.10", "192.0.2.11"],
                    "client_label_list": ["canary"],
                }
            ],
        },
        "closed_branch_name": None,
    },
    "config_audit": {
        "action": "UPDATE_ITEM",
        "actor": "alice",
        "app_id": "orders",
        "cluster": "default",
        "namespace": "application",
        "at_ms": T0_MS,
        "details": {"key": "timeout", "old_value": "5000", "new_value": "3000"},
        "source_ip": "192.0.2.50",
        "success": True,
        "request_id": "6b1f0c7e-2d0e-4c1a-9a55-0c4f1e0d9a11",
    },
    "auth_event": {
        "action": "TOKEN_ISSUED",
        "client_id": "web",
        "at_ms": T0_MS,
        "jti": "4f1c2a9e-77b0-4d4e-8f3c-2b1c9d0e6a55",
        "token_type_hint": "access_token",
        "token_hash": None,
        "refresh_token_jti": "a0e3d1b2-1c4f-4a7e-9b8d-5e6f7a8b9c0d",
        "grant_type": "password",
        "subject": "alice",
        "scopes": ["read", "write"],
        "audience": ["orders"],
        "authorities": ["ROLE_USER"],
        "issued_at_ms": T0_MS,
        "expires_at_ms": T0_MS + 43_200_000,
        "redirect_uri": None,
        "code_challenge": None,
        "code_challenge_method": None,
        "client": {
            "client_id": "web",
            "client_secret_hash": "$2b$12$Kk3b8cQ1mQ0VqfTzq1Zc4eQm8uY3hWq3u0vZl2yN6aR5oJt7gP9yS",
            "client_name": "Web shop",
            "grant_types": ["password", "refresh_token", "authorization_code"],
            "redirect_uris": ["https://shop.example.org/callback"],
            "scopes": ["read", "write"],
            "auto_approve_scopes": ["read"],
            "authorities": ["ROLE_CLIENT"],
            "resource_ids": ["orders"],
            "token_endpoint_auth_method": "client_secret_basic",
            "access_token_validity_s": None,
            "refresh_token_validity_s": 2_592_000,
            "require_pkce": True,
        },
        "actor": None,
        "reason": None,
        "source_ip": "192.0.2.77",
    },
    "message_tree": MESSAGE_TREE,
    "trace_report": {
        "report": "transaction",
        "period": "minute",
        "period_start_ms": 1_706_608_500_000,
        "domain": "orders",
        "host": "All",
        "type": "URL",
        "name": "/orders/pay",
        "count": 1000,
        "fail_count": 7,
        "sum_us": 61_250_000,
        "min_us": 4_100,
        "max_us": 902_000,
        "sum_squares": 1.2734e13,
        "sketch": b"\x02\x01\x00\x00\x40\x8f\x40\x12\x07",
        "sketch_format": "ddsketch-v1",
        "duration_counts": {"8": 120, "16": 640, "128": 200, "512": 30, "1024": 10},
        "success_message_id": "orders-c0000202-493160-17",
        "fail_message_id": "orders-c0000202-493160-44",
        "longest_message_id": "orders-c0000203-493160-9",
        "sample_message_ids": [],
        "bucket_samples": {},
        "late_count": 2,
        "revision": 1,
        "closed_at_ms": 1_706_608_575_000,
    },
    "alert_definition": {
        "kind": "ALERT",
        "id": 1202,
        "name": "orders {entity} p99 above {threshold}: {p99:.2f} ms",
        "description": "slow checkout",
        "owning_team": "shop",
        "status": "ACTIVE",
        "tags": ["checkout", "latency"],
        "last_modified_ms": T0_MS,
        "last_modified_by": "alice",
        "check": None,
        "alert": {
            "check_definition_id": 301,
            "condition": "capture(p99=value['p99']) > threshold",
            "priority": 2,
            "parameters": {
                "threshold": {"value_json": "250.0", "type": "float", "comment": "ms"},
            },
            "entities": [{"type": "instance", "application_id": "orders"}],
            "entities_exclude": [{"id": "orders-canary"}],
            "notifications": ["send_mail('shop-oncall@example.org', repeat=600)"],
            "period": "wd {Mon-Fri} hr {9-16}",
            "responsible_team": "shop",
            "template": False,
            "parent_id": None,
        },
        "downtime": None,
    },
    "check_result": {
        "check_id": 301,
        "entity_id": "orders-1",
        "entity": {
            "id": "orders-1",
            "type": "instance",
            "url": "http://orders-1:8080",
            "port": "8080",
        },
        "ts_ms": T0_MS,
        "run_time_ms": 12.75,
        "value_json": '{"p99": 312.5, "http": {"status": 200}}',
        "value_numeric": None,
        "exception": None,
        "worker": "worker-2",
        "scheduled_at_ms": T0_MS - 3,
    },
    "alert_event": {
        "action": "ALERT_ENTITY_STARTED",
        "alert_id": 1202,
        "check_id": 301,
        "entity_id": "orders-1",
        "at_ms": T0_MS,
        "start_time_ms": T0_MS,
        "captures": {"p99": "312.5"},
        "value_json": '{"p99": 312.5, "http": {"status": 200}}',
        "priority": 2,
        "alert_name": "orders orders-1 p99 above 250.0: 312.50 ms",
        "in_period": True,
        "downtime_ids": [],
        "worker": "worker-0",
    },
    "circuit_metrics": {
        "type": "HystrixCommand",
        "name": "PaymentsCharge",
        "group": "payments",
        "thread_pool": "payments",
        "host": "orders-1:8080",
        "cluster": "ORDERS",
        "current_time_ms": T0_MS,
        "reporting_hosts": 1,
        "is_circuit_breaker_open": False,
        "circuit_state": "CLOSED",
        "error_percentage": 4,
        "error_count": 3,
        "request_count": 75,
        "rolling_counts": {
            "rollingCountSuccess": 72,
            "rollingCountFailure": 1,
            "rollingCountTimeout": 2,
            "rollingCountShortCircuited": 0,
            "rollingCountThreadPoolRejected": 0,
            "rollingCountSemaphoreRejected": 0,
            "rollingCountFallbackSuccess": 3,
        },
        "gauges": {"currentConcurrentExecutionCount": 2, "rollingMaxConcurrentExecutionCount": 5},
        "latency_execute_mean_ms": 41.0,
        "latency_execute_ms": {
            "0": 3.0,
            "25": 18.0,
            "50": 30.0,
            "75": 47.0,
            "90": 80.0,
            "95": 120.0,
            "99": 640.0,
            "99.5": 810.0,
            "100": 1001.0,
        },
        "latency_total_mean_ms": 43.0,
        "latency_total_ms": {"50": 31.0, "99": 650.0},
        "latency_execute_sketch": b"\x02\x01\x00\x00\x40\x8f\x40\x12\x07",
        "latency_total_sketch": None,
        "sketch_format": "ddsketch-v1",
        "batch_size_mean": None,
        "batch_size": {},
        "properties": {
            "propertyValue_circuitBreakerRequestVolumeThreshold": "20",
            "propertyValue_circuitBreakerEnabled": "true",
            "propertyValue_executionIsolationStrategy": '"THREAD"',
        },
    },
}


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _full_name(node: dict[str, Any], namespace: str) -> tuple[str, str]:
    """(full name, namespace inherited by what it contains) of a named type."""
    name = node["name"]
    if "." in name:
        return name, name.rsplit(".", 1)[0]
    namespace = node.get("namespace", namespace)
    return f"{namespace}.{name}", namespace


def _named_types(schema: Any, namespace: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every named type defined inline in a schema, with its full name."""
    if isinstance(schema, list):
        for branch in schema:
            yield from _named_types(branch, namespace)
    elif isinstance(schema, dict):
        kind = schema["type"]
        if kind in ("record", "enum", "fixed"):
            full, inner = _full_name(schema, namespace)
            yield full, schema
            for field in schema.get("fields", []):
                yield from _named_types(field["type"], inner)
        elif kind == "array":
            yield from _named_types(schema["items"], namespace)
        elif kind == "map":
            yield from _named_types(schema["values"], namespace)
        else:
            yield from _named_types(kind, namespace)


def _records(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    return ((n, t) for n, t in _named_types(schema) if t["type"] == "record")


def _default_fits(default: Any, schema: Any) -> bool:
    """Enough of Avro's default rules for the types used here (unions: the first branch)."""
    if isinstance(schema, list):
        return _default_fits(default, schema[0])
    kind = schema["type"] if isinstance(schema, dict) else schema
    if kind == "null":
        return default is None
    if kind == "boolean":
        return isinstance(default, bool)
    if kind in ("int", "long"):
        return isinstance(default, int) and not isinstance(default, bool)
    if kind in ("float", "double"):
        return isinstance(default, int | float) and not isinstance(default, bool)
    if kind in ("string", "bytes"):
        return isinstance(default, str)
    if kind == "array":
        return isinstance(default, list) and all(_default_fits(d, schema["items"]) for d in default)
    if kind == "map":
        return isinstance(default, dict) and all(
            _default_fits(d, schema["values"]) for d in default.values()
        )
    if kind == "enum":
        return default in schema["symbols"]
    return isinstance(default, dict)  # a record default; not used here


def _round_trip(parsed: Any, record: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, parsed, record)
    buffer.seek(0)
    out = fastavro.schemaless_reader(buffer, parsed)
    assert buffer.tell() == len(buffer.getvalue())
    return out


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def test_schema_folder_is_not_empty() -> None:
    assert SCHEMA_FILES, f"no *.avsc in {SCHEMAS_DIR}"


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=_ids(SCHEMA_FILES))
def test_parses(path: Path) -> None:
    parsed = fastavro.parse_schema(_load(path))
    assert parsed["type"] == "record", "each file holds a single top-level record"


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=_ids(SCHEMA_FILES))
def test_file_name_is_snake_case_of_record_name(path: Path) -> None:
    name = _load(path)["name"].rsplit(".", 1)[-1]
    if path.stem in NAME_EXCEPTIONS:
        assert name == NAME_EXCEPTIONS[path.stem]
    else:
        assert path.stem == _snake_case(name)


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=_ids(SCHEMA_FILES))
def test_namespaces_start_with_stackstream(path: Path) -> None:
    for full_name, _ in _named_types(_load(path)):
        assert full_name.startswith("stackstream."), full_name


def test_full_names_are_unique_across_files() -> None:
    seen: dict[str, str] = {}
    for path in SCHEMA_FILES:
        full = _full_name(_load(path), "")[0]
        assert full not in seen, f"{full} in {seen.get(full)} and {path.name}"
        seen[full] = path.name


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=_ids(SCHEMA_FILES))
def test_docs(path: Path) -> None:
    for full_name, named in _named_types(_load(path)):
        doc = named.get("doc", "")
        assert doc.strip(), f"{full_name} has no doc"
        assert "\n" not in doc, f"{full_name}: doc must be one line"
        fields = {f["name"]: f for f in named.get("fields", [])}
        for field in fields.values():
            assert "\n" not in field.get("doc", ""), f"{full_name}.{field['name']}: one line"
        for required in REQUIRED_FIELD_DOCS.get(full_name, ()):
            assert required in fields, f"{full_name}.{required} is gone"
            assert fields[required].get("doc", "").strip(), f"{full_name}.{required} lost its doc"


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=_ids(SCHEMA_FILES))
def test_field_conventions(path: Path) -> None:
    for full_name, record in _records(_load(path)):
        for field in record["fields"]:
            where = f"{full_name}.{field['name']}"
            kind = field["type"]
            if isinstance(kind, list) and "null" in kind:
                assert kind[0] == "null", f"{where}: optional unions put null first"
                assert "default" in field, f"{where}: optional fields default to null"
                assert field["default"] is None, f"{where}: optional fields default to null"
            if "default" in field:
                assert _default_fits(field["default"], kind), f"{where}: default does not fit"
            name = field["name"]
            if kind == "long" and ("time" in name or name.endswith("_at")):
                assert name.endswith(("_ms", "_us")), f"{where}: put the unit in the name"


def test_every_schema_has_a_sample() -> None:
    assert {p.stem for p in SCHEMA_FILES} == set(SAMPLES)


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=_ids(SCHEMA_FILES))
def test_sample_round_trips(path: Path) -> None:
    parsed = fastavro.parse_schema(_load(path))
    sample = SAMPLES[path.stem]
    # strict: the sample names every field and nothing else, so it documents the whole record
    assert validate(sample, parsed, strict=True)
    assert _round_trip(parsed, sample) == sample


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=_ids(SCHEMA_FILES))
def test_defaults_fill_a_record_written_with_required_fields_only(path: Path) -> None:
    """A writer that knows only the required fields is readable: the defaults work."""
    full = _load(path)
    required = [f for f in full["fields"] if "default" not in f]
    writer = fastavro.parse_schema(dict(full, fields=required))
    reader = fastavro.parse_schema(_load(path))
    names = {f["name"] for f in required}
    sample = {k: v for k, v in SAMPLES[path.stem].items() if k in names}
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, writer, sample)
    buffer.seek(0)
    out = fastavro.schemaless_reader(buffer, writer, reader)
    for field in full["fields"]:
        if "default" in field:
            assert out[field["name"]] == field["default"]


def _depth(message: dict[str, Any]) -> int:
    return 1 + max((_depth(c) for c in message.get("children", [])), default=0)


def _kinds(message: dict[str, Any]) -> set[str]:
    kinds = {message["kind"]}
    for child in message.get("children", []):
        kinds |= _kinds(child)
    return kinds


def test_message_tree_keeps_nesting_and_kinds() -> None:
    parsed = fastavro.parse_schema(_load(SCHEMAS_DIR / "message_tree.avsc"))
    out = _round_trip(parsed, MESSAGE_TREE)
    assert _depth(out["root"]) >= 3
    assert {"TRANSACTION", "EVENT", "METRIC", "HEARTBEAT", "TRACE"} <= _kinds(out["root"])
    rpc = out["root"]["children"][2]
    assert [c["kind"] for c in rpc["children"]] == ["EVENT", "TRANSACTION", "EVENT"]
    assert rpc["children"][1]["type"] == "Cache.redis"


def test_message_tree_root_may_be_a_lone_event() -> None:
    parsed = fastavro.parse_schema(_load(SCHEMAS_DIR / "message_tree.avsc"))
    tree = dict(MESSAGE_TREE, root=_msg("EVENT", "Exception", "KeyError", 0, status="1"))
    assert _round_trip(parsed, tree) == tree


def test_message_kinds_are_told_apart_by_their_discriminator() -> None:
    """Event, Heartbeat and Trace share a shape; the kind enum decides which branch is written."""
    parsed = fastavro.parse_schema(_load(SCHEMAS_DIR / "message_tree.avsc"))
    for kind in ("EVENT", "HEARTBEAT", "TRACE", "METRIC"):
        tree = dict(MESSAGE_TREE, root=_msg(kind, "t", "n", 0))
        assert _round_trip(parsed, tree)["root"]["kind"] == kind
    with pytest.raises(ValueError):
        _round_trip(parsed, dict(MESSAGE_TREE, root=_msg("SPAN", "t", "n", 0)))
