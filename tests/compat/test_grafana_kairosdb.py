"""Grafana's KairosDB data source against a real worker: its request bodies, our answers.

The data source (grafana/kairosdb-datasource, plugin id `grafana-kairosdb-datasource`) lists
metrics with `GET /api/v1/metricnames`, reads tag keys and values with
`POST /api/v1/datapoints/query/tags` (`{"cache_time":0,"metrics":[...],"start_absolute":0}`) and
turns each panel target into `POST /api/v1/datapoints/query` with the panel range in whole
seconds x 1000, `cache_time: 0`, the target's tags, `group_by` and aggregators
(PROTOCOLS.md 7.5). `grafana_body` below builds those bodies from the dashboard's targets as the
plugin's query builder does; the test replays them and checks shape and values.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from streams.metrics.query import parse_query
from streams.settings import PROJECT_ROOT, Settings
from tests.integration.worker import apply_topics, eventually, get_json, running_worker

DASHBOARD = PROJECT_ROOT / "deploy" / "grafana" / "dashboards" / "demo-http-latency.json"
DATASOURCE = PROJECT_ROOT / "deploy/grafana/provisioning/datasources/stackstream-kairosdb.yaml"
METRIC = "demo.http.latency_ms"
SERIES = [("shop", "web1"), ("shop", "web2"), ("pay", "web1"), ("pay", "web3")]


def grafana_aggregator(aggregator: dict[str, Any]) -> dict[str, Any]:
    """One target aggregator as the plugin sends it: alignment, sampling and plain parameters."""
    converted: dict[str, Any] = {"name": aggregator["name"]}
    sampling: dict[str, Any] = {}
    for parameter in aggregator["parameters"]:
        kind, value = parameter["type"], parameter["value"]
        if kind == "alignment":
            if value == "SAMPLING":
                converted["align_sampling"] = True
            elif value == "START_TIME":
                converted["align_start_time"] = True
        elif kind == "sampling":
            sampling["value"] = value
        elif kind == "sampling_unit":
            sampling["unit"] = value.lower()
        else:
            converted[parameter["name"]] = value
    if sampling:
        converted["sampling"] = sampling
    return converted


def grafana_body(targets: list[dict[str, Any]], start_ms: int, end_ms: int) -> dict[str, Any]:
    """The body of the plugin's panel query: range in whole seconds, one metric per target."""
    metrics = []
    for target in targets:
        query = target["query"]
        metric: dict[str, Any] = {"name": query["metricName"], "tags": query["tags"]}
        if query["groupBy"]["tags"]:
            metric["group_by"] = [{"name": "tag", "tags": query["groupBy"]["tags"]}]
        metric["aggregators"] = [grafana_aggregator(a) for a in query["aggregators"]]
        metrics.append(metric)
    return {
        "start_absolute": start_ms // 1000 * 1000,
        "end_absolute": end_ms // 1000 * 1000,
        "cache_time": 0,
        "metrics": metrics,
    }


def dashboard_targets() -> list[tuple[str, list[dict[str, Any]]]]:
    document = json.loads(DASHBOARD.read_text())
    return [(panel["title"], panel["targets"]) for panel in document["panels"]]


def test_the_dashboard_and_data_source_files_fit_the_worker() -> None:
    import yaml

    sources = yaml.safe_load(DATASOURCE.read_text())["datasources"]
    assert [s["type"] for s in sources] == ["grafana-kairosdb-datasource"]
    uid = sources[0]["uid"]
    panels = dashboard_targets()
    assert len(panels) == 4
    now = int(time.time() * 1000)
    for title, targets in panels:
        for target in targets:
            assert target["datasource"]["uid"] == uid, title
            assert target["query"]["metricName"] == METRIC
        query = parse_query(grafana_body(targets, now - 6 * 3_600_000, now), now)
        assert [m.name for m in query.metrics] == [METRIC] * len(targets), title
        assert query.metrics[0].aggregators[0].sampling.fixed_ms == 60_000, title


def _post(url: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def _exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


@pytest.mark.integration
def test_grafana_requests_get_kairosdb_answers(stack_settings: Settings, tmp_path: Path) -> None:
    settings = stack_settings.model_copy(
        update={"domains": "bus,metrics", "metrics_telnet_port": 0, "metrics_rollup_grace_s": 0.0}
    )
    apply_topics(settings)
    now = int(time.time() * 1000)
    last_minute = now - now % 60_000 - 5 * 60_000
    first_minute = last_minute - 89 * 60_000
    points: dict[tuple[str, str], list[list[float]]] = {}
    for index, (service, host) in enumerate(SERIES):
        points[(service, host)] = [
            [minute + second * 1000, float(5 + (minute // 60_000 * 7 + second + index * 13) % 97)]
            for minute in range(first_minute, last_minute + 60_000, 60_000)
            for second in range(0, 60, 10)
        ]
    total = sum(len(p) for p in points.values())
    base = f"http://127.0.0.1:{settings.web_port}/api/v1"
    log_path = tmp_path / "worker.log"
    with running_worker(settings, log_path):
        eventually(lambda: get_json(f"{base}/version")[0] == 200, 60, "worker up", log_path)
        body = [
            {"name": METRIC, "tags": {"service": s, "host": h}, "datapoints": p}
            for (s, h), p in points.items()
        ]
        assert _post(f"{base}/datapoints", body)[0] == 204
        range_start, range_end = first_minute - 600_000, now

        def stored() -> bool:
            targets = dict(dashboard_targets())["request rate per service"]
            status, answer = _post(f"{base}/datapoints/query", grafana_body(targets, 0, now))
            return status == 200 and answer["queries"][0]["sample_size"] == total

        eventually(stored, 90, f"{total} points stored", log_path)

        # Metric list and tag keys/values, as the query editor asks for them.
        status, names = get_json(f"{base}/metricnames")
        assert status == 200 and METRIC in names["results"]
        status, tags = _post(
            f"{base}/datapoints/query/tags",
            {"cache_time": 0, "metrics": [{"name": METRIC, "tags": {}}], "start_absolute": 0},
        )
        assert status == 200
        assert tags["queries"][0]["results"][0]["tags"] == {
            "host": ["web1", "web2", "web3"],
            "service": ["pay", "shop"],
        }
        status, tags = _post(
            f"{base}/datapoints/query/tags",
            {"cache_time": 0, "metrics": [{"name": METRIC, "tags": {"service": ["pay"]}}],
             "start_absolute": 0},
        )  # fmt: skip
        assert tags["queries"][0]["results"][0]["tags"]["host"] == ["web1", "web3"]

        panels = dict(dashboard_targets())
        for title, quantile in (
            ("latency p50 per service and host", 0.5),
            ("latency p99 per service and host", 0.99),
        ):
            status, answer = _post(
                f"{base}/datapoints/query", grafana_body(panels[title], range_start, range_end)
            )
            assert status == 200, answer
            (query,) = answer["queries"]
            assert query["sample_size"] == total
            results = query["results"]
            assert len(results) == len(SERIES)
            for result in results:
                assert result["name"] == METRIC
                assert result["group_by"][0] == {"name": "type", "type": "number"}
                group = result["group_by"][1]
                assert group["name"] == "tag" and group["tags"] == ["service", "host"]
                key = (group["group"]["service"], group["group"]["host"])
                assert result["tags"] == {"host": [key[1]], "service": [key[0]]}
                series = points[key]
                assert len(result["values"]) == 90
                for timestamp, value in result["values"]:
                    minute = [v for t, v in series if timestamp <= t < timestamp + 60_000]
                    assert timestamp % 60_000 == 0 and len(minute) == 6
                    assert value == pytest.approx(_exact_quantile(minute, quantile), rel=0.02)

        status, answer = _post(
            f"{base}/datapoints/query",
            grafana_body(panels["request rate per service"], range_start, range_end),
        )
        results = {r["group_by"][1]["group"]["service"]: r for r in answer["queries"][0]["results"]}
        assert sorted(results) == ["pay", "shop"]
        for result in results.values():
            assert [v for _, v in result["values"]] == pytest.approx([2 * 6 / 60] * 90)

        status, answer = _post(
            f"{base}/datapoints/query",
            grafana_body(panels["latency p99 over all hosts vs mean"], range_start, range_end),
        )
        p99_all, mean_all = answer["queries"]
        assert (
            "group_by" not in p99_all["results"][0] or len(p99_all["results"][0]["group_by"]) == 1
        )
        every = sorted((t, v) for series in points.values() for t, v in series)
        first_bucket = [v for t, v in every if first_minute <= t < first_minute + 60_000]
        assert mean_all["results"][0]["values"][0] == [
            first_minute,
            pytest.approx(sum(first_bucket) / len(first_bucket)),
        ]
        assert p99_all["results"][0]["values"][0][1] == pytest.approx(
            _exact_quantile(first_bucket, 0.99), rel=0.02
        )
        # An unknown aggregator in a hand-edited target: KairosDB's error shape.
        status, answer = _post(
            f"{base}/datapoints/query",
            {"start_absolute": range_start, "cache_time": 0,
             "metrics": [{"name": METRIC, "aggregators": [{"name": "gaps"}]}]},
        )  # fmt: skip
        assert status == 400 and "aggregators[0]" in answer["errors"][0]
