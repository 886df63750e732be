"""Failures at the command line are plain sentences with the documented exit code:
a "no" at a prompt cancels, and a malformed URL never shows its password."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from harness import REPLICATOR, daemon_env, daemon_process
from obsutil import cli, make_items_db, sqlite_exec
from oracle import open_dead_letters
from psycopg import sql


def answer(
    source: Path, dsn: str, text: str | None, *args: str
) -> subprocess.CompletedProcess[str]:
    """``replicator ARGS`` with ``text`` typed at its prompt (None: end of input at once)."""
    return subprocess.run(
        [str(REPLICATOR), *args],
        env=daemon_env(source, dsn),
        input=text if text is not None else "",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def one_letter(tmp_path: Path, pg_dsn: str) -> Path:
    """A snapshot that left exactly one open dead letter."""
    source = make_items_db(tmp_path / "app.db", items=10, notes=2)
    sqlite_exec(source, "UPDATE items SET qty = 'not a number' WHERE id = 4")
    done = cli("snapshot", source=source, dsn=pg_dsn)
    assert done.returncode == 0, done.stderr
    assert len(open_dead_letters(pg_dsn)) == 1
    return source


@pytest.mark.parametrize("typed", ["n\n", None], ids=["no", "end-of-input"])
def test_no_at_the_discard_prompt_cancels(one_letter: Path, pg_dsn: str, typed: str | None) -> None:
    done = answer(one_letter, pg_dsn, typed, "dead-letters", "discard", "--all")
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().endswith("cancelled")
    assert "internal error" not in done.stderr
    assert len(open_dead_letters(pg_dsn)) == 1  # nothing changed


def test_no_prompt_when_nothing_named_is_open(one_letter: Path, pg_dsn: str) -> None:
    done = answer(one_letter, pg_dsn, "y\n", "dead-letters", "discard", "--all")
    assert done.returncode == 0, done.stderr
    assert "1 dead letter(s) discarded" in done.stdout
    again = answer(one_letter, pg_dsn, None, "dead-letters", "discard", "--all")
    assert again.returncode == 0, again.stderr
    assert "Discard" not in again.stdout  # not asked: there was nothing to discard
    assert "0 dead letter(s) discarded" in again.stdout


def test_no_at_the_uninstall_prompt_leaves_the_triggers(one_letter: Path, pg_dsn: str) -> None:
    assert cli("init", source=one_letter, dsn=pg_dsn).returncode == 0
    done = answer(one_letter, pg_dsn, "n\n", "uninstall")
    assert (done.returncode, done.stderr.strip()) == (1, "cancelled")
    kept = subprocess.run(
        ["sqlite3", str(one_letter), "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'"],
        capture_output=True,
        text=True,
        check=False,
    )
    if kept.returncode == 0:  # the sqlite3 shell is optional on this machine
        assert int(kept.stdout) > 0


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("postgresql://bob:se%cret-99@127.0.0.1:5432/db", "se%cret-99"),
        ("postgresql://bob:100%@127.0.0.1:5432/db", "100%"),
        ("postgresql://bob@127.0.0.1:5432/db?password=ab%zz", "ab%zz"),
    ],
)
def test_a_malformed_url_shows_no_part_of_its_password(
    tmp_path: Path, url: str, secret: str
) -> None:
    source = make_items_db(tmp_path / "app.db", items=3, notes=1)
    for command in (["status"], ["check"], ["snapshot"]):
        done = cli(*command, source=source, dsn=url)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert "malformed" in done.stderr
        assert "%25" in done.stderr  # how to write it instead
        output = done.stdout + done.stderr
        assert secret not in output
        assert secret.replace("%", "") not in output


def test_a_metrics_address_in_use_is_a_configuration_error(tmp_path: Path, pg_dsn: str) -> None:
    """Exit 2 (which the systemd unit does not restart on), naming the setting."""
    source = make_items_db(tmp_path / "app.db", items=3, notes=1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        done = subprocess.run(
            [str(REPLICATOR), "run", "--metrics-address", address],
            env=daemon_env(source, pg_dsn),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2, done.stderr
    assert f"metrics.address {address} cannot be listened on" in done.stderr
    assert "internal error" not in done.stderr
    unit = (Path(__file__).resolve().parents[2] / "config/systemd/replicator.service").read_text()
    assert "RestartPreventExitStatus=2 " in unit


def test_a_table_in_tables_include_that_does_not_exist_is_named(
    tmp_path: Path, pg_dsn: str
) -> None:
    source = make_items_db(tmp_path / "app.db", items=3, notes=1)
    config = tmp_path / "replicator.toml"
    config.write_text('[tables]\ninclude = ["itemz", "notes", "log_*"]\n', encoding="utf-8")
    expected = "tables.include names 'itemz', which is not a table of the source"
    check = cli("--config", str(config), "check", source=source, dsn=pg_dsn)
    assert check.returncode == 1, check.stdout + check.stderr
    assert expected in check.stdout
    assert "(did you mean 'items'?)" in check.stdout
    for command in ("snapshot", "run"):
        done = cli("--config", str(config), command, source=source, dsn=pg_dsn, timeout=60)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert expected in done.stderr and "did you mean 'items'" in done.stderr
    # Nothing was copied: the typo is caught before any table is.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('public.notes')").fetchone() == (None,)


def test_a_target_database_gone_at_reconnect_ends_the_daemon_with_exit_2(
    tmp_path: Path, pg_dsn: str
) -> None:
    """Retried a few times (it may be coming back), then fatal, naming what was refused;
    not retried forever."""
    source = make_items_db(tmp_path / "app.db", items=5, notes=1)
    dbname = urlsplit(pg_dsn).path.lstrip("/")
    admin = pg_dsn.replace(f"/{dbname}", "/postgres", 1)
    with daemon_process(source, pg_dsn, tmp_path / "daemon.log") as daemon:
        daemon.wait_streaming()
        with psycopg.connect(admin, autocommit=True) as conn:
            for _ in range(50):  # the daemon reconnects at once: rename between two tries
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (dbname,),
                )
                try:
                    conn.execute(
                        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                            sql.Identifier(dbname), sql.Identifier(dbname + "_away")
                        )
                    )
                    break
                except psycopg.errors.ObjectInUse:
                    time.sleep(0.05)
            else:
                pytest.fail("the daemon's sessions kept the database in use")
        try:
            code = daemon.wait_exit(90)
            log = daemon.log_text()
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(dbname + "_away"), sql.Identifier(dbname)
                    )
                )
    assert code == 2, log[-3000:]
    assert "the target refuses the connection" in log
    assert f'database "{dbname}" does not exist' in log
    assert "gave up after 5 attempts" in log


def test_a_standby_told_to_stop_stops_cleanly(tmp_path: Path, pg_dsn: str) -> None:
    source = make_items_db(tmp_path / "app.db", items=5, notes=1)
    with daemon_process(source, pg_dsn, tmp_path / "first.log") as first:
        first.wait_streaming()
        with daemon_process(source, pg_dsn, tmp_path / "standby.log", standby=True) as standby:
            standby.wait_event("standby")
            assert standby.stop() == 0, standby.log_text()[-2000:]
            assert "stopped while waiting" not in standby.log_text()
        assert first.stop() == 0
