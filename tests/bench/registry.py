"""Registry propagation and eviction under load: two local workers, N instances heartbeating.

    python tests/bench/registry.py [--instances 2000] [--probes 100] [--lease 5] [--burst]

Two `stackstream worker` child processes (domains bus,registry, fresh topic prefix) on
127.0.0.1. N instances register on worker A and heartbeat every `--renew` seconds (default 10,
three times Eureka's 30) for the whole run, spread evenly over the interval as independent
clients send them, or each round at once with `--burst`. Meanwhile `--probes` PROBE instances
register one at a time on A; for each, from the moment its register call returns: time until it
is in `GET /eureka/apps/PROBE` on worker B (the same table read as `GET /eureka/apps`, without
rendering N instances per poll) and until it is in an SDK `DiscoveryClient`'s local copy (push
via registry.events, client on B). Probes use a short lease and never renew: time from their
last heartbeat (the register) to their absence on B is the eviction time. Prints p50/p99 and the
targets (p99 <= 1 s; eviction <= lease + 5 s). B is polled for evictions every 100 ms from each
probe's register on (evicted = seen, then gone). Bounded: probes stop at `--time-limit` seconds
after start, evictions are awaited lease + 15 s longer. Not a pytest test; nothing runs on
import.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def body(app: str, instance_id: str, lease_s: int, renew_s: int) -> bytes:
    return json.dumps(
        {
            "instance": {
                "instanceId": instance_id,
                "hostName": "127.0.0.1",
                "app": app,
                "ipAddr": "127.0.0.1",
                "status": "UP",
                "port": {"$": 8080, "@enabled": "true"},
                "dataCenterInfo": {
                    "@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo",
                    "name": "MyOwn",
                },
                "leaseInfo": {"renewalIntervalInSecs": renew_s, "durationInSecs": lease_s},
                "vipAddress": app.lower(),
            }
        }
    ).encode()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def report(name: str, values: list[float], target: float) -> None:
    if not values:
        print(f"{name}: no samples")
        return
    p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
    verdict = "meets" if p99 <= target else "MISSES"
    print(
        f"{name}: n={len(values)} p50={p50 * 1000:.0f} ms p99={p99 * 1000:.0f} ms "
        f"max={max(values) * 1000:.0f} ms mean={statistics.mean(values) * 1000:.0f} ms "
        f"({verdict} target p99 <= {target:.1f} s)"
    )


def instance_ids(response: Any) -> set[str]:
    """The instance ids in a `GET /eureka/apps/{app}` JSON answer (none on 404).

    Exact ids, not a substring test: `probe-1` is a substring of `probe-10` … `probe-19`, which
    made probe-1 look present until those were evicted too (the old 10-14 s eviction tail).
    """
    if response.status_code != 200:
        return set()
    return {i["instanceId"] for i in response.json()["application"]["instance"]}


def heartbeat_load(
    names: list[tuple[str, str]],
    a: str,
    b: str,
    renew_s: int,
    concurrency: int,
    stop: Any,
    beats: Any,
    burst: bool,
) -> None:
    """Heartbeat every instance each `renew_s`, half on each worker, until `stop` is set.

    Paced as independent clients would send them (evenly over the interval, a chunk every
    100 ms); with `burst`, all of a round at once (a synchronised thundering herd).

    Runs in its own process so the load's hundreds of pending requests never delay the
    measuring loop's clock readings or the SDK client's consumer thread.
    """
    import aiohttp

    async def beat() -> None:
        # aiohttp, not httpx: httpx's pool checks every pooled connection per request and kept
        # this process at a full core while sending only ~80 heartbeats/s.
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def put(url: str) -> int:
                async with http.put(url) as response:
                    return response.status

            rounds: list[str] = []
            chunk_size = 200 if burst else max(1, len(names) // (renew_s * 10))
            while not stop.is_set():
                round_started = time.monotonic()
                for start in range(0, len(names), chunk_size):
                    chunk = names[start : start + chunk_size]
                    chunk_started = time.monotonic()
                    results = await asyncio.gather(
                        *(
                            put(f"{a if n % 2 else b}/eureka/apps/{app}/{i}?status=UP")
                            for n, (app, i) in enumerate(chunk, start)
                        )
                    )
                    beats[0] += len(results)
                    beats[1] += results.count(200)
                    if not burst:
                        await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - chunk_started)))
                took = time.monotonic() - round_started
                rounds.append(f"{time.strftime('%H:%M:%S')} {took:.1f} s")
                await asyncio.sleep(max(0.0, renew_s - took))
            print("heartbeat rounds ended at:", ", ".join(rounds), flush=True)

    asyncio.run(beat())


async def run(args: argparse.Namespace) -> None:
    import httpx

    from streams.sdk.discovery import DiscoveryClient
    from streams.settings import Settings
    from tests.conftest import _free_port
    from tests.integration.worker import apply_topics, eventually, get_json, running_worker

    tag = f"bench{uuid.uuid4().hex[:6]}"
    folder = Path(tempfile.mkdtemp(prefix=f"{tag}-"))
    settings = Settings(
        kafka=args.kafka,
        app_id=tag,
        topic_prefix=f"{tag}.",
        data_dir=folder / "a",
        web_port=_free_port(),
        domains="bus,registry",
        registry_self_preservation=False,
        registry_eviction_interval_s=0.5,
    )
    apply_topics(settings)
    other = settings.model_copy(update={"web_port": _free_port(), "data_dir": folder / "b"})
    a, b = (f"http://127.0.0.1:{s.web_port}" for s in (settings, other))
    deadline = time.monotonic() + args.time_limit
    json_type = {"Content-Type": "application/json"}
    with running_worker(settings, folder / "a.log"), running_worker(other, folder / "b.log"):

        def ready() -> bool:
            states = [get_json(f"{x}/registry/status") for x in (a, b)]
            owned = [set(s[1]["owned_partitions"]) for s in states if s[0] == 200]
            return (
                len(owned) == 2
                and all(s[1]["ready"] for s in states)
                and all(owned)
                and (owned[0] | owned[1] == {0, 1, 2, 3})
            )

        eventually(ready, 180, "both workers ready", folder / "a.log")
        limits = httpx.Limits(max_connections=args.concurrency)
        async with httpx.AsyncClient(timeout=30, limits=limits) as http:
            gate = asyncio.Semaphore(args.concurrency)

            async def send(method: str, url: str, content: bytes | None = None) -> int:
                async with gate:
                    response = await http.request(method, url, content=content, headers=json_type)
                    return response.status_code

            started = time.monotonic()
            names = [(f"SVC{i % 50}", f"inst-{i}") for i in range(args.instances)]
            codes = await asyncio.gather(
                *(
                    send("POST", f"{a}/eureka/apps/{app}", body(app, i, 90, args.renew))
                    for app, i in names
                )
            )
            took = time.monotonic() - started
            print(
                f"registered {codes.count(204)}/{len(names)} instances on A in {took:.1f} s "
                f"({len(names) / took:.0f}/s; non-204: {len(names) - codes.count(204)})"
            )
            stop = asyncio.Event()
            spawn = multiprocessing.get_context("spawn")
            beating = spawn.Event()
            beats = spawn.Array("l", 2)
            heartbeating = spawn.Process(
                target=heartbeat_load,
                args=(names, a, b, args.renew, args.concurrency, beating, beats, args.burst),
                daemon=True,
            )
            heartbeating.start()
            to_b: list[float] = []
            to_sdk: list[float] = []
            registered_wall: dict[str, float] = {}
            slowest: list[tuple[float, str]] = []
            evictions: list[float] = []
            pending: dict[str, float] = {}
            visible: set[str] = set()

            async def watch_evictions() -> None:
                """Poll B from each probe's register on, so eviction times start at once."""
                while not stop.is_set():
                    response = await http.get(
                        f"{b}/eureka/apps/PROBE", headers={"Accept": "application/json"}
                    )
                    now = time.monotonic()
                    listed = instance_ids(response)
                    for instance_id in list(pending):
                        present = instance_id in listed
                        if present:
                            visible.add(instance_id)
                        elif instance_id in visible:
                            evictions.append(now - pending.pop(instance_id))
                            slowest.append((evictions[-1], instance_id))
                    await asyncio.sleep(0.1)

            watching = asyncio.create_task(watch_evictions())
            with DiscoveryClient(
                f"{b}/eureka/", poll_interval_s=30, kafka=args.kafka, topic_prefix=f"{tag}."
            ) as discovery:
                await asyncio.sleep(2)  # the push consumer joins its partitions
                for n in range(args.probes):
                    if time.monotonic() > deadline:
                        break
                    instance_id = f"probe-{n}"
                    code = await send(
                        "POST", f"{a}/eureka/apps/PROBE", body("PROBE", instance_id, args.lease, 30)
                    )
                    returned = time.monotonic()
                    registered_wall[instance_id] = time.time()
                    pending[instance_id] = returned
                    if code != 204:
                        print(f"probe {instance_id}: register answered {code}")
                        continue
                    seen_b = seen_sdk = None
                    while (seen_b is None or seen_sdk is None) and time.monotonic() - returned < 10:
                        if seen_sdk is None and any(
                            x["instance_id"] == instance_id for x in discovery.instances("probe")
                        ):
                            seen_sdk = time.monotonic() - returned
                        if seen_b is None:
                            response = await http.get(
                                f"{b}/eureka/apps/PROBE", headers={"Accept": "application/json"}
                            )
                            if instance_id in instance_ids(response):
                                seen_b = time.monotonic() - returned
                        await asyncio.sleep(0.005)
                    to_b.append(seen_b if seen_b is not None else 10.0)
                    to_sdk.append(seen_sdk if seen_sdk is not None else 10.0)
                    if seen_b is not None:
                        visible.add(instance_id)
                bound = time.monotonic() + args.lease + 15
                while pending and time.monotonic() < bound:
                    await asyncio.sleep(0.1)
            stop.set()
            beating.set()
            heartbeating.join(30)
            await watching
        print(f"heartbeats: {beats[1]}/{beats[0]} answered 200 over the run")
        report("register -> visible on worker B (GET /eureka/apps/PROBE)", to_b, 1.0)
        report("register -> in the SDK client's local copy (push)", to_sdk, 1.0)
        report(
            f"last heartbeat -> evicted on B (lease {args.lease} s)", evictions, args.lease + 5.0
        )
        for seconds, instance_id in sorted(slowest, reverse=True)[:3]:
            registered = time.strftime("%H:%M:%S", time.localtime(registered_wall[instance_id]))
            print(
                f"slow eviction: {instance_id} registered {registered}, gone after {seconds:.1f} s"
            )
        print(f"not evicted within the bound: {len(pending)}; worker logs in {folder}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--lease", type=int, default=5)
    parser.add_argument("--renew", type=int, default=10, help="heartbeat interval of the N")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--burst", action="store_true", help="send each heartbeat round at once, not paced"
    )
    parser.add_argument("--time-limit", type=float, default=240.0)
    parser.add_argument("--kafka", default="127.0.0.1:19092")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
