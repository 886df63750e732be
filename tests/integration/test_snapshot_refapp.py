"""The reference application's database (50,000 artifacts, planted bad values) copied
into the schema its own migrations made, with ``config/reference-app.toml``.

The promise checked here, table by table and row by row: every source row is
either in PostgreSQL with every value right for its target type, or in
``replicator.dead_letters`` with the column and the reason; nothing else, and
the counts add up exactly. The application's own ``alembic_version`` survives
and every BIGSERIAL sequence is past the copied ids.
"""

from __future__ import annotations

import io
import json
import re
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pgutil import TestDatabases
from psycopg import sql

from replicator.config import load_config
from replicator.demo.sample import (
    REFERENCE_TABLES,
    SQLITE_ALEMBIC_VERSION,
    BadCell,
    BadKind,
    SampleReport,
    generate_reference_db,
)
from replicator.snapshot import ProgressDisplay, SnapshotSummary, Snapshotter

pytestmark = pytest.mark.slow  # ~25 s: 200k rows generated, copied and compared

PROJECT_ROOT = Path(__file__).resolve().parents[2]
REFERENCE_CONFIG = PROJECT_ROOT / "config" / "reference-app.toml"
TARGET_ALEMBIC_VERSION = "20251112_0010"
ARTIFACTS = 50_000
SEED = 20251112
COPIED_TABLES = tuple(t for t in REFERENCE_TABLES if t != "alembic_version")
BIGSERIAL_TABLES = {
    "artifacts",
    "experiments",
    "experiment_runs",
    "discovery_labels",
    "snapshots",
    "beta_users",
}

Key = tuple[Any, ...]


@dataclass(frozen=True)
class Copied:
    report: SampleReport
    dsn: str
    summary: SnapshotSummary


@pytest.fixture(scope="module")
def copied(
    tmp_path_factory: pytest.TempPathFactory,
    pg_databases: TestDatabases,
    pg_refapp_template: str,
) -> Iterator[Copied]:
    path = tmp_path_factory.mktemp("refapp") / "app.db"
    report = generate_reference_db(path, artifacts=ARTIFACTS, seed=SEED, bad_values=True)
    assert report.rows["artifacts"] == ARTIFACTS
    assert len(report.bad_cells) > 100
    with pg_databases.database(pg_refapp_template) as dsn:
        config = load_config(
            REFERENCE_CONFIG, env={"DATABASE_PATH": str(path), "DATABASE_URL": dsn}
        )
        assert config.snapshot.create_tables is False
        summary = Snapshotter(config, display=ProgressDisplay(io.StringIO())).run()
        yield Copied(report, dsn, summary)


# --------------------------------------------------------------------------- typed normalisation


class NotRepresentable(ValueError):
    """The source value has no faithful value of the target type."""


Normaliser = Callable[[Any], Any]


def _timestamp(value: Any) -> Any:
    if not isinstance(value, str):
        raise NotRepresentable(f"{value!r} is not ISO text")
    try:
        dt = datetime.fromisoformat(value)  # both app styles, offsets, Z, fractions
    except ValueError as exc:
        raise NotRepresentable(str(exc)) from None
    return dt.astimezone(UTC).replace(tzinfo=None) if dt.tzinfo else dt


def _refuse(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _jsonb(value: Any) -> Any:
    if not isinstance(value, str) or "\\u0000" in value:
        raise NotRepresentable(f"{value!r} is not jsonb text")
    try:
        return json.loads(value, parse_constant=_refuse)
    except ValueError as exc:
        raise NotRepresentable(str(exc)) from None


def _boolean(value: Any) -> Any:
    if type(value) is int and value in (0, 1):
        return bool(value)
    raise NotRepresentable(f"{value!r} is not 0/1")


def _integer(bits: int) -> Normaliser:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def check(value: Any) -> Any:
        if type(value) is int and low <= value <= high:
            return value
        raise NotRepresentable(f"{value!r} is not a {bits}-bit integer")

    return check


def _double(value: Any) -> Any:
    if type(value) in (int, float):
        return float(value)
    raise NotRepresentable(f"{value!r} is not a number")


def _text(limit: int | None) -> Normaliser:
    def check(value: Any) -> Any:
        if not isinstance(value, str) or "\x00" in value:
            raise NotRepresentable(f"{value!r} is not text PostgreSQL holds")
        if limit is not None and len(value) > limit:
            raise NotRepresentable(f"{len(value)} characters for varchar({limit})")
        return value

    return check


def normaliser(pg_type: str) -> Normaliser:
    """What the target column must hold for a source value, decided here from the
    reference app's conventions, independently of the replicator's converters.
    ``None`` is handled by the caller; :class:`NotRepresentable` means no value of
    the target type is faithful to the source value."""
    if pg_type == "timestamp without time zone":
        return _timestamp
    if pg_type == "jsonb":
        return _jsonb
    if pg_type == "boolean":
        return _boolean
    if pg_type in ("integer", "bigint"):
        return _integer(32 if pg_type == "integer" else 64)
    if pg_type == "double precision":
        return _double
    if pg_type == "text":
        return _text(None)
    if limit := re.fullmatch(r"character varying\((\d+)\)", pg_type):
        return _text(int(limit[1]))
    raise AssertionError(f"no rule for {pg_type}")


def same(want: Any, got: Any) -> bool:
    """Equal and of the same type (a bool is not an int; timestamps stay naive)."""
    if type(want) is not type(got):
        return False
    if type(want) is datetime:
        return got.tzinfo is None and want == got
    return bool(want == got)


# --------------------------------------------------------------------------- reading both sides


def target_columns(pg: psycopg.Connection[Any], table: str) -> list[tuple[str, str]]:
    return [
        (str(r[0]), str(r[1]))
        for r in pg.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = to_regclass(format('public.%%I', %s::text))"
            " AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (table,),
        )
    ]


def target_key(pg: psycopg.Connection[Any], table: str) -> list[str]:
    return [
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


@dataclass(frozen=True)
class Letter:
    table: str
    key: Key
    column: str | None
    raw_value: Any
    error: str
    stage: str
    change: dict[str, Any]


def open_letters(pg: psycopg.Connection[Any]) -> list[Letter]:
    return [
        Letter(str(r[0]), tuple(r[1]), r[2], r[3], str(r[4]), str(r[5]), r[6])
        for r in pg.execute(
            "SELECT table_name, key, column_name, raw_value, error, stage, change"
            " FROM replicator.dead_letters WHERE resolved_at IS NULL"
        )
    ]


def source_rows(path: Path, table: str, columns: list[str]) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        quoted = ", ".join(f'"{c}"' for c in columns)
        return conn.execute(f'SELECT {quoted} FROM "{table}"').fetchall()
    finally:
        conn.close()


# --------------------------------------------------------------------------- the proofs


def test_every_source_row_is_in_the_target_with_typed_values_or_dead_lettered(
    copied: Copied,
) -> None:
    with psycopg.connect(copied.dsn) as pg:
        letters = open_letters(pg)
        dead = {(d.table, d.key) for d in letters}
        for table in COPIED_TABLES:
            columns = target_columns(pg, table)
            names = [n for n, _ in columns]
            norms = [normaliser(t) for _, t in columns]
            key = target_key(pg, table)
            key_pos = [names.index(k) for k in key]
            target = {
                tuple(r[i] for i in key_pos): r
                for r in pg.execute(
                    sql.SQL("SELECT {} FROM {}").format(
                        sql.SQL(", ").join(sql.Identifier(n) for n in names),
                        sql.Identifier("public", table),
                    )
                )
            }
            problems: list[str] = []
            rows = source_rows(copied.report.path, table, names)
            assert len(rows) == copied.report.rows[table]
            seen: set[Key] = set()
            for row in rows:
                k = tuple(row[i] for i in key_pos)
                seen.add(k)
                got = target.get(k)
                if got is None:
                    if (table, k) not in dead:
                        problems.append(f"{k}: neither in the target nor dead-lettered")
                    continue
                if (table, k) in dead:
                    problems.append(f"{k}: in the target and dead-lettered")
                for name, norm, value, pg_value in zip(names, norms, row, got, strict=True):
                    try:
                        want = None if value is None else norm(value)
                    except NotRepresentable as exc:
                        problems.append(f"{k} {name}: {value!r} was written ({exc})")
                        continue
                    if not same(want, pg_value):
                        problems.append(f"{k} {name}: {value!r} became {pg_value!r}")
            extra = set(target) - seen
            assert not extra, (
                f"{table}: {len(extra)} target rows the source lacks: {sorted(extra)[:5]}"
            )
            assert not problems, f"{table}:\n" + "\n".join(problems[:20])
        assert {t for t, _ in dead} <= set(COPIED_TABLES)


def expected_raw(value: Any) -> dict[str, str]:
    if isinstance(value, int):
        return {"type": "integer", "value": str(value)}
    assert isinstance(value, str)
    if "\x00" in value:
        return {"type": "text-with-nul", "value": value.encode().hex()}
    return {"type": "text", "value": value}


REASON_WORDS = {
    BadKind.TOO_LONG: "character varying(",
    BadKind.BAD_JSON: "json",
    BadKind.BAD_TIMESTAMP: "timestamp",
    BadKind.BAD_BOOLEAN: "boolean",
    BadKind.NOT_INTEGER: "integer",
    BadKind.INT_OUT_OF_RANGE: "integer",
    BadKind.NUL_CHARACTER: "nul",
}


def test_dead_letters_are_exactly_the_planted_bad_cells(copied: Copied) -> None:
    with psycopg.connect(copied.dsn) as pg:
        letters = open_letters(pg)
    cells: dict[tuple[str, Key], BadCell] = {(c.table, c.key): c for c in copied.report.bad_cells}
    assert len(cells) == len(copied.report.bad_cells)  # one bad cell per bad row

    assert Counter((d.table, d.key, d.column) for d in letters) == Counter(
        (c.table, c.key, c.column) for c in copied.report.bad_cells
    )
    for letter in letters:
        cell = cells[(letter.table, letter.key)]
        assert letter.stage == "snapshot"
        assert letter.raw_value == expected_raw(cell.value), letter
        assert REASON_WORDS[cell.kind] in letter.error.lower(), (cell.kind, letter.error)
        image = letter.change[cell.column]
        assert image == (expected_raw(cell.value) if "\x00" in str(cell.value) else cell.value)


def test_counts_add_up_per_table(copied: Copied) -> None:
    with psycopg.connect(copied.dsn) as pg:
        dead = Counter(d.table for d in open_letters(pg))
        progress = {
            str(r[0]): (r[1], r[2], r[3], r[4], r[5])
            for r in pg.execute(
                "SELECT table_name, rows_read, rows_written, dead_letters, rows_total, done"
                " FROM replicator.snapshot_progress"
            )
        }
        assert set(progress) == set(COPIED_TABLES)
        for table in COPIED_TABLES:
            count = pg.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", table))
            ).fetchone()
            assert count is not None
            rows = copied.report.rows[table]
            assert rows == count[0] + dead[table], table
            assert dead[table] == copied.report.bad_rows(table), table
            assert progress[table] == (rows, count[0], dead[table], rows, True), table
    by_table = {t.table: t for t in copied.summary.tables}
    assert set(by_table) == set(COPIED_TABLES)
    for table in COPIED_TABLES:
        assert by_table[table].rows_read == copied.report.rows[table]
        assert by_table[table].rows_written == copied.report.good_rows(table)
    assert copied.summary.dead_letters == len(copied.report.bad_cells)


def test_the_applications_alembic_version_survives(copied: Copied) -> None:
    src = sqlite3.connect(f"file:{copied.report.path}?mode=ro", uri=True)
    try:
        assert src.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (SQLITE_ALEMBIC_VERSION,)
        ]
    finally:
        src.close()
    with psycopg.connect(copied.dsn) as pg:
        assert pg.execute("SELECT version_num FROM public.alembic_version").fetchall() == [
            (TARGET_ALEMBIC_VERSION,)
        ]
        copied_progress = pg.execute(
            "SELECT count(*) FROM replicator.snapshot_progress WHERE table_name = 'alembic_version'"
        ).fetchone()
        assert copied_progress == (0,)
        # The replicator's own migration history lives in its own schema.
        own = pg.execute("SELECT version_num FROM replicator.alembic_version").fetchall()
        assert own and own[0][0] != TARGET_ALEMBIC_VERSION
    assert "alembic_version" not in {t.table for t in copied.summary.tables}


def test_every_bigserial_sequence_is_past_the_copied_ids(copied: Copied) -> None:
    with psycopg.connect(copied.dsn, autocommit=True) as pg:
        serials = pg.execute(
            """
            SELECT c.relname, a.attname,
                   pg_get_serial_sequence(format('public.%I', c.relname), a.attname)
            FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
            WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
              AND a.attnum > 0 AND NOT a.attisdropped
              AND pg_get_serial_sequence(format('public.%I', c.relname), a.attname) IS NOT NULL
            """
        ).fetchall()
        assert {(t, c) for t, c, _ in serials} == {(t, "id") for t in BIGSERIAL_TABLES}
        for table, column, sequence in serials:
            top = pg.execute(
                sql.SQL("SELECT max({}) FROM {}").format(
                    sql.Identifier(column), sql.Identifier("public", table)
                )
            ).fetchone()
            assert top is not None and top[0] is not None, table
            state = pg.execute(
                sql.SQL("SELECT last_value, is_called FROM {}").format(
                    sql.SQL(sequence)  # already quoted by pg_get_serial_sequence
                )
            ).fetchone()
            assert state is not None
            last_value, is_called = state
            assert is_called and last_value >= top[0], (table, last_value, top[0])
            new = pg.execute("SELECT nextval(%s::regclass)", (sequence,)).fetchone()
            assert new is not None and new[0] > top[0], table
