"""``replicator verify --changed``: only the rows changed since the last verify.

On a real SQLite file streamed into a real PostgreSQL by the daemon: after a
full verify, a change is found by the incremental one (also when the target
went wrong on exactly that row), an unchanged database is verified without
reading a row, the daemon keeps the log entries the next incremental verify
needs, and where it cannot be incremental (no earlier verify, a log pruned past
the mark, a row removed behind the replicator's back) it says so and verifies
the whole table.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
from harness import (
    DaemonThread,
    daemon_config,
    snapshot_config,
    sqlite_from_script,
    wait_until,
)

from replicator.proof.status import read_status, render
from replicator.proof.verify import Verifier, VerifyReport

ITEMS = """
CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL,
                    meta JSON, seen_at TIMESTAMP);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
INSERT INTO items SELECT i, 'item ' || i, i * 1.25, json_object('i', i),
                         '2024-01-01 00:00:00' FROM n;
"""


def _stream(path: Path, dsn: str, *, changes: bool = True) -> None:
    """Run the daemon until it streams (snapshot, triggers) and has applied every change."""
    with DaemonThread(daemon_config(path, dsn)) as daemon:
        daemon.wait_streaming()
        if changes:
            daemon.wait_caught_up()


def _app(path: Path, *statements: str) -> None:
    app = sqlite3.connect(path, isolation_level=None)
    for stmt in statements:
        app.execute(stmt)
    app.close()


def _verify(path: Path, dsn: str, *, changed: bool) -> VerifyReport:
    return Verifier(snapshot_config(path, dsn), settle_timeout=5).run(changed=changed)


def _items(report: VerifyReport):  # type: ignore[no-untyped-def]
    [verdict] = report.tables
    return verdict


def test_an_incremental_verify_reads_only_the_changed_rows(tmp_path: Path, pg_dsn: str) -> None:
    path = sqlite_from_script(tmp_path / "app.db", ITEMS)
    _stream(path, pg_dsn, changes=False)

    first = _verify(path, pg_dsn, changed=True)  # nothing to be incremental from
    assert first.ok, first.render()
    assert _items(first).method == "digest"
    assert "no earlier verify" in _items(first).scope_note

    unchanged = _verify(path, pg_dsn, changed=True)
    assert unchanged.ok, unchanged.render()
    verdict = _items(unchanged)
    assert (verdict.method, verdict.exact_rows, verdict.chunks) == ("changed", 0, 0)
    assert "compared the 0 row(s) changed since the verify" in unchanged.render()
    assert (verdict.source_rows, verdict.target_rows) == (300, 300)

    with DaemonThread(daemon_config(path, pg_dsn)) as daemon:
        daemon.wait_streaming()
        _app(
            path,
            "UPDATE items SET price = 99.5 WHERE id IN (7, 8)",
            "DELETE FROM items WHERE id = 9",
        )
        daemon.wait_caught_up()
        daemon.daemon.tail.last_prune = 0.0  # prune at its next turn: the log after
        _app(path, "INSERT INTO items VALUES (301, 'new', 1.0, '{}', '2024-02-02 00:00:00')")
        daemon.wait_caught_up()  # the verify's mark is kept all the same
        wait_until(lambda: not daemon.daemon.tail.pruning(), 10, "the prune to end")
    kept = sqlite3.connect(path).execute("SELECT count(*) FROM _replicator_changelog")
    assert kept.fetchone()[0] == 4
    # status says the log is held back, and why: it grows until the hold ends.
    held = read_status(daemon_config(path, pg_dsn))
    assert held.log_kept is not None and "verify --changed" in held.log_kept
    assert "change log: kept from position" in render(held)
    # The target goes wrong on a changed row after the daemon applied it.
    with psycopg.connect(pg_dsn, autocommit=True) as pg:
        pg.execute("UPDATE items SET price = 99.25 WHERE id = 8")

    report = _verify(path, pg_dsn, changed=True)

    verdict = _items(report)
    assert verdict.method == "changed"
    assert verdict.exact_rows == 4  # 7, 8, 9 and 301: no other row was read
    assert not report.ok
    assert [(ex["problem"], ex["key"]) for ex in verdict.examples] == [("different", [8])]
    assert "compared the 4 row(s) changed since the verify" in report.render()

    # The difference is not forgotten: the next --changed verifies the whole table.
    again = _verify(path, pg_dsn, changed=True)
    assert _items(again).method == "digest"
    assert "found differences" in _items(again).scope_note
    assert [ex["key"] for ex in _items(again).examples] == [[8]]


def test_a_row_removed_behind_the_replicators_back_makes_it_a_full_verify(
    tmp_path: Path, pg_dsn: str
) -> None:
    """The log does not name it, but the row counts no longer add up."""
    path = sqlite_from_script(tmp_path / "app.db", ITEMS)
    _stream(path, pg_dsn, changes=False)
    assert _verify(path, pg_dsn, changed=False).ok
    with psycopg.connect(pg_dsn, autocommit=True) as pg:
        pg.execute("DELETE FROM items WHERE id = 42")

    report = _verify(path, pg_dsn, changed=True)

    verdict = _items(report)
    assert "row counts do not add up" in verdict.scope_note
    assert verdict.method == "digest"
    assert [(ex["problem"], ex["key"]) for ex in verdict.examples] == [("missing", [42])]


def test_a_log_pruned_past_the_mark_makes_it_a_full_verify(tmp_path: Path, pg_dsn: str) -> None:
    path = sqlite_from_script(tmp_path / "app.db", ITEMS)
    _stream(path, pg_dsn, changes=False)
    assert _verify(path, pg_dsn, changed=False).ok
    _app(path, "UPDATE items SET name = 'renamed' WHERE id = 3")
    # Keeping nothing for verify: the daemon prunes what it applied.
    with DaemonThread(daemon_config(path, pg_dsn, stream__verify_keep_seconds=0)) as daemon:
        daemon.wait_streaming()
        daemon.wait_caught_up()
        _app(path, "UPDATE items SET name = 'renamed again' WHERE id = 4")
        daemon.wait_caught_up()
        daemon.daemon.tail.last_prune = 0.0  # prune at its next turn
        _app(path, "UPDATE items SET name = 'and again' WHERE id = 5")
        daemon.wait_caught_up()

    # The mark is recent, but the log was pruned past it: status claims no hold.
    assert read_status(daemon_config(path, pg_dsn)).log_kept is None
    report = _verify(path, pg_dsn, changed=True)

    assert report.ok, report.render()
    assert "pruned past" in _items(report).scope_note
    assert _items(report).method == "digest"
