"""Tracing records on the bus: the topics and schemas message trees and report rows travel with."""

from __future__ import annotations

MESSAGES_TOPIC = "trace.messages"
REPORTS_TOPIC = "trace.reports"
TREE_SCHEMA = "stackstream.tracing.MessageTree"
REPORT_SCHEMA = "stackstream.tracing.ReportRow"

TRANSACTION = "TRANSACTION"
EVENT = "EVENT"
METRIC = "METRIC"
HEARTBEAT = "HEARTBEAT"
TRACE = "TRACE"
