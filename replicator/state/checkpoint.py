"""Where we are: snapshot progress per table, written in the same transaction as
the chunk it describes, so a crash can never separate data from position."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Self

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from replicator.coerce import decode_key, json_key
from replicator.identifiers import pg_ident


def _jkey(key: tuple[Any, ...] | None) -> Jsonb | None:
    return Jsonb(json_key(key)) if key is not None else None


def _dkey(value: Any) -> tuple[Any, ...] | None:
    return decode_key(value) if value is not None else None


class _Position:
    """What a snapshot progress record (a table's, a range's) does on a committed chunk."""

    __slots__ = ()
    rows_read: int
    rows_written: int
    dead_letters: int

    def advance(self, last_key: tuple[Any, ...], read: int, written: int, dead: int) -> Self:
        """Past a chunk ending at ``last_key`` that read, wrote and dead-lettered so many rows."""
        return replace(
            self,  # type: ignore[type-var]  # every subclass is a dataclass
            last_key=last_key,
            rows_read=self.rows_read + read,
            rows_written=self.rows_written + written,
            dead_letters=self.dead_letters + dead,
        )


@dataclass(frozen=True, slots=True)
class SnapshotProgress(_Position):
    table: str
    last_key: tuple[Any, ...] | None  # None: nothing copied yet
    rows_read: int = 0
    rows_written: int = 0
    dead_letters: int = 0
    method: str = "copy"  # "copy" into an empty table, or "merge" (upsert via staging)
    rows_total: int | None = None
    done: bool = False


def load_progress(cur: psycopg.Cursor[Any], schema: str) -> dict[str, SnapshotProgress]:
    cur.execute(
        sql.SQL(
            "SELECT table_name, last_key, rows_read, rows_written, dead_letters, method,"
            " rows_total, done FROM {}"
        ).format(pg_ident(schema, "snapshot_progress"))
    )
    out = {}
    for row in cur.fetchall():
        out[str(row[0])] = SnapshotProgress(
            table=str(row[0]),
            # json_key stores blobs, invalid UTF-8, NUL text as descriptions: undo that
            last_key=_dkey(row[1]),
            rows_read=int(row[2]),
            rows_written=int(row[3]),
            dead_letters=int(row[4]),
            method=str(row[5]),
            rows_total=int(row[6]) if row[6] is not None else None,
            done=bool(row[7]),
        )
    return out


def save_progress(cur: psycopg.Cursor[Any], schema: str, p: SnapshotProgress) -> None:
    cur.execute(
        sql.SQL(
            "INSERT INTO {} (table_name, last_key, rows_read, rows_written, dead_letters, method,"
            " rows_total, done, finished_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, CASE WHEN %s THEN now() END)"
            " ON CONFLICT (table_name) DO UPDATE SET last_key = EXCLUDED.last_key,"
            " rows_read = EXCLUDED.rows_read, rows_written = EXCLUDED.rows_written,"
            " dead_letters = EXCLUDED.dead_letters, method = EXCLUDED.method,"
            " rows_total = EXCLUDED.rows_total, done = EXCLUDED.done,"
            " finished_at = EXCLUDED.finished_at, updated_at = now()"
        ).format(pg_ident(schema, "snapshot_progress")),
        (
            p.table,
            _jkey(p.last_key),
            p.rows_read,
            p.rows_written,
            p.dead_letters,
            p.method,
            p.rows_total,
            p.done,
            p.done,
        ),
    )


def reset_progress(cur: psycopg.Cursor[Any], schema: str) -> None:
    cur.execute(sql.SQL("DELETE FROM {}").format(pg_ident(schema, "snapshot_progress")))


def forget_progress(cur: psycopg.Cursor[Any], schema: str, tables: Sequence[str]) -> None:
    """Snapshot progress of tables gone or new again: a table that comes (back) is
    copied in full, whatever an earlier table of its name left there."""
    if tables:
        cur.execute(
            sql.SQL("DELETE FROM {} WHERE table_name = ANY(%s)").format(
                pg_ident(schema, "snapshot_progress")
            ),
            (list(tables),),
        )


@dataclass(frozen=True, slots=True)
class PartProgress(_Position):
    """One key range (``key_from``, ``key_to``] of a table the snapshot split; a
    bound of None is open (the last part reads up to the table's largest key)."""

    table: str
    part: int
    key_from: tuple[Any, ...] | None
    key_to: tuple[Any, ...] | None
    last_key: tuple[Any, ...] | None = None
    rows_read: int = 0
    rows_written: int = 0
    dead_letters: int = 0
    done: bool = False

    @property
    def after(self) -> tuple[Any, ...] | None:
        """The key the next chunk starts after (exclusive)."""
        return self.last_key if self.last_key is not None else self.key_from


def load_parts(cur: psycopg.Cursor[Any], schema: str, table: str) -> list[PartProgress]:
    cur.execute(
        sql.SQL(
            "SELECT part, key_from, key_to, last_key, rows_read, rows_written, dead_letters,"
            " done FROM {} WHERE table_name = %s ORDER BY part"
        ).format(pg_ident(schema, "snapshot_parts")),
        (table,),
    )
    return [
        PartProgress(
            table=table,
            part=int(r[0]),
            key_from=_dkey(r[1]),
            key_to=_dkey(r[2]),
            last_key=_dkey(r[3]),
            rows_read=int(r[4]),
            rows_written=int(r[5]),
            dead_letters=int(r[6]),
            done=bool(r[7]),
        )
        for r in cur.fetchall()
    ]


def create_parts(cur: psycopg.Cursor[Any], schema: str, parts: list[PartProgress]) -> None:
    """Record a table's split (its row in snapshot_progress must exist)."""
    cur.executemany(
        sql.SQL(
            "INSERT INTO {} (table_name, part, key_from, key_to) VALUES (%s, %s, %s, %s)"
        ).format(pg_ident(schema, "snapshot_parts")),
        [(p.table, p.part, _jkey(p.key_from), _jkey(p.key_to)) for p in parts],
    )


def save_part(
    cur: psycopg.Cursor[Any],
    schema: str,
    p: PartProgress,
    added: tuple[int, int, int],
) -> None:
    """A part's new position, and the rows it ``added`` (read, written, dead-lettered)
    counted into its table's row: parts of one table commit concurrently, so the
    table's sums are incremented, never overwritten."""
    cur.execute(
        sql.SQL(
            "UPDATE {} SET last_key = %s, rows_read = %s, rows_written = %s,"
            " dead_letters = %s, done = %s, updated_at = now()"
            " WHERE table_name = %s AND part = %s"
        ).format(pg_ident(schema, "snapshot_parts")),
        (
            _jkey(p.last_key),
            p.rows_read,
            p.rows_written,
            p.dead_letters,
            p.done,
            p.table,
            p.part,
        ),
    )
    if cur.rowcount != 1:
        raise RuntimeError(f"the snapshot range {p.part} of table {p.table!r} is not recorded")
    if any(added):
        cur.execute(
            sql.SQL(
                "UPDATE {} SET rows_read = rows_read + %s, rows_written = rows_written + %s,"
                " dead_letters = dead_letters + %s, updated_at = now() WHERE table_name = %s"
            ).format(pg_ident(schema, "snapshot_progress")),
            (*added, p.table),
        )


# -- cursor capture ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CursorState:
    """A cursor table's row in ``cursor_position``: where its cursor stands and
    when it was last reconciled (unix seconds)."""

    table: str
    kind: str
    column: str
    position: dict[str, Any] | None
    reconcile_started_at: float | None
    reconciled_at: float | None


def count_cursor_tables(cur: psycopg.Cursor[Any], schema: str) -> int:
    """Tables followed by a cursor (0 when the state schema has no cursor table yet)."""
    cur.execute(
        "SELECT to_regclass(format('%%I.cursor_position', %s::text)) IS NOT NULL", (schema,)
    )
    row = cur.fetchone()
    if not row or not row[0]:
        return 0
    cur.execute(sql.SQL("SELECT count(*) FROM {}").format(pg_ident(schema, "cursor_position")))
    found = cur.fetchone()
    return int(found[0]) if found else 0


def load_cursor_states(cur: psycopg.Cursor[Any], schema: str) -> dict[str, CursorState]:
    cur.execute(
        sql.SQL(
            "SELECT table_name, kind, column_name, position,"
            " extract(epoch FROM reconcile_started_at)::float8,"
            " extract(epoch FROM reconciled_at)::float8 FROM {}"
        ).format(pg_ident(schema, "cursor_position"))
    )
    return {
        str(r[0]): CursorState(str(r[0]), str(r[1]), str(r[2]), r[3], r[4], r[5])
        for r in cur.fetchall()
    }


def init_cursor(
    cur: psycopg.Cursor[Any],
    schema: str,
    table: str,
    kind: str,
    column: str,
    position: dict[str, Any],
) -> None:
    """Record a cursor's start (before the snapshot copies the table), replacing a
    position recorded for another cursor column; reconciliation history is kept."""
    cur.execute(
        sql.SQL(
            "INSERT INTO {} (table_name, kind, column_name, position, snapshot_position)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (table_name) DO UPDATE SET"
            " kind = EXCLUDED.kind, column_name = EXCLUDED.column_name,"
            " position = EXCLUDED.position, snapshot_position = EXCLUDED.snapshot_position"
        ).format(pg_ident(schema, "cursor_position")),
        (table, kind, column, Jsonb(position), Jsonb(position)),
    )


def save_cursor_position(
    cur: psycopg.Cursor[Any], schema: str, table: str, position: dict[str, Any], rows: int
) -> None:
    """Written in the same transaction as the rows the position covers."""
    cur.execute(
        sql.SQL(
            "UPDATE {} SET position = %s, rows_applied = rows_applied + %s, applied_at = now()"
            " WHERE table_name = %s"
        ).format(pg_ident(schema, "cursor_position")),
        (Jsonb(position), rows, table),
    )


def drop_cursor(cur: psycopg.Cursor[Any], schema: str, table: str) -> None:
    cur.execute(
        sql.SQL("DELETE FROM {} WHERE table_name = %s").format(pg_ident(schema, "cursor_position")),
        (table,),
    )


def reconcile_started(cur: psycopg.Cursor[Any], schema: str, table: str) -> None:
    cur.execute(
        sql.SQL("UPDATE {} SET reconcile_started_at = now() WHERE table_name = %s").format(
            pg_ident(schema, "cursor_position")
        ),
        (table,),
    )


def reconcile_finished(cur: psycopg.Cursor[Any], schema: str, table: str, repaired: int) -> None:
    cur.execute(
        sql.SQL(
            "UPDATE {} SET reconciled_at = now(), reconcile_passes = reconcile_passes + 1,"
            " reconcile_repaired = reconcile_repaired + %s WHERE table_name = %s"
        ).format(pg_ident(schema, "cursor_position")),
        (repaired, table),
    )


def load_meta(cur: psycopg.Cursor[Any], schema: str, key: str) -> Any:
    """The value under ``key`` in the state schema's key/value table, or None."""
    cur.execute(
        sql.SQL("SELECT value FROM {} WHERE key = %s").format(pg_ident(schema, "meta")), (key,)
    )
    row = cur.fetchone()
    return row[0] if row else None


def save_meta(cur: psycopg.Cursor[Any], schema: str, key: str, value: object) -> None:
    """Set ``key`` in the state schema's key/value table (JSON ``value``)."""
    cur.execute(
        sql.SQL(
            "INSERT INTO {} (key, value) VALUES (%s, %s) ON CONFLICT (key) "
            "DO UPDATE SET value = EXCLUDED.value, updated_at = now()"
        ).format(pg_ident(schema, "meta")),
        (key, Jsonb(value)),
    )


def meta_keys(cur: psycopg.Cursor[Any], schema: str, prefix: str) -> list[str]:
    """The keys in the state schema's key/value table that begin with ``prefix``, in order."""
    # The prefix's own "_" and "%" (as in "deferred_indexes:") stand for themselves.
    pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    cur.execute(
        sql.SQL("SELECT key FROM {} WHERE key LIKE %s ORDER BY key").format(
            pg_ident(schema, "meta")
        ),
        (pattern,),
    )
    return [str(r[0]) for r in cur.fetchall()]


def delete_meta(cur: psycopg.Cursor[Any], schema: str, key: str) -> None:
    """Remove ``key`` from the state schema's key/value table (none there: nothing to do)."""
    cur.execute(sql.SQL("DELETE FROM {} WHERE key = %s").format(pg_ident(schema, "meta")), (key,))


def consumer_id(cur: psycopg.Cursor[Any], schema: str, *, create: bool) -> str | None:
    """This target's id among the consumers of the source's change log
    (replicator/source/consumers.py), kept in the state schema so it is the same
    for every run against this target; made on first use when ``create``."""
    found = load_meta(cur, schema, "consumer_id")
    if found is None and create:
        found = uuid.uuid4().hex[:12]
        save_meta(cur, schema, "consumer_id", found)
    return None if found is None else str(found)
