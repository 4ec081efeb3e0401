"""The local stack: real single-node Kafka, Elasticsearch and Cassandra started from release jars.

Servers run detached (own session, pid file in stack_dir/<name>/) so they outlive the CLI that
started them; a later `up` finds and reuses them, `down` stops them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from deploy.local.cassandra import Cassandra
from deploy.local.elasticsearch import Elasticsearch
from deploy.local.errors import LocalStackError, ServerStartError
from deploy.local.kafka import Kafka
from deploy.local.process import (
    PidRecord,
    file_lock,
    group_rss_bytes,
    is_alive,
    port_open,
    spawn,
    start_ticks,
    stop,
    tail,
)
from deploy.local.server import Server
from streams.settings import Settings

SERVER_NAMES: tuple[str, ...] = ("kafka", "elasticsearch", "cassandra")
State = Literal["running", "stopped", "starting", "failed"]
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class ServerStatus:
    """One server as `status` and `up` see it; pid is None for a server we did not start."""

    name: str
    state: State
    address: str
    version: str
    data_dir: Path
    pid: int | None
    log_file: Path
    rss_bytes: int | None = None


class LocalStack:
    """Starts, checks and stops the local servers described by the settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._servers: dict[str, Server] = {
            server.name: server
            for server in (Kafka(settings), Elasticsearch(settings), Cassandra(settings))
        }

    def _select(self, only: Sequence[str] | None) -> list[Server]:
        if only is None:
            return list(self._servers.values())
        unknown = [name for name in only if name not in self._servers]
        if unknown:
            raise LocalStackError(
                f"unknown server {', '.join(unknown)}: choose from {', '.join(SERVER_NAMES)}"
            )
        return [self._servers[name] for name in SERVER_NAMES if name in only]

    def log_file(self, name: str) -> Path:
        """The console log of server `name` (what `dev logs NAME` shows)."""
        return self._select([name])[0].log_file

    def up(self, only: Sequence[str] | None = None) -> list[ServerStatus]:
        """Start the servers concurrently and wait until each answers a real client request.

        Running servers are reused. Raises the first failure (ServerStartError, MissingToolError,
        DownloadError) once every selected server has settled; the others' messages are its notes.
        """
        servers = self._select(only)
        with ThreadPoolExecutor(max_workers=len(servers) or 1) as pool:
            futures = [pool.submit(self._up_one, server) for server in servers]
        errors = [error for future in futures if (error := future.exception()) is not None]
        if errors:
            for other in errors[1:]:
                errors[0].add_note(str(other))
            raise errors[0]
        return [future.result() for future in futures]

    def down(self, only: Sequence[str] | None = None) -> list[ServerStatus]:
        """Stop the servers this stack started: SIGTERM, then SIGKILL after a grace period."""
        servers = self._select(only)
        with ThreadPoolExecutor(max_workers=len(servers) or 1) as pool:
            return list(pool.map(self._down_one, servers))

    def status(self, only: Sequence[str] | None = None) -> list[ServerStatus]:
        """The state of each server, probed with a real client request."""
        servers = self._select(only)
        with ThreadPoolExecutor(max_workers=len(servers) or 1) as pool:
            return list(pool.map(self._status_one, servers))

    def _status(self, server: Server, state: State, record: PidRecord | None) -> ServerStatus:
        return ServerStatus(
            name=server.name,
            state=state,
            address=record.address if record else server.address,
            version=record.version if record else server.version,
            data_dir=Path(record.data_dir) if record else server.data_dir,
            pid=record.pid if record else None,
            log_file=server.log_file,
            rss_bytes=group_rss_bytes(record.pid) if record and state != "stopped" else None,
        )

    def _status_one(self, server: Server) -> ServerStatus:
        record = PidRecord.read(server.pid_file)
        if record is not None:
            if not is_alive(record):
                return self._status(server, "failed", record)
            return self._status(server, "running" if server.is_ready() else "starting", record)
        if any(port_open(port) for port in server.ports) and server.is_ready():
            return self._status(server, "running", None)
        return self._status(server, "stopped", None)

    def _down_one(self, server: Server) -> ServerStatus:
        with file_lock(server.lock_file):
            record = PidRecord.read(server.pid_file)
            if record is not None:
                stop(record, server.stop_grace_seconds)
                server.pid_file.unlink(missing_ok=True)
        return self._status(server, "stopped", None)

    def _up_one(self, server: Server) -> ServerStatus:
        with file_lock(server.lock_file):
            record = PidRecord.read(server.pid_file)
            if record is not None and is_alive(record):
                self._wait_ready(server, record, None)
                return self._status(server, "running", record)
            server.pid_file.unlink(missing_ok=True)
            busy = [port for port in server.ports if port_open(port)]
            if busy:
                if server.is_ready():
                    return self._status(server, "running", None)
                raise ServerStartError(
                    server.name,
                    f"port {', '.join(map(str, busy))} is in use by a process this stack did not "
                    "start; stop it or choose other ports in the settings",
                    server.log_file,
                )
            launch = server.prepare()
            self._rotate_log(server.log_file)
            process = spawn(
                launch.argv, server.log_file, cwd=launch.cwd, env=launch.env, user=launch.user
            )
            record = PidRecord(
                pid=process.pid,
                start_ticks=start_ticks(process.pid) or 0,
                version=server.version,
                address=server.address,
                data_dir=str(server.data_dir),
            )
            record.write(server.pid_file)
            try:
                self._wait_ready(server, record, process.poll)
            except ServerStartError:
                stop(record, server.stop_grace_seconds)
                process.poll()
                server.pid_file.unlink(missing_ok=True)
                raise
            return self._status(server, "running", record)

    def _wait_ready(self, server: Server, record: PidRecord, exit_code: object) -> None:
        timeout = self.settings.start_timeout_seconds
        deadline = time.monotonic() + timeout
        while True:
            if not is_alive(record):
                code = exit_code() if callable(exit_code) else None
                reason = "exited during start-up" + (f" with code {code}" if code else "")
                raise ServerStartError(server.name, reason, server.log_file, tail(server.log_file))
            if server.is_ready():
                return
            if time.monotonic() > deadline:
                raise ServerStartError(
                    server.name,
                    f"not ready after {timeout:.0f} s (start_timeout_seconds)",
                    server.log_file,
                    tail(server.log_file),
                )
            time.sleep(POLL_SECONDS)

    @staticmethod
    def _rotate_log(log_file: Path) -> None:
        if log_file.is_file() and log_file.stat().st_size:
            log_file.replace(log_file.with_suffix(".log.1"))
