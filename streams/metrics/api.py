"""HTTP views of metrics: KairosDB's REST API (/api/v1/...), telnet `put`, and our own views.

Writes produce MetricPoint records to `metrics.points` and answer after the broker's
acknowledgement; reads come from Cassandra, which every worker can reach. KairosDB clients get
KairosDB's error shape `{"errors": [...]}`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
import uuid
from typing import TYPE_CHECKING, Any

from faust.web import View

from streams.app import routed_or_unavailable
from streams.http import BAD_REQUEST, error_body, json_response, query_parameter
from streams.metrics.deletes import delete_records, whole_metric_record
from streams.metrics.events import DELETE_SCHEMA, DELETES_TOPIC, POINT_SCHEMA, POINTS_TOPIC
from streams.metrics.ingest import KairosErrors, decompress, parse_datapoints, parse_put
from streams.metrics.model import cardinality_level, is_listed, tags_from_text
from streams.metrics.query import answer_metric, parse_query, plan_metric, tags_answer
from streams.metrics.tables import METRIC_NAMES, TAG_NAMES, TAG_VALUES

if TYPE_CHECKING:
    import faust

    from streams.app import Runtime
    from streams.metrics.store import MetricStore

log = logging.getLogger(__name__)
KAIROS_VERSION = "KairosDB 1.2.2"
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Content-Encoding, Authorization",
}
KAIROS_ERROR = json_response(
    "KairosDB's error shape",
    {"type": "object", "properties": {"errors": {"type": "array", "items": {"type": "string"}}}},
)


def register(
    runtime: Runtime, latest: faust.Table, points: faust.TopicT, store: MetricStore
) -> None:
    app = runtime.app
    settings = runtime.settings

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
            series = [
                value
                for key, value in latest.items()
                if key.startswith(prefix) and value.get("name") == metric and is_listed(value)
            ]
            series.sort(key=lambda entry: sorted(entry["tags"].items()))
            return self.json({"metric": metric, "series": series})

    class KairosView(View):
        """A KairosDB endpoint: CORS on every answer, `{"errors": [...]}` on bad input."""

        def kairos(self, body: Any, status: int = 200) -> Any:
            return self.json(body, status=status, headers=CORS_HEADERS)

        def no_content(self) -> Any:
            return self.bytes(b"", status=204, headers=CORS_HEADERS)

        def errors(self, problem: KairosErrors) -> Any:
            return self.kairos(problem.body(), status=400)

        async def options(self, request: Any) -> Any:
            return self.no_content()

    async def send_points(records: list[dict[str, Any]]) -> None:
        await asyncio.gather(
            *(
                runtime.send(POINTS_TOPIC, record["name"], POINT_SCHEMA, record)
                for record in records
            )
        )

    @app.page("/api/v1/datapoints")
    class AddDatapoints(KairosView):
        """KairosDB `POST /api/v1/datapoints`: 204 once every point is on the bus."""

        async def post(self, request: Any) -> Any:
            limit = settings.metrics_max_request_bytes
            try:
                body = await request.read()
                if len(body) > limit:
                    raise KairosErrors([f"request body is larger than {limit} bytes"])
                body = decompress(
                    body,
                    request.headers.get("Content-Encoding", ""),
                    request.headers.get("Content-Type", ""),
                    limit,
                )
                records = parse_datapoints(body)
            except KairosErrors as problem:
                return self.errors(problem)
            await send_points(records)
            return self.no_content()

    async def run_query(document: Any) -> dict[str, Any]:
        query = parse_query(document, int(time.time() * 1000))
        await store.open()
        answers = []
        for metric in query.metrics:
            plan = plan_metric(metric, query.start, query.end)
            texts = [
                text
                for text in await store.series_tags(metric.name, query.start, query.end)
                if metric.matches(tags_from_text(text))
            ]
            series = await store.series_data(metric.name, texts, plan)
            answers.append(answer_metric(metric, query.start, query.end, series))
        return {"queries": answers}

    def json_document(raw: bytes | str) -> Any:
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise KairosErrors([f"Invalid json: {error}"]) from None

    @app.page("/api/v1/datapoints/query")
    class QueryDatapoints(KairosView):
        """KairosDB `POST /api/v1/datapoints/query` (or `GET ?query=<JSON>`)."""

        async def post(self, request: Any) -> Any:
            try:
                return self.kairos(await run_query(json_document(await request.read())))
            except KairosErrors as problem:
                return self.errors(problem)

        async def get(self, request: Any) -> Any:
            raw = request.query.get("query")
            if raw is None:
                return self.errors(KairosErrors(["query parameter is missing"]))
            try:
                return self.kairos(await run_query(json_document(urllib.parse.unquote(raw))))
            except KairosErrors as problem:
                return self.errors(problem)

    async def send_deletes(records: list[dict[str, Any]]) -> None:
        requested_ms = int(time.time() * 1000)
        await asyncio.gather(
            *(
                runtime.send(
                    DELETES_TOPIC,
                    record["metric"],
                    DELETE_SCHEMA,
                    record | {"delete_id": str(uuid.uuid4()), "requested_ms": requested_ms},
                )
                for record in records
            )
        )

    @app.page("/api/v1/datapoints/delete")
    class DeleteDatapoints(KairosView):
        """KairosDB `POST /api/v1/datapoints/delete`: a query body; 204 once the delete is on
        the bus (the agent applies it to points and rollups moments later)."""

        async def post(self, request: Any) -> Any:
            try:
                document = json_document(await request.read())
                records = delete_records(document, int(time.time() * 1000))
            except KairosErrors as problem:
                return self.errors(problem)
            await send_deletes(records)
            return self.no_content()

    @app.page("/api/v1/metric/{name}")
    class DeleteMetric(KairosView):
        """KairosDB `DELETE /api/v1/metric/{name}`: every point, series and the name."""

        async def delete(self, request: Any, name: str) -> Any:
            if not name.strip():
                return self.errors(KairosErrors(["metricName may not be empty"]))
            await send_deletes([whole_metric_record(name)])
            return self.no_content()

    @app.page("/api/v1/datapoints/query/tags")
    class QueryTags(KairosView):
        """KairosDB `POST /api/v1/datapoints/query/tags`: tag values of matching series."""

        async def post(self, request: Any) -> Any:
            try:
                document = json_document(await request.read())
                if isinstance(document, dict):
                    document.setdefault("start_absolute", 0)
                query = parse_query(document, int(time.time() * 1000))
            except KairosErrors as problem:
                return self.errors(problem)
            await store.open()
            answers = []
            for metric in query.metrics:
                texts = await store.series_tags(metric.name, query.start, query.end)
                tag_sets = [json.loads(text) for text in texts]
                answers.append(tags_answer(metric.name, tag_sets, metric))
            return self.kairos({"queries": answers})

    def string_list(path: str, kind: str, doc: str) -> None:
        class Strings(KairosView):
            async def get(self, request: Any) -> Any:
                await store.open()
                prefix = request.query.get("prefix", "")
                return self.kairos({"results": await store.strings(kind, prefix)})

        Strings.__doc__ = doc
        app.page(path, name=f"kairos_{kind}")(Strings)

    string_list("/api/v1/metricnames", METRIC_NAMES, "KairosDB metric names (`?prefix=`).")
    string_list("/api/v1/tagnames", TAG_NAMES, "KairosDB tag names (removed in 1.3; old clients).")
    string_list("/api/v1/tagvalues", TAG_VALUES, "KairosDB tag values (removed in 1.3).")

    @app.page("/api/v1/version")
    class Version(KairosView):
        async def get(self, request: Any) -> Any:
            return self.kairos({"version": KAIROS_VERSION})

    @app.page("/api/v1/health/status")
    class HealthStatus(KairosView):
        async def get(self, request: Any) -> Any:
            return self.kairos(["JVM-Thread-Deadlock: OK", f"Datastore-Query: {await probe()}"])

    @app.page("/api/v1/health/check")
    class HealthCheck(KairosView):
        async def get(self, request: Any) -> Any:
            if await probe() == "OK":
                return self.no_content()
            return self.kairos({"errors": ["the datastore does not answer"]}, status=500)

    async def probe() -> str:
        try:
            await asyncio.wait_for(store.open(), 10)
            await asyncio.wait_for(store.strings(METRIC_NAMES, "\x00"), 5)
        except Exception as error:  # any datastore failure is the health answer, not a crash
            return f"FAIL ({type(error).__name__})"
        return "OK"

    @app.page("/metrics/cardinality")
    class Cardinality(View):
        """Series per metric against the limit, with the worst tag key and rejections."""

        async def get(self, request: Any) -> Any:
            await store.open()
            rows = await store.cardinality()
            for row in rows:
                row["level"] = cardinality_level(row["series"], row["series_limit"])
            rows.sort(key=lambda row: (-row["series"], row["metric"]))
            stats = runtime.context.get("metrics.stats")
            return self.json(
                {
                    "metrics": rows,
                    "late_points": getattr(stats, "late_points", 0),
                    "telnet": telnet_state,
                }
            )

    telnet_state: dict[str, Any] = {"port": settings.metrics_telnet_port, "listening": False}

    async def serve_telnet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as partial:
                    line = partial.partial
                    if not line.strip():
                        break
                except asyncio.LimitOverrunError:
                    limit = settings.metrics_telnet_max_line_bytes
                    writer.write(f"error: line longer than {limit} bytes\n".encode())
                    await writer.drain()
                    break
                text = line.decode("utf-8", errors="replace").strip()
                if not text:
                    continue
                command = text.split(maxsplit=1)[0]
                if command == "version":
                    writer.write(f"{KAIROS_VERSION}\n".encode())
                elif command in ("put", "putm"):
                    try:
                        await send_points([parse_put(text)])
                    except KairosErrors as problem:
                        writer.write(f"{command}: {problem}\n".encode())
                elif command == "exit":
                    break
                else:
                    writer.write(f"unknown command: {command}\n".encode())
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    if settings.metrics_telnet_port:

        @app.task
        async def telnet_server() -> None:
            try:
                server = await asyncio.start_server(
                    serve_telnet,
                    settings.web_host,
                    settings.metrics_telnet_port,
                    limit=settings.metrics_telnet_max_line_bytes,
                )
            except OSError as error:
                log.error(
                    "telnet put port %d is not available (%s); set STACKSTREAM_METRICS_TELNET_PORT",
                    settings.metrics_telnet_port,
                    error,
                )
                return
            telnet_state["listening"] = True

            @app.on_before_shutdown.connect
            async def close_telnet(app: object, **kwargs: object) -> None:
                server.close()

    _document(runtime)


def _document(runtime: Runtime) -> None:
    openapi = runtime.openapi
    openapi.describe_tag("metrics", "metric points and series")
    openapi.describe_tag("kairosdb", "KairosDB-compatible REST API (Grafana's KairosDB source)")
    openapi.add(
        "/metrics/latest",
        {
            "get": {
                "summary": "the newest point of every series of a metric",
                "parameters": [query_parameter("metric", "metric name", required=True)],
                "responses": {
                    "200": json_response(
                        "`{metric, series: [{name, tags, timestamp_ms, value, accepted_ms}]}` "
                        "(`accepted_ms`: the Kafka timestamp of the point's record); series "
                        "whose newest point was deleted are not listed"
                    ),
                    "400": BAD_REQUEST,
                    "503": json_response("the worker is starting or rebalancing; retry"),
                },
            }
        },
        "metrics",
    )
    openapi.add(
        "/metrics/cardinality",
        {
            "get": {
                "summary": "series per metric against the limit, worst tag key, rejections",
                "responses": {"200": json_response("`{metrics: [...], late_points, telnet}`")},
            }
        },
        "metrics",
    )
    query_body = {
        "description": "KairosDB query: start_absolute|start_relative, end_*, metrics[]",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
    answer = json_response(
        "`{queries: [{sample_size, results: [{name, group_by, tags, values}]}]}`"
    )
    no_content = {"description": "accepted"}
    openapi.add(
        "/api/v1/datapoints",
        {
            "post": {
                "summary": "add data points (JSON array; gzip accepted); 204 after the broker ack",
                "requestBody": {
                    "content": {"application/json": {"schema": {"type": "array"}}},
                },
                "responses": {"204": no_content, "400": KAIROS_ERROR},
            },
            "options": {"summary": "CORS preflight", "responses": {"204": no_content}},
        },
        "kairosdb",
    )
    openapi.add(
        "/api/v1/datapoints/query",
        {
            "post": {
                "summary": "query data points with tags, group_by and aggregators",
                "requestBody": query_body,
                "responses": {"200": answer, "400": KAIROS_ERROR},
            },
            "get": {
                "summary": "the same query as `?query=<JSON>`",
                "parameters": [query_parameter("query", "the query as JSON", required=True)],
                "responses": {"200": answer, "400": KAIROS_ERROR},
            },
        },
        "kairosdb",
    )
    openapi.add(
        "/api/v1/datapoints/query/tags",
        {
            "post": {
                "summary": "tag names and values of the series a query matches",
                "requestBody": query_body,
                "responses": {"200": answer, "400": KAIROS_ERROR},
            }
        },
        "kairosdb",
    )
    for path, what in (
        ("/api/v1/metricnames", "metric names"),
        ("/api/v1/tagnames", "tag names"),
        ("/api/v1/tagvalues", "tag values"),
    ):
        openapi.add(
            path,
            {
                "get": {
                    "summary": f"all {what}",
                    "parameters": [query_parameter("prefix", "only names starting with this")],
                    "responses": {"200": json_response("`{results: [...]}`")},
                }
            },
            "kairosdb",
        )
    openapi.add(
        "/api/v1/datapoints/delete",
        {
            "post": {
                "summary": "delete the points of the query's series in its time range; 204 after "
                "the broker ack of the delete event (applied to points and rollups moments later)",
                "requestBody": query_body,
                "responses": {"204": no_content, "400": KAIROS_ERROR},
            },
            "options": {"summary": "CORS preflight", "responses": {"204": no_content}},
        },
        "kairosdb",
    )
    openapi.add(
        "/api/v1/metric/{name}",
        {
            "delete": {
                "summary": "delete a metric: all its points, series and its name; 204 after the "
                "broker ack of the delete event",
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {"204": no_content, "400": KAIROS_ERROR},
            },
            "options": {"summary": "CORS preflight", "responses": {"204": no_content}},
        },
        "kairosdb",
    )
    openapi.add(
        "/api/v1/version",
        {"get": {"summary": "version", "responses": {"200": json_response("`{version}`")}}},
        "kairosdb",
    )
    openapi.add(
        "/api/v1/health/status",
        {"get": {"summary": "health checks", "responses": {"200": json_response("list")}}},
        "kairosdb",
    )
    openapi.add(
        "/api/v1/health/check",
        {
            "get": {
                "summary": "204 when the datastore answers, 500 otherwise",
                "responses": {"204": no_content, "500": KAIROS_ERROR},
            }
        },
        "kairosdb",
    )
