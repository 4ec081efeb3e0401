"""HTTP views of the log domain: search indexed lines, and ingest NDJSON lines from any app."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout
from elasticsearch import ApiError, AsyncElasticsearch
from faust.web import View

from streams.http import BAD_REQUEST, error_body, json_response, query_parameter
from streams.logs.events import RECORD_SCHEMA, RECORDS_TOPIC
from streams.logs.model import (
    LEVELS,
    MAX_PAGE_SIZE,
    ParameterError,
    parse_ndjson_line,
    parse_search,
    search_page,
    secret_masker,
)
from streams.sdk.masking import mask_log_record

if TYPE_CHECKING:
    from streams.app import Runtime

MAX_INGEST_BYTES = 10 * 2**20
TAG = "logs"


def register(runtime: Runtime) -> None:
    app = runtime.app
    settings = runtime.settings
    masker = secret_masker(settings.logs_secret_patterns, settings.logs_mask_default_secrets)

    @app.page("/logs/search")
    class SearchLogs(View):
        """`GET /logs/search`: indexed lines by app, level, time, text and trace id, paged.

        A client per request: searches are few, and it is closed with the request."""

        async def get(self, request: Any) -> Any:
            try:
                search = parse_search(dict(request.query))
            except ParameterError as error:
                return self.json(error_body(error.field, error.message), status=400)
            arguments = search.search_arguments(settings.elasticsearch_index_prefix)
            try:
                async with AsyncElasticsearch(settings.elasticsearch, request_timeout=15) as es:
                    response = await es.search(**arguments)
            except (ApiError, TransportConnectionError, ConnectionTimeout) as error:
                return self.json(
                    error_body(None, f"Elasticsearch cannot answer: {error}"), status=503
                )
            return self.json(search_page(search, response.body))

    @app.page("/logs/ingest")
    class IngestLogs(View):
        """`POST /logs/ingest`: NDJSON log lines; good lines are on the bus before the answer."""

        async def post(self, request: Any) -> Any:
            if (request.content_length or 0) > MAX_INGEST_BYTES:
                return self.json(
                    error_body("body", f"at most {MAX_INGEST_BYTES} bytes per request"),
                    status=413,
                )
            default_service = request.query.get("service", "").strip() or None
            text = (await request.read()).decode("utf-8", "replace")
            now_us = time.time_ns() // 1000
            accepted: list[dict[str, Any]] = []
            errors: list[dict[str, Any]] = []
            for number, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    record = parse_ndjson_line(line, number, now_us, default_service)
                    runtime.codec.encode(RECORD_SCHEMA, record)
                except ParameterError as error:
                    errors.append({"line": number, "field": error.field, "error": error.message})
                    continue
                except ValueError as error:
                    errors.append({"line": number, "field": "line", "error": str(error)})
                    continue
                accepted.append(mask_log_record(masker, record))
            if not accepted and not errors:
                return self.json(error_body("body", "no log lines; send NDJSON"), status=400)
            try:
                await asyncio.gather(
                    *(
                        runtime.send(RECORDS_TOPIC, record["service"], RECORD_SCHEMA, record)
                        for record in accepted
                    )
                )
            except Exception as error:
                return self.json(
                    error_body(None, f"the log bus did not acknowledge the lines: {error}"),
                    status=503,
                )
            answer = {"accepted": len(accepted), "rejected": len(errors), "errors": errors}
            if not accepted:
                first = errors[0]
                answer |= error_body(first["field"], f"no line was accepted: {first['error']}")
                return self.json(answer, status=400)
            return self.json(answer)

    runtime.openapi.describe_tag(TAG, "log lines: search and NDJSON ingest")
    level_schema = {"type": "string", "description": f"one or more of {', '.join(LEVELS)}"}
    runtime.openapi.add(
        "/logs/search",
        {
            "get": {
                "summary": "search indexed log lines, newest first",
                "description": (
                    "Every filter is a parameter; `q` is a simple_query_string over message and "
                    'error.message (words AND-ed, `"phrase"`, `-not`, `prefix*`), never raw '
                    "query DSL. Secrets were masked before indexing."
                ),
                "parameters": [
                    query_parameter("service", "application (service.name)"),
                    query_parameter("level", "exact levels, comma-separated", schema=level_schema),
                    query_parameter("min_level", "this level and above", schema=level_schema),
                    query_parameter("from", "start, inclusive: ISO-8601 or epoch ms"),
                    query_parameter("to", "end, exclusive: ISO-8601 or epoch ms"),
                    query_parameter("q", "free text over message and error.message"),
                    query_parameter("trace_id", "trace.id of the lines"),
                    query_parameter(
                        "page", "1-based page", schema={"type": "integer", "minimum": 1}
                    ),
                    query_parameter(
                        "size",
                        "lines per page",
                        schema={"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
                    ),
                ],
                "responses": {
                    "200": json_response(
                        "`{total, page, size, next_page, lines: [ECS documents]}`",
                        {
                            "type": "object",
                            "properties": {
                                "total": {"type": "integer"},
                                "page": {"type": "integer"},
                                "size": {"type": "integer"},
                                "next_page": {"type": ["integer", "null"]},
                                "lines": {"type": "array", "items": {"type": "object"}},
                            },
                        },
                    ),
                    "400": BAD_REQUEST,
                    "503": json_response("Elasticsearch is not answering"),
                },
            }
        },
        TAG,
    )
    runtime.openapi.add(
        "/logs/ingest",
        {
            "post": {
                "summary": "ingest NDJSON log lines from any application",
                "description": (
                    "One JSON object per line with ECS names, dotted or nested: `message` "
                    "(required), `service.name` (or `?service=`), `@timestamp` (ISO-8601 or "
                    "epoch ms; default now), `log.level` (default INFO), `log.logger`, "
                    "`host.name`, `trace.id`, `span.id`, `error.type`, `error.message`, "
                    "`error.stack_trace`, `labels`, `event.sequence`. Accepted lines are "
                    "acknowledged by Kafka before the answer; governance then applies."
                ),
                "parameters": [query_parameter("service", "service.name for lines without one")],
                "requestBody": {
                    "required": True,
                    "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
                },
                "responses": {
                    "200": json_response(
                        "`{accepted, rejected, errors: [{line, field, error}]}`: per-line errors",
                    ),
                    "400": BAD_REQUEST,
                    "413": BAD_REQUEST,
                    "503": json_response("Kafka did not acknowledge the lines"),
                },
            }
        },
        TAG,
    )
