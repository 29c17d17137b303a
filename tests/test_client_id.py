"""Client ids against a real Mosquitto: distinct by default, a clash reported as a clash."""

from __future__ import annotations

import re
import time
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from bridge.refusal import BrokerRefused, Refusals
from supervise.mosquitto import Mosquitto
from tests.helpers import BridgeProcess, StartBridge, make_stream, publish_raw, wait_for_stats


def client_id(bridge: BridgeProcess) -> str:
    found = re.findall(r"bridge (\S+): broker", bridge.output())
    assert found, bridge.output()
    return str(found[-1])


# Slow: five real drops through the reconnect back-off, then 3 s to see the other stays up
# (the counting itself is tested at once below, on `Refusals`).
@pytest.mark.slow
@pytest.mark.broker
def test_two_bridges_with_one_client_id_one_stops_naming_the_clash(
    bridge_factory: StartBridge,
) -> None:
    """The broker hands the session to whichever connected last; Mosquitto 2.0 closes the
    other's connection without a reason code (no 0x8E), so after five such drops within
    30 s one of the two exits saying which id probably clashes; the other keeps going."""
    first = bridge_factory(client_id="twin")
    second = bridge_factory(client_id="twin")
    deadline = time.monotonic() + 30
    while first.process.poll() is None and second.process.poll() is None:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, first.output() + second.output()
        time.sleep(0.1)
    stopped, running = (first, second) if first.process.poll() is not None else (second, first)  # type: ignore[union-attr]
    assert stopped.exited(0) == 2, stopped.output()
    output = stopped.output()
    assert "most likely another client uses client id 'twin'" in output
    assert "--client-id" in output
    assert running.exited(3) is None, running.output()


@pytest.mark.broker
def test_two_bridges_with_default_settings_on_different_stores_both_run(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """No --client-id: each derives its own from its store, so both keep their sessions and
    store everything; restarted, a bridge comes back under the same id (its session)."""
    stores = [f"sqlite:///{tmp_path}/{name}/logagg.db" for name in ("a", "b")]
    bridges = [BridgeProcess(broker.url, s, tmp_path / f"{i}.log") for i, s in enumerate(stores)]
    try:
        for bridge in bridges:
            bridge.start()
        ids = [client_id(bridge) for bridge in bridges]
        assert ids[0] != ids[1]
        messages = make_stream(20, 0.0, seed=7)
        publish_raw(broker.port, messages)
        for store in stores:
            assert wait_for_stats(store, lambda s: s.received == 20, timeout=20).received == 20
        bridges[0].stop()
        bridges[0].start()
        assert client_id(bridges[0]) == ids[0]
        for bridge in bridges:
            assert bridge.exited(0) is None
            assert "taken over" not in bridge.output()
            assert "broker unreachable" not in bridge.output()
    finally:
        for bridge in bridges:
            bridge.stop()


def taken_over() -> aiomqtt.MqttCodeError:
    """What a broker that says why (MQTT 5 DISCONNECT 0x8E) makes aiomqtt's error carry."""
    return aiomqtt.MqttCodeError(ReasonCode(PacketTypes.DISCONNECT, "Session taken over"))


def test_a_session_taken_over_three_times_in_a_minute_is_a_clash() -> None:
    """Brokers that send 0x8E (Mosquitto does not here) make the clash certain: two
    take-overs are retried (a deployment may replace a bridge once), the third stops."""
    refusals = Refusals("twin")
    for seen in (1, 2):
        refusals.accepted()
        assert f"({seen} of 3 within 60s)" in (refusals.check(taken_over()) or "")
    refusals.accepted()
    with pytest.raises(BrokerRefused, match="client id 'twin' is in use by another client"):
        refusals.check(taken_over())


def test_drops_count_only_for_connections_that_were_accepted() -> None:
    """A broker that is down is an outage, however often we retry; four quick drops of an
    accepted connection are tolerated, the fifth within 30 s stops the bridge."""
    refusals = Refusals("b")
    lost = aiomqtt.MqttError("Disconnected during message iteration")
    for _ in range(20):
        assert refusals.check(lost) is None  # never accepted: the broker is unreachable
    for _ in range(4):
        refusals.accepted()
        assert refusals.check(lost) is None
    refusals.accepted()
    with pytest.raises(BrokerRefused, match="most likely another client uses client id 'b'"):
        refusals.check(lost)
