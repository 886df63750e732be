"""Children SQLite keeps when their parent is deleted, which PostgreSQL's cascade removes.

SQLite enforces foreign keys only on connections that turn them on (off by
default), so an application deleting a parent may keep its children. When the
target's foreign key says ``ON DELETE CASCADE`` (or ``SET NULL``/``SET
DEFAULT``), applying that delete removes (or changes) the children in
PostgreSQL while SQLite still has them as they were: silently, unless they are
named. After a batch's deletes, the source is asked for rows of the cascading
child tables that still point at a deleted parent key; each becomes a dead
letter ("source keeps this row; its parent was deleted"), in the batch's
transaction, so ``verify`` explains it instead of listing it as missing. The
letter waits like a child whose parent has not arrived: if the parent comes
back, the row is copied again and the letter resolved; deleting the child in
SQLite resolves it too.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from replicator.coerce import json_safe
from replicator.identifiers import sqlite_ident
from replicator.plan.rows import row_image
from replicator.plan.tables import TablePlan
from replicator.source.reader import fetch, read_rows
from replicator.state.deadletter import DeadLetter
from replicator.target.catalog import delete_actions
from replicator.target.connection import Connection

FOREIGN_KEY_VIOLATION = "23503"  # retried with the children waiting for a parent


@dataclass(frozen=True, slots=True)
class Cascade:
    """A target foreign key whose parent's delete removes or changes children."""

    name: str
    action: str  # CASCADE, SET NULL, SET DEFAULT
    child: TablePlan
    parent: str  # the parent's source table name
    select: str  # the child's source rows pointing at one parent key
    parent_positions: tuple[int, ...]  # where, in the parent's key, the referenced values are


def load_cascades(conn: Connection, plans: Sequence[TablePlan]) -> dict[str, list[Cascade]]:
    """The cascading foreign keys among ``plans``, by parent (source name). A foreign
    key referencing columns other than the parent's key is left out: a delete's
    change carries only the key."""
    by_target = {p.name: p for p in plans}
    out: dict[str, list[Cascade]] = {}
    schema = plans[0].schema if plans else ""
    for fk in delete_actions(conn, schema, list(by_target)) if plans else []:
        child, parent = by_target.get(fk.child), by_target.get(fk.parent)
        if fk.on_delete not in ("CASCADE", "SET NULL", "SET DEFAULT") or not child or not parent:
            continue
        if set(fk.ref_columns) != set(parent.target_key):
            continue
        to_source = {c.target: c.source for c in child.columns}
        if not all(c in to_source for c in fk.columns):
            continue
        where = " AND ".join(f"{sqlite_ident(to_source[c])} = ?" for c in fk.columns)
        select = (
            f"SELECT {child.source_select_list()} FROM {sqlite_ident(child.source.name)} "
            f"WHERE {where}"
        )
        positions = tuple(parent.target_key.index(c) for c in fk.ref_columns)
        cascade = Cascade(fk.name, fk.on_delete, child, parent.source.name, select, positions)
        out.setdefault(parent.source.name, []).append(cascade)
    return out


def kept_children(
    source: sqlite3.Connection,
    cascades: Mapping[str, Sequence[Cascade]],
    deleted: Mapping[str, Sequence[tuple[tuple[Any, ...], int]]],
) -> list[DeadLetter]:
    """Dead letters for the source rows that still point at a parent key the batch
    deleted (``deleted``: parent table -> (source key, log position))."""
    letters: list[DeadLetter] = []
    read = fetch if source.in_transaction else read_rows
    for parent, keys in deleted.items():
        for cascade in cascades.get(parent, ()):
            for key, position in keys:
                values = [key[i] for i in cascade.parent_positions]
                for raw in read(source, cascade.select, values):
                    letters.append(_letter(cascade, key, raw, position))
    return letters


def _letter(cascade: Cascade, parent_key: tuple[Any, ...], raw: Any, position: int) -> DeadLetter:
    plan = cascade.child
    effect = "removed it" if cascade.action == "CASCADE" else "changed its reference"
    return DeadLetter(
        table=plan.source.name,
        key=tuple(raw[i] for i in plan.key_positions),
        column=None,
        raw_value=None,
        error=(
            f"source keeps this row; its parent was deleted ({cascade.parent} key "
            f"{json_safe(list(parent_key))}) with SQLite's foreign keys off, and PostgreSQL's "
            f"ON DELETE {cascade.action} of {cascade.name} {effect}"
        ),
        sqlstate=FOREIGN_KEY_VIOLATION,
        stage="stream",
        change={
            "op": "D",
            "seq": position,
            "parent": cascade.parent,
            "parent_key": json_safe(list(parent_key)),
            "image": row_image(plan, tuple(raw)),
        },
        position=position,
    )
