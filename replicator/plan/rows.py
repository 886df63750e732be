"""Row conversion: raw SQLite rows of a table plan become target values or dead letters.

This is the one place a source row turns into the values written to PostgreSQL
(each column by its plan's converter), and the one place a row that cannot be
converted, or that PostgreSQL refused, becomes a dead letter describing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from replicator.coerce import json_safe
from replicator.errors import CoercionError
from replicator.plan.tables import TablePlan
from replicator.source.reader import RawRow
from replicator.state.deadletter import DeadLetter
from replicator.target.writer import RowFailure

# Rows converted, the raw rows they came from, and the rows that could not be.
Converted = tuple[list[tuple[object, ...]], list[RawRow], list[DeadLetter]]


def row_image(plan: TablePlan, raw: RawRow) -> dict[str, Any]:
    """A JSON-safe picture of a source row for the dead-letter table."""
    return {col.source: json_safe(v) for col, v in zip(plan.columns, raw, strict=True)}


def convert_rows(
    plan: TablePlan, raw_rows: Sequence[RawRow], stage: str, valid: Sequence[int] | None = None
) -> Converted:
    """Convert to target types; rows with a value that cannot be converted come back as
    dead letters. Returns (converted rows, their raw rows, dead letters). ``valid``
    (from ``ChunkReader.read_checked``) flags the rows whose JSON columns hold
    NULL or text SQLite's ``json_valid()`` accepted."""
    convs = [c.convert for c in plan.columns]
    # Rows whose JSON columns SQLite found valid (``valid``): their text is not parsed again.
    trusting = [c.convert_valid or c.convert for c in plan.columns]
    flags: Sequence[int] = valid if valid is not None else [0] * len(raw_rows)
    good: list[tuple[object, ...]] = []
    good_raw: list[RawRow] = []
    dead: list[DeadLetter] = []
    keypos = plan.key_positions
    for raw, ok in zip(raw_rows, flags, strict=True):
        try:
            good.append(tuple([f(v) for f, v in zip(trusting if ok else convs, raw, strict=True)]))
            good_raw.append(raw)
        except CoercionError:
            for col, f, v in zip(plan.columns, convs, raw, strict=True):
                try:
                    f(v)
                except CoercionError as exc:
                    dead.append(
                        DeadLetter(
                            table=plan.source.name,
                            key=tuple(raw[i] for i in keypos),
                            column=col.source,
                            raw_value=v,
                            error=exc.reason,
                            sqlstate=None,
                            stage=stage,
                            change=row_image(plan, raw),
                        )
                    )
                    break
    return good, good_raw, dead


def failures_to_letters(
    plan: TablePlan, raw_rows: Sequence[RawRow], failures: Sequence[RowFailure], stage: str
) -> list[DeadLetter]:
    """Dead letters for the rows PostgreSQL refused (each failure indexes ``raw_rows``),
    naming the column at fault when PostgreSQL named it."""
    by_target = {c.target: (i, c.source) for i, c in enumerate(plan.columns)}
    keypos = plan.key_positions
    letters = []
    for f in failures:
        raw = raw_rows[f.index]
        column = None
        value: object = None
        if f.column and f.column in by_target:
            i, column = by_target[f.column]
            value = raw[i]
        letters.append(
            DeadLetter(
                table=plan.source.name,
                key=tuple(raw[i] for i in keypos),
                column=column,
                raw_value=value,
                error=f.error,
                sqlstate=f.sqlstate,
                stage=stage,
                change=row_image(plan, raw),
            )
        )
    return letters
