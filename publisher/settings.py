"""Settings for `logagg publish`: flags, then `LOGAGG_*` environment variables, then defaults."""

from __future__ import annotations

import socket
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, StringConstraints
from pydantic_settings import NoDecode

from bridge.event import DEFAULT_MAX_PAYLOAD_BYTES, MAX_NAME_LENGTH, Name
from bridge.settings import MqttSettings

DEFAULT_TOPICS = ("auth.prod", "billing.prod", "api.prod", "db.prod", "edge.prod")
DEFAULT_API_URL = "http://127.0.0.1:8080"


def _split_commas(value: Any) -> Any:
    """`a,b` from a flag or LOGAGG_TOPICS; NoDecode keeps pydantic-settings from wanting JSON."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"API URL {value!r} must start with http:// or https://")
    return value.rstrip("/")


# The sidecar's base URL, for each of its HTTP clients (`publish --via http`, `tail`, `stats`).
SidecarUrl = Annotated[str, AfterValidator(_http_url)]


class SendSettings(MqttSettings):
    """What every QoS 1 sender of events takes: `publish` and `replay`."""

    # Events per second; 0 sends as fast as the broker (or sidecar) acknowledges.
    rate: float = Field(
        default=0.0, ge=0, description="Events per second, 0 = as fast as acknowledged"
    )
    # Give up when nothing is acknowledged for this long while something waits for it.
    ack_timeout_s: float = Field(
        default=30.0, gt=0, description="Give up after this many seconds unacknowledged"
    )


class ReplaySettings(SendSettings):
    """`logagg replay`: exported events published again, under `topic_prefix` (`--prefix`)."""


class PublisherSettings(SendSettings):
    count: int = Field(default=1000, ge=1, description="Messages to send, repeats included")
    topics: Annotated[list[Name], NoDecode, BeforeValidator(_split_commas)] = Field(
        default=list(DEFAULT_TOPICS),
        min_length=1,
        description="Comma-separated topics, published under the prefix",
    )
    dup_ratio: float = Field(
        default=0.2, ge=0, lt=1, description="Fraction of sends that repeat an event already sent"
    )
    out_of_order: float = Field(
        default=0.1, ge=0, le=1, description="Fraction of events stamped up to 5 minutes early"
    )
    via: Literal["mqtt", "http"] = Field(
        default="mqtt", description="mqtt, or http through the sidecar"
    )
    api_url: SidecarUrl = Field(default=DEFAULT_API_URL, description="The sidecar, for --via http")
    # The sidecar's LOGAGG_API_TOKEN, sent as a bearer token; environment only, never a flag.
    api_token: SecretStr | None = None
    # Not `batch_size`: LOGAGG_BATCH_SIZE is the bridge's commit batch.
    http_batch_size: int = Field(
        default=500, ge=1, le=10_000, description="Events per POST for --via http"
    )
    # Room for the envelope keeps every message under the bridge's default size limit.
    payload_bytes: int = Field(
        default=100,
        ge=0,
        le=DEFAULT_MAX_PAYLOAD_BYTES - 1024,
        description="Approximate payload size",
    )
    seed: int | None = Field(default=None, description="Same seed, same stream (new ids)")
    source: Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH)] = Field(
        default_factory=lambda: f"logagg-publish@{socket.gethostname()}",
        description="The events' source field (default logagg-publish@HOST)",
    )
