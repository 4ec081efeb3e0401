"""Exceptions of the local stack; each message says what to do next."""

from __future__ import annotations

from pathlib import Path


class LocalStackError(Exception):
    """Base class of every error the local stack raises."""


class MissingToolError(LocalStackError):
    """A program the stack needs (java, mvn) is not installed or too old."""


class DownloadError(LocalStackError):
    """Maven could not fetch a server's artifacts."""


class ServerStartError(LocalStackError):
    """A server exited or did not become ready in time; the message names its log file."""

    def __init__(self, name: str, reason: str, log_file: Path, tail: str = "") -> None:
        self.name = name
        self.reason = reason
        self.log_file = log_file
        message = f"{name}: {reason}. Read its log: {log_file}"
        if tail:
            message += f"\n--- last lines of {log_file} ---\n{tail}"
        super().__init__(message)
