"""The public Chinook database, snapshotted into an empty PostgreSQL, compared value by value.

The replicator creates every table itself here, so this checks the documented
mapping (NVARCHAR(n) -> varchar(n), NUMERIC(10,2) -> numeric(10,2), DATETIME ->
timestamptz, INTEGER PRIMARY KEY -> identity), exact identifier case, keys,
foreign keys and indexes built after the load, and identity sequences moved
past the copied ids.
"""

from __future__ import annotations

import io
import re
import shutil
import sqlite3
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pgutil import TestDatabases
from psycopg import sql

from replicator.config import load_config
from replicator.snapshot import ProgressDisplay, SnapshotSummary, Snapshotter

CHINOOK = Path("/work/shared/corpus/chinook.sqlite")
if not CHINOOK.exists():  # a checkout next to shared/
    CHINOOK = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "chinook.sqlite"

EXPECTED_ROWS = {
    "Album": 347,
    "Artist": 275,
    "Customer": 59,
    "Employee": 8,
    "Genre": 25,
    "Invoice": 412,
    "InvoiceLine": 2240,
    "MediaType": 5,
    "Playlist": 18,
    "PlaylistTrack": 8715,
    "Track": 3503,
}

# A session time zone far from UTC: an instant written as naive local time, or
# read back through the wrong zone, comes out hours off.
SESSION_TZ = "America/St_Johns"


@dataclass(frozen=True)
class SourceColumn:
    name: str
    decl: str
    pk: int


@dataclass(frozen=True)
class Chinook:
    path: Path
    dsn: str
    summary: SnapshotSummary
    tables: dict[str, list[SourceColumn]]


def source_tables(path: Path) -> dict[str, list[SourceColumn]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {
            name: [
                SourceColumn(r[1], r[2], r[5])
                for r in conn.execute("SELECT * FROM pragma_table_info(?)", (name,))
            ]
            for name in names
        }
    finally:
        conn.close()


@pytest.fixture(scope="module")
def chinook(
    tmp_path_factory: pytest.TempPathFactory,
    pg_databases: TestDatabases,
    pg_empty_template: str,
) -> Iterator[Chinook]:
    # The shared corpus is read-only (and has no write bits at all in CI): work
    # on a private, writable copy, as the replicator may write to its source.
    path = tmp_path_factory.mktemp("chinook") / "chinook.sqlite"
    shutil.copyfile(CHINOOK, path)
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    with pg_databases.database(pg_empty_template) as dsn:
        mp = pytest.MonkeyPatch()
        mp.setenv("PGTZ", SESSION_TZ)  # the replicator's own session too
        try:
            config = load_config(None, env={"DATABASE_PATH": str(path), "DATABASE_URL": dsn})
            summary = Snapshotter(config, display=ProgressDisplay(io.StringIO())).run()
        finally:
            mp.undo()
        yield Chinook(path, dsn, summary, source_tables(path))


def connect(dsn: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(dsn)
    conn.execute(sql.SQL("SET TIME ZONE {}").format(sql.Literal(SESSION_TZ)))
    return conn


def qualified(table: str) -> sql.Identifier:
    return sql.Identifier("public", table)


# --------------------------------------------------------------------------- values


def expected_value(decl: str, value: Any) -> Any:
    """What the source value must be in PostgreSQL, decided from the SQLite declaration
    independently of the replicator's own converters."""
    if value is None:
        return None
    upper = decl.upper()
    if upper == "INTEGER":
        assert type(value) is int
        return value
    if upper.startswith("NVARCHAR"):
        assert type(value) is str
        return value
    if upper == "NUMERIC(10,2)":
        # SQLite stored these as REAL: the decimal a person typed is the float's repr.
        assert type(value) in (int, float)
        return Decimal(repr(value))
    if upper == "DATETIME":
        assert type(value) is str
        return datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    raise AssertionError(f"unexpected declaration {decl!r} in Chinook")


def test_every_table_arrived_with_every_row(chinook: Chinook) -> None:
    assert set(chinook.tables) == set(EXPECTED_ROWS)
    assert {t.table: t.rows_read for t in chinook.summary.tables} == EXPECTED_ROWS
    assert {t.table: t.rows_written for t in chinook.summary.tables} == EXPECTED_ROWS
    assert chinook.summary.dead_letters == 0
    assert chinook.summary.warnings == []
    with connect(chinook.dsn) as pg:
        for table, rows in EXPECTED_ROWS.items():
            count = pg.execute(sql.SQL("SELECT count(*) FROM {}").format(qualified(table)))
            assert count.fetchone() == (rows,), table


@pytest.mark.parametrize("table", sorted(EXPECTED_ROWS))
def test_every_value_of_every_column_matches(chinook: Chinook, table: str) -> None:
    columns = chinook.tables[table]
    names = [c.name for c in columns]
    key = [c.name for c in sorted(columns, key=lambda c: c.pk) if c.pk]
    key_pos = [names.index(k) for k in key]

    src = sqlite3.connect(f"file:{chinook.path}?mode=ro", uri=True)
    try:
        quoted = ", ".join('"' + n + '"' for n in names)
        source_rows = src.execute(f'SELECT {quoted} FROM "{table}"').fetchall()
    finally:
        src.close()
    with connect(chinook.dsn) as pg:
        target_rows = pg.execute(
            sql.SQL("SELECT {} FROM {}").format(
                sql.SQL(", ").join(sql.Identifier(n) for n in names), qualified(table)
            )
        ).fetchall()

    assert len(source_rows) == EXPECTED_ROWS[table]
    target = {tuple(r[i] for i in key_pos): r for r in target_rows}
    assert len(target) == len(target_rows)
    mismatches = []
    for row in source_rows:
        k = tuple(row[i] for i in key_pos)
        got = target.pop(k, None)
        if got is None:
            mismatches.append(f"{table} {k}: missing in PostgreSQL")
            continue
        for col, value, pg_value in zip(columns, row, got, strict=True):
            want = expected_value(col.decl, value)
            ok = want == pg_value and type(want) is type(pg_value)
            if ok and isinstance(want, Decimal):
                ok = pg_value.as_tuple().exponent == -2  # numeric(10,2) keeps two places
            if not ok:
                mismatches.append(f"{table} {k} {col.name}: {value!r} -> {pg_value!r}")
    assert not target, f"rows in PostgreSQL that are not in SQLite: {list(target)[:5]}"
    assert not mismatches, "\n".join(mismatches[:20])


def test_money_and_instants_spot_checks(chinook: Chinook) -> None:
    """A few values pinned by hand, read back as text in a far-off session zone."""
    with connect(chinook.dsn) as pg:
        pg.execute("SET TIME ZONE 'UTC'")
        row = pg.execute(
            'SELECT "UnitPrice"::text, "Quantity" FROM "InvoiceLine" WHERE "InvoiceLineId" = 1'
        ).fetchone()
        assert row == ("0.99", 1)
        row = pg.execute(
            'SELECT "InvoiceDate"::text, "Total"::text FROM "Invoice" WHERE "InvoiceId" = 1'
        ).fetchone()
        assert row == ("2009-01-01 00:00:00+00", "1.98")
        total = pg.execute('SELECT sum("Total")::text FROM "Invoice"').fetchone()
        assert total == ("2328.60",)  # exact: no float drift over 412 invoices
        birth = pg.execute('SELECT "BirthDate" FROM "Employee" WHERE "EmployeeId" = 1').fetchone()
        assert birth == (datetime(1962, 2, 18, tzinfo=UTC),)


# --------------------------------------------------------------------------- schema


def pg_column_types(pg: psycopg.Connection[Any], table: str) -> list[tuple[str, str, bool]]:
    return [
        (str(r[0]), str(r[1]), bool(r[2]))
        for r in pg.execute(
            "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute"
            " WHERE attrelid = to_regclass(format('public.%%I', %s::text))"
            " AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (table,),
        )
    ]


def mapped_type(decl: str) -> str:
    upper = decl.upper()
    if upper == "INTEGER":
        return "bigint"
    if m := re.fullmatch(r"NVARCHAR\((\d+)\)", upper):
        return f"character varying({m[1]})"
    if upper == "NUMERIC(10,2)":
        return "numeric(10,2)"
    if upper == "DATETIME":
        return "timestamp with time zone"
    raise AssertionError(decl)


def test_column_names_keep_their_case_and_types_follow_the_mapping(chinook: Chinook) -> None:
    src = sqlite3.connect(f"file:{chinook.path}?mode=ro", uri=True)
    try:
        not_null = {
            (t, r[1]): bool(r[3])
            for t in chinook.tables
            for r in src.execute("SELECT * FROM pragma_table_info(?)", (t,))
        }
    finally:
        src.close()
    with connect(chinook.dsn) as pg:
        tables = {
            str(r[0])
            for r in pg.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        assert tables == set(EXPECTED_ROWS)  # "InvoiceLine", not invoiceline
        for table, columns in chinook.tables.items():
            got = pg_column_types(pg, table)
            want = [
                (c.name, mapped_type(c.decl), not_null[(table, c.name)] or c.pk > 0)
                for c in columns
            ]
            assert got == want, table
        # Quoted mixed case resolves; the folded lower-case name does not exist.
        assert pg.execute('SELECT "InvoiceLine"."UnitPrice" FROM "InvoiceLine" LIMIT 1')
        assert pg.execute("SELECT to_regclass('public.invoiceline')").fetchone() == (None,)


def test_primary_keys_including_the_composite_one(chinook: Chinook) -> None:
    with connect(chinook.dsn) as pg:
        for table, columns in chinook.tables.items():
            want = [c.name for c in sorted(columns, key=lambda c: c.pk) if c.pk]
            got = [
                str(r[0])
                for r in pg.execute(
                    "SELECT a.attname FROM pg_index i"
                    " JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true"
                    " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
                    " WHERE i.indrelid = to_regclass(format('public.%%I', %s::text))"
                    " AND i.indisprimary ORDER BY k.ord",
                    (table,),
                )
            ]
            assert got == want, table
    assert [c.name for c in chinook.tables["PlaylistTrack"] if c.pk] == ["PlaylistId", "TrackId"]


def _source_foreign_keys(path: Path) -> set[tuple[str, tuple[str, ...], str, tuple[str, ...]]]:
    src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        out = set()
        for (table,) in src.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        ).fetchall():
            by_id: dict[int, list[tuple[str, str, str]]] = {}
            for r in src.execute("SELECT * FROM pragma_foreign_key_list(?)", (table,)):
                by_id.setdefault(r[0], []).append((r[2], r[3], r[4]))
            for parts in by_id.values():
                out.add(
                    (
                        table,
                        tuple(p[1] for p in parts),
                        parts[0][0],
                        tuple(p[2] for p in parts),
                    )
                )
        return out
    finally:
        src.close()


def test_foreign_keys_exist_are_validated_and_came_after_the_load(chinook: Chinook) -> None:
    want = _source_foreign_keys(chinook.path)
    assert len(want) == 11
    with connect(chinook.dsn) as pg:
        rows = pg.execute(
            """
            SELECT c.relname, p.relname, con.convalidated,
                   ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(n, o)
                         JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n
                         ORDER BY k.o),
                   ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(n, o)
                         JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n
                         ORDER BY k.o),
                   age(con.xmin),
                   c.oid
            FROM pg_constraint con
            JOIN pg_class c ON c.oid = con.conrelid
            JOIN pg_class p ON p.oid = con.confrelid
            WHERE con.contype = 'f' AND con.connamespace = 'public'::regnamespace
            """
        ).fetchall()
        got = {(r[0], tuple(r[3]), r[1], tuple(r[4])) for r in rows}
        assert got == want
        assert all(r[2] for r in rows), "every foreign key is validated"
        for child, _, _, _, _, constraint_age, _ in rows:
            # A row's xmin is the transaction that wrote it: a constraint whose
            # catalogue row is younger than every data row was added after the load.
            youngest_row = pg.execute(
                sql.SQL("SELECT min(age(xmin)) FROM {}").format(qualified(child))
            ).fetchone()
            assert youngest_row is not None
            assert constraint_age < youngest_row[0], f"foreign key on {child} predates its rows"


def test_secondary_indexes_exist_and_came_after_the_load(chinook: Chinook) -> None:
    src = sqlite3.connect(f"file:{chinook.path}?mode=ro", uri=True)
    try:
        source_indexes = {
            (table, tuple(r[2] for r in src.execute("SELECT * FROM pragma_index_info(?)", (n,))))
            for table, n in src.execute(
                "SELECT tbl_name, name FROM sqlite_schema WHERE type = 'index' AND sql IS NOT NULL"
            ).fetchall()
        }
    finally:
        src.close()
    assert len(source_indexes) == 21
    with connect(chinook.dsn) as pg:
        rows = pg.execute(
            """
            SELECT t.relname, i.indisprimary, age(ic.xmin),
                   ARRAY(SELECT a.attname::text FROM unnest(i.indkey) WITH ORDINALITY k(n, o)
                         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n
                         ORDER BY k.o)
            FROM pg_index i
            JOIN pg_class t ON t.oid = i.indrelid
            JOIN pg_class ic ON ic.oid = i.indexrelid
            WHERE t.relnamespace = 'public'::regnamespace
            """
        ).fetchall()
        target_indexes = {(r[0], tuple(r[3])) for r in rows}
        # Every SQLite index has a PostgreSQL index on the same columns (the
        # unique IPK_* ones are the primary key's own index).
        assert source_indexes <= target_indexes
        for table, primary, index_age, columns in rows:
            if primary:
                continue
            youngest_row = pg.execute(
                sql.SQL("SELECT min(age(xmin)) FROM {}").format(qualified(table))
            ).fetchone()
            assert youngest_row is not None
            assert index_age < youngest_row[0], f"index on {table} {columns} predates its rows"
        secondary = sum(1 for r in rows if not r[1])
        assert secondary == 10  # the IFK_* indexes


def test_identity_sequences_are_past_the_copied_ids(chinook: Chinook) -> None:
    single_integer_keys = {
        table: pk[0].name
        for table, columns in chinook.tables.items()
        if len(pk := [c for c in columns if c.pk]) == 1 and pk[0].decl.upper() == "INTEGER"
    }
    assert len(single_integer_keys) == 10  # all but PlaylistTrack
    with connect(chinook.dsn) as pg:
        identities = {
            (str(r[0]), str(r[1]))
            for r in pg.execute(
                "SELECT table_name, column_name FROM information_schema.columns"
                " WHERE table_schema = 'public' AND is_identity = 'YES'"
            )
        }
        assert identities == set(single_integer_keys.items())
        for table, key in single_integer_keys.items():
            others = [c.name for c in chinook.tables[table] if c.name != key]
            top = pg.execute(
                sql.SQL("SELECT max({}) FROM {}").format(sql.Identifier(key), qualified(table))
            ).fetchone()
            assert top is not None
            with pg.transaction(force_rollback=True):
                # A copy of the first row without its id: the database picks the id.
                new = pg.execute(
                    sql.SQL(
                        "INSERT INTO {t} ({cols}) SELECT {cols} FROM {t} ORDER BY {k} LIMIT 1"
                        " RETURNING {k}"
                    ).format(
                        t=qualified(table),
                        cols=sql.SQL(", ").join(sql.Identifier(c) for c in others),
                        k=sql.Identifier(key),
                    )
                ).fetchone()
            assert new is not None
            assert new[0] > top[0], f"{table}: new id {new[0]} not past {top[0]}"
