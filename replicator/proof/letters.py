"""Dead letters for the people who fix them: list, show, retry after a fix, discard.

Each function opens what it needs from a :class:`Config`, closes it again and
returns plain values; the ``dead-letters`` commands only print them. Retrying
re-copies the rows from the source as they are now through the normal write
path (:func:`replicator.stream.repair.rewrite_keys`), so a row fixed in the
source, or deleted there, resolves its dead letters.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from replicator.coerce import decode_key
from replicator.config import Config
from replicator.errors import DataError
from replicator.plan.nullkeys import sync_null_keys
from replicator.plan.tables import TablePlan, build_plans
from replicator.source.sqlite import open_source
from replicator.state import deadletter
from replicator.state.deadletter import StoredLetter
from replicator.stream.repair import rewrite_keys
from replicator.target.connection import Connection, connect


def list_letters(
    config: Config, *, table: str | None = None, include_resolved: bool = False, limit: int = 100
) -> list[StoredLetter]:
    """The open dead letters (resolved ones too with ``include_resolved``), oldest first."""
    with connect(config.require_target(), autocommit=True) as conn, conn.cursor() as cur:
        return deadletter.fetch(
            cur,
            config.target.state_schema,
            table=table,
            include_resolved=include_resolved,
            limit=limit,
        )


@dataclass(frozen=True, slots=True)
class Shown:
    letters: list[StoredLetter]
    missing: list[int]  # ids asked for that name no dead letter, ascending


def show_letters(config: Config, ids: Sequence[int]) -> Shown:
    """The dead letters with these ids, open or resolved, and the ids that have none."""
    with connect(config.require_target(), autocommit=True) as conn, conn.cursor() as cur:
        letters = deadletter.fetch(cur, config.target.state_schema, ids=ids)
    return Shown(letters, sorted(set(ids) - {x.id for x in letters}))


@dataclass(frozen=True, slots=True)
class Retried:
    """What retrying did to one key of ``table``; ``key`` is None when the table is
    no longer replicated, so its dead letters were left open untried."""

    table: str
    key: tuple[object, ...] | None
    action: str  # "upserted" | "deleted" | "failed"
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RetryTotals:
    resolved: int
    still_open: int


def retry_letters(
    config: Config,
    *,
    ids: Sequence[int] = (),
    table: str | None = None,
    report: Callable[[Retried], None],
) -> RetryTotals:
    """Re-copy the rows of the open dead letters named by ``ids`` or ``table`` (every
    open one when neither is given) and resolve those that now write.

    A row that writes is resolved as 'retried (upserted)', one gone from the source
    is deleted from the target and resolved as 'retried (deleted)', one that still
    fails stays open with its new reason. Each table's results are recorded in one
    transaction and passed to ``report`` one by one as they are, so an error in a
    later table leaves the earlier ones both done and reported.
    """
    schema = config.target.state_schema
    source = open_source(config.require_source(), readonly=True)
    conn = connect(config.require_target(), autocommit=True)
    try:
        with conn.cursor() as cur:
            letters = deadletter.fetch(cur, schema, ids=ids, table=table)
        if ids and (reverse := [x.id for x in letters if x.direction == "reverse"]):
            # Re-copying from SQLite would overwrite PostgreSQL's newer row with the
            # stale one SQLite holds: a reverse letter heals by a change in PostgreSQL.
            raise DataError(
                f"dead letter(s) {', '.join(map(str, reverse))} are of the reverse direction "
                "(rows SQLite refused): fix the row in PostgreSQL, and the reverse stream's "
                "next change of it resolves the letter"
            )
        letters = [x for x in letters if x.resolved_at is None and x.direction == "forward"]
        plans = {p.source.name: p for p in build_plans(source, conn, config)}
        failed = 0
        for name in sorted({x.table for x in letters}):
            group = [x for x in letters if x.table == name]
            if name not in plans:
                report(Retried(name, None, "failed"))
                failed += len(group)
                continue
            failed += _retry_null_keys(source, conn, schema, plans[name], group, report)
            group = [x for x in group if not _names_source_row(x)]
            by_key: dict[tuple[object, ...], list[int]] = {}
            for x in group:
                by_key.setdefault(decode_key(x.key), []).append(x.id)
            results = rewrite_keys(source, conn, plans[name], list(by_key))
            with conn.transaction(), conn.cursor() as cur:
                for r in results:
                    letter_ids = by_key[r.key]
                    if r.action == "failed":
                        failed += len(letter_ids)
                        deadletter.update_error(cur, schema, letter_ids, r.error or "", r.column)
                    else:
                        deadletter.mark(cur, schema, letter_ids, f"retried ({r.action})")
                    report(Retried(name, r.key, r.action, r.error))
        return RetryTotals(len(letters) - failed, failed)
    finally:
        conn.close()
        source.close()


def discard_letters(
    config: Config,
    *,
    ids: Sequence[int] = (),
    table: str | None = None,
    confirm: Callable[[int], object] | None = None,
) -> int:
    """Mark the open dead letters named by ``ids`` or ``table`` (every open one when
    neither is given) 'discarded': kept, but no longer counted as open.

    ``confirm`` is called with their number before anything changes and raises to
    abort. Returns how many were discarded.
    """
    schema = config.target.state_schema
    with connect(config.require_target(), autocommit=True) as conn:
        with conn.cursor() as cur:
            letters = [
                x
                for x in deadletter.fetch(cur, schema, ids=ids, table=table)
                if x.resolved_at is None
            ]
        if not letters:
            return 0  # nothing open among them: nothing to ask about
        if confirm is not None:
            confirm(len(letters))
        with conn.transaction(), conn.cursor() as cur:
            return deadletter.mark(cur, schema, [x.id for x in letters], "discarded")


def _names_source_row(letter: StoredLetter) -> bool:
    """A letter of a row whose key holds NULL: it names the row by its rowid."""
    return isinstance(letter.change, dict) and "source_row" in letter.change


def _retry_null_keys(
    source: sqlite3.Connection,
    conn: Connection,
    schema: str,
    plan: TablePlan,
    group: Sequence[StoredLetter],
    report: Callable[[Retried], None],
) -> int:
    """Letters of rows whose key held NULL are not retried by key (a NULL key finds no
    row, which would read as deleted): the table's letters are brought up to date
    from the source, resolving those of rows that have a key now or are gone.
    Returns how many stay open."""
    letters = [x for x in group if _names_source_row(x)]
    if not letters:
        return 0
    with conn.transaction(), conn.cursor() as cur:
        sync_null_keys(source, cur, schema, plan, "retry")
        still = set(deadletter.open_source_rows(cur, schema, plan.source.name).values())
    for x in letters:
        if x.id in still:
            report(Retried(x.table, tuple(x.key), "failed", x.error))
        else:
            report(Retried(x.table, tuple(x.key), "deleted"))
    return sum(1 for x in letters if x.id in still)
