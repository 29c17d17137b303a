"""The persistent MQTT session the bridge connects with, shared with the benchmark's baseline.

One definition, so the baseline's backlog is queued exactly like the bridge's.
"""

from __future__ import annotations

from typing import Literal, TypedDict

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

# MQTT 5 caps the receive maximum at a two-byte integer.
MAX_RECEIVE_MAXIMUM = 65535


class SessionOptions(TypedDict, total=False):
    """`aiomqtt.Client` keyword arguments."""

    protocol: aiomqtt.ProtocolVersion
    clean_session: bool
    clean_start: bool
    properties: Properties


def session_options(
    mqtt_version: Literal["3.1.1", "5"],
    *,
    session_expiry_s: int,
    receive_maximum: int | None = None,
) -> SessionOptions:
    """A session the broker keeps: 3.1.1's clean session off; MQTT 5's clean start off,
    `session_expiry_s`, and `receive_maximum` in flight (None: the broker's default)."""
    if mqtt_version == "3.1.1":
        return {"protocol": aiomqtt.ProtocolVersion.V311, "clean_session": False}
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = session_expiry_s
    if receive_maximum is not None:
        properties.ReceiveMaximum = min(receive_maximum, MAX_RECEIVE_MAXIMUM)
    return {
        "protocol": aiomqtt.ProtocolVersion.V5,
        # False on every connect: aiomqtt re-arms paho's "clean on first connect only"
        # each time, which would wipe the session we rely on.
        "clean_start": False,
        "properties": properties,
    }
