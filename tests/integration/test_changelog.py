"""Trigger capture in real SQLite files: what the change log holds, exactly.

No PostgreSQL here: these tests pin down the capture half on its own (every
operation logged once, in order, values byte-exact), so a failure in the
streaming tests can be told apart from a capture bug.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import sqlite3
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from replicator.source import changelog
from replicator.source.changelog import CHANGELOG, Change
from replicator.source.sqlite import describe_table

EVERYTHING = 1 << 40  # read_changes byte limit that never applies


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """A WAL-mode SQLite file, in autocommit mode like the daemon's connection."""
    conn = sqlite3.connect(tmp_path / "app.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    yield conn
    conn.close()


def capture(conn: sqlite3.Connection, *tables: str) -> None:
    changelog.install(conn, [describe_table(conn, t) for t in tables])


def changes(conn: sqlite3.Connection, after: int = 0) -> list[Change]:
    return changelog.read_changes(conn, after, 100_000, EVERYTHING)


def ops(conn: sqlite3.Connection, after: int = 0) -> list[tuple[str, str, tuple[object, ...]]]:
    return [(c.table, c.op, c.key) for c in changes(conn, after)]


# -- what gets logged ---------------------------------------------------------


def test_insert_update_delete_each_log_one_row_in_order(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, n INTEGER)")
    capture(db, "t")
    db.execute("INSERT INTO t VALUES (1, 'one', 10), (2, 'two', 20)")
    db.execute("UPDATE t SET n = 11 WHERE id = 1")
    db.execute("DELETE FROM t WHERE id = 2")

    got = changes(db)
    assert [(c.op, c.key) for c in got] == [("I", (1,)), ("I", (2,)), ("U", (1,)), ("D", (2,))]
    assert [c.seq for c in got] == [1, 2, 3, 4]
    assert got[0].image == {"id": 1, "name": "one", "n": 10}
    assert got[2].image == {"id": 1, "name": "one", "n": 11}
    assert got[3].image is None and got[3].is_delete
    assert all(c.table == "t" for c in got)
    assert changelog.head_position(db) == 4


def test_each_statement_of_a_transaction_is_logged_and_a_rollback_logs_nothing(
    db: sqlite3.Connection,
) -> None:
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER)")
    capture(db, "t")
    db.execute("BEGIN")
    db.execute("INSERT INTO t VALUES (1, 0)")
    for n in range(1, 6):
        db.execute("UPDATE t SET n = ? WHERE id = 1", (n,))
    db.execute("COMMIT")
    db.execute("BEGIN")
    db.execute("INSERT INTO t VALUES (2, 0)")
    db.execute("ROLLBACK")

    got = changes(db)
    assert [c.op for c in got] == ["I"] + ["U"] * 5
    assert [c.image["n"] for c in got if c.image] == [0, 1, 2, 3, 4, 5]
    # The rolled-back insert left no row and did not use up a position.
    assert changelog.head_position(db) == 6


def test_untouched_tables_and_uncaptured_tables_log_nothing(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    db.execute("CREATE TABLE other (id INTEGER PRIMARY KEY)")
    capture(db, "t")
    db.execute("INSERT INTO other VALUES (1)")
    db.execute("UPDATE t SET id = id")  # no rows: no change
    assert changes(db) == []
    assert changelog.head_position(db) == 0


def test_primary_key_change_logs_delete_of_old_key_then_new_row(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE cursors (name TEXT PRIMARY KEY, value TEXT)")
    db.execute("CREATE TABLE pairs (a INTEGER, b TEXT, v TEXT, PRIMARY KEY (a, b))")
    capture(db, "cursors", "pairs")
    db.execute("INSERT INTO cursors VALUES ('arxiv', 'p1')")
    db.execute("INSERT INTO pairs VALUES (1, 'x', 'v')")
    db.execute("UPDATE cursors SET value = 'p2' WHERE name = 'arxiv'")  # same key: U only
    db.execute("UPDATE cursors SET name = 'arxiv@2', value = 'p3' WHERE name = 'arxiv'")
    db.execute("UPDATE pairs SET b = 'y' WHERE a = 1")  # one part of a composite key

    assert ops(db) == [
        ("cursors", "I", ("arxiv",)),
        ("pairs", "I", (1, "x")),
        ("cursors", "U", ("arxiv",)),
        ("cursors", "D", ("arxiv",)),
        ("cursors", "U", ("arxiv@2",)),
        ("pairs", "D", (1, "x")),
        ("pairs", "U", (1, "y")),
    ]
    renamed = changes(db)[4]
    assert renamed.image == {"name": "arxiv@2", "value": "p3"}


def test_rowid_tables_are_keyed_by_rowid_and_rowid_changes_are_key_changes(
    db: sqlite3.Connection,
) -> None:
    db.execute("CREATE TABLE log (msg TEXT)")  # no primary key: the rowid is the key
    capture(db, "log")
    db.execute("INSERT INTO log (rowid, msg) VALUES (7, 'a')")
    db.execute("UPDATE log SET rowid = 8 WHERE rowid = 7")
    db.execute("DELETE FROM log")

    got = changes(db)
    assert [(c.op, c.key) for c in got] == [("I", (7,)), ("D", (7,)), ("U", (8,)), ("D", (8,))]
    assert got[0].image == {"msg": "a"}


def test_without_rowid_tables_and_awkward_names(db: sqlite3.Connection) -> None:
    db.execute(
        'CREATE TABLE "it\'s ""odd"" 表" ("k ey" TEXT PRIMARY KEY, "va""l" INTEGER) WITHOUT ROWID'
    )
    capture(db, 'it\'s "odd" 表')
    db.execute('INSERT INTO "it\'s ""odd"" 表" VALUES (\'a\'\'b\', 1)')
    db.execute('UPDATE "it\'s ""odd"" 表" SET "va""l" = 2')
    got = changes(db)
    assert [(c.table, c.op, c.key) for c in got] == [
        ('it\'s "odd" 表', "I", ("a'b",)),
        ('it\'s "odd" 表', "U", ("a'b",)),
    ]
    assert got[1].image == {"k ey": "a'b", 'va"l': 2}


def test_generated_columns_are_not_captured(db: sqlite3.Connection) -> None:
    db.execute(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, price REAL, "
        "doubled REAL GENERATED ALWAYS AS (price * 2) VIRTUAL)"
    )
    capture(db, "t")
    db.execute("INSERT INTO t (id, price) VALUES (1, 2.5)")
    assert changes(db)[0].image == {"id": 1, "price": 2.5}


# -- values, exactly ------------------------------------------------------------

EDGE_DOUBLES = [
    0.1 + 0.2,
    1 / 3,
    math.pi,
    -math.e,
    5e-324,  # smallest subnormal
    2.2250738585072014e-308,  # smallest normal
    1.7976931348623157e308,  # largest finite
    -1.7976931348623157e308,
    1.2572012867736623e203,
    -1.1545580616824966e232,
    1.0089975415613952e155,
    1e16,
    9007199254740993.0,  # 2**53 + 1 rounds to 2**53
    123456789.123456789,
    0.0,
    math.inf,
    -math.inf,
]


def random_doubles(count: int, seed: int) -> list[float]:
    """Doubles from uniformly random bit patterns: every exponent, both signs."""
    rng = random.Random(seed)
    out: list[float] = []
    while len(out) < count:
        value = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        if math.isfinite(value):
            out.append(value)
    return out


def test_real_values_round_trip_bit_for_bit(db: sqlite3.Connection) -> None:
    """A REAL must come out as the very same double: 0.1 + 0.2 is not 0.3, and the
    large exponents are where printf-based text conversion goes wrong."""
    db.execute("CREATE TABLE r (id INTEGER PRIMARY KEY, x REAL, untyped)")
    capture(db, "r")
    values = EDGE_DOUBLES + random_doubles(3000, seed=7)
    db.execute("BEGIN")
    db.executemany("INSERT INTO r VALUES (?, ?, ?)", [(i, v, v) for i, v in enumerate(values)])
    db.execute("COMMIT")

    wrong = []
    for change in changes(db):
        assert change.image is not None
        expected = values[change.key[0]]
        for column in ("x", "untyped"):
            got = change.image[column]
            if type(got) is not float or struct.pack("<d", got) != struct.pack("<d", expected):
                wrong.append((column, expected, got))
    assert not wrong, f"{len(wrong)} REAL values changed, e.g. {wrong[:5]}"


def test_real_primary_keys_round_trip(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE k (x REAL PRIMARY KEY, v TEXT)")
    capture(db, "k")
    keys = [0.1 + 0.2, 1.7976931348623157e308, 5e-324, -2.5]
    db.executemany("INSERT INTO k VALUES (?, 'v')", [(x,) for x in keys])
    got = [c.key[0] for c in changes(db)]
    assert [struct.pack("<d", g) for g in got] == [struct.pack("<d", k) for k in keys]


def test_integers_nulls_and_unicode_round_trip(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE v (id INTEGER PRIMARY KEY, i INTEGER, t TEXT, anything)")
    capture(db, "v")
    rows = [
        (-(2**63), 2**63 - 1, "min key, max value", None),
        (2**63 - 1, -(2**63), None, -(2**63)),
        (0, 0, "", 0),
        (1, None, None, None),
        (2, -1, "astral: \U0001d53c 🚀 👩\u200d🔬 𠀋, combining e\u0301, RTL التعلم", "\U0001d53c"),
        (3, 42, "quotes ' \" \\ and / and \u2028 \u2029 and \t\n\r", "{}"),
        (4, 7, "control \x01\x1f\x7f and NUL \x00 inside", "[1, 2]"),
        (5, 8, '["r", "1.5"]', '["b", "00ff"]'),  # text that looks like our own tags
        (6, 9, "12345678901234567890", "1e999"),
    ]
    db.executemany("INSERT INTO v VALUES (?, ?, ?, ?)", rows)
    got = {c.key[0]: c.image for c in changes(db)}
    for row_id, i, t, anything in rows:
        image = got[row_id]
        assert image == {"id": row_id, "i": i, "t": t, "anything": anything}
        for name, value in (("i", i), ("t", t), ("anything", anything)):
            assert type(image[name]) is type(value), (row_id, name, image[name])


def test_blobs_and_invalid_utf8_text_survive_byte_exact(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE b (id INTEGER PRIMARY KEY, data BLOB, t TEXT)")
    capture(db, "b")
    blobs = [b"", b"\x00", bytes(range(256)), b'{"not": "json"}', "é".encode(), b"\xff" * 1000]
    db.executemany(
        "INSERT INTO b (id, data) VALUES (?, ?)", [(i, blob) for i, blob in enumerate(blobs)]
    )
    invalid = [b"\xff\xfe", b"ok \x80 then \xc3", b"\xed\xa0\x80 (an encoded surrogate)"]
    for i, raw in enumerate(invalid, start=100):
        # CAST keeps the bytes as they are: a TEXT value that is not UTF-8.
        db.execute("INSERT INTO b (id, t) VALUES (?, CAST(? AS TEXT))", (i, raw))
    db.execute("UPDATE b SET data = x'00ff00' WHERE id = 0")

    got = {c.key[0]: c.image for c in changes(db) if c.op != "D"}
    for i, blob in enumerate(blobs[1:], start=1):
        image = got[i]
        assert image is not None and type(image["data"]) is bytes and image["data"] == blob
    assert got[0] is not None and got[0]["data"] == b"\x00\xff\x00"
    for i, raw in enumerate(invalid, start=100):
        image = got[i]
        assert image is not None
        text = image["t"]
        assert type(text) is str
        assert text.encode("utf-8", errors="surrogateescape") == raw


def test_blob_and_text_primary_keys_round_trip(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE bk (k BLOB PRIMARY KEY, v INTEGER)")
    capture(db, "bk")
    db.execute("INSERT INTO bk VALUES (x'00ff10', 1)")
    db.execute("DELETE FROM bk")
    assert ops(db) == [("bk", "I", (b"\x00\xff\x10",)), ("bk", "D", (b"\x00\xff\x10",))]


def test_a_table_wider_than_the_function_argument_limit(db: sqlite3.Connection) -> None:
    """json_object() takes 2 arguments per column and SQLite allows 127 (before
    3.48): 150 columns only work if the image is split and merged back."""
    width = 150
    cols = ", ".join(f"c{i:03d} INTEGER" for i in range(width))
    db.execute(f"CREATE TABLE wide (id INTEGER PRIMARY KEY, {cols}, last TEXT)")
    capture(db, "wide")
    values = [i * 1000 + 1 for i in range(width)]
    marks = ", ".join("?" for _ in range(width + 2))
    db.execute(f"INSERT INTO wide VALUES ({marks})", (1, *values, "end"))
    db.execute("UPDATE wide SET c149 = -1, id = 2 WHERE id = 1")
    db.execute("DELETE FROM wide")

    got = changes(db)
    assert [(c.op, c.key) for c in got] == [("I", (1,)), ("D", (1,)), ("U", (2,)), ("D", (2,))]
    expected = {"id": 1, **{f"c{i:03d}": v for i, v in enumerate(values)}, "last": "end"}
    assert got[0].image == expected
    assert len(got[0].image) == width + 2
    assert got[2].image == {**expected, "id": 2, "c149": -1}


# -- reading, pruning, removing ----------------------------------------------------


def test_read_changes_honours_its_limits_and_position(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
    capture(db, "t")
    db.executemany("INSERT INTO t VALUES (?, ?)", [(i, "x" * 100) for i in range(1, 21)])

    assert [c.seq for c in changelog.read_changes(db, 0, 5, EVERYTHING)] == [1, 2, 3, 4, 5]
    assert [c.seq for c in changelog.read_changes(db, 17, 100, EVERYTHING)] == [18, 19, 20]
    assert changelog.read_changes(db, 20, 100, EVERYTHING) == []
    # A byte limit smaller than one image still returns that one change.
    assert [c.seq for c in changelog.read_changes(db, 3, 100, 1)] == [4]
    # Roughly three images' worth of bytes.
    assert len(changelog.read_changes(db, 0, 100, 350)) == 3


def test_prune_deletes_only_up_to_the_given_position(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    capture(db, "t")
    db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(1, 51)])

    assert changelog.prune(db, 20, 7) == 20  # several batches of 7
    remaining = [r[0] for r in db.execute(f'SELECT seq FROM "{CHANGELOG}" ORDER BY seq')]
    assert remaining == list(range(21, 51))
    assert changelog.log_rows(db) == 30
    assert changelog.prune(db, 20, 7) == 0  # nothing at or below 20 is left
    assert changelog.prune(db, 0, 100) == 0
    # Positions are never handed out twice, even though rows were deleted.
    assert changelog.head_position(db) == 50
    assert changelog.prune(db, 50, 1000) == 30
    db.execute("INSERT INTO t VALUES (51)")
    assert [c.seq for c in changes(db)] == [51]


def test_install_is_repeatable_and_drops_triggers_of_tables_no_longer_captured(
    db: sqlite3.Connection,
) -> None:
    db.execute("CREATE TABLE a (id INTEGER PRIMARY KEY)")
    db.execute("CREATE TABLE b (id INTEGER PRIMARY KEY)")
    capture(db, "a", "b")
    db.execute("INSERT INTO a VALUES (1)")
    capture(db, "a")  # b is no longer replicated
    db.execute("INSERT INTO a VALUES (2)")
    db.execute("INSERT INTO b VALUES (1)")

    assert ops(db) == [("a", "I", (1,)), ("a", "I", (2,))]  # once each, and nothing of b
    assert sorted(changelog.installed_triggers(db).values()) == ["a", "a", "a"]


def schema_without_ours(conn: sqlite3.Connection) -> list[tuple[object, ...]]:
    return conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_schema "
        "WHERE name NOT LIKE '\\_replicator\\_%' ESCAPE '\\' ORDER BY type, name"
    ).fetchall()


def content_hash(conn: sqlite3.Connection) -> str:
    """A digest of every row of every application table (and its sqlite_sequence rows)."""
    digest = hashlib.sha256()
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' "
            "AND name NOT LIKE '\\_replicator\\_%' ESCAPE '\\' ORDER BY name"
        )
    ]
    for table in tables:
        digest.update(table.encode())
        where = f"WHERE name != '{CHANGELOG}'" if table == "sqlite_sequence" else ""
        for row in conn.execute(f'SELECT * FROM "{table}" {where} ORDER BY 1'):
            digest.update(repr(row).encode())
    return digest.hexdigest()


def test_uninstall_removes_every_trigger_and_the_log_and_nothing_else(
    db: sqlite3.Connection,
) -> None:
    db.executescript(
        """
        CREATE TABLE parent (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE);
        CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER
            REFERENCES parent (id) ON DELETE CASCADE, data BLOB);
        CREATE INDEX child_parent ON child (parent_id);
        CREATE TABLE audit (at TEXT, what TEXT);
        CREATE TRIGGER app_audit AFTER INSERT ON parent BEGIN
            INSERT INTO audit VALUES ('now', NEW.name); END;
        CREATE VIEW parent_names AS SELECT name FROM parent;
        INSERT INTO parent (name) VALUES ('a'), ('b');
        INSERT INTO child VALUES (1, 1, x'00'), (2, 2, NULL);
        """
    )
    schema_before = schema_without_ours(db)
    capture(db, "parent", "child", "audit")
    assert len(changelog.installed_triggers(db)) == 9
    db.execute("INSERT INTO parent (name) VALUES ('c')")
    db.execute("UPDATE child SET data = x'01' WHERE id = 1")
    db.execute("DELETE FROM parent WHERE name = 'b'")
    data_before = content_hash(db)

    removed, had_log = changelog.uninstall(db)

    assert (removed, had_log) == (9, True)
    assert changelog.installed_triggers(db) == {}
    assert not changelog.changelog_exists(db)
    assert (
        db.execute("SELECT count(*) FROM sqlite_sequence WHERE name = ?", (CHANGELOG,)).fetchone()[
            0
        ]
        == 0
    )
    leftovers = db.execute(
        "SELECT type, name FROM sqlite_schema WHERE name LIKE '%replicator%'"
    ).fetchall()
    assert leftovers == []
    assert schema_without_ours(db) == schema_before
    assert content_hash(db) == data_before
    # The application's own trigger and AUTOINCREMENT counter still work.
    db.execute("INSERT INTO parent (name) VALUES ('d')")
    assert db.execute("SELECT id FROM parent WHERE name = 'd'").fetchone()[0] == 4
    assert db.execute("SELECT count(*) FROM audit").fetchone()[0] == 4
    assert changelog.uninstall(db) == (0, False)  # a second run finds nothing to do


def test_json_written_with_sqlite_json_functions_is_captured_as_text(
    db: sqlite3.Connection,
) -> None:
    """json_set() and friends give text a JSON subtype; the image must still carry the
    column's text (a JSON string), not an object spliced into the image."""
    db.execute("CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT, tags TEXT)")
    capture(db, "docs")
    db.execute("""INSERT INTO docs VALUES (1, '{"a": 1}', json_array('x', 'y'))""")
    db.execute("UPDATE docs SET body = json_set(body, '$.b', json('[2,3]')) WHERE id = 1")
    inserted, updated = changes(db)
    assert inserted.image == {"id": 1, "body": '{"a": 1}', "tags": '["x","y"]'}
    assert updated.image is not None
    assert updated.image["body"] == '{"a":1,"b":[2,3]}'
    stored = db.execute("SELECT body, tags FROM docs").fetchone()
    assert (updated.image["body"], updated.image["tags"]) == stored
    raw = db.execute(f"SELECT image FROM {CHANGELOG} WHERE op = 'U'").fetchone()[0]
    assert isinstance(json.loads(raw)["body"], str), "the trigger let the JSON subtype through"
