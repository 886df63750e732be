"""The one conversion of a source row, and of a source key, to target values.

Every path that writes or compares a row (the snapshot, the stream's apply,
repairs, verification) turns SQLite's raw values into the target's through
the converters of its :class:`~replicator.plan.tables.TablePlan` columns,
here. A value a converter refuses comes back as :class:`Refused`, naming the
column, the value and the reason, for the caller to dead-letter or report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from replicator.errors import CoercionError
from replicator.plan.tables import TablePlan

Row = tuple[object, ...]


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
