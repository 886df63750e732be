"""`status` and /readyz never say "in sync" / ready while rows are held back.

A row held in a dead letter is not in the target as the source has it; a
cursor table that was never reconciled may miss deletes. Either way the
operator must not read "fine": `status` says what is held (exit 7, or 1), and
/readyz answers 503 unless the configured policy allows that many held rows.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness import free_port, wait_until
from obsutil import (
    cli,
    http_get,
    make_items_db,
    pg_exec,
    scrape,
    sqlite_exec,
    start_replicator,
    status_json,
    wait_applied,
)


def test_held_rows_make_status_exit_7_and_readyz_503_until_healed(
    tmp_path: Path, pg_dsn: str
) -> None:
    source = make_items_db(tmp_path / "app.db", items=30, notes=5)
    port = free_port()
    daemon = start_replicator(
        source, pg_dsn, tmp_path / "daemon.log", metrics_address=f"127.0.0.1:{port}"
    )
    try:
        wait_applied(daemon)
        wait_until(lambda: http_get(port, "/readyz").status == 200, 30, "ready while clean")
        code, status = status_json(source, pg_dsn)
        assert (code, status["verdict"], status["held"]) == (0, "in sync", 0)

        sqlite_exec(source, "UPDATE items SET qty = 'not a number' WHERE id = 6")
        wait_applied(daemon)
        wait_until(lambda: http_get(port, "/readyz").status == 503, 30, "/readyz to refuse")
        ready = http_get(port, "/readyz").json()
        assert (ready["held_rows"], ready["held_allowed"], ready["lag_seconds"]) == (1, 0, 0.0)
        code, status = status_json(source, pg_dsn)
        assert code == 7
        assert status["held"] == 1
        assert status["verdict"] == (
            "in sync except 1 row(s) held: see `replicator dead-letters list`"
        )
        text = cli("status", source=source, dsn=pg_dsn)
        assert text.returncode == 7
        assert "verdict: in sync except 1 row(s) held" in text.stdout

        sqlite_exec(source, "UPDATE items SET qty = 7 WHERE id = 6")  # fixed at the source
        wait_applied(daemon)
        wait_until(lambda: http_get(port, "/readyz").status == 200, 30, "ready once healed")
        code, status = status_json(source, pg_dsn)
        assert (code, status["verdict"], status["held"]) == (0, "in sync", 0)
    finally:
        daemon.stop()


def test_the_readiness_policy_can_allow_held_rows(tmp_path: Path, pg_dsn: str) -> None:
    source = make_items_db(tmp_path / "app.db", items=30, notes=5)
    sqlite_exec(source, "UPDATE items SET qty = 'not a number' WHERE id IN (3, 4)")
    port = free_port()
    daemon = start_replicator(
        source,
        pg_dsn,
        tmp_path / "daemon.log",
        metrics_address=f"127.0.0.1:{port}",
        settings={"REPLICATOR_METRICS_READY_MAX_DEAD_LETTERS": "2"},
    )
    try:
        wait_applied(daemon)
        wait_until(lambda: http_get(port, "/readyz").status == 200, 30, "ready within policy")
        assert http_get(port, "/readyz").json()["held_rows"] == 2
        sqlite_exec(source, "UPDATE items SET qty = 'still not' WHERE id = 5")  # a third
        wait_applied(daemon)
        wait_until(lambda: http_get(port, "/readyz").status == 503, 30, "over the policy")
        # status has no policy: held rows are never "in sync".
        code, status = status_json(source, pg_dsn)
        assert (code, status["held"]) == (7, 3)
    finally:
        daemon.stop()


def test_a_cursor_table_is_not_in_sync_before_its_first_reconciliation(
    tmp_path: Path, pg_dsn: str
) -> None:
    """A cursor cannot see deletes: until a reconciliation pass has compared its table
    with the source, `status` says so instead of "in sync"."""
    source = make_items_db(tmp_path / "app.db", items=30, notes=5)
    cursor_mode = {"REPLICATOR_CAPTURE_MODE": "cursor"}

    def verdict() -> tuple[int, str]:
        code, status = status_json(source, pg_dsn)
        return code, str(status["verdict"])

    daemon = start_replicator(
        source,
        pg_dsn,
        tmp_path / "daemon.log",
        metrics_address="",
        # The first pass is due an hour after the start: none during this run.
        settings={**cursor_mode, "REPLICATOR_CAPTURE_RECONCILE_INTERVAL": "3600"},
    )
    try:
        wait_until(lambda: "not yet reconciled" in verdict()[1], 60, "the snapshot to end")
        code, status = status_json(source, pg_dsn)
        assert code == 1
        assert status["verdict"] == (
            "catching up — not yet reconciled (cursor capture): items, notes"
        )
        assert {t["table"]: t["mode"] for t in status["tables"]} == {
            "items": "cursor",
            "notes": "cursor",
        }
    finally:
        daemon.stop()
    assert verdict()[1].startswith("stalled — not yet reconciled")

    daemon = start_replicator(
        source,
        pg_dsn,
        tmp_path / "daemon2.log",
        metrics_address="",
        settings={**cursor_mode, "REPLICATOR_CAPTURE_RECONCILE_INTERVAL": "1"},
    )
    try:
        wait_until(lambda: verdict() == (0, "in sync"), 60, "the first reconciliation")
    finally:
        daemon.stop()


def test_verify_repair_says_per_row_what_it_did_and_why_not(tmp_path: Path, pg_dsn: str) -> None:
    source = make_items_db(tmp_path / "app.db", items=10, notes=2)
    assert cli("snapshot", source=source, dsn=pg_dsn).returncode == 0
    # Behind the replicator's back: one row changed in PostgreSQL, one deleted, one
    # added; and in SQLite one row that cannot be written at all.
    pg_exec(
        pg_dsn,
        "UPDATE items SET name = 'changed in postgres' WHERE id = 2",
        "DELETE FROM items WHERE id = 3",
        "INSERT INTO items (id, name, qty) VALUES (99, 'extra', 1)",
    )
    sqlite_exec(source, "UPDATE items SET qty = 'not a number' WHERE id = 5")
    done = cli("verify", "--repair", source=source, dsn=pg_dsn)
    out = done.stdout
    assert "items: different key [2]: copied from the source" in out
    assert "items: missing key [3]: copied from the source" in out
    assert "items: extra key [99]: deleted (not in the source)" in out
    assert "items: different key [5]: NOT repaired column qty: 'not a number'" in out
    assert done.returncode == 1, out  # row 5 still differs


def test_the_end_of_load_report_is_one_json_record_for_snapshot_and_run(
    tmp_path: Path, pg_dsn: str
) -> None:
    source = make_items_db(tmp_path / "app.db", items=12, notes=3)
    sqlite_exec(source, "UPDATE items SET qty = 'not a number' WHERE id = 2")
    done = cli("snapshot", source=source, dsn=pg_dsn, settings={"REPLICATOR_LOG_FORMAT": "json"})
    assert done.returncode == 0, done.stderr
    [summary] = [
        record
        for line in done.stderr.splitlines()
        if line.startswith("{") and (record := json.loads(line))["event"] == "snapshot_summary"
    ]
    by_table = {t["table"]: t for t in summary["tables"]}
    assert (by_table["items"]["rows_read"], by_table["items"]["rows_written"]) == (12, 11)
    assert by_table["items"]["dead_letters"] == 1
    assert summary["total"]["rows_read"] == 15 and summary["total"]["dead_letters"] == 1
    assert by_table["items"]["bytes"] > 0  # the table's size in the SQLite file
    assert summary["total"]["bytes"] == sum(t["bytes"] for t in summary["tables"])
    assert isinstance(summary["schema_skipped"], list)
    # The console form: a table with the same totals.
    assert "total" in done.stdout and "1 row(s) went to the dead-letter table" in done.stdout
    assert " MB " in done.stdout.splitlines()[0] + " "

    daemon = start_replicator(source, pg_dsn, tmp_path / "run.log", metrics_address="")
    try:
        wait_applied(daemon)
        wait_until(lambda: "snapshot_summary" in daemon.log_text(), 30, "the run's summary")
    finally:
        daemon.stop()


def test_the_metrics_a_cutover_is_decided_on(tmp_path: Path, pg_dsn: str) -> None:
    """Through a running daemon's /metrics: every table's dead-letter counter exists
    from the start (at 0 for a clean table), snapshot dead letters are counted, the
    open ones are a gauge, and phase, snapshot and change-log gauges are there."""
    source = make_items_db(tmp_path / "app.db", items=20, notes=4)
    sqlite_exec(source, "UPDATE items SET qty = 'not a number' WHERE id = 3")
    port = free_port()
    daemon = start_replicator(
        source, pg_dsn, tmp_path / "daemon.log", metrics_address=f"127.0.0.1:{port}"
    )
    try:
        wait_applied(daemon)
        wait_until(
            lambda: scrape(port).or0("replicator_phase", phase="streaming") == 1, 30, "phase"
        )
        wait_until(
            lambda: scrape(port).or0("replicator_dead_letters_open", table="items") == 1,
            30,
            "the open dead letters gauge",
        )
        m = scrape(port)
        assert m.get("replicator_dead_letters_total", table="items") == 1  # from the snapshot
        assert m.get("replicator_dead_letters_total", table="notes") == 0  # there, at 0
        assert m.get("replicator_dead_letters_open", table="notes") == 0
        assert m.get("replicator_phase", phase="snapshot") == 0
        assert m.get("replicator_snapshot_tables_remaining") == 0
        assert m.get("replicator_snapshot_duration_seconds") > 0
        sqlite_exec(source, "INSERT INTO notes (body) VALUES ('one more')")
        wait_applied(daemon)
        wait_until(
            lambda: scrape(port).or0("replicator_changelog_bytes") > 0, 30, "change-log bytes"
        )
    finally:
        daemon.stop()
