"""Log records on the bus."""

from __future__ import annotations

RECORDS_TOPIC = "logs.records"
RECORD_SCHEMA = "stackstream.logs.LogRecord"
