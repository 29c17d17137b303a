"""Fixtures that start real processes on free ports and always stop them."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import psycopg
import pytest
import uvicorn
from paho.mqtt.enums import CallbackAPIVersion
from psycopg import sql
from typer.testing import CliRunner, Result

from api import ApiSettings, create_app
from api.server import server_config
from bridge.store import Stats, StoreUnavailable, open_reader, parse_store_url
from logagg.cli import app
from supervise.mosquitto import Mosquitto, find_mosquitto, free_port
from supervise.process import stop_process

if find_mosquitto() is None:
    pytest.exit("mosquitto is not installed: apt-get install mosquitto", returncode=2)

LOGAGG = [sys.executable, "-m", "logagg"]


def logagg_cli(*args: str, env: Mapping[str, str | None] | None = None) -> Result:
    """`logagg ARGS` run in this process (stdout and stderr apart), where a subprocess is not
    the point; the signal handlers a command installs (`tail`) are put back after."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return CliRunner().invoke(app, list(args), env=env)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto of our own with the project's config, on a free port."""
    mosq = Mosquitto(free_port(), tmp_path / "mosquitto")
    mosq.start()
    yield mosq
    mosq.stop()


class BridgeProcess:
    """`logagg bridge` as a subprocess, so tests can SIGKILL it like a real crash."""

    def __init__(
        self,
        broker_url: str,
        store_url: str,
        log: Path,
        *,
        env: dict[str, str] | None = None,
        **flags: str,
    ) -> None:
        self.args = [*LOGAGG, "bridge", "--broker", broker_url, "--store", store_url]
        # Added to the test's environment at each start (e.g. LD_PRELOAD of libfaketime).
        self.env = env
        for name, value in flags.items():
            self.args += [f"--{name.replace('_', '-')}", value]
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, wait: bool = True) -> None:
        """Start it; by default wait until it has subscribed (its session exists)."""
        already = self.output().count("subscribed to")
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.args,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=None if self.env is None else {**os.environ, **self.env},
            )
        deadline = time.monotonic() + 30
        while wait and self.output().count("subscribed to") == already:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"bridge did not subscribe:\n{self.output()}")
            time.sleep(0.05)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.process is None:
            return None
        code = stop_process(self.process, sig, timeout)
        self.process = None
        return code

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def exited(self, timeout: float) -> int | None:
        """Its exit code once it has stopped by itself within `timeout`, else None."""
        assert self.process is not None, "not started"
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store' / 'logagg.db'}"


# The machine's PostgreSQL (trust auth); tests only create and drop schemas of their own in it.
PG_TEST_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def postgres_reachable() -> None:
    """PostgreSQL tests need a server; CI has one, so there its absence is a failure."""
    try:
        psycopg.connect(PG_TEST_URL, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        message = f"no PostgreSQL at {PG_TEST_URL} (set TEST_POSTGRES_URL): {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def pg_url(postgres_reachable: None) -> Iterator[str]:
    """A PostgreSQL store URL in a fresh schema (the bridge creates it), dropped afterwards."""
    schema = f"logagg_test_{uuid.uuid4().hex[:12]}"
    yield f"{PG_TEST_URL}{'&' if '?' in PG_TEST_URL else '?'}schema={schema}"
    with psycopg.connect(PG_TEST_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def bridge_factory(
    broker: Mosquitto, store_url: str, tmp_path: Path
) -> Iterator[Callable[..., BridgeProcess]]:
    started: list[BridgeProcess] = []

    def start(
        *, wait: bool = True, env: dict[str, str] | None = None, **flags: str
    ) -> BridgeProcess:
        flags.setdefault("client_id", f"test-bridge-{os.getpid()}")
        proc = BridgeProcess(
            broker.url,
            flags.pop("store", store_url),
            tmp_path / f"bridge-{len(started)}.log",
            env=env,
            **flags,
        )
        started.append(proc)
        proc.start(wait=wait)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def immutable(tmp_path: Path) -> Iterator[Callable[[list[Path], bool], None]]:
    """`chattr +i` / `-i` on files (refused even to root); every file set is cleared after."""
    touched: set[Path] = set()

    def chattr(paths: list[Path], on: bool) -> None:
        done = subprocess.run(
            ["chattr", "+i" if on else "-i", *map(str, paths)], capture_output=True, check=False
        )
        if done.returncode != 0:
            pytest.skip(f"chattr is not available here: {done.stderr.decode().strip()}")
        touched.update(paths)

    yield chattr
    if touched:
        subprocess.run(["chattr", "-i", *map(str, touched)], check=False)


def received_at_least(n: int) -> Callable[[Stats], bool]:
    """A `wait_for_stats` condition fixed now, for loops whose count changes."""
    return lambda stats: stats.received >= n


def wait_for_stats(store_url: str, done: Callable[[Stats], bool], timeout: float = 60.0) -> Stats:
    """Poll the store until `done(stats)` holds; fail with the last stats seen."""
    store = open_reader(parse_store_url(store_url))
    deadline = time.monotonic() + timeout
    last: Stats | None = None
    try:
        while time.monotonic() < deadline:
            try:
                last = store.stats()
            except StoreUnavailable:  # the bridge may not have created it yet
                last = None
            if last is not None and done(last):
                return last
            time.sleep(0.1)
    finally:
        store.close()  # a PostgreSQL store holds a connection pool
    raise AssertionError(f"store did not reach the expected state in {timeout}s: {last}")


Message = tuple[str, bytes]


def make_stream(count: int, dup_ratio: float, *, seed: int = 1, topics: int = 5) -> list[Message]:
    """`count` messages of which `dup_ratio` repeat an earlier one; shuffled, seeded."""
    rng = random.Random(seed)
    distinct = count - round(count * dup_ratio)
    run = uuid.UUID(int=rng.getrandbits(128)).hex[:8]
    events = [
        (
            f"logs/t{i % topics}",
            json.dumps(
                {
                    "event_id": f"{run}-{i}",
                    "timestamp": "2026-11-26T12:00:00+00:00",
                    "source": "test",
                    "payload": {"i": i},
                }
            ).encode(),
        )
        for i in range(distinct)
    ]
    repeats = [rng.choice(events) for _ in range(count - distinct)]
    stream = events + repeats
    rng.shuffle(stream)
    return stream


def publish_raw(
    port: int, messages: list[Message], *, window: int = 500, retain: bool = False
) -> None:
    """Publish with QoS 1 (retained if asked) and return once the broker acknowledged all."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-pub-{uuid.uuid4().hex}")
    client.max_inflight_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        pending: list[paho.MQTTMessageInfo] = []
        for topic, body in messages:
            pending.append(client.publish(topic, body, qos=1, retain=retain))
            if len(pending) >= window:
                _wait_acked(pending)
                pending = []
        _wait_acked(pending)
    finally:
        client.disconnect()
        client.loop_stop()


def _wait_acked(infos: list[paho.MQTTMessageInfo]) -> None:
    for info in infos:
        info.wait_for_publish(30)
        if not info.is_published():
            raise AssertionError(f"broker did not acknowledge message {info.mid} in 30s")


Sidecar = Callable[..., httpx.Client]


@contextmanager
def serving(settings: ApiSettings) -> Iterator[httpx.Client]:
    """The sidecar under uvicorn, as `logagg api` runs it, on a thread of the test process,
    and a client for it; the server is stopped (lifespan and all) after."""
    port = free_port()
    settings = settings.model_copy(update={"port": port})
    server = uvicorn.Server(server_config(create_app(settings), settings, log_config=None))
    thread = threading.Thread(target=server.run, name="sidecar")
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive(), "the sidecar exited while starting"
            assert time.monotonic() < deadline, "the sidecar did not start in 10s"
            time.sleep(0.02)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), "the sidecar did not stop in 30s"


@pytest.fixture
def sidecar(store_url: str) -> Iterator[Sidecar]:
    """Starts sidecars on `store_url`; every one is stopped after the test."""
    with ExitStack() as stack:

        def start(broker_url: str, **overrides: Any) -> httpx.Client:
            settings = ApiSettings(broker=broker_url, store=parse_store_url(store_url), **overrides)
            return stack.enter_context(serving(settings))

        yield start
