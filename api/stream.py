"""`/events/stream`: every live stream served from one store poller, fanned out in memory.

One task reads the rows after the newest it has seen (all topics, in pages) and encodes each
once as Server-Sent Event text into a bounded ring; each stream keeps its own cursor (a
seq) and sends, in one write, what the ring holds after it that its query's filters match
(`bridge.query.matches`, the reference the stores are tested against). The ring holds
every stored row with `floor < seq <= head`, so a stream whose cursor is at or past `floor`
is served from memory, and one that fell behind (a slow reader, or a resume from an old
Last-Event-ID) searches the store from its own cursor until it is back in the ring. Nothing is
skipped or repeated, a slow stream never holds up the others (the poller waits for no one)
and memory stays bounded (the ring, and one write per stream in flight).

The number of open streams is capped (`max_streams`): past it, 503 with a reason and
Retry-After, before anything is streamed.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import TypeAdapter
from starlette.types import Receive, Scope, Send

from api.models import Problem
from bridge.query import Document, Query, document, matches, searchable, text_matches
from bridge.store import StoredEvent, StoreReader, StoreUnavailable

logger = logging.getLogger("logagg.api")

# A store read takes up to PAGE rows (as a page of /events: events may be 256 KiB each); the
# ring keeps the newest RING events and RING_BYTES of them, trimmed when either doubles; one
# write sends up to CHUNK events.
PAGE = 1000
RING = 20_000
RING_BYTES = 16 * 1024 * 1024
CHUNK = 1000
# The poller reads the store this often when it is idle; a stream ends after STREAM_MAX_S (the
# client resumes from its Last-Event-ID after RETRY_MS), so none outlives a shutdown for long;
# a stream with nothing to send for PING_S sends a comment, so proxies keep it open.
POLL_S = 0.2
STREAM_MAX_S = 300.0
RETRY_MS = 1000
PING_S = 15.0
# A stream that is caught up writes at most this often: with many streams the writes (a
# syscall each, on every wake-up) are most of the cost, so several polls go in one write.
WRITE_EVERY_S = 0.5
RETRY_AFTER_S = 5
EVENT_JSON = TypeAdapter(StoredEvent)
PING = b": ping\n\n"


@dataclass(slots=True)
class Frame:
    """One stored event as Server-Sent Event text: `id` its seq, `data` as in `/events`.

    A stream filtering on more than the topic reads the event back from the text, and
    one with `q` its full-text document: each made once, by the first stream that needs
    it, and kept with the frame. Without such streams the ring holds only the text (about
    a fifth of what the event and its document take in memory)."""

    seq: int
    topic: str
    text: bytes
    _event: StoredEvent | None = field(default=None, repr=False, compare=False)
    _document: Document | None = field(default=None, repr=False, compare=False)

    @property
    def event(self) -> StoredEvent:
        if self._event is None:
            self._event = EVENT_JSON.validate_json(self.text.partition(b"\ndata: ")[2][:-2])
        return self._event

    @property
    def document(self) -> Document:
        if self._document is None:
            event = self.event
            self._document = document(searchable(event.event_id, event.source, event.payload))
        return self._document


Wanted = Callable[[Frame], bool]


def wanted(query: Query) -> Wanted | None:
    """Which frames a stream of `query` sends (None: all): what `matches` says. A topic
    alone, today's stream, is a string comparison; `q` is decided on the frame's document,
    so that streams with text share its making (about 15 µs an event) instead of each
    paying for it: `matches` without the text, then `text_matches`, is `matches`."""
    text = query.text
    if text is not None:
        rest = replace(query, text=None)
        return lambda frame: matches(rest, frame.event) and text_matches(text, frame.document)
    if query.since or query.until or query.source or query.fields or query.after:
        return lambda frame: matches(query, frame.event)
    topic = query.topic
    if topic is None:
        return None
    if topic.wildcard:
        return lambda frame: topic.matches(frame.topic)
    name = topic.text
    return lambda frame: frame.topic == name


def encoded(rows: list[StoredEvent]) -> list[Frame]:
    """`rows` encoded (on a worker thread: the store is sync)."""
    return [
        Frame(row.seq, row.topic, b"id: %d\ndata: %s\n\n" % (row.seq, EVENT_JSON.dump_json(row)))
        for row in rows
    ]


def read_frames(store: StoreReader, *, after: int, limit: int, max_bytes: int) -> list[Frame]:
    """Up to `limit` events of every topic after `after`; fewer once their payloads reach
    `max_bytes`, so a short page is not the end: only an empty one is."""
    return encoded(store.events(topic=None, after=after, limit=limit, max_bytes=max_bytes))


def search_frames(store: StoreReader, query: Query, *, after: int, max_bytes: int) -> list[Frame]:
    """As `read_frames`, only the events matching `query`."""
    page = replace(query, order="asc", position=after, limit=PAGE)
    return encoded(store.search(page, max_bytes=max_bytes))


class StreamHub:
    """The one poller and its ring, and the count of open streams."""

    def __init__(self, store: StoreReader, *, max_streams: int, max_bytes: int) -> None:
        self.store = store
        self.max_streams = max_streams
        self.max_bytes = max_bytes
        self.streams = 0
        self._seqs: list[int] = []
        self._frames: list[Frame] = []
        self._bytes = 0
        self._floor: int | None = None  # unknown until the store could be read
        self._head = 0
        self._changed = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None

    def join(self) -> bool:
        """Take a stream slot (False: all taken); start the poller if it is not running."""
        if self.streams >= self.max_streams:
            return False
        self.streams += 1
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="stream poller")
        return True

    def leave(self) -> None:
        self.streams -= 1

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    async def _poll(self) -> None:
        """Read what is new into the ring and wake the streams; stop when none is open."""
        while self.streams > 0:
            frames: list[Frame] = []
            try:
                if self._floor is None:
                    newest = await run_in_threadpool(
                        self.store.events, topic=None, after=0, limit=1, newest=True
                    )
                    self._floor = self._head = newest[-1].seq if newest else 0
                frames = await run_in_threadpool(
                    read_frames, self.store, after=self._head, limit=PAGE, max_bytes=self.max_bytes
                )
            except StoreUnavailable:
                pass  # not created yet, or briefly unreadable: keep polling
            except Exception:
                # A bug here would starve every stream silently: say so, keep polling.
                logger.exception("stream poller: reading the store failed")
            if frames:
                self._append(frames)
            if not frames:
                await asyncio.sleep(POLL_S)

    def _append(self, frames: list[Frame]) -> None:
        self._seqs += [f.seq for f in frames]
        self._frames += frames
        self._bytes += sum(len(f.text) for f in frames)
        self._head = frames[-1].seq
        if len(self._frames) > 2 * RING or self._bytes > 2 * RING_BYTES:
            cut = max(0, len(self._frames) - RING)
            kept = self._bytes - sum(len(f.text) for f in self._frames[:cut])
            while kept > RING_BYTES and cut < len(self._frames) - 1:
                kept -= len(self._frames[cut].text)
                cut += 1
            self._floor, self._bytes = self._seqs[cut - 1], kept
            del self._seqs[:cut], self._frames[:cut]
        self._changed.set()
        self._changed = asyncio.Event()

    def _from_ring(self, cursor: int, want: Wanted | None) -> tuple[list[Frame], int]:
        """Up to CHUNK frames after `cursor` that `want` takes, and the seq up to which the
        ring was looked through (the stream's next cursor, even when nothing matched)."""
        start = bisect.bisect_right(self._seqs, cursor)
        if want is None:
            chunk = self._frames[start : start + CHUNK]
            return chunk, chunk[-1].seq if chunk else cursor
        found: list[Frame] = []
        scanned = cursor
        for frame in self._frames[start:]:
            scanned = frame.seq
            if want(frame):
                found.append(frame)
                if len(found) == CHUNK:
                    break
        return found, scanned

    async def _next(
        self, cursor: int, query: Query, want: Wanted | None, *, resumed: bool = False
    ) -> tuple[list[Frame], int, bool]:
        """The next frames after `cursor` (maybe none yet), the cursor after them, and
        whether to ask again at once (False: wait for the poller). A stream `resumed` from
        a cursor reads the store first: the ring may hold events expired since (retention)."""
        floor = self._floor
        if floor is not None and cursor >= floor and not resumed:
            frames, cursor = self._from_ring(cursor, want)
            return frames, cursor, len(frames) == CHUNK
        # Behind the ring (or no ring yet): search the store from our own cursor.
        frames = await run_in_threadpool(
            search_frames, self.store, query, after=cursor, max_bytes=self.max_bytes
        )
        if not frames and floor is not None:
            # Everything of ours up to `floor` was committed before this read: all here.
            return frames, max(frames[-1].seq if frames else cursor, floor), True
        return frames, frames[-1].seq if frames else cursor, bool(frames)

    async def start_cursor(self, query: Query, last: int) -> int:
        """Where a stream with no cursor starts: just before the newest `last` events its
        query matches, or (0) after the newest event stored."""
        if last == 0:
            newest = await run_in_threadpool(
                self.store.events, topic=None, after=0, limit=1, newest=True
            )
            return newest[-1].seq if newest else 0
        found = await run_in_threadpool(
            self.store.search, replace(query, order="desc", position=None, limit=last)
        )
        return found[-1].seq - 1 if found else 0

    async def events(self, query: Query, cursor: int | None, last: int) -> AsyncIterator[bytes]:
        """The stream's body: `retry`, then (without a cursor) an id alone where a reconnect
        would resume, then the events `query` matches, several per write; ends after
        STREAM_MAX_S."""
        yield b"retry: %d\n\n" % RETRY_MS
        want = wanted(query)
        resumed = cursor is not None
        deadline = time.monotonic() + STREAM_MAX_S
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            changed = self._changed
            frames: list[Frame] = []
            unavailable = more = False
            try:
                if cursor is None:
                    cursor = await self.start_cursor(query, last)
                    # An id alone moves the client's Last-Event-ID: a reconnect resumes
                    # here even when no event came before it.
                    yield b"id: %d\n\n" % cursor
                    quiet_since = time.monotonic()
                frames, cursor, more = await self._next(cursor, query, want, resumed=resumed)
                resumed = False
            except StoreUnavailable:
                unavailable = True  # not created yet, or briefly unreadable: try again
            now = time.monotonic()
            if frames:
                yield b"".join(f.text for f in frames)
                quiet_since = now
            if more:  # go on at once, but let the other streams run first
                await asyncio.sleep(0)
                continue
            if frames:
                await asyncio.sleep(WRITE_EVERY_S)
            if now - quiet_since >= PING_S:
                yield PING
                quiet_since = now
            wait = min(deadline, quiet_since + PING_S) - now
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(wait, POLL_S) if unavailable else wait):
                    await changed.wait()


class EventStream(StreamingResponse):
    """A `text/event-stream` response holding one of the hub's stream slots while it runs;
    with none free it is a 503 that says why, and when to retry."""

    media_type = "text/event-stream"

    def __init__(self, hub: StreamHub, query: Query, cursor: int | None, last: int) -> None:
        super().__init__(
            hub.events(query, cursor, last),
            # No caching, and no buffering by an nginx in front.
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.hub.join():
            await self.body_iterator.aclose()  # type: ignore[attr-defined]
            detail = (
                f"too many open streams ({self.hub.max_streams}, LOGAGG_MAX_STREAMS):"
                f" retry in {RETRY_AFTER_S} s"
            )
            busy = JSONResponse(
                Problem(detail=detail).model_dump(),
                503,
                headers={"retry-after": str(RETRY_AFTER_S)},
            )
            await busy(scope, receive, send)
            return
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.hub.leave()
