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
  logagg schema's). Files do not shrink when rows are deleted: PostgreSQL reuses the space
  inside them after a vacuum, but the measure falls only when a table is truncated,
  dropped (a partition) or rewritten (VACUUM FULL). One catalog query that stats the files;
  taken at most once a second or per `POSTGRES_MEASURE_BYTES` committed.

The report lives under `space:<client_id>` in `meta`, a table both schemas have, so it
needs no schema change; a reader shows only the reports of bridges whose heartbeat is
fresh, so a bridge gone for good leaves no stale "full" behind.
"""

from __future__ import annotations

from bridge.store.base import SpaceReport
from bridge.store.reading import Connection

SPACE_KEY = "space:"
# PostgreSQL's measure is taken again once this many bytes of messages were committed
# since the last one (or a second has passed): see `bridge.capacity`.
POSTGRES_MEASURE_BYTES = 1024 * 1024

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
