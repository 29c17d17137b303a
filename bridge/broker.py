"""Where the broker is and how every logagg client connects to it.

One place builds MQTT clients, so the bridge, the sidecar and the publisher
agree on addresses, credentials and TLS.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import aiomqtt

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    # repr=False here and in Credentials: a logged or printed object never shows a password.
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_url(cls, url: str) -> BrokerAddress:
        """`mqtt://[user[:password]@]host[:port]`, or `mqtts://` for TLS (port 8883)."""
        parts = urlsplit(url)
        # Errors quote the URL without its user and password.
        shown = repr(parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl())
        if parts.scheme not in {"mqtt", "mqtts"}:
            raise ValueError(f"broker URL {shown} must start with mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError(f"broker URL {shown} has no host")
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise ValueError(f"broker URL {shown} has a bad port") from exc
        return cls(
            host=parts.hostname,
            port=port,
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    def __str__(self) -> str:
        """Printable form: never shows the password."""
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{self.username}@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Credentials:
    """Login and TLS material beyond the URL; any field may be empty."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


def tls_context(address: BrokerAddress, creds: Credentials) -> ssl.SSLContext | None:
    """TLS for `mqtts://`, or whenever a CA or client certificate is given: a certificate
    is never silently left unused on a plain connection. The broker's certificate and
    host name are always verified (against `ca_file`, else the system's CAs)."""
    if not (address.tls or creds.ca_file or creds.cert_file):
        return None
    context = ssl.create_default_context(cafile=creds.ca_file)
    if creds.cert_file:
        context.load_cert_chain(creds.cert_file, creds.key_file)
    return context


def client_kwargs(address: BrokerAddress, creds: Credentials) -> dict[str, object]:
    """Keyword arguments for `aiomqtt.Client`: address, login and TLS."""
    return {
        "hostname": address.host,
        "port": address.port,
        "username": creds.username or address.username,
        "password": creds.password or address.password,
        "tls_context": tls_context(address, creds),
    }


def make_client(address: BrokerAddress, creds: Credentials, **options: object) -> aiomqtt.Client:
    return aiomqtt.Client(**client_kwargs(address, creds), **options)  # type: ignore[arg-type]
