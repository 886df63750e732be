"""The pure parts of the query verdicts: types seen, ORDER BY reading, file keys."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest

from replicator.errors import ConfigError
from replicator.queries.drift import find_type_drift, merge_drift
from replicator.queries.spec import parse_sql_file, parse_toml_file
from replicator.queries.verdicts import implied_order_key, parse_accept, suggest_order_by


def test_type_drift_compares_python_types_per_column() -> None:
    names = ["id", "code", "at", "score", "flag", "empty"]
    lite = [(1, "694", "2025-01-01 00:00:00", 0.5, 1, None), (2, "7", None, 1.0, 0, None)]
    pg = [(1, 694, datetime(2025, 1, 1), Decimal("0.5"), True, None), (2, 7, None, 1, False, 3)]
    found = {d.column: (d.sqlite_type, d.postgres_type) for d in find_type_drift(names, lite, pg)}
    assert found == {
        "code": ("str", "int"),
        "at": ("str", "datetime"),
        "score": ("float", "Decimal, int"),
        "flag": ("int", "bool"),
    }  # "empty" is NULL throughout on SQLite: nothing to judge
    assert find_type_drift(["id"], [(1,)], [(1,)]) == []


def test_drift_merges_over_parameter_sets_and_is_accepted_per_column() -> None:
    one = find_type_drift(["a", "b"], [("1", 1)], [(1, True)])
    two = find_type_drift(["a", "b"], [(2.5, 1)], [(1, True)])
    merged = merge_drift([one, two], {"type_drift:a"})
    assert [(d.column, d.sqlite_type, d.accepted) for d in merged] == [
        ("a", "float, str", True),
        ("b", "int", False),
    ]
    assert all(d.accepted for d in merge_drift([one], {"type_drift"}))


@pytest.mark.parametrize(
    ("sql", "names", "expected"),
    [
        ("SELECT id, grp FROM t ORDER BY grp", ["id", "grp"], [1]),
        ("SELECT a.id, s.x FROM a JOIN s ORDER BY s.x DESC NULLS LAST, a.id", ["id", "x"], [1, 0]),
        ('SELECT "Name" FROM t ORDER BY "Name" COLLATE NOCASE', ["Name"], [0]),
        ("SELECT id, x FROM t ORDER BY 2, 1 LIMIT 5", ["id", "x"], [1, 0]),
        ("SELECT id FROM t ORDER BY lower(name)", ["id"], None),  # an expression
        ("SELECT id FROM t", ["id"], None),
        ("SELECT id FROM (SELECT id FROM t ORDER BY id)", ["id"], None),  # not the outer one
        ("SELECT id FROM t ORDER BY missing", ["id"], None),
    ],
)
def test_implied_order_key(sql: str, names: list[str], expected: list[int] | None) -> None:
    assert implied_order_key(sql, names) == expected


def test_suggested_order_by_prefers_a_unique_key_column() -> None:
    rows = [(1, "a", 10), (2, "a", 10), (3, "b", 20)]
    assert suggest_order_by(["id", "g", "n"], rows) == "ORDER BY id"
    assert suggest_order_by(["g", "n", "id"], [(r[1], r[2], r[0]) for r in rows]) == ("ORDER BY id")
    assert suggest_order_by(["g", "id"], [(r[1], r[0]) for r in rows], first=[0]) == (
        "ORDER BY g, id"
    )
    # The query's ORDER BY is kept as written, so a suggestion never reverses it.
    desc = "SELECT g, id FROM t ORDER BY g  DESC NULLS LAST LIMIT 5"
    assert suggest_order_by(["g", "id"], [(r[1], r[0]) for r in rows], first=[0], query=desc) == (
        "ORDER BY g DESC NULLS LAST, id"
    )
    commented = "SELECT g, id FROM t\nORDER BY g -- newest first\n  DESC /* most */\nLIMIT 5"
    assert suggest_order_by(["g", "id"], [(1, 1), (1, 2)], first=[0], query=commented) == (
        "ORDER BY g DESC, id"
    )
    hidden = "SELECT id FROM t ORDER BY lower(title) DESC"
    assert suggest_order_by(["id"], [(1,), (2,)], query=hidden) == (
        "ORDER BY lower(title) DESC, id"
    )
    # Nothing unique: every column, by position where a name is not plain.
    dup = [(1, "a"), (1, "a")]
    assert suggest_order_by(["n", "count(*)"], dup) == "ORDER BY n, 2"


def test_accept_and_session_keys() -> None:
    assert parse_accept(["type_drift:Code", "order"], "q") == {"type_drift:code", "order"}
    with pytest.raises(ConfigError, match="did you mean 'vacuous'"):
        parse_accept(["vacous"], "q")
    with pytest.raises(ConfigError, match="only type_drift takes a column"):
        parse_accept(["order:id"], "q")
    qf = parse_toml_file(
        '[session]\nTimeZone = "Europe/Paris"\nstandard_conforming_strings = true\n'
        '[[query]]\nname = "q"\nsql = "SELECT 1"\nfloat_tolerance = 0.01\n'
        'accept = ["vacuous"]\n',
        Path("q.toml"),
    )
    assert qf.session == (("TimeZone", "Europe/Paris"), ("standard_conforming_strings", "on"))
    (q,) = qf.queries
    assert q.float_tolerance == 0.01 and q.accept == {"vacuous"}
    sql = parse_sql_file(
        "-- session: TimeZone = 'Asia/Tokyo'\n-- name: q\n-- accept: type_drift, order\n"
        "-- float_tolerance: 1e-3\nSELECT 1\n",
        Path("q.sql"),
    )
    assert sql.session == (("TimeZone", "Asia/Tokyo"),)
    assert sql.queries[0].accept == {"type_drift", "order"}
    assert sql.queries[0].float_tolerance == 1e-3
    with pytest.raises(ConfigError, match="not a PostgreSQL setting name"):
        parse_toml_file(
            '[session]\n"Time Zone" = "UTC"\n[[query]]\nname="q"\nsql="SELECT 1"\n', Path("q.toml")
        )


def test_a_session_line_inside_a_query_is_an_error() -> None:
    with pytest.raises(ConfigError, match="go before the first"):
        parse_sql_file("-- name: q\n-- session: TimeZone = 'UTC'\nSELECT 1\n", Path("q.sql"))
