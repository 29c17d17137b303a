"""`logagg up`: the whole system from one command, stopped cleanly by Ctrl-C, resumable."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from logagg.mosquitto import free_port, port_open

pytestmark = pytest.mark.broker

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
    up.send_signal(signal.SIGINT)
    try:
        return up.wait(60)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)


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
