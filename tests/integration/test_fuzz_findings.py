"""What the differential fuzzer found (test_fuzz_differential.py), each shrunk to
a deterministic test on real SQLite and PostgreSQL.

Rows whose key the target cannot hold (a blob or text that is not UTF-8 in a
text key, text with NUL, 1.5 or 1e20 in an integer key) are dead-lettered; the
divergences were in what came after: ``verify`` crashed on them, a whole real
of 1e16 or more came back from jsonb as an integer SQLite cannot bind (a
snapshot resuming after such a key crashed). Besides: ``verify`` misread JSON
strings and numbers jsonb prints differently, and a daemon stopped right after
its start failed as if another replicator held the lock.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import psycopg
import pytest
from harness import DaemonThread, daemon_config, snapshot_config, sqlite_from_script, wait_until
from oracle import compare, open_dead_letters
from psycopg.types.json import Jsonb

from replicator.coerce import decode_key, json_key
from replicator.proof.verify import Verifier
from replicator.stream.daemon import Daemon
from replicator.stream.setup import StopRequested, acquire_lock

ODD_KEYS = """
CREATE TABLE t (code TEXT PRIMARY KEY NOT NULL, v INTEGER) WITHOUT ROWID;
INSERT INTO t VALUES ('a', 1), (x'ff00', 2), (CAST(x'61ff' AS TEXT), 3), ('b', 4),
                     ('nul' || char(0), 5), ('c', 6);
CREATE TABLE pair (a INTEGER NOT NULL, b TEXT NOT NULL, v INTEGER, PRIMARY KEY (a, b));
INSERT INTO pair VALUES (1, 'x', 1), (1.5, 'y', 2), ('99999999999999999999', 'z', 3),
                        (x'01', 'w', 4), (2, CAST(x'ff' AS TEXT), 5), (3, 'v', 6);
"""


def test_verify_counts_rows_whose_key_the_target_cannot_hold(tmp_path: Path, pg_dsn: str) -> None:
    """It used to stop with CoercionError (a chunk bounded by such a key), TypeError
    (its key text), DataError or UnicodeEncodeError (re-reading it by key)."""
    path = sqlite_from_script(tmp_path / "odd.db", ODD_KEYS)
    config = daemon_config(path, pg_dsn)
    with DaemonThread(config) as daemon:  # the change log exists: verify settles
        daemon.wait_streaming()
    app = sqlite3.connect(path, isolation_level=None)
    app.execute("UPDATE t SET v = v + 10")
    app.close()
    with DaemonThread(config) as daemon:
        daemon.wait_caught_up()

    report = Verifier(snapshot_config(path, pg_dsn), chunk_rows=2).run(repair=True)

    verdicts = {v.table: v for v in report.tables}
    assert (verdicts["t"].missing, verdicts["t"].dead_lettered) == (3, 3), report.render()
    assert (verdicts["pair"].missing, verdicts["pair"].dead_lettered) == (4, 4), report.render()
    assert sum(v.extra + v.different for v in report.tables) == 0, report.render()
    assert compare(path, pg_dsn).equal  # the other rows are all there


def test_a_whole_real_key_reads_back_from_jsonb_as_the_real_it_was(pg_dsn: str) -> None:
    """jsonb keeps 1e+20 as the integer 100000000000000000000: a checkpoint key
    holding it came back as an int SQLite cannot bind, and the snapshot resuming
    after it crashed (OverflowError), again on every start."""
    key = [1e20, -1.5e16, 2.5, 1e-05, 7, "x"]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT %s::jsonb", [Jsonb(json_key(key))]).fetchone()
    assert row is not None
    back = decode_key(row[0])
    assert back == tuple(key)
    assert [type(v) for v in back] == [type(v) for v in key]
    sqlite3.connect(":memory:").execute("SELECT ?, ?", back[:2])  # binds


def test_verify_explains_a_dead_letter_whose_key_is_a_large_real(
    tmp_path: Path, pg_dsn: str
) -> None:
    path = sqlite_from_script(
        tmp_path / "big.db",
        "CREATE TABLE pair (a INTEGER NOT NULL, b TEXT NOT NULL, PRIMARY KEY (a, b));"
        "INSERT INTO pair VALUES (1, 'x'), ('99999999999999999999', 'z');",
    )
    with DaemonThread(daemon_config(path, pg_dsn)) as daemon:
        daemon.wait_streaming()
    [pair] = Verifier(snapshot_config(path, pg_dsn)).run().tables
    assert (pair.missing, pair.dead_lettered) == (1, 1)


def test_verify_compares_json_by_value(tmp_path: Path, pg_dsn: str) -> None:
    """A JSON string came back from jsonb as a Python str and was parsed again
    (the string "x": JSONDecodeError; "1": the number 1, a false difference), and
    1.5e16, which jsonb prints as 15000000000000000, differed from itself."""
    path = sqlite_from_script(
        tmp_path / "j.db",
        "CREATE TABLE j (id INTEGER PRIMARY KEY, doc JSON);"
        """INSERT INTO j VALUES (1, '"1"'), (2, '"x"'), (3, '{"a": 1.5e16, "b": [2.0]}'),"""
        """ (4, '1e300'), (5, '{"a": 1, "a": 2}');""",
    )
    config = snapshot_config(path, pg_dsn)
    with DaemonThread(daemon_config(path, pg_dsn)) as daemon:
        daemon.wait_streaming()
    report = Verifier(config).run()
    assert report.ok, report.render()
    assert compare(path, pg_dsn).equal


def test_a_daemon_stopped_before_it_takes_its_lock_stops_cleanly(
    tmp_path: Path, pg_dsn: str
) -> None:
    """A stop (SIGTERM) in the first moments of a start used to end the daemon with
    LockHeldError('stopped while waiting as a standby'): exit 6, 'another replicator
    is running', which systemd never restarts."""
    path = sqlite_from_script(tmp_path / "s.db", "CREATE TABLE t (id INTEGER PRIMARY KEY);")
    daemon = Daemon(daemon_config(path, pg_dsn), install_signals=False)
    daemon.request_stop()
    with pytest.raises(StopRequested):
        acquire_lock(daemon)
    for _ in range(5):  # and end to end: started and stopped at once, again and again
        thread = DaemonThread(daemon_config(path, pg_dsn)).start()
        time.sleep(0.01)
        thread.stop()


def test_deleting_a_row_whose_key_the_target_cannot_hold_closes_its_dead_letter(
    tmp_path: Path, pg_dsn: str
) -> None:
    path = sqlite_from_script(
        tmp_path / "nul.db",
        "CREATE TABLE t (code TEXT PRIMARY KEY NOT NULL, v INTEGER) WITHOUT ROWID;"
        "INSERT INTO t VALUES ('a', 1), ('nul' || char(0), 2);",
    )
    with DaemonThread(daemon_config(path, pg_dsn)) as daemon:
        daemon.wait_streaming()
        assert len(open_dead_letters(pg_dsn)) == 1
        app = sqlite3.connect(path, isolation_level=None)
        app.execute("DELETE FROM t WHERE v = 2")
        app.close()
        daemon.wait_caught_up()
        wait_until(lambda: not open_dead_letters(pg_dsn), 5, "the dead letter to close")
