"""``Applier.prepare`` and ``apply(..., prepared=...)`` against real SQLite and PostgreSQL.

The daemon converts the next batch on its read-ahead thread (``prepare``),
large upserts formatted as COPY text there already (``payloads``), and then
applies it with ``prepared=``. These tests pin down that this changes nothing
about the outcome: the same target rows, the same counts, the same dead
letters as an apply that converts on its own, and COPY bytes identical to
psycopg's own.

Batches are read from a real trigger change log (replicator.source.changelog).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from harness import daemon_config
from oracle import assert_replicated
from pgutil import TestDatabases
from psycopg import sql
from psycopg.adapt import Transformer
from psycopg.copy import LibpqWriter

from replicator.plan.tables import TablePlan, build_plans
from replicator.snapshot import Snapshotter
from replicator.source import changelog
from replicator.source.changelog import Change
from replicator.source.sqlite import describe_table
from replicator.state.migrations import ensure_state
from replicator.state.position import init_position
from replicator.stream.apply import Applier
from replicator.stream.batch import BatchResult, Prepared
from replicator.target.writer import STAGE_THRESHOLD, copy_payload

STATE = "replicator"
EVERYTHING = 1 << 40

TRICKY_TEXT = [
    "tab\there",
    "new\nline",
    "carriage\rreturn",
    "back\\slash",
    "\\N",
    "\\.",
    "ends with a backslash\\",
    "",
    "NULL",
    "unicode ✓ 日本語 🚀 \U0001d53c é",
    "quotes ' \" and , commas",
    "mixed\t\\t\n\\n\r",
    " leading and trailing spaces ",
    None,
]


# --------------------------------------------------------------------------- helpers


def sqlite_conn(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode = WAL")
    return conn


def capture(conn: sqlite3.Connection, *tables: str) -> None:
    changelog.install(conn, [describe_table(conn, t) for t in tables])


def read_log(conn: sqlite3.Connection, after: int) -> list[Change]:
    return changelog.read_changes(conn, after, 1_000_000, EVERYTHING)


@dataclass
class Target:
    dsn: str
    conn: psycopg.Connection[Any]
    applier: Applier
    plans: list[TablePlan]

    def rows(self, table: str) -> list[tuple[Any, ...]]:
        return self.conn.execute(
            sql.SQL("SELECT * FROM {} ORDER BY 1").format(sql.Identifier("public", table))
        ).fetchall()

    def text_rows(self, table: str) -> list[str]:
        """Every row as PostgreSQL prints it: exact, whatever the column types."""
        return [
            str(r[0])
            for r in self.conn.execute(
                sql.SQL("SELECT t::text FROM {} AS t ORDER BY 1").format(
                    sql.Identifier("public", table)
                )
            )
        ]

    def dead_letters(self) -> list[tuple[Any, ...]]:
        return self.conn.execute(
            "SELECT table_name, key, column_name, raw_value, error, sqlstate, stage, position,"
            " resolved_at IS NULL FROM replicator.dead_letters ORDER BY table_name, key::text"
        ).fetchall()

    def position(self) -> tuple[Any, ...] | None:
        return self.conn.execute(
            "SELECT seq, snapshot_seq, changes_applied FROM replicator.stream_position"
        ).fetchone()

    def table_stats(self) -> list[tuple[Any, ...]]:
        return self.conn.execute(
            "SELECT table_name, changes_applied, last_position FROM replicator.table_stats"
            " ORDER BY table_name"
        ).fetchall()


@pytest.fixture
def open_target() -> Iterator[Callable[..., Target]]:
    """Opens a target: state schema, tables (created unless they exist), an Applier,
    position 0. Its connection is closed at the end of the test."""
    opened: list[psycopg.Connection[Any]] = []

    def open_(source: Path, dsn: str, **connect: Any) -> Target:
        config = daemon_config(source, dsn)
        conn = psycopg.connect(dsn, autocommit=True, **connect)
        opened.append(conn)
        ensure_state(conn, dsn, STATE)
        src = sqlite3.connect(source)
        try:
            plans = build_plans(src, conn, config)
        finally:
            src.close()
        Snapshotter(config).create_missing(conn, plans)
        with conn.cursor() as cur:
            init_position(cur, STATE, 0)
        return Target(dsn, conn, Applier(plans, STATE), plans)

    yield open_
    for conn in opened:
        conn.close()


@pytest.fixture
def second_dsn(pg_databases: TestDatabases, pg_empty_template: str) -> Iterator[str]:
    """Another fresh database of this test's own (the two ways side by side)."""
    with pg_databases.database(pg_empty_template) as dsn:
        yield dsn


def outcome(result: BatchResult) -> dict[str, Any]:
    """What a BatchResult says about the batch, without its timing."""
    return {
        "seqs": (result.first_seq, result.last_seq, result.changes),
        "applied": dict(result.applied),
        "dead_letters": sorted(
            (d.table, tuple(d.key), d.column, d.error, d.sqlstate, d.position)
            for d in result.dead_letters
        ),
        "replayed": result.replayed,
        "max_ids": dict(result.max_ids),
        "captured": (result.oldest_captured_at, result.newest_captured_at),
    }


class RecordingWriter(LibpqWriter):
    """psycopg's own COPY writer, keeping a copy of every byte it sends."""

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        super().__init__(cursor)
        self.sent = bytearray()

    def write(self, data: Any) -> None:
        self.sent += bytes(data)
        super().write(data)


def psycopg_copy(
    conn: psycopg.Connection[Any], table: str, columns: Sequence[str], rows: Sequence[Any]
) -> bytes:
    """COPY ``rows`` with psycopg's write_row, returning the bytes it sent."""
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier("public", table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    with conn.cursor() as cur:
        writer = RecordingWriter(cur)
        with cur.copy(statement, writer=writer) as copy:
            for row in rows:
                copy.write_row(row)
    return bytes(writer.sent)


def payload_copy(
    conn: psycopg.Connection[Any], table: str, columns: Sequence[str], payload: bytes
) -> None:
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier("public", table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    with conn.cursor() as cur, cur.copy(statement) as copy:
        copy.write(payload)


# --------------------------------------------------------------------------- the two ways agree

SHOP = """
CREATE TABLE parents (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE items (
    id INTEGER PRIMARY KEY,
    parent_id INTEGER REFERENCES parents(id),
    name TEXT,
    price NUMERIC(12, 2),
    body BLOB,
    seen_at TIMESTAMP,
    meta JSON,
    qty INTEGER
);
"""


def item(i: int, version: int = 1) -> tuple[Any, ...]:
    text = TRICKY_TEXT[i % len(TRICKY_TEXT)]
    return (
        i,
        i % 10 + 1,
        None if text is None else f"item {i} v{version} {text}",
        f"{i * version}.{i % 100:02d}" if i % 3 else i * 1.25,
        bytes([i % 256, 0, 92, 9, 10]) * (i % 4) if i % 5 else None,
        f"2025-11-{i % 28 + 1:02d}T{i % 24:02d}:15:30.{i:06d}+0{i % 9}:30",
        '{"i": ' + str(i) + ', "s": "tab\\t and \\\\ and 日本", "l": [1, 2.5, null]}',
        i * version,
    )


def shop_batches(conn: sqlite3.Connection) -> list[list[Change]]:
    """Two batches: 400 inserts, then updates, deletes and churn on the same rows."""
    conn.executescript(SHOP)
    capture(conn, "parents", "items")
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO parents VALUES (?, ?)", [(p, f"parent {p}") for p in range(1, 11)]
    )
    conn.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?)", map(item, range(1, 401)))
    conn.execute("COMMIT")
    first = read_log(conn, 0)

    conn.execute("BEGIN")
    for i in range(1, 301):  # 300 updates: the staging path
        conn.execute(
            "UPDATE items SET name = ?, price = ?, meta = ?, qty = ? WHERE id = ?",
            item(i, 2)[2:4] + item(i, 2)[6:8] + (i,),
        )
    for n in range(5):  # one row changed several times: its last image counts
        conn.execute("UPDATE items SET name = ?, qty = ? WHERE id = 7", (f"seven, take {n}", n))
    conn.execute("DELETE FROM items WHERE id BETWEEN 301 AND 340")
    conn.executemany(
        "INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?)", map(item, range(401, 421))
    )
    conn.execute("DELETE FROM items WHERE id = 345")  # deleted, then back with other values
    conn.execute("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?)", item(345, 3))
    conn.execute("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?)", item(999))
    conn.execute("DELETE FROM items WHERE id = 999")  # in and out within the batch
    conn.execute("UPDATE items SET qty = 'lots' WHERE id = 360")  # no bigint: a dead letter
    conn.execute("UPDATE parents SET name = 'renamed' WHERE id = 1")
    conn.execute("INSERT INTO parents VALUES (11, 'new parent')")
    conn.execute("COMMIT")
    second = read_log(conn, first[-1].seq)
    return [first, second]


def test_apply_with_a_prepared_batch_equals_apply_without_it(
    tmp_path: Path, pg_dsn: str, second_dsn: str, open_target: Callable[..., Target]
) -> None:
    path = tmp_path / "shop.db"
    conn = sqlite_conn(path)
    batches = shop_batches(conn)
    conn.close()
    plain = open_target(path, pg_dsn)
    ahead = open_target(path, second_dsn)

    plain_results, ahead_results = [], []
    for batch in batches:
        plain_results.append(plain.applier.apply(plain.conn, batch))
        prepared = ahead.applier.prepare(batch, formatter=Transformer(ahead.conn))
        # The large upsert was formatted ahead; the small one is left to executemany.
        assert set(prepared.payloads) == {"items"}
        assert len(prepared.upserts["items"]) >= STAGE_THRESHOLD
        ahead_results.append(ahead.applier.apply(ahead.conn, batch, prepared=prepared))

    for plain_result, ahead_result in zip(plain_results, ahead_results, strict=True):
        assert outcome(ahead_result) == outcome(plain_result)
    second = ahead_results[1]
    assert dict(second.applied) == {
        ("items", "upsert"): 300 + 20 + 1,  # updates, new rows, row 345 back
        ("items", "delete"): 40 + 1,  # 301..340 and 999
        ("parents", "upsert"): 2,
    }
    assert [(d.table, d.key, d.column) for d in second.dead_letters] == [("items", (360,), "qty")]
    assert not second.replayed
    assert second.changes == len(batches[1])

    for table in ("parents", "items"):
        assert ahead.text_rows(table) == plain.text_rows(table)
        assert ahead.rows(table) == plain.rows(table)
    assert ahead.dead_letters() == plain.dead_letters()
    assert len(batches[0]) == 410 and len(batches[1]) == 372
    assert ahead.position() == plain.position() == (batches[1][-1].seq, 0, 410 + 372)
    assert ahead.table_stats() == plain.table_stats()
    rows = {r[0]: r for r in ahead.rows("items")}
    assert rows[7][2] == "seven, take 4" and rows[7][7] == 4
    assert 345 in rows and rows[345][7] == 345 * 3
    assert not {*range(301, 341), 999} & rows.keys()
    assert rows[360][7] == 360  # the refused change left the row as it was
    for target in (plain, ahead):
        assert_replicated(path, target.dsn)


def test_apply_sends_a_prepared_payload_as_it_is(
    tmp_path: Path, pg_dsn: str, open_target: Callable[..., Target]
) -> None:
    """``prepared`` is trusted, not recomputed: the payload is what reaches the table."""
    path = tmp_path / "shop.db"
    conn = sqlite_conn(path)
    first, _ = shop_batches(conn)
    conn.close()
    target = open_target(path, pg_dsn)
    prepared = target.applier.prepare(first, formatter=Transformer(target.conn))
    marker = b"item 12 v1 "
    assert prepared.payloads["items"].count(marker) == 1
    tampered = replace(
        prepared,
        payloads={"items": prepared.payloads["items"].replace(marker, b"via the payload ")},
    )
    result = target.applier.apply(target.conn, first, prepared=tampered)
    assert result.applied[("items", "upsert")] == 400
    row = target.conn.execute("SELECT name FROM items WHERE id = 12").fetchone()
    assert row is not None
    assert str(row[0]).startswith("via the payload ")


# --------------------------------------------------------------------------- COPY bytes

TRICKY_SOURCE = """
CREATE TABLE tricky (
    id INTEGER PRIMARY KEY, txt TEXT, vc TEXT, raw BLOB, amount TEXT, at_tz TEXT,
    at_naive TEXT, day TEXT, t TEXT, doc TEXT, docb TEXT, flag INTEGER, ratio REAL,
    r4 REAL, uid TEXT, small INTEGER, big INTEGER
);
CREATE TABLE few (id INTEGER PRIMARY KEY, txt TEXT);
"""

TRICKY_TARGET = """
CREATE TABLE tricky (
    id bigint PRIMARY KEY, txt text, vc varchar(40), raw bytea, amount numeric(24, 6),
    at_tz timestamptz, at_naive timestamp, day date, t time, doc json, docb jsonb,
    flag boolean, ratio double precision, r4 real, uid uuid, small smallint, big bigint
);
CREATE TABLE few (id bigint PRIMARY KEY, txt text);
"""

BLOBS = [b"", b"\x00", b"\\", b"\t\n\r", bytes(range(256)), "日本".encode(), None]
AMOUNTS = ["12.340000", "-0.000001", "123456789012345678.123456", "0", 7, 1.5, None]
STAMPS = [
    "2025-11-12T08:15:30Z",
    "2025-11-12 10:15:30+02:00",
    "2025-03-30T01:30:00.123456-05:30",
    "1970-01-01T00:00:00Z",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999Z",
    None,
]
DOCS = [
    '{"k": "a\\\\b\\tc\\nd", "u": "\\u00e9", "n": [1, 2.5e10, null, true]}',
    '"just a string with \\\\ and \\" in it"',
    "[]",
    '{\n  "pretty": "printed",\n\t"tabbed": 1\n}',
    '{"emoji": "🚀", "cjk": "日本語"}',
    "12.50",
    None,
]
RATIOS = [0.0, -0.0, 1 / 3, 1e308, -2.5e-308, 1e999, -1e999, None]


def tricky_row(i: int) -> tuple[Any, ...]:
    def pick(values: Sequence[Any]) -> Any:
        return values[i % len(values)]

    text = pick(TRICKY_TEXT)
    return (
        i,
        text,
        None if text is None else text[:40],
        pick(BLOBS),
        pick(AMOUNTS),
        pick(STAMPS),
        None if pick(STAMPS) is None else pick(STAMPS)[:19],
        f"2024-02-{i % 29 + 1:02d}" if i % 6 else None,
        f"{i % 24:02d}:{i % 60:02d}:59.{i:06d}" if i % 7 else None,
        pick(DOCS),
        pick(DOCS[::-1]),
        i % 3 if i % 3 < 2 else None,
        pick(RATIOS),
        None if i % 4 == 0 else i / 8,
        f"A0EEBC99-9C0B-4EF8-BB6D-{i:012X}" if i % 5 else None,
        (-1) ** i * (i * 109 % 32768) if i % 9 else None,
        (-1) ** i * (2**63 - 1 - i) if i % 2 else i,
    )


def test_prepared_payloads_are_the_bytes_psycopg_would_send(
    tmp_path: Path, pg_dsn: str, open_target: Callable[..., Target]
) -> None:
    path = tmp_path / "tricky.db"
    src = sqlite_conn(path)
    src.executescript(TRICKY_SOURCE)
    capture(src, "tricky", "few")
    src.execute("BEGIN")
    src.executemany(
        f"INSERT INTO tricky VALUES ({', '.join('?' * 17)})", map(tricky_row, range(300))
    )
    src.executemany("INSERT INTO few VALUES (?, ?)", [(i, "tab\there") for i in range(10)])
    src.execute("COMMIT")
    changes = read_log(src, 0)
    src.close()
    with psycopg.connect(pg_dsn, autocommit=True) as setup:
        setup.execute(TRICKY_TARGET)
        for copy in ("by_psycopg", "by_payload"):
            setup.execute(f"CREATE TABLE {copy} (LIKE tricky INCLUDING ALL)")
    target = open_target(path, pg_dsn)

    assert target.applier.prepare(changes).payloads == {}  # no formatter, no payloads
    prepared = target.applier.prepare(changes, formatter=Transformer(target.conn))
    assert prepared.dead_letters == [], "every tricky value converts"
    assert len(prepared.upserts["tricky"]) == 300
    assert len(prepared.upserts["few"]) == 10 < STAGE_THRESHOLD
    assert set(prepared.payloads) == {"tricky"}
    payload = prepared.payloads["tricky"]

    columns = [c.target for c in target.applier.plans["tricky"].columns]
    sent = psycopg_copy(target.conn, "by_psycopg", columns, prepared.upserts["tricky"])
    payload_copy(target.conn, "by_payload", columns, payload)

    assert payload == sent
    by_psycopg = target.text_rows("by_psycopg")
    assert len(by_psycopg) == 300
    assert target.text_rows("by_payload") == by_psycopg
    assert target.rows("by_payload") == target.rows("by_psycopg")
    # And what arrived is what the source holds (not merely the same on both sides).
    for row in target.conn.execute(
        "SELECT id, txt, vc, raw, t, uid::text, big FROM by_payload ORDER BY id"
    ):
        i, txt, vc, raw, t, uid, big = row
        expected = tricky_row(i)
        assert (txt, vc, raw, big) == (expected[1], expected[2], expected[3], expected[16])
        assert t == (time.fromisoformat(expected[8]) if expected[8] else None)
        assert uid == (expected[14].lower() if expected[14] else None)

    # Applying the prepared batch uses that payload and gives the source's rows.
    result = target.applier.apply(target.conn, changes, prepared=prepared)
    assert result.applied == {("tricky", "upsert"): 300, ("few", "upsert"): 10}
    assert target.text_rows("tricky") == by_psycopg
    # (the oracle's typed comparison does not read time columns: t is checked above)
    assert_replicated(path, pg_dsn, tables=["few"])


# --------------------------------------------------------------------------- unformattable values


def test_copy_payload_is_none_when_a_value_does_not_format(pg_dsn: str) -> None:
    good = [(i, f"row {i}\t\\ é 日本") for i in range(5)]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE pair (id bigint, txt text)")
        payload = copy_payload(Transformer(conn), good)
        assert payload is not None
        assert payload == psycopg_copy(conn, "pair", ["id", "txt"], good)
        # A lone surrogate cannot be encoded: the whole payload is refused ...
        assert copy_payload(Transformer(conn), [*good, (9, "bad \ud800 text")]) is None
        # ... as psycopg's own COPY refuses that row.
        with pytest.raises(UnicodeEncodeError):
            psycopg_copy(conn, "pair", ["id", "txt"], [(9, "bad \ud800 text")])
    # Text the connection's encoding cannot carry is refused the same way.
    with psycopg.connect(pg_dsn, autocommit=True, client_encoding="LATIN1") as latin:
        assert copy_payload(Transformer(latin), [(1, "café")]) is not None
        assert copy_payload(Transformer(latin), [(1, "café"), (2, "日本")]) is None


NOTES = "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, n INTEGER);"


def test_a_row_that_does_not_format_is_dead_lettered_and_the_rest_applied(
    tmp_path: Path, pg_dsn: str, second_dsn: str, open_target: Callable[..., Target]
) -> None:
    """A target whose client encoding is LATIN1: text converts (it is valid UTF-8) but
    cannot be sent. copy_payload gives up, and apply isolates the row as it would
    without a prepared batch."""
    path = tmp_path / "notes.db"
    src = sqlite_conn(path)
    src.executescript(NOTES)
    capture(src, "notes")
    src.execute("BEGIN")
    src.executemany(
        "INSERT INTO notes VALUES (?, ?, ?)",
        [(i, "日本 cannot be LATIN1" if i == 150 else f"café {i}\t\\", i) for i in range(300)],
    )
    src.execute("COMMIT")
    changes = read_log(src, 0)
    src.close()
    plain = open_target(path, pg_dsn, client_encoding="LATIN1")
    ahead = open_target(path, second_dsn, client_encoding="LATIN1")

    prepared = ahead.applier.prepare(changes, formatter=Transformer(ahead.conn))
    assert isinstance(prepared, Prepared)
    assert len(prepared.upserts["notes"]) == 300, "the value converted"
    assert prepared.payloads == {}, "but could not be formatted"
    result = ahead.applier.apply(ahead.conn, changes, prepared=prepared)
    plain_result = plain.applier.apply(plain.conn, changes)

    assert outcome(result) == outcome(plain_result)
    assert result.replayed
    assert result.applied == {("notes", "upsert"): 299}
    (letter,) = result.dead_letters
    assert (letter.table, letter.key) == ("notes", (150,))
    assert "latin-1" in letter.error
    for target in (plain, ahead):
        with psycopg.connect(target.dsn, autocommit=True) as utf8:
            rows = utf8.execute("SELECT id, body, n FROM notes ORDER BY id").fetchall()
            letters = utf8.execute(
                "SELECT table_name, key FROM replicator.dead_letters WHERE resolved_at IS NULL"
            ).fetchall()
        assert rows == [(i, f"café {i}\t\\", i) for i in range(300) if i != 150]
        assert letters == [("notes", [150])]
        assert_replicated(path, target.dsn)
