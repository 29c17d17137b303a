"""Sending over MQTT: QoS 1 from the caller's thread, PUBACKs on paho's network thread.

paho-mqtt 2.2 stalls silently past 65,535 outstanding QoS 1 messages, and its own
in-flight limit halves the publish rate; so paho's limit is off and this sender keeps
at most `WINDOW` messages (less if the broker's MQTT 5 receive maximum says so)
waiting for a PUBACK.

If the connection drops, paho reconnects on its own and resends every message still
waiting for a PUBACK, with the DUP flag. Its out-queue lives in the client, so that
holds with a clean session too (a publisher's QoS 1 leaves no state in the broker),
and no session is left behind in the broker after the run. Only a PUBACK counts a
message as sent; a resend the broker had in fact received is a duplicate the bridge
drops, so the store may count more duplicates than the summary, never fewer events.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bridge.broker import client_kwargs
from publisher.settings import SendSettings
from publisher.summary import AckCounts, Outgoing, PublishError

logger = logging.getLogger("logagg.publisher")

WINDOW = 500
KEEPALIVE_S = 15
RECONNECT_MAX_DELAY_S = 8
# CONNACK refusals that retrying cannot fix: bad login, ACL, protocol version, banned.
_FATAL_CONNACK = {0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C}
_NO_MATCHING_SUBSCRIBERS = 0x10


class MqttSender:
    """Use as a context manager: entering connects, leaving disconnects and stops paho's
    thread, whatever happened in between."""

    def __init__(self, settings: SendSettings, acks: AckCounts, client_id: str) -> None:
        self._address = settings.address
        self._prefix = settings.topic_prefix
        self._timeout = settings.ack_timeout_s
        self._acks = acks
        self._cond = threading.Condition()
        # Guarded by _cond: written by paho's thread, read by the caller's.
        self._pending: dict[int, Outgoing] = {}
        self._early: dict[int, ReasonCode] = {}
        self._window = WINDOW
        self._connected = False
        self._fatal: str | None = None
        self._problem = "no answer"
        self._last_progress = time.monotonic()
        self._warned_unsubscribed = False

        version = (
            MQTTProtocolVersion.MQTTv5
            if settings.mqtt_version == "5"
            else MQTTProtocolVersion.MQTTv311
        )
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version)
        client.max_inflight_messages_set(0)
        client.reconnect_delay_set(1, RECONNECT_MAX_DELAY_S)
        # The same login and TLS resolution as the bridge's aiomqtt clients.
        login = client_kwargs(settings.address, settings.credentials)
        user, password, tls = login["username"], login["password"], login["tls_context"]
        if isinstance(user, str):
            client.username_pw_set(user, password if isinstance(password, str) else None)
        if isinstance(tls, ssl.SSLContext):
            client.tls_set_context(tls)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client

    def __enter__(self) -> MqttSender:
        self._client.connect_async(self._address.host, self._address.port, KEEPALIVE_S)
        self._client.loop_start()
        try:
            with self._cond:
                self._last_progress = time.monotonic()
                self._wait_until(
                    lambda: self._connected, f"could not connect to broker {self._address}"
                )
        except BaseException:
            self._stop()  # __exit__ does not run when __enter__ raises
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop()

    def _stop(self) -> None:
        # disconnect() first: loop_stop() alone waits for the out-queue to empty.
        self._client.disconnect()
        self._client.loop_stop()

    def send(self, message: Outgoing) -> None:
        """Blocks while the window is full; raises PublishError when the broker stalls."""
        body = message.body()
        with self._cond:
            self._wait_until(
                lambda: len(self._pending) < self._window,
                f"broker {self._address} acknowledged nothing",
            )
            if not self._pending:  # the stall clock starts when something starts waiting
                self._last_progress = time.monotonic()
        # Never under our lock: paho holds its own while it calls _on_publish, which takes ours.
        info = self._client.publish(self._prefix + message.topic, body, qos=1)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            # NO_CONN is fine: paho queued the message and sends it after reconnecting.
            raise PublishError(f"paho could not queue a message: {paho.error_string(info.rc)}")
        with self._cond:
            reason = self._early.pop(info.mid, None)
            if reason is None:
                self._pending[info.mid] = message
            else:
                self._settle(message, reason)

    def flush(self) -> None:
        """Return once every message sent has been acknowledged."""
        with self._cond:
            self._wait_until(
                lambda: not self._pending, f"broker {self._address} acknowledged nothing"
            )

    def _wait_until(self, ready: Callable[[], bool], stalled: str) -> None:
        """Wait, holding _cond, until `ready()`; give up after the ack timeout without progress."""
        while True:
            if self._fatal is not None:
                raise PublishError(self._fatal)
            if ready():
                return
            remaining = self._last_progress + self._timeout - time.monotonic()
            if remaining <= 0:
                raise PublishError(
                    f"{stalled} for {self._timeout:g}s ({self._problem}); "
                    f"{len(self._pending)} messages unacknowledged"
                )
            self._cond.wait(remaining)

    def _settle(self, message: Outgoing, reason: ReasonCode) -> None:
        """Count one PUBACK; called with _cond held."""
        if reason.is_failure:
            self._fatal = f"broker refused event {message.event_id} on {message.topic}: {reason}"
        else:
            if reason.value == _NO_MATCHING_SUBSCRIBERS and not self._warned_unsubscribed:
                self._warned_unsubscribed = True
                logger.warning(
                    "broker %s has no subscriber for %s#: events are not stored unless a "
                    "bridge is running or its session is kept",
                    self._address,
                    self._prefix,
                )
            self._acks.acknowledged(message)
            self._last_progress = time.monotonic()
        self._cond.notify_all()

    # paho callbacks, on paho's network thread.

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            if reason.is_failure:
                self._problem = f"connection refused: {reason}"
                if reason.value in _FATAL_CONNACK:
                    self._fatal = f"broker {self._address} refused the connection: {reason}"
                logger.warning("broker %s refused the connection: %s", self._address, reason)
            else:
                self._connected = True
                receive_maximum = getattr(properties, "ReceiveMaximum", None)
                self._window = min(WINDOW, receive_maximum or WINDOW)
                logger.info("connected to %s, window %d", self._address, self._window)
            self._cond.notify_all()

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        with self._cond:
            self._problem = "broker unreachable"
        logger.warning("cannot reach broker %s; retrying", self._address)

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            was_connected, self._connected = self._connected, False
            self._problem = f"disconnected: {reason}"
            waiting = len(self._pending)
            self._cond.notify_all()
        if was_connected and reason.value != 0:
            logger.warning(
                "lost broker %s (%s); reconnecting, %d messages to resend",
                self._address,
                reason,
                waiting,
            )

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties,
    ) -> None:
        with self._cond:
            message = self._pending.pop(mid, None)
            if message is None:  # acknowledged before send() could register it
                self._early[mid] = reason
            else:
                self._settle(message, reason)
