"""``replicator status`` as an operator runs it, through a daemon's whole life, and
passwords that must never show.

Status runs as a subprocess with DATABASE_PATH / DATABASE_URL only. Its JSON
document has a fixed shape; its exit code is 0 in sync, 1 behind / stalled /
not started, 2 when the state cannot be read; the daemon is reported running,
stopped, or with a stale heartbeat (killed without a word).

A target URL that holds a password (a role of its own with a password; the
local server trusts connections, so the password is never checked, but it is
in the URL every command gets) must not appear in any output, any log line or
any table of the state schema.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from harness import REPLICATOR, DaemonProcess, daemon_env, free_port, wait_until
from obsutil import (
    cli,
    lines_containing,
    make_items_db,
    pg_exec,
    pg_rows,
    sqlite_exec,
    start_replicator,
    status_json,
    text_of_state_schema,
    wait_applied,
)
from psycopg import sql

NoneType = type(None)
TOP_KEYS: dict[str, tuple[type, ...]] = {
    "daemon": (dict,),
    "tables": (list,),
    "applied_position": (int, NoneType),
    "source_position": (int, NoneType),
    "verdict": (str,),
    "eta_seconds": (int, float, NoneType),
    "exit_code": (int,),
    "lag_changes": (int,),
    "lag_seconds": (int, float),
}
DAEMON_KEYS: dict[str, tuple[type, ...]] = {
    "state": (str,),
    "host": (str, NoneType),
    "pid": (int, NoneType),
    "since": (str, NoneType),
    "heartbeat_age": (int, float, NoneType),
    "last_error": (str, NoneType),
    "lock_holder": (str, NoneType),
}
TABLE_KEYS: dict[str, tuple[type, ...]] = {
    "table": (str,),
    "mode": (str,),
    "source_rows": (int, NoneType),
    "target_rows": (int, NoneType),
    "snapshot": (str,),
    "lag_changes": (int,),
    "lag_seconds": (int, float),
    "last_applied_at": (str, NoneType),
    "per_second": (int, float),
    "dead_letters": (int,),
}


def assert_shape(doc: dict[str, Any], code: int) -> None:
    """Every documented key, each of its documented type (new keys may be added)."""

    def check(obj: dict[str, Any], spec: dict[str, tuple[type, ...]], where: str) -> None:
        missing = set(spec) - set(obj)
        assert not missing, f"{where}: keys {sorted(missing)} are missing"
        for key, types in spec.items():
            value = obj[key]
            ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
            assert ok, f"{where}.{key} = {value!r} is not {types}"

    check(doc, TOP_KEYS, "status")
    check(doc["daemon"], DAEMON_KEYS, "status.daemon")
    for i, table in enumerate(doc["tables"]):
        check(table, TABLE_KEYS, f"status.tables[{i}]")
        if table["last_applied_at"] is not None:
            datetime.fromisoformat(table["last_applied_at"])
    if doc["daemon"]["since"] is not None:
        datetime.fromisoformat(doc["daemon"]["since"])
    assert doc["exit_code"] == code, f"the document says {doc['exit_code']}, the exit code {code}"
    assert doc["lag_changes"] == sum(t["lag_changes"] for t in doc["tables"])


def status(source: Path, dsn: str) -> tuple[int, dict[str, Any]]:
    code, doc = status_json(source, dsn)
    assert_shape(doc, code)
    return code, doc


def start(source: Path, dsn: str, log: Path, **kwargs: Any) -> DaemonProcess:
    daemon = start_replicator(source, dsn, log, metrics_address="127.0.0.1:0", **kwargs)
    daemon.wait_streaming(timeout=180)
    wait_applied(daemon)
    return daemon


def test_status_through_the_daemon_lifecycle(tmp_path: Path, pg_dsn: str) -> None:
    source = make_items_db(tmp_path / "app.db", items=50, notes=5)

    # Never started.
    code, doc = status(source, pg_dsn)
    assert (code, doc["verdict"], doc["daemon"]["state"]) == (1, "not started", "never started")
    human = cli("status", source=source, dsn=pg_dsn)
    assert human.returncode == 1 and "verdict: not started" in human.stdout, human

    daemon = start(source, pg_dsn, tmp_path / "run1.log")
    try:
        # Running and in sync.
        code, doc = status(source, pg_dsn)
        assert (code, doc["verdict"]) == (0, "in sync"), doc
        assert doc["daemon"]["state"] == "running (streaming)"
        assert doc["daemon"]["pid"] == daemon.pid
        assert f"pid {daemon.pid}" in (doc["daemon"]["lock_holder"] or "")
        tables = {t["table"]: t for t in doc["tables"]}
        assert set(tables) == {"items", "notes"}
        assert (tables["items"]["source_rows"], tables["items"]["target_rows"]) == (50, 50)
        assert tables["items"]["snapshot"] == "done" and tables["items"]["mode"] == "triggers"
        assert doc["applied_position"] == doc["source_position"] == 0

        # Behind while the daemon runs: paused with changes waiting.
        os.kill(daemon.pid, signal.SIGSTOP)
        try:
            sqlite_exec(source, "UPDATE items SET qty = qty + 1 WHERE id <= 5")
            code, doc = status(source, pg_dsn)
            assert (code, doc["lag_changes"]) == (1, 5), doc
            assert doc["verdict"].startswith(("catching up", "stalled")), doc["verdict"]
            assert doc["daemon"]["state"] == "running (streaming)"
        finally:
            os.kill(daemon.pid, signal.SIGCONT)
        wait_applied(daemon)
        code, doc = status(source, pg_dsn)
        assert (code, doc["verdict"], doc["lag_changes"]) == (0, "in sync", 0), doc
        assert {t["table"]: t["lag_changes"] for t in doc["tables"]} == {"items": 0, "notes": 0}
        items = next(t for t in doc["tables"] if t["table"] == "items")
        assert items["last_applied_at"] is not None

        # --watch redraws until interrupted.
        watch_out = tmp_path / "watch.out"
        with watch_out.open("wb") as out:
            watcher = subprocess.Popen(
                [str(REPLICATOR), "status", "--watch", "--interval", "0.2"],
                env=daemon_env(source, pg_dsn),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            try:
                # (click drops the clear-screen escape when stdout is not a terminal)
                wait_until(
                    lambda: watch_out.read_bytes().count(b"verdict: ") >= 3, 60, "3 --watch frames"
                )
                watcher.send_signal(signal.SIGINT)
                assert watcher.wait(30) == 130
            finally:
                if watcher.poll() is None:
                    watcher.kill()
                    watcher.wait()
        frames = watch_out.read_text(errors="replace").split("daemon: ")[1:]
        assert len(frames) >= 3 and "Traceback" not in watch_out.read_text(errors="replace")
        assert all("verdict: in sync" in frame for frame in frames[:3]), frames[:3]

        # Stopped: in sync (0) until the source changes, then stalled (1).
        assert daemon.stop() == 0
        code, doc = status(source, pg_dsn)
        assert (code, doc["daemon"]["state"]) == (0, "stopped"), doc
        assert doc["verdict"] == "in sync (daemon stopped)"
        assert doc["daemon"]["lock_holder"] is None
        sqlite_exec(source, "DELETE FROM notes WHERE id = 1")
        code, doc = status(source, pg_dsn)
        assert (code, doc["verdict"], doc["lag_changes"]) == (1, "stalled", 1), doc
    finally:
        daemon.kill()

    # Killed without a word: a stale heartbeat.
    daemon = start(source, pg_dsn, tmp_path / "run2.log")
    try:
        daemon.kill()

        def stale() -> bool:
            status.last = status_json(source, pg_dsn)  # type: ignore[attr-defined]
            return bool(status.last[1]["daemon"]["state"] == "stale heartbeat")  # type: ignore[attr-defined]

        wait_until(stale, 60, "the killed daemon's state to read 'stale heartbeat'", every=0.2)
        code, doc = status(source, pg_dsn)
        assert (code, doc["daemon"]["state"]) == (0, "stale heartbeat"), doc
        assert doc["verdict"] == "in sync (daemon stale heartbeat)"
        sqlite_exec(source, "UPDATE notes SET body = 'later' WHERE id = 2")
        code, doc = status(source, pg_dsn)
        assert (code, doc["verdict"]) == (1, "stalled"), doc
    finally:
        daemon.kill()

    # State that cannot be read: exit 2, one line on stderr, nothing on stdout.
    parts = urlsplit(pg_dsn)
    unreachable = pg_dsn.replace(parts.netloc, f"postgres@127.0.0.1:{free_port()}")
    for args in (("status",), ("status", "--json")):
        done = cli(*args, source=source, dsn=unreachable, timeout=60)
        assert done.returncode == 2, done
        assert done.stdout == ""
        assert done.stderr.startswith("replicator: error:") and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    pg_exec(pg_dsn, "UPDATE replicator.alembic_version SET version_num = 'from_the_future'")
    done = cli("status", source=source, dsn=pg_dsn, timeout=60)
    assert done.returncode == 2 and "replicator init" in done.stderr, done


# -- passwords ---------------------------------------------------------------------------

PASSWORD = "sekret-xyz"


@pytest.fixture
def password_dsn(pg_dsn: str) -> Iterator[str]:
    """``pg_dsn`` as a role of this test's own that has a password, owning the database."""
    role = f"rt_pw_{secrets.token_hex(4)}"
    dbname = urlsplit(pg_dsn).path.lstrip("/")
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(PASSWORD)
            )
        )
        try:
            admin.execute(
                sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    sql.Identifier(dbname), sql.Identifier(role)
                )
            )
            admin.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(role)))
            netloc = urlsplit(pg_dsn).netloc.split("@", 1)[1]
            yield pg_dsn.replace(urlsplit(pg_dsn).netloc, f"{role}:{PASSWORD}@{netloc}", 1)
        finally:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            admin.execute(
                sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(sql.Identifier(role))
            )
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_password_in_the_url_shows_in_no_output_log_or_state(
    tmp_path: Path, password_dsn: str
) -> None:
    assert f":{PASSWORD}@" in password_dsn
    source = make_items_db(tmp_path / "app.db", items=40, notes=5)
    outputs: list[tuple[str, str]] = []

    def run(*args: str, dsn: str = password_dsn, expect: int | None = None) -> str:
        done = cli(*args, source=source, dsn=dsn, settings={"REPLICATOR_LOG_LEVEL": "debug"})
        outputs.append((f"{' '.join(args)} stdout", done.stdout))
        outputs.append((f"{' '.join(args)} stderr", done.stderr))
        if expect is not None:
            assert done.returncode == expect, (args, done.stdout[-1500:], done.stderr[-1500:])
            assert done.stdout.strip(), f"{args} printed nothing"
        return done.stdout

    daemon = start(
        source, password_dsn, tmp_path / "daemon.log", settings={"REPLICATOR_LOG_LEVEL": "debug"}
    )
    try:
        role = urlsplit(password_dsn).username
        users = {
            str(r[0])
            for r in pg_rows(
                password_dsn,
                "SELECT usename FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name LIKE 'replicator%%'",
            )
        }
        assert users == {role}, f"the daemon is not connected through the URL: {users}"
        sqlite_exec(source, "UPDATE items SET qty = qty + 1 WHERE id <= 3")
        wait_applied(daemon)
        pg_exec(password_dsn, "UPDATE items SET name = 'changed in postgres' WHERE id = 4")
        sqlite_exec(source, "UPDATE items SET qty = 'not a number' WHERE id = 6")  # a dead letter
        wait_applied(daemon)

        # Caught up, with one row held in a dead letter: not plainly "in sync" (exit 7).
        assert "verdict: in sync except 1 row(s) held" in run("status", expect=7)
        run("status", "--json", expect=7)
        assert "items: different key [4]" in run("verify", expect=1)
        run("verify", "--json", expect=1)
        run("cutover", "--dry-run", expect=1)
        run("cutover", "--dry-run", "--json", expect=1)
        run("dead-letters", "list", expect=0)
        run("check", expect=None)
        # Failures that talk about the target: unreachable, no such database, a bad option.
        parts = urlsplit(password_dsn)
        host = parts.netloc.rsplit("@", 1)[1]
        bad_port = password_dsn.replace(host, f"127.0.0.1:{free_port()}")
        no_db = password_dsn.replace(parts.path, "/no_such_database_" + secrets.token_hex(3))
        bad_option = password_dsn + "?sslmode=sometimes"
        for dsn in (bad_port, no_db, bad_option):
            assert PASSWORD in dsn
            for args in (("status",), ("verify",)):
                run(*args, dsn=dsn)
                assert outputs[-1][1].startswith("replicator: error:"), outputs[-1]
            # cutover turns a failing check into NO-GO with the reason, on stdout
            assert "[FAIL] daemon running" in run("cutover", "--dry-run", dsn=dsn, expect=1)
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    outputs.append(("daemon log", daemon.log_text()))
    assert daemon.has_event("dead_letter")
    outputs.append(("state schema", text_of_state_schema(password_dsn)))
    # The URL was shown (redacted), so its absence below means something.
    assert lines_containing(f"{urlsplit(password_dsn).username}:***@", outputs)
    leaks = lines_containing(PASSWORD, outputs)
    assert not leaks, "the password leaked:\n" + "\n".join(leaks[:20])
    assert len(outputs) >= 30
