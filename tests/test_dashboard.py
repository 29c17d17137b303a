"""The dashboard (`GET /`) in a real headless Chromium, against a real broker, bridge and sidecar.

The browser is Debian's `chromium` package, driven by Playwright (never `playwright install`,
which downloads a browser of its own).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from logagg.mosquitto import Mosquitto
from tests.conftest import BridgeProcess, Sidecar, publish_raw, wait_for_stats
from tests.test_api import event

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
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.broker,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="no /usr/bin/chromium: apt-get install chromium"
    ),
]


@pytest.fixture
def browser(sidecar: Sidecar) -> Iterator[Browser]:
    """Headless Chromium; asks for `sidecar` so that it closes (and drops its live streams)
    before any sidecar stops: uvicorn waits for open responses when shutting down."""
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def client(
    broker: Mosquitto,
    bridge_factory: Callable[..., BridgeProcess],
    sidecar: Sidecar,
    store_url: str,
) -> httpx.Client:
    """A sidecar over 6 events on three topics, 2 duplicates and 1 rejected message."""
    bridge_factory()
    client = sidecar(broker.url)
    batch = [event(f"e{i}", topic) for i, topic in enumerate(["auth", "db", "auth", "web"] * 2)]
    assert client.post("/publish", json=batch[:6] + batch[:2]).json() == {"accepted": 8}
    publish_raw(broker.port, [("logs/auth", b"not json")])
    wait_for_stats(store_url, lambda s: s.received == 9 and s.uptime_s is not None)
    return client


def open_dashboard(browser: Browser, client: httpx.Client, **options: Any) -> Page:
    page = browser.new_page(**options)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(str(client.base_url))
    page.wait_for_selector("[data-stat=received][data-value]")
    assert errors == []
    return page


def test_dashboard_shows_the_stats_and_streams_new_events(
    browser: Browser, client: httpx.Client
) -> None:
    """The numbers on the page are /stats; a new event is in the live list within a second."""
    page = open_dashboard(browser, client, viewport={"width": 1280, "height": 900})
    stats = client.get("/stats").json()
    for name in ("received", "unique_processed", "duplicate_dropped", "rejected"):
        shown = page.get_attribute(f"[data-stat={name}]", "data-value")
        assert shown == str(stats[name]), name
        text = page.inner_text(f"[data-stat={name}]")
        assert int("".join(c for c in text if c.isdigit())) == stats[name]
    assert page.inner_text("#dup-ratio") == "22.2% of received"
    # The broker's own counters ($SYS, retained: read as soon as the sidecar subscribed).
    page.wait_for_selector("#broker-dropped[data-value='0']", timeout=5000)
    assert page.inner_text("#broker") == "broker queue ok"
    assert "% of its limit" in page.inner_text("#broker-queue")
    assert page.inner_text("#reject-codes") == "not_json 1"
    rows = page.locator("#topics tr").all_inner_texts()
    assert [row.split() for row in rows] == [
        ["auth", "3", "1", "25.0%"],
        ["db", "2", "1", "33.3%"],
        ["web", "1", "0", "0.0%"],
    ]
    assert "not_json" in page.inner_text("#rejected")
    page.wait_for_function("document.querySelectorAll('#live li[data-seq]').length === 6")
    assert page.inner_text("#stream") == "live"

    assert client.post("/publish", json=event("fresh", "web")).status_code == 200
    started = time.monotonic()
    page.wait_for_selector("#live li[data-event-id=fresh]", timeout=5000)
    assert time.monotonic() - started < 1.0
    newest = page.locator("#live li").first
    assert newest.get_attribute("data-event-id") == "fresh"
    assert "web" in newest.inner_text()

    page.click("#topics button >> text=db")
    page.wait_for_function(
        "[...document.querySelectorAll('#live li[data-event-id]')]"
        ".map(li => li.dataset.eventId).join() === 'e5,e1'"
    )


def test_dashboard_fits_a_phone(browser: Browser, client: httpx.Client) -> None:
    """At 390 px wide nothing scrolls sideways; the cards and lists stack."""
    page = open_dashboard(browser, client, viewport={"width": 390, "height": 844})
    page.wait_for_selector("#live li[data-seq]")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    cards = page.locator(".card").all()
    assert all((box := card.bounding_box()) and box["width"] <= 390 for card in cards)


def test_api_docs_render_offline(browser: Browser, sidecar: Sidecar, broker: Mosquitto) -> None:
    """/docs loads Swagger UI from the sidecar itself: every request the page makes stays on
    the sidecar (any other would fail here, with no internet), and the operations render."""
    client = sidecar(broker.url)
    page = browser.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(str(client.base_url.join("/docs")))
    page.wait_for_selector(".opblock-summary-path >> text=/publish", timeout=10_000)
    assert "logagg" in page.inner_text(".info .title")
    assert requested, "the page made no request"
    assert all(url.startswith(str(client.base_url)) for url in requested), requested
