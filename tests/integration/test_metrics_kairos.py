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


def metrics_worker_settings(stack_settings: Settings) -> Settings:
    """A bus+metrics worker's settings without the telnet port and with no rollup grace, so
    minutes close at once; its topics created."""
    settings = stack_settings.model_copy(
        update={"domains": "bus,metrics", "metrics_telnet_port": 0, "metrics_rollup_grace_s": 0.0}
    )
    apply_topics(settings)
    return settings


def _delete(url: str) -> int:
    request = urllib.request.Request(url, method="DELETE")
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status


def test_delete_by_query_and_delete_metric_reach_points_and_rollups(
    stack_settings: Settings, tmp_path: Path
) -> None:
    settings = metrics_worker_settings(stack_settings)
    log_path = tmp_path / "worker.log"
    base = f"http://127.0.0.1:{settings.web_port}/api/v1"
    metric = "demo.queue.depth"
    points = {
        host: [[T0 + i * 10_000, float((i * 11 + offset) % 37)] for i in range(810)]
        for host, offset in (("web1", 0), ("web2", 5))
    }
    body = [
        {"name": metric, "tags": {"host": host}, "datapoints": ps} for host, ps in points.items()
    ]
    body.append({"name": "demo.doomed", "tags": {"host": "web1"}, "datapoints": [[T0, 1.0]]})
    # Partial first hour (from 20 min 25 s), a whole hour, partial third hour (to 5 min 5 s).
    start, end = T0 + 20 * 60_000 + 25_000, T0 + 2 * 3_600_000 + 5 * 60_000 + 5_000
    deleted = sum(1 for t, _ in points["web1"] if start <= t <= end)

    def query(aggregators: list, **extra: Any) -> dict:
        document = {
            "start_absolute": T0,
            "end_absolute": T0 + 810 * 10_000,
            "metrics": [
                {
                    "name": metric,
                    "group_by": [{"name": "tag", "tags": ["host"]}],
                    "aggregators": aggregators,
                    **extra,
                }
            ],
        }
        status, answer = _post(f"{base}/datapoints/query", document)
        assert status == 200, answer
        return answer["queries"][0]

    daily_count = [{"name": "count", "sampling": {"value": 1, "unit": "days"}}]
    with running_worker(settings, log_path):
        eventually(lambda: get_json(f"{base}/version")[0] == 200, 60, "worker up", log_path)
        assert _post(f"{base}/datapoints", body)[0] == 204
        eventually(lambda: query(daily_count)["sample_size"] == 1620, 90, "1,620 points", log_path)

        status, problem = _post(f"{base}/datapoints/delete", {"metrics": [{"name": metric}]})
        assert status == 400
        assert problem == {"errors": ["query.start_time relative or absolute time must be set"]}
        status, _ = _post(
            f"{base}/datapoints/delete",
            {
                "start_absolute": start,
                "end_absolute": end,
                "metrics": [{"name": metric, "tags": {"host": ["web1"]}}],
            },
        )
        assert status == 204
        eventually(
            lambda: query(daily_count)["sample_size"] == 1620 - deleted,
            90,
            f"{deleted} points of web1 deleted",
            log_path,
        )
        raw = query([])
        web1, web2 = raw["results"]
        assert [t for t, _ in web1["values"]] == [
            t for t, _ in points["web1"] if not start <= t <= end
        ]
        assert web2["values"] == [[t, int(v)] for t, v in points["web2"]]
        for sampling in ({"value": 1, "unit": "minutes"}, {"value": 1, "unit": "hours"}):
            for name in ("avg", "sum", "min", "max", "count", "first", "last", "dev", "percentile"):
                aggregator = {"name": name, "percentile": 0.5, "sampling": sampling}
                from_rollups = query([aggregator])
                from_raw = query([aggregator], limit=100_000)  # a limit forces raw points
                assert from_rollups["sample_size"] == from_raw["sample_size"] == 1620 - deleted
                for left, right in zip(from_rollups["results"], from_raw["results"], strict=True):
                    assert [t for t, _ in left["values"]] == [t for t, _ in right["values"]]
                    assert [v for _, v in left["values"]] == pytest.approx(
                        [v for _, v in right["values"]], rel=1e-9
                    ), (name, sampling)

        assert _delete(f"{base}/metric/demo.doomed") == 204

        def doomed_gone() -> bool:
            names = get_json(f"{base}/metricnames")[1]["results"]
            _, answer = _post(
                f"{base}/datapoints/query",
                {"start_absolute": T0, "metrics": [{"name": "demo.doomed"}]},
            )
            return "demo.doomed" not in names and answer["queries"][0]["sample_size"] == 0

        eventually(doomed_gone, 60, "demo.doomed deleted", log_path)
        assert metric in get_json(f"{base}/metricnames")[1]["results"]
        _, document = get_json(f"http://127.0.0.1:{settings.web_port}/openapi.json")
        assert {"/api/v1/datapoints/delete", "/api/v1/metric/{name}"} <= set(document["paths"])
