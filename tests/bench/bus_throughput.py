"""Bus throughput: a Faust agent through our codec against a hand-written consumer loop.

    python tests/bench/bus_throughput.py [--records N] [--kafka ADDR]

N `stackstream.metrics.MetricPoint` records are produced once to a fresh `metrics.points`
topic (created from topology.yaml under a prefix unique to this run), then consumed and counted
twice from the same broker:

(a) a Faust worker (a child process running `faust.Worker`, as `stackstream worker` does) with
    one agent that iterates `Runtime.decoded_batches`, so every record goes through
    `AvroCodec.decode`;
(b) a confluent-kafka `Consumer` in this process with `consume(num_messages=1000)` batches,
    checking the 10-byte single-object header and decoding with fastavro's schemaless reader.

Both paths are timed the same way: from the moment their first batch is decoded to the moment
the N-th record is counted, so startup and the consumer group join are left out (they are
printed separately). Rate = records counted after the first batch / that time. The topics and
consumer groups of the run are deleted at the end. Not a pytest test: run it as a script.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEFAULT_RECORDS = 200_000
BATCH = 1000
# The agent name must be declared in topology.yaml (Runtime.agent_liveness looks it up).
AGENT = "metrics.track_latest"

METRICS = (
    "http.server.requests.duration_ms",
    "http.server.requests.count",
    "http.client.requests.duration_ms",
    "jvm.memory.used_bytes",
    "jvm.gc.pause_ms",
    "process.cpu.usage",
    "db.pool.connections.active",
    "db.query.duration_ms",
    "cache.gets.hit_ratio",
    "kafka.consumer.records_lag",
    "gateway.route.requests",
    "registry.instances.up",
)
SERVICES = ("gateway", "orders", "payments", "inventory", "search", "accounts", "notifications")
REGIONS = ("eu-west-1", "eu-central-1", "us-east-1")
ENDPOINTS = ("/api/orders", "/api/orders/{id}", "/api/payments", "/api/search", "/health")
STATUSES = ("200", "200", "200", "200", "201", "204", "400", "404", "500")


@dataclass
class PathResult:
    """One consumer path's run: N counted, the timed part and the start-up before it."""

    path: str
    records: int
    timed_records: int
    seconds: float
    startup_seconds: float
    rejected: int = 0

    @property
    def rate(self) -> float:
        if self.timed_records <= 0 or self.seconds <= 0:
            return float("nan")
        return self.timed_records / self.seconds


# --- data ------------------------------------------------------------------------------------


def sample_points(count: int, seed: int = 20240601) -> list[dict[str, Any]]:
    """Deterministic metric points with the tags a real service would send."""
    rng = random.Random(seed)
    start_ms = int(time.time() * 1000) - count * 5
    points = []
    for index in range(count):
        name = METRICS[index % len(METRICS)] if index < len(METRICS) else rng.choice(METRICS)
        service = rng.choice(SERVICES)
        tags = {
            "service": service,
            "host": f"{service}-{rng.randrange(16):02d}.prod.internal",
            "region": rng.choice(REGIONS),
            "env": "prod",
        }
        if name.startswith("http."):
            tags["endpoint"] = rng.choice(ENDPOINTS)
            tags["method"] = rng.choice(("GET", "GET", "GET", "POST"))
            tags["status"] = rng.choice(STATUSES)
        points.append(
            {
                "name": name,
                "timestamp_ms": start_ms + index * 5,
                "value": round(rng.lognormvariate(3.0, 1.2), 3),
                "tags": tags,
                "ttl_seconds": 0,
            }
        )
    return points


def produce(kafka: str, prefix: str, topic: str, schema: str, points: list[dict]) -> float:
    """Emit every point with the SDK producer and wait for all acks; returns the seconds taken."""
    from streams.sdk.producer import EventProducer

    producer = EventProducer(
        kafka,
        topic_prefix=prefix,
        client_id="stackstream-bench",
        queue_max_messages=max(100_000, len(points) + 1),
    )
    started = time.perf_counter()
    for point in points:
        producer.emit(topic, schema, point, key=point["name"])
    remaining = producer.flush(120.0)
    elapsed = time.perf_counter() - started
    producer.close()
    stats = producer.stats
    if remaining or stats.delivered != len(points):
        raise RuntimeError(
            f"produced {stats.delivered} of {len(points)} records (dropped {stats.dropped}, "
            f"invalid {stats.invalid}, failed {stats.failed}, last error {stats.last_error})"
        )
    return elapsed


# --- topics and groups -----------------------------------------------------------------------


def create_input_topic(settings: Any, topic: str) -> None:
    """Create the prefixed input topic as topology.yaml declares it (`topics apply` style)."""
    from streams.bus.admin import admin_client, apply, plan
    from streams.topology import load_topology

    topology = load_topology(settings.topology_file)
    admin = admin_client(settings.kafka)
    changes = plan(admin, [topology.topic(topic)], settings.topic_prefix)
    apply(admin, topology, settings.topic_prefix, [c for c in changes if c.action != "unchanged"])


def delete_run_leftovers(kafka: str, run_id: str, groups: list[str]) -> list[str]:
    """Delete every topic whose name starts with this run's id, and its consumer groups."""
    from streams.bus.admin import admin_client

    admin = admin_client(kafka)
    topics = [name for name in admin.list_topics(timeout=15).topics if name.startswith(run_id)]
    problems = []
    if topics:
        for name, future in admin.delete_topics(topics, operation_timeout=30).items():
            try:
                future.result()
            except Exception as error:
                problems.append(f"topic {name}: {error}")
    for group, future in admin.delete_consumer_groups(groups, request_timeout=30).items():
        try:
            future.result()
        except Exception as error:
            if "GROUP_ID_NOT_FOUND" not in str(error):
                problems.append(f"group {group}: {error}")
    return problems


# --- (a) Faust --------------------------------------------------------------------------------


def faust_child(config_path: Path) -> None:
    """Run a Faust worker with one counting agent; write the timing to a file at N records."""
    started = time.perf_counter()
    import faust

    from streams.app import Runtime
    from streams.metrics.events import POINT_SCHEMA, POINTS_TOPIC
    from streams.settings import Settings

    config = json.loads(config_path.read_text())
    settings = Settings(
        kafka=config["kafka"],
        app_id=config["app_id"],
        topic_prefix=config["topic_prefix"],
        data_dir=Path(config["data_dir"]),
        web_port=config["web_port"],
        table_store="memory",
    )
    runtime = Runtime(settings, domains=(), app_options=config.get("app_options") or {})
    target: int = config["records"]
    result_path = Path(config["result"])
    profiler = cProfile.Profile() if config.get("profile") else None

    counted = 0
    first_at: float | None = None
    first_batch = 0

    def count(size: int, path: str) -> None:
        nonlocal counted, first_at, first_batch
        counted += size
        if first_at is None:
            first_at, first_batch = time.perf_counter(), size
            if profiler is not None:
                profiler.enable()
        if counted >= target and not result_path.exists():
            done_at = time.perf_counter()
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(config["profile"])
            result = PathResult(
                path=path,
                records=counted,
                timed_records=counted - first_batch,
                seconds=done_at - first_at,
                startup_seconds=first_at - started,
                rejected=runtime.liveness[AGENT].rejected,
            )
            partial = result_path.with_suffix(".partial")
            partial.write_text(json.dumps(asdict(result)))
            partial.rename(result_path)

    if config.get("mode") == "batch":

        @runtime.batch_agent(AGENT, POINTS_TOPIC, POINT_SCHEMA)
        async def count_batches(batch: list) -> None:
            count(len(batch), "c: batch agent")

    else:

        @runtime.app.agent(runtime.topic(POINTS_TOPIC), name=AGENT)
        async def count_points(stream):  # type: ignore[no-untyped-def]
            async for batch in runtime.decoded_batches(stream, AGENT, POINT_SCHEMA):
                count(len(batch), "a: Faust agent")

    faust.Worker(runtime.app, loglevel="warning").execute_from_commandline()


def run_faust(
    kafka: str,
    run_id: str,
    records: int,
    workdir: Path,
    timeout: float,
    profile: Path | None,
    app_options: dict[str, Any],
    mode: str = "faust",
) -> PathResult:
    """Start the worker child, wait for its result file, then stop it as `running_worker` does.

    `mode` "faust" counts in a Faust agent (path a), "batch" in a batch agent (path c).
    """
    result_path = workdir / f"{mode}-result.json"
    log_path = workdir / f"{mode}-worker.log"
    config_path = workdir / f"{mode}-config.json"
    config = {
        "mode": mode,
        "kafka": kafka,
        "app_id": f"{run_id}-{mode}",
        "topic_prefix": f"{run_id}.",
        "data_dir": str(workdir / "worker"),
        "web_port": _free_port(),
        "records": records,
        "result": str(result_path),
        "profile": str(profile) if profile else None,
        "app_options": app_options,
    }
    config_path.write_text(json.dumps(config))
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--faust-child", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout
        while not result_path.exists():
            if process.poll() is not None:
                raise RuntimeError(
                    f"the Faust worker exited with {process.returncode} before counting "
                    f"{records} records\n{_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the Faust worker did not count {records} records in {timeout:.0f}s\n"
                    f"{_tail(log_path)}"
                )
            time.sleep(0.1)
        return PathResult(**json.loads(result_path.read_text()))
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- (b) confluent-kafka + fastavro ---------------------------------------------------------


def run_confluent(
    kafka: str, topic: str, group: str, header: bytes, schema: Any, records: int, timeout: float
) -> PathResult:
    """A plain consumer loop: batches of 1000, header check, schemaless decode, count."""
    import fastavro
    from confluent_kafka import Consumer, KafkaError

    started = time.perf_counter()
    consumer = Consumer(
        {
            "bootstrap.servers": kafka,
            "group.id": group,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    read = fastavro.schemaless_reader
    header_size = len(header)
    counted = rejected = first_batch = 0
    first_at: float | None = None
    deadline = time.monotonic() + timeout
    try:
        while counted < records:
            if time.monotonic() > deadline:
                raise RuntimeError(f"counted {counted} of {records} records in {timeout:.0f}s")
            # The same batching as Runtime.decoded_batches: up to 1000 records or 0.2 s.
            messages = consumer.consume(num_messages=BATCH, timeout=0.2)
            batch = []
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise RuntimeError(f"consumer error: {error}")
                value = message.value()
                if value is None or value[:header_size] != header:
                    rejected += 1
                    continue
                body = io.BytesIO(value)
                body.seek(header_size)
                batch.append(read(body, schema, None))
            counted += len(batch)
            if first_at is None and batch:
                first_at, first_batch = time.perf_counter(), len(batch)
        done_at = time.perf_counter()
    finally:
        consumer.close()
    assert first_at is not None
    return PathResult(
        path="b: confluent loop",
        records=counted,
        timed_records=counted - first_batch,
        seconds=done_at - first_at,
        startup_seconds=first_at - started,
        rejected=rejected,
    )


# --- the run ---------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    from streams.bus.codec import SchemaRegistry
    from streams.metrics.events import POINT_SCHEMA, POINTS_TOPIC
    from streams.settings import Settings

    console = Console()
    run_id = f"bench{secrets.token_hex(4)}"
    settings = Settings(kafka=args.kafka, app_id=run_id, topic_prefix=f"{run_id}.")
    topic = f"{run_id}.{POINTS_TOPIC}"
    confluent_group = f"{run_id}-confluent"
    schema = SchemaRegistry.from_directory(settings.schemas_dir).get(POINT_SCHEMA)
    console.print(
        f"bus throughput: {args.records:,} {POINT_SCHEMA} records, Kafka {args.kafka}, "
        f"topic {topic}",
        highlight=False,
    )
    points = sample_points(args.records)
    try:
        with tempfile.TemporaryDirectory(prefix=f"{run_id}-") as workdir:
            create_input_topic(settings, POINTS_TOPIC)
            produce_seconds = produce(
                args.kafka, settings.topic_prefix, POINTS_TOPIC, POINT_SCHEMA, points
            )
            del points
            console.print(
                f"produced {args.records:,} records in {produce_seconds:.2f}s "
                f"({args.records / produce_seconds:,.0f} records/s, EventProducer, acks=all, lz4)",
                highlight=False,
            )
            with console.status("(a) Faust agent consuming"):
                faust_result = run_faust(
                    args.kafka,
                    run_id,
                    args.records,
                    Path(workdir),
                    args.timeout,
                    args.profile,
                    args.faust_options,
                )
            with console.status("(c) batch agent consuming"):
                batch_result = run_faust(
                    args.kafka,
                    run_id,
                    args.records,
                    Path(workdir),
                    args.timeout,
                    None,
                    args.faust_options,
                    mode="batch",
                )
            with console.status("(b) confluent-kafka loop consuming"):
                confluent_result = run_confluent(
                    args.kafka,
                    topic,
                    confluent_group,
                    schema.header,
                    schema.parsed,
                    args.records,
                    args.timeout,
                )
    finally:
        problems = delete_run_leftovers(
            args.kafka,
            run_id,
            [f"{run_id}-faust", f"{run_id}-batch", f"{run_id}-batch-{AGENT}", confluent_group],
        )
        for problem in problems:
            console.print(f"[yellow]cleanup:[/yellow] {problem}", highlight=False)

    results = [faust_result, batch_result, confluent_result]
    table = Table(title=f"bus throughput, {args.records:,} records")
    for column in ("path", "records", "timed", "seconds", "records/s", "start-up s"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for result in results:
        table.add_row(
            result.path,
            f"{result.records:,}",
            f"{result.timed_records:,}",
            f"{result.seconds:.2f}",
            f"{result.rate:,.0f}",
            f"{result.startup_seconds:.2f}",
        )
    console.print(table)
    if args.faust_options:
        console.print(f"Faust options for a: {args.faust_options}", highlight=False)
    ratio = faust_result.rate / confluent_result.rate
    batch_ratio = batch_result.rate / confluent_result.rate
    console.print(f"ratio a/b: {ratio:.3f} (Faust reaches {ratio:.1%} of the plain loop)")
    console.print(
        f"ratio c/b: {batch_ratio:.3f} (the batch agent reaches {batch_ratio:.1%} of the loop)"
    )
    for result in results:
        if not result.timed_records:
            console.print(
                f"[yellow]{result.path}: all records came in the first batch; raise --records "
                "to get a rate[/yellow]"
            )
        if result.rejected:
            console.print(f"[red]{result.path} rejected {result.rejected} records[/red]")
    if args.profile:
        console.print(f"cProfile of the Faust consumption window: {args.profile}")
    summary = {
        "records": args.records,
        "faust_options": args.faust_options,
        "kafka": args.kafka,
        "produce_seconds": produce_seconds,
        "produce_rate": args.records / produce_seconds,
        "paths": [{**asdict(result), "rate": result.rate} for result in results],
        "ratio_a_b": ratio,
        "ratio_c_b": batch_ratio,
    }
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return summary


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=DEFAULT_RECORDS, help="N (default 200000)")
    parser.add_argument(
        "--kafka",
        default=os.environ.get("STACKSTREAM_KAFKA", "127.0.0.1:19092"),
        help="bootstrap address (default: $STACKSTREAM_KAFKA or 127.0.0.1:19092)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds each path may take (default 600)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="write a cProfile of the Faust consumption window here (slows path a down)",
    )
    parser.add_argument(
        "--faust-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Faust app setting for path a, e.g. broker_max_poll_records=2000 (repeatable; "
        "VALUE is read as JSON when it parses, else as text)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    parser.add_argument("--faust-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.faust_child is not None:
        faust_child(args.faust_child)
        return
    if args.records < 1:
        parser.error("--records must be at least 1")
    if args.profile is not None:
        args.profile = args.profile.resolve()
    args.faust_options = {}
    for option in args.faust_option:
        key, equals, value = option.partition("=")
        if not equals or not key:
            parser.error(f"--faust-option {option!r}: expected KEY=VALUE")
        try:
            args.faust_options[key] = json.loads(value)
        except ValueError:
            args.faust_options[key] = value
    run(args)


if __name__ == "__main__":
    main()
