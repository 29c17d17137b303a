"""Security: the sidecar's bearer token, the hardened broker (TLS, logins, ACL), no leaked secret.

The broker tests generate a CA, a server and a client certificate on the fly,
write a password file with `mosquitto_passwd`, and run `mosquitto/hardened.conf`
with the test's own port and files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.routing import APIRoute
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import SecretStr

from api import ApiSettings, create_app
from bridge.broker import BrokerAddress, Credentials, client_kwargs, tls_context
from bridge.settings import MqttSettings
from bridge.store import parse_store_url
from publisher import PublishError, PublisherSettings, run_publisher
from supervise.mosquitto import PROJECT_CONFIG, Mosquitto, free_port, port_open
from supervise.process import stop_process
from tests.helpers import (
    LOGAGG,
    BridgeProcess,
    Sidecar,
    compose,
    event,
    nowhere,
    serving,
    wait_for_stats,
)

# The hardened broker is run from the checkout (compose, a production host), not shipped.
HARDENED = Path(__file__).resolve().parent.parent / "mosquitto" / "hardened.conf"
ACL = HARDENED.with_name("acl.example")
TOKEN = "test-token-" + uuid.uuid4().hex
SECRET = SecretStr(TOKEN)
# Logins in the password file, as mosquitto/acl.example names them.
PASSWORDS = {
    "logagg-bridge": "bridge-pw-" + uuid.uuid4().hex,
    "logagg-api": "api-pw-" + uuid.uuid4().hex,
    "publisher": "publisher-pw-" + uuid.uuid4().hex,
}
NOT_AUTHORIZED = 0x87


# --- The HTTP token -------------------------------------------------------------------


def guarded(sidecar: Sidecar, **overrides: object) -> httpx.Client:
    """A sidecar with no broker and no store: the token check comes before either."""
    return sidecar(nowhere(), publish_timeout_s=1, **overrides)


def test_token_every_route_but_healthz_needs_it(sidecar: Sidecar, store_url: str) -> None:
    """Secure by default: a route added without a guard fails here. Open: the health check,
    and the API's documentation pages (as its schema, /openapi.json, always was)."""
    app = create_app(ApiSettings(store=parse_store_url(store_url), api_token=SECRET))
    routes = [r for r in app.routes if isinstance(r, APIRoute)]
    assert {r.path for r in routes} >= {"/publish", "/stats", "/events", "/rejected", "/healthz"}
    client = guarded(sidecar, api_token=SECRET)
    for route in routes:
        for method in route.methods or ():
            answer = client.request(method, route.path)
            if route.path in {"/healthz", "/docs", "/docs/oauth2-redirect", "/redoc"}:
                assert answer.status_code != 401
            else:
                assert answer.status_code == 401, (method, route.path)
                assert answer.headers["www-authenticate"] == "Bearer"
                assert "LOGAGG_API_TOKEN" in answer.json()["detail"]


def as_bytes(header: str | bytes) -> bytes:
    return header if isinstance(header, bytes) else header.encode()


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer wrong-token-of-some-length",
        f"Basic {TOKEN}",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        "Bearer tökén-ñot-ascii".encode("latin-1"),  # compare_digest(str) would raise: 500
        "Bearer",
    ],
    # Named, not shown: the token is random, and test ids must be the same in every worker.
    ids=["missing", "wrong", "basic-scheme", "longer", "shorter", "not-ascii", "no-token"],
)
def test_token_wrong_or_missing_is_401(sidecar: Sidecar, authorization: str | bytes | None) -> None:
    client = guarded(sidecar, api_token=SECRET)
    headers = [] if authorization is None else [(b"authorization", as_bytes(authorization))]
    answer = client.post("/publish", json=event("e"), headers=headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"


def test_token_right_one_passes_any_scheme_case(sidecar: Sidecar) -> None:
    """Past the check: reads reach the (missing) store, publishing the (missing) broker."""
    client = guarded(sidecar, api_token=SECRET)
    for scheme in ("Bearer", "bearer"):
        headers = {"authorization": f"{scheme} {TOKEN}"}
        assert client.get("/stats", headers=headers).status_code == 503
        assert client.post("/publish", json=event("e"), headers=headers).status_code == 503


def test_token_public_read_opens_reads_not_publishing(sidecar: Sidecar) -> None:
    client = guarded(sidecar, api_token=SECRET, api_public_read=True)
    for path in ("/stats", "/events", "/rejected", "/healthz"):
        assert client.get(path).status_code == 503, path
    assert client.post("/publish", json=event("e")).status_code == 401


def test_token_unset_leaves_everything_open(sidecar: Sidecar) -> None:
    client = guarded(sidecar)
    assert client.get("/stats").status_code == 503
    assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})


def test_token_is_documented_in_openapi_where_needed(store_url: str) -> None:
    paths = create_app(ApiSettings(store=parse_store_url(store_url), api_token=SECRET)).openapi()[
        "paths"
    ]
    assert paths["/publish"]["post"]["security"] == [{"token": []}]
    assert "401" in paths["/stats"]["get"]["responses"]
    assert "security" not in paths["/healthz"]["get"]
    public = create_app(
        ApiSettings(store=parse_store_url(store_url), api_token=SECRET, api_public_read=True)
    )
    assert "security" not in public.openapi()["paths"]["/events"]["get"]


def test_token_too_short_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="at least 16 characters: generate one"):
        ApiSettings(api_token=SecretStr("short"))


@pytest.mark.parametrize(
    "token",
    [" " * 32, TOKEN + " ", "\t" + TOKEN, TOKEN + "\n"],
    ids=["spaces", "trailing-space", "leading-tab", "trailing-newline"],
)
def test_token_with_surrounding_whitespace_is_refused_at_start(token: str) -> None:
    """No client can send it (a header loses it), so it would lock everyone out: `logagg api`
    exits at once with a reason that names the setting, not its value."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGAGG_")}
    output = _run(["api", "--port", str(free_port())], {**env, "LOGAGG_API_TOKEN": token})
    assert output.startswith("error: LOGAGG_API_TOKEN: Value error, must not start or end with")
    assert TOKEN not in output


def test_token_in_a_query_string_is_not_logged(tmp_path: Path) -> None:
    """The access log keeps the parameters' names on the routes that take the token, never
    their values; /healthz (no token) is logged as it came."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGAGG_")}
    env |= {"LOGAGG_API_TOKEN": TOKEN, "LOGAGG_BROKER": nowhere(), "LOGAGG_PUBLISH_TIMEOUT_S": "1"}
    log = tmp_path / "api.log"
    with logagg_api(env, log) as url:
        auth = {"authorization": f"Bearer {TOKEN}"}
        httpx.get(f"{url}/events", params={"topic": "a", "token": TOKEN}, headers=auth)
        httpx.get(f"{url}/stats", params={"access_token": TOKEN})
        httpx.get(f"{url}/healthz", params={"probe": "k8s"})
    text = log.read_text()
    assert TOKEN not in text
    # 422: /events names a parameter it does not take (the token goes in a header).
    assert '"GET /events?topic=***&token=*** HTTP/1.1" 422' in text
    assert '"GET /stats?access_token=*** HTTP/1.1" 401' in text
    assert '"GET /healthz?probe=k8s HTTP/1.1" 503' in text


@pytest.mark.broker
def test_token_publisher_http_sends_it(broker: Mosquitto, store_url: str) -> None:
    """`logagg publish --via http` sends LOGAGG_API_TOKEN; without it the sidecar says 401."""
    with serving(
        ApiSettings(broker=broker.url, store=parse_store_url(store_url), api_token=SECRET)
    ) as client:
        url = str(client.base_url)
        summary = run_publisher(
            PublisherSettings(via="http", api_url=url, api_token=SECRET, count=50, seed=1)
        )
        assert summary.sent == 50
        with pytest.raises(PublishError, match=r"401 .* \(set LOGAGG_API_TOKEN"):
            run_publisher(PublisherSettings(via="http", api_url=url, count=5, seed=1))


# --- The hardened broker --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _issue(
    cn: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey]
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    is_ca = issuer[0] == name
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0])
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()),
            critical=False,
        )
    )
    if is_ca:
        usage = dict.fromkeys(
            ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment"),
            False,
        )
        builder = builder.add_extension(
            x509.KeyUsage(
                **usage,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    elif cn == "localhost":
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer[1], hashes.SHA256())


def _write(
    folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> Path:
    crt = folder / f"{name}.crt"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (folder / f"{name}.key").write_bytes(pem)
    (folder / f"{name}.key").chmod(0o600)
    return crt


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A throwaway CA, a server certificate for 127.0.0.1, and one client certificate."""
    folder = tmp_path / "pki"
    folder.mkdir()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "logagg test CA")])
    ca = _write(folder, "ca", _issue("logagg test CA", ca_key, (ca_name, ca_key)), ca_key)
    paths = {}
    for name, cn in (("server", "localhost"), ("client", "logagg client")):
        key = ec.generate_private_key(ec.SECP256R1())
        paths[name] = _write(folder, name, _issue(cn, key, (ca_name, ca_key)), key)
    return Pki(
        ca=ca,
        server_cert=paths["server"],
        server_key=paths["server"].with_suffix(".key"),
        client_cert=paths["client"],
        client_key=paths["client"].with_suffix(".key"),
    )


def test_tls_whenever_tls_material_is_given(pki: Pki) -> None:
    """A client certificate is never silently unused on a plain connection; a key alone
    is refused with the setting's name; passwords stay out of reprs."""
    plain = BrokerAddress.from_url("mqtt://127.0.0.1:1883")
    assert tls_context(plain, Credentials()) is None
    cert = Credentials(cert_file=str(pki.client_cert), key_file=str(pki.client_key))
    assert tls_context(plain, cert) is not None
    with pytest.raises(ValueError, match="mqtt_key_file is set without mqtt_cert_file"):
        MqttSettings(mqtt_key_file=str(pki.client_key))
    secret = "pw-" + uuid.uuid4().hex
    assert secret not in repr(Credentials(password=secret))
    assert secret not in repr(BrokerAddress.from_url(f"mqtt://u:{secret}@h"))
    assert secret not in str(BrokerAddress.from_url(f"mqtt://u:{secret}@h"))


@dataclass(frozen=True, slots=True)
class SecureBroker:
    url: str
    pki: Pki

    def env(self, user: str, password: str | None = None) -> dict[str, str]:
        """LOGAGG_* settings for a logagg process logging in as `user`."""
        return {
            "LOGAGG_BROKER": self.url,
            "LOGAGG_MQTT_USERNAME": user,
            "LOGAGG_MQTT_PASSWORD": PASSWORDS[user] if password is None else password,
            "LOGAGG_MQTT_CA_FILE": str(self.pki.ca),
            "LOGAGG_MQTT_CERT_FILE": str(self.pki.client_cert),
            "LOGAGG_MQTT_KEY_FILE": str(self.pki.client_key),
        }


@pytest.fixture
def secure_broker(tmp_path: Path, pki: Pki) -> Iterator[SecureBroker]:
    """`mosquitto/hardened.conf` and `acl.example` as shipped, with this test's port and files."""
    folder = tmp_path / "secure"
    folder.mkdir()
    passwd = folder / "passwd"
    passwd_tool = shutil.which("mosquitto_passwd")
    assert passwd_tool, "mosquitto_passwd comes with mosquitto"
    for i, (user, password) in enumerate(PASSWORDS.items()):
        create = ["-c"] if i == 0 else []
        subprocess.run([passwd_tool, *create, "-b", str(passwd), user, password], check=True)
    files = {
        "cafile": pki.ca,
        "certfile": pki.server_cert,
        "keyfile": pki.server_key,
        "password_file": passwd,
        "acl_file": shutil.copy(ACL, folder / "acl"),
    }
    config = HARDENED.read_text()
    for option, path in files.items():
        config, found = re.subn(rf"^{option} .*$", f"{option} {path}", config, flags=re.MULTILINE)
        assert found == 1, option
    (folder / "hardened.conf").write_text(config)
    mosquitto = Mosquitto(free_port(), folder / "data", base=folder / "hardened.conf")
    mosquitto.start()
    yield SecureBroker(f"mqtts://127.0.0.1:{mosquitto.port}", pki)
    mosquitto.stop()


class Refused(Exception):
    """The broker refused the connection (CONNACK) or the TLS handshake failed."""


class Session:
    """A paho MQTT 5 client logged in through logagg's own TLS and login code, reporting
    the broker's reason codes."""

    def __init__(
        self, broker: SecureBroker, user: str | None, password: str | None, *, cert: bool
    ) -> None:
        pki = broker.pki
        creds = Credentials(
            username=user,
            password=password,
            ca_file=str(pki.ca),
            cert_file=str(pki.client_cert) if cert else None,
            key_file=str(pki.client_key) if cert else None,
        )
        address = BrokerAddress.from_url(broker.url)
        login = client_kwargs(address, creds)
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        if user is not None:
            self.client.username_pw_set(user, password)
        self.client.tls_set_context(login["tls_context"])  # type: ignore[arg-type]
        self.address = address
        self._answers: dict[int, ReasonCode] = {}
        self.received: list[str] = []
        self._connack: ReasonCode | None = None
        self._changed = threading.Condition()
        self.client.on_connect = lambda _c, _u, _f, reason, _p: self._answer(-1, reason)
        # A failed TLS handshake shows as a disconnect before any CONNACK.
        self.client.on_disconnect = lambda _c, _u, _f, reason, _p: self._answer(-1, reason)
        self.client.on_subscribe = lambda _c, _u, mid, reasons, _p: self._answer(mid, reasons[0])
        self.client.on_publish = lambda _c, _u, mid, reason, _p: self._answer(mid, reason)
        self.client.on_message = lambda _c, _u, message: self._received(message.topic)

    def _answer(self, key: int, reason: ReasonCode) -> None:
        with self._changed:
            self._answers[key] = reason
            self._changed.notify_all()

    def _received(self, topic: str) -> None:
        with self._changed:
            self.received.append(topic)
            self._changed.notify_all()

    def wait_received(self, count: int, timeout: float = 10.0) -> list[str]:
        with self._changed:
            self._changed.wait_for(lambda: len(self.received) >= count, timeout)
            return self.received

    def wait(self, key: int, timeout: float = 10.0) -> ReasonCode:
        with self._changed:
            if not self._changed.wait_for(lambda: key in self._answers, timeout):
                raise Refused(f"no answer for {key} in {timeout}s")
            return self._answers[key]

    def subscribe(self, topic: str) -> ReasonCode:
        _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        return self.wait(mid)

    def publish(self, topic: str) -> ReasonCode:
        return self.wait(self.client.publish(topic, b"{}", qos=1).mid)


@contextmanager
def session(
    broker: SecureBroker, user: str | None, password: str | None, *, cert: bool = True
) -> Iterator[Session]:
    """Connected, or Refused with why."""
    s = Session(broker, user, password, cert=cert)
    try:
        s.client.connect(s.address.host, s.address.port)
    except OSError as exc:  # ssl.SSLError included
        raise Refused(str(exc)) from exc
    s.client.loop_start()
    try:
        connack = s.wait(-1)
        if connack.is_failure:
            raise Refused(str(connack))
        yield s
    finally:
        s.client.disconnect()
        s.client.loop_stop()


@pytest.mark.broker
def test_hardened_refuses_anonymous_and_wrong_passwords(secure_broker: SecureBroker) -> None:
    """No login, a wrong password, an unknown user: all refused at CONNACK."""
    for user, password in (
        (None, None),
        ("publisher", "wrong"),
        ("publisher", PASSWORDS["logagg-bridge"]),
        ("nobody", "x"),
    ):
        with pytest.raises(Refused), session(secure_broker, user, password):
            pass


@pytest.mark.broker
def test_hardened_refuses_clients_without_a_certificate(secure_broker: SecureBroker) -> None:
    """Mutual TLS: the right password without a client certificate does not get in."""
    with (
        pytest.raises(Refused),
        session(secure_broker, "publisher", PASSWORDS["publisher"], cert=False),
    ):
        pass


@pytest.mark.broker
def test_hardened_acl_publisher_writes_only_logs(secure_broker: SecureBroker) -> None:
    """A valid publisher can write logs/…, and can neither read it nor write anywhere else.

    Mosquitto grants any subscription and applies read rules on delivery; it answers a
    denied publish with PUBACK "not authorized" and then drops the connection.
    """
    publisher = ("publisher", PASSWORDS["publisher"])
    bridge = ("logagg-bridge", PASSWORDS["logagg-bridge"])
    with session(secure_broker, *bridge) as reader, session(secure_broker, *publisher) as writer:
        for s in (reader, writer):
            assert not s.subscribe("logs/#").is_failure
        assert not writer.subscribe("#").is_failure
        assert not writer.publish("logs/app").is_failure
        assert reader.wait_received(1) == ["logs/app"]
        assert not writer.publish("logs/more").is_failure
        # Mosquitto hands a message to all its subscribers at once: by now the writer would
        # have had the first.
        assert reader.wait_received(2) == ["logs/app", "logs/more"]
        assert writer.received == []
    for topic in ("other/app", "logsx/app", "$SYS/x"):
        with session(secure_broker, *publisher) as s:
            assert s.publish(topic).value == NOT_AUTHORIZED
    with session(secure_broker, *bridge) as s:
        assert s.publish("logs/app").value == NOT_AUTHORIZED


@pytest.mark.broker
def test_hardened_bridge_sidecar_and_publisher_work_over_tls(
    secure_broker: SecureBroker, store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every logagg client, with its own login and the client certificate, over mqtts://."""
    for name, value in secure_broker.env("logagg-bridge").items():
        monkeypatch.setenv(name, value)
    bridge = BridgeProcess(secure_broker.url, store_url, tmp_path / "bridge.log")
    try:
        bridge.start()
        publisher = secure_broker.env("publisher")
        summary = run_publisher(
            PublisherSettings(
                broker=secure_broker.url,
                mqtt_username="publisher",
                mqtt_password=SecretStr(publisher["LOGAGG_MQTT_PASSWORD"]),
                mqtt_ca_file=str(secure_broker.pki.ca),
                mqtt_cert_file=str(secure_broker.pki.client_cert),
                mqtt_key_file=str(secure_broker.pki.client_key),
                count=200,
                dup_ratio=0.1,
                seed=3,
            )
        )
        monkeypatch.setenv("LOGAGG_MQTT_USERNAME", "logagg-api")
        monkeypatch.setenv("LOGAGG_MQTT_PASSWORD", PASSWORDS["logagg-api"])
        with serving(ApiSettings(store=parse_store_url(store_url))) as client:
            assert client.post("/publish", json=event("over-https")).json() == {"accepted": 1}
            # The ACL lets the sidecar read the broker's $SYS counters (and no other topic).
            deadline = time.monotonic() + 10
            while client.get("/stats").json()["broker_dropped"] is None:
                assert time.monotonic() < deadline, "no $SYS counters through the ACL"
                time.sleep(0.1)
        stats = wait_for_stats(store_url, lambda s: s.received == 201)
        assert stats.unique_processed == summary.distinct + 1
        assert stats.rejected == 0
    finally:
        bridge.stop()


# slow: lets five log-in retries and their back-off pass
@pytest.mark.slow
@pytest.mark.broker
@pytest.mark.parametrize(
    ("user", "password"), [("logagg-bridge", "wrong-Pa55"), ("nobody", "n0-such-Pa55")]
)
def test_bridge_that_cannot_log_in_stops_with_a_clear_error(
    secure_broker: SecureBroker, store_url: str, tmp_path: Path, user: str, password: str
) -> None:
    """Bad credentials are retried a bounded number of times (5, with the back-off: a
    password file being updated), then the bridge exits non-zero saying what to check."""
    bridge = BridgeProcess(
        secure_broker.url,
        store_url,
        tmp_path / "bridge.log",
        env=secure_broker.env(user, password),
        client_id="refused-bridge",
    )
    started = time.monotonic()
    bridge.start(wait=False)
    try:
        code = bridge.exited(timeout=30)
        output = bridge.output()
        assert code == 2, output
        assert "attempt 4 of 5" in output
        assert "refused client 'refused-bridge' 5 times in a row" in output
        # Mosquitto 2 answers a wrong password as it does an unknown user: 0x87.
        assert re.search(r"Not authorized \(reason code 0x8[67]\)", output), output
        assert "--mqtt-password" in output
        assert password not in output
        assert "broker unreachable" not in output
        assert time.monotonic() - started < 30
    finally:
        bridge.stop()


def test_hardened_conf_keeps_the_delivery_settings_of_mosquitto_conf() -> None:
    """hardened.conf repeats mosquitto.conf's durability lines (Mosquitto cannot include a
    file): they must not drift apart."""

    def options(path: Path) -> dict[str, str]:
        lines = (line.split(maxsplit=1) for line in path.read_text().splitlines())
        return {p[0]: p[1] for p in lines if len(p) == 2 and not p[0].startswith("#")}

    plain, hardened = options(PROJECT_CONFIG), options(HARDENED)
    security = {"listener", "allow_anonymous"}
    assert {k: v for k, v in plain.items() if k not in security} == {
        k: v for k, v in hardened.items() if k in plain and k not in security
    }
    assert hardened["allow_anonymous"] == "false"


# --- Browsers: hosts, origins, content types, headers (api/guards.py) -------------------


def test_publish_needs_a_json_content_type(sidecar: Sidecar) -> None:
    """415 for a body a page may send anywhere without asking (text/plain, a form); JSON
    goes on (to the missing broker: 503)."""
    client = guarded(sidecar)
    body = json.dumps(event("e")).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {} if content_type is None else {"content-type": content_type}
        answer = client.post("/publish", content=body, headers=headers)
        assert answer.status_code == 415, content_type
        assert answer.json()["detail"].startswith("Content-Type must be application/json")
    for content_type in ("application/json", "Application/JSON; charset=utf-8"):
        answer = client.post("/publish", content=body, headers={"content-type": content_type})
        assert answer.status_code == 503, content_type


def test_foreign_host_headers_are_refused(sidecar: Sidecar) -> None:
    """DNS rebinding: a name re-pointed at this machine is refused on every route; addresses,
    localhost, and the names compose uses for the service pass."""
    client = guarded(sidecar)
    for host in ("evil.example", "evil.example:8080", "localhost.evil.example", "", "a b"):
        for path in ("/", "/healthz", "/stats"):
            answer = client.get(path, headers={"host": host})
            assert answer.status_code == 400, (host, path)
        assert "LOGAGG_API_ALLOWED_HOSTS" in answer.json()["detail"]
    for host in ("127.0.0.1:8080", "localhost", "LOCALHOST:1", "[::1]:8080", "10.1.2.3"):
        assert client.get("/healthz", headers={"host": host}).status_code == 503, host

    api = compose()["services"]["api"]
    allowed = api["environment"]["LOGAGG_API_ALLOWED_HOSTS"]
    composed = guarded(sidecar, host="0.0.0.0", api_allowed_hosts=allowed)
    assert composed.get("/healthz", headers={"host": "api:8080"}).status_code == 503
    assert composed.get("/healthz", headers={"host": "evil.example"}).status_code == 400


def test_cross_origin_browser_requests_are_refused(sidecar: Sidecar) -> None:
    """403 for a request from a page of another origin (by Origin, or by Sec-Fetch-Site when
    a browser sends no Origin), unless the origin is allowed: then CORS says so."""
    client = guarded(sidecar)
    publish: dict[str, Any] = {"url": "/publish", "json": event("e")}
    base = str(client.base_url)
    foreign = [
        {"origin": "http://evil.example"},
        {"origin": "null"},
        {"origin": base.replace("127.0.0.1", "localhost")},
        {"origin": base.rsplit(":", 1)[0] + ":1"},  # same host, another port
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},
    ]
    for headers in foreign:
        for method, kwargs in (("POST", publish), ("GET", {"url": "/stats"})):
            answer = client.request(method, headers=headers, **kwargs)
            assert answer.status_code == 403, (method, headers)
            assert "LOGAGG_API_ALLOWED_ORIGINS" in answer.json()["detail"]
    for headers in (
        {"origin": base},
        {"sec-fetch-site": "same-origin"},
        {"sec-fetch-site": "none"},
    ):
        assert client.post(headers=headers, **publish).status_code == 503, headers

    app = "http://app.example:3000"
    allowing = guarded(sidecar, api_allowed_origins=f"{app}, http://other.example")
    answer = allowing.post(headers={"origin": app, "sec-fetch-site": "cross-site"}, **publish)
    assert answer.status_code == 503
    assert answer.headers["access-control-allow-origin"] == app
    preflight = allowing.options(
        "/publish",
        headers={
            "origin": app,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type, authorization",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == app
    evil = allowing.options(
        "/publish",
        headers={"origin": "http://evil.example", "access-control-request-method": "POST"},
    )
    assert evil.status_code == 403


def test_security_headers_on_every_answer(sidecar: Sidecar) -> None:
    """CSP, nosniff, no framing, no referrer: on pages, JSON, errors and refusals alike; the
    dashboard's inline script and style are allowed by their hashes, nothing inline else."""
    client = guarded(sidecar, api_token=SECRET, api_public_read=True)
    answers = {
        "dashboard": client.get("/"),
        "json": client.get("/openapi.json"),
        "503": client.get("/stats"),
        "401": client.post("/publish", json=event("e")),
        "404": client.get("/nowhere"),
        "400": client.get("/", headers={"host": "evil.example"}),
    }
    for name, answer in answers.items():
        headers = answer.headers
        assert headers["x-content-type-options"] == "nosniff", name
        assert headers["x-frame-options"] == "DENY", name
        assert headers["referrer-policy"] == "no-referrer", name
        assert "frame-ancestors 'none'" in headers["content-security-policy"], name
    dashboard = answers["dashboard"].headers["content-security-policy"]
    assert "unsafe" not in dashboard
    assert re.search(r"script-src 'sha256-[^']+';", dashboard), dashboard
    assert re.search(r"style-src 'sha256-[^']+';", dashboard), dashboard
    assert answers["json"].headers["content-security-policy"].startswith("default-src 'none';")


def test_no_redirect_to_the_host_sent(sidecar: Sidecar) -> None:
    """`/stats/` once redirected to `http://<Host header>/stats`: now it is a plain 404."""
    client = guarded(sidecar)
    for path in ("/stats/", "/events/", "/healthz/"):
        answer = client.get(path, headers={"host": "localhost:1"})
        assert answer.status_code == 404, path
        assert "location" not in answer.headers


def test_an_oversized_request_head_gets_431(sidecar: Sidecar) -> None:
    """A 300 KB query string (or header) is answered 431, readable by the client, instead of
    a connection reset; the server goes on serving."""
    client = guarded(sidecar)
    # httpx refuses to send such a URL: a socket, as an attacker would.
    url = client.base_url
    with socket.create_connection((url.host, url.port), timeout=10) as raw:
        raw.sendall(b"GET /stats?q=" + b"x" * 300_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert body == b"Request line and headers exceed 16384 bytes."
    big_header = client.get("/stats", headers={"x-big": "x" * 300_000})
    assert big_header.status_code == 431
    assert client.get("/stats").status_code == 503


# --- Secrets ---------------------------------------------------------------------------


def _run(args: list[str], env: dict[str, str], timeout: float = 60) -> str:
    """A one-shot `logagg` command's output (subprocess.run kills it on timeout)."""
    done = subprocess.run(
        [*LOGAGG, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    return done.stdout + done.stderr


@contextmanager
def logagg_api(env: dict[str, str], log: Path) -> Iterator[str]:
    """`logagg api` as deployed, output to `log`; yields its URL, and stops it after."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*LOGAGG, "api", "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 20
        while not port_open("127.0.0.1", port):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)


@pytest.mark.broker
def test_no_secret_in_logs_or_errors(
    secure_broker: SecureBroker, store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bridge, sidecar and publisher, working and failing, with passwords in the environment
    and in the broker URL, and a token: no output holds any of them."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("LOGAGG_")}
    wrong = "wrong-pw-" + uuid.uuid4().hex
    outputs: dict[str, str] = {}
    # The bridge: its password in the URL this time; and a second one with a wrong password.
    bridge_env = secure_broker.env("logagg-bridge")
    del bridge_env["LOGAGG_MQTT_PASSWORD"], bridge_env["LOGAGG_MQTT_USERNAME"]
    url_with_password = secure_broker.url.replace(
        "mqtts://", f"mqtts://logagg-bridge:{PASSWORDS['logagg-bridge']}@"
    )
    bridge = BridgeProcess(url_with_password, store_url, tmp_path / "bridge.log")
    refused = BridgeProcess(
        secure_broker.url, store_url, tmp_path / "refused.log", client_id="refused"
    )
    with ExitStack() as stack:
        stack.callback(bridge.stop)
        stack.callback(refused.stop)
        with monkeypatch.context() as env:  # BridgeProcess passes on our environment
            for name, value in bridge_env.items():
                env.setenv(name, value)
            bridge.start()
            for name, value in secure_broker.env("logagg-bridge", wrong).items():
                env.setenv(name, value)
            refused.start(wait=False)
        deadline = time.monotonic() + 20
        while "broker refused the login" not in refused.output():
            assert time.monotonic() < deadline, refused.output()
            time.sleep(0.1)

        # The sidecar, with a token: a request with it, one with a wrong one.
        api_env = {**base, **secure_broker.env("logagg-api"), "LOGAGG_API_TOKEN": TOKEN}
        api_env["LOGAGG_STORE"] = store_url
        url = stack.enter_context(logagg_api(api_env, tmp_path / "api.log"))
        auth = {"authorization": f"Bearer {TOKEN}"}
        assert httpx.post(f"{url}/publish", json=event("s1"), headers=auth).is_success
        wrong_auth = {"authorization": f"Bearer {wrong}"}
        assert httpx.get(f"{url}/stats", headers=wrong_auth).status_code == 401

        # The publisher: over MQTT with the right and a wrong password; over HTTP with and
        # without the token.
        once = ["publish", "--count", "20", "--no-progress"]
        outputs["publish"] = _run(once, {**base, **secure_broker.env("publisher")})
        refused_env = {**base, **secure_broker.env("publisher", wrong)}
        outputs["publish refused"] = _run(once, refused_env)
        assert "error:" in outputs["publish refused"]
        http = [*once, "--via", "http", "--api-url", url]
        outputs["publish http"] = _run(http, {**base, "LOGAGG_API_TOKEN": TOKEN})
        outputs["publish http no token"] = _run(http, base)
        assert "401" in outputs["publish http no token"]
        wait_for_stats(store_url, lambda s: s.received >= 41)
    outputs["bridge"] = bridge.output()
    outputs["bridge refused"] = refused.output()
    outputs["api"] = (tmp_path / "api.log").read_text()
    # A bad setting's error names the setting, not its value.
    bad_url = secure_broker.url.replace("mqtts://", f"mqtts://u:{wrong}@") + "0x"
    outputs["bad url"] = _run(["bridge", "--broker", bad_url], base)
    assert "bad port" in outputs["bad url"]

    assert "subscribed to" in outputs["bridge"]
    secrets = [*PASSWORDS.values(), wrong, TOKEN]
    for name, text in outputs.items():
        for secret in secrets:
            assert secret not in text, f"{name} output holds a secret:\n{text}"
