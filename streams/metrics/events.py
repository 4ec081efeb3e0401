"""Metric records on the bus: the topics and schemas of metric points and deletes."""

from __future__ import annotations

POINTS_TOPIC = "metrics.points"
POINT_SCHEMA = "stackstream.metrics.MetricPoint"
DELETES_TOPIC = "metrics.deletes"
DELETE_SCHEMA = "stackstream.metrics.MetricDelete"
