"""Settings for the bridge: flags, then `LOGAGG_*` environment variables, then defaults."""

from __future__ import annotations

import hashlib
import socket
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    Field,
    PlainSerializer,
    PlainValidator,
    SecretStr,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bridge.broker import DEFAULT_BROKER, BrokerAddress, Credentials
from bridge.event import (
    DEFAULT_MAX_EVENT_NODES,
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_TOPIC_PREFIX,
    check_prefix,
)
from bridge.retention import (
    Duration,
    RetentionPolicy,
    Rule,
    make_policy,
    parse_duration,
    parse_rule,
)
from bridge.store import (
    BRIDGE_ALIVE_SECONDS,
    STORE_HOLD_SECONDS,
    Durability,
    SQLiteUrl,
    StoreOptions,
    StoreUrl,
    parse_store_url,
)

DEFAULT_STORE = parse_store_url("sqlite:///data/logagg.db")
DEFAULT_MAX_BATCH_BYTES = 2 * 1024 * 1024


def _store_url(value: object) -> StoreUrl:
    return value if isinstance(value, StoreUrl) else parse_store_url(str(value))


# A store URL is parsed here, once, when settings are read: an unknown scheme or a SQLite
# URL without a path is a settings error, not a failure deep inside a running process.
StoreSetting = Annotated[
    StoreUrl,
    NoDecode,
    PlainValidator(_store_url),
    PlainSerializer(lambda url: url.url, return_type=str),
    WithJsonSchema({"type": "string"}),
]


def _duration(value: object) -> Duration:
    if isinstance(value, Duration):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Duration(float(value))
    parsed = parse_duration(str(value))
    if isinstance(parsed, str):
        raise ValueError(parsed)
    return Duration(parsed)


def _rules(value: object) -> tuple[Rule, ...]:
    """Rules from flags (one each) or the environment (comma-separated)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError("expected FILTER=DURATION rules")
    rules = []
    for item in items:
        if isinstance(item, Rule):
            rules.append(item)
        elif str(item).strip():
            rule = parse_rule(str(item))
            if isinstance(rule, str):
                raise ValueError(rule)
            rules.append(rule)
    return tuple(rules)


# `90s`, `15m`, `12h`, `30d`, `forever`: parsed once, here, with an error naming the value.
DurationSetting = Annotated[
    Duration,
    NoDecode,
    PlainValidator(_duration),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string"}),
]
RulesSetting = Annotated[
    tuple[Rule, ...],
    NoDecode,
    PlainValidator(_rules),
    PlainSerializer(lambda rules: [r.text for r in rules], return_type=list[str]),
    WithJsonSchema({"type": "array", "items": {"type": "string"}}),
]
# A bridge counts as alive while its last heartbeat is younger than this (it beats three
# times per window); the bridge, `logagg ready` and the sidecar read the same setting.
AliveSeconds = Annotated[float, Field(ge=0.3, le=3600)]
ALIVE_HELP = "A bridge is alive while its last heartbeat is younger than this"
STORE_HELP = (
    "Store URL: sqlite:///relative/path, sqlite:////abs/path or"
    " postgresql://user@host/db?schema=NAME"
)


class MqttSettings(BaseSettings):
    """Broker address and credentials, shared by every process that speaks MQTT."""

    # defer_build: a model is compiled when first used, not when imported, so that
    # `logagg --help` (which reads every command's fields) does not compile them all.
    model_config = SettingsConfigDict(env_prefix="LOGAGG_", extra="forbid", defer_build=True)

    broker: str = Field(
        default=DEFAULT_BROKER, description="Broker URL, mqtt://host:port (mqtts:// for TLS)"
    )
    mqtt_username: str | None = Field(default=None, description="Broker login")
    # LOGAGG_MQTT_PASSWORD, from the environment only: never a flag (see logagg.options).
    mqtt_password: SecretStr | None = None
    mqtt_ca_file: str | None = Field(
        default=None, description="CA certificate to trust for mqtts://"
    )
    mqtt_cert_file: str | None = Field(default=None, description="Client certificate for mqtts://")
    mqtt_key_file: str | None = Field(
        default=None, description="Its private key (with --mqtt-cert-file)"
    )
    topic_prefix: Annotated[str, AfterValidator(check_prefix)] = Field(
        default=DEFAULT_TOPIC_PREFIX, description="The MQTT topic prefix of log events"
    )
    # 3.1.1 only for brokers without MQTT 5 (the embedded fallback): the bridge's session then
    # rides on clean_session=False and the broker's own in-flight limit.
    mqtt_version: Literal["5", "3.1.1"] = Field(
        default="5", description="5, or 3.1.1 for brokers without MQTT 5"
    )

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        BrokerAddress.from_url(value)
        return value

    @model_validator(mode="after")
    def _key_with_cert(self) -> Self:
        if self.mqtt_key_file and not self.mqtt_cert_file:
            raise ValueError("mqtt_key_file is set without mqtt_cert_file: set both, or neither")
        return self

    @property
    def address(self) -> BrokerAddress:
        return BrokerAddress.from_url(self.broker)

    @property
    def credentials(self) -> Credentials:
        return Credentials(
            username=self.mqtt_username,
            password=self.mqtt_password.get_secret_value() if self.mqtt_password else None,
            ca_file=self.mqtt_ca_file,
            cert_file=self.mqtt_cert_file,
            key_file=self.mqtt_key_file,
        )


class BridgeSettings(MqttSettings):
    store: StoreSetting = Field(default=DEFAULT_STORE, description=STORE_HELP)
    group: str | None = Field(
        default=None, description="Share the stream with other bridges: $share/GROUP/…"
    )
    # Several replicas on one host with one store and group need distinct ids: each keeps
    # its own session.
    replica: int = Field(
        default=0, ge=0, description="This replica's index, for the default client id"
    )
    client_id: str = Field(
        default_factory=lambda data: default_client_id(data),
        description="Fixed MQTT client id: the session is kept under it"
        " (default logagg-bridge-HOST-DIGEST-REPLICA, DIGEST from store and topics)",
    )
    batch_size: int = Field(default=1000, ge=1, le=10_000, description="Most messages per commit")
    max_payload_bytes: int = Field(
        default=DEFAULT_MAX_PAYLOAD_BYTES, ge=64, description="Larger messages are rejected"
    )
    max_event_nodes: int = Field(
        default=DEFAULT_MAX_EVENT_NODES, ge=64, description="Most JSON nodes in one event"
    )
    # The bodies of one batch add up to at most this (a larger message goes alone). Parsed,
    # JSON costs up to ~31 times its text, so the default bounds a batch to ~65 MB whatever
    # it holds; twice this may wait to be taken meanwhile.
    max_batch_bytes: int = Field(
        default=DEFAULT_MAX_BATCH_BYTES, ge=64 * 1024, description="Most payload bytes per commit"
    )
    durability: Durability = Field(
        default=Durability.FULL, description="full (survives power loss), normal or off"
    )
    # Long enough to ride out any outage a supervisor fixes; the broker keeps our queue meanwhile.
    session_expiry_s: int = Field(
        default=7 * 24 * 3600,
        ge=1,
        le=0xFFFFFFFE,
        description="How long the broker keeps the session of a bridge that is gone",
    )
    duplicate_log_per_s: int = Field(
        default=100, ge=0, description="Duplicates logged by name each second"
    )
    bridge_alive_s: AliveSeconds = Field(default=BRIDGE_ALIVE_SECONDS, description=ALIVE_HELP)
    # PostgreSQL: how long one stuck session (a stopped bridge inside its transaction) may
    # hold the other bridges before the server ends it.
    store_hold_s: float = Field(
        default=STORE_HOLD_SECONDS,
        gt=0,
        le=3600,
        description="PostgreSQL: longest one stuck session may hold the others",
    )
    rejection_log_per_s: int = Field(
        default=100, ge=0, description="Rejections logged by name each second"
    )
    # Prometheus metrics at http://metrics_host:metrics_port/metrics; port 0 = off.
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Serve Prometheus metrics on this port (0: off)"
    )
    metrics_host: str = Field(default="127.0.0.1", description="Address for --metrics-port")
    # Retention (bridge.retention): by arrival; the bridge writes the policy into the store,
    # where readers find it, and purges what expired.
    retention: DurationSetting = Field(
        default=Duration(None),
        description="Keep events this long after they arrive: 90s, 15m, 12h, 30d or forever",
    )
    retention_topic: RulesSetting = Field(
        default=(),
        description="Per-topic retention FILTER=DURATION, e.g. 'debug/#=1d' (repeatable, first"
        " match wins; env: comma-separated)",
        json_schema_extra={"repeatable": True},
    )
    dedup_horizon: DurationSetting | None = Field(
        default=None,
        description="Remember an expired event's key this long after it expired, so a late"
        " copy is still a duplicate (default: the longest retention, at least 7d; or forever)",
    )

    @property
    def topic_filter(self) -> str:
        return topic_filter(self.topic_prefix, self.group)

    @property
    def retention_policy(self) -> RetentionPolicy:
        horizon = "default" if self.dedup_horizon is None else self.dedup_horizon.seconds
        return make_policy(self.retention.seconds, self.retention_topic, horizon)

    @property
    def store_options(self) -> StoreOptions:
        return StoreOptions(
            self.durability,
            self.bridge_alive_s,
            self.store_hold_s,
            retention=self.retention_policy,
        )


def topic_filter(prefix: str, group: str | None) -> str:
    base = f"{prefix}#"
    return f"$share/{group}/{base}" if group else base


def default_client_id(data: dict[str, Any]) -> str:
    """`logagg-bridge-HOST-DIGEST-REPLICA`, DIGEST naming what this bridge stores and where.

    The broker keeps a bridge's session, and what is queued for it, under its client id,
    so the id must come back the same when the same bridge restarts: a random one would
    strand each run's queue. So it is derived from what makes a bridge this bridge: its
    host, its store (a SQLite path made absolute, so one started from another directory
    writes elsewhere and gets another id; a server URL without its password, so rotating
    the password keeps the session), its topic filter (prefix and group) and its replica
    index. Two bridges on one host with different stores or topics get different ids;
    two with the same store and topics are the same consumer twice, and the broker's
    take-overs make the second one stop with a clash error (see `bridge.refusal`)."""
    url: StoreUrl = data["store"]
    store = f"sqlite://{url.path.resolve()}" if isinstance(url, SQLiteUrl) else url.display
    identity = "\n".join((store, topic_filter(data["topic_prefix"], data["group"])))
    digest = hashlib.sha256(identity.encode()).hexdigest()[:8]
    return f"logagg-bridge-{socket.gethostname()}-{digest}-{data['replica']}"
