"""Fixtures that start real processes on free ports and always stop them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bridge.store import Stats, StoreUnavailable, open_store
from logagg.mosquitto import Mosquitto, find_mosquitto, free_port

if find_mosquitto() is None:
    pytest.exit("mosquitto is not installed: apt-get install mosquitto", returncode=2)

LOGAGG = [sys.executable, "-m", "logagg"]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto of our own with the project's config, on a free port."""
    mosq = Mosquitto(free_port(), tmp_path / "mosquitto")
    mosq.start()
    yield mosq
    mosq.stop()


class BridgeProcess:
    """`logagg bridge` as a subprocess, so tests can SIGKILL it like a real crash."""

    def __init__(self, broker_url: str, store_url: str, log: Path, **flags: str) -> None:
        self.args = [*LOGAGG, "bridge", "--broker", broker_url, "--store", store_url]
        for name, value in flags.items():
            self.args += [f"--{name.replace('_', '-')}", value]
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        code = self.process.returncode
        self.process = None
        return code

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store' / 'logagg.db'}"


@pytest.fixture
def bridge_factory(
    broker: Mosquitto, store_url: str, tmp_path: Path
) -> Iterator[Callable[..., BridgeProcess]]:
    started: list[BridgeProcess] = []

    def start(**flags: str) -> BridgeProcess:
        flags.setdefault("client_id", f"test-bridge-{os.getpid()}")
        proc = BridgeProcess(
            broker.url,
            flags.pop("store", store_url),
            tmp_path / f"bridge-{len(started)}.log",
            **flags,
        )
        proc.start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def wait_for_stats(store_url: str, done: Callable[[Stats], bool], timeout: float = 60.0) -> Stats:
    """Poll the store until `done(stats)` holds; fail with the last stats seen."""
    store = open_store(store_url, readonly=True)
    deadline = time.monotonic() + timeout
    last: Stats | None = None
    while time.monotonic() < deadline:
        try:
            last = store.stats()
        except StoreUnavailable:  # the bridge may not have created it yet
            last = None
        if last is not None and done(last):
            return last
        time.sleep(0.1)
    raise AssertionError(f"store did not reach the expected state in {timeout}s: {last}")
