"""The SQLite side: opening the application's database and reading its schema.

Connections are opened in autocommit mode (``isolation_level=None``) so that
every read transaction is explicit and short: a long reader would starve
SQLite's WAL checkpoints, and the application must never wait on us.
"""

from __future__ import annotations

import ctypes
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from replicator.errors import SourceError
from replicator.identifiers import sqlite_ident
from replicator.source.filelocks import (
    SHARED_FIRST,
    SHARED_SIZE,
    WAL_CKPT_BYTE,
    open_quietly,
    write_locked,
)
from replicator.source.sqlsyntax import SqlSyntaxError, TableText, parse_create_table

SQLITE_HEADER = b"SQLite format 3\x00"
ROWID = "rowid"


def open_source(
    path: Path, *, readonly: bool = False, busy_timeout_ms: int = 5000
) -> sqlite3.Connection:
    """Open the source database, refusing anything that is not a SQLite file.

    Rows are read through :mod:`replicator.source.reader`, which never fails on
    text that is not valid UTF-8.

    The file is never opened from Python to look at its header: this process
    may already have it open through SQLite, and closing *any* descriptor of a
    file drops every POSIX lock the process holds on it. Another process could
    then take our connection for gone, checkpoint and delete the WAL, and our
    connection would read a frozen database from then on. SQLite itself says
    "file is not a database" instead.
    """
    if not path.exists():
        raise SourceError(f"source database {path} does not exist")
    if not path.is_file():
        raise SourceError(f"source database {path} is not a file")
    if not os.access(path, os.R_OK):
        raise SourceError(f"source database {path} cannot be read: permission denied")
    mode = "ro" if readonly else "rw"
    uri = f"file:{quote(str(path.resolve()))}?mode={mode}"
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(
            uri,
            uri=True,
            isolation_level=None,
            check_same_thread=False,
            timeout=busy_timeout_ms / 1000,
        )
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()
    except sqlite3.DatabaseError as exc:
        if conn is not None:
            conn.close()
        if exc.sqlite_errorcode == sqlite3.SQLITE_NOTADB:
            raise SourceError(f"source {path} is not a SQLite database (bad file header)") from exc
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
    sql: str = ""  # its CREATE INDEX statement (none for constraint indexes)


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
    text: TableText  # what only its CREATE TABLE says
    triggers: tuple[tuple[str, str], ...]  # the application's (name, sql) on this table

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


def affinity(decl: str) -> str:
    """SQLite's column affinity for a declared type (section 3.1 of its docs)."""
    upper = decl.upper()
    if "INT" in upper:
        return "INTEGER"
    if any(s in upper for s in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if "BLOB" in upper or not upper:
        return "BLOB"
    if any(s in upper for s in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


@dataclass(frozen=True, slots=True)
class RowLayout:
    """How rows of one table are read: which columns, in order, and which make its key."""

    table: str
    columns: tuple[str, ...]  # source column names, ``rowid`` for an implicit key
    key: tuple[str, ...]  # the key's columns (may be ``rowid``)

    @property
    def key_positions(self) -> tuple[int, ...]:
        return tuple(self.columns.index(k) for k in self.key)

    def select_list(self) -> str:
        return ", ".join(sqlite_ident(c) if c != ROWID else ROWID for c in self.columns)


def table_bytes(conn: sqlite3.Connection, name: str) -> int | None:
    """The bytes a table's rows take in the file (its b-tree's pages, as SQLite's
    ``dbstat`` counts them; indexes apart); None where SQLite lacks ``dbstat``."""
    try:
        row = conn.execute(
            "SELECT sum(pgsize) FROM dbstat WHERE name = ? AND aggregate = 1", (name,)
        ).fetchone()
    except sqlite3.OperationalError:
        return None
    return int(row[0] or 0)


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
        idx_sql = conn.execute(
            "SELECT sql FROM sqlite_schema WHERE type = 'index' AND name = ?", (idx_name,)
        ).fetchone()
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
                sql=(idx_sql[0] or "") if idx_sql else "",
            )
        )
    autoincrement = "AUTOINCREMENT" in upper_sql
    try:
        text = parse_create_table(create_sql)
    except SqlSyntaxError as exc:  # the rows can still be copied; the report says what not
        text = TableText((), (), strict=False, problem=f"its CREATE TABLE cannot be read: {exc}")
    return SourceTable(
        name=name,
        columns=cols,
        primary_key=pk,
        without_rowid=without_rowid,
        rowid_alias=rowid_alias,
        foreign_keys=tuple(foreign_keys),
        indexes=tuple(indexes),
        autoincrement=autoincrement,
        text=text,
        triggers=_app_triggers(conn, name),
    )


def _app_triggers(conn: sqlite3.Connection, table: str) -> tuple[tuple[str, str], ...]:
    """The application's triggers on ``table`` (the replicator's own, named
    ``_replicator_...``, are left out)."""
    rows = conn.execute(
        "SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = ? ORDER BY name",
        (table,),
    ).fetchall()
    return tuple(
        (str(r[0]), str(r[1] or "")) for r in rows if not str(r[0]).startswith("_replicator_")
    )


def schema_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA schema_version").fetchone()
    return int(row[0])


def journal_mode(conn: sqlite3.Connection) -> str:
    row = conn.execute("PRAGMA journal_mode").fetchone()
    return str(row[0]).lower()


# -- the file under the open connection -----------------------------------------

_HEADER_BYTES = 100  # the database header: magic, page size, page count ...


class SourceFileChanged(SourceError):
    """The source file vanished, was replaced or was truncated while being followed."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # missing, replaced, detached, overwritten, truncated, rewound


def abandon(conn: sqlite3.Connection) -> None:
    """Let go of a connection whose file was swapped or cut under it, without closing it.

    Closing checkpoints the connection's write-ahead log into the file at its
    path when it looks like the last connection, and after an in-place restore
    that log belongs to the file as it was: its pages would overwrite the
    restored ones. So the connection is never closed; the process's exit
    releases its descriptors without a checkpoint.
    """
    setconfig = getattr(conn, "setconfig", None)  # Python 3.12+
    no_checkpoint = getattr(sqlite3, "SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE", None)
    if setconfig is not None and no_checkpoint is not None:
        setconfig(no_checkpoint, True)
        conn.close()
        return
    # Python 3.11 cannot switch the checkpoint off: keep the object alive for good
    # (one reference more than anyone will ever drop), so it is never closed.
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(conn))


def _page_size(header: bytes) -> int:
    """The page size a database header declares (0 when it is no SQLite header)."""
    if len(header) < 18 or not header.startswith(SQLITE_HEADER):
        return 0
    raw = int.from_bytes(header[16:18], "big")
    return 65536 if raw == 1 else raw


def _declared_pages(header: bytes) -> int | None:
    """The in-header database size, when the header vouches for it (offsets 24/92)."""
    if len(header) < _HEADER_BYTES:
        return None
    pages = int.from_bytes(header[28:32], "big")
    valid = pages > 0 and header[24:28] == header[92:96]
    return pages if valid else None


class SourceGuard:
    """Notices the source file vanishing, being replaced or being truncated.

    Why: an open SQLite connection keeps reading the file it opened. A file
    deleted or replaced under it leaves it reading a ghost while the
    application writes elsewhere (a silent stall, or worse after a restart);
    a truncated one reads as some other database, and what the daemon would
    apply from it (deletes included) is not the application's data.

    Cheap enough for every loop iteration: one ``os.stat``; the 100-byte header
    is read again only when the size or modification time moved. A missing
    file, another inode at the path, a header that is gone or changed are
    certain at once. A file shorter than its header says, or not a whole
    number of pages, is also what SQLite itself shows for a moment while it
    writes the file: a WAL checkpoint (or a rollback-journal commit) writes
    page 1, with the new page count, before the pages that extend the file.
    So such a size is first checked against the file's locks: while another
    process holds the checkpoint lock (in rollback-journal mode, the database's
    write lock), or this process's own pruning may be checkpointing, the file is
    being written, and it is looked at again on the next call. Only when
    nobody is writing and a second look still finds it short is a truncation
    *suspected* (the caller pauses); it becomes certain once it has lasted
    ``grace`` seconds.
    """

    def __init__(
        self, path: Path, *, grace: float = 5.0, own_writes: Callable[[], bool] | None = None
    ) -> None:
        self.path = path
        self.grace = grace
        # Whether this process itself may be writing the file (a commit of ours can run
        # a checkpoint on another thread): its locks never show to F_GETLK.
        self.own_writes = own_writes
        st = self._stat()
        self.device, self.inode = st.st_dev, st.st_ino
        # One descriptor for the guard's whole life, read with pread: closing *any*
        # descriptor of the file drops every POSIX lock this process holds on it,
        # SQLite's included (sqlite.org/howtocorrupt.html, 2.2). The application's
        # last connection then deletes the WAL under us, and we read a stale database.
        self._fd: int | None = os.open(self.path, os.O_RDONLY)
        header = self._header()
        self.page_size = _page_size(header)
        self.had_header = self.page_size > 0
        self._seen = (st.st_size, st.st_mtime_ns)
        self._suspect_since: float | None = None
        self._written_at: tuple[int, float] | None = None  # (size, since) under a writer's lock
        self.suspicion: str | None = None
        # In WAL mode the -wal and -shm files live as long as any connection does
        # (ours included): one removed or swapped under us means the file was
        # restored or tampered with, and our connection no longer sees the
        # application's writes (it keeps the old wal-index mapped).
        self._companions = {
            suffix: found for suffix in ("-wal", "-shm") if (found := self._identity(suffix))
        }
        # Kept open for the same reason as the file's: only to ask who holds its locks.
        self._shm_fd = open_quietly(f"{self.path}-shm") if "-shm" in self._companions else None

    def _stat(self) -> os.stat_result:
        try:
            return os.stat(self.path)
        except FileNotFoundError:
            raise SourceFileChanged(
                "missing",
                f"the source database {self.path} was deleted or moved away while being "
                "replicated; nothing more was applied: put it back at that path and start again",
            ) from None
        except OSError as exc:
            raise SourceFileChanged(
                "missing",
                f"the source database {self.path} cannot be checked ({exc.strerror}) while "
                "being replicated; nothing more was applied: make it readable and start again",
            ) from None

    def _header(self) -> bytes:
        """The header of the file opened (check() has made sure the path still is it)."""
        if self._fd is None:
            return b""
        try:
            return os.pread(self._fd, _HEADER_BYTES, 0)
        except OSError:
            return b""

    def _identity(self, suffix: str) -> tuple[int, int] | None:
        try:
            st = os.stat(f"{self.path}{suffix}")
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def close(self) -> None:
        """Only after the SQLite connection is closed (see __init__)."""
        for fd in (self._fd, self._shm_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._shm_fd = None

    def check(self) -> str | None:
        """None when the file is still the one opened; a reason while a truncation
        is suspected; raises :class:`SourceFileChanged` when something is certain."""
        st = self._stat()
        if (st.st_dev, st.st_ino) != (self.device, self.inode):
            raise SourceFileChanged(
                "replaced",
                f"the source database {self.path} was replaced by a different file "
                f"(inode {self.inode} is now {st.st_ino}) while being replicated; nothing from "
                "the new file was applied: check it, then run `replicator verify` (or snapshot "
                "again) before starting again",
            )
        for suffix, identity in self._companions.items():
            if self._identity(suffix) != identity:
                raise SourceFileChanged(
                    "detached",
                    f"the source database's {self.path.name}{suffix} file was deleted or replaced "
                    "while being replicated (a restore, or a program removing it), so this "
                    "connection no longer sees the application's writes; nothing more was "
                    "applied: check the file, then run `replicator verify --repair` and start "
                    "again",
                )
        seen = (st.st_size, st.st_mtime_ns)
        if seen == self._seen:
            return None  # as it was when last found whole
        found = self._size_problem(st.st_size)
        for _look in range(2):
            if found is None or found[1]:
                break
            if self._being_written(st.st_size):
                return None  # SQLite is writing it: look again next time
            st = self._stat()  # the writer may have finished (or begun) just now
            seen, found = (st.st_size, st.st_mtime_ns), self._size_problem(st.st_size)
        if found is None:
            self._seen = seen
            self._suspect_since = self._written_at = None
            self.suspicion = None
            return None
        problem, certain = found
        now = time.monotonic()
        if self._suspect_since is None:
            self._suspect_since = now
        self.suspicion = problem
        if certain or now - self._suspect_since >= self.grace:
            raise SourceFileChanged(
                "truncated",
                f"the source database {self.path} was truncated ({problem}) while being "
                "replicated; nothing from it was applied: restore it, then run "
                "`replicator verify --repair` before starting again",
            )
        return problem

    def _being_written(self, size: int) -> bool:
        """Whether another process is writing the file right now (a WAL checkpoint, or
        a rollback-journal commit), and making progress at it.

        A writer that holds its lock while the file stays the same size for ``grace``
        seconds is no longer taken as an excuse: the size is then judged as it is.
        """
        writing = (
            write_locked(self._shm_fd, WAL_CKPT_BYTE, 1)
            or write_locked(self._fd, SHARED_FIRST, SHARED_SIZE)
            or (self.own_writes is not None and self.own_writes())
        )
        if not writing:
            return False
        now = time.monotonic()
        if self._written_at is None or self._written_at[0] != size:
            self._written_at = (size, now)  # growing: a checkpoint at work
        return now - self._written_at[1] < self.grace

    def _size_problem(self, size: int) -> tuple[str, bool] | None:
        """What is wrong with the file's size, and whether that is certain."""
        if not self.had_header:
            return None  # an empty database when opened: nothing to compare with
        if size < _HEADER_BYTES:
            return f"{size} bytes left", True  # SQLite never shrinks a file below page 1
        header = self._header()
        if not header.startswith(SQLITE_HEADER) or _page_size(header) != self.page_size:
            raise SourceFileChanged(
                "overwritten",
                f"the source database {self.path} was overwritten in place (its SQLite header "
                "changed) while being replicated; nothing from it was applied: check the file, "
                "then run `replicator verify --repair` before starting again",
            )
        if size % self.page_size:
            return f"{size} bytes is not a whole number of {self.page_size}-byte pages", False
        declared = _declared_pages(header)
        if declared is not None and size < declared * self.page_size:
            expected = declared * self.page_size
            return f"{size} bytes left of the {expected} its header declares", False
        return None
