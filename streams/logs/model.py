"""Pure log logic: governance (level, quota, sampling, size, secrets), ECS documents, daily
index names, stable ids, search queries, NDJSON parsing and retention. No Faust, Kafka or HTTP.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any

from connectors.mappings import KEYWORD, KEYWORD_IGNORE_ABOVE
from streams.errors import RecordRejected, StackstreamError
from streams.sdk.masking import DEFAULT_SECRET_PATTERNS, MASKED_AT_SOURCE_LABEL, SecretMasker

LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")
LEVEL_RANK = {level: rank for rank, level in enumerate(LEVELS)}
LEVEL_ALIASES = {
    "WARNING": "WARN",
    "CRITICAL": "FATAL",
    "ERR": "ERROR",
    "SEVERE": "ERROR",
    "FINE": "DEBUG",
    "INFORMATION": "INFO",
    "NOTICE": "INFO",
    "EMERGENCY": "FATAL",
    "ALERT": "FATAL",
}
INDEX_UNSAFE = re.compile(r"[^a-z0-9_-]+")
DAY_SUFFIX = re.compile(r"-(\d{4})\.(\d{2})\.(\d{2})$")
MINUTE_US = 60_000_000
GOVERNANCE_LOGGER = "stackstream.logs.governance"
VOLUME_METRIC = "logs.lines"
ACCEPTED, DROPPED_LEVEL, DROPPED_QUOTA = "accepted", "dropped_level", "dropped_quota"
TRUNCATED, MASKED, SAMPLED = "truncated", "masked", "sampled"

ECS_MAPPINGS: dict[str, Any] = {
    "dynamic": "false",
    "properties": {
        "@timestamp": {"type": "date_nanos"},
        "message": {"type": "text"},
        "log": {"properties": {"level": KEYWORD, "logger": KEYWORD}},
        "service": {"properties": {"name": KEYWORD}},
        "host": {"properties": {"name": KEYWORD}},
        "trace": {"properties": {"id": KEYWORD}},
        "span": {"properties": {"id": KEYWORD}},
        "error": {
            "properties": {
                "type": KEYWORD,
                "message": {"type": "text"},
                "stack_trace": {"type": "text", "index": False},
            }
        },
        "labels": {"type": "flattened", "ignore_above": KEYWORD_IGNORE_ABOVE},
        "tags": KEYWORD,
        "event": {"properties": {"sequence": {"type": "long"}}},
    },
}


class LogGovernanceError(StackstreamError):
    """A governance setting (level, quota, secret pattern) is unusable; the message says why."""


class ParameterError(StackstreamError):
    """A search or ingest parameter is invalid; `field` names it for the 400 answer."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# --- records -----------------------------------------------------------------------------------


def normalise_level(level: str) -> str | None:
    """The canonical level for a level name as loggers write it (`warning`, `Error`), or None."""
    upper = level.strip().upper()
    upper = LEVEL_ALIASES.get(upper, upper)
    return upper if upper in LEVEL_RANK else None


# The service names a daily Elasticsearch index (at most 255 bytes) and tags the volume points
# (a Cassandra key part, at most 64 KiB), so it stays short.
MAX_SERVICE_CHARS = 100


def validate_record(record: Mapping[str, Any]) -> None:
    if record["level"] not in LEVELS:
        raise RecordRejected(
            "level", f"must be one of {', '.join(LEVELS)}, not {record['level']!r}"
        )
    service = record["service"]
    if not service:
        raise RecordRejected("service", "must name the application")
    if len(service) > MAX_SERVICE_CHARS:
        raise RecordRejected(
            "service",
            f"{len(service)} characters; at most {MAX_SERVICE_CHARS} (it names an index)",
        )


def index_name(prefix: str, service: str, timestamp_us: int) -> str:
    """Daily index per service, e.g. `stackstream-logs-orders-2026.11.25`."""
    return f"{prefix}-logs-{index_service(service)}-{_day(timestamp_us // 86_400_000_000)}"


@lru_cache(maxsize=64)
def _day(day_number: int) -> str:
    return datetime.fromtimestamp(day_number * 86_400, tz=UTC).strftime("%Y.%m.%d")


@lru_cache(maxsize=4096)
def index_service(service: str) -> str:
    """The service as it appears in index names: lowercase, unsafe characters as `_`."""
    return INDEX_UNSAFE.sub("_", service.lower()).strip("_") or "unknown"


def document_id_parts(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """What identifies a log line: redelivery of the same line gives the same id."""
    return (
        record["service"],
        record["host"],
        record["timestamp_us"],
        record["sequence"],
        record["message"],
    )


def format_timestamp(timestamp_us: int) -> str:
    seconds, micros = divmod(timestamp_us, 1_000_000)
    return f"{_second(seconds)}.{micros:06d}Z"


@lru_cache(maxsize=1024)
def _second(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


def ecs_document(record: Mapping[str, Any], tags: Sequence[str] = ()) -> dict[str, Any]:
    """The ECS-shaped document of one log record; `tags` carry governance flags."""
    document: dict[str, Any] = {
        "@timestamp": format_timestamp(record["timestamp_us"]),
        "message": record["message"],
        "log": {"level": record["level"], "logger": record["logger"]},
        "service": {"name": record["service"]},
        "host": {"name": record["host"]},
        "event": {"sequence": record["sequence"]},
    }
    if record.get("trace_id"):
        document["trace"] = {"id": record["trace_id"]}
    if record.get("span_id"):
        document["span"] = {"id": record["span_id"]}
    error = {
        name: record[f"error_{name}"]
        for name in ("type", "message", "stack_trace")
        if record.get(f"error_{name}")
    }
    if error:
        document["error"] = error
    if record.get("labels"):
        document["labels"] = dict(record["labels"])
    if tags:
        document["tags"] = list(tags)
    return document


# --- rules ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GovernanceRule:
    """What one application may log: the lowest level kept and lines kept per minute.

    Past the quota one line in `sample_every` is still kept (tagged `sampled`), the rest are
    dropped and counted in the minute's summary record.
    """

    min_level: str = "WARN"
    quota_per_minute: int = 6000
    sample_every: int = 100

    def __post_init__(self) -> None:
        if self.min_level not in LEVEL_RANK:
            raise LogGovernanceError(
                f"min level {self.min_level!r} is not one of {', '.join(LEVELS)}"
            )
        if self.quota_per_minute < 0:
            raise LogGovernanceError("quota_per_minute must be 0 or more")
        if self.sample_every < 0:
            raise LogGovernanceError("sample_every must be 0 (drop all) or more")

    def admits_level(self, level: str) -> bool:
        return LEVEL_RANK.get(level, -1) >= LEVEL_RANK[self.min_level]

    def as_dict(self) -> dict[str, Any]:
        return {
            "min_level": self.min_level,
            "quota_per_minute": self.quota_per_minute,
            "sample_every": self.sample_every,
        }

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> GovernanceRule:
        return cls(value["min_level"], int(value["quota_per_minute"]), int(value["sample_every"]))


def rule_from_configuration(
    configurations: Mapping[str, str], fallback: GovernanceRule
) -> GovernanceRule:
    """The rule a config-centre namespace (`level`, `quota_per_minute`, `sample_every`) sets;
    keys it leaves out keep the fallback. Raises RecordRejected naming a bad key."""
    values = fallback.as_dict()
    if "level" in configurations:
        level = normalise_level(configurations["level"])
        if level is None:
            raise RecordRejected(
                "configurations.level",
                f"must be one of {', '.join(LEVELS)}, not {configurations['level']!r}",
            )
        values["min_level"] = level
    for key in ("quota_per_minute", "sample_every"):
        if key in configurations:
            text = configurations[key].strip()
            if not text.isdigit():
                raise RecordRejected(
                    f"configurations.{key}", f"must be a whole number >= 0, not {text!r}"
                )
            values[key] = int(text)
    return GovernanceRule.from_dict(values)


RULE_KEYS = ("level", "quota_per_minute", "sample_every")


def rule_overrides(
    release: Mapping[str, Any], namespace: str, cluster: str
) -> tuple[str, dict[str, str]] | None:
    """(app id, the rule keys it sets) when a config release is an app's logging namespace,
    else None. Raises RecordRejected naming a key whose value is unusable."""
    if release["namespace"].lower() != namespace.lower() or release["cluster"] != cluster:
        return None
    configurations = release["configurations"]
    overrides = {key: configurations[key] for key in RULE_KEYS if key in configurations}
    rule_from_configuration(overrides, GovernanceRule())
    return release["app_id"], overrides


# --- secrets and sizes ------------------------------------------------------------------------


def truncate_utf8(text: str, max_bytes: int) -> tuple[str, int | None]:
    """The text cut to at most `max_bytes` of UTF-8 (whole characters), and its original size
    in bytes when it was cut (else None)."""
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= max_bytes:
        return text, None
    return encoded[:max_bytes].decode("utf-8", "ignore"), len(encoded)


# --- governance -----------------------------------------------------------------------------


def secret_masker(extra_patterns: str, mask_defaults: bool) -> SecretMasker:
    """The masker the settings ask for: the default patterns (unless off) plus one per line."""
    extra = [line for line in extra_patterns.splitlines() if line.strip()]
    return SecretMasker([*(DEFAULT_SECRET_PATTERNS if mask_defaults else ()), *extra])


@dataclass(frozen=True)
class Governed:
    """A line that passed governance: masked, cut to size, with its governance tags."""

    position: int
    record: dict[str, Any]
    tags: tuple[str, ...]


@dataclass
class MinuteUsage:
    """One application's lines in one minute that passed the level filter."""

    admitted: int = 0
    sampled: int = 0
    dropped: int = 0


@dataclass(frozen=True)
class QuotaSummary:
    """The one record per application and minute that says how many lines the quota dropped."""

    service: str
    minute_us: int
    dropped: int
    admitted: int
    sampled: int
    rule: GovernanceRule

    def record(self) -> dict[str, Any]:
        """A LogRecord-shaped dict, so it is indexed next to the lines it summarises."""
        minute = datetime.fromtimestamp(self.minute_us / 1_000_000, tz=UTC)
        return {
            "timestamp_us": self.minute_us,
            "level": "WARN",
            "message": (
                f"log quota exceeded: {self.dropped} lines dropped in the minute from "
                f"{minute:%Y-%m-%d %H:%M} UTC (quota {self.rule.quota_per_minute}/min; "
                f"{self.sampled} kept as 1-in-{self.rule.sample_every} samples)"
            ),
            "service": self.service,
            "host": "stackstream",
            "logger": GOVERNANCE_LOGGER,
            "trace_id": None,
            "span_id": None,
            "error_type": None,
            "error_message": None,
            "error_stack_trace": None,
            "labels": {
                "governance": "quota_summary",
                "dropped": str(self.dropped),
                "admitted": str(self.admitted),
                "sampled": str(self.sampled),
                "quota_per_minute": str(self.rule.quota_per_minute),
            },
            "sequence": 0,
        }

    def document_id_parts(self) -> tuple[Any, ...]:
        """Stable per app and minute: each update overwrites, leaving one summary."""
        return (self.service, self.minute_us, "quota-summary")


VolumeKey = tuple[str, str, int, str]


@dataclass
class BatchOutcome:
    """What governance decided for one batch: lines to index, summaries to (re)write, and the
    running per-minute volume counts it changed (service, level, minute start ms, outcome)."""

    accepted: list[Governed] = field(default_factory=list)
    summaries: list[QuotaSummary] = field(default_factory=list)
    volume: dict[VolumeKey, int] = field(default_factory=dict)


class Governor:
    """Applies each application's rule to batches of log records, in event-time minutes.

    Keeps usage counters per application and minute for the last `minutes_kept` minutes of
    each application's event time; a line later than that starts a fresh count.
    """

    def __init__(
        self,
        rule_for: Callable[[str], GovernanceRule],
        masker: SecretMasker,
        max_line_bytes: int,
        minutes_kept: int = 10,
    ) -> None:
        if max_line_bytes < 64:
            raise LogGovernanceError("the line size limit must be at least 64 bytes")
        self.rule_for = rule_for
        self.masker = masker
        self.max_line_bytes = max_line_bytes
        self.minutes_kept = minutes_kept
        self.usage: dict[tuple[str, int], MinuteUsage] = {}
        self.volume: dict[VolumeKey, int] = {}
        self._newest_minute: dict[str, int] = {}

    def govern(self, records: Sequence[Mapping[str, Any]]) -> BatchOutcome:
        outcome = BatchOutcome()
        over_quota: dict[tuple[str, int], GovernanceRule] = {}
        touched: set[VolumeKey] = set()
        for position, record in enumerate(records):
            service, level = record["service"], record["level"]
            minute = record["timestamp_us"] - record["timestamp_us"] % MINUTE_US
            self._advance(service, minute)
            rule = self.rule_for(service)
            if not rule.admits_level(level):
                touched.add(self._count(service, level, minute, DROPPED_LEVEL))
                continue
            usage = self.usage.setdefault((service, minute), MinuteUsage())
            tags: list[str] = []
            if usage.admitted + usage.sampled >= rule.quota_per_minute:
                over_quota[(service, minute)] = rule
                over = usage.sampled + usage.dropped + 1
                if rule.sample_every and over % rule.sample_every == 1 % rule.sample_every:
                    usage.sampled += 1
                    tags.append(SAMPLED)
                else:
                    usage.dropped += 1
                    touched.add(self._count(service, level, minute, DROPPED_QUOTA))
                    continue
            else:
                usage.admitted += 1
            cleaned, flags = self.clean(record)
            outcome.accepted.append(Governed(position, cleaned, (*flags, *tags)))
            touched.add(self._count(service, level, minute, ACCEPTED))
        for (service, minute), rule in over_quota.items():
            usage = self.usage[(service, minute)]
            outcome.summaries.append(
                QuotaSummary(service, minute, usage.dropped, usage.admitted, usage.sampled, rule)
            )
        outcome.volume = {key: self.volume[key] for key in sorted(touched)}
        return outcome

    def clean(self, record: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """The record with secrets masked and oversize text cut; flags say which happened."""
        cleaned = dict(record)
        masked = 0
        original_sizes: dict[str, int] = {}
        for name in ("message", "error_message", "error_stack_trace"):
            text = cleaned.get(name)
            if not text:
                continue
            text, count = self.masker.mask(text)
            masked += count
            text, original = truncate_utf8(text, self.max_line_bytes)
            if original is not None:
                original_sizes[name] = original
            cleaned[name] = text
        labels = dict(cleaned.get("labels") or {})
        if labels.pop(MASKED_AT_SOURCE_LABEL, None) == "true":
            masked += 1
        for key, value in labels.items():
            value, count = self.masker.mask(value)
            masked += count
            labels[key] = value
        flags: list[str] = []
        if masked:
            flags.append(MASKED)
        if original_sizes:
            flags.append(TRUNCATED)
            for name, size in original_sizes.items():
                labels[f"original_bytes_{name}"] = str(size)
        cleaned["labels"] = labels
        return cleaned, flags

    def _count(self, service: str, level: str, minute_us: int, outcome: str) -> VolumeKey:
        key = (service, level, minute_us // 1000, outcome)
        self.volume[key] = self.volume.get(key, 0) + 1
        return key

    def _advance(self, service: str, minute_us: int) -> None:
        newest = self._newest_minute.get(service)
        if newest is not None and minute_us <= newest:
            return
        self._newest_minute[service] = minute_us
        horizon = minute_us - self.minutes_kept * MINUTE_US
        for key in [k for k in self.usage if k[0] == service and k[1] < horizon]:
            del self.usage[key]
        for key in [k for k in self.volume if k[0] == service and k[2] * 1000 < horizon]:
            del self.volume[key]


def volume_points(volume: Mapping[VolumeKey, int]) -> list[dict[str, Any]]:
    """Metric points (stackstream.metrics.MetricPoint) of running per-minute line counts.

    The point of a minute carries the count so far; a later point of the same minute and tags
    overwrites it in the store, so the stored value ends as the minute's total.
    """
    return [
        {
            "name": VOLUME_METRIC,
            "timestamp_ms": minute_ms,
            "value": float(count),
            "tags": {"service": service, "level": level, "outcome": outcome},
            "ttl_seconds": 0,
        }
        for (service, level, minute_ms, outcome), count in volume.items()
    ]


# --- search -----------------------------------------------------------------------------------

MAX_PAGE_SIZE = 500
MAX_RESULT_WINDOW = 10_000
SEARCH_PARAMETERS = ("service", "level", "min_level", "from", "to", "q", "trace_id", "page", "size")


@dataclass(frozen=True)
class LogSearch:
    """A validated log search: every field comes from a parameter, none is raw query DSL."""

    service: str | None = None
    levels: tuple[str, ...] = ()
    min_level: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    text: str | None = None
    trace_id: str | None = None
    page: int = 1
    size: int = 50

    def indices(self, prefix: str) -> str:
        if self.service:
            return f"{prefix}-logs-{index_service(self.service)}-*"
        return f"{prefix}-logs-*"

    def search_arguments(self, index_prefix: str) -> dict[str, Any]:
        """Keyword arguments of the Elasticsearch client's `search` for this search.

        A missing index (no line of that service yet) answers no hits rather than an error.
        """
        body = self.body()
        return {
            "index": self.indices(index_prefix),
            "query": body["query"],
            "sort": body["sort"],
            "from_": body["from"],
            "size": body["size"],
            "track_total_hits": True,
            "ignore_unavailable": True,
            "allow_no_indices": True,
        }

    def body(self) -> dict[str, Any]:
        """The search request body: filters, a simple_query_string for text, newest first."""
        filters: list[dict[str, Any]] = []
        if self.service:
            filters.append({"term": {"service.name": self.service}})
        if self.levels:
            filters.append({"terms": {"log.level": list(self.levels)}})
        if self.min_level:
            allowed = [level for level in LEVELS if LEVEL_RANK[level] >= LEVEL_RANK[self.min_level]]
            filters.append({"terms": {"log.level": allowed}})
        if self.start or self.end:
            bounds: dict[str, str] = {}
            if self.start:
                bounds["gte"] = self.start.isoformat()
            if self.end:
                bounds["lt"] = self.end.isoformat()
            filters.append({"range": {"@timestamp": bounds}})
        if self.trace_id:
            filters.append({"term": {"trace.id": self.trace_id}})
        must: list[dict[str, Any]] = []
        if self.text:
            must.append(
                {
                    "simple_query_string": {
                        "query": self.text,
                        "fields": ["message", "error.message"],
                        "default_operator": "and",
                        "lenient": True,
                    }
                }
            )
        return {
            "query": {"bool": {"filter": filters, "must": must or [{"match_all": {}}]}},
            "sort": [{"@timestamp": {"order": "desc"}}, {"event.sequence": {"order": "desc"}}],
            "from": (self.page - 1) * self.size,
            "size": self.size,
            "track_total_hits": True,
        }


def parse_time(value: str, field: str) -> datetime:
    """An ISO-8601 time (UTC when no offset is given) or epoch milliseconds."""
    text = value.strip()
    try:
        if text.isdigit():
            return datetime.fromtimestamp(int(text) / 1000, tz=UTC)
        parsed = datetime.fromisoformat(text)
    except (ValueError, OverflowError, OSError):
        raise ParameterError(
            field, f"{value!r} is neither an ISO-8601 time nor epoch milliseconds"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _level_list(value: str, field: str) -> tuple[str, ...]:
    levels = []
    for part in value.split(","):
        level = normalise_level(part)
        if level is None:
            raise ParameterError(field, f"{part!r} is not one of {', '.join(LEVELS)}")
        levels.append(level)
    return tuple(levels)


def _whole_number(value: str, field: str, low: int, high: int) -> int:
    if not value.strip().isdigit() or not low <= int(value) <= high:
        raise ParameterError(field, f"must be a whole number from {low} to {high}, not {value!r}")
    return int(value)


def parse_search(params: Mapping[str, str]) -> LogSearch:
    """A LogSearch from query parameters; raises ParameterError naming the bad one."""
    unknown = sorted(set(params) - set(SEARCH_PARAMETERS))
    if unknown:
        raise ParameterError(unknown[0], f"unknown parameter; use {', '.join(SEARCH_PARAMETERS)}")

    def get(name: str) -> str | None:
        value = params.get(name)
        return value.strip() if value is not None and value.strip() else None

    levels = _level_list(get("level") or "", "level") if get("level") else ()
    min_level = None
    if get("min_level"):
        min_level = _level_list(get("min_level") or "", "min_level")[0]
    start = parse_time(get("from") or "", "from") if get("from") else None
    end = parse_time(get("to") or "", "to") if get("to") else None
    if start and end and start >= end:
        raise ParameterError("to", "must be later than 'from'")
    size = _whole_number(get("size") or "50", "size", 1, MAX_PAGE_SIZE)
    page = _whole_number(get("page") or "1", "page", 1, MAX_RESULT_WINDOW)
    if page * size > MAX_RESULT_WINDOW:
        raise ParameterError(
            "page", f"page * size may reach at most {MAX_RESULT_WINDOW}; narrow the time range"
        )
    text = get("q")
    if text is not None and len(text) > 1000:
        raise ParameterError("q", "at most 1000 characters")
    return LogSearch(
        service=get("service"),
        levels=levels,
        min_level=min_level,
        start=start,
        end=end,
        text=text,
        trace_id=get("trace_id"),
        page=page,
        size=size,
    )


def search_page(search: LogSearch, response: Mapping[str, Any]) -> dict[str, Any]:
    """The API answer for one Elasticsearch search response."""
    hits = response["hits"]
    total = hits["total"]["value"] if isinstance(hits["total"], Mapping) else hits["total"]
    lines = [hit["_source"] | {"_id": hit["_id"], "_index": hit["_index"]} for hit in hits["hits"]]
    has_more = search.page * search.size < min(total, MAX_RESULT_WINDOW)
    return {
        "total": total,
        "page": search.page,
        "size": search.size,
        "next_page": search.page + 1 if has_more else None,
        "lines": lines,
    }


# --- NDJSON ingest ----------------------------------------------------------------------------


def _lookup(line: Mapping[str, Any], dotted: str) -> Any:
    """A field by its ECS name, written dotted (`log.level`) or nested (`{"log":{"level"}}`)."""
    if dotted in line:
        return line[dotted]
    value: Any = line
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _optional_text(line: Mapping[str, Any], name: str) -> str | None:
    value = _lookup(line, name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ParameterError(name, "must be a string")
    return value or None


def parse_ndjson_line(
    text: str, number: int, now_us: int, default_service: str | None = None
) -> dict[str, Any]:
    """One NDJSON line with ECS field names as a LogRecord; raises ParameterError naming the
    field. `number` (1-based) is the default sequence, so a resent body gives the same ids."""
    try:
        line = json.loads(text)
    except json.JSONDecodeError as error:
        raise ParameterError("line", f"not JSON: {error.msg} at column {error.colno}") from None
    if not isinstance(line, dict):
        raise ParameterError("line", "must be a JSON object")
    message = _lookup(line, "message")
    if not isinstance(message, str) or not message:
        raise ParameterError("message", "required, a non-empty string")
    service = _optional_text(line, "service.name") or default_service
    if not service:
        raise ParameterError("service.name", "required (or pass ?service= for the whole body)")
    if len(service) > MAX_SERVICE_CHARS:
        raise ParameterError("service.name", f"at most {MAX_SERVICE_CHARS} characters")
    raw_level = _lookup(line, "log.level")
    if raw_level is None:
        level = "INFO"
    elif not isinstance(raw_level, str) or normalise_level(raw_level) is None:
        raise ParameterError("log.level", f"must be one of {', '.join(LEVELS)}")
    else:
        level = normalise_level(raw_level) or "INFO"
    raw_time = _lookup(line, "@timestamp")
    if raw_time is None:
        timestamp_us = now_us
    elif isinstance(raw_time, int | float) and not isinstance(raw_time, bool):
        timestamp_us = int(raw_time * 1000)
    elif isinstance(raw_time, str):
        timestamp_us = int(parse_time(raw_time, "@timestamp").timestamp() * 1_000_000)
    else:
        raise ParameterError("@timestamp", "must be an ISO-8601 string or epoch milliseconds")
    labels = _lookup(line, "labels") or {}
    if not isinstance(labels, Mapping):
        raise ParameterError("labels", "must be an object")
    sequence = _lookup(line, "event.sequence")
    if sequence is None:
        sequence = number
    elif not isinstance(sequence, int) or isinstance(sequence, bool):
        raise ParameterError("event.sequence", "must be an integer")
    return {
        "timestamp_us": timestamp_us,
        "level": level,
        "message": message,
        "service": service,
        "host": _optional_text(line, "host.name") or "",
        "logger": _optional_text(line, "log.logger") or "",
        "trace_id": _optional_text(line, "trace.id"),
        "span_id": _optional_text(line, "span.id"),
        "error_type": _optional_text(line, "error.type"),
        "error_message": _optional_text(line, "error.message"),
        "error_stack_trace": _optional_text(line, "error.stack_trace"),
        "labels": {str(key): _label_text(value) for key, value in labels.items()},
        "sequence": sequence,
    }


def _label_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


# --- retention --------------------------------------------------------------------------------


def index_day(index: str) -> date | None:
    """The UTC day of a daily log index name, or None when the name carries no day."""
    match = DAY_SUFFIX.search(index)
    if match is None:
        return None
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None


def expired_indices(indices: Iterable[str], today: date, keep_days: int) -> list[str]:
    """Daily indices wholly older than `keep_days` days before `today` (UTC): safe to delete.

    With keep_days=7 on 2025-11-25 the newest deleted day is 2025-11-17; 11-18 .. 11-25 stay.
    """
    if keep_days < 1:
        raise LogGovernanceError("retention must keep at least 1 day")
    cutoff = today - timedelta(days=keep_days)
    return sorted(
        index for index in indices if (day := index_day(index)) is not None and day < cutoff
    )
