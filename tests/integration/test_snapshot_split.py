"""A large table copied as several key ranges at once (``snapshot.split_rows``), chunks
sized by memory (``snapshot.chunk_bytes``), and JSON checked by SQLite's ``json_valid``.

Each test snapshots a small SQLite file into its own PostgreSQL database and
compares the result with the source, row for row (the oracle's typed comparison).
"""

from __future__ import annotations

import io
import itertools
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
from harness import rows_script, snapshot_config, sqlite_from_script
from oracle import assert_replicated, open_dead_letters

from replicator.config import Config
from replicator.errors import ConfigError
from replicator.plan.rows import convert_rows
from replicator.plan.tables import build_plans
from replicator.snapshot import ProgressDisplay, SnapshotSummary, Snapshotter
from replicator.snapshot.chunks import SIZE_SAMPLE
from replicator.source.reader import ChunkReader


class Boom(Exception):
    pass


class Hook:
    """An on_chunk hook noting (table, rows read so far); raising after ``stop_after``."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.calls: list[tuple[str, int]] = []
        self.stop_after = stop_after

    def __call__(self, table: str, read: int, written: int, total: int) -> None:
        if read:  # index rebuilds report 0
            self.calls.append((table, read))
        if self.stop_after is not None and len(self.calls) >= self.stop_after:
            raise Boom(f"stopped after {len(self.calls)} chunks")

    def chunk_sizes(self, table: str, start: int = 0) -> list[int]:
        """Rows of each chunk, from the table's rows read so far (``start`` before)."""
        reads = [r for t, r in self.calls if t == table]
        return [b - a for a, b in zip([start, *reads], reads, strict=False)]


def snapshot(config: Config, hook: Hook | None = None) -> SnapshotSummary:
    return Snapshotter(config, display=ProgressDisplay(io.StringIO()), on_chunk=hook).run()


def parts(dsn: str, table: str) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(
            "SELECT part, key_from, key_to, last_key, rows_read, rows_written, done"
            " FROM replicator.snapshot_parts WHERE table_name = %s ORDER BY part",
            (table,),
        )
        names = [d.name for d in cur.description or ()]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def progress(dsn: str, table: str) -> tuple[int, int, int, bool]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT rows_read, rows_written, dead_letters, done"
            " FROM replicator.snapshot_progress WHERE table_name = %s",
            (table,),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), bool(row[3])


ROWS = 3000

KEYS = {
    # one integer key: cut by value
    "integer": (
        "CREATE TABLE big (id INTEGER PRIMARY KEY, v TEXT);",
        rows_script("big", ROWS, "i * 7, 'row ' || i"),
    ),
    # a text key: cut at row positions
    "text": (
        "CREATE TABLE big (code TEXT PRIMARY KEY, v TEXT);",
        rows_script("big", ROWS, "printf('k%06d', i * 13 % 100003), 'row ' || i"),
    ),
    # a composite key
    "composite": (
        "CREATE TABLE big (a TEXT, b INTEGER, v TEXT, PRIMARY KEY (a, b));",
        rows_script("big", ROWS, "'g' || (i % 3), i, 'row ' || i"),
    ),
    # integer ids not spread evenly (one far away): cut at row positions instead
    "skewed": (
        "CREATE TABLE big (id INTEGER PRIMARY KEY, v TEXT);",
        rows_script("big", ROWS - 1, "i, 'row ' || i")
        + "INSERT INTO big VALUES (1000000000000, 'far');",
    ),
    # no declared key: rowid
    "rowid": (
        "CREATE TABLE big (v TEXT, n INTEGER);",
        rows_script("big", ROWS, "'row ' || i, i"),
    ),
}


@pytest.mark.parametrize("kind", list(KEYS))
def test_a_large_table_is_copied_as_key_ranges_that_cover_it_exactly(
    tmp_path: Path, pg_dsn: str, kind: str
) -> None:
    create, fill = KEYS[kind]
    source = sqlite_from_script(
        tmp_path / "big.db",
        create + fill + "CREATE TABLE small (id INTEGER PRIMARY KEY, v TEXT);"
        "INSERT INTO small VALUES (1, 'one');",
    )
    config = snapshot_config(
        source, pg_dsn, parallel_tables=3, split_rows=1000, chunk_rows=150, chunk_bytes=0
    )
    summary = snapshot(config)

    by_table = {t.table: t for t in summary.tables}
    assert (by_table["big"].rows_read, by_table["big"].rows_written) == (ROWS, ROWS)
    assert summary.dead_letters == 0
    assert_replicated(source, pg_dsn)
    found = parts(pg_dsn, "big")
    assert len(found) == 3  # parallel_tables, each of at least split_rows rows
    assert all(p["done"] for p in found)
    # ranges chain: each starts where the one before ends, the first and last open
    assert found[0]["key_from"] is None and found[-1]["key_to"] is None
    for before, after in itertools.pairwise(found):
        assert after["key_from"] == before["key_to"] is not None
    # each range holds a fair share, and together they hold every row once
    assert sum(p["rows_read"] for p in found) == ROWS
    assert all(p["rows_read"] >= ROWS // 6 for p in found), found
    assert progress(pg_dsn, "big") == (ROWS, ROWS, 0, True)
    assert parts(pg_dsn, "small") == []  # below split_rows: one range


def test_a_table_with_a_foreign_key_to_itself_is_copied_as_one_range(
    tmp_path: Path, pg_dsn: str
) -> None:
    """Each row points at the row before it: copied in key order, one range, every
    parent is committed before its children."""
    source = sqlite_from_script(
        tmp_path / "tree.db",
        "CREATE TABLE node (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES node(id));"
        + rows_script("node", ROWS, "i, nullif(i - 1, 0)"),
    )
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE node (id bigint PRIMARY KEY, parent_id bigint REFERENCES node (id))"
        )
    config = snapshot_config(
        source, pg_dsn, parallel_tables=3, split_rows=1000, create_tables=False, chunk_rows=100
    )
    summary = snapshot(config)
    assert summary.dead_letters == 0 and open_dead_letters(pg_dsn) == []
    assert parts(pg_dsn, "node") == []
    assert_replicated(source, pg_dsn)


@pytest.mark.parametrize("workers_on_resume", [2, 1])
def test_a_split_copy_stopped_midway_goes_on_from_each_range(
    tmp_path: Path, pg_dsn: str, workers_on_resume: int
) -> None:
    create, fill = KEYS["integer"]
    source = sqlite_from_script(tmp_path / "big.db", create + fill)
    first = snapshot_config(
        source, pg_dsn, parallel_tables=2, split_rows=1000, chunk_rows=100, chunk_bytes=0
    )
    with pytest.raises(Boom):
        snapshot(first, Hook(stop_after=7))
    stopped = parts(pg_dsn, "big")
    assert len(stopped) == 2
    copied = sum(p["rows_read"] for p in stopped)
    assert 0 < copied < ROWS
    assert not all(p["done"] for p in stopped)
    # the table's row holds the sums of what its ranges committed
    assert progress(pg_dsn, "big")[:2] == (copied, copied)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM big").fetchone()
    assert row is not None and row[0] == copied

    again = snapshot_config(
        source,
        pg_dsn,
        parallel_tables=workers_on_resume,
        split_rows=1000,
        chunk_rows=100,
        chunk_bytes=0,
    )
    hook = Hook()
    summary = snapshot(again, hook)

    assert summary.dead_letters == 0 and open_dead_letters(pg_dsn) == []
    assert summary.tables[0].rows_written == ROWS
    # only what was missing was read the second time
    assert hook.calls[-1] == ("big", ROWS)
    sizes = hook.chunk_sizes("big", start=copied)
    assert sum(sizes) == ROWS - copied and max(sizes) <= 100, sizes
    assert_replicated(source, pg_dsn)
    assert [p["done"] for p in parts(pg_dsn, "big")] == [True, True]
    assert progress(pg_dsn, "big") == (ROWS, ROWS, 0, True)


def test_restart_forgets_the_ranges_of_an_earlier_split(tmp_path: Path, pg_dsn: str) -> None:
    create, fill = KEYS["integer"]
    source = sqlite_from_script(tmp_path / "big.db", create + fill)
    split = snapshot_config(source, pg_dsn, parallel_tables=2, split_rows=1000, chunk_bytes=0)
    snapshot(split)
    assert len(parts(pg_dsn, "big")) == 2
    whole = snapshot_config(source, pg_dsn, parallel_tables=2, split_rows=0)
    Snapshotter(whole, display=ProgressDisplay(io.StringIO())).run(restart=True)
    assert parts(pg_dsn, "big") == []  # gone with the table's progress row
    assert progress(pg_dsn, "big") == (ROWS, ROWS, 0, True)
    assert_replicated(source, pg_dsn)


def test_split_rows_zero_copies_every_table_as_one_range(tmp_path: Path, pg_dsn: str) -> None:
    create, fill = KEYS["integer"]
    source = sqlite_from_script(tmp_path / "big.db", create + fill)
    snapshot(snapshot_config(source, pg_dsn, parallel_tables=2, split_rows=0))
    assert parts(pg_dsn, "big") == []
    assert_replicated(source, pg_dsn)


def test_wide_rows_come_in_smaller_chunks(tmp_path: Path, pg_dsn: str) -> None:
    source = sqlite_from_script(
        tmp_path / "wide.db",
        "CREATE TABLE wide (id INTEGER PRIMARY KEY, body TEXT);"
        + rows_script("wide", 2000, "i, printf('%.*c', 5000, 'x') || i"),
    )
    config = snapshot_config(
        source,
        pg_dsn,
        parallel_tables=1,
        chunk_rows=1000,
        chunk_bytes=100_000,
        sql_conversion=False,
    )
    hook = Hook()
    snapshot(config, hook)

    sizes = hook.chunk_sizes("wide")
    assert sizes[0] == SIZE_SAMPLE * 4  # a small first chunk sizes the others
    # ~5 KB a row: 100 KB holds 19 or 20 of them, not chunk_rows
    assert 15 <= max(sizes[1:]) <= 20, sizes
    assert sum(sizes) == 2000
    assert_replicated(source, pg_dsn)


def test_wide_rows_read_as_text_come_in_smaller_chunks(tmp_path: Path, pg_dsn: str) -> None:
    source = sqlite_from_script(
        tmp_path / "wide.db",
        "CREATE TABLE wide (id INTEGER PRIMARY KEY, body TEXT);"
        + rows_script("wide", 2000, "i, printf('%.*c', 500, 'x') || i"),
    )
    config = snapshot_config(source, pg_dsn, parallel_tables=1, chunk_rows=1000, chunk_bytes=10_000)
    hook = Hook()
    snapshot(config, hook)

    sizes = hook.chunk_sizes("wide")
    assert sizes[0] == SIZE_SAMPLE * 4
    # ~500 bytes of text a row, held about twice over (SQLite's text, then COPY's)
    assert 8 <= max(sizes[1:]) <= 10, sizes
    assert sum(sizes) == 2000
    assert_replicated(source, pg_dsn)


def test_chunk_bytes_zero_uses_chunk_rows_alone(tmp_path: Path, pg_dsn: str) -> None:
    source = sqlite_from_script(
        tmp_path / "wide.db",
        "CREATE TABLE wide (id INTEGER PRIMARY KEY, body TEXT);"
        + rows_script("wide", 500, "i, printf('%.*c', 5000, 'x')"),
    )
    hook = Hook()
    snapshot(
        snapshot_config(source, pg_dsn, parallel_tables=1, chunk_rows=200, chunk_bytes=0), hook
    )
    assert hook.chunk_sizes("wide") == [200, 200, 100]


@pytest.mark.parametrize(
    ("setting", "value"), [("split_rows", -1), ("chunk_bytes", -5)], ids=["split", "bytes"]
)
def test_negative_sizes_are_refused(tmp_path: Path, setting: str, value: int) -> None:
    source = sqlite_from_script(tmp_path / "s.db", "CREATE TABLE t (id INTEGER PRIMARY KEY);")
    with pytest.raises(ConfigError, match=f"snapshot.{setting}"):
        snapshot_config(source, "postgresql://postgres@127.0.0.1/x", **{setting: value})


# --------------------------------------------------------------------------- JSON checked by SQLite

JSON_VALUES: list[object] = [
    '{"a": [1, 2.5, "x", null, true]}',  # valid
    '  [1, {"b": "\\u00e9"}]  ',  # valid, escapes and spaces
    '"caf\u00e9 \u2603"',  # valid, non-ASCII text
    '{"a": "\\u0000"}',  # valid JSON that jsonb refuses (NUL escape)
    '{"a": "\\ud800"}',  # valid JSON that jsonb refuses (lone surrogate escape)
    '{"a": 1,}',  # invalid
    "NaN",  # invalid
    "not json",  # invalid
    "",  # invalid
    42,  # an integer: JSON by itself
    2.5,
    b'{"blob": 1}',  # a blob holding JSON text
    b"\xff\xfe",  # a blob that is not UTF-8
    None,
    '{"a": 1}\x00 trailing',  # SQLite's json_valid() stops at the NUL: not JSON
]


def test_rows_sqlite_finds_valid_convert_as_when_parsed_in_python(
    tmp_path: Path, pg_dsn: str
) -> None:
    """Same converted values, and the same dead letters, with and without the check."""
    path = tmp_path / "json.db"
    src = sqlite3.connect(path)
    src.execute("CREATE TABLE docs (id INTEGER PRIMARY KEY, doc JSON, meta JSON, note TEXT)")
    src.executemany(
        "INSERT INTO docs VALUES (?, ?, ?, 'n')",
        [(i, v, '{"ok": 1}' if i % 2 else None) for i, v in enumerate(JSON_VALUES)],
    )
    src.commit()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, doc jsonb, meta json, note text)")
        config = snapshot_config(path, pg_dsn, create_tables=False)
        (plan,) = build_plans(src, conn, config)
    reader = ChunkReader(src, plan, check_json=True)
    raw, valid = reader.read_checked(None, 100)
    assert valid is not None and raw == reader.read(None, 100)
    # SQLite says valid for the first five texts, the numbers and NULL; never for blobs
    by_value = {repr(r[1]): bool(v) for r, v in zip(raw, valid, strict=True)}
    assert by_value[repr(JSON_VALUES[0])] and by_value[repr(JSON_VALUES[3])]
    assert not by_value[repr(JSON_VALUES[5])] and not by_value[repr(b'{"blob": 1}')]
    checked = convert_rows(plan, raw, "snapshot", valid)
    parsed = convert_rows(plan, raw, "snapshot")
    assert checked[0] == parsed[0] and checked[1] == parsed[1]
    assert [(d.key, d.column, d.error) for d in checked[2]] == [
        (d.key, d.column, d.error) for d in parsed[2]
    ]
    src.close()


def test_json_checked_by_sqlite_is_copied_or_dead_lettered_as_before(
    tmp_path: Path, pg_dsn: str
) -> None:
    path = tmp_path / "json.db"
    src = sqlite3.connect(path)
    src.execute("CREATE TABLE docs (id INTEGER PRIMARY KEY, doc JSON)")
    src.executemany("INSERT INTO docs VALUES (?, ?)", list(enumerate(JSON_VALUES)))
    src.commit()
    src.close()
    summary = snapshot(snapshot_config(path, pg_dsn, chunk_rows=4))

    letters = {tuple(d["key"]): d for d in open_dead_letters(pg_dsn)}
    refused = {3, 4, 5, 6, 7, 8, 12, 14}  # NUL, lone-surrogate escapes, invalid, not UTF-8
    assert set(k[0] for k in letters) == refused
    assert all(d["column_name"] == "doc" for d in letters.values())
    assert "not valid JSON" in letters[(5,)]["error"]
    assert "not valid JSON" in letters[(14,)]["error"]
    assert summary.tables[0].rows_written == len(JSON_VALUES) - len(refused)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        got = dict(conn.execute("SELECT id, doc FROM docs").fetchall())
    assert got[0] == {"a": [1, 2.5, "x", None, True]}
    assert got[2] == "caf\u00e9 \u2603"
    assert got[9] == 42 and got[11] == {"blob": 1} and got[13] is None
