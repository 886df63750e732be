"""PostgreSQL helpers for tests; the fixtures built on them live in conftest.py.

Import as ``from pgutil import make_dsn`` (pytest puts ``tests/`` on
``sys.path`` because of the root conftest).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import time
from collections.abc import Callable, Iterator
from importlib import resources
from urllib.parse import quote, urlsplit

import psycopg
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

MIN_SERVER_VERSION = 130000
"""DROP DATABASE ... WITH (FORCE) arrived in PostgreSQL 13."""

REFAPP_SCHEMA = ("replicator.data", "reference_app/postgres_schema.sql")


def make_dsn(admin_dsn: str, dbname: str) -> str:
    """``admin_dsn`` pointing at database ``dbname`` instead, everything else kept.

    A URL stays a URL (the CLI and config take URLs), a ``key=value`` string
    stays one; either way libpq's own parse of the result is checked.
    """
    if admin_dsn.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(admin_dsn)
        # A dbname in the query string would win over the path.
        query = "&".join(
            item for item in parts.query.split("&") if item and not item.startswith("dbname=")
        )
        # Not urlunsplit: it drops the "//" of a URL without a host.
        dsn = f"{parts.scheme}://{parts.netloc}/{quote(dbname, safe='')}"
        if query:
            dsn += f"?{query}"
    else:
        dsn = make_conninfo(admin_dsn, dbname=dbname)
    expected = {**conninfo_to_dict(admin_dsn), "dbname": dbname}
    if conninfo_to_dict(dsn) != expected:
        raise ValueError(f"could not point {redact_dsn(admin_dsn)} at database {dbname!r}")
    return dsn


def redact_dsn(dsn: str) -> str:
    """The DSN as ``key=value`` pairs with any password masked, fit for logs."""
    params = conninfo_to_dict(dsn)
    if "password" in params:
        params["password"] = "***"
    return make_conninfo("", **params)


def probe_server(dsn: str, timeout: int = 2) -> str | None:
    """Why this server cannot host the test databases, or None if it can."""
    try:
        with psycopg.connect(dsn, connect_timeout=timeout, autocommit=True) as conn:
            version = conn.info.server_version
            row = conn.execute(
                "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
    except psycopg.Error as exc:
        return f"cannot connect: {str(exc).strip()}"
    if version < MIN_SERVER_VERSION:
        return f"server version {version} is older than PostgreSQL 13"
    if row is None or not row[0]:
        return "the role may not CREATE DATABASE"
    return None


def apply_refapp_schema(conn: psycopg.Connection[TupleRow]) -> None:
    """Create the reference application's target schema (Alembic head included)."""
    package, name = REFAPP_SCHEMA
    conn.execute(resources.files(package).joinpath(name).read_bytes())


class TestDatabases:
    """Creates per-test databases by cloning templates prepared once per session.

    Names carry the pid, a random token and a counter, so that concurrent
    pytest processes (xdist workers, parallel CI jobs) sharing one server
    never collide. Every operation opens its own short admin connection: a
    test that kills connections cannot break the fixture machinery.
    """

    __test__ = False  # not a test class, whatever its name says

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        self._prefix = f"rt_{os.getpid()}_{secrets.token_hex(3)}"
        self._counter = itertools.count(1)
        self._templates: list[str] = []

    def new_name(self, kind: str) -> str:
        return f"{self._prefix}_{kind}_{next(self._counter)}"

    def create_template(
        self,
        kind: str,
        setup: Callable[[psycopg.Connection[TupleRow]], None] | None = None,
    ) -> str:
        """A new template database from ``template0`` (so truly empty), after ``setup``."""
        name = self.new_name(f"tpl_{kind}")
        ident = sql.Identifier(name)
        with self._admin() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(ident)
            )
        self._templates.append(name)
        if setup is not None:
            with psycopg.connect(make_dsn(self.admin_dsn, name)) as conn:
                setup(conn)
        with self._admin() as conn:
            # No connections: nothing (autovacuum included) can block cloning.
            conn.execute(
                sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(
                    ident
                )
            )
        return name

    def clone(self, template: str) -> str:
        """A new database copied from ``template``; returns its name."""
        name = self.new_name("db")
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)
        )
        for attempt in range(10):
            try:
                with self._admin() as conn:
                    conn.execute(statement)
            except errors.ObjectInUse:
                # "source database is being accessed by other users"
                if attempt == 9:
                    raise
                time.sleep(0.1)
            else:
                return name
        raise AssertionError("unreachable")

    def drop(self, name: str) -> None:
        with self._admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    @contextlib.contextmanager
    def database(self, template: str) -> Iterator[str]:
        """DSN of a fresh clone of ``template``, dropped afterwards."""
        name = self.clone(template)
        try:
            yield make_dsn(self.admin_dsn, name)
        finally:
            self.drop(name)

    def drop_templates(self) -> None:
        while self._templates:
            name = self._templates.pop()
            with self._admin() as conn:
                conn.execute(
                    sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(sql.Identifier(name))
                )
            self.drop(name)

    def _admin(self) -> psycopg.Connection[TupleRow]:
        return psycopg.connect(self.admin_dsn, autocommit=True, connect_timeout=10)


def database_exists(admin_dsn: str, name: str) -> bool:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


@contextlib.contextmanager
def password_role(admin_dsn: str, dsn: str, password: str) -> Iterator[tuple[str, str]]:
    """A throwaway login role with ``password`` that may create the state schema and
    tables in ``dsn``'s database; yields (URL, key=value DSN) connecting as it.

    Dropped afterwards with everything it owns."""
    role = f"rt_pw_{os.getpid()}_{secrets.token_hex(3)}"
    params = conninfo_to_dict(dsn)
    dbname = str(params["dbname"])
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
    try:
        with psycopg.connect(dsn, autocommit=True) as db:
            db.execute(
                sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                    sql.Identifier(dbname), sql.Identifier(role)
                )
            )
            db.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(role)))
        host = str(params.get("host") or "127.0.0.1")
        port = str(params.get("port") or "5432")
        if host.startswith("/"):
            url = (
                f"postgresql://{role}:{quote(password)}@/{quote(dbname)}"
                f"?host={quote(host)}&port={port}"
            )
        else:
            shown_host = f"[{host}]" if ":" in host else host
            url = f"postgresql://{role}:{quote(password)}@{shown_host}:{port}/{quote(dbname)}"
        keywords = f"host={host} port={port} dbname={dbname} user={role} password={password}"
        yield url, keywords
    finally:
        with psycopg.connect(dsn, autocommit=True) as db:
            db.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(sql.Identifier(role)))
            db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
