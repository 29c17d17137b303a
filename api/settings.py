"""Settings for the HTTP sidecar: flags, then `LOGAGG_*` environment variables, then defaults."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from bridge.event import DEFAULT_MAX_EVENT_NODES, DEFAULT_MAX_PAYLOAD_BYTES
from bridge.settings import (
    ALIVE_HELP,
    DEFAULT_STORE,
    STORE_HELP,
    AliveSeconds,
    MqttSettings,
    StoreSetting,
)
from bridge.store import BRIDGE_ALIVE_SECONDS, QUERY_TIMEOUT_SECONDS, StoreOptions

MIN_TOKEN_LENGTH = 16
# JSON nodes in one request body: parsed, about 65 MB at worst (see DEFAULT_MAX_EVENT_NODES),
# and room for a full batch of 10,000 events of up to 50 nodes each.
DEFAULT_MAX_BODY_NODES = 500_000


def _comma_separated(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


# A comma-separated list in the environment (`a,b`), not JSON.
Names = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_comma_separated)]


class ApiSettings(MqttSettings):
    host: str = Field(default="127.0.0.1", description="Listen address")
    port: int = Field(default=8080, ge=0, le=65535, description="Listen port")
    store: StoreSetting = Field(default=DEFAULT_STORE, description=STORE_HELP)
    max_batch: int = Field(default=10_000, ge=1, description="Most events per POST /publish")
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="Larger request bodies get 413"
    )
    # Shared with the bridge (LOGAGG_MAX_PAYLOAD_BYTES): a larger event would be accepted
    # here and then rejected there, so it is refused up front with its index.
    max_payload_bytes: int = Field(
        default=DEFAULT_MAX_PAYLOAD_BYTES,
        ge=64,
        description="Larger events get 422 (the bridge would reject them)",
    )
    # Shared with the bridge (LOGAGG_MAX_EVENT_NODES), like max_payload_bytes.
    max_event_nodes: int = Field(
        default=DEFAULT_MAX_EVENT_NODES, ge=64, description="Most JSON nodes in one event"
    )
    max_body_nodes: int = Field(
        default=DEFAULT_MAX_BODY_NODES, ge=1000, description="Most JSON nodes in one request body"
    )
    # Request bodies being read, parsed and published at once (Content-Length, or
    # max_body_bytes when not declared): past it a request waits, up to publish_timeout_s,
    # then gets 503. Two maximal bodies by default: ~130 MB each at worst while parsed.
    max_inflight_body_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1024, description="Request body bytes handled at once"
    )
    # Payload bytes of one /events page or stream poll: it stops early (`next_after` still
    # exact), so 1,000 large events are never parsed and serialised at once.
    read_max_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Most payload bytes in one page or poll"
    )
    publish_timeout_s: float = Field(
        default=10.0, gt=0, description="Longest a publish waits for the broker before 503"
    )
    # paho numbers QoS 1 messages with 16-bit ids and stalls silently past 65,535 outstanding.
    # The link's cost per message does not grow with the window (api/mqtt_link.py): 1,000
    # took 2-2.5 µs of CPU a message where 100 took 4-5.6 (fewer wake-ups and writes), and a
    # broker round trip of 5 ms under load caps 100 at 20,000/s, 1,000 at 200,000/s.
    max_inflight: int = Field(
        default=1000,
        ge=1,
        le=65_535,
        description="Most unacknowledged QoS 1 messages, all requests together",
    )
    read_limit_max: int = Field(
        default=1000, ge=1, description="Largest `limit` for /events and /rejected"
    )
    query_timeout_s: float = Field(
        default=QUERY_TIMEOUT_SECONDS,
        gt=0,
        le=3600,
        description="Each read of the store (a page, a search, a histogram) is stopped past "
        "this and answered 503: a query too expensive as asked, not a store down",
    )
    bridge_alive_s: AliveSeconds = Field(default=BRIDGE_ALIVE_SECONDS, description=ALIVE_HELP)
    # The broker's per-client queue limits (Mosquitto's max_queued_messages and
    # max_queued_bytes; 0 = none), which it does not publish: /stats and /healthz measure
    # its queue against them. Defaults: those of supervise/mosquitto.conf.
    broker_queue_max_messages: int = Field(
        default=1_000_000, ge=0, description="The broker's queue limit per client, in messages"
    )
    broker_queue_max_bytes: int = Field(
        default=256 * 1024 * 1024, ge=0, description="The broker's queue limit per client, in bytes"
    )
    # Connection floods (api/server.py, api/stream.py): open /events/stream responses past
    # max_streams get 503; connections past max_connections (or the open-files limit less a
    # reserve) are answered 503 and closed; a request's headers must be complete within
    # header_timeout_s of the connection opening or its previous response (slowloris); an
    # idle keep-alive connection is closed after keep_alive_timeout_s.
    max_streams: int = Field(default=1000, ge=1, description="Most open /events/stream responses")
    max_connections: int = Field(default=4096, ge=1, description="Most connections at once")
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="A request's headers must be complete within this"
    )
    keep_alive_timeout_s: int = Field(
        default=5, ge=1, description="An idle keep-alive connection is closed after this"
    )
    # LOGAGG_API_TOKEN, from the environment only: `logagg api` has no flag for it, because
    # a command line is visible to every user of the machine (ps, /proc/<pid>/cmdline).
    api_token: SecretStr | None = None
    # With a token, reads (GET) need it too unless this is true; publishing always does.
    api_public_read: bool = Field(
        default=False, description="With a token, let reads through without it"
    )
    # Host headers answered besides IP addresses, localhost and --host (api/guards.py): the
    # names clients use to reach the sidecar, e.g. the compose service name; * for any.
    api_allowed_hosts: Names = Field(
        default=(),
        description="Comma-separated Host names answered besides IPs and localhost; * for any",
    )
    # Origins (scheme://host:port) whose pages may call the API from a browser, with CORS.
    api_allowed_origins: Names = Field(
        default=(), description="Comma-separated origins whose pages may call the API (CORS)"
    )

    @property
    def store_options(self) -> StoreOptions:
        """The sidecar only reads: of the store's options, the alive window and the query
        timeout are its own."""
        return StoreOptions(alive_s=self.bridge_alive_s, query_timeout_s=self.query_timeout_s)

    @field_validator("api_token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        # A header value loses its surrounding whitespace on the way: such a token never matches.
        if value is not None and value.get_secret_value() != value.get_secret_value().strip():
            raise ValueError(
                "must not start or end with whitespace (no client could send it): "
                "check for a stray space or newline"
            )
        if value is not None and len(value.get_secret_value()) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"must be at least {MIN_TOKEN_LENGTH} characters: generate one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return value
