"""Why ``verify`` finds a row the target does not hold as the source does, when the
reason is a row SQLite keeps legally that PostgreSQL cannot hold as it is.

* A row whose key holds NULL (``replicator.plan.nullkeys``): no key range
  reaches it, so it is looked for on its own; it is missing from the target,
  and explained when a dead letter names it.
* A source orphan: a row whose foreign key finds no parent in SQLite (the
  application deleted the parent with foreign keys off). PostgreSQL's foreign
  key removed it (``ON DELETE CASCADE``), changed it, or refused it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from replicator.coerce import Kind, json_safe
from replicator.identifiers import sqlite_ident
from replicator.plan.compare import source_key_text
from replicator.plan.nullkeys import null_key_rows, sync_null_keys
from replicator.plan.tables import TablePlan
from replicator.source.reader import fetch_one, foreign_key_orphans
from replicator.source.sqlite import read_transaction
from replicator.state import deadletter
from replicator.target.connection import Connection


@dataclass
class NullKeyRows:
    rows: int = 0  # rows of the table whose key holds NULL
    lettered: int = 0  # of them, named by an open dead letter
    examples: list[dict[str, Any]] = field(default_factory=list)


def null_key_rows_named(
    source: sqlite3.Connection, conn: Connection, schema: str, plan: TablePlan, repair: bool
) -> NullKeyRows:
    """The table's rows whose key holds NULL, and which of them a dead letter names
    (``--repair`` records the letters that are missing; it cannot copy the rows)."""
    rows = null_key_rows(source, plan)
    out = NullKeyRows(rows=len(rows))
    if not rows:
        return out
    with conn.transaction(), conn.cursor() as cur:
        if repair:
            sync_null_keys(source, cur, schema, plan, "verify")
        named = deadletter.open_source_rows(cur, schema, plan.source.name)
    label = "source key" if plan.source.without_rowid else "rowid"
    for identity, raw in rows:
        lettered = json.dumps(identity) in named
        out.lettered += lettered
        how = "dead-lettered" if lettered else "no dead letter names it"
        out.examples.append(
            {
                "problem": "missing",
                "key": [json_safe(raw[i]) for i in plan.key_positions],
                "detail": f" ({label} {', '.join(map(str, identity))}): NULL in a key column, "
                + how,
            }
        )
    return out


def source_orphans(source: sqlite3.Connection, plan: TablePlan, kinds: Sequence[Kind]) -> set[str]:
    """Key texts (as ``verify`` keys rows) of the table's rows whose foreign key finds
    no parent in SQLite (``PRAGMA foreign_key_check``; a WITHOUT ROWID table's rows
    are not told apart)."""
    if not plan.source.foreign_keys:
        return set()
    select = (
        f"SELECT {plan.source_select_list()} FROM {sqlite_ident(plan.source.name)} WHERE rowid = ?"
    )
    out = set()
    with read_transaction(source):
        try:
            orphans = foreign_key_orphans(source, plan.source.name)
        except sqlite3.OperationalError:  # a declaration SQLite cannot check
            return set()
        for found in orphans:
            if found[1] is None:
                continue
            raw = fetch_one(source, select, (found[1],))
            if raw is not None:
                out.add(source_key_text(plan, kinds, raw))
    return out
