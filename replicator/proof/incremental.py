"""``replicator verify --changed``: compare only the rows changed since the last verify.

Each verify records per table, in the state schema, the change-log head it read
before reading the table's rows (``verify_marks``). Every change the
application made after that is in the log after that position, and the daemon
keeps those entries (``stream.verify_keep_seconds``) instead of pruning them.
An incremental verify then compares, the exact way, only the keys the log
names since the mark, and trusts the earlier verify for every other row.

What it trusts, and so says: that the rows the log does not name are unchanged
on both sides since then, i.e. that nothing wrote to the target's tables
behind the replicator's back. Row counts are taken on both sides all the same
(cheap, and a row added or removed on one side only shows there), and a table
falls back to a full verify when it cannot be incremental: no earlier verify,
one that did not come out identical, a schema change since, no change log
(cursor capture), or a log already pruned past the mark.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from replicator.plan.tables import TablePlan
from replicator.source import changelog
from replicator.source.sqlite import read_transaction
from replicator.state.verifymarks import VerifyMark


def table_shape(plan: TablePlan) -> str:
    """What a verify mark holds of the table: columns, their target types, the key."""
    return json.dumps(
        {
            "columns": [[c.source, c.target, c.type.name] for c in plan.columns],
            "key": list(plan.key),
        },
        sort_keys=True,
    )


@dataclass(frozen=True, slots=True)
class Scope:
    """What one table's verify covers."""

    head: int | None  # the log head read before the table's rows (None: no log)
    keys: list[tuple[Any, ...]] | None  # the changed keys to compare; None: the whole table
    note: str  # why a full verify, or what the incremental one trusts


def scope(
    source: sqlite3.Connection,
    plan: TablePlan,
    mark: VerifyMark | None,
    *,
    changed: bool,
) -> Scope:
    """The head to record, and, for ``--changed``, the keys to compare or why not."""
    with read_transaction(source):
        has_log = changelog.changelog_exists(source)
        head = changelog.head_position(source) if has_log else None
        pruned = (
            has_log
            and mark is not None
            and head is not None
            and changelog.pruned_past(source, mark.position, head)
        )
    if not changed:
        return Scope(head, None, "full verify")
    if head is None:
        return Scope(None, None, "full verify: the source has no change log (cursor capture)")
    if mark is None:
        return Scope(head, None, "full verify: no earlier verify of this table")
    if mark.shape != table_shape(plan):
        return Scope(head, None, "full verify: the table's schema changed since the last verify")
    if not mark.identical:
        return Scope(head, None, "full verify: the last verify of this table found differences")
    if mark.position > head:
        return Scope(head, None, "full verify: the change log is behind the last verify's mark")
    if pruned:
        return Scope(
            head,
            None,
            f"full verify: the change log was pruned past the last verify's position "
            f"{mark.position} (stream.verify_keep_seconds)",
        )
    keys = changelog.changed_keys(source, mark.position, head, plan.source.name)
    when = f" at {mark.verified_at:%Y-%m-%d %H:%M:%S %Z}" if mark.verified_at else ""
    return Scope(
        head,
        keys,
        f"compared the {len(keys)} row(s) changed since the verify{when} "
        f"(log positions {mark.position}..{head}); trusted it for the other rows",
    )
