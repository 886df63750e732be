"""The query file: both formats, placeholders, ORDER BY detection, typed parameters."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from psycopg.types.json import Jsonb

from replicator.errors import ConfigError
from replicator.queries import (
    find_placeholders,
    has_top_level,
    load_query_file,
    parse_sql_file,
    parse_toml_file,
    side_values,
    to_postgres_placeholders,
)

ROOT = Path(__file__).resolve().parents[2]
HERE = Path("queries.toml")


def toml(text: str) -> list:  # type: ignore[type-arg]
    return list(parse_toml_file(text, HERE).queries)


# --------------------------------------------------------------------------- placeholders


def test_placeholders_become_numbered_and_repeat_the_same_number() -> None:
    text, order = to_postgres_placeholders(
        "SELECT * FROM t WHERE a >= :since AND b < :until AND c <> :since"
    )
    assert text == "SELECT * FROM t WHERE a >= $1 AND b < $2 AND c <> $1"
    assert order == ("since", "until")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT x::text, y::timestamp FROM t",
        "SELECT ':not_me' FROM t",
        'SELECT 1 AS ":not_me"',
        "SELECT 1 -- :not_me\n",
        "SELECT 1 /* :not_me /* nested :no */ :still_not */",
        "SELECT $$ :not_me $$, $tag$ it's :not_me $tag$",
        "SELECT E'it\\'s :not_me'",
        "SELECT arr[1:2], arr[lo:hi] FROM t",
        "SELECT '12:30'::time, 'x' LIKE '%a%'",
    ],
)
def test_no_placeholder_outside_code(sql: str) -> None:
    assert find_placeholders(sql, "postgres") == []
    text, order = to_postgres_placeholders(sql)
    assert text == sql and order == ()


def test_percent_signs_need_no_escaping() -> None:
    text, order = to_postgres_placeholders("SELECT 1 WHERE t LIKE '%' || :term || '%'")
    assert text == "SELECT 1 WHERE t LIKE '%' || $1 || '%'"
    assert order == ("term",)


def test_sqlite_quoting_is_understood() -> None:
    assert find_placeholders("SELECT [a:b], `c:d` FROM t WHERE x = :x", "sqlite")[0][2] == "x"
    assert len(find_placeholders("SELECT [a:b], `c:d` FROM t WHERE x = :x", "sqlite")) == 1


# --------------------------------------------------------------------------- ORDER BY


@pytest.mark.parametrize(
    ("sql", "ordered"),
    [
        ("SELECT a FROM t ORDER BY a", True),
        ("select a from t order\n  by a limit 3", True),
        ("SELECT a FROM (SELECT a FROM t ORDER BY a LIMIT 5) s", False),
        ("SELECT a, row_number() OVER (ORDER BY a) FROM t", False),
        ("WITH x AS (SELECT a FROM t ORDER BY a) SELECT a FROM x", False),
        ("SELECT 'ORDER BY' FROM t", False),
        ("SELECT a FROM t -- ORDER BY a", False),
        ("SELECT a FROM t UNION SELECT b FROM u ORDER BY 1", True),
    ],
)
def test_top_level_order_by(sql: str, ordered: bool) -> None:
    assert has_top_level(sql, "sqlite", "order by") is ordered
    assert has_top_level(sql, "postgres", "order by") is ordered


# --------------------------------------------------------------------------- values


def test_timestamp_parameter_is_utc_text_for_sqlite_and_naive_utc_for_postgres() -> None:
    lite, pg = side_values("2025-10-01T02:00:00+02:00", "timestamp", "x")
    assert lite == "2025-10-01 00:00:00"
    assert pg == datetime(2025, 10, 1, 0, 0, 0)
    lite, pg = side_values(datetime(2025, 10, 1, 0, 0, 0, 500000, tzinfo=UTC), "auto", "x")
    assert lite == "2025-10-01 00:00:00.5"
    assert pg == datetime(2025, 10, 1, 0, 0, 0, 500000)
    lite, pg = side_values("2025-10-01 00:00:00", "timestamptz", "x")
    assert pg == datetime(2025, 10, 1, tzinfo=UTC)


def test_other_typed_parameters() -> None:
    assert side_values("2025-10-01", "date", "x") == ("2025-10-01", date(2025, 10, 1))
    assert side_values(True, "boolean", "x") == (1, True)
    assert side_values(0, "boolean", "x") == (0, False)
    assert side_values("2.50", "numeric", "x") == (2.5, Decimal("2.50"))
    assert side_values(3, "numeric", "x") == (3, Decimal("3"))
    lite, pg = side_values({"b": 1, "a": [True]}, "json", "x")
    assert lite == '{"b":1,"a":[true]}'
    assert isinstance(pg, Jsonb) and pg.obj == {"b": 1, "a": [True]}
    lite, pg = side_values('{"a": 1}', "json", "x")
    assert lite == '{"a":1}'


@pytest.mark.parametrize(
    ("value", "ptype"),
    [
        ("next tuesday", "timestamp"),
        ("2025-02-30", "date"),
        (2, "boolean"),
        ("7", "integer"),
        (True, "integer"),
        ("{bad", "json"),
        ("nan", "numeric"),
        (2**63, "integer"),
        (-(2**63) - 1, "auto"),
    ],
)
def test_bad_parameter_values_are_refused_with_a_sentence(value: object, ptype: str) -> None:
    with pytest.raises(ConfigError, match=r"^where"):
        side_values(value, ptype, "where")


# --------------------------------------------------------------------------- TOML


def test_toml_query_with_zipped_and_broadcast_params() -> None:
    (q,) = toml(
        """
[settings]
target_p95_ms = 50
runs = 20

[[query]]
name = "window"
sqlite = "SELECT id FROM t WHERE julianday(at) >= julianday(:since) AND kind = :kind ORDER BY id;"
postgres = "SELECT id FROM t WHERE at >= :since AND kind = :kind ORDER BY id"
params.since = { type = "timestamp", values = ["2025-01-01T00:00:00Z", 2025-06-01T12:00:00Z] }
params.kind = "repo"
"""
    )
    assert q.sqlite_sql.endswith("ORDER BY id")  # the semicolon is gone
    assert q.postgres_sql == "SELECT id FROM t WHERE at >= $1 AND kind = $2 ORDER BY id"
    assert q.ordered and q.postgres_form
    sets = q.param_sets()
    assert len(sets) == 2
    assert sets[0].sqlite == {"since": "2025-01-01 00:00:00", "kind": "repo"}
    assert sets[1].postgres == (datetime(2025, 6, 1, 12), "repo")
    assert sets[1].shown == {"since": "2025-06-01T12:00:00+00:00", "kind": "repo"}


def test_settings_defaults_and_overrides() -> None:
    qf = parse_toml_file('[[query]]\nname = "a"\nsql = "SELECT 1"\n', HERE)
    assert qf.settings.target_p95_ms == 100.0 and qf.settings.runs == 100
    assert qf.settings.with_overrides(runs=7, warmup=None).runs == 7
    with pytest.raises(ConfigError, match="runs"):
        qf.settings.with_overrides(runs=0)


def test_one_text_for_both_sides_and_no_parameters() -> None:
    (q,) = toml('[[query]]\nname = "n"\nsql = "SELECT count(*) FROM t"\n')
    assert not q.postgres_form and q.postgres_sql == q.sqlite_sql
    assert not q.ordered
    (only,) = q.param_sets()
    assert only.sqlite == {} and only.postgres == ()


def test_per_side_values() -> None:
    (q,) = toml(
        """
[[query]]
name = "flags"
sqlite = "SELECT id FROM u WHERE flag = :f"
postgres = "SELECT id FROM u WHERE flag = :f"
params.f = { sqlite = ["Y"], postgres = [true] }
"""
    )
    (ps,) = q.param_sets()
    assert ps.sqlite == {"f": "Y"} and ps.postgres == (True,)


def test_limit_without_order_by_is_noted() -> None:
    (q,) = toml('[[query]]\nname = "n"\nsql = "SELECT id FROM t LIMIT 5"\n')
    assert any("LIMIT without ORDER BY" in n for n in q.notes)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('name = "a"\nsqlite = "SELECT 1"\nparms = {}', "did you mean 'params'"),
        ('name = "a"\nsqlite = "SELECT :x"', r"uses :x but params gives no value"),
        ('name = "a"\nsqlite = "SELECT 1"\nparams.x = 1', "used by neither form"),
        (
            'name = "a"\nsqlite = "SELECT :x, :y"\nparams.x = [1, 2]\nparams.y = [1, 2, 3]',
            "same length",
        ),
        ('name = "a"\nsql = "SELECT 1"\nsqlite = "SELECT 1"', "use it alone"),
        ('name = "a"\nsql = "SELECT 1"\norder_key = ["a"]', "needs an ordered query"),
        ('name = "a"\nsql = "SELECT :x"\nparams.x = { type = "timestmp", value = 1 }', "timestamp"),
        ('name = "a b"\nsql = "SELECT 1"', "needs a 'name'"),
        ('sql = "SELECT 1"', "needs a 'name'"),
        ('name = "a"', "needs its SQLite form"),
        ('name = "a"\nsql = "SELECT :x"\nparams.x = []', "at least one example value"),
    ],
)
def test_toml_mistakes_are_explained(body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        toml(f"[[query]]\n{body}\n")


def test_duplicate_names_and_empty_files_are_refused() -> None:
    with pytest.raises(ConfigError, match="two queries are named 'a'"):
        toml('[[query]]\nname = "a"\nsql = "SELECT 1"\n[[query]]\nname = "a"\nsql = "SELECT 2"\n')
    with pytest.raises(ConfigError, match="holds no queries"):
        toml("[settings]\nruns = 5\n")
    with pytest.raises(ConfigError, match="did you mean 'runs'"):
        toml("[settings]\nrun = 5\n")


# --------------------------------------------------------------------------- SQL


SQL_FILE = """\
-- Queries of the app.
-- target_p95_ms: 50
-- warmup: 2

-- name: window
-- description: artifacts in a window
-- param: since timestamp = ["2025-01-01T00:00:00Z", 2025-06-01T12:00:00Z]
-- param: kind = "repo"
-- order_key: id
SELECT id FROM t WHERE julianday(at) >= julianday(:since) AND kind = :kind ORDER BY id;
-- postgres:
SELECT id FROM t WHERE at >= :since AND kind = :kind ORDER BY id;

-- name: plain
-- note: an ordinary comment stays in the SQL
SELECT count(*) FROM t
"""


def test_sql_file_says_what_the_toml_file_says() -> None:
    qf = parse_sql_file(SQL_FILE, Path("q.sql"))
    assert qf.settings.target_p95_ms == 50 and qf.settings.warmup == 2
    window, plain = qf.queries
    assert window.description == "artifacts in a window"
    assert window.order_key == ("id",)
    assert window.sqlite_sql.startswith("SELECT id FROM t WHERE julianday(at)")
    assert window.postgres_sql == "SELECT id FROM t WHERE at >= $1 AND kind = $2 ORDER BY id"
    sets = window.param_sets()
    assert [s.postgres for s in sets] == [
        (datetime(2025, 1, 1), "repo"),
        (datetime(2025, 6, 1, 12), "repo"),
    ]
    assert not plain.postgres_form
    assert "-- note: an ordinary comment" in plain.sqlite_sql


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SELECT 1\n-- name: a\nSELECT 1\n", "SQL before the first '-- name:' line"),
        ("-- name: a\n-- parm: x = 1\nSELECT :x\n", "did you mean 'param'"),
        ("-- name: a\n-- param: x == 1\nSELECT :x\n", "not a TOML value"),
        # Without its colon the line is an ordinary comment: the value is missing.
        ("-- name: a\n-- param x = 1\nSELECT :x\n", "uses :x but params gives no value"),
        ("-- runs: many\n-- name: a\nSELECT 1\n", "not a TOML value"),
        ("-- name: a\nSELECT 1\n-- postgres: SELECT 1\n", "stands alone"),
        # An empty PostgreSQL form is not "the SQLite text on both sides".
        ("-- name: a\nSELECT 1\n-- postgres:\n-- name: b\nSELECT 2\n", "the PostgreSQL form"),
    ],
)
def test_sql_file_mistakes_are_explained(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_sql_file(text, Path("q.sql"))


# --------------------------------------------------------------------------- files


def test_load_by_extension(tmp_path: Path) -> None:
    (tmp_path / "q.sql").write_text(SQL_FILE)
    assert len(load_query_file(tmp_path / "q.sql").queries) == 2
    (tmp_path / "q.txt").write_text(SQL_FILE)
    with pytest.raises(ConfigError, match=r"expected a \.toml or \.sql file"):
        load_query_file(tmp_path / "q.txt")
    with pytest.raises(ConfigError, match="does not exist"):
        load_query_file(tmp_path / "missing.toml")


def test_select_by_name() -> None:
    qf = parse_sql_file(SQL_FILE, Path("q.sql"))
    assert [q.name for q in qf.select(["plain"])] == ["plain"]
    with pytest.raises(ConfigError, match="did you mean 'plain'"):
        qf.select(["plian"])


def test_the_reference_app_file_loads() -> None:
    qf = load_query_file(ROOT / "config" / "reference-app-queries.toml")
    names = [q.name for q in qf.queries]
    assert {
        "top_artifacts_by_discovery_score",
        "artifacts_by_source_json_filter",
        "experiment_runs_for_experiment",
        "labels_per_annotator",
    } <= set(names)
    for q in qf.queries:
        assert q.param_sets(), q.name
        assert not q.notes, (q.name, q.notes)
    top = next(q for q in qf.queries if q.name == "top_artifacts_by_discovery_score")
    assert top.ordered and len(top.param_sets()) == 3
