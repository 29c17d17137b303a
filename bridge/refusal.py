"""When the broker says no for good: a login it refuses, or our client id held by another client.

Both look like an outage to a reconnect loop, which would retry them forever under a
"broker unreachable" warning. A refused login is retried a few times (a password file
being updated, a broker still loading its ACL), then the bridge stops. A session taken
over (MQTT 5 DISCONNECT 0x8E) means another client connected with our client id: the
two would knock each other off for ever, each holding the session half the time, so
after a few take-overs within a short window the bridge stops and names the clash. One
take-over is tolerated: a deployment replacing this bridge may do it once, on purpose.

Not every broker says so: Mosquitto 2.0.11 (measured here) just closes the older
connection, with MQTT 5 too, and MQTT 3.1.1 has no DISCONNECT from the broker at all.
So a connection the broker accepted and then closed without a reason, again and again
(`DROPS` times within `DROP_WINDOW_S`: each time we got straight back in, so the broker
is up and takes our login), is reported as a probable clash too. A flaky network could
look the same; the message says so, and five drops in half a minute are worth a stop.
paho reports 3.1.1's CONNACK codes 4 and 5 as the MQTT 5 reason codes 0x86 and 0x87.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

BAD_LOGIN = 0x86  # bad user name or password (3.1.1: CONNACK 4)
NOT_AUTHORIZED = 0x87  # (3.1.1: CONNACK 5)
SESSION_TAKEN_OVER = 0x8E
UNSPECIFIED = 0x80  # what paho reports for a connection that closed without a DISCONNECT
LOGIN_ATTEMPTS = 5
TAKEOVERS = 3
TAKEOVER_WINDOW_S = 60.0
DROPS = 5
DROP_WINDOW_S = 30.0


class BrokerRefused(Exception):
    """Retrying cannot help: the bridge stops, and the message says what to fix."""


def reason_code(exc: aiomqtt.MqttError) -> int | None:
    """The MQTT reason code a refused CONNECT or a broker's DISCONNECT carried, if any."""
    if isinstance(exc, aiomqtt.MqttCodeError) and isinstance(exc.rc, ReasonCode):
        return int(exc.rc.value)
    return None


@dataclass(slots=True)
class Refusals:
    """Counts the broker's refusals of one bridge; `check` raises once they are final."""

    client_id: str
    login_attempts: int = LOGIN_ATTEMPTS
    takeovers: int = TAKEOVERS
    window_s: float = TAKEOVER_WINDOW_S
    drops: int = DROPS
    drop_window_s: float = DROP_WINDOW_S
    _logins_refused: int = 0
    _up: bool = False  # accepted and subscribed since the last loss
    _taken_over: deque[float] = field(default_factory=deque)
    _dropped: deque[float] = field(default_factory=deque)

    def accepted(self) -> None:
        """Connected and subscribed: login refusals count only when they come in a row."""
        self._logins_refused = 0
        self._up = True

    def check(self, exc: aiomqtt.MqttError) -> str | None:
        """What to log for a refusal still worth a retry (None: not a refusal, an outage);
        raises `BrokerRefused` when retrying cannot help."""
        code = reason_code(exc)
        was_up, self._up = self._up, False
        if code in (BAD_LOGIN, NOT_AUTHORIZED):
            self._logins_refused += 1
            seen = f"{exc} (reason code {code:#04x})"
            if self._logins_refused >= self.login_attempts:
                raise BrokerRefused(
                    f"the broker refused client {self.client_id!r} {self._logins_refused}"
                    f" times in a row: {seen}; check --mqtt-username/--mqtt-password"
                    " (LOGAGG_MQTT_USERNAME/LOGAGG_MQTT_PASSWORD) against the broker's"
                    " password file and ACL"
                )
            attempt = f"attempt {self._logins_refused} of {self.login_attempts}"
            return f"broker refused the login, {attempt}: {seen}"
        if code == SESSION_TAKEN_OVER:
            if _count(self._taken_over, self.window_s) >= self.takeovers:
                raise BrokerRefused(
                    f"client id {self.client_id!r} is in use by another client: the broker"
                    f" handed our session to it {len(self._taken_over)} times within"
                    f" {self.window_s:.0f}s (reason code 0x8e, session taken over). Each"
                    " bridge needs its own client id: stop the other one, or give this one"
                    " --client-id (or --replica N)"
                )
            return (
                f"session taken over: another client connected with client id"
                f" {self.client_id!r} ({len(self._taken_over)} of {self.takeovers}"
                f" within {self.window_s:.0f}s)"
            )
        dropped = was_up and code in (None, UNSPECIFIED)
        if dropped and _count(self._dropped, self.drop_window_s) >= self.drops:
            raise BrokerRefused(
                f"the broker closed our connection {len(self._dropped)} times within"
                f" {self.drop_window_s:.0f}s after accepting it, without a reason:"
                f" most likely another client uses client id {self.client_id!r} (a"
                " broker hands the session to the newest connection; Mosquitto 2.0 does"
                " not say so), else the network to the broker keeps breaking. Each"
                " bridge needs its own client id: stop the other one, or give this one"
                " --client-id (or --replica N)"
            )
        return None


def _count(times: deque[float], window_s: float) -> int:
    """Add now to `times`, forget those older than `window_s`; how many are left."""
    now = time.monotonic()
    times.append(now)
    while times[0] < now - window_s:
        times.popleft()
    return len(times)
