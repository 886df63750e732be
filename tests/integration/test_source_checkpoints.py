"""Ordinary WAL checkpoints are not a suspect source file.

A checkpoint writes page 1 of the database (with its new page count) before
the pages that extend the file, so for a moment the file is shorter than its
header says: exactly what a truncation looks like. The daemon must tell the
two apart: under a plain writer (many small transactions, SQLite's default
``wal_autocheckpoint``) it never pauses, while a real truncation still pauses
it and then stops it (tests/unit/test_source_faults.py,
tests/integration/test_faults.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from faultutil import launch_daemon
from harness import free_port, sqlite_from_script, wait_caught_up
from oracle import assert_replicated

# Many small transactions, autocheckpoint left at its default (1000 pages): the
# file grows at each checkpoint, which writes page 1 first.
WRITER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
until = time.monotonic() + float(sys.argv[2])
n = 0
while time.monotonic() < until:
    conn.execute("INSERT INTO notes (body) VALUES (?)", ("n" * 300 + str(n),))
    n += 1
print(n)
"""


def test_checkpoints_under_a_plain_writer_never_pause_the_daemon(
    tmp_path: Path, pg_dsn: str
) -> None:
    path = sqlite_from_script(
        tmp_path / "app.db",
        "PRAGMA journal_mode = WAL;"
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);"
        "INSERT INTO notes (body) VALUES ('first');",
    )
    daemon = launch_daemon(
        path,
        pg_dsn,
        tmp_path / "daemon.log",
        metrics_port=free_port(),
        settings={"REPLICATOR_STREAM_POLL_INTERVAL": "0.01"},
    )
    try:
        daemon.wait_streaming(120)
        size_before = path.stat().st_size
        writer = subprocess.run(
            [sys.executable, "-c", WRITER, str(path), "20"],
            capture_output=True,
            check=True,
            timeout=120,
        )
        written = int(writer.stdout.decode().split()[-1])
        wait_caught_up(path, pg_dsn, timeout=120, alive=daemon.gone)
        grown_pages = (path.stat().st_size - size_before) // 4096
        suspects = [e for e in daemon.events() if e.get("event") == "source_suspect"]
        code = daemon.stop(60)
    finally:
        daemon.kill()
    print(f"{written} transactions, file grew {grown_pages} pages, {len(suspects)} pauses")
    assert code == 0, daemon.tail()
    # Checkpoints did write the file, many times over (1000 WAL pages each).
    assert written > 2000 and grown_pages > 50, (written, grown_pages)
    assert suspects == [], f"{len(suspects)} false pauses: {suspects[:3]}"
    assert_replicated(path, pg_dsn)


def test_a_truncation_under_a_checkpointing_writer_is_still_caught(
    tmp_path: Path, pg_dsn: str
) -> None:
    """The writer frozen (perhaps in the middle of a checkpoint, holding its lock),
    the file cut: a lock held without progress excuses nothing for long, so the
    daemon pauses, then stops (exit 3)."""
    path = sqlite_from_script(
        tmp_path / "app.db",
        "PRAGMA journal_mode = WAL;"
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);"
        "INSERT INTO notes (body) VALUES ('first');",
    )
    daemon = launch_daemon(path, pg_dsn, tmp_path / "daemon.log", metrics_port=free_port())
    writer: subprocess.Popen[bytes] | None = None
    try:
        daemon.wait_streaming(120)
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), "60"], stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        while path.stat().st_size < 400 * 4096:  # some checkpoints have run
            assert time.monotonic() < deadline, "the writer's checkpoints never grew the file"
            time.sleep(0.1)
        writer.send_signal(signal.SIGSTOP)
        os.truncate(path, path.stat().st_size // 3 + 517)
        code = daemon.wait_exit(60)
    finally:
        if writer is not None:
            writer.kill()
            writer.wait()
        daemon.kill()
    assert code == 3, daemon.tail()
    lost = [e for e in daemon.events() if e.get("event") == "source_lost"]
    assert [e["kind"] for e in lost] == ["truncated"], lost
