"""`logagg`: one console script, a subcommand per process kind.

Each subcommand builds its settings (flags, then `LOGAGG_*` environment variables, then
defaults: its options are the settings model's fields, see `logagg.options`), configures
logging and calls one function.
"""

from __future__ import annotations

import asyncio
import os
from contextlib import closing
from pathlib import Path
from typing import Annotated

import typer

from api import ApiSettings
from bridge import BridgeSettings
from logagg import export, logs, search
from logagg.options import with_settings
from logagg.settings import UpSettings, ViewSettings
from publisher import PublisherSettings, ReplaySettings

app = typer.Typer(
    help="MQTT log aggregator: every event the broker accepted, stored exactly once.",
    no_args_is_help=True,
    add_completion=False,
    # A traceback must not print the settings (broker URL, passwords); older Typers did.
    pretty_exceptions_show_locals=False,
)

LogLevel = Annotated[
    str, typer.Option(envvar="LOGAGG_LOG_LEVEL", help="debug, info, warning or error")
]
LogFormat = Annotated[
    logs.LogFormat,
    typer.Option(envvar="LOGAGG_LOG_FORMAT", help="text or json (one object a line)"),
]
# The publishing commands' (`publish`, `replay`) own flags.
Progress = Annotated[bool, typer.Option(help="Progress bar on a terminal")]
JsonSummary = Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object")]


@app.command()
@with_settings(BridgeSettings)
def bridge(
    config: BridgeSettings, log_level: LogLevel = "info", log_format: LogFormat = "text"
) -> None:
    """Subscribe to logs/# and store every event exactly once."""
    from bridge.consumer import run_bridge
    from bridge.metrics import MetricsUnavailable
    from bridge.refusal import BrokerRefused
    from bridge.store import SchemaTooNew

    logs.configure(log_level, log_format)
    try:
        asyncio.run(run_bridge(config))
    except (MetricsUnavailable, SchemaTooNew, BrokerRefused) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
@with_settings(UpSettings)
def up(config: UpSettings, log_level: LogLevel = "info", log_format: LogFormat = "text") -> None:
    """Run the whole system: broker (if none is running), bridge and HTTP sidecar."""
    from logagg.up import run_up

    logs.configure(log_level, log_format)
    # The bridge and the sidecar log the same way.
    os.environ.update(LOGAGG_LOG_LEVEL=log_level, LOGAGG_LOG_FORMAT=log_format)
    raise typer.Exit(run_up(config))


@app.command()
@with_settings(ApiSettings)
def api(config: ApiSettings, log_level: LogLevel = "info", log_format: LogFormat = "text") -> None:
    """Serve HTTP: POST /publish through the broker, GET /stats, /events, /rejected, /healthz."""
    import uvicorn

    from api import create_app
    from api.server import raise_open_files_limit, server_config

    logs.configure(log_level, log_format)
    raise_open_files_limit()
    # log_config=None: uvicorn's loggers go through ours, in the same format.
    served = server_config(create_app(config), config, log_config=None, log_level=log_level.lower())
    uvicorn.Server(served).run()


@app.command()
# The flags these had before their settings got longer names (LOGAGG_BATCH_SIZE is the bridge's).
@with_settings(
    PublisherSettings, renamed={"http_batch_size": "--batch-size", "ack_timeout_s": "--ack-timeout"}
)
def publish(
    config: PublisherSettings,
    progress: Progress = True,
    json_output: JsonSummary = False,
    log_level: LogLevel = "warning",
    log_format: LogFormat = "text",
) -> None:
    """Send simulated log events, with duplicates and late timestamps; print a summary."""
    import json

    from publisher import PublishError, Summary, run_publisher, terminal_progress

    logs.configure(log_level, log_format)
    summary: Summary | None
    error: str | None = None
    with terminal_progress(config.count, enabled=progress) as on_progress:
        try:
            summary = run_publisher(config, on_progress=on_progress)
        except PublishError as exc:
            summary, error = exc.summary, str(exc)
    if json_output:
        typer.echo(json.dumps({**(summary.as_dict() if summary else {}), "error": error}))
    elif summary is not None:
        typer.echo(str(summary))
    if error is not None:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1)


@app.command()
def bench(
    count: Annotated[
        int | None, typer.Option(help="Messages in the drained backlog (default 150,000)")
    ] = None,
    dup_ratio: Annotated[
        float | None, typer.Option(help="Fraction of sends repeating an event (default 0.1)")
    ] = None,
    rate: Annotated[
        float | None, typer.Option(help="Latency run: events/s (default 1,000)")
    ] = None,
    duration: Annotated[
        float | None, typer.Option(help="Latency run: seconds (default 30)")
    ] = None,
    payload_bytes: Annotated[
        int | None, typer.Option(help="Approximate payload size (default 100)")
    ] = None,
    durability: Annotated[
        str | None, typer.Option(help="The bridge's store durability: full, normal or off")
    ] = None,
    prefill: Annotated[
        int | None,
        typer.Option(
            help="Growth run: events already in the store; --query, --export: corpus events"
            " written into --store first if it holds none (default 10M)"
        ),
    ] = None,
    growth_count: Annotated[
        int | None, typer.Option(help="Growth run: events inserted (default 60,000)")
    ] = None,
    memory_count: Annotated[
        int | None, typer.Option(help="Memory run: events streamed (default 1,000,000)")
    ] = None,
    http_count: Annotated[
        int | None, typer.Option(help="HTTP run: events posted (default 30,000)")
    ] = None,
    repeat: Annotated[
        int | None, typer.Option(help="Drain runs, alternating baseline and bridge first")
    ] = None,
    bridges: Annotated[
        int | None,
        typer.Option(help="Drain: bridges sharing the stream with --group logagg (default 1)"),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            help="Drain, --retention-flat: a postgresql:// URL (a fresh schema per run, dropped"
            " after) instead of a fresh SQLite file; --query, --retention-purge: the store used"
            " (sqlite:// or postgresql://)"
        ),
    ] = None,
    compare_scaling: Annotated[
        bool,
        typer.Option(
            help="Only drain the same backlog with 1 bridge on SQLite and 1, 2, 3 on --store"
        ),
    ] = False,
    query: Annotated[
        bool,
        typer.Option(
            help="Only the query scenario: random searches of each kind on --store (issue 11)"
        ),
    ] = False,
    export: Annotated[
        bool,
        typer.Option(
            help="Only the export scenario: export --store to /dev/null (CLI and HTTP, RSS"
            " sampled) and replay --count of its events against bare paho (issue 12)"
        ),
    ] = False,
    limit: Annotated[
        bool,
        typer.Option(
            help="Only the same backlog (30% duplicates) drained by mosquitto_sub, bare"
            " aiomqtt and the bridge with durability full and normal, each alone (issue 13)"
        ),
    ] = False,
    retention_purge: Annotated[
        bool,
        typer.Option(
            help="Only the purge under a live stream: --backlog expired events in --store"
            " (prefilled if empty; default a fresh SQLite file) (issue 12)"
        ),
    ] = False,
    retention_flat: Annotated[
        bool,
        typer.Option(
            help="Only the store's size under retention: --rate for --windows retentions (issue 12)"
        ),
    ] = False,
    backlog: Annotated[
        int | None,
        typer.Option(help="Retention purge: expired events to purge (default 5,000,000)"),
    ] = None,
    retention_s: Annotated[
        int | None,
        typer.Option(help="Retention runs: the bridge's retention, seconds (default 60)"),
    ] = None,
    windows: Annotated[
        int | None,
        typer.Option(help="Retention flat: the run's length in retentions (default 10)"),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds a scenario waits for its events (default 600); retention purge:"
            " for the backlog to be gone"
        ),
    ] = None,
    queries: Annotated[
        int | None, typer.Option(help="Query run: random queries of each kind (default 200)")
    ] = None,
    deep_page: Annotated[
        int | None,
        typer.Option(help="Query run: the page compared with page 1 (default 1,000)"),
    ] = None,
    sidecar_from: Annotated[
        Path | None,
        typer.Option(
            help="HTTP run: also through this checkout's sidecar (e.g. main's, from git"
            " archive), for a before/after in the same run"
        ),
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="Every scenario, small: under 30 s, to prove it works")
    ] = False,
    skip: Annotated[
        list[str] | None,
        typer.Option(help="Leave out a scenario: drain, latency, http, growth or memory"),
    ] = None,
    json_out: Annotated[Path, typer.Option(help="Where to write the JSON report")] = Path(
        "bench-results/bench.json"
    ),
    log_level: LogLevel = "warning",
    log_format: LogFormat = "text",
) -> None:
    """Measure the bridge against a bare MQTT subscriber: throughput, latency, HTTP, growth;
    with --query, search on a large store instead."""
    from bench.run import run_bench

    logs.configure(log_level, log_format)

    try:
        code = run_bench(
            quick_mode=quick,
            skip=skip or [],
            compare_scaling=compare_scaling,
            query=query,
            export=export,
            limit_only=limit,
            retention_purge=retention_purge,
            retention_flat=retention_flat,
            json_out=json_out,
            echo=typer.echo,
            count=count,
            dup_ratio=dup_ratio,
            rate=rate,
            duration=duration,
            payload_bytes=payload_bytes,
            durability=durability,
            prefill=prefill,
            growth_count=growth_count,
            memory_count=memory_count,
            http_count=http_count,
            repeat=repeat,
            bridges=bridges,
            store=store,
            queries=queries,
            deep_page=deep_page,
            backlog=backlog,
            retention_s=retention_s,
            windows=windows,
            timeout=timeout,
            sidecar_from=sidecar_from.resolve() if sidecar_from else None,
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


@app.command()
@with_settings(BridgeSettings)
def ready(
    config: BridgeSettings, log_level: LogLevel = "warning", log_format: LogFormat = "text"
) -> None:
    """Exit 0 when this bridge (by client id, as `logagg bridge` names it: the same flags and
    LOGAGG_* variables) has subscribed and is alive on this store (for health checks)."""
    from bridge.store import StoreUnavailable, open_reader

    logs.configure(log_level, log_format)
    try:
        with closing(open_reader(config.store, config.store_options)) as db:
            uptime = db.bridge_uptime(config.client_id)
    except StoreUnavailable as exc:
        typer.echo(f"not ready: {exc}", err=True)
        raise typer.Exit(1) from None
    if uptime is None:
        typer.echo(
            f"not ready: bridge {config.client_id} has no heartbeat in the last"
            f" {config.bridge_alive_s:g}s on this store",
            err=True,
        )
        raise typer.Exit(1)
    typer.echo(f"ready: bridge {config.client_id} up for {uptime:.0f}s")


OutputFlag = Annotated[
    Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout")
]
StoreFlag = Annotated[
    str | None,
    typer.Option(
        help="Read this store directly instead of asking the sidecar: sqlite:///path or"
        " postgresql://user@host/db?schema=NAME"
    ),
]


@app.command(name="search")
@with_settings(ViewSettings)
@search.with_query_flags
def search_command(
    config: ViewSettings,
    params: search.Params,
    order: Annotated[
        str | None, typer.Option(help="asc (default: oldest first) or desc (newest first)")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Print at most this many events")] = 100,
    every: Annotated[bool, typer.Option("--all", help="Print every event found")] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON object a line (NDJSON), as /events has it")
    ] = False,
    store: StoreFlag = None,
    log_level: LogLevel = "warning",
    log_format: LogFormat = "text",
) -> None:
    """Print the stored events a query finds, one a line: seq time topic source event_id
    payload. Exit status 2 names a refused flag."""
    logs.configure(log_level, log_format)
    search.run(
        [*params, *([("order", order)] if order is not None else [])],
        limit=None if every else limit,
        json_output=json_output,
        view=config,
        store=store,
    )


@app.command()
@with_settings(ViewSettings)
@search.with_query_flags
def tail(
    config: ViewSettings,
    params: search.Params,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Then print each event as it is stored")
    ] = False,
    lines: Annotated[
        int, typer.Option("--lines", "-n", min=0, help="How many of the newest to print")
    ] = 10,
    log_level: LogLevel = "warning",
    log_format: LogFormat = "text",
) -> None:
    """Print the newest stored events (those the filters match), one a line: seq time topic
    source event_id payload."""
    from logagg.views import QueryRefused, ViewError, latest, one_line, sidecar
    from logagg.views import follow as follow_events
    from supervise.process import interrupt_on_stop_signals

    logs.configure(log_level, log_format)
    interrupt_on_stop_signals()
    try:
        with sidecar(config) as client:
            events = follow_events if follow else latest
            for event in events(client, params, lines):
                typer.echo(one_line(event))
    except QueryRefused as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except ViewError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:  # how `tail -f` ends: Ctrl-C, SIGINT or SIGTERM
        pass


@app.command(name="export")
@with_settings(ViewSettings)
@search.with_query_flags
def export_command(
    config: ViewSettings,
    params: search.Params,
    after: Annotated[
        int | None, typer.Option(min=0, help="Only events with a larger seq: resumes an export")
    ] = None,
    output: OutputFlag = None,
    store: StoreFlag = None,
    log_level: LogLevel = "warning",
    log_format: LogFormat = "text",
) -> None:
    """Write every stored event the filters match (those of `search`), oldest first, as
    NDJSON: the input of `logagg replay`. Progress on stderr when it is a terminal."""
    logs.configure(log_level, log_format)
    resume = [("after", str(after))] if after is not None else []
    export.run([*params, *resume], output=output, view=config, store=store)


@app.command()
@with_settings(
    ReplaySettings, renamed={"topic_prefix": "--prefix", "ack_timeout_s": "--ack-timeout"}
)
def replay(
    config: ReplaySettings,
    file: Annotated[str, typer.Argument(help="An export (NDJSON), or - for stdin")],
    progress: Progress = True,
    json_output: JsonSummary = False,
    log_level: LogLevel = "warning",
    log_format: LogFormat = "text",
) -> None:
    """Publish exported events again (QoS 1, their topic, event_id, timestamp, source and
    payload), waiting for every PUBACK; bad lines are named and skipped (exit 1). Safe to
    interrupt and run again: what is stored already counts as a duplicate."""
    import json
    import sys

    from publisher.replay import replay as run_replay
    from publisher.run import terminal_progress
    from supervise.process import interrupt_on_stop_signals

    logs.configure(log_level, log_format)
    interrupt_on_stop_signals()
    shown = 0

    def bad(line: object) -> None:
        nonlocal shown
        shown += 1
        if shown <= MAX_BAD_SHOWN:
            typer.echo(f"bad {line}", err=True)

    try:
        source = sys.stdin.buffer if file == "-" else Path(file).open("rb")  # noqa: SIM115
    except OSError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    with (
        source,
        terminal_progress(_lines_in(file), enabled=progress, doing="replaying") as on_progress,
    ):
        summary = run_replay(config, source, on_progress=on_progress, on_bad=bad)
    if shown > MAX_BAD_SHOWN:
        typer.echo(f"… and {shown - MAX_BAD_SHOWN:,} more bad lines", err=True)
    typer.echo(json.dumps(summary.as_dict()) if json_output else str(summary))
    if summary.error is not None:
        typer.echo(f"error: {summary.error}", err=True)
        raise typer.Exit(1)
    if summary.interrupted:
        raise typer.Exit(130)
    if summary.bad:
        raise typer.Exit(1)


# Bad lines named one by one on stderr; past that, only counted.
MAX_BAD_SHOWN = 20


def _lines_in(file: str) -> int | None:
    """How many lines a regular file holds (the progress bar's total), else None."""
    path = Path(file)
    if file == "-" or not path.is_file():
        return None
    with path.open("rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))


rejected_app = typer.Typer(help="The rejected messages the store keeps.", no_args_is_help=True)
app.add_typer(rejected_app, name="rejected")


@rejected_app.command(name="export")
@with_settings(ViewSettings)
def rejected_export(
    config: ViewSettings,
    output: OutputFlag = None,
    store: StoreFlag = None,
    log_level: LogLevel = "warning",
    log_format: LogFormat = "text",
) -> None:
    """Write the kept rejected messages, oldest first, as NDJSON: seq, mqtt_topic, code,
    reason, body, received_at (a body over 2 KiB is kept cut, with a note of its size)."""
    logs.configure(log_level, log_format)
    export.run_rejected(output=output, view=config, store=store)


@app.command()
@with_settings(ViewSettings)
def stats(
    config: ViewSettings,
    json_output: Annotated[bool, typer.Option("--json", help="Print /stats as JSON")] = False,
    log_level: LogLevel = "warning",
    log_format: LogFormat = "text",
) -> None:
    """Print the counters: received, stored, duplicates, rejected (by reason), per topic."""
    from logagg.views import ViewError, fetch_stats, sidecar, summary

    logs.configure(log_level, log_format)
    try:
        with sidecar(config) as client:
            report = fetch_stats(client)
    except ViewError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(report.model_dump_json(indent=2) if json_output else summary(report))


def main() -> None:
    app()
