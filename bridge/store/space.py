"""The store's room: how each backend measures the size that `--max-store-bytes` caps, and
the report a bridge keeps in `meta` so that every reader (the sidecar) can say why it
stopped writing.

The measure (`used_bytes`), chosen to be cheap and to see space made by deleting rows:
- SQLite: (page_count - freelist_count) * page_size: the pages that hold data, those still
  in the WAL included. Pages freed by deleted rows go to the freelist and are reused
  before the file grows, so they count as room at once (a VACUUM returns them to the
  disk). The WAL file itself is left out: it is bounded by the autocheckpoint (1000
  pages, about 4 MiB, while no reader holds a checkpoint back) and never shrinks once
  grown, and with SQLite's secure_delete (Debian's default) a DELETE writes every page it
  frees into it, so counting it would hide the room a DELETE makes until much later.
  Two PRAGMAs on the writer's connection: microseconds, so it is taken before every batch.
- PostgreSQL: the sum of `pg_total_relation_size` (heap, TOAST, indexes) of the tables in
  logagg's schema: what logagg itself holds on the server's disk, whatever else shares
  the database (`pg_database_size` would count other applications' tables, and another
  logagg schema's). One catalog query that stats the files; taken at most once a second
  or per `POSTGRES_MEASURE_BYTES` committed. Files do not shrink when rows are deleted:
  a vacuum records the room inside them in each relation's free space map, and new rows
  fill it before a file grows. So once the files reach the cap, the room the map shows
  (`POSTGRES_REUSABLE_BYTES`, heap, TOAST and index pages) is subtracted, where the
  `pg_freespacemap` extension is installed in the database (it is not trusted: a
  superuser installs it; without it the bridge says once in its log that deleted rows
  will not count as room). Reading the map costs a scan of it, ~0.75 µs a page (8 kB):
  ~0.1 s a GB, so it is read only at the cap and then at most every
  `max(1 s, REUSABLE_COST_TIMES * its last read)` (`bridge.capacity`).

The report lives under `space:<client_id>` in `meta`, a table both schemas have, so it
needs no schema change; a reader shows only the reports of bridges whose heartbeat is
fresh, so a bridge gone for good leaves no stale "full" behind.
"""

from __future__ import annotations

from bridge.store.base import SpaceReport
from bridge.store.reading import Connection

SPACE_KEY = "space:"
# SQLite's WAL size after a checkpoint resets it (both files: the events' and the text
# index's): without a limit it keeps its high-water mark (a purge under readers grew it
# 4 -> 25 MiB, for good); 4 MiB is one autocheckpoint.
WAL_LIMIT_BYTES = 4 * 1024 * 1024
# PostgreSQL's measure is taken again once this many bytes of messages were committed
# since the last one (or a second has passed): see `bridge.capacity`.
POSTGRES_MEASURE_BYTES = 1024 * 1024

# The schema of pg_freespacemap's functions, where the extension is installed.
POSTGRES_FREE_SPACE_MAP = (
    "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'pg_freespacemap'"
)

# The free space the maps of logagg's relations record (tables, their TOAST tables and
# indexes), with `{fsm}` the extension's schema (quoted).
POSTGRES_REUSABLE_BYTES = """
WITH mine AS (
    SELECT oid, relkind, reltoastrelid FROM pg_class
    WHERE relnamespace = to_regnamespace(current_schema()) AND relkind IN ('r', 'm', 'i')
), rel AS (
    SELECT oid FROM mine UNION ALL SELECT reltoastrelid FROM mine WHERE reltoastrelid <> 0
)
SELECT coalesce(sum(f.avail), 0)::bigint
FROM rel, LATERAL {fsm}.pg_freespace(rel.oid::regclass) AS f
"""

POSTGRES_USED_BYTES = """
SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class AS c
WHERE c.relnamespace = to_regnamespace(current_schema()) AND c.relkind IN ('r', 'm')
"""


def sqlite_used_bytes(conn: Connection) -> int:
    """The SQLite measure (see the module's docstring)."""
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    (free,) = conn.execute("PRAGMA freelist_count").fetchone()
    (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    return int((pages - free) * page_size)


def put_report(conn: Connection, mark: str, client_id: str, report: SpaceReport | None) -> None:
    """Write `client_id`'s report, or remove it (None); `mark` is the driver's placeholder."""
    key = SPACE_KEY + client_id
    if report is None:
        conn.execute(f"DELETE FROM meta WHERE key = {mark}", (key,))
        return
    conn.execute(
        f"INSERT INTO meta (key, value) VALUES ({mark}, {mark})"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, report.to_json()),
    )


def read_reports(conn: Connection, mark: str) -> list[tuple[str, str]]:
    """(client_id, report) of every bridge that left one, live or not."""
    rows = conn.execute(
        f"SELECT key, value FROM meta WHERE key LIKE {mark} ORDER BY key", (SPACE_KEY + "%",)
    ).fetchall()
    return [(key.removeprefix(SPACE_KEY), value) for key, value in rows]
