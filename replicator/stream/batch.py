"""A batch of captured changes on its way to the target: the changes prepared
(coalesced per row, converted) and what applying them did."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from replicator.source.changelog import Change
from replicator.state.deadletter import DeadLetter

Row = tuple[object, ...]


@dataclass
class BatchResult:
    first_seq: int
    last_seq: int
    changes: int  # read from the log
    applied: Counter[tuple[str, str]] = field(default_factory=Counter)  # (table, op) -> rows
    dead_letters: list[DeadLetter] = field(default_factory=list)
    null_key_letters: int = 0  # NULL-key rows newly dead-lettered (see plan.nullkeys)
    oldest_captured_at: float = 0.0
    newest_captured_at: float = 0.0
    replayed: bool = False  # the fast path failed and the batch was replayed in order
    max_ids: dict[tuple[str, int], int] = field(default_factory=dict)  # for sequences
    seconds: float = 0.0
    # Rows written to tables rows wait on (a parent's), to release its waiting children.
    written: dict[str, list[Row]] = field(default_factory=dict)
    waiting: list[tuple[str, tuple[Any, ...], Row]] = field(default_factory=list)  # 23503 rows
    released: int = 0  # dead letters of waiting rows this batch wrote at last

    def reset(self) -> None:
        """Forget what a rolled-back attempt counted."""
        self.applied.clear()
        self.dead_letters.clear()
        self.max_ids.clear()
        self.written.clear()
        self.waiting.clear()

    def per_table(self) -> Counter[str]:
        """Rows applied per table, whatever the operation."""
        counts: Counter[str] = Counter()
        for (table, _op), count in self.applied.items():
            counts[table] += count
        return counts


@dataclass
class Prepared:
    """A batch coalesced and converted, ready to write (see :meth:`Applier.prepare`)."""

    relevant: list[Change]  # the batch's changes to replicated tables, in log order
    deletes: dict[str, list[Row]] = field(default_factory=dict)  # table -> keys
    upserts: dict[str, list[Row]] = field(default_factory=dict)  # table -> rows
    partial: dict[str, dict[tuple[int, ...], list[Row]]] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)  # values that do not convert
    null_keys: set[str] = field(default_factory=set)  # tables with a change of a NULL key
    # table -> its upserts as COPY text, formatted ahead (large upserts only)
    payloads: dict[str, bytes] = field(default_factory=dict)
