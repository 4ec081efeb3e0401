"""The SDK log handler and trace context, the config-rule follower and the offset guard of the
log agent: no servers."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from streams.bus.codec import AvroCodec, SchemaRegistry
from streams.errors import RecordRejected
from streams.logs import events
from streams.logs.agents import RuleBook, RuleFollower
from streams.logs.model import GovernanceRule
from streams.sdk import logging as sdk_logging
from streams.sdk.context import get_trace, trace_scope
from streams.sdk.logging import StackstreamLogHandler, level_name
from streams.settings import PROJECT_ROOT


class RecordingProducer:
    """Stands in for EventProducer: keeps what the handler emits (no Kafka involved)."""

    def __init__(self) -> None:
        self.emitted: list[tuple[str, str, dict[str, Any], Any]] = []
        self.flushed = 0

    def emit(self, topic: str, schema: str, record: dict[str, Any], key: Any = None) -> bool:
        self.emitted.append((topic, schema, record, key))
        return True

    def flush(self, timeout: float = 10.0) -> int:
        self.flushed += 1
        return 0


@pytest.fixture
def captured() -> tuple[logging.Logger, RecordingProducer]:
    producer = RecordingProducer()
    handler = StackstreamLogHandler(
        "orders",
        producer=producer,
        host="h1",
        labels={"team": "pay"},  # type: ignore[arg-type]
    )
    logger = logging.getLogger("test.sdk.logs")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, producer


def test_handler_emits_schema_valid_records_with_trace_and_error(
    captured: tuple[logging.Logger, RecordingProducer],
) -> None:
    logger, producer = captured
    codec = AvroCodec(SchemaRegistry.from_directory(PROJECT_ROOT / "schemas"))
    logger.debug("plain %s", "debug")
    with trace_scope("t-1", "s-1"):
        try:
            {}["missing"]
        except KeyError:
            logger.error("lookup failed", exc_info=True, extra={"labels": {"order": 7}})
    logger.warning("explicit", extra={"trace_id": "t-9"})
    assert len(producer.emitted) == 3
    for topic, schema, record, key in producer.emitted:
        assert (topic, schema, key) == (events.RECORDS_TOPIC, events.RECORD_SCHEMA, "orders")
        assert codec.decode(codec.encode(schema, record), schema) == record
    debug, error, warning = (entry[2] for entry in producer.emitted)
    assert debug["level"] == "DEBUG" and debug["message"] == "plain debug"
    assert debug["trace_id"] is None and debug["logger"] == "test.sdk.logs"
    assert error["trace_id"] == "t-1" and error["span_id"] == "s-1"
    assert error["error_type"] == "KeyError" and error["error_message"] == "'missing'"
    assert "Traceback" in error["error_stack_trace"]
    assert error["labels"] == {"team": "pay", "order": "7"}
    assert warning["trace_id"] == "t-9" and warning["level"] == "WARN"
    assert len({r["sequence"] for _, _, r, _ in producer.emitted}) == 3
    assert get_trace() is None, "the trace scope ends with its block"


def test_levels_map_to_log_level_names() -> None:
    assert [level_name(n) for n in (5, 10, 20, 25, 30, 40, 50, 60)] == [
        "TRACE",
        "DEBUG",
        "INFO",
        "INFO",
        "WARN",
        "ERROR",
        "FATAL",
        "FATAL",
    ]


def test_handler_never_raises_into_the_application(
    captured: tuple[logging.Logger, RecordingProducer], monkeypatch: pytest.MonkeyPatch
) -> None:
    logger, producer = captured

    def broken(*args: Any, **kwargs: Any) -> bool:
        raise RuntimeError("queue exploded")

    monkeypatch.setattr(producer, "emit", broken)
    monkeypatch.setattr(logging, "raiseExceptions", False)
    logger.error("still fine")


def test_sdk_constants_match_the_log_domain_and_sdk_imports_no_worker_code() -> None:
    assert sdk_logging.RECORDS_TOPIC == events.RECORDS_TOPIC
    assert sdk_logging.RECORD_SCHEMA == events.RECORD_SCHEMA
    source = (PROJECT_ROOT / "streams" / "sdk" / "logging.py").read_text()
    assert "faust" not in source and "streams.logs" not in source


async def test_trace_context_is_per_task() -> None:
    async def in_trace(trace: str) -> str | None:
        with trace_scope(trace):
            await asyncio.sleep(0.01)
            context = get_trace()
            return context.trace_id if context else None

    assert await asyncio.gather(in_trace("a"), in_trace("b")) == ["a", "b"]


def release(app_id: str, **configurations: str) -> dict[str, Any]:
    return {
        "app_id": app_id,
        "cluster": "default",
        "namespace": "stackstream.logging",
        "configurations": configurations,
    }


def test_rule_follower_applies_releases_and_tombstones() -> None:
    follower = RuleFollower("stackstream.logging", "default")
    book = RuleBook(follower.overrides, GovernanceRule("WARN", 100, 10))
    follower.apply("orders+default+stackstream.logging", release("orders", level="DEBUG"))
    follower.apply("x", {**release("orders", level="FATAL"), "namespace": "application"})
    assert book("orders") == GovernanceRule("DEBUG", 100, 10)
    assert book("payments") == GovernanceRule("WARN", 100, 10)
    with pytest.raises(RecordRejected):
        follower.apply("orders+default+stackstream.logging", release("orders", level="LOUD"))
    book.refresh()
    assert book("orders").min_level == "DEBUG", "a bad release keeps the previous rule"
    follower.apply("orders+default+stackstream.logging", None)
    book.refresh()
    assert book("orders") == GovernanceRule("WARN", 100, 10)


def test_the_handler_masks_secrets_before_they_leave_the_process() -> None:
    import logging as std_logging

    from streams.sdk.logging import StackstreamLogHandler

    class Capture:
        def __init__(self) -> None:
            self.records: list[dict] = []

        def emit(self, topic: str, schema: str, record: dict, key: str | None = None) -> bool:
            self.records.append(record)
            return True

    capture = Capture()
    handler = StackstreamLogHandler("orders", producer=capture)  # type: ignore[arg-type]
    logger = std_logging.getLogger("test.masking")
    logger.addHandler(handler)
    try:
        logger.error(
            "login failed password=hunter2 card 4111 1111 1111 1111",
            extra={"labels": {"auth": "Bearer abc.def.ghi"}},
        )
    finally:
        logger.removeHandler(handler)
    (record,) = capture.records
    assert "hunter2" not in record["message"] and "password=***" in record["message"]
    assert "****1111" in record["message"] and "4111 1111" not in record["message"]
    assert "abc.def.ghi" not in record["labels"]["auth"]
    assert record["labels"]["stackstream_masked"] == "true", "so governance still flags the line"
