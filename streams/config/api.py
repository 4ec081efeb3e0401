"""HTTP views of the config centre: Apollo's client API and the admin API.

Client API (`/configs`, `/configfiles`, `/notifications/v2`) answers as Apollo's config service
does, so Apollo clients work unchanged; any worker answers from its `ConfigState`. Admin writes
(`/config/admin/...`, bearer token) produce records, wait for the broker's acknowledgement and
for this worker to have applied them (so the next call reads its own write), and produce an
audit event for every action, refused ones included.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from faust.web import View

from streams.config import model
from streams.config.events import (
    AUDIT_SCHEMA,
    AUDIT_TOPIC,
    DRAFTS_TOPIC,
    HISTORY_TOPIC,
    RELEASE_SCHEMA,
    RELEASES_TOPIC,
)
from streams.config.model import ConfigError, Record, namespace_key
from streams.http import BAD_REQUEST, error_body, json_response, query_parameter

if TYPE_CHECKING:
    from streams.app import Runtime
    from streams.config.tables import ConfigState

TAG = "config"
ADMIN_TAG = "config admin"
ADMIN = "/config/admin"
NAMESPACE_PATH = ADMIN + "/apps/{app_id}/clusters/{cluster}/namespaces/{namespace}"
APPLY_TIMEOUT_SECONDS = 10.0


class Unauthorized(ConfigError):
    status = 401


class NotApplied(ConfigError):
    """The broker acknowledged the write but this worker did not see it in time."""

    status = 503


def _now_ms() -> int:
    return int(time.time() * 1000)


def _answer(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Turn a ConfigError into its status and a JSON body naming the field."""

    @functools.wraps(handler)
    async def wrapper(self: View, request: Any, **params: Any) -> Any:
        try:
            return await handler(self, request, **params)
        except ConfigError as error:
            return self.json(error_body(error.field, error.message), status=error.status)

    return wrapper


def _error_response(error: ConfigError) -> web.Response:
    return web.json_response(error_body(error.field, error.message), status=error.status)


def register(runtime: Runtime, state: ConfigState) -> None:
    app = runtime.app
    settings = runtime.settings
    index = state.index

    # --- Apollo client API -------------------------------------------------------------------

    def client_release(
        app_id: str, cluster: str, namespace: str, query: Any
    ) -> tuple[Record, model.Served]:
        record = model.resolve_release(
            index.releases, app_id, cluster, namespace, query.get("dataCenter") or None
        )
        if record is None:
            raise model.NotFound(
                "namespace", f"no release of {app_id}/{cluster}/{namespace} (nor in default)"
            )
        labels = model.parse_labels(query.get("label"))
        return record, model.served(record, app_id, query.get("ip") or None, labels)

    async def configs(request: web.Request) -> web.StreamResponse:
        """Apollo `GET /configs/{appId}/{cluster}/{namespace}`: 304 when the key is current."""
        match = request.match_info
        app_id, namespace, query = match["app_id"], match["namespace"], request.query
        try:
            record = model.resolve_release(
                index.releases, app_id, match["cluster"], namespace, query.get("dataCenter") or None
            )
            if record is None:
                raise model.NotFound(
                    "namespace",
                    f"no release of {app_id}/{match['cluster']}/{namespace} (nor in default)",
                )
            release_key, body = state.configs.body(
                record,
                app_id,
                namespace,
                query.get("ip") or None,
                model.parse_labels(query.get("label")),
            )
        except ConfigError as error:
            return _error_response(error)
        if query.get("releaseKey") == release_key:
            return web.Response(status=304)
        return web.Response(body=body, content_type="application/json")

    async def notifications(request: web.Request) -> web.StreamResponse:
        """Apollo long poll: 200 once a watched namespace beats the client's id, else 304."""
        query = request.query
        app_id = query.get("appId", "")
        cluster = query.get("cluster") or model.DEFAULT_CLUSTER
        data_center = query.get("dataCenter") or None
        text = query.get("notifications")
        try:
            if not app_id:
                raise ConfigError("appId", "missing query parameter")
            answer = state.notifications.answer(app_id, cluster, data_center, text)
        except ConfigError as error:
            return _error_response(error)
        if answer.body is not None:
            return web.Response(body=answer.body, content_type="application/json")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.config_long_poll_seconds
        while answer.body is None:
            woken = state.watch(answer.keys)
            try:
                async with asyncio.timeout_at(deadline):
                    await woken.wait()
            except TimeoutError:
                return web.Response(status=304)
            finally:
                state.unwatch(answer.keys)
            answer = state.notifications.answer(app_id, cluster, data_center, text)
        return web.Response(body=answer.body, content_type="application/json")

    # The two requests every client makes per release go straight to aiohttp: Faust's View
    # dispatch, sensors and JSON rendering cost as much again per request (docs/config.md).
    router = app.web.web_app.router
    router.add_get("/configs/{app_id}/{cluster}/{namespace}", configs)
    router.add_get("/notifications/v2", notifications)

    @app.page("/configfiles/json/{app_id}/{cluster}/{namespace}")
    class ConfigFileJson(View):
        """Apollo `GET /configfiles/json/...`: the items as a flat JSON object."""

        @_answer
        async def get(self, request: Any, app_id: str, cluster: str, namespace: str) -> Any:
            _, release = client_release(app_id, cluster, namespace, request.query)
            return self.json(release.configurations)

    @app.page("/configfiles/raw/{app_id}/{cluster}/{namespace}")
    class ConfigFileRaw(View):
        """Apollo `GET /configfiles/raw/...`: a file namespace's content as it was written."""

        @_answer
        async def get(self, request: Any, app_id: str, cluster: str, namespace: str) -> Any:
            record, release = client_release(app_id, cluster, namespace, request.query)
            text = model.namespace_text(record["format"], release.configurations)
            return self.text(text, content_type="text/plain")

    @app.page("/configfiles/{app_id}/{cluster}/{namespace}")
    class ConfigFileText(View):
        """Apollo `GET /configfiles/...`: properties text, or a file namespace's content."""

        @_answer
        async def get(self, request: Any, app_id: str, cluster: str, namespace: str) -> Any:
            record, release = client_release(app_id, cluster, namespace, request.query)
            text = model.namespace_text(record["format"], release.configurations)
            return self.text(text, content_type="text/plain")

    client_parameters = [
        query_parameter("releaseKey", "the key the client holds; 304 when it is current"),
        query_parameter("ip", "client IP, matched against gray rules"),
        query_parameter("label", "client labels (comma-separated), matched against gray rules"),
        query_parameter("dataCenter", "data-center cluster tried before `default`"),
    ]
    path_parameters = [
        {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
        for n in ("appId", "cluster", "namespace")
    ]
    not_released = json_response("nothing released in the cluster, its data center or default")
    doc = runtime.openapi
    doc.describe_tag(TAG, "Apollo-compatible config service (clients)")
    doc.describe_tag(ADMIN_TAG, "config administration; bearer token `config_admin_token`")
    doc.add(
        "/configs/{appId}/{cluster}/{namespace}",
        {
            "get": {
                "summary": "the release a client is served (gray rules and cluster fallback)",
                "parameters": path_parameters + client_parameters,
                "responses": {
                    "200": json_response(
                        "`{appId, cluster, namespaceName, configurations, releaseKey}`"
                    ),
                    "304": {"description": "the client's releaseKey is current"},
                    "404": not_released,
                },
            }
        },
        TAG,
    )
    for path, summary in (
        ("/configfiles/json/{appId}/{cluster}/{namespace}", "the items as a flat JSON object"),
        ("/configfiles/{appId}/{cluster}/{namespace}", "properties text or file content"),
        ("/configfiles/raw/{appId}/{cluster}/{namespace}", "the raw file content"),
    ):
        doc.add(
            path,
            {
                "get": {
                    "summary": summary,
                    "parameters": path_parameters + client_parameters[1:],
                    "responses": {"200": {"description": summary}, "404": not_released},
                }
            },
            TAG,
        )
    doc.add(
        "/notifications/v2",
        {
            "get": {
                "summary": "long poll: answers when a watched namespace changes, else 304",
                "parameters": [
                    query_parameter("appId", "the client's app id", required=True),
                    query_parameter("cluster", "the client's cluster (default `default`)"),
                    query_parameter(
                        "notifications",
                        'URL-encoded JSON `[{"namespaceName":..,"notificationId":..}]`',
                        required=True,
                    ),
                    query_parameter("dataCenter", "data-center cluster also watched"),
                ],
                "responses": {
                    "200": json_response(
                        "`[{namespaceName, notificationId, messages: {details}}]`"
                    ),
                    "304": {"description": "nothing changed within the hold time"},
                    "400": BAD_REQUEST,
                },
            }
        },
        TAG,
    )

    # --- admin API ---------------------------------------------------------------------------

    def authorise(request: Any) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), settings.config_admin_token.encode()
        ):
            raise Unauthorized("Authorization", "expected `Bearer <config_admin_token>`")

    async def body_of(request: Any) -> dict[str, Any]:
        try:
            body = json.loads(await request.read() or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ConfigError("body", f"not JSON: {error}") from None
        if not isinstance(body, dict):
            raise ConfigError("body", "must be a JSON object")
        return body

    def text_field(body: dict[str, Any], name: str, *, required: bool = True) -> str:
        value = body.get(name, "")
        if not isinstance(value, str) or (required and not value.strip()):
            raise ConfigError(name, "must be a non-empty string" if required else "not a string")
        return value

    def draft_of(app_id: str, cluster: str, namespace: str) -> Record:
        draft = index.drafts.get(namespace_key(app_id, cluster, namespace))
        if draft is None:
            raise model.NotFound("namespace", f"{app_id}/{cluster}/{namespace} does not exist")
        return draft

    async def audit(request: Any, request_id: str, action: str, actor: str, **fields: Any) -> None:
        record = model.audit_event(
            action,
            actor,
            now_ms=_now_ms(),
            source_ip=request.remote,
            request_id=request_id,
            **fields,
        )
        await runtime.send(AUDIT_TOPIC, record["app_id"], AUDIT_SCHEMA, record)

    async def write_drafts(drafts: list[Record]) -> None:
        for draft in drafts:
            key = namespace_key(draft["app_id"], draft["cluster"], draft["namespace"])
            await runtime.send(DRAFTS_TOPIC, key, RELEASE_SCHEMA, draft)

        def applied() -> bool:
            return all(
                index.drafts.get(namespace_key(d["app_id"], d["cluster"], d["namespace"]), {}).get(
                    "name"
                )
                == d["name"]
                for d in drafts
            )

        if not await state.until(applied, APPLY_TIMEOUT_SECONDS):
            raise NotApplied("namespace", "written, but not yet visible on this worker; retry")

    async def write_release(record: Record) -> None:
        key = namespace_key(record["app_id"], record["cluster"], record["namespace"])
        await runtime.send(RELEASES_TOPIC, key, RELEASE_SCHEMA, record)
        await runtime.send(HISTORY_TOPIC, key, RELEASE_SCHEMA, record)

        def applied() -> bool:
            live = index.releases.get(key)
            recent = index.history.get(key, [])
            return (
                live is not None
                and live["release_id"] >= record["release_id"]
                and any(r["release_id"] == record["release_id"] for r in recent)
            )

        if not await state.until(applied, APPLY_TIMEOUT_SECONDS):
            raise NotApplied("namespace", "released, but not yet visible on this worker")

    def live_release(app_id: str, cluster: str, namespace: str) -> Record | None:
        return index.releases.get(namespace_key(app_id, cluster, namespace))

    def namespace_view(draft: Record) -> dict[str, Any]:
        release = live_release(draft["app_id"], draft["cluster"], draft["namespace"])
        released_items = release["configurations"] if release else {}
        return {
            "appId": draft["app_id"],
            "clusterName": draft["cluster"],
            "namespaceName": draft["namespace"],
            "format": draft["format"],
            "isPublic": draft["is_public"],
            "items": draft["configurations"],
            "draftRevision": draft["release_id"],
            "lastModifiedBy": draft["author"],
            "unpublishedChanges": model.diff(released_items, draft["configurations"]),
            "release": model.apollo_release_json(release) if release else None,
        }

    @app.page(ADMIN + "/apps")
    class Apps(View):
        """Apps with their clusters and namespaces; POST creates an app."""

        @_answer
        async def get(self, request: Any) -> Any:
            authorise(request)
            return self.json({"apps": index.apps()})

        @_answer
        async def post(self, request: Any) -> Any:
            authorise(request)
            body = await body_of(request)
            app_id = model.check_name("appId", body.get("appId"))
            operator = text_field(body, "operator")
            if app_id in index.apps():
                raise model.Conflict("appId", f"app {app_id!r} exists")
            request_id = uuid.uuid4().hex
            draft = model.new_draft(
                app_id,
                model.DEFAULT_CLUSTER,
                "application",
                author=operator,
                now_ms=_now_ms(),
                request_id=request_id,
            )
            await write_drafts([draft])
            await audit(
                request,
                request_id,
                "CREATE_APP",
                operator,
                app_id=app_id,
                details={"name": body.get("name", app_id), "owner": body.get("owner", operator)},
            )
            return self.json({"appId": app_id, "clusters": index.apps()[app_id]}, status=201)

    @app.page(ADMIN + "/apps/{app_id}/clusters")
    class Clusters(View):
        """POST creates a cluster holding every namespace of the app's default cluster."""

        @_answer
        async def post(self, request: Any, app_id: str) -> Any:
            authorise(request)
            body = await body_of(request)
            cluster = model.check_name("name", body.get("name"))
            operator = text_field(body, "operator")
            clusters = index.apps().get(app_id)
            if clusters is None:
                raise model.NotFound("appId", f"app {app_id!r} does not exist")
            if cluster in clusters:
                raise model.Conflict("name", f"cluster {cluster!r} exists")
            request_id = uuid.uuid4().hex
            now = _now_ms()
            drafts = [
                model.new_draft(
                    app_id,
                    cluster,
                    ns["namespace"],
                    author=operator,
                    now_ms=now,
                    request_id=request_id,
                    is_public=ns["is_public"],
                    fmt=ns["format"],
                )
                for ns in index.namespaces_of(app_id, model.DEFAULT_CLUSTER)
            ]
            await write_drafts(drafts)
            await audit(
                request, request_id, "CREATE_CLUSTER", operator, app_id=app_id, cluster=cluster
            )
            return self.json({"appId": app_id, "cluster": cluster}, status=201)

    @app.page(ADMIN + "/apps/{app_id}/namespaces")
    class Namespaces(View):
        """POST creates a namespace (properties, json, yaml, yml, xml, txt) in every cluster."""

        @_answer
        async def post(self, request: Any, app_id: str) -> Any:
            authorise(request)
            body = await body_of(request)
            name = model.check_name("name", body.get("name"))
            operator = text_field(body, "operator")
            fmt = body.get("format")
            if fmt is not None and fmt not in model.FORMATS:
                raise ConfigError("format", f"must be one of {', '.join(model.FORMATS)}")
            if fmt not in (None, model.PROPERTIES) and model.split_namespace(name)[1] != fmt:
                name = f"{name}.{fmt}"
            is_public = body.get("isPublic", False)
            if not isinstance(is_public, bool):
                raise ConfigError("isPublic", "must be true or false")
            clusters = index.apps().get(app_id)
            if clusters is None:
                raise model.NotFound("appId", f"app {app_id!r} does not exist")
            request_id = uuid.uuid4().hex
            now = _now_ms()
            drafts = []
            for cluster in clusters:
                if namespace_key(app_id, cluster, name) in index.drafts:
                    raise model.Conflict("name", f"namespace {name!r} exists in {cluster}")
                drafts.append(
                    model.new_draft(
                        app_id,
                        cluster,
                        name,
                        author=operator,
                        now_ms=now,
                        request_id=request_id,
                        is_public=is_public,
                        fmt=fmt if fmt != model.PROPERTIES else None,
                    )
                )
            await write_drafts(drafts)
            await audit(
                request,
                request_id,
                "CREATE_NAMESPACE",
                operator,
                app_id=app_id,
                namespace=drafts[0]["namespace"],
                details={"format": drafts[0]["format"], "is_public": is_public},
            )
            return self.json({"appId": app_id, "namespaceName": drafts[0]["namespace"]}, status=201)

    @app.page(NAMESPACE_PATH)
    class Namespace(View):
        """A namespace: draft items, unpublished changes, live release and gray branch."""

        @_answer
        async def get(self, request: Any, app_id: str, cluster: str, namespace: str) -> Any:
            authorise(request)
            return self.json(namespace_view(draft_of(app_id, cluster, namespace)))

    @app.page(NAMESPACE_PATH + "/items/{key}")
    class Item(View):
        """PUT sets a draft item; DELETE removes it (published by the next release)."""

        @_answer
        async def put(
            self, request: Any, app_id: str, cluster: str, namespace: str, key: str
        ) -> Any:
            authorise(request)
            body = await body_of(request)
            operator = text_field(body, "operator")
            value = body.get("value")
            if not isinstance(value, str):
                raise ConfigError("value", "must be a string")
            draft = draft_of(app_id, cluster, namespace)
            request_id = uuid.uuid4().hex
            updated, old = model.set_item(
                draft,
                key,
                value,
                author=operator,
                now_ms=_now_ms(),
                request_id=request_id,
                comment=text_field(body, "comment", required=False),
            )
            await write_drafts([updated])
            await audit(
                request,
                request_id,
                "CREATE_ITEM" if old is None else "UPDATE_ITEM",
                operator,
                app_id=app_id,
                cluster=cluster,
                namespace=draft["namespace"],
                details={"key": key, "old_value": old, "new_value": value},
            )
            return self.json({"key": key, "value": value, "previous": old})

        @_answer
        async def delete(
            self, request: Any, app_id: str, cluster: str, namespace: str, key: str
        ) -> Any:
            authorise(request)
            operator = request.query.get("operator", "")
            if not operator:
                raise ConfigError("operator", "missing query parameter")
            draft = draft_of(app_id, cluster, namespace)
            request_id = uuid.uuid4().hex
            updated, old = model.delete_item(
                draft, key, author=operator, now_ms=_now_ms(), request_id=request_id
            )
            await write_drafts([updated])
            await audit(
                request,
                request_id,
                "DELETE_ITEM",
                operator,
                app_id=app_id,
                cluster=cluster,
                namespace=draft["namespace"],
                details={"key": key, "old_value": old},
            )
            return self.json({"key": key, "deleted": old})

    async def released(
        request: Any,
        request_id: str,
        action: str,
        record: Record,
        details: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        await write_release(record)
        await audit(
            request,
            request_id,
            action,
            record["author"],
            app_id=record["app_id"],
            cluster=record["cluster"],
            namespace=record["namespace"],
            details={"release_id": record["release_id"], "release_key": record["release_key"]}
            | (details or {}),
        )
        return model.apollo_release_json(record)

    async def refused(
        request: Any, request_id: str, action: str, actor: str, draft: Record, error: ConfigError
    ) -> None:
        await audit(
            request,
            request_id,
            action,
            actor,
            app_id=draft["app_id"],
            cluster=draft["cluster"],
            namespace=draft["namespace"],
            success=False,
            details={"reason": str(error), "field": error.field},
        )

    @app.page(NAMESPACE_PATH + "/releases")
    class Releases(View):
        """GET: release history, newest first. POST: publish the draft items."""

        @_answer
        async def get(self, request: Any, app_id: str, cluster: str, namespace: str) -> Any:
            authorise(request)
            draft = draft_of(app_id, cluster, namespace)
            key = namespace_key(app_id, cluster, draft["namespace"])
            history = index.history.get(key, [])
            abandoned = model.abandoned_release_ids(history)
            releases = [
                model.apollo_release_json(r) | {"isAbandoned": r["release_id"] in abandoned}
                for r in reversed(history)
            ]
            return self.json({"releases": releases})

        @_answer
        async def post(self, request: Any, app_id: str, cluster: str, namespace: str) -> Any:
            authorise(request)
            body = await body_of(request)
            author = body.get("releasedBy") or body.get("operator")
            if not isinstance(author, str) or not author.strip():
                raise ConfigError("releasedBy", "must be a non-empty string")
            draft = draft_of(app_id, cluster, namespace)
            now = _now_ms()
            request_id = uuid.uuid4().hex
            try:
                record = model.publish(
                    live_release(app_id, cluster, namespace),
                    draft,
                    author=author,
                    name=text_field(body, "releaseTitle", required=False)
                    or time.strftime("%Y%m%d%H%M%S-release"),
                    comment=text_field(body, "releaseComment", required=False),
                    now_ms=now,
                    release_key=model.new_release_key(app_id, cluster, draft["namespace"], now),
                )
            except ConfigError as error:
                await refused(request, request_id, "PUBLISH", author, draft, error)
                raise
            return self.json(await released(request, request_id, "PUBLISH", record), status=201)

    @app.page(NAMESPACE_PATH + "/rollback")
    class Rollback(View):
        """POST: serve the previous (or `toReleaseId`) release again."""

        @_answer
        async def post(self, request: Any, app_id: str, cluster: str, namespace: str) -> Any:
            authorise(request)
            body = await body_of(request)
            operator = text_field(body, "operator")
            to_release_id = body.get("toReleaseId")
            if to_release_id is not None and (
                isinstance(to_release_id, bool) or not isinstance(to_release_id, int)
            ):
                raise ConfigError("toReleaseId", "must be an integer release id")
            draft = draft_of(app_id, cluster, namespace)
            key = namespace_key(app_id, cluster, namespace)
            request_id = uuid.uuid4().hex
            try:
                record = model.rollback(
                    index.releases.get(key),
                    index.history.get(key, []),
                    author=operator,
                    comment=text_field(body, "comment", required=False),
                    now_ms=_now_ms(),
                    to_release_id=to_release_id,
                )
            except ConfigError as error:
                await refused(request, request_id, "ROLLBACK", operator, draft, error)
                raise
            return self.json(await released(request, request_id, "ROLLBACK", record))

    @app.page(NAMESPACE_PATH + "/gray")
    class Gray(View):
        """POST: publish a gray branch (main items plus `items`, minus `deletedKeys`) to rules."""

        @_answer
        async def post(self, request: Any, app_id: str, cluster: str, namespace: str) -> Any:
            authorise(request)
            body = await body_of(request)
            operator = text_field(body, "operator")
            branch = model.check_name("branchName", body.get("branchName", f"{cluster}-gray"))
            items = body.get("items", {})
            if not isinstance(items, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in items.items()
            ):
                raise ConfigError("items", "must be an object of string values")
            deleted = body.get("deletedKeys", [])
            if not isinstance(deleted, list) or not all(isinstance(k, str) for k in deleted):
                raise ConfigError("deletedKeys", "must be a list of keys")
            rules = model.check_rules(body["rules"]) if "rules" in body else None
            draft = draft_of(app_id, cluster, namespace)
            now = _now_ms()
            request_id = uuid.uuid4().hex
            try:
                record = model.gray_publish(
                    live_release(app_id, cluster, namespace),
                    branch_name=branch,
                    items=items,
                    deleted_keys=deleted,
                    rules=rules,
                    author=operator,
                    comment=text_field(body, "comment", required=False),
                    now_ms=now,
                    release_key=model.new_release_key(app_id, cluster, draft["namespace"], now),
                )
            except ConfigError as error:
                await refused(request, request_id, "GRAY_PUBLISH", operator, draft, error)
                raise
            answer = await released(
                request, request_id, "GRAY_PUBLISH", record, {"branch_name": branch}
            )
            return self.json(answer, status=201)

    @app.page(NAMESPACE_PATH + "/gray/rules")
    class GrayRules(View):
        """PUT: replace the rules of the open gray branch."""

        @_answer
        async def put(self, request: Any, app_id: str, cluster: str, namespace: str) -> Any:
            authorise(request)
            body = await body_of(request)
            operator = text_field(body, "operator")
            rules = model.check_rules(body.get("rules"))
            draft_of(app_id, cluster, namespace)
            record = model.gray_update_rules(
                live_release(app_id, cluster, namespace), rules, author=operator, now_ms=_now_ms()
            )
            answer = await released(
                request,
                uuid.uuid4().hex,
                "GRAY_RULES_UPDATE",
                record,
                {"rules": json.dumps(body["rules"])},
            )
            return self.json(answer)

    @app.page(NAMESPACE_PATH + "/gray/merge")
    class GrayMerge(View):
        """POST: the gray branch's items become the main release."""

        @_answer
        async def post(self, request: Any, app_id: str, cluster: str, namespace: str) -> Any:
            authorise(request)
            body = await body_of(request)
            operator = text_field(body, "operator")
            draft = draft_of(app_id, cluster, namespace)
            now = _now_ms()
            record = model.gray_merge(
                live_release(app_id, cluster, namespace),
                author=operator,
                comment=text_field(body, "comment", required=False),
                now_ms=now,
                release_key=model.new_release_key(app_id, cluster, draft["namespace"], now),
            )
            return self.json(await released(request, uuid.uuid4().hex, "GRAY_MERGE", record))

    @app.page(NAMESPACE_PATH + "/gray/abandon")
    class GrayAbandon(View):
        """POST: close the gray branch; every client gets the main release again."""

        @_answer
        async def post(self, request: Any, app_id: str, cluster: str, namespace: str) -> Any:
            authorise(request)
            body = await body_of(request)
            operator = text_field(body, "operator")
            draft_of(app_id, cluster, namespace)
            record = model.gray_abandon(
                live_release(app_id, cluster, namespace), author=operator, now_ms=_now_ms()
            )
            return self.json(await released(request, uuid.uuid4().hex, "GRAY_ABANDON", record))

    @app.page(NAMESPACE_PATH + "/diff")
    class Diff(View):
        """GET ?from=&to=: what changed between two releases (default: previous → live)."""

        @_answer
        async def get(self, request: Any, app_id: str, cluster: str, namespace: str) -> Any:
            authorise(request)
            draft = draft_of(app_id, cluster, namespace)
            history = index.history.get(namespace_key(app_id, cluster, draft["namespace"]), [])
            by_id = {r["release_id"]: r for r in history}

            def pick(name: str, fallback: int) -> Record:
                text = request.query.get(name)
                if text is None:
                    if fallback < 0:
                        raise model.NotFound(name, "fewer than two releases in the history")
                    return history[fallback]
                try:
                    return by_id[int(text)]
                except (ValueError, KeyError):
                    raise ConfigError(
                        name, f"{text!r} is not a release id of this namespace"
                    ) from None

            newer = pick("to", len(history) - 1)
            older = pick("from", len(history) - 2)
            return self.json(
                {
                    "from": older["release_id"],
                    "to": newer["release_id"],
                    "changes": model.diff(older["configurations"], newer["configurations"]),
                }
            )

    _document_admin(runtime)


def _document_admin(runtime: Runtime) -> None:
    doc = runtime.openapi
    auth = {"security": [{"configAdminToken": []}]}
    errors = {
        "400": BAD_REQUEST,
        "401": {"description": "missing or wrong bearer token"},
        "404": {"description": "no such app, cluster, namespace or item"},
        "409": {"description": "conflicts with the current state (exists, no gray branch...)"},
    }

    def body(description: str, properties: dict[str, Any], required: list[str]) -> dict:
        return {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "description": description,
                        "properties": properties,
                        "required": required,
                    }
                }
            },
        }

    string = {"type": "string"}
    rules = {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "clientAppId": string,
                "clientIpList": {"type": "array", "items": string},
                "clientLabelList": {"type": "array", "items": string},
            },
        },
    }
    ns = "/config/admin/apps/{appId}/clusters/{cluster}/namespaces/{namespace}"
    release = json_response("the release (Apollo open-platform field names)")
    operations: dict[str, dict[str, Any]] = {
        "/config/admin/apps": {
            "get": {
                "summary": "apps, clusters and namespaces",
                "responses": {"200": json_response("apps")},
            },
            "post": {
                "summary": "create an app (default cluster, application namespace)",
                "requestBody": body(
                    "app",
                    {"appId": string, "name": string, "operator": string},
                    ["appId", "operator"],
                ),
                "responses": {"201": json_response("the app")},
            },
        },
        "/config/admin/apps/{appId}/clusters": {
            "post": {
                "summary": "create a cluster with the app's namespaces",
                "requestBody": body(
                    "cluster", {"name": string, "operator": string}, ["name", "operator"]
                ),
                "responses": {"201": json_response("the cluster")},
            }
        },
        "/config/admin/apps/{appId}/namespaces": {
            "post": {
                "summary": "create a namespace in every cluster of the app",
                "requestBody": body(
                    "namespace",
                    {
                        "name": string,
                        "format": {"type": "string", "enum": list(model.FORMATS)},
                        "isPublic": {"type": "boolean"},
                        "operator": string,
                    },
                    ["name", "operator"],
                ),
                "responses": {"201": json_response("the namespace")},
            }
        },
        ns: {
            "get": {
                "summary": "draft items, unpublished changes, live release",
                "responses": {"200": json_response("namespace")},
            }
        },
        ns + "/items/{key}": {
            "put": {
                "summary": "set a draft item (non-properties namespaces: key `content`)",
                "requestBody": body(
                    "item",
                    {"value": string, "operator": string, "comment": string},
                    ["value", "operator"],
                ),
                "responses": {"200": json_response("`{key, value, previous}`")},
            },
            "delete": {
                "summary": "delete a draft item",
                "parameters": [query_parameter("operator", "who deletes", required=True)],
                "responses": {"200": json_response("`{key, deleted}`")},
            },
        },
        ns + "/releases": {
            "get": {
                "summary": "release history, newest first",
                "responses": {"200": json_response("`{releases}`")},
            },
            "post": {
                "summary": "publish the draft items (content validated per format)",
                "requestBody": body(
                    "release",
                    {"releaseTitle": string, "releaseComment": string, "releasedBy": string},
                    ["releasedBy"],
                ),
                "responses": {"201": release},
            },
        },
        ns + "/rollback": {
            "post": {
                "summary": "roll back to the previous (or the given) release",
                "requestBody": body(
                    "rollback",
                    {"operator": string, "toReleaseId": {"type": "integer"}, "comment": string},
                    ["operator"],
                ),
                "responses": {"200": release},
            }
        },
        ns + "/gray": {
            "post": {
                "summary": "publish a gray branch to client IPs or labels",
                "requestBody": body(
                    "gray release",
                    {
                        "branchName": string,
                        "items": {"type": "object", "additionalProperties": string},
                        "deletedKeys": {"type": "array", "items": string},
                        "rules": rules,
                        "operator": string,
                    },
                    ["operator"],
                ),
                "responses": {"201": release},
            }
        },
        ns + "/gray/rules": {
            "put": {
                "summary": "replace the gray rules",
                "requestBody": body(
                    "rules", {"rules": rules, "operator": string}, ["rules", "operator"]
                ),
                "responses": {"200": release},
            }
        },
        ns + "/gray/merge": {
            "post": {
                "summary": "merge the gray branch into the main release",
                "requestBody": body("merge", {"operator": string, "comment": string}, ["operator"]),
                "responses": {"200": release},
            }
        },
        ns + "/gray/abandon": {
            "post": {
                "summary": "abandon the gray branch",
                "requestBody": body("abandon", {"operator": string}, ["operator"]),
                "responses": {"200": release},
            }
        },
        ns + "/diff": {
            "get": {
                "summary": "changes between two releases (default previous → live)",
                "parameters": [
                    query_parameter("from", "older release id", schema={"type": "integer"}),
                    query_parameter("to", "newer release id", schema={"type": "integer"}),
                ],
                "responses": {
                    "200": json_response("`{from, to, changes: {added, modified, deleted}}`")
                },
            }
        },
    }
    for path, methods in operations.items():
        doc.add(
            path,
            {
                method: operation | auth | {"responses": operation["responses"] | errors}
                for method, operation in methods.items()
            },
            ADMIN_TAG,
        )
