"""The bridge: subscribes to the log topics and stores each event exactly once."""

from bridge.consumer import Bridge, run_bridge
from bridge.event import Event, Rejection, parse_message
from bridge.settings import BridgeSettings, MqttSettings

__all__ = [
    "Bridge",
    "BridgeSettings",
    "Event",
    "MqttSettings",
    "Rejection",
    "parse_message",
    "run_bridge",
]
