"""Config push latency: N Apollo-style clients long-poll a worker; when does each hold a release?

Starts a real worker (bus and config domains, a fresh topic prefix) against the local Kafka,
creates an app, lets N asyncio + httpx clients long-poll `/notifications/v2` exactly as Apollo
clients do (on 200: re-fetch `/configs` with the held releaseKey), then publishes changes and
records, per client, the time from the publish call's start and from its return until the client
holds the new value. A one-client run in the same process is the baseline.

    python -m tests.bench.config [--clients 500] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from streams.settings import Settings

APP = "bench"
NS = f"/config/admin/apps/{APP}/clusters/default/namespaces/application"
TARGET_P99_S = 0.200
APOLLO_CLAIM_S = 1.0


@dataclass
class Round:
    """One publish: when its call started and returned, and when each client held its value."""

    value: str
    started: float = 0.0
    returned: float = 0.0
    held_at: dict[int, float] = field(default_factory=dict)


class Poller:
    """One Apollo-protocol client (its own connection, as an app's would be): long poll, then
    re-fetch the namespace on a notification."""

    def __init__(self, number: int, http: httpx.AsyncClient, rounds: dict[str, Round]) -> None:
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
                params={"appId": APP, "cluster": "default", "notifications": notifications},
            )
            if answer.status_code == 304:
                continue
            answer.raise_for_status()
            self.notification_id = answer.json()[0]["notificationId"]
            fetched = await self.http.get(
                f"/configs/{APP}/default/application", params={"releaseKey": self.release_key}
            )
            if fetched.status_code == 304:
                continue
            fetched.raise_for_status()
            body = fetched.json()
            self.release_key = body["releaseKey"]
            self.value = body["configurations"].get("version")
            current = self.rounds.get(self.value or "")
            if current is not None:
                current.held_at.setdefault(self.number, time.monotonic())


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def measure(base: str, token: str, clients: int, rounds: int) -> dict[str, list[float]]:
    """Latencies (s) from the publish call's start and from its return, over every client."""
    admin = httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    by_value: dict[str, Round] = {}
    pollers = [
        Poller(
            n, httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(95.0, connect=30.0)), by_value
        )
        for n in range(clients)
    ]
    tasks = [asyncio.create_task(p.run()) for p in pollers]
    try:
        deadline = time.monotonic() + 60
        while any(p.value is None for p in pollers):
            if time.monotonic() > deadline:
                raise TimeoutError("clients did not load the initial release within 60 s")
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        from_start: list[float] = []
        from_return: list[float] = []
        for number in range(rounds):
            value = f"{clients}-{number}-{uuid.uuid4().hex[:6]}"
            answer = await admin.put(NS + "/items/version", json={"value": value, "operator": "b"})
            answer.raise_for_status()
            current = by_value[value] = Round(value)
            current.started = time.monotonic()
            published = await admin.post(NS + "/releases", json={"releasedBy": "bench"})
            current.returned = time.monotonic()
            published.raise_for_status()
            deadline = time.monotonic() + 10
            while len(current.held_at) < clients and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if len(current.held_at) < clients:
                stopped = [t.exception() for t in tasks if t.done()]
                print(f"{len(stopped)} clients stopped: {stopped[:3]}")
                raise TimeoutError(f"{clients - len(current.held_at)} clients missed {value}")
            from_start += [at - current.started for at in current.held_at.values()]
            from_return += [at - current.returned for at in current.held_at.values()]
            await asyncio.sleep(0.5)
        return {"from_start": from_start, "from_return": from_return}
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(p.http.aclose() for p in pollers))
        await admin.aclose()


async def prepare(base: str, token: str) -> None:
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30
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


def report(name: str, latencies: dict[str, list[float]]) -> dict[str, float]:
    figures = {
        f"{kind}_{label}": percentile(values, fraction) * 1000
        for kind, values in latencies.items()
        for label, fraction in (("p50", 0.50), ("p99", 0.99), ("max", 1.0))
    }
    mean = statistics.fmean(latencies["from_return"]) * 1000
    print(
        f"{name:>12}: n={len(latencies['from_return']):5d}  "
        f"from return p50 {figures['from_return_p50']:6.1f} ms  "
        f"p99 {figures['from_return_p99']:6.1f} ms  max {figures['from_return_max']:6.1f} ms"
        f"  mean {mean:6.1f} ms | from start p50 {figures['from_start_p50']:6.1f} ms  "
        f"p99 {figures['from_start_p99']:6.1f} ms  max {figures['from_start_max']:6.1f} ms"
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()

    from tests.conftest import _free_port
    from tests.integration.worker import apply_topics, running_worker

    unique = f"bench{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(
            app_id=unique,
            topic_prefix=f"{unique}.",
            domains="bus,config",
            data_dir=Path(folder) / "worker",
            web_port=_free_port(),
            elasticsearch_index_prefix=unique,
            config_long_poll_seconds=60.0,
        )
        apply_topics(settings)
        base = f"http://127.0.0.1:{settings.web_port}"
        token = settings.config_admin_token
        log = Path(folder) / "worker.log"
        with running_worker(settings, log):
            asyncio.run(prepare(base, token))
            baseline = report("1 client", asyncio.run(measure(base, token, 1, options.rounds)))
            loaded = report(
                f"{options.clients} clients",
                asyncio.run(measure(base, token, options.clients, options.rounds)),
            )
    p99 = loaded["from_return_p99"]
    print(
        f"p99 from return: {p99 / baseline['from_return_p99']:.2f}x the one-client baseline, "
        f"{p99 / (TARGET_P99_S * 1000):.2f}x the 200 ms target, "
        f"{p99 / (APOLLO_CLAIM_S * 1000):.2f}x Apollo's ~1 s claim"
    )
    print(f"topics left behind: prefix {settings.topic_prefix} (delete when done)")


if __name__ == "__main__":
    main()
