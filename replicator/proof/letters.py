"""Dead letters for the people who fix them: list, show, retry after a fix, discard.

Each function opens what it needs from a :class:`Config`, closes it again and
returns plain values; the ``dead-letters`` commands only print them. Retrying
re-copies the rows from the source as they are now through the normal write
path (:func:`replicator.stream.repair.rewrite_keys`), so a row fixed in the
source, or deleted there, resolves its dead letters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from replicator.coerce import decode_key
from replicator.config import Config
from replicator.plan.tables import build_plans
from replicator.source.sqlite import open_source
from replicator.state import deadletter
from replicator.state.deadletter import StoredLetter
from replicator.stream.repair import rewrite_keys
from replicator.target.connection import connect


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
        letters = [x for x in letters if x.resolved_at is None]
        plans = {p.source.name: p for p in build_plans(source, conn, config)}
        failed = 0
        for name in sorted({x.table for x in letters}):
            group = [x for x in letters if x.table == name]
            if name not in plans:
                report(Retried(name, None, "failed"))
                failed += len(group)
                continue
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
