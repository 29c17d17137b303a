"""What the tests share besides fixtures (those are in conftest.py): processes, publishing,
waiting on the store, checks, and readers of what the system answers. Test files import
from here, never from one another."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import psycopg
import uvicorn
import yaml
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from playwright.sync_api import Browser, Page
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner, Result

from api import ApiSettings, create_app
from api.server import server_config
from bridge.event import Event
from bridge.store import (
    PostgresUrl,
    Stats,
    StoreUnavailable,
    open_reader,
    parse_store_url,
)
from logagg.cli import app
from supervise.mosquitto import PROJECT_CONFIG, Mosquitto, find_mosquitto, free_port
from supervise.process import stop_process

LOGAGG = [sys.executable, "-m", "logagg"]
ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"

# Why the tests that start a broker are skipped, or None when they can run.
NO_MOSQUITTO = (
    "mosquitto is not installed (apt-get install mosquitto): the tests that start a broker "
    "are skipped"
    if find_mosquitto() is None
    else None
)

# The machine's PostgreSQL (trust auth); tests only create and drop schemas of their own in it.
PG_TEST_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

# `make test-fast` sets LOGAGG_TEST_EXAMPLES=fast: the property tests run a fifth of their
# examples there (Hypothesis' own default too, by the profile in conftest.py); the full
# suite (`make test`, CI) runs them all.
FAST_EXAMPLES = os.environ.get("LOGAGG_TEST_EXAMPLES") == "fast"


def examples(full: int) -> int:
    """A property test's example count: `full` in the full suite, a fifth (at least 10) in
    the fast set, which is a quick loop, not the proof."""
    return max(10, full // 5) if FAST_EXAMPLES else full


# Seconds between Mosquitto's saves of its queue, from the project's config.
AUTOSAVE_S = int(
    re.search(r"^autosave_interval (\d+)", PROJECT_CONFIG.read_text(), re.MULTILINE)[1]  # type: ignore[index]
)


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


# What the `bridge_factory` fixture gives: starts a bridge (flags as keywords) and stops it after.
StartBridge = Callable[..., BridgeProcess]


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


def key(message: Message) -> tuple[str, str]:
    """(topic without the `logs/` prefix, event_id): the store's key of a published message."""
    topic, body = message
    return topic.removeprefix("logs/"), str(json.loads(body)["event_id"])


def distinct(stream: list[Message]) -> int:
    return len({key(m) for m in stream})


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


def assert_exactly_once(store_url: str, stream: list[Message]) -> None:
    """Every distinct event stored once and nothing else; the counters agree with the rows."""
    with closing(open_reader(parse_store_url(store_url))) as store:
        stored = store.events(topic=None, after=0, limit=len(stream) + 1)
        stats = store.stats()
    keys = [(e.topic, e.event_id) for e in stored]
    assert len(keys) == len(set(keys))
    assert set(keys) == {key(m) for m in stream}
    assert stats.unique_processed == len(stored)
    assert stats.received == stats.unique_processed + stats.duplicate_dropped + stats.rejected
    assert stats.rejected == 0
    # Every message was delivered at least once; redeliveries after a crash count as duplicates.
    assert stats.received >= len(stream)


def stream_with_kills(
    broker: Mosquitto,
    bridge_factory: StartBridge,
    store_url: str,
    stream: list[Message],
    kills: list[int],
) -> Stats:
    """Publish `stream` while SIGKILLing the bridge (and restarting it) each time the store
    has received `kills[i]` messages; then check every distinct event is stored once."""
    want = distinct(stream)
    bridge = bridge_factory()
    publisher = threading.Thread(target=publish_raw, args=(broker.port, stream))
    publisher.start()
    try:
        for at in kills:
            wait_for_stats(store_url, received_at_least(at), timeout=120)
            bridge.stop(signal.SIGKILL)
            bridge = bridge_factory()
    finally:
        publisher.join(timeout=180)
    assert not publisher.is_alive()
    stats = wait_for_stats(store_url, lambda s: s.unique_processed >= want, timeout=120)
    assert stats.unique_processed == want
    assert stats.rejected == 0
    # Copies in flight at each kill came back from the broker and were counted as duplicates.
    assert stats.duplicate_dropped >= len(stream) - want
    assert_exactly_once(store_url, stream)
    return stats


def event(event_id: str, topic: str = "app", **fields: Any) -> dict[str, Any]:
    """One event as POST /publish takes it; `fields` replace or add keys."""
    return {
        "topic": topic,
        "event_id": event_id,
        "timestamp": "2026-11-26T12:00:00+00:00",
        "source": "test",
        "payload": {"msg": f"hello {event_id}"},
        **fields,
    }


def nowhere() -> str:
    """A broker URL nothing listens on."""
    return f"mqtt://127.0.0.1:{free_port()}"


# What the `sidecar` fixture gives: starts a sidecar on a broker URL (settings as keywords).
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


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of a Prometheus scrape, keyed by (name, labels)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scrape: Samples, name: str, **labels: str) -> float:
    return scrape[(name, frozenset(labels.items()))]


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # DNS rebinding, for real: a name of the attacker's that resolves to this machine.
    "--host-resolver-rules=MAP rebind.test 127.0.0.1",
]
NO_CHROMIUM = "no /usr/bin/chromium: apt-get install chromium"


def open_dashboard(
    browser: Browser, client: httpx.Client, *, live: bool = True, **options: Any
) -> Page:
    """The dashboard, loaded without a script error or anything its CSP refused; with
    `live`, once the stream has shown a stored event."""
    page = browser.new_page(**options)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # Chromium reports what the Content-Security-Policy blocks as console errors.
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    answer = page.goto(str(client.base_url))
    assert answer is not None
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    page.wait_for_selector("[data-stat=received][data-value]")
    if live:
        page.wait_for_selector("#live li[data-seq]")
    assert errors == []
    return page


def compose(path: Path = COMPOSE) -> dict[str, Any]:
    """A compose file, parsed."""
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path.name} is not a mapping"
    return data


def logagg_cli(*args: str, env: Mapping[str, str | None] | None = None) -> Result:
    """`logagg ARGS` run in this process (stdout and stderr apart), where a subprocess is not
    the point; the signal handlers a command installs (`tail`) are put back after."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return CliRunner().invoke(app, list(args), env=env)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


# Search tests (issue 11): a small vocabulary so random queries hit; mixed case,
# diacritics, digits, MQTT topic levels, several UTC offsets.
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
START = NOW - timedelta(days=3)
TOPICS = ["auth.prod", "auth/dev", "a/b/c", "a/b", "a/x/c", "billing.eu"]
SOURCES = ["api-1", "api-2", "worker", "Édge"]
# A small vocabulary so random queries hit: mixed case, diacritics, digits, a prefix family.
WORDS = ["timeout", "Timeout", "time", "timer", "café", "CAFE", "résumé", "user42", "disk"]
WORDS += ["full", "login", "failed", "ok", "naïve", "straße", "strasse", "retry", "x"]
LEVELS = ["info", "info", "warn", "error"]
STATUSES: list[Any] = [200, 200, 503, 503.0, "503", 404, None]
OFFSETS = [UTC, timezone(timedelta(hours=1)), timezone(timedelta(hours=-7, minutes=-30))]
FILTERS = ["a/+/c", "a/#", "+/b", "a/b", "#", "auth.prod", "+", "a/+"]


def random_events(count: int, seed: int) -> list[Event]:
    rnd = random.Random(seed)
    events = []
    for i in range(count):
        when = START + timedelta(
            seconds=rnd.randrange(3 * 86400), microseconds=rnd.randrange(10**6)
        )
        payload: dict[str, Any] = {
            "msg": " ".join(rnd.choice(WORDS) for _ in range(rnd.randrange(1, 8))),
            "level": rnd.choice(LEVELS),
        }
        status = rnd.choice(STATUSES)
        if status is not None:
            payload["http"] = {"status": status, "path": f"/v1/{rnd.choice(WORDS)}"}
        if rnd.random() < 0.2:
            payload["tags"] = [rnd.choice(WORDS), {"deep": rnd.choice(WORDS)}]
        if rnd.random() < 0.1:
            payload["level"] = {"nested": "error"}
        events.append(
            Event(
                topic=rnd.choice(TOPICS),
                event_id=f"{rnd.choice(WORDS)}-{i}",
                timestamp=when.astimezone(rnd.choice(OFFSETS)),
                source=rnd.choice(SOURCES),
                payload=payload,
            )
        )
    return events


def query_params() -> st.SearchStrategy[list[tuple[str, str]]]:
    moment = st.integers(0, 3 * 86400).map(
        lambda s: (
            (START + timedelta(seconds=s)).astimezone(timezone(timedelta(hours=2))).isoformat()
        )
    )
    word = st.sampled_from([*WORDS, "tim*", "caf*", "nothing", "user", "42"])
    clause = st.one_of(
        word,
        word.map(lambda w: f"-{w.rstrip('*')}"),
        st.lists(st.sampled_from(WORDS), min_size=2, max_size=3).map(
            lambda ws: f'"{" ".join(ws)}"'
        ),
    )
    field = st.sampled_from(
        [
            "level:error",
            "level:info",
            "http.status:503",
            'http.status:"503"',
            "http.status:404",
            "http.path:/v1/disk",
            "nope.path:1",
            "level.nested:error",
            "http:200",
        ]
    )
    optional = {
        "topic": st.sampled_from(TOPICS + FILTERS),
        "since": moment,
        "until": moment,
        "source": st.sampled_from(SOURCES),
        "q": st.lists(clause, min_size=1, max_size=3).map(" ".join),
        "order": st.sampled_from(["asc", "desc"]),
        "after": st.integers(0, 300).map(str),
    }
    chosen = st.fixed_dictionaries({}, optional=optional).map(lambda d: list(d.items()))
    fields = st.lists(field, max_size=2).map(lambda fs: [("field", f) for f in fs])
    limit = st.integers(1, 60).map(lambda n: [("limit", str(n))])
    return st.tuples(chosen, fields, limit).map(lambda t: t[0] + t[1] + t[2])


def postgres(url: str) -> PostgresUrl:
    parsed = parse_store_url(url)
    assert isinstance(parsed, PostgresUrl)
    return parsed


def pg_connect(url: str | PostgresUrl, autocommit: bool = True) -> psycopg.Connection[Any]:
    """A session in the test schema of a postgresql://…?schema=NAME URL, behind the store's
    back."""
    target = postgres(url) if isinstance(url, str) else url
    assert target.schema is not None, "a test store has a schema of its own"
    options = f"-csearch_path={target.schema}"
    return psycopg.connect(target.conninfo, options=options, autocommit=autocommit)


def pg_execute(url: str, query: str) -> None:
    """Run one statement in the test schema, behind the store's back."""
    with pg_connect(url) as conn:
        conn.execute(query.encode())
