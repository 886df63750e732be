"""Snapshot edge cases: odd keys, odd bytes, odd names, and schemas that cannot work.

Each test builds a small SQLite file, snapshots it into its own empty
PostgreSQL database with the replicator creating the tables, and compares
what arrived with what was there, value by value.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from harness import snapshot_config, sqlite_from_script
from psycopg import sql

from replicator.errors import SchemaError
from replicator.snapshot import ProgressDisplay, SnapshotSummary, Snapshotter

ROWID_COLUMN = "_replicator_rowid"


# --------------------------------------------------------------------------- helpers


make_source = sqlite_from_script
make_config = snapshot_config


def snapshot(source: Path, dsn: str, *, restart: bool = False, **settings: Any) -> SnapshotSummary:
    config = make_config(source, dsn, **settings)
    return Snapshotter(config, display=ProgressDisplay(io.StringIO())).run(restart=restart)


def sqlite_rows(path: Path, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    conn.text_factory = bytes  # compare what is stored, whatever its encoding
    try:
        return conn.execute(query, params).fetchall()
    finally:
        conn.close()


def pg_rows(dsn: str, table: str, columns: Sequence[str]) -> list[tuple[Any, ...]]:
    query = sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns), sql.Identifier("public", table)
    )
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


def pg_columns(dsn: str, table: str) -> list[tuple[str, str]]:
    with psycopg.connect(dsn) as conn:
        return [
            (str(r[0]), str(r[1]))
            for r in conn.execute(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
                " WHERE a.attrelid = to_regclass(format('public.%%I', %s::text))"
                " AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                (table,),
            )
        ]


def pg_primary_key(dsn: str, table: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [
            str(r[0])
            for r in conn.execute(
                "SELECT a.attname FROM pg_index i"
                " JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true"
                " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
                " WHERE i.indrelid = to_regclass(format('public.%%I', %s::text))"
                " AND i.indisprimary ORDER BY k.ord",
                (table,),
            )
        ]


def public_tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {
            str(r[0])
            for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }


def dead_letters(dsn: str) -> list[tuple[str, list[Any], str | None, dict[str, str], str]]:
    with psycopg.connect(dsn) as conn:
        return [
            (str(r[0]), r[1], r[2], r[3], str(r[4]))
            for r in conn.execute(
                "SELECT table_name, key, column_name, raw_value, error"
                " FROM replicator.dead_letters WHERE resolved_at IS NULL ORDER BY id"
            )
        ]


def state_is_empty(dsn: str) -> bool:
    """Nothing recorded in the state schema (which may or may not exist yet)."""
    with psycopg.connect(dsn) as conn:
        exists = conn.execute("SELECT to_regclass('replicator.snapshot_progress')").fetchone()
        if not exists or exists[0] is None:
            return True
        progress = conn.execute("SELECT count(*) FROM replicator.snapshot_progress").fetchone()
        letters = conn.execute("SELECT count(*) FROM replicator.dead_letters").fetchone()
    assert progress is not None and letters is not None
    return progress[0] == 0 and letters[0] == 0


def as_text(value: Any) -> Any:
    """SQLite text read as bytes, back to str (only valid UTF-8 reaches this)."""
    return value.decode("utf-8") if isinstance(value, bytes) else value


# --------------------------------------------------------------------------- keys


def test_table_without_primary_key_is_keyed_by_its_rowid(tmp_path: Path, pg_dsn: str) -> None:
    source = make_source(
        tmp_path / "nopk.db",
        """
        CREATE TABLE events (kind TEXT, n INTEGER);
        INSERT INTO events VALUES ('a', 1), ('a', 1), (NULL, NULL), ('b', 2), ('a', 1), ('c', 3);
        DELETE FROM events WHERE rowid = 3;  -- a hole in the rowids
        """,
    )
    summary = snapshot(source, pg_dsn, chunk_rows=2)  # several keyset chunks over rowid

    assert pg_columns(pg_dsn, "events") == [
        (ROWID_COLUMN, "bigint"),
        ("kind", "text"),
        ("n", "bigint"),
    ]
    assert pg_primary_key(pg_dsn, "events") == [ROWID_COLUMN]
    want = sorted(
        (r[0], as_text(r[1]), r[2]) for r in sqlite_rows(source, "SELECT rowid, * FROM events")
    )
    got = sorted(pg_rows(pg_dsn, "events", [ROWID_COLUMN, "kind", "n"]))
    assert got == want
    assert [r[0] for r in got] == [1, 2, 4, 5, 6]  # duplicates kept, each once
    assert summary.tables[0].rows_read == 5


def test_without_rowid_table_with_a_text_key(tmp_path: Path, pg_dsn: str) -> None:
    source = make_source(
        tmp_path / "wr.db",
        """
        CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER NOT NULL) WITHOUT ROWID;
        INSERT INTO kv VALUES ('b', 2), ('a', 1), ('B', 3), ('é', 4), ('a b', 5), ('', 6);
        """,
    )
    snapshot(source, pg_dsn, chunk_rows=1)

    assert [c for c, _ in pg_columns(pg_dsn, "kv")] == ["k", "v"]  # no rowid invented
    assert pg_primary_key(pg_dsn, "kv") == ["k"]
    want = sorted((as_text(k), v) for k, v in sqlite_rows(source, "SELECT k, v FROM kv"))
    assert sorted(pg_rows(pg_dsn, "kv", ["k", "v"])) == want
    assert len(want) == 6


def test_composite_key_with_text_in_binary_order(tmp_path: Path, pg_dsn: str) -> None:
    # SQLite pages through the key in its own (binary) order, which is not
    # PostgreSQL's collation order: every row must still arrive exactly once.
    source = make_source(
        tmp_path / "comp.db",
        """
        CREATE TABLE tags (owner TEXT NOT NULL, n INTEGER NOT NULL, label TEXT,
                           PRIMARY KEY (owner, n));
        INSERT INTO tags VALUES ('a', 2, 'x'), ('a', 1, 'y'), ('B', 1, 'z'), ('b', 1, 'w'),
                                ('é', 1, 'v'), ('e', 10, 'u'), ('E', 9, 't'), ('a', 10, 's'),
                                ('日本', 1, 'r'), ('🚀', 1, 'q'), ('a ', 1, 'p');
        """,
    )
    summary = snapshot(source, pg_dsn, chunk_rows=3)

    assert pg_primary_key(pg_dsn, "tags") == ["owner", "n"]
    want = sorted(tuple(map(as_text, r)) for r in sqlite_rows(source, "SELECT * FROM tags"))
    got = pg_rows(pg_dsn, "tags", ["owner", "n", "label"])
    assert sorted(got) == want
    assert len(got) == len(set(got)) == 11
    assert summary.tables[0].rows_read == 11


# --------------------------------------------------------------------------- bytes


def test_blob_column_is_copied_byte_exact(tmp_path: Path, pg_dsn: str) -> None:
    blobs = [b"", b"\x00", bytes(range(256)), os.urandom(70_000), b"\xc3\xa9", None]
    source = tmp_path / "blob.db"
    conn = sqlite3.connect(source)
    conn.execute("CREATE TABLE files (id INTEGER PRIMARY KEY, data BLOB)")
    conn.executemany("INSERT INTO files (data) VALUES (?)", [(b,) for b in blobs])
    conn.commit()
    conn.close()

    snapshot(source, pg_dsn, chunk_rows=2)

    assert dict(pg_columns(pg_dsn, "files"))["data"] == "bytea"
    got = dict(pg_rows(pg_dsn, "files", ["id", "data"]))
    assert got == {i + 1: b for i, b in enumerate(blobs)}


def test_text_that_is_not_utf8(tmp_path: Path, pg_dsn: str) -> None:
    """Invalid UTF-8 in TEXT: read without crashing; refused by a text column with the
    original bytes recorded as hex; copied byte-exact into a bytea column."""
    source = make_source(
        tmp_path / "latin.db",
        """
        CREATE TABLE notes (id INTEGER PRIMARY KEY, note TEXT, payload BLOB);
        INSERT INTO notes VALUES (1, CAST(x'c3a9ff' AS TEXT), NULL),
                                 (2, 'fine', CAST(x'c3a9ff' AS TEXT)),
                                 (3, 'café', x'00ff'),
                                 (4, 'also fine', CAST(x'80' AS TEXT));
        """,
    )
    assert sqlite_rows(source, "SELECT typeof(note) FROM notes WHERE id = 1") == [(b"text",)]
    assert sqlite_rows(source, "SELECT typeof(payload) FROM notes WHERE id = 2") == [(b"text",)]

    summary = snapshot(source, pg_dsn, chunk_rows=10)

    assert summary.tables[0].rows_read == 4
    assert summary.tables[0].rows_written == 3
    assert dict(pg_columns(pg_dsn, "notes")) == {
        "id": "bigint",
        "note": "text",
        "payload": "bytea",
    }
    got = {r[0]: r[1:] for r in pg_rows(pg_dsn, "notes", ["id", "note", "payload"])}
    assert got == {
        2: ("fine", b"\xc3\xa9\xff"),
        3: ("café", b"\x00\xff"),
        4: ("also fine", b"\x80"),
    }
    [letter] = dead_letters(pg_dsn)
    table, key, column, raw, error = letter
    assert (table, key, column) == ("notes", [1], "note")
    assert raw == {"type": "invalid-utf8-text", "value": "c3a9ff"}
    assert "UTF-8" in error


def test_text_that_is_not_utf8_into_an_existing_bytea_column(tmp_path: Path, pg_dsn: str) -> None:
    source = make_source(
        tmp_path / "latin-existing.db",
        """
        CREATE TABLE notes (id INTEGER PRIMARY KEY, note TEXT);
        INSERT INTO notes VALUES (1, CAST(x'c3a9ff' AS TEXT)), (2, 'plain'), (3, NULL),
                                 (4, CAST(x'ff00fe' AS TEXT));
        """,
    )
    with psycopg.connect(pg_dsn) as pg:
        pg.execute("CREATE TABLE notes (id bigint PRIMARY KEY, note bytea)")

    summary = snapshot(source, pg_dsn, create_tables=False)

    assert summary.dead_letters == 0
    assert dict(pg_rows(pg_dsn, "notes", ["id", "note"])) == {
        1: b"\xc3\xa9\xff",
        2: b"plain",
        3: None,
        4: b"\xff\x00\xfe",
    }


def test_text_key_that_is_not_utf8_pages_and_resumes(tmp_path: Path, pg_dsn: str) -> None:
    """An invalid-UTF-8 key can end a chunk (it becomes the keyset position) and can
    be the saved checkpoint a resumed run starts from."""
    source = make_source(
        tmp_path / "badkey.db",
        """
        CREATE TABLE k (name TEXT PRIMARY KEY, v INTEGER);
        INSERT INTO k VALUES ('a', 1), (CAST(x'62ff' AS TEXT), 2), ('c', 3), ('d', 4),
                             (CAST(x'7aff' AS TEXT), 5);
        """,
    )
    # chunks: [a, b\xff] [c, d] [z\xff]; the first and last end on an invalid key
    summary = snapshot(source, pg_dsn, chunk_rows=2)

    assert summary.tables[0].rows_read == 5
    assert sorted(pg_rows(pg_dsn, "k", ["name", "v"])) == [("a", 1), ("c", 3), ("d", 4)]
    letters = dead_letters(pg_dsn)
    assert [(t, k, c) for t, k, c, _, _ in letters] == [
        ("k", [{"type": "invalid-utf8-text", "value": "62ff"}], "name"),
        ("k", [{"type": "invalid-utf8-text", "value": "7aff"}], "name"),
    ]

    # The state a kill leaves between committing the last chunk (checkpoint at
    # 'z\xff') and marking the table done; meanwhile the app added a row after it.
    conn = sqlite3.connect(source)
    conn.execute("INSERT INTO k VALUES ('é', 6)")  # c3 a9 sorts after 7a ff
    conn.commit()
    conn.close()
    with psycopg.connect(pg_dsn) as pg:
        pg.execute("UPDATE replicator.snapshot_progress SET done = false WHERE table_name = 'k'")

    resumed = snapshot(source, pg_dsn, chunk_rows=2)

    assert resumed.tables[0].rows_read == 6  # one more row read, none re-read
    assert sorted(pg_rows(pg_dsn, "k", ["name", "v"])) == [
        ("a", 1),
        ("c", 3),
        ("d", 4),
        ("é", 6),
    ]
    assert len(dead_letters(pg_dsn)) == 2


@pytest.mark.parametrize(
    ("decl", "keys", "later"),
    [
        ("BLOB", [b"\x01", b"\x02\x00", b"\xff"], b"\xff\x01"),
        ("TEXT", ["a", "b\x00", "c\x00c"], "d"),  # NUL text: refused by text, still a key
    ],
    ids=["blob", "text-with-nul"],
)
def test_keys_json_cannot_hold_survive_the_checkpoint(
    tmp_path: Path, pg_dsn: str, decl: str, keys: list[Any], later: Any
) -> None:
    source = tmp_path / "keys.db"
    conn = sqlite3.connect(source)
    conn.execute(f"CREATE TABLE k (id {decl} PRIMARY KEY, v INTEGER)")
    conn.executemany("INSERT INTO k VALUES (?, ?)", [(k, i) for i, k in enumerate(keys)])
    conn.commit()

    first = snapshot(source, pg_dsn, chunk_rows=2)
    assert first.tables[0].rows_read == 3
    with psycopg.connect(pg_dsn) as pg:
        pg.execute("UPDATE replicator.snapshot_progress SET done = false WHERE table_name = 'k'")
    conn.execute("INSERT INTO k VALUES (?, ?)", (later, 99))
    conn.commit()
    conn.close()

    resumed = snapshot(source, pg_dsn, chunk_rows=2)

    assert resumed.tables[0].rows_read == 4  # started after the saved key, re-read nothing
    stored = {k for (k,) in pg_rows(pg_dsn, "k", ["id"])}
    refused = {json.dumps(key) for _, key, _, _, _ in dead_letters(pg_dsn)}
    assert later in stored
    assert len(stored) + len(refused) == 4


# --------------------------------------------------------------------------- shapes and names


@pytest.mark.parametrize("width", [128, 300])
def test_table_wider_than_127_columns(tmp_path: Path, pg_dsn: str, width: int) -> None:
    source = tmp_path / "wide.db"
    names = [f"c{i:03d}" for i in range(width)]
    kinds = ["INTEGER", "TEXT", "REAL", "BLOB"]
    decls = ", ".join(f"{n} {kinds[i % 4]}" for i, n in enumerate(names))

    def value(row: int, i: int) -> Any:
        return [row * 1000 + i, f"r{row}c{i}", row + i / 8, bytes([row % 256, i % 256])][i % 4]

    rows = [(r, *(value(r, i) for i in range(width))) for r in range(1, 301)]
    conn = sqlite3.connect(source)
    conn.execute(f"CREATE TABLE wide (id INTEGER PRIMARY KEY, {decls})")
    conn.executemany(f"INSERT INTO wide VALUES ({', '.join('?' * (width + 1))})", rows)
    conn.commit()
    conn.close()

    snapshot(source, pg_dsn)  # COPY into the new, empty table
    columns = ["id", *names]
    assert [c for c, _ in pg_columns(pg_dsn, "wide")] == columns
    assert sorted(pg_rows(pg_dsn, "wide", columns)) == rows

    # Again into the now non-empty table: upserts, through the staging table
    # (a 300-row chunk) and through the row-by-row path (small chunks).
    with psycopg.connect(pg_dsn) as pg:
        pg.execute("UPDATE wide SET c001 = NULL, c002 = 0 WHERE id % 7 = 0")
    snapshot(source, pg_dsn, restart=True, chunk_rows=300)
    assert sorted(pg_rows(pg_dsn, "wide", columns)) == rows
    with psycopg.connect(pg_dsn) as pg:
        pg.execute("UPDATE wide SET c001 = NULL WHERE id % 5 = 0")
    snapshot(source, pg_dsn, restart=True, chunk_rows=40)
    assert sorted(pg_rows(pg_dsn, "wide", columns)) == rows


AWKWARD_TABLES = [
    'we"ird; DROP TABLE x; --',
    "select",
    "Mixed Case",
    "ünïcödé 表 🚀",
    "it's $$ dollar",
    "a.b",
]
AWKWARD_COLUMNS = ["from", "Mixed Col", 'quo"te', "semi;colon", "ü 🚀", "$$", "a.b"]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def test_awkward_identifiers_keep_their_exact_names(tmp_path: Path, pg_dsn: str) -> None:
    source = tmp_path / "names.db"
    conn = sqlite3.connect(source)
    parent = AWKWARD_TABLES[0]
    cols = ", ".join(f"{_quote(c)} TEXT" for c in AWKWARD_COLUMNS)
    for n, table in enumerate(AWKWARD_TABLES):
        ref = f" REFERENCES {_quote(parent)} (id)" if table != parent else ""
        conn.execute(
            f"CREATE TABLE {_quote(table)} (id INTEGER PRIMARY KEY,"
            f' "Parent Id" INTEGER{ref}, {cols})'
        )
        conn.execute(f'CREATE INDEX {_quote(f"ix {n} $$ {table}")} ON {_quote(table)} ("from")')
        conn.executemany(
            f"INSERT INTO {_quote(table)} VALUES ({', '.join('?' * (len(AWKWARD_COLUMNS) + 2))})",
            [(i, 1, *(f"{table}/{c}/{i}" for c in AWKWARD_COLUMNS)) for i in range(1, 4)],
        )
    conn.commit()
    conn.close()

    summary = snapshot(source, pg_dsn)

    assert summary.warnings == []
    assert public_tables(pg_dsn) == set(AWKWARD_TABLES)
    columns = ["id", "Parent Id", *AWKWARD_COLUMNS]
    for table in AWKWARD_TABLES:
        assert [c for c, _ in pg_columns(pg_dsn, table)] == columns
        want = sorted(
            tuple(map(as_text, r)) for r in sqlite_rows(source, f"SELECT * FROM {_quote(table)}")
        )
        assert sorted(pg_rows(pg_dsn, table, columns)) == want
    with psycopg.connect(pg_dsn) as pg:
        fks = pg.execute(
            "SELECT c.relname, p.relname, con.convalidated FROM pg_constraint con"
            " JOIN pg_class c ON c.oid = con.conrelid JOIN pg_class p ON p.oid = con.confrelid"
            " WHERE con.contype = 'f' AND con.connamespace = 'public'::regnamespace"
        ).fetchall()
        indexes = {
            str(r[0])
            for r in pg.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")
        }
    assert sorted(fks) == sorted((t, parent, True) for t in AWKWARD_TABLES if t != parent)
    assert {f"ix {n} $$ {t}"[:63] for n, t in enumerate(AWKWARD_TABLES)} <= indexes


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("x" * 63 + "_first", "x" * 63 + "_second"),
        ("é" * 32 + "A", "é" * 32 + "B"),  # cut inside a two-byte character
    ],
    ids=["ascii", "multibyte"],
)
def test_names_that_collide_after_truncation_are_refused_up_front(
    tmp_path: Path, pg_dsn: str, first: str, second: str
) -> None:
    long_a, long_b = _quote("c" * 70), _quote("c" * 71)  # two columns that collide too
    source = make_source(
        tmp_path / "long.db",
        f"""
        CREATE TABLE {_quote(first)} (id INTEGER PRIMARY KEY);
        CREATE TABLE {_quote(second)} (id INTEGER PRIMARY KEY);
        CREATE TABLE fine (id INTEGER PRIMARY KEY, {long_a} TEXT, {long_b} TEXT);
        INSERT INTO {_quote(first)} VALUES (1);
        INSERT INTO fine VALUES (1, 'a', 'b');
        """,
    )
    with pytest.raises(SchemaError) as info:
        snapshot(source, pg_dsn)
    message = str(info.value)
    assert repr(first) in message
    assert repr(second) in message
    assert repr("c" * 70) in message and repr("c" * 71) in message  # every problem at once
    assert "nothing was written" in message
    assert public_tables(pg_dsn) == set()
    assert state_is_empty(pg_dsn)


def test_incompatible_existing_target_lists_every_problem_and_writes_nothing(
    tmp_path: Path, pg_dsn: str
) -> None:
    source = make_source(
        tmp_path / "incompatible.db",
        """
        CREATE TABLE docs (id INTEGER PRIMARY KEY, body BLOB, extra TEXT, n INTEGER);
        CREATE TABLE scores (id INTEGER PRIMARY KEY, score REAL);
        CREATE TABLE good (id INTEGER PRIMARY KEY, name TEXT);
        INSERT INTO docs VALUES (1, x'00', 'e', 5);
        INSERT INTO scores VALUES (1, 0.5);
        INSERT INTO good VALUES (1, 'ok');
        """,
    )
    with psycopg.connect(pg_dsn) as pg:
        pg.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body integer, n integer)")
        pg.execute("CREATE TABLE scores (id bigint PRIMARY KEY, score bytea, owner text NOT NULL)")
        pg.execute("CREATE TABLE good (id bigint PRIMARY KEY, name text)")

    with pytest.raises(SchemaError) as info:
        snapshot(source, pg_dsn, create_tables=False)

    message = str(info.value)
    assert message.startswith("4 schema problems found, nothing was written")
    problems = message.splitlines()[1:]
    assert len(problems) == 4
    assert any("docs.body" in p and "BLOB" in p and "integer" in p for p in problems)
    assert any("docs.extra" in p for p in problems)
    assert any("scores.score" in p and "bytea" in p for p in problems)
    assert any("scores.owner" in p and "NOT NULL" in p for p in problems)
    with psycopg.connect(pg_dsn) as pg:
        for table in ("docs", "scores", "good"):
            count = pg.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
            assert count.fetchone() == (0,), table
    assert state_is_empty(pg_dsn)


def test_dead_letter_image_is_json_with_the_raw_value(tmp_path: Path, pg_dsn: str) -> None:
    """The dead-letter row carries the whole source row, JSON-safe, for a human to fix."""
    source = make_source(
        tmp_path / "nul.db",
        """
        CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, data BLOB);
        INSERT INTO t VALUES (7, 'a' || char(0) || 'b', x'ff00');
        """,
    )
    snapshot(source, pg_dsn)
    with psycopg.connect(pg_dsn) as pg:
        row = pg.execute(
            "SELECT key, column_name, raw_value, change FROM replicator.dead_letters"
        ).fetchone()
    assert row is not None
    key, column, raw, change = row
    assert (key, column) == ([7], "name")
    assert raw == {"type": "text-with-nul", "value": b"a\x00b".hex()}
    assert change["id"] == 7
    assert change["data"] == {"type": "blob", "value": "ff00"}
    json.dumps(change)  # plain JSON all the way down


def test_a_table_growing_during_its_copy_still_finishes(tmp_path: Path, pg_dsn: str) -> None:
    """The copy of a table stops at the largest key it saw when it started: rows
    inserted later belong to the stream, and a table that grows faster than it is
    copied must not keep the snapshot running forever."""
    source = make_source(
        tmp_path / "grow.db",
        "CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT);"
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)"
        " INSERT INTO events SELECT i, 'row ' || i FROM n;",
    )
    writer = sqlite3.connect(source)
    grown = 0

    def grow(_table: str, _read: int, _written: int, _total: int) -> None:
        nonlocal grown
        # Faster than the copy: 20 new rows for every 10 copied.
        writer.executemany("INSERT INTO events (body) VALUES (?)", [("late",) for _ in range(20)])
        writer.commit()
        grown += 20

    config = make_config(source, pg_dsn, chunk_rows=10)
    summary = Snapshotter(config, display=ProgressDisplay(io.StringIO()), on_chunk=grow).run()
    writer.close()
    assert grown >= 1000, "the source really grew faster than it was copied"
    (result,) = summary.tables
    assert result.rows_read == 500
    with psycopg.connect(pg_dsn) as conn:
        got = conn.execute('SELECT min(id), max(id), count(*) FROM "events"').fetchone()
    assert got == (1, 500, 500)
