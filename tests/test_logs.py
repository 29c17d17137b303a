"""Logs: readable lines or JSON lines on every command, and every duplicate accounted for."""

from __future__ import annotations

import json
import logging
import re
import time

import pytest
import typer

from bridge.consumer import duplicate_log, rejection_log
from bridge.store import open_reader, parse_store_url
from bridge.store.base import KEEP_ROW_BYTES
from logagg.cli import app
from supervise.mosquitto import Mosquitto
from tests.helpers import StartBridge, make_stream, publish_raw, wait_for_stats


def test_every_command_takes_log_format_and_log_level() -> None:
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    commands = list(group.commands.items())
    while commands:
        name, command = commands.pop()
        if isinstance(command, typer.core.TyperGroup):  # `logagg rejected export`
            commands += [(f"{name} {sub}", c) for sub, c in command.commands.items()]
            continue
        options = {option for param in command.params for option in param.opts}
        assert {"--log-format", "--log-level"} <= options, name


def test_duplicate_log_names_each_up_to_the_rate_then_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = duplicate_log(per_s=2)
    with caplog.at_level(logging.INFO, logger="logagg.bridge"):
        log([("t", "a"), ("t", "b"), ("t", "c")])
        log([("u", "d"), ("u", "e")])
        log.flush()
        log.flush()  # nothing more to say
    assert caplog.messages == [
        "duplicate dropped: topic=t event_id=a",
        "duplicate dropped: topic=t event_id=b",
        "3 more duplicates dropped, not logged one by one",
    ]


def test_rejection_log_names_each_up_to_the_rate_then_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = rejection_log(per_s=1)
    with caplog.at_level(logging.INFO, logger="logagg.bridge"):
        log([("logs/a", "not JSON", "not_json"), ("logs/b", "not JSON", "not_json")])
        log.flush()
    assert caplog.messages == [
        "rejected message on logs/a: not JSON (not_json)",
        "1 more messages rejected, not logged one by one",
    ]
    assert caplog.records[0].levelno == logging.WARNING


@pytest.mark.broker
def test_bridge_rejection_flood_on_long_topics_is_bounded_in_store_and_log(
    broker: Mosquitto,
    bridge_factory: StartBridge,
    store_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """300 messages on 60 KB topics: each is counted and kept, cut to KEEP_ROW_BYTES; the
    log names 20 a second and counts the rest, so it grows by kilobytes, not 36 MB."""
    monkeypatch.setenv("LOGAGG_REJECTION_LOG_PER_S", "20")
    bridge = bridge_factory()
    topic = "logs/" + "t" * 60_000
    publish_raw(broker.port, [(topic, b'{"event_id": "x"}')] * 300)
    stats = wait_for_stats(store_url, lambda s: s.received == 300)
    assert (stats.rejected, stats.unique_processed) == (300, 0)
    bridge.stop()
    store = open_reader(parse_store_url(store_url))
    try:
        rows = store.rejected(after=0, limit=1000)
    finally:
        store.close()
    assert len(rows) == 300
    for row in rows:
        assert row.mqtt_topic.endswith(f"[{len(topic)} bytes in all]")
        assert sum(len(t.encode()) for t in (row.mqtt_topic, row.reason, row.body)) <= (
            KEEP_ROW_BYTES
        )
    log = bridge.output()
    named = log.count("rejected message on logs/ttt")
    summarised = sum(map(int, re.findall(r"(\d+) more messages rejected", log)))
    assert named + summarised == 300
    assert summarised > 0
    assert len(log.encode()) < 100_000


@pytest.mark.broker
def test_bridge_json_logs_name_duplicates_and_summarise_when_idle(
    broker: Mosquitto,
    bridge_factory: StartBridge,
    store_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--log-format json`: one object a line. Past the rate limit, the count of unnamed
    duplicates is logged within a couple of seconds even if no message follows."""
    monkeypatch.setenv("LOGAGG_DUPLICATE_LOG_PER_S", "1")
    bridge = bridge_factory(log_format="json")
    (message,) = make_stream(1, 0.0)
    event_id = json.loads(message[1])["event_id"]
    publish_raw(broker.port, [message] * 5)
    wait_for_stats(store_url, lambda s: s.received == 5)
    deadline = time.monotonic() + 10
    while "more duplicates dropped" not in bridge.output():
        assert time.monotonic() < deadline, bridge.output()
        time.sleep(0.1)
    entries = [json.loads(line) for line in bridge.output().splitlines()]
    assert {"ts", "level", "logger", "message"} <= entries[0].keys()
    messages = [e["message"] for e in entries if e["logger"] == "logagg.bridge"]
    assert f"duplicate dropped: topic=t0 event_id={event_id}" in messages
    assert "3 more duplicates dropped, not logged one by one" in messages
