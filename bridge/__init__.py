"""The bridge: subscribes to the log topics and stores each event exactly once.

Its public API, loaded lazily: importing one name loads only the module that holds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.lazy import lazy_api

if TYPE_CHECKING:
    from bridge.consumer import Bridge as Bridge
    from bridge.consumer import run_bridge as run_bridge
    from bridge.event import Event as Event
    from bridge.event import Rejection as Rejection
    from bridge.event import parse_message as parse_message
    from bridge.settings import BridgeSettings as BridgeSettings
    from bridge.settings import MqttSettings as MqttSettings

__all__, __getattr__ = lazy_api(
    __name__,
    {
        "bridge.consumer": ("Bridge", "run_bridge"),
        "bridge.event": ("Event", "Rejection", "parse_message"),
        "bridge.settings": ("BridgeSettings", "MqttSettings"),
    },
)
