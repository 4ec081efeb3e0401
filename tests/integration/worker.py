"""Run a real stackstream worker as a child process for a test, and talk to its HTTP views."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from streams.bus.admin import admin_client, apply, plan
from streams.settings import Settings
from streams.topology import load_topology

T = TypeVar("T")
WORKER_LOGLEVEL = os.environ.get("STACKSTREAM_TEST_WORKER_LOGLEVEL", "warning")


def apply_topics(settings: Settings) -> None:
    """Create this test's topics (with its prefix) as `stackstream topics apply` would."""
    topology = load_topology(settings.topology_file)
    admin = admin_client(settings.kafka)
    changes = plan(admin, topology.topics.values(), settings.topic_prefix)
    apply(admin, topology, settings.topic_prefix, [c for c in changes if c.action != "unchanged"])


@contextmanager
def running_worker(settings: Settings, log_path: Path) -> Iterator[subprocess.Popen]:
    """`stackstream worker` with these settings; stopped (SIGTERM) when the block ends."""
    env = {**os.environ, **settings.environment()}
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker", "--loglevel", WORKER_LOGLEVEL],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            return error.code, json.loads(body or b"null")
        except json.JSONDecodeError:
            return error.code, body.decode(errors="replace")


def eventually(
    check: Callable[[], T | None], timeout: float, what: str, log: Path | None = None
) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` and the worker log."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (OSError, urllib.error.URLError) as error:
            last_error = error
        time.sleep(0.5)
    tail = ""
    if log is not None and log.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
    raise AssertionError(f"timed out waiting for {what} (last error: {last_error})\n{tail}")
