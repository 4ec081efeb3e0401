"""HTTP views of the bus: worker health with per-agent liveness, and dead-letter counts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import faust

    from streams.app import Runtime


def register(runtime: Runtime, counts: faust.Table) -> None:
    app = runtime.app

    @app.page("/stackstream/health")
    async def health(web: Any, request: Any) -> Any:
        """Liveness of every agent (records, rejects, rate) and this worker's dead letters."""
        lag: dict[str, int] = {}
        consumer = getattr(app, "_consumer", None)
        if consumer is not None:
            for tp in consumer.assignment():
                highwater = consumer.highwater(tp)
                position = (
                    consumer._committed_offset.get(tp)
                    if hasattr(consumer, "_committed_offset")
                    else None
                )
                if highwater is not None and position is not None:
                    lag[f"{tp.topic}[{tp.partition}]"] = max(0, highwater - position - 1)
        return web.json(
            {
                "app_id": runtime.settings.app_id,
                "agents": {name: pulse.snapshot() for name, pulse in runtime.liveness.items()},
                "dead_letters": runtime.dead_letter_counter.snapshot(),
                "lag": lag,
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
