"""Several consumers of one change log, on real SQLite files (no PostgreSQL here).

What the two-target streaming tests (test_two_targets.py) rest on: triggers
installed once and shared, the log pruned only below the slowest registered
consumer, registration checked against what was pruned from the log.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from replicator.source import changelog, consumers
from replicator.source.sqlite import describe_table

A = consumers.Identity("aaaa1111", "postgresql://u:***@prod/app", "replicator")
B = consumers.Identity("bbbb2222", "postgresql://u:***@staging/app", "replicator")


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(tmp_path / "app.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("CREATE TABLE u (id INTEGER PRIMARY KEY)")
    yield conn
    conn.close()


def install(
    conn: sqlite3.Connection,
    who: consumers.Identity,
    position: int | None,
    *tables: str,
    since: int | None = None,
) -> changelog.Installed:
    described = [describe_table(conn, t) for t in tables]
    return changelog.install_triggers(conn, described, consumer=who, position=position, since=since)


def cookie(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA schema_version").fetchone()[0])


def seqs(conn: sqlite3.Connection) -> list[int]:
    return [int(r[0]) for r in conn.execute(f'SELECT seq FROM "{changelog.CHANGELOG}"')]


def test_the_same_triggers_are_installed_once_whoever_installs_them(
    db: sqlite3.Connection,
) -> None:
    install(db, A, None, "t", "u")
    before = cookie(db)
    for _ in range(3):  # two replicators starting, planning again, over and over
        install(db, B, None, "t", "u")
        install(db, A, 0, "t", "u")
    assert cookie(db) == before  # nothing was dropped and created again
    db.execute("INSERT INTO t VALUES (1, 'x')")
    assert seqs(db) == [1]  # captured once, for both


def test_a_consumer_capturing_fewer_tables_keeps_the_others_triggers(
    db: sqlite3.Connection,
) -> None:
    install(db, A, None, "t", "u")
    install(db, B, None, "t")  # staging follows t only
    assert sorted(changelog.installed_triggers(db).values()) == ["t"] * 3 + ["u"] * 3
    assert changelog.unregister(db, A.consumer) == (True, 3)  # u's triggers went with A
    assert sorted(changelog.installed_triggers(db).values()) == ["t"] * 3


def test_the_log_is_pruned_only_below_the_slowest_consumer(db: sqlite3.Connection) -> None:
    install(db, A, None, "t")
    install(db, B, None, "t")
    db.executemany("INSERT INTO t VALUES (?, 'x')", [(i,) for i in range(1, 21)])

    assert changelog.prune(db, 20, 7, A.consumer) == 0  # B is at 0
    assert changelog.prune(db, 8, 7, B.consumer) == 8  # the floor is now B's 8
    assert seqs(db) == list(range(9, 21))
    assert [(c.consumer, c.position) for c in consumers.registered(db)] == [
        (B.consumer, 8),
        (A.consumer, 20),
    ]
    assert changelog.prune(db, 20, 7, B.consumer) == 12
    assert seqs(db) == []


def test_a_dropped_consumer_prunes_nothing_and_is_told(db: sqlite3.Connection) -> None:
    install(db, A, None, "t")
    install(db, B, None, "t")
    db.executemany("INSERT INTO t VALUES (?, 'x')", [(i,) for i in range(1, 11)])
    assert changelog.unregister(db, B.consumer) == (True, 0)
    with pytest.raises(changelog.NotRegistered):
        changelog.prune(db, 10, 100, B.consumer)
    assert len(seqs(db)) == 10
    assert changelog.prune(db, 10, 100, A.consumer) == 10


def test_registration_finds_a_log_that_no_longer_holds_the_consumers_changes(
    db: sqlite3.Connection,
) -> None:
    install(db, A, None, "t")
    install(db, B, None, "t")
    db.executemany("INSERT INTO t VALUES (?, 'x')", [(i,) for i in range(1, 11)])
    assert not install(db, B, 0, "t").lost  # nothing pruned yet
    changelog.unregister(db, B.consumer)
    changelog.prune(db, 10, 100, A.consumer)  # B is away and not registered
    again = install(db, B, 4, "t")
    assert again.lost and again.head == 10
    (b,) = [c for c in consumers.registered(db) if c.consumer == B.consumer]
    assert b.position == 10  # registered at the head it re-syncs from
    # A log removed and created again ends below the position: not a pruned log
    # (the daemon refuses such a file as rewound), registered no higher than its head.
    changelog.uninstall(db)
    assert consumers.registered(db) == []
    assert not install(db, A, 10, "t").lost
    assert [c.position for c in consumers.registered(db)] == [0]


def test_a_consumer_forgotten_while_running_is_checked_from_its_last_recorded_position(
    db: sqlite3.Connection,
) -> None:
    install(db, A, None, "t")
    install(db, B, None, "t")
    db.executemany("INSERT INTO t VALUES (?, 'x')", [(i,) for i in range(1, 11)])
    changelog.prune(db, 4, 100, B.consumer)  # the last position recorded for B: 4
    changelog.unregister(db, B.consumer)
    changelog.prune(db, 10, 100, A.consumer)  # 5..10 gone, maybe before B read them
    # B's target holds 10 durably, but only 4 was ever protected for it.
    assert install(db, B, 10, "t", since=4).lost
    # Registered (again), its recorded position is what the log was kept for.
    assert changelog.prune(db, 10, 100, A.consumer) == 0
    db.execute("INSERT INTO t VALUES (11, 'x')")
    assert not install(db, B, 10, "t", since=4).lost
    assert not install(db, A, 10, "t", since=0).lost  # a restart mid-prune is no loss
