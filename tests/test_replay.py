"""Replay (issue 12): exported events published again through a real Mosquitto into real
bridges on both stores. The round trip is exact, a replay into the original logagg is
all duplicates, an interrupted replay run again stores nothing twice, bad lines are named
and skipped."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from bridge.store import Stats, open_reader, parse_store_url
from supervise.mosquitto import Mosquitto
from tests.helpers import (
    LOGAGG,
    PG_TEST_URL,
    StartBridge,
    logagg_cli,
    publish_raw,
    random_events,
    wait_for_stats,
)

pytestmark = [pytest.mark.broker, pytest.mark.timeout(300)]

# Payloads with every kind of JSON value; timestamps in several offsets and precisions.
ODD = [
    (
        {"nested": {"a": [1, {"b": [None, True, False, {"c": []}]}], "d": {}}},
        "2026-12-01T10:00:00Z",
    ),
    (
        {"astral": "😀𝄞 \U0010fffd", "esc": 'q " b \\ nl \n tab \t bell \x07 \u2028 \u0001'},
        "2026-12-01T10:00:00.123456+05:30",
    ),
    ({"big": 2**80, "neg": -(2**70), "int64": 2**63 - 1, "zero": 0}, "2026-12-01T10:00:01-07:00"),
    ({"floats": [1.5, -0.25, 1e-300, 1.7976931348623157e308, 0.1]}, "2026-12-01T10:00:02.5+00:00"),
    ({"null": None, "eo": {}, "ea": [], "es": ""}, "2026-12-01T10:00:03+14:00"),
    (
        {"": "empty key", "ключ": "значение", "東京": ["渋谷"], "deep": [[[["x"]]]]},
        "2026-12-01T10:00:04.000001-12:00",
    ),
]
SINCE, UNTIL = "2026-11-30T00:00:00Z", "2026-12-02T00:00:00Z"

Key = tuple[str, str, str, str, str]


def second_url(kind: str, tmp_path: Path, name: str) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / name / 'logagg.db'}"
    return f"{PG_TEST_URL}?schema=logagg_replay_{name}_{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=["sqlite", "postgres"])
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The original store and a fresh one, of one kind (PostgreSQL schemas dropped after)."""
    if request.param == "postgres":
        request.getfixturevalue("postgres_reachable")
    made = [second_url(request.param, tmp_path, name) for name in ("original", "fresh")]
    yield made[0], made[1]
    if request.param == "postgres":
        with psycopg.connect(PG_TEST_URL, autocommit=True) as conn:
            for url in made:
                schema = url.rsplit("schema=", 1)[1]
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                )


def bodies() -> list[tuple[str, bytes]]:
    """600 random events and the odd ones, as MQTT messages."""
    messages = [
        (
            f"logs/{e.topic}",
            json.dumps(
                {
                    "event_id": e.event_id,
                    "timestamp": e.timestamp.isoformat(),
                    "source": e.source,
                    "payload": e.payload,
                }
            ).encode(),
        )
        for e in random_events(600, seed=12)
    ]
    messages += [
        (
            "logs/odd/types",
            json.dumps(
                {"event_id": f"odd-{i}", "timestamp": stamp, "source": "Édge", "payload": payload},
                ensure_ascii=False,
            ).encode(),
        )
        for i, (payload, stamp) in enumerate(ODD)
    ]
    return messages


def keys(ndjson: bytes) -> list[Key]:
    """(topic, event_id, timestamp, source, payload) of each exported line."""
    lines = [json.loads(line) for line in ndjson.split(b"\n")[:-1]]
    return [
        (
            e["topic"],
            e["event_id"],
            e["timestamp"],
            e["source"],
            json.dumps(e["payload"], sort_keys=True),
        )
        for e in lines
    ]


def stats(url: str) -> Stats:
    with closing(open_reader(parse_store_url(url))) as store:
        return store.stats()


def test_replay_round_trip_is_exact_and_all_duplicates_in_the_original(
    broker: Mosquitto, bridge_factory: StartBridge, urls: tuple[str, str], tmp_path: Path
) -> None:
    """A range exported from one logagg and replayed: a fresh store holds the same
    (topic, event_id, timestamp, source, payload) set, every JSON type and Unicode kept;
    the original, hearing the same replay, counts every event as a duplicate."""
    original, fresh = urls
    bridge_factory(store=original, client_id="original")
    messages = bodies()
    publish_raw(broker.port, messages)
    wait_for_stats(original, lambda s: s.unique_processed == len(messages))
    export = tmp_path / "range.ndjson"
    done = logagg_cli(
        "export", "--store", original, "--since", SINCE, "--until", UNTIL, "-o", str(export)
    )
    assert done.exit_code == 0, done.stderr
    exported = keys(export.read_bytes())
    assert 6 < len(exported) < len(messages)
    assert {k[1] for k in exported} >= {f"odd-{i}" for i in range(len(ODD))}

    bridge_factory(store=fresh, client_id="fresh")
    replayed = logagg_cli("replay", str(export), "--broker", broker.url, "--json")
    assert replayed.exit_code == 0, replayed.stderr
    summary = json.loads(replayed.stdout)
    assert (summary["sent"], summary["bad"], summary["lines"]) == (len(exported), 0, len(exported))

    after = wait_for_stats(fresh, lambda s: s.unique_processed == len(exported))
    assert after.duplicate_dropped == 0
    assert after.rejected == 0
    again = logagg_cli("export", "--store", fresh)
    assert again.exit_code == 0, again.stderr
    assert sorted(keys(again.stdout_bytes)) == sorted(exported)
    assert len(set(exported)) == len(exported)

    before = len(messages)
    seen = wait_for_stats(original, lambda s: s.duplicate_dropped == len(exported))
    assert seen.unique_processed == before
    assert seen.rejected == 0


def export_file(path: Path, count: int) -> set[tuple[str, str]]:
    """An export of `count` events written by hand, as `logagg export` writes them."""
    with path.open("w") as out:
        for i in range(count):
            line = {
                "seq": i + 1,
                "topic": f"replay/t{i % 7}",
                "event_id": f"r-{i}",
                "timestamp": "2026-12-01T12:00:00.000001+01:00",
                "source": "replay-test",
                "payload": {"i": i, "pad": "x" * 100},
                "received_at": "2026-12-01T11:00:00.000000+00:00",
            }
            out.write(json.dumps(line) + "\n")
    return {(f"replay/t{i % 7}", f"r-{i}") for i in range(count)}


# slow: interrupts a replay process and runs it again
@pytest.mark.slow
def test_replay_interrupted_then_run_again_stores_nothing_twice(
    broker: Mosquitto, bridge_factory: StartBridge, store_url: str, tmp_path: Path
) -> None:
    """Ctrl-C (SIGINT) prints the summary so far and exits 130; a SIGKILL stops it dead;
    run again to the end, every event is stored exactly once and the rest are counted
    duplicates."""
    count = 20_000
    export = tmp_path / "big.ndjson"
    wanted = export_file(export, count)
    bridge_factory()
    command = [*LOGAGG, "replay", str(export), "--broker", broker.url, "--rate", "3000"]

    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as first:
        wait_for_stats(store_url, lambda s: s.received >= 2000)
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=30)
    assert first.returncode == 130, err
    assert b"interrupted: run it again" in out
    sent = int(out.split(b"replayed ")[1].split(b" events")[0].replace(b",", b""))
    assert 2000 <= sent < count

    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as second:
        wait_for_stats(store_url, lambda s: s.received >= sent + 6000)
        second.kill()
        second.wait(30)

    last = logagg_cli("replay", str(export), "--broker", broker.url, "--json")
    assert last.exit_code == 0, last.stderr
    assert json.loads(last.stdout)["sent"] == count
    final = wait_for_stats(
        store_url, lambda s: s.received >= count + sent + 6000 and s.unique_processed == count
    )
    time.sleep(1)  # nothing more arrives: the store holds each event once
    assert stats(store_url).unique_processed == count
    assert final.rejected == 0
    with closing(open_reader(parse_store_url(store_url))) as store:
        rows = store.events(topic=None, after=0, limit=count + 1)
    assert {(e.topic, e.event_id) for e in rows} == wanted
    assert len(rows) == count


def test_replay_names_and_skips_bad_lines(
    broker: Mosquitto, bridge_factory: StartBridge, store_url: str, tmp_path: Path
) -> None:
    """Every line that is not an event is named with its number and skipped; the good ones
    are sent; the exit status is 1."""
    good: dict[str, Any] = {
        "topic": "ok",
        "event_id": "g1",
        "timestamp": "2026-12-01T12:00:00Z",
        "source": "s",
        "payload": {},
    }
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({"error": "store unavailable: gone", "resume_after": 7}),
        json.dumps({k: v for k, v in good.items() if k != "payload"}),
        json.dumps({**good, "timestamp": "2026-12-01T12:00:00"}),
        "[1, 2]",
        "",
        json.dumps({**good, "event_id": "g2"}),
    ]
    export = tmp_path / "mixed.ndjson"
    export.write_text("\n".join(lines) + "\n")
    bridge_factory()
    result = logagg_cli("replay", str(export), "--broker", broker.url)
    assert result.exit_code == 1
    assert "replayed 2 events of 7 lines read (5 bad lines skipped)" in result.stdout
    for number, words in [
        (2, "not JSON"),
        (3, "the export that wrote this file failed here: store unavailable: gone"),
        (4, "not an exported event: no payload"),
        (5, "the bridge would refuse it (schema)"),
        (6, "not a JSON object but list"),
    ]:
        assert f"bad line {number}: {words}" in result.stderr
    wait_for_stats(store_url, lambda s: s.unique_processed == 2)
