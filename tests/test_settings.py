"""Settings: flags, then LOGAGG_* environment variables, then defaults."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bridge.settings import BridgeSettings
from bridge.store import parse_store_url


def test_bridge_client_id_derives_from_host_store_topics_and_replica(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The default id is stable for one bridge (its session lives under it) and differs
    between bridges on one host that store elsewhere or read other topics."""
    host = socket.gethostname()
    first = BridgeSettings().client_id
    assert first.startswith(f"logagg-bridge-{host}-")
    assert first.endswith("-0")
    assert BridgeSettings().client_id == first  # stable across restarts
    assert BridgeSettings(replica=2).client_id == first.removesuffix("0") + "2"
    monkeypatch.setenv("LOGAGG_REPLICA", "3")
    assert BridgeSettings().client_id == first.removesuffix("0") + "3"
    monkeypatch.delenv("LOGAGG_REPLICA")
    assert BridgeSettings(client_id="fixed").client_id == "fixed"
    others = {
        BridgeSettings(store=parse_store_url("sqlite:///other.db")).client_id,
        BridgeSettings(group="g").client_id,
        BridgeSettings(topic_prefix="audit/").client_id,
        BridgeSettings(store=parse_store_url("postgresql://u@db/logs")).client_id,
    }
    assert first not in others
    assert len(others) == 4
    # One file, named relative or absolute, is one store; the same relative name from
    # another directory is another file, so another bridge.
    absolute = BridgeSettings(
        store=parse_store_url(f"sqlite:///{Path.cwd()}/data/logagg.db")
    ).client_id
    assert absolute == first
    monkeypatch.chdir(tmp_path)
    assert BridgeSettings().client_id != first
    # A new password is the same store: the session must survive its rotation.
    assert (
        BridgeSettings(store=parse_store_url("postgresql://u:old@db/logs")).client_id
        == BridgeSettings(store=parse_store_url("postgresql://u:new@db/logs?password=x")).client_id
    )


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
