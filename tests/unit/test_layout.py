"""The floor plan holds: state SQL lives in replicator/state, no module grows past
the size a reader can hold, and rows are converted in one place.

(The import layering itself is checked by ``lint-imports`` in ``make lint``.)
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "replicator"
MAX_LINES = 600


def state_tables() -> set[str]:
    """Every table the state schema's migrations create."""
    found: set[str] = set()
    for migration in (ROOT / "migrations" / "versions").glob("*.py"):
        text = migration.read_text(encoding="utf-8")
        found.update(re.findall(r'op\.create_table\(\s*"([a-z_]+)"', text))
    return found


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_migrations_create_the_state_tables_this_test_looks_for() -> None:
    assert {"stream_position", "dead_letters", "snapshot_progress", "daemon", "meta"} <= (
        state_tables()
    )


def test_only_the_state_package_names_a_state_table_in_sql() -> None:
    names = "|".join(sorted(state_tables()))
    # pg_ident(schema, "name"), sql.Identifier(schema, "name"), '%I.name' and
    # "schema.name" in SQL text: the ways a table of the state schema is named.
    pattern = re.compile(
        rf"""(pg_ident|Identifier)\([^()]*,\s*"({names})"\)|%I\.({names})\b|\{{\}}\.({names})\b"""
    )
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in modules()
        if PACKAGE / "state" not in path.parents
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_no_module_is_longer_than_a_reader_can_hold() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in modules()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def test_column_converters_are_called_only_in_the_plan_and_coerce() -> None:
    """Every conversion of a source row or key to target values goes through
    replicator/plan (rows.py, compare.py), which calls the column converters."""
    call = re.compile(r"\.(convert|convert_valid)\(|\bconverter_for\(")
    allowed = {PACKAGE / "plan", PACKAGE / "coerce"}
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in modules()
        if not allowed & set(path.parents)
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if call.search(line)
    ]
    # Building converters is not converting: the query checker types a query's
    # result columns, drift types an added column's default, params type query
    # parameters; the values themselves are converted in plan.compare.
    assert all(
        any(name in o for name in ("queries/checker.py", "stream/drift.py", "queries/params.py"))
        for o in offenders
    ), offenders
