"""The reverse direction (issue 18): PostgreSQL's changes back into the SQLite file.

After a forward replication (snapshot and stream by the daemon), the app writes
to PostgreSQL directly (psycopg sessions of its own, not the replicator's): the
reverse apply must leave SQLite identical to PostgreSQL by the independent
comparison of :mod:`oracle`, with every value in the text the SQLite column
used before (the tests read the stored text and its ``typeof``, not only the
value). Capture must work for a role that owns the tables and is no superuser,
must not capture the replicator's own writes (dual writes: both daemons
running converge without echo), and each change must be consumed exactly once
whatever point the process is killed at.
"""

from __future__ import annotations

import random
import re
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from faultproxy import FaultProxy
from harness import REPLICATOR, DaemonThread, daemon_config, daemon_env, wait_until
from obsutil import http_get, pg_exec, pg_rows, scrape, sqlite_exec
from oracle import assert_replicated
from prometheus_client import REGISTRY
from reverseutil import make_app_db, rows

from replicator.config import Config
from replicator.demo.sample import generate_reference_db
from replicator.errors import ConfigError, DataError, LockHeldError, TargetError
from replicator.plan.reverse import build_reverse_plans
from replicator.proof.cutover import Cutover
from replicator.proof.letters import retry_letters
from replicator.proof.rollback import Rollback
from replicator.proof.setup import remove_capture
from replicator.proof.status import read_status
from replicator.proof.verify import Verifier
from replicator.reverse import position as rpos
from replicator.reverse.apply import ReverseApplier
from replicator.reverse.daemon import ReverseDaemon
from replicator.reverse.setup import (
    plan_tables,
    read_reverse_status,
    reverse_init,
    reverse_uninstall,
)
from replicator.source.changelog import ORIGIN
from replicator.source.sqlite import open_source
from replicator.state.reverse import lock_key
from replicator.target.connection import connect


def forward(source: Path, dsn: str) -> Config:
    """Snapshot and stream forward until PostgreSQL holds the file (the state before
    cutover), then stop the forward daemon; the config for the reverse direction."""
    config = daemon_config(source, dsn)
    with DaemonThread(config) as daemon:
        daemon.wait_streaming(timeout=120)
    assert_replicated(source, dsn)
    return config


def reverse_once(config: Config) -> None:
    ReverseDaemon(config, once=True, install_signals=False, batch_size=50).run()


def app_writes(dsn: str) -> None:
    """What an application does after cutover: inserts, updates, deletes, a key change,
    JSON and timestamps; each statement its own transaction."""
    pg_exec(
        dsn,
        "INSERT INTO accounts (email, active, created_at, seen_at, settings, balance, score) "
        "VALUES ('new@example.com', true, '2026-03-04 05:06:07+00', "
        '\'2026-03-04 05:06:07.25+00\', \'{"b": [1, 2], "a": {"z": null}}\', 19.90, 0.1)',
        "UPDATE accounts SET active = NOT active, balance = 7, seen_at = NULL WHERE id = 3",
        'UPDATE accounts SET settings = \'{"theme": "light"}\' WHERE id = 4',
        "UPDATE tags SET tag = 'renamed', pinned = false WHERE account_id = 5",
        "UPDATE tags SET account_id = 21 WHERE account_id = 6",
        "DELETE FROM tags WHERE account_id = 7",
        "DELETE FROM accounts WHERE id = 7",
        "INSERT INTO tags VALUES (21, 'fresh', true)",
        "INSERT INTO accounts (email, active, created_at) "
        "VALUES ('gone@example.com', false, now())",
        "DELETE FROM accounts WHERE email = 'gone@example.com'",
    )


# -- values back in the app's own forms ----------------------------------------------


def test_app_writes_in_postgresql_come_back_in_the_columns_own_text(
    tmp_path: Path, pg_dsn: str
) -> None:
    source = make_app_db(tmp_path / "app.db")
    config = forward(source, pg_dsn)
    reverse_init(config, out=lambda _line: None)
    app_writes(pg_dsn)
    reverse_once(config)

    assert_replicated(source, pg_dsn)
    new = rows(
        source,
        "SELECT id, active, typeof(active), created_at, seen_at, settings, balance, "
        "typeof(balance), score FROM accounts WHERE email = 'new@example.com'",
    )
    assert new == [
        (
            21,
            1,
            "integer",
            "2026-03-04 05:06:07",  # the column's datetime('now') style
            "2026-03-04T05:06:07.250Z",  # the column's API style, milliseconds kept
            '{"a": {"z": null}, "b": [1, 2]}',  # jsonb's text: keys sorted, its spacing
            19.9,
            "real",
            0.1,
        )
    ]
    assert rows(
        source, "SELECT active, balance, typeof(balance), seen_at FROM accounts WHERE id=3"
    ) == [(0, 7, "integer", None)]
    assert rows(source, "SELECT settings FROM accounts WHERE id = 4") == [('{"theme": "light"}',)]
    assert rows(source, "SELECT count(*) FROM accounts WHERE id = 7 OR email LIKE 'gone%'") == [
        (0,)
    ]
    tags = dict(((a, t), p) for a, t, p in rows(source, "SELECT * FROM tags"))
    assert tags[(5, "renamed")] == "false"  # the column's 'true'/'false' spelling
    assert tags[(21, "fresh")] == "true"
    assert (21, "t6") in tags and (6, "t6") not in tags and (5, "t5") not in tags
    assert rows(source, "SELECT seq FROM sqlite_sequence WHERE name = 'accounts'") == [(21,)]
    # Nothing the reverse apply wrote went into the forward change log.
    assert rows(source, "SELECT count(*) FROM _replicator_changelog") == [(0,)]
    assert read_reverse_status(config).in_sync

    report = Rollback(config, out=lambda _line: None).run()
    assert report.go, report.render()
    recorded = pg_rows(pg_dsn, "SELECT value->>'go' FROM replicator.meta WHERE key = 'rollback'")
    assert recorded == [("true",)]
    # Rollback moved SQLite's AUTOINCREMENT mark past id 22, which PostgreSQL handed
    # out (and the app deleted): SQLite never gives that id to a new row.
    assert rows(source, "SELECT seq FROM sqlite_sequence WHERE name = 'accounts'") == [(22,)]


def test_rollback_is_no_go_while_changes_wait_or_a_row_is_refused(
    tmp_path: Path, pg_dsn: str
) -> None:
    source = make_app_db(tmp_path / "app.db", accounts=5)
    config = forward(source, pg_dsn)
    reverse_init(config, out=lambda _line: None)
    pg_exec(pg_dsn, "UPDATE accounts SET score = 'NaN' WHERE id = 2")
    report = Rollback(config, out=lambda _line: None, timeout=1).run()
    failed = {c.name for c in report.checks if not c.ok}
    assert not report.go and "reverse lag zero" in failed, report.render()

    reverse_once(config)  # SQLite cannot hold NaN: a dead letter, the rest applied
    letters = pg_rows(
        pg_dsn,
        "SELECT table_name, key, column_name FROM replicator.dead_letters "
        "WHERE direction = 'reverse' AND resolved_at IS NULL",
    )
    assert letters == [("accounts", [2], "score")]
    # A row SQLite refused is not a row held from PostgreSQL: the forward status
    # does not count it; its reverse line does.
    status = read_status(config)
    assert status.held == 0 and status.reverse is not None
    assert "1 open reverse dead letter(s)" in status.reverse
    # Re-copying it from SQLite would overwrite PostgreSQL's newer row: refused.
    (letter_id,) = pg_rows(pg_dsn, "SELECT id FROM replicator.dead_letters")[0]
    with pytest.raises(DataError, match="reverse direction"):
        retry_letters(config, ids=[letter_id], report=lambda _r: None)
    report = Rollback(config, out=lambda _line: None, timeout=1).run()
    failed = {c.name for c in report.checks if not c.ok}
    assert failed == {"verify", "no reverse dead letters"}, report.render()

    pg_exec(pg_dsn, "UPDATE accounts SET score = 2.5 WHERE id = 2")
    reverse_once(config)  # the next change of the row heals it
    report = Rollback(config, out=lambda _line: None).run()
    assert report.go, report.render()

    # A refused row that PostgreSQL then deletes: gone on both sides, the letter heals.
    pg_exec(pg_dsn, "UPDATE accounts SET score = 'NaN' WHERE id = 3")
    reverse_once(config)
    assert read_reverse_status(config).open_dead_letters == 1
    pg_exec(pg_dsn, "DELETE FROM tags WHERE account_id = 3", "DELETE FROM accounts WHERE id = 3")
    reverse_once(config)
    assert read_reverse_status(config).open_dead_letters == 0
    report = Rollback(config, out=lambda _line: None).run()
    assert report.go, report.render()


def test_rollback_is_no_go_when_postgresql_is_written_after_the_table_was_verified(
    tmp_path: Path, pg_dsn: str
) -> None:
    """The application writes once `verify` has passed (its writes were not stopped):
    a GO then would point it back at a SQLite file that lacks that write."""
    source = make_app_db(tmp_path / "app.db", accounts=5)
    config = forward(source, pg_dsn)
    reverse_init(config, out=lambda _line: None)

    def out(line: str) -> None:
        if line.startswith("[PASS] verify"):
            pg_exec(pg_dsn, "UPDATE accounts SET score = 9.75 WHERE id = 1")

    report = Rollback(config, out=out, timeout=1).run()
    failed = [c for c in report.checks if not c.ok]
    assert not report.go, report.render()
    assert [c.name for c in failed] == ["PostgreSQL not written"], report.render()
    assert "1 change(s) captured, 1 not yet in SQLite" in failed[0].detail
    assert rows(source, "SELECT score FROM accounts WHERE id = 1") == [(0.25,)]
    assert pg_rows(pg_dsn, "SELECT count(*) FROM replicator.meta WHERE key = 'rollback'") == [(0,)]

    # Applied, and the application stopped: GO.
    reverse_once(config)
    report = Rollback(config, out=lambda _line: None, timeout=1).run()
    assert report.go, report.render()
    assert rows(source, "SELECT score FROM accounts WHERE id = 1") == [(9.75,)]


def test_a_chain_of_key_changes_on_a_unique_column_comes_back_a_swap_is_a_dead_letter(
    tmp_path: Path, pg_dsn: str
) -> None:
    """5 -> 105 then 4 -> 5 in PostgreSQL: the batch writes 105 before 5 (the order
    of each key's last change), and 105 still meets SQLite's old row 5 on the UNIQUE
    email. Tried again once row 5 is written, it fits. Two rows swapping their
    emails is a cycle no order resolves: both are dead letters, and rollback says so."""
    source = make_app_db(tmp_path / "app.db", accounts=8)
    config = forward(source, pg_dsn)
    reverse_init(config, out=lambda _line: None)
    pg_exec(
        pg_dsn,
        "DELETE FROM tags WHERE account_id IN (4, 5)",
        "UPDATE accounts SET id = 105 WHERE id = 5",
        "UPDATE accounts SET id = 5 WHERE id = 4",
    )
    reverse_once(config)
    assert pg_rows(pg_dsn, "SELECT count(*) FROM replicator.dead_letters") == [(0,)]
    assert rows(source, "SELECT id, email FROM accounts WHERE id IN (4, 5, 105) ORDER BY id") == [
        (5, "user4@example.com"),
        (105, "user5@example.com"),
    ]
    assert_replicated(source, pg_dsn)

    with psycopg.connect(pg_dsn, autocommit=True) as conn, conn.transaction():
        conn.execute("UPDATE accounts SET email = 'swap' WHERE id = 6")
        conn.execute("UPDATE accounts SET email = 'user6@example.com' WHERE id = 7")
        conn.execute("UPDATE accounts SET email = 'user7@example.com' WHERE id = 6")
    reverse_once(config)
    letters = pg_rows(
        pg_dsn,
        "SELECT key FROM replicator.dead_letters WHERE resolved_at IS NULL ORDER BY key",
    )
    assert letters == [([6],), ([7],)]
    report = Rollback(config, out=lambda _line: None, timeout=1).run()
    assert not report.go, report.render()


def test_an_open_reverse_dead_letter_is_shown_not_held_by_the_forward_verify_and_cutover(
    tmp_path: Path, pg_dsn: str
) -> None:
    """A reverse letter is a write made in PostgreSQL that SQLite refused. Once the
    team is back on SQLite (a rollback forced past its NO-GO) and the row is
    written there again, the forward verify compares the row itself: it is not a
    row held from PostgreSQL, nor a blocker of the next cutover; it is listed."""
    source = make_app_db(tmp_path / "app.db", accounts=5)
    config = forward(source, pg_dsn)
    reverse_init(config, out=lambda _line: None)
    pg_exec(pg_dsn, "UPDATE accounts SET score = 'NaN' WHERE id = 2")
    reverse_once(config)
    # While the row differs, it is a difference, not a dead-lettered ("held") row.
    report = Verifier(config).run()
    (accounts,) = [t for t in report.tables if t.table == "accounts"]
    assert (accounts.different, accounts.dead_lettered) == (1, 0), report.render()
    assert (report.open_dead_letters, report.open_reverse_dead_letters) == (0, 1)
    assert not report.ok

    sqlite_exec(source, "UPDATE accounts SET score = 2.5 WHERE id = 2")
    with DaemonThread(config) as daemon:
        daemon.wait_streaming(timeout=60)
        wait_until(
            lambda: pg_rows(pg_dsn, "SELECT score FROM accounts WHERE id = 2") == [(2.5,)],
            30,
            "the forward stream to carry the row",
        )
        report = Verifier(config).run()
        assert report.ok, report.render()
        assert "1 open reverse dead letter(s)" in report.render()
        cut = Cutover(config, dry_run=True, out=lambda _line: None).run()
    assert cut.go, cut.render()
    assert "1 open reverse dead letter(s), not blocking" in cut.render()
    # The forward daemon's held rows (metrics, /readyz) did not count it either.
    assert read_status(config).held == 0


def test_reverse_init_before_the_snapshot_is_a_clear_error(tmp_path: Path, pg_dsn: str) -> None:
    source = make_app_db(tmp_path / "app.db", accounts=2)
    with pytest.raises(TargetError, match=r"PostgreSQL has no table public\.\w+ \(2 missing\)"):
        reverse_init(daemon_config(source, pg_dsn), out=lambda _line: None)


def test_reverse_uninstall_leaves_no_object_of_ours_in_the_file_after_the_forward_one(
    tmp_path: Path, pg_dsn: str
) -> None:
    """The runbook's order: `uninstall` at cutover, the reverse stream (which creates
    the origin table again), rollback, `reverse uninstall`: the application's file
    is as it was. With forward triggers still there, the origin table they read stays."""
    source = make_app_db(tmp_path / "app.db", accounts=3)
    config = forward(source, pg_dsn)
    reverse_init(config, out=lambda _line: None)
    pg_exec(pg_dsn, "UPDATE accounts SET score = 1.25 WHERE id = 1")
    reverse_once(config)
    reverse_uninstall(config, out=lambda _line: None)
    assert ORIGIN in tables_of(source)  # the forward triggers read it
    sqlite_exec(source, "UPDATE accounts SET score = 1.5 WHERE id = 1")  # still works

    remove_capture(config, everything=True)
    reverse_init(config, out=lambda _line: None)
    daemon, thread = _start_reverse(config)
    try:  # uninstalled under a running daemon, its next batch would recreate the position
        with pytest.raises(LockHeldError, match="stop it"):
            reverse_uninstall(config, out=lambda _line: None)
    finally:
        daemon.stop.set()
        thread.join(30)
    pg_exec(pg_dsn, "UPDATE accounts SET score = 2.25 WHERE id = 2")
    reverse_once(config)
    reverse_uninstall(config, out=lambda _line: None)
    assert tables_of(source) == {"accounts", "tags", "sqlite_sequence"}
    assert rows(source, "SELECT score FROM accounts WHERE id = 2") == [(2.25,)]


def test_a_capture_that_no_longer_matches_the_configuration_stops_the_daemon(
    tmp_path: Path, pg_dsn: str
) -> None:
    """`reverse init` captured accounts and tags; the daemon now runs with tags
    excluded. Its waiting change would be consumed with nowhere to go: it refuses
    to start instead, and `reverse init` with the new configuration drops the
    stray trigger and, saying so, its waiting change."""
    source = make_app_db(tmp_path / "app.db", accounts=3)
    config = forward(source, pg_dsn)
    reverse_init(config, out=lambda _line: None)
    pg_exec(pg_dsn, "UPDATE tags SET pinned = false WHERE account_id = 1")
    narrow = daemon_config(source, pg_dsn, tables__exclude=["sqlite_*", "_replicator_*", "tags"])
    with pytest.raises(
        ConfigError, match=r"captured, not replicated: public\.tags, changes of tags"
    ):
        reverse_once(narrow)
    assert read_reverse_status(config).pending == 1  # nothing consumed

    said: list[str] = []
    reverse_init(narrow, out=said.append)
    assert (
        said[-1] == "forgot 1 waiting change(s) of tables this configuration no longer replicates"
    )
    assert pg_rows(
        pg_dsn,
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'tags'::regclass AND NOT tgisinternal",
    ) == [(0,)]
    pg_exec(pg_dsn, "UPDATE accounts SET score = 3.5 WHERE id = 1")
    reverse_once(narrow)
    assert rows(source, "SELECT score FROM accounts WHERE id = 1") == [(3.5,)]

    # The other way: a table replicated but not captured (init ran with the narrow one).
    with pytest.raises(ConfigError, match=r"replicated, not captured: public\.tags"):
        reverse_once(config)
    # `reverse status` does not call that in sync, though nothing waits.
    status = read_reverse_status(config, check_capture=True)
    assert status.pending == 0 and status.open_dead_letters == 0 and not status.in_sync
    assert "replicated, not captured: public.tags" in status.verdict
    assert read_reverse_status(narrow, check_capture=True).in_sync
    # A write to it would pass every other check of rollback unseen: NO-GO, named.
    pg_exec(pg_dsn, "UPDATE tags SET pinned = true WHERE account_id = 2")
    report = Rollback(config, out=lambda _line: None, timeout=1).run()
    (installed,) = [c for c in report.checks if c.name == "reverse capture installed"]
    assert not report.go and not installed.ok, report.render()
    assert "replicated, not captured: public.tags" in installed.detail


def tables_of(source: Path) -> set[str]:
    return {r[0] for r in rows(source, "SELECT name FROM sqlite_schema WHERE type = 'table'")}


# -- capture without superuser -------------------------------------------------------


@pytest.fixture
def owner_dsn(pg_dsn: str) -> Iterator[str]:
    """A login role that is no superuser and owns the database (so it can create the
    state schema and the tables), and a second role the app writes with."""
    suffix = random.randrange(1 << 30)
    owner, writer = f"rv_owner_{suffix}", f"rv_app_{suffix}"
    dbname = psycopg.conninfo.conninfo_to_dict(pg_dsn)["dbname"]
    pg_exec(
        pg_dsn,
        f"CREATE ROLE {owner} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE",
        f"CREATE ROLE {writer} LOGIN NOSUPERUSER",
        f'ALTER DATABASE "{dbname}" OWNER TO {owner}',
        f"ALTER SCHEMA public OWNER TO {owner}",
    )
    yield psycopg.conninfo.make_conninfo(pg_dsn, user=owner)
    pg_exec(
        pg_dsn,
        f'ALTER DATABASE "{dbname}" OWNER TO postgres',
        f"REASSIGN OWNED BY {owner}, {writer} TO postgres",
        f"DROP OWNED BY {owner}, {writer}",
        f"DROP ROLE {owner}",
        f"DROP ROLE {writer}",
    )


def test_capture_needs_no_superuser_and_no_privilege_of_the_app_on_the_state_schema(
    tmp_path: Path, pg_dsn: str, owner_dsn: str
) -> None:
    source = make_app_db(tmp_path / "app.db", accounts=5)
    config = forward(source, owner_dsn)  # the tables are created by (so owned by) the owner
    owner = psycopg.conninfo.conninfo_to_dict(owner_dsn)["user"]
    assert pg_rows(pg_dsn, "SELECT rolsuper FROM pg_roles WHERE rolname = %s", (owner,)) == [
        (False,)
    ]
    reverse_init(config, out=lambda _line: None)
    writer = owner.replace("rv_owner_", "rv_app_")
    pg_exec(
        owner_dsn,
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON accounts, tags TO {writer}",
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {writer}",
    )
    app_dsn = psycopg.conninfo.make_conninfo(pg_dsn, user=writer)
    pg_exec(app_dsn, "UPDATE accounts SET email = 'changed@example.com' WHERE id = 1")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        pg_exec(app_dsn, "SELECT * FROM replicator.reverse_changes")
    reverse_once(config)
    assert rows(source, "SELECT email FROM accounts WHERE id = 1") == [("changed@example.com",)]
    assert_replicated(source, pg_dsn)


# -- exactly once --------------------------------------------------------------------


def test_a_batch_committed_in_sqlite_but_not_deleted_in_postgresql_is_not_applied_again(
    tmp_path: Path, pg_dsn: str
) -> None:
    source = make_app_db(tmp_path / "app.db", accounts=5)
    config = forward(source, pg_dsn)
    reverse_init(config, out=lambda _line: None)
    pg_exec(pg_dsn, "UPDATE accounts SET balance = balance + 1 WHERE id <= 3")
    # A process that dies right after the SQLite commit: changes still in PostgreSQL.
    sqlite = open_source(source)
    with connect(pg_dsn, autocommit=True) as conn:
        applier = ReverseApplier(
            build_reverse_plans(sqlite, plan_tables(config, conn, sqlite)), "replicator"
        )
        changes = applier.read(conn, 100)
        applier.apply(conn, sqlite, changes)
    sqlite.close()
    assert pg_rows(pg_dsn, "SELECT count(*) FROM replicator.reverse_changes") == [(3,)]

    reverse_once(config)
    assert pg_rows(pg_dsn, "SELECT count(*) FROM replicator.reverse_changes") == [(0,)]
    sqlite = open_source(source, readonly=True)
    position = rpos.load(sqlite)
    sqlite.close()
    assert (position.batches, position.changes) == (1, 3)  # the restart applied nothing again
    assert_replicated(source, pg_dsn)


def _pg_writer(dsn: str, stop: threading.Event, count: list[int]) -> None:
    rng = random.Random(7)
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.is_set():
            i = rng.randrange(1, 40)
            op = rng.random()
            with conn.transaction():
                if op < 0.4:
                    conn.execute(
                        "INSERT INTO accounts"
                        " (email, active, created_at, seen_at, settings, balance)"
                        " VALUES (%s, %s, now(), clock_timestamp(), %s, %s)"
                        " ON CONFLICT (email) DO UPDATE SET balance = accounts.balance + 1",
                        (f"w{i}@example.com", i % 2 == 0, f'{{"i": {i}}}', i / 8),
                    )
                elif op < 0.8:
                    conn.execute(
                        "UPDATE accounts SET seen_at = clock_timestamp(), active = NOT active,"
                        " settings = jsonb_build_object('k', %s) WHERE id = %s",
                        (i, i),
                    )
                else:
                    conn.execute("DELETE FROM tags WHERE account_id = %s", (i,))
                    conn.execute("DELETE FROM accounts WHERE email = %s", (f"w{i}@example.com",))
            count[0] += 1
            time.sleep(0.002)


def test_the_reverse_daemon_killed_at_random_points_applies_every_change_once(
    tmp_path: Path, pg_dsn: str
) -> None:
    source = make_app_db(tmp_path / "app.db")
    config = forward(source, pg_dsn)
    reverse_init(config, out=lambda _line: None)
    env = daemon_env(source, pg_dsn)
    stop, count = threading.Event(), [0]
    writer = threading.Thread(target=_pg_writer, args=(pg_dsn, stop, count), daemon=True)
    writer.start()
    rng = random.Random(18)
    kills = 0
    try:
        for _ in range(8):
            proc = subprocess.Popen(
                [str(REPLICATOR), "reverse", "run", "--batch-size", "7", "--poll-interval", "0.1"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(rng.uniform(0.3, 1.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            kills += 1
    finally:
        stop.set()
        writer.join(30)
    assert count[0] > 50 and kills == 8
    reverse_once(config)  # then a clean run finishes what is left

    captured = pg_rows(
        pg_dsn,
        "SELECT last_value FROM pg_sequences WHERE schemaname || '.' || sequencename = "
        "pg_get_serial_sequence('replicator.reverse_changes', 'seq')",
    )[0][0]
    assert pg_rows(pg_dsn, "SELECT count(*) FROM replicator.reverse_changes") == [(0,)]
    sqlite = open_source(source, readonly=True)
    position = rpos.load(sqlite)
    sqlite.close()
    # Every change captured was consumed once: none twice (a batch applied again
    # after a kill would count twice), none lost.
    assert position.changes == captured
    assert_replicated(source, pg_dsn)
    assert rows(source, "SELECT count(*) FROM _replicator_changelog") == [(0,)]
    report = Rollback(config, out=lambda _line: None).run()
    assert report.go, report.render()


# -- dual writes ---------------------------------------------------------------------


def test_both_daemons_running_converge_without_echo(tmp_path: Path, pg_dsn: str) -> None:
    source = make_app_db(tmp_path / "app.db")
    config = forward(source, pg_dsn)
    reverse_init(config, out=lambda _line: None)
    reverse = ReverseDaemon(config, install_signals=False, poll_interval=0.1)
    thread = threading.Thread(target=reverse.run, daemon=True)
    with DaemonThread(config) as daemon:
        daemon.wait_streaming(timeout=120)
        thread.start()
        # The app writes both sides during a migration's dual-write window: SQLite
        # rows 1-10, PostgreSQL rows 11-20 (disjoint rows, as dual writes must be).
        for n in range(30):
            sqlite_exec(
                source,
                (
                    "UPDATE accounts SET balance = balance + 1, seen_at = ? WHERE id = ?",
                    (f"2026-05-01T00:00:{n:02d}.000Z", n % 10 + 1),
                ),
            )
            pg_exec(
                pg_dsn,
                f"UPDATE accounts SET score = score + 1, settings = '{{\"n\": {n}}}' "
                f"WHERE id = {n % 10 + 11}",
            )
        pg_exec(pg_dsn, "INSERT INTO tags VALUES (11, 'from-pg', true)")
        sqlite_exec(source, "INSERT INTO tags VALUES (1, 'from-sqlite', 'true')")

        def settled() -> bool:
            status = read_reverse_status(config)
            applied = pg_rows(pg_dsn, "SELECT seq FROM replicator.stream_position")[0][0]
            head = rows(
                source, "SELECT seq FROM sqlite_sequence WHERE name = '_replicator_changelog'"
            )[0][0]
            return status.pending == 0 and applied >= head

        wait_until(settled, 60, "both directions to settle")
        time.sleep(1.0)  # an echo, if any, would show up as new changes now
        assert settled()
        applied_forward = pg_rows(pg_dsn, "SELECT changes_applied FROM replicator.stream_position")
    reverse.stop.set()
    thread.join(30)
    assert not thread.is_alive()

    # Forward carried exactly the 31 SQLite writes; reverse exactly the 31 PostgreSQL ones.
    assert applied_forward == [(31,)]
    sqlite = open_source(source, readonly=True)
    assert rpos.load(sqlite).changes == 31
    sqlite.close()
    assert rows(source, "SELECT balance, seen_at FROM accounts WHERE id = 1") == [
        (4.5, "2026-05-01T00:00:20.000Z")
    ]
    assert rows(source, "SELECT score, settings FROM accounts WHERE id = 11") == [
        (5.75, '{"n": 20}')
    ]
    assert_replicated(source, pg_dsn)


# -- the reference application ---------------------------------------------------------


def test_reference_app_writes_in_postgresql_come_back_in_its_own_styles(
    tmp_path: Path, refapp_pg_dsn: str
) -> None:
    """The reference app's real schemas (its PostgreSQL schema made by its own
    migrations): ``tweets.created_at`` holds the X API's ``...T...Z`` style,
    ``tweets.updated_at`` SQLite's ``datetime('now')`` style; both come back so."""
    source = tmp_path / "app.db"
    generate_reference_db(source, artifacts=300, seed=5, bad_values=False)
    config = forward(source, refapp_pg_dsn)
    reverse_init(config, out=lambda _line: None)
    keys = [r[0] for r in pg_rows(refapp_pg_dsn, "SELECT tweet_id FROM tweets ORDER BY 1 LIMIT 20")]
    pg_exec(
        refapp_pg_dsn,
        "UPDATE tweets SET created_at = created_at + interval '1.5 seconds', updated_at = now(), "
        'like_count = like_count + 1, tags = \'["edited", "pg"]\' WHERE tweet_id IN ('
        + ", ".join(f"'{k}'" for k in keys)
        + ")",
        "DELETE FROM discovery_labels WHERE id IN (SELECT id FROM discovery_labels LIMIT 5)",
    )
    reverse_once(config)
    assert_replicated(source, refapp_pg_dsn)
    marks = ", ".join("?" for _ in keys)
    conn = sqlite3.connect(source)
    try:
        changed = conn.execute(
            f"SELECT created_at, updated_at, tags FROM tweets WHERE tweet_id IN ({marks})", keys
        ).fetchall()
    finally:
        conn.close()
    assert len(changed) == 20
    for created_at, updated_at, tags in changed:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", created_at), created_at
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?", updated_at), updated_at
        assert tags == '["edited", "pg"]'
    report = Rollback(config, out=lambda _line: None).run()
    assert report.go, report.render()


def test_reverse_metrics_and_health_are_served_on_their_own_address(
    tmp_path: Path, pg_dsn: str
) -> None:
    source = make_app_db(tmp_path / "app.db", accounts=5)
    config = forward(source, pg_dsn)
    reverse_init(config, out=lambda _line: None)
    daemon = ReverseDaemon(
        config, install_signals=False, poll_interval=0.1, metrics_address="127.0.0.1:0"
    )
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: daemon.server is not None and daemon.applier is not None, 30, "start")
        assert daemon.server is not None
        port = daemon.server.port
        before = scrape(port).or0("replicator_reverse_changes_applied_total", table="accounts")
        pg_exec(pg_dsn, "UPDATE accounts SET score = score * 2 WHERE id <= 4")
        wait_until(lambda: read_reverse_status(config).pending == 0, 30, "the changes applied")
        wait_until(
            lambda: (
                scrape(port).or0("replicator_reverse_changes_applied_total", table="accounts")
                == before + 4
            ),
            30,
            "the counter to move",
        )
        now = scrape(port)
        assert now.get("replicator_reverse_lag_changes") == 0
        assert now.get("replicator_reverse_batches_total") >= 1
        assert http_get(port, "/healthz").status == 200
    finally:
        daemon.stop.set()
        thread.join(30)
    assert not thread.is_alive()


# -- retries -------------------------------------------------------------------------


def _start_reverse(config: Config) -> tuple[ReverseDaemon, threading.Thread]:
    daemon = ReverseDaemon(config, install_signals=False, poll_interval=0.1)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    wait_until(lambda: daemon.applier is not None, 30, "the reverse daemon to start")
    return daemon, thread


def _retries(kind: str) -> float:
    return REGISTRY.get_sample_value("replicator_retries_total", {"kind": kind}) or 0.0


def test_a_locked_sqlite_file_and_a_killed_session_are_retried_not_fatal(
    tmp_path: Path, pg_dsn: str
) -> None:
    source = make_app_db(tmp_path / "app.db", accounts=5)
    forward(source, pg_dsn)
    config = daemon_config(source, pg_dsn, source__busy_timeout_ms=100)
    reverse_init(config, out=lambda _line: None)
    busy_before = _retries("reverse_sqlite_busy")
    lost_before = _retries("reverse_connection")
    daemon, thread = _start_reverse(config)
    try:
        # The application holds SQLite's write lock longer than the busy timeout.
        app = sqlite3.connect(source, isolation_level=None)
        app.execute("BEGIN IMMEDIATE")
        pg_exec(pg_dsn, "UPDATE accounts SET email = 'locked@example.com' WHERE id = 1")
        wait_until(lambda: _retries("reverse_sqlite_busy") > busy_before, 30, "a busy retry")
        app.execute("COMMIT")
        app.close()
        wait_until(lambda: read_reverse_status(config).pending == 0, 60, "the change applied")
        assert rows(source, "SELECT email FROM accounts WHERE id = 1") == [("locked@example.com",)]

        # Its PostgreSQL session is terminated (a failover, an admin): it reconnects.
        pg_exec(
            pg_dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
            f"AND objid = ({lock_key('replicator')}::bigint & 4294967295)::oid "
            "AND pid <> pg_backend_pid()",
        )
        pg_exec(pg_dsn, "UPDATE accounts SET email = 'reconnected@example.com' WHERE id = 2")
        wait_until(lambda: read_reverse_status(config).pending == 0, 60, "applied after it")
        assert _retries("reverse_connection") > lost_before
        assert thread.is_alive()
    finally:
        daemon.stop.set()
        thread.join(30)
    assert rows(source, "SELECT email FROM accounts WHERE id = 2") == [("reconnected@example.com",)]
    assert_replicated(source, pg_dsn)


def test_postgresql_unreachable_for_a_while_is_retried_not_fatal(
    tmp_path: Path, pg_dsn: str
) -> None:
    """The server goes away and refuses connections for a while (a restart): the
    reverse daemon's reconnects fail, and it keeps trying until it is back."""
    source = make_app_db(tmp_path / "app.db", accounts=3)
    forward(source, pg_dsn)
    with FaultProxy(urlsplit(pg_dsn).port or 5432, lifetime=300) as proxy:
        config = daemon_config(source, proxy.dsn(pg_dsn))
        reverse_init(config, out=lambda _line: None)
        before = _retries("reverse_connection")
        daemon, thread = _start_reverse(config)
        try:
            pg_exec(pg_dsn, "UPDATE accounts SET score = 1.25 WHERE id = 1")
            wait_until(
                lambda: rows(source, "SELECT score FROM accounts WHERE id = 1") == [(1.25,)],
                30,
                "the first change",
            )
            proxy.cut()
            wait_until(lambda: proxy.refused >= 2, 60, "two refused reconnects")
            assert thread.is_alive()
            pg_exec(pg_dsn, "UPDATE accounts SET score = 2.25 WHERE id = 1")
            proxy.restore()
            wait_until(
                lambda: rows(source, "SELECT score FROM accounts WHERE id = 1") == [(2.25,)],
                60,
                "the change made while it was away",
            )
            assert thread.is_alive()
        finally:
            daemon.stop.set()
            thread.join(30)
    assert _retries("reverse_connection") >= before + 2


def test_a_truncate_in_postgresql_empties_the_sqlite_table_before_later_rows(
    tmp_path: Path, pg_dsn: str
) -> None:
    source = make_app_db(tmp_path / "app.db", accounts=6)
    config = forward(source, pg_dsn)
    reverse_init(config, out=lambda _line: None)
    pg_exec(
        pg_dsn,
        "UPDATE tags SET pinned = false WHERE account_id = 1",
        "TRUNCATE tags",
        "INSERT INTO tags VALUES (2, 'after', true)",
    )
    reverse_once(config)
    assert rows(source, "SELECT * FROM tags") == [(2, "after", "true")]
    assert_replicated(source, pg_dsn)


def test_a_table_keyed_by_its_rowid_and_a_text_key_come_back(tmp_path: Path, pg_dsn: str) -> None:
    source = tmp_path / "app.db"
    conn = sqlite3.connect(source, isolation_level=None)
    conn.executescript(
        """
        PRAGMA journal_mode = WAL;
        CREATE TABLE notes (body TEXT, at DATETIME);
        CREATE TABLE settings (name TEXT PRIMARY KEY, value JSON, enabled BOOLEAN)
            WITHOUT ROWID;
        INSERT INTO notes VALUES ('one', '2025-01-01T00:00:00+00:00'),
                                 ('two', '2025-01-02T00:00:00+00:00');
        INSERT INTO settings VALUES ('theme', '{"dark":true}', 't'), ('lang', '"en"', 'f');
        """
    )
    conn.close()
    config = forward(source, pg_dsn)
    reverse_init(config, out=lambda _line: None)
    pg_exec(
        pg_dsn,
        "INSERT INTO notes (body, at) VALUES ('three', '2026-01-03 04:05:06+00')",
        "UPDATE notes SET body = 'ONE' WHERE body = 'one'",
        "DELETE FROM notes WHERE body = 'two'",
        "UPDATE settings SET name = 'locale', enabled = true WHERE name = 'lang'",
        "INSERT INTO settings VALUES ('beta', '[1, 2.50]', false)",
    )
    reverse_once(config)
    assert rows(source, "SELECT rowid, body, at FROM notes ORDER BY rowid") == [
        (1, "ONE", "2025-01-01T00:00:00+00:00"),
        (3, "three", "2026-01-03T04:05:06+00:00"),
    ]
    assert rows(source, "SELECT name, value, enabled FROM settings ORDER BY name") == [
        ("beta", "[1, 2.50]", "f"),
        ("locale", '"en"', "t"),
        ("theme", '{"dark":true}', "t"),
    ]
    assert_replicated(source, pg_dsn)


def test_a_float4_column_comes_back_as_its_short_decimal(tmp_path: Path, pg_dsn: str) -> None:
    """PostgreSQL `real` (float4) holds 0.1 as the float nearest in 24 bits; read as
    a Python float it is 0.10000000149011612. The app wrote 0.1 and reads it back."""
    source = tmp_path / "app.db"
    sqlite_exec(source, "CREATE TABLE m (id INTEGER PRIMARY KEY, w REAL, v)")
    sqlite_exec(source, "INSERT INTO m VALUES (1, 0.5, 2.5)")
    pg_exec(pg_dsn, "CREATE TABLE m (id bigint PRIMARY KEY, w real, v real)")
    config = forward(source, pg_dsn)
    reverse_init(config, out=lambda _line: None)
    pg_exec(
        pg_dsn,
        "INSERT INTO m VALUES (2, 0.1, 19.99), (3, 'Infinity', -3.4e38)",
        "UPDATE m SET w = 1.1 WHERE id = 1",
    )
    reverse_once(config)
    assert rows(source, "SELECT id, w, typeof(w), v, typeof(v) FROM m ORDER BY id") == [
        (1, 1.1, "real", 2.5, "real"),
        (2, 0.1, "real", 19.99, "real"),
        (3, float("inf"), "real", -3.4e38, "real"),
    ]
    assert_replicated(source, pg_dsn)
