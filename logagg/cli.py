"""`logagg`: one console script, a subcommand per process kind.

Each subcommand parses flags, builds its settings (flags, then `LOGAGG_*`
environment variables, then defaults), configures logging and calls one
function. A flag left out is `None` here, so the environment can fill it.
"""

from __future__ import annotations

import asyncio
import os
from contextlib import closing
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from bridge.event import describe
from bridge.settings import BridgeSettings
from logagg import logs, search

app = typer.Typer(
    help="MQTT log aggregator: every event the broker accepted, stored exactly once.",
    no_args_is_help=True,
    add_completion=False,
    # A traceback must not print the settings (broker URL, passwords); older Typers did.
    pretty_exceptions_show_locals=False,
)

S = TypeVar("S", bound=BaseSettings)

Broker = Annotated[
    str | None, typer.Option(help="Broker URL, mqtt://host:port (env LOGAGG_BROKER)")
]
Store = Annotated[
    str | None,
    typer.Option(
        help="Store URL: sqlite:///relative/path, sqlite:////abs/path or "
        "postgresql://user@host/db?schema=NAME (env LOGAGG_STORE)"
    ),
]
LogLevel = Annotated[
    str, typer.Option(envvar="LOGAGG_LOG_LEVEL", help="debug, info, warning or error")
]
LogFormat = Annotated[
    logs.LogFormat,
    typer.Option(envvar="LOGAGG_LOG_FORMAT", help="text or json (one object a line)"),
]
ApiUrl = Annotated[
    str | None, typer.Option(help="The sidecar, http://host:port (env LOGAGG_API_URL)")
]


def settings(cls: type[S], **flags: Any) -> S:
    """Build settings from the flags given; a bad value exits with the setting's name."""
    try:
        return cls(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        typer.echo(f"error: {describe(exc)}", err=True)
        raise typer.Exit(2) from None


@app.command()
def bridge(
    broker: Broker = None,
    store: Store = None,
    client_id: Annotated[
        str | None,
        typer.Option(
            help="Fixed MQTT client id: the session is kept under it"
            " (default logagg-bridge-HOST-DIGEST-REPLICA, DIGEST from store and topics)"
        ),
    ] = None,
    replica: Annotated[
        int | None, typer.Option(help="This replica's index, for the default client id")
    ] = None,
    group: Annotated[
        str | None, typer.Option(help="Share the stream with other bridges: $share/GROUP/…")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Most messages per commit")] = None,
    durability: Annotated[
        str | None, typer.Option(help="full (survives power loss), normal or off")
    ] = None,
    max_payload_bytes: Annotated[
        int | None, typer.Option(help="Larger messages are rejected")
    ] = None,
    mqtt_version: Annotated[
        str | None, typer.Option(help="5, or 3.1.1 for brokers without MQTT 5")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on this port (0: off)")
    ] = None,
    metrics_host: Annotated[
        str | None, typer.Option(help="Address for --metrics-port (default 127.0.0.1)")
    ] = None,
    log_level: LogLevel = "info",
    log_format: LogFormat = "text",
) -> None:
    """Subscribe to logs/# and store every event exactly once."""
    from bridge.consumer import run_bridge
    from bridge.metrics import MetricsUnavailable
    from bridge.refusal import BrokerRefused
    from bridge.store import SchemaTooNew

    config = settings(
        BridgeSettings,
        broker=broker,
        store=store,
        client_id=client_id,
        replica=replica,
        group=group,
        batch_size=batch_size,
        durability=durability,
        max_payload_bytes=max_payload_bytes,
        mqtt_version=mqtt_version,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
    )
    logs.configure(log_level, log_format)
    try:
        asyncio.run(run_bridge(config))
    except (MetricsUnavailable, SchemaTooNew, BrokerRefused) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def up(
    broker: Broker = None,
    store: Store = None,
    host: Annotated[str | None, typer.Option(help="HTTP sidecar address")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP sidecar port")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Where a broker started here keeps its data")
    ] = None,
    log_level: LogLevel = "info",
    log_format: LogFormat = "text",
) -> None:
    """Run the whole system: broker (if none is running), bridge and HTTP sidecar."""
    from logagg.up import UpSettings, run_up

    config = settings(
        UpSettings, broker=broker, store=store, host=host, port=port, data_dir=data_dir
    )
    logs.configure(log_level, log_format)
    # The bridge and the sidecar log the same way.
    os.environ.update(LOGAGG_LOG_LEVEL=log_level, LOGAGG_LOG_FORMAT=log_format)
    raise typer.Exit(run_up(config))


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="Listen address (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (default 8080)")] = None,
    broker: Broker = None,
    store: Store = None,
    max_batch: Annotated[int | None, typer.Option(help="Most events per POST /publish")] = None,
    max_body_bytes: Annotated[
        int | None, typer.Option(help="Larger request bodies get 413")
    ] = None,
    max_payload_bytes: Annotated[
        int | None, typer.Option(help="Larger events get 422 (the bridge would reject them)")
    ] = None,
    publish_timeout_s: Annotated[
        float | None, typer.Option(help="Longest a publish waits for the broker before 503")
    ] = None,
    max_inflight: Annotated[
        int | None, typer.Option(help="Most unacknowledged QoS 1 messages, all requests together")
    ] = None,
    read_limit_max: Annotated[
        int | None, typer.Option(help="Largest `limit` for /events and /rejected")
    ] = None,
    log_level: LogLevel = "info",
    log_format: LogFormat = "text",
) -> None:
    """Serve HTTP: POST /publish through the broker, GET /stats, /events, /rejected, /healthz."""
    import uvicorn

    from api import ApiSettings, create_app
    from api.server import raise_open_files_limit, server_config

    config = settings(
        ApiSettings,
        host=host,
        port=port,
        broker=broker,
        store=store,
        max_batch=max_batch,
        max_body_bytes=max_body_bytes,
        max_payload_bytes=max_payload_bytes,
        publish_timeout_s=publish_timeout_s,
        max_inflight=max_inflight,
        read_limit_max=read_limit_max,
    )
    logs.configure(log_level, log_format)
    raise_open_files_limit()
    # log_config=None: uvicorn's loggers go through ours, in the same format.
    served = server_config(create_app(config), config, log_config=None, log_level=log_level.lower())
    uvicorn.Server(served).run()


@app.command()
def publish(
    count: Annotated[int | None, typer.Option(help="Messages to send, repeats included")] = None,
    rate: Annotated[
        float | None, typer.Option(help="Events per second, 0 = as fast as acknowledged")
    ] = None,
    topics: Annotated[
        str | None, typer.Option(help="Comma-separated topics, published under logs/")
    ] = None,
    dup_ratio: Annotated[
        float | None, typer.Option(help="Fraction of sends that repeat an event already sent")
    ] = None,
    out_of_order: Annotated[
        float | None, typer.Option(help="Fraction of events stamped up to 5 minutes early")
    ] = None,
    via: Annotated[str | None, typer.Option(help="mqtt, or http through the sidecar")] = None,
    broker: Broker = None,
    api_url: Annotated[
        str | None, typer.Option(help="Sidecar URL for --via http (env LOGAGG_API_URL)")
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(help="Events per POST for --via http (env LOGAGG_HTTP_BATCH_SIZE)"),
    ] = None,
    payload_bytes: Annotated[int | None, typer.Option(help="Approximate payload size")] = None,
    seed: Annotated[int | None, typer.Option(help="Same seed, same stream (new ids)")] = None,
    source: Annotated[str | None, typer.Option(help="The events' source field")] = None,
    ack_timeout: Annotated[
        float | None, typer.Option(help="Give up after this many seconds unacknowledged")
    ] = None,
    mqtt_version: Annotated[
        str | None, typer.Option(help="5, or 3.1.1 for brokers without MQTT 5")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Progress bar on a terminal")] = True,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object")
    ] = False,
    log_level: LogLevel = "warning",
    log_format: LogFormat = "text",
) -> None:
    """Send simulated log events, with duplicates and late timestamps; print a summary."""
    import json

    from publisher import (
        PublishError,
        PublisherSettings,
        Summary,
        run_publisher,
        terminal_progress,
    )

    config = settings(
        PublisherSettings,
        count=count,
        rate=rate,
        topics=topics,
        dup_ratio=dup_ratio,
        out_of_order=out_of_order,
        via=via,
        broker=broker,
        api_url=api_url,
        http_batch_size=batch_size,
        payload_bytes=payload_bytes,
        seed=seed,
        source=source,
        ack_timeout_s=ack_timeout,
        mqtt_version=mqtt_version,
    )
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
        int | None, typer.Option(help="Growth run: events already in the store (default 10M)")
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
            help="Drain: a postgresql:// URL (a fresh schema per run, dropped after) instead "
            "of a fresh SQLite file"
        ),
    ] = None,
    compare_scaling: Annotated[
        bool,
        typer.Option(
            help="Only drain the same backlog with 1 bridge on SQLite and 1, 2, 3 on --store"
        ),
    ] = False,
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
    """Measure the bridge against a bare MQTT subscriber: throughput, latency, HTTP, growth."""
    from bench.run import run_bench

    logs.configure(log_level, log_format)

    try:
        code = run_bench(
            quick_mode=quick,
            skip=skip or [],
            compare_scaling=compare_scaling,
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
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


@app.command()
def ready(
    store: Store = None,
    client_id: Annotated[
        str | None,
        typer.Option(
            help="The bridge asked about (default: the bridge's default for --store,"
            " LOGAGG_GROUP and LOGAGG_TOPIC_PREFIX)"
        ),
    ] = None,
    replica: Annotated[
        int | None, typer.Option(help="Its replica index, for the default client id")
    ] = None,
    log_level: LogLevel = "warning",
    log_format: LogFormat = "text",
) -> None:
    """Exit 0 when this bridge (by client id, as `logagg bridge` names it: the same flags and
    LOGAGG_* variables) has subscribed and is alive on this store (for health checks)."""
    from bridge.store import StoreOptions, StoreUnavailable, open_reader

    config = settings(BridgeSettings, store=store, client_id=client_id, replica=replica)
    logs.configure(log_level, log_format)
    try:
        with closing(open_reader(config.store, StoreOptions(alive_s=config.bridge_alive_s))) as db:
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


@app.command(name="search")
def search_command(
    topic: search.TopicFlag = None,
    since: search.SinceFlag = None,
    until: search.UntilFlag = None,
    source: search.SourceFlag = None,
    q: search.TextFlag = None,
    field: search.FieldFlag = None,
    order: Annotated[
        str | None, typer.Option(help="asc (default: oldest first) or desc (newest first)")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Print at most this many events")] = 100,
    every: Annotated[bool, typer.Option("--all", help="Print every event found")] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON object a line (NDJSON), as /events has it")
    ] = False,
    api_url: ApiUrl = None,
    store: Annotated[
        str | None,
        typer.Option(
            help="Read this store directly instead of asking the sidecar: sqlite:///path or"
            " postgresql://user@host/db?schema=NAME"
        ),
    ] = None,
    log_level: LogLevel = "warning",
    log_format: LogFormat = "text",
) -> None:
    """Print the stored events a query finds, one a line: seq time topic source event_id
    payload. Exit status 2 names a refused flag."""
    logs.configure(log_level, log_format)
    params = search.query_params(topic, since, until, source, q, field)
    search.run(
        [*params, *([("order", order)] if order is not None else [])],
        limit=None if every else limit,
        json_output=json_output,
        api_url=api_url,
        store=store,
    )


@app.command()
def tail(
    topic: search.TopicFlag = None,
    since: search.SinceFlag = None,
    until: search.UntilFlag = None,
    source: search.SourceFlag = None,
    q: search.TextFlag = None,
    field: search.FieldFlag = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Then print each event as it is stored")
    ] = False,
    lines: Annotated[
        int, typer.Option("--lines", "-n", min=0, help="How many of the newest to print")
    ] = 10,
    api_url: ApiUrl = None,
    log_level: LogLevel = "warning",
    log_format: LogFormat = "text",
) -> None:
    """Print the newest stored events (those the filters match), one a line: seq time topic
    source event_id payload."""
    from logagg.views import QueryRefused, ViewError, ViewSettings, latest, one_line, sidecar
    from logagg.views import follow as follow_events
    from supervise.process import interrupt_on_stop_signals

    config = settings(ViewSettings, api_url=api_url)
    logs.configure(log_level, log_format)
    interrupt_on_stop_signals()
    try:
        with sidecar(config) as client:
            events = follow_events if follow else latest
            filters = search.query_params(topic, since, until, source, q, field)
            for event in events(client, filters, lines):
                typer.echo(one_line(event))
    except QueryRefused as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except ViewError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:  # how `tail -f` ends: Ctrl-C, SIGINT or SIGTERM
        pass


@app.command()
def stats(
    api_url: ApiUrl = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print /stats as JSON")] = False,
    log_level: LogLevel = "warning",
    log_format: LogFormat = "text",
) -> None:
    """Print the counters: received, stored, duplicates, rejected (by reason), per topic."""
    from logagg.views import ViewError, ViewSettings, fetch_stats, sidecar, summary

    config = settings(ViewSettings, api_url=api_url)
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
