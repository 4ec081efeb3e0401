"""HTTP views of the bus: worker health with per-agent liveness, dead-letter counts, OpenAPI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from streams.http import json_response

if TYPE_CHECKING:
    import faust

    from streams.app import Runtime

TAG = "bus"


def register(runtime: Runtime, counts: faust.Table) -> None:
    app = runtime.app
    runtime.openapi.describe_tag(TAG, "worker health, dead letters and this document")

    @app.page("/stackstream/health")
    async def health(web: Any, request: Any) -> Any:
        """Liveness of every agent (records, rejects, rate) and this worker's dead letters."""
        return web.json(
            {
                "app_id": runtime.settings.app_id,
                "agents": {name: pulse.snapshot() for name, pulse in runtime.liveness.items()},
                "dead_letters": runtime.dead_letter_counter.snapshot(),
                "lag": _lag(app),
            }
        )

    @app.page("/bus/deadletters")
    async def deadletter_counts(web: Any, request: Any) -> Any:
        """Dead letters counted per source topic and error type (this worker's partitions)."""
        rows = []
        for key, count in counts.items():
            source_topic, _, error_type = key.partition("|")
            rows.append({"source_topic": source_topic, "error_type": error_type, "count": count})
        return web.json({"dead_letters": sorted(rows, key=lambda row: -row["count"])})

    @app.page("/openapi.json")
    async def openapi(web: Any, request: Any) -> Any:
        """The OpenAPI document of every HTTP API this worker serves."""
        return web.json(runtime.openapi.as_dict())

    runtime.openapi.add(
        "/stackstream/health",
        {
            "get": {
                "summary": "per-agent liveness and dead letters",
                "responses": {"200": json_response("agents, dead letters and consumer lag")},
            }
        },
        TAG,
    )
    runtime.openapi.add(
        "/bus/deadletters",
        {
            "get": {
                "summary": "dead letters per source topic and error type",
                "responses": {"200": json_response("counts")},
            }
        },
        TAG,
    )
    runtime.openapi.add(
        "/openapi.json",
        {"get": {"summary": "this document", "responses": {"200": json_response("OpenAPI")}}},
        TAG,
    )


def _lag(app: faust.App) -> dict[str, int]:
    """Records not yet committed per assigned partition: a stalled consumer shows here."""
    lag: dict[str, int] = {}
    consumer = getattr(app, "_consumer", None)
    if consumer is None:
        return lag
    committed = getattr(consumer, "_committed_offset", {})
    for tp in consumer.assignment():
        highwater = consumer.highwater(tp)
        position = committed.get(tp)
        if highwater is not None and position is not None:
            lag[f"{tp.topic}[{tp.partition}]"] = max(0, highwater - position - 1)
    return lag
