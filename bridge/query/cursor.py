"""The paging cursor: opaque to clients, bound to the filters it was made for.

A cursor holds where the last page ended (its last seq), the order, the clock the first
page read relative times (`since=15m`) against, so every page of a query covers the
same window, and a digest of the filters: used with other filters it is refused, not
followed into a different result. A checksum refuses a cursor that was cut or edited.
Not secret: one edited with care is only another position, which `after` offers anyway.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

MAX_SEQ = 2**63 - 1
_VERSION = 1
_LAYOUT = struct.Struct(">BBQq8s")  # version, descending, seq, now (µs since epoch), digest
_CHECK_BYTES = 4
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A valid cursor is base64url of _LAYOUT and its check, unpadded: this many characters.
CURSOR_CHARS = len(base64.urlsafe_b64encode(bytes(_LAYOUT.size + _CHECK_BYTES)).rstrip(b"="))


@dataclass(frozen=True, slots=True)
class Cursor:
    seq: int
    descending: bool
    now: datetime
    digest: bytes  # 8 bytes of the filters' SHA-256

    def encode(self) -> str:
        micros = (self.now - _EPOCH) // timedelta(microseconds=1)
        body = _LAYOUT.pack(_VERSION, self.descending, self.seq, micros, self.digest)
        return base64.urlsafe_b64encode(body + _check(body)).rstrip(b"=").decode()


def filters_digest(canonical: str) -> bytes:
    return hashlib.sha256(canonical.encode()).digest()[:8]


def _check(body: bytes) -> bytes:
    return hashlib.sha256(b"logagg cursor" + body).digest()[:_CHECK_BYTES]


def decode_cursor(text: str) -> Cursor | str:
    """The cursor `text` holds, or why it is refused."""
    if len(text) != CURSOR_CHARS or not text.isascii():
        return "is not a cursor from this API (pass `next` from a page unchanged)"
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return "is not a cursor from this API (pass `next` from a page unchanged)"
    body, check = raw[: _LAYOUT.size], raw[_LAYOUT.size :]
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != text or check != _check(body):
        return "is damaged or edited (pass `next` from a page unchanged)"
    version, descending, seq, micros, digest = _LAYOUT.unpack(body)
    if version != _VERSION or descending not in (0, 1) or seq > MAX_SEQ:
        return "is from another version of logagg: start again from the first page"
    try:
        now = _EPOCH + timedelta(microseconds=micros)
    except OverflowError:
        return "is damaged or edited (pass `next` from a page unchanged)"
    return Cursor(seq=seq, descending=bool(descending), now=now, digest=digest)
