"""What the stack needs to know about one server: artifacts, command line, ports, readiness."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from streams.settings import Settings


@dataclass(frozen=True)
class Launch:
    """A prepared start: the command line, its environment and the user to run it as."""

    argv: list[str]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None


class Server(ABC):
    """One single-node server of the local stack, configured from the settings."""

    name: ClassVar[str]
    stop_grace_seconds: ClassVar[float] = 30.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dir = settings.stack_dir / self.name

    @property
    def log_file(self) -> Path:
        """Console output of the server process (stdout and stderr)."""
        return self.dir / f"{self.name}.log"

    @property
    def pid_file(self) -> Path:
        """The pid record of the running server."""
        return self.dir / f"{self.name}.pid"

    @property
    def lock_file(self) -> Path:
        """Serialises starts and stops of this server across processes."""
        return self.dir / ".lock"

    @property
    @abstractmethod
    def version(self) -> str:
        """The configured server version."""

    @property
    @abstractmethod
    def address(self) -> str:
        """What a client connects to: host:port or a URL."""

    @property
    @abstractmethod
    def data_dir(self) -> Path:
        """Where the server keeps its data."""

    @property
    @abstractmethod
    def ports(self) -> list[int]:
        """Every port the server listens on; a port taken by another process blocks the start."""

    @abstractmethod
    def prepare(self) -> Launch:
        """Fetch artifacts if needed, write configuration, and return the command to run."""

    @abstractmethod
    def is_ready(self) -> bool:
        """A real client round trip succeeds (quick; False instead of raising)."""

    def base_env(self) -> dict[str, str]:
        """The parent's environment without JVM option variables that would change the JVMs."""
        env = dict(os.environ)
        for variable in ("JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "CLASSPATH"):
            env.pop(variable, None)
        return env
