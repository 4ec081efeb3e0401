"""A `logging.Handler` that ships structured log records (ECS names once indexed) to the bus.

    import logging
    from streams.sdk.logging import StackstreamLogHandler

    logging.getLogger().addHandler(StackstreamLogHandler("orders"))

`emit` never blocks the application: records are queued by the SDK producer and sent in the
background; a full queue drops and counts (`handler.producer.stats`). Which levels are kept is
decided centrally by the governance agent (default WARN and above, per-app rules from the
config centre), so the handler itself passes everything its loggers let through.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import traceback
from collections.abc import Mapping
from typing import Any

from streams.sdk.context import current_trace
from streams.sdk.masking import SecretMasker, mask_log_record
from streams.sdk.producer import EventProducer

RECORDS_TOPIC = "logs.records"
RECORD_SCHEMA = "stackstream.logs.LogRecord"
_LEVELS = ((50, "FATAL"), (40, "ERROR"), (30, "WARN"), (20, "INFO"), (10, "DEBUG"))


def level_name(levelno: int) -> str:
    """The log.level of a Python level number; custom levels fall to the level below."""
    for threshold, name in _LEVELS:
        if levelno >= threshold:
            return name
    return "TRACE"


class StackstreamLogHandler(logging.Handler):
    """Emits each log record as a `stackstream.logs.LogRecord` on `logs.records`.

    Secrets (passwords, tokens, card numbers: `streams.sdk.masking`) are masked before the
    record leaves the process. Trace and span ids come from the current tracing context
    (`streams.sdk.context`) or from
    `extra={"trace_id": ..., "span_id": ...}`; `extra={"labels": {...}}` adds labels to the
    handler's own. The sequence number (process id and a counter) keeps ids of distinct lines
    distinct, so the sink's deterministic ids only merge true redeliveries.
    """

    def __init__(
        self,
        service: str,
        *,
        producer: EventProducer | None = None,
        host: str | None = None,
        labels: Mapping[str, str] | None = None,
        level: int = logging.NOTSET,
        masker: SecretMasker | None = None,
    ) -> None:
        super().__init__(level)
        self.masker = masker or SecretMasker()
        if not service:
            raise ValueError("StackstreamLogHandler needs the service (application) name")
        self.service = service
        self.host = host or socket.gethostname()
        self.labels = {str(key): str(value) for key, value in (labels or {}).items()}
        self._owns_producer = producer is None
        self.producer = producer or EventProducer(client_id=f"stackstream-logs-{service}")
        self._sequence = itertools.count()
        self._sequence_base = (os.getpid() & 0x7FFFFFFF) << 32
        self._inside = threading.local()

    def record_for(self, record: logging.LogRecord) -> dict[str, Any]:
        """The LogRecord (Avro) dict for a Python log record."""
        trace = current_trace.get()
        trace_id = getattr(record, "trace_id", None) or (trace.trace_id if trace else None)
        span_id = getattr(record, "span_id", None) or (trace.span_id if trace else None)
        labels = dict(self.labels)
        extra_labels = getattr(record, "labels", None)
        if isinstance(extra_labels, Mapping):
            labels.update({str(key): str(value) for key, value in extra_labels.items()})
        error_type = error_message = stack_trace = None
        if record.exc_info and record.exc_info[0] is not None:
            kind, value, _ = record.exc_info
            error_type = (
                kind.__qualname__
                if kind.__module__ == "builtins"
                else (f"{kind.__module__}.{kind.__qualname__}")
            )
            error_message = str(value)
            stack_trace = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        if record.stack_info:
            stack_trace = (
                f"{stack_trace}\n{record.stack_info}" if stack_trace else record.stack_info
            )
        return mask_log_record(
            self.masker,
            {
                "timestamp_us": int(record.created * 1_000_000),
                "level": level_name(record.levelno),
                "message": record.getMessage(),
                "service": self.service,
                "host": self.host,
                "logger": record.name,
                "trace_id": str(trace_id) if trace_id else None,
                "span_id": str(span_id) if span_id else None,
                "error_type": error_type,
                "error_message": error_message,
                "error_stack_trace": stack_trace,
                "labels": labels,
                "sequence": self._sequence_base | next(self._sequence),
            },
        )

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._inside, "active", False):
            return  # a log line written while emitting (the producer's own warnings)
        self._inside.active = True
        try:
            self.producer.emit(
                RECORDS_TOPIC, RECORD_SCHEMA, self.record_for(record), key=self.service
            )
        except Exception:
            self.handleError(record)
        finally:
            self._inside.active = False

    def flush(self) -> None:
        self.producer.flush()

    def close(self) -> None:
        if self._owns_producer:
            self.producer.close()
        super().close()
