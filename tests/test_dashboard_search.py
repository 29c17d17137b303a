"""The dashboard's search (issue 11) in a real headless Chromium, on a real sidecar reading a
real store (SQLite and PostgreSQL): words typed find their events and their histogram, the
URL reproduces the search, a histogram bar narrows the range, refusals show at their field."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit
from zoneinfo import ZoneInfo

import httpx
import pytest
from playwright.sync_api import Browser, Page

from bridge.event import Event
from bridge.store import open_writer, parse_store_url
from tests.helpers import Sidecar, nowhere, open_dashboard, random_events

pytestmark = [pytest.mark.browser]


def recent() -> datetime:
    """A few seconds ago, and 2 s past a multiple of 5 s: never at the start of a histogram
    bucket."""
    now = datetime.now(UTC).replace(microsecond=0)
    return now - timedelta(seconds=now.second % 5 + 3)


# The events' "now", taken again as each test starts (`fresh_now`): taken once at import, a
# test run more than 10 minutes later (a slow run) found its oldest event out of the hour.
NOW = recent()
# (event_id, minutes ago, topic, message): three "timeout"s, spread over the last hour.
EVENTS = [
    ("t1", 50, "auth/prod", "login timeout for user 7"),
    ("ok1", 45, "auth/prod", "login succeeded"),
    ("t2", 30, "db/prod", "query TIMEOUT on orders"),
    ("ok2", 20, "web/prod", "GET /orders 200"),
    ("t3", 5, "auth/eu/prod", "timeouts: 3 in a row"),
    ("old", 3 * 24 * 60, "auth/prod", "timeout long ago"),
]


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test on each store: the sidecar reads this module's `store_url`."""
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture(autouse=True)
def fresh_now(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(globals(), "NOW", recent())


def stamped(event_id: str, minutes_ago: int, topic: str, msg: str, **payload: Any) -> Event:
    return Event(
        topic=topic,
        event_id=event_id,
        timestamp=NOW - timedelta(minutes=minutes_ago),
        source="api-1" if topic.startswith("auth") else "api-2",
        payload={"msg": msg, "level": "error" if "timeout" in msg.lower() else "info", **payload},
    )


def filled(sidecar: Sidecar, store_url: str, events: list[Event]) -> httpx.Client:
    """A sidecar over a store holding `events` (recorded straight into it: reads need no
    broker), one at a time, so that their seqs follow the list (a store may order a batch)."""
    store = open_writer(parse_store_url(store_url))
    try:
        for one in events:
            store.record([one], [])
    finally:
        store.close()
    return sidecar(nowhere())


@pytest.fixture
def client(sidecar: Sidecar, store_url: str) -> httpx.Client:
    return filled(sidecar, store_url, [stamped(*row) for row in EVENTS])


def watched(page: Page) -> list[str]:
    """The page's script errors and what its CSP refused, from now on (a 4xx the page asked
    for is logged too: that one is left out)."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "console",
        lambda m: (
            errors.append(m.text)
            if m.type == "error" and "the server responded with a status of 4" not in m.text
            else None
        ),
    )
    return errors


def search(page: Page, preset: str | None = None, **fields: str) -> None:
    """Fill the search form's `fields` (by input id: q, topic, source, field), pick the time
    range `preset` ("" for any time), and press Enter."""
    for name, value in fields.items():
        page.fill(f"#s-{name}", value)
    if preset is not None:
        page.select_option("#s-range", preset)
    page.press("#s-q", "Enter")


def hash_query(page: Page) -> dict[str, list[str]]:
    """The search in the page's URL."""
    fragment = urlsplit(page.url).fragment
    assert fragment.startswith("search?"), page.url
    return parse_qs(fragment.removeprefix("search?"))


def shown(page: Page) -> list[str]:
    """The event_ids of the results, in the order shown, once the search has answered."""
    page.wait_for_function(
        "() => document.querySelector('#results').dataset.shown !== undefined"
        " || document.querySelector('#search [aria-invalid]')"
    )
    return [
        str(item.get_attribute("data-event-id"))
        for item in page.locator("#results li[data-event-id]").all()
    ]


def bars(page: Page) -> list[tuple[str, int, str]]:
    """The histogram: (bucket start, count, accessible label) per bar."""
    return [
        (
            str(bar.get_attribute("data-start")),
            int(str(bar.get_attribute("data-count"))),
            str(bar.get_attribute("aria-label")),
        )
        for bar in page.locator("#histogram button").all()
    ]


def test_typed_words_find_their_events_and_histogram_and_the_url_reproduces_them(
    browser: Browser, client: httpx.Client
) -> None:
    """The word timeout, in the last day, finds the two events that say it (any case; not
    "timeouts"), newest first, the word marked; the histogram counts them; the URL, opened
    fresh, shows the same (a time from another day with its date); back returns to the
    search before."""
    page = open_dashboard(browser, client, live=False, timezone_id="UTC")
    errors = watched(page)
    search(page, preset="24h", q="timeout")
    page.wait_for_selector("#histogram[data-total='2']")
    assert shown(page) == ["t2", "t1"]
    assert [m.lower() for m in page.locator("#results mark").all_text_contents()] == ["timeout"] * 4
    assert "2 of 2 matching shown" in page.inner_text("#search-summary")
    counted = bars(page)
    assert sum(count for _, count, _ in counted) == 2
    assert len(counted) >= 20
    assert all(re.fullmatch(rf"{n} events? from .+ to .+", label) for _, n, label in counted)
    assert hash_query(page) == {"q": ["timeout"], "since": ["24h"]}

    search(page, preset="", q="timeout*")
    page.wait_for_selector("#histogram[data-total='4']")
    assert shown(page) == ["old", "t3", "t2", "t1"]

    again = browser.new_page(timezone_id="UTC")
    again_errors = watched(again)
    again.goto(page.url)
    again.wait_for_selector("#histogram[data-total='4']")
    assert shown(again) == ["old", "t3", "t2", "t1"]
    old = NOW - timedelta(days=3)
    assert old.strftime("%Y-%m-%d %H:%M:%S") in again.inner_text("#results [data-event-id=old]")
    assert NOW.strftime("%Y-%m-%d") not in again.inner_text("#results [data-event-id=t3]")
    assert again.input_value("#s-q") == "timeout*"
    assert again.input_value("#s-range") == ""
    assert bars(again) == bars(page)

    page.go_back()
    page.wait_for_selector("#histogram[data-total='2']")
    assert shown(page) == ["t2", "t1"]
    assert page.input_value("#s-q") == "timeout"
    assert page.input_value("#s-range") == "24h"
    assert errors == again_errors == []


# slow: a browser test; the fast set keeps the search's main path (typed words)
@pytest.mark.slow
def test_a_histogram_bar_narrows_the_range_to_its_bucket(
    browser: Browser, client: httpx.Client
) -> None:
    """Clicking the bar that holds one event searches its bucket alone: the custom range is
    that bucket, shown in local time, and the URL says so; back returns to the hour."""
    page = open_dashboard(browser, client, live=False, timezone_id="Europe/Berlin")
    errors = watched(page)
    search(page, preset="1h")
    page.wait_for_selector("#histogram[data-total='5']")
    assert shown(page) == ["t3", "ok2", "t2", "ok1", "t1"]
    interval = page.get_attribute("#histogram", "data-interval")
    assert interval == "1m"
    t2 = (NOW - timedelta(minutes=30)).replace(second=0)
    page.click(f"#histogram button[data-start='{t2.isoformat().replace('+00:00', 'Z')}']")
    page.wait_for_selector("#histogram[data-total='1']")
    assert shown(page) == ["t2"]
    assert page.input_value("#s-range") == "custom"
    berlin = t2.astimezone(ZoneInfo("Europe/Berlin"))
    # A datetime-local input leaves out seconds that are 0.
    assert page.input_value("#s-since") == berlin.strftime("%Y-%m-%dT%H:%M")
    assert page.input_value("#s-until") == (berlin + timedelta(minutes=1)).strftime(
        "%Y-%m-%dT%H:%M"
    )
    assert hash_query(page) == {
        "since": [berlin.isoformat()],
        "until": [(berlin + timedelta(minutes=1)).isoformat()],
    }

    page.go_back()
    page.wait_for_selector("#histogram[data-total='5']")
    assert page.input_value("#s-range") == "1h"
    assert len(shown(page)) == 5

    # A range from t1 on, typed into the URL: its first 5 s bucket starts 2 s before t1, its
    # bar searches from t1 to the end of the bucket.
    t1 = (NOW - timedelta(minutes=50)).astimezone(ZoneInfo("Europe/Berlin"))
    typed = {"since": t1.isoformat(), "until": (t1 + timedelta(minutes=5)).isoformat()}
    page.goto(f"{client.base_url}/#search?{urlencode(typed)}")
    page.wait_for_selector("#histogram[data-total='1'][data-interval='5s']")
    page.click("#histogram button:enabled")
    page.wait_for_selector("#histogram[data-interval='1s']")
    assert hash_query(page) == {
        "since": [t1.isoformat()],
        "until": [(t1.replace(second=t1.second // 5 * 5) + timedelta(seconds=5)).isoformat()],
    }
    assert shown(page) == ["t1"]
    assert errors == []


# slow: a browser test; the fast set keeps the search's main path (typed words)
@pytest.mark.slow
def test_a_refused_filter_is_shown_at_its_field(browser: Browser, client: httpx.Client) -> None:
    """A topic filter with `#` before its last level: the API's reason next to the topic
    input, marked invalid; a corrected one finds the events under it."""
    page = open_dashboard(browser, client, live=False)
    errors = watched(page)
    search(page, topic="auth/#/prod")
    page.wait_for_selector("#s-topic[aria-invalid=true]")
    assert "# must be the last level" in page.inner_text("#s-topic-error")
    assert page.inner_text("#s-q-error") == ""
    assert page.locator("#results li").count() == 0

    search(page, topic="auth/#")
    page.wait_for_selector("#histogram[data-total='4']")
    assert page.get_attribute("#s-topic", "aria-invalid") is None
    assert page.inner_text("#s-topic-error") == ""
    assert shown(page) == ["old", "t3", "ok1", "t1"]
    search(page, field="level:error", source="api-1")
    page.wait_for_selector("#histogram[data-total='3']")
    assert shown(page) == ["old", "t3", "t1"]
    assert errors == []


# slow: a browser test; the fast set keeps the search's main path (typed words)
@pytest.mark.slow
def test_results_page_on_and_payloads_expand(
    browser: Browser, sidecar: Sidecar, store_url: str
) -> None:
    """120 matches: 50 a page, "load older" twice, then no more. A payload's line starts
    shortly before the word found; it opens in full."""
    events = [
        stamped(f"e{i:03}", 1000 - i, "app", f"host {i} of the cluster says: disk full", n=i)
        for i in range(120)
    ]
    client = filled(sidecar, store_url, events)
    page = open_dashboard(browser, client, live=False)
    errors = watched(page)
    search(page, q="disk")
    page.wait_for_selector("#histogram[data-total='120']")
    assert shown(page) == [f"e{i:03}" for i in range(119, 69, -1)]
    assert page.inner_text("#s-more") == "Load older"
    for count in (100, 120):
        page.click("#s-more")
        page.wait_for_selector(f"#results[data-shown='{count}']")
    assert page.is_hidden("#s-more")
    assert shown(page)[-1] == "e000"
    last = page.locator("#results li[data-event-id=e000] details")
    line = last.locator("summary").inner_text()
    assert line.startswith("…")
    assert "of the cluster says: disk full" in line
    assert not last.locator("pre").is_visible()
    last.locator("summary").click()
    assert '"msg": "host 0 of the cluster' in last.locator("pre").inner_text()
    assert '"n": 0' in last.locator("pre").inner_text()

    page.select_option("#s-order", "asc")
    page.press("#s-q", "Enter")
    page.wait_for_selector("#results[data-shown='50'] li[data-event-id=e000]:first-child")
    assert shown(page) == [f"e{i:03}" for i in range(50)]
    assert page.inner_text("#s-more") == "Load newer"
    assert hash_query(page) == {"q": ["disk"], "order": ["asc"]}
    assert errors == []


def test_event_data_is_shown_as_text_never_as_html(
    browser: Browser, sidecar: Sidecar, store_url: str
) -> None:
    """Markup in every part of an event found is shown as the characters it is: no element of
    it is made, no script of it runs; the word searched is still marked."""
    markup = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
    hostile = Event(
        topic="<b>web</b>",
        event_id=f"<i>id</i>{markup}",
        timestamp=NOW,
        source=f"<u>src</u>{markup}",
        payload={"msg": f"hostile {markup}", "<em>key</em>": markup},
    )
    client = filled(sidecar, store_url, [hostile])
    page = open_dashboard(browser, client, live=False)
    errors = watched(page)
    search(page, q="hostile")
    page.wait_for_selector("#histogram[data-total='1']")
    item = page.locator("#results li").first
    made = item.evaluate("li => [...li.querySelectorAll('*')].map(e => e.localName).sort()")
    assert set(made) == {"details", "mark", "pre", "span", "summary"}
    assert page.evaluate("window.pwned") is None
    text = item.text_content() or ""
    for part in ("<b>web</b>", "<i>id</i><img src=x", "<u>src</u>", "<script>window.pwned=2"):
        assert part in text, part
    assert item.locator("mark").all_text_contents() == ["hostile", "hostile"]
    assert errors == []


# slow: a search made to run out of time; the fast set keeps the search's main path
@pytest.mark.slow
def test_a_search_past_the_time_limit_says_so(
    browser: Browser, sidecar: Sidecar, store_url: str
) -> None:
    """A field no event has reads every payload: with 1 ms allowed, the sidecar answers 503
    and the page shows its reason."""
    store = open_writer(parse_store_url(store_url))
    try:
        events = random_events(10_000, seed=3)
        for start in range(0, len(events), 1000):
            store.record(events[start : start + 1000], [])
    finally:
        store.close()
    client = sidecar(nowhere(), query_timeout_s=0.001)
    answer = client.get("/events", params={"field": "nowhere:1"})
    assert answer.status_code == 503
    page = browser.new_page()
    page.goto(f"{client.base_url}/#search?field=nowhere%3A1")
    page.wait_for_selector("#search-error:not(:empty)")
    assert page.inner_text("#search-error") == "The search was stopped: " + answer.json()["detail"]
    assert page.input_value("#s-field") == "nowhere:1"


# slow: a layout check in a second viewport; the fast set keeps the search's main path
@pytest.mark.slow
def test_search_fits_a_phone(browser: Browser, client: httpx.Client) -> None:
    """At 390 px wide, with results and a histogram, nothing scrolls sideways. (A span of
    time typed in the URL, not a preset, is offered as one.)"""
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(f"{client.base_url}/#search?q=timeout*&since=90m")
    page.wait_for_selector("#histogram[data-total='3']")
    assert page.input_value("#s-range") == "90m"
    assert page.inner_text("#s-range option:checked") == "last 90m"
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    box = page.locator("#histogram").bounding_box()
    assert box is not None
    assert box["width"] <= 390
