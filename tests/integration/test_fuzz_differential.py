"""A differential fuzzer: random schemas, values and DML against the real daemon.

A hypothesis state machine builds a SQLite file from a random schema
(:mod:`fuzzgen`: INTEGER, TEXT, composite or no key, WITHOUT ROWID, a foreign
key, UNIQUEs, defaults), fills it, then interleaves random transactions
(insert, update, key change, delete, REPLACE, UPSERT, rollbacks; every value
family, bad UTF-8, NUL, huge text, ±inf, big integers, odd timestamps and
JSON) with starting the daemon (a thread, or a ``replicator run`` process),
stopping it and killing it at random points, snapshot or stream alike.

At each check, and at the end, once the daemon has caught up and stopped:

- the :mod:`oracle` (which shares no code with the product) finds every source
  row exact in the target, or under an open dead letter, and nothing else there;
- every open dead letter has a reason, and names a row that holds a value the
  mapping may refuse (:func:`fuzzgen.clean_value`), a UNIQUE duplicate or a
  missing parent: a row of clean values is never dead-lettered;
- ``replicator verify`` agrees: IDENTICAL exactly when the oracle finds no
  difference and no row is dead-lettered, and every difference it counts is
  explained by a dead letter.

``make test`` runs :data:`CI_SETTINGS` (derandomized, about a minute) with
:data:`fuzzgen.CI_FEATURES`; ``bench/fuzz.py`` runs longer and with the known
gaps switched on.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fuzzgen import (
    CI_FEATURES,
    BadText,
    Schema,
    Table,
    bind,
    clean_value,
    create_sql,
    schemas,
    source_connection,
    values,
)
from harness import (
    DaemonProcess,
    DaemonThread,
    daemon_config,
    snapshot_config,
    source_head,
    start_daemon,
    stream_position,
    wait_until,
)
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)
from oracle import compare, open_dead_letters, raw_key
from pgutil import TestDatabases, make_dsn
from psycopg import sql

from replicator.proof.verify import Verifier

CI_SETTINGS = settings(
    max_examples=30,
    stateful_step_count=10,
    deadline=None,
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate),  # a failure prints its steps; no long shrink
    suppress_health_check=list(HealthCheck),
)
CATCH_UP_SECONDS = 90.0


def as_value(v: Any) -> Any:
    """A value read back (from SQLite or a dead letter's JSON) as one to bind again:
    bad UTF-8 as its bytes, a whole number beyond 64 bits as the real it was."""
    if isinstance(v, int) and not -(2**63) <= v < 2**63:
        return float(v)
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            return BadText(v.encode("utf-8", "surrogateescape"))
    return v


class FuzzMachine(RuleBasedStateMachine):
    """One example: a schema, its SQLite file, a target database, a daemon."""

    features: frozenset[str] = CI_FEATURES
    databases: TestDatabases
    template: str
    workdir: Path
    report: Callable[[str], None] = staticmethod(lambda line: None)
    _files = itertools.count(1)

    def __init__(self) -> None:
        super().__init__()
        self.schema: Schema | None = None
        self.path = self.workdir / f"fuzz{next(self._files)}.db"
        self.dbname = ""
        self.dsn = ""
        self.daemon: DaemonThread | DaemonProcess | None = None
        self.checks = 0
        self.broken = False  # a step failed: teardown only cleans up (no second failure)

    # -- the source ---------------------------------------------------------------

    def app(self) -> Any:
        assert self.schema is not None
        return source_connection(str(self.path), foreign_keys=self.schema.fk_enforced)

    @initialize(data=st.data())
    def setup(self, data: st.DataObject) -> None:
        self.broken = True
        self.schema = data.draw(schemas(self.features), label="schema")
        self.dbname = self.databases.clone(self.template)
        self.dsn = make_dsn(self.databases.admin_dsn, self.dbname)
        conn = self.app()
        conn.execute("PRAGMA journal_mode = WAL")
        for table in self.schema.tables:
            conn.execute(create_sql(table))
        conn.close()
        for table in self.schema.tables:  # parents first: the child is the last table
            for _ in range(data.draw(st.integers(0, 8), label=f"{table.name} rows")):
                self._run(data, [("insert", table)])
        self.report(f"schema {self.schema}")
        self.broken = False

    def _keys(self, conn: Any, table: Table) -> list[tuple[Any, ...]]:
        cols = ", ".join(f'"{k}"' if k != "rowid" else k for k in table.key_or_rowid)
        return [tuple(r) for r in conn.execute(f'SELECT {cols} FROM "{table.name}" ORDER BY 1')]

    def _statement(self, conn: Any, data: st.DataObject, op: str, table: Table) -> None:
        draw = data.draw
        keys = self._keys(conn, table)
        where = " AND ".join(
            f'"{k}" IS {{}}' if k != "rowid" else "rowid IS {}" for k in table.key_or_rowid
        )
        if op in ("update", "delete", "key_change") and not keys:
            op = "insert"
        if op in ("insert", "replace", "upsert"):
            verb = {"insert": "INSERT", "replace": "INSERT OR REPLACE", "upsert": "INSERT"}[op]
            cols = [c for c in table.columns if not (c.default and draw(st.booleans()))]
            if table.key_style == "integer" and op == "insert" and draw(st.booleans()):
                cols = [c for c in cols if c.name != "id"]  # SQLite picks the id
            row = [self._value(conn, data, table, c.name, keys) for c in cols]
            holders, params = zip(*(bind(v) for v in row), strict=True) if row else ((), ())
            names = ", ".join(f'"{c.name}"' for c in cols)
            text = (
                f'{verb} INTO "{table.name}" ({names}) VALUES ({", ".join(holders)})'
                if cols
                else f'{verb} INTO "{table.name}" DEFAULT VALUES'
            )
            if op == "upsert" and table.key and table.data_columns:
                sets = ", ".join(f'"{c.name}" = excluded."{c.name}"' for c in table.data_columns)
                keycols = ", ".join(f'"{k}"' for k in table.key)
                text += f" ON CONFLICT ({keycols}) DO UPDATE SET {sets}"
            self._exec(conn, text, list(params))
            return
        key = draw(st.sampled_from(keys))
        key_holders, key_params = self._bind_key(key)
        cond = where.format(*key_holders)
        if op == "delete":
            self._exec(conn, f'DELETE FROM "{table.name}" WHERE {cond}', key_params)
            return
        if op == "key_change":
            col = table.column(draw(st.sampled_from(table.key)))
            new = draw(values(col, self.features, key=True))
        else:
            if not table.data_columns:
                return
            col = draw(st.sampled_from(table.data_columns))
            new = self._value(conn, data, table, col.name, keys)
        holder, param = bind(new)
        self._exec(
            conn,
            f'UPDATE "{table.name}" SET "{col.name}" = {holder} WHERE {cond}',
            [param, *key_params],
        )
        if op == "key_change" and "parent_key_repoint" in self.features and self.schema:
            for child in self.schema.children(table.name):  # re-point its children too
                self._exec(
                    conn,
                    f'UPDATE "{child.name}" SET "parent_ref" = {holder} '
                    f'WHERE "parent_ref" IS {key_holders[0]}',
                    [param, key_params[0]] if key_params else [param],
                )

    @staticmethod
    def _bind_key(key: tuple[Any, ...]) -> tuple[list[str], list[Any]]:
        """Key values as read back (bad UTF-8 is surrogate-escaped) bound again."""
        holders, params = [], []
        for v in key:
            holder, param = bind(as_value(v))
            holders.append(holder)
            params.append(param)
        return holders, params

    def _value(
        self, conn: Any, data: st.DataObject, table: Table, name: str, keys: list[Any]
    ) -> Any:
        col = table.column(name)
        if table.parent and name == table.parent[0] and self.schema:
            parent = self.schema.table(table.parent[1])
            existing = [k[0] for k in self._keys(conn, parent)]
            pool = [st.none(), values(parent.column(parent.key[0]), self.features, key=True)]
            if existing:
                pool = [st.sampled_from(existing)] * 3 + pool
            return as_value(data.draw(st.one_of(*pool)))
        return data.draw(values(col, self.features, key=name in table.key))

    @staticmethod
    def _exec(conn: Any, text: str, params: list[Any]) -> None:
        with contextlib.suppress(sqlite3.IntegrityError):  # SQLite's own constraint refused it
            conn.execute(text, params)

    def _run(self, data: st.DataObject, ops: list[tuple[str, Table]]) -> None:
        conn = self.app()
        try:
            conn.execute("BEGIN IMMEDIATE")
            if "parent_key_repoint" in self.features:
                conn.execute("PRAGMA defer_foreign_keys = ON")
            for op, table in ops:
                self._statement(conn, data, op, table)
            if "rollback" in self.features and data.draw(st.integers(0, 9), label="rb") == 0:
                conn.execute("ROLLBACK")
                return
            try:
                conn.execute("COMMIT")
            except sqlite3.IntegrityError:  # a deferred foreign key still broken
                conn.execute("ROLLBACK")
        finally:
            conn.close()

    def _ops(self) -> list[str]:
        ops = ["insert", "insert", "update", "update", "delete"]
        ops += [op for op in ("replace", "upsert", "key_change") if op in self.features]
        return ops

    @rule(data=st.data())
    def write(self, data: st.DataObject) -> None:
        """One transaction of one to four statements."""
        assert self.schema is not None
        self.broken = True
        ops = []
        for _ in range(data.draw(st.integers(1, 4), label="statements")):
            table = data.draw(st.sampled_from(self.schema.tables), label="table")
            op = data.draw(st.sampled_from(self._allowed(table)), label="op")
            ops.append((op, table))
        self._run(data, ops)
        self.broken = False

    def _allowed(self, table: Table) -> list[str]:
        assert self.schema is not None
        ops = self._ops()
        unique = any(c.unique for c in table.columns)
        if "replace" in ops and unique and "replace_via_unique" not in self.features:
            ops.remove("replace")
        if "key_change" in ops and (
            not table.key
            or (self.schema.children(table.name) and "parent_key_repoint" not in self.features)
        ):
            ops.remove("key_change")
        return ops

    # -- the daemon ---------------------------------------------------------------

    @precondition(lambda self: self.daemon is None)
    @rule(kind=st.sampled_from(["thread", "thread", "process"]))
    def start(self, kind: str) -> None:
        if kind == "thread":
            config = daemon_config(self.path, self.dsn, log__level="warning")
            self.daemon = DaemonThread(config).start()
        else:
            log = self.workdir / f"{self.path.stem}-daemon.log"
            self.daemon = start_daemon(self.path, self.dsn, log)  # info: "streaming" is read

    @precondition(lambda self: self.daemon is not None)
    @rule(how=st.sampled_from(["stop", "kill"]), after=st.sampled_from([0.0, 0.3, 1.0]))
    def stop(self, how: str, after: float) -> None:
        """Stop (or SIGKILL, a process) the daemon after a moment: in the snapshot or not."""
        self.broken = True
        time.sleep(after)
        self._stop(how if "kill" in self.features else "stop")
        self.broken = False

    def _stop(self, how: str) -> None:
        daemon, self.daemon = self.daemon, None
        if isinstance(daemon, DaemonThread):
            daemon.stop(60)
        elif isinstance(daemon, DaemonProcess):
            if how == "kill":
                daemon.kill()
            else:
                code = daemon.stop(60)
                # -SIGTERM: stopped before Python installed its handler (just started)
                assert code in (0, -signal.SIGTERM), f"exited {code}:\n{daemon.tail()}"

    # -- the checks ---------------------------------------------------------------

    @rule()
    def check(self) -> None:
        """Catch up, stop, and hold the target against the oracle and verify."""
        self.broken = True
        if self.daemon is None:
            self.start("thread")
        assert self.daemon is not None
        self._wait_caught_up(self.daemon)
        with contextlib.suppress(AssertionError):  # a child waiting for its parent: a moment
            wait_until(lambda: not self._unexplained_letters(), 10, "dead letters to settle")
        self._stop("stop")
        self.checks += 1
        problems = self._problems()
        self.report(
            f"check {self.checks}: "
            + ("ok" if not problems else "DIVERGENCE\n" + "\n".join(problems))
        )
        assert not problems, "\n".join(problems)
        self.broken = False

    def _wait_caught_up(self, daemon: DaemonThread | DaemonProcess) -> None:
        """Until the snapshot is done and the applied position is the log's head (0 while
        nothing was ever logged: the position is recorded before the snapshot starts)."""

        def caught_up() -> bool:
            gone = daemon.gone()
            assert gone is None, f"the daemon stopped by itself: {gone}"
            if isinstance(daemon, DaemonThread):
                streaming = daemon.daemon.health.state == "streaming"
            else:  # its log starts afresh with each start
                streaming = daemon.has_event("streaming")
            position = stream_position(self.dsn)
            head = source_head(self.path) or 0
            return streaming and position is not None and position.seq == head

        try:
            wait_until(caught_up, CATCH_UP_SECONDS, "the daemon to catch up", every=0.1)
        except AssertionError as exc:
            state = (
                f"state {daemon.daemon.state}, last error {daemon.daemon.errors.last_error}"
                if isinstance(daemon, DaemonThread)
                else daemon.tail()
            )
            head, position = source_head(self.path), stream_position(self.dsn)
            raise AssertionError(f"{exc}: log head {head}, applied {position}; {state}") from None

    def _problems(self) -> list[str]:
        comparison = compare(self.path, self.dsn)
        letters = open_dead_letters(self.dsn)
        report = Verifier(snapshot_config(self.path, self.dsn), settle_timeout=5).run()
        problems = [] if comparison.equal else [f"oracle: {comparison}"]
        problems += [f"dead letter without a reason: {d}" for d in letters if not d["error"]]
        problems += self._unexplained_letters(letters)
        if comparison.equal and not letters and not report.ok:
            problems.append(f"verify says DIFFERENT, the oracle finds none:\n{report.render()}")
        if not comparison.equal and report.ok:
            problems.append(f"verify says IDENTICAL, the oracle differs:\n{report.render()}")
        for verdict in report.tables:
            if comparison.equal and verdict.differences != verdict.dead_lettered:
                rows = [
                    f"  {ex['key']!r}: source {self._source_row(verdict.table, ex['key'])!r}, "
                    f"target {self._target_row(verdict.table, ex['key'])!r}"
                    for ex in verdict.examples[:5]
                ]
                problems.append(
                    f"verify: unexplained differences in {verdict.table}:\n{report.render()}\n"
                    + "\n".join(rows)
                )
        # A child whose parent is dead-lettered is an orphan in the target: explained.
        parents_dead = {d["table_name"] for d in letters}
        assert self.schema is not None
        orphans = [
            o
            for o in report.orphans
            if (self.schema.table(o["table"]).parent or ("", ""))[1] not in parents_dead
        ]
        if orphans or report.sequences_behind or report.json_invalid:
            problems.append(f"verify's other checks:\n{report.render()}")
        return problems

    def _unexplained_letters(self, letters: list[dict[str, Any]] | None = None) -> list[str]:
        """Open dead letters of rows the mapping must carry (all values clean, parent there)."""
        assert self.schema is not None
        letters = open_dead_letters(self.dsn) if letters is None else letters
        out = []
        conn = self.app()
        try:
            for letter in letters:
                table = self.schema.table(letter["table_name"])
                key = raw_key(letter["key"])
                key = list(key) if isinstance(key, list) else [key]
                why = self._why_refused(conn, table, key)
                if why is None:
                    out.append(f"a row of clean values was dead-lettered: {letter}")
                elif why == "gone" and self._in_target(table, key):
                    out.append(f"a deleted row stays in the target behind a dead letter: {letter}")
                elif why == "gone":
                    out.append(f"a dead letter stays open for a row the source deleted: {letter}")
        finally:
            conn.close()
        return out

    def _why_refused(self, conn: Any, table: Table, key: list[Any]) -> str | None:
        """Why the source row may be refused; None when nothing explains it."""
        if len(key) != len(table.key_or_rowid):
            return "odd key"
        holders, params = self._bind_key(tuple(key))
        cond = " AND ".join(
            f'"{k}" IS {h}' if k != "rowid" else f"rowid IS {h}"
            for k, h in zip(table.key_or_rowid, holders, strict=True)
        )
        names = ", ".join(f'"{c.name}"' for c in table.columns)
        row = conn.execute(f'SELECT {names} FROM "{table.name}" WHERE {cond}', params).fetchone()
        if row is None:
            return "gone"
        if any(k != "rowid" and v is None for k, v in zip(table.key_or_rowid, key, strict=True)):
            return "NULL in its key"  # PostgreSQL's key cannot hold it: documented, a letter
        for col, value in zip(table.columns, row, strict=True):
            if not clean_value(col, value):
                return f"{col.name} holds {value!r}"
            if col.unique and value is not None:
                same = conn.execute(
                    f'SELECT count(*) FROM "{table.name}" WHERE "{col.name}" = ?',
                    [str(value) if col.family == "text" else value],
                ).fetchone()[0]
                if same > 1:
                    return f"{col.name} duplicates"
        if table.parent and self.schema:
            return self._parent_problem(
                conn, table, dict(zip([c.name for c in table.columns], row, strict=True))
            )
        return None

    def _parent_problem(self, conn: Any, table: Table, row: dict[str, Any]) -> str | None:
        assert table.parent and self.schema
        column, parent_name, _, _ = table.parent
        if row[column] is None:
            return None
        parent = self.schema.table(parent_name)
        holder, param = bind(as_value(row[column]))
        found = conn.execute(
            f'SELECT 1 FROM "{parent_name}" WHERE "{parent.key[0]}" = {holder}', [param]
        ).fetchone()
        if found is None:
            return "no parent"
        parent_letters = [d for d in open_dead_letters(self.dsn) if d["table_name"] == parent_name]
        return "parent dead-lettered" if parent_letters else None

    def _in_target(self, table: Table, key: list[Any]) -> bool:
        return self._target_row(table.name, key) is not None

    def _target_row(self, name: str, key: list[Any]) -> tuple[Any, ...] | None:
        assert self.schema is not None
        table = self.schema.table(name)
        names = ["_replicator_rowid" if k == "rowid" else k for k in table.key_or_rowid]
        cond = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(n)) for n in names)
        query = sql.SQL("SELECT * FROM {} WHERE {}").format(
            sql.Identifier("public", table.name), cond
        )
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                return conn.execute(query, key).fetchone()
        except (psycopg.Error, UnicodeEncodeError, ValueError):  # a key the target cannot hold
            return None

    def _source_row(self, name: str, key: list[Any]) -> tuple[Any, ...] | None:
        assert self.schema is not None
        table = self.schema.table(name)
        holders, params = self._bind_key(tuple(key))
        cond = " AND ".join(
            f"{k if k == 'rowid' else chr(34) + k + chr(34)} IS {h}"
            for k, h in zip(table.key_or_rowid, holders, strict=True)
        )
        conn = self.app()
        try:
            row = conn.execute(f'SELECT * FROM "{name}" WHERE {cond}', params).fetchone()
        finally:
            conn.close()
        return None if row is None else tuple(row)

    def teardown(self) -> None:
        try:
            if self.schema is not None and self.dsn and not self.broken:
                self.check()
        finally:
            if self.daemon is not None:
                daemon, self.daemon = self.daemon, None
                if isinstance(daemon, DaemonProcess):
                    daemon.kill()
                else:
                    daemon.daemon.request_stop()
                    daemon.thread.join(60)
            if self.dbname:
                self.databases.drop(self.dbname)


def fuzz_machine(
    databases: TestDatabases,
    template: str,
    workdir: Path,
    features: frozenset[str],
    report: Callable[[str], None] | None = None,
) -> type[FuzzMachine]:
    """The machine bound to a server, a template database and a working directory."""
    attrs: dict[str, Any] = {
        "databases": databases,
        "template": template,
        "workdir": workdir,
        "features": features,
    }
    if report is not None:
        attrs["report"] = staticmethod(report)
    return type("BoundFuzzMachine", (FuzzMachine,), attrs)


@pytest.mark.slow
def test_fuzz_source_and_target_agree_with_the_oracle_and_verify(
    pg_databases: TestDatabases, pg_empty_template: str, tmp_path: Path
) -> None:
    machine = fuzz_machine(pg_databases, pg_empty_template, tmp_path, CI_FEATURES)
    run_state_machine_as_test(machine, settings=CI_SETTINGS)
