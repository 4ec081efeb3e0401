"""Config push latency: N Apollo-style clients long-poll a worker; when does each hold a release?

Starts real workers (bus and config domains, a fresh topic prefix) against the local Kafka,
creates an app, lets N clients long-poll `/notifications/v2` exactly as Apollo clients do (on
200: re-fetch `/configs` with the held releaseKey), then publishes changes and records, per
client, the time from the publish call's start and from its return until the client holds the
new value. A one-client run in the same process is the baseline.

Clients are `raw` (one keep-alive HTTP/1.1 connection each over asyncio streams: cheap, so the
figures are the server's) or `httpx` (one AsyncClient each, as the first version of this bench;
its own CPU cost on a 2-core machine is part of what it measures). With `--workers 2` the clients
are spread over two workers on 127.0.0.1 (as behind a load balancer); publishes go to the first.
Each round also prints the CPU seconds the bench process and the workers used, so the client
side's share on a shared machine is visible.

    python -m tests.bench.config [--clients 500] [--rounds 5] [--client raw|httpx] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlencode, urlsplit

import httpx

from streams.settings import Settings

APP = "bench"
NS = f"/config/admin/apps/{APP}/clusters/default/namespaces/application"
CONFIGS_PATH = f"/configs/{APP}/default/application"
TARGET_P99_S = 0.200
APOLLO_CLAIM_S = 1.0
CLIENT_KINDS = ("raw", "httpx")


@dataclass
class Round:
    """One publish: when its call started and returned, and when each client held its value."""

    value: str
    started: float = 0.0
    returned: float = 0.0
    held_at: dict[int, float] = field(default_factory=dict)


class Answer(Protocol):
    status_code: int

    def json(self) -> object: ...


@dataclass
class RawAnswer:
    status_code: int
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


class RawHttp:
    """A minimal HTTP/1.1 keep-alive GET client on asyncio streams: one connection, no pooling,
    so a client costs the bench as little CPU as a client can."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def get(self, path: str, params: dict[str, str]) -> RawAnswer:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        target = f"{path}?{urlencode(params)}"
        self._writer.write(
            f"GET {target} HTTP/1.1\r\nHost: {self.host}\r\nConnection: keep-alive\r\n\r\n".encode()
        )
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, _, header_block = head.partition(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        length = 0
        close = False
        for line in header_block.split(b"\r\n"):
            name, _, value = line.partition(b":")
            lowered = name.strip().lower()
            if lowered == b"content-length":
                length = int(value)
            elif lowered == b"connection" and value.strip().lower() == b"close":
                close = True
        body = await self._reader.readexactly(length) if length else b""
        if close:
            await self.aclose()
        return RawAnswer(status, body)

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None


class HttpxHttp:
    """One httpx AsyncClient per client, as an application's own connection would be."""

    def __init__(self, base: str) -> None:
        self.client = httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(95.0, connect=30.0))

    async def get(self, path: str, params: dict[str, str]) -> Answer:
        return await self.client.get(path, params=params)

    async def aclose(self) -> None:
        await self.client.aclose()


class Poller:
    """One Apollo-protocol client (its own connection, as an app's would be): long poll, then
    re-fetch the namespace on a notification."""

    def __init__(self, number: int, http: RawHttp | HttpxHttp, rounds: dict[str, Round]) -> None:
        self.number = number
        self.http = http
        self.rounds = rounds
        self.notification_id = -1
        self.release_key = "-1"
        self.value: str | None = None

    async def run(self) -> None:
        while True:
            notifications = json.dumps(
                [{"namespaceName": "application", "notificationId": self.notification_id}]
            )
            answer = await self.http.get(
                "/notifications/v2",
                {"appId": APP, "cluster": "default", "notifications": notifications},
            )
            if answer.status_code == 304:
                continue
            if answer.status_code != 200:
                raise RuntimeError(f"/notifications/v2 answered {answer.status_code}")
            self.notification_id = answer.json()[0]["notificationId"]  # type: ignore[index]
            fetched = await self.http.get(CONFIGS_PATH, {"releaseKey": self.release_key})
            if fetched.status_code == 304:
                continue
            if fetched.status_code != 200:
                raise RuntimeError(f"/configs answered {fetched.status_code}")
            body = fetched.json()
            assert isinstance(body, dict)
            self.release_key = body["releaseKey"]
            self.value = body["configurations"].get("version")
            current = self.rounds.get(self.value or "")
            if current is not None:
                current.held_at.setdefault(self.number, time.monotonic())


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc; 0 where unavailable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Measured:
    from_start: list[float] = field(default_factory=list)
    from_return: list[float] = field(default_factory=list)
    bench_cpu_s: float = 0.0
    worker_cpu_s: float = 0.0


async def measure(
    bases: list[str], token: str, clients: int, rounds: int, kind: str, worker_pids: list[int]
) -> Measured:
    """Latencies (s) from the publish call's start and return, and CPU spent per round."""
    admin = httpx.AsyncClient(
        base_url=bases[0], headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    by_value: dict[str, Round] = {}
    transport = RawHttp if kind == "raw" else HttpxHttp
    pollers = [Poller(n, transport(bases[n % len(bases)]), by_value) for n in range(clients)]
    tasks = [asyncio.create_task(p.run()) for p in pollers]
    measured = Measured()
    try:
        deadline = time.monotonic() + 60
        while any(p.value is None for p in pollers):
            if time.monotonic() > deadline:
                raise TimeoutError("clients did not load the initial release within 60 s")
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        for number in range(rounds):
            value = f"{clients}-{number}-{uuid.uuid4().hex[:6]}"
            answer = await admin.put(NS + "/items/version", json={"value": value, "operator": "b"})
            answer.raise_for_status()
            current = by_value[value] = Round(value)
            bench_cpu = time.process_time()
            worker_cpu = sum(process_cpu_seconds(pid) for pid in worker_pids)
            current.started = time.monotonic()
            published = await admin.post(NS + "/releases", json={"releasedBy": "bench"})
            current.returned = time.monotonic()
            published.raise_for_status()
            deadline = time.monotonic() + 10
            while len(current.held_at) < clients and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            if len(current.held_at) < clients:
                stopped = [t.exception() for t in tasks if t.done()]
                print(f"{len(stopped)} clients stopped: {stopped[:3]}")
                raise TimeoutError(f"{clients - len(current.held_at)} clients missed {value}")
            measured.bench_cpu_s += time.process_time() - bench_cpu
            measured.worker_cpu_s += (
                sum(process_cpu_seconds(pid) for pid in worker_pids) - worker_cpu
            )
            measured.from_start += [at - current.started for at in current.held_at.values()]
            measured.from_return += [at - current.returned for at in current.held_at.values()]
            await asyncio.sleep(0.5)
        measured.bench_cpu_s /= rounds
        measured.worker_cpu_s /= rounds
        return measured
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(p.http.aclose() for p in pollers))
        await admin.aclose()


async def prepare(bases: list[str], token: str) -> None:
    async with httpx.AsyncClient(
        base_url=bases[0], headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as admin:
        deadline = time.monotonic() + 120
        while True:
            try:
                created = await admin.post(
                    "/config/admin/apps", json={"appId": APP, "operator": "bench"}
                )
                if created.status_code in (201, 409):
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the worker did not accept the app within 120 s")
            await asyncio.sleep(0.5)
        await admin.put(NS + "/items/version", json={"value": "initial", "operator": "bench"})
        (await admin.post(NS + "/releases", json={"releasedBy": "bench"})).raise_for_status()
    for base in bases[1:]:
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            while True:
                try:
                    if (await client.get(CONFIGS_PATH)).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{base} did not serve the release within 120 s")
                await asyncio.sleep(0.5)


def report(name: str, measured: Measured) -> dict[str, float]:
    latencies = {"from_start": measured.from_start, "from_return": measured.from_return}
    figures = {
        f"{kind}_{label}": percentile(values, fraction) * 1000
        for kind, values in latencies.items()
        for label, fraction in (("p50", 0.50), ("p99", 0.99), ("max", 1.0))
    }
    mean = statistics.fmean(measured.from_return) * 1000
    print(
        f"{name:>12}: n={len(measured.from_return):5d}  "
        f"from return p50 {figures['from_return_p50']:6.1f} ms  "
        f"p99 {figures['from_return_p99']:6.1f} ms  max {figures['from_return_max']:6.1f} ms"
        f"  mean {mean:6.1f} ms | from start p50 {figures['from_start_p50']:6.1f} ms  "
        f"p99 {figures['from_start_p99']:6.1f} ms  max {figures['from_start_max']:6.1f} ms"
        f" | CPU per round: bench {measured.bench_cpu_s * 1000:5.0f} ms, "
        f"workers {measured.worker_cpu_s * 1000:5.0f} ms"
    )
    return figures


@contextlib.contextmanager
def workers(count: int, folder: Path) -> Iterator[tuple[list[str], str, list[int], str]]:
    """`count` workers of one fresh app (bus + config domains): their URLs, token, pids."""
    from tests.conftest import _free_port
    from tests.integration.worker import apply_topics, running_worker

    unique = f"bench{uuid.uuid4().hex[:8]}"
    first = Settings(
        app_id=unique,
        topic_prefix=f"{unique}.",
        domains="bus,config",
        data_dir=folder / "worker-0",
        web_port=_free_port(),
        elasticsearch_index_prefix=unique,
        config_long_poll_seconds=60.0,
    )
    apply_topics(first)
    every = [first] + [
        first.model_copy(update={"web_port": _free_port(), "data_dir": folder / f"worker-{n}"})
        for n in range(1, count)
    ]
    with contextlib.ExitStack() as stack:
        processes = [
            stack.enter_context(running_worker(settings, folder / f"worker-{n}.log"))
            for n, settings in enumerate(every)
        ]
        yield (
            [f"http://127.0.0.1:{s.web_port}" for s in every],
            first.config_admin_token,
            [p.pid for p in processes],
            first.topic_prefix,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--client", choices=CLIENT_KINDS, default="raw")
    parser.add_argument("--workers", type=int, default=1)
    options = parser.parse_args()

    with (
        tempfile.TemporaryDirectory() as folder,
        workers(options.workers, Path(folder)) as (bases, token, pids, prefix),
    ):
        asyncio.run(prepare(bases, token))
        baseline = report(
            "1 client", asyncio.run(measure(bases, token, 1, options.rounds, options.client, pids))
        )
        loaded = report(
            f"{options.clients} clients",
            asyncio.run(
                measure(bases, token, options.clients, options.rounds, options.client, pids)
            ),
        )
    p99 = loaded["from_return_p99"]
    print(
        f"client {options.client}, {options.workers} worker(s). p99 from return: "
        f"{p99 / max(baseline['from_return_p99'], 1.0):.2f}x the one-client baseline "
        f"(floored at 1 ms), {p99 / (TARGET_P99_S * 1000):.2f}x the 200 ms target, "
        f"{p99 / (APOLLO_CLAIM_S * 1000):.2f}x Apollo's ~1 s claim"
    )
    print(f"topics left behind: prefix {prefix} (delete when done)")


if __name__ == "__main__":
    main()
