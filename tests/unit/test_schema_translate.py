"""Reading SQLite's schema text, and translating its expressions and defaults.

The integration test (tests/integration/test_schema_landing.py) shows the
results in PostgreSQL; these pin the edges of the reading and of what is,
and is not, translated.
"""

from __future__ import annotations

import pytest

from replicator.coerce import PgType, converter_for
from replicator.plan.translate import Untranslatable, translate_default, translate_expr
from replicator.source.sqlsyntax import parse_create_index, parse_create_table, render, tokenize


def test_create_table_text_with_comments_quotes_and_nested_parentheses() -> None:
    text = parse_create_table(
        'CREATE TABLE "t" (\n'
        "  id INTEGER PRIMARY KEY, -- a comment with ( and CHECK (x)\n"
        '  "Odd ""Name""" VARCHAR(10) CHECK (length("Odd ""Name""") <= 10),\n'
        "  [b] NUMERIC(10, 2) /* CHECK (b) */ DEFAULT (1) CHECK ((b) > (0)),\n"
        "  g TEXT GENERATED ALWAYS AS (upper([b])) VIRTUAL,\n"
        "  CONSTRAINT named CHECK (b < 100), UNIQUE (b)\n"
        ") WITHOUT ROWID, STRICT"
    )
    assert text.strict
    assert [(c.name, c.column, render(c.expression)) for c in text.checks] == [
        (None, 'Odd "Name"', 'length("Odd ""Name""") <= 10'),
        (None, "b", "(b) > (0)"),
        ("named", None, "b < 100"),
    ]
    assert [(n, render(e)) for n, e in text.generated] == [("g", "upper([b])")]
    assert not parse_create_table("CREATE TABLE t (a)").strict


def test_create_index_text() -> None:
    parsed = parse_create_index(
        "CREATE UNIQUE INDEX i ON t (lower(a) DESC, b COLLATE NOCASE) WHERE a IS NOT NULL"
    )
    assert [render(e) for e in parsed.elements] == ["lower(a) DESC", "b COLLATE NOCASE"]
    assert render(parsed.where) == "a IS NOT NULL"


COLUMNS = {"a": "a", "B": "b_target", "flag": "flag"}


@pytest.mark.parametrize(
    ("sqlite", "postgres"),
    [
        ("a >= 0 AND b < 10", '"a" >= 0 AND "b_target" < 10'),
        ("a == 1 OR a != 2", '"a" = 1 OR "a" <> 2'),
        ("a IS NOT 'x'", "\"a\" IS DISTINCT FROM 'x'"),
        ("a IS NULL", '"a" IS NULL'),
        ("a NOTNULL", '"a" IS NOT NULL'),
        ("flag IS TRUE", '"flag" IS TRUE'),
        ("a IN (1, 2)", '"a" IN (1, 2)'),
        ("ifnull(a, 0x10) BETWEEN 1 AND 20", 'coalesce("a", 16) BETWEEN 1 AND 20'),
        ("trim(a) || 'x'", "btrim(\"a\") || 'x'"),
        ("instr(a, 'b') > 0", "strpos(\"a\", 'b') > 0"),
        ("\"a\" = x'00ff'", "\"a\" = '\\x00ff'::bytea"),
        ("CASE WHEN a > 0 THEN 1 ELSE 0 END", 'CASE WHEN "a" > 0 THEN 1 ELSE 0 END'),
    ],
)
def test_expressions_that_translate(sqlite: str, postgres: str) -> None:
    assert translate_expr(tokenize(sqlite), COLUMNS) == postgres


@pytest.mark.parametrize(
    ("sqlite", "why"),
    [
        ("a / 2", "zero divisor"),
        ("a % 2", "zero divisor"),
        ("a LIKE 'x%'", "LIKE"),
        ("a GLOB 'x*'", "GLOB"),
        ("CAST(a AS INTEGER) > 0", "CAST"),
        ("a COLLATE NOCASE", "collations"),
        ("min(a, 1) > 0", "function min()"),
        ("date(a) > '2020-01-01'", "function date()"),
        ("c > 0", "not a column"),
        ("a & 1", "'&'"),
    ],
)
def test_expressions_that_do_not(sqlite: str, why: str) -> None:
    with pytest.raises(Untranslatable, match=why):
        translate_expr(tokenize(sqlite), COLUMNS)


def default(text: str | None, decl: str, pg_type: str) -> tuple[str, str]:
    pg = PgType.parse(pg_type)
    found = translate_default(text, decl, pg, converter_for(pg))
    rendered = found.sql.as_string(None) if found.sql is not None else ""
    return rendered, found.reason


def test_defaults() -> None:
    # Constants: the value SQLite stores (its affinity applied), cast to the column's type.
    assert default("'0'", "INTEGER", "bigint") == ("CAST(0 AS bigint)", "")
    assert default("(1 + 1)", "INTEGER", "bigint") == ("CAST(2 AS bigint)", "")
    assert default("TRUE", "BOOLEAN", "boolean") == ("CAST(true AS boolean)", "")
    assert default("'it''s'", "TEXT", "text") == ("CAST('it''s' AS text)", "")
    assert default("x'00'", "BLOB", "bytea")[0].startswith("CAST(")
    assert default(None, "TEXT", "text") == ("", "")
    assert default("NULL", "TEXT", "text") == ("", "")
    # The clock: by the column's type.
    assert default("CURRENT_TIMESTAMP", "DATETIME", "timestamptz") == ("CURRENT_TIMESTAMP", "")
    assert default("(datetime('NOW'))", "TEXT", "text")[0].startswith("to_char(")
    assert default("CURRENT_TIME", "TIME", "time")[0].endswith("::time(0)")
    assert default("strftime('%s','now')", "INTEGER", "bigint")[0].startswith("floor(")
    # '%S' is the seconds of the minute, not the epoch: not one of the known forms.
    assert "clock form" in default("strftime('%S','now')", "INTEGER", "bigint")[1]
    assert "clock form" in default("(datetime('now', 'localtime'))", "TEXT", "text")[1]
    assert "cannot fill" in default("CURRENT_TIMESTAMP", "INTEGER", "bigint")[1]
    assert "cannot fill" in default("CURRENT_TIMESTAMP", "VARCHAR(5)", "varchar(5)")[1]
    # Not constants: said, not evaluated.
    assert "random" in default("(random())", "INTEGER", "bigint")[1]
    assert "cannot fill" in default("'abc'", "INTEGER", "bigint")[1]
