"""The verdicts of one parameter set beyond the value comparison, and the session.

:mod:`replicator.queries.checker` runs both sides and compares values; this
module then looks at what the comparison cannot see (the Python types the
application receives, the order it receives rows in, an empty answer, the
dead letters behind a difference) and prepares the PostgreSQL session the
way the application's own is set up.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg

from replicator.coerce import Kind
from replicator.errors import ConfigError, SourceError
from replicator.queries.compare import (
    ResultColumn,
    compare_rows,
    group_rows,
    normalise_postgres,
    normalise_sqlite,
    same_value,
)
from replicator.queries.drift import find_type_drift
from replicator.queries.report import CaseResult
from replicator.queries.spec import QuerySpec
from replicator.queries.sqltext import has_top_level
from replicator.queries.verdicts import implied_order_key, same_sequence, suggest_order_by
from replicator.source.sqlite import describe_table, list_tables
from replicator.target.connection import first_line

if TYPE_CHECKING:
    from replicator.queries.checker import QueryChecker

__all__ = ["apply_session", "judge_case", "order_key_positions", "ties_only"]

# Settings a query file may not change: the check must stay read-only and
# run as the configured user.
_REFUSED = (
    "default_transaction_read_only",
    "transaction_read_only",
    "session_authorization",
    "role",
)


def apply_session(
    conn: psycopg.Connection[Any], settings: Sequence[tuple[str, str]]
) -> dict[str, str]:
    """Set the query file's ``[session]`` settings; return those in force (TimeZone always)."""
    for name, value in settings:
        if name.lower() in _REFUSED:
            raise ConfigError(
                f"query file [session]: {name} cannot be set (the check is read-only)"
            )
        if name.lower() == "statement_timeout":
            # One limit for both sides, and not on the check's own bookkeeping.
            raise ConfigError(
                "query file [session]: statement_timeout is [settings] statement_timeout_ms "
                "(the check applies it to the queries on both sides)"
            )
        try:
            conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        except psycopg.Error as exc:
            raise ConfigError(
                f"query file [session]: cannot set {name} = {value!r}: {first_line(exc)}"
            ) from exc
    used: dict[str, str] = {}
    for name in ["TimeZone", *(n for n, _ in settings if n.lower() != "timezone")]:
        row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
        used[name] = str(row[0]) if row else ""
    return used


def order_key_positions(spec: QuerySpec, names: Sequence[str]) -> list[int]:
    lowered = [n.lower() for n in names]
    return [lowered.index(k.lower()) for k in spec.order_key if k.lower() in lowered]


def ties_only(
    spec: QuerySpec,
    names: Sequence[str],
    columns: Sequence[ResultColumn],
    lite_rows: Sequence[Sequence[Any]],
    pg_rows: Sequence[Sequence[Any]],
    tolerance: float,
) -> bool:
    """An ordered query whose rows differ only among rows that tie on its ORDER
    BY columns: both engines honour the ORDER BY, neither fixes the rest.

    Under a top-level LIMIT the last group of tied rows is cut by the limit,
    so which of them make the page is up to each engine too: it counts as a
    tie when every earlier group matches and the last has the same keys and
    size. Its values cannot be compared then; the verdict "order not
    guaranteed" still fails the check, so nothing passes unseen.
    """
    if not spec.ordered or spec.order_key:
        return False
    implied = implied_order_key(spec.sqlite_sql, names)
    if not implied:
        return False
    a = normalise_sqlite(columns, lite_rows)
    b = normalise_postgres(columns, pg_rows)
    if compare_rows(a, b, ordered=True, key_idx=implied, tolerance=tolerance) is None:
        return True
    if len(a) != len(b) or not has_top_level(spec.sqlite_sql, "sqlite", "limit"):
        return False
    ga, gb = group_rows(a, implied, tolerance), group_rows(b, implied, tolerance)
    if len(ga) != len(gb):
        return False
    head = len(a) - len(ga[-1])
    return len(ga[-1]) == len(gb[-1]) and (
        compare_rows(a[:head], b[:head], ordered=True, key_idx=implied, tolerance=tolerance) is None
        and all(same_value(ga[-1][0].canon[k], gb[-1][0].canon[k], tolerance) for k in implied)
    )


def _table_keys(checker: QueryChecker, spec: QuerySpec) -> list[str]:
    """Key columns of the tables the query names (preferred for a tie-breaker)."""
    text = f"{spec.sqlite_sql}\n{spec.postgres_text}"
    keys: list[str] = []
    for table in list_tables(checker.source):
        if re.search(rf"(?<![\w.]){re.escape(table)}(?!\w)", text, re.IGNORECASE):
            try:
                keys += [k for k in describe_table(checker.source, table).key if k not in keys]
            except SourceError:
                continue
    return keys


def _only_nulls(rows: Sequence[Sequence[Any]]) -> bool:
    return all(v is None for row in rows for v in row)


def judge_case(
    checker: QueryChecker,
    spec: QuerySpec,
    names: Sequence[str],
    lite_rows: Sequence[Sequence[Any]],
    pg_rows: Sequence[Sequence[Any]],
    columns: Sequence[ResultColumn],
    case: CaseResult,
) -> None:
    """Type drift, order, emptiness and dead letters of one compared parameter set."""
    if len(columns) != len(names):
        return  # the column counts differ: "different" says it all
    tolerance = checker.tolerance(spec)
    # No rows, or only NULLs (what max() or avg() over no rows gives): the
    # sample data does not exercise the query either way.
    case.vacuous = _only_nulls(lite_rows) and _only_nulls(pg_rows)
    case.type_drift = find_type_drift(
        names, lite_rows, pg_rows, padded=[c.kind is Kind.CHAR for c in columns]
    )
    if case.difference is None and len(lite_rows) > 1:
        a = normalise_sqlite(columns, lite_rows)
        b = normalise_postgres(columns, pg_rows)
        if not same_sequence(a, b, tolerance):
            case.order_detail = (
                "the same rows come back in a different order on the two sides"
                if compare_rows(a, b, ordered=False, tolerance=tolerance) is None
                else "the LIMIT cuts through rows that tie on the ORDER BY, and the two "
                "sides keep different ones of them"
            )
            first: list[int] = []
            if spec.ordered:
                first = order_key_positions(spec, names) or list(
                    implied_order_key(spec.sqlite_sql, names) or []
                )
            case.order_differs = True
            case.order_hint = suggest_order_by(
                names,
                lite_rows,
                keys=_table_keys(checker, spec),
                first=first,
                query=spec.sqlite_sql if spec.ordered else None,
            )
    if (
        case.difference is not None
        and spec.ordered
        and not spec.order_key
        and case.difference.summary.startswith("the same rows in a different order")
        and implied_order_key(spec.sqlite_sql, names) is None
    ):
        # Rows tied on an ORDER BY the result does not show look exactly like
        # a real difference in sort order (a collation): say which it may be.
        hint = suggest_order_by(
            names, lite_rows, keys=_table_keys(checker, spec), query=spec.sqlite_sql
        )
        case.difference.summary += (
            "; the ORDER BY sorts on values the result does not show, so rows that tie "
            f"on it cannot be told from a real difference: if they tie, {hint} "
            "would make the order deterministic (or show the sort keys, or name them "
            "in order_key)"
        )
    if case.difference is not None and checker.letters:
        checker.letters.annotate(case.difference, f"{spec.sqlite_sql}\n{spec.postgres_text}", names)
