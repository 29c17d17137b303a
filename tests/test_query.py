"""The query model (issue 11): parser, tokenizer, renderers, cursor and reference matcher.

The renderers are checked against the engines themselves: FTS5 (Python's sqlite3, in
memory) and PostgreSQL's tsvector/tsquery (the machine's server, no tables) must find
exactly what the brute-force matcher finds.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.query import (
    PARAMETERS,
    Phrase,
    Query,
    QueryError,
    TextQuery,
    decode_cursor,
    document,
    fts_text,
    matches,
    parse_field,
    parse_query,
    parse_text,
    parse_time,
    parse_topic,
    reference_page,
    render_fts5,
    render_tsquery,
    searchable,
    text_matches,
    tokens,
    tsvector_literal,
)
from bridge.query.text import (
    MAX_DOCUMENT_POSITIONS,
    MAX_POSITIONS_PER_TOKEN,
    MAX_Q_TOKENS,
    MAX_TOKEN_CHARS,
    unicode_tokens,
)
from tests.helpers import PG_TEST_URL, examples

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
# Hypothesis times each example; on a shared, loaded machine that measures the machine.
unhurried = settings(deadline=None)


@dataclass(frozen=True)
class Row:
    """A stored event as the matcher reads it."""

    seq: int
    topic: str = "auth/prod"
    event_id: str = "e1"
    timestamp: str = "2026-12-01T11:00:00+00:00"
    source: str = "api-1"
    payload: dict[str, Any] = field(default_factory=dict)


def query(*params: tuple[str, str], now: datetime = NOW) -> Query:
    parsed = parse_query(params, now=now)
    assert isinstance(parsed, Query), parsed
    return parsed


def refused(*params: tuple[str, str]) -> QueryError:
    parsed = parse_query(params, now=NOW)
    assert isinstance(parsed, QueryError), parsed
    return parsed


def text(q: str) -> TextQuery:
    parsed = parse_text(q)
    assert isinstance(parsed, TextQuery), parsed
    return parsed


# Words from a small alphabet, so random phrases and prefixes often hit.
word = st.text("abcé", min_size=1, max_size=3)
noise = st.text(st.characters(codec="utf-8"), max_size=12)
value_text = st.lists(st.one_of(word, word.map(str.upper), noise), max_size=8).map(" ".join)


@st.composite
def text_queries(draw: st.DrawFn) -> TextQuery:
    def phrase() -> Phrase:
        words = draw(st.lists(st.text("abcé", min_size=1, max_size=3), min_size=1, max_size=3))
        found = tuple(tokens(" ".join(words)))
        return Phrase(found, draw(st.booleans()) and len(found[-1]) >= 2)

    include = tuple(phrase() for _ in range(draw(st.integers(1, 3))))
    exclude = tuple(phrase() for _ in range(draw(st.integers(0, 2))))
    return TextQuery(include, exclude)


def test_tokens_fold_case_diacritics_and_compatibility_forms() -> None:
    """Letters and digits, case-folded, without diacritics, compatibility forms decomposed."""
    assert tokens("Connection TIMEOUT: retry #3") == ["connection", "timeout", "retry", "3"]
    assert tokens("Crème Brûlée, Ærø, İstanbul, Straße") == [
        "creme",
        "brulee",
        "ærø",
        "istanbul",
        "strasse",
    ]
    assert tokens("e\u0301tude ﬁle x²") == ["etude", "file", "x2"]
    assert tokens("user@example.com http.status=503") == [
        "user",
        "example",
        "com",
        "http",
        "status",
        "503",
    ]
    assert tokens("東京 서울 Ελλάδα") == ["東京", "서울", "ελλαδα"]
    assert tokens("a" * 100) == ["a" * MAX_TOKEN_CHARS]
    assert tokens("-- ** () :: ^") == []


@unhurried
@given(st.text(max_size=60))
def test_tokens_are_stable_letters_and_digits(value: str) -> None:
    """Tokens re-tokenize to themselves, so they can be indexed as space-separated text."""
    found = tokens(value)
    assert tokens(" ".join(found)) == found
    assert all(t and all(c.isalnum() or c.isdigit() for c in t) for t in found)


@unhurried
@given(st.text(st.characters(max_codepoint=127), max_size=120))
def test_tokens_ascii_shortcut_is_the_same_rule(value: str) -> None:
    """ASCII text takes a shortcut; with one non-ASCII letter added it takes the full rule."""
    assert tokens(value + " \u00e9") == [*tokens(value), "e"]


@unhurried
@given(st.lists(st.one_of(st.text(max_size=12), st.sampled_from(["café", "ﬁn", "x\u0301y", "¨a"]))))
def test_tokens_word_by_word_is_the_whole_text_rule(words: list[str]) -> None:
    """Tokenizing word by word (ASCII words by the shortcut, others remembered) gives what
    the rule gives applied to the whole text at once, whatever the spaces and marks."""
    for text in (" ".join(words), "\u00a0".join(words), "".join(words)):
        assert tokens(text) == unicode_tokens(text)
        assert tokens(text) == unicode_tokens(text)  # the second time from the cache


def test_document_gaps_between_values_and_bounds() -> None:
    """Values are separated by a gap; positions and repeats are bounded like PostgreSQL's."""
    assert document(["a b", "c"]).slots == ("a", "b", None, "c")
    assert not text_matches(text('"b c"'), document(["a b", "c"]))
    repeated = document(["x " * (MAX_POSITIONS_PER_TOKEN + 2)]).slots
    assert repeated.count("x") == MAX_POSITIONS_PER_TOKEN
    assert repeated[-2:] == (None, None)
    assert len(document(["w " * (MAX_DOCUMENT_POSITIONS + 10)]).slots) == MAX_DOCUMENT_POSITIONS


def test_searchable_is_id_source_then_payload_strings_in_key_order() -> None:
    """Strings only, depth first, keys sorted: the same for either store's key order."""
    payload = {"z": "last", "a": {"n": 5, "s": ["x", {"k": "y"}]}, "b": True}
    assert searchable("id", "src", payload) == ["id", "src", "x", "y", "last"]


@pytest.mark.parametrize(
    ("q", "include", "exclude"),
    [
        ("error timeout", [(("error",), False), (("timeout",), False)], []),
        ('"Connection reset" -debug', [(("connection", "reset"), False)], [(("debug",), False)]),
        ('time* -"dry run"*', [(("time",), True)], [(("dry", "run"), True)]),
        ("user@example.com", [(("user", "example", "com"), False)], []),
        ('"unbalanced quote', [(("unbalanced", "quote"), False)], []),
        ("NEAR AND OR NOT x", [((w,), False) for w in ("near", "and", "or", "not", "x")], []),
        ("x ( ) : ^ * - ' ; -- /*", [(("x",), False)], []),
        ("x DROP TABLE events; --", [((w,), False) for w in ("x", "drop", "table", "events")], []),
        ('a"b c"', [(("a",), False), (("b", "c"), False)], []),
    ],
)
def test_parse_text_clauses(
    q: str, include: list[tuple[tuple[str, ...], bool]], exclude: list[tuple[tuple[str, ...], bool]]
) -> None:
    """Words, phrases, exclusions, prefixes; operators and syntax characters are text."""
    parsed = text(q)
    assert [(p.tokens, p.prefix) for p in parsed.include] == include
    assert [(p.tokens, p.prefix) for p in parsed.exclude] == exclude


@pytest.mark.parametrize(
    ("q", "reason"),
    [
        ("-foo", "only excludes"),
        ("-foo -bar", "only excludes"),
        ("*", "no word"),
        ("   ", "no word"),
        ("a*", "too short"),
        ("x" * 10_000, "10000 characters"),
        (" ".join(["w"] * 33), "33 words and phrases"),
        ('"' + "w " * 17 + '"', "17 words, limit 16"),
        (" ".join(['"a b c"'] * 22), f"66 words in all, limit {MAX_Q_TOKENS}"),
    ],
)
def test_parse_text_refusals(q: str, reason: str) -> None:
    """Hostile or empty text is refused with a reason, before any engine sees it."""
    parsed = parse_text(q)
    assert isinstance(parsed, str)
    assert reason in parsed


@unhurried
@given(st.text(max_size=300))
def test_parse_text_never_raises_and_renders_quoted(q: str) -> None:
    """Whatever is typed, the result is a reason or an AST whose renderings quote every token."""
    parsed = parse_text(q)
    if isinstance(parsed, TextQuery):
        assert render_fts5(parsed).count('"') % 2 == 0
        assert render_tsquery(parsed).count("'") % 2 == 0


@unhurried
@given(st.lists(st.tuples(st.sampled_from([*PARAMETERS, "x"]), st.text(max_size=40)), max_size=6))
def test_parse_query_never_raises(params: list[tuple[str, str]]) -> None:
    """Any parameters give a query or an error naming one of them."""
    parsed = parse_query(params, now=NOW)
    assert isinstance(parsed, Query) or parsed.parameter in {name for name, _ in params}


def test_renderers() -> None:
    """Quoted phrases, prefixes outside the quotes, exclusions by NOT / !."""
    parsed = text('Timeout "conn reset"* -debug')
    assert render_fts5(parsed) == '("timeout" AND "conn reset"*) NOT ("debug")'
    assert render_tsquery(parsed) == "('timeout') & ('conn' <-> 'reset':*) & !('debug')"
    assert fts_text(document(["a b", "c"])) == "a b \u00b7 c"
    assert tsvector_literal(document(["a b a", "c"])) == "'a':1,3 'b':2 'c':5"


@pytest.fixture(scope="module")
def fts() -> Iterator[sqlite3.Connection]:
    with closing(sqlite3.connect(":memory:")) as conn:
        conn.execute("CREATE VIRTUAL TABLE docs USING fts5(body, tokenize='ascii')")
        yield conn


@settings(
    deadline=None,
    max_examples=examples(300),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.lists(st.lists(value_text, max_size=3), min_size=1, max_size=6), text_queries())
def test_fts5_finds_what_the_matcher_finds(
    fts: sqlite3.Connection, docs: list[list[str]], parsed: TextQuery
) -> None:
    """FTS5 over `fts_text`, asked `render_fts5`, agrees with `text_matches`."""
    fts.execute("DELETE FROM docs")
    built = [document(values) for values in docs]
    fts.executemany(
        "INSERT INTO docs (rowid, body) VALUES (?, ?)",
        [(i, fts_text(d)) for i, d in enumerate(built)],
    )
    found = {
        r
        for (r,) in fts.execute("SELECT rowid FROM docs WHERE docs MATCH ?", [render_fts5(parsed)])
    }
    assert found == {i for i, d in enumerate(built) if text_matches(parsed, d)}


@pytest.fixture(scope="module")
def pg(postgres_reachable: None) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    with psycopg.connect(PG_TEST_URL, autocommit=True) as conn:
        yield conn


@settings(
    deadline=None,
    max_examples=examples(200),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.lists(value_text, max_size=4), text_queries())
def test_tsquery_finds_what_the_matcher_finds(
    pg: psycopg.Connection[tuple[Any, ...]], values: list[str], parsed: TextQuery
) -> None:
    """PostgreSQL's `tsvector @@ tsquery` over the literals agrees with `text_matches`."""
    doc = document(values)
    row = pg.execute(
        "SELECT %s::tsvector @@ %s::tsquery", [tsvector_literal(doc), render_tsquery(parsed)]
    ).fetchone()
    assert row == (text_matches(parsed, doc),)


def test_tsvector_literal_fits_postgres_at_the_bounds(
    pg: psycopg.Connection[tuple[Any, ...]],
) -> None:
    """The largest document of the longest 4-byte tokens is a valid tsvector (under 1 MiB)."""
    longest = [
        f"{i:05d}" + "\U00010400" * (MAX_TOKEN_CHARS - 5) for i in range(MAX_DOCUMENT_POSITIONS)
    ]
    doc = document([" ".join(longest)])
    row = pg.execute("SELECT length(%s::tsvector)", [tsvector_literal(doc)]).fetchone()
    assert row == (MAX_DOCUMENT_POSITIONS,)


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("auth/prod", "auth/prod", True),
        ("auth/prod", "auth/prod/x", False),
        ("auth/+", "auth/prod", True),
        ("auth/+", "auth/prod/x", False),
        ("auth/+", "auth", False),
        ("auth/+", "auth/", True),
        ("auth/#", "auth", True),
        ("auth/#", "auth/prod/x", True),
        ("auth/#", "authz", False),
        ("#", "anything/at/all", True),
        ("+/prod", "auth/prod", True),
        ("+/+/c", "a/b/c", True),
        ("+/+/c", "a/b/x/c", False),
        ("a/+/b/#", "a/x/y/b/z", False),
        ("a/+/b/#", "a/x/b", True),
    ],
)
def test_topic_filter_matches_like_mqtt(pattern: str, topic: str, expected: bool) -> None:
    """`+` is one level, `#` the rest including the parent level."""
    parsed = parse_topic(pattern)
    assert not isinstance(parsed, str)
    assert parsed.matches(topic) is expected
    assert parsed.wildcard is ("+" in pattern or "#" in pattern)


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("", "empty"),
        ("a/#/b", "# must be the last level"),
        ("a#", "whole level"),
        ("a/b+", "whole level"),
        ("a\u200b", "invisible"),
        ("x" * 201, "limit 200"),
        ("/" * 100, "101 levels"),
    ],
)
def test_topic_filter_refusals(pattern: str, reason: str) -> None:
    """Refused as MQTT refuses a filter, and as logagg refuses a topic."""
    parsed = parse_topic(pattern)
    assert isinstance(parsed, str)
    assert reason in parsed


topic_level = st.sampled_from(["a", "b", "%", "_", "\\", ""])
topics = st.lists(topic_level, min_size=1, max_size=4).map("/".join)
filters = (
    st.lists(st.one_of(topic_level, st.just("+")), min_size=1, max_size=4)
    .flatmap(lambda levels: st.sampled_from(["/".join(levels), "/".join([*levels, "#"])]))
    .filter(bool)
)


@unhurried
@given(filters, st.lists(topics, max_size=10))
def test_like_pattern_keeps_every_matching_topic(pattern: str, names: list[str]) -> None:
    """LIKE with the pattern (escaped: `%`, `_` and `\\` are literal) keeps all matches."""
    parsed = parse_topic(pattern)
    assert not isinstance(parsed, str)
    with closing(sqlite3.connect(":memory:")) as conn:
        conn.execute("PRAGMA case_sensitive_like = ON")
        for name in names:
            (liked,) = conn.execute(
                "SELECT ? LIKE ? ESCAPE '\\'", [name, parsed.like_pattern()]
            ).fetchone()
            assert liked or not parsed.matches(name)
            if not parsed.wildcard:
                assert bool(liked) == (name == pattern)


@pytest.mark.parametrize(
    ("spec", "payload", "expected"),
    [
        ("level:error", {"level": "error"}, True),
        ("level:error", {"level": "Error"}, False),
        ("http.status:503", {"http": {"status": 503}}, True),
        ("http.status:503", {"http": {"status": 503.0}}, True),
        ("http.status:5.03e2", {"http": {"status": 503}}, True),
        ("http.status:503", {"http": {"status": "503"}}, False),
        ('http.status:"503"', {"http": {"status": "503"}}, True),
        ("http.status:503", {"http.status": 503}, False),
        ("http:503", {"http": {"status": 503}}, False),
        ("ratio:0.1", {"ratio": 0.1}, True),
        ("ok:true", {"ok": True}, True),
        ("ok:true", {"ok": 1}, False),
        ("ok:true", {"ok": "true"}, False),
        ("n:1", {"n": True}, False),
        ("gone:null", {"gone": None}, True),
        ("gone:null", {}, False),
        ("url:http://x:80/a", {"url": "http://x:80/a"}, True),
        ("tags:a", {"tags": ["a"]}, False),
        ("a.b.c:x", {"a": {"b": "x"}}, False),
        ("empty:", {"empty": ""}, True),
    ],
)
def test_field_filter_matches(spec: str, payload: dict[str, Any], expected: bool) -> None:
    """Typed equality by path: numbers by value, literals, strings exactly."""
    parsed = parse_field(spec)
    assert not isinstance(parsed, str)
    assert parsed.matches(payload) is expected


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("level", "no ':'"),
        ("a..b:x", "keys of letters"),
        ("$where:1", "keys of letters"),
        (".".join(["k"] * 17) + ":1", "17 keys"),
        ("k:" + "v" * 257, "257 characters"),
        ('k:"open', "not a JSON string"),
        ('k:"\\u0000"', "NUL"),
        ("k:1e400", "beyond"),
    ],
)
def test_field_filter_refusals(spec: str, reason: str) -> None:
    """Bad paths, values and sizes are refused with the reason."""
    parsed = parse_field(spec)
    assert isinstance(parsed, str)
    assert reason in parsed


def test_field_number_is_exact_decimal() -> None:
    """`503.0`, `5.03e2` and `503` are one number."""
    parsed = parse_field("s:5.03e2")
    assert not isinstance(parsed, str)
    assert parsed.value == Decimal(503)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("90s", NOW - timedelta(seconds=90)),
        ("15m", NOW - timedelta(minutes=15)),
        ("2h", NOW - timedelta(hours=2)),
        ("7d", NOW - timedelta(days=7)),
        ("2026-12-01T15:02:00+01:00", datetime(2026, 12, 1, 14, 2, tzinfo=UTC)),
        ("2026-12-01T14:02:00Z", datetime(2026, 12, 1, 14, 2, tzinfo=UTC)),
    ],
)
def test_parse_time(raw: str, expected: datetime) -> None:
    """Relative spans before `now`, or ISO-8601 with an offset, in UTC."""
    assert parse_time(raw, NOW) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("2026-12-01T14:02:00", "no UTC offset"),
        ("2026-12-01", "no UTC offset"),
        ("2026-12-01T15:02:00 01:00", "%2B"),
        ("15 minutes", "neither"),
        ("-5m", "neither"),
        ("99999d", "3660 days"),
        ("0001-01-01T00:00+01:00", "out of range"),
        ("", "empty"),
    ],
)
def test_parse_time_refusals(raw: str, reason: str) -> None:
    """Naive, malformed, too far back: refused with an example of the expected form."""
    parsed = parse_time(raw, NOW)
    assert isinstance(parsed, str)
    assert reason in parsed


def test_parse_query_defaults_and_compatibility() -> None:
    """No parameters is today's /events; `topic`, `after`, `limit` keep their meaning."""
    assert query() == Query(now=NOW)
    legacy = query(("topic", "auth/prod"), ("after", "41"), ("limit", "5"))
    assert (legacy.after, legacy.limit) == (41, 5)
    assert legacy.topic is not None
    assert not legacy.topic.wildcard


@pytest.mark.parametrize(
    ("params", "parameter", "reason"),
    [
        ([("topic", "a/#/b")], "topic", "last level"),
        ([("since", "yesterday")], "since", "ISO-8601"),
        ([("until", "2026-01-01T00:00")], "until", "offset"),
        ([("since", "1h"), ("until", "2h")], "since", "not before until"),
        ([("since", "1h"), ("until", "1h")], "since", "not before until"),
        ([("source", "")], "source", "1 to 200"),
        ([("q", "-noise")], "q", "only excludes"),
        ([("field", "level")], "field", "no ':'"),
        ([("field", "a:1")] * 11, "field", "more than 10"),
        ([("order", "newest")], "order", "asc or desc"),
        ([("after", "-1")], "after", "whole number"),
        ([("after", str(2**63))], "after", "from 0"),
        ([("limit", "0")], "limit", "from 1 to 1000"),
        ([("limit", "1001")], "limit", "from 1 to 1000"),
        ([("limit", "\u0661\u0660")], "limit", "whole number"),
        ([("topic", "a"), ("topic", "b")], "topic", "more than once"),
        ([("tpoic", "a")], "tpoic", "not a query parameter"),
        ([("source", "a\x00")], "source", "NUL"),
        ([("source", "x" * 2000)], "source", "2000 characters"),
        ([("next", "garbage")], "next", "not a cursor"),
    ],
)
def test_parse_query_names_the_bad_parameter(
    params: list[tuple[str, str]], parameter: str, reason: str
) -> None:
    """Each refusal names the parameter and says why (the API's 422, the CLI's exit 2)."""
    error = refused(*params)
    assert error.parameter == parameter
    assert reason in error.reason
    assert str(error).startswith(f"{parameter}: ")


def test_cursor_round_trip_keeps_the_first_page_clock() -> None:
    """A cursor continues from its seq, with relative times read at the first page's now."""
    first = query(("topic", "a/+"), ("since", "15m"), ("order", "desc"))
    cursor = first.next_cursor(42)
    later = query(
        ("topic", "a/+"),
        ("since", "15m"),
        ("order", "desc"),
        ("next", cursor),
        now=NOW + timedelta(hours=1),
    )
    assert later.position == 42
    assert later.since == first.since
    # The limit may change from page to page; the filters may not.
    assert (
        query(
            ("topic", "a/+"), ("since", "15m"), ("order", "desc"), ("next", cursor), ("limit", "7")
        ).limit
        == 7
    )
    assert refused(
        ("topic", "a/b"), ("since", "15m"), ("order", "desc"), ("next", cursor)
    ).reason.startswith("was made for other filters")
    numeric = query(("field", "s:503")).next_cursor(1)
    assert query(("field", "s:5.03e2"), ("next", numeric)).position == 1
    assert "order=desc" in refused(("topic", "a/+"), ("since", "15m"), ("next", cursor)).reason


def test_cursor_refuses_every_edit() -> None:
    """Changing any one character of a cursor, or cutting it, makes it a refusal."""
    cursor = query(("q", "x")).next_cursor(7)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for at, char in enumerate(cursor):
        for other in (alphabet[(alphabet.index(char) + 1) % 64], "=", "+"):
            assert isinstance(decode_cursor(cursor[:at] + other + cursor[at + 1 :]), str)
    assert isinstance(decode_cursor(cursor[:-1]), str)
    assert isinstance(decode_cursor(cursor + "A"), str)


def test_matches_each_filter() -> None:
    """Every filter narrows; together they are ANDed; time ranges are half-open."""
    row = Row(seq=5, payload={"msg": "Connection timeout after 30s", "level": "error"})
    assert matches(query(), row)
    assert matches(query(("topic", "auth/+")), row)
    assert not matches(query(("topic", "auth")), row)
    assert matches(query(("since", "2026-12-01T11:00:00Z")), row)
    assert not matches(query(("until", "2026-12-01T12:00:00+01:00")), row)
    assert matches(query(("since", "1h"), ("until", "59m")), row)
    assert not matches(query(("source", "api-2")), row)
    assert matches(query(("q", "CONNECTION time*"), ("field", "level:error")), row)
    assert not matches(query(("q", "connection -timeout")), row)
    assert matches(query(("q", "api")), row)
    assert not matches(query(("after", "5")), row)


@unhurried
@given(
    st.lists(
        st.builds(
            Row,
            seq=st.integers(1, 60),
            topic=st.sampled_from(["a/x", "a/y", "b/x"]),
            payload=st.fixed_dictionaries({"msg": value_text}),
        ),
        unique_by=lambda r: r.seq,
        max_size=30,
    ),
    st.sampled_from(["asc", "desc"]),
    st.integers(1, 7),
)
def test_reference_pages_cover_the_result_once(rows: list[Row], order: str, limit: int) -> None:
    """Following `next` from page to page yields every match once, in order."""
    params = [("topic", "a/+"), ("order", order), ("limit", str(limit))]
    expected = sorted((r for r in rows if r.topic.startswith("a/")), key=lambda r: r.seq)
    if order == "desc":
        expected.reverse()
    seen: list[Row] = []
    page = reference_page(query(*params), rows)
    while page:
        seen += page
        page = reference_page(
            query(*params, ("next", query(*params).next_cursor(page[-1].seq))), rows
        )
    assert seen == expected
