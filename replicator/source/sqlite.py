"""The SQLite side: opening the application's database and reading its schema.

Connections are opened in autocommit mode (``isolation_level=None``) so that
every read transaction is explicit and short: a long reader would starve
SQLite's WAL checkpoints, and the application must never wait on us.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from replicator.errors import SourceError
from replicator.identifiers import sqlite_ident

SQLITE_HEADER = b"SQLite format 3\x00"
ROWID = "rowid"


def _decode_lenient(raw: bytes) -> str:
    """Text factory for rows holding bytes that are not UTF-8: keeps them exactly."""
    return raw.decode("utf-8", errors="surrogateescape")


def open_source(
    path: Path, *, readonly: bool = False, busy_timeout_ms: int = 5000, lenient: bool = False
) -> sqlite3.Connection:
    """Open the source database, refusing anything that is not a SQLite file.

    ``lenient`` installs a text factory that never fails on invalid UTF-8
    (slower; used to re-read the rare chunk that holds such text).
    """
    if not path.exists():
        raise SourceError(f"source database {path} does not exist")
    if not path.is_file():
        raise SourceError(f"source database {path} is not a file")
    try:
        with path.open("rb") as fh:
            header = fh.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise SourceError(f"source database {path} cannot be read: {exc.strerror}") from exc
    if header and header != SQLITE_HEADER:
        raise SourceError(f"source {path} is not a SQLite database (bad file header)")
    mode = "ro" if readonly else "rw"
    uri = f"file:{quote(str(path.resolve()))}?mode={mode}"
    try:
        conn = sqlite3.connect(
            uri,
            uri=True,
            isolation_level=None,
            check_same_thread=False,
            timeout=busy_timeout_ms / 1000,
        )
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        if lenient:
            conn.text_factory = _decode_lenient
        conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()
    except sqlite3.DatabaseError as exc:
        raise SourceError(f"source {path} cannot be opened as SQLite: {exc}") from exc
    return conn


@contextmanager
def read_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A short, consistent read: BEGIN ... COMMIT around the body."""
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.execute("COMMIT")


@dataclass(frozen=True, slots=True)
class SourceColumn:
    name: str
    decl_type: str
    not_null: bool
    default: str | None
    pk_position: int  # 1-based position in the primary key, 0 when not part of it
    hidden: int  # 0 normal; 2/3 generated columns (never written by us)


@dataclass(frozen=True, slots=True)
class ForeignKey:
    columns: tuple[str, ...]
    ref_table: str
    ref_columns: tuple[str, ...]
    on_delete: str
    on_update: str


@dataclass(frozen=True, slots=True)
class SourceIndex:
    name: str
    unique: bool
    columns: tuple[str, ...]
    origin: str  # 'c' CREATE INDEX, 'u' UNIQUE constraint, 'pk' primary key
    partial: bool
    expression: bool


@dataclass(frozen=True, slots=True)
class SourceTable:
    name: str
    columns: tuple[SourceColumn, ...]
    primary_key: tuple[str, ...]  # empty: the table is keyed by its rowid
    without_rowid: bool
    rowid_alias: str | None  # the INTEGER PRIMARY KEY column, when there is one
    foreign_keys: tuple[ForeignKey, ...]
    indexes: tuple[SourceIndex, ...]
    autoincrement: bool

    @property
    def key(self) -> tuple[str, ...]:
        """Columns that identify a row: the primary key, else the rowid."""
        return self.primary_key or (ROWID,)

    @property
    def uses_rowid_key(self) -> bool:
        return not self.primary_key

    @property
    def stored_columns(self) -> tuple[SourceColumn, ...]:
        """Columns that hold data we copy (generated columns are recomputed)."""
        return tuple(c for c in self.columns if c.hidden in (0,))

    def column(self, name: str) -> SourceColumn:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)


def list_tables(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name"
    ).fetchall()
    return [r[0] for r in rows]


def describe_table(conn: sqlite3.Connection, name: str) -> SourceTable:
    q = sqlite_ident(name)
    cols = tuple(
        SourceColumn(
            name=row[1],
            decl_type=row[2] or "",
            not_null=bool(row[3]),
            default=row[4],
            pk_position=int(row[5]),
            hidden=int(row[6]),
        )
        for row in conn.execute(f"PRAGMA table_xinfo({q})")
    )
    if not cols:
        raise SourceError(f"source table {name!r} does not exist")
    pk = tuple(
        c.name for c in sorted((c for c in cols if c.pk_position), key=lambda c: c.pk_position)
    )
    sql_row = conn.execute(
        "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    create_sql = (sql_row[0] or "") if sql_row else ""
    upper_sql = create_sql.upper()
    without_rowid = "WITHOUT ROWID" in upper_sql.replace("\n", " ")
    rowid_alias = None
    if len(pk) == 1 and not without_rowid:
        decl = next(c.decl_type for c in cols if c.name == pk[0])
        if decl.strip().upper() == "INTEGER":
            rowid_alias = pk[0]

    fks: dict[int, list[tuple[str, str, str | None, str, str]]] = {}
    for row in conn.execute(f"PRAGMA foreign_key_list({q})"):
        fk_id, _seq, table, from_col, to_col, on_update, on_delete = row[:7]
        fks.setdefault(fk_id, []).append((table, from_col, to_col, on_update, on_delete))
    foreign_keys: list[ForeignKey] = []
    for parts in fks.values():
        ref_table = parts[0][0]
        ref_cols: tuple[str, ...]
        if any(p[2] is None for p in parts):
            ref_cols = describe_table(conn, ref_table).primary_key if ref_table != name else pk
        else:
            ref_cols = tuple(str(p[2]) for p in parts)
        foreign_keys.append(
            ForeignKey(
                columns=tuple(p[1] for p in parts),
                ref_table=ref_table,
                ref_columns=ref_cols,
                on_update=parts[0][3],
                on_delete=parts[0][4],
            )
        )

    indexes: list[SourceIndex] = []
    for row in conn.execute(f"PRAGMA index_list({q})"):
        _seq, idx_name, unique, origin, partial = row[:5]
        info = conn.execute(f"PRAGMA index_xinfo({sqlite_ident(idx_name)})").fetchall()
        key_cols = [r for r in info if r[5]]  # key columns only
        expression = any(r[1] == -2 for r in key_cols)
        indexes.append(
            SourceIndex(
                name=idx_name,
                unique=bool(unique),
                columns=tuple(r[2] for r in key_cols if r[2] is not None),
                origin=origin,
                partial=bool(partial),
                expression=expression,
            )
        )
    autoincrement = "AUTOINCREMENT" in upper_sql
    return SourceTable(
        name=name,
        columns=cols,
        primary_key=pk,
        without_rowid=without_rowid,
        rowid_alias=rowid_alias,
        foreign_keys=tuple(foreign_keys),
        indexes=tuple(indexes),
        autoincrement=autoincrement,
    )


def schema_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA schema_version").fetchone()
    return int(row[0])


def journal_mode(conn: sqlite3.Connection) -> str:
    row = conn.execute("PRAGMA journal_mode").fetchone()
    return str(row[0]).lower()
