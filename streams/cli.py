"""The `stackstream` command: local stack, topics, worker and the demo."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from streams.settings import Settings, get_settings

console = Console()
YOUNG_COLLECTION_ALLOCATIONS = 10_000


def _fail(message: str | BaseException) -> None:
    text = str(message)
    if isinstance(message, BaseException):
        text = "\n".join([text, *getattr(message, "__notes__", [])])
    console.print(f"[red]error:[/red] {text}", highlight=False)
    raise SystemExit(1)


@click.group()
def main() -> None:
    """stackstream: a microservice monitoring-and-control stack as streams on Kafka."""


# --- dev: the local stack ------------------------------------------------------------------


@main.group()
def dev() -> None:
    """Run real Kafka, Elasticsearch and Cassandra on this machine (no Docker)."""


def _stack(settings: Settings):  # type: ignore[no-untyped-def]
    from deploy.local.stack import LocalStack

    return LocalStack(settings)


def _print_status(statuses: Sequence) -> None:  # type: ignore[type-arg]
    table = Table(title="local stack")
    for column in ("server", "state", "address", "version", "memory", "data folder"):
        table.add_column(column, overflow="fold")
    colours = {"running": "green", "stopped": "dim", "starting": "yellow", "failed": "red"}
    for status in statuses:
        memory = f"{status.rss_bytes / 2**20:.0f} MiB" if status.rss_bytes else "-"
        table.add_row(
            status.name,
            f"[{colours.get(status.state, 'white')}]{status.state}[/]",
            status.address,
            status.version,
            memory,
            str(status.data_dir),
        )
    console.print(table)


@dev.command("up")
@click.option(
    "--only",
    multiple=True,
    type=click.Choice(["kafka", "elasticsearch", "cassandra"]),
    help="start just these servers (repeatable)",
)
def dev_up(only: tuple[str, ...]) -> None:
    """Start the servers (or reuse running ones) and wait until each really answers."""
    from deploy.local.errors import LocalStackError

    stack = _stack(get_settings())
    started = time.monotonic()
    with console.status("starting " + (", ".join(only) or "kafka, elasticsearch, cassandra")):
        try:
            statuses = stack.up(list(only) or None)
        except LocalStackError as error:
            _fail(error)
    _print_status(statuses)
    console.print(f"ready in {time.monotonic() - started:.1f}s")


@dev.command("down")
@click.option("--only", multiple=True, type=click.Choice(["kafka", "elasticsearch", "cassandra"]))
def dev_down(only: tuple[str, ...]) -> None:
    """Stop the servers cleanly."""
    _print_status(_stack(get_settings()).down(list(only) or None))


@dev.command("status")
def dev_status() -> None:
    """Each server's state, address, version and data folder."""
    _print_status(_stack(get_settings()).status())


@dev.command("logs")
@click.argument("name", type=click.Choice(["kafka", "elasticsearch", "cassandra"]))
@click.option("-n", "--lines", default=50, show_default=True, help="how many last lines")
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines")
def dev_logs(name: str, lines: int, follow: bool) -> None:
    """Show a server's log."""
    path = _stack(get_settings()).log_file(name)
    if not path.exists():
        _fail(f"{path} does not exist yet: has {name} been started with `stackstream dev up`?")
    command = ["tail", f"-n{lines}", *(["-F"] if follow else []), str(path)]
    raise SystemExit(subprocess.call(command))


# --- topics ---------------------------------------------------------------------------------


@main.group()
def topics() -> None:
    """Make the cluster's topics match topology.yaml."""


def _topology(settings: Settings):  # type: ignore[no-untyped-def]
    from streams.bus.codec import SchemaRegistry
    from streams.topology import TopologyError, load_topology

    try:
        registry = SchemaRegistry.from_directory(settings.schemas_dir)
        return load_topology(settings.topology_file, known_schemas=registry.names)
    except (TopologyError, ValueError, FileNotFoundError) as error:
        _fail(str(error))


@topics.command("apply")
@click.option("--dry-run", is_flag=True, help="print the changes without making them")
def topics_apply(dry_run: bool) -> None:
    """Create missing topics, add partitions and alter configs; prints the diff."""
    _apply_topics(get_settings(), dry_run)


def _apply_topics(settings: Settings, dry_run: bool) -> None:
    from streams.bus.admin import TopicPlanError, admin_client, apply, plan

    topology = _topology(settings)
    admin = admin_client(settings.kafka)
    try:
        changes = plan(admin, topology.topics.values(), settings.topic_prefix)
    except TopicPlanError as error:
        _fail(str(error))
    except Exception as error:
        _fail(f"cannot reach Kafka at {settings.kafka}: {error}")
    colours = {"create": "green", "alter": "yellow", "unchanged": "dim"}
    for change in changes:
        for line in change.describe():
            console.print(f"[{colours[change.action]}]{line}[/]", highlight=False)
    pending = [change for change in changes if change.action != "unchanged"]
    if dry_run:
        console.print(f"dry run: {len(pending)} topic(s) would change")
        return
    try:
        apply(admin, topology, settings.topic_prefix, pending)
    except TopicPlanError as error:
        _fail(str(error))
    console.print(f"{len(pending)} topic(s) changed")


@topics.command("list")
def topics_list() -> None:
    """Declared topics with partition counts and end offsets."""
    from streams.bus.admin import describe_topics

    settings = get_settings()
    topology = _topology(settings)
    try:
        states = describe_topics(settings.kafka, topology, settings.topic_prefix)
    except Exception as error:
        _fail(f"cannot reach Kafka at {settings.kafka}: {error}")
    table = Table(title=f"topics on {settings.kafka}")
    for column in ("topic", "partitions", "end offsets (sum)", "declared"):
        table.add_column(column)
    for state in states:
        table.add_row(
            state.name,
            str(state.partitions) if state.partitions else "[red]missing[/]",
            str(state.end_offsets),
            "yes" if state.declared else "no",
        )
    console.print(table)


# --- worker and demo ------------------------------------------------------------------------


@main.command()
@click.option("--loglevel", default="info", show_default=True)
@click.option("--web-port", type=int, default=None, help="overrides STACKSTREAM_WEB_PORT")
def worker(loglevel: str, web_port: int | None) -> None:
    """Run a stream-processing worker (all agents, tables and HTTP views)."""
    from faust.worker import Worker

    from streams.app import create_runtime

    settings = get_settings()
    if web_port is not None:
        settings = settings.model_copy(update={"web_port": web_port})
    runtime = create_runtime(settings)

    class StackstreamWorker(Worker):
        async def on_startup_finished(self) -> None:
            await super().on_startup_finished()
            # Everything built during start-up lives as long as the worker: frozen, a full
            # garbage collection no longer walks it (without this, one took 100-300 ms in the
            # middle of requests).
            gc.freeze()
            # Batches and report pages create containers by the thousand, nearly none of them
            # cyclic garbage; at the default 700 allocations per young collection, collections
            # took a third of a cold 1,000-row report page (docs/tracing.md).
            gc.set_threshold(YOUNG_COLLECTION_ALLOCATIONS, *gc.get_threshold()[1:])

    StackstreamWorker(runtime.app, loglevel=loglevel).execute_from_commandline()


@main.command()
@click.option("--points", default=200, show_default=True, help="sample metric points to emit")
@click.option("--logs", "log_lines", default=50, show_default=True, help="sample log lines")
@click.option(
    "--keep-running/--stop",
    default=True,
    show_default=True,
    help="leave the worker running afterwards",
)
def demo(points: int, log_lines: int, keep_running: bool) -> None:
    """The main job: local stack up, topics applied, a worker running, sample events flowing."""
    from deploy.local.errors import LocalStackError
    from streams.demo import run_demo

    settings = get_settings()
    try:
        with console.status("starting the local stack (first time: downloads the servers)"):
            statuses = _stack(settings).up()
    except LocalStackError as error:
        _fail(error)
    _print_status(statuses)
    _apply_topics(settings, dry_run=False)
    log_path = settings.stack_dir / "worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    worker_process = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "worker"],
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    console.print(f"worker started (pid {worker_process.pid}), log: {log_path}")
    try:
        run_demo(settings, console, points=points, log_lines=log_lines)
    except Exception as error:
        worker_process.terminate()
        _fail(f"{error} (worker log: {log_path})")
    if keep_running:
        Path(settings.stack_dir / "worker.pid").write_text(str(worker_process.pid))
        console.print(
            f"the worker keeps running (pid {worker_process.pid}); stop it with "
            f"`kill {worker_process.pid}` and the servers with `stackstream dev down`"
        )
    else:
        worker_process.terminate()
        worker_process.wait(30)


from streams.bus.cli import backfill_command, dlq_group, replay_command  # noqa: E402
from streams.config.cli import config_group  # noqa: E402
from streams.logs.cli import logs_group  # noqa: E402
from streams.metrics.cli import metrics_group  # noqa: E402

main.add_command(logs_group)
main.add_command(config_group)
main.add_command(replay_command)
main.add_command(backfill_command)
main.add_command(dlq_group)
main.add_command(metrics_group)


if __name__ == "__main__":
    main()
