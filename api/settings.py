"""Settings for the HTTP sidecar: flags, then `LOGAGG_*` environment variables, then defaults."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from bridge.event import DEFAULT_MAX_PAYLOAD_BYTES
from bridge.settings import DEFAULT_STORE, MqttSettings, StoreUrl

MIN_TOKEN_LENGTH = 16


class ApiSettings(MqttSettings):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    store: StoreUrl = DEFAULT_STORE
    max_batch: int = Field(default=10_000, ge=1)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # Shared with the bridge (LOGAGG_MAX_PAYLOAD_BYTES): a larger event would be accepted
    # here and then rejected there, so it is refused up front with its index.
    max_payload_bytes: int = Field(default=DEFAULT_MAX_PAYLOAD_BYTES, ge=64)
    publish_timeout_s: float = Field(default=10.0, gt=0)
    # paho numbers QoS 1 messages with 16-bit ids and stalls silently past 65,535 outstanding.
    # aiomqtt rescans its pending calls on every publish: measured here, a window of 50 gave
    # 15k events/s, 500 gave 9-10k/s, 5,000 gave 4k/s. 100 keeps most of the speed.
    max_inflight: int = Field(default=100, ge=1, le=65_535)
    read_limit_max: int = Field(default=1000, ge=1)
    # Connection floods (api/server.py, api/stream.py): open /events/stream responses past
    # max_streams get 503; connections past max_connections (or the open-files limit less a
    # reserve) are answered 503 and closed; a request's headers must be complete within
    # header_timeout_s of the connection opening or its previous response (slowloris); an
    # idle keep-alive connection is closed after keep_alive_timeout_s.
    max_streams: int = Field(default=1000, ge=1)
    max_connections: int = Field(default=4096, ge=1)
    header_timeout_s: float = Field(default=10.0, gt=0)
    keep_alive_timeout_s: int = Field(default=5, ge=1)
    # LOGAGG_API_TOKEN, from the environment only: `logagg api` has no flag for it, because
    # a command line is visible to every user of the machine (ps, /proc/<pid>/cmdline).
    api_token: SecretStr | None = None
    # With a token, reads (GET) need it too unless this is true; publishing always does.
    api_public_read: bool = False

    @field_validator("api_token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"must be at least {MIN_TOKEN_LENGTH} characters: generate one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return value
