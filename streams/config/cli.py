"""`stackstream config get|set|publish|rollback|history`: operate the config centre's admin API.

Talks HTTP to a worker's admin API with the bearer token (`config_admin_token`), so it works
from any machine that reaches a worker; it never touches Kafka itself.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import click
import httpx
from rich.console import Console
from rich.table import Table

from streams.settings import get_settings

console = Console()


class AdminApiError(click.ClickException):
    """The admin API refused the call or could not be reached; the message says why."""


class AdminClient:
    """The admin API of one worker, authorised with the bearer token."""

    def __init__(self, url: str, token: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout
        )

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = self.http.request(method, path, json=body)
        except httpx.HTTPError as error:
            raise AdminApiError(
                f"cannot reach the config admin API at {self.url}: {error}"
            ) from None
        if response.is_success:
            return response.json()
        try:
            answer = response.json()
            reason = answer.get("error", response.text)
            field = answer.get("field")
        except ValueError:
            reason, field = response.text, None
        where = f" (field {field})" if field else ""
        raise AdminApiError(f"{method} {path} answered {response.status_code}: {reason}{where}")


def namespace_path(app_id: str, cluster: str, namespace: str) -> str:
    parts = (quote(app_id, safe=""), quote(cluster, safe=""), quote(namespace, safe=""))
    return "/config/admin/apps/{}/clusters/{}/namespaces/{}".format(*parts)


def _namespace_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--namespace", "-n", default="application", show_default=True)(command)
    command = click.option("--cluster", "-c", default="default", show_default=True)(command)
    return click.argument("app_id")(command)


def _operator_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--operator",
        default=getpass.getuser,
        show_default="the current user",
        help="recorded as the author in the release and the audit log",
    )(command)


def _when(millis: int | None) -> str:
    if not millis:
        return "-"
    return datetime.fromtimestamp(millis / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True))


@click.group("config")
@click.option("--url", envvar="STACKSTREAM_CONFIG_URL", help="a worker (default: this machine's)")
@click.option("--token", envvar="STACKSTREAM_CONFIG_ADMIN_TOKEN", help="admin bearer token")
@click.pass_context
def config_group(context: click.Context, url: str | None, token: str | None) -> None:
    """Read, edit, publish and roll back config-centre namespaces (Apollo-compatible)."""
    settings = get_settings()
    context.obj = AdminClient(
        url or f"http://{settings.web_host}:{settings.web_port}",
        token or settings.config_admin_token,
    )


@config_group.command("get")
@_namespace_options
@click.argument("key", required=False)
@click.option("--json", "as_json", is_flag=True, help="print the namespace as JSON")
@click.pass_obj
def get(
    admin: AdminClient, app_id: str, cluster: str, namespace: str, key: str | None, as_json: bool
) -> None:
    """Show a namespace's items (draft and released), or one KEY's value."""
    view = admin.call("GET", namespace_path(app_id, cluster, namespace))
    release = view.get("release") or {}
    released = release.get("configurations", {})
    if key is not None:
        if key not in view["items"] and key not in released:
            raise AdminApiError(f"no item {key!r} in {app_id}/{cluster}/{namespace}")
        draft_value, live_value = view["items"].get(key), released.get(key)
        if as_json:
            _print_json({"key": key, "draft": draft_value, "released": live_value})
        else:
            click.echo(live_value if live_value is not None else draft_value)
            if draft_value != live_value:
                console.print(f"[yellow]unpublished draft value:[/] {draft_value!r}")
        return
    if as_json:
        _print_json(view)
        return
    table = Table(title=f"{app_id}/{cluster}/{view['namespaceName']} ({view['format']})")
    for column in ("key", "released", "draft"):
        table.add_column(column, overflow="fold")
    for item in sorted(view["items"].keys() | released.keys()):
        draft_value, live_value = view["items"].get(item), released.get(item)
        colour = "" if draft_value == live_value else "[yellow]"
        table.add_row(item, str(live_value or "-"), f"{colour}{draft_value or '-'}")
    console.print(table)
    if release:
        console.print(
            f"release {release['releaseId']} ({release['releaseKey']}) by "
            f"{release['releasedBy']} at {_when(release['releasedAt'])}"
        )
    else:
        console.print("[dim]never released[/]")


@config_group.command("set")
@_namespace_options
@click.argument("key")
@click.argument("value")
@_operator_option
@click.option("--comment", default="", help="why the item changes")
@click.pass_obj
def set_item(
    admin: AdminClient,
    app_id: str,
    cluster: str,
    namespace: str,
    key: str,
    value: str,
    operator: str,
    comment: str,
) -> None:
    """Set a draft item (published by the next `publish`); file namespaces use KEY `content`."""
    path = namespace_path(app_id, cluster, namespace) + "/items/" + quote(key, safe="")
    answer = admin.call("PUT", path, {"value": value, "operator": operator, "comment": comment})
    previous = answer.get("previous")
    change = "added" if previous is None else f"changed from {previous!r}"
    click.echo(f"{key} = {value!r} ({change}; publish to release it)")


@config_group.command("publish")
@_namespace_options
@_operator_option
@click.option("--title", default="", help="release title (default: a timestamp)")
@click.option("--comment", default="", help="release comment")
@click.pass_obj
def publish(
    admin: AdminClient,
    app_id: str,
    cluster: str,
    namespace: str,
    operator: str,
    title: str,
    comment: str,
) -> None:
    """Publish the draft items as a new release (content is validated per format)."""
    body = {"releasedBy": operator, "releaseComment": comment}
    if title:
        body["releaseTitle"] = title
    release = admin.call("POST", namespace_path(app_id, cluster, namespace) + "/releases", body)
    click.echo(f"released {release['releaseId']} ({release['releaseKey']})")


@config_group.command("rollback")
@_namespace_options
@_operator_option
@click.option("--to", "to_release_id", type=int, help="release id to serve (default: previous)")
@click.option("--comment", default="", help="why")
@click.pass_obj
def rollback(
    admin: AdminClient,
    app_id: str,
    cluster: str,
    namespace: str,
    operator: str,
    to_release_id: int | None,
    comment: str,
) -> None:
    """Serve the previous release (or `--to` one) again, as Apollo's rollback does."""
    body: dict[str, Any] = {"operator": operator, "comment": comment}
    if to_release_id is not None:
        body["toReleaseId"] = to_release_id
    release = admin.call("POST", namespace_path(app_id, cluster, namespace) + "/rollback", body)
    click.echo(
        f"rolled back: serving release {release['rolledBackTo']} ({release['releaseKey']}) "
        f"as {release['releaseId']}"
    )


@config_group.command("history")
@_namespace_options
@click.option("--limit", default=20, show_default=True, help="newest releases shown")
@click.option("--json", "as_json", is_flag=True, help="print the releases as JSON")
@click.pass_obj
def history(
    admin: AdminClient, app_id: str, cluster: str, namespace: str, limit: int, as_json: bool
) -> None:
    """Releases of a namespace, newest first."""
    releases = admin.call("GET", namespace_path(app_id, cluster, namespace) + "/releases")[
        "releases"
    ][:limit]
    if as_json:
        _print_json(releases)
        return
    table = Table(title=f"releases of {app_id}/{cluster}/{namespace}")
    for column in ("id", "kind", "key", "by", "at", "comment", "items"):
        table.add_column(column, overflow="fold")
    for release in releases:
        kind = release["kind"] + (" (abandoned)" if release.get("isAbandoned") else "")
        table.add_row(
            str(release["releaseId"]),
            kind,
            release["releaseKey"],
            release["releasedBy"],
            _when(release["releasedAt"]),
            release["comment"],
            str(len(release["configurations"])),
        )
    console.print(table)
