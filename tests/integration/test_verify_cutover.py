"""``replicator verify`` (and ``--repair``), ``replicator cutover``, and the dual-write policy.

Verify and cutover run as the CLI, against a target the daemon (``replicator
run``) filled. Rows are changed behind the replicator's back directly in
PostgreSQL; verify must name each one by its key, and ``--repair`` must make
the typed, independent comparison of :mod:`oracle` come out equal. Under a
live writer verify must report changes in flight, never differences. Cutover
must say GO only when everything is clean, and name the check that is not.
The dual-write policy runs the daemon in this process with a config file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import psycopg
from harness import (
    REPLICATOR,
    DaemonProcess,
    DaemonThread,
    daemon_env,
    source_head,
    start_writer,
    stream_position,
    wait_until,
)
from obsutil import (
    applied_everything,
    cli,
    cli_json,
    make_items_db,
    pg_exec,
    pg_rows,
    sqlite_exec,
    start_replicator,
    wait_applied,
)
from oracle import assert_replicated, open_dead_letters

from replicator.config import load_config
from replicator.demo.sample import generate_reference_db

ITEMS_SEQ = "pg_get_serial_sequence('public.items', 'id')"


def start(source: Path, dsn: str, tmp_path: Path, name: str = "daemon") -> DaemonProcess:
    daemon = start_replicator(source, dsn, tmp_path / f"{name}.log", metrics_address="127.0.0.1:0")
    daemon.wait_streaming(timeout=180)
    wait_applied(daemon)
    return daemon


def sequence_value(dsn: str) -> int:
    return int(pg_rows(dsn, f"SELECT last_value FROM {_seq_rel(dsn)}")[0][0])


def _seq_rel(dsn: str) -> str:
    return str(pg_rows(dsn, f"SELECT {ITEMS_SEQ}")[0][0])


def problems(report: dict[str, Any]) -> dict[str, set[tuple[str, tuple[Any, ...]]]]:
    """table -> {(problem, key)} from a verify --json report."""
    return {
        t["table"]: {(e["problem"], tuple(e["key"])) for e in t["examples"]}
        for t in report["tables"]
        if t["examples"]
    }


# -- verify and --repair ----------------------------------------------------------------


def test_verify_names_every_row_changed_behind_its_back_and_repair_fixes_them(
    tmp_path: Path, pg_dsn: str
) -> None:
    source = make_items_db(tmp_path / "app.db", items=300, notes=20)
    daemon = start(source, pg_dsn, tmp_path)
    try:
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    code, clean = cli_json("verify", source=source, dsn=pg_dsn)
    assert (code, clean["ok"]) == (0, True), clean

    pg_exec(
        pg_dsn,
        "UPDATE items SET name = 'changed in postgres' WHERE id = 17",
        "DELETE FROM items WHERE id = 42",
        "INSERT INTO items (id, name, qty) VALUES (777, 'only in postgres', 1)",
        "UPDATE notes SET updated_at = NULL WHERE id = 3",
        f"SELECT setval({ITEMS_SEQ}, 5)",
    )

    code, report = cli_json("verify", source=source, dsn=pg_dsn)
    assert code == 1 and report["ok"] is False, report
    assert problems(report) == {
        "items": {("different", (17,)), ("missing", (42,)), ("extra", (777,))},
        "notes": {("different", (3,))},
    }
    by_table = {t["table"]: t for t in report["tables"]}
    assert (by_table["items"]["missing"], by_table["items"]["extra"]) == (1, 1)
    assert by_table["items"]["different"] == 1 and by_table["notes"]["different"] == 1
    assert report["sequences_behind"] == [
        {"table": "items", "column": "id", "last_value": 5, "max": 777}
    ]

    text = cli("verify", source=source, dsn=pg_dsn)
    assert text.returncode == 1, text.stderr
    for line in (
        "items: different key [17]",
        "items: missing key [42]",
        "items: extra key [777]",
        "notes: different key [3]",
        "sequence behind: items.id is at 5, max id is 777",
        "verdict: DIFFERENT",
    ):
        assert line in text.stdout, f"{line!r} not in:\n{text.stdout}"

    code, repaired = cli_json("verify", "--repair", source=source, dsn=pg_dsn)
    assert code == 0 and repaired["ok"] is True, repaired
    by_table = {t["table"]: t for t in repaired["tables"]}
    assert (by_table["items"]["repaired"], by_table["notes"]["repaired"]) == (3, 1)

    code, again = cli_json("verify", source=source, dsn=pg_dsn)
    assert (code, again["ok"], again["sequences_behind"]) == (0, True, []), again
    assert sequence_value(pg_dsn) >= 300
    assert_replicated(source, pg_dsn)  # an independent, typed comparison agrees


def test_verify_under_a_live_writer_reports_changes_in_flight_not_differences(
    tmp_path: Path, refapp_pg_dsn: str
) -> None:
    source = tmp_path / "app.db"
    generate_reference_db(source, artifacts=60, bad_values=False)
    daemon = start(source, refapp_pg_dsn, tmp_path)
    writer = start_writer(source, tmp_path / "writer.log", rate=120, seed=11)
    verify: subprocess.Popen[str] | None = None
    try:
        # Pause the daemon so that the target is certainly behind while verify reads.
        os.kill(daemon.pid, signal.SIGSTOP)
        try:
            head = source_head(source) or 0
            wait_until(lambda: (source_head(source) or 0) >= head + 30, 60, "writes to pile up")
            with psycopg.connect(refapp_pg_dsn, autocommit=True) as conn:
                before = {
                    int(r[0])
                    for r in conn.execute(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    )
                }
            verify = subprocess.Popen(
                [str(REPLICATOR), "verify", "--json"],
                env=daemon_env(source, refapp_pg_dsn),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )

            # Verify found keys that differ and waits for the stream to catch up
            # (it polls the stream position): only now let the daemon go on.
            def settling() -> bool:
                assert verify is not None
                if verify.poll() is not None:
                    return True
                rows = pg_rows(
                    refapp_pg_dsn,
                    "SELECT pid, query FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = 'replicator'",
                )
                return any(pid not in before and "stream_position" in query for pid, query in rows)

            wait_until(settling, 120, "verify to wait for the stream", every=0.02)
            assert verify.poll() is None, "verify ended without waiting for changes in flight"
        finally:
            os.kill(daemon.pid, signal.SIGCONT)
        out, err = verify.communicate(timeout=180)
        report = json.loads(out)
        differing = {t["table"]: t["examples"] for t in report["tables"] if t["differences"]}
        assert differing == {}, f"false differences under a live writer: {differing}\n{err}"
        assert sum(t["in_flight"] for t in report["tables"]) > 0, report
        assert (verify.returncode, report["ok"]) == (0, True), report
        stats = writer.stop()
        assert stats["transactions"] > 0
        wait_applied(daemon)
        assert daemon.stop() == 0
        assert_replicated(source, refapp_pg_dsn)
    finally:
        if verify is not None and verify.poll() is None:
            verify.kill()
            verify.wait()
        writer.kill()
        daemon.kill()


# -- cutover ------------------------------------------------------------------------------


def cutover_meta(dsn: str) -> list[tuple[Any, ...]]:
    return pg_rows(dsn, "SELECT value, updated_at FROM replicator.meta WHERE key = 'cutover'")


def failing(report: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["detail"] for c in report["checks"] if not c["ok"]}


def test_cutover_is_go_only_when_clean_and_names_the_failing_check(
    tmp_path: Path, pg_dsn: str
) -> None:
    source = make_items_db(tmp_path / "app.db", items=300, notes=20)
    daemon = start(source, pg_dsn, tmp_path)
    try:
        pg_exec(pg_dsn, f"SELECT setval({ITEMS_SEQ}, 3)")

        # A dry run on a clean, caught-up target: GO, and nothing written.
        code, dry = cli_json("cutover", "--dry-run", source=source, dsn=pg_dsn)
        assert (code, dry["go"], dry["dry_run"]) == (0, True, True), dry
        assert [c["name"] for c in dry["checks"]] == [
            "daemon running",
            "tail applied (lag zero)",
            "verify",
            "sequences ahead",
        ]
        assert sequence_value(pg_dsn) == 3, "--dry-run moved a sequence"
        assert cutover_meta(pg_dsn) == [], "--dry-run recorded a cutover"

        # A row changed behind the replicator's back: NO-GO at "verify".
        pg_exec(pg_dsn, "UPDATE items SET name = 'changed in postgres' WHERE id = 5")
        code, dirty = cli_json("cutover", source=source, dsn=pg_dsn)
        assert (code, dirty["go"]) == (1, False), dirty
        assert set(failing(dirty)) == {"verify"}, dirty["checks"]
        assert "1 difference(s)" in failing(dirty)["verify"]
        assert cutover_meta(pg_dsn) == []
        pg_exec(pg_dsn, "UPDATE items SET name = 'item 5' WHERE id = 5")

        # An open dead letter: NO-GO at "verify" too.
        sqlite_exec(source, "UPDATE items SET qty = 'not a number' WHERE id = 9")
        wait_until(lambda: len(open_dead_letters(pg_dsn)) == 1, 60, "the dead letter")
        wait_applied(daemon)
        code, dead = cli_json("cutover", source=source, dsn=pg_dsn)
        assert (code, dead["go"]) == (1, False), dead
        assert set(failing(dead)) == {"verify"}, dead["checks"]
        assert "1 open dead letter(s)" in failing(dead)["verify"]
        assert cutover_meta(pg_dsn) == []
        sqlite_exec(source, "UPDATE items SET qty = 90 WHERE id = 9")  # heals it
        wait_until(lambda: not open_dead_letters(pg_dsn), 60, "the dead letter to heal")

        # Clean and caught up, after a quiet second: GO, recorded, sequences reset.
        wait_applied(daemon)
        code, go = cli_json("cutover", "--quiet-seconds", "1", source=source, dsn=pg_dsn)
        assert (code, go["go"], go["dry_run"]) == (0, True, False), go
        assert failing(go) == {}
        assert "source quiet 1s" in [c["name"] for c in go["checks"]]
        assert go["position"] == source_head(source)
        assert sequence_value(pg_dsn) >= 300
        recorded = cutover_meta(pg_dsn)
        assert len(recorded) == 1
        assert recorded[0][0]["go"] is True and recorded[0][0]["position"] == go["position"]

        # The daemon stopped with changes left unapplied: NO-GO, naming both checks.
        assert daemon.stop() == 0
        sqlite_exec(source, "UPDATE items SET qty = qty WHERE id <= 3")  # lag, same values
        code, stopped = cli_json("cutover", source=source, dsn=pg_dsn)
        assert (code, stopped["go"]) == (1, False), stopped
        assert set(failing(stopped)) == {"daemon running", "tail applied (lag zero)"}, stopped
        assert "stopped" in failing(stopped)["daemon running"]
        assert cutover_meta(pg_dsn) == recorded, "a NO-GO changed the recorded cutover"
        text = cli("cutover", "--dry-run", source=source, dsn=pg_dsn)
        assert text.returncode == 1
        assert "[FAIL] daemon running" in text.stdout and "NO-GO" in text.stdout, text.stdout
    finally:
        daemon.kill()


# -- dual-write conflict policy -------------------------------------------------------------


def test_newer_wins_keeps_a_newer_postgres_row_and_source_wins_does_not(
    tmp_path: Path, pg_dsn: str
) -> None:
    source = make_items_db(tmp_path / "app.db", items=300, notes=20)
    config_file = tmp_path / "replicator.toml"
    config_file.write_text(
        '[table.items]\nconflict = "newer_wins"\nversion_column = "updated_at"\n',
        encoding="utf-8",
    )
    config = load_config(
        config_file,
        env={},
        overrides={
            "source.path": str(source),
            "target.url": pg_dsn,
            "metrics.address": "",
            "stream.poll_interval": 0.1,
        },
    )

    def caught_up() -> None:
        wait_until(lambda: applied_everything(source, pg_dsn), 60, "the stream to catch up")

    def names(table: str, low: int, high: int) -> set[str]:
        rows = pg_rows(pg_dsn, f"SELECT name FROM {table} WHERE id BETWEEN %s AND %s", (low, high))
        return {str(r[0]) for r in rows}

    with DaemonThread(config) as daemon:
        daemon.wait_streaming(timeout=120)
        caught_up()

        # Newer rows written straight into PostgreSQL (one row, and 299 rows so the
        # replicated batch goes through the staging-table merge, not the small path).
        pg_exec(
            pg_dsn,
            "UPDATE items SET name = 'postgres newer', updated_at = '2030-01-01' "
            "WHERE id BETWEEN 1 AND 300",
            "UPDATE notes SET body = 'postgres newer', updated_at = '2030-01-01' WHERE id = 1",
        )
        # Stale changes replicated from the source: newer_wins keeps PostgreSQL's rows,
        # source_wins (notes, the default) applies the replicated change.
        sqlite_exec(
            source, "UPDATE items SET name = 'stale', updated_at = '2025-06-01' WHERE id = 1"
        )
        sqlite_exec(
            source,
            "UPDATE items SET name = 'stale', updated_at = '2025-06-01' WHERE id BETWEEN 2 AND 300",
        )
        sqlite_exec(
            source, "UPDATE notes SET body = 'stale', updated_at = '2025-06-01' WHERE id = 1"
        )
        caught_up()
        assert names("items", 1, 300) == {"postgres newer"}
        assert pg_rows(pg_dsn, "SELECT body FROM notes WHERE id = 1") == [("stale",)]
        assert pg_rows(pg_dsn, "SELECT count(*) FROM items WHERE updated_at = '2030-01-01'") == [
            (300,)
        ]

        # Newer changes from the source overwrite, one row and many; an equal version too.
        sqlite_exec(
            source,
            "UPDATE items SET name = 'source newest', updated_at = '2031-01-01' WHERE id = 1",
        )
        sqlite_exec(
            source,
            "UPDATE items SET name = 'source newest', updated_at = '2031-01-01' "
            "WHERE id BETWEEN 2 AND 299",
            "UPDATE items SET name = 'source, same version', updated_at = '2030-01-01' "
            "WHERE id = 300",
        )
        caught_up()
        assert names("items", 1, 299) == {"source newest"}
        assert names("items", 300, 300) == {"source, same version"}
        # A row the application then deletes in the source is deleted whatever its version.
        sqlite_exec(source, "DELETE FROM items WHERE id = 2")
        caught_up()
        assert pg_rows(pg_dsn, "SELECT count(*) FROM items WHERE id = 2") == [(0,)]
    assert stream_position(pg_dsn) is not None
    assert_replicated(source, pg_dsn)
