"""Row conversion: raw SQLite rows of a table plan become target values or dead letters.

This is the one place a source row, or a source key, turns into the values
written to PostgreSQL (each column by its plan's converter): the snapshot
(:func:`convert_rows`, a chunk at a time), the stream's apply, repairs and
verification (:func:`convert_row`, :func:`convert_key`, :func:`chunk_upper_key`).
A value a converter refuses comes back as :class:`Refused`, naming the column,
the value and the reason; a row that cannot be converted, or that PostgreSQL
refused, becomes a dead letter describing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from replicator.coerce import json_safe
from replicator.errors import CoercionError
from replicator.plan.tables import TablePlan
from replicator.source.reader import RawRow
from replicator.state.deadletter import DeadLetter
from replicator.target.writer import RowFailure

Row = tuple[object, ...]  # target values, in the plan's column order
# Rows converted, the raw rows they came from, and the rows that could not be.
Converted = tuple[list[Row], list[RawRow], list[DeadLetter]]


@dataclass(frozen=True, slots=True)
class Refused:
    """The first value of a row or key that its target column does not take."""

    column: str  # the source column
    value: object
    reason: str


def convert_row(plan: TablePlan, raw: Sequence[object]) -> Row | Refused:
    """A source row (values in ``plan.columns`` order) as the target's values."""
    out = []
    for col, value in zip(plan.columns, raw, strict=True):
        try:
            out.append(col.convert(value))
        except CoercionError as exc:
            return Refused(col.source, value, exc.reason)
    return tuple(out)


def convert_key(plan: TablePlan, key: Sequence[object]) -> Row | Refused:
    """A source key (values in ``plan.key`` order) as the target key's values."""
    by_source = {c.source: c for c in plan.columns}
    out = []
    for name, value in zip(plan.key, key, strict=True):
        try:
            out.append(by_source[name].convert(value))
        except CoercionError as exc:
            return Refused(name, value, exc.reason)
    return tuple(out)


def chunk_upper_key(plan: TablePlan, raw_rows: Sequence[Sequence[object]]) -> Row | None:
    """A chunk's upper bound in the target: the target key of its last row whose
    key converts (None when none does). A key that does not (a blob, or text that
    is not UTF-8, in a text key) is never in the target and sorts among the
    source's keys only, so it cannot bound a range of the target's."""
    for raw in reversed(raw_rows):
        key = convert_key(plan, [raw[i] for i in plan.key_positions])
        if not isinstance(key, Refused):
            return key
    return None


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
