"""Tables of the log domain."""

from __future__ import annotations

RULES_TABLE = "logs.rules"
"""Global: app id → the logging keys its config-centre namespace sets (level, quota, sampling)."""
