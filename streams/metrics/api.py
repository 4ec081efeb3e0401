"""HTTP views of metric state: the newest point of each series of a metric."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from faust.web import View

from streams.app import routed_or_unavailable
from streams.http import BAD_REQUEST, error_body, json_response, query_parameter

if TYPE_CHECKING:
    import faust

    from streams.app import Runtime


def register(runtime: Runtime, latest: faust.Table, points: faust.TopicT) -> None:
    app = runtime.app

    @app.page("/metrics/latest")
    class LatestPoints(View):
        """`GET /metrics/latest?metric=NAME`: newest point per series, served by the owner."""

        async def get(self, request: Any) -> Any:
            metric = request.query.get("metric", "").strip()
            if not metric:
                return self.json(error_body("metric", "missing query parameter"), status=400)
            return await routed_or_unavailable(self, lambda: self._owned(request, metric))

        @app.topic_route(points, query_param="metric")
        async def _owned(self, request: Any, metric: str) -> Any:
            prefix = f"{metric}|"
            series = [value for key, value in latest.items() if key.startswith(prefix)]
            series.sort(key=lambda entry: sorted(entry["tags"].items()))
            return self.json({"metric": metric, "series": series})

    runtime.openapi.describe_tag("metrics", "metric points and series")
    runtime.openapi.add(
        "/metrics/latest",
        {
            "get": {
                "summary": "the newest point of every series of a metric",
                "parameters": [query_parameter("metric", "metric name", required=True)],
                "responses": {
                    "200": json_response("`{metric, series: [{name, tags, timestamp_ms, value}]}`"),
                    "400": BAD_REQUEST,
                    "503": json_response("the worker is starting or rebalancing; retry"),
                },
            }
        },
        "metrics",
    )
