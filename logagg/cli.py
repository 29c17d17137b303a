"""`logagg`: one console script, a subcommand per process kind.

Each subcommand parses flags, builds its settings (flags, then `LOGAGG_*`
environment variables, then defaults), configures logging and calls one
function. A flag left out is `None` here, so the environment can fill it.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from bridge.event import describe
from bridge.settings import BridgeSettings
from logagg import logs

app = typer.Typer(
    help="MQTT log aggregator: every event the broker accepted, stored exactly once.",
    no_args_is_help=True,
    add_completion=False,
)

S = TypeVar("S", bound=BaseSettings)

Broker = Annotated[
    str | None, typer.Option(help="Broker URL, mqtt://host:port [env LOGAGG_BROKER]")
]
Store = Annotated[
    str | None,
    typer.Option(help="Store URL, sqlite:///relative/path or sqlite:////abs [env LOGAGG_STORE]"),
]
LogLevel = Annotated[str, typer.Option(help="debug, info, warning or error")]
LogFormat = Annotated[logs.LogFormat, typer.Option(help="text or json (one object a line)")]


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
        str | None, typer.Option(help="Fixed MQTT client id: the session is kept under it")
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
    log_level: LogLevel = "info",
    log_format: LogFormat = "text",
) -> None:
    """Subscribe to logs/# and store every event exactly once."""
    from bridge.consumer import run_bridge

    config = settings(
        BridgeSettings,
        broker=broker,
        store=store,
        client_id=client_id,
        group=group,
        batch_size=batch_size,
        durability=durability,
        max_payload_bytes=max_payload_bytes,
    )
    logs.configure(log_level, log_format)
    asyncio.run(run_bridge(config))


def main() -> None:
    app()
