"""KairosDB API end to end: a real worker, Kafka and Cassandra; ingest, rollups, queries, guard."""

from __future__ import annotations

import gzip
import json
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from streams.settings import Settings
from tests.integration.worker import apply_topics, eventually, get_json, running_worker

pytestmark = pytest.mark.integration
T0 = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000  # an hour boundary


def _post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ingest_query_rollups_indexes_and_cardinality(
    stack_settings: Settings, tmp_path: Path
) -> None:
    telnet_port = _free_port()
    settings = stack_settings.model_copy(
        update={
            "domains": "bus,metrics",
            "metrics_telnet_port": telnet_port,
            "metrics_series_limit": 3,
            "metrics_rollup_grace_s": 0.0,
        }
    )
    apply_topics(settings)
    log_path = tmp_path / "worker.log"
    base = f"http://127.0.0.1:{settings.web_port}/api/v1"
    # Two hours and a bit of one point per 10 s for two hosts: 1,500 points.
    points = {
        host: [[T0 + i * 10_000, float((i * 7 + offset) % 50)] for i in range(750)]
        for host, offset in (("web1", 0), ("web2", 3))
    }
    body = [
        {"name": "demo.http.latency_ms", "tags": {"service": "shop", "host": h}, "datapoints": ps}
        for h, ps in points.items()
    ]
    with running_worker(settings, log_path):
        eventually(lambda: get_json(f"{base}/version")[0] == 200, 60, "worker up", log_path)
        assert get_json(f"{base}/version")[1] == {"version": "KairosDB 1.2.2"}
        status, answer = _post(
            f"{base}/datapoints",
            gzip.compress(json.dumps(body).encode()),
            {"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )
        assert (status, answer) == (204, None)
        status, answer = _post(f"{base}/datapoints", [{"name": "x", "datapoints": [[T0, 1]]}])
        assert status == 400 and "tags count" in answer["errors"][0]

        status_url = f"http://127.0.0.1:{settings.web_port}/metrics/cardinality"
        eventually(
            lambda: get_json(status_url)[1]["telnet"]["listening"], 60, "telnet port", log_path
        )
        with socket.create_connection(("127.0.0.1", telnet_port), timeout=10) as telnet:
            telnet.sendall(b"put demo.telnet 1700000000 4.5 host=t1\nversion\nput bad\n")
            replies = b""
            while replies.count(b"\n") < 2:
                replies += telnet.recv(1000)
        assert replies.splitlines()[0] == b"KairosDB 1.2.2"
        assert b"at least one tag" in replies.splitlines()[1]

        def query(aggregators: list, **extra: Any) -> dict:
            document = {
                "start_absolute": T0 - 30_000,
                "end_absolute": T0 + 7_490_000,
                "metrics": [
                    {
                        "name": "demo.http.latency_ms",
                        "tags": {"service": ["shop"]},
                        "group_by": [{"name": "tag", "tags": ["host"]}],
                        "aggregators": aggregators,
                        **extra,
                    }
                ],
            }
            status, answer = _post(f"{base}/datapoints/query", document)
            assert status == 200, answer
            return answer

        def all_stored() -> bool:
            answer = query([{"name": "count", "sampling": {"value": 1, "unit": "days"}}])
            return answer["queries"][0]["sample_size"] == 1500

        eventually(all_stored, 90, "1,500 points counted from rollups", log_path)
        for name in ("avg", "sum", "min", "max", "count", "first", "last", "dev", "percentile"):
            hourly = {"name": name, "percentile": 0.9, "sampling": {"value": 1, "unit": "hours"}}
            from_rollups = query([hourly])["queries"][0]
            from_raw = query([hourly], limit=10_000)["queries"][0]  # a limit forces raw points
            assert from_rollups["sample_size"] == from_raw["sample_size"] == 1500
            for left, right in zip(from_rollups["results"], from_raw["results"], strict=True):
                assert left["group_by"] == right["group_by"]
                assert left["tags"] == right["tags"]
                assert [t for t, _ in left["values"]] == [t for t, _ in right["values"]]
                assert [v for _, v in left["values"]] == pytest.approx(
                    [v for _, v in right["values"]], rel=1e-9
                ), name
        answer = query([{"name": "max", "sampling": {"value": 1, "unit": "hours"}}])
        web1 = answer["queries"][0]["results"][0]
        assert web1["group_by"][1]["group"] == {"host": "web1"}
        assert web1["tags"] == {"host": ["web1"], "service": ["shop"]}
        expected_max = max(v for t, v in points["web1"] if t < T0 + 3_600_000)
        assert web1["values"][0] == [T0, expected_max]

        eventually(
            lambda: (
                get_json(f"{base}/metricnames")[1]["results"]
                == ["demo.http.latency_ms", "demo.telnet"]
            ),
            30,
            "both metric names indexed",
            log_path,
        )
        assert get_json(f"{base}/metricnames?prefix=demo.t")[1] == {"results": ["demo.telnet"]}
        assert {"host", "service"} <= set(get_json(f"{base}/tagnames")[1]["results"])
        status, tags = _post(
            f"{base}/datapoints/query/tags",
            {"cache_time": 0, "metrics": [{"name": "demo.http.latency_ms", "tags": {}}]},
        )
        assert tags["queries"][0]["results"][0]["tags"] == {
            "host": ["web1", "web2"],
            "service": ["shop"],
        }
        status, bad = _post(f"{base}/datapoints/query", {"metrics": [{"name": "x"}]})
        assert status == 400 and "start_time" in bad["errors"][0]

        # The guard: limit 3 series per metric; the fourth and fifth tag sets are refused.
        guarded = [
            {"name": "api.calls", "timestamp": T0, "value": 1, "tags": {"user": f"u{i}"}}
            for i in range(5)
        ]
        assert _post(f"{base}/datapoints", guarded)[0] == 204

        def cardinality() -> dict | None:
            status, answer = get_json(f"http://127.0.0.1:{settings.web_port}/metrics/cardinality")
            rows = {row["metric"]: row for row in answer["metrics"]} if status == 200 else {}
            row = rows.get("api.calls")
            return row if row and row["rejected"] == 2 else None

        row = eventually(cardinality, 60, "two series refused", log_path)
        assert (row["series"], row["series_limit"], row["level"], row["worst_tag"]) == (
            3,
            3,
            "full",
            "user",
        )

        def dead_letters() -> dict | None:
            status, answer = get_json(f"http://127.0.0.1:{settings.web_port}/stackstream/health")
            return answer if status == 200 and "cardinality" in json.dumps(answer) else None

        eventually(dead_letters, 60, "cardinality dead letters", log_path)
        with urllib.request.urlopen(f"{base}/health/check", timeout=10) as response:
            assert response.status == 204
        assert get_json(f"{base}/health/status")[1] == [
            "JVM-Thread-Deadlock: OK",
            "Datastore-Query: OK",
        ]
        _, document = get_json(f"http://127.0.0.1:{settings.web_port}/openapi.json")
        assert "/api/v1/datapoints/query" in document["paths"]
