"""`logagg up`: the whole system from one command, stopped cleanly by Ctrl-C, resumable."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from logagg import up as up_module
from logagg.settings import UpSettings
from supervise.mosquitto import free_port, port_open
from supervise.process import stop_process
from tests.helpers import BridgeProcess, make_stream, publish_raw, wait_for_stats

EVENT = {
    "topic": "auth.prod",
    "timestamp": "2026-11-26T12:00:00+00:00",
    "source": "test",
    "payload": {"msg": "hello"},
}


def start_up(tmp_path: Path, mqtt_port: int, http_port: int) -> subprocess.Popen[bytes]:
    with (tmp_path / "up.log").open("ab") as log:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "logagg", "up"),
                *("--broker", f"mqtt://127.0.0.1:{mqtt_port}"),
                *("--store", f"sqlite:///{tmp_path / 'data' / 'logagg.db'}"),
                *("--port", str(http_port), "--data-dir", str(tmp_path / "data")),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def wait_healthy(base: str, up: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert up.poll() is None, "logagg up exited early"
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("logagg up did not become healthy")


def wait_stored(base: str, count: int, timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = httpx.get(f"{base}/stats", timeout=2).json()
        if stats["received"] >= count:
            return dict(stats)
        time.sleep(0.2)
    raise AssertionError(f"not stored in time: {stats}")


def stop(up: subprocess.Popen[bytes]) -> int:
    """Ctrl-C: `logagg up` handles SIGINT itself, even when started with it ignored."""
    return stop_process(up, signal.SIGINT, timeout=60)


@pytest.mark.broker
def test_up_runs_everything_and_resumes_on_the_same_store(tmp_path: Path) -> None:
    """Starts its own Mosquitto, bridge and sidecar; Ctrl-C stops all; a rerun keeps dedup."""
    mqtt_port, http_port = free_port(), free_port()
    base = f"http://127.0.0.1:{http_port}"
    up = start_up(tmp_path, mqtt_port, http_port)
    try:
        wait_healthy(base, up)
        events = [{**EVENT, "event_id": f"up-{i}"} for i in range(10)]
        assert httpx.post(f"{base}/publish", json=events, timeout=10).json() == {"accepted": 10}
        assert wait_stored(base, 10)["unique_processed"] == 10
    finally:
        assert stop(up) == 0
    assert not port_open("127.0.0.1", mqtt_port)
    assert not port_open("127.0.0.1", http_port)
    assert (tmp_path / "data" / "mosquitto" / "mosquitto.db").exists()

    up = start_up(tmp_path, mqtt_port, http_port)
    try:
        wait_healthy(base, up)
        assert httpx.post(f"{base}/publish", json=events, timeout=10).json() == {"accepted": 10}
        stats = wait_stored(base, 20)
        assert (stats["unique_processed"], stats["duplicate_dropped"]) == (10, 10)
    finally:
        assert stop(up) == 0


def test_up_falls_back_to_the_embedded_broker_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Without Mosquitto, `up` runs amqtt with a warning, and the bridge speaks 3.1.1 to it."""
    monkeypatch.setattr(up_module, "find_mosquitto", lambda: None)
    port = free_port()
    settings = UpSettings(broker=f"mqtt://127.0.0.1:{port}", data_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="logagg.up"):
        broker, mqtt_version = up_module.choose_broker(settings)
    assert mqtt_version == "3.1.1"
    assert "CAN BE LOST" in caplog.text
    assert isinstance(broker, up_module.ManagedProcess)
    store_url = f"sqlite:///{tmp_path / 'logagg.db'}"
    bridge = BridgeProcess(
        settings.broker, store_url, tmp_path / "bridge.log", mqtt_version="3.1.1"
    )
    broker.start()
    try:
        up_module.wait_for_port("127.0.0.1", port, "the embedded broker")
        bridge.start()
        stream = make_stream(200, 0.25)
        publish_raw(port, stream)
        stats = wait_for_stats(store_url, lambda s: s.received >= 200, timeout=30)
        assert (stats.unique_processed, stats.duplicate_dropped) == (150, 50)
    finally:
        bridge.stop()
        broker.stop()


@pytest.mark.broker  # `logagg up` checks the directory before it starts Mosquitto
def test_up_refuses_a_broker_persistence_directory_it_cannot_write(
    tmp_path: Path, immutable: Callable[[list[Path], bool], None]
) -> None:
    """Mosquitto runs with an unwritable persistence directory, acknowledging messages it
    will lose at its next restart: `logagg up` refuses to start it, and says why."""
    data = tmp_path / "data" / "mosquitto"
    data.mkdir(parents=True)
    immutable([data], True)  # chattr +i: refused even to root, unlike chmod
    mqtt_port, http_port = free_port(), free_port()
    up = start_up(tmp_path, mqtt_port, http_port)
    try:
        code = up.wait(30)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)
    log = (tmp_path / "up.log").read_text()
    assert code == 1, log
    assert f"error: Mosquitto's persistence directory {data} cannot be written" in log
    assert "Operation not permitted" in log
    assert not port_open("127.0.0.1", mqtt_port)
