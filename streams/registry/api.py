"""Eureka's REST API under `/eureka/` and `/eureka/v2/`, plus `/registry/status`.

Writes become registry events (acknowledged by Kafka, then awaited in this worker's table so the
caller reads its own write); reads come from the global tables, so any worker answers. Answers
are XML unless `Accept` contains `json`, gzip when `Accept-Encoding` asks for it.
"""

from __future__ import annotations

import gzip
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiokafka.errors import KafkaError
from faust.exceptions import FaustError
from faust.web import View

from streams.http import BAD_REQUEST, error_body, json_response, query_parameter
from streams.registry.events import registry_event
from streams.registry.model import (
    CANCEL,
    DELETE_STATUS_OVERRIDE,
    METADATA,
    REGISTER,
    RENEW,
    STATUS_OVERRIDE,
    STATUSES,
    AnswerCache,
    InvalidRegistration,
    apps_hashcode,
    delta_view,
    effective_status,
    instance_key,
    is_live,
    renew_outcome,
    validate_instance,
    with_vip,
)
from streams.sdk.eureka import (
    JSON_TYPE,
    XML_TYPE,
    DocumentError,
    parse_register_body,
    render_application,
    render_applications,
    render_instance,
)

if TYPE_CHECKING:
    from streams.app import Runtime
    from streams.registry.agents import Registry

TAG = "registry"
NOT_READY = "this worker is starting or rebalancing and cannot take writes yet; retry shortly"
NOT_TAKEN = "Kafka did not acknowledge the change; it was not applied, retry shortly"
FULL_MAX_AGE_S = 30.0
"""A full fetch's lease timestamps may be this old (Eureka's responseCacheUpdateIntervalMs)."""
DELTA_MAX_AGE_S = 1.0
"""A delta answer is rendered again after this long, so instances leave it as they age out."""
log = logging.getLogger(__name__)


class BadParameter(Exception):
    """A query parameter that cannot be used; answered with 400 naming it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


def wants_json(headers: Mapping[str, str]) -> bool:
    """Eureka's rule: JSON iff the Accept header contains `json`, else XML."""
    return "json" in headers.get("Accept", "").lower()


def _timestamp(query: Mapping[str, str], name: str) -> int | None:
    value = query.get(name)
    if value is None or value == "" or value == "null":
        return None
    try:
        return int(value)
    except ValueError:
        raise BadParameter(name, f"{name} must be epoch milliseconds, not {value!r}") from None


def _status(query: Mapping[str, str], name: str, required: bool) -> str | None:
    value = query.get(name)
    if not value:
        if required:
            raise BadParameter(name, f"missing query parameter {name}")
        return None
    if value.upper() not in STATUSES:
        raise BadParameter(name, f"{name} must be one of {', '.join(STATUSES)}, not {value!r}")
    return value.upper()


def accepts_gzip(request: Any) -> bool:
    return "gzip" in request.headers.get("Accept-Encoding", "").lower()


def register(runtime: Runtime, registry: Registry) -> None:
    app = runtime.app
    answers = AnswerCache()

    def now_ms() -> int:
        return int(time.time() * 1000)

    class Eureka(View):
        """Every Eureka operation, dispatched on the path after `/eureka/` (or `/eureka/v2/`)."""

        def answer(self, request: Any, body: bytes, as_json: bool, status: int = 200) -> Any:
            headers: dict[str, str] = {}
            if accepts_gzip(request) and body:
                body = gzip.compress(body, compresslevel=5)
                headers["Content-Encoding"] = "gzip"
            content_type = JSON_TYPE if as_json else XML_TYPE
            return self.bytes(body, content_type=content_type, status=status, headers=headers)

        def cached_answer(
            self,
            request: Any,
            resource: str,
            as_json: bool,
            max_age_s: float,
            render: Callable[[], bytes],
        ) -> Any:
            """A full or delta answer from the answer cache (compressed there too, if asked)."""
            generation, now = registry.view.generation, time.monotonic()
            body = answers.get((resource, as_json), generation, now, max_age_s, render)
            headers: dict[str, str] = {}
            if accepts_gzip(request):
                body = answers.get(
                    (resource, as_json, "gzip"),
                    generation,
                    now,
                    max_age_s,
                    lambda: gzip.compress(body, compresslevel=5),
                )
                headers["Content-Encoding"] = "gzip"
            content_type = JSON_TYPE if as_json else XML_TYPE
            return self.bytes(body, content_type=content_type, headers=headers)

        def problem(self, status: int, field: str | None, message: str) -> Any:
            return self.json(error_body(field, message), status=status)

        def empty(self, status: int) -> Any:
            return self.bytes(b"", status=status)

        def unavailable(self, reason: str) -> Any:
            """503 + Retry-After: the write was not taken; Eureka clients retry it."""
            return self.json(error_body(None, reason), status=503, headers={"Retry-After": "1"})

        async def published(self, record: dict[str, Any]) -> bool:
            """Produce one event and wait for Kafka's ack; False when it was not taken."""
            try:
                await registry.publish(record)
            except (KafkaError, FaustError) as error:
                log.warning("registry: write not taken, answered 503: %r", error)
                return False
            return True

        @staticmethod
        def parts(path: str) -> list[str]:
            pieces = [piece for piece in path.split("/") if piece]
            if pieces and pieces[0] == "v2":
                pieces = pieces[1:]
            return pieces

        async def get(self, request: Any, path: str = "") -> Any:
            parts = self.parts(path)
            as_json = wants_json(request.headers)
            view = registry.view
            if parts == ["apps"]:

                def render_full() -> bytes:
                    live = view.live()
                    return render_applications(live, "1", apps_hashcode(live), as_json)

                return self.cached_answer(request, "apps", as_json, FULL_MAX_AGE_S, render_full)
            if parts == ["apps", "delta"]:

                def render_delta() -> bytes:
                    retention_ms = int(runtime.settings.registry_delta_retention_s * 1000)
                    entries = view.entries.values()
                    changed, version, hashcode = delta_view(entries, now_ms(), retention_ms)
                    return render_applications(changed, version, hashcode, as_json)

                return self.cached_answer(request, "delta", as_json, DELTA_MAX_AGE_S, render_delta)
            if len(parts) == 2 and parts[0] == "apps":
                name = parts[1].upper()
                members = view.app(name)
                if not members:
                    return self.problem(404, "app", f"no application {name}")
                return self.answer(request, render_application(name, members, as_json), as_json)
            if len(parts) == 3 and parts[0] == "apps":
                entry = registry.entry(parts[1], parts[2])
                if not is_live(entry):
                    return self.problem(404, "id", f"no instance {parts[2]} of {parts[1].upper()}")
                assert entry is not None
                return self.answer(request, render_instance(entry["instance"], as_json), as_json)
            if len(parts) == 2 and parts[0] == "instances":
                for instance in view.live():
                    if instance["instance_id"] == parts[1]:
                        return self.answer(request, render_instance(instance, as_json), as_json)
                return self.problem(404, "id", f"no instance {parts[1]}")
            if len(parts) == 2 and parts[0] in ("vips", "svips"):
                chosen = with_vip(view.live(), parts[1], parts[0] == "svips")
                if not chosen:
                    return self.problem(404, "vip", f"no instance serves {parts[1]}")
                body = render_applications(chosen, "1", apps_hashcode(chosen), as_json)
                return self.answer(request, body, as_json)
            return self.problem(404, "path", f"no Eureka resource at /eureka/{path}")

        async def post(self, request: Any, path: str = "") -> Any:
            parts = self.parts(path)
            if len(parts) != 2 or parts[0] != "apps":
                return self.problem(404, "path", f"POST /eureka/{path} is not an operation")
            body = await request.read()
            try:
                instance = parse_register_body(body, request.headers.get("Content-Type", ""))
                validate_instance(instance, parts[1])
            except (DocumentError, InvalidRegistration) as error:
                return self.problem(400, error.field, error.reason)
            if not registry.ready():
                return self.unavailable(NOT_READY)
            stamp = now_ms()
            taken = await self.published(
                registry_event(
                    REGISTER,
                    instance["app"],
                    instance["instance_id"],
                    timestamp_ms=stamp,
                    last_dirty_timestamp_ms=instance["last_dirty_timestamp_ms"],
                    status=instance["status"],
                    instance=instance,
                    origin=request.remote,
                )
            )
            if not taken:
                return self.unavailable(NOT_TAKEN)
            await registry.wait_for(instance_key(instance["app"], instance["instance_id"]), stamp)
            return self.empty(204)

        async def put(self, request: Any, path: str = "") -> Any:
            parts = self.parts(path)
            if not registry.ready():
                return self.unavailable(NOT_READY)
            try:
                if len(parts) == 3 and parts[0] == "apps":
                    return await self.heartbeat(request, parts[1], parts[2])
                if len(parts) == 4 and parts[0] == "apps" and parts[3] == "status":
                    return await self.override(request, parts[1], parts[2])
                if len(parts) == 4 and parts[0] == "apps" and parts[3] == "metadata":
                    return await self.metadata(request, parts[1], parts[2])
            except BadParameter as error:
                return self.problem(400, error.field, error.reason)
            return self.problem(404, "path", f"PUT /eureka/{path} is not an operation")

        async def delete(self, request: Any, path: str = "") -> Any:
            parts = self.parts(path)
            if not registry.ready():
                return self.unavailable(NOT_READY)
            try:
                if len(parts) == 3 and parts[0] == "apps":
                    return await self.change(request, CANCEL, parts[1], parts[2])
                if len(parts) == 4 and parts[0] == "apps" and parts[3] == "status":
                    query = request.query
                    return await self.change(
                        request,
                        DELETE_STATUS_OVERRIDE,
                        parts[1],
                        parts[2],
                        status=_status(query, "value", required=False),
                        last_dirty_timestamp_ms=_timestamp(query, "lastDirtyTimestamp"),
                    )
            except BadParameter as error:
                return self.problem(400, error.field, error.reason)
            return self.problem(404, "path", f"DELETE /eureka/{path} is not an operation")

        async def heartbeat(self, request: Any, app_name: str, instance_id: str) -> Any:
            query = request.query
            last_dirty = _timestamp(query, "lastDirtyTimestamp")
            reported = _status(query, "status", required=False)
            overridden = _status(query, "overriddenstatus", required=False)
            entry = registry.entry(app_name, instance_id)
            outcome = renew_outcome(entry, last_dirty)
            if is_live(entry):
                assert entry is not None
                document = entry["instance"]
                status = effective_status(document["status"], entry.get("override"), None)
                if status != "UNKNOWN":
                    taken = await self.published(
                        registry_event(
                            RENEW,
                            app_name,
                            instance_id,
                            timestamp_ms=now_ms(),
                            last_dirty_timestamp_ms=last_dirty,
                            status=reported,
                            overridden_status=overridden,
                            origin=request.remote,
                        )
                    )
                    if not taken:
                        return self.unavailable(NOT_TAKEN)
            if outcome == 404:
                return self.problem(404, "id", f"no lease for {instance_id}: register again")
            return self.empty(200)

        async def override(self, request: Any, app_name: str, instance_id: str) -> Any:
            query = request.query
            return await self.change(
                request,
                STATUS_OVERRIDE,
                app_name,
                instance_id,
                overridden_status=_status(query, "value", required=True),
                last_dirty_timestamp_ms=_timestamp(query, "lastDirtyTimestamp"),
            )

        async def metadata(self, request: Any, app_name: str, instance_id: str) -> Any:
            pairs = {key: request.query.getone(key) for key in request.query}
            return await self.change(request, METADATA, app_name, instance_id, metadata=pairs)

        async def change(
            self, request: Any, action: str, app_name: str, instance_id: str, **fields: Any
        ) -> Any:
            key = instance_key(app_name, instance_id)
            if not is_live(registry.view.get(key)):
                return self.problem(404, "id", f"no instance {instance_id} of {app_name.upper()}")
            stamp = now_ms()
            taken = await self.published(
                registry_event(
                    action,
                    app_name,
                    instance_id,
                    timestamp_ms=stamp,
                    origin=request.remote,
                    **fields,
                )
            )
            if not taken:
                return self.unavailable(NOT_TAKEN)
            await registry.wait_for(key, stamp)
            return self.empty(200)

    app.page("/eureka/{path:.*}")(Eureka)

    @app.page("/registry/status")
    class Status(View):
        """Self-preservation and lease accounting, as this worker sees the registry."""

        async def get(self, request: Any) -> Any:
            return self.json(registry.status())

    _document(runtime)


def _document(runtime: Runtime) -> None:
    openapi = runtime.openapi
    openapi.describe_tag(TAG, "Eureka-compatible service registry (also under /eureka/v2/)")
    xml_or_json = {
        "description": "XML unless Accept contains json; gzip when Accept-Encoding asks",
        "content": {"application/xml": {}, "application/json": {}},
    }
    not_found = json_response("unknown app, instance or VIP")
    app_path = {"name": "app", "in": "path", "required": True, "schema": {"type": "string"}}
    id_path = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    dirty = query_parameter("lastDirtyTimestamp", "the client's lastDirtyTimestamp (ms)")
    openapi.add(
        "/eureka/apps",
        {"get": {"summary": "all applications", "responses": {"200": xml_or_json}}},
        TAG,
    )
    openapi.add(
        "/eureka/apps/delta",
        {
            "get": {
                "summary": "instances changed in the delta retention window, with actionType",
                "responses": {"200": xml_or_json},
            }
        },
        TAG,
    )
    openapi.add(
        "/eureka/apps/{app}",
        {
            "get": {
                "summary": "one application",
                "parameters": [app_path],
                "responses": {"200": xml_or_json, "404": not_found},
            },
            "post": {
                "summary": "register an instance (JSON {instance:{...}} or XML <instance>)",
                "parameters": [app_path],
                "requestBody": {"content": {"application/json": {}, "application/xml": {}}},
                "responses": {"204": {"description": "registered"}, "400": BAD_REQUEST},
            },
        },
        TAG,
    )
    openapi.add(
        "/eureka/apps/{app}/{id}",
        {
            "get": {
                "summary": "one instance",
                "parameters": [app_path, id_path],
                "responses": {"200": xml_or_json, "404": not_found},
            },
            "put": {
                "summary": "heartbeat; 404 means register again",
                "parameters": [
                    app_path,
                    id_path,
                    query_parameter("status", "the client's status"),
                    dirty,
                    query_parameter("overriddenstatus", "the client's override"),
                ],
                "responses": {
                    "200": {"description": "renewed"},
                    "400": BAD_REQUEST,
                    "404": not_found,
                },
            },
            "delete": {
                "summary": "cancel the lease",
                "parameters": [app_path, id_path],
                "responses": {"200": {"description": "cancelled"}, "404": not_found},
            },
        },
        TAG,
    )
    openapi.add(
        "/eureka/apps/{app}/{id}/status",
        {
            "put": {
                "summary": "set a status override",
                "parameters": [
                    app_path,
                    id_path,
                    query_parameter("value", "the new status", required=True),
                    dirty,
                ],
                "responses": {
                    "200": {"description": "overridden"},
                    "400": BAD_REQUEST,
                    "404": not_found,
                },
            },
            "delete": {
                "summary": "remove the status override",
                "parameters": [
                    app_path,
                    id_path,
                    query_parameter("value", "status to fall back to (default UNKNOWN)"),
                    dirty,
                ],
                "responses": {
                    "200": {"description": "removed"},
                    "400": BAD_REQUEST,
                    "404": not_found,
                },
            },
        },
        TAG,
    )
    openapi.add(
        "/eureka/apps/{app}/{id}/metadata",
        {
            "put": {
                "summary": "merge every query pair into the instance metadata",
                "parameters": [app_path, id_path],
                "responses": {"200": {"description": "updated"}, "404": not_found},
            }
        },
        TAG,
    )
    openapi.add(
        "/eureka/instances/{id}",
        {
            "get": {
                "summary": "one instance by id",
                "parameters": [id_path],
                "responses": {"200": xml_or_json, "404": not_found},
            }
        },
        TAG,
    )
    for kind, what in (("vips", "VIP"), ("svips", "secure VIP")):
        openapi.add(
            f"/eureka/{kind}/{{vip}}",
            {
                "get": {
                    "summary": f"applications whose instances serve a {what}",
                    "parameters": [
                        {
                            "name": "vip",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {"200": xml_or_json, "404": not_found},
                }
            },
            TAG,
        )
    unavailable = {
        "description": "starting or rebalancing, or Kafka did not ack: not taken; retry",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    for path, item in openapi.paths.items():
        for method in ("post", "put", "delete"):
            if path.startswith("/eureka/") and method in item:
                item[method]["responses"]["503"] = unavailable
    openapi.add(
        "/registry/status",
        {
            "get": {
                "summary": "self-preservation state and lease accounting",
                "responses": {"200": json_response("expected clients, threshold, renewals")},
            }
        },
        TAG,
    )
