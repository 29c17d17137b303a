"""Readers of a PostgreSQL store written by several writers at once never miss or repeat an
event or a rejection, though rows become visible out of seq order (see "Concurrent
writers" in `bridge.store.postgres`): every reader stops at the table's watermark.

Here the writers are stores in threads, one of them slow to commit (it sleeps inside its
transaction, as a bridge descheduled between its statement and the commit would), so
commits come out of seq order all the time; `test_scale.py` does it with bridges.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime
from functools import partial
from typing import TypeVar

import pytest

from bridge.event import Event, Rejection
from bridge.query import Query
from bridge.store import StoredEvent, StoreOptions, StoreReader, open_reader
from bridge.store.base import KEEP_REJECTED, Refused, StoredRejection
from bridge.store.postgres import PostgresWriter
from bridge.store.postgres_retention import FENCE_SHARED
from tests.helpers import postgres

WRITERS = 3
EVENTS = 6_000  # per writer; a third of each writer's keys are also another's
REFUSALS = 2_000  # per writer: all of them kept
assert WRITERS * REFUSALS <= KEEP_REJECTED
DEADLINE_S = 120.0

# The lowest seq this transaction inserted in a table.
_MINE = "SELECT min(seq) FROM {} WHERE xmin::text = pg_current_xact_id()::text"
NOW = datetime(2026, 12, 1, 13, 0, tzinfo=UTC)
Page = Callable[[StoreReader, int], list[StoredEvent]]
RejectedPage = Callable[[StoreReader, int], list[StoredRejection]]
Row = TypeVar("Row", StoredEvent, StoredRejection)
# A batch as `record` takes it: events, refused messages.
Batch = tuple[list[Event], list[Refused]]


def page_of_events(reader: StoreReader, after: int) -> list[StoredEvent]:
    return reader.events(topic=None, after=after, limit=random.randint(1, 300))


def page_of_search(reader: StoreReader, after: int) -> list[StoredEvent]:
    return reader.search(Query(NOW, after=after, order="asc", limit=random.randint(1, 300)))


def page_of_search_position(reader: StoreReader, after: int) -> list[StoredEvent]:
    """As the stream's fallback and `logagg export` page: by the cursor's position."""
    return reader.search(Query(NOW, order="asc", position=after, limit=200))


def page_of_newest_tail(reader: StoreReader, after: int) -> list[StoredEvent]:
    """As `logagg tail -f`: the newest after the cursor, at most a page."""
    return reader.events(topic=None, after=after, limit=50)


def page_of_rejected(reader: StoreReader, after: int) -> list[StoredRejection]:
    """As `/rejected?after=` and `logagg rejected export`."""
    return reader.rejected(after=after, limit=random.randint(1, 300))


def page_of_rejected_tail(reader: StoreReader, after: int) -> list[StoredRejection]:
    return reader.rejected(after=after, limit=50)


def writer_events(n: int) -> list[Event]:
    """Writer `n`'s events: its own keys, and a third shared with the next writer."""
    stamp = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    own = [f"w{n}-{i}" for i in range(EVENTS - EVENTS // 3)]
    shared = [f"s{(n + 1) % WRITERS}-{i}" for i in range(EVENTS // 6)]
    shared += [f"s{n}-{i}" for i in range(EVENTS // 6)]
    ids = own + shared
    random.Random(n).shuffle(ids)
    return [
        Event(
            topic=f"t{int(i.split('-')[1]) % 5}",
            event_id=i,
            timestamp=stamp,
            source="s",
            payload={},
        )
        for i in ids
    ]


@pytest.fixture
def writers(pg_url: str) -> Iterator[list[PostgresWriter]]:
    opened = [PostgresWriter(postgres(pg_url), StoreOptions()) for _ in range(WRITERS)]
    try:
        yield opened
    finally:
        for w in opened:
            w.close()


def writer_refusals(n: int) -> list[Batch]:
    """Writer `n`'s refused messages in batches of 1 to 50, every other one with a few
    events of its own keys: both forms of the batch statement insert rejections."""
    rng = random.Random(n)
    refused = [
        Refused(f"logs/w{n}", f"{n}-{i}".encode(), Rejection("invalid_json", "not JSON"))
        for i in range(REFUSALS)
    ]
    stamp = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    batches: list[Batch] = []
    at = 0
    while at < len(refused):
        size = rng.randint(1, 50)
        events = [
            Event(topic="t", event_id=f"w{n}-{at}-{i}", timestamp=stamp, source="s", payload={})
            for i in range(rng.randint(1, 5) if len(batches) % 2 else 0)
        ]
        batches.append((events, refused[at : at + size]))
        at += size
    return batches


def in_batches(events: list[Event]) -> list[Batch]:
    """`events` in batches of 1 to 200."""
    rng = random.Random(len(events))
    batches: list[Batch] = []
    at = 0
    while at < len(events):
        batches.append((events[at : at + rng.randint(1, 200)], []))
        at += len(batches[-1][0])
    return batches


def write(
    writer: PostgresWriter,
    batches: list[Batch],
    slow: bool,
    done: threading.Event,
    overtaken: list[int],
    table: str = "events",
) -> None:
    """Record `batches`; `slow`: inside an open transaction, sleeping up to 30 ms before
    each commit, so other writers' later seqs commit first (each batch that saw a higher
    seq of `table` committed before its own commit is added to `overtaken`)."""
    rng = random.Random(len(batches))
    try:
        for events, refused in batches:
            if not slow:
                writer.record(events, refused)
                continue
            statement, params = writer.batch(events, refused)
            with (
                writer._connection("write") as conn,  # noqa: SLF001 (a writer slow to commit)
                writer._connection("read") as outside,  # noqa: SLF001 (what others committed)
                conn.transaction(),
            ):
                conn.execute(statement, params)
                time.sleep(rng.uniform(0, 0.03))
                (mine,) = conn.execute(_MINE.format(table)).fetchone() or (None,)
                (committed,) = outside.execute(
                    f"SELECT coalesce(max(seq), 0) FROM {table}"
                ).fetchone() or (0,)
                if mine is not None and committed > mine:
                    overtaken.append(mine)
    finally:
        done.set()


def follow(
    reader: StoreReader,
    page: Callable[[StoreReader, int], list[Row]],
    writing: list[threading.Event],
) -> list[Row]:
    """Page from the start until the writers are done and a page comes back empty."""
    seen: list[Row] = []
    after = 0
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        finished = all(w.is_set() for w in writing)
        rows = page(reader, after)
        seen += rows
        if rows:
            after = rows[-1].seq
        elif finished:
            return seen
        else:
            time.sleep(random.uniform(0, 0.01))
    raise AssertionError(f"reader not done after {DEADLINE_S}s: {len(seen)} seen")


def read_while_writing(
    pg_url: str,
    pages: list[Callable[[StoreReader, int], list[Row]]],
    writes: list[Callable[[], None]],
    writing: list[threading.Event],
) -> list[list[Row]]:
    """What each of `pages` read, a reader per page in a thread, following the store from
    the start while `writes` run in threads of their own, until they are all done."""
    readers = [open_reader(postgres(pg_url)) for _ in pages]
    results: list[list[Row]] = [[] for _ in pages]
    errors: list[BaseException] = []

    def run(target: Callable[[], object]) -> threading.Thread:
        def guarded() -> None:
            try:
                target()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=guarded)
        thread.start()
        return thread

    def reading(i: int) -> None:
        results[i] = follow(readers[i], pages[i], writing)

    threads = [run(partial(reading, i)) for i in range(len(pages))] + list(map(run, writes))
    for thread in threads:
        thread.join(DEADLINE_S + 10)
    for reader in readers:
        reader.close()
    assert not errors, errors
    return results


def each_saw_all(
    stored: list[Row],
    pages: list[Callable[[StoreReader, int], list[Row]]],
    results: list[list[Row]],
    overtaken: list[int],
) -> None:
    """Each page's reader saw every row `stored`, once, in increasing seq; and commits came
    out of seq order (else the test proves nothing): some batch was overtaken."""
    for page, seen in zip(pages, results, strict=True):
        seqs = [row.seq for row in seen]
        assert seqs == sorted(set(seqs)), f"{page.__name__}: repeated or out of order"
        missing = len(stored) - len(seen)
        assert [row.seq for row in stored] == seqs, f"{page.__name__}: {missing} missed"
    assert overtaken, "no batch was overtaken: the test proves nothing"


@pytest.mark.slow
def test_readers_see_every_event_once_in_order_while_writers_commit_out_of_order(
    pg_url: str, writers: list[PostgresWriter]
) -> None:
    """Three writers (one slow to commit) record overlapping keys while readers page by
    `after` through /events, search and a tail: each reader sees every stored event exactly
    once, in increasing seq; and commits did come out of seq order (else the test proves
    nothing): some reader found a page's watermark held below rows already committed."""
    batches = [writer_events(n) for n in range(WRITERS)]
    writing = [threading.Event() for _ in range(WRITERS)]
    pages: list[Page] = [
        page_of_events,
        page_of_search,
        page_of_search_position,
        page_of_newest_tail,
    ]
    overtaken: list[int] = []
    results = read_while_writing(
        pg_url,
        pages,
        [
            partial(write, writers[n], in_batches(batches[n]), n == 0, writing[n], overtaken)
            for n in range(WRITERS)
        ],
        writing,
    )

    with closing(open_reader(postgres(pg_url))) as check:
        stored = check.events(topic=None, after=0, limit=10 * EVENTS * WRITERS)
        stats = check.stats()
    distinct = {(e.topic, e.event_id) for batch in batches for e in batch}
    assert len(stored) == len(distinct) == stats.unique_processed
    assert stats.received == sum(len(b) for b in batches)
    each_saw_all(stored, pages, results, overtaken)


def test_readers_see_every_rejection_once_in_order_while_writers_commit_out_of_order(
    pg_url: str, writers: list[PostgresWriter]
) -> None:
    """Three writers (one slow to commit) record refused messages, alone or beside events,
    while readers page `rejected` by `after` (as `/rejected` and `logagg rejected export`
    do): each reader sees every rejection exactly once, in increasing seq; and commits did
    come out of seq order."""
    batches = [writer_refusals(n) for n in range(WRITERS)]
    writing = [threading.Event() for _ in range(WRITERS)]
    pages: list[RejectedPage] = [page_of_rejected, page_of_rejected_tail]
    overtaken: list[int] = []
    results = read_while_writing(
        pg_url,
        pages,
        [
            partial(write, writers[n], batches[n], n == 0, writing[n], overtaken, "rejected")
            for n in range(WRITERS)
        ],
        writing,
    )

    with closing(open_reader(postgres(pg_url))) as check:
        stored = check.rejected(after=0, limit=KEEP_REJECTED)
    assert len(stored) == WRITERS * REFUSALS
    each_saw_all(stored, pages, results, overtaken)


def test_a_readers_watermark_never_moves_back(pg_url: str, writers: list[PostgresWriter]) -> None:
    """A writer that read the sequence before a reader did, and took its lock after, holds
    a key below that reader's watermark: a fresh reader stops there (safe, and late), while
    one that already read further keeps its higher watermark (still true: what was finished
    stays finished), so a stream never moves back over rows it already passed."""
    stamp = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    writers[0].record(
        [
            Event(topic="t", event_id=str(i), timestamp=stamp, source="s", payload={})
            for i in range(3)
        ],
        [],
    )
    with closing(open_reader(postgres(pg_url))) as reader:
        assert len(reader.events(topic=None, after=0, limit=10)) == 3
        with writers[1]._connection("write") as late, late.transaction():  # noqa: SLF001 (a writer caught between its two steps)
            late.execute("LOCK TABLE events IN ROW EXCLUSIVE MODE")
            late.execute("SELECT pg_advisory_xact_lock_shared(1)")
            assert len(reader.events(topic=None, after=0, limit=10)) == 3
            with closing(open_reader(postgres(pg_url))) as fresh:
                assert [e.seq for e in fresh.events(topic=None, after=0, limit=10)] == [1]


def test_each_table_stops_at_its_own_watermark(pg_url: str, writers: list[PostgresWriter]) -> None:
    """A batch with events and refusals holds a bigint key (events) and a two-int4 key
    (rejected), and the purge fence (two-int4, keyed far above any seq): each key holds
    back the reads of its own table only, and the fence neither."""
    stamp = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    written = 0

    def record() -> None:
        nonlocal written
        event = Event(topic="t", event_id=str(written), timestamp=stamp, source="s", payload={})
        writers[0].record([event], [Refused("logs/t", b"{", Rejection("not_json", "no"))])
        written += 1

    def seen() -> tuple[int, int]:
        """How many events and rejections a fresh reader sees (one that never read further
        before: see `test_a_readers_watermark_never_moves_back`)."""
        with closing(open_reader(postgres(pg_url))) as fresh:
            return (
                len(fresh.events(topic=None, after=0, limit=10)),
                len(fresh.rejected(after=0, limit=10)),
            )

    record()
    with writers[1]._connection("write") as batch, batch.transaction():  # noqa: SLF001 (a batch in flight)
        batch.execute("LOCK TABLE events, rejected IN ROW EXCLUSIVE MODE")
        batch.execute(FENCE_SHARED)
        record()
        assert seen() == (2, 2)
        batch.execute("SELECT pg_advisory_xact_lock_shared(0, 2)")  # about to draw rejected 3
        record()
        assert seen() == (3, 2)
    assert seen() == (3, 3)
    with writers[1]._connection("write") as batch, batch.transaction():  # noqa: SLF001 (a batch in flight)
        batch.execute("LOCK TABLE events, rejected IN ROW EXCLUSIVE MODE")
        batch.execute("SELECT pg_advisory_xact_lock_shared(3::bigint)")  # about to draw events 4
        record()
        assert seen() == (3, 4)
