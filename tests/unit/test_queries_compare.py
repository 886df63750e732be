"""Comparing result sets after normalisation: ordered, grouped by order key, multisets."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from replicator.coerce import Kind, PgType, converter_for
from replicator.queries import (
    Latency,
    ResultColumn,
    Row,
    Unconvertible,
    compare_rows,
    normalise_postgres,
    normalise_sqlite,
    percentile,
    same_value,
)


def columns(*kinds: Kind) -> list[ResultColumn]:
    return [ResultColumn(f"c{i}", k, converter_for(PgType.of(k))) for i, k in enumerate(kinds)]


def rows(*values: Sequence[Any]) -> list[Row]:
    return [Row(tuple(v), tuple(v)) for v in values]


def test_sqlite_values_are_typed_like_the_postgres_column() -> None:
    cols = columns(Kind.TIMESTAMP, Kind.JSONB, Kind.BOOLEAN, Kind.NUMERIC, Kind.BIGINT)
    lite = normalise_sqlite(cols, [("2025-11-12T10:15:30+02:00", '{"b": 1, "a": 2}', 1, 2.5, 7)])
    pg = normalise_postgres(
        cols, [(datetime(2025, 11, 12, 8, 15, 30), {"a": 2, "b": 1}, True, Decimal("2.50"), 7)]
    )
    assert compare_rows(lite, pg, ordered=False) is None
    assert lite[0].raw[0] == "2025-11-12T10:15:30+02:00"  # shown as the app reads it


def test_a_value_replication_cannot_store_is_never_equal() -> None:
    cols = columns(Kind.TIMESTAMP)
    (row,) = normalise_sqlite(cols, [("next tuesday",)])
    assert isinstance(row.canon[0], Unconvertible)
    diff = compare_rows([row], normalise_postgres(cols, [(None,)]), ordered=False)
    assert diff is not None


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        (0.1 + 0.2, 0.3, True),  # float arithmetic noise
        (1.6666666666666667, Decimal("1.6666666666666666667"), True),  # avg(): float vs numeric
        (10**15, 10**15 + 1, False),  # counts are exact, however large
        (Decimal("3"), 3, True),
        (Decimal("1.5"), 1, False),
        (1.0, 1.01, False),
        (True, 1, False),
        (None, 0, False),
        (None, None, True),
        ("a", "A", False),
    ],
)
def test_value_equality(a: Any, b: Any, equal: bool) -> None:
    assert same_value(a, b, 1e-9) is equal
    assert same_value(b, a, 1e-9) is equal


def test_tolerance_zero_is_exact() -> None:
    assert not same_value(0.1 + 0.2, 0.3, 0.0)


def test_ordered_results_are_compared_row_by_row() -> None:
    a = rows((1, "x"), (2, "y"), (3, "z"))
    assert compare_rows(a, rows((1, "x"), (2, "y"), (3, "z")), ordered=True) is None
    diff = compare_rows(a, rows((1, "x"), (3, "z"), (2, "y")), ordered=True)
    assert diff is not None and diff.position == 1
    assert "same rows in a different order" in diff.summary
    assert diff.sqlite_rows[0] == [2, "y"] and diff.postgres_rows[0] == [3, "z"]
    diff = compare_rows(a, rows((1, "x"), (2, "y")), ordered=True)
    assert diff is not None and "SQLite returned 3 rows, PostgreSQL 2" in diff.summary
    diff = compare_rows(a, rows((1, "x"), (2, "Y"), (3, "z")), ordered=True)
    assert diff is not None and "different rows, from row 2" in diff.summary


def test_unordered_results_are_multisets() -> None:
    a = rows((1, "x"), (2, "y"), (2, "y"))
    assert compare_rows(a, rows((2, "y"), (1, "x"), (2, "y")), ordered=False) is None
    diff = compare_rows(a, rows((2, "y"), (1, "x"), (1, "x")), ordered=False)
    assert diff is not None
    assert diff.summary.startswith("1 row(s) only in SQLite, 1 only in PostgreSQL")
    assert diff.sqlite_rows == [[2, "y"]] and diff.postgres_rows == [[1, "x"]]


def test_order_key_allows_ties_in_any_order_but_not_across_keys() -> None:
    a = rows((0.9, 1), (0.9, 2), (0.5, 3))
    assert compare_rows(a, rows((0.9, 2), (0.9, 1), (0.5, 3)), ordered=True, key_idx=[0]) is None
    diff = compare_rows(a, rows((0.9, 1), (0.5, 3), (0.9, 2)), ordered=True, key_idx=[0])
    assert diff is not None and "group of equal order keys" in diff.summary


def test_unsortable_mixtures_still_compare() -> None:
    a = rows((None, 1), ("x", 2), (1.5, 3), (datetime(2025, 1, 1), 4))
    b = list(reversed(rows((None, 1), ("x", 2), (1.5, 3), (datetime(2025, 1, 1), 4))))
    assert compare_rows(a, b, ordered=False) is None


def test_percentiles() -> None:
    samples = [float(i) for i in range(1, 101)]
    assert percentile(samples, 0.5) == pytest.approx(50.5)
    assert percentile(samples, 0.95) == pytest.approx(95.05)
    assert percentile([7.0], 0.99) == 7.0
    lat = Latency.of([3.0, 1.0, 2.0])
    assert (lat.n, lat.p50, lat.max) == (3, 2.0, 3.0)


def test_multisets_match_within_tolerance_whatever_the_exact_sort_order() -> None:
    # Sorted by exact values the pairs fall apart: (0.30000000000000004, "a")
    # sorts after (0.3, "b"). Matching within the tolerance pairs them anyway.
    a = rows((0.1 + 0.2, "a"), (0.3, "b"))
    b = rows((0.3, "a"), (0.1 + 0.2, "b"))
    assert compare_rows(a, b, ordered=False) is None
    diff = compare_rows(a, b, ordered=False, tolerance=0.0)
    assert diff is not None and diff.summary.startswith("2 row(s) only in SQLite")
    diff = compare_rows(a, rows((0.3, "a"), (0.31, "b")), ordered=False)
    assert diff is not None and diff.sqlite_rows == [[0.3, "b"]]


def test_a_sqlite_float_where_postgres_returns_text_compares_as_printed() -> None:
    cols = columns(Kind.TEXT, Kind.TEXT)
    # json_extract('{"n": 1e2}', '$.n') is 100.0 in SQLite; ->> gives '100'.
    lite = normalise_sqlite(cols, [(100.0, 2.5)])
    pg = normalise_postgres(cols, [("100", "2.5")])
    assert compare_rows(lite, pg, ordered=False) is None
    assert compare_rows(lite, normalise_postgres(cols, [("100", "2.6")]), ordered=False)
