"""What a source schema change means (replicator/drift.py), table by table."""

from __future__ import annotations

import sqlite3

import pytest

from replicator.source.sqlite import SourceTable, describe_table
from replicator.stream.drift import Shape, compare, default_value


def table(ddl: str, name: str = "t") -> SourceTable:
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute(ddl)
        return describe_table(conn, name)
    finally:
        conn.close()


BASE = Shape.of(table("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b INTEGER)"))


def test_same_shape_is_no_change() -> None:
    same = table("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b INTEGER)")
    assert not compare(BASE, same, triggers=True).changed
    assert not compare(BASE, same, triggers=None).changed  # a cursor table


def test_shape_round_trips_through_json() -> None:
    assert Shape.from_json(BASE.to_json()) == BASE


def test_added_column_is_followed() -> None:
    drift = compare(
        BASE,
        table("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b INTEGER, c REAL, d)"),
        triggers=True,
    )
    assert drift.added == ("c", "d")
    assert drift.pause is None
    assert drift.resync == 'columns "c", "d" added'


@pytest.mark.parametrize(
    ("ddl", "reason"),
    [
        ("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT)", 'column "b" dropped'),
        ("CREATE TABLE t (id INTEGER PRIMARY KEY)", 'columns "a", "b" dropped'),
        (
            "CREATE TABLE t (id INTEGER PRIMARY KEY, title TEXT, b INTEGER)",
            'column "a" was renamed to "title"',
        ),
        (
            "CREATE TABLE t (id INTEGER PRIMARY KEY, b INTEGER, c TEXT)",
            'column "a" dropped; "c" added',
        ),
        (
            "CREATE TABLE t (id INTEGER, a TEXT, b INTEGER, PRIMARY KEY (id, a))",
            "the primary key changed from (id) to (id, a)",
        ),
        (
            "CREATE TABLE t (id INTEGER, a TEXT, b INTEGER)",
            "the primary key changed from (id) to (rowid)",
        ),
    ],
)
def test_changes_the_target_may_need_a_decision_for_pause(ddl: str, reason: str) -> None:
    drift = compare(BASE, table(ddl), triggers=False)
    assert drift.pause == reason
    assert drift.key_changed == ("primary key" in reason)


def test_a_dropped_table_pauses() -> None:
    drift = compare(BASE, None, triggers=False)
    assert drift.gone and drift.pause == "the table was dropped (or renamed)"


def test_a_rebuilt_table_of_the_same_shape_is_resynced() -> None:
    same = table("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b INTEGER)")
    drift = compare(BASE, same, triggers=False)
    assert drift.pause is None and not drift.added
    assert drift.resync == "its change-capture triggers were gone (the table was rebuilt)"


def test_a_changed_declared_type_is_resynced() -> None:
    retyped = table("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b REAL)")
    drift = compare(BASE, retyped, triggers=True)
    assert drift.resync == 'column "b" changed type from INTEGER to REAL'


@pytest.mark.parametrize(
    ("default", "known", "value"),
    [
        ("1.5", True, 1.5),
        ("-7", True, -7),
        ("'it''s'", True, "it's"),
        ("X'00ff'", True, b"\x00\xff"),
        ("NULL", True, None),
        (None, True, None),
        ("TRUE", True, 1),
        ("CURRENT_TIMESTAMP", False, None),
        ("(1 + 1)", False, None),
        ("1; DROP TABLE t", False, None),
    ],
)
def test_only_constant_defaults_are_evaluated(
    default: str | None, known: bool, value: object
) -> None:
    column = table("CREATE TABLE t (id INTEGER PRIMARY KEY, c)").column("c")
    column = type(column)(column.name, column.decl_type, False, default, 0, 0)
    conn = sqlite3.connect(":memory:")
    try:
        assert default_value(conn, column) == (known, value)
    finally:
        conn.close()
