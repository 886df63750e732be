"""Root fixtures: the PostgreSQL server and per-test databases.

Which server the suite uses, in order:

1. ``REPLICATOR_TEST_DSN`` when set. It must work: if it does not, every
   database test errors (never skips) with the reason.
2. The machine's server at ``REPLICATOR_TEST_DEFAULT_DSN`` (default
   ``postgresql://postgres@127.0.0.1:5432/postgres``) if it answers within a
   couple of seconds and may create databases.
3. Otherwise a :class:`~replicator.demo.devdb.ThrowawayPostgres` for the session.

The choice is printed on the terminal when the first database test starts.
Each test gets its own database, cloned from a template prepared once per
session and dropped afterwards.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

if importlib.util.find_spec("replicator") is None:
    # A checkout without an (editable) install: test the package next door.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pytest
from pgutil import (
    TestDatabases,
    apply_refapp_schema,
    probe_server,
    redact_dsn,
)

from replicator.demo.devdb import ThrowawayPostgres

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
EXPLICIT_DSN_ENV = "REPLICATOR_TEST_DSN"
DEFAULT_DSN_ENV = "REPLICATOR_TEST_DEFAULT_DSN"


def pytest_report_header(config: pytest.Config) -> str:
    explicit = os.environ.get(EXPLICIT_DSN_ENV)
    if explicit:
        return f"postgres: {EXPLICIT_DSN_ENV} ({redact_dsn(explicit)})"
    default = os.environ.get(DEFAULT_DSN_ENV) or DEFAULT_DSN
    return f"postgres: {redact_dsn(default)} if it answers, else a throwaway server"


def _announce(config: pytest.Config, message: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:  # e.g. an xdist worker
        print(f"[replicator] {message}", file=sys.stderr)
        return
    # Fixture setup runs with output captured; this line is for the terminal.
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        reporter.write("\n")
        reporter.write_line(f"[replicator] {message}", yellow=True)


@pytest.fixture(scope="session")
def pg_admin_dsn(pytestconfig: pytest.Config) -> Iterator[str]:
    """DSN of a superuser-ish (CREATEDB) connection to the session's server."""
    explicit = os.environ.get(EXPLICIT_DSN_ENV)
    if explicit:
        problem = probe_server(explicit, timeout=5)
        if problem is not None:
            pytest.fail(
                f"{EXPLICIT_DSN_ENV} ({redact_dsn(explicit)}) is set but unusable: {problem}",
                pytrace=False,
            )
        _announce(pytestconfig, f"PostgreSQL for tests: {EXPLICIT_DSN_ENV} {redact_dsn(explicit)}")
        yield explicit
        return
    default = os.environ.get(DEFAULT_DSN_ENV) or DEFAULT_DSN
    problem = probe_server(default)
    if problem is None:
        _announce(pytestconfig, f"PostgreSQL for tests: local server {redact_dsn(default)}")
        yield default
        return
    with ThrowawayPostgres() as server:
        reason = problem.splitlines()[0]
        _announce(
            pytestconfig,
            f"PostgreSQL for tests: throwaway server {server.dsn} "
            f"(from {server.server_bindir}; {redact_dsn(default)}: {reason})",
        )
        yield server.dsn


@pytest.fixture(scope="session")
def pg_databases(pg_admin_dsn: str) -> Iterator[TestDatabases]:
    """Creates and drops the session's templates and the per-test databases."""
    databases = TestDatabases(pg_admin_dsn)
    yield databases
    databases.drop_templates()


@pytest.fixture(scope="session")
def pg_empty_template(pg_databases: TestDatabases) -> str:
    """Name of an empty UTF8 template database (made from template0)."""
    return pg_databases.create_template("empty")


@pytest.fixture(scope="session")
def pg_refapp_template(pg_databases: TestDatabases) -> str:
    """Name of a template holding the reference application's target schema."""
    return pg_databases.create_template("refapp", setup=apply_refapp_schema)


@pytest.fixture
def pg_dsn(pg_databases: TestDatabases, pg_empty_template: str) -> Iterator[str]:
    """DSN of a fresh, empty database of this test's own, dropped afterwards."""
    with pg_databases.database(pg_empty_template) as dsn:
        yield dsn


@pytest.fixture
def refapp_pg_dsn(pg_databases: TestDatabases, pg_refapp_template: str) -> Iterator[str]:
    """DSN of a fresh database with the reference app's schema (Alembic head
    20251112_0010, no rows), this test's own, dropped afterwards."""
    with pg_databases.database(pg_refapp_template) as dsn:
        yield dsn


@pytest.fixture
def throwaway_pg() -> Iterator[ThrowawayPostgres]:
    """A running server this test owns alone: it may stop, crash and restart it."""
    with ThrowawayPostgres() as server:
        yield server
