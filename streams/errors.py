"""Exceptions shared by every domain; pure, so a domain's model.py may raise them."""

from __future__ import annotations


class StackstreamError(Exception):
    """Base of every error stackstream raises on purpose."""


class RecordRejected(StackstreamError):
    """A decoded record breaks a domain rule; it goes to the dead-letter topic with this reason."""

    error_type = "validation"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
