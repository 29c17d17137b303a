"""The HTTP sidecar against a real Mosquitto and a real bridge: HTTP in, MQTT through, store out.

The app runs under uvicorn, as `logagg api` runs it, on a thread of the test process
(the `sidecar` fixture in conftest.py).
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from api.app import INVALID_LOG_PER_S
from api.models import BUSIEST_TOPICS
from bridge.event import BROKER_MAX_SEPARATORS, MAX_TOPIC_LEVELS, Event, check_prefix
from bridge.store import open_writer, parse_store_url
from publisher import PublisherSettings, run_publisher
from supervise.mosquitto import Mosquitto
from tests.helpers import (
    Sidecar,
    StartBridge,
    event,
    nowhere,
    publish_raw,
    wait_for_stats,
)


@pytest.mark.broker
def test_publish_single_and_batch_are_stored_by_the_bridge(
    client: httpx.Client, broker: Mosquitto, store_url: str
) -> None:
    """Events posted over HTTP reach the store through the broker; a resent one is a duplicate."""

    single = client.post("/publish", json=event("e1"))
    assert (single.status_code, single.json()) == (200, {"accepted": 1})
    batch = [event("e2"), event("e3", topic="db"), event("e1", source="resent")]
    answer = client.post("/publish", json=batch)
    assert (answer.status_code, answer.json()) == (200, {"accepted": 3})

    wait_for_stats(store_url, lambda s: s.received == 4 and s.uptime_s is not None)
    stats = client.get("/stats").json()
    assert stats["uptime_s"] >= 0
    # The broker_* fields are the broker's own counters: tests/test_broker_losses.py.
    mine = {k: v for k, v in stats.items() if k != "uptime_s" and not k.startswith("broker_")}
    assert mine == {
        "received": 4,
        "unique_processed": 3,
        "duplicate_dropped": 1,
        "rejected": 0,
        "topics": {
            "app": {"unique_processed": 2, "duplicate_dropped": 1},
            "db": {"unique_processed": 1, "duplicate_dropped": 0},
        },
        "topics_total": 2,
        "rejected_by_code": {},
        "retention": {
            "retention": "forever",
            "retention_s": None,
            "retention_topics": [],
            "dedup_horizon": "forever",
            "dedup_horizon_s": None,
            "oldest_received_at": mine["retention"]["oldest_received_at"],
            "events_expired": 0,
            "keys_held": 0,
            "keys_forgotten": 0,
            "late": 0,
        },
    }
    assert mine["retention"]["oldest_received_at"] is not None

    page = client.get("/events").json()
    stored = page["events"]
    assert [(e["topic"], e["event_id"], e["source"]) for e in stored] == [
        ("app", "e1", "test"),  # the first copy wins
        ("app", "e2", "test"),
        ("db", "e3", "test"),
    ]
    assert stored[1]["payload"] == {"msg": "hello e2"}
    assert stored[1]["timestamp"] == "2026-11-26T12:00:00+00:00"
    assert all(e["received_at"] for e in stored)
    assert page["next_after"] == stored[-1]["seq"]


@pytest.mark.broker
def test_publish_batch_larger_than_the_inflight_window(
    broker: Mosquitto,
    bridge_factory: StartBridge,
    sidecar: Sidecar,
    store_url: str,
) -> None:
    """The in-flight bound paces a batch without losing or stalling any of it."""
    bridge_factory()
    client = sidecar(broker.url, max_inflight=7)
    answer = client.post("/publish", json=[event(f"e{i}") for i in range(1000)])
    assert answer.json() == {"accepted": 1000}
    stats = wait_for_stats(store_url, lambda s: s.received == 1000)
    assert stats.unique_processed == 1000


@pytest.mark.broker
def test_concurrent_requests_share_one_connection(
    broker: Mosquitto, sidecar: Sidecar, caplog: pytest.LogCaptureFixture
) -> None:
    """Requests arriving together before any connection exists wait for one connect."""
    client = sidecar(broker.url)
    with (
        caplog.at_level(logging.INFO, logger="logagg.api.publishing"),
        ThreadPoolExecutor(10) as pool,
    ):
        answers = list(
            pool.map(
                lambda i: client.post("/publish", json=[event(f"c{i}-{j}") for j in range(50)]),
                range(10),
            )
        )
    assert [a.json() for a in answers] == [{"accepted": 50}] * 10
    connects = [r for r in caplog.records if r.getMessage().startswith("connected to broker")]
    assert len(connects) == 1


@pytest.mark.broker
def test_publish_invalid_item_names_index_and_field_and_publishes_nothing(
    client: httpx.Client, store_url: str
) -> None:
    """422 lists each failing item; the bridge, subscribed to everything, never sees the batch."""
    batch = [event(f"e{i}") for i in range(5)]
    batch[3]["timestamp"] = "2026-11-26T12:00:00"  # no offset
    del batch[1]["source"]

    answer = client.post("/publish", json=batch)
    assert answer.status_code == 422
    assert [(d["index"], d["field"]) for d in answer.json()["detail"]] == [
        (1, "source"),
        (3, "timestamp"),
    ]
    assert "timezone" in answer.json()["detail"][1]["message"]

    # Messages from one connection arrive in order: had the batch gone out, it would be
    # stored before this marker.
    assert client.post("/publish", json=event("marker")).status_code == 200
    wait_for_stats(store_url, lambda s: s.received >= 1)
    assert wait_for_stats(store_url, lambda s: True).received == 1
    assert [e["event_id"] for e in client.get("/events").json()["events"]] == ["marker"]


@pytest.mark.parametrize(
    ("body", "index", "field", "words"),
    [
        (b"{not json", None, None, "not JSON"),
        (b"[]", None, None, "empty batch"),
        (
            (
                b'{"topic":"t","event_id":"e","timestamp":"2026-11-26T12:00:00Z","source":"s",'
                b'"payload":{"x":NaN}}'
            ),
            None,
            None,
            "NaN is not JSON",
        ),
        (b'"just a string"', 0, None, "dictionary"),
        (b'{"topic":"a/#"}', 0, "topic", "must not contain #"),
        (b'[{"topic":"a\\tb"}]', 0, "topic", "control characters"),
        (
            b'[{"topic":"t","event_id":"e","timestamp":1,"source":"s","payload":{}}]',
            0,
            "timestamp",
            "ISO-8601",
        ),
    ],
)
def test_publish_refuses_malformed_bodies_with_422(
    sidecar: Sidecar, body: bytes, index: int | None, field: str | None, words: str
) -> None:
    """Bad bodies are refused before the broker is contacted (there is none here)."""
    client = sidecar(nowhere())
    answer = client.post("/publish", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 422
    first = answer.json()["detail"][0]
    assert (first["index"], first["field"]) == (index, field)
    assert words in first["message"]


def test_publish_refuses_large_events_with_422(sidecar: Sidecar) -> None:
    """An event the bridge would reject as too large is refused up front, by index."""
    client = sidecar(nowhere(), max_payload_bytes=1024)
    big = event("big", payload={"blob": "x" * 2000})
    answer = client.post("/publish", json=[event("small"), big])
    assert answer.status_code == 422
    assert [(d["index"], d["field"]) for d in answer.json()["detail"]] == [(1, "payload")]


def test_publish_refuses_too_large_bodies_and_batches_with_413(sidecar: Sidecar) -> None:
    """413 from Content-Length, from the bytes read (chunked, no length), and past max_batch."""
    client = sidecar(nowhere(), max_body_bytes=1024, max_batch=2)
    body = b"[" + b" " * 2000 + b"]"

    json_type = {"content-type": "application/json"}
    declared = client.post("/publish", content=body, headers=json_type)
    assert declared.status_code == 413
    assert "limit 1024" in declared.json()["detail"]

    chunked = client.post("/publish", content=iter([body[:1000], body[1000:]]), headers=json_type)
    assert chunked.status_code == 413

    batch = client.post("/publish", json=[event("a"), event("b"), event("c")])
    assert batch.status_code == 413
    assert batch.json() == {"detail": "batch has 3 events, limit 2"}


def test_publish_refuses_bodies_and_events_of_too_many_json_nodes(sidecar: Sidecar) -> None:
    """Dense JSON costs ~30 times its text once parsed: a body of too many nodes is a 413
    before it is parsed; an event the bridge would reject `too_complex` is a 422 by index."""
    client = sidecar(nowhere(), max_body_nodes=1000, max_event_nodes=100)
    dense = event("dense", payload={"a": [{}] * 100})  # 1 + 5 fields + "a" + 100 = 107 nodes
    answer = client.post("/publish", json=[event("small"), dense])
    assert answer.status_code == 422
    (error,) = answer.json()["detail"]
    assert (error["index"], error["field"]) == (1, "payload")
    assert error["message"].startswith("event holds more than 100 JSON nodes")
    # 1 array + 200 events of 7 nodes each.
    answer = client.post("/publish", json=[event(str(i)) for i in range(200)])
    assert answer.status_code == 413
    assert answer.json() == {"detail": "body holds 1401 JSON nodes, limit 1000"}


def test_publish_waits_for_its_share_of_body_bytes_then_answers_503(sidecar: Sidecar) -> None:
    """Bodies in progress hold their Content-Length of a shared budget: past it a request
    waits, unread, and gets 503 saying why; the budget comes back when a request ends."""
    client = sidecar(nowhere(), max_inflight_body_bytes=4096, publish_timeout_s=0.5)
    head = b"POST /publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    with socket.create_connection(("127.0.0.1", client.base_url.port or 80)) as slow:
        slow.sendall(head + b"Content-Length: 4000\r\n\r\n[")  # and nothing more
        time.sleep(0.3)
        answer = client.post("/publish", json=event("e1"))
        assert answer.status_code == 503
        assert answer.json() == {
            "detail": "busy: 4000 bytes of request bodies in progress, limit 4096; retry later",
            "accepted": 0,
        }
        assert answer.headers["retry-after"] == "1"
    time.sleep(0.3)
    answer = client.post("/publish", json=event("e1"))
    assert answer.status_code == 503
    assert "broker" in answer.json()["detail"]  # past the budget, on to the (absent) broker


def test_events_pages_stop_at_the_read_byte_budget(sidecar: Sidecar, store_url: str) -> None:
    """Large events come a few to a page (`read_max_bytes` of payloads); `next_after`
    leads through all of them, none missed or repeated."""
    writer = open_writer(parse_store_url(store_url))
    try:
        writer.record(
            [Event.model_validate(event(str(i), payload={"s": "x" * 1500})) for i in range(7)], []
        )
    finally:
        writer.close()
    client = sidecar(nowhere(), read_max_bytes=4096)
    seen: list[list[str]] = []
    after = 0
    while page := client.get("/events", params={"limit": 1000, "after": after}).json()["events"]:
        seen.append([e["event_id"] for e in page])
        after = page[-1]["seq"]
    assert seen == [["0", "1"], ["2", "3"], ["4", "5"], ["6"]]
    last = client.get("/events", params={"last": 1000}).json()["events"]
    assert [e["event_id"] for e in last] == ["5", "6"]


@pytest.mark.broker
def test_publish_answers_503_quickly_when_the_broker_is_down(
    broker: Mosquitto, sidecar: Sidecar
) -> None:
    """Unreachable at the start, or gone later: 503 fast; back again: reconnected on demand."""
    never = sidecar(nowhere(), publish_timeout_s=2)
    started = time.monotonic()
    answer = never.post("/publish", json=event("e1"))
    assert time.monotonic() - started < 3
    assert answer.status_code == 503
    assert answer.json()["accepted"] == 0
    assert "broker mqtt://127.0.0.1" in answer.json()["detail"]

    client = sidecar(broker.url, publish_timeout_s=2)
    assert client.post("/publish", json=event("e1")).status_code == 200
    broker.stop()
    started = time.monotonic()
    answer = client.post("/publish", json=event("e2"))
    assert time.monotonic() - started < 3
    assert (answer.status_code, answer.json()["accepted"]) == (503, 0)

    broker.start()
    assert client.post("/publish", json=event("e2")).json() == {"accepted": 1}


@pytest.mark.broker
def test_publish_broker_failing_mid_batch_says_how_many_then_resend_is_safe(
    broker: Mosquitto,
    bridge_factory: StartBridge,
    sidecar: Sidecar,
    store_url: str,
) -> None:
    """A broker stopped during a batch: 503 with the acknowledged count (or 200 if it was done
    first); resending the whole batch leaves every event stored exactly once."""
    bridge_factory()
    client = sidecar(broker.url, publish_timeout_s=5)
    batch = [event(f"e{i}") for i in range(10_000)]
    stopper = threading.Timer(0.3, broker.stop)
    stopper.start()
    try:
        first = client.post("/publish", json=batch)
    finally:
        stopper.join()
    if first.status_code == 503:
        assert 0 <= first.json()["accepted"] < len(batch)
    else:
        assert first.json() == {"accepted": len(batch)}

    # The broker keeps the bridge's session across its restart: no need to wait for the bridge.
    broker.start()
    assert client.post("/publish", json=batch).json() == {"accepted": len(batch)}
    stats = wait_for_stats(store_url, lambda s: s.unique_processed == len(batch))
    assert stats.rejected == 0
    assert stats.received >= len(batch)


@pytest.mark.broker
def test_healthz_ok_then_names_the_broker_when_it_stops(
    broker: Mosquitto,
    bridge_factory: StartBridge,
    sidecar: Sidecar,
    store_url: str,
) -> None:
    bridge_factory()
    wait_for_stats(store_url, lambda s: s.uptime_s is not None)
    client = sidecar(broker.url, publish_timeout_s=2)
    deadline = time.monotonic() + 10
    # The broker's counters come on a connection of their own, a moment after start.
    while (healthy := client.get("/healthz")).json()["broker_queue"] == "unknown":
        assert time.monotonic() < deadline, healthy.json()
        time.sleep(0.1)
    assert (healthy.status_code, healthy.json()) == (
        200,
        {"store": "ok", "broker": "ok", "bridge": "ok", "broker_queue": "ok"},
    )

    broker.stop()
    sick = client.get("/healthz")
    assert sick.status_code == 503
    assert sick.json()["store"] == "ok"
    assert sick.json()["broker"].startswith(f"broker mqtt://127.0.0.1:{broker.port}")


def test_healthz_and_reads_are_503_without_a_store(sidecar: Sidecar) -> None:
    """Before any bridge created the store, reads say so clearly instead of failing."""
    client = sidecar(nowhere(), publish_timeout_s=2)
    health = client.get("/healthz")
    assert health.status_code == 503
    assert "does not exist yet" in health.json()["store"]
    assert "Connection refused" in health.json()["broker"]
    for path in ("/stats", "/stats/rate", "/events", "/events/histogram", "/rejected"):
        answer = client.get(path)
        assert answer.status_code == 503
        assert "does not exist yet" in answer.json()["detail"]


@pytest.mark.broker
def test_events_paging_with_after_and_topic_filter(
    broker: Mosquitto,
    bridge_factory: StartBridge,
    sidecar: Sidecar,
    store_url: str,
) -> None:
    bridge_factory()
    client = sidecar(broker.url, read_limit_max=50)
    sent = [event(f"e{i}", topic="a" if i % 3 else "b") for i in range(9)]
    assert client.post("/publish", json=sent).json() == {"accepted": 9}
    wait_for_stats(store_url, lambda s: s.unique_processed == 9)

    seen: list[dict[str, Any]] = []
    after = 0
    while True:
        page = client.get("/events", params={"limit": 4, "after": after}).json()
        if not page["events"]:
            assert page["next_after"] is None
            break
        assert len(page["events"]) <= 4
        seen += page["events"]
        after = page["next_after"]
    assert [e["event_id"] for e in seen] == [e["event_id"] for e in sent]
    seqs = [e["seq"] for e in seen]
    assert seqs == sorted(set(seqs))

    only_b = client.get("/events", params={"topic": "b", "limit": 2}).json()
    rest = client.get("/events", params={"topic": "b", "after": only_b["next_after"]}).json()
    assert [e["event_id"] for e in only_b["events"] + rest["events"]] == ["e0", "e3", "e6"]

    for bad in (0, 51):
        assert client.get("/events", params={"limit": bad}).status_code == 422
    assert client.get("/events", params={"after": -1}).status_code == 422


@pytest.mark.broker
def test_rejected_shows_a_malformed_mqtt_message_with_its_reason(
    client: httpx.Client, broker: Mosquitto, store_url: str
) -> None:
    publish_raw(broker.port, [("logs/x", b"not json")])
    wait_for_stats(store_url, lambda s: s.rejected == 1)

    page = client.get("/rejected").json()
    (row,) = page["rejected"]
    assert (row["code"], row["mqtt_topic"], row["body"]) == ("not_json", "logs/x", "not json")
    assert row["reason"].startswith("body is not JSON")
    assert row["received_at"]
    assert page["next_after"] == row["seq"]
    assert client.get("/rejected", params={"after": row["seq"]}).json() == {
        "rejected": [],
        "next_after": None,
    }
    assert client.get("/stats").json()["rejected_by_code"] == {"not_json": 1}


def test_openapi_documents_the_publish_body_and_responses(sidecar: Sidecar) -> None:
    client = sidecar(nowhere())
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    publish = schema["paths"]["/publish"]["post"]
    body = publish["requestBody"]["content"]["application/json"]["schema"]
    assert body["anyOf"][1]["maxItems"] == 10_000
    assert set(publish["responses"]) == {"200", "413", "415", "422", "503"}
    assert "StoredEvent" in schema["components"]["schemas"]


@pytest.mark.broker
def test_publisher_via_http_end_to_end(client: httpx.Client, store_url: str) -> None:
    """`logagg publish --via http` through the real sidecar and bridge: exact counts."""
    summary = run_publisher(
        PublisherSettings(
            via="http", api_url=str(client.base_url), count=3000, dup_ratio=0.25, seed=5
        )
    )
    assert (summary.sent, summary.distinct) == (3000, 2250)
    stats = wait_for_stats(store_url, lambda s: s.received >= 3000)
    assert (stats.unique_processed, stats.duplicate_dropped) == (2250, 750)


def test_reads_refuse_impossible_cursors_and_topics_with_422(sidecar: Sidecar) -> None:
    """Found by schemathesis: a cursor past 64 bits reached SQLite and overflowed (500).
    Cursors and topic filters are checked first, so no store is needed here."""
    client = sidecar(nowhere())
    too_far = str(2**63)
    for path, params in (
        ("/events", {"after": too_far}),
        ("/rejected", {"after": too_far}),
        ("/stats/rate", {"after": too_far}),
        ("/stats/rate", {"seconds": "0"}),
        ("/events/stream", {"after": too_far}),
        ("/events", {"topic": "a\x00b"}),
        ("/events", {"topic": "a/#/b"}),
        ("/events", {"topic": "x" * 201}),
    ):
        assert client.get(path, params=params).status_code == 422, (path, params)
    stream = client.get("/events/stream", headers={"last-event-id": too_far})
    assert stream.status_code == 422


# --- Issue #9 item 4: nothing the broker refuses reaches the shared connection -------------


@pytest.mark.broker
def test_topic_the_broker_would_refuse_fails_only_its_own_batch(
    client: httpx.Client, broker: Mosquitto, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A topic of 200 `/` (Mosquitto drops a connection that publishes it) is a 422 naming
    it, before anything of its batch is published; a batch sent at the same moment by
    another client is accepted whole, on the same connection."""
    bad = [*(event(f"a-{i}") for i in range(500)), event("a-bad", topic="/" * 200)]
    good = [event(f"b-{i}") for i in range(500)]
    with (
        caplog.at_level(logging.INFO, logger="logagg.api.publishing"),
        ThreadPoolExecutor(2) as pool,
    ):
        refused, accepted = pool.map(lambda batch: client.post("/publish", json=batch), [bad, good])
    assert refused.status_code == 422
    [error] = refused.json()["detail"]
    assert (error["index"], error["field"]) == (500, "topic")
    assert "201 levels" in error["message"]
    assert accepted.json() == {"accepted": 500}
    assert client.post("/publish", json=event("after")).json() == {"accepted": 1}
    connects = [r for r in caplog.records if r.getMessage().startswith("connected to broker")]
    assert len(connects) == 1, "the shared connection was lost"

    stats = wait_for_stats(store_url, lambda s: s.received == 501)
    assert (stats.unique_processed, stats.duplicate_dropped, stats.rejected) == (501, 0, 0)
    stored = client.get("/events", params={"limit": 1000}).json()["events"]
    assert {e["event_id"] for e in stored} == {*(e["event_id"] for e in good), "after"}


@pytest.mark.broker
def test_topic_limits_are_mosquittos(broker: Mosquitto, sidecar: Sidecar) -> None:
    """BROKER_MAX_SEPARATORS is what the real broker enforces; the deepest valid topic under
    the deepest valid prefix is published and acknowledged."""
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    dropped = threading.Event()
    client.on_disconnect = lambda *_: dropped.set()
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        ok = client.publish("a" + "/" * BROKER_MAX_SEPARATORS, b"{}", qos=1)
        ok.wait_for_publish(10)
        assert ok.is_published()
        assert not dropped.is_set()
        refused = client.publish("a" + "/" * (BROKER_MAX_SEPARATORS + 1), b"{}", qos=1)
        assert dropped.wait(10), "the broker kept the connection"
        assert not refused.is_published()
    finally:
        client.disconnect()
        client.loop_stop()

    prefix = "p/" * (BROKER_MAX_SEPARATORS - MAX_TOPIC_LEVELS + 1)
    deepest = "t/" * (MAX_TOPIC_LEVELS - 1) + "t"
    api = sidecar(broker.url, topic_prefix=prefix)
    assert api.post("/publish", json=event("deep", topic=deepest)).json() == {"accepted": 1}
    too_deep = api.post("/publish", json=event("deeper", topic=deepest + "/t"))
    assert too_deep.status_code == 422
    with pytest.raises(ValueError, match="levels, limit"):
        check_prefix(prefix + "p/")


@pytest.mark.broker
def test_stats_lists_the_busiest_topics_and_counts_them_all(
    client: httpx.Client, broker: Mosquitto, store_url: str
) -> None:
    """/stats lists the BUSIEST_TOPICS busiest (the dashboard polls it), `topics_total` counts
    every topic, `?topics=all` lists them all; /metrics labels the same topics."""
    # Topic t<i> gets i % 7 + 1 events: a ranking with ties, broken by name.
    messages = [
        (f"logs/t{i:03}", json.dumps(event(f"e{j}", f"t{i:03}")).encode())
        for i in range(120)
        for j in range(i % 7 + 1)
    ]
    publish_raw(broker.port, messages)
    wait_for_stats(store_url, lambda s: s.received == len(messages))
    everything = client.get("/stats", params={"topics": "all"}).json()
    assert (len(everything["topics"]), everything["topics_total"]) == (120, 120)
    ranked = list(everything["topics"])
    assert ranked == sorted(ranked, key=lambda t: (-(int(t[1:]) % 7 + 1), t))

    default = client.get("/stats").json()
    assert list(default["topics"]) == ranked[:BUSIEST_TOPICS]
    assert default["topics_total"] == 120
    assert default["received"] == everything["received"] == len(messages)
    assert list(client.get("/stats", params={"topics": 3}).json()["topics"]) == ranked[:3]
    assert client.get("/stats", params={"topics": 0}).json()["topics"] == {}
    for bad in ("-1", "some", "1.5"):
        assert client.get("/stats", params={"topics": bad}).status_code == 422, bad

    metrics = client.get("/metrics").text
    assert "logagg_topics 120.0" in metrics
    labelled = re.findall(r'logagg_topic_events_stored_total\{topic="(t\d+)"\}', metrics)
    assert sorted(labelled) == sorted(ranked[:BUSIEST_TOPICS])


@pytest.mark.broker
def test_bom_bodies_and_invisible_names_are_refused_alike_over_http_and_mqtt(
    client: httpx.Client, broker: Mosquitto, store_url: str
) -> None:
    """One rule on both roads: a BOM-prefixed body, and `auth\\u200b.prod` posing as
    `auth.prod`, are refused by the sidecar (422) and by the bridge (rejected), for the same
    reason; nothing of either is stored."""
    bom = "\ufeff".encode() + json.dumps(event("bom", "auth.prod")).encode()
    json_type = {"content-type": "application/json"}
    [http_bom] = client.post("/publish", content=bom, headers=json_type).json()["detail"]
    posing = client.post("/publish", json=event("zw", "auth\u200b.prod"))
    [http_posing] = posing.json()["detail"]
    assert (posing.status_code, http_posing["field"]) == (422, "topic")

    publish_raw(broker.port, [("logs/auth.prod", bom), ("logs/auth\u200b.prod", b"{}")])
    wait_for_stats(store_url, lambda s: s.rejected == 2)
    mqtt_bom, mqtt_posing = client.get("/rejected").json()["rejected"]
    assert mqtt_bom["reason"] == http_bom["message"]
    assert mqtt_bom["reason"].startswith("body starts with a byte order mark (U+FEFF)")
    assert mqtt_posing["reason"].startswith("topic: " + http_posing["message"])
    stats = client.get("/stats").json()
    assert (stats["received"], stats["unique_processed"]) == (2, 0)


@pytest.mark.parametrize(
    ("prefix", "topic", "send"),
    [("logs/", "logs/auth.prod", "auth.prod"), ("app/logs/", "app/logs/a/b", "a/b")],
)
def test_publish_refuses_a_topic_carrying_the_mqtt_prefix_and_says_to_drop_it(
    sidecar: Sidecar, prefix: str, topic: str, send: str
) -> None:
    """The sidecar adds the prefix: `logs/auth.prod` would be published on
    `logs/logs/auth.prod`, a topic of its own, so it is refused and the answer names the fix.
    A topic that merely contains the prefix further in is not a mistake."""
    client = sidecar(nowhere(), topic_prefix=prefix)
    answer = client.post("/publish", json=[event("ok", f"x/{topic}"), event("bad", topic)])
    assert answer.status_code == 422
    assert answer.json()["detail"] == [
        {
            "index": 1,
            "field": "topic",
            "message": f"starts with the MQTT topic prefix {prefix!r}, which the sidecar adds:"
            f" send {send!r}",
        }
    ]


@pytest.mark.parametrize(
    ("timestamp", "words"),
    [
        ("2026-12-01T14:02:00", "timezone info"),
        ("yesterday", "valid datetime"),
        (1764151200, "ISO-8601 string"),
    ],
)
def test_timestamp_errors_show_the_expected_form(
    sidecar: Sidecar, timestamp: object, words: str
) -> None:
    """Whatever is wrong with a timestamp, the answer shows a valid one to copy."""
    client = sidecar(nowhere())
    answer = client.post("/publish", json=event("t", timestamp=timestamp))
    assert answer.status_code == 422
    [error] = answer.json()["detail"]
    assert error["field"] == "timestamp"
    assert words in error["message"]
    assert "e.g. 2026-12-01T14:02:00Z or 2026-12-01T15:02:00+01:00" in error["message"]


def test_each_refused_publish_is_logged_with_its_reason_at_a_bounded_rate(
    sidecar: Sidecar, caplog: pytest.LogCaptureFixture
) -> None:
    """A client sending bad bodies learns why from the answer; the operator from the log,
    one line each up to INVALID_LOG_PER_S a second, then a count of the rest."""
    client = sidecar(nowhere())
    with caplog.at_level(logging.WARNING, logger="logagg.api"):
        codes = {
            client.post("/publish", json=event(str(i), "logs/auth.prod")).status_code
            for i in range(INVALID_LOG_PER_S + 5)
        }
        time.sleep(1.1)  # the next one starts a new second: the summary comes first
        client.post("/publish", json=event("late", "a\tb"))
    assert codes == {422}
    lines = [r.getMessage() for r in caplog.records if r.name == "logagg.api"]
    named = [line for line in lines if line.startswith("publish refused (422) from 127.0.0.1:")]
    assert len(named) == INVALID_LOG_PER_S + 1
    assert named[0].endswith(
        "[0] topic starts with the MQTT topic prefix 'logs/', which the sidecar adds:"
        " send 'auth.prod'"
    )
    assert "[0] topic Value error, must not contain #, +, NUL, control" in named[-1]
    assert "5 more publish bodies refused (422), not logged one by one" in lines
