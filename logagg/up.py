"""`logagg up`: the whole system in one command, stopped in order by one Ctrl-C.

Starts the broker when none answers at `--broker` (Mosquitto with the
project's config, or the embedded amqtt fallback, loudly), then the bridge and
the HTTP sidecar as child processes. Children run in their own sessions so a
Ctrl-C reaches only us; we stop them in order: sidecar, bridge (which commits
and acks what it holds), broker (which saves its queue).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import FrameType

from logagg.embedded import WARNING as EMBEDDED_WARNING
from logagg.options import as_environment
from logagg.settings import UpSettings
from supervise.mosquitto import (
    PROJECT_CONFIG,
    Mosquitto,
    NotWritable,
    find_mosquitto,
    port_open,
)
from supervise.process import stop_process

logger = logging.getLogger("logagg.up")

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
STOP_TIMEOUT_S = 20.0
START_TIMEOUT_S = 15.0
EXAMPLE_MQTT = (
    '{"event_id":"e1","timestamp":"2026-11-26T12:00:00Z","source":"cli","payload":{"msg":"hi"}}'
)
EXAMPLE_HTTP = EXAMPLE_MQTT.replace('{"event_id"', '{"topic":"auth.prod","event_id"', 1)


@dataclass
class ManagedProcess:
    """A command `logagg up` runs beside the others (broker, bridge, sidecar): its name,
    argv and environment, and its process once started."""

    name: str
    args: list[str]
    env: dict[str, str] | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        logger.info("starting %s", self.name)
        self.process = subprocess.Popen(self.args, env=self.env, start_new_session=True)

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self) -> None:
        if self.process is None:
            return
        if stop_process(self.process, timeout=STOP_TIMEOUT_S) == -signal.SIGKILL:
            logger.error("%s did not stop in %.0fs and was killed", self.name, STOP_TIMEOUT_S)


def _logagg(*args: str) -> list[str]:
    return [sys.executable, "-m", "logagg", *args]


def choose_broker(settings: UpSettings) -> tuple[ManagedProcess | Mosquitto | None, str]:
    """The broker to start, if any, and the MQTT version the bridge should speak to it."""
    address = settings.address
    if port_open(address.host, address.port):
        logger.info("using the broker already listening at %s", address)
        return None, settings.mqtt_version
    if address.host not in LOCAL_HOSTS:
        raise SystemExit(f"error: no broker answers at {address}, and it is not this machine")
    if find_mosquitto():
        logger.info("no broker at %s: starting Mosquitto with %s", address, PROJECT_CONFIG)
        try:
            broker = Mosquitto(address.port, settings.data_dir / "mosquitto")
        except (NotWritable, FileNotFoundError) as exc:  # FileNotFoundError: no mosquitto.conf
            raise SystemExit(f"error: {exc}") from None
        return broker, settings.mqtt_version
    try:
        import amqtt  # noqa: F401
    except ImportError:
        raise SystemExit(
            f"error: no broker at {address} and no mosquitto on PATH: install it "
            "(apt-get install mosquitto), or pip install 'logagg[embedded]' to try logagg"
        ) from None
    for _ in range(3):
        logger.warning(EMBEDDED_WARNING)
    embedded = ManagedProcess(
        "embedded broker", [sys.executable, "-m", "logagg.embedded", str(address.port)]
    )
    return embedded, "3.1.1"


def wait_for_port(host: str, port: int, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not port_open(host, port):
        if time.monotonic() > deadline:
            raise SystemExit(f"error: {what} did not listen on {host}:{port} in time")
        time.sleep(0.1)


def run_up(settings: UpSettings) -> int:
    stopping = False

    def request_stop(_sig: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    broker, mqtt_version = choose_broker(settings)
    address = settings.address
    # Every setting goes through the environment, not argv: URLs may carry passwords, and
    # every user of the machine can read a process's command line.
    env = {**os.environ, **as_environment(settings)}
    bridge = ManagedProcess(
        "bridge",
        _logagg("bridge", "--client-id", settings.client_id, "--mqtt-version", mqtt_version),
        env,
    )
    api = ManagedProcess(
        "api", _logagg("api", "--host", settings.host, "--port", str(settings.port)), env
    )
    children: list[ManagedProcess] = [bridge, api]
    code = 0
    try:
        if broker is not None:
            broker.start()
            wait_for_port(address.host, address.port, "the broker")
        for child in children:
            child.start()
        wait_for_port(settings.host, settings.port, "the HTTP sidecar")
        base = f"http://{settings.host}:{settings.port}"
        logger.info(
            "logagg is up: broker %s, store %s\n"
            "  publish:  mosquitto_pub -h %s -p %d -q 1 -t logs/auth.prod -m '%s'\n"
            "            curl -X POST %s/publish -H 'content-type: application/json' -d '%s'\n"
            "            logagg publish --count 1000 --dup-ratio 0.2\n"
            "  read:     %s/stats  %s/events  %s/rejected  %s/docs\n"
            "  watch:    %s/ (dashboard)  %s/metrics  logagg stats  logagg tail -f\n"
            "  Ctrl-C stops everything; running it again resumes on the same store.",
            address,
            settings.store.display,
            address.host,
            address.port,
            EXAMPLE_MQTT,
            base,
            EXAMPLE_HTTP,
            *[base] * 6,
        )
        while not stopping:
            for child in children:
                if (rc := child.exited()) is not None:
                    logger.error("%s exited with code %d; stopping everything", child.name, rc)
                    code = rc or 1
                    stopping = True
            time.sleep(0.2)
    finally:
        logger.info("stopping")
        for child in reversed(children):
            child.stop()
        if broker is not None:
            broker.stop()
    return code
