"""Config records on the bus: topics and schemas of releases, drafts and audit events."""

from __future__ import annotations

RELEASES_TOPIC = "config.releases"
HISTORY_TOPIC = "config.release_history"
DRAFTS_TOPIC = "config.drafts"
AUDIT_TOPIC = "config.audit"

RELEASE_SCHEMA = "stackstream.config.ConfigRelease"
AUDIT_SCHEMA = "stackstream.config.AuditEvent"
