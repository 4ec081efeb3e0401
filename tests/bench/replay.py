"""Replay throughput: `stackstream replay --into-topic` against a plain confluent-kafka read.

    python tests/bench/replay.py [--records N] [--kafka ADDR] [--value-bytes B]

N records (default 1,000,000, about 200 bytes each, 6 partitions, keyed, with a header and a
timestamp) are produced once to a topic unique to this run. Then, from the same broker:

(a) baseline: a confluent-kafka `Consumer` assigned to every partition reads the whole range in
    `consume(5000)` batches and counts records (nothing else), as fast as it can;
(b) replay into a fresh group (the issue's measure; what `stackstream replay --agent` does for
    an agent's group): `streams.bus.replay.reset_group` sets a new group's offsets to the range
    from the time index, then a consumer of that group (subscribed, as a worker is; it must
    start from the reset offsets) reads to the range's end; timed from the reset on, group
    join included;
(c) replay into a topic: `streams.bus.replay.copy_range` reads the same range through
    `RangeReader` and copies every record to a fresh target topic (key, headers, timestamp and
    partition kept), with producer acknowledgements and checkpoints, until the checkpoint says
    finished.

The baseline runs before and after the replay (the page cache is warm for both runs after the
first); the faster of the two is the reference. Prints records/s of each and the ratios
replay / baseline (target >= 0.8), and the replay's reader alone (no producing) for
scale. Topics are deleted at the end. Not a pytest test.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

PARTITIONS = 6


def produce(kafka: str, topic: str, records: int, value_bytes: int) -> float:
    producer = Producer(
        {
            "bootstrap.servers": kafka,
            "linger.ms": 50,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 1_000_000,
            "compression.type": "lz4",
        }
    )
    payload = os.urandom(value_bytes // 2).hex().encode()[:value_bytes]
    started_ms = int(time.time() * 1000) - records
    started = time.perf_counter()
    for index in range(records):
        while True:
            try:
                producer.produce(
                    topic,
                    value=payload,
                    key=b"series-%d" % (index % 5000),
                    headers=[("trace", b"%d" % index)],
                    timestamp=started_ms + index,
                    partition=index % PARTITIONS,
                )
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(120):
        raise SystemExit("producing the benchmark records did not finish")
    return time.perf_counter() - started


def plain_read(kafka: str, topic: str, records: int) -> float:
    consumer = Consumer(
        {
            "bootstrap.servers": kafka,
            "group.id": f"bench-plain-{secrets.token_hex(4)}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            # the same fetch tuning as the replay's reader, so only the work per record differs
            "fetch.wait.max.ms": 100,
            "queued.max.messages.kbytes": 65536,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    counted, ended = 0, 0
    started = time.perf_counter()
    try:
        while ended < PARTITIONS:
            for message in consumer.consume(5000, 1.0):
                error = message.error()
                if error is None:
                    counted += 1
                elif error.code() == KafkaError._PARTITION_EOF:
                    ended += 1
        elapsed = time.perf_counter() - started
    finally:
        consumer.close()
    if counted != records:
        raise SystemExit(f"plain read counted {counted} records, expected {records}")
    return elapsed


def replay_into_group(kafka: str, topic: str, records: int) -> float:
    """Reset a fresh group to the range by time, then drain it as a member of that group."""
    from streams.bus.replay import plan_range, reset_group
    from streams.settings import Settings

    group = f"bench-replay-group-{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as scratch:
        settings = Settings(kafka=kafka, data_dir=Path(scratch) / "worker")
        plan = plan_range(settings, topic, from_ms=0, to_ms=int(time.time() * 1000) + 60_000)
        if plan.total != records:
            raise SystemExit(f"the plan covers {plan.total} records, expected {records}")
        ends = {r.partition: r.start + r.count for r in plan.ranges}
        started = time.perf_counter()
        reset_group(settings, group, plan)
        consumer = Consumer(
            {
                "bootstrap.servers": kafka,
                "group.id": group,
                "auto.offset.reset": "latest",
                "enable.partition.eof": True,
                "fetch.wait.max.ms": 100,
                "queued.max.messages.kbytes": 65536,
            }
        )
        consumer.subscribe([topic])
        counted, done = 0, set()
        try:
            while len(done) < len(ends):
                for message in consumer.consume(5000, 1.0):
                    error = message.error()
                    if error is None:
                        counted += 1
                        if message.offset() + 1 >= ends[message.partition()]:
                            done.add(message.partition())
                    elif (
                        error.code() == KafkaError._PARTITION_EOF
                        and message.offset() >= ends[message.partition()]
                    ):
                        done.add(message.partition())
            consumer.commit(asynchronous=False)
            elapsed = time.perf_counter() - started
        finally:
            consumer.close()
    if counted != records:
        raise SystemExit(f"the replayed group read {counted} records, expected {records}")
    return elapsed


def replay(kafka: str, topic: str, target: str, records: int) -> float:
    from streams.bus.replay import copy_range, load_checkpoint, plan_range
    from streams.bus.replay_model import Checkpoint
    from streams.settings import Settings

    with tempfile.TemporaryDirectory(prefix="bench-replay-") as scratch:
        settings = Settings(kafka=kafka, data_dir=Path(scratch) / "worker")
        plan = plan_range(settings, topic, from_offsets={None: 0})
        if plan.total != records:
            raise SystemExit(f"the plan covers {plan.total} records, expected {records}")
        path = Path(scratch) / "checkpoint.json"
        started = time.perf_counter()
        result = copy_range(settings, Checkpoint.start(plan, target), path)
        elapsed = time.perf_counter() - started
        checkpoint = load_checkpoint(path)
        if result.copied != records or checkpoint is None or not checkpoint.finished:
            raise SystemExit(f"replay copied {result.copied} records, expected {records}")
    return elapsed


def read_only(kafka: str, topic: str, records: int) -> float:
    """The replay's reader alone (what a backfill uses), without producing."""
    from streams.bus.replay import RangeReader, plan_range
    from streams.settings import Settings

    with tempfile.TemporaryDirectory(prefix="bench-replay-") as scratch:
        settings = Settings(kafka=kafka, data_dir=Path(scratch) / "worker")
        plan = plan_range(settings, topic, from_offsets={None: 0})
        started = time.perf_counter()
        counted = sum(len(batch) for batch in RangeReader(settings, plan).batches())
        elapsed = time.perf_counter() - started
    if counted != records:
        raise SystemExit(f"the range reader counted {counted} records, expected {records}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--kafka", default=os.environ.get("STACKSTREAM_KAFKA", "127.0.0.1:19092"))
    parser.add_argument("--value-bytes", type=int, default=200)
    options = parser.parse_args()
    run = f"bench_replay_{secrets.token_hex(4)}"
    source, target = f"{run}.source", f"{run}.target"
    admin = AdminClient({"bootstrap.servers": options.kafka})
    for future in admin.create_topics(
        [NewTopic(source, num_partitions=PARTITIONS, replication_factor=1)]
    ).values():
        future.result(30)
    try:
        produced = produce(options.kafka, source, options.records, options.value_bytes)
        print(f"produced {options.records:,} records in {produced:.1f} s")
        first = plain_read(options.kafka, source, options.records)
        into_group = replay_into_group(options.kafka, source, options.records)
        copied = replay(options.kafka, source, target, options.records)
        reader = read_only(options.kafka, source, options.records)
        second = plain_read(options.kafka, source, options.records)
        baseline = min(first, second)
        rate = options.records / copied
        reference = options.records / baseline
        print(
            f"plain confluent-kafka read: {options.records / first:,.0f} rec/s (first), "
            f"{options.records / second:,.0f} rec/s (second)"
        )
        print(f"replay's reader alone:      {options.records / reader:,.0f} rec/s")
        group_rate = options.records / into_group
        print(f"replay into a fresh group:  {group_rate:,.0f} rec/s ({into_group:.2f} s)")
        print(f"replay into a topic:        {rate:,.0f} rec/s ({copied:.2f} s)")
        print(
            f"ratio into a fresh group / plain read: {group_rate / reference:.2f} "
            "(the issue's measure; target >= 0.8)"
        )
        print(f"ratio into a topic / plain read:       {rate / reference:.2f}")
    finally:
        for future in admin.delete_topics([source, target]).values():
            try:
                future.result(30)
            except Exception as error:
                print(f"could not delete a benchmark topic: {error}")


if __name__ == "__main__":
    main()
