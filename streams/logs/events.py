"""Topics and schemas the log domain reads and writes."""

from __future__ import annotations

RECORDS_TOPIC = "logs.records"
RECORD_SCHEMA = "stackstream.logs.LogRecord"
CONFIG_RELEASES_TOPIC = "config.releases"
CONFIG_RELEASE_SCHEMA = "stackstream.config.ConfigRelease"
POINTS_TOPIC = "metrics.points"
POINT_SCHEMA = "stackstream.metrics.MetricPoint"
