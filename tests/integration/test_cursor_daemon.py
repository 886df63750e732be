"""Cursor capture through the daemon: a source on a read-only mount, mixed modes,
and what ``init`` and ``run --capture`` do with them."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import REPLICATOR, DaemonThread, daemon_config, daemon_env, wait_until
from oracle import assert_replicated, compare

from replicator.config import load_config
from replicator.source import changelog
from replicator.source.sqlite import open_source
from replicator.stream.cursor import capture_specs, with_capture

SCHEMA = """
CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, updated_at TEXT);
CREATE INDEX items_updated_at ON items (updated_at);
CREATE TABLE logs (id INTEGER PRIMARY KEY, line TEXT);
"""


def make_db(path: Path) -> Path:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(SCHEMA)
    for i in range(1, 51):
        conn.execute(
            "INSERT INTO items VALUES (?, ?, datetime('now', ?))", (i, f"n{i}", f"-{i} minutes")
        )
        conn.execute("INSERT INTO logs VALUES (?, ?)", (i, f"line {i}"))
    conn.close()
    return path


def write_some(path: Path, start: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None, timeout=10)
    for i in range(start, start + 20):
        conn.execute("INSERT INTO items VALUES (?, ?, datetime('now'))", (i, f"n{i}"))
        conn.execute("INSERT INTO logs VALUES (?, ?)", (i, f"line {i}"))
    conn.execute("UPDATE items SET name = 'renamed', updated_at = datetime('now') WHERE id = 3")
    conn.close()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def read_only_mount(folder: Path, mountpoint: Path) -> Iterator[bool]:
    """``folder`` also visible read-only at ``mountpoint`` (a read-only bind mount).

    Yields False when this machine does not allow mounting; the caller then
    falls back to a read-only configuration of a writable file.
    """
    mountpoint.mkdir()
    done = subprocess.run(
        ["mount", "--bind", str(folder), str(mountpoint)], check=False, capture_output=True
    )
    if done.returncode != 0:
        yield False
        return
    try:
        ro = subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(mountpoint)], check=False, capture_output=True
        )
        yield ro.returncode == 0
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_source_on_a_read_only_filesystem(tmp_path: Path, pg_dsn: str) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    path = make_db(folder / "app.db")
    app = sqlite3.connect(path, isolation_level=None)  # the app keeps the WAL open
    app.execute("INSERT INTO logs VALUES (51, 'app is running')")
    with read_only_mount(folder, tmp_path / "ro") as mounted:
        if mounted:
            seen = tmp_path / "ro" / "app.db"
            with pytest.raises(OSError, match="Read-only file system"):
                (tmp_path / "ro" / "probe").write_text("x")
            overrides = {}
        else:  # no mount privilege here: at least the configured read-only open
            print("no read-only mount possible: testing source.readonly = true instead")
            seen = path
            overrides = {"source__readonly": True}
        config = daemon_config(
            seen, pg_dsn, capture__reconcile_interval=3600.0, **overrides
        )  # capture.mode "auto": a read-only source means cursors
        with DaemonThread(config) as daemon:
            daemon.wait_streaming()
            assert daemon.daemon.triggers is False
            assert daemon.daemon.cursors is not None
            assert sorted(daemon.daemon.cursors.tables) == ["items", "logs"]
            wait_until(lambda: compare(seen, pg_dsn).equal, 30, "the snapshot")
            write_some(path, 100)
            wait_until(lambda: compare(seen, pg_dsn).equal, 30, "the cursors to catch up")
        before = sha(path)
        app.close()
    assert_replicated(path, pg_dsn)
    check = sqlite3.connect(path)
    objects = check.execute(
        "SELECT name FROM sqlite_schema WHERE name LIKE '\\_replicator%' ESCAPE '\\'"
    ).fetchall()
    check.close()
    assert objects == []  # no trigger, no change log: nothing was written
    assert before  # the file was readable throughout


def test_mixed_modes_in_one_run(tmp_path: Path, pg_dsn: str) -> None:
    path = make_db(tmp_path / "app.db")
    config = daemon_config(
        path,
        pg_dsn,
        capture__reconcile_interval=1.0,
        capture__lookback_seconds=2.0,
    )
    config = load_config(
        _toml(tmp_path, '[table.items]\ncapture = "cursor"\n'),
        env={},
        overrides={
            "source.path": str(path),
            "target.url": pg_dsn,
            "metrics.address": "",
            "stream.poll_interval": 0.1,
            "capture.reconcile_interval": 1.0,
        },
    )
    with DaemonThread(config) as daemon:
        daemon.wait_streaming()
        source = open_source(path, readonly=True)
        assert set(changelog.installed_triggers(source).values()) == {"logs"}
        source.close()
        write_some(path, 100)
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("DELETE FROM logs WHERE id = 5")  # triggers: seen at once
        conn.execute("DELETE FROM items WHERE id = 5")  # cursor: seen at reconciliation
        conn.close()
        wait_until(lambda: compare(path, pg_dsn).equal, 30, "both modes to converge")
    assert_replicated(path, pg_dsn)


def _toml(folder: Path, text: str) -> Path:
    path = folder / "replicator.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_run_capture_cursor_overrides_every_table(tmp_path: Path) -> None:
    path = make_db(tmp_path / "app.db")
    config = load_config(
        _toml(tmp_path, '[table.logs]\ncapture = "triggers"\n'),
        env={},
        overrides={"source.path": str(path)},
    )
    source = open_source(path, readonly=True)
    try:
        assert capture_specs(config, source, writable=True)["logs"] is None
        forced = capture_specs(with_capture(config, "cursor"), source, writable=True)
        assert {name: spec.column if spec else None for name, spec in forced.items()} == {
            "items": "updated_at",
            "logs": "id",
        }
    finally:
        source.close()


def test_init_suggests_a_mode_per_table_and_installs_only_trigger_tables(
    tmp_path: Path, pg_dsn: str
) -> None:
    path = make_db(tmp_path / "app.db")
    config = _toml(tmp_path, '[table.items]\ncapture = "cursor"\n')
    done = subprocess.run(
        [str(REPLICATOR), "--config", str(config), "init"],
        check=False,
        env=daemon_env(path, pg_dsn),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "items: triggers (writable source; an indexed updated_at" in out
    assert "cannot see deletes, updates that leave updated_at unchanged" in out
    assert "logs: triggers" in out
    assert "change capture installed on 1 table(s)" in out
    assert "followed by a cursor, nothing installed: items (updated_at)" in out
    source = open_source(path, readonly=True)
    assert set(changelog.installed_triggers(source).values()) == {"logs"}
    source.close()
