"""The round trip as an operator runs it, every step the ``replicator`` CLI as a process:
``run`` and ``cutover``; ``reverse init``; the app writes to PostgreSQL; ``reverse status``
says what waits; ``reverse run``; ``rollback`` GO; ``reverse uninstall``."""

from __future__ import annotations

from pathlib import Path

from obsutil import cli, cli_json, pg_exec, pg_rows, start_replicator, wait_applied
from oracle import assert_replicated
from reverseutil import make_app_db, rows


def test_cutover_then_rollback_through_the_cli_loses_no_write(tmp_path: Path, pg_dsn: str) -> None:
    source = make_app_db(tmp_path / "app.db", accounts=10)
    daemon = start_replicator(source, pg_dsn, tmp_path / "run.log", metrics_address="127.0.0.1:0")
    try:
        daemon.wait_streaming(timeout=180)
        wait_applied(daemon)
        code, report = cli_json("cutover", source=source, dsn=pg_dsn)
        assert code == 0 and report["go"], report
    finally:
        daemon.stop()

    done = cli("reverse", "init", source=source, dsn=pg_dsn)
    assert done.returncode == 0, done.stderr
    assert "reverse capture installed on 2 PostgreSQL table(s)" in done.stdout
    pg_exec(
        pg_dsn,
        "INSERT INTO accounts (email, active, created_at, seen_at, settings, balance) VALUES "
        "('after@example.com', true, now(), '2026-06-01 12:00:00+00', '{\"x\": 1}', 3.25)",
        "DELETE FROM tags WHERE account_id = 2",
        "UPDATE tags SET pinned = true WHERE account_id = 4",
    )
    code, status = cli_json("reverse", "status", source=source, dsn=pg_dsn)
    assert code == 1 and status["pending"] == 3 and not status["in_sync"], status
    shown = cli("status", source=source, dsn=pg_dsn).stdout
    assert "reverse: 3 change(s) made in PostgreSQL not yet in SQLite" in shown, shown
    code, report = cli_json("rollback", "--timeout", "1", source=source, dsn=pg_dsn)
    assert code == 1 and not report["go"], report

    done = cli("reverse", "run", "--once", source=source, dsn=pg_dsn)
    assert done.returncode == 0, done.stderr
    code, status = cli_json("reverse", "status", source=source, dsn=pg_dsn)
    assert code == 0 and status["in_sync"] and status["changes_applied"] == 3, status
    assert rows(
        source, "SELECT seen_at, pinned FROM accounts JOIN tags ON account_id = id WHERE id = 4"
    ) == [("2025-02-05T08:15:30.004Z", "true")]
    assert rows(source, "SELECT seen_at FROM accounts WHERE email = 'after@example.com'") == [
        ("2026-06-01T12:00:00.000Z",)
    ]
    assert_replicated(source, pg_dsn)

    code, report = cli_json("rollback", source=source, dsn=pg_dsn)
    assert code == 0 and report["go"], report
    assert report["next_steps"], report

    done = cli("reverse", "uninstall", "--yes", source=source, dsn=pg_dsn)
    assert done.returncode == 0, done.stderr
    assert pg_rows(
        pg_dsn, "SELECT count(*) FROM pg_trigger WHERE tgname = '_replicator_reverse'"
    ) == [(0,)]
    assert rows(
        source, "SELECT count(*) FROM sqlite_schema WHERE name = '_replicator_reverse_position'"
    ) == [(0,)]
