"""The payload's stored text (msgspec's, since issue 13) means what `json.dumps`'s meant.

The bytes may differ (`1e16` for `1e+16`), so this holds the meaning: the same values
read back, of the same types, keys in the same order; the same answers from SQLite's JSON
functions, which field filters use; and events stored and read back through the store
come out as they went in, with the search text they were indexed by.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.event import Event, unstorable
from bridge.query import document, document_text, fts_text, searchable
from bridge.query.text import FTS_GAP
from bridge.store import Durability, StoreOptions
from bridge.store.base import payload_json
from bridge.store.sqlite import SQLiteWriter
from bridge.store.sqlite_text import text_path
from tests.helpers import examples

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([-0.0, 1e16, 1e-7, 2.5e22, 5e-324, 1.7976931348623157e308, 0.1]),
    st.text(max_size=12),
    st.sampled_from(["\x7f", "\u2028", "\x1f", 'q"b\\s', "é€𝄞", "</script>"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=25,
)
payloads = st.dictionaries(st.text(max_size=5), values, max_size=6).filter(
    lambda p: unstorable(p) is None
)


def event(payload: dict[str, Any], n: int = 0) -> Event:
    return Event(
        topic="t",
        event_id=f"e{n}",
        timestamp=datetime(2026, 12, 1, tzinfo=UTC),
        source="s",
        payload=payload,
    )


def old_text(payload: dict[str, Any]) -> str:
    """What the stores kept before."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


@settings(max_examples=examples(400), deadline=None)
@given(payloads)
def test_the_stored_text_reads_back_as_the_same_values(payload: dict[str, Any]) -> None:
    new = payload_json(event(payload))
    assert repr(json.loads(new)) == repr(json.loads(old_text(payload))) == repr(payload)


@settings(max_examples=examples(300), deadline=None)
@given(payloads)
def test_sqlite_json_functions_answer_alike(payload: dict[str, Any]) -> None:
    """What a `field=` filter asks SQLite of each top-level key and one level below: the
    type, and a scalar's value (a container is given back as its own text)."""
    new, old = payload_json(event(payload)), old_text(payload)
    paths = ["$"]
    for key, value in payload.items():
        if '"' in key:  # no path can name it (nor can a field filter)
            continue
        paths.append(f'$."{key}"')
        if isinstance(value, dict):
            paths += [f'$."{key}"."{inner}"' for inner in value if '"' not in inner]
    with sqlite3.connect(":memory:") as conn:
        for path in paths:
            ask = "SELECT json_valid(?), json_type(?, ?)"
            kind = conn.execute(ask, (new, new, path)).fetchone()
            assert kind == conn.execute(ask, (old, old, path)).fetchone(), path
            if kind[1] not in ("object", "array"):  # containers come back as their own text
                ask = "SELECT json_extract(?, ?)"
                value = conn.execute(ask, (new, path)).fetchone()
                assert value == conn.execute(ask, (old, path)).fetchone(), path


def test_events_come_back_from_the_store_as_they_went_in(tmp_path: Path) -> None:
    """Stored and read back (what /events and the export serve), with the text they were
    indexed by made again from what was read."""
    stored: list[dict[str, Any]] = [
        {"f": 1e16, "g": -0.0, "h": 0.1, "big": 2**70, "s": "é \u2028 \x1f", "n": None},
        {"nested": {"b": [1, 2.5e-7, {"c": "deep words"}], "a": True}, "x": 1.0},
        {"msg": "GET /api/users/123 took 45 ms", "level": "error", "http": {"status": 503}},
    ]
    writer = SQLiteWriter(tmp_path / "s.db", StoreOptions(Durability.OFF))
    try:
        writer.record([event(p, n) for n, p in enumerate(stored)], [])
        back = writer.events(topic=None, after=0, limit=10)
    finally:
        writer.close()
    assert [repr(e.payload) for e in back] == [repr(p) for p in stored]
    with sqlite3.connect(text_path(tmp_path / "s.db")) as conn:
        for e in back:
            text = document_text(searchable(e.event_id, e.source, e.payload))
            assert text == fts_text(document(searchable(e.event_id, e.source, e.payload)))
            for token in set(text.split()) - {FTS_GAP}:
                found = conn.execute(
                    "SELECT rowid FROM events_fts WHERE events_fts MATCH ?", (f'"{token}"',)
                )
                assert e.seq in {seq for (seq,) in found}, token
