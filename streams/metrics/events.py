"""Metric records on the bus: the topic and schema a metric point travels with."""

from __future__ import annotations

POINTS_TOPIC = "metrics.points"
POINT_SCHEMA = "stackstream.metrics.MetricPoint"
