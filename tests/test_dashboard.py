"""The dashboard (`GET /`) in a real headless Chromium, against a real broker, bridge and sidecar.

The browser is Debian's `chromium` package, driven by Playwright (never `playwright install`,
which downloads a browser of its own).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from playwright.sync_api import Browser

from supervise.mosquitto import Mosquitto
from tests.helpers import (
    Sidecar,
    event,
    open_dashboard,
    publish_raw,
    wait_for_stats,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.broker,
]


@pytest.fixture
def client(client: httpx.Client, broker: Mosquitto, store_url: str) -> httpx.Client:
    """conftest's `client` over 6 events on three topics, 2 duplicates and 1 rejected
    message."""
    batch = [event(f"e{i}", topic) for i, topic in enumerate(["auth", "db", "auth", "web"] * 2)]
    assert client.post("/publish", json=batch[:6] + batch[:2]).json() == {"accepted": 8}
    publish_raw(broker.port, [("logs/auth", b"not json")])
    wait_for_stats(store_url, lambda s: s.received == 9 and s.uptime_s is not None)
    return client


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
    assert page.inner_text("#store") == "store ok"  # no cap, room on the disk
    assert "% of its limit" in page.inner_text("#broker-queue")
    assert page.inner_text("#reject-codes") == "not_json 1"
    rows = page.locator("#topics tr").all_inner_texts()
    assert [row.split() for row in rows] == [
        ["auth", "3", "1", "25.0%"],
        ["db", "2", "1", "33.3%"],
        ["web", "1", "0", "0.0%"],
    ]
    assert "not_json" in page.inner_text("#rejected")
    # Predicates as functions: a string would be eval'd, which the page's CSP forbids.
    page.wait_for_function("() => document.querySelectorAll('#live li[data-seq]').length === 6")
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
        "() => [...document.querySelectorAll('#live li[data-event-id]')]"
        ".map(li => li.dataset.eventId).join() === 'e5,e1'"
    )


def test_chart_starts_with_the_events_stored_before_the_page_opened(
    browser: Browser, client: httpx.Client
) -> None:
    """The chart reads the last minutes from the store on load, then keeps counting."""
    page = open_dashboard(browser, client, live=False)
    page.wait_for_selector("#chart[data-total='6']", timeout=5000)
    assert page.get_attribute("#line", "d")
    assert client.post("/publish", json=event("later", "web")).status_code == 200
    page.wait_for_selector("#chart[data-total='7']", timeout=5000)


# slow: a browser test of one detail; the fast set opens the dashboard once
@pytest.mark.slow
def test_event_times_show_their_date_unless_today(browser: Browser, client: httpx.Client) -> None:
    """An event from another day shows its date; one from today only its time."""
    page = open_dashboard(browser, client, locale="en-US", timezone_id="UTC")
    now = datetime.now(UTC).replace(microsecond=0)
    assert client.post("/publish", json=event("today", timestamp=now.isoformat())).is_success
    page.wait_for_selector("#live li[data-event-id=today]", timeout=5000)
    today = page.inner_text("#live li[data-event-id=today]")
    assert now.strftime("%H:%M:%S") in today
    assert now.strftime("%Y-%m-%d") not in today
    assert "2026-11-26 12:00:00" in page.inner_text("#live li[data-event-id=e0]")


# slow: a browser test of one detail; the fast set opens the dashboard once
@pytest.mark.slow
def test_topics_table_sorts_by_the_column_it_shows(
    browser: Browser, client: httpx.Client, store_url: str
) -> None:
    """Rows follow the marked column (stored, by default), not a total the table does not
    show; a click on a header sorts by it, a second click the other way round."""
    # The most messages but the fewest stored: first by the old hidden total.
    assert client.post("/publish", json=[event("n", "noisy")] * 5).is_success
    wait_for_stats(store_url, lambda s: s.received == 14)
    page = open_dashboard(browser, client, live=False)
    page.wait_for_selector("#topics tr[data-topic=noisy]")

    def shown() -> list[list[str]]:
        return [row.split() for row in page.locator("#topics tr").all_inner_texts()]

    def sorted_by() -> list[str]:
        return [
            f"{th.inner_text().split()[0]} {th.get_attribute('aria-sort')}"
            for th in page.locator("th[aria-sort]:not([aria-sort=none])").all()
        ]

    assert sorted_by() == ["stored descending"]
    assert shown() == [
        ["auth", "3", "1", "25.0%"],
        ["db", "2", "1", "33.3%"],
        ["noisy", "1", "4", "80.0%"],
        ["web", "1", "0", "0.0%"],
    ]
    page.click("th >> text=duplicates")
    assert sorted_by() == ["duplicates descending"]
    assert [row[0] for row in shown()] == ["noisy", "auth", "db", "web"]
    page.click("th >> text=duplicates")
    assert sorted_by() == ["duplicates ascending"]
    assert [row[0] for row in shown()] == ["web", "auth", "db", "noisy"]
    page.click("th >> text=dup %")
    assert [row[0] for row in shown()] == ["noisy", "db", "auth", "web"]
    page.click("th >> text=topic")
    assert sorted_by() == ["topic ascending"]
    assert [row[0] for row in shown()] == ["auth", "db", "noisy", "web"]


# slow: a browser test of one detail; the fast set opens the dashboard once
@pytest.mark.slow
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


ATTACKER_PAGE = b"<!doctype html><title>elsewhere</title><p>a page on another origin</p>"
# What a page may try without asking anyone: a text/plain POST (a CORS "simple" request,
# sent even though its answer stays opaque), then a JSON one (which needs a preflight).
ATTACK = """async (url) => {
  const event = (id) => JSON.stringify({topic: "csrf", event_id: id, source: "evil",
    timestamp: "2026-11-26T12:00:00Z", payload: {}});
  const simple = await fetch(url, {method: "POST", mode: "no-cors",
    headers: {"content-type": "text/plain"}, body: event("simple")}).then(r => r.type, String);
  const json = await fetch(url, {method: "POST", headers: {"content-type": "application/json"},
    body: event("json")}).then(r => r.status, e => "refused: " + e);
  return [simple, json];
}"""


@pytest.fixture
def elsewhere() -> Iterator[str]:
    """An HTTP server of another origin (localhost, another port) serving a plain page."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.end_headers()
            self.wfile.write(ATTACKER_PAGE)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, name="elsewhere")
    thread.start()
    try:
        yield f"http://localhost:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_page_from_another_origin_cannot_publish(
    browser: Browser, client: httpx.Client, store_url: str, elsewhere: str
) -> None:
    """CSRF: a page on another origin posts to /publish, as text/plain and as JSON; the sidecar
    refuses both (403, seen on the wire), and the store never gets either event."""
    page = browser.new_page()
    refused: list[int] = []
    page.on("response", lambda r: refused.append(r.status) if r.url.endswith("/publish") else None)
    page.goto(elsewhere)
    simple, json = page.evaluate(ATTACK, f"{client.base_url}/publish")
    assert simple == "opaque"  # the browser sent it, and shows the page nothing
    assert json.startswith("refused: TypeError")  # the preflight was refused
    assert 403 in refused
    assert 200 not in refused

    # DNS rebinding: the attacker's own name, pointed at 127.0.0.1, is not served.
    rebound = page.goto(f"http://rebind.test:{client.base_url.port}/")
    assert rebound is not None
    assert rebound.status == 400
    status = page.evaluate(
        "fetch('/publish', {method: 'POST', headers: {'content-type': 'application/json'},"
        " body: '{}'}).then(r => r.status)"
    )
    assert status == 400

    assert client.post("/publish", json=event("sentinel", "csrf")).json() == {"accepted": 1}
    stats = wait_for_stats(store_url, lambda s: s.received == 10)
    assert stats.topics["csrf"].unique_processed == 1
    stored = client.get("/events", params={"topic": "csrf"}).json()["events"]
    assert [e["event_id"] for e in stored] == ["sentinel"]
