"""`logagg tail` and `logagg stats`, run as commands against a running sidecar."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
import time
from contextlib import closing

import httpx
import pytest

import api.stream
from logagg.views import follow
from supervise.mosquitto import Mosquitto
from supervise.process import stop_process
from tests.helpers import (
    LOGAGG,
    Sidecar,
    event,
    logagg_cli,
    nowhere,
    publish_raw,
    wait_for_stats,
)

pytestmark = pytest.mark.broker


@pytest.fixture
def client(client: httpx.Client, broker: Mosquitto, store_url: str) -> httpx.Client:
    """conftest's `client` over 4 stored events on two topics, 1 duplicate and 1 rejected
    message."""
    batch = [event("e1", "auth.prod"), event("e2", "auth.prod"), event("e3", "db.prod")]
    batch += [event("e1", "auth.prod"), event("e4", "auth.prod", payload={"n": 4, "ok": True})]
    assert client.post("/publish", json=batch).json() == {"accepted": 5}
    publish_raw(broker.port, [("logs/auth.prod", b"not json")])
    wait_for_stats(store_url, lambda s: s.received == 6 and s.uptime_s is not None)
    return client


def test_stats_prints_the_counters(client: httpx.Client) -> None:
    done = logagg_cli("stats", "--api-url", str(client.base_url))
    assert done.exit_code == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["received", "6"]
    assert lines[1].split() == ["stored", "4", "unique", "(topic,", "event_id)"]
    assert lines[2].split() == ["duplicates", "1", "16.7%", "of", "received"]
    assert lines[3].split() == ["rejected", "1", "not_json", "1"]
    assert lines[4].startswith("bridge      up ")
    assert lines[5].startswith("broker      dropped 0, queued "), lines[5]
    assert [line.split() for line in lines[7:]] == [
        ["topic", "stored", "duplicates"],
        ["auth.prod", "3", "1"],
        ["db.prod", "1", "0"],
    ]


def test_stats_json_is_the_stats_endpoint(client: httpx.Client) -> None:
    done = logagg_cli("stats", "--json", "--api-url", str(client.base_url))
    printed, served = json.loads(done.stdout), client.get("/stats").json()
    assert printed.pop("uptime_s") > 0
    served.pop("uptime_s")
    assert printed.keys() == served.keys()
    # The broker's counters move with its $SYS updates between the two reads.
    assert {k: v for k, v in printed.items() if not k.startswith("broker_")} == {
        k: v for k, v in served.items() if not k.startswith("broker_")
    }


def test_stats_and_tail_send_the_token_from_the_environment(
    client: httpx.Client, broker: Mosquitto, sidecar: Sidecar
) -> None:
    token = "a-token-of-16-chars-or-more"
    locked = str(sidecar(broker.url, api_token=token).base_url)
    refused = logagg_cli("stats", "--api-url", locked, env={"LOGAGG_API_TOKEN": None})
    assert refused.exit_code == 1
    assert "answered 401" in refused.stderr
    assert "set LOGAGG_API_TOKEN" in refused.stderr
    for command in (["stats"], ["tail", "-n", "1"]):
        done = logagg_cli(*command, "--api-url", locked, env={"LOGAGG_API_TOKEN": token})
        assert done.exit_code == 0, done.stderr


def test_tail_prints_the_newest_events_one_a_line(client: httpx.Client) -> None:
    done = logagg_cli("tail", "-n", "2", "--api-url", str(client.base_url))
    assert done.exit_code == 0, done.stderr
    seqs = [e["seq"] for e in client.get("/events").json()["events"]]
    assert done.stdout.splitlines() == [
        f'{seqs[2]} 2026-11-26T12:00:00+00:00 db.prod test e3 {{"msg":"hello e3"}}',
        f'{seqs[3]} 2026-11-26T12:00:00+00:00 auth.prod test e4 {{"n":4,"ok":true}}',
    ]
    only_db = logagg_cli("tail", "--topic", "db.prod", "--api-url", str(client.base_url))
    assert [line.split()[4] for line in only_db.stdout.splitlines()] == ["e3"]


# A shell starts a background job (`cmd &` in a script) with SIGINT ignored: so does this.
AS_BACKGROUND_JOB = ["sh", "-c", 'trap "" INT; exec "$@"', "sh"]


@pytest.mark.parametrize(
    ("launch", "sig"),
    [
        pytest.param([], signal.SIGINT, id="ctrl-c"),
        # slow: a process each; the fast set keeps ctrl-c.
        pytest.param(
            AS_BACKGROUND_JOB, signal.SIGINT, id="sigint-in-background", marks=pytest.mark.slow
        ),
        pytest.param(
            AS_BACKGROUND_JOB, signal.SIGTERM, id="sigterm-in-background", marks=pytest.mark.slow
        ),
    ],
)
def test_tail_follow_prints_events_as_they_are_stored(
    client: httpx.Client, launch: list[str], sig: signal.Signals
) -> None:
    """`tail -f -n 1`: the newest event, then each new one within a second; SIGINT or SIGTERM
    ends it cleanly, even when it was started with SIGINT ignored."""
    args = [*launch, *LOGAGG, "tail", "-f", "-n", "1", "--api-url", str(client.base_url)]
    tail = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()

    # Reads until tail exits and closes its output.
    def pump() -> None:
        for line in tail.stdout or ():
            lines.put(line)

    reader = threading.Thread(target=pump)
    reader.start()
    try:
        assert lines.get(timeout=30).split()[4] == "e4"
        assert client.post("/publish", json=event("e5", "db.prod")).status_code == 200
        assert lines.get(timeout=2).split()[2:5] == ["db.prod", "test", "e5"]
    finally:
        # Killed after 10 s if the signal did nothing, so a failure cannot hang the suite.
        code = stop_process(tail, sig, timeout=10)
        reader.join(10)
        assert tail.stdout is not None
        tail.stdout.close()
    assert code == 0


def test_follow_resumes_where_an_ended_stream_stopped(
    client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streams end (so that none holds a shutdown for long); `follow` reconnects with the
    last seq it saw and misses or repeats nothing."""
    monkeypatch.setattr(api.stream, "STREAM_MAX_S", 0.5)
    with closing(follow(client, [], 1)) as events:
        assert next(events).event_id == "e4"
        for event_id in ("e5", "e6"):
            time.sleep(1)  # the stream in hand has ended
            assert client.post("/publish", json=event(event_id)).status_code == 200
            assert next(events).event_id == event_id


def test_tail_and_stats_say_when_the_sidecar_is_unreachable() -> None:
    url = nowhere().replace("mqtt://", "http://")
    for command in (["tail"], ["tail", "-f"], ["stats"]):
        done = logagg_cli(*command, "--api-url", url)
        assert done.exit_code == 1
        assert done.stderr.startswith(f"error: cannot reach the sidecar at {url}")
