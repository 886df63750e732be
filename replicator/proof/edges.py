"""``replicator check`` on rows SQLite keeps that PostgreSQL will not hold as they are.

* Rows whose key holds NULL (SQLite allows it in a non-INTEGER PRIMARY KEY):
  counted per table; they become dead letters (``replicator.plan.nullkeys``).
* Rows whose foreign key finds no parent in SQLite (``PRAGMA foreign_key_check``):
  the application runs with foreign keys off (SQLite's default per connection),
  so deleting a parent kept them. PostgreSQL refuses them, or its ``ON DELETE
  CASCADE`` removes them where SQLite keeps them.
* Whether foreign keys are enforced the same on both sides: SQLite enforces them
  only on connections that turn ``PRAGMA foreign_keys`` on, which no file
  records; PostgreSQL always does, and may cascade where SQLite declares nothing.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable, Sequence

from replicator.plan.nullkeys import count_null_keys, nullable_key
from replicator.plan.tables import TablePlan
from replicator.source.reader import foreign_key_orphans
from replicator.target.catalog import delete_actions
from replicator.target.connection import Connection

Report = Callable[..., None]  # CheckReport.add


def check_null_keys(source: sqlite3.Connection, plans: Sequence[TablePlan], add: Report) -> None:
    """How many rows of each table hold NULL in a key column."""
    nullable = [p for p in plans if nullable_key(p)]
    found = {p.source.name: (p, count_null_keys(source, p)) for p in nullable}
    for name, (plan, rows) in found.items():
        if rows:
            columns = ", ".join(nullable_key(plan))
            add(
                f"NULL keys in {name}",
                False,
                f"{rows} row(s) hold NULL in key column(s) {columns} (SQLite allows it in a "
                "non-INTEGER PRIMARY KEY); PostgreSQL's primary key cannot: each becomes a "
                "dead letter naming its rowid",
                f"give those rows a key in SQLite (UPDATE {name} SET ... WHERE rowid = ...); "
                "the stream then copies them",
                severity="warning",
            )
    if nullable and not any(rows for _plan, rows in found.values()):
        add(
            "NULL keys",
            True,
            f"{len(nullable)} table(s) have key columns SQLite lets hold NULL; none does now",
        )


def check_orphans(source: sqlite3.Connection, plans: Sequence[TablePlan], add: Report) -> None:
    """Rows of replicated tables whose parent SQLite no longer has."""
    counts: Counter[tuple[str, str]] = Counter()
    for plan in plans:
        if not plan.source.foreign_keys:
            continue
        try:
            found = foreign_key_orphans(source, plan.source.name)
        except sqlite3.OperationalError as exc:  # e.g. "foreign key mismatch"
            add(
                f"source orphans in {plan.source.name}",
                False,
                f"PRAGMA foreign_key_check cannot check it: {exc}",
                "fix the foreign key declaration in SQLite (it names no primary key or "
                "UNIQUE columns of its parent)",
                severity="warning",
            )
            continue
        counts.update((str(r[0]), str(r[2])) for r in found)
    for (table, parent), rows in sorted(counts.items()):
        add(
            f"source orphans in {table}",
            False,
            f"{rows} row(s) of {table} point at {parent} rows SQLite no longer has "
            "(PRAGMA foreign_key_check: the application deletes with foreign keys off)",
            "PostgreSQL refuses such rows (dead letters waiting for their parent) or its "
            "ON DELETE CASCADE removes them; `replicator verify` names them as source orphans. "
            "Delete or re-parent them in SQLite",
            severity="warning",
        )
    if not counts:
        add("source orphans", True, "PRAGMA foreign_key_check: every foreign key finds its parent")


def check_enforcement(conn: Connection, plans: Sequence[TablePlan], add: Report) -> None:
    """Whether a parent's delete does the same to its children on both sides."""
    by_target = {p.name: p for p in plans}
    actions = delete_actions(conn, plans[0].schema, list(by_target)) if plans else []
    differs = []
    for fk in actions:
        plan = by_target[fk.child]
        parent_plan = by_target.get(fk.parent)
        parent_source = parent_plan.source.name if parent_plan else fk.parent
        declared = [d for d in plan.source.foreign_keys if d.ref_table == parent_source]
        source_action = declared[0].on_delete.upper() if declared else "none declared"
        if fk.on_delete in ("CASCADE", "SET NULL", "SET DEFAULT"):
            differs.append(
                f"{fk.child}.{fk.name}: ON DELETE {fk.on_delete} in PostgreSQL, "
                f"{source_action} in SQLite"
            )
    if differs:
        add(
            "foreign-key enforcement",
            False,
            "PostgreSQL always enforces foreign keys; SQLite only on connections that set "
            "PRAGMA foreign_keys = ON (off by default, and recorded nowhere in the file). "
            "With the application's off, a parent deleted in SQLite keeps its children, "
            f"which these remove or change in PostgreSQL: {'; '.join(differs[:10])}",
            "turn PRAGMA foreign_keys on in the application, or expect those children as "
            'dead letters ("source keeps this row; its parent was deleted")',
            severity="warning",
        )
    elif actions:
        add(
            "foreign-key enforcement",
            True,
            f"{len(actions)} foreign key(s) in PostgreSQL, none deletes or changes children; "
            "a parent SQLite deletes while keeping its children (foreign keys off there) is "
            "refused by PostgreSQL: that delete becomes a dead letter, the parent stays",
        )
