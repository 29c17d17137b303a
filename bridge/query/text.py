"""Full-text search: the one tokenizer, the `q` language, and what each store is given.

Python tokenizes for both stores: SQLite's FTS5 tokenizers use Unicode 6.1 tables and
their own case folding, PostgreSQL's parser depends on the server's locale, so neither
could agree exactly with the other, nor with the brute-force matcher the tests compare
them with. Instead an event's searchable text becomes a `Document` here; SQLite's FTS5
table indexes `fts_text(document)` with `tokenize='ascii'` (which keeps our tokens as they
are: each is letters and digits, ASCII already lower-case), PostgreSQL stores
`tsvector_literal(document)` cast to tsvector (no parser runs). Queries render to FTS5 and
tsquery text from tokens only, every one quoted: what a user types is never syntax.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

# A token is cut to this many characters: PostgreSQL refuses lexemes over 2,047 bytes, and
# a tsvector over 1 MiB; MAX_DOCUMENT_POSITIONS tokens of 48 characters (4 bytes each at
# most) stay under that.
MAX_TOKEN_CHARS = 48
# Positions indexed per event (tokens, and one gap between values): later words are not
# searchable. PostgreSQL keeps positions up to 16,383 only.
MAX_DOCUMENT_POSITIONS = 4096
# PostgreSQL keeps the first 255 positions of a lexeme: later occurrences are gaps.
MAX_POSITIONS_PER_TOKEN = 255
# What stands for a gap in FTS5 text: not a letter or digit, so no query token equals it
# or starts with it, and FTS5's ascii tokenizer reads it as a token (any non-ASCII is).
FTS_GAP = "\u00b7"
# Bounds on `q`, so that no query is expensive by its size.
MAX_Q_CHARS = 1024
MAX_CLAUSES = 32
MAX_PHRASE_TOKENS = 16
MAX_Q_TOKENS = 64
# A prefix needs this many characters: `a*` would read most of the index.
MIN_PREFIX_CHARS = 2


# The group is the token, cut; the rest of a longer run is skipped.
_ASCII_TOKEN = re.compile(f"([a-z0-9]{{1,{MAX_TOKEN_CHARS}}})[a-z0-9]*")


def tokens(text: str) -> list[str]:
    """The tokens of `text`: runs of letters and digits (Unicode categories L and N),
    case-folded, compatibility-decomposed with every combining mark removed (`É` is `e`,
    `ﬁ` is `fi`, `²` is `2`), recomposed (NFC), each cut to MAX_TOKEN_CHARS characters.
    Everything else (spaces, punctuation, symbols, controls) separates tokens."""
    if text.isascii():
        # The same rule, 5 times faster: ASCII has no marks or compatibility forms.
        return _ASCII_TOKEN.findall(text.lower())
    # Whitespace separates tokens before normalising as after it, so each word can be
    # tokenized alone: ASCII words by the shortcut, the others once each (log text
    # repeats its words; the full rule costs ~10 µs a word in Python).
    found: list[str] = []
    for word in text.split():
        if word.isascii():
            found += _ASCII_TOKEN.findall(word.lower())
        elif len(word) <= _CACHED_WORD_CHARS:
            found += _word_tokens(word)
        else:
            found += unicode_tokens(word)
    return found


# Words up to this long are remembered (at most _CACHED_WORDS of them).
_CACHED_WORD_CHARS = 64
_CACHED_WORDS = 1 << 16


@lru_cache(maxsize=_CACHED_WORDS)
def _word_tokens(word: str) -> tuple[str, ...]:
    return tuple(unicode_tokens(word))


def unicode_tokens(text: str) -> list[str]:
    """`tokens`' rule applied to the whole of `text` at once, with no shortcut."""
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text).casefold())
    spaced = "".join(_spaced(folded))
    return [unicodedata.normalize("NFC", run)[:MAX_TOKEN_CHARS] for run in spaced.split()]


def _spaced(text: str) -> Iterator[str]:
    for char in text:
        kind = unicodedata.category(char)[0]
        if kind in "LN":
            yield char
        elif kind != "M":
            yield " "


@dataclass(frozen=True, slots=True)
class Document:
    """An event's searchable text, position by position (the first is 1): a token, or None
    for a gap (between two values, so that no phrase spans them; or an occurrence of a
    token past its MAX_POSITIONS_PER_TOKEN-th)."""

    slots: tuple[str | None, ...]


def document(values: Iterable[str]) -> Document:
    """The document of these strings, in order, cut at MAX_DOCUMENT_POSITIONS."""
    slots: list[str | None] = []
    for value in values:
        if slots:
            slots.append(None)
        slots += tokens(value)
        if len(slots) >= MAX_DOCUMENT_POSITIONS:
            del slots[MAX_DOCUMENT_POSITIONS:]
            break
    if len(slots) > MAX_POSITIONS_PER_TOKEN:  # else no token can occur too often
        seen: dict[str, int] = {}
        for at, slot in enumerate(slots):
            if slot is not None:
                count = seen[slot] = seen.get(slot, 0) + 1
                if count > MAX_POSITIONS_PER_TOKEN:
                    slots[at] = None
    return Document(tuple(slots))


def searchable(event_id: str, source: str, payload: dict[str, Any]) -> list[str]:
    """What `q` searches, in a fixed order: the event_id, the source, then the payload's
    string values depth first, object keys sorted (PostgreSQL's jsonb does not keep the
    order they came in; the document is cut, so order matters). Keys, numbers and
    literals are not searched."""
    found = [event_id, source]
    _strings(payload, found)
    return found


def _strings(value: dict[str, Any] | list[Any], found: list[str]) -> None:
    """The strings in `value`, depth first, into `found`. Recursive: an event nests at most
    MAX_DEPTH (64) levels, far below Python's recursion limit."""
    for item in [value[k] for k in sorted(value)] if isinstance(value, dict) else value:
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict | list):
            _strings(item, found)


def fts_text(doc: Document) -> str:
    """The text an FTS5 table with `tokenize='ascii'` indexes as exactly `doc`."""
    return " ".join(FTS_GAP if slot is None else slot for slot in doc.slots)


def document_text(values: Sequence[str]) -> str:
    """`fts_text(document(values))`, made directly for the common document, one shorter
    than MAX_POSITIONS_PER_TOKEN positions (so no token can occur too often); a longer one
    goes through `document`. What `record` indexes for every event."""
    slots: list[str] = []
    for value in values:
        if slots:
            slots.append(FTS_GAP)
        slots += tokens(value)
        if len(slots) > MAX_POSITIONS_PER_TOKEN:
            return fts_text(document(values))
    return " ".join(slots)


def tsvector_literal(doc: Document) -> str:
    """`doc` in PostgreSQL's tsvector input syntax, for a `%s::tsvector` parameter."""
    positions: dict[str, list[str]] = {}
    for at, slot in enumerate(doc.slots, start=1):
        if slot is not None:
            positions.setdefault(slot, []).append(str(at))
    return " ".join([f"{_lexeme(t)}:{','.join(ps)}" for t, ps in positions.items()])


def _lexeme(token: str) -> str:
    # Tokens hold letters and digits only; quoting anyway keeps the syntax closed.
    if "'" in token or "\\" in token:
        token = token.replace("\\", "\\\\").replace("'", "''")
    return f"'{token}'"


@dataclass(frozen=True, slots=True)
class Phrase:
    """Tokens that must follow one another within one value; one token is a term. With
    `prefix` the last token matches any token it begins."""

    tokens: tuple[str, ...]
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class TextQuery:
    """`q` parsed: every `include` phrase is found and no `exclude` phrase is."""

    include: tuple[Phrase, ...]
    exclude: tuple[Phrase, ...] = ()


def parse_text(q: str) -> TextQuery | str:
    """`q` as a `TextQuery`, or why it is refused. Clauses are separated by spaces: a word,
    or `"a phrase"` (an unbalanced quote runs to the end); `-` before either excludes it,
    `*` after either makes its last token a prefix. A word is tokenized like the text it
    searches, and several tokens make a phrase (`user@example.com`, `http.status`); one
    without any (`*`, `(`, `:`) is ignored. Words such as AND, OR, NOT, NEAR are words."""
    if len(q) > MAX_Q_CHARS:
        return f"is {len(q)} characters, limit {MAX_Q_CHARS}"
    include: list[Phrase] = []
    exclude: list[Phrase] = []
    for raw, negated, prefix in _clauses(q):
        found = tokens(raw)
        if not found:
            continue
        if len(found) > MAX_PHRASE_TOKENS:
            return f"a phrase has {len(found)} words, limit {MAX_PHRASE_TOKENS}"
        if prefix and len(found[-1]) < MIN_PREFIX_CHARS:
            return (
                f"prefix {found[-1]!r}* is too short: at least {MIN_PREFIX_CHARS} letters"
                " or digits before *"
            )
        (exclude if negated else include).append(Phrase(tuple(found), prefix))
    if len(include) + len(exclude) > MAX_CLAUSES:
        return f"has {len(include) + len(exclude)} words and phrases, limit {MAX_CLAUSES}"
    total = sum(len(p.tokens) for p in (*include, *exclude))
    if total > MAX_Q_TOKENS:
        return f"has {total} words in all, limit {MAX_Q_TOKENS}"
    if not include:
        if exclude:
            return "only excludes words: add at least one word to find (e.g. error -timeout)"
        return "has no word to search for (letters or digits)"
    return TextQuery(tuple(include), tuple(exclude))


def _clauses(q: str) -> Iterator[tuple[str, bool, bool]]:
    """(text, negated, prefix) of each clause of `q`."""
    at, end = 0, len(q)
    while at < end:
        if q[at].isspace():
            at += 1
            continue
        negated = q[at] == "-" and at + 1 < end and not q[at + 1].isspace()
        at += negated
        if q[at] == '"':
            close = q.find('"', at + 1)
            close = end if close < 0 else close
            text, at = q[at + 1 : close], close + 1
            prefix = at < end and q[at] == "*"
            at += prefix
        else:
            start = at
            while at < end and not q[at].isspace() and q[at] != '"':
                at += 1
            text = q[start:at]
            prefix = text.endswith("*")
        yield text, negated, prefix


def render_fts5(query: TextQuery) -> str:
    """An FTS5 MATCH expression: each phrase a quoted string, `*` outside the quotes."""
    found = " AND ".join(map(_fts_phrase, query.include))
    if not query.exclude:
        return found
    return f"({found}) NOT ({' OR '.join(map(_fts_phrase, query.exclude))})"


def _fts_phrase(phrase: Phrase) -> str:
    quoted = '"' + " ".join(phrase.tokens).replace('"', '""') + '"'
    return quoted + "*" if phrase.prefix else quoted


def render_tsquery(query: TextQuery) -> str:
    """A PostgreSQL tsquery in its input syntax, for a `%s::tsquery` parameter (a cast, so
    no parser or dictionary touches the tokens): quoted lexemes, `:*` prefixes, `<->`
    phrases, `!` exclusions."""
    parts = [_ts_phrase(p) for p in query.include]
    parts += [f"!{_ts_phrase(p)}" for p in query.exclude]
    return " & ".join(parts)


def _ts_phrase(phrase: Phrase) -> str:
    lexemes = [_lexeme(t) for t in phrase.tokens]
    if phrase.prefix:
        lexemes[-1] += ":*"
    return f"({' <-> '.join(lexemes)})"


def text_matches(query: TextQuery, doc: Document) -> bool:
    """The reference semantics of `query` over `doc`, by brute force."""
    return all(_found(p, doc) for p in query.include) and not any(
        _found(p, doc) for p in query.exclude
    )


def _found(phrase: Phrase, doc: Document) -> bool:
    *whole, last = phrase.tokens
    slots, width = doc.slots, len(phrase.tokens)
    for start in range(len(slots) - width + 1):
        if all(slots[start + i] == t for i, t in enumerate(whole)):
            final = slots[start + width - 1]
            if final == last or (phrase.prefix and final is not None and final.startswith(last)):
                return True
    return False
