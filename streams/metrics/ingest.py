"""Pure KairosDB ingest parsing: the JSON body of POST /api/v1/datapoints and telnet `put` lines.

Both produce MetricPoint records or raise `KairosErrors`, whose messages name the offending
element the way KairosDB's 400 answer does (`{"errors": ["metric[0](name=x).tags ..."]}`).
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from collections.abc import Mapping
from typing import Any

from streams.errors import RecordRejected, StackstreamError
from streams.metrics.model import validate_point

SECONDS_THRESHOLD = 3_000_000_000  # telnet `put`: smaller timestamps are seconds (KairosDB rule)


class KairosErrors(StackstreamError):
    """Input KairosDB would answer with 400 `{"errors": [...]}`; one message per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors

    def body(self) -> dict[str, list[str]]:
        return {"errors": self.errors}


def decompress(body: bytes, content_encoding: str, content_type: str, limit: int) -> bytes:
    """The request body, gunzipped when sent as `Content-Encoding: gzip` or application/gzip.

    A body already inflated by the HTTP server (aiohttp decodes Content-Encoding itself) lacks
    the gzip magic bytes and is returned as it is.
    """
    gzipped = "gzip" in content_encoding.lower() or "gzip" in content_type.lower()
    if not gzipped or (content_encoding and not body.startswith(b"\x1f\x8b")):
        return body
    try:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        data = inflater.decompress(body, limit + 1)
    except (OSError, zlib.error, EOFError, gzip.BadGzipFile) as error:
        raise KairosErrors([f"gzip body cannot be read: {error}"]) from None
    if len(data) > limit:
        raise KairosErrors([f"request body is larger than {limit} bytes after gunzip"])
    return data


def parse_datapoints(body: bytes, *, default_ttl: int = 0) -> list[dict[str, Any]]:
    """MetricPoints of a KairosDB JSON body; every problem is collected, then all are raised."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise KairosErrors([f"Invalid json: {error}"]) from None
    if isinstance(document, dict):
        document = [document]
    if not isinstance(document, list):
        raise KairosErrors(["Invalid json: expected an array of metrics"])
    points: list[dict[str, Any]] = []
    errors: list[str] = []
    for index, metric in enumerate(document):
        where = f"metric[{index}]"
        if not isinstance(metric, dict):
            errors.append(f"{where} must be an object")
            continue
        name = metric.get("name")
        if isinstance(name, str) and name:
            where = f"{where}(name={name})"
        try:
            points.extend(_metric_points(metric, where, default_ttl))
        except KairosErrors as problem:
            errors.extend(problem.errors)
    if errors:
        raise KairosErrors(errors)
    return points


def _metric_points(metric: Mapping[str, Any], where: str, default_ttl: int) -> list[dict[str, Any]]:
    name = metric.get("name")
    if not isinstance(name, str) or not name.strip():
        raise KairosErrors([f"{where}.name may not be empty."])
    if "type" in metric and metric["type"] not in ("long", "double", "number"):
        raise KairosErrors([f"{where}.type {metric['type']!r} is not supported (numbers only)"])
    tags = metric.get("tags")
    if not isinstance(tags, dict) or not tags:
        raise KairosErrors([f"{where}.tags count must be greater than or equal to 1."])
    text_tags: dict[str, str] = {}
    for key, value in tags.items():
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise KairosErrors([f"{where}.tag[{key}].value must be a string."])
        text_tags[str(key)] = str(value)
    ttl = metric.get("ttl", 0)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 0 or ttl > 2**31 - 1:
        raise KairosErrors([f"{where}.ttl must be a whole number of seconds >= 0."])
    pairs: list[tuple[Any, Any, str]] = []
    if "datapoints" in metric:
        datapoints = metric["datapoints"]
        if not isinstance(datapoints, list):
            raise KairosErrors([f"{where}.datapoints must be an array of [timestamp, value]."])
        for position, pair in enumerate(datapoints):
            here = f"{where}.datapoints[{position}]"
            if not isinstance(pair, list) or len(pair) != 2:
                raise KairosErrors([f"{here} must be [timestamp, value]."])
            pairs.append((pair[0], pair[1], here))
    elif "timestamp" in metric or "value" in metric:
        pairs.append((metric.get("timestamp"), metric.get("value"), where))
    else:
        raise KairosErrors([f"{where} must have datapoints or timestamp and value."])
    points = []
    errors = []
    for timestamp, value, here in pairs:
        try:
            point = {
                "name": name,
                "timestamp_ms": _timestamp(timestamp, here),
                "value": _value(value, here),
                "tags": text_tags,
                "ttl_seconds": ttl or default_ttl,
            }
            validate_point(point)
        except KairosErrors as problem:
            errors.extend(problem.errors)
            continue
        except RecordRejected as problem:
            errors.append(f"{here}.{problem.field} {problem.reason}")
            continue
        points.append(point)
    if errors:
        raise KairosErrors(errors)
    return points


def _timestamp(raw: Any, where: str) -> int:
    if isinstance(raw, bool) or raw is None:
        raise KairosErrors([f"{where}.timestamp must be a number of milliseconds."])
    if isinstance(raw, str):
        try:
            raw = int(raw)
        except ValueError:
            raise KairosErrors([f"{where}.timestamp {raw!r} is not a number."]) from None
    if isinstance(raw, float):
        if not raw.is_integer():
            raise KairosErrors([f"{where}.timestamp {raw} is not a whole number."])
        raw = int(raw)
    if not isinstance(raw, int):
        raise KairosErrors([f"{where}.timestamp must be a number of milliseconds."])
    return raw


def _value(raw: Any, where: str) -> float:
    if isinstance(raw, bool) or raw is None:
        raise KairosErrors([f"{where}.value must be a number."])
    if isinstance(raw, str):
        try:
            raw = float(raw)
        except ValueError:
            raise KairosErrors([f"{where}.value {raw!r} is not a number."]) from None
    if not isinstance(raw, int | float):
        raise KairosErrors([f"{where}.value must be a number (complex types are not supported)."])
    value = float(raw)
    if not math.isfinite(value):
        raise KairosErrors([f"{where}.value must be a finite number, not {raw}."])
    return value


def parse_put(line: str, *, default_ttl: int = 0) -> dict[str, Any]:
    """One telnet `put <metric> <ts> <value> <k=v> ...` (or `putm`, ts always ms) line."""
    parts = line.split()
    if not parts or parts[0] not in ("put", "putm"):
        raise KairosErrors([f"unknown command: {parts[0] if parts else '(empty line)'}"])
    command = parts[0]
    if len(parts) < 5:
        raise KairosErrors([f"{command} needs <metric> <timestamp> <value> and at least one tag"])
    name, raw_ts, raw_value = parts[1], parts[2], parts[3]
    where = f"{command}(name={name})"
    try:
        timestamp = int(raw_ts)
    except ValueError:
        raise KairosErrors([f"{where}.timestamp {raw_ts!r} is not a whole number"]) from None
    if command == "put" and timestamp < SECONDS_THRESHOLD:
        timestamp *= 1000
    value = _value(raw_value, where)
    tags: dict[str, str] = {}
    for token in parts[4:]:
        key, equals, tag_value = token.partition("=")
        if not equals or not key or not tag_value:
            raise KairosErrors([f"{where}.tag {token!r} must be name=value"])
        tags[key] = tag_value
    point = {
        "name": name,
        "timestamp_ms": timestamp,
        "value": value,
        "tags": tags,
        "ttl_seconds": default_ttl,
    }
    try:
        validate_point(point)
    except RecordRejected as problem:
        raise KairosErrors([f"{where}.{problem.field} {problem.reason}"]) from None
    return point
