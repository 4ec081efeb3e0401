"""`stackstream replay` and `stackstream dlq list|show|replay`."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from streams.bus.replay_model import (
    DEFAULT_REPLAY_LIMIT,
    Checkpoint,
    DeadLetterFilter,
    ReplayInputError,
    ReplayPlan,
    hex_dump,
    parse_partition_offsets,
    parse_time_ms,
    replay_spec,
    summarise,
)
from streams.settings import Settings, get_settings

console = Console()


def _fail(message: str | BaseException) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False)
    raise SystemExit(1)


class RateColumn(ProgressColumn):
    """Records per second of a task."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} rec/s" if speed else "- rec/s", style="cyan")


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _plan_table(plan: ReplayPlan, title: str) -> Table:
    table = Table(title=title)
    for column in ("partition", "from offset", "to offset (excl.)", "records"):
        table.add_column(column, justify="right")
    for r in plan.ranges:
        table.add_row(str(r.partition), str(r.start), str(r.end), f"{r.count:,}")
    table.add_row("total", "", "", f"[bold]{plan.total:,}[/]")
    return table


# --- replay -------------------------------------------------------------------------------------


@click.command("replay")
@click.option("--topic", required=True, help="topic to replay (logical name, as in topology.yaml)")
@click.option("--from", "from_time", help="start time: ISO-8601, epoch ms, 'now' or -2h / -30m")
@click.option("--to", "to_time", help="end time (exclusive); default: the end of the log")
@click.option("--from-offset", help="start offset: N for every partition or P:N,P:N")
@click.option("--to-offset", help="end offset (exclusive): N or P:N,P:N")
@click.option("--into-agents", help="reset the consumer groups of these agents (comma-separated)")
@click.option("--group", "groups", multiple=True, help="reset this consumer group (repeatable)")
@click.option("--into-topic", help="copy the range to this topic (created if missing)")
@click.option("--rate", type=float, help="at most this many records per second (--into-topic)")
@click.option("--dry-run", is_flag=True, help="print the records per partition; read nothing")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="checkpoint file to use")
@click.option("--restart", is_flag=True, help="discard an unfinished checkpoint of this replay")
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="after a group reset, follow the group's progress through the range",
)
@click.option("--wait-timeout", type=float, default=3600.0, show_default=True)
def replay_command(
    topic: str,
    from_time: str | None,
    to_time: str | None,
    from_offset: str | None,
    to_offset: str | None,
    into_agents: str | None,
    groups: tuple[str, ...],
    into_topic: str | None,
    rate: float | None,
    dry_run: bool,
    checkpoint: Path | None,
    restart: bool,
    wait: bool,
    wait_timeout: float,
) -> None:
    """Replay a time or offset range of a topic into consumer groups or another topic.

    Into groups: the groups' committed offsets move to the start of the range, so the agents
    re-consume from there when their workers start (the workers must be stopped). Into a topic:
    the records are copied with keys, headers and timestamps; resumable from a checkpoint file.
    """
    from streams.bus import replay as kafka

    settings = get_settings()
    agents = [a.strip() for a in (into_agents or "").split(",") if a.strip()]
    targets = sum(bool(x) for x in (agents or groups, into_topic))
    if targets > 1:
        _fail("choose one target: --into-agents/--group (reset groups) or --into-topic (copy)")
    if targets == 0 and not dry_run:
        _fail("name a target: --into-agents A,B, --group NAME or --into-topic NAME")
    if (from_time and from_offset) or (to_time and to_offset):
        _fail("give a time or an offset for each end of the range, not both")
    if not (from_time or from_offset):
        _fail("name where the range starts: --from TIME or --from-offset N")
    if rate is not None and not into_topic:
        _fail("--rate limits a copy (--into-topic); a reset group's workers consume at their pace")
    source = settings.topic_prefix + topic
    spec = replay_spec(
        topic=topic,
        from_time=from_time,
        to_time=to_time,
        from_offset=from_offset,
        to_offset=to_offset,
        into_topic=into_topic,
    )
    try:
        now_ms = int(time.time() * 1000)
        plan = kafka.plan_range(
            settings,
            source,
            from_ms=parse_time_ms(from_time, now_ms) if from_time else None,
            to_ms=parse_time_ms(to_time, now_ms) if to_time else None,
            from_offsets=parse_partition_offsets(from_offset) if from_offset else None,
            to_offsets=parse_partition_offsets(to_offset) if to_offset else None,
            spec=spec,
        )
        group_names = dict.fromkeys(groups, "--group")
        if agents:
            for agent, group in kafka.agent_groups(settings, agents, topic).items():
                group_names.setdefault(group, agent)
        if into_topic:
            _replay_into_topic(settings, plan, into_topic, checkpoint, restart, rate, dry_run)
        else:
            _replay_into_groups(settings, plan, group_names, dry_run, wait, wait_timeout)
    except (ReplayInputError, kafka.ReplayError) as error:
        _fail(error)


def _replay_into_topic(
    settings: Settings,
    plan: ReplayPlan,
    into_topic: str,
    checkpoint_path: Path | None,
    restart: bool,
    rate: float | None,
    dry_run: bool,
) -> None:
    from streams.bus import replay as kafka

    target = settings.topic_prefix + into_topic
    if target == plan.topic:
        raise kafka.ReplayError("the target topic is the source topic: that would never end")
    fresh = Checkpoint.start(plan, target)
    path = checkpoint_path or kafka.default_checkpoint_dir(settings) / f"{fresh.job}.json"
    saved = None if restart else kafka.load_checkpoint(path)
    if saved is not None and (saved.source, saved.target, saved.spec) != (
        fresh.source,
        fresh.target,
        fresh.spec,
    ):
        raise kafka.ReplayError(
            f"{path} belongs to another replay ({saved.source} -> {saved.target}, {saved.spec}); "
            "choose another --checkpoint or pass --restart"
        )
    if saved is not None and not saved.finished:
        job = saved
        console.print(
            f"resuming from {path}: {job.done:,} of {job.done + job.remaining().total:,} "
            "records already copied (--restart starts over)"
        )
    else:
        if saved is not None:
            console.print(f"{path} records a finished run of this replay: copying again")
        job = fresh
    console.print(_plan_table(job.remaining(), f"{plan.topic} -> {target}"))
    if dry_run:
        console.print(f"dry run: {job.remaining().total:,} record(s) would be copied")
        return
    kafka.save_checkpoint(path, job)
    with progress_bar() as bar:
        task = bar.add_task("copying", total=job.done + job.remaining().total, completed=job.done)
        try:
            result = kafka.copy_range(
                settings, job, path, rate=rate, progress=lambda n: bar.advance(task, n)
            )
        except KeyboardInterrupt:
            bar.stop()
            console.print(f"interrupted; the checkpoint is in {path}: run the same command again")
            raise SystemExit(130) from None
    console.print(f"copied {result.copied:,} record(s) to {target}; checkpoint {path}")


def _replay_into_groups(
    settings: Settings,
    plan: ReplayPlan,
    groups: dict[str, str],
    dry_run: bool,
    wait: bool,
    wait_timeout: float,
) -> None:
    from streams.bus import replay as kafka

    console.print(_plan_table(plan, plan.topic))
    if dry_run:
        if groups:
            console.print("would reset: " + ", ".join(f"{g} ({a})" for g, a in groups.items()))
        console.print(f"dry run: {plan.total:,} record(s) in the range")
        return
    admin = kafka.admin_for(settings)
    busy = {group: kafka.group_members(admin, group) for group in groups}
    active = {group: members for group, members in busy.items() if members}
    if active:
        described = "; ".join(f"{g}: {', '.join(m[:3])}" for g, m in active.items())
        raise kafka.GroupActive(
            f"consumer group(s) with active members: {described}. Stop the workers running "
            "them (a group's offsets cannot be moved while it consumes), then replay again"
        )
    for group, why in groups.items():
        kafka.reset_group(settings, group, plan)
        console.print(f"reset {group} ({why}) on {plan.topic} to the start of the range")
    if not wait or plan.total == 0:
        return
    console.print("start the workers now; following their progress (Ctrl-C stops watching only)")
    deadline = time.monotonic() + wait_timeout
    with progress_bar() as bar:
        tasks = {group: bar.add_task(group, total=plan.total) for group in groups}
        try:
            while time.monotonic() < deadline:
                consumed = {
                    group: kafka.consumed_in_range(
                        plan, kafka.committed_offsets(settings, group, plan)
                    )
                    for group in groups
                }
                for group, done in consumed.items():
                    bar.update(tasks[group], completed=done)
                if all(done >= plan.total for done in consumed.values()):
                    return
                time.sleep(1.0)
        except KeyboardInterrupt:
            return
    _fail(f"the groups did not get through the range within {wait_timeout:.0f} s")


# --- dead letters -------------------------------------------------------------------------------


@click.group("dlq")
def dlq_group() -> None:
    """Inspect dead letters and push them back to their source topics after a fix."""


def _filter(reason: str | None, source_topic: str | None, agent: str | None) -> DeadLetterFilter:
    return DeadLetterFilter(reason=reason, source_topic=source_topic, agent=agent)


_reason = click.option("--reason", help="error type (decode, validation...) or text in the reason")
_source = click.option("--source-topic", help="logical source topic, e.g. metrics.points")
_agent = click.option("--agent", help="the agent that rejected the records")


@dlq_group.command("list")
@_reason
@_source
@_agent
def dlq_list(reason: str | None, source_topic: str | None, agent: str | None) -> None:
    """Dead letters counted by source topic and error type (reads the dead-letter topic)."""
    from streams.bus import dlq
    from streams.bus.replay import ReplayError

    settings = get_settings()
    undecodable = 0

    def note(*_: Any) -> None:
        nonlocal undecodable
        undecodable += 1

    try:
        letters = dlq.read_dead_letters(
            settings, _filter(reason, source_topic, agent), undecodable=note
        )
        groups = summarise(letter.record for letter in letters)
    except ReplayError as error:
        _fail(error)
    table = Table(title=f"dead letters in {dlq.dead_letter_topic(settings)}")
    for column in ("source topic", "error type", "count", "first", "last", "most common reason"):
        table.add_column(column, overflow="fold", justify="right" if column == "count" else "left")
    for group in groups:
        table.add_row(
            group.source_topic,
            group.error_type,
            f"{group.count:,}",
            _when(group.first_failed_ms),
            _when(group.last_failed_ms),
            group.common_reason[:120],
        )
    console.print(table)
    console.print(f"total: {sum(g.count for g in groups):,}")
    if undecodable:
        console.print(f"[yellow]{undecodable} record(s) on the topic are not dead letters[/]")


@dlq_group.command("show")
@click.option("--offset", type=int, help="the one dead letter at this offset")
@click.option("--from-offset", type=int, help="start the page here")
@click.option("--limit", type=int, default=10, show_default=True, help="page size")
@_reason
@_source
@_agent
def dlq_show(
    offset: int | None,
    from_offset: int | None,
    limit: int,
    reason: str | None,
    source_topic: str | None,
    agent: str | None,
) -> None:
    """Dead letters in full: where from, why, headers, and the raw value decoded if it decodes
    with today's schemas, else as hex."""
    from streams.bus import dlq
    from streams.bus.replay import ReplayError

    settings = get_settings()
    codec = dlq.codec_for(settings)
    shown = 0
    try:
        letters = dlq.read_dead_letters(
            settings,
            _filter(reason, source_topic, agent),
            from_offset=offset if offset is not None else from_offset,
            to_offset=None if offset is None else offset + 1,
        )
        for letter in letters:
            _show_letter(codec, letter)
            shown += 1
            if shown >= limit:
                break
    except ReplayError as error:
        _fail(error)
    if not shown:
        _fail("no dead letter matches" if offset is None else f"no dead letter at offset {offset}")


def _show_letter(codec: Any, letter: Any) -> None:
    from streams.bus.dlq import describe_value

    record = letter.record
    console.rule(f"dead letter {letter.partition}:{letter.offset}")
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold")
    fields.add_column(overflow="fold")
    origin = f"{record['source_topic']}[{record['partition']}]@{record['offset']}"
    for name, value in (
        ("origin", origin),
        ("agent", record["agent"]),
        ("error type", record["error_type"]),
        ("reason", record["reason"]),
        ("record time", _when(record["timestamp_ms"])),
        ("failed at", _when(record["failed_at_ms"])),
        ("key", _bytes_text(record["key"])),
    ):
        fields.add_row(name, str(value))
    for name, value in sorted(record["headers"].items()):
        fields.add_row(f"header {name}", _bytes_text(value))
    console.print(fields, highlight=False)
    kind, content = describe_value(codec, record["value"])
    if kind == "decoded":
        console.print_json(json.dumps(content, default=_json_default))
    else:
        console.print(f"[yellow]does not decode now:[/] {content}", highlight=False)
        if record["value"] is not None:
            console.print(hex_dump(record["value"]), highlight=False, markup=False)


def _bytes_text(value: bytes | None) -> str:
    if value is None:
        return "(none)"
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + value.hex()


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return _bytes_text(value)
    return str(value)


@dlq_group.command("replay")
@click.option(
    "--reason", required=True, help="error type (decode, validation...) or text in the reason"
)
@_source
@_agent
@click.option(
    "--max-replays",
    type=int,
    default=DEFAULT_REPLAY_LIMIT,
    show_default=True,
    help="refuse records already pushed back this many times (loop guard)",
)
@click.option("--dry-run", is_flag=True, help="say what would be sent; send nothing")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="checkpoint file to use")
def dlq_replay(
    reason: str,
    source_topic: str | None,
    agent: str | None,
    max_replays: int,
    dry_run: bool,
    checkpoint: Path | None,
) -> None:
    """Push matching dead letters back to their source topics, after the cause is fixed.

    Each record goes back once per run (two agents rejecting one record make two dead letters),
    never twice across runs (a checkpoint file), and not past --max-replays (a header counts).
    """
    from streams.bus import dlq
    from streams.bus.replay import ReplayError, default_checkpoint_dir

    settings = get_settings()
    path = checkpoint or dlq.dead_letter_checkpoint_path(settings, default_checkpoint_dir(settings))
    try:
        result = dlq.replay_dead_letters(
            settings, _filter(reason, source_topic, agent), path, limit=max_replays, dry_run=dry_run
        )
    except ReplayError as error:
        _fail(error)
    labels = {
        "send": "sent" if not dry_run else "would send",
        "duplicate": "same record already sent in this run",
        "done": "sent by an earlier run (checkpoint)",
        "exhausted": f"refused: replayed {max_replays} time(s) already",
        "no_value": "no value to send",
        "truncated": "refused: only a prefix of a huge record is kept (replay its source offset)",
    }
    table = Table(title="dlq replay" + (" (dry run)" if dry_run else ""))
    table.add_column("dead letters")
    table.add_column("count", justify="right")
    for action, count in sorted(result.decisions.items()):
        table.add_row(labels.get(action, action), str(count))
    console.print(table)
    if not dry_run:
        console.print(f"checkpoint: {path}")


# --- backfill -----------------------------------------------------------------------------------


@click.command("backfill")
@click.option(
    "--domain",
    required=True,
    type=click.Choice(["tracing", "metrics"]),
    help="tracing: CAT minute and hour reports; metrics: 1-minute and 1-hour rollups",
)
@click.option("--from", "from_time", required=True, help="start: ISO-8601, epoch ms or -2h")
@click.option("--to", "to_time", required=True, help="end (exclusive): ISO-8601, epoch ms, now")
@click.option(
    "--margin",
    type=float,
    help="seconds read before and after the range [default: grace period + 300]",
)
@click.option("--dry-run", is_flag=True, help="read and rebuild, print the counts, write nothing")
def backfill_command(
    domain: str, from_time: str, to_time: str, margin: float | None, dry_run: bool
) -> None:
    """Recompute reports or rollups of a time range from the source topic into Cassandra.

    Only whole minutes and hours inside [--from, --to) are written; the writes are upserts, so
    a backfill over rows live processing wrote, or run twice, leaves one row per key.
    """
    import asyncio

    from streams.bus import backfill as job
    from streams.bus.backfill_model import BackfillInputError, BackfillWindow
    from streams.bus.replay import ReplayError

    settings = get_settings()
    try:
        now_ms = int(time.time() * 1000)
        margin_ms = (
            int(margin * 1000) if margin is not None else job.default_margin_ms(settings, domain)
        )
        window = BackfillWindow(
            parse_time_ms(from_time, now_ms), parse_time_ms(to_time, now_ms), margin_ms
        )
        plan = job.plan_backfill(settings, domain, window)
        console.print(
            f"{domain}: minutes {_when(window.first_minute_ms)} to {_when(window.end_minute_ms)} "
            f"(UTC, end exclusive); reading {_when(window.read_from_ms)} to "
            f"{_when(window.read_to_ms)}",
            highlight=False,
        )
        console.print(_plan_table(plan, f"records of {plan.topic} to read"))
        with progress_bar() as bar:
            task = bar.add_task("reading", total=plan.total)
            result = asyncio.run(
                job.backfill(
                    settings,
                    domain,
                    window,
                    dry_run=dry_run,
                    progress=lambda n: bar.advance(task, n),
                )
            )
    except (ReplayInputError, BackfillInputError, ReplayError) as error:
        _fail(error)
    counts = result.counts
    table = Table(title=f"backfill {domain}" + (" (dry run: nothing written)" if dry_run else ""))
    table.add_column("")
    table.add_column("count", justify="right")
    for label, value in (
        ("records applied", counts.records),
        ("refused by the domain's rules (dead-lettered live)", counts.rejected),
        ("undecodable (dead-lettered live)", result.undecodable),
        ("outside the whole minutes of the range", counts.outside),
        ("minute rows " + ("to write" if dry_run else "written"), counts.minute_rows),
        ("hour rows " + ("to write" if dry_run else "written"), counts.hour_rows),
    ):
        table.add_row(label, f"{value:,}")
    console.print(table)
