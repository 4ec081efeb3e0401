"""HTTP views of the CAT reports: Transaction, Event and Problem reports, logview, status.

Reports are read from Cassandra (closed minutes, hours merged from minutes, days merged from
hours), so every worker answers every query. Parameters follow CAT's report pages: `domain`,
`date` (YYYYMMDD, YYYYMMDDHH or YYYYMMDDHHmm, UTC), `ip` (a host, or All), `type`. Without
`type` the answer lists the per-type totals; with it, that type's name rows, sortable. Answers
are JSON; the transaction report also speaks CAT's XML with `format=xml`.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from faust.utils import json as faust_json
from faust.web import View

from connectors.elasticsearch import ElasticsearchSink
from streams.http import BAD_REQUEST, error_body, json_response, query_parameter
from streams.tracing.model import (
    ALL_HOSTS,
    PERIOD_MS,
    REPORT_SORT_KEYS,
    ReportQueryError,
    as_columns,
    assemble_chain,
    describe_columns,
    elapsed_seconds,
    merge_rows,
    parse_report_time,
    sort_described,
    transaction_report_xml,
)

if TYPE_CHECKING:
    from streams.app import Runtime
    from streams.tracing.agents import ReportBuilder, ReportStore

TAG = "tracing"
MAX_CHAIN_TREES = 1000
# A report read waits out short Cassandra hiccups (reads retry), then answers 503.
REPORT_READ_TIMEOUT_S = 15.0


class ReportReader:
    """Answers report queries. A minute or hour is its stored rows, read without sketches
    (percentiles are stored columns); a day is merged from its hour rows.

    Closed minutes and hours change only when a minute of them closes or is amended, and the
    minute index (`trace_minutes`, written after the rows) says when: its entries for the
    period are the version of a cached answer, read again (a few small rows) when the answer
    was last checked more than `recheck_s` ago, so an answer is at most that much older than
    what Cassandra holds. Days are not cached."""

    def __init__(
        self,
        store: ReportStore,
        max_samples: int,
        *,
        recheck_s: float = 1.0,
        capacity: int = 16,
        grace_ms: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.max_samples = max_samples
        self.recheck_s = recheck_s
        self.capacity = capacity
        self.grace_ms = grace_ms
        self.clock = clock
        self._cache: OrderedDict[tuple[Any, ...], _CachedReport] = OrderedDict()

    async def answer(self, report_kind: str, query: Mapping[str, str], output: str) -> bytes:
        """The report as JSON or CAT's XML bytes; ReportQueryError names a bad parameter."""
        domain = query.get("domain", "").strip()
        if not domain:
            raise ReportQueryError("domain", "missing query parameter")
        date = query.get("date", "").strip()
        if not date:
            raise ReportQueryError("date", "missing query parameter")
        period, start_ms = parse_report_time(date)
        host = query.get("ip", ALL_HOSTS).strip() or ALL_HOSTS
        type_ = query.get("type", "").strip() or None
        sort = query.get("sort", "name" if type_ else "count")
        order = query.get("order", "asc" if sort == "name" else "desc")
        if order not in ("asc", "desc"):
            raise ReportQueryError("order", "must be asc or desc")
        if sort not in REPORT_SORT_KEYS[report_kind]:
            allowed = ", ".join(REPORT_SORT_KEYS[report_kind])
            raise ReportQueryError("sort", f"must be one of {allowed} for the {report_kind} report")
        await self.store.open()
        key = (report_kind, period, domain, start_ms, host, type_)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is None or now - cached.checked_at >= self.recheck_s:
            version: tuple[Any, ...] | None = None
            seconds = elapsed_seconds(period, start_ms, int(self.clock() * 1000), self.grace_ms)
            if period == "hour" or (period == "minute" and cached is not None):
                version = await self.store.minutes_version(domain, period, start_ms)
            if period == "hour" and version is not None:
                version = (seconds, *version)  # an hour in progress: its TPS changes too
            if cached is not None and version is not None and cached.version == version:
                cached.checked_at = now
            else:
                described, rows_version = await self._described(
                    report_kind, period, domain, start_ms, host, type_, seconds
                )
                if period == "minute":
                    version = rows_version
                cached = _CachedReport(version, now, described)
            if version is not None:
                self._cache[key] = cached
                while len(self._cache) > self.capacity:
                    self._cache.popitem(last=False)
            else:
                self._cache.pop(key, None)
        if key in self._cache:
            self._cache.move_to_end(key)
        rendered = cached.rendered.get((sort, order, output))
        if rendered is None:
            rendered = cached.rendered[(sort, order, output)] = self._render(
                cached.described, report_kind, domain, period, start_ms, host, type_,
                sort, order, output,
            )  # fmt: skip
        return rendered

    async def _described(
        self, report_kind: str, period: str, domain: str, start_ms: int, host: str,
        type_: str | None, seconds: float,
    ) -> tuple[list[dict[str, Any]], tuple[tuple[int, int, int], ...] | None]:  # fmt: skip
        """The page's described rows, and for a minute the index entry its rows were written
        with (None when the page is empty or caught between two revisions). `seconds` is
        what counts are divided by for TPS."""
        if period != "day":
            columns = await self.store.view_columns(
                period, domain, report_kind, start_ms, host, type_
            )
            described = describe_columns(report_kind, period, columns, seconds)
            revisions, offsets = set(columns["revision"]), set(columns["last_offset"])
            if period == "minute" and len(revisions) == 1 and len(offsets) == 1:
                return described, ((start_ms, revisions.pop(), offsets.pop()),)
            return described, None
        hours = await self.store.rows("hour", domain, report_kind, bucket_ms=start_ms)
        shown = [
            row
            for row in merge_rows(hours, "day", self.max_samples)
            if row["host"] == host and (type_ is None or row["type"] == type_)
        ]
        return describe_columns(report_kind, "day", as_columns(shown), seconds), None

    @staticmethod
    def _render(
        described: list[dict[str, Any]], report_kind: str, domain: str, period: str,
        start_ms: int, host: str, type_: str | None, sort: str, order: str, output: str,
    ) -> bytes:  # fmt: skip
        if type_ is None:
            total, names = None, [row for row in described if row["name"] == ""]
        else:
            total = next((row for row in described if row["name"] == ""), None)
            names = [row for row in described if row["name"] != ""]
        rows = sort_described(names, sort, order == "desc")
        if output == "xml":
            shown = [*([total] if total else []), *rows]
            return transaction_report_xml(domain, period, start_ms, host, shown).encode()
        answer = {
            "report": report_kind,
            "domain": domain,
            "period": period,
            "start_ms": start_ms,
            "end_ms": start_ms + PERIOD_MS[period] - 1,
            "ip": host,
            "type": type_,
            "total": total,
            "rows": rows,
        }
        encoded = faust_json.dumps(answer)
        return encoded if isinstance(encoded, bytes) else encoded.encode()


@dataclass
class _CachedReport:
    """A report's described rows at one version of its minutes, and its rendered answers."""

    version: tuple[Any, ...] | None
    checked_at: float
    described: list[dict[str, Any]]
    rendered: dict[tuple[str, str, str], bytes] = field(default_factory=dict)


def register(runtime: Runtime, store: ReportStore, builder: ReportBuilder) -> None:
    from streams.tracing.agents import logview_index_pattern

    app = runtime.app
    settings = runtime.settings
    logview_sink: list[ElasticsearchSink] = []
    reader = ReportReader(
        store,
        settings.tracing_problem_samples,
        recheck_s=settings.tracing_report_recheck_s,
        grace_ms=int(settings.tracing_grace_s * 1000),
    )

    class ReportView(View):
        report_kind = "transaction"

        async def get(self, request: Any) -> Any:
            query = request.query
            output = query.get("format", "json")
            if output not in ("json", "xml") or (
                output == "xml" and self.report_kind != "transaction"
            ):
                allowed = "json or xml" if self.report_kind == "transaction" else "json"
                return self.json(error_body("format", f"must be {allowed}"), status=400)
            try:
                body = await asyncio.wait_for(
                    reader.answer(self.report_kind, query, output), REPORT_READ_TIMEOUT_S
                )
            except ReportQueryError as error:
                return self.json(error_body(error.parameter, str(error)), status=400)
            except TimeoutError:
                return self.json(
                    error_body(None, "Cassandra did not answer in time; try again shortly"),
                    status=503,
                    headers={"Retry-After": "5"},
                )
            if output == "xml":
                return self.bytes(body, content_type="application/xml")
            return self.bytes(body, content_type="application/json")

    class TransactionReport(ReportView):
        """CAT's Transaction report: counts, failures, latency lines per type and name."""

        report_kind = "transaction"

    class EventReport(ReportView):
        """CAT's Event report: counts and failures per type and name."""

        report_kind = "event"

    class ProblemReport(ReportView):
        """CAT's Problem report: errors and long executions with sample message ids."""

        report_kind = "problem"

    app.page("/tracing/transaction")(TransactionReport)
    app.page("/tracing/event")(EventReport)
    app.page("/tracing/problem")(ProblemReport)

    async def es() -> ElasticsearchSink:
        if not logview_sink:
            logview_sink.append(ElasticsearchSink(settings.elasticsearch))
        return logview_sink[0]

    @app.page("/tracing/logview")
    class Logview(View):
        """The whole cross-service call chain of a message id, as a tree of message trees."""

        async def get(self, request: Any) -> Any:
            message_id = request.query.get("message_id", "").strip()
            if not message_id or any(c.isspace() for c in message_id):
                return self.json(
                    error_body("message_id", "missing or contains white space"), status=400
                )
            sink = await es()
            pattern = logview_index_pattern(settings)
            found = await sink.search(pattern, {"term": {"message_id": message_id}}, size=1)
            if not found:
                return self.json(
                    error_body("message_id", f"no logview tree {message_id} (failed and "
                               "problem trees are kept, others sampled)"),
                    status=404,
                )  # fmt: skip
            root_id = found[0]["root_message_id"]
            chain = await sink.search(
                pattern, {"term": {"root_message_id": root_id}}, size=MAX_CHAIN_TREES
            )
            trees = [hit["tree"] for hit in chain]
            if not any(t["message_id"] == message_id for t in trees):
                trees.append(found[0]["tree"])
            return self.json(assemble_chain(trees, message_id))

    @app.page("/tracing/status")
    class Status(View):
        """This worker's report agent: trees, late and duplicate trees, open minutes."""

        async def get(self, request: Any) -> Any:
            partitions = {
                str(partition): {
                    "watermark_ms": state.watermark_ms,
                    "open_minutes": len(state.open),
                    "closed_minutes_in_memory": len(state.closed),
                    "safe_commit_offset": state.safe_commit_offset(),
                }
                for partition, state in sorted(builder.partitions.items())
            }
            return self.json(
                {
                    **builder.stats.snapshot(),
                    "unwritten_minutes": builder.unwritten_minutes(),
                    "partitions": partitions,
                }
            )

    @app.on_before_shutdown.connect
    async def close_es(app: object, **kwargs: object) -> None:
        for sink in logview_sink:
            await sink.close()

    _document(runtime)


def _document(runtime: Runtime) -> None:
    openapi = runtime.openapi
    openapi.describe_tag(TAG, "CAT call-chain reports (Transaction, Event, Problem) and logview")
    common = [
        query_parameter("domain", "the application (CAT domain)", required=True),
        query_parameter(
            "date",
            "UTC period: YYYYMMDD (day), YYYYMMDDHH (hour) or YYYYMMDDHHmm (minute)",
            required=True,
        ),
        query_parameter("ip", "a machine's IP, or All (default) for every machine"),
        query_parameter("type", "a type: its name rows; absent: the per-type totals"),
        query_parameter(
            "sort",
            "column to sort rows by: name, count, fail_count, fail_percent, tps, and for the "
            "transaction report min_ms, max_ms, avg_ms, std_ms, p50_ms, p90_ms, p95_ms, p99_ms, "
            "p999_ms",
        ),
        query_parameter("order", "asc or desc", schema={"type": "string", "enum": ["asc", "desc"]}),
    ]
    row_answer = "`{report, domain, period, start_ms, end_ms, ip, type, total, rows: [...]}`"
    for kind, summary in (
        ("transaction", "Transaction report: count, failures, min/max/avg/std, TPS, p50-p99.9"),
        ("event", "Event report: count and failures per type and name"),
        ("problem", "Problem report: errors and long-url/sql/service/call/cache, sample ids"),
    ):
        parameters = list(common)
        responses: dict[str, Any] = {"200": json_response(row_answer), "400": BAD_REQUEST}
        if kind == "transaction":
            parameters.append(
                query_parameter(
                    "format",
                    "json (default) or xml (CAT's transaction-report shape)",
                    schema={"type": "string", "enum": ["json", "xml"]},
                )
            )
            responses["200"]["content"]["application/xml"] = {"schema": {"type": "string"}}
        openapi.add(
            f"/tracing/{kind}",
            {"get": {"summary": summary, "parameters": parameters, "responses": responses}},
            TAG,
        )
    openapi.add(
        "/tracing/logview",
        {
            "get": {
                "summary": "the whole cross-service call chain of a message id, as a tree",
                "parameters": [query_parameter("message_id", "a CAT message id", required=True)],
                "responses": {
                    "200": json_response(
                        "`{root_message_id, requested, trees, chain: {...tree, callees: [...]}}`"
                    ),
                    "400": BAD_REQUEST,
                    "404": json_response("no such tree kept for logview"),
                },
            }
        },
        TAG,
    )
    openapi.add(
        "/tracing/status",
        {
            "get": {
                "summary": "this worker's report agent: counts, watermarks, open minutes",
                "responses": {"200": json_response("counters and per-partition state")},
            }
        },
        TAG,
    )
