"""Reading rows out of SQLite: the one way the source's storage becomes raw values.

Every read of table rows (the snapshot, cursor capture, reconciliation,
verify and repair, query parity) goes through :func:`fetch`, or
:func:`read_rows` for a read of its own transaction (a long reader would
starve SQLite's WAL checkpoints). Values come as SQLite's own types give
them. Text that is not valid UTF-8 never fails a read: the read is made again
on the same connection, inside the same transaction, with a text factory that
keeps the invalid bytes as lone surrogates (``errors="surrogateescape"``), so
the exact bytes can be told (a dead letter shows their hex) and written back.
The fast path is one plain ``fetchall``; only such rare reads pay for
decoding in Python. (The change log is read by ``source.changelog``, which
casts its JSON to BLOB and decodes it the same way.)

:class:`ChunkReader` pages through one table by primary key with it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from replicator.errors import SourceError
from replicator.identifiers import sqlite_ident
from replicator.source.sqlite import ROWID, SourceTable, read_transaction

RawRow = tuple[Any, ...]


def _keep_bytes(raw: bytes) -> str:
    """Text factory for text that is not valid UTF-8: its bytes kept exactly."""
    return raw.decode("utf-8", errors="surrogateescape")


def _undecodable(exc: sqlite3.OperationalError) -> None:
    """Re-raise ``exc`` unless it is SQLite's "Could not decode to UTF-8"."""
    if "decode" not in str(exc):
        raise exc


@contextmanager
def _keeping_bytes(conn: sqlite3.Connection) -> Iterator[None]:
    """Read text that is not valid UTF-8 (the rare slow path). Valid text decodes
    the same either way, so another thread's read meanwhile on this connection
    gets the same values, only more slowly."""
    previous = conn.text_factory
    conn.text_factory = _keep_bytes
    try:
        yield
    finally:
        conn.text_factory = previous


def fetch(conn: sqlite3.Connection, query: str, params: Sequence[Any] = ()) -> list[RawRow]:
    """Every row of ``query`` on ``conn``, in whatever transaction the caller holds.

    SQLite errors other than undecodable text are the caller's to handle (a busy
    database is retried by the daemon)."""
    return fetch_described(conn, query, params)[1]


def fetch_described(
    conn: sqlite3.Connection, query: str, params: Sequence[Any] = ()
) -> tuple[list[str], list[RawRow]]:
    """As :func:`fetch`, with the result's column names (an application's query)."""
    try:
        cursor = conn.execute(query, params)
        return [d[0] for d in cursor.description or ()], cursor.fetchall()
    except sqlite3.OperationalError as exc:
        _undecodable(exc)
    with _keeping_bytes(conn):
        cursor = conn.execute(query, params)
        return [d[0] for d in cursor.description or ()], cursor.fetchall()


def fetch_one(conn: sqlite3.Connection, query: str, params: Sequence[Any] = ()) -> RawRow | None:
    """The first row of ``query`` (see :func:`fetch`), or None."""
    rows = fetch(conn, query, params)
    return rows[0] if rows else None


def batches(
    conn: sqlite3.Connection, query: str, params: Sequence[Any] = (), size: int = 1000
) -> Iterator[list[RawRow]]:
    """The rows of ``query`` (see :func:`fetch`) ``size`` at a time, for reads too large
    to hold at once. Meeting text that is not valid UTF-8, the query is run again
    (the caller's transaction keeps its rows and their order the same), keeping
    such text's bytes, and the rows already given are passed over."""
    given = 0
    try:
        cursor = conn.execute(query, params)
        while batch := cursor.fetchmany(size):
            given += len(batch)
            yield batch
        return
    except sqlite3.OperationalError as exc:
        _undecodable(exc)
    with _keeping_bytes(conn):
        cursor = conn.execute(query, params)
        while given > 0 and (passed := cursor.fetchmany(min(size, given))):
            given -= len(passed)
        while batch := cursor.fetchmany(size):
            yield batch


def read_rows(conn: sqlite3.Connection, query: str, params: Sequence[Any] = ()) -> list[RawRow]:
    """The rows of ``query`` (see :func:`fetch`), read in one short read transaction."""
    try:
        with read_transaction(conn):
            return fetch(conn, query, params)
    except sqlite3.OperationalError as exc:
        raise SourceError(f"reading the source failed: {exc}") from exc


@dataclass(frozen=True, slots=True)
class TextPage:
    """A page of rows read as text by :meth:`ChunkReader.read_text`."""

    text: bytes  # the rows SQLite gave text for, joined by SQLite
    rows: int  # rows in the page, those in ``left`` included
    last_key: tuple[Any, ...] | None  # the page's last key (None: no row)
    left: list[RawRow]  # the rows SQLite gave NULL for, as read (in key order)
    valid: list[int] | None  # their JSON check (see read_checked), if any


class ReadColumn(Protocol):
    """What the reader needs of a column of a table plan."""

    @property
    def source(self) -> str: ...  # the source column's name, or "rowid"

    @property
    def convert_valid(self) -> object: ...  # set for a JSON column (see read_checked)


class ReadPlan(Protocol):
    """What the reader needs of a table plan (``replicator.plan.tables.TablePlan``):
    described here so that reading the source depends on no plan."""

    @property
    def source(self) -> SourceTable: ...

    @property
    def key(self) -> tuple[str, ...]: ...

    @property
    def columns(self) -> Sequence[ReadColumn]: ...

    def source_select_list(self) -> str: ...


def _has_json_valid(conn: sqlite3.Connection) -> bool:
    """Whether this SQLite has its JSON functions (built in since 3.38; optional before)."""
    try:
        conn.execute("SELECT json_valid('1')").fetchone()
    except sqlite3.OperationalError:
        return False
    return True


class ChunkReader:
    """Keyset pagination over one table, one short read transaction per chunk.

    ``upper`` (set by the snapshot to the largest key when a table's copy
    starts) bounds the pages: rows inserted later are the stream's to apply,
    and without the bound a table growing faster than it is copied would
    never finish.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        plan: ReadPlan,
        *,
        check_json: bool = False,
    ):
        self.conn = conn
        self.table = sqlite_ident(plan.source.name)
        self.keys = ", ".join(ROWID if k == ROWID else sqlite_ident(k) for k in plan.key)
        self.select = plan.source_select_list()
        # read_checked(): one more column, 1 when every JSON column of the row is
        # NULL or text that json_valid() accepts (typeof first: it refuses blobs).
        json_columns = [sqlite_ident(c.source) for c in plan.columns if c.convert_valid]
        self.checked_select: str | None = None
        if check_json and json_columns and _has_json_valid(conn):
            valid = " AND ".join(
                f"({c} IS NULL OR (typeof({c}) = 'text' AND json_valid({c})))" for c in json_columns
            )
            self.checked_select = f"{self.select}, {valid}"
        self.count_sql = f"SELECT count(*) FROM {self.table}"
        descending = ", ".join(f"{ROWID if k == ROWID else sqlite_ident(k)} DESC" for k in plan.key)
        self.max_sql = f"SELECT {self.keys} FROM {self.table} ORDER BY {descending} LIMIT 1"
        # Rows whose key holds NULL (SQLite allows it) are never paged through, nor a
        # range's bound: no `>` reaches them (replicator.plan.nullkeys reads them).
        self.present = " AND ".join(
            f"{ROWID if k == ROWID else sqlite_ident(k)} IS NOT NULL" for k in plan.key
        )
        self.nth_sql = (
            f"SELECT {self.keys} FROM {self.table} WHERE {self.present} "
            f"ORDER BY {self.keys} LIMIT 1 OFFSET ?"
        )
        self.single = len(plan.key) == 1
        self.below_sql = f"SELECT count(*) FROM {self.table} WHERE {self.keys} <= ?"
        self.upper: tuple[Any, ...] | None = None

    def count(self) -> int:
        return int(self.conn.execute(self.count_sql).fetchone()[0])

    def count_keyed(self) -> int:
        """Rows whose key holds no NULL (the rows the pages go through)."""
        query = f"{self.count_sql} WHERE {self.present}"
        return int(self.conn.execute(query).fetchone()[0])

    def max_key(self) -> tuple[Any, ...] | None:
        row = read_rows(self.conn, self.max_sql)
        return tuple(row[0]) if row else None

    def split_points(self, n: int, total: int, upper: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """Up to ``n - 1`` increasing keys that cut the table (its ``total`` rows, keys up
        to ``upper``) into ``n`` ranges of about as many rows; call inside one read
        transaction. A single integer key is cut by value, kept when counting the
        rows below each cut shows the ranges even (ids that are not spread evenly
        are not); otherwise the keys at row positions are taken (a walk over the key)."""
        try:
            if self.single:
                cuts = self._value_cuts(n, total, upper)
                if cuts:
                    return cuts
            points = []
            for i in range(1, n):
                row = self.conn.execute(self.nth_sql, (total * i // n - 1,)).fetchone()
                if row is None:
                    break
                points.append(tuple(row))
            return points
        except sqlite3.OperationalError:
            return []  # a key that is not valid UTF-8: copied as one range

    def _value_cuts(self, n: int, total: int, upper: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        first = self.conn.execute(self.nth_sql, (0,)).fetchone()
        low, high = (first[0] if first else None), upper[0]
        if not (isinstance(low, int) and isinstance(high, int) and high - low >= n):
            return []
        cuts = [(low + (high - low) * i // n,) for i in range(1, n)]
        for i, cut in enumerate(cuts, start=1):
            below = self.conn.execute(self.below_sql, cut).fetchone()
            if below is None or abs(int(below[0]) - total * i // n) > total // (2 * n):
                return []
        return cuts

    @staticmethod
    def _bind(key: tuple[Any, ...]) -> tuple[str, list[Any]]:
        """Placeholders and parameters for a key. A key read from text that is not
        valid UTF-8 (lone surrogates) cannot be bound as str: it is bound as its
        original bytes and cast back to TEXT, so it compares exactly as stored."""
        marks: list[str] = []
        params: list[Any] = []
        for value in key:
            if isinstance(value, str) and not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    marks.append("CAST(? AS TEXT)")
                    params.append(value.encode("utf-8", "surrogateescape"))
                    continue
            marks.append("?")
            params.append(value)
        return ", ".join(marks), params

    def read(self, after: tuple[Any, ...] | None, limit: int) -> list[RawRow]:
        """The next ``limit`` rows after the key ``after`` (up to ``upper``)."""
        return self._page(self.select, after, limit)

    def read_checked(
        self, after: tuple[Any, ...] | None, limit: int
    ) -> tuple[list[RawRow], list[int] | None]:
        """As :meth:`read`, with each row's JSON check (see
        ``replicator.plan.rows.convert_rows``); None when there is nothing to check."""
        if self.checked_select is None:
            return self.read(after, limit), None
        rows = self._page(self.checked_select, after, limit)
        return [r[:-1] for r in rows], [r[-1] for r in rows]

    def read_select(
        self,
        select: str,
        after: tuple[Any, ...] | None,
        limit: int,
        upto: tuple[Any, ...] | None = None,
    ) -> list[RawRow]:
        """As :meth:`read` with the caller's select list (verify's digest texts,
        built in SQL over this table's columns), keys up to ``upto`` when given."""
        return self._page(select, after, limit, upto)

    def read_text(self, after: tuple[Any, ...] | None, limit: int, row_sql: str) -> TextPage:
        """The next ``limit`` rows after ``after`` (up to ``upper``) as SQLite's
        ``row_sql`` gives them (``replicator.plan.copytext``), joined into one value
        by SQLite, with the rows it gave NULL for as :meth:`read_checked` reads them;
        all in one read transaction."""
        where, params = self._where(after)
        page = f"FROM {self.table} WHERE {where} ORDER BY {self.keys} LIMIT ?"
        joined = (
            "SELECT CAST(group_concat(_replicator_text, '') AS BLOB), count(*),"
            f" count(_replicator_text) FROM (SELECT {row_sql} AS _replicator_text {page})"
        )
        try:
            with read_transaction(self.conn):
                found = self.conn.execute(joined, (*params, limit)).fetchone()
                text, rows, done = found[0] or b"", int(found[1]), int(found[2])
                if not rows:
                    return TextPage(b"", 0, None, [], None)
                last = fetch(
                    self.conn, f"SELECT {self.keys} {page} OFFSET ?", (*params, 1, rows - 1)
                )
                left: list[RawRow] = []
                valid: list[int] | None = None
                if done < rows:  # a subquery with LIMIT: each row's text is made once
                    select = self.checked_select or self.select
                    left = fetch(
                        self.conn,
                        f"SELECT * FROM (SELECT {row_sql} AS _replicator_text, {select} {page}) "
                        "WHERE _replicator_text IS NULL",
                        (*params, limit),
                    )
                    left = [r[1:] for r in left]
                    if self.checked_select is not None:
                        valid = [r[-1] for r in left]
                        left = [r[:-1] for r in left]
        except sqlite3.OperationalError as exc:
            raise SourceError(f"reading the source failed: {exc}") from exc
        return TextPage(text, rows, tuple(last[0]), left, valid)

    def _where(
        self, after: tuple[Any, ...] | None, upto: tuple[Any, ...] | None = None
    ) -> tuple[str, list[Any]]:
        where: list[str] = [self.present]
        params: list[Any] = []
        if after is not None:
            marks, values = self._bind(after)
            where.append(f"({self.keys}) > ({marks})")
            params += values
        bound = self.upper if upto is None else upto
        if bound is not None:
            marks, values = self._bind(bound)
            where.append(f"({self.keys}) <= ({marks})")
            params += values
        return " AND ".join(where), params

    def _page(
        self,
        select: str,
        after: tuple[Any, ...] | None,
        limit: int,
        upto: tuple[Any, ...] | None = None,
    ) -> list[RawRow]:
        where, params = self._where(after, upto)
        query = f"SELECT {select} FROM {self.table} WHERE {where} ORDER BY {self.keys} LIMIT ?"
        return read_rows(self.conn, query, (*params, limit))


def foreign_key_orphans(conn: sqlite3.Connection, table: str) -> list[RawRow]:
    """``PRAGMA foreign_key_check``: (table, rowid, parent table, foreign key id) of each
    row of ``table`` whose foreign key finds no parent. SQLite checks this whatever
    ``PRAGMA foreign_keys`` says: the application may run with them off (SQLite's
    default), and then deleting a parent keeps its children. Raises
    ``sqlite3.OperationalError`` for a declaration it cannot check ("foreign key
    mismatch")."""
    pragma = f"PRAGMA foreign_key_check({sqlite_ident(table)})"
    return [tuple(r) for r in conn.execute(pragma).fetchall()]
