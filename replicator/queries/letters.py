"""Dead letters that explain a difference: the row replication could not write.

A row in the dead-letter table is on the SQLite side and missing (or stale)
on PostgreSQL, so every query that reads it differs. Saying so on the
differing row turns "different" from a dialect question into a replication
one, with its reason (``replicator deadletters`` has the rest).

A query's result names no table, so a shown row is matched by its columns:
a dead letter of table T matches a row when the query's text names T and the
result has T's key columns (by name) with the dead letter's key values.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from replicator.coerce import json_key
from replicator.errors import SourceError
from replicator.queries.compare import Difference
from replicator.source.sqlite import describe_table
from replicator.state import deadletter
from replicator.target.connection import Cursor

__all__ = ["LetterIndex"]

MAX_LETTERS = 10_000  # open dead letters read for explaining; more are not matched


@dataclass(frozen=True, slots=True)
class _Letter:
    table: str
    key_columns: tuple[str, ...]  # lower case
    key: list[Any]  # as stored (JSON)
    reason: str


class LetterIndex:
    """The open dead letters, by table, with each table's key columns."""

    def __init__(self, letters: Sequence[_Letter]) -> None:
        self.by_table: dict[str, list[_Letter]] = {}
        for letter in letters:
            self.by_table.setdefault(letter.table.lower(), []).append(letter)

    @classmethod
    def load(cls, cur: Cursor, source: sqlite3.Connection, state_schema: str) -> LetterIndex:
        """Read the open dead letters (none when the target has no state schema)."""
        try:
            stored = deadletter.fetch(cur, state_schema, limit=MAX_LETTERS)
        except psycopg.errors.UndefinedTable:
            return cls([])
        keys: dict[str, tuple[str, ...]] = {}
        letters = []
        for s in stored:
            if s.table not in keys:
                try:
                    keys[s.table] = tuple(k.lower() for k in describe_table(source, s.table).key)
                except SourceError:
                    keys[s.table] = ()
            if keys[s.table] and isinstance(s.key, list):
                reason = f"{s.table} key {s.key}"
                if s.column:
                    reason += f" column {s.column}"
                letters.append(_Letter(s.table, keys[s.table], s.key, f"{reason}: {s.error}"))
        return cls(letters)

    def __bool__(self) -> bool:
        return bool(self.by_table)

    def named(self, query_text: str) -> dict[str, int]:
        """Open dead letters per table the query's text names."""
        return {
            letters[0].table: len(letters)
            for table, letters in self.by_table.items()
            if re.search(rf"(?<![\w.]){re.escape(table)}(?![\w])", query_text, re.I)
        }

    def explain(self, query_text: str, names: Sequence[str], row: Sequence[Any]) -> str | None:
        """``dead-lettered: <reason>`` when ``row`` is a dead letter's row, else None."""
        lowered = [n.lower() for n in names]
        for table, letters in self.by_table.items():
            if not re.search(rf"(?<![\w.]){re.escape(table)}(?![\w])", query_text, re.I):
                continue
            for letter in letters:
                if not all(k in lowered for k in letter.key_columns):
                    continue
                values = [row[lowered.index(k)] for k in letter.key_columns]
                if json_key(values) == letter.key:
                    return f"dead-lettered: {letter.reason}"
        return None

    def annotate(self, diff: Difference, query_text: str, names: Sequence[str]) -> None:
        """Mark the shown rows of ``diff`` that are dead letters' rows."""
        diff.sqlite_notes = [self.explain(query_text, names, r) for r in diff.sqlite_rows]
        diff.postgres_notes = [self.explain(query_text, names, r) for r in diff.postgres_rows]
        if not any(diff.sqlite_notes) and not any(diff.postgres_notes):
            diff.sqlite_notes, diff.postgres_notes = [], []
            # No shown row is one (an aggregate, or rows without their key):
            # the tables' dead letters may still be the whole explanation.
            counts = self.named(query_text)
            if counts:
                listed = ", ".join(f"{n} in {table}" for table, n in sorted(counts.items()))
                diff.summary += (
                    f"; open dead letters of the tables it reads ({listed}): rows "
                    "replication could not write, which may explain it "
                    "(replicator dead-letters list)"
                )
