"""`replicator queries check` verdicts beyond equal values, on real SQLite and PostgreSQL.

Each test here is a false pass or false alarm of the value comparison alone:
the Python types the application receives (type drift), an order nothing in
the query fixes, empty answers, the session's TimeZone, dead-lettered rows
behind a difference, and floats that differ in the last bit.
"""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from pgutil import TestDatabases

from replicator.cli import main
from replicator.config import Config, load_config
from replicator.errors import ConfigError
from replicator.queries import QueryReport, QueryResult, check_queries
from replicator.snapshot import ProgressDisplay, Snapshotter

ITEMS = """
CREATE TABLE items (
    id INTEGER PRIMARY KEY, code TEXT, tags TEXT, flag TEXT, x REAL, grp INTEGER, doc TEXT
);
INSERT INTO items VALUES (1, '694', '["a","b"]', 'f', 0.1, 1, '{"n": 1e2}');
INSERT INTO items VALUES (2, '12', '[]', 'false', 0.2, 1, '{"n": 5}');
INSERT INTO items VALUES (3, '7', '["c"]', 't', 0.3, 2, '{"n": 2.5}');
INSERT INTO items VALUES (4, '50', '["d"]', 'true', 0.4, 2, '{"n": 0}');
"""


@dataclass(frozen=True)
class Sides:
    config: Config
    dsn: str
    folder: Path


def snapshot(source: Path, dsn: str) -> tuple[Config, int]:
    env = {"DATABASE_PATH": str(source), "DATABASE_URL": dsn}
    config = load_config(None, env=env, overrides={"metrics.address": ""})
    summary = Snapshotter(config, display=ProgressDisplay(io.StringIO())).run()
    return config, summary.dead_letters


@pytest.fixture(scope="module")
def sides(
    tmp_path_factory: pytest.TempPathFactory, pg_databases: TestDatabases, pg_empty_template: str
) -> Iterator[Sides]:
    folder = tmp_path_factory.mktemp("verdicts")
    path = folder / "app.db"
    with sqlite3.connect(path) as lite:
        lite.executescript(ITEMS)
    lite.close()
    with pg_databases.database(pg_empty_template) as dsn:
        config, letters = snapshot(path, dsn)
        assert letters == 0
        yield Sides(config, dsn, folder)


def check(s: Sides, text: str, name: str = "queries.toml", **kwargs: object) -> QueryReport:
    path = s.folder / name
    path.write_text(text, encoding="utf-8")
    kwargs.setdefault("measure", False)
    return check_queries(s.config, path, **kwargs)  # type: ignore[arg-type]


def only(report: QueryReport, name: str) -> QueryResult:
    (result,) = [q for q in report.queries if q.name == name]
    return result


# --------------------------------------------------------------------------- 1. type drift


TYPE_DRIFT = """
[[query]]
name = "code_as_integer"
sqlite = "SELECT id, code FROM items ORDER BY id"
postgres = "SELECT id, code::integer AS code FROM items ORDER BY id"

[[query]]
name = "tags_as_jsonb"
sqlite = "SELECT id, tags FROM items ORDER BY id"
postgres = "SELECT id, tags::jsonb AS tags FROM items ORDER BY id"

[[query]]
name = "flag_as_boolean"
sqlite = "SELECT id, flag FROM items ORDER BY id"
postgres = "SELECT id, flag::boolean AS flag FROM items ORDER BY id"

[[query]]
name = "id_cast_to_text"
sqlite = "SELECT CAST(id AS TEXT) AS id FROM items ORDER BY id"
postgres = "SELECT id FROM items ORDER BY id"

[[query]]
name = "float_as_numeric"
sqlite = "SELECT id, x FROM items ORDER BY id"
postgres = "SELECT id, x::numeric AS x FROM items ORDER BY id"

[[query]]
name = "code_as_char"
sqlite = "SELECT id, code FROM items ORDER BY id"
postgres = "SELECT id, CAST(code AS char(4)) AS code FROM items ORDER BY id"

[[query]]
name = "code_as_char_of_its_width"
sqlite = "SELECT id, code FROM items WHERE length(code) = 2 ORDER BY id"
postgres = "SELECT id, CAST(code AS char(2)) AS code FROM items WHERE length(code) = 2 ORDER BY id"

[[query]]
name = "code_off_by_one"
sqlite = "SELECT id, code FROM items ORDER BY id"
postgres = "SELECT id, code::integer + 1 AS code FROM items ORDER BY id"

[[query]]
name = "accepted_all"
sqlite = "SELECT id, code, flag FROM items ORDER BY id"
postgres = "SELECT id, code::integer AS code, flag::boolean AS flag FROM items ORDER BY id"
accept = ["type_drift"]

[[query]]
name = "accepted_one_column"
sqlite = "SELECT id, code, flag FROM items ORDER BY id"
postgres = "SELECT id, code::integer AS code, flag::boolean AS flag FROM items ORDER BY id"
accept = ["type_drift:code"]
"""


def test_type_drift_is_what_the_application_receives(sides: Sides) -> None:
    report = check(sides, TYPE_DRIFT)
    found = {
        q.name: [
            (d.column, d.sqlite_type, d.postgres_type, d.sqlite_example, d.postgres_example)
            for d in q.type_drift
        ]
        for q in report.queries
    }
    assert found["code_as_integer"] == [("code", "str", "int", "'694'", "694")]
    assert found["tags_as_jsonb"] == [("tags", "str", "list", """'["a","b"]'""", "['a', 'b']")]
    assert found["flag_as_boolean"] == [("flag", "str", "bool", "'f'", "False")]
    assert found["id_cast_to_text"] == [("id", "str", "int", "'1'", "1")]
    assert found["float_as_numeric"] == [("x", "float", "Decimal", "0.1", "Decimal('0.1')")]
    # char(n): equal for PostgreSQL, but psycopg returns '694 ' where sqlite3 returned '694'.
    assert found["code_as_char"] == [("code", "str", "str (blank-padded)", "'694'", "'694 '")]
    assert found["code_as_char_of_its_width"] == []  # nothing padded: nothing to see
    assert only(report, "code_as_char_of_its_width").verdict == "same"
    for name in (
        "code_as_integer",
        "tags_as_jsonb",
        "flag_as_boolean",
        "id_cast_to_text",
        "code_as_char",
    ):
        result = only(report, name)
        assert result.equal and result.verdict == "type_drift", name
    assert only(report, "float_as_numeric").verdict == "type_drift"
    # A value difference is still a difference (the drift is listed too).
    assert only(report, "code_off_by_one").verdict == "different"
    # Accepted drift is shown and does not fail; accepting one column is not
    # accepting the others.
    assert only(report, "accepted_all").verdict == "same"
    assert all(d.accepted for d in only(report, "accepted_all").type_drift)
    partly = only(report, "accepted_one_column")
    assert partly.verdict == "type_drift"
    assert {d.column: d.accepted for d in partly.type_drift} == {"code": True, "flag": False}
    text = report.render()
    assert "code_as_integer: type drift in column code: SQLite returns str ('694')" in text
    assert "accepted_all: type drift (accepted) in column flag" in text
    assert "TYPE DRIFT" in text and "verdict: FAIL" in text
    data = json.loads(json.dumps(report.to_json(), default=str))
    (q,) = [q for q in data["queries"] if q["name"] == "flag_as_boolean"]
    assert q["verdict"] == "type_drift"
    assert q["type_drift"] == [
        {
            "column": "flag",
            "sqlite_type": "str",
            "postgres_type": "bool",
            "sqlite_example": "'f'",
            "postgres_example": "False",
            "accepted": False,
        }
    ]


def test_accept_in_a_sql_query_file(sides: Sides) -> None:
    text = (
        "-- name: code\n"
        "-- accept: type_drift:code\n"
        "SELECT id, code FROM items ORDER BY id\n"
        "-- postgres:\n"
        "SELECT id, code::integer AS code FROM items ORDER BY id\n"
    )
    report = check(sides, text, "queries.sql")
    assert only(report, "code").verdict == "same"
    assert only(report, "code").type_drift[0].accepted


# --------------------------------------------------------------------------- 2. order


ORDER = """
[[query]]
name = "no_order_by"
sqlite = "SELECT id, code FROM items"
postgres = "SELECT id, code FROM items ORDER BY id DESC"  # stands for a plan's order

[[query]]
name = "ties_on_the_order_by"
sqlite = "SELECT id, grp FROM items ORDER BY grp"
postgres = "SELECT id, grp FROM items ORDER BY grp, id DESC"

[[query]]
name = "ties_descending"
sqlite = "SELECT id, grp FROM items ORDER BY grp DESC"
postgres = "SELECT id, grp FROM items ORDER BY grp DESC, id DESC"

[[query]]
name = "ties_on_a_hidden_expression"
sqlite = "SELECT id FROM items ORDER BY grp * 10 DESC"
postgres = "SELECT id FROM items ORDER BY grp * 10 DESC, id DESC"

[[query]]
name = "ties_cut_by_the_limit"
sqlite = "SELECT id, grp FROM items ORDER BY grp LIMIT 3"
postgres = "SELECT id, grp FROM items ORDER BY grp, id DESC LIMIT 3"

[[query]]
name = "same_order_by_chance"
sql = "SELECT id, code FROM items"

[[query]]
name = "order_accepted"
sqlite = "SELECT id FROM items"
postgres = "SELECT id FROM items ORDER BY id DESC"
accept = ["order"]

[[query]]
name = "a_real_order_difference"
sqlite = "SELECT id, grp FROM items ORDER BY grp, id"
postgres = "SELECT id, grp FROM items ORDER BY grp DESC, id"
"""


def test_an_order_nothing_fixes_is_flagged_with_the_order_by_that_would(sides: Sides) -> None:
    report = check(sides, ORDER)
    loose = only(report, "no_order_by")
    assert loose.equal and loose.verdict == "order_not_guaranteed"
    assert loose.cases[0].order_hint == "ORDER BY id"
    ties = only(report, "ties_on_the_order_by")
    assert ties.equal and ties.verdict == "order_not_guaranteed"
    assert ties.cases[0].order_hint == "ORDER BY grp, id"
    # The suggestion keeps the query's own ORDER BY as written (DESC and all):
    # "ORDER BY grp, id" would reverse the page.
    desc = only(report, "ties_descending")
    assert desc.verdict == "order_not_guaranteed"
    assert desc.cases[0].order_hint == "ORDER BY grp DESC, id"
    # Ties on a sort key the result does not show cannot be told from a real
    # order difference: "different", saying so, with the tie-breaker to try.
    hidden = only(report, "ties_on_a_hidden_expression")
    assert hidden.verdict == "different"
    diff = hidden.cases[0].difference
    assert diff is not None and "cannot be told from a real difference" in diff.summary
    assert "ORDER BY grp * 10 DESC, id would make the order deterministic" in diff.summary
    # Which of the rows tied at the LIMIT make the page is up to each engine.
    cut = only(report, "ties_cut_by_the_limit")
    assert cut.verdict == "order_not_guaranteed"
    assert cut.cases[0].order_detail is not None and "LIMIT" in cut.cases[0].order_detail
    chance = only(report, "same_order_by_chance")
    assert chance.verdict == "same" and not chance.order_differs and not chance.ordered
    assert only(report, "order_accepted").verdict == "same"
    # Both engines sort, but differently: that is a difference, not a tie.
    assert only(report, "a_real_order_difference").verdict == "different"
    text = report.render()
    assert "ORDER NOT GUARANTEED" in text
    assert "ORDER BY grp, id would make it deterministic" in text
    assert "guaranteed" not in "\n".join(
        line for line in text.splitlines() if "same_order_by_chance" in line
    )
    data = report.to_json()
    (q,) = [q for q in data["queries"] if q["name"] == "no_order_by"]
    assert q["verdict"] == "order_not_guaranteed" and q["order_not_guaranteed"] is True


# --------------------------------------------------------------------------- 3. vacuous


def test_no_rows_on_either_side_is_vacuous(sides: Sides) -> None:
    report = check(
        sides,
        """
[[query]]
name = "nothing"
sql = "SELECT id FROM items WHERE id > :above ORDER BY id"
params.above = [100, 1000]

[[query]]
name = "one_set_empty"
sql = "SELECT id FROM items WHERE id > :above ORDER BY id"
params.above = [2, 1000]

[[query]]
name = "expected_empty"
sql = "SELECT id FROM items WHERE code IS NULL"
accept = ["vacuous"]

[[query]]
name = "max_of_nothing"
sql = "SELECT max(code) AS top, avg(x) AS mean FROM items WHERE id > :above"
params.above = [100, 1000]

[[query]]
name = "max_of_something"
sql = "SELECT max(code) AS top, avg(x) AS mean FROM items WHERE id > :above"
params.above = [2, 1000]
""",
    )
    # An aggregate over no rows gives one row of NULLs: as vacuous as no rows.
    assert only(report, "max_of_nothing").verdict == "vacuous"
    assert only(report, "max_of_something").verdict == "same"
    nothing = only(report, "nothing")
    assert nothing.equal and nothing.verdict == "vacuous"
    some = only(report, "one_set_empty")
    assert some.verdict == "same" and [c.vacuous for c in some.cases] == [False, True]
    assert only(report, "expected_empty").verdict == "same"
    text = report.render()
    assert "nothing: vacuous: no rows on either side" in text
    assert "one_set_empty [above=1000]: no rows on either side" in text
    assert "max_of_nothing: vacuous: no rows or only NULLs on either side" in text
    assert "max_of_something [above=1000]: no rows or only NULLs on either side" in text
    assert not report.ok


# --------------------------------------------------------------------------- 4. session


TZ_QUERIES = """
[[query]]
name = "timestamptz_text"
sqlite = "SELECT '2025-01-01 00:00:00+00' AS t"
postgres = "SELECT CAST(TIMESTAMPTZ '2025-01-01 00:00:00+00' AS text) AS t"

[[query]]
name = "now_as_timestamp_hour"
sqlite = "SELECT strftime('%Y-%m-%d %H', 'now') AS hour"
postgres = "SELECT to_char(CAST(now() AS timestamp), 'YYYY-MM-DD HH24') AS hour"
"""


def test_the_session_time_zone_is_the_applications(
    tmp_path: Path, pg_databases: TestDatabases, pg_empty_template: str
) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as lite:
        lite.executescript(ITEMS)
    lite.close()
    with pg_databases.database(pg_empty_template) as dsn:
        config, _ = snapshot(path, dsn)
        s = Sides(config, dsn, tmp_path)
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT current_setting('TimeZone')").fetchone()
        assert row is not None
        default_zone = row[0]
        # Under UTC both forms agree ...
        utc = check(s, '[session]\nTimeZone = "UTC"\n' + TZ_QUERIES)
        assert utc.session == {"TimeZone": "UTC"}
        assert only(utc, "timestamptz_text").verdict == "same", utc.render()
        # ... under the application's New York session they do not.
        ny = check(s, '[session]\nTimeZone = "America/New_York"\n' + TZ_QUERIES)
        assert ny.session == {"TimeZone": "America/New_York"}
        diff = only(ny, "timestamptz_text").cases[0].difference
        assert diff is not None
        assert diff.postgres_rows == [["2024-12-31 19:00:00-05"]]
        assert only(ny, "now_as_timestamp_hour").verdict == "different"
        assert "PostgreSQL session: TimeZone=America/New_York" in ny.render()
        # Without [session]: what an application connecting gets (here the
        # server's default, then the database's own setting).
        plain = check(s, TZ_QUERIES)
        assert plain.session == {"TimeZone": default_zone}
        with psycopg.connect(dsn, autocommit=True) as conn:
            dbname = conn.info.dbname
            conn.execute(f"ALTER DATABASE \"{dbname}\" SET TimeZone = 'Asia/Tokyo'")
        tokyo = check(s, TZ_QUERIES)
        assert tokyo.session == {"TimeZone": "Asia/Tokyo"}
        assert only(tokyo, "timestamptz_text").verdict == "different"
        # Other settings are set and shown too; the check stays read-only.
        sql_file = "-- session: DateStyle = 'SQL, DMY'\n-- name: one\nSELECT 1 AS one\n"
        styled = check(s, sql_file, "q.sql")
        assert styled.session["DateStyle"] == "SQL, DMY"
        with pytest.raises(ConfigError, match="cannot be set"):
            check(s, "[session]\ndefault_transaction_read_only = false\n" + TZ_QUERIES)
        with pytest.raises(ConfigError, match="cannot set no_such_setting"):
            check(s, "[session]\nno_such_setting = 1\n" + TZ_QUERIES)


def test_the_files_session_is_in_force_in_the_check_and_in_the_load_clients(
    tmp_path: Path, pg_databases: TestDatabases, pg_empty_template: str
) -> None:
    """A [session] search_path is the one in force (the report shows it), and
    every setting reaches the concurrent load clients: the PostgreSQL form
    divides by zero unless the session is the file's."""
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as lite:
        lite.executescript(ITEMS)
    lite.close()
    session = '[session]\nTimeZone = "Asia/Tokyo"\nsearch_path = "other, public"\n'
    guarded = """
[[query]]
name = "guarded"
sqlite = "SELECT count(*) AS n FROM items"
postgres = '''SELECT count(*) / (CASE WHEN current_setting('TimeZone') = 'Asia/Tokyo'
              AND current_schema() = 'other' THEN 1 ELSE 0 END) AS n FROM items'''
"""
    with pg_databases.database(pg_empty_template) as dsn:
        config, _ = snapshot(path, dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA other")
        s = Sides(config, dsn, tmp_path)
        report = check(
            s,
            session + guarded,
            measure=True,
            runs=4,
            warmup=1,
            rounds=1,
            clients=2,
            load_runs=2,
            target_p95_ms=60_000,
        )
        # The time limit is one for both sides ([settings] statement_timeout_ms),
        # and a [session] one would also cut the check's own bookkeeping short.
        with pytest.raises(ConfigError, match="statement_timeout_ms"):
            check(s, '[session]\nstatement_timeout = "1ms"\n' + guarded)
        timeout = check(
            s,
            "[settings]\nstatement_timeout_ms = 100\n"
            '[[query]]\nname = "sleepy"\nsqlite = "SELECT 1 AS one"\n'
            'postgres = "SELECT 1 AS one FROM pg_sleep(1)"\n',
        )
    assert report.session["search_path"] == "other, public"
    q = only(report, "guarded")
    assert q.verdict == "same", report.render()
    assert q.load is not None and q.load.postgres is not None
    assert q.load.postgres.n == 4 and q.load.postgres.errors == 0, report.render()
    assert "statement_timeout" not in timeout.session
    (case,) = only(timeout, "sleepy").cases
    assert case.error is not None and "statement timeout" in case.error, timeout.render()


def test_a_date_style_psycopg_cannot_read_is_an_error_not_a_crash(
    tmp_path: Path, pg_databases: TestDatabases, pg_empty_template: str
) -> None:
    """psycopg parses timestamptz and intervals in the ISO styles only: under an
    application's DateStyle = 'SQL, DMY' the result cannot be read, which is
    that query's error; the dead letters (timestamps too) are still read."""
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as lite:
        lite.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, at TIMESTAMPTZ, name TEXT)")
        lite.executemany(
            "INSERT INTO events VALUES (?, ?, ?)",
            [(1, "2025-01-01 10:00:00", "a"), (2, "next tuesday", "b")],
        )
    lite.close()
    queries = """
[session]
DateStyle = "SQL, DMY"
IntervalStyle = "sql_standard"

[[query]]
name = "at"
sql = "SELECT id, at FROM events ORDER BY id"

[[query]]
name = "age"
sqlite = "SELECT '1 day' AS age"
postgres = "SELECT interval '1 day' AS age"

[[query]]
name = "names"
sql = "SELECT id, name FROM events ORDER BY id"
"""
    with pg_databases.database(pg_empty_template) as dsn:
        config, letters = snapshot(path, dsn)
        assert letters == 1
        s = Sides(config, dsn, tmp_path)
        report = check(s, queries)
        args = ["--source", str(path), "--target", dsn, "queries", "check"]
        cli = CliRunner().invoke(main, [*args, str(tmp_path / "queries.toml"), "--no-latency"])
    at, age = only(report, "at"), only(report, "age")
    assert at.verdict == "error" and age.verdict == "error", report.render()
    assert at.cases[0].error is not None and "can't parse timestamptz" in at.cases[0].error
    assert age.cases[0].error is not None and "can't parse interval" in age.cases[0].error
    diff = only(report, "names").cases[0].difference
    assert diff is not None and diff.sqlite_notes[0] is not None
    assert diff.sqlite_notes[0].startswith("dead-lettered: events key [2]")
    assert cli.exit_code == 1, cli.output
    assert "psycopg cannot read the result" in cli.output


# --------------------------------------------------------------------------- 5. dead letters


def test_a_dead_lettered_row_explains_its_difference(
    tmp_path: Path, pg_databases: TestDatabases, pg_empty_template: str
) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as lite:
        lite.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, at TIMESTAMP, name TEXT)")
        lite.executemany(
            "INSERT INTO events VALUES (?, ?, ?)",
            [(1, "2025-01-01 10:00:00", "a"), (2, "next tuesday", "b"), (3, None, "c")],
        )
    lite.close()
    with pg_databases.database(pg_empty_template) as dsn:
        config, letters = snapshot(path, dsn)
        assert letters == 1
        report = check(
            Sides(config, dsn, tmp_path),
            '[[query]]\nname = "names"\nsql = "SELECT id, name FROM events ORDER BY id"\n'
            '[[query]]\nname = "count"\nsql = "SELECT count(*) AS n FROM events"\n',
        )
    # An aggregate shows no row to match: the table's open dead letters are named.
    counted = only(report, "count").cases[0].difference
    assert counted is not None and "open dead letters of the tables it reads (1 in events)" in (
        counted.summary
    )
    diff = only(report, "names").cases[0].difference
    assert diff is not None and "open dead letters" not in diff.summary  # its row says it
    assert diff is not None and diff.sqlite_rows[0] == [2, "b"]
    note, other = diff.sqlite_notes  # the rows from the first difference on
    assert other is None  # [3, "c"]: shown because it moved up, not dead-lettered
    assert note is not None and note.startswith("dead-lettered: events key [2] column at: ")
    text = report.render()
    assert '[2,"b"]  <- dead-lettered: events key [2] column at' in text.replace(", ", ",")


# --------------------------------------------------------------------------- 6. false alarms


def test_floats_json_numbers_and_tolerance_per_query(sides: Sides) -> None:
    report = check(
        sides,
        """
[[query]]
name = "sum_in_another_order"
sqlite = "SELECT v, t FROM (SELECT 0.1 + 0.2 AS v, 'a' AS t UNION ALL SELECT 0.3, 'b')"
postgres = '''SELECT v, t FROM (SELECT 0.3::float8 AS v, 'a' AS t
              UNION ALL SELECT 0.1::float8 + 0.2::float8, 'b') AS s'''

[[query]]
name = "loose"
sqlite = "SELECT id, x FROM items ORDER BY id"
postgres = "SELECT id, x * 1.001 AS x FROM items ORDER BY id"
float_tolerance = 0.01

[[query]]
name = "strict"
sqlite = "SELECT id, x FROM items ORDER BY id"
postgres = "SELECT id, x * 1.001 AS x FROM items ORDER BY id"

[[query]]
name = "json_exponent_as_text"
sqlite = "SELECT id, json_extract(doc, '$.n') AS n FROM items ORDER BY id"
postgres = "SELECT id, doc::jsonb ->> 'n' AS n FROM items ORDER BY id"
accept = ["type_drift"]

[[query]]
name = "json_exponent_as_jsonb"
sqlite = "SELECT id, doc FROM items ORDER BY id"
postgres = "SELECT id, doc::jsonb AS doc FROM items ORDER BY id"
accept = ["type_drift"]
""",
    )
    multiset = only(report, "sum_in_another_order")
    assert multiset.equal, report.render()
    assert only(report, "loose").verdict == "same"
    assert only(report, "strict").verdict == "different"
    as_text = only(report, "json_exponent_as_text")
    assert as_text.verdict == "same", report.render()  # 1e2 is 100.0 in SQLite, '100' in PG
    assert [(d.sqlite_type, d.postgres_type) for d in as_text.type_drift] == [("float, int", "str")]
    assert only(report, "json_exponent_as_jsonb").verdict == "same"


# --------------------------------------------------------------------------- CLI


def test_cli_exit_codes_and_json_carry_the_new_verdicts(sides: Sides) -> None:
    args = ["--source", str(sides.config.require_source()), "--target", sides.dsn]
    runner = CliRunner()
    for text, verdict in (
        (
            "sqlite = 'SELECT code FROM items'\npostgres = 'SELECT code::int FROM items'",
            "type_drift",
        ),
        ("sql = 'SELECT id FROM items WHERE id < 0'", "vacuous"),
    ):
        path = sides.folder / f"{verdict}.toml"
        path.write_text(f'[[query]]\nname = "q"\n{text}\n', encoding="utf-8")
        result = runner.invoke(
            main, [*args, "queries", "check", str(path), "--no-latency", "--json"]
        )
        assert result.exit_code == 1, result.output
        data = json.loads(result.output)
        assert data["ok"] is False and data["queries"][0]["verdict"] == verdict
    bad = sides.folder / "bad_accept.toml"
    bad.write_text('[[query]]\nname = "q"\nsql = "SELECT 1"\naccept = ["vacous"]\n')
    usage = runner.invoke(main, [*args, "queries", "check", str(bad)])
    assert usage.exit_code == 2
    assert "did you mean 'vacuous'" in usage.output
    # An integer SQLite cannot bind is a mistake in the file, not an internal
    # error; as a numeric it reaches SQLite as the REAL SQLite would store.
    huge = sides.folder / "huge.toml"
    huge.write_text(f'[[query]]\nname = "q"\nsql = "SELECT :x AS x"\nparams.x = {2**64}\n')
    usage = runner.invoke(main, [*args, "queries", "check", str(huge), "--no-latency"])
    assert usage.exit_code == 2, usage.output
    assert "out of range for a 64-bit integer" in usage.output
    huge.write_text(
        f'[[query]]\nname = "q"\nsql = "SELECT :x AS x"\n'
        f'params.x = {{ type = "numeric", value = {2**64} }}\n'
    )
    ran = runner.invoke(main, [*args, "queries", "check", str(huge), "--no-latency", "--json"])
    assert ran.exit_code == 1, ran.output
    (q,) = json.loads(ran.output)["queries"]
    assert q["type_drift"][0]["sqlite_type"] == "float"
