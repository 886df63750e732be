"""``replicator check``: every preflight check at once, writing nothing.

Each check yields findings with a severity and what to do about it, so one run
shows every problem instead of the first one.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from replicator.config import Config
from replicator.dsn import redact_dsn
from replicator.errors import ReplicatorError, SchemaError
from replicator.plan.landing import Landing, render_report, schema_report
from replicator.plan.tables import TablePlan, build_plans, unknown_includes
from replicator.proof import edges
from replicator.source import changelog, consumers
from replicator.source.sqlite import journal_mode, list_tables, open_source, read_transaction
from replicator.state.checkpoint import consumer_id
from replicator.state.migrations import current_revision, head_revision
from replicator.target.connection import Connection, connect, first_line


@dataclass
class Finding:
    check: str
    ok: bool
    detail: str
    fix: str = ""
    severity: str = "error"  # "error" | "warning"


@dataclass
class CheckReport:
    findings: list[Finding] = field(default_factory=list)
    schema: list[Landing] = field(default_factory=list)  # what the source's schema becomes

    def add(
        self, check: str, ok: bool, detail: str, fix: str = "", severity: str = "error"
    ) -> None:
        self.findings.append(Finding(check, ok, detail, fix, severity))

    @property
    def ok(self) -> bool:
        return all(f.ok or f.severity == "warning" for f in self.findings)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "findings": [asdict(f) for f in self.findings],
            "schema": [item.to_json() for item in self.schema],
        }

    def render(self) -> str:
        lines = []
        for f in self.findings:
            mark = "ok  " if f.ok else ("WARN" if f.severity == "warning" else "FAIL")
            lines.append(f"[{mark}] {f.check}: {f.detail}")
            if not f.ok and f.fix:
                lines.append(f"       -> {f.fix}")
        if self.schema:
            lines.append("schema (SQLite -> PostgreSQL):")
            lines.extend(render_report(self.schema))
        problems = sum(1 for f in self.findings if not f.ok and f.severity == "error")
        warnings = sum(1 for f in self.findings if not f.ok and f.severity == "warning")
        lines.append(f"{problems} problem(s), {warnings} warning(s)")
        return "\n".join(lines)


def run_checks(config: Config, *, integrity: bool = True) -> CheckReport:
    report = CheckReport()
    source = _check_source(config, report, integrity)
    conn = _check_target(config, report)
    if conn is not None:
        with conn:
            _check_state(config, conn, report)
            if source is not None:
                _check_plans(config, source, conn, report)
                _check_consumers(config, source, conn, report)
    if source is not None:
        source.close()
    return report


def _check_source(
    config: Config, report: CheckReport, integrity: bool
) -> sqlite3.Connection | None:
    if config.source.path is None:
        report.add("source", False, "no source database configured", "set DATABASE_PATH")
        return None
    path = config.source.path
    try:
        source = open_source(path, readonly=True, busy_timeout_ms=config.source.busy_timeout_ms)
    except ReplicatorError as exc:
        report.add(
            "source readable",
            False,
            str(exc),
            "check DATABASE_PATH points at the app's SQLite file",
        )
        return None
    report.add("source readable", True, str(path))
    if integrity:
        rows = [r[0] for r in source.execute("PRAGMA quick_check").fetchmany(5)]
        healthy = rows == ["ok"]
        report.add(
            "source integrity",
            healthy,
            "PRAGMA quick_check: ok" if healthy else "; ".join(map(str, rows)),
            "restore the file from a backup; a corrupt source cannot be replicated faithfully",
        )
    unknown = unknown_includes(list_tables(source), config.tables.include)
    report.add(
        "tables.include names tables of the source",
        not unknown,
        "; ".join(unknown) if unknown else f"{len(config.tables.include)} name(s) or pattern(s)",
        "correct the name in tables.include (a pattern like 'app_*' may match none)",
    )
    mode = journal_mode(source)
    report.add(
        "source in WAL mode",
        mode == "wal",
        f"journal_mode = {mode}",
        "run PRAGMA journal_mode=WAL once (readers then never block the app's writer)",
        severity="warning",
    )
    writable = os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
    report.add(
        "source writable for triggers",
        writable or config.source.readonly,
        "writable" if writable else "read-only file or directory",
        'grant write access, or use capture = "cursor" (never writes to the source)',
    )
    if changelog.changelog_exists(source):
        report.add(
            "change capture",
            True,
            f"{len(changelog.installed_triggers(source))} trigger(s) installed",
        )
    else:
        report.add(
            "change capture", False, "not installed yet", "replicator init", severity="warning"
        )
    return source


def _check_target(config: Config, report: CheckReport) -> Connection | None:
    if config.target.url is None:
        report.add("target", False, "no target database configured", "set DATABASE_URL")
        return None
    dsn = config.target.url.reveal()
    try:
        conn = connect(dsn, autocommit=True, connect_timeout=config.target.connect_timeout)
    except ReplicatorError as exc:
        report.add(
            "target reachable", False, str(exc), "check DATABASE_URL, the network and pg_hba.conf"
        )
        return None
    version = conn.info.server_version
    report.add("target reachable", True, f"{redact_dsn(dsn)} (PostgreSQL {version // 10000})")
    report.add(
        "target version",
        version >= 130000,
        f"server_version_num {version}",
        "PostgreSQL 13 or newer is needed",
    )
    if not _schema_exists(conn, config.target.schema):
        report.add(
            "target schema",
            False,
            f"schema {config.target.schema!r} does not exist",
            "create it (the app's migrations normally do) or set target.schema",
        )
        return conn
    row = conn.execute(
        "SELECT pg_is_in_recovery(), has_schema_privilege(%s, 'USAGE'),"
        " has_schema_privilege(%s, 'CREATE'), has_database_privilege(current_database(), 'CREATE')",
        (config.target.schema, config.target.schema),
    ).fetchone()
    assert row is not None
    standby, usage, create, create_in_db = (bool(v) for v in row)
    report.add(
        "target writable",
        not standby,
        "a read-only standby" if standby else "primary",
        "point DATABASE_URL at the primary",
    )
    report.add(
        f"privileges on {config.target.schema!r}",
        usage and (create or not config.snapshot.create_tables),
        f"USAGE={usage} CREATE={create}",
        f"GRANT USAGE, CREATE ON SCHEMA {config.target.schema} TO the replicator's role",
    )
    state = config.target.state_schema
    if _schema_exists(conn, state):
        state_row = conn.execute("SELECT has_schema_privilege(%s, 'CREATE')", (state,)).fetchone()
        ok = bool(state_row and state_row[0])
        detail = f"CREATE on existing schema {state!r}={ok}"
    else:
        ok, detail = create_in_db, f"CREATE on the database (to make {state!r})={create_in_db}"
    report.add(
        "privileges for the state schema",
        ok,
        detail,
        "GRANT CREATE ON DATABASE ... TO the replicator's role (or create the schema for it)",
    )
    return conn


def _schema_exists(conn: Connection, schema: str) -> bool:
    row = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    return row is not None


def _check_state(config: Config, conn: Connection, report: CheckReport) -> None:
    schema = config.target.state_schema
    try:
        revision = current_revision(conn, schema)
    except psycopg.Error as exc:
        report.add("state schema", False, first_line(exc), "check privileges on the state schema")
        return
    head = head_revision()
    if revision is None:
        report.add(
            "state schema",
            False,
            f"{schema!r} not created yet",
            "replicator init",
            severity="warning",
        )
    else:
        report.add(
            "state schema",
            revision == head,
            f"{schema!r} at revision {revision} (this replicator: {head})",
            "replicator init (applies the missing migrations)",
        )


def _check_consumers(
    config: Config, source: sqlite3.Connection, conn: Connection, report: CheckReport
) -> None:
    """The targets fed from this source: one gone for good keeps the change log growing."""
    with read_transaction(source):
        registered = consumers.registered(source)
    if not registered:
        return
    schema = config.target.state_schema
    me = None
    if current_revision(conn, schema) is not None:
        with conn.cursor() as cur:
            me = consumer_id(cur, schema, create=False)
    others = [c for c in registered if c.consumer != me]
    report.add(
        "targets fed from this source",
        True,
        f"{len(registered)} registered ({len(others)} besides this one); "
        "the change log is kept down to the slowest",
    )
    for c in registered:
        if c.stale():
            report.add(
                f"consumer {c.consumer}",
                False,
                f"{c.label} at position {c.position} has not been seen for "
                f"{c.seen_ago() / 60:.0f} min: the change log is kept for it and grows",
                f"if it is gone for good: replicator uninstall --consumer {c.consumer}",
                severity="warning",
            )


def _check_plans(
    config: Config, source: sqlite3.Connection, conn: Connection, report: CheckReport
) -> None:
    try:
        plans = build_plans(source, conn, config)
    except SchemaError as exc:
        report.add(
            "tables and columns mappable",
            False,
            str(exc),
            "fix the target schema or add [table.<name>] settings (see docs/type-mapping.md)",
        )
        return
    columns = sum(len(p.columns) for p in plans)
    report.add(
        "tables and columns mappable",
        True,
        f"{len(plans)} table(s), {columns} column(s), no name collisions",
    )
    _check_landing(plans, report)
    edges.check_null_keys(source, plans, report.add)
    edges.check_orphans(source, plans, report.add)
    edges.check_enforcement(conn, plans, report.add)
    missing = [p.name for p in plans if not p.exists]
    if missing:
        report.add(
            "target tables",
            config.snapshot.create_tables,
            f"{len(missing)} to be created: {', '.join(missing[:10])}",
            "create them with the app's migrations, or set snapshot.create_tables = true",
            severity="warning" if config.snapshot.create_tables else "error",
        )
    for plan in plans:
        if not plan.exists:
            continue
        row = conn.execute(
            "SELECT has_table_privilege(format('%%I.%%I', %s::text, %s::text),"
            " 'INSERT,UPDATE,DELETE')",
            (plan.schema, plan.name),
        ).fetchone()
        if row and not row[0]:
            report.add(
                f"write {plan.schema}.{plan.name}",
                False,
                "no INSERT/UPDATE/DELETE privilege",
                f"GRANT INSERT, UPDATE, DELETE ON {plan.schema}.{plan.name} TO the replicator",
            )


def _check_landing(plans: list[TablePlan], report: CheckReport) -> None:
    """What the tables to be created will carry of the source's schema, and what not."""
    report.schema = schema_report(plans)
    made = {p.source.name for p in plans if not p.exists}
    skipped = [i for i in report.schema if i.outcome == "skipped" and i.table in made]
    translated = sum(1 for i in report.schema if i.outcome == "translated")
    detail = f"{translated} object(s) translated, {len(skipped)} not carried over"
    if skipped:
        detail += ": " + "; ".join(f"{i.table} {i.kind} {i.name}".strip() for i in skipped[:5])
    report.add(
        "schema carried over",
        not skipped,
        detail,
        "see the schema section: recreate what was not carried over in PostgreSQL before cutover",
        severity="warning",
    )
