"""Why a query is slow on PostgreSQL: its EXPLAIN, summarised, and pointers at the cause.

A query over its latency target gets one ``EXPLAIN (ANALYZE, BUFFERS)`` run
with its slowest parameter set. The plan is summarised node by node, and the
hints point at what commonly makes a replicated database slower than the
SQLite it came from: tables never analyzed since the snapshot, sequential
scans of large tables where SQLite had an index PostgreSQL lacks, and a LIMIT
over a large sort that an index in ORDER BY order would let stop early.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg import RawCursor

from replicator.config import Config
from replicator.errors import SourceError, TargetError
from replicator.queries.report import PlanSummary
from replicator.queries.spec import ParamSet, QuerySettings, QuerySpec
from replicator.source.sqlite import describe_table
from replicator.target.connection import Connection, first_line

__all__ = ["PlanAdvisor", "PlanNode", "explain_postgres"]

PLAN_LINES = 16  # plan nodes listed in a slow query's summary

PlanNode = tuple[int, dict[str, Any]]  # (depth, node of EXPLAIN's JSON)


def explain_postgres(
    conn: Connection, spec: QuerySpec, ps: ParamSet
) -> tuple[PlanSummary, list[PlanNode]]:
    """The PostgreSQL form's plan, summarised, and its nodes depth first.

    No nodes when EXPLAIN failed or returned no plan: the summary's hints say which.
    """
    summary = PlanSummary(params=dict(ps.shown), execution_ms=None, planning_ms=None)
    try:
        with conn.transaction(), RawCursor(conn) as cur:
            cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + spec.postgres_sql, ps.postgres)
            row = cur.fetchone()
    except psycopg.Error as exc:
        if conn.broken:
            raise TargetError(f"lost the target connection: {first_line(exc)}") from exc
        summary.hints.append(f"EXPLAIN failed: {first_line(exc)}")
        return summary, []
    doc = row[0] if row else None
    if isinstance(doc, str):
        doc = json.loads(doc)
    if not isinstance(doc, list) or not doc:
        summary.hints.append("EXPLAIN returned no plan")
        return summary, []
    top = doc[0]
    summary.execution_ms = top.get("Execution Time")
    summary.planning_ms = top.get("Planning Time")
    nodes = list(_walk(top["Plan"], 0))
    for depth, node in nodes[:PLAN_LINES]:
        summary.lines.append("  " * depth + _node_text(node))
    if len(nodes) > PLAN_LINES:
        summary.lines.append(f"... {len(nodes) - PLAN_LINES} more node(s)")
    return summary, nodes


class PlanAdvisor:
    """Hints from a plan's nodes, the target's catalog and the source's indexes."""

    def __init__(
        self,
        conn: Connection,
        source: sqlite3.Connection,
        config: Config,
        settings: QuerySettings,
    ) -> None:
        self.conn = conn
        self.source = source
        self.config = config
        self.settings = settings
        self.schema = config.target.schema

    def hints(
        self,
        spec: QuerySpec,
        nodes: Sequence[PlanNode],
        sqlite_plan: Sequence[str],
    ) -> list[str]:
        """Unanalyzed tables, sorts on disk or under a LIMIT, large sequential scans.

        A large sequential scan also names the source's indexes PostgreSQL
        lacks that SQLite's plan, the filter or the query text would use.
        """
        hints: list[str] = []
        sqlite_plan_text = "\n".join(sqlite_plan)
        seen: set[str] = set()
        limited = any(node.get("Node Type") == "Limit" for _, node in nodes)
        relations = dict.fromkeys(
            str(n["Relation Name"]) for _, n in nodes if n.get("Relation Name")
        )
        unanalyzed = [r for r in relations if (st := self._table_stats(r)) and not st[1]]
        if unanalyzed:
            names = ", ".join(unanalyzed)
            hints.append(
                f"never analyzed: {names}; the planner is guessing (right after a snapshot, "
                f"until autovacuum gets to it): run ANALYZE {names}"
            )
        for _depth, node in nodes:
            relation = node.get("Relation Name")
            if node.get("Sort Space Type") == "Disk":
                hints.append(
                    f"a sort spilled to disk ({node.get('Sort Space Used', '?')} kB): raise "
                    "work_mem or give PostgreSQL an index that matches the ORDER BY"
                )
            if limited and node.get("Node Type") == "Sort":
                hints.extend(self._sort_hint(node))
            if node.get("Node Type") != "Seq Scan" or not relation or relation in seen:
                continue
            seen.add(relation)
            loops = max(1, int(node.get("Actual Loops", 1)))
            scanned = (
                float(node.get("Actual Rows", 0)) + float(node.get("Rows Removed by Filter", 0))
            ) * loops
            stats = self._table_stats(relation)
            estimated = stats[0] if stats else 0.0
            if max(scanned, estimated) < self.settings.large_table_rows:
                continue
            filt = str(node.get("Filter", ""))
            times = f" over {loops} loops" if loops > 1 else ""
            hints.append(
                f"sequential scan on {relation} ({max(scanned, estimated):,.0f} rows read"
                f"{times}{'; filter ' + filt if filt else ''})"
            )
            hints.extend(self._missing_indexes(spec, relation, filt, sqlite_plan_text))
        return hints

    def _sort_hint(self, node: dict[str, Any]) -> list[str]:
        """A LIMIT over a sort of many rows: SQLite may be walking an index instead."""
        sorted_rows = sum(
            float(child.get("Actual Rows", 0)) * max(1, int(child.get("Actual Loops", 1)))
            for child in node.get("Plans", []) or []
        )
        if sorted_rows < self.settings.large_table_rows:
            return []
        keys = [str(k) for k in node.get("Sort Key", [])]
        hint = (
            f"PostgreSQL sorts {sorted_rows:,.0f} rows to return the first few (LIMIT, sort "
            f"key {', '.join(keys)}); an index whose order matches the ORDER BY lets it "
            "stop early, as SQLite may be doing"
        )
        odd = [k for k in keys if re.search(r"DESC NULLS LAST|(?<!DESC) NULLS FIRST", k)]
        if odd:
            hint += (
                f". {odd[0]} cannot use a plain index read backwards (that gives DESC NULLS "
                "FIRST): declare the index with the same NULLS order, or exclude NULLs "
                "in the query and drop the NULLS clause"
            )
        return [hint]

    def _missing_indexes(
        self, spec: QuerySpec, relation: str, filt: str, sqlite_plan: str
    ) -> list[str]:
        try:
            table = describe_table(self.source, self._source_table(relation))
        except SourceError:
            return []
        pg_indexes = self._pg_indexes(relation)
        out = []
        for idx in table.indexes:
            if idx.origin == "pk" or not idx.columns:
                continue
            lead = idx.columns[0]
            if any(cols and cols[0] == lead for _, cols in pg_indexes):
                continue
            used_by_sqlite = re.search(rf"\b{re.escape(idx.name)}\b", sqlite_plan) is not None
            pattern = rf"\b{re.escape(lead)}\b"
            in_filter = re.search(pattern, filt, re.IGNORECASE) is not None
            in_query = re.search(pattern, spec.postgres_text, re.IGNORECASE) is not None
            if not (used_by_sqlite or in_filter or in_query):
                continue
            why = (
                "SQLite's plan uses it"
                if used_by_sqlite
                else f"the {'filter' if in_filter else 'query'} uses {lead}"
            )
            out.append(
                f"SQLite has index {idx.name} on {table.name}({', '.join(idx.columns)}) and "
                f"PostgreSQL has no index on {relation} starting with {lead} ({why}); "
                f"consider CREATE INDEX ON {relation} ({', '.join(idx.columns)})"
            )
        return out

    def _source_table(self, relation: str) -> str:
        for name, tc in self.config.table.items():
            if tc.target == relation:
                return name
        return relation

    def _pg_indexes(self, relation: str) -> list[tuple[str, tuple[str, ...]]]:
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT i.relname::text, ARRAY(SELECT a.attname::text"
                "   FROM unnest(x.indkey) WITH ORDINALITY k(n, o)"
                "   JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.n"
                "   ORDER BY k.o)"
                " FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
                " JOIN pg_class t ON t.oid = x.indrelid"
                " JOIN pg_namespace ns ON ns.oid = t.relnamespace"
                " WHERE ns.nspname = %s AND t.relname = %s",
                (self.schema, relation),
            )
            return [(str(name), tuple(cols)) for name, cols in cur.fetchall()]

    def _table_stats(self, relation: str) -> tuple[float, bool] | None:
        """(estimated rows, ever analyzed) of a target table."""
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT c.reltuples::float8,"
                " (s.last_analyze IS NOT NULL OR s.last_autoanalyze IS NOT NULL)"
                " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid"
                " WHERE n.nspname = %s AND c.relname = %s",
                (self.schema, relation),
            )
            row = cur.fetchone()
        return (float(row[0]), bool(row[1])) if row else None


def _walk(node: dict[str, Any], depth: int) -> Iterator[PlanNode]:
    yield depth, node
    for child in node.get("Plans", []) or []:
        yield from _walk(child, depth + 1)


def _node_text(node: dict[str, Any]) -> str:
    text = str(node.get("Node Type", "?"))
    if node.get("Relation Name"):
        text += f" on {node['Relation Name']}"
    if node.get("Index Name"):
        text += f" using {node['Index Name']}"
    rows = node.get("Actual Rows")
    loops = node.get("Actual Loops")
    ms = node.get("Actual Total Time")
    parts = []
    if rows is not None:
        parts.append(f"rows={rows}" + (f" x{loops} loops" if loops and loops != 1 else ""))
    if ms is not None:
        parts.append(f"{ms:.1f} ms")
    hit, read = node.get("Shared Hit Blocks"), node.get("Shared Read Blocks")
    if hit is not None or read is not None:
        parts.append(f"buffers hit={hit or 0} read={read or 0}")
    if node.get("Rows Removed by Filter"):
        parts.append(f"removed by filter={node['Rows Removed by Filter']}")
    return f"{text} ({', '.join(parts)})" if parts else text
