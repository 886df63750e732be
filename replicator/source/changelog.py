"""Change capture in the source: triggers that append to one change-log table.

Per replicated table, AFTER INSERT / UPDATE / DELETE triggers write one row
each to ``_replicator_changelog``. The row image is built by ``json_object()``
inside the trigger, so a change is captured as of its own transaction, and
``seq`` (AUTOINCREMENT: never reused, even after pruning) orders changes in
commit order: SQLite has one writer at a time and a transaction holds the
write lock from its first write to its commit, so no lower ``seq`` can appear
after a higher one is visible.

Values JSON cannot carry exactly are tagged: a REAL becomes ``["r", "%!.17g"]``
(``json_object`` would print only 15 digits), or ``["r", "%!.17g", 744]`` when
scaled by 2**-744 first (|x| >= 1e100), a BLOB ``["b", hex]``. Text that
is not valid UTF-8 travels as its raw bytes and is decoded with
``surrogateescape``. Tables wider than SQLite's function-argument limit get an
image that is an array of objects, merged on read.

An UPDATE that changes the key logs a delete of the old key, then the new row.

Writes made while ``_replicator_origin`` holds a row are not logged: the
reverse direction (replicator/reverse/) inserts one at the start of each of its
SQLite transactions and deletes it before commit, so what it copies back from
PostgreSQL never travels forward again. Only the writing transaction can see
that row (SQLite has one writer, readers see committed data), so the
application's own writes are always logged.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from replicator.errors import ReplicatorError, SourceError
from replicator.identifiers import sqlite_ident
from replicator.source import consumers
from replicator.source.sqlite import ROWID, SourceTable

CHANGELOG = "_replicator_changelog"
ORIGIN = "_replicator_origin"  # non-empty only inside a reverse-apply transaction
TRIGGER_PREFIX = "_replicator_"
# json_object() takes two arguments per column; stay well under SQLite's
# SQLITE_MAX_FUNCTION_ARG (127 before 3.48).
COLUMNS_PER_OBJECT = 60

_CREATE_LOG = f"""
CREATE TABLE IF NOT EXISTS {sqlite_ident(CHANGELOG)} (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    tbl         TEXT NOT NULL,
    op          TEXT NOT NULL CHECK (op IN ('I', 'U', 'D')),
    key         TEXT NOT NULL,
    image       TEXT,
    captured_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
)
"""


_CREATE_ORIGIN = f"CREATE TABLE IF NOT EXISTS {sqlite_ident(ORIGIN)} (origin TEXT NOT NULL)"
_NOT_OURS = f"WHEN NOT EXISTS (SELECT 1 FROM {sqlite_ident(ORIGIN)})"


def sqlite_text(value: str) -> str:
    """A SQLite string literal (single quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


# SQLite before 3.43 prints 17 significant digits exactly only up to about 1e100;
# beyond, the last digit can be off by one. Larger magnitudes are scaled into the
# exact range by 2**-744, a multiplication by a power of two (exact), built from
# integer constants so that no decimal literal has to be parsed exactly either.
_REAL_SCALE_EXP = 744
_REAL_SCALE = "*".join(["(1.0/(1<<62))"] * (_REAL_SCALE_EXP // 62))


def _value(ref: str) -> str:
    """Trigger expression that carries one column value losslessly into JSON."""
    return (
        f"CASE typeof({ref}) WHEN 'real' THEN CASE WHEN abs({ref}) < 1e100 "
        f"THEN json_array('r', printf('%!.17g', {ref})) "
        f"ELSE json_array('r', printf('%!.17g', {ref}*{_REAL_SCALE}), {_REAL_SCALE_EXP}) END "
        f"WHEN 'blob' THEN json_array('b', hex({ref})) "
        # `|| ''` drops SQLite's JSON subtype: text written by json_set() and friends
        # must be captured as the text it is, not spliced in as a JSON object.
        f"WHEN 'text' THEN {ref} || '' ELSE {ref} END"
    )


def _ref(prefix: str, column: str) -> str:
    return f"{prefix}.{ROWID}" if column == ROWID else f"{prefix}.{sqlite_ident(column)}"


def key_expr(table: SourceTable, prefix: str) -> str:
    return "json_array(" + ", ".join(_value(_ref(prefix, k)) for k in table.key) + ")"


def image_expr(table: SourceTable, prefix: str) -> str:
    cols = [c.name for c in table.stored_columns]
    parts = []
    for start in range(0, len(cols), COLUMNS_PER_OBJECT):
        chunk = cols[start : start + COLUMNS_PER_OBJECT]
        args = ", ".join(f"{sqlite_text(c)}, {_value(_ref(prefix, c))}" for c in chunk)
        parts.append(f"json_object({args})")
    if len(parts) == 1:
        return parts[0]
    return "json_array(" + ", ".join(parts) + ")"


def trigger_names(table: str) -> dict[str, str]:
    return {op: f"{TRIGGER_PREFIX}{op}_{table}" for op in ("ins", "upd", "del")}


def trigger_sql(table: SourceTable) -> list[str]:
    log = sqlite_ident(CHANGELOG)
    name = sqlite_text(table.name)
    t = sqlite_ident(table.name)
    names = trigger_names(table.name)
    key_changed = " OR ".join(f"{_ref('OLD', k)} IS NOT {_ref('NEW', k)}" for k in table.key)
    return [
        f"CREATE TRIGGER {sqlite_ident(names['ins'])} AFTER INSERT ON {t} {_NOT_OURS} BEGIN "
        f"INSERT INTO {log} (tbl, op, key, image) VALUES "
        f"({name}, 'I', {key_expr(table, 'NEW')}, {image_expr(table, 'NEW')}); END",
        f"CREATE TRIGGER {sqlite_ident(names['upd'])} AFTER UPDATE ON {t} {_NOT_OURS} BEGIN "
        f"INSERT INTO {log} (tbl, op, key, image) SELECT {name}, 'D', "
        f"{key_expr(table, 'OLD')}, NULL WHERE {key_changed}; "
        f"INSERT INTO {log} (tbl, op, key, image) VALUES "
        f"({name}, 'U', {key_expr(table, 'NEW')}, {image_expr(table, 'NEW')}); END",
        f"CREATE TRIGGER {sqlite_ident(names['del'])} AFTER DELETE ON {t} {_NOT_OURS} BEGIN "
        f"INSERT INTO {log} (tbl, op, key, image) VALUES "
        f"({name}, 'D', {key_expr(table, 'OLD')}, NULL); END",
    ]


def installed_triggers(conn: sqlite3.Connection) -> dict[str, str]:
    """Our triggers in the source: trigger name -> table name."""
    rows = conn.execute(
        "SELECT name, tbl_name FROM sqlite_schema "
        "WHERE type = 'trigger' AND name LIKE ? ESCAPE '\\'",
        (TRIGGER_PREFIX.replace("_", "\\_") + "%",),
    ).fetchall()
    return {str(r[0]): str(r[1]) for r in rows}


def _trigger_text(conn: sqlite3.Connection) -> dict[str, str]:
    """Our triggers' CREATE statements as SQLite keeps them (verbatim)."""
    rows = conn.execute(
        "SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' AND name LIKE ? ESCAPE '\\'",
        (TRIGGER_PREFIX.replace("_", "\\_") + "%",),
    ).fetchall()
    return {str(r[0]): str(r[1]) for r in rows}


def unguarded_triggers(conn: sqlite3.Connection) -> list[str]:
    """Our triggers that would log a reverse write (installed before the origin
    guard existed): the reverse direction refuses to run while there are any."""
    return sorted(name for name, stmt in _trigger_text(conn).items() if _NOT_OURS not in stmt)


def begin_foreign_write(conn: sqlite3.Connection) -> None:
    """Inside the caller's write transaction: what it writes from now on is not
    logged (see the module's docstring). :func:`end_foreign_write` before commit."""
    conn.execute(_CREATE_ORIGIN)
    conn.execute(f"INSERT INTO {sqlite_ident(ORIGIN)} (origin) VALUES ('reverse')")


def end_foreign_write(conn: sqlite3.Connection) -> None:
    conn.execute(f"DELETE FROM {sqlite_ident(ORIGIN)}")


def drop_origin_if_unused(conn: sqlite3.Connection) -> bool:
    """In the caller's write transaction: drop the origin table when no trigger of
    ours reads it any more (``replicator uninstall`` ran, then the reverse direction
    created it again): the application's file keeps no object of ours."""
    if installed_triggers(conn):
        return False
    conn.execute(f"DROP TABLE IF EXISTS {sqlite_ident(ORIGIN)}")
    return True


def changelog_exists(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (CHANGELOG,)
    ).fetchone()
    return row is not None


@dataclass(frozen=True, slots=True)
class Installed:
    """What :func:`install_triggers` did, read inside its write transaction."""

    tables: tuple[str, ...]
    head: int  # the log's head when the new triggers took over: later changes are theirs
    schema_version: int  # the source's schema version with our own DDL in it
    # Changes after the consumer's position were pruned already (by another target's
    # replicator while this one was not registered): it is registered at ``head``
    # instead, and must re-sync.
    lost: bool = False
    registered_at: int | None = None  # the position the consumer was registered at


def install(conn: sqlite3.Connection, tables: Sequence[SourceTable]) -> list[str]:
    """Create the log and (re)create the triggers of ``tables`` in one write transaction.

    Recreating in one transaction means no change slips between the old
    triggers and the new ones. Triggers of tables no longer replicated (by this
    or any registered consumer) are dropped. Returns the names of the tables
    whose triggers were installed.
    """
    return list(install_triggers(conn, tables).tables)


def install_triggers(
    conn: sqlite3.Connection,
    tables: Sequence[SourceTable],
    *,
    expect_version: int | None = None,
    consumer: consumers.Identity | None = None,
    position: int | None = None,
    since: int | None = None,
) -> Installed:
    """:func:`install`, also telling where the new triggers' changes begin and the
    schema version they were installed at (a later version is someone else's change).

    With ``expect_version`` (the version ``tables`` were described at), raises
    :class:`SchemaChanged` and changes nothing when the schema moved since.

    A trigger already there with the very statement wanted is left alone, so
    that several replicators sharing the source do not change its schema (and
    so wake each other) over and over. With ``consumer``, registers it in the
    same transaction at ``position`` (its target's durable position; None for a
    new target, registered at the head), after checking no change after that
    position was pruned (:attr:`Installed.lost` when some were). While it is
    registered, no other consumer prunes past its recorded position; ``since``
    is the last position recorded for it in this run: when its registration is
    gone, the check starts there (others may have pruned past it meanwhile).
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        raise SourceError(f"cannot lock the source to install triggers: {exc}") from exc
    try:
        if expect_version is not None:
            now = int(conn.execute("PRAGMA schema_version").fetchone()[0])
            if now != expect_version:
                conn.execute("ROLLBACK")
                raise SchemaChanged(now)
        conn.execute(_CREATE_LOG)
        conn.execute(_CREATE_ORIGIN)
        consumers.ensure_table(conn)
        _replace_triggers(conn, tables, consumers.needed_tables(conn, besides=_id(consumer)))
        head = head_position(conn)
        check = position
        if position is not None and since is not None and not registered(conn, consumer):
            check = min(position, since)  # unregistered since then: others may have pruned
        lost = check is not None and pruned_past(conn, check, head)
        at = None
        if consumer is not None:
            at = head if check is None or lost else min(check, head)
            consumers.register(conn, consumer, at, [t.name for t in tables])
        version = int(conn.execute("PRAGMA schema_version").fetchone()[0])
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        conn.execute("ROLLBACK")
        if "readonly" in str(exc).lower() or "read-only" in str(exc).lower():
            raise SourceError(
                "the source is read-only, so change-capture triggers cannot be installed; "
                'use capture = "cursor"'
            ) from exc
        raise SourceError(f"installing change-capture triggers failed: {exc}") from exc
    return Installed(tuple(t.name for t in tables), head, version, lost, at)


def _id(consumer: consumers.Identity | None) -> str | None:
    return consumer.consumer if consumer is not None else None


def registered(conn: sqlite3.Connection, consumer: consumers.Identity | None) -> bool:
    return consumer is not None and consumers.is_registered(conn, consumer.consumer)


def _replace_triggers(
    conn: sqlite3.Connection, tables: Sequence[SourceTable], keep: set[str]
) -> None:
    """Create the triggers of ``tables`` that are missing or differ; drop ours on any
    other table but those in ``keep`` (another consumer's)."""
    wanted = {t.name for t in tables}
    for trig, on in installed_triggers(conn).items():
        if on not in wanted and on not in keep:
            conn.execute(f"DROP TRIGGER IF EXISTS {sqlite_ident(trig)}")
    there = _trigger_text(conn)
    for table in tables:
        for name, stmt in zip(trigger_names(table.name).values(), trigger_sql(table), strict=True):
            if there.get(name) != stmt:
                conn.execute(f"DROP TRIGGER IF EXISTS {sqlite_ident(name)}")
                conn.execute(stmt)


def pruned_past(conn: sqlite3.Connection, position: int, head: int) -> bool:
    """Whether changes after ``position`` were pruned from the log already.

    The log is pruned from its low end only and ``seq`` never goes back, so
    they were when its first row is past ``position + 1`` (or, empty, when its
    head is past ``position``). A head below ``position`` is another matter (a
    restored file, or a log removed and created again): the daemon refuses to
    stream from it (``rewound``, replicator/stream/heartbeat.py).
    """
    if position >= head:
        return False
    row = conn.execute(f"SELECT min(seq) FROM {sqlite_ident(CHANGELOG)}").fetchone()
    first = head + 1 if row[0] is None else int(row[0])
    return first > position + 1


def uninstall(conn: sqlite3.Connection) -> tuple[int, bool]:
    """Drop every trigger of ours, the change log and its consumers.
    Returns (triggers, log dropped)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        triggers = installed_triggers(conn)
        for trig in triggers:
            conn.execute(f"DROP TRIGGER IF EXISTS {sqlite_ident(trig)}")
        had_log = changelog_exists(conn)
        conn.execute(f"DROP TABLE IF EXISTS {sqlite_ident(CHANGELOG)}")
        conn.execute(f"DROP TABLE IF EXISTS {sqlite_ident(ORIGIN)}")
        consumers.drop_table(conn)
        if had_log:
            conn.execute("DELETE FROM sqlite_sequence WHERE name = ?", (CHANGELOG,))
        conn.execute("COMMIT")
    except sqlite3.Error:
        conn.execute("ROLLBACK")
        raise
    return len(triggers), had_log


def unregister(conn: sqlite3.Connection, consumer: str) -> tuple[bool, int]:
    """Forget ``consumer`` and drop the triggers only it captured with, while other
    consumers remain (the last one's stay: a target set up with ``init`` may not
    have registered yet; ``uninstall`` removes them). The log stays; its rows go
    with the others' next prune. Returns (it was registered, triggers dropped)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        mine = [c for c in consumers.registered(conn) if c.consumer == consumer]
        found = consumers.drop(conn, consumer)
        others = consumers.registered(conn)
        keep = {t for c in others for t in c.tables}
        only = {t for c in mine for t in c.tables} - keep if others else set()
        gone = [t for t, table in installed_triggers(conn).items() if table in only]
        for trig in gone:
            conn.execute(f"DROP TRIGGER IF EXISTS {sqlite_ident(trig)}")
        conn.execute("COMMIT")
    except sqlite3.Error:
        conn.execute("ROLLBACK")
        raise
    return found, len(gone)


def head_position(conn: sqlite3.Connection) -> int:
    """The highest ``seq`` ever handed out (0 when none): the log's current end."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (CHANGELOG,)).fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True, slots=True)
class Change:
    seq: int
    table: str
    op: str  # "I", "U" or "D"
    key: tuple[Any, ...]
    image: dict[str, Any] | None  # None for deletes
    captured_at: float  # unix seconds, the source transaction's clock

    @property
    def is_delete(self) -> bool:
        return self.op == "D"

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Change:
        seq, table, op, key_raw, image_raw, captured_at = row
        key = tuple(decode_value(v) for v in _loads(key_raw))
        image: dict[str, Any] | None = None
        if image_raw is not None:
            parsed = _loads(image_raw)
            if isinstance(parsed, list):  # a wide table: several objects
                merged: dict[str, Any] = {}
                for part in parsed:
                    merged.update(part)
                parsed = merged
            image = {k: decode_value(v) for k, v in parsed.items()}
        return cls(int(seq), str(table), str(op), key, image, float(captured_at))


def _loads(raw: bytes | str) -> Any:
    text = raw.decode("utf-8", errors="surrogateescape") if isinstance(raw, bytes) else raw
    return json.loads(text)


def decode_value(value: Any) -> Any:
    """Undo the trigger's tagging: ["r", text] -> float, ["r", text, exp] ->
    float(text) * 2**exp, ["b", hex] -> bytes."""
    if isinstance(value, list) and len(value) == 2:
        tag, body = value
        if tag == "r":
            return float(body)
        if tag == "b":
            return bytes.fromhex(body)
    if isinstance(value, list) and len(value) == 3 and value[0] == "r":
        return math.ldexp(float(value[1]), int(value[2]))
    if isinstance(value, dict | list):
        # JSON text captured by a trigger of an older version (which let SQLite's
        # JSON subtype through): turn it back into the text it was.
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return value


_READ_SQL = (
    f"SELECT seq, tbl, op, CAST(key AS BLOB), CAST(image AS BLOB), captured_at "
    f"FROM {sqlite_ident(CHANGELOG)} WHERE seq > ? ORDER BY seq LIMIT ?"
)


class SchemaChanged(ReplicatorError):
    """The source schema is not the one the caller planned with: plan again.

    Raised by :func:`read_changes` and :func:`install_triggers`; the daemon
    handles it (replicator/drift.py), it never reaches the command line."""

    def __init__(self, version: int) -> None:
        super().__init__(f"source schema version is now {version}")
        self.version = version


def read_changes(
    conn: sqlite3.Connection,
    after: int,
    max_changes: int,
    max_bytes: int,
    *,
    schema_version: int | None = None,
) -> list[Change]:
    """The next changes after ``after``, in one short read transaction.

    Stops at ``max_changes`` rows or once ``max_bytes`` of row images are in
    hand (always at least one change, however large). With ``schema_version``,
    raises :class:`SchemaChanged` instead when the transaction's snapshot has
    another one: a change read there may have been captured under a schema the
    caller has not planned for (an added column missing from its image).
    """
    out: list[Change] = []
    size = 0
    conn.execute("BEGIN")
    try:
        if schema_version is not None:
            # The first read of the transaction: it fixes the snapshot the log is read in.
            now = int(conn.execute("PRAGMA schema_version").fetchone()[0])
            if now != schema_version:
                raise SchemaChanged(now)
        cur = conn.execute(_READ_SQL, (after, max_changes))
        while True:
            rows = cur.fetchmany(500)
            if not rows:
                break
            for row in rows:
                out.append(Change.from_row(row))
                size += len(row[4] or b"") + len(row[3])
                if size >= max_bytes:
                    return out
    finally:
        conn.execute("COMMIT")
    return out


def changed_keys(
    conn: sqlite3.Connection, after: int, upto: int, table: str
) -> list[tuple[Any, ...]]:
    """The distinct keys of ``table`` the log holds changes of in (``after``, ``upto``]
    (inserted, updated or deleted), in one short read transaction. The caller checks
    first that nothing after ``after`` was pruned (:func:`pruned_past`)."""
    conn.execute("BEGIN")
    try:
        rows = conn.execute(
            f"SELECT DISTINCT CAST(key AS BLOB) FROM {sqlite_ident(CHANGELOG)} "
            "WHERE seq > ? AND seq <= ? AND tbl = ?",
            (after, upto, table),
        ).fetchall()
    finally:
        conn.execute("COMMIT")
    return [tuple(decode_value(v) for v in _loads(r[0])) for r in rows]


def lag_by_table(conn: sqlite3.Connection, after: int) -> dict[str, tuple[int, float | None]]:
    """Per table: (changes after ``after``, captured_at of the oldest of them)."""
    rows = conn.execute(
        f"SELECT tbl, count(*), min(captured_at) FROM {sqlite_ident(CHANGELOG)} "
        "WHERE seq > ? GROUP BY tbl",
        (after,),
    ).fetchall()
    return {str(r[0]): (int(r[1]), float(r[2]) if r[2] is not None else None) for r in rows}


def depth(conn: sqlite3.Connection, after: int) -> tuple[int, float | None]:
    """(changes after ``after``, captured_at of the oldest of them)."""
    row = conn.execute(
        f"SELECT count(*), min(captured_at) FROM {sqlite_ident(CHANGELOG)} WHERE seq > ?",
        (after,),
    ).fetchone()
    return int(row[0]), (float(row[1]) if row[1] is not None else None)


def log_rows(conn: sqlite3.Connection) -> int:
    """Rows in the change log, applied or not (what pruning has not removed yet)."""
    row = conn.execute(f"SELECT count(*) FROM {sqlite_ident(CHANGELOG)}").fetchone()
    return int(row[0])


def log_bytes(conn: sqlite3.Connection) -> int | None:
    """Bytes the change log (its table and indexes) takes in the file, as SQLite's
    ``dbstat`` counts pages; None where this SQLite is built without it."""
    try:
        row = conn.execute(
            "SELECT sum(pgsize) FROM dbstat WHERE aggregate = 1 AND name IN "
            "(SELECT name FROM sqlite_schema WHERE tbl_name = ?)",
            (CHANGELOG,),
        ).fetchone()
    except sqlite3.OperationalError:
        return None
    return int(row[0] or 0)


class NotRegistered(ReplicatorError):
    """The consumer pruning the log is not registered in the source any more."""


def prune(
    conn: sqlite3.Connection,
    upto: int,
    batch: int,
    consumer: str | None = None,
    keep_from: int | None = None,
) -> int:
    """Delete log rows with seq <= ``upto`` (already durable in PostgreSQL), and never
    above the lowest registered consumer's position, nor above ``keep_from`` (kept
    for an incremental verify), ``batch`` rows per write transaction so the app's
    writers never wait long.

    With ``consumer``, first records that it has reached ``upto``; raises
    :class:`NotRegistered` (deleting nothing) when it is not registered.
    """
    total = 0
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if consumer is not None and total == 0 and not consumers.touch(conn, consumer, upto):
                raise NotRegistered(f"consumer {consumer} is not registered in the source")
            lowest = consumers.floor(conn)
            bound = upto if lowest is None else min(upto, lowest)
            if keep_from is not None:
                bound = min(bound, keep_from)
            cur = conn.execute(
                f"DELETE FROM {sqlite_ident(CHANGELOG)} WHERE seq IN ("
                f"SELECT seq FROM {sqlite_ident(CHANGELOG)} WHERE seq <= ? ORDER BY seq LIMIT ?)",
                (bound, batch),
            )
            deleted = cur.rowcount
            conn.execute("COMMIT")
        except (sqlite3.Error, NotRegistered):
            conn.execute("ROLLBACK")
            raise
        total += deleted
        if deleted < batch:
            return total
