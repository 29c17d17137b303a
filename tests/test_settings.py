"""Settings: flags, then LOGAGG_* environment variables, then defaults."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from pydantic import ValidationError

from bridge.settings import BridgeSettings


def test_bridge_client_id_derives_from_host_and_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replicas on one host get distinct, stable ids (each keeps its own session)."""
    host = socket.gethostname()
    assert BridgeSettings().client_id == f"logagg-bridge-{host}-0"
    assert BridgeSettings(replica=2).client_id == f"logagg-bridge-{host}-2"
    monkeypatch.setenv("LOGAGG_REPLICA", "3")
    assert BridgeSettings().client_id == f"logagg-bridge-{host}-3"
    assert BridgeSettings(client_id="fixed").client_id == "fixed"


def test_flags_win_over_environment_over_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    assert BridgeSettings().broker == "mqtt://127.0.0.1:1883"
    monkeypatch.setenv("LOGAGG_BROKER", "mqtt://broker.env:1883")
    assert BridgeSettings().broker == "mqtt://broker.env:1883"
    assert BridgeSettings(broker="mqtt://flag:1883").broker == "mqtt://flag:1883"


def test_group_subscribes_to_a_shared_subscription() -> None:
    assert BridgeSettings().topic_filter == "logs/#"
    assert BridgeSettings(group="g").topic_filter == "$share/g/logs/#"


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("broker", "http://x", "mqtt://"),
        ("store", "mysql://x", "unsupported store URL scheme"),
        ("batch_size", 0, "greater than or equal to 1"),
    ],
)
def test_bad_settings_name_the_problem(field: str, value: object, says: str) -> None:
    settings: dict[str, Any] = {field: value}
    with pytest.raises(ValidationError, match=says):
        BridgeSettings(**settings)
