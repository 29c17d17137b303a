"""Fails loudly, naming what changed, when an aiomqtt or paho-mqtt upgrade moves what the
inbox relies on: the releases it is proven against, and each private member
bridge/receive/paho_internals.py names, with the shape it expects."""

from __future__ import annotations

import asyncio
import inspect
import tomllib
from importlib.metadata import version
from pathlib import Path

import aiomqtt
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bridge.receive.paho_internals import (
    AIOMQTT_PAHO_CLIENT,
    HANDLE_PUBLISH,
    IN_PACKET,
    IN_PACKET_BYTES,
    IN_PACKET_COMMAND,
    IN_PACKET_IDLE,
    LAST_BYTES_RECEIVED,
    LOOP_RC_HANDLE,
    LOOP_READ,
    MSGTIME_MUTEX,
    PACKET_QUEUE,
    PACKET_READ,
    PROVEN,
    SOCK,
    SOCK_RECV,
)

RECHECK = "re-check each member bridge/receive/paho_internals.py names against the new source"

# The methods the inbox replaces or calls, with the parameters (after self) it passes.
METHODS = {
    SOCK_RECV: ["bufsize"],
    LOOP_READ: ["max_packets"],
    PACKET_READ: [],
    LOOP_RC_HANDLE: ["rc"],
    HANDLE_PUBLISH: [],
    PACKET_QUEUE: ["command", "packet", "mid", "qos", "info"],
}


def _minor(release: str) -> str:
    return ".".join(release.split(".")[:2])


@pytest.mark.parametrize("dist", sorted(PROVEN))
def test_installed_release_is_the_proven_one(dist: str) -> None:
    installed = version(dist)
    assert _minor(installed) == PROVEN[dist], (
        f"{dist} {installed} is installed, but the inbox is proven against {PROVEN[dist]}.x: "
        f"{RECHECK}, then update PROVEN there and the pin in pyproject.toml"
    )


@pytest.mark.parametrize("dist", sorted(PROVEN))
def test_pyproject_pins_the_proven_minor_release(dist: str) -> None:
    major, minor = PROVEN[dist].split(".")
    pin = f"{dist}>={major}.{minor},<{major}.{int(minor) + 1}"
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert pin in pyproject["project"]["dependencies"], (
        f"pyproject.toml should pin {pin!r}, the release the receive path is proven on"
    )


@pytest.mark.parametrize("name", sorted(METHODS))
def test_paho_methods_have_the_expected_parameters(name: str) -> None:
    method = getattr(paho.Client, name, None)
    assert callable(method), f"paho.Client.{name} is gone: {RECHECK}"
    parameters = list(inspect.signature(method).parameters)[1:]
    assert parameters == METHODS[name], (
        f"paho.Client.{name} now takes {parameters}, the inbox expects {METHODS[name]}: {RECHECK}"
    )


def test_paho_packet_and_socket_state_are_where_expected() -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    assert getattr(client, SOCK, "missing") is None, f"paho.Client.{SOCK} moved: {RECHECK}"
    packet = getattr(client, IN_PACKET, None)
    assert isinstance(packet, dict), f"paho.Client.{IN_PACKET} is no longer a dict: {RECHECK}"
    fields = {IN_PACKET_COMMAND, IN_PACKET_BYTES}
    assert fields <= packet.keys(), f"{IN_PACKET} lacks {fields - packet.keys()}: {RECHECK}"
    assert isinstance(packet[IN_PACKET_COMMAND], int), f"{IN_PACKET} changed: {RECHECK}"
    assert isinstance(packet[IN_PACKET_BYTES], bytearray), f"{IN_PACKET} changed: {RECHECK}"
    assert packet[IN_PACKET_COMMAND] == IN_PACKET_IDLE, f"{IN_PACKET} starts anew: {RECHECK}"
    heard = getattr(client, LAST_BYTES_RECEIVED, None)
    assert isinstance(heard, float), f"paho.Client.{LAST_BYTES_RECEIVED} moved: {RECHECK}"
    assert abs(heard - paho.time_func()) < 60, f"paho's keepalive clock changed: {RECHECK}"
    with getattr(client, MSGTIME_MUTEX):  # a lock, as paho takes it
        pass


def test_paho_notes_the_keepalive_clock_for_each_packet_as_the_inbox_does() -> None:
    """The inbox sets the clock paho's own reading sets, under the same lock."""
    source = inspect.getsource(getattr(paho.Client, PACKET_READ))
    assert f"self.{LAST_BYTES_RECEIVED} = time_func()" in source, RECHECK
    assert f"with self.{MSGTIME_MUTEX}:" in source, RECHECK


def test_aiomqtt_still_wraps_a_paho_client() -> None:
    async def wrapped() -> object:
        return getattr(aiomqtt.Client("127.0.0.1", 1), AIOMQTT_PAHO_CLIENT, None)

    assert isinstance(asyncio.run(wrapped()), paho.Client), (
        f"aiomqtt.Client.{AIOMQTT_PAHO_CLIENT} is no longer paho's client: {RECHECK}"
    )
