"""Fixtures that start real processes on free ports and always stop them."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import settings
from playwright.sync_api import Browser, sync_playwright
from psycopg import sql

from api import ApiSettings
from bridge.store import parse_store_url
from supervise.mosquitto import Mosquitto, free_port
from tests.helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    FAST_EXAMPLES,
    NO_CHROMIUM,
    NO_MOSQUITTO,
    PG_TEST_URL,
    BridgeProcess,
    Sidecar,
    StartBridge,
    serving,
)

# Hypothesis' default example count for the property tests that set none (see `examples`).
if FAST_EXAMPLES:
    settings.register_profile("fast", max_examples=20)
    settings.load_profile("fast")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Without Mosquitto, the tests marked `broker` are skipped, saying why; the rest run."""
    if NO_MOSQUITTO is None:
        return
    for item in items:
        if item.get_closest_marker("broker") is not None:
            item.add_marker(pytest.mark.skip(reason=NO_MOSQUITTO))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto of our own with the project's config, on a free port."""
    if NO_MOSQUITTO is not None:
        pytest.skip(NO_MOSQUITTO)
    mosq = Mosquitto(free_port(), tmp_path / "mosquitto")
    mosq.start()
    yield mosq
    mosq.stop()


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store' / 'logagg.db'}"


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
def bridge_factory(broker: Mosquitto, store_url: str, tmp_path: Path) -> Iterator[StartBridge]:
    """Starts `logagg bridge` processes on `broker` and `store_url` (flags as keywords,
    `store=` for another store); every one is stopped after the test."""
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


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mounts a tmpfs of the given size (`mount -o size=…`: 4m, 64m) under `tmp_path`: a
    small disk that really fills up. Each is unmounted after the test (ask for it before
    the fixtures whose processes write there, so that they stop first); skipped, saying why,
    where mounting is not permitted (not root, no CAP_SYS_ADMIN)."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        where = tmp_path / f"disk-{len(mounted)}"
        where.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        # Lazily if a process still holds a file there: the mount goes when it lets go.
        if subprocess.run(["umount", str(where)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def sidecar(store_url: str) -> Iterator[Sidecar]:
    """Starts sidecars on `store_url`; every one is stopped after the test."""
    with ExitStack() as stack:

        def start(broker_url: str, **overrides: Any) -> httpx.Client:
            settings = ApiSettings(broker=broker_url, store=parse_store_url(store_url), **overrides)
            return stack.enter_context(serving(settings))

        yield start


@pytest.fixture
def client(broker: Mosquitto, bridge_factory: StartBridge, sidecar: Sidecar) -> httpx.Client:
    """A client of a sidecar on `broker`, with a bridge storing what arrives in `store_url`:
    HTTP in, MQTT through, store out."""
    bridge_factory()
    return sidecar(broker.url)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """Headless Chromium, launched once per module (3-5 s a launch under load). Module, not
    session, scope: while Playwright's sync API runs, the thread has a running event loop,
    so asyncio.run() fails in whatever test would follow on this worker. Without Debian's
    chromium the test is skipped, saying why."""
    if not CHROMIUM.exists():
        pytest.skip(NO_CHROMIUM)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def browser(chromium: Browser, sidecar: Sidecar) -> Iterator[Browser]:
    """The module's Chromium, with every page a test opens closed after it (each
    `new_page` has a context of its own: no cookie or storage is shared). Asks for `sidecar`
    so that the pages close (and drop their live streams) before any sidecar stops: uvicorn
    waits for open responses when shutting down."""
    yield chromium
    for context in chromium.contexts:
        context.close()


@pytest.fixture(scope="module")
def pg_module_url(postgres_reachable: None) -> Iterator[str]:
    """A PostgreSQL schema for this module's store, dropped afterwards."""
    schema = f"logagg_search_{uuid.uuid4().hex[:12]}"
    yield f"{PG_TEST_URL}{'&' if '?' in PG_TEST_URL else '?'}schema={schema}"
    with psycopg.connect(PG_TEST_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
