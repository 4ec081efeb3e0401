"""Sample traffic for the demo: metric points and log lines from two pretend services."""

from __future__ import annotations

import json
import math
import random
import socket
import time
import urllib.error
import urllib.request

from rich.console import Console

from streams.logs.events import RECORD_SCHEMA, RECORDS_TOPIC
from streams.metrics.events import POINT_SCHEMA, POINTS_TOPIC
from streams.sdk.producer import EventProducer
from streams.settings import Settings

SERVICES = ("orders", "payments")
DEMO_METRIC = "demo.http.latency_ms"


def sample_points(count: int, now_ms: int) -> list[dict]:
    """Latency points of two services over the last minutes, with a slow tail."""
    rng = random.Random(7)
    points = []
    for index in range(count):
        service = SERVICES[index % len(SERVICES)]
        latency = rng.lognormvariate(math.log(20 if service == "orders" else 45), 0.6)
        points.append(
            {
                "name": DEMO_METRIC,
                "timestamp_ms": now_ms - (count - index) * 500,
                "value": round(latency, 3),
                "tags": {"service": service, "host": f"{service}-1"},
                "ttl_seconds": 0,
            }
        )
    return points


def sample_logs(count: int, now_us: int) -> list[dict]:
    levels = ("INFO", "WARN", "ERROR")
    host = socket.gethostname()
    return [
        {
            "timestamp_us": now_us - (count - index) * 1_000_000,
            "level": levels[index % len(levels)],
            "message": f"demo request {index} {'failed' if index % 3 == 2 else 'served'}",
            "service": SERVICES[index % len(SERVICES)],
            "host": host,
            "logger": "demo",
            "trace_id": None,
            "span_id": None,
            "error_type": "TimeoutError" if index % 3 == 2 else None,
            "error_message": "upstream timed out" if index % 3 == 2 else None,
            "error_stack_trace": None,
            "labels": {"demo": "true"},
            "sequence": index,
        }
        for index in range(count)
    ]


def _get_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError):
        return None


def run_demo(settings: Settings, console: Console, *, points: int, log_lines: int) -> None:
    """Emit the samples, wait until the worker serves them, and say where to look."""
    producer = EventProducer(settings.kafka, topic_prefix=settings.topic_prefix)
    now_ms = int(time.time() * 1000)
    for point in sample_points(points, now_ms):
        producer.emit(POINTS_TOPIC, POINT_SCHEMA, point, key=point["name"])
    for record in sample_logs(log_lines, now_ms * 1000):
        producer.emit(RECORDS_TOPIC, RECORD_SCHEMA, record, key=record["service"])
    # One point that breaks a rule, to show the dead-letter path.
    producer.emit(
        POINTS_TOPIC,
        POINT_SCHEMA,
        {"name": DEMO_METRIC, "timestamp_ms": now_ms, "value": 1.0, "tags": {}, "ttl_seconds": 0},
        key=DEMO_METRIC,
    )
    producer.close()
    console.print(
        f"emitted {producer.stats.delivered} events ({producer.stats.failed} failed to deliver)"
    )
    base = f"http://{settings.web_host}:{settings.web_port}"
    latest_url = f"{base}/metrics/latest?metric={DEMO_METRIC}"
    deadline = time.monotonic() + 120
    with console.status("waiting for the worker to materialise the samples"):
        while time.monotonic() < deadline:
            answer = _get_json(latest_url)
            if answer and len(answer.get("series", [])) == len(SERVICES):
                break
            time.sleep(1)
        else:
            raise TimeoutError("the worker did not serve the sample points within 120 s")
    console.print_json(data=answer)
    console.print(
        "\nwhere to look:\n"
        f"  newest point per series  {latest_url}\n"
        f"  worker health            {base}/stackstream/health\n"
        f"  dead letters             {base}/bus/deadletters\n"
        f"  log lines (Elasticsearch) {settings.elasticsearch}/"
        f"{settings.elasticsearch_index_prefix}-logs-*/_search?q=log.level:ERROR\n"
        f"  raw points (Cassandra)   SELECT * FROM {settings.cassandra_keyspace}.raw_points"
        f" (cqlsh {settings.cassandra.replace(':', ' ')})\n"
        "  topics                   stackstream topics list",
        soft_wrap=True,
        highlight=False,
    )
    run_tracing_demo(settings, console)


# --- tracing (issue 4): two sample services calling each other through the SDK -------------


def run_tracing_demo(settings: Settings, console: Console, seconds: float = 600.0) -> None:
    """Start the shop and stock sample services (a child process, `seconds` long) and wait
    until the worker serves their first closed minute as a CAT Transaction report."""
    import os
    import subprocess
    import sys
    from datetime import UTC, datetime

    services = subprocess.Popen(
        [sys.executable, "-m", "streams.tracing.sample_services", "--seconds", str(seconds)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **settings.environment()},
        start_new_session=True,
    )
    console.print(
        f"sample services shop -> stock emitting traces (pid {services.pid}, {seconds:.0f} s)"
    )
    base = f"http://{settings.web_host}:{settings.web_port}"
    deadline = time.monotonic() + 150
    answer: dict | None = None
    with console.status("waiting for the first closed minute of the sample services"):
        while time.monotonic() < deadline and services.poll() is None:
            hour = datetime.now(UTC).strftime("%Y%m%d%H")
            answer = _get_json(f"{base}/tracing/transaction?domain=shop&date={hour}")
            if answer and answer.get("rows"):
                break
            time.sleep(2)
    hour = datetime.now(UTC).strftime("%Y%m%d%H")
    if not answer or not answer.get("rows"):
        console.print("no closed tracing minute yet; the report pages fill within about a minute")
    else:
        console.print_json(data=answer["rows"][:3])
    console.print(
        "\ncall-chain reports (CAT):\n"
        f"  transactions  {base}/tracing/transaction?domain=shop&date={hour}&type=URL\n"
        f"  as CAT XML    {base}/tracing/transaction?domain=stock&date={hour}&format=xml\n"
        f"  problems      {base}/tracing/problem?domain=stock&date={hour}\n"
        f"  events        {base}/tracing/event?domain=shop&date={hour}\n"
        f"  logview       {base}/tracing/logview?message_id=<fail_message_id of a row>",
        soft_wrap=True,
        highlight=False,
    )
