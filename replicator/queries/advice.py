"""Plan advice beyond the indexes SQLite had: statements to run, never run for you.

:mod:`replicator.queries.plans` points at the indexes the source had and the
target lacks. A replicated database can also need what SQLite never had:
JSON stored as ``jsonb`` is filtered with ``@>`` and ``->>``, which a GIN
(``jsonb_path_ops``) or an expression index serves; a search with
``ILIKE '%term%'`` can only use a trigram index (``pg_trgm``); and the server's
settings decide whether a sort stays in memory (``work_mem``) and whether the
planner believes an index is cheap to read (``random_page_cost``,
``effective_cache_size``).

Every query's PostgreSQL plan (``EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)``
for its slowest parameter set) is read for those needs. Each piece of
advice carries the statements that would act on it, rendered for this server
(``CREATE INDEX CONCURRENTLY``, ``CREATE EXTENSION``, ``SET`` to try it in a
session, ``ALTER SYSTEM``/``ALTER DATABASE``/``ALTER ROLE`` to keep it,
whichever level the current value comes from). Nothing is ever applied: the
checker's session is read-only, and the advice only prints.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import RawCursor, sql

from replicator.identifiers import pg_ident
from replicator.queries.plans import PlanNode
from replicator.queries.spec import ParamSet, QuerySpec
from replicator.target.connection import Connection, first_line

__all__ = ["Advice", "PlanAdvice"]

SELECTIVE = 0.05  # a scan keeping fewer rows than this share would rather use an index

_JSONB_CONTAINS = re.compile(r"\(?(?:\w+\.)?\"?(\w+)\"? @> ")
_JSONB_FIELD = re.compile(
    r"\(*(?:\w+\.)?\"?(\w+)\"? ->> '((?:[^']|'')*)'::text\)(?:\)::([a-z][a-z0-9 ]*[a-z0-9]))?"
)
_LIKE_ANY = re.compile(r"\(*(?:\w+\.)?\"?(\w+)\"?\)?(?:::[a-z ]+)? (~~\*?) \(*'%")
_BTREE_CMP = re.compile(r"\(*(?:\w+\.)?\"?(\w+)\"?\)? (=|<|>|<=|>=|IS NULL)")


@dataclass
class Advice:
    """One need the plan shows, why, and the statements that would meet it."""

    kind: str  # jsonb_gin, jsonb_expression, trigram, work_mem, random_page_cost, ...
    relation: str | None
    reason: str
    statements: list[str] = field(default_factory=list)

    def lines(self, name: str) -> list[str]:
        return [f"{name}: advice: {self.reason}", *(f"      {s}" for s in self.statements)]


@dataclass
class _Setting:
    name: str
    shown: str  # current_setting(): with its unit, as a person writes it
    raw: float  # in the setting's base unit
    unit: str | None
    source: str


class PlanAdvice:
    """Reads one query's plan nodes against the target's catalog and settings."""

    def __init__(self, conn: Connection, schema: str, large_table_rows: int) -> None:
        self.conn = conn
        self.schema = schema
        self.large = large_table_rows

    # -- entry ---------------------------------------------------------------

    def advise(self, spec: QuerySpec, ps: ParamSet, nodes: Sequence[PlanNode]) -> list[Advice]:
        out: list[Advice] = []
        seen: set[tuple[str, str | None, str]] = set()

        def add(items: list[Advice]) -> None:
            for a in items:
                key = (a.kind, a.relation, "\n".join(a.statements))
                if key not in seen:
                    seen.add(key)
                    out.append(a)

        for _depth, node in nodes:
            add(self._spill(node))
            relation = node.get("Relation Name")
            filt = str(node.get("Filter") or "")
            if not relation or not filt or not self._reads_many(node, str(relation)):
                continue
            add(self._jsonb(str(relation), filt))
            add(self._trigram(str(relation), filt))
            if node.get("Node Type") == "Seq Scan":
                add(self._seq_over_index(spec, ps, node, str(relation), filt))
        return out

    # -- when a scan matters -----------------------------------------------------

    def _reads_many(self, node: dict[str, Any], relation: str) -> bool:
        """The scan reads many rows and its filter throws most of them away."""
        loops = max(1, int(node.get("Actual Loops", 1)))
        kept = float(node.get("Actual Rows", 0)) * loops
        removed = float(node.get("Rows Removed by Filter", 0)) * loops
        estimated = self._reltuples(relation) if node.get("Node Type") == "Seq Scan" else 0.0
        return max(kept + removed, estimated) >= self.large and removed > kept

    # -- JSONB ---------------------------------------------------------------------

    def _jsonb(self, relation: str, filt: str) -> list[Advice]:
        out = []
        target = self._qualified(relation)
        indexes = self._index_defs(relation)
        for col in dict.fromkeys(_JSONB_CONTAINS.findall(filt)):
            if self._column_type(relation, col) != "jsonb":
                continue
            if any(" USING gin " in d and f"({col}" in d.replace('"', "") for d in indexes):
                continue
            out.append(
                Advice(
                    "jsonb_gin",
                    relation,
                    f"{relation}: the filter tests {col} @> ... on every row it reads; a GIN "
                    f"index with jsonb_path_ops answers containment from the index",
                    [
                        self._render(
                            sql.SQL(
                                "CREATE INDEX CONCURRENTLY ON {} USING gin ({} jsonb_path_ops);"
                            ).format(target, pg_ident(col))
                        )
                    ],
                )
            )
        for col, quoted, cast in dict.fromkeys(_JSONB_FIELD.findall(filt)):
            if self._column_type(relation, col) != "jsonb":
                continue
            key = quoted.replace("''", "'")
            expr = sql.SQL("({} ->> {})").format(pg_ident(col), sql.Literal(key))
            if cast:
                expr = sql.SQL("({}::{})").format(expr, sql.SQL(cast))
            flat = self._render(expr).replace('"', "")
            if any(_squash(flat) in _squash(d.replace('"', "")) for d in indexes):
                continue
            out.append(
                Advice(
                    "jsonb_expression",
                    relation,
                    f"{relation}: the filter compares {flat} on every row it reads; an expression "
                    "index on exactly that expression lets the planner use it",
                    [
                        self._render(
                            sql.SQL("CREATE INDEX CONCURRENTLY ON {} ({});").format(target, expr)
                        )
                    ],
                )
            )
        return out

    # -- LIKE '%...%' ------------------------------------------------------------------

    def _trigram(self, relation: str, filt: str) -> list[Advice]:
        out = []
        indexes = self._index_defs(relation)
        for col, op in dict.fromkeys(_LIKE_ANY.findall(filt)):
            if any("trgm_ops" in d and col in d for d in indexes):
                continue
            installed, available = self._extension("pg_trgm")
            statements = []
            if not installed:
                statements.append("CREATE EXTENSION IF NOT EXISTS pg_trgm;")
            statements.append(
                self._render(
                    sql.SQL("CREATE INDEX CONCURRENTLY ON {} USING gin ({} gin_trgm_ops);").format(
                        self._qualified(relation), pg_ident(col)
                    )
                )
            )
            word = "ILIKE" if op == "~~*" else "LIKE"
            reason = (
                f"{relation}: {col} {word} '%...%' cannot use a b-tree index (the pattern "
                "starts with a wildcard); a trigram GIN index serves LIKE and ILIKE anywhere "
                "in the text"
            )
            if not available:
                reason += " (pg_trgm is not available on this server: install postgresql-contrib)"
            out.append(Advice("trigram", relation, reason, statements))
        return out

    # -- sorts and hashes on disk ----------------------------------------------------------

    def _spill(self, node: dict[str, Any]) -> list[Advice]:
        kinds = []
        spilled_kb = 0.0
        if node.get("Sort Space Type") == "Disk":
            kinds.append("a sort")
            spilled_kb = max(spilled_kb, float(node.get("Sort Space Used", 0)))
        if int(node.get("Hash Batches", 1) or 1) > 1:
            kinds.append("a hash")
            batches = int(node["Hash Batches"])
            spilled_kb = max(spilled_kb, float(node.get("Peak Memory Usage", 0)) * batches)
        if int(node.get("HashAgg Batches", 1) or 1) > 1 or float(node.get("Disk Usage", 0)) > 0:
            kinds.append("a hash aggregate")
            spilled_kb = max(spilled_kb, float(node.get("Disk Usage", 0)))
        if not kinds:
            return []
        current = self._setting("work_mem")
        need_kb = max(spilled_kb * 2, current.raw * 2 if current else 0.0, 4096.0)
        value = f"{2 ** math.ceil(math.log2(need_kb / 1024))}MB"
        return [
            Advice(
                "work_mem",
                None,
                f"{' and '.join(kinds)} ran out of work_mem"
                f"{f' ({current.shown})' if current else ''} and spilled "
                f"{spilled_kb:,.0f} kB to disk: raise work_mem for this workload (it is per "
                "sort or hash, per connection: mind max_connections)",
                self._setting_statements("work_mem", value, current),
            )
        ]

    # -- a sequential scan where an index would do ---------------------------------------------

    def _seq_over_index(
        self, spec: QuerySpec, ps: ParamSet, node: dict[str, Any], relation: str, filt: str
    ) -> list[Advice]:
        loops = max(1, int(node.get("Actual Loops", 1)))
        kept = float(node.get("Actual Rows", 0)) * loops
        read = kept + float(node.get("Rows Removed by Filter", 0)) * loops
        if read < max(self.large, 1) or kept / read >= SELECTIVE:
            return []
        leads = self._btree_leads(relation)
        usable = [
            (col, idx)
            for col, _op in _BTREE_CMP.findall(filt)
            for idx, lead in leads
            if lead == col
        ]
        if not usable:
            return []
        col, index = usable[0]
        forced = self._forced_index_ms(spec, ps)
        evidence = ""
        if forced is not None:
            evidence = (
                f"; with sequential scans disabled the plan takes {forced[1]:.1f} ms"
                f"{' using ' + forced[0] if forced[0] else ''}"
            )
        rpc = self._setting("random_page_cost")
        ecs = self._setting("effective_cache_size")
        size = self._relation_bytes(relation)
        out = []
        base = (
            f"{relation}: the planner reads all {read:,.0f} rows to keep {kept:,.0f} although "
            f"index {index} starts with {col}{evidence}"
        )
        if rpc is not None and rpc.raw > 1.1:
            out.append(
                Advice(
                    "random_page_cost",
                    relation,
                    f"{base}. random_page_cost = {rpc.shown} prices an index read as that many "
                    "sequential page reads; on SSDs or a cached database 1.1 is the usual value",
                    self._setting_statements("random_page_cost", "1.1", rpc),
                )
            )
        if ecs is not None and ecs.unit == "8kB" and ecs.raw * 8192 < 2 * size:
            want = max(2 * size, int(ecs.raw * 8192) * 2)
            value = f"{2 ** math.ceil(math.log2(max(want, 1) / 2**20))}MB"
            out.append(
                Advice(
                    "effective_cache_size",
                    relation,
                    f"{base}. effective_cache_size = {ecs.shown} tells the planner {relation} "
                    f"({size / 2**20:,.1f} MB with its indexes) will not stay cached; set it "
                    "to about three quarters of the server's memory (the value below is the least "
                    "that holds this table and its indexes twice over)",
                    self._setting_statements("effective_cache_size", value, ecs),
                )
            )
        if not out:
            out.append(
                Advice(
                    "statistics",
                    relation,
                    f"{base}; random_page_cost and effective_cache_size already favour "
                    "indexes: refresh the statistics the estimate came from",
                    [self._render(sql.SQL("ANALYZE {};").format(self._qualified(relation)))],
                )
            )
        return out

    def _forced_index_ms(self, spec: QuerySpec, ps: ParamSet) -> tuple[str, float] | None:
        """The plan PostgreSQL would run without sequential scans: (index used, ms)."""
        try:
            with self.conn.transaction(), RawCursor(self.conn) as cur:
                cur.execute("SET LOCAL enable_seqscan = off")
                cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + spec.postgres_sql, ps.postgres)
                row = cur.fetchone()
        except psycopg.Error as exc:
            if self.conn.broken:
                raise
            _ = first_line(exc)
            return None
        doc = row[0] if row else None
        if isinstance(doc, str):
            doc = json.loads(doc)
        if not isinstance(doc, list) or not doc:
            return None
        top = doc[0]
        names = re.findall(r'"Index Name": "([^"]+)"', json.dumps(top["Plan"]))
        return (names[0] if names else ""), float(top.get("Execution Time", 0.0))

    # -- statements ---------------------------------------------------------------------------

    def _setting_statements(self, name: str, value: str, current: _Setting | None) -> list[str]:
        """Try it in a session first; keep it at the level the current value comes from."""
        trial = self._render(sql.SQL("SET {} = {};").format(sql.SQL(name), sql.Literal(value)))
        source = current.source if current else "default"
        keep = sql.SQL("{} = {}").format(sql.SQL(name), sql.Literal(value))
        if source == "database":
            stmt = sql.SQL("ALTER DATABASE {} SET {};").format(pg_ident(self._db()), keep)
            return [trial, self._render(stmt)]
        if source in ("session", "client"):
            # The application's own connection sets it (the query file's
            # [session], or the DSN's options): a server-wide value would be
            # overridden by that, so the place to change it is the same.
            where = "the query file's [session]" if source == "session" else "the DSN's options"
            return [
                trial,
                f"-- {name} is set by the connection ({where}): change it where the "
                "application's connections set it, not in the server's configuration",
            ]
        if source in ("user", "database user"):
            stmt = sql.SQL("ALTER ROLE CURRENT_USER SET {};").format(keep)
            if source == "database user":
                stmt = sql.SQL("ALTER ROLE CURRENT_USER IN DATABASE {} SET {};").format(
                    pg_ident(self._db()), keep
                )
            return [trial, self._render(stmt)]
        return [
            trial,
            self._render(sql.SQL("ALTER SYSTEM SET {};").format(keep)),
            "SELECT pg_reload_conf();",
        ]

    def _render(self, composed: sql.Composable) -> str:
        return composed.as_string(self.conn)

    def _qualified(self, relation: str) -> sql.Identifier:
        return pg_ident(self.schema, relation)

    # -- catalog ---------------------------------------------------------------------------------

    def _one(self, query: str, params: Sequence[Any]) -> tuple[Any, ...] | None:
        with self.conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchone()

    def _db(self) -> str:
        row = self._one("SELECT current_database()", ())
        return str(row[0]) if row else ""

    def _setting(self, name: str) -> _Setting | None:
        row = self._one(
            "SELECT setting, unit, source, current_setting(name) FROM pg_settings WHERE name = %s",
            (name,),
        )
        if row is None:
            return None
        try:
            raw = float(row[0])
        except ValueError:
            return None
        return _Setting(name, str(row[3]), raw, row[1], str(row[2]))

    def _reltuples(self, relation: str) -> float:
        row = self._one(
            "SELECT c.reltuples::float8 FROM pg_class c JOIN pg_namespace n"
            " ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
            (self.schema, relation),
        )
        return float(row[0]) if row else 0.0

    def _relation_bytes(self, relation: str) -> int:
        row = self._one(
            "SELECT pg_total_relation_size(c.oid) FROM pg_class c JOIN pg_namespace n"
            " ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
            (self.schema, relation),
        )
        return int(row[0]) if row else 0

    def _index_defs(self, relation: str) -> list[str]:
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT pg_get_indexdef(x.indexrelid) FROM pg_index x"
                " JOIN pg_class t ON t.oid = x.indrelid"
                " JOIN pg_namespace n ON n.oid = t.relnamespace"
                " WHERE n.nspname = %s AND t.relname = %s",
                (self.schema, relation),
            )
            return [str(r[0]) for r in cur.fetchall()]

    def _btree_leads(self, relation: str) -> list[tuple[str, str]]:
        """(index name, leading column) of the relation's plain b-tree indexes."""
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT i.relname::text, a.attname::text FROM pg_index x"
                " JOIN pg_class i ON i.oid = x.indexrelid"
                " JOIN pg_am am ON am.oid = i.relam"
                " JOIN pg_class t ON t.oid = x.indrelid"
                " JOIN pg_namespace n ON n.oid = t.relnamespace"
                " JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = x.indkey[0]"
                " WHERE n.nspname = %s AND t.relname = %s AND am.amname = 'btree'"
                " AND x.indpred IS NULL ORDER BY 1",
                (self.schema, relation),
            )
            return [(str(r[0]), str(r[1])) for r in cur.fetchall()]

    def _column_type(self, relation: str, column: str) -> str | None:
        row = self._one(
            "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
            " JOIN pg_class c ON c.oid = a.attrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s AND a.attname = %s AND NOT a.attisdropped",
            (self.schema, relation, column),
        )
        return str(row[0]) if row else None

    def _extension(self, name: str) -> tuple[bool, bool]:
        """(installed in this database, available to install)."""
        row = self._one(
            "SELECT installed_version IS NOT NULL FROM pg_available_extensions WHERE name = %s",
            (name,),
        )
        return (bool(row[0]), True) if row else (False, False)


def _squash(text: str) -> str:
    """Expression text without blanks and parentheses, for a loose match against indexdef."""
    return re.sub(r"[\s()]", "", text)
